"""The 2-node dry run against its floor: the time to import what the submission side cannot do without.

    python bench/bench_dryrun_floor.py [--repeat 7] [--repo PATH]

floor    `python -c "import hydra, submitit, omegaconf"`
dry run  `python train.py cluster=slurm cluster.nodes=2 ... dry_run=true` with no cluster to ask (the Slurm
         commands are kept off PATH, so no sinfo or sbatch --test-only runs)
Both wall times are medians of --repeat fresh interpreters; --repo measures another checkout of zerorun with this
interpreter (its packages first on the path), for a before/after comparison. Prints the ratio, and the modules the
dry run imports beyond the floor that cost most (python -X importtime).
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

CPU2 = ["cluster=slurm", "cluster.nodes=2", "cluster.gpus_per_node=0", "cluster.tasks_per_node=1",
        "cluster.cpus_per_task=1", "cluster.mem=1G", "cluster.time_min=5", "cluster.signal_delay_s=60",
        "trainer=ddp", "dry_run=true"]


def no_slurm_path() -> str:
    keep = [d for d in os.environ.get("PATH", "").split(":") if d and not (Path(d) / "sinfo").exists()]
    return ":".join(keep)


def median_wall(argv: list[str], repeat: int, cwd: Path, env: dict) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        times.append(time.perf_counter() - start)
        if proc.returncode not in (0, 2):
            raise SystemExit(f"{argv} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return statistics.median(times)


def top_imports(argv: list[str], cwd: Path, env: dict, skip: set[str], n: int = 8) -> list[tuple[float, str]]:
    out = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=120).stderr
    rows = []
    for line in out.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (x.strip() for x in line.split("|"))
        if not cumulative.isdigit() or name.split(".")[0] in skip or name.startswith(" "):
            continue
        if name == name.lstrip():  # top-level entries only (nested ones are indented)
            rows.append((int(cumulative) / 1e6, name))
    return sorted(rows, reverse=True)[:n]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    args = p.parse_args()
    repo = args.repo.resolve()
    env = {**os.environ, "PATH": no_slurm_path(), "PYTHONPATH": str(repo)}
    env.pop("SLURM_CONF", None)
    floor = median_wall([sys.executable, "-c", "import hydra, submitit, omegaconf"], args.repeat, repo, env)
    with tempfile.TemporaryDirectory() as runs:
        dry = median_wall([sys.executable, "train.py", *CPU2, f"cluster.runs_dir={runs}"], args.repeat, repo, env)
        print(f"repo     {repo}")
        print(f"floor    {floor:.3f} s   import hydra, submitit, omegaconf (median of {args.repeat})")
        print(f"dry run  {dry:.3f} s   2-node dry run, no cluster to ask (median of {args.repeat})")
        print(f"ratio    {dry / floor:.2f}x")
        print("beyond the floor, the costliest top-level imports of the dry run (cumulative s):")
        for seconds, name in top_imports([sys.executable, "train.py", *CPU2, f"cluster.runs_dir={runs}"], repo, env,
                                         skip={"hydra", "submitit", "omegaconf", "encodings", "site"}):
            print(f"  {seconds:.3f}  {name}")


if __name__ == "__main__":
    main()
