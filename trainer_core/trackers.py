"""Experiment trackers (trainer.logger=wandb or mlflow): one tracker run per zerorun run, continued by every attempt.

Lightning's own WandbLogger and MLFlowLogger, given a stable identity so that a requeued or resumed attempt
continues the run an earlier attempt started instead of opening a new one (Lightning's W&B logger starts a new
run after each requeue otherwise):

- W&B: `id=` derived from the run's name and id on the first start and `resume="allow"`. Offline, each attempt
  writes its own RUN_DIR/wandb/offline-run-*-ID folder under the same id; `wandb sync --id ID` uploads them in
  order into one run.
- MLflow: the run the first attempt created, by `run_id=`. The default store is a file store in the run folder
  (RUN_DIR/mlruns), which works without a server.

The identity is written once, durably, to RUN_DIR/tracker.json by rank 0 (the only rank that logs) and read by
every later attempt.

The step axis is Lightning's logging step, the optimizer step (W&B: `trainer/global_step`; MLflow: the metric's
step). A stop asked by the scheduler checkpoints at the step it stops at, so the resumed attempt logs from the
next step: one series, each step once. An attempt killed without its stop checkpoint (SIGKILL, a lost node) had
logged steps after its last checkpoint; the resumed attempt does those steps again and logs them again. These
trackers cannot delete points, so those steps (and only those) hold two points, the later one the run's own.

No credential is read or written here: W&B and MLflow read theirs (WANDB_API_KEY, MLFLOW_TRACKING_TOKEN, ...) from
the environment, which the job inherits by name (cluster.env_passthrough). W&B is told not to record the
environment, the command line, git state, code or console output, so no value can end up in its files.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional

from pytorch_lightning.loggers import MLFlowLogger, WandbLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from configs.validate import TRACKER_PACKAGES
from trainer_core import layout
from trainer_core.durable import write_atomic

TRACKERS = tuple(TRACKER_PACKAGES)


class TrackerMissing(RuntimeError):
    pass


def build_tracker(kind: str, run_dir: os.PathLike | str, tracker: Optional[Mapping[str, Any]],
                  run_name: str) -> Any:
    """The Lightning logger for trainer.logger=wandb|mlflow, continuing the tracker run of this run folder."""
    module, extra = TRACKER_PACKAGES[kind]
    try:
        __import__(module)
    except ImportError as e:
        raise TrackerMissing(f"trainer.logger={kind} needs the {module} package, which is not installed here "
                             f"({e}); install it with: pip install 'zerorun[{extra}]'") from None
    t = dict(tracker or {})
    run_dir = Path(run_dir)
    project = t.get("project") or run_name
    if kind == "wandb":
        return _wandb(run_dir, project, t, run_name)
    return _mlflow(run_dir, project, t, run_name)


# ---- the identity kept in the run folder ----

def read_identity(run_dir: Path) -> dict[str, Any]:
    path = run_dir / layout.TRACKER
    return json.loads(path.read_text()) if path.is_file() else {}


def _record_identity(run_dir: Path, kind: str, value: dict[str, Any]) -> None:
    state = read_identity(run_dir)
    state[kind] = value
    write_atomic(run_dir / layout.TRACKER, json.dumps(state, indent=1, sort_keys=True) + "\n", mode=0o644)


def wandb_id(run_dir: Path) -> str:
    """A W&B run id for this run folder: its name and run id ("NAME/RUN_ID"), in the characters W&B allows."""
    raw = f"{run_dir.parent.name}-{run_dir.name}"
    return re.sub(r"[^A-Za-z0-9_-]+", "-", raw)[-64:].strip("-") or "zerorun"


# ---- W&B ----

def _wandb(run_dir: Path, project: str, t: dict[str, Any], run_name: str) -> WandbLogger:
    import wandb

    known = read_identity(run_dir).get("wandb", {}).get("id")
    run_id = known or wandb_id(run_dir)
    if known is None and rank_zero_only.rank == 0:
        _record_identity(run_dir, "wandb", {"id": run_id})
    offline = str(t.get("mode") or "online") == "offline"
    # Nothing of the machine is recorded: not the environment, command line or host (meta), git state, code,
    # system statistics or the console (the rank logs hold it already); and no run summary in the rank log.
    settings = wandb.Settings(save_code=False, disable_git=True, x_disable_meta=True, x_disable_stats=True,
                              console="off", disable_job_creation=True, quiet=True)
    return FinishingWandbLogger(id=run_id, resume="allow", project=project, entity=t.get("entity") or None,
                                name=f"{run_name}/{run_dir.name}", save_dir=str(run_dir), offline=offline,
                                settings=settings)


class FinishingWandbLogger(WandbLogger):
    """Ends the W&B run when the attempt's fit ends, so that its files are complete before the process exits
    (a stopped attempt exits with a resumable status; the next attempt resumes the run by its id)."""

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is not None and hasattr(self._experiment, "finish"):
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._experiment = None


# ---- MLflow ----

def _mlflow(run_dir: Path, project: str, t: dict[str, Any], run_name: str) -> MLFlowLogger:
    uri = t.get("tracking_uri") or (run_dir / "mlruns").resolve().as_uri()
    if uri.startswith("file:"):
        # MLflow 3 keeps its file store only behind this switch; it is the store that needs no server
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    known = read_identity(run_dir).get("mlflow", {})
    run_id = known.get("run_id") if known.get("tracking_uri") == uri else None
    return ContinuedMLFlowLogger(run_dir, experiment_name=project, run_name=f"{run_name}/{run_dir.name}",
                                 tracking_uri=uri, run_id=run_id, tags={"zerorun.run_dir": run_dir.name})


class ContinuedMLFlowLogger(MLFlowLogger):
    """MLFlowLogger that records the run it creates in the run folder, and marks a continued run running again
    (the earlier attempt's end marked it finished)."""

    def __init__(self, run_dir: Path, **kwargs: Any) -> None:
        self._zr_run_dir = run_dir
        self._zr_continued = kwargs.get("run_id") is not None
        super().__init__(**kwargs)

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        first = not self._initialized
        client = super().experiment
        if first:
            if self._zr_continued:
                client.update_run(self._run_id, status="RUNNING")
            else:
                _record_identity(self._zr_run_dir, "mlflow",
                                 {"run_id": self._run_id, "tracking_uri": self._tracking_uri})
        return client
