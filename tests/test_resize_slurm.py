"""Start on what is free, and grow back on a requeue, on the real local Slurm cluster: a `--nodes=1-2` job with
one node busy starts on the other instead of waiting; once both are free it is preempted, requeues itself, and
its next attempt runs on both nodes from the checkpoint its one rank wrote, keeping the global batch.

Slurm grants a node range as many nodes as it can without delaying the start, but only while the job's task
count is left open: with `--ntasks-per-node`, slurmctld fixes the task count at MIN x tasks_per_node when the job
is created, the node selection never gives a job more nodes than tasks, and the job, requeues included, keeps
its minimum (measured here before the fix: a `--nodes=1-2 --ntasks-per-node=1` job got one node with both idle).
So a range job asks for CPUs per node (`--mincpus`) and srun lays out the ranks (cluster/render.py)."""

from __future__ import annotations

import pytest

from cluster import slurm
from conftest import wait_until
from test_preemption_slurm import DDP, SLURM, events, finished, logs_of, submit, training
from trainer_core import attempts

pytestmark = pytest.mark.slurm


def sbatch(*argv: str) -> str:
    out = slurm.run_command(["sbatch", "--parsable", *argv])
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


@pytest.mark.slow
def test_a_range_job_starts_on_the_free_node_and_its_requeue_resumes_on_both(slurm_cluster, compose, tmp_path):
    blocker = sbatch("-p", "debug", "-w", "n2", "--exclusive", "-t", "3", "-J", "zr-test-busy-n2", "-o", "/dev/null",
                     "--wrap", "sleep 170")
    try:
        wait_until("n2 to be busy", lambda: slurm.query([blocker])[blocker].state == "RUNNING", 30)
        run_dir, job_id = submit(compose, tmp_path / "runs", *SLURM, "cluster.min_nodes=1", *DDP)
        assert "#SBATCH --nodes=1-2" in (run_dir / "job.sbatch").read_text().splitlines()
        training(run_dir, 1)
        first = [e for e in attempts.read(run_dir) if e["event"] == "rank_start"]
        assert [(e["rank"], e["node"], e["world_size"]) for e in first] == [(0, "n1", 1)], first
    finally:
        slurm.scancel(blocker)
    wait_until("n2 to be free", lambda: slurm.query([blocker])[blocker].finished, 60)
    # a job of the higher partition takes n1: Slurm preempts the run, which checkpoints and requeues itself
    sbatch("-p", "high", "-w", "n1", "--exclusive", "-t", "1", "-J", "zr-preempt-n1", "-o", "/dev/null",
           "--wrap", "sleep 1")
    wait_until("the requeue", lambda: events(run_dir, "requeue"), 60)
    st = finished(job_id, timeout=150)
    assert st.state == "COMPLETED", f"{st}\n{logs_of(run_dir)}"

    runs = attempts.attempts(attempts.read(run_dir))
    assert [a.job_id for a in runs] == [job_id] * 2, "the same job, requeued"
    assert [(a.cause, a.requeued) for a in runs[:1]] == [("preemption", True)], runs
    assert [a.world_size for a in runs] == [1, 2], runs
    assert runs[1].resumed_from_step == runs[0].checkpoint_step > 0 and runs[-1].end == "completed"
    assert runs[-1].end_step == 200
    second = [e for e in attempts.read(run_dir) if e["event"] == "rank_start" and e.get("restart_count") == 1]
    assert sorted((e["rank"], e["node"]) for e in second) == [(0, "n1"), (1, "n2")], second
    starts = [e for e in attempts.read(run_dir) if e["event"] == "start"]
    # the global batch of the planned 2 nodes: 2 accumulated micro-batches on 1 rank, 1 each on 2 ranks
    assert [(e.get("world_size"), e.get("accumulate_grad_batches")) for e in starts] == [(1, 2), (2, 1)], starts
    assert starts[0]["global_batch"] == starts[1]["global_batch"]
