"""A run's attempts: one line of JSON per event (start, signal, checkpoint, requeue, end) in attempts.jsonl.

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
    signals: list[str] = field(default_factory=list)
    checkpoint_step: Optional[int] = None
    requeue: Optional[str] = None
    end: Optional[str] = None


def attempts(events: list[dict[str, Any]]) -> list[Attempt]:
    """Group events into attempts (each starts with a "start" event)."""
    out: list[Attempt] = []
    for e in events:
        if e["event"] == "start":
            out.append(Attempt(len(out) + 1, str(e.get("job_id", "")), e.get("resumed_from_step")))
        elif out:
            a = out[-1]
            if e["event"] == "signal":
                a.signals.append(f"{e.get('signal')} ({e.get('cause')})")
            elif e["event"] == "checkpoint":
                a.checkpoint_step = e.get("step")
            elif e["event"] == "requeue":
                a.requeue = e.get("reason")
            elif e["event"] == "end":
                a.end = e.get("status")
    return out


def requeue_counts(events: list[dict[str, Any]]) -> dict[str, int]:
    """How many times the run was requeued, by cause."""
    counts = {"timeout": 0, "preemption": 0}
    for e in events:
        if e["event"] == "requeue" and e.get("requeued") and e.get("cause") in counts:
            counts[e["cause"]] += 1
    return counts
