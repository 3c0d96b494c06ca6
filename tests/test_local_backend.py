"""The local backend as a user meets it: Ctrl-C and SIGTERM stop a run with a checkpoint however long the save
takes, the run then exits resumable; a run folder is claimed once; a shared folder keeps its mode; a resume is
refused while the run's ranks still run; the dry run shows exactly the environment a rank gets."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.backends.local import rank_environ
from cluster.plan import make_plan
from conftest import REPO, only_run_dir, wait_until
from jobs import runs
from trainer_core import attempts
from trainer_core.contract import EXIT_RESUMABLE

LONG = ("trainer.max_steps=100000", "trainer.val_check_interval=100000", "trainer.enable_progress_bar=false",
        "dataset.synthetic_train_size=400", "dataset.max_val_samples=8", "task.log_samples=0")
SLOW_SAVE_S = 12  # longer than the 10 s the first version gave a stopping rank


def slow_stop_save(where: Path) -> Path:
    """A sitecustomize for the ranks: the stop's checkpoint save first sleeps SLOW_SAVE_S (a slow filesystem)."""
    where.mkdir(exist_ok=True)
    (where / "sitecustomize.py").write_text(f"""
import sys, time
class _Hook:
    def find_spec(self, name, path=None, target=None):
        if name != "trainer_core.train":
            return None
        sys.meta_path.remove(self)
        from trainer_core import checkpointing
        original = checkpointing.AtomicCheckpoint.save
        def save(self, trainer, why):
            if why == "stop":
                time.sleep({SLOW_SAVE_S})
            return original(self, trainer, why)
        checkpointing.AtomicCheckpoint.save = save
        return None
sys.meta_path.insert(0, _Hook())
""")
    return where


def start(runs_dir: Path, *overrides: str, env: dict | None = None, blocked: tuple = ()) -> subprocess.Popen:
    """`blocked`: signals the launcher inherits blocked (a signal mask passes through fork and exec)."""
    return subprocess.Popen([sys.executable, "train.py", f"cluster.runs_dir={runs_dir}", *LONG, *overrides],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True,
                            preexec_fn=(lambda: signal.pthread_sigmask(signal.SIG_BLOCK, blocked)) if blocked else None)


def first_step(runs_dir: Path) -> Path:
    def found():
        dirs = list(runs_dir.glob("*/*/attempts.jsonl"))
        return dirs and any(e["event"] == "first_step" for e in attempts.read(dirs[0].parent)) and dirs[0].parent
    return wait_until("the first training step", found, timeout=120)


@pytest.mark.slow
# sigterm: sent to a launcher whose parent had the stop signals blocked (as a process that imported the rank entry
# has): the launcher unblocks what it forwards, or the stop would never reach the ranks
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_stop_saves_however_long_it_takes_and_the_run_exits_resumable(tmp_path, how):
    proc = start(tmp_path / "runs", "trainer=ddp", "cluster.tasks_per_node=2",
                 env={"PYTHONPATH": str(slow_stop_save(tmp_path / "inject"))},
                 blocked=(signal.SIGTERM, signal.SIGUSR2, signal.SIGINT) if how == "sigterm" else ())
    try:
        run_dir = first_step(tmp_path / "runs")
        if how == "ctrl-c":  # the terminal sends SIGINT to the whole foreground process group
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=SLOW_SAVE_S + 120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == EXIT_RESUMABLE, out[-3000:]
    last = attempts.attempts(attempts.read(run_dir))[-1]
    assert last.checkpoint_step is not None and last.requeued is False
    assert "a local run: nothing to requeue; continue it with resume=RUN_DIR" in (last.requeue or "")
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step-{last.checkpoint_step:08d}"


@pytest.mark.slow
def test_resume_is_refused_while_the_local_runs_ranks_run(tmp_path):
    proc = start(tmp_path / "runs", "trainer.checkpoint.every_n_steps=2")
    try:
        run_dir = first_step(tmp_path / "runs")
        wait_until("a checkpoint", lambda: (run_dir / "checkpoints" / "latest").exists(), 60)
        with pytest.raises(runs.RunFolderError, match="ranks of its local run are still running"):
            runs.resumed_config(str(run_dir), [])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)


def test_a_run_folder_is_claimed_once(tmp_path):
    folder = runs.prepare(str(tmp_path / "r"))
    runs.claim(str(folder))
    with pytest.raises(runs.RunFolderError, match=r"already holds a run; continue it with resume="):
        runs.claim(str(folder))


def test_an_existing_shared_folder_keeps_its_mode_a_new_one_is_private(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    runs.prepare(str(shared))
    assert shared.stat().st_mode & 0o777 == 0o755
    new = runs.prepare(str(tmp_path / "new" / "run"))
    assert new.stat().st_mode & 0o777 == 0o700


def test_the_dry_run_shows_exactly_the_environment_a_local_rank_gets(compose, tmp_path):
    from configs.finalize import finalize
    from jobs.dryrun import dry_run

    cfg = finalize(compose("cluster.nodes=2", "trainer=ddp", "dry_run=true"))
    plan = make_plan(cfg)
    assert dry_run(cfg, plan, out=io.StringIO(), err=io.StringIO()) == 0
    script = (Path(plan.run_dir) / "job.local.sh").read_text().splitlines()
    for spec, line in zip(plan.ranks(["127.0.0.1"] * plan.nodes), script[1:]):
        env = rank_environ(plan, spec, "<launcher pid>", "<free port>")
        assigns = line.split(" ", 1)[1]
        for name, value in env.items():
            assert f"{name}={value}" in assigns or f"{name}='{value}'" in assigns, (name, line)
        assert "SLURM_JOB_ID=" in assigns and "ZERORUN_MASTER_PORT=" in assigns
    assert len(script) == 1 + plan.world_size
