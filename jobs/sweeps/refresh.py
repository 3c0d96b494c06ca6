"""How a sweep's members are doing: their states from Slurm (squeue, sacct, scontrol) and what their run folders
say (final metrics, latest checkpoint, attempts, step); and finding an array whose sbatch answer the record
never heard, by the unique job name it was submitted with.

Reading and writing are apart: `observe` asks Slurm and the run folders and changes nothing; `apply` puts an
observation into a record. A reader that observed without the lock applies it to the record as it is on disk
under the lock, and only where the member's job is still the one it asked about, so it never writes back an
older record over a submitter's newer one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from cluster.backends import get_backend
from jobs.sweeps import record as sweep_record
from jobs.sweeps.record import Member, Submission, SweepRecord


@dataclass(frozen=True)
class Seen:
    """What was observed of one member."""

    # the job asked about ("ARRAYJOB_TASK"), and what Slurm said of it (None: nothing to apply)
    job: Optional[str]
    state: Optional[str]
    detail: str
    # from the run folder
    metrics: Optional[dict]
    checkpoint: Optional[str]
    step: Optional[int]
    attempts: int


def observe(record: SweepRecord) -> dict[int, Seen]:
    """member number -> what Slurm and its run folder say now. Changes nothing."""
    states: dict[str, Any] = {}
    jobs = {m.num: record.job_of(m) for m in record.members}
    if not get_backend(record.backend).runs_in_foreground:  # a queued sweep: Slurm job arrays
        from cluster import slurm

        states = slurm.query_tasks([j for j in jobs.values() if j])
    seen = {}
    for m in record.members:
        job = jobs[m.num]
        st = states.get(job or "")
        state, detail = None, ""
        if st is not None and not (st.state == "UNKNOWN" and m.state in sweep_record.RESUBMITTABLE | {"COMPLETED"}):
            # (a task Slurm forgot after it finished keeps what the record remembers)
            state = st.state
            if st.state in ("PENDING", "REQUEUED"):
                detail = st.reason
            elif st.finished and st.state != "COMPLETED":
                detail = _failure(Path(record.sweep_dir), job or "", st, m.run_dir)
        seen[m.num] = Seen(job, state, detail, *read_run_folder(m.run_dir))
    return seen


def apply(record: SweepRecord, seen: dict[int, Seen]) -> None:
    """Put an observation into `record`: run-folder facts always, a Slurm state only where the member's job is
    the one that was asked about (a member resubmitted since keeps what its submitter wrote)."""
    for m in record.members:
        s = seen.get(m.num)
        if s is None:
            continue
        if s.state is not None and s.job == record.job_of(m):
            m.state, m.detail = s.state, s.detail
        m.metrics, m.checkpoint, m.step, m.attempts = s.metrics, s.checkpoint, s.step, s.attempts


def refresh(record: SweepRecord) -> None:
    """Update every member's state and run-folder facts in `record` (in memory)."""
    apply(record, observe(record))


def read_run_folder(run_dir: str) -> tuple[Optional[dict], Optional[str], Optional[int], int]:
    """(final metrics, latest checkpoint, step, attempts) of a member's run folder."""
    from trainer_core import attempts

    from trainer_core import layout
    from trainer_core.checkpoint_store import STEP_DIR, CheckpointError, CheckpointStore

    folder = Path(run_dir)
    try:
        metrics = json.loads((folder / layout.METRICS).read_text())
    except (OSError, ValueError):
        metrics = None
    step = None
    checkpoint: Optional[str] = None
    try:
        latest = CheckpointStore(folder).latest()  # the newest complete checkpoint, as a resume would pick it
    except (CheckpointError, OSError):
        latest = None
    if latest is not None:
        checkpoint, step = str(latest), int(STEP_DIR.match(latest.name).group(1))  # type: ignore[union-attr]
    events = attempts.read(folder)
    starts = len(attempts.attempts(events))
    steps = [e["step"] for e in events if isinstance(e.get("step"), int)]
    if steps:
        step = max(step or 0, max(steps))
    if metrics and "global_step" in metrics:
        step = int(metrics["global_step"])
    return metrics, checkpoint, step, starts


def read_member(m: Member) -> None:
    """Update a member from its run folder alone (the local backend, which knows its own states)."""
    m.metrics, m.checkpoint, m.step, m.attempts = read_run_folder(m.run_dir)


def _failure(sweep_dir: Path, job: str, st: Any, run_dir: str = "") -> str:
    """What an array task died of: a hang, or the rank srun saw fail first (its batch log) with its node, signal
    or exit code (the member's record says it as `zerorun status RUN_DIR` would), and that rank's exception."""
    from cluster import render, slurm
    from jobs.verbs import last_error, member_outcome

    recorded = member_outcome(run_dir) if run_dir else ""
    if recorded.startswith("HUNG"):
        return recorded
    array_job, _, task = job.partition("_")
    batch = sweep_dir / render.array_batch_log(array_job, int(task))
    failures = slurm.failed_tasks(batch.read_text(errors="replace")) if batch.exists() else []
    rank = failures[0].rank if failures else 0
    named = recorded or (f"rank {rank} on {failures[0].host}: {failures[0].how}" if failures else "")
    log = sweep_dir / render.array_rank_log(array_job, int(task), rank)
    # DDP prefixes every line of a rank's output with "[rankN]: "
    text = re.sub(r"(?m)^\[rank\d+\]:\s?", "", log.read_text(errors="replace")) if log.exists() else ""
    error = last_error(text)
    if error:
        return f"{named}: {error}" if named else f"rank {rank}: {error}"
    return named or (f"exit {st.exit_code}" if st.exit_code not in ("", "0:0") else "")


def find_queued(sub: Submission) -> Optional[str]:
    """The array job Slurm holds for a submission still marked "submitting" (its sbatch went through but the
    record never heard), found by its unique job name; None when Slurm has no job of that name. Raises
    cluster.slurm.SlurmError when Slurm holds several, or cannot tell (no accounting and the job gone)."""
    from cluster import slurm

    found, why = slurm.find_named(sub.job_name, since=sub.created_at)
    if len(found) > 1:
        raise slurm.SlurmError(
            f"Slurm holds {len(found)} jobs named {sub.job_name} ({', '.join(found)}), one expected: cancel "
            f"the extra ones (scancel ID) and run the command again")
    if found:
        return found[0]
    if why is not None:
        raise slurm.SlurmError(
            f"cannot tell whether array {sub.tag} was queued before an earlier submitter stopped: {why}. "
            f"Check `squeue --name {sub.job_name}` and `sacct --name {sub.job_name}`; run the command again "
            "when sacct answers")
    return None


def adopt_queued(record: SweepRecord, err: Any) -> list[Submission]:
    """Record every "submitting" array that Slurm in fact holds as submitted ("found by name"); returns those
    still not queued. Call with the lock held; save after."""
    left = []
    for sub in record.pending():
        job = find_queued(sub)
        if job is None:
            left.append(sub)
            continue
        sweep_record.mark_queued(record, sub, job, "found by name")
        err.write(f"zerorun: array {sub.tag} was already queued as job {job} (an earlier submitter stopped before "
                  "recording it); adopted, not submitted again\n")
    return left
