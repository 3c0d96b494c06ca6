"""The local backend: start the plan's ranks as processes on this machine, with the environment Slurm gives.

Each rank gets the variables of cluster.rendezvous.SLURM_ENV, as srun would set them, so the rank code derives
its rendezvous the same way on a laptop and on a cluster; `cluster.nodes=2` rehearses a 2-node job here.
`rank_environ` is the one builder of a rank's environment: the launcher starts ranks with it and the dry run
prints it (job.local.sh), so the dry run shows exactly what a rank gets.
The launcher supervises: when one rank fails, the others are stopped, and the failing rank is reported. A stop
(the job's signal, SIGTERM, Ctrl-C) reaches every rank, which checkpoints at the next step boundary and exits
resumable; the launcher waits for that save however long it takes (a second Ctrl-C ends the ranks at once).
Beside the ranks it runs the same hang watchdog the batch host runs on a cluster (jobs/watchdog.py); a hung
attempt is "requeued" by starting the ranks again here, as the next restart of the same job (the decision is the
batch host's, jobs/host.py; the loop that starts them again is jobs/host.py run_in_foreground).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, TextIO

from cluster import quoting, render, rendezvous
from cluster.plan import JobPlan, RankSpec
from cluster.here import local_command
from cluster.preflight import ClusterFacts, Preflight, local_container_problems, plan_problems
from cluster.rendezvous import PORT_OVERRIDE_ENV, SLURM_ENV
from cluster.slurm import TaskFailure
from trainer_core import layout
from trainer_core.contract import EXIT_RESUMABLE, Rendezvous, free_port

LOCAL_HOST = "127.0.0.1"
LOCAL_SCRIPT_NAME = "job.local.sh"
# How long the other ranks get to exit after one failed, before they are killed.
STOP_GRACE_S = 10.0
# How long the other ranks get to follow a rank that exited resumable (they are past the last barrier by then).
RESUMABLE_GRACE_S = 60.0


@dataclass(frozen=True)
class LocalResult:
    returncode: int
    failed_rank: Optional[int]
    logs: dict[int, str]
    job_id: str = "0"
    # rank -> the node name it was given (local0, local1, ...: cluster.nodes rehearsed on this machine)
    nodes: dict[int, str] = dataclasses.field(default_factory=dict)

    def failures(self) -> list[TaskFailure]:
        """The rank that failed, as srun would report it ("Killed", "Segmentation fault", "exit code 1")."""
        if self.failed_rank is None:
            return []
        code = self.returncode
        how = (signal.strsignal(-code) or f"signal {-code}") if code < 0 else f"exit code {code}"
        return [TaskFailure(self.failed_rank, self.nodes.get(self.failed_rank, LOCAL_HOST), how)]


def node_name(spec: RankSpec) -> str:
    return f"local{spec.node_rank}"


def rank_environ(plan: JobPlan, spec: RankSpec, job_id: str, port: int | str,
                 restart_count: int | str = 0) -> dict[str, str]:
    """The variables srun would set for this task, plus zerorun's own: what a local rank gets."""
    facts = {
        "job_id": job_id,
        "global_rank": spec.rank,
        "local_rank": spec.local_rank,
        "node_rank": spec.node_rank,
        "world_size": plan.world_size,
        "num_nodes": plan.nodes,
        "nodelist": LOCAL_HOST,
        "cpus_per_task": plan.cpus_per_task,
        "node_name": node_name(spec),
        "restart_count": restart_count,
    }
    env = {SLURM_ENV[k]: str(v) for k, v in facts.items()}
    env.update(dict(plan.env))
    env[PORT_OVERRIDE_ENV] = str(port)
    return env


def local_commands(plan: JobPlan) -> str:
    """The processes the local backend starts, one shell line each, with the variables each gets (job id and
    port are chosen at start: the launcher's process id and a free port)."""
    lines = [f"cd {quoting.word(plan.workdir)}"]
    for spec in plan.ranks([LOCAL_HOST] * plan.nodes):
        env = rank_environ(plan, spec, "<launcher pid>", "<free port>")  # the first start (restart 0)
        assigns = " ".join(f"{k}={quoting.word(v)}" for k, v in env.items())
        log = quoting.word(f"{plan.run_dir}/{layout.local_rank_log(spec.rank)}")
        lines.append(f"env {assigns} {quoting.join(plan.entry)} >> {log} 2>&1")
    return "\n".join(lines) + "\n"


