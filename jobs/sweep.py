"""Running a sweep: write the members' run folders and the record, then submit job arrays (cluster=slurm), run
the members here (cluster=local), or write and print it all (dry_run=true). cluster/launcher.py builds the
members; this module runs them, resubmits the failed ones, and reads back how they are doing.

Layout of a sweep folder (runs_dir/NAME/sweep-ID):

    sweep.json              the record (jobs/sweep_record.py)
    members.txt             member, array/task, overrides: one line each
    0/ 1/ ...               one run folder per member: config.yaml, checkpoints/, csv/, metrics.json, ...
    arrays/s00-a000.sbatch  the batch script of array 0 of submission 0 (a resubmission is s01, ...)
    arrays/s00-a000.index.json   array task i -> member run folder
    logs/ARRAYJOB_TASK_RANK.out  each array task's rank logs (and ..._batch.out, the batch script's)
    snapshot/               the first submission's config, script, git state and package versions

An array task's ranks run `python -m jobs.rank --array INDEX_FILE`; `member_run_dir` is how they find their
member: one JSON read, indexed by SLURM_ARRAY_TASK_ID.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, TextIO

from jobs import sweep_record
from jobs.sweep_record import SweepRecord

MEMBERS_TABLE = "members.txt"
DRY_RUN_DIR = "dry-run"
LOCAL_LOG = "logs/local.out"
RESUBMIT_CHOICES = ("none", "failed")
MODES = ("min", "max")
# print at most this many members in the dry run's table (members.txt has all)
PRINT_HEAD, PRINT_TAIL = 16, 4
LOCAL_POLL_S = 0.5


class SweepIndexError(RuntimeError):
    """An array task cannot find its member; the message says why."""


def member_run_dir(index_file: str, environ: Mapping[str, str]) -> str:
    """The run folder of the member this array task runs: entry SLURM_ARRAY_TASK_ID of the index file."""
    task = environ.get("SLURM_ARRAY_TASK_ID", "")
    if not task.isdigit():
        raise SweepIndexError(f"SLURM_ARRAY_TASK_ID={task!r}: `jobs.rank --array INDEX` runs only as a task of a "
                              "zerorun sweep's job array")
    try:
        run_dirs = json.loads(Path(index_file).read_text())["run_dirs"]
    except (OSError, ValueError, KeyError) as e:
        raise SweepIndexError(f"cannot read the sweep index {index_file}: {e}") from None
    if int(task) >= len(run_dirs):
        raise SweepIndexError(f"array task {task} but the index {index_file} lists {len(run_dirs)} members")
    return run_dirs[int(task)]


def run(built: Any, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> tuple[int, dict[int, str]]:
    """Dry-run, submit or run a built sweep (cluster.launcher.BuiltSweep). Returns (exit status, member number ->
    its array task)."""
    settings = [f"sweep.{key}={value!r}; choose one of: {', '.join(valid)}"
                for key, value, valid in (("resubmit", built.resubmit, RESUBMIT_CHOICES), ("mode", built.mode, MODES))
                if value not in valid]
    if settings:
        return _problems(settings, err, "not submitted"), {}
    if built.dry_run:
        return dry_run(built, out, err), {}
    if sweep_record.exists(built.sweep_dir):
        with sweep_record.locked(built.sweep_dir):
            return _again(built, out, err)
    # plan and check first: a sweep with problems writes nothing, not even its folder
    t0 = time.perf_counter()
    if built.backend == "local":
        problems, planned = _local_problems(built), None
    else:
        planned = _plan_new(built)
        problems = planned[2]
    if problems:
        return _problems(problems, err, "not run" if built.backend == "local" else "not submitted"), {}
    with sweep_record.locked(built.sweep_dir):
        if sweep_record.exists(built.sweep_dir):  # another submitter of the same sweep got here first
            return _again(built, out, err)
        if planned is None:
            record = _start(built, write_record=True)
            return run_local(record, [m.num for m in built.members], out, err), {}
        return _submit_new(built, planned, out, err, t0)


def _local_problems(built: Any) -> list[str]:
    from cluster import preflight, sweep_plan
    from cluster.launcher import ConfigView
    from cluster.plan import make_plan
    from cluster.slurm import ClusterLimits

    unlimited = ClusterLimits(sys.maxsize, sys.maxsize, "cluster=local")
    from jobs.dryrun import refuse_secrets

    problems = sweep_plan.sweep_problems(len(built.members), built.parallelism, unlimited)
    problems += refuse_secrets(_texts(built))
    for c in built.plan_configs:
        problems += [p for p in preflight.plan_problems(make_plan(ConfigView(c))) if p not in problems]
    return problems


# ---- planning the arrays --------------------------------------------------------------------------------------

def _plan(config_views: Sequence[Any], nums: Sequence[int], run_dirs: Mapping[int, str], *, sweep_id: str,
          sweep_dir: str, name: str, submission: int, parallelism: int, workdir: str, python: str,
          files_dir: Optional[str] = None, facts: Any = None, limits: Any = None,
          texts: Mapping[str, str] = {}) -> tuple[Any, dict[str, str], list[str], list[str]]:
    """(SweepPlan, files to write (path relative to the sweep folder -> text), problems, notes). The cluster is
    asked here (sinfo, scontrol show config) unless `facts` and `limits` are given. `texts` (a member's config,
    the overrides) are checked for secrets with the files."""
    from cluster import preflight, quoting, render, slurm, sweep_plan
    from jobs.dryrun import context, refuse_secrets
    from cluster.plan import SetupFileError, make_plan, read_setup_file

    problems: list[str] = []
    notes: list[str] = []
    limits = limits if limits is not None else slurm.limits()
    if not limits.source.startswith("scontrol"):
        notes.append(f"cluster limits not asked: {limits.source}")
    facts = facts if facts is not None else preflight.probe()
    plans = []
    for view in config_views:
        try:
            lines = read_setup_file(view.cluster.setup_file)
        except SetupFileError as e:
            return None, {}, [str(e)], notes
        plans.append(make_plan(view, python, setup_file_lines=lines, workdir=workdir))
    for p in plans:
        check = preflight.check(p, facts)
        problems += [x for x in check.problems if x not in problems]
        notes += [x for x in check.notes if x not in notes]
    problems += sweep_plan.sweep_problems(len(nums), parallelism, limits)
    if problems:
        return None, {}, problems, notes
    splan = sweep_plan.plan_sweep(plans[0], list(nums), sweep_id=sweep_id, sweep_dir=sweep_dir, name=name,
                                  submission=submission, nonce=secrets.token_hex(3), parallelism=parallelism,
                                  limits=limits)
    if files_dir is not None:  # a dry run's index files live beside its scripts
        import dataclasses

        splan = dataclasses.replace(splan, arrays=tuple(
            dataclasses.replace(a, plan=sweep_plan.array_plan(plans[0], sweep_dir, f"{files_dir}/{a.index_file}",
                                                              a.job_name)) for a in splan.arrays))
    ctx = context()
    files: dict[str, str] = {}
    try:
        for a in splan.arrays:
            files[a.script] = render.sbatch_script(a.plan, ctx, a.array, script=a.script)
            files[a.index_file] = sweep_plan.index_text(a, run_dirs)
    except quoting.QuotingError as e:
        problems.append(str(e))
    problems += refuse_secrets({**files, **texts})
    if problems:  # nothing of a sweep with problems is written, not even by a dry run
        return None, {}, problems, notes
    return splan, files, problems, notes


def _write(root: str, files: Mapping[str, str]) -> None:
    for rel, text in files.items():
        path = Path(root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def _prepare_dir(sweep_dir: str) -> Path:
    from cluster import render
    from jobs.runs import prepare

    path = prepare(sweep_dir)
    (path / render.LOG_DIR).mkdir(mode=0o700, exist_ok=True)
    return path


def _table(record_or_built: Any, splan: Any) -> str:
    from cluster.sweep_plan import member_table

    where = {n: f"s{splan.submission}a{a.index}/{i}" for a in splan.arrays for i, n in enumerate(a.members)}
    members = {m.num: m for m in record_or_built.members}
    return member_table([(n, t, " ".join(members[n].overrides)) for n, t in where.items()])


def _print_table(text: str, out: TextIO, full: Path) -> None:
    lines = text.splitlines()
    if len(lines) > 1 + PRINT_HEAD + PRINT_TAIL:
        hidden = len(lines) - 1 - PRINT_HEAD - PRINT_TAIL
        lines = [*lines[:1 + PRINT_HEAD], f"... ({hidden} more members; all in {full})", *lines[-PRINT_TAIL:]]
    out.write("\n".join(lines) + "\n")


def _problems(problems: list[str], err: TextIO, what: str = "not submitted") -> int:
    err.write(f"zerorun: {what}:\n" + "".join(f"  - {p}\n" for p in problems))
    return 2


# ---- dry run -----------------------------------------------------------------------------------------------

def dry_run(built: Any, out: TextIO, err: TextIO, *, facts: Any = None, limits: Any = None) -> int:
    """Write the array scripts, index files and member table into SWEEP_DIR/dry-run and print them; submit
    nothing (not even a record: the real submission starts from scratch)."""
    from cluster.launcher import ConfigView

    files_dir = f"{built.sweep_dir}/{DRY_RUN_DIR}"
    nums = [m.num for m in built.members]
    if built.backend == "local":
        from cluster.sweep_plan import member_table

        problems = _local_problems(built)
        if problems:
            return _problems(problems, err, "the sweep cannot run")
        table = member_table([(m.num, "local", " ".join(m.overrides)) for m in built.members])
        _write(files_dir, {MEMBERS_TABLE: table, "config-member-0.yaml": built.members[0].yaml})
        out.write(f"zerorun dry run: nothing runs. {len(nums)} members, sweep folder {built.sweep_dir}, files in "
                  f"{files_dir}\ncluster=local: the members would run here, {built.parallelism} at a time, each as "
                  "`python -m jobs.sweep MEMBER_RUN_DIR`\n\n----- members.txt -----\n")
        _print_table(table, out, Path(files_dir) / MEMBERS_TABLE)
        out.write("preflight: ok\n")
        return 0
    splan, files, problems, notes = _plan(
        [ConfigView(c) for c in built.plan_configs], nums, {m.num: m.run_dir for m in built.members},
        sweep_id=built.sweep_id, sweep_dir=built.sweep_dir, name=built.name, submission=0,
        parallelism=built.parallelism, workdir=os.getcwd(), python=sys.executable, files_dir=files_dir,
        facts=facts, limits=limits, texts=_texts(built))
    if splan is None:
        return _problems(problems, err, "the sweep cannot be submitted")
    table = _table(built, splan)
    files[MEMBERS_TABLE] = table
    files["config-member-0.yaml"] = built.members[0].yaml
    _write(files_dir, files)
    out.write(f"zerorun dry run: nothing is submitted. {len(nums)} members, sweep folder {built.sweep_dir}, "
              f"files in {files_dir}\n")
    a0 = splan.arrays[0]
    arrays = ", ".join(f"{a.script} (--array={a.array.flag})" for a in splan.arrays)
    out.write(f"\n{len(splan.arrays)} job array(s), one sbatch call each: {arrays}\n")
    out.write(f"\n----- {a0.script} -----\n{files[a0.script]}")
    out.write(f"\n----- {MEMBERS_TABLE} -----\n")
    _print_table(table, out, Path(files_dir) / MEMBERS_TABLE)
    for note in notes:
        out.write(f"preflight note: {note}\n")
    if not problems:
        from jobs.dryrun import ask_test_only

        problems += ask_test_only(files_dir, splan.arrays[0].script, facts, out, "array script")
    if problems:
        out.flush()
        return _problems(problems, err, "the sweep cannot be submitted")
    out.write("preflight: ok\n")
    return 0


# ---- a new sweep ----------------------------------------------------------------------------------------------

def _start(built: Any, *, write_record: bool) -> SweepRecord:
    """Write every member's run folder and config.yaml; the record (members PLANNED) when asked."""
    _prepare_dir(built.sweep_dir)
    for m in built.members:
        try:
            os.mkdir(m.run_dir, 0o700)
        except FileExistsError:
            pass
        with open(f"{m.run_dir}/config.yaml", "w") as f:
            f.write(m.yaml)
    record = SweepRecord(
        sweep_id=built.sweep_id, sweep_dir=built.sweep_dir, name=built.name, backend=built.backend,
        command=list(_command()), overrides=list(built.overrides), params=list(built.params),
        parallelism=built.parallelism, metric=built.metric, mode=built.mode, created_at=time.time(),
        members=[sweep_record.Member(num=m.num, run_dir=m.run_dir, overrides=list(m.overrides), params=m.params)
                 for m in built.members],
        workdir=os.getcwd(), python=sys.executable,
    )
    if write_record:
        sweep_record.save(record)
    return record


