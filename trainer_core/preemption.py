"""One owner of the stop signals, a stop at a step boundary on every rank together, and exact resume state.

- The handler for the job's signal (cluster.signal, USR2 by default), SIGTERM and SIGINT only records that a
  stop was asked for (trainer_core/signals.py). It is installed when training starts, replacing whatever Lightning (or
  anything else) put there, and put back at a step boundary if anything replaces it later.
- After every optimizer step the ranks agree, with one small all-reduce, whether any of them was asked to stop,
  so all stop after the same step, save one checkpoint together, and no rank waits alone in a collective.
  A stop on an epoch's last batch is saved at the epoch's end (see checkpointing.between_epochs). A stop asked
  in the last step (or during the final save) is not taken: the run finishes as completed, with its validation.
- The ranks leave `fit` without the validation Lightning would start on a stop, meet once more (`finish`) and
  exit with the resumable status (trainer_core.contract.EXIT_RESUMABLE). Why the stop came (preemption, time
  limit, scancel) and whether the job goes back into the queue is not the ranks' business: the job script asks
  the scheduler on the batch host once every rank has exited (jobs/host.py).
- Every rank's torch, numpy and python RNG states go into the checkpoint (gathered to the rank that writes)
  and each rank gets its own back when training starts again.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist

from trainer_core import attempts
from trainer_core.contract import EXIT_RESUMABLE
from trainer_core.signals import OWNER, StopSignals
from trainer_core.checkpointing import AtomicCheckpoint, on_last_batch

log = logging.getLogger(__name__)


@dataclass
class StopOutcome:
    # the signal that asked for the stop ("peer" on a rank that learned of it from another rank)
    signal: str
    step: int
    exit_code: int = EXIT_RESUMABLE


class StopAtStepBoundary(pl.Callback):
    def __init__(self, cfg: Any, run_dir: str, checkpoint: AtomicCheckpoint,
                 signals: Optional[StopSignals] = None) -> None:
        self.cfg, self.run_dir, self.checkpoint = cfg, run_dir, checkpoint
        self.signals = signals or StopSignals(cfg.cluster.signal)
        self.outcome: Optional[StopOutcome] = None
        # who handled each stop signal at the first step boundary (the rank report shows it)
        self.handlers_in_training: dict[str, str] = {}
        self._deferred_to_epoch_end = False
        self._start_step = self._last_step = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning registers its own handlers just before this hook; ours replace them.
        self.signals.install()
        self._start_step = self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._keep_ownership()
        # A step boundary is a batch after which the optimizer stepped: with gradient accumulation a stop between
        # micro-batches would drop the gradients gathered so far. Every rank sees the same steps.
        stepped, first = trainer.global_step != self._last_step, self._last_step == self._start_step
        self._last_step = trainer.global_step
        if stepped and first and trainer.is_global_zero:
            attempts.append(self.run_dir, "first_step", step=trainer.global_step)
        if not stepped:
            return
        if 0 < trainer.max_steps <= trainer.global_step:
            # The last step (its save may be under way or done): the run finishes as completed, with its final
            # validation and metrics. Stopping here would exit resumable for a run with nothing left to train,
            # and the rerun would write metrics without the validation a sweep ranks it by.
            if self.signals.requested and trainer.is_global_zero:
                log.warning("zerorun: stop asked in the last step (%d); finishing the run", trainer.global_step)
            return
        if not self._any_rank_asked(trainer):
            return
        if on_last_batch(trainer):
            self._deferred_to_epoch_end = True
            return
        self._stop(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._deferred_to_epoch_end and self.outcome is None:
            self._stop(trainer)

    def _keep_ownership(self) -> None:
        """The recording handler stays the one handler: anything that replaced it is replaced back."""
        handlers = self.signals.handlers()
        if not self.handlers_in_training:
            self.handlers_in_training = handlers
        foreign = {name: h for name, h in handlers.items() if h != OWNER}
        if foreign:
            log.warning("zerorun: stop-signal handlers replaced during training (%s); zerorun's put back", foreign)
            self.signals.install()

    def _any_rank_asked(self, trainer: pl.Trainer) -> bool:
        if self.outcome is not None:
            return False
        asked = torch.tensor([1.0 if self.signals.requested else 0.0])
        if trainer.world_size > 1:
            asked = trainer.strategy.reduce(asked.to(trainer.strategy.root_device), reduce_op="max").cpu()
        return bool(asked.item())

    def _stop(self, trainer: pl.Trainer) -> None:
        step, zero = trainer.global_step, trainer.is_global_zero
        request = self.signals.requested
        signal_name = request.signal_name if request else "peer"
        if zero:
            # `at` is when the signal arrived: the batch host compares it with the job's clock (time limit or not)
            attempts.append(self.run_dir, "signal", signal=signal_name, job_signal=self.signals.job_signal,
                            step=step, at=round(request.at, 3) if request else None)
        # Lightning validates when asked to stop (an early-stopping habit): that would delay the exit and log
        # a result at a step the resumed run logs again.
        trainer.limit_val_batches = 0
        self.checkpoint.save_once(trainer, "stop")
        self.outcome = StopOutcome(signal_name, step)
        trainer.should_stop = True

    def finish(self) -> Optional[StopOutcome]:
        """After `fit` and the rank's reports, on every rank: wait for all ranks, so that none exits (and, under
        srun --kill-on-bad-exit, ends the others) before every report is written. Returns the stop outcome (None
        when training was not stopped); the rank then exits with its exit_code."""
        out = self.outcome
        if out is None:
            return None
        _barrier()
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return out
        print(f"zerorun: stopped at step {out.step} (signal {out.signal}): checkpointed; exiting resumable "
              f"({out.exit_code})", flush=True)
        return out


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


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
