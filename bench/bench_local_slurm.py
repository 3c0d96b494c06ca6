"""How fast the local Slurm cluster comes up, and how fast it runs a trivial job.

    python bench/bench_local_slurm.py                 # packages installed -> idle nodes, restart, job latency
    python bench/bench_local_slurm.py --from-scratch  # also: nothing installed -> idle nodes (purges packages!)

The benchmark runs its own cluster (own state folder, cluster name and ports), so a cluster already up on the
default ports keeps running, except with --from-scratch, which removes the packages under it and so refuses
while one runs. Figures:
  from scratch     apt-get install + state folder + every daemon started + all nodes idle
  installed        a fresh state folder (new database) + every daemon + all nodes idle
  restart          `down` then `up` on the same state folder
  submit latency   `sbatch --wrap true` until slurmctld reports COMPLETED, median of --jobs runs
Must run as root (it starts the cluster).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cluster.localslurm as localslurm
from cluster.localslurm.config import PACKAGES, ClusterSpec
from cluster.localslurm.system import missing_packages


def bench_spec(state_dir: Path) -> ClusterSpec:
    # Ports and name of its own: never collides with the default cluster (16817/16819/17001..).
    return ClusterSpec(state_dir, cluster_name="zrbench", cpus_per_node=os.cpu_count() or 1,
                       slurmctld_port=36817, slurmdbd_port=36819, slurmd_base_port=37001)


def timed_up(spec: ClusterSpec) -> float:
    start = time.monotonic()
    localslurm.up(spec, smoke_test=False, say=lambda _: None)
    return time.monotonic() - start


def purge_packages() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "purge", "-y", "--auto-remove", *PACKAGES], env=env, check=True,
                   stdout=subprocess.DEVNULL)


def submit_latency(cluster: localslurm.LocalCluster) -> float:
    env = {**os.environ, **cluster.env()}
    start = time.monotonic()
    job = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "true"], env=env, check=True,
                         capture_output=True, text=True).stdout.strip().split(";")[0]
    while True:
        # scontrol asks slurmctld directly; sacct would add slurmdbd's write delay to the figure.
        shown = subprocess.run(["scontrol", "show", "job", "-o", job], env=env, capture_output=True, text=True)
        state = next((w.split("=", 1)[1] for w in shown.stdout.split() if w.startswith("JobState=")), "")
        if state == "COMPLETED":
            return time.monotonic() - start
        if state in {"FAILED", "CANCELLED", "NODE_FAIL", "TIMEOUT", "OUT_OF_MEMORY"}:
            raise SystemExit(f"job {job} ended {state}; see slurmctld.log under {cluster.state_dir}")
        time.sleep(0.01)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from-scratch", action="store_true",
                        help="purge the Slurm, munge and MariaDB packages first and time the install too")
    parser.add_argument("--jobs", type=int, default=10, help="trivial jobs to time (default 10)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark starts a local Slurm cluster")
    if args.from_scratch and localslurm.current() is not None:
        raise SystemExit("--from-scratch removes the packages under the cluster running from"
                         f" {localslurm.current().state_dir}: stop it first with `zerorun cluster down`")

    work = Path(tempfile.mkdtemp(prefix="zr-bench-", dir="/tmp"))
    figures: list[tuple[str, str]] = []
    try:
        if args.from_scratch:
            purge_packages()
            figures.append(("from scratch -> idle nodes", f"{timed_up(bench_spec(work / 'scratch')):.1f} s"
                            f" (apt-get install of {len(PACKAGES)} packages included)"))
            localslurm.down(work / "scratch", say=lambda _: None)
        else:
            still_missing = missing_packages()
            figures.append(("from scratch -> idle nodes", "not measured (add --from-scratch); packages "
                            + ("missing: " + " ".join(still_missing) if still_missing else "already installed")))
        spec = bench_spec(work / "installed")
        figures.append(("installed, fresh state -> idle nodes", f"{timed_up(spec):.1f} s"))
        localslurm.down(spec.state_dir, say=lambda _: None)
        figures.append(("restart (same state folder) -> idle", f"{timed_up(spec):.1f} s"))
        cluster = localslurm.current(spec.state_dir)
        latencies = [submit_latency(cluster) for _ in range(args.jobs)]
        figures.append((f"sbatch -> COMPLETED, median of {args.jobs}",
                        f"{statistics.median(latencies):.2f} s (min {min(latencies):.2f}, max {max(latencies):.2f})"))
    finally:
        for state in (work / "scratch", work / "installed"):
            if state.exists():
                localslurm.down(state, say=lambda _: None)
        shutil.rmtree(work, ignore_errors=True)
    width = max(len(name) for name, _ in figures)
    for name, value in figures:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
