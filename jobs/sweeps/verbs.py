"""`zerorun status | resubmit | cancel | report SWEEP_DIR`: follow a sweep through its record (record.py).

status    one row per member: overrides, state (squeue/sacct/scontrol: PENDING ... COMPLETED, FAILED, TIMEOUT,
          PREEMPTED, CANCELLED), step, attempts, the sweep's metric, its array task, why it failed
resubmit  --failed: the members that failed, timed out for good or were cancelled, as a new array; each
          resumes from the checkpoints in its own run folder
cancel    scancel every array of the sweep that still has members queued or running, including one the record
          still calls "submitting" that Slurm in fact holds (found by its job name)
report    SWEEP_DIR/report.png (the metric against each swept key; every member's loss curve) and report.json
          (the points and curves behind it), and the best members

status and report ask Slurm without the lock and save what they saw into the record as it is under the lock,
when the lock is free (a local sweep holds it while it runs); resubmit and cancel hold the lock throughout.
Nothing here imports the training stack; matplotlib only in `report`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, TextIO

from cluster.backends import get_backend
from jobs.sweeps import record as sweep_record
from jobs.sweeps import report as report_
from jobs.sweeps.record import RecordError, SweepRecord
from jobs.sweeps.refresh import adopt_queued, apply, observe, refresh
from jobs.sweeps.submit import resubmit_failed, submit_pending
from trainer_core.durable import write_atomic

STATUS_COLUMNS = ("MEMBER", "OVERRIDES", "STATE", "STEP", "ATTEMPTS", "METRIC", "JOB", "DETAIL")


def is_sweep(target: str) -> bool:
    return Path(target).is_dir() and sweep_record.exists(target)


def _load(target: str, err: TextIO) -> Optional[SweepRecord]:
    try:
        return sweep_record.load(target)
    except RecordError as e:
        err.write(f"zerorun: {e}\n")
        return None


def refreshed(target: str, err: TextIO) -> Optional[SweepRecord]:
    """The record with fresh states. Slurm is asked without the lock; what it said is saved into the record as
    it is on disk under the lock (when the lock is free now), so a submitter's newer job ids are never undone."""
    record = _load(target, err)
    if record is None:
        return None
    seen = observe(record)
    with sweep_record.try_locked(target) as got:
        if got:
            current = _load(target, err)
            if current is not None:
                apply(current, seen)
                sweep_record.save(current)
                return current
    apply(record, seen)
    return record


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def status(argv: list[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    p = argparse.ArgumentParser(prog="zerorun status", description="The state of every member of a sweep.")
    p.add_argument("sweep_dir", help="the sweep folder (runs/NAME/sweep-ID)")
    args = p.parse_args(argv)
    record = refreshed(args.sweep_dir, err)
    if record is None:
        return 1
    from cluster import table

    rows = []
    for m in record.members:
        rows.append([str(m.num), " ".join(m.overrides), m.state, _fmt(m.step), str(m.attempts),
                     _fmt(report_.metric_of(m, record.metric)), record.job_of(m) or "-", m.detail])
    columns = list(STATUS_COLUMNS)
    columns[5] = record.metric
    table.show(columns, rows, out)
    counts: dict[str, int] = {}
    for m in record.members:
        counts[m.state] = counts.get(m.state, 0) + 1
    out.write(f"{len(record.members)} members: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "\n")
    top = report_.best(record, record.metric, record.mode, 1)
    if top:
        value, m = top[0]
        out.write(f"best so far ({record.mode} {record.metric}): member {m.num} ({' '.join(m.overrides)}) = "
                  f"{value:.4g}\n")
    failed = [m.num for m in record.members if m.state in sweep_record.RESUBMITTABLE]
    if failed:
        out.write(f"{len(failed)} member(s) can be resubmitted: zerorun resubmit {args.sweep_dir} --failed\n")
    from jobs.evaluation import show_evaluations

    show_evaluations(args.sweep_dir, out)
    return 0


def resubmit(argv: list[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    p = argparse.ArgumentParser(prog="zerorun resubmit", description="Submit members of a sweep again; each "
                                "resumes from the checkpoints in its own run folder.")
    p.add_argument("sweep_dir", help="the sweep folder")
    p.add_argument("--failed", action="store_true", help="the members that failed, timed out for good or were "
                   "cancelled (zerorun status marks them)")
    args = p.parse_args(argv)
    if not args.failed:
        err.write("zerorun resubmit: say which members: --failed (those that failed, timed out or were cancelled)\n")
        return 2
    if _load(args.sweep_dir, err) is None:
        return 1
    with sweep_record.locked(args.sweep_dir):
        record = _load(args.sweep_dir, err)
        if record is None:
            return 1
        if record.pending():
            from cluster import slurm

            try:
                submit_pending(record, err)
            except slurm.SlurmError as e:
                err.write(f"zerorun: {e}\n")
                return 1
        return resubmit_failed(record, out, err)


def cancel(argv: list[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    p = argparse.ArgumentParser(prog="zerorun cancel", description="Cancel every queued or running member of a sweep.")
    p.add_argument("sweep_dir", help="the sweep folder")
    args = p.parse_args(argv)
    record = _load(args.sweep_dir, err)
    if record is None:
        return 1
    if get_backend(record.backend).runs_in_foreground:
        err.write("zerorun: a cluster=local sweep runs in its own terminal; stop it there with Ctrl-C\n")
        return 1
    from cluster.slurm import SlurmError, scancel

    rc = 0
    # under the lock no submitter is between sbatch and recording its answer: an array still "submitting" is
    # either in Slurm under its job name (adopted here, then cancelled) or was never queued
    with sweep_record.locked(args.sweep_dir):
        record = _load(args.sweep_dir, err)
        if record is None:
            return 1
        try:
            never = adopt_queued(record, err)
        except SlurmError as e:
            err.write(f"zerorun: {e}\n")
            never, rc = [], 1
        refresh(record)
        sweep_record.save(record)
    for sub in never:
        out.write(f"zerorun: array {sub.tag} was never queued (its submitter stopped before sbatch); nothing to "
                  "cancel there\n")
    live: dict[str, list[int]] = {}
    for m in record.members:
        job = record.job_of(m)
        if job and m.state not in sweep_record.RESUBMITTABLE | {"COMPLETED"}:
            live.setdefault(job.split("_")[0], []).append(m.num)
    if not live:
        out.write(f"zerorun: no member of {args.sweep_dir} is queued or running; nothing to cancel\n")
        return rc
    for array_job, nums in sorted(live.items(), key=lambda kv: int(kv[0])):
        try:
            scancel(array_job)
            out.write(f"zerorun: cancel requested for array {array_job} (members {', '.join(map(str, nums))})\n")
        except SlurmError as e:
            err.write(f"zerorun: {e}\n")
            rc = 1
    out.write(f"see it: zerorun status {args.sweep_dir}; rerun them later: zerorun resubmit {args.sweep_dir} "
              "--failed\n")
    return rc


def report(argv: list[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    p = argparse.ArgumentParser(prog="zerorun report", description="Plot a sweep (the metric against each swept "
                                "key, every member's loss curve) and print its best members.")
    p.add_argument("sweep_dir", help="the sweep folder")
    p.add_argument("--metric", default=None, help="a key of the members' metrics.json (default: sweep.metric)")
    p.add_argument("--curve", default="train_loss", help="the CSV log column to draw per member (trainer.logger=csv)")
    p.add_argument("--top", type=int, default=5, help="how many of the best members to print")
    p.add_argument("--out", type=Path, default=None, help=f"the PNG to write (default: SWEEP_DIR/{report_.REPORT_PNG})")
    args = p.parse_args(argv)
    record = refreshed(args.sweep_dir, err)
    if record is None:
        return 1
    metric = args.metric or record.metric
    data = report_.report_data(record, metric, args.curve)
    png = args.out or Path(args.sweep_dir) / report_.REPORT_PNG
    data["png"] = str(png)
    data["best"] = [{"member": m.num, "overrides": m.overrides, "metric": v}
                    for v, m in report_.best(record, metric, record.mode, args.top)]
    write_atomic(Path(args.sweep_dir) / report_.REPORT_JSON, json.dumps(data, indent=1) + "\n")
    try:
        report_.write_png(data, png)
    except ImportError:
        err.write("zerorun: matplotlib is not installed (pip install matplotlib); report.json holds the data\n")
        return 1
    with_metric = sum(1 for m in record.members if report_.metric_of(m, metric) is not None)
    out.write(f"zerorun: report of {len(record.members)} members ({with_metric} with {metric}): {png}\n")
    if not data["best"]:
        out.write(f"no member has {metric} yet (zerorun status {args.sweep_dir}); another metric: --metric NAME\n")
        return 0
    out.write(f"best ({record.mode} {metric}):\n")
    for i, b in enumerate(data["best"], 1):
        out.write(f"  {i}. member {b['member']}: {metric}={b['metric']:.4g}  {' '.join(b['overrides'])}\n")
    return 0