def _command() -> tuple[str, ...]:
    from jobs.dryrun import invocation

    return invocation()


def _plan_new(built: Any) -> tuple[Any, dict[str, str], list[str], list[str]]:
    from cluster.launcher import ConfigView

    return _plan([ConfigView(c) for c in built.plan_configs], [m.num for m in built.members],
                 {m.num: m.run_dir for m in built.members}, sweep_id=built.sweep_id, sweep_dir=built.sweep_dir,
                 name=built.name, submission=0, parallelism=built.parallelism, workdir=os.getcwd(),
                 python=sys.executable, texts=_texts(built))


def _texts(built: Any) -> dict[str, str]:
    """What else a submission writes that could carry a secret: a member's config and every swept value."""
    return {"config": built.members[0].yaml, "overrides": "\n".join(" ".join(m.overrides) for m in built.members)}


def _submit_new(built: Any, planned: tuple, out: TextIO, err: TextIO, t0: float) -> tuple[int, dict[int, str]]:
    splan, files, _, notes = planned
    for note in notes:
        err.write(f"zerorun: preflight note: {note}\n")
    record = _start(built, write_record=False)
    files[MEMBERS_TABLE] = _table(built, splan)
    _write(built.sweep_dir, files)
    _snapshot(built.sweep_dir, built.members[0].yaml, files[splan.arrays[0].script], record)
    return _queue(record, splan, out, err, t0)


