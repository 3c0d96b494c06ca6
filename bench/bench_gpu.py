"""GPU figures for docs/gpu-results.md: tokens/s, peak GPU memory and the largest model that fits, for ddp,
deepspeed and deepspeed_offload (Lightning's stock DeepSpeedStrategy, bf16), on the causal LM task.

    .venv/bin/python bench/bench_gpu.py                  # every strategy, the default model, then the size search
    .venv/bin/python bench/bench_gpu.py --smoke-on-cpu   # a tiny CPU pass that checks this script itself

Each measurement is its own process on one GPU (a fresh CUDA context and clean peak counters): bench/_gpu_rank_probe.py
runs the app's fit() with one extra callback that writes tokens/s and peak memory into the run folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ("ddp", "deepspeed", "deepspeed_offload")
# GPT-2 shapes (n_layer, n_embd, n_head) tried in order when searching for the largest model that fits
SIZES = [(12, 768, 12), (24, 1024, 16), (36, 1280, 20), (48, 1600, 25), (48, 2048, 32), (64, 2560, 32), (80, 3072, 32)]


def run_one(trainer: str, size: tuple[int, int, int], steps: int, cpu: bool) -> dict:
    layers, embd, heads = size
    with tempfile.TemporaryDirectory() as runs:
        args = [
            sys.executable, str(REPO / "bench" / "_gpu_rank_probe.py"),
            "task=nlp/language_modeling", f"trainer={trainer}", f"cluster.runs_dir={runs}",
            f"trainer.max_steps={steps}", "trainer.val_check_interval=100000", "trainer.logger=csv",
            "trainer.enable_progress_bar=false", "trainer.checkpoint.save_at_end=false",
            f"backbone.model_config.n_layer={layers}", f"backbone.model_config.n_embd={embd}",
            f"backbone.model_config.n_head={heads}", "backbone.tokenizer.vocab_size=8000",
            "dataset.block_size=256", "dataset.batch_size=8", "dataset.synthetic_train_size=20000",
        ]
        if cpu:
            args += ["trainer.accelerator=cpu", "cluster.tasks_per_node=1"]
        else:
            args += ["cluster.gpus_per_node=1", "cluster.tasks_per_node=1"]
        proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=1800)
        reports = sorted(Path(runs).glob("*/*/bench_gpu.json"))
        if proc.returncode != 0 or not reports:
            oom = "out of memory" in (proc.stdout + proc.stderr).lower()
            return {"ok": False, "oom": oom, "tail": (proc.stdout + proc.stderr)[-1500:]}
        return {"ok": True, **json.loads(reports[0].read_text())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--smoke-on-cpu", action="store_true")
    args = ap.parse_args()
    cpu = args.smoke_on_cpu
    sizes = [(2, 64, 4)] if cpu else SIZES
    for trainer in STRATEGIES:
        first = run_one(trainer, sizes[0], 5 if cpu else args.steps, cpu)
        print(f"{trainer:18s} model {sizes[0]}: " + (
            f"{first['tokens_per_s']:.0f} tokens/s, peak {first['peak_mem_gib']:.2f} GiB, {first['params_m']:.1f}M params"
            if first["ok"] else f"FAILED\n{first['tail']}"), flush=True)
        if cpu:
            continue
        largest = None
        for size in sizes:
            r = run_one(trainer, size, 3, cpu)
            if not r["ok"]:
                print(f"  {size}: {'OOM' if r['oom'] else 'failed'}", flush=True)
                break
            largest = (size, r)
            print(f"  {size}: fits, {r['params_m']:.0f}M params, peak {r['peak_mem_gib']:.1f} GiB", flush=True)
        if largest:
            print(f"{trainer:18s} largest that fits: {largest[0]} = {largest[1]['params_m']:.0f}M params", flush=True)


if __name__ == "__main__":
    main()
