"""Hangs and dead ranks with cluster=local: the local launcher runs the same watchdog beside its ranks as the
batch host does on Slurm, starts a hung attempt's ranks again (the next restart of the same job) and resumes it
from the run's latest checkpoint. Faults are real: SIGSTOP and SIGSEGV to a rank's process, a rank blocked by
the test-only watchdog.test_only_hang_* settings, and a step really longer than watchdog.timeout_s.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, wait_until
from jobs.verbs import status
from trainer_core import attempts
from trainer_core.progress import read as read_progress

TIMEOUT_S = 8
TINY = ("trainer.val_check_interval=1000", "trainer.logger=csv", "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=50", "dataset.synthetic_train_size=400", "dataset.max_val_samples=8",
        "task.log_samples=0", "seed=7", "trainer.checkpoint.every_n_steps=20", "trainer.collective_timeout_s=600",
        f"watchdog.timeout_s={TIMEOUT_S}", "watchdog.startup_timeout_s=120", "watchdog.checkpoint_timeout_s=60")


def start(runs: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "train.py", f"cluster.runs_dir={runs}", *TINY, *overrides], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return out


def events(run_dir: Path, kind: str) -> list[dict]:
    return [e for e in attempts.read(run_dir) if e["event"] == kind]


def run_folder(runs: Path) -> Path:
    return wait_until("the run folder", lambda: next((p.parent for p in runs.glob("*/*/attempts.jsonl")), None), 120)


def status_text(target: Path) -> str:
    out = io.StringIO()
    assert status([str(target)], out=out) == 0
    return out.getvalue()


@pytest.mark.slow
def test_a_stopped_rank_of_a_local_run_is_found_hung_its_stacks_kept_and_the_run_completes(tmp_path):
    proc = start(tmp_path / "runs", "trainer=ddp", "cluster.tasks_per_node=2", "trainer.max_steps=120")
    try:
        run_dir = run_folder(tmp_path / "runs")
        wait_until("a checkpoint", lambda: events(run_dir, "checkpoint"), 180, poll=0.2)
        victim = read_progress(run_dir / "progress" / "rank-1.json")["pid"]
        os.kill(victim, signal.SIGSTOP)
        stopped_at = time.time()
        hang = wait_until("the watchdog's hung event", lambda: (events(run_dir, "hung") or [None])[0],
                          TIMEOUT_S + 45, poll=0.2)
    finally:
        out = finish(proc, 300)
    assert proc.returncode == 0, out[-4000:]
    assert hang["detected_at"] - stopped_at <= TIMEOUT_S + 15, hang
    assert hang["ranks"] == [1] and hang["nodes"] == ["local0"] and hang["phase"] == "training", hang
    stacks = run_dir / hang["stacks"]
    assert sorted(p.name for p in stacks.iterdir()) == ["rank-0.txt", "rank-1.txt"]
    stopped = (stacks / "rank-1.txt").read_text()
    assert "state: T" in stopped and f"pid {victim}" in stopped, stopped
    assert "Thread" in (stacks / "rank-0.txt").read_text() or "py-spy" in (stacks / "rank-0.txt").read_text()
    requeues = events(run_dir, "requeue")
    assert [(r["cause"], r["requeued"]) for r in requeues] == [("hang", True)], requeues
    saved = [c["step"] for c in events(run_dir, "checkpoint") if c["time"] < hang["time"]]
    runs = attempts.attempts(attempts.read(run_dir))
    assert [(a.restart_count, a.resumed_from_step, a.end) for a in runs] == [(0, None, None),
                                                                             (1, saved[-1], "completed")], runs
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 120
    text = status_text(run_dir)
    assert "hung in training at step" in text and "rank 1 on local0" in text and "requeued" in text, text


@pytest.mark.slow
def test_a_timeout_shorter_than_a_step_is_refused_with_the_measured_step_time(tmp_path):
    """A 1 ms timeout: shorter than any real step. The ranks refuse after three measured steps, before the
    watchdog can count a step as a hang (measured steps run under the start-up limit); a resume of the run
    with such a timeout is refused before anything starts, from the step time the ranks recorded."""
    out = finish(start(tmp_path / "runs", "trainer.max_steps=40", "watchdog.timeout_s=0.001"), 300)
    assert "watchdog.timeout_s=0.001 is shorter than one optimizer step (" in out, out[-4000:]
    assert " s measured, the median of 3 steps)" in out, out[-4000:]
    run_dir = run_folder(tmp_path / "runs")
    assert not events(run_dir, "hung"), "the watchdog took the slow steps for a hang"
    measured = events(run_dir, "step_time")
    assert len(measured) == 1 and measured[0]["seconds"] > 0.001, measured
    refused = subprocess.run([sys.executable, "train.py", f"resume={run_dir}", "watchdog.timeout_s=0.001"],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert f"{measured[0]['seconds']:.2f} s measured" in refused.stderr, refused.stderr


@pytest.mark.slow
def test_a_local_sweeps_status_names_the_hung_member_and_the_rank_that_died(tmp_path):
    """Two members run at once: member 0 blocks in step 5 (the test-only hang, not requeued), member 1's rank is
    sent SIGSEGV while it trains. `zerorun status SWEEP_DIR` names, per member, what the run's own status
    would: HUNG with the step, rank and node; the dead rank with its node and signal."""
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "-m", f"cluster.runs_dir={runs}", *TINY,
                             "trainer.max_steps=400", "watchdog.timeout_s=5", "watchdog.requeue=false",
                             "watchdog.test_only_hang_at_step=5", "sweep.parallelism=2",
                             "watchdog.test_only_hang_rank=0,null"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        record = wait_until("member 1's first steps", lambda: next(
            (p for p in runs.glob("*/sweep-*/1/progress/rank-0.json") if (read_progress(p) or {}).get("step", 0) > 2),
            None), 180, poll=0.2)
        os.kill(read_progress(record)["pid"], signal.SIGSEGV)
    finally:
        out = finish(proc, 240)
    assert proc.returncode == 1, out[-4000:]
    sweep_dir = record.parents[2]
    from jobs.sweeps.verbs import status as sweep_status

    text = io.StringIO()
    assert sweep_status([str(sweep_dir)], out=text) == 0
    rows = {line.split()[0]: line for line in text.getvalue().splitlines()[1:] if line[:1].isdigit()}
    assert "HUNG at step 4 (training): rank 0 on local0" in rows["0"], text.getvalue()
    assert "rank 0 on local0: Segmentation fault (SIGSEGV)" in rows["1"], text.getvalue()
    assert "FAILED" in rows["0"] and "FAILED" in rows["1"], text.getvalue()
