"""Running a built sweep: a dry run, a new sweep (member folders, record, job arrays), the same sweep again, and
resubmitting the failed members.

Layout of a sweep folder (runs_dir/NAME/sweep-ID; owner-only, as a run folder):

    sweep.json              the record (record.py)
    members.txt             member, array/task, overrides: one line each
    0/ 1/ ...               one run folder per member: config.yaml, checkpoints/, csv/, metrics.json, ...
    arrays/s00-a000.sbatch  the batch script of array 0 of submission 0 (a resubmission is s01, ...)
    arrays/s00-a000.index.json   array task i -> member run folder (read by `python -m jobs.rank --array`)
    logs/ARRAYJOB_TASK_RANK.out  each array task's rank logs (and ..._batch.out, the batch script's)
    snapshot/               the first submission's config, script, git state and package versions

Submitting is the record's protocol: the arrays are recorded "submitting" (saved) before sbatch, and
"submitted" with the array job id after; a submitter that stopped in between leaves "submitting", and the next
one adopts the array Slurm already has under its unique job name before it would call sbatch again.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Optional, TextIO

from jobs.sweeps import record as sweep_record
from jobs.sweeps.dryrun import dry_run
from cluster.backends import get_backend
from jobs.sweeps.local import local_problems, run_local
from jobs.sweeps.plan import MEMBERS_TABLE, Planned, in_parallel, make_private, member_rows, plan_arrays, \
    plan_built, report_problems, write_files
from jobs.sweeps.record import SweepRecord
from jobs.sweeps.refresh import adopt_queued, refresh
from trainer_core.durable import write_atomic

RESUBMIT_CHOICES = ("none", "failed")
MODES = ("min", "max")
# Tests set this to simulate a submitter killed at the worst moments: "after-record" (the record says
# "submitting", sbatch was never called) or "after-sbatch" (sbatch queued the array, the record never heard).
CRASH_ENV = "ZERORUN_SWEEP_TEST_CRASH"
CRASH_EXIT = 86


def run(built: Any, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> tuple[int, dict[int, str]]:
    """Dry-run, submit or run a built sweep (members.BuiltSweep). Returns (exit status, member number -> its
    array task)."""
    settings = [f"sweep.{key}={value!r}; choose one of: {', '.join(valid)}"
                for key, value, valid in (("resubmit", built.resubmit, RESUBMIT_CHOICES), ("mode", built.mode, MODES))
                if value not in valid]
    if settings:
        return report_problems(settings, err, "not submitted"), {}
    if built.dry_run:
        return dry_run(built, out, err), {}
    if sweep_record.exists(built.sweep_dir):
        with sweep_record.locked(built.sweep_dir):
            return _again(built, out, err)
    # plan and check first: a sweep with problems writes nothing, not even its folder
    t0 = time.perf_counter()
    local = get_backend(built.backend).runs_in_foreground
    planned = None if local else plan_built(built)
    problems = local_problems(built) if local else planned.problems
    if problems:
        return report_problems(problems, err, "not run" if local else "not submitted"), {}
    with sweep_record.locked(built.sweep_dir):
        if sweep_record.exists(built.sweep_dir):  # another submitter of the same sweep got here first
            return _again(built, out, err)
        record = _start(built)
        if planned is None:
            sweep_record.save(record)
            return run_local(record, [m.num for m in built.members], out, err), {}
        files = {**planned.files, MEMBERS_TABLE: member_rows(built, planned.splan)}
        write_files(built.sweep_dir, files)
        _snapshot(built.sweep_dir, built.members[0].yaml, files[planned.splan.arrays[0].script], record)
        for note in planned.notes:
            err.write(f"zerorun: preflight note: {note}\n")
        return _queue(record, planned, out, err, t0)


def _start(built: Any) -> SweepRecord:
    """Write the sweep folder and every member's run folder and config.yaml; the record (members PLANNED), not
    yet saved."""
    from cluster import render

    make_private(built.sweep_dir)
    make_private(os.path.join(built.sweep_dir, render.LOG_DIR))
    in_parallel(_write_member, built.members)
    return SweepRecord(
        sweep_id=built.sweep_id, sweep_dir=built.sweep_dir, name=built.name, backend=built.backend,
        command=list(_command()), overrides=list(built.overrides), params=list(built.params),
        parallelism=built.parallelism, metric=built.metric, mode=built.mode, created_at=time.time(),
        members=[sweep_record.Member(num=m.num, run_dir=m.run_dir, overrides=list(m.overrides), params=m.params)
                 for m in built.members],
        workdir=os.getcwd(), python=sys.executable, scales=dict(built.scales),
    )


def _write_member(m: Any) -> None:
    try:
        os.mkdir(m.run_dir, 0o700)
    except FileExistsError:
        pass
    write_atomic(f"{m.run_dir}/config.yaml", m.yaml)


def _command() -> tuple[str, ...]:
    from jobs.dryrun import invocation

    return invocation()


def _snapshot(sweep_dir: str, config_yaml: str, script: str, record: SweepRecord) -> None:
    from jobs import snapshot

    snapshot.write_snapshot(sweep_dir, config_yaml, script, record.workdir, record.python)


def _queue(record: SweepRecord, planned: Planned, out: TextIO, err: TextIO, t0: float) -> tuple[int, dict[int, str]]:
    """Record the arrays as "submitting", save, then sbatch each (submit_pending). Call with the lock held."""
    from cluster import slurm

    splan = planned.splan
    sweep_record.add_submission(record, [(a.tag, a.job_name, a.script, a.index_file, list(a.members), a.after)
                                         for a in splan.arrays])
    sweep_record.save(record)
    try:
        queued = submit_pending(record, err)
    except slurm.SlurmError as e:
        err.write(f"zerorun: not submitted: {e}\n(the record in {record.sweep_dir} keeps what was planned; run the "
                  "same command again once the cause is fixed)\n")
        return 1, {}
    elapsed = time.perf_counter() - t0
    geometry = splan.arrays[0].plan
    ids = ", ".join(f"{s.array_job_id} (--array={a.array.flag}" + (
        f", after {record.submissions[s.after].array_job_id})" if s.after is not None else ")")
        for s, a in zip(queued, splan.arrays))
    out.write(
        f"zerorun: {splan.members} sweep members queued in {elapsed:.2f} s as job array(s) {ids}: each "
        f"nodes({geometry.nodes}) x tasks_per_node({geometry.tasks_per_node}) = {geometry.world_size} ranks\n"
        f"  sweep folder: {record.sweep_dir}\n"
        f"  follow it:    zerorun status {record.sweep_dir} | zerorun report {record.sweep_dir} | "
        f"zerorun cancel {record.sweep_dir}\n")
    return 0, {m.num: j for m in record.members if (j := record.job_of(m))}


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        print(f"zerorun: {CRASH_ENV}={name}: exiting as a crash would, here", file=sys.stderr, flush=True)
        os._exit(CRASH_EXIT)


def submit_pending(record: SweepRecord, err: TextIO = sys.stderr) -> list[sweep_record.Submission]:
    """Queue every submission still "submitting": adopt the array Slurm already has under its job name (a crash
    after sbatch), else call sbatch; save the record after each. Call with the lock held and the record saved.
    Returns the submissions queued now; raises cluster.slurm.SlurmError when Slurm refuses or cannot tell."""
    from cluster import slurm

    _crash_point("after-record")
    pending = record.pending()
    left = adopt_queued(record, err)
    done = [s for s in pending if s not in left]
    if done:
        sweep_record.save(record)
    for sub in left:
        # the runs' path too: an sbatch that does not answer in time is looked up by name before it counts as failed
        job = slurm.sbatch_or_find(record.sweep_dir, sub.job_name, sub.script, after=_waits_for(record, sub))
        _crash_point("after-sbatch")
        sweep_record.mark_queued(record, sub, job, "sbatch")
        sweep_record.save(record)
        done.append(sub)
    return sorted(done, key=lambda s: s.number)


def _waits_for(record: SweepRecord, sub: sweep_record.Submission) -> Optional[str]:
    """The array job `sub` must wait for (sbatch --dependency=afterany), or None: it waits for none, or that
    array has no task left queued or running (Slurm forgets a finished job after MinJobAge, and a dependency on a
    job it no longer knows is refused)."""
    from cluster import slurm

    if sub.after is None:
        return None
    before = record.submissions[sub.after].array_job_id
    if before is None:  # submitted in order, so this cannot happen unless the record was edited
        raise slurm.SlurmError(f"array {sub.tag} waits for array {record.submissions[sub.after].tag}, which was "
                               "never queued; run the command again to queue that one first")
    return before if slurm.has_live_tasks(before) else None


# ---- the same sweep again ---------------------------------------------------------------------------------

def _again(built: Any, out: TextIO, err: TextIO) -> tuple[int, dict[int, str]]:
    """A sweep folder that holds a record: finish a submission a crash interrupted, resubmit the failed members
    when sweep.resubmit=failed, and otherwise submit nothing. Call with the lock held."""
    from cluster import slurm

    record = sweep_record.load(built.sweep_dir)
    mine = [list(m.overrides) for m in built.members]
    if len(record.members) != len(mine) or any(m.overrides != o for m, o in zip(record.members, mine)):
        return report_problems([f"{built.sweep_dir} already holds a sweep with other members "
                                f"({len(record.members)}, of {', '.join(record.params) or 'no keys'}); set sweep.id "
                                "to another name to start a new sweep"], err), {}
    if record.pending():
        try:
            done = submit_pending(record, err)
        except slurm.SlurmError as e:
            err.write(f"zerorun: {e}\n")
            return 1, {}
        out.write("zerorun: finished a submission an earlier command left half done: "
                  + ", ".join(f"array {s.tag} is job {s.array_job_id} ({s.how})" for s in done) + "\n")
    if built.resubmit == "failed":
        return resubmit_failed(record, out, err), {}
    queued = [s for s in record.submissions if s.array_job_id]
    out.write(f"zerorun: {record.sweep_dir} holds this sweep ({len(record.members)} members, array(s) "
              f"{', '.join(s.array_job_id or '?' for s in queued) or 'none'}); nothing else submitted.\n"
              f"  see it:  zerorun status {record.sweep_dir}\n"
              f"  rerun the failed members: zerorun resubmit {record.sweep_dir} --failed\n"
              f"    (or this command with sweep.resubmit=failed)\n"
              f"  a new sweep of the same grid: add sweep.id=SOME_NAME\n")
    return 0, {m.num: j for m in record.members if (j := record.job_of(m))}


def resubmit_failed(record: SweepRecord, out: TextIO, err: TextIO) -> int:
    """Submit again (or, cluster=local, run again) the members that failed, timed out for good or were
    cancelled; each resumes from its own latest checkpoint. Call with the sweep's lock held."""
    refresh(record)
    sweep_record.save(record)
    chosen = [m for m in record.members if m.state in sweep_record.RESUBMITTABLE]
    if not chosen:
        out.write(f"zerorun: no member of {record.sweep_dir} failed, timed out or was cancelled; nothing "
                  "resubmitted (zerorun status shows them)\n")
        return 0
    if get_backend(record.backend).runs_in_foreground:
        return run_local(record, [m.num for m in chosen], out, err)
    from jobs.runs import load_config

    t0 = time.perf_counter()
    nums = [m.num for m in chosen]
    planned = plan_arrays(
        [load_config(chosen[0].run_dir)], nums, {m.num: m.run_dir for m in chosen}, sweep_id=record.sweep_id,
        sweep_dir=record.sweep_dir, name=record.name, submission=len(record.submissions),
        parallelism=record.parallelism, workdir=record.workdir, python=record.python)
    if planned.problems or planned.splan is None:
        return report_problems(planned.problems, err)
    write_files(record.sweep_dir, planned.files)
    out.write(f"zerorun: resubmitting {len(nums)} member(s): {', '.join(map(str, nums))}\n")
    return _queue(record, planned, out, err, t0)[0]
