"""Dry run: render the plan exactly as submit would, write it into the run folder, print it, submit nothing.

Writes RUN_DIR/job.sbatch (Slurm) or RUN_DIR/job.local.sh (local), RUN_DIR/config.yaml and RUN_DIR/ranks.txt,
prints them (the rank table abbreviated for big jobs, a rich table on a terminal), runs the preflight, and where
`sbatch` exists asks `sbatch --test-only` whether Slurm would take the script. Never calls sbatch otherwise.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, TextIO

from cluster import preflight, quoting, render
from cluster.plan import JobPlan

RANKS_NAME = "ranks.txt"
LOCAL_SCRIPT_NAME = "job.local.sh"
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


def rendered_files(cfg: Any, plan: JobPlan, ctx: render.RenderContext) -> dict[str, str]:
    """name -> text of everything a run folder gets before its job starts. Pure."""
    from omegaconf import OmegaConf

    from jobs.runs import CONFIG_NAME

    rows = render.rank_table(plan)
    files = {CONFIG_NAME: OmegaConf.to_yaml(cfg, resolve=True), RANKS_NAME: render.table_text(rows)}
    if plan.backend == "slurm":
        files[render.SCRIPT_NAME] = render.sbatch_script(plan, ctx)
    else:
        files[LOCAL_SCRIPT_NAME] = render.local_commands(plan)
    return files


def refuse_secrets(files: dict[str, str], environ: Optional[dict[str, str]] = None) -> list[str]:
    """Problems for every secret-looking environment value that would be written (a config interpolating it)."""
    from jobs.snapshot import leaked_secrets

    leaks = leaked_secrets(files.values(), dict(os.environ) if environ is None else environ)
    return [f"the value of ${name} would be written into the run folder (the config interpolates it?); "
            f"remove it from the config and list {name} in cluster.env_passthrough: the job then inherits it "
            "by name" for name in leaks]


def write_files(run_dir: str, files: dict[str, str]) -> Path:
    """Write the rendered files into the run folder (made private to its owner), with logs/ ready for Slurm."""
    from jobs.runs import prepare

    path = prepare(run_dir)
    (path / render.LOG_DIR).mkdir(mode=0o700, exist_ok=True)
    for name, text in files.items():
        tmp = path / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, path / name)
    return path


def _print_table(rows: list[render.RankRow], out: TextIO, full_path: Path) -> None:
    shown = rows
    if len(rows) > PRINT_ROWS_HEAD + PRINT_ROWS_TAIL:
        shown = rows[:PRINT_ROWS_HEAD] + rows[-PRINT_ROWS_TAIL:]
    if out.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(*render.TABLE_COLUMNS, title=f"{len(rows)} ranks")
        for i, r in enumerate(shown):
            if i == PRINT_ROWS_HEAD and len(shown) < len(rows):
                table.add_row(*["..."] * len(render.TABLE_COLUMNS))
            table.add_row(*render.table_cells(r))
        Console(file=out, highlight=False).print(table)
    else:
        lines = render.table_text(shown).splitlines()
        if len(shown) < len(rows):
            lines.insert(1 + PRINT_ROWS_HEAD, "...")
        out.write("\n".join(lines) + "\n")
    if len(shown) < len(rows):
        out.write(f"({len(rows) - len(shown)} more ranks not shown; all {len(rows)} in {full_path})\n")


def ask_test_only(folder: str, script: Optional[str], facts: Any, out: TextIO, what: str) -> list[str]:
    """Ask `sbatch --test-only` about a rendered script where the cluster answers; print its answer and return the
    problem it names (if it refuses)."""
    if facts is not None and not facts.answered:
        out.write(f"sbatch --test-only: not asked (the cluster did not answer: {facts.error})\n")
        return []
    if not shutil.which("sbatch"):
        out.write("sbatch --test-only: not asked (sbatch is not on PATH)\n")
        return []
    from cluster import slurm

    try:
        ok, answer = slurm.test_only(folder, script) if script else slurm.test_only(folder)
    except slurm.SlurmError as e:
        ok, answer = False, str(e)
    out.write(f"sbatch --test-only: {answer}\n")
    return [] if ok else [f"sbatch --test-only refused the {what}: {answer}"]


def dry_run(cfg: Any, plan: JobPlan, *, out: Optional[TextIO] = None, err: Optional[TextIO] = None,
            command: Optional[Sequence[str]] = None, facts: Optional[preflight.ClusterFacts] = None) -> int:
    """Write and print what would be submitted; 0 when it could be, 2 when the preflight or Slurm says no."""
    out, err = out or sys.stdout, err or sys.stderr
    if plan.backend == "slurm" and facts is None:
        facts = preflight.probe()
    check = preflight.check(plan, facts or preflight.ClusterFacts(error="local backend"))
    try:
        files = rendered_files(cfg, plan, context(command))
    except quoting.QuotingError as e:
        # the script cannot even be written: say why, write nothing
        return _report(list(dict.fromkeys([*check.problems, str(e)])), err)
    leaks = refuse_secrets(files)
    if leaks:
        return _report(leaks, err)
    run_dir = write_files(plan.run_dir, files)

    out.write(f"zerorun dry run: nothing is submitted. Run folder: {run_dir}\n")
    for name in (render.SCRIPT_NAME, LOCAL_SCRIPT_NAME, "config.yaml"):
        if name in files:
            out.write(f"\n----- {name} -----\n{files[name]}")
    out.write(f"\n----- {RANKS_NAME}: nodes({plan.nodes}) x tasks_per_node({plan.tasks_per_node}) = "
              f"{plan.world_size} ranks -----\n")
    _print_table(render.rank_table(plan), out, run_dir / RANKS_NAME)

    problems = list(check.problems)
    for note in check.notes:
        out.write(f"preflight note: {note}\n")
    if plan.backend == "slurm" and not problems:
        problems += ask_test_only(str(run_dir), None, facts, out, "script")
    if problems:
        out.flush()
        return _report(problems, err)
    out.write("preflight: ok\n")
    return 0


def _report(problems: list[str], err: TextIO) -> int:
    err.write("zerorun: the job cannot be submitted:\n" + "".join(f"  - {p}\n" for p in problems))
    return 2
