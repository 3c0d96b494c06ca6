"""The stop contract rehearsed with the local backend: the job's signal reaches every rank, all ranks stop
after the same step and save one checkpoint, and a resumed run ends with weights bit-identical to a run
that was never interrupted (stateful loader and sampler, per-rank RNG, same schedule)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, read_csv_metric, read_rank_reports
from jobs import attempts

STEPS = 80
COMMON = (
    f"trainer.max_steps={STEPS}", "trainer.val_check_interval=1000", "trainer.log_every_n_steps=1",
    "trainer.logger=csv", "trainer.enable_progress_bar=false", "dataset.synthetic_train_size=400",
    "dataset.max_val_samples=8", "backbone.model_config.dropout_rate=0.1", "trainer.checkpoint.save_at_end=false",
    "seed=7",
)


def _start(runs: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "train.py", f"cluster.runs_dir={runs}", *COMMON, *overrides],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run_dir(runs: Path) -> Path:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = [p for p in runs.glob("*/*") if (p / attempts.FILE).exists()]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no run started under {runs}")


def _wait(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["ddp", pytest.param("deepspeed", marks=pytest.mark.deepspeed)])
def test_signal_stops_every_rank_at_one_step_and_resume_is_bit_exact(tmp_path, trainer):
    geometry = (f"trainer={trainer}", "cluster.tasks_per_node=2")

    reference = _start(tmp_path / "ref", *geometry)
    _wait(reference)
    ref_reports = read_rank_reports(_run_dir(tmp_path / "ref"))

    interrupted = _start(tmp_path / "int", *geometry)
    run_dir = _run_dir(tmp_path / "int")
    time.sleep(3)  # let it train some steps
    interrupted.send_signal(signal.SIGUSR2)  # the launcher forwards it to every rank, as Slurm does
    out = _wait(interrupted)
    assert "stopped at step" in out, out[-3000:]

    events = attempts.read(run_dir)
    stop = next(e for e in events if e["event"] == "checkpoint")["step"]
    assert 0 < stop < STEPS, f"the stop came at step {stop}; make the run longer"
    assert [e["event"] for e in events] == ["start", "signal", "checkpoint", "requeue", "end"]
    assert all(r["metrics"]["global_step"] == stop for r in read_rank_reports(run_dir)), "ranks stopped apart"

    resumed = subprocess.run([sys.executable, "train.py", f"resume={run_dir}"], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert attempts.attempts(attempts.read(run_dir))[-1].resumed_from_step == stop

    got = read_rank_reports(run_dir)
    assert [r["weights_sha256"] for r in got] == [r["weights_sha256"] for r in ref_reports], \
        "resumed weights differ from the uninterrupted run"
    steps = [s for s, _ in read_csv_metric(run_dir, "train_loss")]
    assert sorted(set(steps)) == list(range(min(steps), STEPS)), "the logged loss series has a gap"
