"""Planning: a resolved config in, a frozen JobPlan out. Pure: no cluster probe, no file, no clock.

The plan is everything a backend needs to start the job: its geometry, resources, the command each rank runs,
the environment every rank gets, and the setup lines that run before it. Dry-run prints it, the local backend
starts its ranks from it, the Slurm backend renders it into an sbatch script.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Optional

# The module each rank runs, with the run folder as its only argument.
RANK_ENTRY = "jobs.rank"


@dataclass(frozen=True)
class RankSpec:
    rank: int
    node_rank: int
    local_rank: int
    host: str
    device: str


@dataclass(frozen=True)
class JobPlan:
    name: str
    backend: str
    run_dir: str
    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int
    mem: Optional[str]
    time_min: int
    partition: Optional[str]
    account: Optional[str]
    qos: Optional[str]
    constraint: Optional[str]
    exclude: Optional[str]
    exclusive: bool
    signal: str
    signal_delay_s: int
    master_port: Optional[int]
    setup: tuple[str, ...]
    srun_args: tuple[str, ...]
    sbatch_extra: tuple[tuple[str, Any], ...]
    env_passthrough: tuple[str, ...]
    # environment every rank gets on top of what the scheduler sets
    env: tuple[tuple[str, str], ...]
    # the command each rank runs
    entry: tuple[str, ...]

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node

    def ranks(self, hosts: Optional[list[str]] = None) -> list[RankSpec]:
        """Every rank in Slurm's block layout: rank = node_rank x tasks_per_node + local_rank."""
        hosts = hosts or [f"node{n}" for n in range(self.nodes)]
        return [
            RankSpec(
                rank=n * self.tasks_per_node + lr,
                node_rank=n,
                local_rank=lr,
                host=hosts[n],
                device=f"cuda:{lr}" if self.gpus_per_node else "cpu",
            )
            for n in range(self.nodes)
            for lr in range(self.tasks_per_node)
        ]


def make_plan(cfg: Any, python: str = sys.executable) -> JobPlan:
    """The plan of a config that passed configs.validate.check_config and has been resolved."""
    c = cfg.cluster
    return JobPlan(
        name=str(cfg.name),
        backend=str(c.backend),
        run_dir=str(cfg.run_dir),
        nodes=int(c.nodes),
        tasks_per_node=int(c.tasks_per_node),
        gpus_per_node=int(c.gpus_per_node),
        cpus_per_task=int(c.cpus_per_task),
        mem=c.mem,
        time_min=int(c.time_min),
        partition=c.partition,
        account=c.account,
        qos=c.qos,
        constraint=c.constraint,
        exclude=c.exclude,
        exclusive=bool(c.exclusive),
        signal=str(c.signal),
        signal_delay_s=int(c.signal_delay_s),
        master_port=c.master_port,
        setup=tuple(c.setup),
        srun_args=tuple(c.srun_args),
        sbatch_extra=tuple(sorted((str(k), v) for k, v in c.sbatch_extra.items())),
        env_passthrough=tuple(c.env_passthrough),
        env=(
            # one thread per CPU the rank was given: more oversubscribes the node (46 vs 7 steps/s measured)
            ("OMP_NUM_THREADS", str(c.cpus_per_task)),
            ("PYTHONUNBUFFERED", "1"),
        ),
        entry=(python, "-u", "-m", RANK_ENTRY, str(cfg.run_dir)),
    )
