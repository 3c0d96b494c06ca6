"""`zerorun status | resubmit | cancel | report SWEEP_DIR`: follow a sweep through its record (jobs/sweep_record.py).

status    one row per member: overrides, state (squeue/sacct/scontrol: PENDING ... COMPLETED, FAILED, TIMEOUT,
          PREEMPTED, CANCELLED), step, attempts, the sweep's metric, its array task, why it failed
resubmit  --failed: the members that failed, timed out for good or were cancelled, as a new array; each
          resumes from the checkpoints in its own run folder
cancel    scancel every array of the sweep that still has members queued or running
report    SWEEP_DIR/report.png (the metric against each swept key; every member's loss curve) and report.json
          (the points and curves behind it), and the best members

The verbs refresh the record's cached states when its lock is free (a local sweep holds it while it runs).
Nothing here imports the training stack; matplotlib only in `report`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any, Optional, TextIO

from jobs import sweep_record
from jobs.sweep_record import RecordError, SweepRecord

REPORT_PNG = "report.png"
REPORT_JSON = "report.json"
CURVE_FILE = "csv/version_0/metrics.csv"
STATUS_COLUMNS = ("MEMBER", "OVERRIDES", "STATE", "STEP", "ATTEMPTS", "METRIC", "JOB", "DETAIL")


def is_sweep(target: str) -> bool:
    return Path(target).is_dir() and sweep_record.exists(target)


def _load(target: str, err: TextIO) -> Optional[SweepRecord]:
    try:
        return sweep_record.load(target)
    except RecordError as e:
        err.write(f"zerorun: {e}\n")
        return None


def _refreshed(target: str, err: TextIO) -> Optional[SweepRecord]:
    """The record with fresh states; saved back when the lock is free."""
    from jobs.sweep import refresh

    record = _load(target, err)
    if record is None:
        return None
    refresh(record)
    with sweep_record.try_locked(target) as got:
        if got:
            # merge into what is on disk now: another writer may have added a submission since we read
            current = sweep_record.load(target)
            if len(current.submissions) == len(record.submissions):
                sweep_record.save(record)
    return record


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def metric_of(member: sweep_record.Member, metric: str) -> Optional[float]:
    value = (member.metrics or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def best(record: SweepRecord, metric: str, mode: str, top: int) -> list[tuple[float, sweep_record.Member]]:
    scored = [(v, m) for m in record.members if (v := metric_of(m, metric)) is not None]
    scored.sort(key=lambda x: x[0], reverse=(mode == "max"))
    return scored[:top]


def status(argv: list[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    p = argparse.ArgumentParser(prog="zerorun status", description="The state of every member of a sweep.")
    p.add_argument("sweep_dir", help="the sweep folder (runs/NAME/sweep-ID)")
    args = p.parse_args(argv)
    record = _refreshed(args.sweep_dir, err)
    if record is None:
        return 1
    from jobs.verbs import _print_table

    rows = []
    for m in record.members:
        rows.append([str(m.num), " ".join(m.overrides), m.state, _fmt(m.step), str(m.attempts),
                     _fmt(metric_of(m, record.metric)), record.job_of(m) or "-", m.detail])
    columns = list(STATUS_COLUMNS)
    columns[5] = record.metric
    _print_table(columns, rows, out)
    counts: dict[str, int] = {}
    for m in record.members:
        counts[m.state] = counts.get(m.state, 0) + 1
    out.write(f"{len(record.members)} members: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "\n")
    top = best(record, record.metric, record.mode, 1)
    if top:
        value, m = top[0]
        out.write(f"best so far ({record.mode} {record.metric}): member {m.num} ({' '.join(m.overrides)}) = "
                  f"{value:.4g}\n")
    failed = [m.num for m in record.members if m.state in sweep_record.RESUBMITTABLE]
    if failed:
        out.write(f"{len(failed)} member(s) can be resubmitted: zerorun resubmit {args.sweep_dir} --failed\n")
    return 0


def resubmit(argv: list[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    from jobs.sweep import resubmit_failed

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
                sweep_record.submit_pending(record, err)
            except slurm.SlurmError as e:
                err.write(f"zerorun: {e}\n")
                return 1
        return resubmit_failed(record, out, err)


def cancel(argv: list[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    p = argparse.ArgumentParser(prog="zerorun cancel", description="Cancel every queued or running member of a sweep.")
    p.add_argument("sweep_dir", help="the sweep folder")
    args = p.parse_args(argv)
    record = _refreshed(args.sweep_dir, err)
    if record is None:
        return 1
    if record.backend == "local":
        err.write("zerorun: a cluster=local sweep runs in its own terminal; stop it there with Ctrl-C\n")
        return 1
    live: dict[str, list[int]] = {}
    for m in record.members:
        job = record.job_of(m)
        if job and m.state not in sweep_record.RESUBMITTABLE | {"COMPLETED"}:
            live.setdefault(job.split("_")[0], []).append(m.num)
    if not live:
        out.write(f"zerorun: no member of {args.sweep_dir} is queued or running; nothing to cancel\n")
        return 0
    from cluster.slurm import SlurmError, scancel

    rc = 0
    for array_job, nums in sorted(live.items()):
        try:
            scancel(array_job)
            out.write(f"zerorun: cancel requested for array {array_job} (members {', '.join(map(str, nums))})\n")
        except SlurmError as e:
            err.write(f"zerorun: {e}\n")
            rc = 1
    out.write(f"see it: zerorun status {args.sweep_dir}; rerun them later: zerorun resubmit {args.sweep_dir} "
              "--failed\n")
    return rc


# ---- report -------------------------------------------------------------------------------------------------

def read_curve(run_dir: str, column: str) -> list[tuple[int, float]]:
    """(step, value) rows of one column of a member's CSV log (trainer.logger=csv)."""
    rows = []
    try:
        with open(Path(run_dir) / CURVE_FILE) as f:
            for row in csv.DictReader(f):
                if row.get(column) and row.get("step"):
                    rows.append((int(row["step"]), float(row[column])))
    except OSError:
        pass
    return rows


