"""Talking to Slurm: one small function per command (sbatch, sbatch --test-only, scancel, squeue, sacct,
scontrol), pure parsers for their answers, and one table of Slurm's job states.

Submission's one side effect is `sbatch()`. Queries ask squeue first (live jobs), then sacct (history, when
accounting runs), then scontrol (jobs finished in the last few minutes), and merge into one JobState per job.
Array tasks (a sweep's members) are asked the same way and keyed "ARRAYJOB_TASK" (`query_tasks`); a sweep finds
its own arrays again by job name after a crash (`find_named`), and reads the cluster's size limits once
(`limits`: MaxArraySize, MaxJobCount from `scontrol show config`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional

from cluster import render

TIMEOUT_S = 30.0

# Slurm's state (long names from sacct/squeue/scontrol, short codes from squeue %t) -> (zerorun's state, finished)
SLURM_STATES: Mapping[str, tuple[str, bool]] = {
    **{s: ("PENDING", False) for s in ("PENDING", "PD", "CONFIGURING", "CF", "REQUEUE_HOLD", "RH", "REQUEUE_FED",
                                       "RF", "RESV_DEL_HOLD", "RD", "POWER_UP_NODE", "PU")},
    **{s: ("RUNNING", False) for s in ("RUNNING", "R", "RESIZING", "RS", "SIGNALING", "SI", "STAGE_OUT", "SO")},
    **{s: ("COMPLETING", False) for s in ("COMPLETING", "CG")},
    **{s: ("REQUEUED", False) for s in ("REQUEUED", "RQ")},
    **{s: ("SUSPENDED", False) for s in ("SUSPENDED", "S", "STOPPED", "ST")},
    **{s: ("COMPLETED", True) for s in ("COMPLETED", "CD")},
    **{s: ("FAILED", True) for s in ("FAILED", "F")},
    **{s: ("CANCELLED", True) for s in ("CANCELLED", "CA")},
    **{s: ("TIMEOUT", True) for s in ("TIMEOUT", "TO")},
    **{s: ("PREEMPTED", True) for s in ("PREEMPTED", "PR")},
    **{s: ("NODE_FAIL", True) for s in ("NODE_FAIL", "NF")},
    **{s: ("OUT_OF_MEMORY", True) for s in ("OUT_OF_MEMORY", "OOM")},
    **{s: ("BOOT_FAIL", True) for s in ("BOOT_FAIL", "BF")},
    **{s: ("DEADLINE", True) for s in ("DEADLINE", "DL")},
    **{s: ("REVOKED", True) for s in ("REVOKED", "RV")},
    **{s: ("SPECIAL_EXIT", True) for s in ("SPECIAL_EXIT", "SE")},
}


class SlurmError(RuntimeError):
    """A Slurm command failed; the message quotes Slurm and says what to do."""


class SlurmTimeout(SlurmError):
    """A Slurm command did not answer in time: what it was asked to do may still have happened."""


def command_timeout_s() -> float:
    """How long a Slurm command may take: ZERORUN_SLURM_TIMEOUT_S (a busy controller), else TIMEOUT_S."""
    import os

    try:
        return float(os.environ.get("ZERORUN_SLURM_TIMEOUT_S") or TIMEOUT_S)
    except ValueError:
        return TIMEOUT_S


@dataclass(frozen=True)
class JobState:
    job_id: str
    # zerorun's name for the state (a value of SLURM_STATES), or UNKNOWN
    state: str
    # the state as Slurm wrote it ("CANCELLED by 1000")
    slurm_state: str
    finished: bool
    exit_code: str = ""
    reason: str = ""
    elapsed: str = ""
    nodelist: str = ""
    # which command answered: squeue, sacct or scontrol
    source: str = ""


@dataclass(frozen=True)
class TaskFailure:
    rank: int
    host: str
    # "exit code 1", "signal 9", "killed": srun's words
    how: str


def normalize_state(text: str) -> tuple[str, bool]:
    """Slurm's state text -> (zerorun state, finished): "CANCELLED by 0" -> CANCELLED, "COMPLETING+" -> ..."""
    word = text.strip().split(" ")[0].rstrip("+*").upper()
    return SLURM_STATES.get(word, ("UNKNOWN", False))


