"""Talking to Slurm: one small function per command (sbatch, sbatch --test-only, scancel, squeue, sacct,
scontrol), pure parsers for their answers, and one table of Slurm's job states.

Submission's one side effect is `sbatch()`. Queries ask squeue first (live jobs), then sacct (history, when
accounting runs), then scontrol (jobs finished in the last few minutes), and merge into one JobState per job.
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


def _task_ids(text: str) -> list[int]:
    ids: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        ids += list(range(int(lo), int(hi or lo) + 1))
    return ids


def failed_tasks(batch_log: str) -> list[TaskFailure]:
    """The ranks srun reported as failed, in the order it reported them; the ones it killed afterwards because
    of --kill-on-bad-exit come last. Reads lines such as `srun: error: n2: task 1: Exited with exit code 1`."""
    first: list[TaskFailure] = []
    killed: list[TaskFailure] = []
    for host, tasks, how in _SRUN_TASK.findall(batch_log):
        lower = how.lower()
        for rank in _task_ids(tasks):
            if "exited with exit code" in lower:
                first.append(TaskFailure(rank, host, "exit code " + how.rsplit(" ", 1)[-1]))
            else:
                killed.append(TaskFailure(rank, host, how))
    return first + killed


def _run(argv: list[str], *, cwd: Optional[str] = None, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    if shutil.which(argv[0]) is None:
        raise SlurmError(f"{argv[0]} is not on PATH: run zerorun where the Slurm client commands are installed "
                         "(a login node), or use cluster=local")
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{argv[0]} did not answer within {timeout:.0f} s: is slurmctld up? (scontrol ping)") from None


def sbatch(run_dir: str) -> str:
    """Submit the run folder's script: the one side effect of submission. Returns the job id."""
    out = _run(render.sbatch_argv(), cwd=run_dir)
    if out.returncode != 0:
        raise SlurmError(f"sbatch refused the job: {out.stderr.strip() or out.stdout.strip()}")
    job_id = out.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch answered {out.stdout.strip()!r}, not a job id")
    return job_id


def test_only(run_dir: str) -> tuple[bool, str]:
    """`sbatch --test-only`: would Slurm take the script, and when and where would it start? Submits nothing."""
    out = _run(render.sbatch_argv(test_only=True), cwd=run_dir)
    return out.returncode == 0, (out.stderr.strip() or out.stdout.strip())


def scancel(job_id: str) -> None:
    out = _run(["scancel", job_id])
    if out.returncode != 0:
        raise SlurmError(f"scancel {job_id} failed: {out.stderr.strip()}")


def query(job_ids: Iterable[str]) -> dict[str, JobState]:
    """The state of each job: squeue for live ones, then sacct, then scontrol; UNKNOWN when none knows it."""
    ids = sorted({str(j) for j in job_ids if str(j).isdigit()}, key=int)
    found: dict[str, JobState] = {}
    if not ids:
        return found
    def ask(argv: list[str], parse) -> None:  # type: ignore[no-untyped-def]
        try:
            out = _run(argv)
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
