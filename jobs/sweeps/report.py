"""What `zerorun report SWEEP_DIR` draws: the metric of every member against each swept key, every member's loss
curve (from its CSV log), and the best members. `report_data` is pure given the record and the members' CSV
logs; matplotlib is imported only to draw.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Optional

from jobs.sweeps.record import Member, SweepRecord
from trainer_core.durable import write_atomic

REPORT_PNG = "report.png"
REPORT_JSON = "report.json"
CURVE_FILE = "csv/version_0/metrics.csv"


def metric_of(member: Member, metric: str) -> Optional[float]:
    value = (member.metrics or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def best(record: SweepRecord, metric: str, mode: str, top: int) -> list[tuple[float, Member]]:
    scored = [(v, m) for m in record.members if (v := metric_of(m, metric)) is not None]
    scored.sort(key=lambda x: x[0], reverse=(mode == "max"))
    return scored[:top]


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
    """Draw the report and write it atomically (raises ImportError without matplotlib)."""
    import io

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
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    write_atomic(path, png.getvalue())
