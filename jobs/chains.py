"""Chains: `cluster.after=JOB_ID|RUN_DIR|SWEEP_DIR` makes a job start only after others have ended.

At submission, outside planning (like cluster.setup_file), the target is resolved into the jobs it names and
their states: a job id as it is; a run folder, its job (submission.json: the same id for every requeue of the
run); a sweep folder, every array it submitted (sweep.json). `decide` (pure) then says what the job waits for:

- a job that is still pending, running or requeued: wait for it (sbatch --dependency=KIND:ID[:ID...]);
- one that has ended: nothing to wait for when it ended well (afterok) or at all (afterany); refused with the
  fix when afterok could never be satisfied (it failed, was cancelled, or its run stopped resumable);
- a job id no Slurm command knows: refused (a typo, or a job older than the accounting keeps).

Checking ended jobs here, instead of handing Slurm their ids, also covers jobs the controller has forgotten
(MinJobAge): sbatch refuses a dependency on those. The rendered script carries `--kill-on-invalid-dep=yes`, so
a dependency that fails after submission cancels the job instead of leaving it pending for ever;
`zerorun status` then says which dependency ended how (`explain_cancel`).

A foreground backend (cluster=local) has no queue to wait in: `wait_here` polls the same resolution until
nothing is left to wait for, then starts the job or refuses it as above.

Imports nothing of the training stack.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, TextIO

from cluster import slurm
from cluster.backends import get_backend
from jobs import runs, snapshot
from jobs.sweeps import record as sweep_record
from trainer_core import attempts, layout

KINDS = ("afterok", "afterany")
WAIT_POLL_S = 5.0
_JOB_ID = re.compile(r"^\d+(_\d+)?$")


class ChainError(ValueError):
    """cluster.after cannot be waited for; the message names the fix. Nothing was submitted."""


@dataclass(frozen=True)
class Upstream:
    """One job cluster.after names, as found at submission."""

    # the scheduler's job id (an array's job id for a sweep); "" for a run that ran on a foreground backend
    job_id: str
    # how to name it in messages: "job 123", "run RUN_DIR (job 123)", "sweep SWEEP_DIR (array 124)"
    label: str
    # zerorun's state (cluster.slurm.SLURM_STATES values, UNKNOWN, or LOCAL for a run here)
    state: str
    finished: bool
    # did it end well? None: only the scheduler's state says (a bare job id)
    ok: Optional[bool] = None
    # why it did not end well, from the run folder or the sweep record ("" when nothing more is known)
    why: str = ""


@dataclass(frozen=True)
class Decision:
    # the scheduler's job ids to wait for (afterKIND:ID:ID), in order
    wait_for: tuple[str, ...]
    # runs on a foreground backend that are still running (only cluster=local can wait for them)
    running_here: tuple[str, ...]
    # what was dropped and why, for the user
    notes: tuple[str, ...]
    problems: tuple[str, ...]

    def dependency(self, kind: str) -> Optional[str]:
        return f"{kind}:{':'.join(self.wait_for)}" if self.wait_for else None


def decide(kind: str, upstream: Sequence[Upstream], target: str) -> Decision:
    """What a job with cluster.after=`target` (found as `upstream`) waits for, or why it cannot be submitted."""
    wait: list[str] = []
    here: list[str] = []
    notes: list[str] = []
    problems: list[str] = []
    for u in upstream:
        if not u.finished and u.state != "UNKNOWN":
            (wait if u.job_id else here).append(u.job_id or u.label)
            continue
        if u.state == "UNKNOWN" and u.ok is None:
            problems.append(
                f"cluster.after={target}: {u.label} does not exist (squeue, sacct and scontrol do not know it); give "
                "the id of a pending, running or finished job (`zerorun status` lists them), or a run or sweep folder")
            continue
        ok = u.ok if u.ok is not None else u.state == "COMPLETED"
        if kind == "afterok" and not ok:
            why = f": {u.why}" if u.why else ""
            problems.append(
                f"cluster.after={target}: {u.label} ended {u.state}{why}, so afterok could never be satisfied; "
                "chain to the job that reruns it (resume=RUN_DIR, zerorun resubmit SWEEP_DIR --failed), or set "
                "cluster.after_kind=afterany to start once it has ended, however it ended")
        else:
            notes.append(f"{u.label} has ended ({u.state}): nothing to wait for")
    return Decision(tuple(wait), tuple(here), tuple(notes), tuple(problems))


# ---- finding what cluster.after names ------------------------------------------------------------------------

def _run_completed(run_dir: Path) -> tuple[bool, str]:
    """Did the run complete (its final metrics written, no resumable stop after them)? (ok, why not)"""
    events = attempts.read(run_dir)
    resumable = attempts.resumable(events)
    if resumable:
        return False, f"the run stopped resumable ({resumable})"
    last = attempts.current(events)
    if last is not None and last.failure:
        return False, last.failure
    if not (run_dir / layout.METRICS).exists():
        return False, "the run has no final metrics (it did not complete)"
    return True, ""


def upstream_of_run(run_dir: Path) -> list[Upstream]:
    record = snapshot.read_record(run_dir)
    ok, why = _run_completed(run_dir)
    if record is None or not record.job_id:  # a run on a foreground backend: alive while its ranks are
        live = runs.live_job(run_dir)
        label = f"run {run_dir} (run here)"
        state = "RUNNING" if live else ("LOCAL" if attempts.read(run_dir) else "NEVER RUN (a dry run)")
        return [Upstream("", label, state, not live, ok, why)]
    backend = get_backend(str(runs.load_config(run_dir).cluster.backend))
    st = backend.query([record.job_id])[record.job_id]
    label = f"run {run_dir} (job {record.job_id})"
    if st.state == "UNKNOWN":  # forgotten by the scheduler: the run folder says how it ended
        return [Upstream(record.job_id, label, "UNKNOWN", True, ok, why or "the scheduler no longer knows its job")]
    return [Upstream(record.job_id, label, st.state, st.finished,
                     (ok and st.state == "COMPLETED") if st.finished else None, why)]


def upstream_of_sweep(sweep_dir: Path) -> list[Upstream]:
    """One Upstream per array the sweep submitted: live while any of its tasks is; ended well when every task
    completed. A sweep still being submitted (an array without a job id yet) is refused by the caller."""
    record = sweep_record.load(sweep_dir)
    arrays = [s for s in record.submissions if s.array_job_id]
    if not arrays:
        raise ChainError(f"cluster.after={sweep_dir}: the sweep has no queued array (its record lists "
                         f"{len(record.submissions)} submission(s) without a job id); submit the sweep first "
                         "(zerorun -m ...) or wait until its submission has returned")
    found = []
    for sub in arrays:
        tasks = [f"{sub.array_job_id}_{i}" for i in range(len(sub.members))]
        states = slurm.query_tasks(tasks)
        live = [t for t, st in states.items() if not st.finished and st.state != "UNKNOWN"]
        bad = {t: st.state for t, st in states.items() if (st.finished or st.state == "UNKNOWN")
               and st.state != "COMPLETED"}
        label = f"sweep {sweep_dir} (array {sub.array_job_id})"
        if live:
            found.append(Upstream(sub.array_job_id, label, "RUNNING", False))
        else:
            why = ", ".join(f"task {t.split('_')[1]} {s}" for t, s in sorted(bad.items())[:8])
            found.append(Upstream(sub.array_job_id, label, "COMPLETED" if not bad else "FAILED", True, not bad, why))
    return found


def upstream_of(target: str) -> list[Upstream]:
    """The jobs `target` (a job id, a run folder or a sweep folder) names, with their states."""
    path = Path(target)
    if path.is_dir():
        if sweep_record.exists(path):
            return upstream_of_sweep(path.resolve())
        if (path / layout.CONFIG).exists():
            return upstream_of_run(path.resolve())
        raise ChainError(f"cluster.after={target}: the folder holds no run ({layout.CONFIG}) and no sweep record "
                         "(sweep.json); give a run folder, a sweep folder or a Slurm job id")
    if not _JOB_ID.fullmatch(target):
        raise ChainError(f"cluster.after={target}: neither a folder nor a Slurm job id; give a job id (123), a run "
                         "folder (runs/NAME/RUN_ID) or a sweep folder (runs/NAME/sweep-ID)")
    st = (slurm.query_tasks([target]) if "_" in target else slurm.query([target]))[target]
    return [Upstream(target, f"job {target}", st.state, st.finished)]


def resolve(after: Optional[str], kind: str) -> Decision:
    """cluster.after resolved against the scheduler and the folders it names (the pure part is `decide`)."""
    if not after:
        return Decision((), (), (), ())
    try:
        found = upstream_of(str(after))
    except slurm.SlurmError as e:
        raise ChainError(f"cluster.after={after}: the scheduler could not be asked about it ({e})") from None
    return decide(kind, found, str(after))


def _settings(cfg) -> tuple[Optional[str], str]:  # type: ignore[no-untyped-def]
    c = cfg.cluster
    return c.get("after"), str(c.get("after_kind") or "afterok")


def dependency(cfg, err: TextIO = sys.stderr) -> Optional[str]:  # type: ignore[no-untyped-def]
    """For a job handed to a scheduler: the dependency to render ("afterok:12:34"), or None. Raises ChainError
    when the wait could never end, or names a run that only this machine can wait for."""
    after, kind = _settings(cfg)
    d = resolve(after, kind)
    problems = list(d.problems)
    for label in d.running_here:
        problems.append(f"cluster.after={after}: {label} is running on this machine, outside any scheduler, so a "
                        "queued job cannot wait for it; submit once it has ended, or use cluster=local (which waits)")
    if problems:
        raise ChainError("\n".join(problems))
    for note in d.notes:
        err.write(f"zerorun: cluster.after: {note}\n")
    return d.dependency(kind)


def wait_here(cfg, err: TextIO = sys.stderr, poll_s: float = WAIT_POLL_S, wait: bool = True,  # type: ignore[no-untyped-def]
              sleep: Callable[[float], None] = time.sleep) -> None:
    """For a foreground backend (cluster=local): wait here until nothing cluster.after names is still pending or
    running, then return (start the job) or raise ChainError as a scheduler's afterok would cancel it.
    `wait=False` (a dry run): check once, refuse what could never be waited for, wait for nothing."""
    after, kind = _settings(cfg)
    told = False
    while True:
        d = resolve(after, kind)
        waiting = [*d.wait_for, *d.running_here]
        if not wait and d.problems:
            raise ChainError("\n".join(d.problems))
        if not waiting or not wait:
            if d.problems:
                raise ChainError("\n".join(d.problems))
            for note in d.notes:
                err.write(f"zerorun: cluster.after: {note}\n")
            return
        if not told:
            err.write(f"zerorun: cluster.after={after}: waiting here for {', '.join(waiting)} to end ({kind}); "
                      "Ctrl-C stops waiting and starts nothing\n")
            told = True
        sleep(poll_s)


def explain_cancel(dependency: Optional[str], query: Callable[[list[str]], dict]) -> Optional[str]:
    """Why a job with this dependency was cancelled before it ran: the dependencies that did not end well (as
    `query` reports them), or None when none did (someone cancelled it)."""
    if not dependency:
        return None
    kind, _, ids = dependency.partition(":")
    jobs = [j for j in ids.split(":") if j]
    states = query(jobs)
    bad = [f"job {j} ended {states[j].state}" for j in jobs
           if j in states and states[j].finished and (kind == "afterok" and states[j].state != "COMPLETED")]
    if not bad:
        return None
    return (f"never ran: its dependency {', '.join(bad)}, so {kind} could never be satisfied and Slurm cancelled "
            "it (kill-on-invalid-dep)")
