"""Experiment trackers (trainer.logger=wandb, mlflow): one tracker run per zerorun run, continued across
preemptions with one step axis, offline, and no credential in any file of the run folder.

The run is preempted twice for real (the local backend, the job's signal sent to the launcher at a chosen step
as in test_preemption_local.py) and resumed each time; the tracker's own files are read back afterwards: W&B's
offline run files (its record log, parsed here) and MLflow's file store (through MLflow's client).
"""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import pytest

from conftest import compose_config
from test_preemption_local import STOP_AT_ENV, run_dir_of, stop_injector, train
from trainer_core import attempts
from trainer_core.contract import EXIT_RESUMABLE

STEPS = 12
STOPS = (4, 8)
FAKE_SECRETS = {"WANDB_API_KEY": "zr_fake_wandb_key_0123456789abcdef0123",
                "MLFLOW_TRACKING_TOKEN": "zr_fake_mlflow_token_0123456789abcdef"}
COMMON = (
    f"trainer.max_steps={STEPS}", "trainer.val_check_interval=1000", "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false", "dataset.synthetic_train_size=200", "dataset.max_val_samples=8",
    "seed=7", "trainer=ddp", "cluster.tasks_per_node=2", "trainer.tracker.mode=offline",
    "trainer.checkpoint.save_at_end=false", "cluster.env_passthrough=[WANDB_API_KEY,MLFLOW_TRACKING_TOKEN]",
)


# ---- reading the trackers' own files ----

def wandb_records(path: Path) -> list:
    """The records of one W&B run file (run-ID.wandb): a 7-byte header (":W&B", magic, version), then LevelDB's
    log format (32 KiB blocks of chunks: crc32 u32, length u16, type u8; FULL=1, FIRST=2, MIDDLE=3, LAST=4),
    each record a wandb Record protobuf."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_attempts(run_dir: Path) -> list[tuple[str, list[dict]]]:
    """(run id, history rows) of each offline run folder W&B wrote, oldest first."""
    found = []
    for folder in sorted((run_dir / "wandb").glob("offline-run-*")):
        (file,) = folder.glob("run-*.wandb")
        records = wandb_records(file)
        ids = {r.run.run_id for r in records if r.WhichOneof("record_type") == "run"}
        assert len(ids) == 1, (folder, ids)
        rows = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
                for r in records if r.WhichOneof("record_type") == "history"]
        found.append((ids.pop(), rows))
    return found


def mlflow_client(uri: str):
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def assert_no_secret_in(run_dir: Path) -> None:
    files = [p for p in run_dir.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any("wandb" in p.parts or "mlruns" in p.parts for p in files), "the tracker wrote nothing"
    for name, value in FAKE_SECRETS.items():
        holding = [str(p.relative_to(run_dir)) for p in files if value.encode() in p.read_bytes()]
        assert holding == [], f"the value of ${name} was written into {holding}"


# ---- two real preemptions, one tracker run ----

def preempted_twice(tmp_path: Path, logger: str) -> Path:
    inject = stop_injector(tmp_path / "inject")
    env = {"PYTHONPATH": str(inject), **FAKE_SECRETS}
    out = train(f"cluster.runs_dir={tmp_path / 'runs'}", *COMMON, f"trainer.logger={logger}",
                env={**env, STOP_AT_ENV: str(STOPS[0])}, status=EXIT_RESUMABLE)
    run_dir = run_dir_of(tmp_path / "runs")
    assert f"stopped at step {STOPS[0]}" in out, out[-3000:]
    out = train(f"resume={run_dir}", env={**env, STOP_AT_ENV: str(STOPS[1])}, status=EXIT_RESUMABLE)
    assert f"stopped at step {STOPS[1]}" in out, out[-3000:]
    train(f"resume={run_dir}", env=env)
    runs = attempts.attempts(attempts.read(run_dir))
    assert [(a.resumed_from_step, a.end) for a in runs] == \
           [(None, "stopped"), (STOPS[0], "stopped"), (STOPS[1], "completed")]
    return run_dir


# Each attempt logs from the step it resumed at (its stop checkpoint's), so the three attempts log
# 0..3, 4..7 and 8..11: every step once, in order (Lightning logs optimizer step k+1's loss at step k).
EXPECTED = [list(range(0, STOPS[0])), list(range(*STOPS)), list(range(STOPS[1], STEPS))]


@pytest.mark.slow
def test_wandb_offline_run_continues_across_two_preemptions(tmp_path):
    run_dir = preempted_twice(tmp_path, "wandb")
    identity = json.loads((run_dir / "tracker.json").read_text())["wandb"]
    found = wandb_attempts(run_dir)
    # one offline folder per attempt (rank 1 logs nothing), all under the run's one id
    assert [run_id for run_id, _ in found] == [identity["id"]] * 3, found
    assert identity["id"] == f"{run_dir.parent.name}-{run_dir.name}"
    steps = [[row["trainer/global_step"] for row in rows if "train_loss" in row] for _, rows in found]
    assert steps == EXPECTED, "the step axis restarts, skips or repeats across attempts"
    assert all(row["train_loss"] > 0 for _, rows in found for row in rows if "train_loss" in row)
    assert_no_secret_in(run_dir)


@pytest.mark.slow
def test_mlflow_file_store_run_continues_across_two_preemptions(tmp_path):
    run_dir = preempted_twice(tmp_path, "mlflow")
    identity = json.loads((run_dir / "tracker.json").read_text())["mlflow"]
    assert identity["tracking_uri"] == (run_dir / "mlruns").resolve().as_uri()
    client = mlflow_client(identity["tracking_uri"])
    experiment = client.get_experiment_by_name("translation")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [identity["run_id"]], "one MLflow run for the three attempts"
    history = client.get_metric_history(identity["run_id"], "train_loss")
    assert [m.step for m in sorted(history, key=lambda m: m.timestamp)] == sum(EXPECTED, [])
    assert sorted(m.step for m in history) == list(range(STEPS))
    assert runs[0].info.status == "FINISHED"
    assert_no_secret_in(run_dir)


# ---- what a resumed attempt does to steps an earlier one logged after its checkpoint ----

def _log(logger, steps, offset: float = 0.0) -> None:
    for s in steps:
        logger.log_metrics({"train_loss": offset + s}, step=s)
    logger.finalize("success")


def test_mlflow_attempt_killed_after_its_checkpoint_logs_the_redone_steps_again(tmp_path):
    """A killed attempt (no stop checkpoint) got to step 19, its checkpoint is step 14: the next attempt
    continues the same MLflow run and logs steps 14..19 again; only those steps hold two points."""
    from trainer_core.loggers import build_logger

    tracker = {"mode": "offline", "project": "p"}
    _log(build_logger("mlflow", tmp_path, None, tracker, "r"), range(20))
    second = build_logger("mlflow", tmp_path, 14, tracker, "r")
    _log(second, range(14, 30), offset=100)
    run_id = json.loads((tmp_path / "tracker.json").read_text())["mlflow"]["run_id"]
    assert second.run_id == run_id
    client = mlflow_client(second._tracking_uri)
    points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train_loss"))
    assert points == sorted([(s, float(s)) for s in range(20)] + [(s, 100.0 + s) for s in range(14, 30)])
    assert len(client.search_runs([client.get_experiment_by_name("p").experiment_id])) == 1


def test_wandb_attempt_killed_after_its_checkpoint_logs_the_redone_steps_again(tmp_path):
    """The same for W&B offline: the second attempt's folder, under the same id, holds steps 14..29."""
    from trainer_core.loggers import build_logger

    run_dir = tmp_path / "lm" / "run1"
    run_dir.mkdir(parents=True)
    _log(build_logger("wandb", run_dir, None, {"mode": "offline"}, "lm"), range(20))
    time.sleep(1.1)  # W&B names an offline folder by the second its run started; real attempts are further apart
    _log(build_logger("wandb", run_dir, 14, {"mode": "offline"}, "lm"), range(14, 30), offset=100)
    found = wandb_attempts(run_dir)
    assert [i for i, _ in found] == ["lm-run1", "lm-run1"]
    assert [[(r["trainer/global_step"], r["train_loss"]) for r in rows] for _, rows in found] == \
           [[(s, float(s)) for s in range(20)], [(s, 100.0 + s) for s in range(14, 30)]]


