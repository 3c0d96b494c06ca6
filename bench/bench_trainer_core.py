"""Training-core numbers: step overhead against a hand-written loop, the default run, and import time.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_trainer_core.py overhead [--steps 300]
    .venv/bin/python bench/bench_trainer_core.py default-run
    .venv/bin/python bench/bench_trainer_core.py import

overhead: steps/s of trainer_core (Lightning, the project's callbacks, CSV logging every 10 steps) on the tiny
default model, next to a plain PyTorch loop over the same model, batches, optimizer, schedule and gradient
clipping, in one process, interleaved twice so drift on a shared machine hits both.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_module

    from configs.schema import register

    register()
    with initialize_config_module("configs", version_base="1.3"):
        return compose("config", overrides=overrides)


def _setup(steps: int, runs: str):
    from jobs.app import finalize
    from trainer_core.data.datamodule import build_datamodule
    from trainer_core.data.loading import load_raw
    from trainer_core.data.tokenizer import load_tokenizer
    from trainer_core.models import build_model

    cfg = finalize(_compose([f"cluster.runs_dir={runs}", f"trainer.max_steps={steps}", "trainer.val_check_interval=100000",
                             "trainer.logger=csv", "trainer.enable_progress_bar=false", "trainer.checkpoint.save_at_end=false"]))
    raw = load_raw(cfg.dataset)
    tok = load_tokenizer(cfg.backbone, raw, cfg.dataset, cfg.task.name)
    return cfg, raw, tok, build_model, build_datamodule


def bench_lightning(steps: int, warmup: int) -> float:
    import pytorch_lightning as pl

    from trainer_core.checkpointing import CheckpointMeta, CheckpointStore
    from trainer_core.contract import free_port, single_process
    from trainer_core.tasks import build_task
    from trainer_core.train import build_trainer

    with tempfile.TemporaryDirectory() as runs:
        cfg, raw, tok, build_model, build_datamodule = _setup(steps, runs)
        pl.seed_everything(cfg.seed)
        model = build_model(cfg.backbone, cfg.task.name, tok)
        dm = build_datamodule(cfg, tok)
        task = build_task(cfg, model, tok, dm)
        stamps: list[float] = []

        class Clock(pl.Callback):
            def on_train_batch_end(self, *a, **k):  # type: ignore[no-untyped-def]
                stamps.append(time.perf_counter())

        rdv = single_process(free_port())
        store = CheckpointStore(cfg.run_dir)
        trainer, _ = build_trainer(cfg, rdv, Path(cfg.run_dir), store, CheckpointMeta(0, "auto", 1, "bench"))
        trainer.callbacks.append(Clock())
        trainer.fit(task, datamodule=dm)
        return (steps - warmup) / (stamps[-1] - stamps[warmup - 1])


def bench_plain(steps: int, warmup: int) -> float:
    import torch

    from trainer_core.optim import build_optimizer, build_scheduler

    with tempfile.TemporaryDirectory() as runs:
        cfg, raw, tok, build_model, build_datamodule = _setup(steps, runs)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.backbone, cfg.task.name, tok)
        dm = build_datamodule(cfg, tok)
        dm.setup("fit")
        opt = build_optimizer(model.parameters(), cfg.optimizer, offload=False)
        sched = build_scheduler(opt, cfg.scheduler, cfg.trainer.max_steps)["scheduler"]
        model.train()
        stamps, done = [], 0
        while done < steps:
            for batch in dm.train_dataloader():
                loss = model(**batch).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.gradient_clip_val)
                opt.step()
                sched.step()
                loss.item()  # Lightning reads the loss every step for logging and the progress bar
                stamps.append(time.perf_counter())
                done += 1
                if done == steps:
                    break
        return (steps - warmup) / (stamps[-1] - stamps[warmup - 1])


def overhead(steps: int) -> None:
    import torch

    torch.set_num_threads(1)
    warmup = 20
    plain, lit = [], []
    for _ in range(2):
        plain.append(bench_plain(steps, warmup))
        lit.append(bench_lightning(steps, warmup))
    p, l = statistics.mean(plain), statistics.mean(lit)
    print(f"plain PyTorch loop : {p:7.1f} steps/s  (runs: {', '.join(f'{x:.1f}' for x in plain)})")
    print(f"trainer_core       : {l:7.1f} steps/s  (runs: {', '.join(f'{x:.1f}' for x in lit)})")
    print(f"ratio trainer_core / plain = {l / p:.3f}  (goal >= 0.9)")


def default_run() -> None:
    """`python train.py` as a user runs it, with a fresh data/tokenizer cache; then the same model after a single
    step of a near-zero warm-up learning rate, for the untrained BLEU."""
    with tempfile.TemporaryDirectory() as runs, tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "ZERORUN_RUNS": runs, "ZERORUN_CACHE": cache}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "train.py"], cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"python train.py: exit {proc.returncode}, wall {wall:.1f} s, peak RSS of any process {peak_mb:.0f} MB")
        print(_done_line(proc))
        untrained = subprocess.run([sys.executable, "train.py", "trainer.max_steps=1", "trainer.val_check_interval=1"],
                                   cwd=REPO, env=env, capture_output=True, text=True)
        print("untrained (1 step at warm-up lr):", _done_line(untrained))


def _done_line(proc: subprocess.CompletedProcess) -> str:
    done = [line for line in proc.stdout.splitlines() if line.startswith("zerorun: done")]
    return done[-1] if done else proc.stderr[-2000:]


def import_time() -> None:
    for module in ("trainer_core.train", "jobs.cli", "jobs.app"):
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import {module}"], check=True, cwd=REPO)
            times.append(time.perf_counter() - t0)
        print(f"import {module:20s}: median {statistics.median(times):.2f} s over 5 fresh interpreters")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["overhead", "default-run", "import"])
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    {"overhead": lambda: overhead(args.steps), "default-run": default_run, "import": import_time}[args.what]()


if __name__ == "__main__":
    main()
