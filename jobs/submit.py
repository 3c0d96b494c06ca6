"""Submit: preflight, render the same plan the dry run shows, write the run folder, start the job once, record.

One path for every backend. A queued job (Slurm) gets a snapshot of the code and a submission record; nothing
that claims a submission (submission.json) is written unless the scheduler returned a job id; a plan with
problems writes nothing at all. A foreground job (the local backend) runs to its end here, and what follows a
resumable stop is decided as the batch host decides it on a cluster (jobs/host.py).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence, TextIO

from cluster import preflight, quoting, slurm
from cluster.backends import Backend, get_backend
from cluster.plan import JobPlan
from jobs.problems import report
from jobs.dryrun import context, refuse_secrets, rendered_files, write_files
from trainer_core import layout


def submit(cfg: Any, plan: JobPlan, *, out: Optional[TextIO] = None, err: Optional[TextIO] = None,
           command: Optional[Sequence[str]] = None, facts: Optional[preflight.ClusterFacts] = None) -> int:
    """Run or submit the plan. Returns 0 with the job submitted (or run to completion), 2 when the plan cannot
    run, 1 when the scheduler refused it; a foreground job returns its own exit status."""
    from jobs import snapshot

    out, err = out or sys.stdout, err or sys.stderr
    backend = get_backend(plan.backend)
    check = backend.preflight(plan, facts if facts is not None else backend.probe())
    ctx = context(command)
    problems = list(check.problems)
    files: dict[str, str] = {}
    if not problems:
        try:
            files = rendered_files(cfg, plan, ctx, backend)
        except quoting.QuotingError as e:
            problems.append(str(e))
    problems += refuse_secrets(files)
    if problems:
        return report(problems, err)
    for note in check.notes:
        err.write(f"zerorun: preflight note: {note}\n")

    from jobs.runs import RunFolderError, claim, prepare

    try:
        prepare(plan.run_dir)
        if not cfg.get("resume"):
            claim(plan.run_dir)
    except RunFolderError as e:
        return report([str(e)], err)
    run_dir = write_files(plan.run_dir, files)
    if backend.runs_in_foreground:
        return _run_here(cfg, plan, backend, str(run_dir), out, err)
    script = next(n for n in files if n not in (layout.CONFIG, layout.RANK_TABLE))
    snapshot.write_snapshot(str(run_dir), files[layout.CONFIG], files[script], plan.workdir, plan.entry[0])
    try:
        job_id, _ = backend.launch(plan, str(run_dir), out, err)
    except slurm.SlurmError as e:
        err.write(f"zerorun: not submitted: {e}\n")
        return 1
    record = snapshot.Submission(
        job_id=job_id,
        submitted_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        command=list(ctx.command),
        run_dir=str(run_dir),
        script=script,
        zerorun_version=ctx.version,
        dependency=plan.dependency,
    )
    snapshot.write_record(str(run_dir), record)
    out.write(
        f"zerorun: submitted job {job_id}: nodes({plan.nodes}) x tasks_per_node({plan.tasks_per_node}) = "
        f"{plan.world_size} ranks\n"
        f"  run folder: {run_dir}\n"
        + (f"  waits for:  {plan.dependency} (cluster.after={cfg.cluster.after}); a dependency that fails "
           "cancels it\n" if plan.dependency else "")
        + f"  follow it:  zerorun status {job_id} | zerorun logs {job_id} --follow | zerorun cancel {job_id}\n"
    )
    return 0


def _run_here(cfg: Any, plan: JobPlan, backend: Backend, run_dir: str, out: TextIO, err: TextIO) -> int:
    """Run a foreground job to its end; a resumable stop is decided and recorded as on a batch host."""
    from jobs.host import run_in_foreground

    rc = run_in_foreground(cfg, plan, backend, run_dir, out, err)
    if rc != 0:
        return rc
    metrics_file = Path(run_dir) / layout.METRICS
    if metrics_file.exists():
        metrics = json.loads(metrics_file.read_text())
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
        out.write(f"\nzerorun: done. {shown}\nrun folder: {run_dir}\n")
    return 0
