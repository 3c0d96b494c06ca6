"""Preemption, time limits and kills against the real local Slurm cluster (nodes n1, n2 on this machine).

A job in partition `high` that takes every node preempts the jobs in `debug` (PreemptMode=REQUEUE): Slurm sends
their own signal (USR2) first, and zerorun checkpoints at the next step boundary and requeues the job itself.
The references are the same runs left alone, on the local backend with the same ranks (2 nodes x 1 task, gloo).
These tests requeue other people's `debug` jobs for a few seconds: every `high` job here sleeps 1 s.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from cluster import slurm
from cluster.requeue import EXIT_RESUMABLE
from conftest import REPO, only_run_dir, read_csv_metric, read_rank_reports, wait_until
from jobs import verbs
from trainer_core import attempts

pytestmark = pytest.mark.slurm

GEOMETRY = ("cluster.nodes=2", "cluster.tasks_per_node=1", "cluster.cpus_per_task=1")
SLURM = ("cluster=slurm", "cluster.gpus_per_node=0", "cluster.partition=debug", "cluster.mem=1G", *GEOMETRY)
RUN = ("trainer.val_check_interval=1000", "trainer.log_every_n_steps=1", "trainer.logger=csv",
       "trainer.enable_progress_bar=false", "dataset.synthetic_train_size=400", "dataset.max_val_samples=8",
       "backbone.model_config.dropout_rate=0.1", "seed=7", "task.log_samples=0")
DDP = ("trainer=ddp", "trainer.max_steps=200", *RUN)
DEEPSPEED = ("trainer=deepspeed", "trainer.max_steps=120", *RUN)
HANDLERS = {"INT": "zerorun", "TERM": "zerorun", "USR2": "zerorun"}


# ---- helpers ----

def submit(compose: Callable, runs: Path, *overrides: str) -> tuple[Path, str]:
    """compose + launch in this process, as `zerorun OVERRIDES` would; returns (run folder, job id)."""
    from jobs.app import launch
    from jobs.snapshot import read_record

    assert launch(compose(*overrides, runs_dir=runs)) == 0
    run_dir = only_run_dir(runs)
    return run_dir, read_record(run_dir).job_id


def resume(compose: Callable, run_dir: Path, *overrides: str) -> str:
    """`zerorun resume=RUN_DIR OVERRIDES` by hand; returns the new job id."""
    from jobs.app import launch
    from jobs.snapshot import read_record

    assert launch(compose(f"resume={run_dir}", runs_dir=run_dir.parent.parent), list(overrides)) == 0
    return read_record(run_dir).job_id


def events(run_dir: Path, name: str) -> list[dict]:
    return [e for e in attempts.read(run_dir) if e["event"] == name]


def training(run_dir: Path, attempt: int, timeout: float = 90) -> None:
    """Wait until attempt number `attempt` of the run has made its first optimizer step."""
    wait_until(f"attempt {attempt} to train", lambda: len(events(run_dir, "first_step")) >= attempt, timeout)


def preempt() -> str:
    """A 1-second job in `high` that needs every node: Slurm preempts the `debug` jobs on them."""
    out = slurm._run(["sbatch", "--parsable", "-p", "high", "-N", "2", "--exclusive", "-t", "1", "-o", "/dev/null",
                      "-J", "zr-preempt", "--wrap", "sleep 1"])
    return out.stdout.strip().split(";")[0]


def preempted_twice(run_dir: Path, job_id: str, pauses: tuple[float, float]) -> slurm.JobState:
    """Preempt a training job twice, `pauses` seconds into its first and second attempts, and wait for its end."""
    for attempt, after_s in enumerate(pauses, start=1):
        training(run_dir, attempt)
        time.sleep(after_s)
        preempt()
        wait_until(f"requeue {attempt}", lambda: len(events(run_dir, "requeue")) >= attempt, 60)
    return finished(job_id, timeout=120)


def finished(job_id: str, timeout: float) -> slurm.JobState:
    def done():
        st = slurm.query([job_id])[job_id]
        return st if st.finished else None
    return wait_until(f"job {job_id} to finish", done, timeout, poll=0.5)


def logs_of(run_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted((run_dir / "logs").glob("*")))


def status_text(run_dir: Path) -> str:
    out = io.StringIO()
    assert verbs.status([str(run_dir)], out=out) == 0
    return out.getvalue()


def rank_pid(job_id: str, rank: int) -> int:
    """The process of one rank of a running job, found by the variables Slurm gave it."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"jobs.rank" in cmd and f"SLURM_JOB_ID={job_id}".encode() in env and \
                f"SLURM_PROCID={rank}".encode() in env:
            return int(proc.name)
    raise AssertionError(f"no process of rank {rank} of job {job_id}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Callable[[tuple[str, ...]], Path]:
    """overrides -> the run folder of the same run left alone, on the local backend with the same ranks."""
    made: dict[tuple[str, ...], Path] = {}

    def get(overrides: tuple[str, ...]) -> Path:
        if overrides not in made:
            runs = tmp_path_factory.mktemp("reference")
            proc = subprocess.run([sys.executable, "train.py", f"cluster.runs_dir={runs}", *GEOMETRY, *overrides],
                                  cwd=REPO, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            made[overrides] = only_run_dir(runs)
        return made[overrides]

    return get


# ---- preemption ----

def test_ddp_preempted_twice_ends_bit_identical_with_one_loss_series(slurm_cluster, compose, reference, tmp_path):
    ref = reference(DDP)
    run_dir, job_id = submit(compose, tmp_path / "runs", *SLURM, *DDP)
    st = preempted_twice(run_dir, job_id, (0.5, 2.0))  # two different points of the run
    assert st.state == "COMPLETED", f"job {job_id} ended {st}:\n{logs_of(run_dir)}"

    runs = attempts.attempts(attempts.read(run_dir))
    assert [a.job_id for a in runs] == [job_id] * 3, "the same job, requeued"
    assert [a.restart_count for a in runs] == [0, 1, 2]
    assert [(a.cause, a.requeued) for a in runs[:2]] == [("preemption", True)] * 2
    first, second = runs[0].checkpoint_step, runs[1].checkpoint_step
    assert 0 < first < second < 200, f"stopped at steps {first}, {second}"
    assert [a.resumed_from_step for a in runs] == [None, first, second], "a resume did not start where it stopped"
    assert [a.end_step for a in runs] == [first, second, 200], "optimizer steps were lost or repeated"

    got, want = read_rank_reports(run_dir), read_rank_reports(ref)
    assert [(r["rank"], r["host"]) for r in got] == [(0, "n1"), (1, "n2")]
    assert [r["weights_sha256"] for r in got] == [r["weights_sha256"] for r in want], \
        "the preempted run's weights differ from the run left alone"
    assert all(r["signal_handlers"] == HANDLERS for r in got), [r["signal_handlers"] for r in got]
    assert read_csv_metric(run_dir, "train_loss") == read_csv_metric(ref, "train_loss"), \
        "the logged losses are not one unbroken series equal to the run left alone"

    shown = status_text(run_dir)
    assert f"3 (from {first}, {second})" in shown, shown
    assert f"requeued: preempted: requeue 2" in shown and "completed at step 200" in shown


@pytest.mark.deepspeed
def test_deepspeed_preempted_resumes_at_the_saved_step_with_the_same_loss(slurm_cluster, compose, reference,
                                                                         tmp_path):
    ref = reference(DEEPSPEED)
    run_dir, job_id = submit(compose, tmp_path / "runs", *SLURM, "cluster.cpu_rehearsal=true", *DEEPSPEED)
    training(run_dir, 1, timeout=120)
    time.sleep(1.0)
    preempt()
    st = finished(job_id, timeout=150)
    assert st.state == "COMPLETED", f"job {job_id} ended {st}:\n{logs_of(run_dir)}"

    runs = attempts.attempts(attempts.read(run_dir))
    assert len(runs) == 2 and runs[0].cause == "preemption" and runs[0].requeued
    saved = runs[0].checkpoint_step
    assert runs[1].resumed_from_step == saved and runs[0].end_step == saved
    shards = sorted(p.name for p in (run_dir / "checkpoints" / f"step-{saved:08d}" / "ckpt").rglob("*optim_states.pt"))
    assert len(shards) == 2, f"a sharded ZeRO-2 checkpoint has one optimizer shard per rank: {shards}"

    losses, ref_losses = dict(read_csv_metric(run_dir, "train_loss")), dict(read_csv_metric(ref, "train_loss"))
    # the first loss the resumed attempt logged (step `saved`: the loss of optimizer step saved + 1)
    assert losses[saved] == ref_losses[saved], "the resumed attempt does not continue with the same loss"
    assert losses == ref_losses
    assert [r["weights_sha256"] for r in read_rank_reports(run_dir)] == \
           [r["weights_sha256"] for r in read_rank_reports(ref)]


@pytest.mark.deepspeed
def test_job_signal_during_deepspeed_op_build_is_kept_for_the_first_step(slurm_cluster, compose, tmp_path,
                                                                        monkeypatch):
    # An empty extensions folder makes the rank compile DeepSpeed's shm_comm op (~30 s) at start-up. Slurm
    # delivers the job's signal to every process of the step, the compilers included; ninja starts them with an
    # empty signal mask, so only an inherited "ignore" keeps them alive.
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_extensions"))
    run_dir, job_id = submit(compose, tmp_path / "runs", *SLURM, "cluster.nodes=1", "cluster.cpu_rehearsal=true",
                             "trainer=deepspeed", "trainer.max_steps=30", *RUN)

    def compiling() -> bool:
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and (proc / "comm").read_text().strip() == "cc1plus" and \
                        f"SLURM_JOB_ID={job_id}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                    return True
            except OSError:
                continue
        return False

    wait_until("the op build to start", compiling, 90, poll=0.05)
    slurm._run(["scancel", "--signal=USR2", job_id])
    st = finished(job_id, timeout=300)  # an op build, a requeue and a rerun: minutes on a busy machine
    assert st.state == "COMPLETED", f"job {job_id} ended {st}:\n{logs_of(run_dir)}"
    runs = attempts.attempts(attempts.read(run_dir))
    assert [(a.signals, a.checkpoint_step, a.requeued) for a in runs[:1]] == [(["USR2 (preemption)"], 1, True)], \
        "the signal that came during start-up was not kept for the first step boundary"
    assert runs[-1].resumed_from_step == 1 and runs[-1].end == "completed"


# ---- the time limit ----

def test_time_limit_checkpoints_requeues_and_stops_after_max_timeouts(slurm_cluster, compose, tmp_path):
    # 1 minute with the signal 45 s before the end: a signal ~15 s into every attempt (Slurm may send it earlier)
    run_dir, job_id = submit(compose, tmp_path / "runs", *SLURM, "cluster.nodes=1", "trainer=default",
                             "trainer.max_steps=100000", *RUN, "cluster.time_min=1",
                             "cluster.signal_delay_s=45", "requeue.max_timeouts=1")
    st = finished(job_id, timeout=110)
    runs = attempts.attempts(attempts.read(run_dir))
    assert [(a.cause, a.requeued) for a in runs] == [("timeout", True), ("timeout", False)], \
        f"{runs}\n{logs_of(run_dir)}"
    assert runs[1].resumed_from_step == runs[0].checkpoint_step > 0
    assert "requeue.max_timeouts=1 is used up" in runs[1].requeue
    assert runs[1].exit_code == EXIT_RESUMABLE and st.exit_code == f"{EXIT_RESUMABLE}:0", st
    shown = status_text(run_dir)
    row = next(x for x in shown.splitlines() if x.startswith(job_id))
    assert "RESUMABLE" in row and "time limit reached 2 times" in row and f"resume={run_dir}" in row, shown
    assert f"2 (from {runs[0].checkpoint_step})" in row


def test_without_scontrol_the_job_ends_resumable(slurm_cluster, compose, tmp_path):
    # a batch host whose PATH has srun but no scontrol: the ranks checkpoint, the job cannot requeue, and says so
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").symlink_to(shutil.which("srun"))
    run_dir, job_id = submit(compose, tmp_path / "runs", *SLURM, "cluster.nodes=1", "trainer=default",
                             "trainer.max_steps=100000", *RUN, f"cluster.setup=['export PATH={bin_dir}']")
    training(run_dir, 1)
    slurm._run(["scancel", "--signal=USR2", job_id])
    st = finished(job_id, timeout=60)
    assert st.exit_code == f"{EXIT_RESUMABLE}:0", f"{st}\n{logs_of(run_dir)}"
    (attempt,) = attempts.attempts(attempts.read(run_dir))
    assert attempt.requeued is False and "scontrol is not on PATH" in attempt.requeue
    assert "zerorun: stopped at step" in logs_of(run_dir) and "resumable with resume=" in logs_of(run_dir)
    assert "RESUMABLE" in status_text(run_dir)


# ---- a kill in the middle of a save ----

def test_kill_during_a_checkpoint_save_leaves_the_previous_one_to_resume_from(slurm_cluster, compose, reference,
                                                                             tmp_path):
    ref = reference(DDP)
    run_dir, job_id = submit(compose, tmp_path / "runs", *SLURM, *DDP, "trainer.checkpoint.every_n_steps=1",
                             "trainer.checkpoint.keep_last=3")
    training(run_dir, 1)
    victim = rank_pid(job_id, 0)  # rank 0 writes the file and commits the save
    checkpoints = run_dir / "checkpoints"

    def saving() -> str:
        return next((p.name for p in checkpoints.iterdir() if p.name.startswith(".tmp-step-")), "")

    time.sleep(0.5)
    # freeze the rank inside a save, then kill it there: on a loaded machine a save can end between seeing its
    # folder and the kill, so a save that ended before the freeze is let go and the next one is caught
    for _ in range(50):
        interrupted = wait_until("a save in progress", saving, 30, poll=0.0005)
        os.kill(victim, signal.SIGSTOP)
        if (checkpoints / interrupted).exists():
            break
        os.kill(victim, signal.SIGCONT)
    os.kill(victim, signal.SIGKILL)
    st = finished(job_id, timeout=60)
    assert st.state == "FAILED", st

    latest = (checkpoints / "latest").read_text().strip()
    assert (checkpoints / latest / "meta.json").exists(), f"latest names {latest}, which is not whole"
    left = sorted(p.name for p in checkpoints.iterdir() if p.name.startswith(".tmp-"))
    assert left == [interrupted] and int(interrupted[-8:]) == int(latest[-8:]) + 1, \
        f"the kill did not land inside the save of {interrupted} (latest {latest}, left {left})"

    resumed_job = resume(compose, run_dir, "trainer.checkpoint.every_n_steps=0")
    st = finished(resumed_job, timeout=120)
    assert st.state == "COMPLETED", f"{st}\n{logs_of(run_dir)}"
    runs = attempts.attempts(attempts.read(run_dir))
    assert runs[-1].resumed_from_step == int(latest[-8:]) and runs[-1].end == "completed"
    assert not list(checkpoints.glob(".tmp-*")), "the half-written save was not cleared"
    assert [r["weights_sha256"] for r in read_rank_reports(run_dir)] == \
           [r["weights_sha256"] for r in read_rank_reports(ref)]
    assert read_csv_metric(run_dir, "train_loss") == read_csv_metric(ref, "train_loss")
