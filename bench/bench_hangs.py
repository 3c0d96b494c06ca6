"""Hang watchdog numbers.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_hangs.py progress [--steps 300] [--rounds 2]
    flock /tmp/zerorun-slurm.lock .venv/bin/python bench/bench_hangs.py slurm

progress: what reporting progress costs a rank. One report's time (a JSON line and one pwrite, timed over many
calls), and steps/s of the tiny default model (one local rank, CSV logging) with the reports on and with them
replaced by a no-op, interleaved `rounds` times in one process so drift on a shared machine hits both. Steps/s
is read from the run's own record: (steps - 1) / (end - first_step).

slurm: runs the real-cluster tests that measure (tests/test_hangs_slurm.py: SIGSTOP of one rank of a 2-node
job, a rank blocked in a step, kill -9 of a rank) and prints their BENCH lines: detection after the stop versus
watchdog.timeout_s, the time to capture every rank's stack, and the time from kill -9 to the job's end.
"""

from __future__ import annotations

import argparse
import json
import os
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


def one_report_us(calls: int = 20000) -> float:
    from trainer_core.contract import single_process
    from trainer_core.progress import Progress

    with tempfile.TemporaryDirectory() as d:
        p = Progress(d, single_process(1))
        start = time.perf_counter()
        for i in range(calls):
            p.report(i, "training")
        took = time.perf_counter() - start
        p.close()
    return took / calls * 1e6


def steps_per_s(steps: int, reports_on: bool) -> float:
    from jobs.app import finalize
    from trainer_core import attempts, progress
    from trainer_core.train import fit

    real = progress.Progress.report
    if not reports_on:
        progress.Progress.report = lambda self, step, phase=None: None  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as runs:
            cfg = finalize(_compose([f"cluster.runs_dir={runs}", f"trainer.max_steps={steps}",
                                     "trainer.val_check_interval=100000", "trainer.logger=csv",
                                     "trainer.enable_progress_bar=false", "task.log_samples=0",
                                     "trainer.checkpoint.save_at_end=false", "dataset.synthetic_train_size=2000"]))
            fit(cfg)
            events = attempts.read(cfg.run_dir)
    finally:
        progress.Progress.report = real  # type: ignore[method-assign]
    first = next(e["time"] for e in events if e["event"] == "first_step")
    end = next(e["time"] for e in events if e["event"] == "end")
    return (steps - 1) / (end - first)


def bench_progress(steps: int, rounds: int) -> None:
    us = one_report_us()
    on, off = [], []
    for _ in range(rounds):
        off.append(steps_per_s(steps, reports_on=False))
        on.append(steps_per_s(steps, reports_on=True))
    m_on, m_off = statistics.median(on), statistics.median(off)
    print(json.dumps({"one_report_us": round(us, 2), "steps": steps, "rounds": rounds,
                      "steps_per_s_reports_on": [round(x, 2) for x in on],
                      "steps_per_s_reports_off": [round(x, 2) for x in off],
                      "cost_pct_measured": round((m_off - m_on) / m_off * 100, 2),
                      "cost_pct_from_report_time": round(us * 1e-6 * m_on * 100, 4)}, indent=1))


def bench_slurm() -> int:
    tests = "stopped_rank or blocked_inside or sigkill"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "tests/test_hangs_slurm.py", "-k", tests],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH") or "passed" in line or "failed" in line:
            print(line)
    return proc.returncode


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["progress", "slurm"])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    if a.what == "progress":
        bench_progress(a.steps, a.rounds)
        return 0
    return bench_slurm()


if __name__ == "__main__":
    sys.exit(main())
