"""Backends: where a plan's ranks run. One protocol, one registry; nothing else in the project compares a
backend's name (configs say `cluster.backend=NAME`, and `get_backend(NAME)` is the only place that reads it).

A backend is one module plus one line in BACKENDS. docs/backends.md says what each method must do; the rank
contract it must provide is trainer_core/contract.py.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Protocol, Sequence, TextIO, runtime_checkable

from trainer_core.contract import Rendezvous

if TYPE_CHECKING:  # type names only: importing these modules costs nothing at run time here
    # (cluster/preflight.py's ClusterFacts and Preflight are named as strings only: preflight looks backends up)
    from cluster.plan import JobPlan
    from cluster.render import RankRow, RenderContext
    from cluster.requeue import JobClock
    from cluster.slurm import JobState, TaskFailure


@runtime_checkable
class Backend(Protocol):
    # the value of cluster.backend that selects it
    name: str
    # why its jobs can never be requeued by their script (None: they can)
    no_requeue: Optional[str]
    # whether `launch` runs the job to its end in this process (the local backend) or hands it to a scheduler
    runs_in_foreground: bool

    # ---- submission side: files, checks, the one side effect ----
    def script_files(self, plan: "JobPlan", ctx: "RenderContext") -> dict[str, str]:
        """The job's script(s), by file name in the run folder. Pure."""

    def rank_table(self, plan: "JobPlan") -> list["RankRow"]:
        """Every rank as it will see the rank contract (hosts as this backend names them)."""

    def probe(self) -> "ClusterFacts":
        """Ask the scheduler about its partitions and nodes (outside planning); facts with an error if it cannot."""

    def preflight(self, plan: "JobPlan", facts: "ClusterFacts") -> "Preflight":
        """Problems of the plan (and on this cluster) that would make the job fail; each names its fix."""

    def ask_scheduler(self, run_dir: str, facts: "ClusterFacts", out: TextIO) -> list[str]:
        """Dry run: would the scheduler take the written script? Prints its answer; returns problems."""

    def launch(self, plan: "JobPlan", run_dir: str, out: TextIO, err: TextIO,
               restart_count: int = 0) -> tuple[str, int]:
        """Start the job: (job id, 0) once queued, or for a foreground backend (job id, the job's exit status);
        a foreground backend starts the same job again with the next `restart_count` when its host step
        requeued it (jobs/host.py run_in_foreground)."""

    # ---- following a job ----
    def query(self, job_ids: list[str]) -> dict[str, "JobState"]:
        """The state of each job (UNKNOWN where the scheduler does not know it)."""

    def cancel(self, job_id: str) -> None:
        """Cancel a job; raises with the scheduler's words when it cannot."""

    def rank_logs(self, run_dir: Path, job_id: Optional[str]) -> dict[int, Path]:
        """rank -> its log file in the run folder for that job (the newest job's when job_id is None)."""

    # ---- inside the job ----
    def rank_contract(self, environ: Mapping[str, str], *, nodes: int, tasks_per_node: int,
                      min_nodes: Optional[int] = None) -> Rendezvous:
        """In a rank: derive the rank contract from what the scheduler set, checked against the plan (any node
        count from min_nodes to nodes when min_nodes is set: the contract follows the allocation granted)."""

    def granted_nodes(self, environ: Mapping[str, str]) -> Optional[int]:
        """Inside the job: how many nodes the scheduler granted (None when it does not say)."""

    def job_identity(self, environ: Mapping[str, str]) -> tuple[str, int]:
        """(job id, restart count) of the job this process belongs to."""

    def job_clock(self, environ: Mapping[str, str]) -> Optional["JobClock"]:
        """On the batch host: the job's end and preempt times, where the scheduler tells them."""

    def requeue(self, environ: Mapping[str, str], exclude: Sequence[str] = ()) -> tuple[bool, str]:
        """On the batch host: put this exact job back into the queue, kept off the nodes in `exclude` (the
        whole list: the run's bad nodes so far). (ok, what happened)"""

    def rank_failures(self, environ: Mapping[str, str], run_dir: str) -> list["TaskFailure"]:
        """On the batch host, once the ranks have ended: the ranks that failed, the first first, as the launcher
        reported them (rank, node, "Killed" / "Segmentation fault" / "exit code 1")."""

    def on_node(self, node: str, argv: list[str], environ: Mapping[str, str], timeout: float) -> tuple[int, str]:
        """Inside the job (the hang watchdog): run `argv` once on one of the job's nodes, beside the ranks, even
        while they hold every resource. (exit status, its output)"""

    def end_ranks(self, environ: Mapping[str, str], pids: Sequence[tuple[str, int]]) -> tuple[bool, str]:
        """Inside the job (the hang watchdog): kill every rank now (`pids`: (node, pid) of every rank, for a backend
        that kills by pid), so the launcher returns. (ok, what happened)"""


# name -> "module:Class"; imported only when asked for
BACKENDS: Mapping[str, str] = {
    "local": "cluster.backends.local:LocalBackend",
    "slurm": "cluster.backends.slurm:SlurmBackend",
}


class BackendError(ValueError):
    """No such backend; the message lists the valid ones."""


def names() -> tuple[str, ...]:
    return tuple(BACKENDS)


def get_backend(name: str) -> Backend:
    try:
        module, _, cls = BACKENDS[name].partition(":")
    except KeyError:
        raise BackendError(f"cluster.backend={name!r} is not a backend; choose one of: {', '.join(BACKENDS)} "
                           "(cluster=local or cluster=slurm)") from None
    return getattr(importlib.import_module(module), cls)()
