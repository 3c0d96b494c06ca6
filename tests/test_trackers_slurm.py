"""A W&B run (offline) continued across two real Slurm preemptions: the requeued job's attempts log under one
run id with one step axis (Lightning's own W&B logger starts a new run after each requeue otherwise), and the
API key, passed by name, is in no file of the run folder, the job script and the rank logs included.
"""

from __future__ import annotations

import json

import pytest

from test_preemption_slurm import SLURM, logs_of, preempted_twice, submit
from test_trackers import FAKE_SECRETS, assert_no_secret_in, wandb_attempts
from trainer_core import attempts

pytestmark = pytest.mark.slurm

STEPS = 100
RUN = ("trainer=ddp", f"trainer.max_steps={STEPS}", "trainer.val_check_interval=1000", "trainer.log_every_n_steps=1",
       "trainer.enable_progress_bar=false", "dataset.synthetic_train_size=400", "dataset.max_val_samples=8",
       "seed=7", "task.log_samples=0", "trainer.logger=wandb", "trainer.tracker.mode=offline",
       "cluster.env_passthrough=[WANDB_API_KEY]")


def test_wandb_run_continues_across_two_slurm_preemptions(slurm_cluster, compose, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_SECRETS["WANDB_API_KEY"])
    run_dir, job_id = submit(compose, tmp_path / "runs", *SLURM, *RUN)
    assert "WANDB_API_KEY" in (run_dir / "job.sbatch").read_text(), "the key's name is passed to the job"
    st = preempted_twice(run_dir, job_id, (0.5, 1.5))
    assert st.state == "COMPLETED", f"job {job_id} ended {st}:\n{logs_of(run_dir)}"

    runs = attempts.attempts(attempts.read(run_dir))
    assert [a.job_id for a in runs] == [job_id] * 3 and [a.requeued for a in runs[:2]] == [True, True]
    ends = [a.end_step for a in runs]
    assert [a.resumed_from_step for a in runs] == [None, ends[0], ends[1]] and ends[2] == STEPS

    run_id = json.loads((run_dir / "tracker.json").read_text())["wandb"]["id"]
    found = wandb_attempts(run_dir)
    assert [i for i, _ in found] == [run_id] * 3, "one offline folder per attempt, all under the run's id"
    steps = [[row["trainer/global_step"] for row in rows if "train_loss" in row] for _, rows in found]
    # each attempt logs from the step it resumed at to the step it stopped at: every step once, in order
    assert steps == [list(range(0, ends[0])), list(range(ends[0], ends[1])), list(range(ends[1], STEPS))]
    assert_no_secret_in(run_dir)
