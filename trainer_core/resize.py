"""Resuming on another number of ranks: the Lightning side.

What must change when the same checkpoint is loaded by W' ranks instead of the W that wrote it:

- the data position. The sampler counts it globally (samples of the epoch's permutation all ranks consumed,
  trainer_core/data/datamodule.py), so it needs no conversion; what Lightning counts per rank does: the batches
  of the epoch it has run (accumulation boundaries and the epoch's end are decided from them). They are rebased
  here to the batches W' ranks of the new batch size would have run to consume as much.
- the batch: the global batch is kept by default, with accumulate_grad_batches recomputed before the trainer is
  built (checkpoint_store.resumed_accumulation, which the submission side also calls to refuse early).
- the schedule continues by optimizer step: the step count, the scheduler and the optimizer are restored as
  they are, whatever the number of ranks.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import pytorch_lightning as pl

from trainer_core.checkpoint_store import CheckpointError, CheckpointMeta

log = logging.getLogger(__name__)

SAMPLER_STATE = "sampler_state"  # where torchdata's batch-sampler iterator keeps its sampler's state
# the train sampler's state: samples of the epoch all ranks consumed, and how many ranks consumed them
CONSUMED, WORLD = "consumed", "world_size"


def global_position(sampler_state: Dict[str, Any], world_size: int) -> int:
    """Samples of the epoch consumed, from a sampler state: the datamodule's sampler's, or torchdata's per-rank
    count ("yielded", in checkpoints written before the position was global, always by `world_size` ranks)."""
    if CONSUMED in sampler_state:
        return int(sampler_state[CONSUMED])
    yielded = int(sampler_state.get("yielded", 0))
    if yielded < 0:
        raise ValueError(f"a sampler state with a negative position: {sampler_state}")
    return yielded * int(sampler_state.get(WORLD, world_size))


class ResizedResume(pl.Callback):
    """Rebases the per-rank batch counters of a checkpoint written by `found.world_size` ranks to this run's
    ranks and batch size (a no-op on the same number of ranks and batch)."""

    def __init__(self, found: CheckpointMeta, micro_batch_size: int) -> None:
        self.found, self.micro_batch_size = found, micro_batch_size

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        moved = rebase_epoch_position(checkpoint, trainer.world_size, self.micro_batch_size, self.found.world_size)
        if moved is not None and trainer.is_global_zero and trainer.world_size != self.found.world_size:
            log.info("zerorun: resuming %d samples into the epoch on %d ranks (written by %d): batch %d -> %d",
                     moved[0], trainer.world_size, self.found.world_size, moved[1], moved[2])


def rebase_epoch_position(checkpoint: dict, world_size: int, micro_batch_size: int,
                          written_by: int) -> Optional[tuple[int, int, int]]:
    """Make the checkpoint's epoch position hold for `world_size` ranks of `micro_batch_size` rows: the sampler
    state gets the global position explicitly, and Lightning's batch counters (current epoch and total) move by
    the difference in batches. Returns (samples consumed, batches before, batches after), or None between epochs
    (nothing consumed yet: nothing to rebase)."""
    fit = checkpoint.get("loops", {}).get("fit_loop")
    if not fit:
        return None
    progress = fit["epoch_loop.batch_progress"]
    before = int(progress["current"]["processed"])
    if before == 0:
        return None
    loaders = fit.get("state_dict", {}).get("combined_loader") or []
    sampler_state = _find(loaders[0], SAMPLER_STATE) if loaders else None
    if sampler_state is None:
        raise CheckpointError("the checkpoint holds no train sampler position (written by another version of the "
                              "data loader?); resume on the number of ranks it was written with")
    consumed = global_position(sampler_state, written_by)
    sampler_state.update({CONSUMED: consumed, WORLD: written_by})
    # A save is at an optimizer-step boundary: with the global batch kept, this divides exactly. With
    # keep_batch=per_rank it may fall inside a batch; the sampler still starts at the exact sample, and the
    # counters (accumulation boundaries) count the partial batch as not run.
    after = consumed // (world_size * micro_batch_size)
    delta = after - before
    if delta:
        for part in ("current", "total"):
            for key in progress[part]:
                progress[part][key] += delta
    return consumed, before, after


def _find(state: Any, key: str) -> Optional[dict]:
    """The first dict under `key` anywhere in a (nested) loader state: the single-process loader keeps the
    sampler state at the top, the multi-process one inside its main snapshot."""
    if isinstance(state, dict):
        if isinstance(state.get(key), dict):
            return state[key]
        for value in state.values():
            found = _find(value, key)
            if found is not None:
                return found
    return None
