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
