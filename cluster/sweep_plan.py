"""Planning a sweep: its members in, frozen job arrays out. Pure: no cluster probe, no file, no clock.

A sweep of N members is submitted as job arrays of the same batch script: every array task is one whole job of
the sweep's geometry (nodes x tasks_per_node ranks), and array task i runs member `members[i]` of its array.
An array holds at most MaxArraySize members (its task ids run 0..MaxArraySize-1), so a larger sweep is split
into several arrays, each submitted with one sbatch call; `lanes` shares sweep.parallelism between them, so the
whole sweep, not each array, runs at most that many members at once. Each array's script names an index file;
the rank entry reads its member's run folder from that file by SLURM_ARRAY_TASK_ID (jobs/rank.py), so the script
itself never lists members. The index file's writer (`index_text`) and reader (`member_run_dir`) are both here.

Cluster facts (MaxArraySize, MaxJobCount) are asked outside planning (cluster.slurm.limits) and handed in.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from cluster import quoting
from cluster.plan import JobPlan
from cluster.render import ArraySpec
from cluster.slurm import ClusterLimits

ARRAYS_DIR = "arrays"
# file names of array k of submission s, inside the sweep folder
SCRIPT_PATTERN = ARRAYS_DIR + "/s{submission:02d}-a{index:03d}.sbatch"
INDEX_PATTERN = ARRAYS_DIR + "/s{submission:02d}-a{index:03d}.index.json"
# the flag the rank entry takes before the index file: `python -m jobs.rank --array INDEX_FILE`
ARRAY_FLAG = "--array"


@dataclass(frozen=True)
class ArrayChunk:
    """One job array, one sbatch call."""

    index: int
    # array task i runs member members[i]
    members: tuple[int, ...]
    # unique to this sbatch call and part of its job name: after a crash the sweep finds the array by it
    tag: str
    job_name: str
    # where its script and index file live, relative to the sweep folder
    script: str
    index_file: str
    # its throttle (array.parallelism) is this array's share of the sweep's parallelism (`lanes`)
    array: ArraySpec
    # the array (its index in this submission) it waits for: sbatch --dependency=afterany on that array's job
    after: Optional[int]
    # the job every task runs: the sweep's geometry, run_dir = the sweep folder, entry = rank --array INDEX
    plan: JobPlan


@dataclass(frozen=True)
class SweepPlan:
    sweep_id: str
    sweep_dir: str
    # 0 for the first submission of a sweep, 1.. for each resubmission
    submission: int
    parallelism: int
    arrays: tuple[ArrayChunk, ...]

    @property
    def members(self) -> int:
        return sum(len(a.members) for a in self.arrays)


def split(n: int, max_array_size: int) -> list[range]:
    """Positions 0..n-1 cut into consecutive ranges of at most max_array_size (one range per array)."""
    size = max(1, max_array_size)
    return [range(start, min(n, start + size)) for start in range(0, n, size)]


def lanes(sizes: Sequence[int], parallelism: int) -> list[tuple[int, Optional[int]]]:
    """(throttle, the array it waits for) of each array, so that the sweep runs at most `parallelism` members at
    once however many arrays it has. Pure.

    The arrays run in min(parallelism, arrays) lanes side by side: array k is in lane k % lanes, and an array
    waits for the one before it in its lane (afterany: it starts when every task of that one has ended, however
    they ended). The lanes share `parallelism`, each at least 1, in proportion to the members they hold (largest
    remainder), so they end at about the same time; every array of a lane has its lane's throttle. One array:
    throttle = parallelism, no wait (what a single array always was)."""
    if not sizes or parallelism < 1:
        return []
    n = min(parallelism, len(sizes))
    weight = [sum(sizes[k::n]) for k in range(n)]
    total = sum(weight) or 1
    ideal = [parallelism * w / total for w in weight]
    share = [max(1, int(x)) for x in ideal]
    while sum(share) > parallelism:  # the minimum of 1 took more than the floor gave: take back from the richest
        k = max((k for k in range(n) if share[k] > 1), key=lambda k: (share[k] - ideal[k], -k))
        share[k] -= 1
    while sum(share) < parallelism:
        k = max(range(n), key=lambda k: (ideal[k] - share[k], -k))
        share[k] += 1
    return [(share[k % n], k - n if k >= n else None) for k in range(len(sizes))]


def sweep_problems(members: int, parallelism: int, limits: ClusterLimits) -> list[str]:
    """Problems of a sweep's size and throttle on this cluster, each naming the fix."""
    p: list[str] = []
    if members < 1:
        p.append("the sweep has no members (a sweep override with no values, e.g. seed=range(0,0)); give every "
                 "swept key at least one value: KEY=A,B or KEY=range(START,STOP)")
    if parallelism < 1:
        p.append(f"sweep.parallelism={parallelism}: at least one member must be allowed to run at once; set "
                 "sweep.parallelism=1 or more (it caps the members running at the same time)")
    queued_all = limits.queued_all or 0
    if members + queued_all > limits.max_job_count:
        arrays = -(-members // max(1, limits.max_array_size))
        room = max(0, limits.max_job_count - queued_all)
        queue = f" with the {queued_all} jobs already queued" if queued_all else ""
        p.append(f"the sweep has {members} members ({arrays} arrays of at most MaxArraySize="
                 f"{limits.max_array_size}){queue}: more than the cluster keeps at once (MaxJobCount="
                 f"{limits.max_job_count}, from {limits.source}); sweep fewer values per key, or submit it as "
                 f"several sweeps of at most {room} members")
    mine = limits.queued_mine or 0
    for cap, what in limits.submit_limits:
        if members + mine > cap:
            queue = f" + your {mine} jobs already queued" if mine else ""
            room = max(0, cap - mine)
            fix = (f"submit at most {room} members now (fewer values per key, or several sweeps one after the "
                   "other)" if room else "wait for your queued jobs to finish, or cancel some (squeue --me)")
            p.append(f"the sweep's {members} members{queue} = {members + mine} jobs, over the {what} of {cap} "
                     f"(from {limits.source}): Slurm would refuse the array; {fix}")
    return p


def sweep_notes(members: int, parallelism: int, limits: ClusterLimits) -> list[str]:
    """What limits the sweep without refusing it: a cap on the user's running jobs below its parallelism."""
    notes = []
    for cap, what in limits.run_limits:
        if min(members, parallelism) > cap:
            notes.append(f"at most {cap} of your jobs run at once ({what}, from {limits.source}): the sweep runs "
                         f"{cap} members at a time, not sweep.parallelism={parallelism}; the others wait in the queue")
    return notes


def job_name(name: str, sweep_id: str, tag: str) -> str:
    """The arrays' Slurm job name: a label of the sweep, then the tag whole (never cut)."""
    room = quoting.NAME_MAX - len(tag) - 1
    return f"{quoting.slurm_name(f'{name}-{sweep_id}')[:room]}.{tag}"


def array_plan(base: JobPlan, sweep_dir: str, index_path: str, name: str) -> JobPlan:
    """The job one array task runs: the members' common plan, logs in the sweep folder, and an entry command
    that finds the member's run folder from the index file (the plan's entry ends with a run folder)."""
    return dataclasses.replace(base, name=name, run_dir=sweep_dir, entry=(*base.entry[:-1], ARRAY_FLAG, index_path))


def plan_sweep(base: JobPlan, members: Sequence[int], *, sweep_id: str, sweep_dir: str, name: str,
               submission: int, nonce: str, parallelism: int, limits: ClusterLimits) -> SweepPlan:
    """Arrays of `members` (member numbers, in task order). `base` is the plan of any member (they share it but
    for the run folder); `nonce` makes this submission's tags unique (random, drawn by the caller)."""
    arrays = []
    parts = split(len(members), limits.max_array_size)
    for k, (part, (throttle, after)) in enumerate(zip(parts, lanes([len(p) for p in parts], parallelism))):
        tag = f"s{submission}a{k}-{nonce}"
        jname = job_name(name, sweep_id, tag)
        index_file = INDEX_PATTERN.format(submission=submission, index=k)
        arrays.append(ArrayChunk(
            index=k,
            members=tuple(members[i] for i in part),
            tag=tag,
            job_name=jname,
            script=SCRIPT_PATTERN.format(submission=submission, index=k),
            index_file=index_file,
            array=ArraySpec(size=len(part), parallelism=throttle),
            after=after,
            plan=array_plan(base, sweep_dir, f"{sweep_dir}/{index_file}", jname),
        ))
    return SweepPlan(sweep_id, sweep_dir, submission, parallelism, tuple(arrays))


def index_text(chunk: ArrayChunk, run_dirs: Mapping[int, str]) -> str:
    """The index file of an array: task i -> the run folder of member chunk.members[i]."""
    return json.dumps({"tag": chunk.tag, "members": list(chunk.members),
                       "run_dirs": [run_dirs[m] for m in chunk.members]}, ensure_ascii=False) + "\n"


class SweepIndexError(RuntimeError):
    """An array task cannot find its member; the message says why."""


def member_run_dir(index_file: str, environ: Mapping[str, str]) -> str:
    """The run folder of the member this array task runs: entry SLURM_ARRAY_TASK_ID of the index file (what
    `index_text` wrote). Read by the rank entry, `python -m jobs.rank --array INDEX_FILE`."""
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


def member_table(rows: Sequence[tuple[int, str, str]]) -> str:
    """member, array task ("s0a0/3"), overrides: one aligned line each (the dry run's table)."""
    cells = [("member", "array/task", "overrides"), *((str(n), task, ov) for n, task, ov in rows)]
    w0 = max(len(c[0]) for c in cells)
    w1 = max(len(c[1]) for c in cells)
    return "".join(f"{c[0]:<{w0}}  {c[1]:<{w1}}  {c[2]}".rstrip() + "\n" for c in cells)