def _snapshot(sweep_dir: str, config_yaml: str, script: str, record: SweepRecord) -> None:
    from jobs import snapshot

    snapshot.write_snapshot(sweep_dir, config_yaml, script, record.workdir, record.python)


def _queue(record: SweepRecord, splan: Any, out: TextIO, err: TextIO, t0: float) -> tuple[int, dict[int, str]]:
    """Record the arrays as "submitting", save, then sbatch each (sweep_record.submit_pending)."""
    from cluster import slurm

    sweep_record.add_submission(record, [(a.tag, a.job_name, a.script, a.index_file, list(a.members))
                                         for a in splan.arrays])
    sweep_record.save(record)
    try:
        queued = sweep_record.submit_pending(record, err)
    except slurm.SlurmError as e:
        err.write(f"zerorun: not submitted: {e}\n(the record in {record.sweep_dir} keeps what was planned; run the "
                  "same command again once the cause is fixed)\n")
        return 1, {}
    elapsed = time.perf_counter() - t0
    geometry = splan.arrays[0].plan
    ids = ", ".join(f"{s.array_job_id} (--array={a.array.flag})" for s, a in zip(queued, splan.arrays))
    out.write(
        f"zerorun: {splan.members} sweep members queued in {elapsed:.2f} s as job array(s) {ids}: each "
        f"nodes({geometry.nodes}) x tasks_per_node({geometry.tasks_per_node}) = {geometry.world_size} ranks\n"
        f"  sweep folder: {record.sweep_dir}\n"
        f"  follow it:    zerorun status {record.sweep_dir} | zerorun report {record.sweep_dir} | "
        f"zerorun cancel {record.sweep_dir}\n")
    return 0, {m.num: j for m in record.members if (j := record.job_of(m))}


