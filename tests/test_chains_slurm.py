"""Chains and evaluation jobs on the real local Slurm cluster: `zerorun eval RUN_DIR` submitted while the run
trains waits (PENDING, Dependency), runs after it and measures the final checkpoint; a dependency that fails
cancels the waiting job, and `zerorun status` says why; `cluster.after` naming a job that does not exist is
refused before anything is submitted; `zerorun eval SWEEP_DIR --best` waits for the sweep's array and evaluates
its best member."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster import slurm
from conftest import REPO, only_run_dir
from jobs import evaluation, snapshot, verbs
from jobs.sweeps import record as sweep_record
from test_submit_slurm import wait

pytestmark = pytest.mark.slurm

NODE_CPU = ("cluster=slurm", "cluster.gpus_per_node=0", "cluster.tasks_per_node=1", "cluster.cpus_per_task=1",
            "cluster.partition=debug", "cluster.mem=1G", "cluster.time_min=5", "cluster.signal_delay_s=60")
TINY = ("trainer.max_steps=10", "trainer.val_check_interval=10", "trainer.log_every_n_steps=5",
        "trainer.logger=csv", "trainer.enable_progress_bar=false", "dataset.max_val_samples=8",
        "dataset.synthetic_train_size=300", "task.log_samples=0")


def zerorun(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def job_of(folder: Path) -> str:
    record = snapshot.read_record(folder)
    assert record is not None and record.job_id.isdigit(), f"{folder} was not submitted"
    return record.job_id


def squeue_row(job_id: str) -> tuple[str, str]:
    """(state, reason) as squeue shows them now; ("", "") once it has left the queue."""
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"], capture_output=True, text=True, timeout=30)
    state, _, reason = out.stdout.strip().partition("|")
    return state, reason


def eval_dir_of(folder: Path) -> Path:
    found = evaluation.evaluations(folder)
    assert len(found) == 1, found
    return found[0]


def my_job_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "--me", "-o", "%i"], capture_output=True, text=True, timeout=30)
    return set(out.stdout.split())


def test_eval_waits_for_the_training_job_then_measures_its_final_checkpoint(slurm_cluster, tmp_path):
    runs = tmp_path / "runs"
    proc = zerorun(*NODE_CPU, *TINY, f"cluster.runs_dir={runs}")
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run_dir(runs)
    train_job = job_of(run_dir)

    proc = zerorun("eval", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    eval_dir = eval_dir_of(run_dir)
    eval_job = job_of(eval_dir)
    assert f"#SBATCH --dependency=afterok:{train_job}\n" in (eval_dir / "job.sbatch").read_text()
    assert "#SBATCH --kill-on-invalid-dep=yes\n" in (eval_dir / "job.sbatch").read_text()
    state, reason = squeue_row(eval_job)
    train_state = slurm.query([train_job])[train_job]
    assert not train_state.finished, "the training job ended before the check: the test proves nothing"
    assert (state, reason) == ("PENDING", "Dependency"), (state, reason)
    out = io.StringIO()
    verbs.status([str(eval_dir)], out=out)
    assert f"waits for afterok:{train_job}" in out.getvalue(), out.getvalue()

    assert wait(train_job, 120).state == "COMPLETED"
    st = wait(eval_job, 120)
    assert st.state == "COMPLETED", (eval_dir / "logs").glob("*")
    trained = json.loads((run_dir / "metrics.json").read_text())
    measured = json.loads((eval_dir / "metrics.json").read_text())
    info = json.loads((eval_dir / "eval.json").read_text())
    assert info["run_dir"] == str(run_dir) and info["checkpoint_step"] == 10 and info["split"] == "validation"
    # the final checkpoint measured on the validation split: the run's own final validation, to the digit
    assert measured["val_bleu"] == pytest.approx(trained["val_bleu"], abs=1e-6)
    assert measured["val_loss"] == pytest.approx(trained["val_loss"], rel=1e-5)
    out = io.StringIO()
    verbs.status([str(run_dir)], out=out)
    row = next(x for x in out.getvalue().splitlines() if x.startswith(eval_job))
    assert "COMPLETED" in row and f"val_bleu={measured['val_bleu']:.4g}" in row, out.getvalue()


def test_a_failed_dependency_cancels_the_waiting_job_and_status_says_why(slurm_cluster, tmp_path):
    runs = tmp_path / "runs"
    # the training job's script fails in its setup lines, a few seconds after it started
    proc = zerorun(*NODE_CPU, *TINY, f"cluster.runs_dir={runs}", "cluster.setup=['sleep 6','exit 1']")
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run_dir(runs)
    train_job = job_of(run_dir)
    proc = zerorun("eval", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    eval_dir = eval_dir_of(run_dir)
    eval_job = job_of(eval_dir)
    # the same chain on cluster=local waits here, in the foreground, and then refuses to start
    here = subprocess.Popen([sys.executable, "-m", "jobs.cli", "eval", str(run_dir), "cluster=local"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    assert wait(train_job, 60).state == "FAILED"
    st = wait(eval_job, 30)  # pending for ever without kill-on-invalid-dep
    assert st.state == "CANCELLED", st
    _, err = here.communicate(timeout=60)
    assert here.returncode == 2, err
    assert f"waiting here for {train_job} to end" in err and f"(job {train_job}) ended FAILED" in err, err
    assert evaluation.evaluations(run_dir) == [eval_dir], "the local evaluation must start nothing"
    out = io.StringIO()
    verbs.status([str(eval_dir)], out=out)
    row = next(x for x in out.getvalue().splitlines() if x.startswith(eval_job))
    assert "CANCELLED" in row and f"dependency job {train_job} ended FAILED" in row, out.getvalue()
    assert not (eval_dir / "metrics.json").exists()


def test_after_an_unknown_job_or_a_failed_run_is_refused_before_submission(slurm_cluster, tmp_path):
    runs = tmp_path / "runs"
    before = my_job_ids()
    proc = zerorun(*NODE_CPU, *TINY, f"cluster.runs_dir={runs}", "cluster.after=99999999")
    assert proc.returncode == 2
    assert "cluster.after=99999999: job 99999999 does not exist" in proc.stderr and "zerorun status" in proc.stderr
    proc = zerorun(*NODE_CPU, *TINY, f"cluster.runs_dir={runs}", f"cluster.after={tmp_path}")
    assert proc.returncode == 2 and "holds no run" in proc.stderr, proc.stderr
    assert not runs.exists() or not any(runs.rglob("submission.json")), "nothing may be written"
    assert my_job_ids() - before == set(), "nothing may be submitted"


def test_eval_best_waits_for_the_sweep_array_and_evaluates_its_best_member(slurm_cluster, tmp_path):
    runs = tmp_path / "runs"
    proc = zerorun("-m", *NODE_CPU, *TINY, f"cluster.runs_dir={runs}", "optimizer.lr=1e-4,3e-3")
    assert proc.returncode == 0, proc.stderr
    sweep_dir = next(p for p in runs.glob("*/sweep-*") if sweep_record.exists(p))
    array = sweep_record.load(sweep_dir).submissions[0].array_job_id
    proc = zerorun("eval", str(sweep_dir), "--best")
    assert proc.returncode == 0, proc.stderr
    eval_dir = eval_dir_of(sweep_dir)
    eval_job = job_of(eval_dir)
    assert f"#SBATCH --dependency=afterany:{array}\n" in (eval_dir / "job.sbatch").read_text()
    assert squeue_row(eval_job) == ("PENDING", "Dependency")

    st = wait(eval_job, 150)
    assert st.state == "COMPLETED", st
    record = sweep_record.load(sweep_dir)
    finals = {m.num: json.loads((Path(m.run_dir) / "metrics.json").read_text()) for m in record.members}
    best = min(finals, key=lambda n: finals[n]["val_loss"])  # sweep.metric val_loss, mode min
    info = json.loads((eval_dir / "eval.json").read_text())
    assert info["member"] == best and info["run_dir"] == record.members[best - record.members[0].num].run_dir
    measured = json.loads((eval_dir / "metrics.json").read_text())
    assert measured["val_loss"] == pytest.approx(finals[best]["val_loss"], rel=1e-5)
    out = io.StringIO()
    from jobs.sweeps.verbs import status as sweep_status

    sweep_status([str(sweep_dir)], out=out)
    assert f"step 10 of member {best}" in out.getvalue(), out.getvalue()


def test_a_requeued_dependency_keeps_its_id_and_the_chained_job_waits_for_its_final_end(slurm_cluster, tmp_path):
    """Preemption requeues the training job under the same id: afterok is not satisfied by the preempted attempt,
    only by the run's final end."""
    from trainer_core import attempts

    runs = tmp_path / "runs"
    proc = zerorun(*NODE_CPU, *TINY, f"cluster.runs_dir={runs}", "trainer.max_steps=40", "trainer.val_check_interval=40",
                   "trainer.log_every_n_steps=1")
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run_dir(runs)
    train_job = job_of(run_dir)
    assert zerorun("eval", str(run_dir)).returncode == 0
    eval_job = job_of(eval_dir_of(run_dir))

    deadline = time.monotonic() + 90
    while not any(e["event"] == "first_step" for e in attempts.read(run_dir)):
        assert time.monotonic() < deadline, "the training job never made a step"
        time.sleep(0.3)
    subprocess.run(["sbatch", "--parsable", "-p", "high", "-N", "2", "--exclusive", "-t", "1", "-o", "/dev/null",
                    "-J", "zr-preempt", "--wrap", "sleep 1"], check=True, capture_output=True, timeout=30)
    seen = []
    deadline = time.monotonic() + 150
    while True:
        train = slurm.query([train_job])[train_job]
        if train.finished:
            break
        seen.append(squeue_row(eval_job))
        assert time.monotonic() < deadline, f"training did not end: {train}"
        time.sleep(0.5)
    assert train.state == "COMPLETED", train
    requeues = [e for e in attempts.read(run_dir) if e["event"] == "requeue"]
    assert requeues and requeues[0]["requeued"], "the training job was not preempted and requeued"
    assert set(seen) == {("PENDING", "Dependency")}, seen
    assert wait(eval_job, 120).state == "COMPLETED"
    info = json.loads((eval_dir_of(run_dir) / "eval.json").read_text())
    assert info["checkpoint_step"] == 40, info
