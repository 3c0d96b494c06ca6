"""The rank contract: all a rank knows of the job it belongs to, and the one status it answers with.

A rank reads its place in the job (rank, world size, master address and port), the job's id and attempt, its
node's name, the run folder and the stop signal from a small set of environment variables: torch.distributed's
own (RANK, WORLD_SIZE, MASTER_ADDR, ...) plus a few ZERORUN_* ones. Whoever starts the ranks provides them: a
backend (cluster/backends/) derives them from what its scheduler sets and the rank
entry (jobs/rank.py) puts them in place before training starts. Nothing under trainer_core/ reads a scheduler's
variables or calls a scheduler's command.

When asked to stop (the stop signal, SIGTERM, SIGINT), every rank checkpoints at the same optimizer-step boundary
and exits with EXIT_RESUMABLE. Whether the job then goes back into the queue is decided on the batch host
(jobs/host.py), outside the ranks and outside any container.

No torch; nothing here touches a process or a file, and `free_port` is its one look at the network.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass
from typing import Mapping

# A rank that checkpointed and stopped before the end: the run continues from that checkpoint (requeued by the
# job script, or by hand with resume=RUN_DIR). 75 is EX_TEMPFAIL.
EXIT_RESUMABLE = 75
# A rank whose node failed its health check at start (trainer_core/health.py): the job is requeued without
# that node. 76 is EX_PROTOCOL, unused by Python and by the launchers.
EXIT_BAD_NODE = 76

# fact -> the variable that carries it into a rank
ENV: Mapping[str, str] = {
    "master_addr": "MASTER_ADDR",
    "master_port": "MASTER_PORT",
    "world_size": "WORLD_SIZE",
    "rank": "RANK",
    "local_rank": "LOCAL_RANK",
    "node_rank": "NODE_RANK",
    "tasks_per_node": "LOCAL_WORLD_SIZE",
    "num_nodes": "ZERORUN_NUM_NODES",
    "job_id": "ZERORUN_JOB_ID",
    "restart_count": "ZERORUN_RESTART_COUNT",
    "node": "ZERORUN_NODE",
}
# The run folder and the job's stop signal (besides TERM and INT), set for every rank by the plan.
RUN_DIR_ENV = "ZERORUN_RUN_DIR"
SIGNAL_ENV = "ZERORUN_SIGNAL"
DEFAULT_SIGNAL = "USR2"


class ContractError(ValueError):
    """The environment does not hold a rank contract."""


@dataclass(frozen=True)
class Rendezvous:
    """One rank's place in the job, and the job's identity."""

    master_addr: str
    master_port: int
    world_size: int
    rank: int
    local_rank: int
    node_rank: int
    num_nodes: int
    tasks_per_node: int
    job_id: str
    # how many times the scheduler restarted (requeued) this job before this attempt
    restart_count: int = 0
    # the node this rank runs on, as the scheduler names it
    node: str = ""

    def env(self) -> dict[str, str]:
        """The contract's variables for this rank (torch.distributed reads the first ones itself)."""
        return {var: str(getattr(self, fact)) for fact, var in ENV.items()}

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "Rendezvous":
        missing = [var for var in ENV.values() if var not in environ and var != ENV["node"]]
        if missing:
            raise ContractError(f"not started as a zerorun rank: {', '.join(missing)} unset")
        values = {fact: environ.get(var, "") for fact, var in ENV.items()}
        try:
            return cls(**{k: v if k in ("master_addr", "job_id", "node") else int(v) for k, v in values.items()})
        except ValueError as e:
            raise ContractError(f"a rank-contract variable is not an integer: {e}") from None


def single_process(port: int, job_id: str = "0", node: str = "localhost") -> Rendezvous:
    """The rendezvous of a run in the launching process itself (one rank, this machine)."""
    return Rendezvous("127.0.0.1", port, 1, 0, 0, 0, 1, 1, job_id, 0, node)


# Rendezvous ports fall in [PORT_BASE, PORT_BASE + PORT_SPAN): above the registered services most clusters run,
# below Linux's ephemeral range (32768+), so an outgoing connection (another job's, a test's) never takes the port
# between its choice and the master's bind.
PORT_BASE = 20000
PORT_SPAN = 12000


def free_port(host: str = "127.0.0.1", tries: int = 64) -> int:
    """A TCP port free on this machine now, for a rendezvous that runs here (the local backend, a run inside the
    launching process): drawn from the rendezvous range, which outgoing connections do not use (a port from the
    ephemeral range could be taken by one before the master binds it); the system's choice when none is free."""
    draw = random.Random()
    for _ in range(tries):
        port = PORT_BASE + draw.randrange(PORT_SPAN)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
