"""A run's attempts: one line of JSON per event in attempts.jsonl.

Ranks append rank_start (each rank, first thing), start, first_step, signal, checkpoint and end (rank 0); the
batch host appends requeue (what followed a resumable stop or a hang) or failed (a rank failed, or never
started), and the hang watchdog appends hung (step, phase, the ranks and nodes that stopped first, the stacks).
`zerorun status` reads. Each event is one short line written with a single append, so a kill at any moment
leaves whole lines (a torn last line is skipped when reading).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from trainer_core import layout
from trainer_core.durable import append_line

FILE = layout.ATTEMPTS


def append(run_dir: str | os.PathLike, event: str, **facts: Any) -> None:
    append_line(Path(run_dir) / FILE, json.dumps({"event": event, "time": round(time.time(), 3), **facts},
                                                  sort_keys=True))


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
    world_size: Optional[int] = None
    # rows per optimizer step over all ranks (kept across a change of world_size unless trainer.keep_batch=per_rank)
    global_batch: Optional[int] = None
    accumulate_grad_batches: Optional[int] = None
    # the stop's signal event (signal, at, step), when a signal stopped this attempt
    stop: Optional[dict[str, Any]] = None
    # why the batch host recorded this attempt as failed
    failure: Optional[str] = None
    # the watchdog's hung event, when this attempt hung
    hang: Optional[dict[str, Any]] = None
    # node -> why it failed its health check in this attempt
    bad_nodes: dict[str, str] = field(default_factory=dict)
    # the nodes the requeue that followed this attempt left out
    excluded: list[str] = field(default_factory=list)


def attempts(events: list[dict[str, Any]]) -> list[Attempt]:
    """Group events into attempts. An attempt opens with rank 0's rank_start (or, in records written before
    ranks reported their start, with "start"); the "start" that follows in the same job fills in its facts."""
    out: list[Attempt] = []
    opened_by: Optional[tuple[str, int]] = None
    for e in events:
        kind = e["event"]
        ident = (str(e.get("job_id", "")), int(e.get("restart_count") or 0))
        if kind == "rank_start" and int(e.get("rank", -1)) == 0:
            out.append(Attempt(len(out) + 1, ident[0], None, ident[1], world_size=e.get("world_size")))
            opened_by = ident
        elif kind == "start":
            if opened_by != ident or not out:
                out.append(Attempt(len(out) + 1, ident[0], None, ident[1]))
            out[-1].resumed_from_step = e.get("resumed_from_step")
            out[-1].world_size = e.get("world_size", out[-1].world_size)
            out[-1].global_batch = e.get("global_batch")
            out[-1].accumulate_grad_batches = e.get("accumulate_grad_batches")
            opened_by = None
        elif kind == "failed" and (not out or out[-1].job_id != ident[0] or out[-1].end or out[-1].failure):
            # no rank of this job started: the batch host's record is all the attempt has
            out.append(Attempt(len(out) + 1, ident[0], None, ident[1], failure=e.get("reason"),
                               exit_code=e.get("exit_code")))
            opened_by = None
        elif out:
            a = out[-1]
            if kind == "signal":
                a.signals.append(str(e.get("signal")))
                a.stop = e
            elif kind == "checkpoint":
                a.checkpoint_step = e.get("step")
            elif kind == "requeue":
                a.requeued, a.requeue, a.exit_code = bool(e.get("requeued")), e.get("reason"), e.get("exit_code")
                a.cause = e.get("cause")
                a.excluded = list(e.get("excluded") or [])
                if a.signals and a.cause:
                    a.signals[-1] = f"{a.signals[-1]} ({a.cause})"
            elif kind == "end":
                a.end, a.end_step = e.get("status"), e.get("step")
            elif kind == "failed":
                a.failure, a.exit_code = e.get("reason"), e.get("exit_code")
            elif kind == "hung":
                a.hang = e
            elif kind == "bad_node":
                a.bad_nodes[str(e.get("node"))] = str(e.get("reason"))
    return out


def current(events: list[dict[str, Any]]) -> Optional[Attempt]:
    """The newest attempt (None before any rank started)."""
    runs = attempts(events)
    return runs[-1] if runs else None


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


def hang_of(events: list[dict[str, Any]], job_id: str, restart_count: int) -> Optional[dict[str, Any]]:
    """The watchdog's hung event of one attempt (a job id and its restart count), if it hung."""
    for e in events:
        if e["event"] == "hung" and str(e.get("job_id")) == job_id and int(e.get("restart_count") or 0) == restart_count:
            return e
    return None


def describe_hang(hang: dict[str, Any], run_dir: str | os.PathLike = "") -> str:
    """"hung in training at step 12: rank 1 on n2 stopped first (stacks: RUN_DIR/stacks/41-0)"."""
    ranks = ", ".join(map(str, hang.get("ranks") or [])) or "?"
    nodes = ", ".join(hang.get("nodes") or []) or "?"
    stacks = str(Path(run_dir) / hang["stacks"]) if hang.get("stacks") else "none"
    return (f"hung in {hang.get('phase')} at step {hang.get('step')}: rank {ranks} on {nodes} stopped first, no "
            f"progress for {hang.get('stalled_s')} s (stacks: {stacks})")


def bad_nodes_of(events: list[dict[str, Any]], job_id: str, restart_count: int) -> dict[str, str]:
    """node -> why, for the nodes that failed their health check in one attempt."""
    return {str(e.get("node")): str(e.get("reason")) for e in events if e["event"] == "bad_node"
            and str(e.get("job_id")) == job_id and int(e.get("restart_count") or 0) == restart_count}


def excluded_nodes(events: list[dict[str, Any]]) -> list[str]:
    """The nodes the run's requeues left out so far."""
    out: list[str] = []
    for e in events:
        if e["event"] == "requeue" and e.get("requeued"):
            out += [n for n in e.get("excluded") or [] if n not in out]
    return out
