"""What a resume on another number of ranks costs, with the local backend on CPU ranks.

    python bench/bench_resize.py                       # tiny T5 and d_model 512, deepspeed_offload
    python bench/bench_resize.py --d-models 64 --trainer deepspeed

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
The conversion's peak beyond its imports was about two thirds of the checkpoint's size. Time to the first step
is mostly start-up (interpreter, imports, data, model) on a machine shared with other work: the two-rank resume
starts two processes on two cores; the conversion's seconds are within that noise.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-models", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--trainer", default="deepspeed_offload")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for d in args.d_models:
            print(json.dumps({"trainer": args.trainer, **bench(d, args.trainer, Path(tmp))}), flush=True)


if __name__ == "__main__":
    main()
