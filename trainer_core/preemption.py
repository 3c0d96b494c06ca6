"""One owner of the stop signals, a stop at a step boundary on every rank together, and exact resume state.

- The handler for the job's signal (cluster.signal, USR2 by default), SIGTERM and SIGINT only records that a
  stop was asked for (jobs/signals.py). It is installed when training starts, replacing whatever Lightning (or
  anything else) put there, and put back at a step boundary if anything replaces it later.
- After every optimizer step the ranks agree, with one small all-reduce, whether any of them was asked to stop,
  so all stop after the same step, save one checkpoint together, and no rank waits alone in a collective.
  A stop on an epoch's last batch is saved at the epoch's end (see checkpointing.between_epochs).
- Rank 0 reads why (cluster.requeue.stop_cause: preemption, time limit, terminated), the ranks leave `fit`
  without the validation Lightning would start on a stop, and once every rank is done (`finish`), rank 0
  requeues the exact job (or says why not) as the rank's last act: Slurm ends the job's processes right after.
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
from jobs.signals import OWNER, StopSignals
from trainer_core.checkpointing import AtomicCheckpoint, on_last_batch

log = logging.getLogger(__name__)


@dataclass
class StopOutcome:
    cause: str
    step: int
    # set on rank 0 when the stop was decided (the requeue itself happens in `StopAtStepBoundary.finish`)
    decision: Optional[requeue.Decision]
    requeued: bool = False
    reason: str = ""
    exit_code: int = 0


class StopAtStepBoundary(pl.Callback):
    def __init__(self, cfg: Any, run_dir: str, checkpoint: AtomicCheckpoint, backend: str,
                 signals: Optional[StopSignals] = None) -> None:
        self.cfg, self.run_dir, self.checkpoint, self.backend = cfg, run_dir, checkpoint, backend
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
        if not stepped or not self._any_rank_asked(trainer):
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
        # Rank 0 reads the cause (one question to Slurm, not one per rank); every rank gets its reading.
        cause = _broadcast_object(self._cause(request) if zero else None)
        if zero:
            attempts.append(self.run_dir, "signal", signal=request.signal_name if request else "peer", cause=cause,
                            step=step, at=round(request.at, 3) if request else None)
        # Lightning validates when asked to stop (an early-stopping habit): that would delay the exit and log
        # a result at a step the resumed run logs again.
        trainer.limit_val_batches = 0
        self.checkpoint.save_once(trainer, "stop")
        self.outcome = StopOutcome(cause, step, self._decide(cause) if zero else None)
        trainer.should_stop = True

    def _cause(self, request: Any) -> str:
        name = request.signal_name if request else self.signals.job_signal
        if self.backend != "slurm":
            # no Slurm clock to read: the local launcher forwards the job's signal to rehearse a preemption
            return "preemption" if name == self.signals.job_signal else "terminated"
        clock = requeue.job_clock(requeue.job_to_requeue(os.environ))
        return requeue.stop_cause(name, self.signals.job_signal, request.at if request else time.time(), clock,
                                  self.cfg.cluster.signal_delay_s)

    def _decide(self, cause: str) -> requeue.Decision:
        counts = attempts.requeue_counts(attempts.read(self.run_dir))
        return requeue.decide(
            cause, backend=self.backend, checkpointed=True,
            timeouts_so_far=counts["timeout"], max_timeouts=self.cfg.requeue.max_timeouts,
            preemptions_so_far=counts["preemption"], max_preemptions=self.cfg.requeue.max_preemptions,
        )

    def finish(self) -> Optional[StopOutcome]:
        """After `fit` and the rank's reports, on every rank: wait for all ranks, then rank 0 requeues the job or
        records why not. Slurm signals and ends the job's processes right after a requeue, so nothing may follow
        but the exit. Returns the stop outcome (None when training was not stopped)."""
        out = self.outcome
        if out is None:
            return None
        _barrier()
        if out.decision is None:  # ranks other than 0
            return out
        decision = out.decision
        out.requeued, out.reason, out.exit_code = decision.requeue, decision.reason, decision.exit_code
        if decision.requeue:
            ok, what = requeue.scontrol_requeue(requeue.job_to_requeue(os.environ))
            if not ok:
                out.requeued, out.exit_code = False, requeue.EXIT_RESUMABLE
                out.reason = f"{what}; the run is resumable with resume={self.run_dir}"
        attempts.append(self.run_dir, "requeue", cause=out.cause, requeued=out.requeued, reason=out.reason,
                        step=out.step, exit_code=out.exit_code)
        print(f"zerorun: stopped at step {out.step} ({out.cause}): {out.reason}", flush=True)
        return out


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


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
