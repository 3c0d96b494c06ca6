"""`zerorun status | logs | cancel`: follow submitted runs. Each verb takes a run folder or a Slurm job id.

A run folder knows its job from submission.json; a job id finds its run folder under the runs folder, else where
Slurm says the job ran (its working directory is the run folder). States come from the run's backend
(cluster/backends/); a failed job names the rank that failed first, from srun's report in the job's batch log,
from the batch host's record, or else from the rank logs that end in a Python traceback.
Imports nothing of the training stack.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TextIO

from cluster import table
from cluster.backends import get_backend
from jobs import chains, snapshot
from trainer_core import attempts, layout

FOLLOW_POLL_S = 0.5
STATE_POLL_S = 2.0
_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*)$", re.MULTILINE)


@dataclass(frozen=True)
class Target:
    run_dir: Optional[Path]
    job_id: Optional[str]
    # "submitted" (a job id was recorded), "run here" (a foreground backend ran it), "dry-run"
    kind: str
    # the run's backend (cluster.backend of its config)
    backend: str = "slurm"


def default_runs_dir() -> Path:
    return Path(os.environ.get("ZERORUN_RUNS", "runs"))


def _kind(run_dir: Path) -> str:
    if (run_dir / snapshot.RECORD_NAME).exists():
        return "submitted"
    if (run_dir / layout.ATTEMPTS).exists() or (run_dir / layout.METRICS).exists():
        return "run here"
    return "dry-run"


def _backend_name(run_dir: Optional[Path]) -> str:
    if run_dir is None:
        return "slurm"
    try:
        from jobs.runs import load_config

        return str(load_config(run_dir).cluster.backend)
    except Exception:  # a half-written or foreign folder
        return "slurm"


def find_runs(runs_dir: Path) -> list[Path]:
    """Run folders under the runs folder (runs_dir/name/run_id holding a config.yaml), oldest first."""
    found = [p.parent for p in runs_dir.glob(f"*/*/{layout.CONFIG}")]
    return sorted(found, key=lambda p: (p.stat().st_mtime, str(p)))


def resolve(target: str, runs_dir: Path) -> Target:
    """A run folder or a job id -> the run folder and its job."""
    path = Path(target)
    if path.is_dir():
        if not (path / layout.CONFIG).exists():
            raise SystemExit(f"zerorun: {target} is not a zerorun run folder (it has no {layout.CONFIG})")
        record = snapshot.read_record(path)
        return Target(path.resolve(), record.job_id if record else None, _kind(path), _backend_name(path))
    if target.isdigit():
        for run_dir in reversed(find_runs(runs_dir)):
            history = run_dir / snapshot.HISTORY_NAME
            if history.exists() and re.search(rf'"job_id": "{target}"', history.read_text(errors="replace")):
                return Target(run_dir.resolve(), target, "submitted", _backend_name(run_dir))
        # submitted with another cluster.runs_dir: Slurm knows where the job ran
        from cluster.slurm import work_dir

        where = work_dir(target)
        if where and (Path(where) / layout.CONFIG).exists():
            return Target(Path(where).resolve(), target, "submitted", _backend_name(Path(where)))
        return Target(None, target, "submitted")
    raise SystemExit(f"zerorun: {target!r} is neither a run folder nor a job id; give a path such as "
                     f"{runs_dir}/NAME/RUN_ID or the number sbatch printed")


def last_error(log_text: str) -> Optional[str]:
    """The exception line of the last Python traceback in a log, if any."""
    if "Traceback (most recent call last)" not in log_text:
        return None
    tail = log_text[log_text.rindex("Traceback (most recent call last)"):]
    errors = _ERROR_LINE.findall(tail)
    return errors[-1][0].strip() if errors else "a Python exception"


def rank_logs(run_dir: Path, job_id: Optional[str], backend: str = "slurm") -> dict[int, Path]:
    """rank -> its log file, as the run's backend names them."""
    return get_backend(backend).rank_logs(run_dir, job_id)


def failing_rank(run_dir: Path, job_id: Optional[str], backend: str = "slurm") -> Optional[tuple[int, str]]:
    """(rank, what happened) of the rank that failed first, from srun's report, else from the rank logs."""
    from cluster.slurm import read_failures

    logs = rank_logs(run_dir, job_id, backend)
    errors = {r: last_error(p.read_text(errors="replace")) for r, p in logs.items()}
    if job_id:
        failures = read_failures(run_dir, job_id)
        if failures:
            f = failures[0]
            return f.rank, f"{f.how} on {f.host}" + (f": {errors[f.rank]}" if errors.get(f.rank) else "")
    for rank, error in errors.items():
        if error:
            return rank, error
    return None


