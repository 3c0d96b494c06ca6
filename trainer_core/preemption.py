"""One owner of the stop signals, a stop at a step boundary on every rank together, and exact resume state.

- The handler for the job's signal (cluster.signal, USR2 by default) and SIGTERM only records that a stop was
  asked for. It is installed when training starts, replacing whatever Lightning (or anything else) put there.
- After every optimizer step the ranks agree, with one small all-reduce, whether any of them was asked to stop,
  so all stop after the same step, save one checkpoint together, and no rank waits alone in a collective.
  A stop on an epoch's last batch is saved at the epoch's end, so epoch counter and sampler epoch agree.
- Then rank 0 decides (cluster.requeue.decide) and requeues the exact job, and every rank leaves `fit`.
- Every rank's torch, numpy and python RNG states go into the checkpoint (gathered to the rank that writes)
  and each rank gets its own back when training starts again.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist

from cluster import requeue
from jobs import attempts
from jobs.signals import StopSignals
from trainer_core.checkpointing import AtomicCheckpoint, on_last_batch

log = logging.getLogger(__name__)


@dataclass
class StopOutcome:
    cause: str
    step: int
    requeued: bool
    reason: str
    exit_code: int


class StopAtStepBoundary(pl.Callback):
    def __init__(self, cfg: Any, run_dir: str, checkpoint: AtomicCheckpoint, backend: str,
                 signals: Optional[StopSignals] = None) -> None:
        self.cfg, self.run_dir, self.checkpoint, self.backend = cfg, run_dir, checkpoint, backend
        self.signals = signals or StopSignals(cfg.cluster.signal)
        self.outcome: Optional[StopOutcome] = None
        self._deferred_to_epoch_end = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning registers its own handlers just before this hook; ours replace them.
        self.signals.install()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if not self._any_rank_asked(trainer):
            return
        if on_last_batch(trainer):
            self._deferred_to_epoch_end = True
            return
        self._stop(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._deferred_to_epoch_end and self.outcome is None:
            self._stop(trainer)

    def _any_rank_asked(self, trainer: pl.Trainer) -> bool:
        if self.outcome is not None:
            return False
        asked = torch.tensor([1.0 if self.signals.requested else 0.0])
        if trainer.world_size > 1:
            asked = trainer.strategy.reduce(asked.to(trainer.strategy.root_device), reduce_op="max").cpu()
        return bool(asked.item())

    def _stop(self, trainer: pl.Trainer) -> None:
        request = self.signals.requested
        signal_name = request.signal_name if request else "peer"  # another rank got it first
        cause = requeue.stop_cause(
            signal_name if request else self.signals.job_signal, self.signals.job_signal,
            request.at if request else time.time(), _job_end_time(), self.cfg.cluster.signal_delay_s,
        )
        # The same cause on every rank: rank 0's reading wins.
        cause = _broadcast_object(cause)
        zero = trainer.is_global_zero
        if zero:
            attempts.append(self.run_dir, "signal", signal=signal_name, cause=cause, step=trainer.global_step)
        path = self.checkpoint.save(trainer)
        if zero:
            attempts.append(self.run_dir, "checkpoint", step=trainer.global_step, path=str(path))
        self.outcome = self._requeue(cause, trainer.global_step) if zero else StopOutcome(cause, trainer.global_step,
                                                                                           False, "", 0)
        trainer.should_stop = True

    def _requeue(self, cause: str, step: int) -> StopOutcome:
        counts = attempts.requeue_counts(attempts.read(self.run_dir))
        decision = requeue.decide(
            cause, backend=self.backend, checkpointed=True,
            timeouts_so_far=counts["timeout"], max_timeouts=self.cfg.requeue.max_timeouts,
            preemptions_so_far=counts["preemption"], max_preemptions=self.cfg.requeue.max_preemptions,
        )
        exit_code, reason = 0, decision.reason
        if decision.requeue:
            ok, what = requeue.scontrol_requeue(requeue.job_to_requeue(os.environ))
            if not ok:
                exit_code, reason = requeue.EXIT_RESUMABLE, f"{what}; the run is resumable with resume={self.run_dir}"
        attempts.append(self.run_dir, "requeue", cause=cause, requeued=decision.requeue and exit_code == 0,
                        reason=reason, step=step)
        log.warning("zerorun: stopped at step %d (%s): %s", step, cause, reason)
        print(f"zerorun: stopped at step {step} ({cause}): {reason}", flush=True)
        return StopOutcome(cause, step, decision.requeue and exit_code == 0, reason, exit_code)


def _job_end_time() -> Optional[float]:
    value = os.environ.get("SLURM_JOB_END_TIME")
    return float(value) if value and value.isdigit() else None


def _broadcast_object(obj: Any) -> Any:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


class RNGStates(pl.Callback):
    """Every rank's RNG states in the checkpoint; each rank's own restored when training starts again.

    Lightning saves none. Restoring in on_train_start (not when the checkpoint is loaded) matters: building
    the loader iterator in between draws from the global torch RNG.
    """

    KEY = "zerorun_rng_states"

    def __init__(self) -> None:
        self._to_restore: Optional[dict[str, Any]] = None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # Every rank runs this (the dump happens on all ranks even where only rank 0 writes).
        mine = _rng_state()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(states, mine)
        else:
            states = [mine]
        checkpoint[self.KEY] = states

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        states = checkpoint.get(self.KEY)
        if states is not None and trainer.global_rank < len(states):
            self._to_restore = states[trainer.global_rank]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._to_restore is not None:
            _set_rng_state(self._to_restore)
            self._to_restore = None


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        # as a tensor: torch.load(weights_only=True) refuses numpy arrays
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "gauss": gauss},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
