"""`zerorun -m ... dry_run=true`: write the array scripts, index files, member table and member 0's config into
SWEEP_DIR/dry-run and print them; run the preflight and `sbatch --test-only`; submit nothing and write no
record and no member folder (the real submission starts from scratch). The folders are owner-only, as a run
folder is: the config may name private paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

from jobs.sweeps import plan
from cluster.backends import get_backend
from jobs.sweeps.plan import MEMBERS_TABLE, make_private, print_table, report_problems, write_files

DRY_RUN_DIR = "dry-run"
MEMBER_CONFIG = "config-member-0.yaml"


def dry_run(built: Any, out: TextIO, err: TextIO, *, facts: Any = None, limits: Any = None) -> int:
    """Write and print what the sweep (members.BuiltSweep) would submit, or run here with cluster=local."""
    files_dir = f"{built.sweep_dir}/{DRY_RUN_DIR}"
    if get_backend(built.backend).runs_in_foreground:
        return _local(built, files_dir, out, err)
    planned = plan.plan_built(built, files_dir=files_dir, facts=facts, limits=limits)
    if planned.splan is None:
        return report_problems(planned.problems, err, "the sweep cannot be submitted")
    splan, files = planned.splan, dict(planned.files)
    table = plan.member_rows(built, splan)
    files[MEMBERS_TABLE] = table
    files[MEMBER_CONFIG] = built.members[0].yaml
    make_private(built.sweep_dir)
    write_files(files_dir, files)
    out.write(f"zerorun dry run: nothing is submitted. {len(built.members)} members, sweep folder "
              f"{built.sweep_dir}, files in {files_dir}\n")
    a0 = splan.arrays[0]
    arrays = ", ".join(f"{a.script} (--array={a.array.flag}" + (
        f", after {splan.arrays[a.after].script} ends)" if a.after is not None else ")") for a in splan.arrays)
    out.write(f"\n{len(splan.arrays)} job array(s), one sbatch call each: {arrays}\n")
    if len(splan.arrays) > 1:
        out.write(f"at most {splan.parallelism} members run at once in the whole sweep: the arrays share "
                  "sweep.parallelism (their throttles %N add up to it)"
                  + ("; an array marked 'after' starts when every task of that one has ended (sbatch "
                     "--dependency=afterany)" if any(a.after is not None for a in splan.arrays) else "") + "\n")
    out.write(f"\n----- {a0.script} -----\n{files[a0.script]}")
    out.write(f"\n----- {MEMBERS_TABLE} -----\n")
    print_table(table, out, Path(files_dir) / MEMBERS_TABLE)
    for note in planned.notes:
        out.write(f"preflight note: {note}\n")
    from cluster.preflight import ask_test_only

    problems = ask_test_only(files_dir, a0.script, facts, out, "array script")
    if problems:
        out.flush()
        return report_problems(problems, err, "the sweep cannot be submitted")
    out.write("preflight: ok\n")
    return 0


def _local(built: Any, files_dir: str, out: TextIO, err: TextIO) -> int:
    from cluster.sweep_plan import member_table
    from jobs.sweeps.local import local_problems

    problems = local_problems(built)
    if problems:
        return report_problems(problems, err, "the sweep cannot run")
    table = member_table([(m.num, "local", " ".join(m.overrides)) for m in built.members])
    make_private(built.sweep_dir)
    write_files(files_dir, {MEMBERS_TABLE: table, MEMBER_CONFIG: built.members[0].yaml})
    out.write(f"zerorun dry run: nothing runs. {len(built.members)} members, sweep folder {built.sweep_dir}, files "
              f"in {files_dir}\ncluster=local: the members would run here, {built.parallelism} at a time, each as "
              "`python -m jobs.sweeps.local MEMBER_RUN_DIR`\n\n----- members.txt -----\n")
    print_table(table, out, Path(files_dir) / MEMBERS_TABLE)
    out.write("preflight: ok\n")
    return 0