def member_outcome(run_dir: str | Path) -> str:
    """What ended a run's last attempt, in one short line for a sweep's table: "HUNG at step 29 (training):
    rank 1 on n2; stacks RUN/stacks/41-0", "rank 1 on n2: Killed (SIGKILL)", "rank 0 on n1: exit code 1";
    "" when the record names no rank (still running, completed, or an older record)."""
    events = attempts.read(run_dir)
    last = attempts.current(events)
    if last is None:
        return ""
    if last.hang and not last.requeued:
        h = last.hang
        stacks = f"; stacks {Path(run_dir) / h['stacks']}" if h.get("stacks") else ""
        return (f"HUNG at step {h.get('step')} ({h.get('phase')}): rank {', '.join(map(str, h.get('ranks') or []))} "
                f"on {', '.join(h.get('nodes') or []) or '?'}{stacks}")
    failed = [e for e in events if e["event"] == "failed" and str(e.get("job_id")) == last.job_id]
    if failed and failed[-1].get("rank") is not None:
        f = failed[-1]
        return f"rank {f['rank']} on {f.get('node', '?')}: {f.get('how', 'failed')}"
    return ""


def _print_table(columns: Sequence[str], rows: list[Sequence[str]], out: TextIO) -> None:
    table.show(columns, rows, out)


def _geometry(run_dir: Optional[Path]) -> str:
    if run_dir is None:
        return ""
    try:
        from jobs.runs import load_config

        c = load_config(run_dir).cluster
        return f"{c.nodes}x{c.tasks_per_node}"
    except Exception:  # a half-written or foreign folder: the row still shows what is known
        return "?"


def status(argv: list[str], out: TextIO = sys.stdout,
           sweeps: Optional[Callable[[Path, TextIO, bool], int]] = None) -> int:
    """`sweeps(runs_dir, out, gap)`: with no target, what lists the sweeps after the runs (the command line hands
    in jobs.sweeps.verbs.overview; returns how many it showed)."""
    p = argparse.ArgumentParser(prog="zerorun status", description="The state of submitted runs, one row per job.")
    p.add_argument("target", nargs="?", help="a run folder or a Slurm job id (default: every run and sweep under "
                   "--runs-dir)")
    p.add_argument("--runs-dir", type=Path, default=default_runs_dir(), help="where runs are (default: $ZERORUN_RUNS or ./runs)")
    args = p.parse_args(argv)
    if args.target:
        targets = [resolve(args.target, args.runs_dir)]
    else:
        targets = [resolve(str(d), args.runs_dir) for d in find_runs(args.runs_dir)]
        if not targets:
            if not (sweeps and sweeps(args.runs_dir, out, False)):
                out.write(f"zerorun: no runs or sweeps under {args.runs_dir} (set --runs-dir or ZERORUN_RUNS)\n")
            return 0
    states: dict = {}
    for name in sorted({t.backend for t in targets}):
        states.update(get_backend(name).query([t.job_id for t in targets if t.job_id and t.backend == name]))
    rows = []
    for t in targets:
        st = states.get(t.job_id or "")
        state = st.state if st else {"run here": "LOCAL", "dry-run": "DRY RUN"}.get(t.kind, "UNKNOWN")
        if t.kind == "run here" and t.run_dir and (t.run_dir / layout.METRICS).exists():
            state = "LOCAL DONE"
        events = attempts.read(t.run_dir) if t.run_dir else []
        detail = ""
        if st and st.state in ("PENDING", "REQUEUED", "UNKNOWN"):
            detail = st.reason
        resumable = attempts.resumable(events)
        last = attempts.current(events)
        if resumable and (not st or st.finished):
            # the run checkpointed and stopped without a requeue: not a failure, a run waiting for resume=
            state, detail = "RESUMABLE", f"{resumable}; continue with resume={t.run_dir}"
        elif t.run_dir and (not st or st.finished or st.state == "COMPLETING") and state != "COMPLETED":
            failed = failing_rank(t.run_dir, t.job_id, t.backend)
            if last is not None and last.failure and (failed is None or "never started" in last.failure):
                state, detail = "FAILED", last.failure
            elif failed:
                detail = f"rank {failed[0]} failed: {failed[1]}"
        hangs = [a for a in attempts.attempts(events) if a.hang]
        if hangs and last is not None and last.hang and (not st or st.finished) and not last.requeued:
            state, detail = "HUNG", last.failure or attempts.describe_hang(last.hang, t.run_dir or "")
        elif hangs and not detail:
            h = hangs[-1]
            detail = f"attempt {h.number} {attempts.describe_hang(h.hang, t.run_dir or '')}; requeued"
        waited = chain_detail(t, st)
        if waited:
            detail = "; ".join(x for x in (detail, waited) if x) if st and st.state == "PENDING" else waited
        excluded = attempts.excluded_nodes(events)
        if excluded:
            detail = "; ".join(x for x in (detail, f"excluded nodes: {', '.join(excluded)}") if x)
        if not detail and st and st.finished and st.exit_code not in ("", "0:0"):
            detail = f"exit {st.exit_code}"
        rows.append([t.job_id or "-", state, _geometry(t.run_dir), st.elapsed if st else "",
                     _attempts_cell(events), detail, str(t.run_dir) if t.run_dir else "(run folder not found)"])
    _print_table(("JOB", "STATE", "NODESxTASKS", "ELAPSED", "ATTEMPTS", "DETAIL", "RUN FOLDER"), rows, out)
    if not args.target and sweeps is not None:
        sweeps(args.runs_dir, out, True)
    if args.target and targets[0].run_dir:
        runs = attempts.attempts(attempts.read(targets[0].run_dir))
        if runs:
            out.write("\n")
            _print_table(("ATTEMPT", "JOB", "RANKS", "GLOBAL BATCH", "RESUMED FROM", "SIGNAL", "CHECKPOINT",
                          "OUTCOME"),
                         [_attempt_row(a) for a in runs], out)
        t = targets[0]
        st = states.get(t.job_id or "")
        if st is not None and st.finished and st.state != "COMPLETED":
            _print_failed_rank_tail(t, out)
        from jobs.evaluation import show_evaluations

        show_evaluations(t.run_dir, out)
    return 0


