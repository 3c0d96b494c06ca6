"""The rendezvous contract (cluster/rendezvous.py), table-driven: what each rank derives from the variables
Slurm sets, and the arithmetic every mismatch error carries."""

from __future__ import annotations

import pytest

from cluster.rendezvous import (
    PORT_BASE,
    PORT_OVERRIDE_ENV,
    PORT_SPAN,
    RendezvousError,
    derive,
    first_host,
    port_for_job,
    restart_count,
)


def slurm_env(*, rank: int, local: int, node: int, ntasks: int, nnodes: int, nodelist: str, job: str = "4242",
              **extra: str) -> dict[str, str]:
    """The variables srun sets for one task (the names come from cluster.rendezvous.SLURM_ENV)."""
    return {
        "SLURM_JOB_ID": job, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(local), "SLURM_NODEID": str(node),
        "SLURM_NTASKS": str(ntasks), "SLURM_JOB_NUM_NODES": str(nnodes), "SLURM_JOB_NODELIST": nodelist, **extra,
    }


# (case, environment, nodes, tasks_per_node) -> expected (MASTER_ADDR, RANK, LOCAL_RANK, NODE_RANK, WORLD_SIZE)
GOOD = [
    ("1 node, 1 task", slurm_env(rank=0, local=0, node=0, ntasks=1, nnodes=1, nodelist="n1"), 1, 1,
     ("n1", 0, 0, 0, 1)),
    ("1 node, 8 tasks, last", slurm_env(rank=7, local=7, node=0, ntasks=8, nnodes=1, nodelist="gpu7"), 1, 8,
     ("gpu7", 7, 7, 0, 8)),
    ("2 nodes x 4, first", slurm_env(rank=0, local=0, node=0, ntasks=8, nnodes=2, nodelist="n[1-2]"), 2, 4,
     ("n1", 0, 0, 0, 8)),
    ("2 nodes x 4, second node", slurm_env(rank=5, local=1, node=1, ntasks=8, nnodes=2, nodelist="n[1-2]"), 2, 4,
     ("n1", 5, 1, 1, 8)),
    ("zero-padded ranges", slurm_env(rank=3, local=0, node=3, ntasks=5, nnodes=5, nodelist="n[01-04,7]"), 5, 1,
     ("n01", 3, 0, 3, 5)),
    ("plain list", slurm_env(rank=1, local=0, node=1, ntasks=2, nnodes=2, nodelist="gpu3,gpu4"), 2, 1,
     ("gpu3", 1, 0, 1, 2)),
    ("list of ranges", slurm_env(rank=2, local=0, node=2, ntasks=3, nnodes=3, nodelist="a[5,9],b1"), 3, 1,
     ("a5", 2, 0, 2, 3)),
    ("suffix after range", slurm_env(rank=0, local=0, node=0, ntasks=2, nnodes=2, nodelist="rack[3-4]-ib"), 2, 1,
     ("rack3-ib", 0, 0, 0, 2)),
    ("local backend", slurm_env(rank=1, local=0, node=1, ntasks=2, nnodes=2, nodelist="127.0.0.1"), 2, 1,
     ("127.0.0.1", 1, 0, 1, 2)),
]


@pytest.mark.parametrize("case,env,nodes,tpn,expected", GOOD, ids=[g[0] for g in GOOD])
def test_derive_gives_every_rank_its_place(case, env, nodes, tpn, expected):
    r = derive(env, nodes=nodes, tasks_per_node=tpn)
    assert (r.master_addr, r.rank, r.local_rank, r.node_rank, r.world_size) == expected
    assert r.tasks_per_node == tpn and r.num_nodes == nodes
    torch_env = r.env()
    assert torch_env["MASTER_ADDR"] == expected[0]
    assert (torch_env["RANK"], torch_env["WORLD_SIZE"]) == (str(expected[1]), str(expected[4]))
    assert torch_env["LOCAL_WORLD_SIZE"] == str(tpn)


