"""The Lightning side of checkpoints: a callback that saves through the atomic CheckpointStore
(trainer_core/checkpoint_store.py: layout, save protocol, resume checks) every N optimizer steps, on a stop and at
the end, and writes the loop state so that Lightning resumes it exactly.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl

from trainer_core import attempts
from trainer_core.checkpoint_store import CheckpointError, CheckpointMeta, CheckpointStore, write_text_atomic

__all__ = ["AtomicCheckpoint", "CheckpointError", "CheckpointMeta", "CheckpointStore", "between_epochs",
           "on_last_batch", "write_text_atomic"]


def on_last_batch(trainer: pl.Trainer) -> bool:
    """Whether the batch that just ended is its epoch's last. A save then waits for on_train_epoch_end, where the
    epoch is counted as processed and `between_epochs` can write it as finished (saved from on_train_batch_end,
    the epoch is still unfinished in the loop state, and Lightning's restart path for that skips the next epoch's
    start: its hooks and its epoch counters)."""
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


def between_epochs(checkpoint: dict[str, Any]) -> bool:
    """Write the loop state of a checkpoint taken once an epoch's last batch is done (on_train_epoch_end, or the
    end of training) as the state the loop reaches a moment later: the epoch counted as completed and the
    per-epoch counters back at zero, before the next epoch starts. Returns whether it did (False mid-epoch).

    Left as it is, Lightning 2.6 restarts such a checkpoint "on epoch end" (max_steps makes every resume a
    restart) with the finished epoch's batch counters (7 of 7) carried into the next epoch, which therefore ends
    after its first batch: the resumed run trains one batch of epoch e+1 and then moves on to epoch e+2's data,
    while the uninterrupted run trains all of epoch e+1. Nothing else differs between the two moments (no data
    drawn, no optimizer or scheduler step: the schedule is step-based), and from this state Lightning starts the
    next epoch as it would without a restart: epoch start hooks, a new sampler epoch, counters from zero.
    """
    fit = checkpoint.get("loops", {}).get("fit_loop")
    if not fit:
        return False
    batches = fit["epoch_loop.batch_progress"]
    if not (batches.get("is_last_batch") and batches["current"]["completed"] == batches["current"]["ready"] > 0):
        return False
    epochs = fit["epoch_progress"]
    for part in ("total", "current"):
        epochs[part]["completed"] = epochs[part]["processed"]
    checkpoint["epoch"] = epochs["current"]["completed"]
    _zero(batches["current"])
    batches["is_last_batch"] = False
    _zero(fit["epoch_loop.scheduler_progress"]["current"])
    for progress in fit["epoch_loop.automatic_optimization.optim_progress"]["optimizer"].values():
        _zero(progress["current"])
    # the validation batches counted within the epoch (Lightning resets them at every epoch start)
    _zero(fit["epoch_loop.val_loop.batch_progress"]["total"])
    return True


def _zero(counters: dict[str, int]) -> None:
    for key in counters:
        counters[key] = 0


class AtomicCheckpoint(pl.Callback):
    """Saves through CheckpointStore every `every_n_steps` optimizer steps and at the end of training.

    A save is a collective: every rank calls `save` at the same step. The run's logs are flushed first, so that
    what is logged reaches at least as far as any checkpoint a later attempt resumes from. Each save is recorded
    in the run's attempts.jsonl (step, why, seconds).
    """

    def __init__(self, store: CheckpointStore, meta: CheckpointMeta, every_n_steps: int, keep_last: int,
                 save_at_end: bool) -> None:
        self.store, self.meta = store, meta
        self.every_n_steps, self.keep_last, self.save_at_end = every_n_steps, keep_last, save_at_end
        # the step of the newest checkpoint on disk that this attempt knows (the one it resumed from, at first)
        self.last_saved_step = -1
        # its folder, on rank 0 once this attempt has saved (a re-save of a step may carry a suffix: step-S.1)
        self.last_saved: Optional[Path] = None
        # why the save deferred to the epoch's end is made ("" when none is due)
        self._due_at_epoch_end = ""
        # the rank's progress report (trainer_core/progress.py ReportProgress), told when a save starts and ends
        self.progress: Optional[Any] = None

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        step = trainer.global_step
        # The end-of-training save happens at the last step's boundary too: on_train_end comes after Lightning
        # has counted an epoch cut short by max_steps as completed, and a run resumed from there (a larger
        # trainer.max_steps) would start a new epoch instead of finishing that one.
        why = "end" if self.save_at_end and 0 < trainer.max_steps <= step else ""
        if self.every_n_steps and step and step % self.every_n_steps == 0:
            why = "periodic"
        if why and step != self.last_saved_step:
            if on_last_batch(trainer):
                self._due_at_epoch_end = why
            else:
                self.save(trainer, why)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._due_at_epoch_end:
            why, self._due_at_epoch_end = self._due_at_epoch_end, ""
            self.save(trainer, why)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # training that ended before max_steps (a stop saved already; anything else that ends fit)
        if self.save_at_end and trainer.global_step != self.last_saved_step:
            self.save(trainer, "end")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        between_epochs(checkpoint)

    def save_once(self, trainer: pl.Trainer, why: str) -> Path:
        """Save this step unless it is saved already (a periodic save at the same step); returns its folder."""
        if trainer.global_step == self.last_saved_step:
            return self.last_saved or self.store.step_dir(trainer.global_step)
        return self.save(trainer, why)

    def save(self, trainer: pl.Trainer, why: str) -> Path:
        """Save this step, on every rank together; returns the checkpoint's folder (as rank 0 committed it)."""
        step = trainer.global_step
        strategy = trainer.strategy
        start = time.monotonic()
        phase_before = self.progress.save_started(step) if self.progress is not None else ""
        for logger in trainer.loggers:
            logger.save()  # rank 0 only (Lightning's loggers write from rank 0)
        if strategy.is_global_zero:
            self.store.clear_stale()
            self.store.tmp_dir(step).mkdir(parents=True, exist_ok=True)
        strategy.barrier("zerorun_ckpt_begin")
        trainer.save_checkpoint(self.store.tmp_dir(step) / "ckpt", weights_only=False)  # resuming needs it all
        strategy.barrier("zerorun_ckpt_written")
        final = self.store.step_dir(step)
        if strategy.is_global_zero:
            final = self.store.commit(dataclasses.replace(self.meta, step=step), self.keep_last)
        strategy.barrier("zerorun_ckpt_committed")
        self.last_saved_step = step
        self.last_saved = final if strategy.is_global_zero else None
        if self.progress is not None:
            self.progress.save_ended(step, phase_before)
        if strategy.is_global_zero:
            attempts.append(self.store.root.parent, "checkpoint", step=step, why=why, path=str(final),
                            save_s=round(time.monotonic() - start, 3))
        return final
