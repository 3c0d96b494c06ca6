"""The Lightning callback that reports a rank's progress (trainer_core/progress.py says why from the training
thread) and checks, after a few steps, that the watchdog's training timeout is longer than one step.

Until that check has run, the steps are reported in the "first_step" phase (the watchdog's start-up limit), so
a timeout shorter than a step is refused here with the measured step time, not found as a hang first. The
measured step time is also handed to `measured` (rank 0 records it, and a resume with a timeout shorter than
it is refused before anything runs: jobs/runs.py)."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Optional

import pytorch_lightning as pl

from trainer_core.progress import HangForTest, Progress

# steps measured before a watchdog timeout is compared with the step time
MEASURED_STEPS = 3


class ReportProgress(pl.Callback):
    """Reports the phase at every change and the step at every optimizer-step boundary; checks once, after a
    few steps, that the watchdog's training timeout is longer than one step."""

    def __init__(self, progress: Progress, hang: HangForTest, timeout_s: Optional[float],
                 measured: Optional[Callable[[float], None]] = None) -> None:
        self.progress, self.hang, self.timeout_s, self.measured = progress, hang, timeout_s, measured
        self._last_step = -1
        self._steps = 0
        self._step_started: Optional[float] = None
        self._step_times: list[float] = []
        self._before_validation = "training"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step
        self.progress.report(trainer.global_step, "first_step")

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._step_started is None:
            self._step_started = time.monotonic()

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Any) -> None:
        # inside a step, between the forward pass and the backward's collectives
        self.hang.maybe("step", trainer.global_step + 1)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if step == self._last_step:
            return  # a micro-batch of an accumulation: no optimizer step yet
        self._last_step = step
        if self._step_started is not None and self._steps > 0:  # the first step (warm-up, compiles) is not one
            self._check_step_time(time.monotonic() - self._step_started)
        self._steps += 1
        self._step_started = None
        self.progress.report(step, "first_step" if self._measuring() else "training")

    def _measuring(self) -> bool:
        return self.timeout_s is not None and len(self._step_times) < MEASURED_STEPS

    def _check_step_time(self, seconds: float) -> None:
        if self.timeout_s is None or len(self._step_times) >= MEASURED_STEPS:
            return
        self._step_times.append(seconds)
        if len(self._step_times) == MEASURED_STEPS:
            step_s = statistics.median(self._step_times)
            if self.measured is not None:
                self.measured(step_s)
            if step_s >= self.timeout_s:
                raise ValueError(
                    f"watchdog.timeout_s={self.timeout_s:g} is shorter than one optimizer step ({step_s:.2f} s "
                    f"measured, the median of {MEASURED_STEPS} steps): every step would count as a hang; set "
                    f"watchdog.timeout_s to a few times the step time (or null for no watchdog)")

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._before_validation = self.progress.phase
        self.progress.report(trainer.global_step, "validation")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.progress.report(trainer.global_step, self._before_validation)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.progress.report(trainer.global_step, "end")

    # a checkpoint save (trainer_core/checkpointing.py) brackets itself with these
    def save_started(self, step: int) -> str:
        before = self.progress.phase
        self.progress.report(step, "checkpoint")
        self.hang.maybe("checkpoint", step)
        return before

    def save_ended(self, step: int, before: str) -> None:
        self.progress.report(step, before)
