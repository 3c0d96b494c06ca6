"""What the job script runs on the batch host once every rank has exited (`python -m jobs.host after ...`), and
what the local backend runs in the launching process: read how the ranks ended, decide what follows, record it.

- Every rank exited 0: the run completed (the ranks recorded it); nothing to do.
- The ranks exited resumable (trainer_core.contract.EXIT_RESUMABLE): they stopped on a signal and checkpointed.
  Why the signal came (preemption, time limit, scancel) is read here from the scheduler (the backend's job
  clock), the requeue decision is the pure `cluster.requeue.decide`, and the one side effect is the backend's
  requeue. The decision is appended to the run's attempts record as a "requeue" event.
- The hang watchdog (jobs/watchdog.py) recorded this attempt as hung and ended its ranks: requeued, unless an
  earlier attempt hung at the same step (the run ends instead of looping).
- A rank's node failed its health check (trainer_core/health.py, a bad_node event): requeued with that node
  excluded (the job's excluded-node list, with the run's earlier ones), up to requeue.max_excluded_nodes.
- A rank died of a signal that may belong to its node (SIGKILL, SIGSEGV, SIGBUS: cluster.requeue.NODE_SIGNALS,
  read from the launcher's report): its node is recorded as a bad node (the rank and the signal are the reason)
  and the job requeued without it, the same way and within the same limit; when no node can be spared the job
  fails, naming the rank, its node and the signal.
- Anything else: the job failed. So does a job in which not every rank started (a launch failure that the
  launcher itself did not report): the script exits non-zero and the scheduler records the job as failed.

This runs outside the ranks (and outside any container they run in), where the scheduler's commands are.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, Union

from cluster import requeue
from cluster.backends import Backend, get_backend
from cluster.rendezvous import SLURM_ENV
from cluster.slurm import TaskFailure
from trainer_core import attempts
from trainer_core.contract import EXIT_BAD_NODE, EXIT_RESUMABLE


@dataclass(frozen=True)
class After:
    exit_code: int
    # what the job's log and the record say about it ("" when the run simply completed)
    message: str
    # the job goes back into the queue (a foreground launcher starts its ranks again)
    requeued: bool = False


def started_ranks(events: list[dict], job_id: str, restart_count: int) -> set[int]:
    """The ranks that reported their start in this attempt of the job (jobs/rank.py writes one event each)."""
    return {int(e["rank"]) for e in events if e["event"] == "rank_start" and str(e.get("job_id")) == job_id
            and int(e.get("restart_count") or 0) == restart_count}


def after_ranks(run_dir: str, ranks_status: int, *, backend: Backend, world_size: int, job_signal: str,
                signal_delay_s: int, max_timeouts: int, max_preemptions: Optional[int], requeue_enabled: bool,
                environ: Mapping[str, str], watchdog_requeue: bool = True,
                max_excluded_nodes: Union[int, Callable[[], int]] = 0) -> After:
    events = attempts.read(run_dir)
    job_id, restart = backend.job_identity(environ)
    hang = attempts.hang_of(events, job_id, restart)
    if hang is not None:
        return after_hang(run_dir, hang, events, backend=backend, environ=environ,
                          requeue_enabled=requeue_enabled and watchdog_requeue, max_excluded_nodes=max_excluded_nodes)
    bad = attempts.bad_nodes_of(events, job_id, restart)
    if bad:
        return after_bad_nodes(run_dir, bad, events, backend=backend, environ=environ,
                               requeue_enabled=requeue_enabled, max_excluded_nodes=max_excluded_nodes)
    missing = sorted(set(range(world_size)) - started_ranks(events, job_id, restart))
    if missing and ranks_status != EXIT_RESUMABLE:
        shown = ", ".join(map(str, missing[:16])) + (" ..." if len(missing) > 16 else "")
        why = (f"{len(missing)} of {world_size} ranks never started (rank {shown}); the launcher's exit status was "
               f"{ranks_status}: see the job's batch log")
        attempts.append(run_dir, "failed", job_id=job_id, exit_code=ranks_status or 1, reason=why, ranks=missing)
        return After(ranks_status or 1, why)
    if ranks_status == 0:
        return After(0, "")
    if ranks_status != EXIT_RESUMABLE:
        return after_dead_rank(run_dir, ranks_status, events, backend=backend, environ=environ,
                               requeue_enabled=requeue_enabled, max_excluded_nodes=max_excluded_nodes,
                               world_size=world_size)

    current = attempts.current(events)
    stop = current.stop if current else None
    cause = "terminated"
    if stop is not None:
        signal_name = stop.get("signal") or job_signal
        clock = backend.job_clock(environ)
        if clock is None and backend.no_requeue:
            # no scheduler clock to read: the local launcher forwards the job's signal to rehearse a preemption
            cause = "preemption" if signal_name == requeue.signal_name(job_signal) else "terminated"
        else:
            cause = requeue.stop_cause(signal_name, requeue.signal_name(job_signal), stop.get("at") or 0.0, clock,
                                       signal_delay_s)
    counts = attempts.requeue_counts(events)
    decision = requeue.decide(
        cause, checkpointed=current is not None and current.checkpoint_step is not None,
        timeouts_so_far=counts["timeout"], max_timeouts=max_timeouts,
        preemptions_so_far=counts["preemption"], max_preemptions=max_preemptions,
        no_requeue=backend.no_requeue or (None if requeue_enabled else "cluster.requeue=false: not requeued"),
    )
    requeued, reason, code = decision.requeue, decision.reason, decision.exit_code
    if decision.requeue:
        ok, what = backend.requeue(environ)
        if not ok:
            requeued, code = False, EXIT_RESUMABLE
            reason = f"{what}; the run is resumable with resume={run_dir}"
    step = current.checkpoint_step if current else None
    attempts.append(run_dir, "requeue", cause=cause, requeued=requeued, reason=reason, step=step, exit_code=code)
    return After(code, f"stopped at step {step} ({cause}): {reason}")


def after_dead_rank(run_dir: str, ranks_status: int, events: list[dict], *, backend: Backend,
                    environ: Mapping[str, str], requeue_enabled: bool,
                    max_excluded_nodes: Union[int, Callable[[], int]], world_size: int = 0) -> After:
    """A rank failed. The launcher's report names the one that failed first; a signal that may belong to its
    node (requeue.node_signal) makes the node a bad node, and the job is requeued without it when it can be."""
    job_id, restart = backend.job_identity(environ)
    failures = backend.rank_failures(environ, run_dir)
    first = failures[0] if failures else None
    if first is None and world_size == 1 and ranks_status > 128:
        # a one-task step that died of a signal: srun names no task, it dies of the same signal (128 + N)
        start = [e for e in events if e["event"] == "rank_start" and str(e.get("job_id")) == job_id
                 and int(e.get("restart_count") or 0) == restart]
        if start and start[-1].get("node"):
            sig = ranks_status - 128
            first = TaskFailure(0, str(start[-1]["node"]), signal.strsignal(sig) or f"signal {sig}")
    signal_name = requeue.node_signal(first.how) if first else None
    if first is not None and signal_name is not None:
        reason = f"rank {first.rank} was killed by {signal_name} ({first.how})"
        attempts.append(run_dir, "bad_node", node=first.host, rank=first.rank, job_id=job_id, restart_count=restart,
                        reason=reason, signal=signal_name, cause="signal")
        return after_bad_nodes(run_dir, {first.host: reason}, events, backend=backend, environ=environ,
                               requeue_enabled=requeue_enabled, max_excluded_nodes=max_excluded_nodes,
                               exit_code=ranks_status, what=f"rank {first.rank} on {first.host} died of {signal_name}",
                               facts={"rank": first.rank, "node": first.host, "how": f"{first.how} ({signal_name})"})
    named = f"rank {first.rank} on {first.host}: {first.how}" if first else f"exit status {ranks_status}"
    why = f"a rank failed ({named}); `zerorun status {run_dir}` shows its log"
    attempts.append(run_dir, "failed", job_id=job_id, exit_code=ranks_status, reason=why,
                    **({"rank": first.rank, "node": first.host, "how": first.how} if first else {}))
    return After(ranks_status, why)


def after_hang(run_dir: str, hang: dict, events: list[dict], *, backend: Backend, environ: Mapping[str, str],
               requeue_enabled: bool, max_excluded_nodes: Union[int, Callable[[], int]] = 0) -> After:
    """The watchdog found this attempt hung and ended its ranks: requeue it (it resumes from the run's latest
    checkpoint), unless an earlier attempt hung at the same step (it would loop) or requeues are off. A hang
    that began on one node only leaves that node out of the requeue, while requeue.max_excluded_nodes allows."""
    step = hang.get("step")
    what = attempts.describe_hang(hang, run_dir)
    again = [e for e in events if e["event"] == "hung" and e.get("step") == step and e is not hang
             and (str(e.get("job_id")), int(e.get("restart_count") or 0)) != (str(hang.get("job_id")),
                                                                                int(hang.get("restart_count") or 0))]
    why = ""
    if again:
        why = f"it hung at step {step} before (job {again[0].get('job_id')}): not requeued to hang again"
    elif not requeue_enabled:
        why = "requeues are off (cluster.requeue=false or watchdog.requeue=false)"
    if not why:
        before = attempts.excluded_nodes(events)
        exclude = before
        if len(hang.get("nodes") or []) == 1:
            limit = max_excluded_nodes() if callable(max_excluded_nodes) else max_excluded_nodes
            wider = sorted(set(before) | set(hang["nodes"]))
            exclude = wider if len(wider) <= limit else before
        ok, said = backend.requeue(environ, exclude)
        if ok:
            left_out = f", without {', '.join(exclude)}" if exclude else ""
            attempts.append(run_dir, "requeue", cause="hang", requeued=True, step=step, exit_code=0, excluded=exclude,
                            reason=f"{what}; resumes from the run's latest checkpoint{left_out}")
            return After(0, f"{what}; requeued{left_out}", requeued=True)
        why = said
    attempts.append(run_dir, "failed", job_id=str(hang.get("job_id")), exit_code=1, reason=f"{what}; {why}")
    return After(1, f"{what}; {why}")


def after_bad_nodes(run_dir: str, bad: dict[str, str], events: list[dict], *, backend: Backend,
                    environ: Mapping[str, str], requeue_enabled: bool,
                    max_excluded_nodes: Union[int, Callable[[], int]], exit_code: int = EXIT_BAD_NODE,
                    what: str = "", facts: Optional[dict] = None) -> After:
    """Ranks found their node unfit (trainer_core/health.py), or a rank died of a signal that may belong to its
    node: requeue the job without those nodes and the ones excluded before, while the run stays within
    requeue.max_excluded_nodes. Not requeued, the job ends with `exit_code`."""
    job_id = backend.job_identity(environ)[0]
    before = attempts.excluded_nodes(events)
    exclude = sorted(set(before) | set(bad))
    what = what or "; ".join(f"node {n} failed its health check: {why}" for n, why in sorted(bad.items()))
    if callable(max_excluded_nodes):
        max_excluded_nodes = max_excluded_nodes()
    if len(exclude) > max_excluded_nodes:
        why = (f"excluding {', '.join(exclude)} would leave out {len(exclude)} nodes, more than "
               f"requeue.max_excluded_nodes={max_excluded_nodes}")
    elif backend.no_requeue:
        why = backend.no_requeue
    elif not requeue_enabled:
        why = "cluster.requeue=false: not requeued"
    else:
        ok, said = backend.requeue(environ, exclude)
        if ok:
            attempts.append(run_dir, "requeue", cause="bad_node", requeued=True, exit_code=0, excluded=exclude,
                            bad_nodes=bad, reason=f"{what}; requeued without {', '.join(exclude)} ({said})")
            return After(0, f"{what}; requeued without {', '.join(exclude)}", requeued=True)
        why = said
    attempts.append(run_dir, "failed", job_id=job_id, exit_code=exit_code, reason=f"{what}; not requeued: {why}",
                    **(facts or {}))
    return After(exit_code, f"{what}; not requeued: {why}")


def run_in_foreground(cfg, plan, backend: Backend, run_dir: str, out, err) -> int:  # type: ignore[no-untyped-def]
    """A foreground backend (the local one): run the job here to its end. When its ranks do not all complete,
    this is the batch host: what follows is decided as there, and a requeued job (a hang) starts again here as
    the next restart of the same job, resuming from the run's latest checkpoint. Returns the job's exit status."""
    import os

    restart = 0
    while True:
        job_id, rc = backend.launch(plan, run_dir, out, err, restart_count=restart)
        if rc == 0:
            return 0
        w = getattr(cfg, "watchdog", None)
        after = after_ranks(
            run_dir, rc, backend=backend, world_size=plan.world_size, job_signal=plan.signal,
            signal_delay_s=plan.signal_delay_s, max_timeouts=int(cfg.requeue.max_timeouts),
            max_preemptions=cfg.requeue.max_preemptions, requeue_enabled=plan.requeue,
            environ={**os.environ, SLURM_ENV["job_id"]: job_id, SLURM_ENV["restart_count"]: str(restart)},
            watchdog_requeue=bool(getattr(w, "requeue", True)) if w is not None else True)
        err.write(f"\nzerorun: {after.message}\nrun folder: {run_dir}\n")
        if not after.requeued:
            return after.exit_code
        restart += 1
        err.write(f"zerorun: starting the ranks again (restart {restart}), from the run's latest checkpoint\n")


def max_excluded(cfg, backend_name: str) -> int:
    """requeue.max_excluded_nodes, or when null what the job's partition spares (its nodes minus the job's, as
    the scheduler says now; 0 when it does not answer)."""
    set_to = cfg.requeue.get("max_excluded_nodes")
    if set_to is not None:
        return int(set_to)
    facts = get_backend(backend_name).probe()
    nodes = facts.partitions.get(cfg.cluster.partition or facts.default_partition or "", ())
    return max(0, len(nodes) - int(cfg.cluster.nodes))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m jobs.host after STATUS RUN_DIR` or `... after STATUS --array SWEEP_INDEX_FILE`."""
    import os

    from jobs.runs import load_config, run_dir_from_args
    from trainer_core.contract import DEFAULT_SIGNAL, SIGNAL_ENV
    from trainer_core.signals import StopSignals

    # `scontrol requeue` ends the job's batch script, this step included, with SIGTERM (SIGKILL after KillWait):
    # the stop signals are held so that what follows the requeue (the excluded nodes, the record) is done
    StopSignals(os.environ.get(SIGNAL_ENV, DEFAULT_SIGNAL)).hold()

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[0] != "after" or not args[1].lstrip("-").isdigit():
        print("usage: python -m jobs.host after STATUS RUN_DIR | ... after STATUS --array SWEEP_INDEX_FILE",
              file=sys.stderr)
        return 2
    status = int(args[1])
    run_dir = run_dir_from_args(args[2:], os.environ)
    if run_dir is None:
        return status or 3
    cfg = load_config(run_dir)
    c = cfg.cluster
    backend = get_backend(str(c.backend))
    # the nodes granted (cluster.min_nodes: any count up to cluster.nodes), as the ranks derive them
    nodes = backend.granted_nodes(os.environ) or int(c.nodes)
    result = after_ranks(run_dir, status, backend=backend,
                         world_size=nodes * int(c.tasks_per_node), job_signal=str(c.signal),
                         signal_delay_s=int(c.signal_delay_s), max_timeouts=int(cfg.requeue.max_timeouts),
                         max_preemptions=cfg.requeue.max_preemptions, requeue_enabled=bool(c.get("requeue", True)),
                         environ=os.environ, watchdog_requeue=bool(cfg.get("watchdog", {}).get("requeue", True)),
                         max_excluded_nodes=lambda: max_excluded(cfg, backend_name=str(c.backend)))
    if result.message:
        print(f"zerorun: {result.message}", flush=True)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