def _job(job_id: str, slurm_state: str, source: str, **more: str) -> JobState:
    state, finished = normalize_state(slurm_state)
    return JobState(job_id, state, slurm_state.strip(), finished, source=source, **more)


SQUEUE_FORMAT = "%i|%T|%r|%M|%N"
SACCT_FIELDS = "JobIDRaw,State,ExitCode,Elapsed,NodeList"


def parse_squeue(text: str) -> dict[str, JobState]:
    jobs = {}
    for line in text.splitlines():
        f = line.strip().split("|")
        if len(f) == 5:
            jobs[f[0]] = _job(f[0], f[1], "squeue", reason=f[2] if f[2] != "None" else "", elapsed=f[3],
                              nodelist=f[4])
    return jobs


def parse_sacct(text: str) -> dict[str, JobState]:
    """`sacct -n -P -X -o JobIDRaw,State,ExitCode,Elapsed,NodeList`; the last line of a job wins (its latest run)."""
    jobs = {}
    for line in text.splitlines():
        f = line.strip().split("|")
        if len(f) == 5 and f[0].isdigit():
            jobs[f[0]] = _job(f[0], f[1], "sacct", exit_code=f[2], elapsed=f[3], nodelist=f[4])
    return jobs


_SCONTROL_FIELD = {k: re.compile(rf"(?:^|\s){k}=(\S*)") for k in
                   ("JobId", "JobState", "Reason", "ExitCode", "RunTime", "NodeList")}


def parse_scontrol(text: str) -> dict[str, JobState]:
    """`scontrol show job -o ID...`: one line per job; the fields read come before any path in the line."""
    jobs = {}
    for line in text.splitlines():
        got = {k: (m.group(1) if (m := rx.search(line)) else "") for k, rx in _SCONTROL_FIELD.items()}
        if got["JobId"].isdigit() and got["JobState"]:
            jobs[got["JobId"]] = _job(got["JobId"], got["JobState"], "scontrol",
                                      reason="" if got["Reason"] == "None" else got["Reason"],
                                      exit_code=got["ExitCode"], elapsed=got["RunTime"],
                                      nodelist="" if got["NodeList"] == "(null)" else got["NodeList"])
    return jobs


_SRUN_TASK = re.compile(r"srun: error: (\S+): tasks? ([0-9,\-]+): (.+?)\s*$", re.MULTILINE)


# srun starts ending the other tasks of a step once one failed (--kill-on-bad-exit)
_SRUN_ENDING = re.compile(r"srun: .*(Terminating StepId|Force Terminated|forcing job termination)")


def _task_ids(text: str) -> list[int]:
    ids: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        ids += list(range(int(lo), int(hi or lo) + 1))
    return ids


def failed_tasks(batch_log: str) -> list[TaskFailure]:
    """The ranks srun reported as failed, the one that failed first first. Reads lines such as
    `srun: error: n2: task 1: Exited with exit code 1` and `srun: error: n2: task 1: Killed`.

    A rank killed by a signal before srun began ending the step (`_step_signal: Terminating StepId=...`) is a
    cause (kill -9, the OOM killer): it comes first. After that line, the ranks that exited with an error (a
    peer's loss seen in a collective) come before the ones srun killed because of --kill-on-bad-exit."""
    before_end: list[TaskFailure] = []
    first: list[TaskFailure] = []
    killed: list[TaskFailure] = []
    ending = False
    for line in batch_log.splitlines():
        if _SRUN_ENDING.search(line):
            ending = True
            continue
        m = _SRUN_TASK.search(line)
        if not m:
            continue
        host, tasks, how = m.groups()
        for rank in _task_ids(tasks):
            if "exited with exit code" in how.lower():
                first.append(TaskFailure(rank, host, "exit code " + how.rsplit(" ", 1)[-1]))
            elif not ending:
                before_end.append(TaskFailure(rank, host, how))
            else:
                killed.append(TaskFailure(rank, host, how))
    return before_end + first + killed