def chain_detail(t: Target, st: Optional[Any]) -> str:
    """What a job with cluster.after waits for while pending, or why it was cancelled without running (a
    dependency that failed: kill-on-invalid-dep); "" otherwise."""
    if t.run_dir is None or st is None or st.state not in ("PENDING", "CANCELLED"):
        return ""
    record = snapshot.read_record(t.run_dir)
    if record is None or not record.dependency:
        return ""
    if st.state == "PENDING":
        return f"waits for {record.dependency} (cluster.after)"
    return chains.explain_cancel(record.dependency, get_backend(t.backend).query) or ""


# lines of a failed rank's log `zerorun status RUN` shows
FAILED_LOG_LINES = 5


def _print_failed_rank_tail(t: Target, out: TextIO) -> None:
    """The last lines of the log of the rank that failed first (what srun reported for it: node, signal or exit
    code), so a dead rank is named with what it said last."""
    failed = failing_rank(t.run_dir, t.job_id, t.backend)
    if failed is None:
        return
    path = rank_logs(t.run_dir, t.job_id, t.backend).get(failed[0])
    lines = [ln for ln in (path.read_text(errors="replace").splitlines() if path else []) if ln.strip()]
    out.write(f"\nrank {failed[0]} failed: {failed[1]}; the last lines of its log ({path}):\n")
    out.write("".join(f"  {ln[-200:]}\n" for ln in lines[-FAILED_LOG_LINES:]) or "  (empty)\n")


def _attempts_cell(events: list[dict]) -> str:
    """How many attempts the run had and the step each later one resumed from: "3 (from 25, 96)"."""
    runs = attempts.attempts(events)
    if not runs:
        return ""
    resumed = [str(a.resumed_from_step) for a in runs if a.resumed_from_step is not None]
    return f"{len(runs)}" + (f" (from {', '.join(resumed)})" if resumed else "")


def _attempt_row(a: attempts.Attempt) -> list[str]:
    if a.hang:
        outcome = attempts.describe_hang(a.hang) + ("; requeued" if a.requeued else f"; {a.failure or 'ended'}")
    elif a.bad_nodes and a.requeued:
        outcome = (f"bad node {', '.join(f'{n} ({why})' for n, why in a.bad_nodes.items())}; requeued excluding "
                   f"{', '.join(a.excluded)}")
    elif a.failure:
        outcome = f"failed: {a.failure}"
    elif a.requeued:
        outcome = f"requeued: {a.requeue}"
    elif a.requeue:
        outcome = f"stopped: {a.requeue}"
    elif a.end:
        outcome = f"{a.end} at step {a.end_step}"
    else:
        outcome = "running, or ended without a record (killed)"
    batch = "-" if a.global_batch is None else str(a.global_batch)
    if a.accumulate_grad_batches and a.accumulate_grad_batches > 1:
        batch += f" ({a.accumulate_grad_batches} accumulated)"
    return [str(a.number), a.job_id, "-" if a.world_size is None else str(a.world_size), batch,
            "-" if a.resumed_from_step is None else str(a.resumed_from_step),
            ", ".join(a.signals) or "-", "-" if a.checkpoint_step is None else str(a.checkpoint_step), outcome]