class LocalBackend:
    name = "local"
    no_requeue: Optional[str] = "a local run: nothing to requeue"
    runs_in_foreground = True

    def script_files(self, plan: JobPlan, ctx: render.RenderContext) -> dict[str, str]:
        return {LOCAL_SCRIPT_NAME: local_commands(plan)}

    def rank_table(self, plan: JobPlan) -> list[render.RankRow]:
        return render.rank_table(plan, [LOCAL_HOST] * plan.nodes, port=render.port_text(plan, "<free port>"))

    def probe(self) -> ClusterFacts:
        return ClusterFacts(error="local backend: no scheduler to ask")

    def preflight(self, plan: JobPlan, facts: ClusterFacts) -> Preflight:
        return Preflight(plan_problems(plan) + local_container_problems(plan), [])

    def ask_scheduler(self, run_dir: str, facts: ClusterFacts, out: TextIO) -> list[str]:
        return []

    def __init__(self) -> None:
        # the launcher's last attempt (rank_failures reads it, as the batch host reads srun's report)
        self.last: Optional[LocalResult] = None

    def launch(self, plan: JobPlan, run_dir: str, out: TextIO, err: TextIO,
               restart_count: int = 0) -> tuple[str, int]:
        """Run the ranks to their end; `restart_count`: the how-manieth start of this job (a hung attempt's
        ranks start again, as a requeued Slurm job does)."""
        result = self.last = run(plan, restart_count=restart_count)
        if result.returncode not in (0, EXIT_RESUMABLE):
            where = f"rank {result.failed_rank}" if result.failed_rank is not None else "the job"
            err.write(f"\nzerorun: {where} failed (exit {result.returncode}); "
                      f"log: {result.logs.get(result.failed_rank or 0)}\n")
            if result.failed_rank:
                err.write(tail(result.logs[result.failed_rank]))
        return result.job_id, result.returncode

    def query(self, job_ids: list[str]) -> dict[str, Any]:
        return {}

    def cancel(self, job_id: str) -> None:
        raise ValueError("a local run is stopped where it runs (Ctrl-C, or SIGTERM to its launcher); it then "
                         "checkpoints and can be continued with resume=RUN_DIR")

    def rank_logs(self, run_dir: Path, job_id: Optional[str]) -> dict[int, Path]:
        return layout.logs_by_rank(run_dir, layout.LOCAL_RANK_LOG.format(rank="*"), "-")

    def rank_contract(self, environ: Mapping[str, str], *, nodes: int, tasks_per_node: int,
                      min_nodes: Optional[int] = None) -> Rendezvous:
        return rendezvous.derive(environ, nodes=nodes, tasks_per_node=tasks_per_node, min_nodes=min_nodes)

    def granted_nodes(self, environ: Mapping[str, str]) -> Optional[int]:
        return None  # the local backend always starts every planned rank

    def job_identity(self, environ: Mapping[str, str]) -> tuple[str, int]:
        return environ.get(SLURM_ENV["job_id"], "0"), rendezvous.restart_count(environ)

    def job_clock(self, environ: Mapping[str, str]) -> None:
        return None

    def requeue(self, environ: Mapping[str, str], exclude: Sequence[str] = ()) -> tuple[bool, str]:
        # Only a hang gets here (a stop is never requeued locally: no_requeue): the launcher starts the ranks again
        if exclude:
            return False, f"a local run has one machine: it cannot leave out {', '.join(exclude)}"
        return True, "the launcher starts the ranks again here"

    def rank_failures(self, environ: Mapping[str, str], run_dir: str) -> list[TaskFailure]:
        return self.last.failures() if self.last is not None else []

    def on_node(self, node: str, argv: list[str], environ: Mapping[str, str], timeout: float) -> tuple[int, str]:
        return local_command(argv, timeout)  # every rank runs on this machine

    def end_ranks(self, environ: Mapping[str, str], pids: Sequence[tuple[str, int]]) -> tuple[bool, str]:
        for _node, pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return True, f"sent SIGKILL to the ranks (pids {', '.join((str(p) for _n, p in pids))})"


