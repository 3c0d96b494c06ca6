"""Runs train.py's app with one extra callback that measures tokens/s and peak memory on rank 0 and writes them
to RUN_DIR/bench_gpu.json. For bench/bench_gpu.py only; the product has no such hook."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

import trainer_core.train as core


class Probe(pl.Callback):
    def __init__(self, run_dir: str) -> None:
        self.run_dir, self.tokens, self.t0, self.warm = run_dir, 0, None, 3

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        if trainer.global_step == self.warm:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()
        elif self.t0 is not None:
            self.tokens += int(batch["input_ids"].numel()) * trainer.world_size

    def on_train_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - (self.t0 or time.perf_counter())
        if trainer.is_global_zero:
            peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
            report = {"tokens_per_s": self.tokens / elapsed if elapsed else 0.0, "peak_mem_gib": peak / 2**30,
                      "params_m": sum(p.numel() for p in pl_module.parameters()) / 1e6,
                      "world_size": trainer.world_size}
            Path(self.run_dir, "bench_gpu.json").write_text(json.dumps(report))


_build = core.build_trainer


def build_with_probe(cfg, *a, **k):  # type: ignore[no-untyped-def]
    trainer, stopper = _build(cfg, *a, **k)
    trainer.callbacks.append(Probe(cfg.run_dir))
    return trainer, stopper


if __name__ == "__main__":
    core.build_trainer = build_with_probe
    # run the rank in this process (one GPU per process; the local backend would start fresh interpreters)
    from hydra import compose, initialize_config_module

    from configs.schema import register
    from configs.validate import check_config
    from jobs.app import finalize

    register()
    with initialize_config_module("configs", version_base="1.3"):
        cfg = finalize(compose("config", overrides=sys.argv[1:]))
    check_config(cfg)
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    core.fit(cfg)
