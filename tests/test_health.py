"""The node health check's all-reduce among the ranks of one node: a real gloo process group of 4 processes, as
2 nodes x 2 ranks. Each node's ranks sum among themselves (2), not over the job (4), and a node whose
all-reduce goes wrong is the one named."""

from __future__ import annotations

import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainer_core.contract import Rendezvous
from trainer_core.health import check_node_all_reduce

NODES, PER_NODE = 2, 2


def _rank(rank: int, store: str, results) -> None:  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=NODES * PER_NODE)
    node = rank // PER_NODE
    rv = Rendezvous("127.0.0.1", 0, NODES * PER_NODE, rank, rank % PER_NODE, node, NODES, PER_NODE, "1", 0,
                    f"n{node + 1}")
    if rank == 2:  # TEST ONLY: this rank's sum comes back wrong, as over a broken link of node n2
        real = dist.all_reduce
        dist.all_reduce = lambda t, group=None: (real(t, group=group), t.add_(10))[0]
    results[rank] = check_node_all_reduce(torch.device("cpu"), rv)
    if rank == 2:
        dist.all_reduce = real
    dist.barrier()
    dist.destroy_process_group()


def test_each_node_all_reduces_among_its_own_ranks_and_an_injected_wrong_sum_is_caught_on_that_rank():
    with tempfile.TemporaryDirectory() as tmp, mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_rank, args=(os.path.join(tmp, "store"), results), nprocs=NODES * PER_NODE,
                           start_method="spawn" if sys.platform != "linux" else "fork")
        got = dict(results)
    assert got[0] is None and got[1] is None, got  # node n1: 2 ranks, a sum of 2
    assert got[3] is None, got  # its peer on n2 sums correctly
    assert "over the 2 ranks of this node (ranks 2-3) gave 12.0" in got[2], got