def run(plan: JobPlan, base_env: Optional[Mapping[str, str]] = None, restart_count: int = 0) -> LocalResult:
    """Run every rank to completion, the hang watchdog beside them (plan.watchdog). Rank 0 writes to this
    terminal, every rank also to logs/rank-N.log."""
    base = dict(os.environ if base_env is None else base_env)
    # Slurm variables of an enclosing allocation would contradict the ones set per rank.
    base = {k: v for k, v in base.items() if not k.startswith("SLURM_")}
    port = plan.master_port or free_port()
    job_id = str(os.getpid())
    log_dir = Path(plan.run_dir) / layout.LOGS
    log_dir.mkdir(parents=True, exist_ok=True)

    procs: dict[int, subprocess.Popen] = {}
    logs: dict[int, str] = {}
    nodes: dict[int, str] = {}
    files = []
    watchdog: Optional[subprocess.Popen] = None
    # Forwarding starts before any rank does: a signal meanwhile reaches the ranks already started (one is
    # enough: the ranks agree on a stop at the next step).
    try:
        with _forwarding(procs, plan.signal):
            if plan.watchdog:
                # the job's identity as the ranks see it; its output (a hang's one line) goes to this terminal
                # (a session of its own: a Ctrl-C at the terminal is the launcher's to forward, not the watchdog's)
                watchdog = subprocess.Popen(render.watchdog_argv(plan), start_new_session=True, env={
                    **base, SLURM_ENV["job_id"]: job_id, SLURM_ENV["restart_count"]: str(restart_count)})
            for spec in plan.ranks([LOCAL_HOST] * plan.nodes):
                path = Path(plan.run_dir) / layout.local_rank_log(spec.rank)
                logs[spec.rank] = str(path)
                nodes[spec.rank] = node_name(spec)
                f = open(path, "ab")
                files.append(f)
                env = {**base, **rank_environ(plan, spec, job_id, port, restart_count)}
                lead = spec.rank == 0
                procs[spec.rank] = subprocess.Popen(
                    list(plan.entry), env=env, stdout=subprocess.PIPE if lead else f, stderr=subprocess.STDOUT
                )
                if lead:
                    threading.Thread(target=_tee, args=(procs[0].stdout, f), daemon=True).start()
            result = _supervise(procs, logs)
            return LocalResult(result.returncode, result.failed_rank, logs, job_id, nodes)
    except KeyboardInterrupt:  # the second Ctrl-C: the ranks end now
        _stop(procs)
        return LocalResult(130, None, logs, job_id, nodes)
    finally:
        if watchdog is not None:  # as the job script stops it once srun returns
            watchdog.terminate()
            watchdog.wait()
        for f in files:
            f.close()


@contextlib.contextmanager
def _forwarding(procs: dict[int, subprocess.Popen], job_signal: str) -> Iterator[None]:
    """Deliver the job's signal, SIGTERM and the first SIGINT to every rank, as Slurm delivers a signal to
    every task: each rank then checkpoints at the next step boundary and stops (a rehearsal of preemption on
    this machine). The launcher keeps waiting for that save; a second SIGINT raises KeyboardInterrupt."""
    signums = {getattr(signal, "SIG" + job_signal.upper().removeprefix("SIG")), signal.SIGTERM, signal.SIGINT}
    interrupts = [0]

    def forward(signum: int, frame: object) -> None:
        if signum == signal.SIGINT:
            interrupts[0] += 1
            if interrupts[0] > 1:
                raise KeyboardInterrupt
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in signums}
    # a process that started this one may have blocked them (a mask is inherited through fork and exec): the
    # launcher must receive the stop it forwards
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, signums)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
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
    """Wait for the ranks. A rank that fails ends the others; ranks that exit resumable (a stop saved) are all
    waited for, then the job is resumable."""
    resumable_since: Optional[float] = None
    while True:
        codes = {r: p.poll() for r, p in procs.items()}
        failed = [r for r, c in codes.items() if c not in (None, 0, EXIT_RESUMABLE)]
        if failed:
            rank = min(failed)
            _stop(procs)
            return LocalResult(codes[rank] or 1, rank, logs)
        if all(c is not None for c in codes.values()):
            return LocalResult(EXIT_RESUMABLE if EXIT_RESUMABLE in codes.values() else 0, None, logs)
        if EXIT_RESUMABLE in codes.values():
            resumable_since = resumable_since or time.monotonic()
            if time.monotonic() - resumable_since > RESUMABLE_GRACE_S:
                _stop(procs)
                return LocalResult(EXIT_RESUMABLE, None, logs)
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


