"""Preflight against what sinfo says: nodes that take no job are not counted, a time over the partition's
MaxTime is refused before submission (pure, from sinfo's text); and a drained node on the real cluster."""

from __future__ import annotations

import io
import subprocess

import pytest

from cluster import preflight
from cluster.plan import make_plan

SINFO = ("n1|debug*|2|8000|(null)|idle|1:00:00\n"
         "n2|debug*|2|8000|(null)|drained|1:00:00\n"
         "n1|long|2|8000|(null)|mixed|infinite\n"
         "n2|long|2|8000|(null)|down*|infinite\n")


def plan_of(compose, *overrides):
    from configs.finalize import finalize

    return make_plan(finalize(compose("cluster=slurm", "cluster.gpus_per_node=0", "cluster.tasks_per_node=1",
                                      "cluster.cpus_per_task=1", "trainer=ddp", *overrides)), python="/venv/bin/python", workdir="/w")


def test_sinfo_states_and_time_limits_are_read():
    facts = preflight.parse_sinfo(SINFO)
    assert [n.name for n in facts.partitions["debug"]] == ["n1"]
    assert facts.unavailable == {"debug": ("n2 (drained)",), "long": ("n2 (down*)",)}
    assert facts.max_time_min == {"debug": 60, "long": None}
    assert [preflight.slurm_minutes(t) for t in ("30", "45:00", "2:00:00", "1-00:00:00", "infinite", "0:30")] == [
        30, 45, 120, 1440, None, 1]


def test_drained_or_down_nodes_do_not_count(compose):
    problems = preflight.check(plan_of(compose, "cluster.nodes=2", "cluster.partition=debug"),
                               preflight.parse_sinfo(SINFO)).problems
    assert any("has 1 nodes that take jobs (1 more take no job now: n2 (drained))" in p for p in problems), problems


def test_a_time_over_the_partitions_max_time_is_refused_with_the_limit(compose):
    facts = preflight.parse_sinfo(SINFO)
    problems = preflight.check(plan_of(compose, "cluster.partition=debug", "cluster.time_min=90"), facts).problems
    assert any("cluster.time_min=90 is over the MaxTime of partition 'debug' (60 min)" in p for p in problems)
    assert preflight.check(plan_of(compose, "cluster.partition=debug", "cluster.time_min=60"), facts).ok
    assert preflight.check(plan_of(compose, "cluster.partition=long", "cluster.time_min=100000"), facts).ok


@pytest.mark.slurm
def test_a_drained_node_on_the_real_cluster_is_not_counted(slurm_cluster, compose, tmp_path):
    subprocess.run(["scontrol", "update", "NodeName=n2", "State=DRAIN", "Reason=zerorun-test"], check=True)
    try:
        facts = preflight.probe()
        problems = preflight.check(plan_of(compose, "cluster.nodes=2", "cluster.partition=debug"), facts).problems
        assert any("n2 (drain" in p and "lower cluster.nodes" in p for p in problems), problems
    finally:
        subprocess.run(["scontrol", "update", "NodeName=n2", "State=RESUME"], check=True)


# ---- cluster.min_nodes: start on what is free ----

def test_min_nodes_renders_a_range_and_the_rank_contract_follows_the_allocation(compose):
    from cluster import render
    from cluster.rendezvous import RendezvousError, derive

    plan = plan_of(compose, "cluster.nodes=2", "cluster.min_nodes=1", "cluster.partition=debug")
    script = render.sbatch_script(plan, render.RenderContext("T", ("zerorun",)))
    lines = script.splitlines()
    assert "#SBATCH --nodes=1-2" in lines and "#SBATCH --nodes=2" not in lines
    # no task count in the allocation (Slurm would pin it, and with it the node count, at the range's minimum):
    # the CPUs per node are asked as such, and srun places the ranks on the nodes granted
    assert not any(x.startswith("#SBATCH --ntasks") for x in lines) and "#SBATCH --mincpus=1" in lines
    (srun,) = [x for x in lines if x.startswith("srun ")]
    assert " --ntasks-per-node=1 " in srun, srun
    wide = render.sbatch_script(plan_of(compose, "cluster.nodes=4", "cluster.min_nodes=2", "cluster.tasks_per_node=2",
                                        "cluster.cpus_per_task=3", "cluster.partition=debug"),
                                render.RenderContext("T", ("zerorun",)))
    assert "#SBATCH --mincpus=6" in wide.splitlines() and " --ntasks-per-node=2 " in wide
    env = {"SLURM_NTASKS": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
           "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "n1", "SLURM_JOB_ID": "7"}
    granted = derive(env, nodes=2, tasks_per_node=1, min_nodes=1)
    assert (granted.num_nodes, granted.world_size) == (1, 1)
    with pytest.raises(RendezvousError, match="cluster.nodes=2"):
        derive(env, nodes=2, tasks_per_node=1)


def test_a_range_the_partition_cannot_grant_is_refused(compose):
    facts = preflight.parse_sinfo(SINFO)  # debug: n1 takes jobs, n2 drained
    ok = preflight.check(plan_of(compose, "cluster.nodes=2", "cluster.min_nodes=1", "cluster.partition=debug",
                                 "cluster.time_min=30"), facts)
    assert ok.ok, ok.problems
    too_many = preflight.check(plan_of(compose, "cluster.nodes=3", "cluster.min_nodes=1", "cluster.partition=debug"),
                               facts).problems
    assert any("can never be granted whole" in p for p in too_many), too_many
    too_few = preflight.check(plan_of(compose, "cluster.nodes=2", "cluster.min_nodes=2", "cluster.partition=debug"),
                              facts).problems
    assert any("cluster.nodes=2 but partition 'debug' has 1 nodes that take jobs" in p for p in too_few), too_few


def test_a_range_the_global_batch_cannot_divide_over_is_refused_with_the_fix(compose):
    from configs.finalize import finalize
    from configs.validate import config_problems

    bad = config_problems(finalize(compose("cluster=slurm", "cluster.nodes=3", "cluster.min_nodes=2",
                                           "cluster.gpus_per_node=0", "cluster.tasks_per_node=1", "trainer=ddp")))
    assert any("cannot be kept on 2 node(s)" in p and "trainer.accumulate_grad_batches" in p for p in bad), bad
    fine = config_problems(finalize(compose("cluster=slurm", "cluster.nodes=2", "cluster.min_nodes=1",
                                            "cluster.gpus_per_node=0", "cluster.tasks_per_node=1", "trainer=ddp")))
    assert fine == []
