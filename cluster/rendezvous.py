"""The rendezvous contract: what every rank learns from its environment before training starts.

One table maps the facts a rank needs to the Slurm variables that carry them; one function derives the
rendezvous (address, port, ranks) from an environment and checks it against the planned geometry. Slurm sets
these variables for every task it starts; zerorun's local backend sets the same ones for its processes, so the
rank code has one path. Pure: no process, file or network access.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional

from trainer_core.contract import PORT_BASE, PORT_SPAN, Rendezvous, single_process  # noqa: F401  (the contract this derives)

# fact -> the Slurm variable that carries it
SLURM_ENV: Mapping[str, str] = {
    "job_id": "SLURM_JOB_ID",
    "array_job_id": "SLURM_ARRAY_JOB_ID",
    "array_task_id": "SLURM_ARRAY_TASK_ID",
    "global_rank": "SLURM_PROCID",
    "local_rank": "SLURM_LOCALID",
    "node_rank": "SLURM_NODEID",
    "world_size": "SLURM_NTASKS",
    "num_nodes": "SLURM_JOB_NUM_NODES",
    "nodelist": "SLURM_JOB_NODELIST",
    "cpus_per_task": "SLURM_CPUS_PER_TASK",
    "restart_count": "SLURM_RESTART_COUNT",
    "node_name": "SLURMD_NODENAME",
}

# Set by the submitter (or the user) to pin the rendezvous port instead of deriving it from the job id.
PORT_OVERRIDE_ENV = "ZERORUN_MASTER_PORT"

# Ports derived from the job id fall in the rank contract's rendezvous range (PORT_BASE, PORT_SPAN): below
# Linux's ephemeral range, so an outgoing connection never holds the port.


class RendezvousError(ValueError):
    """The environment does not describe the job that was planned."""


def first_host(nodelist: str) -> str:
    """The first host of a Slurm hostlist expression: "n[01-04,7],gpu3" -> "n01"."""
    nodelist = nodelist.strip()
    m = re.match(r"([^,\[]+)(\[([^\]]+)\])?([^,]*)", nodelist)
    if not m or not nodelist:
        raise RendezvousError(f"cannot read a host from the node list {nodelist!r}")
    prefix, _, ranges, suffix = m.groups()
    if ranges is None:
        return prefix + suffix
    first = ranges.split(",")[0].split("-")[0]
    return f"{prefix}{first}{suffix}"


def port_for_job(job_id: str) -> int:
    """A rendezvous port that differs between concurrent jobs on the same node (seeded by the job id)."""
    digits = re.sub(r"\D", "", job_id) or "0"
    return PORT_BASE + int(digits) % PORT_SPAN


def _int(environ: Mapping[str, str], fact: str) -> int:
    var = SLURM_ENV[fact]
    value = environ.get(var)
    if value is None:
        raise RendezvousError(f"{var} is not set: this process was not started as a Slurm task (or by zerorun)")
    try:
        return int(value)
    except ValueError:
        raise RendezvousError(f"{var}={value!r} is not an integer") from None


def derive(environ: Mapping[str, str], *, nodes: int, tasks_per_node: int,
           min_nodes: Optional[int] = None) -> Rendezvous:
    """Derive this rank's rendezvous from the environment and check it against the planned geometry. With
    `min_nodes`, the allocation may hold any number of nodes from min_nodes to nodes: the rendezvous follows what
    was granted."""
    world_size = _int(environ, "world_size")
    num_nodes = _int(environ, "num_nodes")
    rank = _int(environ, "global_rank")
    local_rank = _int(environ, "local_rank")
    node_rank = _int(environ, "node_rank")
    job_id = environ.get(SLURM_ENV["job_id"], "0")

    lowest = nodes if min_nodes is None else min_nodes
    if not lowest <= num_nodes <= nodes:
        asked = f"cluster.nodes={nodes}" if min_nodes is None else f"cluster.min_nodes={min_nodes}..nodes={nodes}"
        raise RendezvousError(
            f"the job has {num_nodes} nodes but the plan asked for {asked}; "
            "submit with the planned geometry (zerorun renders --nodes from cluster.nodes and min_nodes)"
        )
    nodes = num_nodes
    if world_size != nodes * tasks_per_node:
        raise RendezvousError(
            f"nodes({nodes}) x tasks_per_node({tasks_per_node}) = {nodes * tasks_per_node} "
            f"!= world_size({world_size}, {SLURM_ENV['world_size']}); set cluster.tasks_per_node to the devices "
            "per node (trainer.devices follows it)"
        )
    if not (0 <= local_rank < tasks_per_node and 0 <= node_rank < nodes and 0 <= rank < world_size):
        raise RendezvousError(
            f"rank {rank} (local {local_rank}, node {node_rank}) lies outside "
            f"nodes({nodes}) x tasks_per_node({tasks_per_node})"
        )
    if rank != node_rank * tasks_per_node + local_rank:
        raise RendezvousError(
            f"rank {rank} != node_rank({node_rank}) x tasks_per_node({tasks_per_node}) + local_rank({local_rank}): "
            "tasks are not laid out block-wise; do not pass --distribution to srun"
        )

    port_text = environ.get(PORT_OVERRIDE_ENV)
    if port_text:
        try:
            port = int(port_text)
        except ValueError:
            raise RendezvousError(f"{PORT_OVERRIDE_ENV}={port_text!r} is not a port number") from None
        if not 1024 <= port <= 65535:
            raise RendezvousError(f"{PORT_OVERRIDE_ENV}={port} is outside 1024-65535; set cluster.master_port")
    else:
        port = port_for_job(job_id)

    nodelist = environ.get(SLURM_ENV["nodelist"])
    if not nodelist:
        raise RendezvousError(f"{SLURM_ENV['nodelist']} is not set: cannot tell which node hosts rank 0")
    return Rendezvous(
        master_addr=first_host(nodelist),
        master_port=port,
        world_size=world_size,
        rank=rank,
        local_rank=local_rank,
        node_rank=node_rank,
        num_nodes=num_nodes,
        tasks_per_node=tasks_per_node,
        job_id=job_id,
        restart_count=restart_count(environ),
        node=environ.get(SLURM_ENV["node_name"], ""),
    )


def restart_count(environ: Mapping[str, str]) -> int:
    """How many times Slurm has restarted (requeued) this job."""
    value: Optional[str] = environ.get(SLURM_ENV["restart_count"])
    return int(value) if value and value.isdigit() else 0
