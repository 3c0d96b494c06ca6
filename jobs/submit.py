"""Submit: preflight, render the same plan the dry run shows, write the run folder, call sbatch once, record.

Nothing that claims a submission (submission.json) is written unless sbatch returned a job id; a plan with
problems writes nothing at all.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional, Sequence, TextIO

from cluster import preflight, quoting, render, slurm
from jobs.dryrun import context, refuse_secrets, rendered_files, write_files
from cluster.plan import JobPlan
from jobs.runs import CONFIG_NAME


def submit(cfg: Any, plan: JobPlan, *, out: Optional[TextIO] = None, err: Optional[TextIO] = None,
           command: Optional[Sequence[str]] = None, facts: Optional[preflight.ClusterFacts] = None) -> int:
    """Submit the plan to Slurm. Returns 0 with the job submitted, 2 when the plan cannot run, 1 when Slurm
    refused it."""
    from jobs import snapshot

    out, err = out or sys.stdout, err or sys.stderr
    check = preflight.check(plan, facts if facts is not None else preflight.probe())
    ctx = context(command)
    problems = list(check.problems)
    files: dict[str, str] = {}
    if not problems:
        try:
            files = rendered_files(cfg, plan, ctx)
        except quoting.QuotingError as e:
            problems.append(str(e))
    problems += refuse_secrets(files)
    if problems:
        err.write("zerorun: not submitted:\n" + "".join(f"  - {p}\n" for p in problems))
        return 2
    for note in check.notes:
        err.write(f"zerorun: preflight note: {note}\n")

    run_dir = write_files(plan.run_dir, files)
    snapshot.write_snapshot(str(run_dir), files[CONFIG_NAME], files[render.SCRIPT_NAME], plan.workdir, plan.entry[0])
    try:
        job_id = slurm.sbatch(str(run_dir))
    except slurm.SlurmError as e:
        err.write(f"zerorun: not submitted: {e}\n")
        return 1
    record = snapshot.Submission(
        job_id=job_id,
        submitted_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        command=list(ctx.command),
        run_dir=str(run_dir),
        script=render.SCRIPT_NAME,
        zerorun_version=ctx.version,
    )
    snapshot.write_record(str(run_dir), record)
    out.write(
        f"zerorun: submitted job {job_id}: nodes({plan.nodes}) x tasks_per_node({plan.tasks_per_node}) = "
        f"{plan.world_size} ranks\n"
        f"  run folder: {run_dir}\n"
        f"  follow it:  zerorun status {job_id} | zerorun logs {job_id} --follow | zerorun cancel {job_id}\n"
    )
    return 0
