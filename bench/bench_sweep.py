"""How fast a sweep gets queued: zerorun's launcher next to stock hydra-submitit-launcher, same cluster, same run.

    python bench/bench_sweep.py                       # needs the local cluster: `zerorun cluster up`
    python bench/bench_sweep.py --stock-sizes 100,1000   # stock at 1000 too (about a minute)

Figures:
  queued         wall time from starting the command to every member queued (squeue -r lists each array task),
                 for 100 and 1000 members; zerorun returns then, the stock launcher would go on waiting for
                 results (it is stopped once its array is queued). sbatch calls are counted by a logging shim
                 put first on PATH; bytes are everything the command wrote, divided by the members.
  dry run        wall time of a 1000-member `zerorun -m ... dry_run=true` (probes and sbatch --test-only
                 included); and a 10,000-member one, which splits into arrays under MaxArraySize.
The sweeps sweep seed and optimizer.lr of the tiny translation model on 1-node CPU jobs, submitted held
(`--hold`: nothing runs). Every job this script submits is cancelled before it exits, by its own ids.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
CPU1 = ["cluster=slurm", "cluster.nodes=1", "cluster.gpus_per_node=0", "cluster.tasks_per_node=1",
        "cluster.cpus_per_task=1", "cluster.mem=1G", "cluster.time_min=5", "cluster.signal_delay_s=60",
        "cluster.partition=debug"]


def grid(n: int) -> list[str]:
    """n members: seed x optimizer.lr (10 learning rates once n >= 100)."""
    lrs = 10 if n >= 100 else 1
    lr_values = ",".join(f"{(i + 1) * 1e-4:.1e}" for i in range(lrs))
    return [f"seed=range(0,{n // lrs})", f"optimizer.lr={lr_values}"]


def shim(folder: Path) -> tuple[dict, Path]:
    """An `sbatch` first on PATH that logs each call and runs the real one."""
    real = shutil.which("sbatch")
    if real is None:
        sys.exit("bench_sweep: sbatch is not on PATH; bring the local cluster up (zerorun cluster up)")
    log = folder / "sbatch-calls.log"
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {real} "$@"\n')
    (bin_dir / "sbatch").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}, log


def calls(log: Path) -> int:
    if not log.exists():
        return 0
    n = len([x for x in log.read_text().splitlines() if "--test-only" not in x])
    log.unlink()
    return n


def squeue_count(name: str) -> tuple[int, list[str]]:
    out = subprocess.run(["squeue", "-h", "-r", "--name", name, "-o", "%F"], capture_output=True, text=True,
                         timeout=30).stdout.split()
    return len(out), sorted(set(out))


def cancel(ids: list[str]) -> None:
    for job in ids:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_zerorun(n: int, env: dict, log: Path, runs: Path) -> tuple[float, int, float, list[str]]:
    sid = f"bench-{os.getpid()}-{n}"
    argv = [PY, "-m", "jobs.cli", "-m", *CPU1, f"cluster.runs_dir={runs}", f"sweep.id={sid}",
            "+cluster.sbatch_extra.hold=true", *grid(n)]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"zerorun -m failed:\n{proc.stderr}")
    sweep_dir = next(runs.glob(f"*/sweep-{sid}"))
    name = re.search(r"--job-name=(\S+)", (sweep_dir / "arrays/s00-a000.sbatch").read_text()).group(1)
    queued, ids = squeue_count(name)
    if queued != n:
        cancel(ids)
        sys.exit(f"zerorun: {queued} of {n} members in squeue after it returned")
    cancel(ids)
    return elapsed, calls(log), folder_bytes(sweep_dir) / n, ids


def bench_stock(n: int, env: dict, log: Path, runs: Path) -> tuple[float, int, float, list[str]]:
    """Stock hydra-submitit-launcher (Hydra's basic sweeper): timed until squeue lists every member."""
    name = f"zrbench-stock-{os.getpid()}-{n}"
    sweep_dir = runs / f"stock-{n}"
    argv = [PY, "-m", "jobs.cli", "-m", "hydra/sweeper=basic", "hydra/launcher=submitit_slurm",
            f"hydra.sweep.dir={sweep_dir}", f"hydra.launcher.name={name}", "hydra.launcher.partition=debug",
            "hydra.launcher.timeout_min=5", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
            f"hydra.launcher.array_parallelism={n}", "+hydra.launcher.additional_parameters.hold=true",
            *CPU1, f"cluster.runs_dir={runs}", *grid(n)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ids: list[str] = []
    try:
        while True:
            queued, ids = squeue_count(name)
            if queued >= n:
                elapsed = time.perf_counter() - t0
                break
            if proc.poll() is not None:
                sys.exit(f"the stock launcher exited ({proc.returncode}) before queueing:\n{proc.stderr.read()}")
            if time.perf_counter() - t0 > 600:
                sys.exit("the stock launcher did not queue within 600 s")
            time.sleep(0.05)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        cancel(ids or squeue_count(name)[1])
    return elapsed, calls(log), folder_bytes(sweep_dir) / n, ids


def bench_dry_run(n: int, env: dict, runs: Path) -> tuple[float, str]:
    argv = [PY, "-m", "jobs.cli", "-m", *CPU1, f"cluster.runs_dir={runs}", f"sweep.id=dry-{n}",
            f"seed=range(0,{n})", "dry_run=true"]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"dry run failed:\n{proc.stderr}")
    arrays = re.search(r"(\d+) job array\(s\), one sbatch call each: (.*)", proc.stdout)
    flags = re.findall(r"--array=([^)]*)", arrays.group(2)) if arrays else []
    summary = f"{arrays.group(1) if arrays else '?'} arrays ({', '.join(sorted(set(flags)))})"
    return elapsed, summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="100,1000", help="member counts for zerorun")
    p.add_argument("--stock-sizes", default="100", help="member counts for stock hydra-submitit-launcher")
    args = p.parse_args()
    import cluster.localslurm as local_slurm

    cluster = local_slurm.current()
    if cluster is None:
        sys.exit("bench_sweep: the local cluster is not up: zerorun cluster up")
    os.environ.update(cluster.env())
    with tempfile.TemporaryDirectory(prefix="zr-bench-sweep-") as tmp:
        env, log = shim(Path(tmp))
        runs = Path(tmp) / "runs"
        print(f"cluster: {cluster.state_dir}  (python {PY})")
        print(f"{'':34}{'queued, wall':>14}{'sbatch calls':>14}{'bytes/member':>14}")
        for n in (int(x) for x in args.stock_sizes.split(",") if x):
            t, c, b, _ = bench_stock(n, env, log, runs)
            print(f"{'stock hydra-submitit-launcher':30}{n:>5}{t:>12.2f} s{c:>14}{b:>14.0f}")
        for n in (int(x) for x in args.sizes.split(",") if x):
            t, c, b, _ = bench_zerorun(n, env, log, runs)
            print(f"{'zerorun -m (job arrays)':30}{n:>5}{t:>12.2f} s{c:>14}{b:>14.0f}")
        for n in (1000, 10000):
            t, summary = bench_dry_run(n, env, runs)
            print(f"{'zerorun -m ... dry_run=true':30}{n:>5}{t:>12.2f} s   {summary}")
    print("every job submitted here was cancelled")


if __name__ == "__main__":
    main()