def run_command(argv: list[str], *, cwd: Optional[str] = None,
                timeout: Optional[float] = None) -> subprocess.CompletedProcess:
    """Every Slurm command this project runs goes through here: one place for PATH and time-out errors."""
    if shutil.which(argv[0]) is None:
        raise SlurmError(f"{argv[0]} is not on PATH: run zerorun where the Slurm client commands are installed "
                         "(a login node), or use cluster=local")
    timeout = command_timeout_s() if timeout is None else timeout
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlurmTimeout(f"{argv[0]} did not answer within {timeout:.0f} s: is slurmctld up? (scontrol ping)") from None


def sbatch(run_dir: str, script: str = render.SCRIPT_NAME, after: Optional[str] = None) -> str:
    """Submit the run folder's script: the one side effect of submission. Returns the job id (an array's: the
    array job id). `after`: a job (a sweep's earlier array) this one starts after, however that one ended."""
    argv = render.sbatch_argv(script=script)
    if after is not None:
        if not after.isdigit():
            raise SlurmError(f"a job to wait for must be a job id, not {after!r}")
        argv[-1:-1] = [f"--dependency=afterany:{after}"]
    out = run_command(argv, cwd=run_dir)
    if out.returncode != 0:
        raise SlurmError(f"sbatch refused the job: {out.stderr.strip() or out.stdout.strip()}")
    job_id = out.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch answered {out.stdout.strip()!r}, not a job id")
    return job_id


def sbatch_or_find(run_dir: str, job_name: str, script: str = render.SCRIPT_NAME,
                   retries_s: tuple[float, ...] = (0.0, 2.0, 5.0), after: Optional[str] = None) -> str:
    """sbatch, and when it does not answer in time, look for the job it may have queued before saying it did not:
    a job of this name whose working directory is this folder, submitted since just before (live ones from
    squeue, finished ones from sacct). Raises SlurmError when none is found (saying it may still appear)."""
    import os
    import time

    since = time.time()
    try:
        return sbatch(run_dir, script, after)
    except SlurmTimeout as e:
        why: Optional[str] = None
        for pause in retries_s:
            time.sleep(pause)
            try:
                ids, why = find_named(job_name, since)
            except SlurmError as asked:
                why = str(asked)
                continue
            mine = [j for j in ids if work_dir(j) == os.path.realpath(run_dir)]
            if mine:
                return mine[-1]
        raise SlurmError(f"{e} No job named {job_name!r} from {run_dir} is known to squeue or sacct yet"
                         + (f" ({why})" if why else "") + ": it may still be queued. Check `squeue --me` (or "
                         f"`zerorun status {run_dir}` in a minute) before submitting again.") from None


def test_only(run_dir: str, script: str = render.SCRIPT_NAME) -> tuple[bool, str]:
    """`sbatch --test-only`: would Slurm take the script, and when and where would it start? Submits nothing."""
    out = run_command(render.sbatch_argv(test_only=True, script=script), cwd=run_dir)
    return out.returncode == 0, (out.stderr.strip() or out.stdout.strip())


def has_live_tasks(array_job_id: str) -> bool:
    """Does Slurm still hold a pending or running task of this (array) job? True when squeue cannot tell: a
    dependency on a job Slurm knows is harmless, one it forgot is refused."""
    try:
        out = run_command(["squeue", "-h", "-j", array_job_id, "-o", "%i"])
    except SlurmError:
        return True
    if out.returncode != 0:
        return "Invalid job id" not in out.stderr
    return bool(out.stdout.strip())


def scancel(job_id: str) -> None:
    out = run_command(["scancel", job_id])
    if out.returncode != 0:
        raise SlurmError(f"scancel {job_id} failed: {out.stderr.strip()}")


def on_node(job_id: str, node: str, argv: list[str], timeout: float) -> tuple[int, str]:
    """Inside a running job: run `argv` once on one of its nodes, beside the ranks (srun --overlap shares their
    resources, so it starts even when they hold all of them). (exit status, its output)"""
    try:
        out = run_command(["srun", "--overlap", f"--jobid={job_id}", f"--nodelist={node}", "--nodes=1",
                           "--ntasks=1", "--mem=0", "--quiet", *argv], timeout=timeout)
    except SlurmTimeout as e:
        return 124, str(e)
    return out.returncode, out.stdout + out.stderr


