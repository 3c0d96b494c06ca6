"""Site profiles on the real local Slurm cluster: `zerorun site probe` records what the cluster says (compared
with scontrol's and sinfo's own answers), a submission with site=NAME is checked against the kept probe without
any Slurm command at submit (a probe that says a smaller MaxTime than the cluster's real one, unlimited here, is
the one quoted; a PATH spy records every Slurm command the submitter runs), a quick job submitted with the site
runs to completion, and a sweep over the probe's per-user submit limit, counting a job already queued, is refused.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster import preflight, site_probe, slurm
from conftest import REPO, only_run_dir
from configs import sites

pytestmark = pytest.mark.slurm

PROFILE = """# @package _global_
# the local cluster, as a user would describe it
defaults:
  - override /cluster: slurm
cluster:
  partition: debug
  gpus_per_node: 0
  tasks_per_node: 1
  cpus_per_task: 1
  mem: 1G
  time_min: 5
  signal_delay_s: 60
"""
TINY = ("trainer.max_steps=10", "trainer.val_check_interval=10", "trainer.log_every_n_steps=5",
        "trainer.logger=csv", "trainer.enable_progress_bar=false", "dataset.max_val_samples=8",
        "dataset.synthetic_train_size=400", "task.log_samples=0")
SLURM_COMMANDS = ("sinfo", "scontrol", "squeue", "sacct", "sacctmgr", "sbatch", "scancel", "srun")


@pytest.fixture
def site(slurm_cluster, tmp_path) -> dict:
    """A site folder with the profile `mine`, and a PATH spy: each Slurm command the submitter runs is logged
    (name and arguments) into ZR_SPY_LOG and then runs for real. Jobs never see ZR_SPY_LOG (not exported)."""
    folder = tmp_path / "sites"
    folder.mkdir()
    (folder / "mine.yaml").write_text(PROFILE)
    spy = tmp_path / "spy"
    spy.mkdir()
    for name in SLURM_COMMANDS:
        real = shutil.which(name)
        assert real, f"{name} not on PATH"
        (spy / name).write_text(f'#!/bin/sh\n[ -n "$ZR_SPY_LOG" ] && echo "{name} $*" >> "$ZR_SPY_LOG"\n'
                                f'exec {real} "$@"\n')
        (spy / name).chmod(0o755)
    log = tmp_path / "spy.log"
    env = {**os.environ, sites.SITES_ENV: str(folder), "PATH": f"{spy}{os.pathsep}{os.environ['PATH']}",
           "ZR_SPY_LOG": str(log)}
    return {"folder": folder, "env": env, "log": log, "runs": tmp_path / "runs"}


def zerorun(site: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=REPO, env=site["env"], capture_output=True,
                          text=True, timeout=timeout)


def spied(site: dict) -> list[str]:
    log = site["log"]
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


def probe(site: dict) -> site_probe.SiteProbe:
    proc = zerorun(site, "site", "probe", "mine")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    spied(site)
    os.environ[sites.SITES_ENV] = str(site["folder"])
    try:
        kept = site_probe.load("mine")
    finally:
        del os.environ[sites.SITES_ENV]
    assert kept is not None
    return kept


def keep(site: dict, p: site_probe.SiteProbe) -> None:
    site_probe.save(p, site["folder"] / "mine.probe.yaml")


def test_the_probe_records_what_the_cluster_says(site):
    p = probe(site)
    parts = site_probe.parse_partitions(subprocess.run(["scontrol", "show", "partition", "-o"], capture_output=True,
                                                       text=True, timeout=30).stdout)
    assert {x.name for x in p.partitions} == set(parts) >= {"debug", "high"}
    for x in p.partitions:
        said = parts[x.name]
        assert x.default == (said["Default"] == "YES")
        assert x.max_time_min == preflight.slurm_minutes(said["MaxTime"])
        assert x.total_nodes == int(said["TotalNodes"])
        assert x.max_nodes == (None if said["MaxNodes"] == "UNLIMITED" else int(said["MaxNodes"]))
    assert p.default_partition == "debug"
    nodes = subprocess.run(["sinfo", "-h", "-N", "-p", "debug", "-o", "%N"], capture_output=True, text=True,
                           timeout=30).stdout.split()
    assert sorted(n for g in p.partition("debug").nodes for n in g.names) == sorted(nodes)
    config = slurm.parse_scontrol_config(subprocess.run(["scontrol", "show", "config"], capture_output=True,
                                                        text=True, timeout=30).stdout)
    assert (p.max_array_size, p.max_job_count) == (config.max_array_size, config.max_job_count)
    version = subprocess.run(["scontrol", "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    assert p.slurm_version == version and "22.05" in version
    assert "normal" in {q.name for q in p.qos}, "the local cluster runs accounting: its QOS are visible"


def test_the_probe_checks_the_profile_itself_and_keeps_its_answer(site):
    (site["folder"] / "bad.yaml").write_text(PROFILE.replace("partition: debug", "partition: gpu"))
    proc = zerorun(site, "site", "probe", "bad")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "the profile of site bad would be refused on this cluster" in proc.stderr
    assert "cluster.partition='gpu' does not exist on this cluster; choose one of: debug, high" in proc.stderr
    assert (site["folder"] / "bad.probe.yaml").exists(), "the answer is kept all the same"


def test_a_submission_over_the_probes_maxtime_is_refused_without_asking_slurm(site):
    p = probe(site)
    debug = p.partition("debug")
    assert debug.max_time_min is None, "the real debug partition has no MaxTime: any refusal is the probe's"
    keep(site, dataclasses.replace(p, partitions=tuple(
        dataclasses.replace(x, max_time_min=3) if x.name == "debug" else x for x in p.partitions)))
    for extra in ((), ("dry_run=true",)):
        proc = zerorun(site, "site=mine", *TINY, f"cluster.runs_dir={site['runs']}", *extra)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert ("cluster.time_min=5 is over the MaxTime of partition 'debug' (3 min, from the probe of site mine"
                in proc.stderr), proc.stderr
        assert spied(site) == [], "no Slurm command at submit (nor sbatch --test-only in the dry run)"
        if not extra:
            assert not site["runs"].exists() or not any(site["runs"].rglob("*.*")), "a refused job writes nothing"


def test_a_job_submitted_with_the_site_runs(site):
    probe(site)
    proc = zerorun(site, "site=mine", "name=sitejob", *TINY, f"cluster.runs_dir={site['runs']}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = spied(site)
    assert [c.split()[0] for c in calls] == ["sbatch"], f"only sbatch at submit, got {calls}"
    job = re.search(r"submitted job (\d+)", proc.stdout).group(1)
    run_dir = only_run_dir(site["runs"])
    assert "#SBATCH --partition=debug" in (run_dir / "job.sbatch").read_text()
    deadline = time.monotonic() + 150
    while (st := slurm.query([job])[job]) and not st.finished and time.monotonic() < deadline:
        time.sleep(1)
    assert st.state == "COMPLETED", f"{st}; logs in {run_dir / 'logs'}"
    assert (run_dir / "metrics.json").exists()
    assert "site:\n  name: mine" in (run_dir / "config.yaml").read_text()


def test_a_sweep_over_the_probes_submit_limit_counts_the_jobs_already_queued(site):
    p = probe(site)
    keep(site, dataclasses.replace(p, qos=tuple(dataclasses.replace(q, max_submit_pu=2) if q.name == "normal" else q
                                                for q in p.qos)))
    held = subprocess.run(["sbatch", "--parsable", "-H", "-p", "debug", "-J", "zr-site-held", "--wrap", "true"],
                          capture_output=True, text=True, timeout=30)
    assert held.returncode == 0, held.stderr
    try:
        proc = zerorun(site, "-m", "site=mine", *TINY, f"cluster.runs_dir={site['runs']}", "seed=1,2")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        m = re.search(r"the sweep's 2 members \+ your (\d+) jobs already queued = (\d+) jobs, over the MaxSubmitPU of "
                      r"QOS normal of 2 \(from the probe of site mine", proc.stderr)
        assert m and int(m.group(1)) >= 1 and int(m.group(2)) == 2 + int(m.group(1)), proc.stderr
        calls = [c.split()[0] for c in spied(site)]
        assert calls == ["squeue"], f"one squeue at submit, nothing else: {calls}"
        assert not list(site["runs"].rglob("sweep.json")), "nothing submitted"
    finally:
        subprocess.run(["scancel", held.stdout.strip()], capture_output=True, timeout=30)
