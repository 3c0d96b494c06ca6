"""Loggers that every attempt of a run continues: one logger run (version 0), one unbroken series.

A requeued or resumed attempt starts at the step of the checkpoint it loaded. What an earlier attempt logged
before that step stays; what it logged at or after it (work done after the checkpoint, lost with the attempt) is
dropped, because the new attempt logs those steps again. The step here is Lightning's logging step: the loss
of optimizer step k+1 is logged at step k, so an attempt resumed from the checkpoint of step S logs from step S.

- csv: Lightning's CSVLogger deletes metrics.csv when its folder is not empty (a new process would lose every
  row of the earlier attempts). ContinuedCSVLogger keeps the rows before the resumed step and appends.
- tensorboard: a fixed version, and SummaryWriter's purge_step: TensorBoard hides the earlier attempts' events at
  or after the resumed step.
- wandb, mlflow: one tracker run continued by id (trainer_core/trackers.py).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

from trainer_core.durable import write_atomic
from trainer_core.trackers import TRACKERS, build_tracker

# the fixed logger run of every run folder: run_dir/<name>/version_0
VERSION = 0


def build_logger(kind: str, run_dir: os.PathLike | str, resumed_step: Optional[int],
                 tracker: Optional[Mapping[str, Any]] = None, run_name: str = "zerorun") -> Any:
    """The logger for trainer.logger=`kind` (csv, tensorboard, wandb, mlflow), continuing the run's earlier
    attempts. `resumed_step`: the step of the checkpoint this attempt loaded (None: the run starts from step 0);
    `tracker`: the trainer.tracker settings of wandb and mlflow, `run_name` the run's name."""
    if kind in TRACKERS:
        return build_tracker(kind, run_dir, tracker, run_name)
    if kind == "csv":
        return ContinuedCSVLogger(save_dir=str(run_dir), name="csv", version=VERSION, resumed_step=resumed_step)
    log_dir = Path(run_dir, "tensorboard", f"version_{VERSION}")
    earlier = log_dir.is_dir() and any(log_dir.glob("events.out.tfevents.*"))
    extra = {"purge_step": resumed_step or 0} if earlier else {}
    return TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=VERSION, default_hp_metric=False,
                             **extra)


class ContinuedCSVLogger(CSVLogger):
    """CSVLogger whose metrics.csv keeps the earlier attempts' rows before `resumed_step` and grows from there."""

    def __init__(self, *args: Any, resumed_step: Optional[int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resumed_step = resumed_step or 0

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedWriter(self.log_dir, self._resumed_step)
        return self._experiment


class _ContinuedWriter(ExperimentWriter):
    def __init__(self, log_dir: str, resumed_step: int) -> None:
        self._resumed_step = resumed_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        # Lightning's writer deletes the file here. Keep the rows before the resumed step (written back whole
        # and atomically: a kill leaves the old file or the new one), and append after them.
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            rows = [r for r in reader if _step(r) is not None and _step(r) < self._resumed_step]
        if not keys:
            path.unlink()
            return
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(path, text.getvalue(), mode=0o644)
        self.metrics_keys = keys


def _step(row: dict[str, str]) -> Optional[int]:
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return None