def job_steps(job_id: str) -> list[str]:
    """The running steps of a job that run tasks (JOB.N: srun's), without its batch and extern steps."""
    out = run_command(["squeue", "--steps", f"--jobs={job_id}", "--noheader", "--format=%i"])
    steps = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return [s for s in steps if s.rpartition(".")[2].isdigit()]


def kill_steps(job_id: str) -> tuple[bool, str]:
    """Inside a running job: SIGKILL the tasks of each of its srun steps (the ranks), no SIGCONT or SIGTERM first
    (which a cancel sends, and which would let a stopped rank run on). The job and its batch script live on, so
    the script's last line still runs. (A signal to the whole job, `scancel --signal=KILL JOB`, cancels it.)"""
    steps = job_steps(job_id)
    if not steps:
        return False, f"job {job_id} has no running step to end"
    failed = []
    for step in steps:
        out = run_command(["scancel", "--signal=KILL", step])
        if out.returncode != 0:
            failed.append(f"{step}: {out.stderr.strip()}")
    if failed:
        return False, "scancel --signal=KILL failed for " + "; ".join(failed)
    return True, f"sent SIGKILL to the ranks (step {', '.join(steps)})"


def query(job_ids: Iterable[str]) -> dict[str, JobState]:
    """The state of each job: squeue for live ones, then sacct, then scontrol; UNKNOWN when none knows it."""
    ids = sorted({str(j) for j in job_ids if str(j).isdigit()}, key=int)
    found: dict[str, JobState] = {}
    if not ids:
        return found
    def ask(argv: list[str], parse) -> None:  # type: ignore[no-untyped-def]
        try:
            out = run_command(argv)
        except SlurmError:
            return
        # squeue and scontrol fail on a job id they have forgotten; what they printed still counts
        for job_id, st in parse(out.stdout).items():
            found.setdefault(job_id, st)

    ask(["squeue", "-h", "-j", ",".join(ids), "-o", SQUEUE_FORMAT], parse_squeue)
    missing = [j for j in ids if j not in found]
    if missing:
        ask(["sacct", "-n", "-P", "-X", "-j", ",".join(missing), "-o", SACCT_FIELDS], parse_sacct)
    for j in [j for j in ids if j not in found]:
        ask(["scontrol", "show", "job", "-o", j], parse_scontrol)
    for j in ids:
        found.setdefault(j, JobState(j, "UNKNOWN", "", False, reason="no Slurm command knows this job"))
    return found


def read_failures(run_dir: str | Path, job_id: str) -> list[TaskFailure]:
    """What srun reported about failed ranks, from the job's batch log in the run folder."""
    try:
        text = (Path(run_dir) / render.batch_log(job_id)).read_text(errors="replace")
    except OSError:
        return []
    return failed_tasks(text)


# ---- job arrays (sweeps) ----------------------------------------------------------------------------------------

# Slurm's defaults (slurm.conf(5)) when `scontrol show config` cannot be asked
DEFAULT_MAX_ARRAY_SIZE = 1001
DEFAULT_MAX_JOB_COUNT = 10000
_ARRAY_TASK = re.compile(r"^(\d+)_(\d+)$")


@dataclass(frozen=True)
class ClusterLimits:
    # an array's task ids run 0..max_array_size-1: at most this many members per array
    max_array_size: int = DEFAULT_MAX_ARRAY_SIZE
    # jobs slurmctld keeps at once; each array task becomes one when it starts
    max_job_count: int = DEFAULT_MAX_JOB_COUNT
    # where the numbers came from: "scontrol show config", a site's probe, or why Slurm's defaults are assumed
    source: str = "scontrol show config"
    # per-user caps on jobs queued and running at once (each array task counts): (limit, what sets it), e.g.
    # (500, "MaxSubmitPU of QOS normal"); known from a site probe
    submit_limits: tuple[tuple[int, str], ...] = ()
    # per-user caps on jobs running at once (MaxJobsPU): more members than this wait, they are not refused
    run_limits: tuple[tuple[int, str], ...] = ()
    # jobs in the queue now (one squeue at submit): the user's (array tasks counted one by one) and everyone's
    # (as slurmctld keeps them: a pending array is one record); None when not asked
    queued_mine: Optional[int] = None
    queued_all: Optional[int] = None