# ---- the same sweep again ---------------------------------------------------------------------------------

def _again(built: Any, out: TextIO, err: TextIO) -> tuple[int, dict[int, str]]:
    """A sweep folder that holds a record: finish a submission a crash interrupted, resubmit the failed members
    when sweep.resubmit=failed, and otherwise submit nothing."""
    from cluster import slurm

    record = sweep_record.load(built.sweep_dir)
    mine = [list(m.overrides) for m in built.members]
    if len(record.members) != len(mine) or any(m.overrides != o for m, o in zip(record.members, mine)):
        return _problems([f"{built.sweep_dir} already holds a sweep with other members ({len(record.members)}, "
                          f"of {', '.join(record.params) or 'no keys'}); set sweep.id to another name to start a "
                          "new sweep"], err), {}
    if record.pending():
        try:
            done = sweep_record.submit_pending(record, err)
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
    if record.backend == "local":
        return run_local(record, [m.num for m in chosen], out, err)
    from jobs.runs import load_config

    t0 = time.perf_counter()
    nums = [m.num for m in chosen]
    cfg = load_config(chosen[0].run_dir)
    splan, files, problems, notes = _plan(
        [cfg], nums, {m.num: m.run_dir for m in chosen}, sweep_id=record.sweep_id, sweep_dir=record.sweep_dir,
        name=record.name, submission=len(record.submissions), parallelism=record.parallelism,
        workdir=record.workdir, python=record.python)
    if problems or splan is None:
        return _problems(problems, err)
    _write(record.sweep_dir, files)
    out.write(f"zerorun: resubmitting {len(nums)} member(s): {', '.join(map(str, nums))}\n")
    return _queue(record, splan, out, err, t0)[0]


