"""A quick health check of each rank's node when training starts: the rank's device is there, a small matmul on
it gives the right answer, one all-reduce among the ranks of each node arrives whole (the node's own
interconnect, e.g. NVLink: a wrong sum names that node), and one over every rank does. A node that fails is named (in the
rank's log and as a `bad_node` event in attempts.jsonl) and the rank exits with EXIT_BAD_NODE; the batch host
then requeues the job without that node (jobs/host.py, requeue.max_excluded_nodes).

It runs in Lightning's `setup` hook, where the process group exists, before the first step. health.check=false
turns it off; health.test_only_fail_on_node makes it fail on one node, for tests only.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import pytorch_lightning as pl
import torch
import torch.distributed as dist

from trainer_core import attempts
from trainer_core.contract import Rendezvous

MATMUL_SIZE = 64


class NodeHealthError(RuntimeError):
    def __init__(self, node: str, rank: int, why: str) -> None:
        super().__init__(f"node {node} failed its health check (rank {rank}): {why}")
        self.node, self.rank, self.why = node, rank, why


def check_device(device: torch.device) -> Optional[str]:
    """Why the device is unfit, or None. A GPU must be visible; a matmul with the identity must give back its
    input (a wrong answer is a broken device, not a slow one)."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"GPU {device.index} is not visible ({torch.cuda.device_count()} visible)"
    g = torch.Generator().manual_seed(0)
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=g).to(device)
    got = (a @ torch.eye(MATMUL_SIZE, device=device)).cpu()
    if not torch.allclose(got, a.cpu()):
        return f"a {MATMUL_SIZE}x{MATMUL_SIZE} matmul on {device} gave a wrong result"
    return None


def check_node_all_reduce(device: torch.device, rv: Rendezvous) -> Optional[str]:
    """One all-reduce among this node's ranks only, in a process group of their own. The group is made with
    group-local synchronisation: each rank joins only its own node's group, so the cost does not grow with the
    number of nodes. Nothing to check with one rank on the node."""
    if not (dist.is_available() and dist.is_initialized()) or rv.tasks_per_node < 2:
        return None
    first = rv.rank - rv.local_rank  # ranks are numbered node by node (srun's block distribution)
    ranks = list(range(first, first + rv.tasks_per_node))
    group = dist.new_group(ranks, use_local_synchronization=True)
    try:
        t = torch.ones(1, device=device)
        dist.all_reduce(t, group=group)
    finally:
        dist.destroy_process_group(group)
    if int(t.item()) != len(ranks):
        return f"an all-reduce of ones over the {len(ranks)} ranks of this node (ranks {first}-{ranks[-1]}) gave {t.item()}"
    return None


def check_all_reduce(device: torch.device, world_size: int) -> Optional[str]:
    if not (dist.is_available() and dist.is_initialized()) or world_size < 2:
        return None
    t = torch.ones(1, device=device)
    dist.all_reduce(t)
    if int(t.item()) != world_size:
        return f"an all-reduce of ones over {world_size} ranks gave {t.item()}"
    return None


class NodeHealth(pl.Callback):
    def __init__(self, run_dir: str, rendezvous: Rendezvous, health_cfg: Any) -> None:
        self.run_dir, self.rendezvous = run_dir, rendezvous
        self.fail_on = health_cfg.get("test_only_fail_on_node") if health_cfg is not None else None
        self.seconds: Optional[float] = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        start = time.monotonic()
        rv = self.rendezvous
        device = trainer.strategy.root_device
        why = None
        if self.fail_on is not None and rv.node == str(self.fail_on):
            why = "failed on purpose (health.test_only_fail_on_node, a test-only setting)"
        why = why or check_device(device) or check_node_all_reduce(device, rv)
        if why:
            attempts.append(self.run_dir, "bad_node", node=rv.node, rank=rv.rank, job_id=rv.job_id,
                            restart_count=rv.restart_count, reason=why)
            raise NodeHealthError(rv.node, rv.rank, why)
        why = check_all_reduce(device, rv.world_size)
        if why:  # every rank sees the same sum: each names its own node; the host excludes none of them alone
            raise NodeHealthError(rv.node, rv.rank, why)
        self.seconds = time.monotonic() - start
