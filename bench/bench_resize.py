"""What a resume on another number of ranks costs, with the local backend on CPU ranks.

    python bench/bench_resize.py                       # tiny T5 and d_model 512, deepspeed_offload
    python bench/bench_resize.py --d-models 64 --trainer deepspeed
    PYTHONPATH=. python bench/bench_resize.py --slurm 1     # requeue -> first step on the local Slurm cluster

Figures, for each model size:
  checkpoint          the ZeRO-2 checkpoint of a 2-rank run (model states + one optimizer shard per rank), MB
  convert             DeepSpeed's converter to the universal format (trainer_core/zero_resize.convert) in a fresh
                      interpreter: seconds, and its peak resident memory beyond an interpreter that only imported
                      what it imports (MB)
  universal           the converted folder, MB
  resume -> 1st step  from the resume command's start to the first optimizer step of the resumed attempt
                      ("first_step" in attempts.jsonl): on the same 2 ranks, and on 1 rank (conversion included)

Measured 2026-11-29 (2 shared CPU cores, deepspeed_offload, T5 with 2+2 layers, vocabulary 600):
  d_model  checkpoint  convert  peak RSS (beyond imports)  universal  resume->1st step: same size / 2->1
  64       4.1 MB      0.42 s   252 MB (+9 MB)             7.4 MB     22.2 s / 22.3 s
  512      228 MB      3.99 s   393 MB (+149 MB)           400 MB     35.7 s / 18.9 s
Again 2026-11-30 (same machine, load average about 6):
  64       4.1 MB      0.70 s   363 MB (+9 MB)             7.4 MB     32.9 s / 27.0 s
  512      228 MB      3.02 s   532 MB (+177 MB)           400 MB     17.6 s / 21.2 s
The conversion's peak beyond its imports was two thirds to three quarters of the checkpoint's size (the whole
peak also counts the imports, which vary between runs). Time to the first step
is mostly start-up (interpreter, imports, data, model) on a machine shared with other work: the two-rank resume
starts two processes on two cores; the conversion's seconds are within that noise.

--slurm: a `cluster.min_nodes=1 cluster.nodes=2` DDP run of the tiny T5 (1 task per node) preempted by a job in
`high` on n1, on the real local cluster. "1 -> 2 nodes": it ran on n1 alone (n2 busy), n2 was freed, and the
requeued attempt started on both; "2 -> 2 nodes": it ran on both and came back on both. Figures: preempt ->
requeue (the `sbatch -p high` until the batch host's requeue record: signal, checkpoint, ranks exiting) and
requeue -> first step (Slurm's requeue hold-off and start, the ranks' start-up, the checkpoint load).
Measured 2026-11-30, one run each, on 2 CPU cores shared with other work (load average about 6):
  case          world sizes  preempt -> requeue  requeue -> first step
  2 -> 2 nodes  [2, 2]       5.4 s               19.8 s
  1 -> 2 nodes  [1, 2]       2.3 s               15.7 s
The size change costs nothing measurable here: a DDP checkpoint loads whole on any number of ranks, and the
seconds are Slurm's hold-off plus start-up on a loaded machine (a ZeRO checkpoint adds the conversion above).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN = ("trainer.val_check_interval=100000", "trainer.log_every_n_steps=10", "trainer.logger=csv",
       "trainer.enable_progress_bar=false", "dataset.synthetic_train_size=256", "dataset.max_val_samples=8",
       "dataset.batch_size=16", "seed=7", "task.log_samples=0", "cluster.tasks_per_node=2")

MEASURE = """
import json, resource, sys, time
from pathlib import Path
from trainer_core import zero_resize
from deepspeed.checkpoint import ds_to_universal  # imported before the baseline is read
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
seconds = zero_resize.convert(Path(sys.argv[1]), Path(sys.argv[2]))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mb": peak / 1024, "extra_mb": (peak - base) / 1024}))
"""


def train(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def first_step_after(run_dir: Path, started: float) -> float:
    events = [json.loads(line) for line in (run_dir / "attempts.jsonl").read_text().splitlines()]
    return [e["time"] for e in events if e["event"] == "first_step"][-1] - started


def bench(d_model: int, trainer: str, tmp: Path) -> dict:
    model = (f"backbone.model_config.d_model={d_model}", f"backbone.model_config.d_ff={4 * d_model}",
             f"backbone.model_config.d_kv={d_model // 8}", "backbone.model_config.num_heads=8")
    runs = tmp / f"runs-{d_model}"
    train(f"cluster.runs_dir={runs}", f"trainer={trainer}", *RUN, *model, "trainer.max_steps=2")
    run_dir = next(p for p in runs.glob("*/*") if (p / "config.yaml").exists())
    step_dir = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    out: dict = {"d_model": d_model, "checkpoint_mb": round(size_mb(step_dir / "ckpt"), 1)}

    scratch = tmp / f"universal-{d_model}"
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(step_dir / "ckpt" / "checkpoint"), str(scratch)],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update(convert_s=round(measured["seconds"], 2), convert_peak_mb=round(measured["peak_mb"]),
               convert_extra_mb=round(measured["extra_mb"]), universal_mb=round(size_mb(scratch), 1))
    shutil.rmtree(scratch)

    for label, ranks, steps in (("same_size", 2, 4), ("to_1_rank", 1, 6)):
        copy = tmp / f"{label}-{d_model}"
        shutil.copytree(run_dir, copy)
        started = time.time()
        train(f"resume={copy}", f"cluster.tasks_per_node={ranks}", f"trainer.max_steps={steps}")
        out[f"resume_{label}_to_first_step_s"] = round(first_step_after(copy, started), 2)
    return out


# ---- --slurm: requeue -> first step on the real cluster (nodes n1, n2; partition `high` preempts `debug`) ----

SLURM = ("cluster=slurm", "cluster.gpus_per_node=0", "cluster.partition=debug", "cluster.mem=1G", "cluster.nodes=2",
         "cluster.tasks_per_node=1", "cluster.cpus_per_task=1", "cluster.min_nodes=1", "trainer=ddp",
         "trainer.max_steps=100000", "trainer.val_check_interval=100000", "trainer.log_every_n_steps=10",
         "trainer.logger=csv", "trainer.enable_progress_bar=false", "dataset.synthetic_train_size=400",
         "dataset.max_val_samples=8", "seed=7", "task.log_samples=0")


def _sbatch(*argv: str) -> str:
    from cluster import slurm

    out = slurm.run_command(["sbatch", "--parsable", *argv])
    if out.returncode:
        raise SystemExit(out.stderr)
    return out.stdout.strip().split(";")[0]


def _events(run_dir: Path, name: str) -> list[dict]:
    path = run_dir / "attempts.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e["event"] == name]


def _wait(what: str, check, timeout: float = 180):  # type: ignore[no-untyped-def]
    end = time.time() + timeout
    while time.time() < end:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def requeue_to_first_step(tmp: Path, grow: bool) -> dict:
    """A --nodes=1-2 run preempted by a job in `high` on n1. grow: it ran on n1 alone (n2 busy), n2 is freed before
    the preemption, and the requeue starts on both (1 -> 2 ranks); else it ran on both and comes back on both."""
    from cluster import slurm
    from jobs.snapshot import read_record

    blocker = _sbatch("-p", "debug", "-w", "n2", "--exclusive", "-t", "5", "-o", "/dev/null", "--wrap", "sleep 280") \
        if grow else None
    if blocker:
        _wait("n2 to be busy", lambda: slurm.query([blocker])[blocker].state == "RUNNING", 30)
    runs = tmp / f"slurm-{'grow' if grow else 'same'}"
    train(f"cluster.runs_dir={runs}", *SLURM)
    run_dir = next(p for p in runs.glob("*/*") if (p / "config.yaml").exists())
    job = read_record(run_dir).job_id
    try:
        _wait("the first step", lambda: _events(run_dir, "first_step"))
        if blocker:
            slurm.scancel(blocker)
            _wait("n2 to be free", lambda: slurm.query([blocker])[blocker].finished, 60)
        time.sleep(2)  # a few steps in
        preempted = time.time()
        _sbatch("-p", "high", "-w", "n1", "--exclusive", "-t", "1", "-o", "/dev/null", "--wrap", "sleep 1")
        requeue = _wait("the requeue", lambda: _events(run_dir, "requeue"))[-1]
        first = _wait("the requeued attempt's first step", lambda: _events(run_dir, "first_step")[1:])[0]
        worlds = [e["world_size"] for e in _events(run_dir, "start")]
    finally:
        for left in filter(None, (job, blocker)):
            slurm.scancel(left)
            _wait(f"job {left} to end", lambda: slurm.query([left])[left].finished, 120)
    return {"case": "1 -> 2 nodes" if grow else "2 -> 2 nodes", "world_sizes": worlds,
            "preempt_to_requeue_s": round(requeue["time"] - preempted, 2),
            "requeue_to_first_step_s": round(first["time"] - requeue["time"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-models", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--trainer", default="deepspeed_offload")
    parser.add_argument("--slurm", type=int, default=0, metavar="REPEATS",
                        help="instead: requeue -> first step on the local Slurm cluster, REPEATS times each way")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.slurm:
            for i in range(args.slurm):
                for grow in (False, True):
                    print(json.dumps(requeue_to_first_step(Path(tmp) / str(i), grow)), flush=True)
            return
        for d in args.d_models:
            print(json.dumps({"trainer": args.trainer, **bench(d, args.trainer, Path(tmp))}), flush=True)


if __name__ == "__main__":
    main()