def parse_scontrol_config(text: str) -> ClusterLimits:
    """MaxArraySize and MaxJobCount from `scontrol show config` (lines such as `MaxArraySize = 1001`)."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("MaxArraySize", "MaxJobCount") and value.strip().isdigit():
            found[key.strip()] = int(value.strip())
    return ClusterLimits(found.get("MaxArraySize", DEFAULT_MAX_ARRAY_SIZE),
                         found.get("MaxJobCount", DEFAULT_MAX_JOB_COUNT))


def limits() -> ClusterLimits:
    """The cluster's array and job-count limits; Slurm's defaults (with the reason in `source`) when scontrol
    cannot be asked."""
    try:
        out = run_command(["scontrol", "show", "config"])
    except SlurmError as e:
        return ClusterLimits(source=f"Slurm's defaults ({e})")
    if out.returncode != 0:
        return ClusterLimits(source=f"Slurm's defaults (scontrol show config failed: {out.stderr.strip()})")
    return parse_scontrol_config(out.stdout)


QUEUE_FORMAT = "%u|%i"


def parse_queue(text: str, user: str) -> tuple[int, int]:
    """(the user's jobs, every job record) from `squeue -h -o %u|%i`: a pending array ("12_[3-9%2]") is one record
    of slurmctld's but counts task by task against the user's submit limits."""
    mine = every = 0
    for line in text.splitlines():
        owner, _, job = line.strip().partition("|")
        if not job:
            continue
        every += 1
        if owner == user:
            m = _ARRAY_RANGE.match(job)
            mine += len(_task_ids(m.group(2))) if m else 1
    return mine, every


def queued(user: Optional[str] = None) -> tuple[Optional[int], Optional[int], str]:
    """(the user's queued jobs, every job record, why not when None): one squeue over the whole queue."""
    import getpass

    user = user or getpass.getuser()
    try:
        out = run_command(["squeue", "-h", "-o", QUEUE_FORMAT])
    except SlurmError as e:
        return None, None, str(e)
    if out.returncode != 0:
        return None, None, f"squeue failed: {out.stderr.strip()}"
    mine, every = parse_queue(out.stdout, user)
    return mine, every, ""


_ARRAY_RANGE = re.compile(r"^(\d+)_\[([0-9,\-]+)(?:%\d+)?\]$")


def parse_sacct_tasks(text: str) -> dict[str, JobState]:
    """`sacct -n -P -X -o JobID,State,ExitCode,Elapsed,NodeList` for arrays: one line per task that has started
    ("263_2"), and one line for the tasks that never did ("263_[3-5%2]": pending, or cancelled while pending)."""
    jobs = {}
    for line in text.splitlines():
        f = line.strip().split("|")
        if len(f) != 5:
            continue
        if _ARRAY_TASK.match(f[0]):
            jobs[f[0]] = _job(f[0], f[1], "sacct", exit_code=f[2], elapsed=f[3], nodelist=f[4])
        elif m := _ARRAY_RANGE.match(f[0]):
            for task in _task_ids(m.group(2)):
                key = f"{m.group(1)}_{task}"
                jobs.setdefault(key, _job(key, f[1], "sacct", exit_code=f[2], elapsed=f[3], nodelist=f[4]))
    return jobs


_SCONTROL_TASK = {k: re.compile(rf"(?:^|\s){k}=(\S*)") for k in
                  ("ArrayJobId", "ArrayTaskId", "JobState", "Reason", "ExitCode", "RunTime", "NodeList")}


def parse_scontrol_tasks(text: str) -> dict[str, JobState]:
    """`scontrol show job -o ARRAY_TASK...`: one line per task, keyed "ARRAYJOB_TASK"."""
    jobs = {}
    for line in text.splitlines():
        got = {k: (m.group(1) if (m := rx.search(line)) else "") for k, rx in _SCONTROL_TASK.items()}
        if got["ArrayJobId"].isdigit() and got["ArrayTaskId"].isdigit() and got["JobState"]:
            key = f"{got['ArrayJobId']}_{got['ArrayTaskId']}"
            jobs[key] = _job(key, got["JobState"], "scontrol", reason="" if got["Reason"] == "None" else got["Reason"],
                             exit_code=got["ExitCode"], elapsed=got["RunTime"],
                             nodelist="" if got["NodeList"] == "(null)" else got["NodeList"])
    return jobs


def query_tasks(tasks: Iterable[str]) -> dict[str, JobState]:
    """The state of each array task ("ARRAYJOB_TASK"): squeue (one line per task with -r) for live ones, sacct
    for finished ones, scontrol for any left; UNKNOWN when none knows it."""
    wanted = sorted({t for t in tasks if _ARRAY_TASK.match(t)}, key=lambda t: tuple(map(int, t.split("_"))))
    found: dict[str, JobState] = {}
    if not wanted:
        return found
    arrays = sorted({t.split("_")[0] for t in wanted}, key=int)

    def ask(argv: list[str], parse) -> None:  # type: ignore[no-untyped-def]
        try:
            out = run_command(argv)
        except SlurmError:
            return
        for key, st in parse(out.stdout).items():
            found.setdefault(key, st)

    ask(["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", SQUEUE_FORMAT], parse_squeue)
    missing = sorted({t.split("_")[0] for t in wanted if t not in found}, key=int)
    if missing:
        ask(["sacct", "-n", "-P", "-X", "-j", ",".join(missing), "-o", "JobID,State,ExitCode,Elapsed,NodeList"],
            parse_sacct_tasks)
    for t in [t for t in wanted if t not in found]:
        ask(["scontrol", "show", "job", "-o", t], parse_scontrol_tasks)
    for t in wanted:
        found.setdefault(t, JobState(t, "UNKNOWN", "", False, reason="no Slurm command knows this array task"))
    return {t: found[t] for t in wanted}


def find_named(job_name: str, since: float) -> tuple[list[str], Optional[str]]:
    """The (array) job ids of this user's jobs named `job_name`: live ones (squeue) and ones submitted since
    `since` (epoch seconds; sacct, else scontrol's memory of recent jobs). How a sweep finds a submission whose
    sbatch answer it never recorded. Returns (ids, why the history could not be searched, or None)."""
    import time

    out = run_command(["squeue", "-h", "--name", job_name, "-o", "%F"])
    if out.returncode != 0:
        raise SlurmError(f"squeue --name {job_name} failed ({out.stderr.strip()}): cannot tell whether that job "
                         "was queued; try again when slurmctld answers (scontrol ping)")
    ids = {x for x in out.stdout.split() if x.isdigit()}
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 60))
    out = run_command(["sacct", "-n", "-P", "-X", "--name", job_name, "-S", start, "-o", "JobID"])
    if out.returncode == 0:
        ids.update(h for h in (line.split("_")[0] for line in out.stdout.split()) if h.isdigit())
        return sorted(ids, key=int), None
    why = f"sacct failed ({out.stderr.strip() or out.returncode})"
    shown = run_command(["scontrol", "show", "job", "-o"])
    for line in shown.stdout.splitlines() if shown.returncode == 0 else []:
        if f" JobName={job_name} " in f" {line} ":
            m = re.search(r"(?:^|\s)ArrayJobId=(\d+)", line) or re.search(r"(?:^|\s)JobId=(\d+)", line)
            if m:
                ids.add(m.group(1))
    return sorted(ids, key=int), why


# kept for callers that used the private name
_run = run_command


def work_dir(job_id: str) -> Optional[str]:
    """The job's working directory as Slurm recorded it (zerorun submits from the run folder, so this is the run
    folder, wherever cluster.runs_dir put it): squeue for a live job, sacct for a finished one."""
    if not str(job_id).isdigit():
        return None
    for argv in (["squeue", "-h", "-j", job_id, "-o", "%Z"], ["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "WorkDir"]):
        try:
            out = run_command(argv)
        except SlurmError:
            continue
        lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        if out.returncode == 0 and lines and lines[-1].startswith("/"):
            return lines[-1]
    return None
