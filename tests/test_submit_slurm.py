"""Submitting to the real local Slurm cluster (two nodes, n1 and n2, on this machine): training across both
nodes with DDP and with DeepSpeed's CPU rehearsal, the same ranks and losses as the local backend, failure
supervision, hostile strings and secrets, and bad input rejected before anything is submitted."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster import slurm
from conftest import REPO, only_run_dir, read_rank_reports, shrink
from jobs import snapshot, verbs

pytestmark = pytest.mark.slurm

NODE_CPU = ("cluster=slurm", "cluster.gpus_per_node=0", "cluster.tasks_per_node=1", "cluster.cpus_per_task=1",
            "cluster.partition=debug", "cluster.mem=1G", "cluster.time_min=5", "cluster.signal_delay_s=60")
TWO_NODES = (*NODE_CPU, "cluster.nodes=2")
# tiny: 10 steps, one validation at the end (its loss is averaged over the ranks), 8 validation examples
TINY = shrink("trainer.max_steps=10", "trainer.val_check_interval=10", "dataset.max_val_samples=8",
              "dataset.synthetic_train_size=400", "task.log_samples=0")
SECRETS = {"HF_TOKEN": "hf_zr_secret_value_0123456789", "WANDB_API_KEY": "wandb_zr_secret_value_0123456789"}
HOSTILE = "it's \"quoted\" $(touch /tmp/pwned-zr-e2e) `touch /tmp/pwned-zr-e2e` $HOME\nline two\ttab ünïcødé ✓"
PWNED = Path("/tmp/pwned-zr-e2e")


def submit(compose, runs: Path, *overrides: str) -> tuple[Path, str]:
    """compose + launch in this process, as `zerorun OVERRIDES` would; returns (run folder, job id)."""
    from jobs.app import launch

    cfg = compose(*overrides, runs_dir=hydra_quoted(str(runs)))
    rc = launch(cfg)
    assert rc == 0, f"launch returned {rc}"
    run_dir = only_run_dir(runs)
    record = snapshot.read_record(run_dir)
    assert record is not None and record.job_id.isdigit()
    return run_dir, record.job_id


def wait(job_id: str, timeout: float) -> slurm.JobState:
    deadline = time.monotonic() + timeout
    while True:
        st = slurm.query([job_id])[job_id]
        if st.finished or time.monotonic() > deadline:
            return st
        time.sleep(0.5)


def logs_of(run_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((run_dir / "logs").glob("*")))


def hydra_quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@pytest.fixture(scope="module")
def ddp_run(slurm_cluster, tmp_path_factory):
    """One 2-node DDP job, shared by the tests that read it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from configs.schema import register

    register()
    runs = tmp_path_factory.mktemp("ddp") / "runs"

    def compose(*overrides: str, runs_dir: Path):
        with initialize_config_module("configs", version_base="1.3"):
            return hydra_compose("config", overrides=[f"cluster.runs_dir={runs_dir}", *overrides])

    run_dir, job_id = submit(compose, runs, *TWO_NODES, "trainer=ddp", *TINY)
    return run_dir, job_id, wait(job_id, timeout=120)


def test_ddp_trains_across_both_nodes(ddp_run):
    run_dir, job_id, st = ddp_run
    assert st.state == "COMPLETED", f"job {job_id} ended {st}:\n{logs_of(run_dir)[-3000:]}"
    reports = read_rank_reports(run_dir)
    assert [(r["rank"], r["world_size"], r["host"]) for r in reports] == [(0, 2, "n1"), (1, 2, "n2")]
    assert {r["master_addr"] for r in reports} == {"n1"} and {r["job_id"] for r in reports} == {job_id}
    assert reports[0]["metrics"]["val_loss"] == reports[1]["metrics"]["val_loss"], "both see the same loss"
    assert reports[0]["weights_sha256"] == reports[1]["weights_sha256"], "the ranks hold the same model"
    assert reports[0]["metrics"]["global_step"] == 10
    assert (run_dir / "checkpoints" / "latest").exists(), "the checkpoint lands in the run folder"
    assert sorted(p.name for p in (run_dir / "logs").glob("*")) == [f"{job_id}_0.out", f"{job_id}_1.out",
                                                                    f"{job_id}_batch.out"]


