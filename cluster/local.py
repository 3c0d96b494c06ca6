"""The local backend: start the plan's ranks as processes on this machine, with the environment Slurm gives.

Each rank gets the variables of cluster.rendezvous.SLURM_ENV, as srun would set them, so the rank code derives
its rendezvous the same way on a laptop and on a cluster; `cluster.nodes=2` rehearses a 2-node job here.
The launcher supervises: when one rank fails, the others are stopped, and the failing rank is reported.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional

from cluster.plan import JobPlan, RankSpec
from cluster.rendezvous import PORT_OVERRIDE_ENV, SLURM_ENV

LOCAL_HOST = "127.0.0.1"
# How long the other ranks get to exit after one failed, before they are killed.
STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class LocalResult:
    returncode: int
    failed_rank: Optional[int]
    logs: dict[int, str]


def rank_environ(plan: JobPlan, spec: RankSpec, job_id: str, port: int) -> dict[str, str]:
    """The variables srun would set for this task, plus zerorun's own."""
    facts = {
        "job_id": job_id,
        "global_rank": spec.rank,
        "local_rank": spec.local_rank,
        "node_rank": spec.node_rank,
        "world_size": plan.world_size,
        "num_nodes": plan.nodes,
        "nodelist": LOCAL_HOST,
        "cpus_per_task": plan.cpus_per_task,
    }
    env = {SLURM_ENV[k]: str(v) for k, v in facts.items()}
    env.update(dict(plan.env))
    env[PORT_OVERRIDE_ENV] = str(port)
    env["ZERORUN_BACKEND"] = "local"
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCAL_HOST, 0))
        return s.getsockname()[1]


def run(plan: JobPlan, base_env: Optional[Mapping[str, str]] = None) -> LocalResult:
    """Run every rank to completion. Rank 0 writes to this terminal, every rank also to logs/rank-N.log."""
    base = dict(os.environ if base_env is None else base_env)
    # Slurm variables of an enclosing allocation would contradict the ones set per rank.
    base = {k: v for k, v in base.items() if not k.startswith("SLURM_")}
    port = plan.master_port or free_port()
    job_id = str(os.getpid())
    log_dir = Path(plan.run_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    procs: dict[int, subprocess.Popen] = {}
    logs: dict[int, str] = {}
    files = []
    # Forwarding starts before any rank does: a signal meanwhile reaches the ranks already started (one is
    # enough: the ranks agree on a stop at the next step).
    try:
        with _forwarding(procs, plan.signal):
            for spec in plan.ranks([LOCAL_HOST] * plan.nodes):
                path = log_dir / f"rank-{spec.rank}.log"
                logs[spec.rank] = str(path)
                f = open(path, "ab")
                files.append(f)
                env = {**base, **rank_environ(plan, spec, job_id, port)}
                lead = spec.rank == 0
                procs[spec.rank] = subprocess.Popen(
                    list(plan.entry), env=env, stdout=subprocess.PIPE if lead else f, stderr=subprocess.STDOUT
                )
                if lead:
                    threading.Thread(target=_tee, args=(procs[0].stdout, f), daemon=True).start()
            return _supervise(procs, logs)
    except KeyboardInterrupt:
        _stop(procs)
        return LocalResult(130, None, logs)
    finally:
        for f in files:
            f.close()


@contextlib.contextmanager
def _forwarding(procs: dict[int, subprocess.Popen], job_signal: str) -> Iterator[None]:
    """Deliver the job's signal and SIGTERM to every rank, as Slurm delivers them to every task: each rank
    then checkpoints at the next step boundary and stops (a rehearsal of preemption on this machine)."""
    signums = {getattr(signal, "SIG" + job_signal.upper().removeprefix("SIG")), signal.SIGTERM}

    def forward(signum: int, frame: object) -> None:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _tee(source, log_file) -> None:  # type: ignore[no-untyped-def]
    """Copy rank 0's output to this terminal and to its log file."""
    out = sys.stdout.buffer
    for chunk in iter(lambda: source.read1(65536), b""):
        out.write(chunk)
        out.flush()
        log_file.write(chunk)
        log_file.flush()


def _supervise(procs: dict[int, subprocess.Popen], logs: dict[int, str]) -> LocalResult:
    while True:
        codes = {r: p.poll() for r, p in procs.items()}
        failed = [r for r, c in codes.items() if c not in (None, 0)]
        if failed:
            rank = min(failed)
            _stop(procs)
            return LocalResult(codes[rank] or 1, rank, logs)
        if all(c == 0 for c in codes.values()):
            return LocalResult(0, None, logs)
        time.sleep(0.2)


def _stop(procs: dict[int, subprocess.Popen]) -> None:
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs.values():
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def tail(path: str, lines: int = 20) -> str:
    try:
        return "".join(Path(path).read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return ""

