"""How fast the submission side is: CLI start, dry runs, submit latency, and submit-to-first-training-step.

    SLURM_CONF=... python bench/bench_submit.py            # needs the local cluster: `zerorun cluster up`
    python bench/bench_submit.py --no-slurm                # only what needs no cluster

Figures (median of --repeat runs where it says so):
  import           `import jobs.cli` and `import jobs.app` in a fresh interpreter (python -X importtime)
  --help           wall time of `zerorun --help`, and of Hydra's own app help for comparison
  dry run 2x1      wall time of `zerorun cluster=slurm cluster.nodes=2 ... dry_run=true` (sinfo and sbatch
                   --test-only included), and the same through @hydra.main (a hydra.* override forces it)
  dry run 512x8    render script and rank table and write the run folder, in process; and the CLI's wall time
  submit           a 2-node job: zerorun's in-process submit() (preflight, render, snapshot, sbatch) next to
                   plain submitit's executor.submit() of a trivial function, same cluster, same run
  first step       `zerorun cluster=slurm ...` start -> the first training step's checkpoint on disk (2 nodes, DDP)
  status           wall time of `zerorun status JOB` for a running job
Every job this script submits is cancelled or left to finish by itself; it cancels only its own job ids.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
CPU2 = ["cluster=slurm", "cluster.nodes=2", "cluster.gpus_per_node=0", "cluster.tasks_per_node=1",
        "cluster.cpus_per_task=1", "cluster.mem=1G", "cluster.time_min=5", "cluster.signal_delay_s=60",
        "trainer=ddp"]


def wall(argv: list[str], repeat: int, env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    times, proc = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
        times.append(time.perf_counter() - start)
    return statistics.median(times), proc  # type: ignore[return-value]


def import_time(module: str) -> float:
    out = subprocess.run([PY, "-X", "importtime", "-c", f"import {module}"], cwd=REPO, capture_output=True,
                         text=True, timeout=60).stderr
    line = [x for x in out.splitlines() if x.rstrip().endswith(f"| {module}")][-1]
    return int(line.split("|")[1]) / 1e6


def bench_cli(repeat: int, runs: Path) -> None:
    print(f"import jobs.cli            {import_time('jobs.cli'):.3f} s")
    print(f"import jobs.app (hydra)    {import_time('jobs.app'):.3f} s")
    print(f"import jobs.dryrun      {import_time('jobs.dryrun'):.3f} s")
    t, _ = wall([PY, "train.py", "--help"], repeat)
    print(f"zerorun --help             {t:.3f} s wall (median of {repeat})")
    hydra_help = "import sys; sys.argv=['zerorun','--help']; from jobs.app import hydra_main; hydra_main()"
    t, _ = wall([PY, "-c", hydra_help], repeat)
    print(f"  Hydra's app --help       {t:.3f} s wall (what `zerorun --help` cost before)")
    argv = [PY, "train.py", *CPU2, "dry_run=true", f"cluster.runs_dir={runs}"]
    t, proc = wall(argv, repeat)
    asked = "sbatch --test-only: sbatch: Job" in proc.stdout
    print(f"dry run 2x1 (CLI)          {t:.3f} s wall, rc={proc.returncode}, test-only asked: {asked}")
    t, proc = wall([*argv, "hydra.job.chdir=false"], repeat)
    print(f"  through @hydra.main      {t:.3f} s wall, rc={proc.returncode} (Hydra composes the config twice)")


def bench_big_dry_run(runs: Path) -> None:
    from hydra import compose, initialize_config_module

    from cluster import preflight
    from jobs.dryrun import dry_run
    from cluster.plan import make_plan
    from configs.schema import register
    from jobs.app import finalize

    register()
    with initialize_config_module("configs", version_base="1.3"):
        cfg = finalize(compose("config", overrides=["cluster=slurm", "cluster.nodes=512", "cluster.gpus_per_node=8", "cluster.tasks_per_node=8",
                                                    "trainer=deepspeed", "dry_run=true", f"cluster.runs_dir={runs}"]))
    start = time.perf_counter()
    rc = dry_run(cfg, make_plan(cfg), out=io.StringIO(), err=io.StringIO(),
                 facts=preflight.ClusterFacts(error="not asked"))
    print(f"dry run 512x8 in process   {time.perf_counter() - start:.3f} s (render + 4096-row table + write), rc={rc}")
    argv = [PY, "train.py", "cluster=slurm", "cluster.nodes=512", "cluster.gpus_per_node=8", "cluster.tasks_per_node=8", "trainer=deepspeed",
            "dry_run=true", f"cluster.runs_dir={runs}"]
    t, proc = wall(argv, 1)
    print(f"dry run 512x8 (CLI)        {t:.3f} s wall, rc={proc.returncode} (2 = the local cluster has 2 nodes)")


def _submitit_trivial() -> int:
    return 0


def bench_submit(repeat: int, runs: Path) -> list[str]:
    import submitit
    from hydra import compose, initialize_config_module

    from cluster.plan import make_plan, read_setup_file
    from jobs.submit import submit
    from configs.schema import register
    from jobs import snapshot
    from jobs.app import finalize

    register()
    jobs: list[str] = []
    ours, theirs = [], []
    for i in range(repeat):
        with initialize_config_module("configs", version_base="1.3"):
            cfg = finalize(compose("config", overrides=[*CPU2, f"cluster.runs_dir={runs}", f"run_id=submit-{i}",
                                                        "cluster.setup=[sleep 30]"]))
        plan = make_plan(cfg, setup_file_lines=read_setup_file(None))
        start = time.perf_counter()
        rc = submit(cfg, plan, out=io.StringIO(), command=["bench"])
        ours.append(time.perf_counter() - start)
        record = snapshot.read_record(plan.run_dir)
        if rc != 0 or record is None:
            raise SystemExit(f"zerorun submit failed (rc={rc})")
        jobs.append(record.job_id)

        ex = submitit.AutoExecutor(folder=str(runs / "submitit" / "%j"), cluster="slurm")
        ex.update_parameters(nodes=2, tasks_per_node=1, cpus_per_task=1, mem_gb=1, timeout_min=5,
                             slurm_partition="debug", slurm_setup=["sleep 30"])
        start = time.perf_counter()
        job = ex.submit(_submitit_trivial)
        theirs.append(time.perf_counter() - start)
        jobs.append(str(job.job_id))
    print(f"submit 2x1: zerorun        {statistics.median(ours) * 1000:.0f} ms (median of {repeat}; preflight sinfo "
          "+ render + snapshot with git + sbatch)")
    print(f"submit 2x1: plain submitit {statistics.median(theirs) * 1000:.0f} ms (median of {repeat}; pickle + "
          "render + sbatch)")
    return jobs


def bench_first_step(runs: Path) -> list[str]:
    argv = [PY, "train.py", *CPU2, f"cluster.runs_dir={runs}", "run_id=first-step", "trainer.max_steps=2",
            "trainer.val_check_interval=1000", "trainer.checkpoint.every_n_steps=1", "trainer.logger=csv",
            "trainer.enable_progress_bar=false", "dataset.synthetic_train_size=400", "dataset.max_val_samples=8"]
    start = time.time()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    submitted = time.time()
    m = re.search(r"submitted job (\d+)", proc.stdout)
    if not m:
        raise SystemExit(f"submission failed: {proc.stdout}{proc.stderr}")
    job = m.group(1)
    first = next(runs.glob("*/first-step")) / "checkpoints" / "step-00000001"
    deadline = time.time() + 180
    while not first.exists() and time.time() < deadline:
        time.sleep(0.05)
    if not first.exists():
        raise SystemExit(f"no first step within 180 s (job {job}); see zerorun logs {job}")
    step = first.stat().st_mtime
    sacct = subprocess.run(["sacct", "-n", "-P", "-X", "-j", job, "-o", "Start"], capture_output=True, text=True)
    started = sacct.stdout.strip()
    print(f"first step 2x1 DDP         {step - start:.2f} s from `zerorun ...` start to step 1's checkpoint "
          f"(CLI returned after {submitted - start:.2f} s; job started {started})")
    t, proc = wall([PY, "train.py", "status", job, "--runs-dir", str(runs)], 3)
    print(f"zerorun status JOB         {t:.3f} s wall (squeue answers a live job)")
    return [job]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--no-slurm", action="store_true", help="skip what needs the local cluster")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not args.no_slurm and shutil.which("sinfo") and subprocess.run(["sinfo"], capture_output=True).returncode:
        raise SystemExit("the cluster does not answer sinfo: `zerorun cluster up` and export SLURM_CONF")
    with tempfile.TemporaryDirectory(prefix="zr-bench-") as tmp:
        runs = Path(tmp)
        bench_cli(args.repeat, runs / "cli")
        bench_big_dry_run(runs / "big")
        if args.no_slurm:
            return
        mine = bench_submit(min(args.repeat, 3), runs / "submit")
        subprocess.run(["scancel", *mine], capture_output=True)
        mine = bench_first_step(runs / "first")
        # let it finish its 2 steps rather than leave a half-written run; then the folder goes
        deadline = time.time() + 120
        while time.time() < deadline and subprocess.run(["squeue", "-h", "-j", mine[0]], capture_output=True,
                                                        text=True).stdout.strip():
            time.sleep(0.5)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
