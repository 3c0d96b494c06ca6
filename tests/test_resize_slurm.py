"""Start on what is free, on the real local Slurm cluster: a `--nodes=1-2` job with one node busy starts on the
other, is preempted, and resumes on both nodes from the checkpoint its one rank wrote, keeping the global batch."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cluster import slurm
from test_preemption_slurm import DDP, SLURM, events, finished, logs_of, submit
from conftest import wait_until
from trainer_core import attempts

pytestmark = pytest.mark.slurm


def sbatch(*argv: str) -> str:
    out = slurm.run_command(["sbatch", "--parsable", *argv])
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


@pytest.mark.slow
def test_a_range_job_starts_on_the_free_node_and_resumes_on_both(slurm_cluster, compose, tmp_path):
    blocker = sbatch("-p", "debug", "-w", "n2", "--exclusive", "-t", "3", "-J", "zr-test-busy-n2", "-o", "/dev/null",
                     "--wrap", "sleep 170")
    try:
        wait_until("n2 to be busy", lambda: slurm.query([blocker])[blocker].state == "RUNNING", 30)
        run_dir, job_id = submit(compose, tmp_path / "runs", *SLURM, "cluster.min_nodes=1", *DDP,
                                 "trainer.checkpoint.every_n_steps=10")
        wait_until("a checkpoint on one node", lambda: events(run_dir, "checkpoint"), 120)
        first = [e for e in attempts.read(run_dir) if e["event"] == "rank_start"]
        assert [(e["rank"], e["node"], e["world_size"]) for e in first] == [(0, "n1", 1)], first
    finally:
        slurm.scancel(blocker)
    # preempt it: a job in `high` on n1; once that ends both nodes are free for the requeued job
    sbatch("-p", "high", "-w", "n1", "-N", "1", "--exclusive", "-t", "1", "-J", "zr-test-preempt-n1", "-o",
           "/dev/null", "--wrap", "sleep 1")
    st = finished(job_id, timeout=240)
    assert st.state == "COMPLETED", f"{st}\n{logs_of(run_dir)}"
    runs = attempts.attempts(attempts.read(run_dir))
    assert [a.world_size for a in runs] == [1, 2], runs
    assert runs[0].requeued and runs[1].resumed_from_step == runs[0].checkpoint_step
    starts = [e for e in attempts.read(run_dir) if e["event"] == "start"]
    # the global batch of the planned 2 nodes: 2 accumulated micro-batches on 1 rank, 1 each on 2 ranks
    assert [(e.get("world_size"), e.get("accumulate_grad_batches")) for e in starts] == [(1, 2), (2, 1)], starts
    assert {e.get("global_batch") for e in starts} == {starts[0]["global_batch"]}
    assert runs[-1].end == "completed"
