"""The stop contract rehearsed with the local backend: the job's signal reaches every rank, all ranks stop
after the same step and save one checkpoint, and a resumed run ends with weights bit-identical to a run that was
never interrupted (stateful loader and sampler, per-rank RNG, same schedule), its logged losses one series.

A stop on an epoch's last batch is the hard case (2 ranks, 400 samples, batch 32: 7 batches an epoch, so steps
7, 14, 21 end an epoch). To land a stop on a chosen step, rank 0 sends the job's signal to the local launcher
(which forwards it to every rank, as Slurm does) just before the ranks agree on stopping at that step: the
moment is injected, the signal path and everything after it are the real ones. A stopped run exits with
EXIT_RESUMABLE (75); whether it goes back into the queue is the batch host's decision, not rehearsed here. A stop
asked in the last step, or during the final save, lets the run finish as completed.

Also here: a resume=RUN_DIR that cannot work is refused before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, read_csv_metric, read_rank_reports
from trainer_core import attempts
from trainer_core.contract import EXIT_RESUMABLE

STEPS = 30
COMMON = (
    f"trainer.max_steps={STEPS}", "trainer.val_check_interval=1000", "trainer.log_every_n_steps=1",
    "trainer.logger=csv", "trainer.enable_progress_bar=false", "dataset.synthetic_train_size=400",
    "dataset.max_val_samples=8", "backbone.model_config.dropout_rate=0.1", "seed=7", "cluster.tasks_per_node=2",
)
STOP_AT_ENV = "ZR_TEST_STOP_AT_STEP"
STOP_IN_ENV = "ZR_TEST_STOP_IN"


def stop_injector(where: Path) -> Path:
    """A sitecustomize for rank 0: at step $ZR_TEST_STOP_AT_STEP, send the job's signal to the launcher (the
    rank's parent) and wait until this rank has recorded it. $ZR_TEST_STOP_IN says when: "boundary" (default),
    at the step's end before the ranks agree whether to stop; "save", as that step's checkpoint save begins."""
    where.mkdir(exist_ok=True)
    (where / "sitecustomize.py").write_text(f"""
import os, signal, sys, time
# rank 0, by the scheduler's variable or the rank contract's (whichever the backend sets)
if os.environ.get({STOP_AT_ENV!r}) and os.environ.get("SLURM_PROCID", os.environ.get("RANK")) == "0":
    _step = int(os.environ[{STOP_AT_ENV!r}])
    _in_save = os.environ.get({STOP_IN_ENV!r}) == "save"
    class _Hook:
        def find_spec(self, name, path=None, target=None):
            if name != "trainer_core.train":
                return None
            sys.meta_path.remove(self)
            from trainer_core import checkpointing, preemption
            stopper = {{}}
            def _ask(trainer):
                signals = stopper["signals"]
                if trainer.global_step == _step and signals.requested is None:
                    os.kill(os.getppid(), getattr(signal, "SIG" + signals.job_signal))
                    deadline = time.monotonic() + 10
                    while signals.requested is None and time.monotonic() < deadline:
                        time.sleep(0.001)
                    print(f"zr-test: stop asked at step {{trainer.global_step}}", flush=True)
            on_batch_end = preemption.StopAtStepBoundary.on_train_batch_end
            def on_train_batch_end(self, trainer, *args):
                stopper["signals"] = self.signals
                if not _in_save:
                    _ask(trainer)
                return on_batch_end(self, trainer, *args)
            preemption.StopAtStepBoundary.on_train_batch_end = on_train_batch_end
            save = checkpointing.AtomicCheckpoint.save
            def _save(self, trainer, why):
                if _in_save:
                    _ask(trainer)
                return save(self, trainer, why)
            checkpointing.AtomicCheckpoint.save = _save
            return None
    sys.meta_path.insert(0, _Hook())
""")
    return where


def train(*args: str, env: dict | None = None, timeout: float = 300, status: int = 0) -> str:
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    out = proc.stdout + proc.stderr
    assert proc.returncode == status, out[-4000:]
    return out


def run_dir_of(runs: Path) -> Path:
    found = [p for p in runs.glob("*/*") if (p / "config.yaml").exists()]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """overrides -> the uninterrupted run's folder (made once per set of overrides)."""
    made: dict[tuple[str, ...], Path] = {}

    def get(*overrides: str) -> Path:
        if overrides not in made:
            runs = tmp_path_factory.mktemp("reference")
            train(f"cluster.runs_dir={runs}", *COMMON, *overrides, "trainer.checkpoint.save_at_end=true")
            made[overrides] = run_dir_of(runs)
        return made[overrides]

    return get


