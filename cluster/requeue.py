"""Requeue: should this job go back in the queue, and why not; and the one `scontrol requeue` call.

The decision is a pure function of what happened (the cause of the stop, how many times the run was already
requeued for it, whether a checkpoint was written); the side effect is one small function. A rank never
decides with Slurm state it cannot see: the cause comes from the signal and the job's own clock.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from typing import Mapping, Optional

from cluster.rendezvous import SLURM_ENV

# Exit status of a rank that checkpointed but could not requeue (no scontrol on the node, or it failed):
# the run is resumable by hand (`zerorun resubmit` / resume=RUN_DIR). 75 is EX_TEMPFAIL.
EXIT_RESUMABLE = 75

# A signal this many seconds (or more) before the planned time-limit signal is not the time limit.
TIMEOUT_TOLERANCE_S = 30


@dataclass(frozen=True)
class Decision:
    requeue: bool
    reason: str


def stop_cause(signal_name: str, configured_signal: str, now: float, job_end_time: Optional[float],
               signal_delay_s: int) -> str:
    """Why a stop was asked for: "timeout" (the job's own signal, near its end time), "preemption" (the job's
    own signal well before it: Slurm sends it when a higher-priority job takes the nodes), or "terminated"
    (SIGTERM without warning: scancel, or the end of a grace period)."""
    if signal_name != configured_signal:
        return "terminated"
    if job_end_time is None:
        return "timeout"  # no clock to tell: the cautious reading (it is counted against the timeout limit)
    remaining = job_end_time - now
    return "timeout" if remaining <= signal_delay_s + TIMEOUT_TOLERANCE_S else "preemption"


def decide(cause: str, *, backend: str, checkpointed: bool, timeouts_so_far: int, max_timeouts: int,
           preemptions_so_far: int, max_preemptions: Optional[int]) -> Decision:
    """Requeue, or why not."""
    if backend != "slurm":
        return Decision(False, f"{backend} run: nothing to requeue; continue it with resume=RUN_DIR")
    if not checkpointed:
        return Decision(False, "no checkpoint was written, a rerun would start over; not requeued")
    if cause == "terminated":
        return Decision(False, "terminated (scancel or the end of a grace period): not requeued")
    if cause == "timeout":
        if timeouts_so_far >= max_timeouts:
            return Decision(
                False,
                f"time limit reached {timeouts_so_far + 1} times; requeue.max_timeouts={max_timeouts} is used up "
                "(raise it, or cluster.time_min, and resubmit)",
            )
        return Decision(True, f"time limit: requeue {timeouts_so_far + 1} of {max_timeouts}")
    if cause == "preemption":
        if max_preemptions is not None and preemptions_so_far >= max_preemptions:
            return Decision(False, f"preempted {preemptions_so_far + 1} times; requeue.max_preemptions={max_preemptions}")
        return Decision(True, f"preempted: requeue {preemptions_so_far + 1}")
    raise ValueError(f"unknown stop cause {cause!r}")


def job_to_requeue(environ: Mapping[str, str]) -> str:
    """The exact job to requeue: `<array job>_<task>` for an array task, else the job id."""
    array_job = environ.get(SLURM_ENV["array_job_id"])
    if array_job:
        return f"{array_job}_{environ[SLURM_ENV['array_task_id']]}"
    return environ[SLURM_ENV["job_id"]]


def scontrol_requeue(job: str) -> tuple[bool, str]:
    """Requeue one job with scontrol. Returns (ok, what happened)."""
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return False, "scontrol is not on this node's PATH"
    proc = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return False, f"scontrol requeue {job} failed ({proc.returncode}): {proc.stderr.strip()}"
    return True, f"requeued {job}"
