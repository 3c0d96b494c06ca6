"""A run's attempts: one line of JSON per event in attempts.jsonl: start, first_step, signal, checkpoint, end,
requeue (the last: a requeue ends the job's processes).

Rank 0 appends; `zerorun status` reads. Each event is one short line written with a single append, so a kill
at any moment leaves whole lines (a torn last line is skipped when reading).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

FILE = "attempts.jsonl"


def append(run_dir: str | os.PathLike, event: str, **facts: Any) -> None:
    line = json.dumps({"event": event, "time": round(time.time(), 3), **facts}, sort_keys=True) + "\n"
    fd = os.open(Path(run_dir) / FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / FILE
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a kill
    return events


@dataclass
class Attempt:
    number: int
    job_id: str
    resumed_from_step: Optional[int]
    restart_count: int = 0
    signals: list[str] = field(default_factory=list)
    cause: Optional[str] = None
    checkpoint_step: Optional[int] = None
    requeued: Optional[bool] = None
    # why the run was requeued, or why not
    requeue: Optional[str] = None
    end: Optional[str] = None
    end_step: Optional[int] = None
    exit_code: Optional[int] = None


def attempts(events: list[dict[str, Any]]) -> list[Attempt]:
    """Group events into attempts (each starts with a "start" event)."""
    out: list[Attempt] = []
    for e in events:
        if e["event"] == "start":
            out.append(Attempt(len(out) + 1, str(e.get("job_id", "")), e.get("resumed_from_step"),
                               int(e.get("restart_count") or 0)))
        elif out:
            a = out[-1]
            if e["event"] == "signal":
                a.signals.append(f"{e.get('signal')} ({e.get('cause')})")
                a.cause = e.get("cause")
            elif e["event"] == "checkpoint":
                a.checkpoint_step = e.get("step")
            elif e["event"] == "requeue":
                a.requeued, a.requeue, a.exit_code = bool(e.get("requeued")), e.get("reason"), e.get("exit_code")
            elif e["event"] == "end":
                a.end, a.end_step = e.get("status"), e.get("step")
    return out


def requeue_counts(events: list[dict[str, Any]]) -> dict[str, int]:
    """How many times the run was requeued, by cause."""
    counts = {"timeout": 0, "preemption": 0}
    for e in events:
        if e["event"] == "requeue" and e.get("requeued") and e.get("cause") in counts:
            counts[e["cause"]] += 1
    return counts


def resumable(events: list[dict[str, Any]]) -> Optional[str]:
    """Why the run stopped before its end and waits for a resume by hand (resume=RUN_DIR); None when it
    completed, was requeued, or is still running."""
    runs = attempts(events)
    if not runs:
        return None
    last = runs[-1]
    if last.requeued is False and last.checkpoint_step is not None:
        return f"stopped at step {last.checkpoint_step}: {last.requeue}"
    return None