def test_wandb_id_is_kept_from_the_first_start(tmp_path):
    """The id is written on the first start and read by every later attempt, even where the folder moved."""
    from trainer_core.trackers import build_tracker

    run_dir = tmp_path / "lm" / "20260101-000000-abcd1234"
    run_dir.mkdir(parents=True)
    first = build_tracker("wandb", run_dir, {"mode": "offline"}, "lm")
    assert first._id == "lm-20260101-000000-abcd1234"
    moved = tmp_path / "elsewhere" / "x"
    moved.parent.mkdir()
    run_dir.rename(moved)
    assert build_tracker("wandb", moved, {"mode": "offline"}, "lm")._id == "lm-20260101-000000-abcd1234"


# ---- refusals before anything is submitted ----

def test_a_missing_tracker_package_is_refused_naming_the_extra_faked_absent(monkeypatch):
    """The package is installed here, so its absence is faked at the one place the check looks (find_spec)."""
    import importlib.util

    from configs import validate

    real = importlib.util.find_spec
    monkeypatch.setattr(validate.importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real(name, *a))
    problems = validate.file_problems(compose_config("trainer.logger=mlflow"))
    assert any("trainer.logger=mlflow needs the mlflow package" in p and "pip install 'zerorun[mlflow]'" in p
               for p in problems), problems
    assert not any("wandb" in p for p in validate.file_problems(compose_config("trainer.logger=wandb")))


def test_tracker_settings_are_checked():
    from configs.validate import config_problems

    assert "trainer.tracker.mode='sometimes' is not supported; choose one of: online, offline" in \
        config_problems(compose_config("trainer.logger=wandb", "trainer.tracker.mode=sometimes"))
    problems = config_problems(compose_config("trainer.logger=mlflow", "trainer.tracker.mode=offline",
                                              "trainer.tracker.tracking_uri=http://tracker:5000"))
    assert any("trainer.tracker.tracking_uri='http://tracker:5000' is a server" in p for p in problems), problems
    assert config_problems(compose_config("trainer.logger=mlflow", "trainer.tracker.mode=offline")) == []
