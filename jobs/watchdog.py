"""The hang watchdog: `python -m jobs.watchdog RUN_DIR` (a sweep member's: `--array SWEEP_INDEX_FILE`), started by
the job script on the batch host before srun and stopped when srun returns. It runs outside the ranks, so it is
not blocked when they are.

Every second it reads the ranks' progress records (trainer_core/progress.py: step, phase, time, pid, node).
A rank that has reported nothing in this attempt counts from the watchdog's own start, in the start-up phase.
When some rank has made no progress for longer than its phase allows (watchdog.startup_timeout_s for start-up
and the first step, checkpoint_timeout_s during a save, timeout_s otherwise), the attempt is hung:

1. every rank's stack is captured on its own node (`python -m jobs.watchdog dump PID FILE`, through the
   backend's `on_node`): py-spy reads every thread of a running or blocked process; a stopped process (state T)
   cannot be read, and its file says so, with its /proc state;
2. the ranks that stopped first are named (a stopped process; else the ranks whose stack is not waiting in a
   collective; else the ones at the lowest step, oldest report first), with their nodes;
3. a "hung" event goes into attempts.jsonl (step, phase, ranks, nodes, the stacks folder, timings);
4. the backend ends the ranks (Slurm: every step of the job gets SIGKILL), so srun returns and the job script's
   host step (jobs/host.py) reads the event and requeues the run (or ends it: a second hang at the same step).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from trainer_core import attempts, layout
from trainer_core.durable import write_atomic
from trainer_core.progress import read as read_progress

POLL_S = 1.0
# how long one rank's stack capture may take (py-spy on a large process, an srun to its node)
DUMP_TIMEOUT_S = 60
# Frames of a rank that waits for the others (py-spy writes a frame as "    FUNCTION (FILE:LINE)"): in a
# collective's module, or a function that meets the other ranks (DDP all-reduces inside autograd's C++ engine, so
# a DDP rank waiting for a gradient all-reduce shows only the call into that engine). The rank blocking
# elsewhere is the one that stopped first.
COLLECTIVE_FILES = ("distributed_c10d", "deepspeed/comm/", "torch/distributed/")
COLLECTIVE_FUNCTIONS = frozenset({"all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter",
                                  "reduce_scatter_tensor", "broadcast", "barrier", "init_process_group",
                                  "_engine_run_backward", "run_backward"})
_FRAME = re.compile(r"^\s+(\S+) \(([^)]*)\)\s*$", re.MULTILINE)
STOPPED_STATES = ("T", "t")


@dataclass(frozen=True)
class Limits:
    training_s: float
    startup_s: float
    checkpoint_s: float

    def for_phase(self, phase: str) -> float:
        if phase == "done":
            return float("inf")  # the rank has left training and exits; a rank that waits for it is not done
        if phase in ("startup", "first_step", "end"):
            # end: the last save's commit, the reports and the ranks' last meeting, on every rank at its own pace
            return self.startup_s
        if phase == "checkpoint":
            return self.checkpoint_s
        return self.training_s


@dataclass(frozen=True)
class RankView:
    """What the watchdog knows of one rank in this attempt."""

    rank: int
    # seconds since the epoch of its last report (the watchdog's start when it has reported nothing)
    since: float
    phase: str
    step: Optional[int]
    pid: Optional[int]
    node: Optional[str]


def rank_views(run_dir: Path, world_size: int, job_id: str, restart_count: int, started: float,
               rank_starts: Mapping[int, dict]) -> list[RankView]:
    """Each rank's latest report in this attempt; a rank without one is in start-up since `started` (its pid and
    node from its rank_start event, where it wrote one)."""
    views = []
    for rank in range(world_size):
        rec = read_progress(run_dir / layout.progress_file(rank))
        if rec and str(rec.get("job_id")) == job_id and int(rec.get("restart_count") or 0) == restart_count:
            views.append(RankView(rank, float(rec["time"]), str(rec["phase"]), int(rec["step"]), int(rec["pid"]),
                                  str(rec["node"])))
        else:
            start = rank_starts.get(rank, {})
            views.append(RankView(rank, started, "startup", None, start.get("pid"), start.get("node")))
    return views


def stalled(views: Sequence[RankView], now: float, limits: Limits) -> list[RankView]:
    """The ranks that have made no progress for longer than their phase allows. Pure."""
    return [v for v in views if now - v.since > limits.for_phase(v.phase)]


def first_stalled(views: Sequence[RankView], states: Mapping[int, str], stacks: Mapping[int, str]) -> list[int]:
    """The ranks that stopped first. Pure.

    A stopped process explains the rest; else a rank that is not waiting in a collective (its stack shows no
    collective frame) blocks the ranks that are; else the lowest step, and among those the oldest report."""
    stopped = [v.rank for v in views if states.get(v.rank, "")[:1] in STOPPED_STATES]
    if stopped:
        return stopped
    readable = [v.rank for v in views if stacks.get(v.rank)]
    elsewhere = [r for r in readable if not waits_for_others(stacks[r])]
    if elsewhere and len(elsewhere) < len(views):
        return elsewhere
    lowest = min((v.step if v.step is not None else -1) for v in views)
    at_lowest = [v for v in views if (v.step if v.step is not None else -1) == lowest]
    oldest = min(v.since for v in at_lowest)
    return [v.rank for v in at_lowest if v.since == oldest]


def waits_for_others(stack: str) -> bool:
    """Whether a py-spy stack shows a rank waiting in a collective."""
    return any(fn in COLLECTIVE_FUNCTIONS or any(f in where for f in COLLECTIVE_FILES)
               for fn, where in _FRAME.findall(stack))


# ---- on a rank's node ----

def proc_state(pid: int) -> str:
    """The process's state line from /proc ("T (stopped)"), or "" when there is no such process."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def py_spy() -> Optional[str]:
    """py-spy next to this Python (the environment the ranks run in), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def dump(pid: int, out: Path) -> int:
    """Write the Python stack of every thread of `pid` into `out` (run on the process's node)."""
    state = proc_state(pid)
    head = f"pid {pid} on {os.uname().nodename}, state: {state or 'gone'}\n"
    if not state:
        text = head + "the process is gone: no stack\n"
    elif state[:1] in STOPPED_STATES:
        text = head + ("the process is stopped (a signal such as SIGSTOP, or a debugger): a stopped process's "
                       "memory cannot be read, so there is no stack\n")
    else:
        tool = py_spy()
        if tool is None:
            text = head + "py-spy is not installed where the ranks run (pip install py-spy): no stack\n"
        else:
            try:
                got = subprocess.run([tool, "dump", "--pid", str(pid)], capture_output=True, text=True,
                                     timeout=DUMP_TIMEOUT_S)
                text = head + got.stdout + (f"py-spy: {got.stderr.strip()}\n" if got.returncode else "")
            except subprocess.TimeoutExpired:
                text = head + f"py-spy did not answer within {DUMP_TIMEOUT_S} s: no stack\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, text, 0o644)
    return 0


# ---- on the batch host ----

def capture(run_dir: Path, views: Sequence[RankView], job_id: str, restart_count: int, backend,
            environ: Mapping[str, str]) -> tuple[dict[int, str], dict[int, str], dict[int, float]]:
    """Every rank's stack file, captured on its node, all ranks at once: (rank -> state, rank -> stack text,
    rank -> seconds its capture took)."""
    def one(v: RankView) -> tuple[int, str]:
        t0 = time.monotonic()
        out = run_dir / layout.stack_file(job_id, restart_count, v.rank)
        if v.pid is None or v.node is None:
            out.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(out, f"rank {v.rank} reported no process in this attempt: no stack\n", 0o644)
        else:
            argv = [sys.executable, "-m", "jobs.watchdog", "dump", str(v.pid), str(out)]
            rc, said = backend.on_node(v.node, argv, environ, DUMP_TIMEOUT_S + 30)
            if rc != 0 or not out.exists():
                out.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(out, f"rank {v.rank} on {v.node} (pid {v.pid}): the capture failed "
                                       f"(exit {rc}): {said.strip()[-2000:]}\n", 0o644)
        seconds[v.rank] = round(time.monotonic() - t0, 2)
        return v.rank, out.read_text(errors="replace")

    seconds: dict[int, float] = {}
    with ThreadPoolExecutor(max_workers=min(32, max(1, len(views)))) as pool:
        texts = dict(pool.map(one, views))
    states = {r: t.partition("state: ")[2].partition("\n")[0] for r, t in texts.items()}
    stacks = {r: t for r, t in texts.items() if "Thread " in t}
    return states, stacks, seconds


def watch(run_dir: Path, *, backend, world_size: int, limits: Limits, environ: Mapping[str, str],
          poll_s: float = POLL_S, now=time.time) -> Optional[dict]:
    """Watch until a hang (returns the recorded event) or until killed (the job script stops it)."""
    job_id, restart = backend.job_identity(environ)
    started = now()
    parent = os.getppid()
    while True:
        if os.getppid() != parent:
            return None  # the job script (or local launcher) that started it is gone: nothing left to watch
        starts = {int(e["rank"]): e for e in attempts.read(run_dir) if e["event"] == "rank_start"
                  and str(e.get("job_id")) == job_id and int(e.get("restart_count") or 0) == restart}
        views = rank_views(run_dir, world_size, job_id, restart, started, starts)
        t = now()
        if stalled(views, t, limits):
            return on_hang(run_dir, views, t, job_id, restart, limits, backend, environ)
        time.sleep(poll_s)


def on_hang(run_dir: Path, views: Sequence[RankView], detected: float, job_id: str, restart: int, limits: Limits,
            backend, environ: Mapping[str, str]) -> dict:
    t0 = time.monotonic()
    states, stacks, seconds = capture(run_dir, views, job_id, restart, backend, environ)
    capture_s = time.monotonic() - t0
    first = first_stalled(views, states, stacks)
    by_rank = {v.rank: v for v in views}
    lead = by_rank[first[0]]
    nodes = sorted({str(by_rank[r].node) for r in first if by_rank[r].node})
    steps = [v.step for v in views if v.step is not None]
    facts = dict(job_id=job_id, restart_count=restart, step=min(steps) if steps else None, phase=lead.phase,
                 ranks=first, nodes=nodes, stacks=layout.stacks_dir(job_id, restart),
                 states={str(r): s for r, s in sorted(states.items())},
                 stalled_s=round(detected - lead.since, 1), timeout_s=limits.for_phase(lead.phase),
                 capture_s=round(capture_s, 2), capture_s_by_rank={str(r): t for r, t in sorted(seconds.items())},
                 detected_at=round(detected, 3))
    attempts.append(run_dir, "hung", **facts)
    ok, what = backend.end_ranks(environ, [(v.node, v.pid) for v in views if v.pid and v.node])
    print(f"zerorun: watchdog: hung in {lead.phase} at step {facts['step']}: rank(s) {first} on {', '.join(nodes)} "
          f"made no progress for {facts['stalled_s']} s; stacks in {run_dir / facts['stacks']}; {what}", flush=True)
    return facts


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 3 and args[0] == "dump":
        return dump(int(args[1]), Path(args[2]))
    # Stopped with SIGTERM when the ranks are done: a mask or "ignore" inherited from whoever started the
    # launcher (a process that held the stop signals, as a rank does at start-up) must not keep it alive
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    from cluster.backends import get_backend
    from jobs.runs import load_config, run_dir_from_args

    run_dir = run_dir_from_args(args, os.environ)
    if run_dir is None:
        return 2
    cfg = load_config(run_dir)
    w = cfg.get("watchdog")
    if w is None or w.timeout_s is None:
        return 0
    limits = Limits(float(w.timeout_s), float(w.startup_timeout_s), float(w.checkpoint_timeout_s))
    c = cfg.cluster
    watch(Path(run_dir), backend=get_backend(str(c.backend)), world_size=int(c.nodes) * int(c.tasks_per_node),
          limits=limits, environ=os.environ)
    return 0


if __name__ == "__main__":
    sys.exit(main())
