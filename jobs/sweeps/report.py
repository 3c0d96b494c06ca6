"""What `zerorun report SWEEP_DIR` draws: the metric of every member against each swept key, every member's loss
curve (from its CSV log), and the best members. `report_data` is pure given the record and the members' CSV
logs; matplotlib is imported only to draw.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
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


def report_data(record: SweepRecord, metric: str, curve: str, top: int = 5) -> dict[str, Any]:
    """What the report plots: per swept key, one (value, metric, member) point per member that has the metric and
    the axis its values go on; per member, its curve; the best members. Pure given the record and the member
    folders' CSV logs."""
    points = {key: [{"member": m.num, "value": m.params.get(key), "metric": v}
                    for m in record.members if (v := metric_of(m, metric)) is not None]
              for key in record.params}
    axes = {key: vars(axis([p["value"] for p in pts], record.scales.get(key, AUTO))) for key, pts in points.items()}
    curves = {str(m.num): read_curve(m.run_dir, curve) for m in record.members}
    ranked = [{"member": m.num, "overrides": m.overrides, "metric": v}
              for v, m in best(record, metric, record.mode, top)]
    return {"sweep_dir": record.sweep_dir, "metric": metric, "mode": record.mode, "curve": curve,
            "points": points, "axes": axes, "curves": {k: v for k, v in curves.items() if v},
            "best": ranked, "best_member": ranked[0]["member"] if ranked else None,
            "members": {str(m.num): {"overrides": m.overrides, "state": m.state, "metric": metric_of(m, metric)}
                        for m in record.members}}


AUTO, LINEAR, LOG, CATEGORY = "auto", "linear", "log", "category"


@dataclass(frozen=True)
class Axis:
    """Where a swept key's values go on the x axis."""

    # "category" (one evenly spaced label per distinct value), "linear" or "log" (a numeric axis)
    kind: str
    # each value's x position (a numeric axis: the value; categories: the label's index)
    positions: list[float]
    # categories: the labels in axis order; None on a numeric axis
    labels: Optional[list[str]]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def axis(values: list[Any], declared: str = AUTO) -> Axis:
    """The axis of a swept key, from its values and how it was declared (expansion.scale). Pure.

    Numbers go on a numeric axis when the sweep declared a scale (range(...) is linear, tag(log, ...) is log) or
    when any of them has a fraction (a learning rate, a dropout): log when they are all positive and span a
    decade or more, else linear. Everything else is a category: integers listed one by one (seeds, batch sizes:
    a seed is a label, not a quantity; numerically ordered, powers of two land evenly spaced), strings, booleans,
    config groups (in the order first seen: the command line's)."""
    numeric = bool(values) and all(_number(v) for v in values)
    if numeric and (declared in (LINEAR, LOG) or any(isinstance(v, float) for v in values)):
        xs = [float(v) for v in values]
        positive = all(x > 0 for x in xs)
        if declared == LOG and positive:
            return Axis(LOG, xs, None)
        spans_decade = positive and len(set(xs)) > 1 and max(xs) / min(xs) >= 10
        return Axis(LOG if declared == AUTO and spans_decade else LINEAR, xs, None)
    labels = [_label(v) for v in sorted(set(values))] if numeric else list(dict.fromkeys(map(_label, values)))
    where = {label: float(i) for i, label in enumerate(labels)}
    return Axis(CATEGORY, [where[_label(v)] for v in values], labels)


def _label(v: Any) -> str:
    return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


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
    chosen = data.get("best_member")
    for ax, key in zip(flat, keys):
        pts = data["points"][key]
        ax_ = data["axes"][key]
        xs, labels = ax_["positions"], ax_["labels"]
        ax.scatter(xs, [p["metric"] for p in pts], s=28)
        for x, p in zip(xs, pts):
            ax.annotate(str(p["member"]), (x, p["metric"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
            if p["member"] == chosen:
                ax.scatter([x], [p["metric"]], s=160, marker="*", color="crimson", zorder=3, label=f"best: {chosen}")
        if labels is not None:
            ax.set_xticks(range(len(labels)), labels, rotation=30 if max(map(len, labels)) > 4 else 0, fontsize=8)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        if ax_["kind"] == LOG:
            ax.set_xscale("log")
        if ax_["kind"] != CATEGORY:
            ticks = sorted(set(xs))
            if len(ticks) <= 12:  # the swept values themselves, not powers of ten
                ax.minorticks_off()
                ax.set_xticks(ticks, [f"{x:g}" for x in ticks], fontsize=8)
        if chosen is not None and any(p["member"] == chosen for p in pts):
            ax.legend(fontsize=7, loc="best")
        ax.set_xlabel(key)
        ax.set_ylabel(data["metric"])
    ax = flat[len(keys)]
    for member, rows_ in sorted(data["curves"].items(), key=lambda kv: int(kv[0])):
        is_best = chosen is not None and int(member) == chosen
        ax.plot([s for s, _ in rows_], [v for _, v in rows_], label=f"{member} (best)" if is_best else member,
                linewidth=2.5 if is_best else 1, color="crimson" if is_best else None, zorder=3 if is_best else 2)
    ax.set_xlabel("step")
    ax.set_ylabel(data["curve"])
    if 0 < len(data["curves"]) <= 12:
        ax.legend(fontsize=7, title="member", title_fontsize=7)
    for extra in flat[panels:]:
        extra.axis("off")
    title = f"sweep {Path(data['sweep_dir']).name}: {data['metric']} ({data['mode']} is best)"
    if data.get("best"):
        b = data["best"][0]
        title += f"; best: member {b['member']} ({' '.join(b['overrides'])}) = {b['metric']:.4g}"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    write_atomic(path, png.getvalue())
