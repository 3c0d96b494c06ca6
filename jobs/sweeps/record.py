"""A sweep's durable record: SWEEP_DIR/sweep.json, written before anything is submitted and updated after, and
the lock every read-modify-write of it holds.

What it holds: the sweep id, the command line, the swept keys, every member (its overrides and values, its run
folder, which array task ran it in which submission, and the last state, step, checkpoint, attempts and final
metrics `zerorun status` saw), and every submission (one sbatch call per array: its tag, job name, script, index
file and, once sbatch answered, the array job id).

Why it cannot double-submit: a submission is recorded as "submitting", with a tag that is part of the array's
job name, before sbatch is called; it becomes "submitted" with the array job id after. A submitter that died in
between leaves "submitting" behind; the next one asks Slurm (squeue, then sacct) for a job of that name before
calling sbatch again, and adopts it when it exists. Every read-modify-write of the record holds an exclusive
lock (SWEEP_DIR/.sweep.lock), so two submitters of the same sweep take turns; a reader that cannot wait
(`zerorun status` beside a local sweep that holds the lock while it runs) merges what it saw into the record
as it is on disk under the lock, or saves nothing. The file is replaced atomically (trainer_core.durable): a kill
leaves the old record or the new one. The protocol's Slurm side is in submit.py (sbatch) and refresh.py (finding
an array by its job name).

Imports nothing of the training stack.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Optional

from trainer_core.durable import write_atomic

RECORD_NAME = "sweep.json"
LOCK_NAME = ".sweep.lock"
VERSION = 1
SUBMITTING = "submitting"
SUBMITTED = "submitted"

# Final states `zerorun resubmit --failed` picks: failed, timed out for good (the rank requeues a timeout while
# requeue.max_timeouts allows), cancelled, or lost with the node; the run folder keeps the checkpoints to resume.
RESUBMITTABLE = frozenset({"FAILED", "TIMEOUT", "CANCELLED", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                           "DEADLINE", "REVOKED", "SPECIAL_EXIT"})


class RecordError(RuntimeError):
    """The record cannot be read or does not fit what was asked; the message names the fix."""


@dataclass
class Submission:
    """One sbatch call: a job array over some members."""

    number: int
    tag: str
    job_name: str
    script: str
    index_file: str
    # array task i runs member members[i]
    members: list[int]
    state: str = SUBMITTING
    array_job_id: Optional[str] = None
    created_at: float = 0.0
    submitted_at: Optional[float] = None
    # "sbatch", or "found by name" when a crashed submitter's array was adopted
    how: Optional[str] = None
    # the submission (its number) this array waits for (sbatch --dependency=afterany): a sweep of more arrays
    # than sweep.parallelism runs them in lanes, one after another (cluster/sweep_plan.py, lanes)
    after: Optional[int] = None


@dataclass
class Member:
    num: int
    run_dir: str
    # the swept overrides, as Hydra wrote them ("optimizer.lr=0.0003")
    overrides: list[str]
    # swept key -> value, for the report's axes
    params: dict[str, Any]
    # [submission number, array task id] for every submission that included this member, oldest first
    tasks: list[list[int]] = field(default_factory=list)
    # what `zerorun status` saw last (PLANNED before any submission)
    state: str = "PLANNED"
    detail: str = ""
    step: Optional[int] = None
    checkpoint: Optional[str] = None
    attempts: int = 0
    metrics: Optional[dict[str, float]] = None


@dataclass
class SweepRecord:
    sweep_id: str
    sweep_dir: str
    name: str
    backend: str
    command: list[str]
    # the command line's overrides (sweeps as typed: optimizer.lr=1e-4,3e-4)
    overrides: list[str]
    # the swept keys, in command-line order
    params: list[str]
    parallelism: int
    metric: str
    mode: str
    created_at: float
    members: list[Member]
    submissions: list[Submission] = field(default_factory=list)
    # where the ranks run and with which Python: a resubmission renders the same job from anywhere
    workdir: str = ""
    python: str = ""
    # swept key -> the axis its values were declared for: "linear" (range(...)), "log" (tag(log, ...)), or "auto"
    # (a list of values: the report draws numbers with a fraction on a numeric axis, anything else as categories)
    scales: dict[str, str] = field(default_factory=dict)
    version: int = VERSION

    def job_of(self, member: Member) -> Optional[str]:
        """The member's latest Slurm job, "ARRAYJOB_TASK", once its array was queued."""
        if not member.tasks:
            return None
        number, task = member.tasks[-1]
        sub = self.submissions[number]
        return f"{sub.array_job_id}_{task}" if sub.array_job_id else None

    def pending(self) -> list[Submission]:
        return [s for s in self.submissions if s.state == SUBMITTING]


