"""Requeue: should this job go back in the queue, and why not; and the `scontrol` calls that act on it.

The decision is a pure function of what happened (the cause of the stop, how many times the run was already
requeued for it, whether a checkpoint was written); the side effects are two small functions (read the job's
clock, requeue the job). Both run on the batch host, after the ranks have exited resumable (jobs/host.py):
the ranks know no scheduler, and inside a container there is usually no scontrol to call.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Mapping, Optional

from cluster.rendezvous import SLURM_ENV
from trainer_core.contract import EXIT_RESUMABLE

__all__ = ["EXIT_RESUMABLE", "Decision", "JobClock", "decide", "stop_cause", "job_to_requeue", "job_clock",
           "scontrol_requeue", "parse_job_clock"]

# A signal this many seconds (or fewer) before the planned time-limit signal is the time limit. Slurm checks
# its timers coarsely ("the signal may be sent up to 60 seconds earlier than specified", sbatch(1)).
TIMEOUT_TOLERANCE_S = 90

# Where a stop came from.
CAUSES = ("preemption", "timeout", "terminated")


@dataclass(frozen=True)
class Decision:
    requeue: bool
    reason: str
    # the job's exit status: 0 when it is requeued, EXIT_RESUMABLE when it waits for resume=RUN_DIR
    exit_code: int


@dataclass(frozen=True)
class JobClock:
    """What Slurm's record of the running job says about its end, as epoch seconds (None where unset)."""

    end_time: Optional[float]
    # set by Slurm when a higher-priority job preempts this one (the job's signal comes then, its grace starts)
    preempt_time: Optional[float]


# Signals that end a rank for a reason that may belong to its node: SIGKILL (the kernel's OOM killer, a node's
# watchdog, a kill -9), SIGSEGV and SIGBUS (bad memory, a failing device or file system under a mapped file).
# A rank that dies of one marks its node as suspect: the requeue leaves it out while requeue.max_excluded_nodes
# allows. Keyed by the words srun (strsignal) reports them with; "Out Of Memory" is srun's for a cgroup OOM kill.
NODE_SIGNALS: Mapping[str, str] = {"killed": "SIGKILL", "segmentation fault": "SIGSEGV", "bus error": "SIGBUS",
                                   "out of memory": "SIGKILL (out of memory)"}


def node_signal(how: str) -> Optional[str]:
    """The signal behind a launcher's report of a dead rank ("Killed", "Segmentation fault (core dumped)",
    "Bus error"), when it is one that may belong to the node; None for an exit code or any other signal."""
    said = how.strip().lower()
    for words, name in NODE_SIGNALS.items():
        if said.startswith(words):
            return name
    return None


def signal_name(name: str) -> str:
    """USR2, SIGUSR2, usr2 -> USR2 (how the ranks record a signal)."""
    return name.upper().removeprefix("SIG")


def stop_cause(signal_name: str, configured_signal: str, now: float, clock: Optional[JobClock],
               signal_delay_s: int) -> str:
    """Why a stop was asked for.

    - "preemption": Slurm's record shows a preempt time (whichever signal came first: the job's own with
      preempt_send_user_signal, else SIGTERM at the start of the grace time); also the job's own signal well
      before its end with no preempt time (someone asked the job to yield: `scancel --signal`).
    - "timeout": the job's own signal near its end time, or with no clock to read (the cautious reading: it
      counts against requeue.max_timeouts).
    - "terminated": SIGTERM or SIGINT without preemption: scancel, the end of a grace period, Ctrl-C.
    """
    if clock is not None and clock.preempt_time is not None:
        return "preemption"
    if signal_name != configured_signal:
        return "terminated"
    if clock is None or clock.end_time is None:
        return "timeout"
    remaining = clock.end_time - now
    return "timeout" if remaining <= signal_delay_s + TIMEOUT_TOLERANCE_S else "preemption"