def assert_same_run(run_dir: Path, ref: Path) -> None:
    assert [r["weights_sha256"] for r in read_rank_reports(run_dir)] == \
           [r["weights_sha256"] for r in read_rank_reports(ref)], "resumed weights differ from the uninterrupted run"
    assert read_csv_metric(run_dir, "train_loss") == read_csv_metric(ref, "train_loss"), \
        "the logged losses are not the uninterrupted run's series (a gap, a repeat or another value)"


@pytest.mark.slow
@pytest.mark.parametrize("overrides,stop", [
    (("trainer=ddp",), 10),
    (("trainer=ddp",), 14),  # an epoch's last batch
    (("trainer=ddp", "trainer.accumulate_grad_batches=2"), 5),  # 4 optimizer steps an epoch; mid-epoch
    pytest.param(("trainer=deepspeed",), 10, marks=pytest.mark.deepspeed),
    pytest.param(("trainer=deepspeed",), 21, marks=pytest.mark.deepspeed),  # an epoch's last batch
], ids=["ddp-mid-epoch", "ddp-last-batch", "ddp-accumulating", "deepspeed-mid-epoch", "deepspeed-last-batch"])
def test_signal_stops_every_rank_at_one_step_and_resume_is_bit_exact(tmp_path, reference, overrides, stop):
    ref = reference(*overrides)
    inject = stop_injector(tmp_path / "inject")
    out = train(f"cluster.runs_dir={tmp_path / 'runs'}", *COMMON, *overrides, "trainer.checkpoint.save_at_end=false",
                env={"PYTHONPATH": str(inject), STOP_AT_ENV: str(stop)}, status=EXIT_RESUMABLE)
    run_dir = run_dir_of(tmp_path / "runs")
    assert f"stopped at step {stop} (signal USR2): checkpointed; exiting resumable (75)" in out, out[-3000:]
    assert f"stopped at step {stop} (preemption)" in out, out[-3000:]

    events = [e for e in attempts.read(run_dir) if e["event"] not in ("rank_start", "step_time")]
    assert [e["event"] for e in events] == ["start", "first_step", "signal", "checkpoint", "end", "requeue"]
    assert sorted(e["rank"] for e in attempts.read(run_dir) if e["event"] == "rank_start") == [0, 1]
    assert next(e for e in events if e["event"] == "checkpoint")["step"] == stop
    reports = read_rank_reports(run_dir)
    assert [r["metrics"]["global_step"] for r in reports] == [stop, stop], "the ranks stopped apart"
    for r in reports:
        assert r["signal_handlers"] == {"INT": "zerorun", "TERM": "zerorun", "USR2": "zerorun"}, \
            f"rank {r['rank']}: another handler held a stop signal during training"
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step-{stop:08d}"

    train(f"resume={run_dir}")
    runs = attempts.attempts(attempts.read(run_dir))
    assert [(a.resumed_from_step, a.end) for a in runs] == [(None, "stopped"), (stop, "completed")]
    assert_same_run(run_dir, ref)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["boundary", "save"])
def test_a_stop_asked_in_the_last_step_lets_the_run_finish_with_its_validation(tmp_path, where):
    """A run that has reached max_steps is done: a stop asked then (or during the final save) must not send it
    back to the queue with its validation skipped (the rerun would write metrics without the sweep's metric)."""
    inject = stop_injector(tmp_path / "inject")
    out = train(f"cluster.runs_dir={tmp_path / 'runs'}", *COMMON, "trainer=ddp", f"trainer.val_check_interval={STEPS}",
                "trainer.checkpoint.save_at_end=true",
                env={"PYTHONPATH": str(inject), STOP_AT_ENV: str(STEPS), STOP_IN_ENV: where})
    assert f"zr-test: stop asked at step {STEPS}" in out, out[-3000:]
    run_dir = run_dir_of(tmp_path / "runs")
    events = [e for e in attempts.read(run_dir) if e["event"] not in ("rank_start", "step_time")]
    assert [e["event"] for e in events] == ["start", "first_step", "checkpoint", "end"], events
    assert events[-1]["status"] == "completed" and events[-1]["step"] == STEPS
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == STEPS and "val_loss" in metrics, metrics
    assert [r["metrics"]["global_step"] for r in read_rank_reports(run_dir)] == [STEPS, STEPS]