def report_data(record: SweepRecord, metric: str, curve: str) -> dict[str, Any]:
    """What the report plots: per swept key, one (value, metric, member) point per member that has the metric;
    per member, its curve. Pure given the record and the member folders' CSV logs."""
    points = {key: [{"member": m.num, "value": m.params.get(key), "metric": v}
                    for m in record.members if (v := metric_of(m, metric)) is not None]
              for key in record.params}
    curves = {str(m.num): read_curve(m.run_dir, curve) for m in record.members}
    return {"sweep_dir": record.sweep_dir, "metric": metric, "mode": record.mode, "curve": curve,
            "points": points, "curves": {k: v for k, v in curves.items() if v},
            "members": {str(m.num): {"overrides": m.overrides, "state": m.state, "metric": metric_of(m, metric)}
                        for m in record.members}}


def _axis(values: list[Any]) -> tuple[list[float], Optional[list[str]], bool]:
    """x positions, tick labels (categorical values), log scale?"""
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        xs = [float(v) for v in values]
        positive = [x for x in xs if x > 0]
        log = len(positive) == len(xs) and len(set(xs)) > 1 and max(xs) / min(xs) >= 10
        return xs, None, log
    labels = sorted({str(v) for v in values})
    return [float(labels.index(str(v))) for v in values], labels, False


def write_png(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(data["points"])
    panels = len(keys) + 1
    cols = min(3, panels)
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.6 * rows), squeeze=False)
    flat = [a for row in axes for a in row]
    for ax, key in zip(flat, keys):
        pts = data["points"][key]
        xs, labels, log = _axis([p["value"] for p in pts])
        ax.scatter(xs, [p["metric"] for p in pts], s=28)
        for x, p in zip(xs, pts):
            ax.annotate(str(p["member"]), (x, p["metric"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if labels is not None:
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)
        if log:
            ax.set_xscale("log")
            ticks = sorted(set(xs))
            if len(ticks) <= 12:  # the swept values themselves, not powers of ten
                ax.minorticks_off()
                ax.set_xticks(ticks, [f"{x:g}" for x in ticks], fontsize=8)
        ax.set_xlabel(key)
        ax.set_ylabel(data["metric"])
    ax = flat[len(keys)]
    for member, rows_ in sorted(data["curves"].items(), key=lambda kv: int(kv[0])):
        ax.plot([s for s, _ in rows_], [v for _, v in rows_], label=member, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel(data["curve"])
    if 0 < len(data["curves"]) <= 12:
        ax.legend(fontsize=7, title="member", title_fontsize=7)
    for extra in flat[panels:]:
        extra.axis("off")
    fig.suptitle(f"sweep {Path(data['sweep_dir']).name}: {data['metric']} ({data['mode']} is best)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(argv: list[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    p = argparse.ArgumentParser(prog="zerorun report", description="Plot a sweep (the metric against each swept "
                                "key, every member's loss curve) and print its best members.")
    p.add_argument("sweep_dir", help="the sweep folder")
    p.add_argument("--metric", default=None, help="a key of the members' metrics.json (default: sweep.metric)")
    p.add_argument("--curve", default="train_loss", help="the CSV log column to draw per member (trainer.logger=csv)")
    p.add_argument("--top", type=int, default=5, help="how many of the best members to print")
    p.add_argument("--out", type=Path, default=None, help=f"the PNG to write (default: SWEEP_DIR/{REPORT_PNG})")
    args = p.parse_args(argv)
    record = _refreshed(args.sweep_dir, err)
    if record is None:
        return 1
    metric = args.metric or record.metric
    data = report_data(record, metric, args.curve)
    png = args.out or Path(args.sweep_dir) / REPORT_PNG
    data["png"] = str(png)
    data["best"] = [{"member": m.num, "overrides": m.overrides, "metric": v}
                    for v, m in best(record, metric, record.mode, args.top)]
    (Path(args.sweep_dir) / REPORT_JSON).write_text(json.dumps(data, indent=1) + "\n")
    try:
        write_png(data, png)
    except ImportError:
        err.write("zerorun: matplotlib is not installed (pip install matplotlib); report.json holds the data\n")
        return 1
    with_metric = sum(1 for m in record.members if metric_of(m, metric) is not None)
    out.write(f"zerorun: report of {len(record.members)} members ({with_metric} with {metric}): {png}\n")
    if not data["best"]:
        out.write(f"no member has {metric} yet (zerorun status {args.sweep_dir}); another metric: --metric NAME\n")
        return 0
    out.write(f"best ({record.mode} {metric}):\n")
    for i, b in enumerate(data["best"], 1):
        out.write(f"  {i}. member {b['member']}: {metric}={b['metric']:.4g}  {' '.join(b['overrides'])}\n")
    return 0
