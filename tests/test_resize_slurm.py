"""Start on what is free, and resume on another number of nodes, on the real local Slurm cluster: a
`--nodes=1-2` job with one node busy starts on the other instead of waiting; stopped there, the run resumes on
both nodes from the checkpoint its one rank wrote, keeping the global batch.

Measured here: Slurm 22.05 grants a node range its minimum whenever the tasks fit (a `--nodes=1-2` job got one
node with both idle, with --spread-job and with --exclusive too), so a range does not grow back by itself on a
requeue; growing is a resume with the larger count, which is what this test does."""

from __future__ import annotations

import pytest

from cluster import slurm
from conftest import wait_until
from test_preemption_slurm import DDP, SLURM, events, finished, logs_of, resume, submit
from trainer_core import attempts

pytestmark = pytest.mark.slurm


def sbatch(*argv: str) -> str:
    out = slurm.run_command(["sbatch", "--parsable", *argv])
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


@pytest.mark.slow
def test_a_range_job_starts_on_the_free_node_and_the_run_resumes_on_both(slurm_cluster, compose, tmp_path):
    blocker = sbatch("-p", "debug", "-w", "n2", "--exclusive", "-t", "3", "-J", "zr-test-busy-n2", "-o", "/dev/null",
                     "--wrap", "sleep 170")
    try:
        wait_until("n2 to be busy", lambda: slurm.query([blocker])[blocker].state == "RUNNING", 30)
        run_dir, job_id = submit(compose, tmp_path / "runs", *SLURM, "cluster.min_nodes=1", "cluster.requeue=false",
                                 *DDP, "trainer.checkpoint.every_n_steps=10")
        assert "#SBATCH --nodes=1-2" in (run_dir / "job.sbatch").read_text().splitlines()
        wait_until("a checkpoint on one node", lambda: events(run_dir, "checkpoint"), 120)
        first = [e for e in attempts.read(run_dir) if e["event"] == "rank_start"]
        assert [(e["rank"], e["node"], e["world_size"]) for e in first] == [(0, "n1", 1)], first
        slurm.run_command(["scancel", "--signal=USR2", job_id])  # a stop: checkpointed, resumable, not requeued
        finished(job_id, timeout=60)
    finally:
        slurm.scancel(blocker)
    wait_until("n2 to be free", lambda: slurm.query([blocker])[blocker].finished, 60)
    again = resume(compose, run_dir, "cluster.min_nodes=2")
    st = finished(again, timeout=240)
    assert st.state == "COMPLETED", f"{st}\n{logs_of(run_dir)}"
    runs = attempts.attempts(attempts.read(run_dir))
    assert [a.world_size for a in runs] == [1, 2], runs
    assert runs[1].resumed_from_step == runs[0].checkpoint_step and runs[-1].end == "completed"
    starts = [e for e in attempts.read(run_dir) if e["event"] == "start"]
    # the global batch of the planned 2 nodes: 2 accumulated micro-batches on 1 rank, 1 each on 2 ranks
    assert [(e.get("world_size"), e.get("accumulate_grad_batches")) for e in starts] == [(1, 2), (2, 1)], starts
    assert starts[0]["global_batch"] == starts[1]["global_batch"]