def _log_path(t: Target, run_dir: Path, rank: Optional[int], batch: bool) -> tuple[Path, str]:
    if batch:
        if not t.job_id:
            raise SystemExit("zerorun: --batch needs a Slurm job; this run ran on the local backend")
        return run_dir / layout.batch_log(t.job_id), "batch script"
    if rank is None:
        failed = failing_rank(run_dir, t.job_id, t.backend)
        rank = failed[0] if failed else 0
    logs = rank_logs(run_dir, t.job_id, t.backend)
    path = logs.get(rank)
    if path is None:
        expected = layout.rank_log(t.job_id, rank) if t.job_id else layout.local_rank_log(rank)
        path = run_dir / expected
    return path, f"rank {rank}"


def logs(argv: list[str], out: TextIO = sys.stdout) -> int:
    p = argparse.ArgumentParser(prog="zerorun logs", description="Print a rank's log (default: the rank that "
                                "failed first, else rank 0).")
    p.add_argument("target", help="a run folder or a Slurm job id")
    p.add_argument("--rank", type=int, default=None, help="which rank's log")
    p.add_argument("--batch", action="store_true", help="the batch script's log (setup lines, srun's report)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    p.add_argument("--runs-dir", type=Path, default=default_runs_dir())
    args = p.parse_args(argv)
    t = resolve(args.target, args.runs_dir)
    if t.run_dir is None:
        print(f"zerorun: no run folder under {args.runs_dir} records job {t.job_id}; pass the run folder, or "
              "--runs-dir where it is", file=sys.stderr)
        return 1
    path, what = _log_path(t, t.run_dir, args.rank, args.batch)
    print(f"==> {what}: {path}", file=sys.stderr)
    offset = 0
    if path.exists():
        offset = _copy(path, 0, out)
    elif not args.follow:
        print(f"zerorun: {path} does not exist (yet): the job may still be pending (zerorun status {t.job_id or t.run_dir})",
              file=sys.stderr)
        return 1
    if args.follow and t.job_id:
        backend = get_backend(t.backend)
        next_state = 0.0
        while True:
            offset = _copy(path, offset, out) if path.exists() else offset
            if time.monotonic() >= next_state:
                st = backend.query([t.job_id])[t.job_id]
                if st.finished or st.state == "UNKNOWN":
                    if path.exists():
                        _copy(path, offset, out)
                    print(f"==> job {t.job_id} {st.state}", file=sys.stderr)
                    break
                next_state = time.monotonic() + STATE_POLL_S
            time.sleep(FOLLOW_POLL_S)
    return 0


def _copy(path: Path, offset: int, out: TextIO) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    if data:
        out.write(data.decode(errors="replace"))
        out.flush()
    return offset + len(data)


def cancel(argv: list[str], out: TextIO = sys.stdout) -> int:
    p = argparse.ArgumentParser(prog="zerorun cancel", description="Cancel a submitted job (scancel).")
    p.add_argument("target", help="a run folder or a Slurm job id")
    p.add_argument("--runs-dir", type=Path, default=default_runs_dir())
    args = p.parse_args(argv)
    t = resolve(args.target, args.runs_dir)
    if not t.job_id:
        print(f"zerorun: {t.run_dir} was not submitted to a scheduler (a local run stops with Ctrl-C)",
              file=sys.stderr)
        return 1
    try:
        get_backend(t.backend).cancel(t.job_id)
    except (RuntimeError, ValueError) as e:
        print(f"zerorun: {e}", file=sys.stderr)
        return 1
    out.write(f"zerorun: cancel requested for job {t.job_id}; see zerorun status {t.job_id}\n")
    return 0


def eval_verb(argv: list[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    p = argparse.ArgumentParser(
        prog="zerorun eval",
        description="Evaluate a run's final checkpoint on a split (its task's metric: BLEU, perplexity) as a job of "
                    "its own, after the run's job. Overrides: split=NAME, cluster=NAME, cluster.*, dataset.*, "
                    "dry_run=true.")
    p.add_argument("target", help="a run folder, or a sweep folder with --best")
    p.add_argument("--best", action="store_true", help="evaluate the sweep's best member (sweep.metric, sweep.mode), "
                   "chosen once its arrays have ended")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE: split=test, cluster=slurm, cluster.nodes=1, ...")
    args = p.parse_args(argv)
    from jobs.app import launch
    from jobs.evaluation import EvalError, eval_config
    from jobs.sweeps.record import RecordError

    try:
        cfg = eval_config(args.target, args.best, args.overrides)
    except (EvalError, RecordError, FileNotFoundError, ValueError) as e:
        err.write(f"zerorun: not submitted: {e}\n")
        return 2
    return launch(cfg)