def path(sweep_dir: str | os.PathLike) -> Path:
    return Path(sweep_dir) / RECORD_NAME


def exists(sweep_dir: str | os.PathLike) -> bool:
    return path(sweep_dir).exists()


@contextlib.contextmanager
def locked(sweep_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the sweep's lock (an flock on SWEEP_DIR/.sweep.lock) for a read-modify-write of its record."""
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(sweep_dir) / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def try_locked(sweep_dir: str | os.PathLike) -> Iterator[bool]:
    """The lock if it is free right now (yields True), else nothing (False): for readers that only refresh the
    record's cached states and must not wait behind a local sweep that holds the lock while it runs."""
    fd = os.open(Path(sweep_dir) / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _build(cls: type, data: dict) -> Any:
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


def load(sweep_dir: str | os.PathLike) -> SweepRecord:
    p = path(sweep_dir)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise RecordError(f"{sweep_dir} holds no sweep record ({RECORD_NAME}): give the folder a sweep "
                          "(`zerorun -m ...`) printed, e.g. runs/NAME/sweep-ID") from None
    except (OSError, ValueError) as e:
        raise RecordError(f"{p} cannot be read ({e}); it is written atomically, so this is not a torn write: "
                          "restore it from a backup or start the sweep again with another sweep.id") from None
    if data.get("version") != VERSION:
        raise RecordError(f"{p} is version {data.get('version')}, this zerorun reads version {VERSION}")
    record = _build(SweepRecord, data)
    record.members = [_build(Member, m) for m in data["members"]]
    record.submissions = [_build(Submission, s) for s in data.get("submissions", [])]
    return record


def save(record: SweepRecord) -> Path:
    """Replace the record atomically and durably. Call with the lock held."""
    data = {f.name: getattr(record, f.name) for f in fields(record)}
    data["members"] = [vars(m) for m in record.members]
    data["submissions"] = [vars(s) for s in record.submissions]
    return write_atomic(path(record.sweep_dir), json.dumps(data, indent=0, ensure_ascii=False) + "\n")


def add_submission(record: SweepRecord,
                   arrays: list[tuple[str, str, str, str, list[int], Optional[int]]]) -> list[Submission]:
    """Record new submissions ("submitting"): one per array, given as (tag, job_name, script, index_file,
    members, after: the position in `arrays` of the array it waits for, or None). Each member learns which
    submission and array task will run it. Save the record before sbatch."""
    added = []
    now = time.time()
    by_num = {m.num: m for m in record.members}
    first = len(record.submissions)
    for tag, name, script, index_file, members, after in arrays:
        sub = Submission(number=len(record.submissions), tag=tag, job_name=name, script=script,
                         index_file=index_file, members=list(members), created_at=now,
                         after=None if after is None else first + after)
        record.submissions.append(sub)
        for task, num in enumerate(members):
            member = by_num[num]
            member.tasks.append([sub.number, task])
            member.state, member.detail = "SUBMITTING", ""
        added.append(sub)
    return added


def mark_queued(record: SweepRecord, sub: Submission, array_job_id: str, how: str) -> None:
    """The submission is queued as `array_job_id` (how: "sbatch" or "found by name"); its members are PENDING."""
    sub.array_job_id, sub.how = array_job_id, how
    sub.state, sub.submitted_at = SUBMITTED, time.time()
    for num in sub.members:
        record.members[position(record, num)].state = "PENDING"


def position(record: SweepRecord, num: int) -> int:
    # members are stored in number order from the sweep's first member
    first = record.members[0].num
    member = record.members[num - first]
    if member.num != num:
        raise RecordError(f"member {num} is out of place in {path(record.sweep_dir)}")
    return num - first