# ---- cluster=local ----------------------------------------------------------------------------------------

def run_member(run_dir: str) -> int:
    """One member of a cluster=local sweep, in this process: its saved config, on the local backend (which
    resumes from the member's latest checkpoint when it has one). `python -m jobs.sweep RUN_DIR`."""
    from cluster import local
    from cluster.plan import make_plan, read_setup_file
    from jobs.runs import load_config

    cfg = load_config(run_dir)
    plan = make_plan(cfg, setup_file_lines=read_setup_file(cfg.cluster.setup_file))
    return local.run(plan).returncode


def run_local(record: SweepRecord, nums: Sequence[int], out: TextIO, err: TextIO) -> int:
    """Run members here, `parallelism` at a time, each in its own process (`python -m jobs.sweep RUN_DIR`: the
    local backend supervises its ranks and owns its signals). Output goes to each member's logs/local.out."""
    by_num = {m.num: m for m in record.members}
    waiting = list(nums)
    running: dict[int, tuple[subprocess.Popen, Any]] = {}
    failed = 0
    out.write(f"zerorun: running {len(nums)} sweep member(s) here, {record.parallelism} at a time; sweep folder "
              f"{record.sweep_dir}\n")
    try:
        while waiting or running:
            while waiting and len(running) < max(1, record.parallelism):
                m = by_num[waiting.pop(0)]
                log = Path(m.run_dir) / LOCAL_LOG
                log.parent.mkdir(parents=True, exist_ok=True)
                f = open(log, "ab")
                proc = subprocess.Popen([record.python or sys.executable, "-m", "jobs.sweep", m.run_dir], stdout=f,
                                        stderr=subprocess.STDOUT, cwd=record.workdir or None)
                running[m.num] = (proc, f)
                m.state, m.detail = "RUNNING", f"pid {proc.pid}"
                sweep_record.save(record)
            time.sleep(LOCAL_POLL_S)
            for num, (proc, f) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                f.close()
                del running[num]
                m = by_num[num]
                m.state = "COMPLETED" if code == 0 else ("CANCELLED" if code in (130, -2) else "FAILED")
                m.detail = "" if code == 0 else f"exit {code}; log {Path(m.run_dir) / LOCAL_LOG}"
                failed += code != 0
                _read_member(m)
                sweep_record.save(record)
                out.write(f"zerorun: member {num} ({' '.join(m.overrides)}): {m.state}\n")
    except KeyboardInterrupt:
        for proc, f in running.values():
            proc.wait()
            f.close()
        for num in running:
            by_num[num].state = "CANCELLED"
        sweep_record.save(record)
        return 130
    out.write(f"zerorun: {len(nums) - failed} of {len(nums)} member(s) completed; zerorun status {record.sweep_dir}\n")
    return 1 if failed else 0


