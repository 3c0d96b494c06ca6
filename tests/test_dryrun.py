"""Dry run: it writes and prints exactly what would run or be submitted, consults `sbatch --test-only`, submits
nothing; big jobs stay fast; and the submission side never imports the training stack."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import preflight, render
from jobs.dryrun import RANKS_NAME, dry_run
from conftest import REPO, only_run_dir

HEAVY = ("torch", "lightning", "pytorch_lightning", "deepspeed", "transformers", "datasets")
CPU_SLURM = ("cluster=slurm", "cluster.gpus_per_node=0", "cluster.tasks_per_node=1", "cluster.cpus_per_task=1",
             "cluster.mem=1G", "cluster.time_min=5", "cluster.signal_delay_s=60", "cluster.partition=debug")


def test_local_dry_run_writes_and_prints_everything_and_runs_nothing(compose, tmp_path, capsys):
    from jobs.app import launch

    cfg = compose("cluster.nodes=2", "trainer=ddp", "dry_run=true")
    assert launch(cfg) == 0
    out = capsys.readouterr().out
    run_dir = only_run_dir(tmp_path / "runs")
    for name in ("config.yaml", RANKS_NAME, "job.local.sh"):
        assert (run_dir / name).exists(), name
        assert (run_dir / name).read_text() in out, f"{name} is printed as written"
    assert "zerorun dry run: nothing is submitted" in out
    ranks = (run_dir / RANKS_NAME).read_text().splitlines()
    assert ranks[0].split() == list(render.TABLE_COLUMNS)
    assert [r.split()[1:5] for r in ranks[1:]] == [["0", "0", "0", "2"], ["1", "0", "1", "2"]]
    assert "127.0.0.1:<free port>" in ranks[1]
    assert not list(run_dir.glob("logs/*")) and not (run_dir / "checkpoints").exists(), "nothing ran"
    assert (run_dir.stat().st_mode & 0o077) == 0, "run folders are private to their owner"


def test_slurm_dry_run_without_a_cluster_still_renders_and_says_what_was_not_checked(compose, tmp_path):
    from jobs.app import finalize
    from cluster.plan import make_plan

    cfg = finalize(compose(*CPU_SLURM, "cluster.nodes=2", "trainer=ddp", "dry_run=true"))
    out, err = io.StringIO(), io.StringIO()
    rc = dry_run(cfg, make_plan(cfg), out=out, err=err, facts=preflight.ClusterFacts(error="sinfo is not on PATH"))
    assert rc == 0, err.getvalue()
    text = out.getvalue()
    script = (Path(cfg.run_dir) / render.SCRIPT_NAME).read_text()
    assert script in text and "#SBATCH --nodes=2" in script
    assert "not checked" in text and "sbatch --test-only: not asked" in text


def test_a_config_that_would_write_a_secret_is_refused_with_the_fix(compose, tmp_path, monkeypatch, capsys):
    from jobs.app import launch

    monkeypatch.setenv("HF_TOKEN", "hf_zr_dry_secret_0123456789")
    rc = launch(compose("dataset.source_prefix=${oc.env:HF_TOKEN}", "dry_run=true"))
    err = capsys.readouterr().err
    assert rc == 2 and "$HF_TOKEN" in err and "cluster.env_passthrough" in err
    assert not (tmp_path / "runs").exists(), "nothing is written"


def test_dry_run_of_a_512_node_job_writes_every_rank_and_abbreviates_the_printed_table(compose):
    # its time is measured by bench/bench_submit.py (dry run 512x8), not asserted here
    from jobs.app import finalize
    from cluster.plan import make_plan

    cfg = finalize(compose("cluster=slurm", "cluster.nodes=512", "cluster.gpus_per_node=8", "cluster.tasks_per_node=8",
                           "trainer=deepspeed", "dry_run=true"))
    plan = make_plan(cfg)
    out = io.StringIO()
    rc = dry_run(cfg, plan, out=out, err=io.StringIO(), facts=preflight.ClusterFacts(error="not asked here"))
    assert rc == 0
    written = (Path(cfg.run_dir) / RANKS_NAME).read_text().splitlines()
    assert len(written) == 4097 and written[-1].split()[1] == "4095"
    printed = [x for x in out.getvalue().splitlines() if x.startswith("node")]
    assert len(printed) < 30 and "4076 more not shown" in out.getvalue()


def test_submission_side_never_imports_the_training_stack(tmp_path):
    """A fresh interpreter: compose, dry-run a Slurm job, ask status; then look at sys.modules."""
    code = f"""
import io, json, sys
from hydra import compose, initialize_config_module
from configs.schema import register
register()
with initialize_config_module("configs", version_base="1.3"):
    cfg = compose("config", overrides=["cluster=slurm", "cluster.nodes=2", "cluster.gpus_per_node=4",
                                       "cluster.tasks_per_node=4", "trainer=deepspeed", "dry_run=true",
                                       "cluster.runs_dir={tmp_path}"])
from jobs.app import launch
from jobs import verbs
rc = launch(cfg)
verbs.status(["--runs-dir", "{tmp_path}"], out=io.StringIO())
print(json.dumps({{"rc": rc, "heavy": sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [], f"the submission side imported {result['heavy']}"


def test_cli_help_lists_verbs_and_groups():
    # its time is measured by bench/bench_submit.py (--help), not asserted here
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    for word in ("status", "logs", "cancel", "cluster: local, slurm", "trainer: ddp, deepspeed"):
        assert word in proc.stdout


@pytest.mark.slurm
def test_dry_run_consults_sbatch_test_only_and_leaves_the_queue_untouched(slurm_cluster, tmp_path):
    from cluster.slurm import _run

    name = f"dry-{tmp_path.name}"[:40]
    proc = subprocess.run(
        [sys.executable, "train.py", *CPU_SLURM, "cluster.nodes=2", "trainer=ddp", "dry_run=true", f"name={name}",
         f"cluster.runs_dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sbatch --test-only: sbatch: Job" in proc.stdout and "to start at" in proc.stdout
    assert "preflight: ok" in proc.stdout
    run_dir = only_run_dir(tmp_path)
    assert not (run_dir / "submission.json").exists()
    for argv in (["squeue", "-h", "-n", name], ["sacct", "-n", "-X", "--name", name, "-S", "now-1hour"]):
        assert _run(argv).stdout.strip() == "", f"{argv[0]} shows a job named {name}"