def decide(cause: str, *, checkpointed: bool, timeouts_so_far: int, max_timeouts: int,
           preemptions_so_far: int, max_preemptions: Optional[int], no_requeue: Optional[str] = None) -> Decision:
    """Requeue, or why not. `no_requeue` says why this job cannot be requeued at all (a local run, or
    cluster.requeue=false); the run then waits for resume=RUN_DIR."""
    if cause not in CAUSES:
        raise ValueError(f"unknown stop cause {cause!r}; one of {', '.join(CAUSES)}")
    if no_requeue and checkpointed:
        return Decision(False, f"{no_requeue}; continue it with resume=RUN_DIR", EXIT_RESUMABLE)
    if not checkpointed:
        return Decision(False, "no checkpoint was written, a rerun would start over; not requeued", 1)
    if cause == "terminated":
        return Decision(False, "terminated (scancel or the end of a grace period): not requeued; "
                               "resumable with resume=RUN_DIR", EXIT_RESUMABLE)
    if cause == "timeout":
        if timeouts_so_far >= max_timeouts:
            return Decision(
                False,
                f"time limit reached {timeouts_so_far + 1} times; requeue.max_timeouts={max_timeouts} is used up "
                "(raise it, or cluster.time_min, and resubmit with resume=RUN_DIR)",
                EXIT_RESUMABLE,
            )
        return Decision(True, f"time limit: requeue {timeouts_so_far + 1} of {max_timeouts}", 0)
    if max_preemptions is not None and preemptions_so_far >= max_preemptions:
        return Decision(
            False,
            f"preempted {preemptions_so_far + 1} times; requeue.max_preemptions={max_preemptions} is used up "
            "(resubmit with resume=RUN_DIR)",
            EXIT_RESUMABLE,
        )
    limit = f" of {max_preemptions}" if max_preemptions is not None else ""
    return Decision(True, f"preempted: requeue {preemptions_so_far + 1}{limit}", 0)


def job_to_requeue(environ: Mapping[str, str]) -> str:
    """The exact job to requeue: `<array job>_<task>` for an array task, else the job id."""
    array_job = environ.get(SLURM_ENV["array_job_id"])
    if array_job:
        return f"{array_job}_{environ[SLURM_ENV['array_task_id']]}"
    return environ[SLURM_ENV["job_id"]]


_FIELD = re.compile(r"(?:^|\s)(EndTime|PreemptTime)=(\S+)")


def parse_job_clock(scontrol_show_job: str) -> JobClock:
    """The clock fields of `scontrol show job -o JOB` (times in the controller's local time zone)."""
    fields = dict(_FIELD.findall(scontrol_show_job))

    def seconds(value: Optional[str]) -> Optional[float]:
        if not value or value in ("None", "Unknown", "N/A"):
            return None
        return float(time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%S")))

    return JobClock(seconds(fields.get("EndTime")), seconds(fields.get("PreemptTime")))


def job_clock(job: str) -> Optional[JobClock]:
    """Ask Slurm for the job's clock; None where scontrol is missing or does not answer."""
    from cluster import slurm

    try:
        proc = slurm.run_command(["scontrol", "show", "job", "-o", job], timeout=10)
    except slurm.SlurmError:
        return None
    return parse_job_clock(proc.stdout) if proc.returncode == 0 else None


def scontrol_exclude(job: str, nodes: list[str]) -> tuple[bool, str]:
    """Keep a requeued (pending) job off `nodes`: its excluded-node list. Slurm takes it only while the job is
    pending, so this comes right after the requeue. Returns (ok, what happened)."""
    from cluster import slurm

    listed = ",".join(nodes)
    try:
        proc = slurm.run_command(["scontrol", "update", f"JobId={job}", f"ExcNodeList={listed}"], timeout=60)
    except slurm.SlurmError as e:
        return False, str(e)
    if proc.returncode != 0:
        return False, f"scontrol update JobId={job} ExcNodeList={listed} failed: {proc.stderr.strip()}"
    return True, f"excluding {listed}"


def scontrol_requeue(job: str) -> tuple[bool, str]:
    """Requeue one job with scontrol. Returns (ok, what happened)."""
    from cluster import slurm

    try:
        proc = slurm.run_command(["scontrol", "requeue", job], timeout=60)
    except slurm.SlurmError as e:
        return False, str(e)
    if proc.returncode != 0:
        return False, f"scontrol requeue {job} failed ({proc.returncode}): {proc.stderr.strip()}"
    return True, f"requeued {job}"