# ---- how the members are doing ------------------------------------------------------------------------------

def _read_member(m: sweep_record.Member) -> None:
    """What the member's run folder says: final metrics, latest checkpoint, attempts, step."""
    from trainer_core import attempts

    run_dir = Path(m.run_dir)
    try:
        m.metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        m.metrics = None
    step = None
    try:
        # trainer_core/checkpointing.py: checkpoints/latest names the newest complete step-NNNNNNNN folder
        latest = (run_dir / "checkpoints" / "latest").read_text().strip()
        m.checkpoint = str(run_dir / "checkpoints" / latest)
        step = int(latest.rsplit("-", 1)[-1])
    except (OSError, ValueError):
        m.checkpoint = None
    events = attempts.read(run_dir)
    m.attempts = sum(e.get("event") == "start" for e in events)
    steps = [e["step"] for e in events if isinstance(e.get("step"), int)]
    if steps:
        step = max(step or 0, max(steps))
    if m.metrics and "global_step" in m.metrics:
        step = int(m.metrics["global_step"])
    m.step = step


def _failure(sweep_dir: Path, job: str, st: Any) -> str:
    """What an array task died of: the rank srun saw fail first (its batch log), and that rank's exception."""
    from cluster import render, slurm
    from jobs.verbs import last_error

    array_job, _, task = job.partition("_")
    batch = sweep_dir / render.array_batch_log(array_job, int(task))
    failures = slurm.failed_tasks(batch.read_text(errors="replace")) if batch.exists() else []
    rank = failures[0].rank if failures else 0
    log = sweep_dir / render.array_rank_log(array_job, int(task), rank)
    # DDP prefixes every line of a rank's output with "[rankN]: "
    text = re.sub(r"(?m)^\[rank\d+\]:\s?", "", log.read_text(errors="replace")) if log.exists() else ""
    error = last_error(text)
    if error:
        return f"rank {rank}: {error}"
    return f"exit {st.exit_code}" if st.exit_code not in ("", "0:0") else ""


def refresh(record: SweepRecord) -> None:
    """Update every member's state (Slurm: squeue, sacct, scontrol) and what its run folder says."""
    if record.backend == "slurm":
        from cluster import slurm

        jobs = {m.num: record.job_of(m) for m in record.members}
        states = slurm.query_tasks([j for j in jobs.values() if j])
        for m in record.members:
            st = states.get(jobs[m.num] or "")
            if st is None:
                continue
            if st.state == "UNKNOWN" and m.state in sweep_record.RESUBMITTABLE | {"COMPLETED"}:
                continue  # Slurm forgot a finished task; the record remembers
            m.state, m.detail = st.state, ""
            if st.state in ("PENDING", "REQUEUED"):
                m.detail = st.reason
            elif st.finished and st.state != "COMPLETED":
                m.detail = _failure(Path(record.sweep_dir), jobs[m.num] or "", st)
    for m in record.members:
        _read_member(m)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m jobs.sweep MEMBER_RUN_DIR (one member of a cluster=local sweep)", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_member(sys.argv[1]))
