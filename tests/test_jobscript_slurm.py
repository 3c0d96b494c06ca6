"""The job script on the batch host, against the real local Slurm cluster: a job whose ranks never started fails
and says so; cluster.requeue=false is honoured; a slow sbatch does not make a second job; a resume is refused
while the run's job lives; a job id finds its run folder wherever it was submitted from; Slurm's own syntax
passes the #SBATCH check."""

from __future__ import annotations

import io
import os
import stat
import subprocess
from pathlib import Path

import pytest

from cluster import slurm
from conftest import only_run_dir, wait_until
from jobs import snapshot, verbs
from test_submit_slurm import NODE_CPU, TINY, hydra_quoted, wait
from trainer_core import attempts
from trainer_core.contract import EXIT_RESUMABLE

pytestmark = pytest.mark.slurm


def launch(compose, runs: Path, *overrides: str) -> int:
    from jobs.app import launch as app_launch

    return app_launch(compose(*overrides, runs_dir=hydra_quoted(str(runs))))


def submitted(runs: Path) -> tuple[Path, str]:
    run_dir = only_run_dir(runs)
    record = snapshot.read_record(run_dir)
    assert record is not None
    return run_dir, record.job_id


def status_text(target: str, *extra: str) -> str:
    out = io.StringIO()
    assert verbs.status([target, *extra], out=out) == 0
    return out.getvalue()


def test_a_job_whose_ranks_never_started_fails_and_says_so(slurm_cluster, compose, tmp_path):
    # a real launch failure: srun cannot open the ranks' output file, so no task starts
    runs = tmp_path / "runs"
    assert launch(compose, runs, *NODE_CPU, *TINY, "cluster.srun_args=['--output=/nonexistent-zerorun/%j_%t.out']") == 0
    run_dir, job_id = submitted(runs)
    st = wait(job_id, timeout=60)
    assert st.state == "FAILED", f"a job that ran no rank must not end {st.state}"
    failed = [e for e in attempts.read(run_dir) if e["event"] == "failed"]
    assert failed and "1 of 1 ranks never started (rank 0)" in failed[0]["reason"], failed
    text = status_text(str(run_dir))
    assert "FAILED" in text and "never started" in text, text


def test_requeue_false_is_rendered_and_honoured(slurm_cluster, compose, tmp_path):
    runs = tmp_path / "runs"
    # long enough to be running when asked to yield; checkpoints only where it stops
    assert launch(compose, runs, *NODE_CPU, *TINY, "trainer.max_steps=100000", "cluster.requeue=false") == 0
    run_dir, job_id = submitted(runs)
    script = (run_dir / "job.sbatch").read_text()
    assert "#SBATCH --no-requeue" in script and "#SBATCH --requeue" not in script
    wait_until("the first step", lambda: any(e["event"] == "first_step" for e in attempts.read(run_dir)), 90)
    slurm.run_command(["scancel", "--signal=USR2", job_id])
    st = wait(job_id, timeout=60)
    assert st.finished and st.exit_code.startswith(f"{EXIT_RESUMABLE}:"), st
    last = attempts.attempts(attempts.read(run_dir))[-1]
    assert last.requeued is False and "cluster.requeue=false" in (last.requeue or ""), last
    assert len(attempts.attempts(attempts.read(run_dir))) == 1, "the job ran again"
    assert "RESUMABLE" in status_text(str(run_dir))


def test_resume_is_refused_while_the_runs_job_lives(slurm_cluster, compose, tmp_path):
    runs = tmp_path / "runs"
    assert launch(compose, runs, *NODE_CPU, *TINY, "trainer.max_steps=100000",
                  "trainer.checkpoint.every_n_steps=5") == 0
    run_dir, job_id = submitted(runs)
    try:
        wait_until("a checkpoint", lambda: (run_dir / "checkpoints" / "latest").exists(), 120)
        before = sorted(p.name for p in run_dir.iterdir())
        from jobs.app import launch as app_launch

        err = io.StringIO()
        import contextlib

        with contextlib.redirect_stderr(err):
            rc = app_launch(compose(f"resume={run_dir}", runs_dir=hydra_quoted(str(runs))), [f"resume={run_dir}"])
        assert rc == 2
        assert f"its job {job_id} is RUNNING" in err.getvalue() and f"zerorun cancel {job_id}" in err.getvalue()
        assert sorted(p.name for p in run_dir.iterdir()) == before, "a refused resume wrote into the run folder"
    finally:
        slurm.scancel(job_id)
        wait(job_id, timeout=60)


def test_status_of_a_job_id_finds_its_run_folder_in_another_runs_dir(slurm_cluster, compose, tmp_path):
    runs = tmp_path / "elsewhere"
    assert launch(compose, runs, *NODE_CPU, *TINY) == 0
    run_dir, job_id = submitted(runs)
    wait(job_id, timeout=120)
    text = status_text(job_id, "--runs-dir", str(tmp_path / "default-runs"))
    assert str(run_dir) in text and "(run folder not found)" not in text, text


def test_a_slow_sbatch_finds_the_job_it_queued_instead_of_submitting_again(slurm_cluster, compose, tmp_path,
                                                                           monkeypatch):
    # the real sbatch, answering only after zerorun stopped waiting (a controller under load)
    real = subprocess.run(["which", "sbatch"], capture_output=True, text=True).stdout.strip()
    bin_dir = tmp_path / "slow-bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "sbatch"
    wrapper.write_text(f'#!/bin/bash\nout=$({real} "$@")\nrc=$?\nsleep 6\necho "$out"\nexit $rc\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("ZERORUN_SLURM_TIMEOUT_S", "2")
    runs = tmp_path / "runs"
    assert launch(compose, runs, *NODE_CPU, *TINY) == 0
    run_dir, job_id = submitted(runs)
    monkeypatch.setenv("PATH", os.environ["PATH"].split(":", 1)[1])
    wait(job_id, timeout=120)
    wait_until("accounting to know the job", lambda: job_id in slurm.run_command(
        ["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID"]).stdout, 30)
    named = slurm.run_command(["sacct", "-n", "-P", "-X", "--name", "translation", "-S", "now-5minutes",
                               "-o", "JobID,WorkDir"]).stdout
    mine = [line for line in named.splitlines() if line.endswith(str(run_dir))]
    assert len(mine) == 1 and mine[0].startswith(job_id + "|"), f"one job for the run, the one recorded: {named}"


def test_slurm_syntax_in_sbatch_values_reaches_sbatch(slurm_cluster, compose, tmp_path, capsys):
    # a hostlist range: valid Slurm, refused by the first version's check; sbatch --test-only reads it
    runs = tmp_path / "runs"
    assert launch(compose, runs, *NODE_CPU, "cluster.exclude='n[2-2]'", "dry_run=true") == 0
    run_dir = only_run_dir(runs)
    assert "#SBATCH --exclude='n[2-2]'" in (run_dir / "job.sbatch").read_text()
    answer = [line for line in capsys.readouterr().out.splitlines() if line.startswith("sbatch --test-only:")]
    assert answer and "on nodes n1 " in answer[0], answer


def test_a_percent_in_the_run_folder_is_refused_before_submission(slurm_cluster, compose, tmp_path):
    runs = tmp_path / "runs%j"
    assert launch(compose, runs, *NODE_CPU, *TINY) == 2
    assert not runs.exists() or not any(runs.rglob("submission.json"))
