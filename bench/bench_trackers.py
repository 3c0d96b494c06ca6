"""What a tracker costs an attempt: import, start (or continue) the tracker run, log one metric per step, end.

    python bench/bench_trackers.py [--steps 200]

Each tracker in a fresh process (the tracker's import counted, Lightning's not: a rank has it already), offline
(W&B offline files, MLflow's file store), twice per run folder: the first attempt and a continued one. Prints
seconds per phase and milliseconds per logged step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ONE = r"""
import json, sys, time
import pytorch_lightning  # a rank has it loaded already: not counted
from trainer_core.loggers import build_logger
t0 = time.perf_counter()
kind, run_dir, steps, first = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
logger = build_logger(kind, run_dir, first or None, {"mode": "offline", "project": "bench"}, "bench")
t1 = time.perf_counter()
logger.log_metrics({"train_loss": 1.0}, step=first)  # starts or continues the tracker run
t2 = time.perf_counter()
for s in range(first + 1, first + steps):
    logger.log_metrics({"train_loss": 1.0 / (s + 1)}, step=s)
t3 = time.perf_counter()
logger.finalize("success")
t4 = time.perf_counter()
print(json.dumps({"import_build_s": t1 - t0, "start_s": t2 - t1, "ms_per_step": 1000 * (t3 - t2) / (steps - 1),
                  "end_s": t4 - t3}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    repo = Path(__file__).resolve().parents[1]
    for kind in ("wandb", "mlflow"):
        with tempfile.TemporaryDirectory() as run_dir:
            for attempt, first in (("first", 0), ("continued", args.steps)):
                out = subprocess.run([sys.executable, "-c", ONE, kind, run_dir, str(args.steps), str(first)],
                                     cwd=repo, capture_output=True, text=True, check=True,
                                     env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{kind:6s} {attempt:9s} import+build {r['import_build_s']:5.2f} s  start {r['start_s']:5.2f} s"
                      f"  {r['ms_per_step']:6.2f} ms/step  end {r['end_s']:5.2f} s")


if __name__ == "__main__":
    main()