@pytest.mark.slow
def test_a_finished_run_resumed_with_more_steps_continues_exactly(tmp_path, reference):
    # a constant learning rate, so that a longer run is the same run; 10 steps end inside the second epoch
    ref = reference("trainer=ddp", "scheduler=constant")
    shorter = [o for o in COMMON if not o.startswith("trainer.max_steps=")]
    train(f"cluster.runs_dir={tmp_path / 'runs'}", *shorter, "trainer=ddp", "scheduler=constant",
          "trainer.max_steps=10", "trainer.checkpoint.save_at_end=true")
    run_dir = run_dir_of(tmp_path / "runs")
    train(f"resume={run_dir}", f"trainer.max_steps={STEPS}")
    assert attempts.attempts(attempts.read(run_dir))[-1].resumed_from_step == 10
    assert_same_run(run_dir, ref)


# ---- a resume that cannot work is refused, naming what was found, with nothing written ----

def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(*args: str) -> str:
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stderr


@pytest.fixture
def finished_run(reference, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(reference("trainer=ddp"), copy)
    (copy / "checkpoints").mkdir(exist_ok=True)
    return copy


@pytest.mark.slow
def test_resume_refuses_a_folder_without_checkpoint(finished_run):
    shutil.rmtree(finished_run / "checkpoints")
    before = _snapshot(finished_run)
    err = _refused(f"resume={finished_run}")
    assert "has no checkpoint to resume from" in err and "checkpoints does not exist" in err, err
    assert _snapshot(finished_run) == before


@pytest.mark.slow
def test_resume_refuses_a_corrupt_latest_pointer(finished_run):
    (finished_run / "checkpoints" / "latest").write_text("step-0000zz\n")
    before = _snapshot(finished_run)
    err = _refused(f"resume={finished_run}")
    assert "names 'step-0000zz', which is not a complete checkpoint" in err, err
    assert "complete ones: step-" in err
    assert _snapshot(finished_run) == before


@pytest.mark.slow
@pytest.mark.parametrize("override,found", [
    ("backbone.model_config.d_model=32", "a model configured otherwise (backbone.model_config.d_model: 64 -> 32;"),
    ("trainer.strategy.name=deepspeed", "written by strategy 'ddp', this run uses 'deepspeed'"),
    # another number of ranks resumes where the global batch divides over them (tests/test_resize_local.py)
    ("cluster.tasks_per_node=3", "the global batch of 64 rows (2 ranks x 32 rows x 1 accumulated) cannot be kept "
                                 "on 3 ranks x dataset.batch_size=32"),
    ("backbone.model_config.d_model=32 cluster.tasks_per_node=1", "a model configured otherwise"),
], ids=["other-model", "other-strategy", "batch-not-divisible", "other-model-and-size"])
def test_resume_refuses_a_checkpoint_of_another_model_or_strategy(finished_run, override, found):
    before = _snapshot(finished_run)
    err = _refused(f"resume={finished_run}", *override.split())
    assert found in err and "cannot resume from" in err, err
    assert _snapshot(finished_run) == before


# ---- the logger run every attempt continues ----

def _log(logger, steps, offset: float = 0.0, extra: dict | None = None) -> None:
    for s in steps:
        logger.log_metrics({"train_loss": offset + s, **((extra or {}).get(s, {}))}, step=s)
    logger.save()


def test_csv_log_keeps_the_rows_before_the_resumed_step_and_appends(tmp_path):
    from trainer_core.loggers import build_logger

    _log(build_logger("csv", tmp_path, None), range(20))  # attempt 1 got to step 19; its checkpoint is step 14
    _log(build_logger("csv", tmp_path, 14), range(14, 30), offset=100, extra={20: {"val_loss": 1.5}})
    assert read_csv_metric(tmp_path, "train_loss") == [(s, float(s)) for s in range(14)] + \
           [(s, 100.0 + s) for s in range(14, 30)]
    assert read_csv_metric(tmp_path, "val_loss") == [(20, 1.5)], "a new column keeps the earlier rows"
    _log(build_logger("csv", tmp_path, None), range(3))  # a rerun from scratch (no checkpoint) starts over
    assert read_csv_metric(tmp_path, "train_loss") == [(s, float(s)) for s in range(3)]


def test_tensorboard_keeps_version_0_and_one_series(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trainer_core.loggers import build_logger

    first = build_logger("tensorboard", tmp_path, None)
    _log(first, range(20))
    first.finalize("success")
    second = build_logger("tensorboard", tmp_path, 14)
    _log(second, range(14, 30), offset=100)
    second.finalize("success")
    assert first.log_dir == second.log_dir == str(tmp_path / "tensorboard" / "version_0")
    shown = EventAccumulator(second.log_dir)
    shown.Reload()
    assert [(e.step, e.value) for e in shown.Scalars("train_loss")] == \
           [(s, float(s)) for s in range(14)] + [(s, 100.0 + s) for s in range(14, 30)]
