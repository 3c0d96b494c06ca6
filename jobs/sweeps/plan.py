"""The job arrays of one submission of a sweep, and the files they are made of.

`plan_arrays` asks the cluster (sinfo, `scontrol show config`) unless its facts are handed in, runs the
preflight on the members' plans, splits the members into arrays under MaxArraySize (cluster/sweep_plan.py, pure)
and renders each array's batch script and index file; nothing of a sweep with problems is written. The dry run,
a new sweep and a resubmission all plan here and write through `write_files`.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, TextIO

from jobs import chains
from trainer_core.durable import write_atomic

MEMBERS_TABLE = "members.txt"
# print at most this many members of a table (members.txt has all)
PRINT_HEAD, PRINT_TAIL = 16, 4
# Files are written this many at a time: each is fsynced (with its folder), and the time goes to waiting on the
# disk, not the CPU (1000 member configs: ~12 s one by one on a busy virtual disk, under 1 s in 8 threads).
WRITERS = 8


@dataclasses.dataclass(frozen=True)
class Planned:
    """A submission, planned: the arrays (None when there are problems), the files to write (path relative to
    the sweep folder -> text), the problems that stop it, and notes worth printing."""

    splan: Any
    files: dict[str, str]
    problems: list[str]
    notes: list[str]


def plan_arrays(config_views: Sequence[Any], nums: Sequence[int], run_dirs: Mapping[int, str], *, sweep_id: str,
                sweep_dir: str, name: str, submission: int, parallelism: int, workdir: str, python: str,
                files_dir: Optional[str] = None, facts: Any = None, limits: Any = None,
                texts: Mapping[str, str] = {}) -> Planned:
    """Plan and render the arrays of `nums` (member numbers, in task order). `config_views`: one member config
    per distinct plan (they share the geometry). `texts` (a member's config, the overrides) are checked for
    secrets with the files. `files_dir`: where a dry run's index files live (beside its scripts)."""
    from cluster import preflight, quoting, render, slurm, sweep_plan
    from cluster.plan import SetupFileError, make_plan, read_setup_file
    from jobs.dryrun import context, refuse_secrets

    problems: list[str] = []
    notes: list[str] = []
    limits = limits if limits is not None else slurm.limits()
    if not limits.source.startswith("scontrol"):
        notes.append(f"cluster limits not asked: {limits.source}")
    facts = facts if facts is not None else preflight.probe()
    plans = []
    try:
        # cluster.after: every array of the first submission waits for the same jobs; a resubmission of failed
        # members does not wait (what the sweep waited for has ended by then, and may be why they failed)
        dependency = chains.dependency(config_views[0]) if config_views and submission == 0 else None
    except chains.ChainError as e:
        return Planned(None, {}, [str(e)], notes)
    for view in config_views:
        try:
            lines = read_setup_file(view.cluster.setup_file)
        except SetupFileError as e:
            return Planned(None, {}, [str(e)], notes)
        plans.append(make_plan(view, python, setup_file_lines=lines, workdir=workdir, dependency=dependency))
    for p in plans:
        check = preflight.check(p, facts)
        problems += [x for x in check.problems if x not in problems]
        notes += [x for x in check.notes if x not in notes]
    problems += sweep_plan.sweep_problems(len(nums), parallelism, limits)
    if problems:
        return Planned(None, {}, problems, notes)
    splan = sweep_plan.plan_sweep(plans[0], list(nums), sweep_id=sweep_id, sweep_dir=sweep_dir, name=name,
                                  submission=submission, nonce=secrets.token_hex(3), parallelism=parallelism,
                                  limits=limits)
    if files_dir is not None:
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
        return Planned(None, {}, problems, notes)
    return Planned(splan, files, problems, notes)


def plan_built(built: Any, **more: Any) -> Planned:
    """The first submission of a built sweep (members.BuiltSweep): every member, from where the command runs."""
    import sys

    from jobs.sweeps.members import ConfigView

    return plan_arrays([ConfigView(c) for c in built.plan_configs], [m.num for m in built.members],
                       {m.num: m.run_dir for m in built.members}, sweep_id=built.sweep_id, sweep_dir=built.sweep_dir,
                       name=built.name, submission=0, parallelism=built.parallelism, workdir=os.getcwd(),
                       python=sys.executable, texts=texts(built), **more)


def texts(built: Any) -> dict[str, str]:
    """What else a submission writes that could carry a secret: a member's config and every swept value."""
    return {"config": built.members[0].yaml, "overrides": "\n".join(" ".join(m.overrides) for m in built.members)}


def make_private(folder: str | os.PathLike) -> Path:
    """Create a folder of the sweep (and its parents), readable by its owner only, as a run folder is."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_files(root: str | os.PathLike, files: Mapping[str, str]) -> None:
    """Write each file under `root` atomically, owner-only (folders 0700, files 0600, as in a run folder),
    WRITERS at a time."""
    made = {Path(root)}
    make_private(root)
    for rel in files:
        for folder in reversed(Path(rel).parents[:-1]):
            if (Path(root) / folder) not in made:
                made.add(make_private(Path(root) / folder))
    in_parallel(lambda item: write_atomic(Path(root) / item[0], item[1]), files.items())


def in_parallel(write: Callable[[Any], Any], items: Iterable[Any]) -> None:
    """write(item) for every item, WRITERS at a time; the first error is raised."""
    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(write, items))


def member_rows(record_or_built: Any, splan: Any) -> str:
    """members.txt of a submission: member, array/task ("s0a0/3"), overrides."""
    from cluster.sweep_plan import member_table

    where = {n: f"s{splan.submission}a{a.index}/{i}" for a in splan.arrays for i, n in enumerate(a.members)}
    members = {m.num: m for m in record_or_built.members}
    return member_table([(n, t, " ".join(members[n].overrides)) for n, t in where.items()])


def print_table(text: str, out: TextIO, full: Path) -> None:
    """The head and tail of a members table, with where the whole one is."""
    lines = text.splitlines()
    if len(lines) > 1 + PRINT_HEAD + PRINT_TAIL:
        hidden = len(lines) - 1 - PRINT_HEAD - PRINT_TAIL
        lines = [*lines[:1 + PRINT_HEAD], f"... ({hidden} more members; all in {full})", *lines[-PRINT_TAIL:]]
    out.write("\n".join(lines) + "\n")


def report_problems(problems: list[str], err: TextIO, what: str = "not submitted") -> int:
    from jobs.problems import report

    return report(problems, err, what)
