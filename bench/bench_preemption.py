"""What a preemption costs: measured on the real local Slurm cluster and with the local backend.

    python bench/bench_preemption.py                        # every figure
    python bench/bench_preemption.py --stops 3 --skip-sizes
    python bench/bench_preemption.py --skip-slurm --d-model 256

Figures (a 2-node DDP run of the tiny T5 on CPU ranks, 1 task per node, for the Slurm ones):
  trigger -> signal        the preempting `sbatch -p high` (or `scancel --signal=USR2`) until rank 0's handler
                           recorded the job's signal: Slurm's delivery
  signal -> checkpointed   until every rank has written and rank 0 has committed the checkpoint
  signal -> requeued       until `scontrol requeue` returned on the batch host (after every rank exited)
  requeue -> first step    until the next attempt's first optimizer step, split into Slurm (the batch script starts
                           again: the requeue hold-off, and the preempting job's run), start-up (the rank's "start"
                           record: interpreter, imports, data, model) and the rest (process group, checkpoint load)
  steps lost per stop      the step an attempt stopped at minus the step the next one resumed from (goal 0)
  checkpoint size / save   ddp, deepspeed, deepspeed_offload with 2 local ranks, a save every 10 steps
  import time              `import trainer_core.train` in a fresh interpreter (what every attempt pays)
The preemptions requeue other `debug` jobs on the cluster for a few seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
TINY_RUN = ("trainer.val_check_interval=100000", "trainer.log_every_n_steps=10", "trainer.logger=csv",
            "trainer.enable_progress_bar=false", "dataset.synthetic_train_size=400", "dataset.max_val_samples=8",
            "backbone.model_config.dropout_rate=0.1", "seed=7", "task.log_samples=0")
SLURM = ("cluster=slurm", "cluster.gpus_per_node=0", "cluster.partition=debug", "cluster.mem=1G", "cluster.nodes=2",
         "cluster.tasks_per_node=1", "cluster.cpus_per_task=1")


def events(run_dir: Path) -> list[dict[str, Any]]:
    from trainer_core import attempts

    return attempts.read(run_dir)


def wait_until(what: str, predicate: Callable[[], Any], timeout: float, poll: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(poll)
    raise SystemExit(f"bench: waited {timeout:.0f} s for {what}")


def count(run_dir: Path, name: str) -> int:
    return sum(e["event"] == name for e in events(run_dir))


def compose(*overrides: str):  # type: ignore[no-untyped-def]
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from configs.schema import register

    register()
    with initialize_config_module("configs", version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def slurm_stops(runs: Path, stops: int, steps: int) -> list[dict[str, float]]:
    """One run stopped `stops` times: the first by a real preemption, the others by the job's signal alone
    (scancel --signal, the same delivery as a time-limit signal, without another job taking the nodes)."""
    import cluster.localslurm as local_slurm
    from cluster import slurm
    from jobs.app import launch
    from jobs.snapshot import read_record

    cluster = local_slurm.current()
    if cluster is None:
        raise SystemExit("bench: the local Slurm cluster is not up (`zerorun cluster up`), or use --skip-slurm")
    os.environ.update(cluster.env())
    assert launch(compose(f"cluster.runs_dir={runs}", *SLURM, "trainer=ddp", f"trainer.max_steps={steps}",
                          *TINY_RUN)) == 0
    run_dir = next(p.parent for p in runs.glob("*/*/config.yaml"))
    job = read_record(run_dir).job_id
    triggers = []
    for n in range(1, stops + 1):
        wait_until(f"attempt {n} to train", lambda: count(run_dir, "first_step") >= n, 180)
        time.sleep(1.0)
        kind = "preemption" if n == 1 else "signal"
        triggers.append((kind, time.time()))
        if kind == "preemption":
            slurm._run(["sbatch", "--parsable", "-p", "high", "-N", "2", "--exclusive", "-t", "1", "-o", "/dev/null",
                        "-J", "zr-bench-preempt", "--wrap", "sleep 1"])
        else:
            slurm._run(["scancel", "--signal=USR2", job])
        wait_until(f"requeue {n}", lambda: count(run_dir, "requeue") >= n, 60)
    wait_until(f"job {job} to finish", lambda: slurm.query([job])[job].finished, 300, poll=0.5)
    starts = _batch_starts(job)
    return _per_stop(events(run_dir), triggers, starts)


def _batch_starts(job: str) -> list[float]:
    """When each run of the job began (sacct, 1 s resolution)."""
    from cluster import slurm

    out = slurm._run(["sacct", "-n", "-P", "-X", "-D", "-j", job, "-o", "Start"]).stdout.split()
    return [time.mktime(time.strptime(s, "%Y-%m-%dT%H:%M:%S")) for s in out if s[:1].isdigit()]


def _per_stop(evs: list[dict[str, Any]], triggers: list[tuple[str, float]], batch_starts: list[float]) -> list[dict]:
    from trainer_core import attempts

    runs = attempts.attempts(evs)
    signals = [e for e in evs if e["event"] == "signal"]
    stop_ckpts = [e for e in evs if e["event"] == "checkpoint" and e.get("why") == "stop"]
    requeues = [e for e in evs if e["event"] == "requeue"]
    starts = [e for e in evs if e["event"] == "start"]
    firsts = [e for e in evs if e["event"] == "first_step"]
    out = []
    for i, (kind, trigger) in enumerate(triggers):
        sig, ck, rq = signals[i], stop_ckpts[i], requeues[i]
        out.append({
            "kind": kind,
            "step": ck["step"],
            "trigger_to_signal_s": sig["at"] - trigger,
            "signal_to_checkpointed_s": ck["time"] - sig["at"],
            "signal_to_requeued_s": rq["time"] - sig["at"],
            "save_s": ck["save_s"],
            "requeue_to_first_step_s": firsts[i + 1]["time"] - rq["time"],
            "requeue_to_batch_start_s": batch_starts[i + 1] - rq["time"] if len(batch_starts) > i + 1 else float("nan"),
            "batch_start_to_start_record_s": starts[i + 1]["time"] - batch_starts[i + 1]
            if len(batch_starts) > i + 1 else float("nan"),
            "start_record_to_first_step_s": firsts[i + 1]["time"] - starts[i + 1]["time"],
            "steps_lost": runs[i].end_step - runs[i + 1].resumed_from_step,
        })
    return out


def import_time(repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.monotonic()
        subprocess.run([sys.executable, "-c", "import trainer_core.train"], cwd=REPO, check=True)
        times.append(time.monotonic() - start)
    return statistics.median(times)


def checkpoint_costs(trainer: str, work: Path, extra: tuple[str, ...]) -> dict[str, float]:
    """A local 2-rank run that saves every 10 steps: median save time and the size of one checkpoint."""
    runs = work / trainer
    proc = subprocess.run([sys.executable, "train.py", f"cluster.runs_dir={runs}", f"trainer={trainer}",
                           "cluster.tasks_per_node=2", "trainer.max_steps=40", "trainer.checkpoint.every_n_steps=10",
                           "trainer.checkpoint.keep_last=1", "trainer.checkpoint.save_at_end=false", *TINY_RUN, *extra],
                          cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench: the {trainer} run failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    run_dir = next(p.parent for p in runs.glob("*/*/config.yaml"))
    saves = [e["save_s"] for e in events(run_dir) if e["event"] == "checkpoint"]
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    size = sum(p.stat().st_size for p in latest.rglob("*") if p.is_file())
    return {"saves": len(saves), "save_s_median": statistics.median(saves), "save_s_max": max(saves),
            "size_mb": size / 1e6}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stops", type=int, default=3, help="stops of the Slurm run (the first a real preemption)")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps of the Slurm run")
    p.add_argument("--skip-slurm", action="store_true")
    p.add_argument("--skip-sizes", action="store_true")
    p.add_argument("--d-model", type=int, default=None, help="a wider model for the checkpoint figures")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    with tempfile.TemporaryDirectory(prefix="zr-bench-preemption-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("ZERORUN_CACHE", str(work / "cache"))
        print(f"import trainer_core.train (fresh interpreter, median of 3): {import_time():.2f} s")
        if not args.skip_slurm:
            rows = slurm_stops(work / "slurm", args.stops, args.steps)
            print("\nSlurm, 2 nodes x 1 CPU rank, DDP, tiny T5 (times in s):")
            cols = ["kind", "step", "trigger_to_signal_s", "signal_to_checkpointed_s", "signal_to_requeued_s",
                    "save_s", "requeue_to_first_step_s", "requeue_to_batch_start_s", "batch_start_to_start_record_s",
                    "start_record_to_first_step_s", "steps_lost"]
            for c in cols:
                cells = [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for r in rows]
                print(f"  {c:31s} " + "  ".join(f"{x:>10s}" for x in cells))
        if not args.skip_sizes:
            extra = () if args.d_model is None else (f"backbone.model_config.d_model={args.d_model}",
                                                     f"backbone.model_config.d_ff={4 * args.d_model}")
            print(f"\ncheckpoints, local backend, 2 CPU ranks, {'tiny T5' if not extra else ' '.join(extra)}:")
            for trainer in ("ddp", "deepspeed", "deepspeed_offload"):
                c = checkpoint_costs(trainer, work, extra)
                print(f"  {trainer:18s} size {c['size_mb']:8.2f} MB   save median {c['save_s_median']:.3f} s   "
                      f"max {c['save_s_max']:.3f} s   ({c['saves']} saves)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