# (case, environment, nodes, tasks_per_node) -> text the error must carry (the arithmetic, and the fix)
BAD = [
    ("world size short of the geometry", slurm_env(rank=0, local=0, node=0, ntasks=6, nnodes=2, nodelist="n[1-2]"),
     2, 4, "nodes(2) x tasks_per_node(4) = 8 != world_size(6"),
    ("more tasks than planned", slurm_env(rank=0, local=0, node=0, ntasks=16, nnodes=2, nodelist="n[1-2]"), 2, 4,
     "nodes(2) x tasks_per_node(4) = 8 != world_size(16"),
    ("node count differs", slurm_env(rank=0, local=0, node=0, ntasks=4, nnodes=1, nodelist="n1"), 2, 2,
     "the job has 1 nodes but the plan asked for cluster.nodes=2"),
    ("local rank outside the node", slurm_env(rank=4, local=4, node=1, ntasks=8, nnodes=2, nodelist="n[1-2]"), 2, 4,
     "rank 4 (local 4, node 1) lies outside nodes(2) x tasks_per_node(4)"),
    ("cyclic layout", slurm_env(rank=1, local=0, node=1, ntasks=4, nnodes=2, nodelist="n[1-2]"), 2, 2,
     "rank 1 != node_rank(1) x tasks_per_node(2) + local_rank(0)"),
    ("not a Slurm task", {"SLURM_JOB_ID": "1"}, 1, 1, "SLURM_NTASKS is not set"),
    ("garbled number", slurm_env(rank=0, local=0, node=0, ntasks=1, nnodes=1, nodelist="n1", SLURM_PROCID="x"),
     1, 1, "SLURM_PROCID='x' is not an integer"),
    ("no node list", slurm_env(rank=0, local=0, node=0, ntasks=1, nnodes=1, nodelist=""), 1, 1,
     "SLURM_JOB_NODELIST is not set"),
    ("port override not a number", slurm_env(rank=0, local=0, node=0, ntasks=1, nnodes=1, nodelist="n1",
                                             **{PORT_OVERRIDE_ENV: "http"}), 1, 1, "is not a port number"),
    ("port override out of range", slurm_env(rank=0, local=0, node=0, ntasks=1, nnodes=1, nodelist="n1",
                                             **{PORT_OVERRIDE_ENV: "80"}), 1, 1, "outside 1024-65535"),
]


@pytest.mark.parametrize("case,env,nodes,tpn,text", BAD, ids=[b[0] for b in BAD])
def test_mismatch_errors_carry_the_arithmetic(case, env, nodes, tpn, text):
    with pytest.raises(RendezvousError) as e:
        derive(env, nodes=nodes, tasks_per_node=tpn)
    assert text in str(e.value)


@pytest.mark.parametrize("job_id", ["1", "4242", "99999999", "12345_7", "0"])
def test_port_is_seeded_by_job_id_and_in_range(job_id):
    port = port_for_job(job_id)
    assert PORT_BASE <= port < PORT_BASE + PORT_SPAN
    assert port == port_for_job(job_id), "the same job id gives every rank the same port"
    env = slurm_env(rank=0, local=0, node=0, ntasks=1, nnodes=1, nodelist="n1", job=job_id)
    assert derive(env, nodes=1, tasks_per_node=1).master_port == port


def test_concurrent_jobs_get_different_ports():
    assert len({port_for_job(str(j)) for j in range(1000, 1100)}) == 100


def test_port_override_wins_over_the_job_id():
    env = slurm_env(rank=0, local=0, node=0, ntasks=1, nnodes=1, nodelist="n1", **{PORT_OVERRIDE_ENV: "29555"})
    assert derive(env, nodes=1, tasks_per_node=1).master_port == 29555


@pytest.mark.parametrize("nodelist,first", [("n1", "n1"), ("n[1-2]", "n1"), ("n[01-04,7]", "n01"),
                                            ("gpu3,gpu4", "gpu3"), (" n[10-11] ", "n10"), ("x[7]", "x7")])
def test_first_host_reads_slurm_hostlists(nodelist, first):
    assert first_host(nodelist) == first


def test_restart_count():
    assert restart_count({}) == 0
    assert restart_count({"SLURM_RESTART_COUNT": "2"}) == 2
    assert restart_count({"SLURM_RESTART_COUNT": "junk"}) == 0


def test_a_local_rendezvous_port_is_free_and_outside_the_ephemeral_range():
    """The local backend's port is chosen seconds before the master binds it: from the ephemeral range, an
    outgoing connection could take it first (a rank failed with EADDRINUSE that way on a busy machine)."""
    import socket

    from trainer_core.contract import free_port

    ports = {free_port() for _ in range(20)}
    assert all(PORT_BASE <= p < PORT_BASE + PORT_SPAN for p in ports), ports
    for p in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", p))
