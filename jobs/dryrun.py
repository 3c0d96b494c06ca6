"""Dry run: render the plan exactly as submit would, write it into the run folder, print it, submit nothing.

Writes the backend's script (RUN_DIR/job.sbatch for Slurm, RUN_DIR/job.local.sh for the local backend: every
rank's command line with the exact environment it gets), RUN_DIR/config.yaml and RUN_DIR/ranks.txt, prints them
(the rank table abbreviated for big jobs, a rich table on a terminal), runs the backend's preflight, and asks
the scheduler whether it would take the script (Slurm: `sbatch --test-only`). Submits nothing.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, TextIO

from cluster import preflight, quoting, render, table
from cluster.preflight import ask_test_only  # noqa: F401  (the sweep dry run asks it too)
from cluster.backends import Backend, get_backend
from cluster.plan import JobPlan
from jobs.problems import report
from trainer_core import layout
from trainer_core.durable import write_atomic

RANKS_NAME = layout.RANK_TABLE
CANNOT = "the job cannot be submitted"
# print at most this many rows of the rank table (the file in the run folder has all of them)
PRINT_ROWS_HEAD = 16
PRINT_ROWS_TAIL = 4


def invocation(argv: Sequence[str] = ()) -> tuple[str, ...]:
    """The command line that started this process, as the script header names it."""
    argv = list(argv or sys.argv)
    prog = os.path.basename(argv[0]) if argv else "zerorun"
    if prog in ("__main__.py", "cli.py"):
        prog = "zerorun"
    return (prog, *argv[1:])


def context(command: Optional[Sequence[str]] = None) -> render.RenderContext:
    from jobs.snapshot import version

    return render.RenderContext(version=version(), command=tuple(command) if command else invocation())


def rendered_files(cfg: Any, plan: JobPlan, ctx: render.RenderContext,
                   backend: Optional[Backend] = None) -> dict[str, str]:
    """name -> text of everything a run folder gets before its job starts. Pure."""
    from omegaconf import OmegaConf

    backend = backend or get_backend(plan.backend)
    # a finalized config has nothing left to resolve; resolving again would undo its escaped literals (\${...})
    files = {layout.CONFIG: OmegaConf.to_yaml(cfg, resolve=False),
             RANKS_NAME: render.table_text(backend.rank_table(plan))}
    files.update(backend.script_files(plan, ctx))
    return files


def refuse_secrets(files: dict[str, str], environ: Optional[dict[str, str]] = None) -> list[str]:
    """Problems for every secret-looking environment value that would be written (jobs/snapshot.py's one check)."""
    from jobs.snapshot import check_no_secrets

    return check_no_secrets(files, dict(os.environ) if environ is None else environ)


def write_files(run_dir: str, files: dict[str, str]) -> Path:
    """Write the rendered files into the run folder (made private to its owner), with logs/ ready for the ranks."""
    from jobs.runs import prepare

    path = prepare(run_dir)
    (path / layout.LOGS).mkdir(mode=0o700, exist_ok=True)
    for name, text in files.items():
        write_atomic(path / name, text)
    return path


def _print_table(rows: list[render.RankRow], out: TextIO, full_path: Path) -> None:
    table.show(render.TABLE_COLUMNS, [render.table_cells(r) for r in rows], out, title=f"{len(rows)} ranks",
               head=PRINT_ROWS_HEAD, tail=PRINT_ROWS_TAIL, whole=str(full_path))


def dry_run(cfg: Any, plan: JobPlan, *, out: Optional[TextIO] = None, err: Optional[TextIO] = None,
            command: Optional[Sequence[str]] = None, facts: Optional[preflight.ClusterFacts] = None) -> int:
    """Write and print what would be submitted; 0 when it could be, 2 when the preflight or the scheduler says no."""
    out, err = out or sys.stdout, err or sys.stderr
    backend = get_backend(plan.backend)
    facts = facts if facts is not None else backend.probe()
    check = backend.preflight(plan, facts)
    try:
        files = rendered_files(cfg, plan, context(command), backend)
    except quoting.QuotingError as e:
        # the script cannot even be written: say why, write nothing
        return report([*check.problems, str(e)], err, CANNOT)
    leaks = refuse_secrets(files)
    if leaks:
        return report(leaks, err, CANNOT)
    run_dir = write_files(plan.run_dir, files)

    out.write(f"zerorun dry run: nothing is submitted. Run folder: {run_dir}\n")
    for name in [n for n in files if n not in (layout.CONFIG, RANKS_NAME)] + [layout.CONFIG]:
        out.write(f"\n----- {name} -----\n{files[name]}")
    out.write(f"\n----- {RANKS_NAME}: nodes({plan.nodes}) x tasks_per_node({plan.tasks_per_node}) = "
              f"{plan.world_size} ranks -----\n")
    _print_table(backend.rank_table(plan), out, run_dir / RANKS_NAME)

    problems = list(check.problems)
    for note in check.notes:
        out.write(f"preflight note: {note}\n")
    if not problems:
        problems += backend.ask_scheduler(str(run_dir), facts, out)
    if problems:
        out.flush()
        return report(problems, err, CANNOT)
    out.write("preflight: ok\n")
    return 0