def test_submission_leaves_snapshot_and_record(ddp_run):
    run_dir, job_id, _ = ddp_run
    record = json.loads((run_dir / "submission.json").read_text())
    assert record["job_id"] == job_id and record["run_dir"] == str(run_dir) and record["submitted_at"]
    snap = run_dir / "snapshot"
    assert (snap / "job.sbatch").read_text() == (run_dir / "job.sbatch").read_text()
    assert (snap / "config.yaml").read_text() == (run_dir / "config.yaml").read_text()
    git = json.loads((snap / "git.json").read_text())
    assert git["repo"] and len(git["commit"]) == 40 and (snap / "git.diff").exists()
    versions = json.loads((snap / "versions.json").read_text())["packages"]
    assert versions["zerorun"] and versions["torch"] and versions["submitit"]


def test_status_and_logs_of_a_finished_job(ddp_run):
    run_dir, job_id, _ = ddp_run
    proc = subprocess.run([sys.executable, "train.py", "status", job_id, "--runs-dir", str(run_dir.parent.parent)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    row = next(x for x in proc.stdout.splitlines() if x.startswith(job_id))
    assert "COMPLETED" in row and "2x1" in row and str(run_dir) in row
    out = io.StringIO()
    assert verbs.logs([str(run_dir), "--rank", "1"], out=out) == 0
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in out.getvalue()


def test_local_backend_gives_the_same_ranks_and_losses(ddp_run, compose, tmp_path):
    from jobs.app import launch

    run_dir, _, st = ddp_run
    assert st.state == "COMPLETED"
    local = [o.replace("cluster=slurm", "cluster=local") for o in TWO_NODES if "partition" not in o]
    assert launch(compose(*local, "trainer=ddp", *TINY)) == 0
    local_reports = read_rank_reports(only_run_dir(tmp_path / "runs"))
    slurm_reports = read_rank_reports(run_dir)
    assert [(r["rank"], r["world_size"], r["node_rank"]) for r in local_reports] == \
           [(r["rank"], r["world_size"], r["node_rank"]) for r in slurm_reports]
    for lo, sl in zip(local_reports, slurm_reports):
        assert lo["metrics"]["train_loss"] == pytest.approx(sl["metrics"]["train_loss"], rel=1e-6)
        assert lo["metrics"]["val_loss"] == pytest.approx(sl["metrics"]["val_loss"], rel=1e-6)


@pytest.mark.deepspeed
def test_deepspeed_cpu_rehearsal_trains_across_both_nodes(slurm_cluster, compose, tmp_path):
    run_dir, job_id = submit(compose, tmp_path / "runs", *TWO_NODES, "trainer=deepspeed",
                             "cluster.cpu_rehearsal=true", *TINY)
    st = wait(job_id, timeout=240)
    assert st.state == "COMPLETED", f"job {job_id} ended {st}:\n{logs_of(run_dir)[-3000:]}"
    reports = read_rank_reports(run_dir)
    assert [(r["rank"], r["world_size"], r["host"]) for r in reports] == [(0, 2, "n1"), (1, 2, "n2")]
    assert reports[0]["weights_sha256"] == reports[1]["weights_sha256"]
    assert reports[0]["metrics"]["val_loss"] == reports[1]["metrics"]["val_loss"]
    assert "CPU rehearsal" in logs_of(run_dir)


def _failure_injector(where: Path) -> Path:
    """A sitecustomize that makes rank 1 raise once training starts importing its modules: the failure is
    injected (there is no config value that fails on one rank only), the supervision under test is real."""
    where.mkdir()
    (where / "sitecustomize.py").write_text(
        "import os, sys\n"
        "class _Fail:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'trainer_core.tasks':\n"
        "            raise RuntimeError('injected failure on rank 1')\n"
        "if os.environ.get('SLURM_PROCID') == '1':\n"
        "    sys.meta_path.insert(0, _Fail())\n"
    )
    return where


def test_a_rank_that_raises_fails_the_job_promptly_and_status_names_it(slurm_cluster, compose, tmp_path):
    inject = _failure_injector(tmp_path / "inject")
    start = time.monotonic()
    run_dir, job_id = submit(compose, tmp_path / "runs", *TWO_NODES, "trainer=ddp", *TINY,
                             f"cluster.setup=[{hydra_quoted(f'export PYTHONPATH={inject}')}]")
    st = wait(job_id, timeout=60)
    assert st.state == "FAILED" and time.monotonic() - start < 60, st
    out = io.StringIO()
    verbs.status([job_id, "--runs-dir", str(tmp_path / "runs")], out=out)
    row = next(x for x in out.getvalue().splitlines() if x.startswith(job_id))
    assert "FAILED" in row and "rank 1 failed" in row and "RuntimeError: injected failure on rank 1" in row
    log = io.StringIO()
    assert verbs.logs([job_id, "--runs-dir", str(tmp_path / "runs")], out=log) == 0
    assert "Traceback" in log.getvalue() and "injected failure on rank 1" in log.getvalue()


def _probe(where: Path, out_dir: Path) -> Path:
    """A sitecustomize that records, on each rank, what the rank got: its argv, working directory, a passed-through
    variable, whether the secrets are set, and the name and an override as loaded from the run's config."""
    where.mkdir()
    (where / "sitecustomize.py").write_text(
        "import atexit, json, os, sys\n"
        "def _dump():\n"
        "    if len(sys.argv) < 2 or 'SLURM_PROCID' not in os.environ:\n"
        "        return\n"
        "    from jobs.runs import load_config\n"
        "    cfg = load_config(sys.argv[1])\n"
        f"    path = os.path.join({str(out_dir)!r}, 'rank-' + os.environ['SLURM_PROCID'] + '.json')\n"
        "    json.dump({'argv': sys.argv[1:], 'cwd': os.getcwd(), 'hostile_env': os.environ.get('ZR_HOSTILE'),\n"
        "               'has_hf_token': 'HF_TOKEN' in os.environ, 'has_wandb': 'WANDB_API_KEY' in os.environ,\n"
        "               'name': cfg.name, 'prefix': cfg.dataset.source_prefix}, open(path, 'w'))\n"
        "atexit.register(_dump)\n"
    )
    return where


def test_hostile_strings_reach_the_ranks_exactly_and_secrets_stay_out(slurm_cluster, compose, tmp_path, monkeypatch):
    PWNED.unlink(missing_ok=True)
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("ZR_HOSTILE", HOSTILE)
    probe_out = tmp_path / "probe"
    probe_out.mkdir()
    inject = _probe(tmp_path / "inject", probe_out)
    workdir = tmp_path / f"work {HOSTILE}"
    workdir.mkdir(parents=True)
    monkeypatch.chdir(workdir)
    runs = tmp_path / f"runs {HOSTILE}"
    run_dir, job_id = submit(
        compose, runs, *TWO_NODES, "trainer=ddp", *TINY,
        f"name={hydra_quoted(HOSTILE.replace('/', '|'))}",
        f"dataset.source_prefix={hydra_quoted(HOSTILE)}",
        "cluster.env_passthrough=[ZR_HOSTILE,HF_TOKEN]",
        f"cluster.setup=[{hydra_quoted(f'export PYTHONPATH={inject}')}]",
    )
    st = wait(job_id, timeout=120)
    assert st.state == "COMPLETED", f"job {job_id} ended {st}:\n{logs_of(run_dir)[-3000:]}"
    seen = [json.loads(p.read_text()) for p in sorted(probe_out.glob("rank-*.json"))]
    assert len(seen) == 2
    for s in seen:
        assert s["argv"] == [str(run_dir)], "the run folder reached the rank byte for byte"
        assert s["cwd"] == str(workdir)
        assert s["name"] == HOSTILE.replace("/", "|") and s["prefix"] == HOSTILE
        assert s["hostile_env"] == HOSTILE
        assert s["has_hf_token"] and not s["has_wandb"], "only listed names reach the job"
    assert not PWNED.exists(), "a hostile string was executed"
    # the secrets' values are nowhere in what the run folder holds: script, config, snapshot, record, logs
    for path in run_dir.rglob("*"):
        if path.is_file():
            text = path.read_bytes()
            for v in SECRETS.values():
                assert v.encode() not in text, f"a secret landed in {path}"
    assert (run_dir.stat().st_mode & 0o077) == 0, "the run folder is private to its owner"


def test_cancel_ends_a_running_job(slurm_cluster, compose, tmp_path):
    run_dir, job_id = submit(compose, tmp_path / "runs", *NODE_CPU, "trainer=default", *TINY,
                             "cluster.setup=[sleep 120]")
    deadline = time.monotonic() + 30
    while slurm.query([job_id])[job_id].state != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.3)
    out = io.StringIO()
    assert verbs.cancel([str(run_dir)], out=out) == 0
    assert wait(job_id, timeout=30).state == "CANCELLED"


# ---- bad input: rejected before anything is submitted ----

BAD = [
    ("no nodes", ("cluster.nodes=0",), "at least 1 node"),
    ("negative time", ("cluster.time_min=-5",), "cluster.time_min=-5: the time limit must be at least 1 minute"),
    ("tasks per node do not match devices", ("trainer.devices=2",),
     "trainer.devices(2) x trainer.num_nodes(1) differs from the job geometry"),
    ("GPU ranks do not match tasks", ("cluster.gpus_per_node=2",), "set cluster.tasks_per_node=${cluster.gpus_per_node}"),
    ("partition that does not exist", ("cluster.partition=gpu",), "choose one of: debug, high"),
    ("memory over a node", ("cluster.mem=64G",), "lower cluster.mem"),
    ("DeepSpeed without GPUs", ("trainer=deepspeed", "cluster.nodes=2"), "cluster.cpu_rehearsal=true"),
    ("unreadable setup file", ("cluster.setup_file=/nonexistent/setup.sh",), "point it at a readable file"),
]


@pytest.mark.parametrize("case,overrides,fix", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_rejected_before_submission(slurm_cluster, compose, tmp_path, capsys, case, overrides, fix):
    from jobs.app import launch

    name = f"bad-{tmp_path.name}"[:40]
    runs = tmp_path / "runs"
    rc = launch(compose(*NODE_CPU, "trainer=ddp" if "cluster.nodes=0" in overrides else "trainer=default",
                        f"name={name}", *overrides, runs_dir=runs))
    err = capsys.readouterr().err
    assert rc == 2 and fix in err, err
    assert not list(runs.rglob("submission.json")), "nothing may claim a submission"
    assert slurm._run(["squeue", "-h", "-n", name]).stdout.strip() == ""
    assert slurm._run(["sacct", "-n", "-X", "--name", name, "-S", "now-1hour"]).stdout.strip() == ""


def test_unknown_cluster_key_is_rejected_by_the_cli_with_the_valid_keys(slurm_cluster, tmp_path):
    proc = subprocess.run([sys.executable, "train.py", *NODE_CPU, "cluster.node=2", f"cluster.runs_dir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "did you mean cluster.nodes?" in proc.stderr and "valid keys of cluster:" in proc.stderr
    assert not list(tmp_path.rglob("*")), "nothing is written"
