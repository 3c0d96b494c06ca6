"""Run folders: where a run's resolved config, logs, checkpoints and record live, for every attempt of it."""

from __future__ import annotations

import os
from pathlib import Path
import sys
from typing import Any, Mapping, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from trainer_core import attempts, layout

CONFIG_NAME = layout.CONFIG

# the rank entry's arguments, which the hang watchdog and the host step take too. Here, not in jobs/rank.py:
# importing that module holds the stop signals (the rank's start-up), which a watchdog must not inherit
USAGE = "usage: python -m jobs.rank RUN_DIR | python -m jobs.rank --array SWEEP_INDEX_FILE"


def run_dir_from_args(argv: Sequence[str], environ: Mapping[str, str]) -> Optional[str]:
    """The run folder named by the arguments (a sweep member's: found from the array task id); None after
    printing why when there is none."""
    if len(argv) == 2 and argv[0] == "--array":
        from cluster.sweep_plan import SweepIndexError, member_run_dir

        try:
            return member_run_dir(argv[1], environ)
        except SweepIndexError as e:
            print(f"zerorun: rank cannot start: {e}", file=sys.stderr)
            return None
    if len(argv) == 1:
        return argv[0]
    print(USAGE, file=sys.stderr)
    return None


class RunFolderError(ValueError):
    """The run folder cannot be used for this launch; the message names the fix."""


def prepare(run_dir: str) -> Path:
    """Create the run folder, readable by its owner only (it holds the config and, later, the user's diff).
    A folder that exists already keeps its mode: it may be a shared one the user pointed at."""
    path = Path(run_dir)
    try:
        path.mkdir(parents=True, mode=0o700)
    except FileExistsError:
        if not path.is_dir():
            raise RunFolderError(f"{run_dir} exists and is not a folder; choose another cluster.runs_dir or name")
    else:
        os.chmod(path, 0o700)  # mkdir's mode is masked by the umask
    return path


def claim(run_dir: str) -> None:
    """Make this launch the run folder's only first launch: the claim file is created exclusively, so two
    launches into one folder (the same run_id twice, or two runs started in the same second with the same id)
    cannot both proceed. A resume does not claim: the folder is its own."""
    try:
        fd = os.open(Path(run_dir) / layout.CLAIM, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise RunFolderError(
            f"{run_dir} already holds a run; continue it with resume={run_dir}, or start a new run with another "
            "run_id (leave run_id unset for a fresh one)") from None
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")


def live_job(run_dir: str | os.PathLike) -> Optional[str]:
    """Why the run's job is still alive (pending, running or requeued on its scheduler, or ranks of a local run
    still running), or None. A resume must not start a second job in the same folder."""
    from cluster.backends import get_backend
    from jobs import snapshot

    run_dir = Path(run_dir)
    record = snapshot.read_record(run_dir)
    if record is not None and record.job_id:
        cfg = load_config(run_dir)
        state = get_backend(str(cfg.cluster.backend)).query([record.job_id]).get(record.job_id)
        if state is not None and not state.finished and state.state != "UNKNOWN":
            return f"its job {record.job_id} is {state.state}; cancel it first (zerorun cancel {record.job_id}) or " \
                   f"wait for it to end"
    current = attempts.current(attempts.read(run_dir))
    if current is not None and current.end is None and current.requeued is None and current.failure is None:
        pids = [int(e["pid"]) for e in attempts.read(run_dir) if e["event"] == "rank_start" and e.get("pid")
                and str(e.get("job_id")) == current.job_id and record is None]
        alive = [p for p in pids if _alive(p)]
        if alive:
            return f"ranks of its local run are still running (pids {', '.join(map(str, alive))}); stop that run " \
                   "first (Ctrl-C where it runs)"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_config(run_dir: str | os.PathLike) -> DictConfig:
    path = Path(run_dir) / CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a zerorun run folder")
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ValueError(f"{path} does not hold a zerorun config (a mapping at the top)")
    return cfg


# Top-level config groups: a resumed run keeps the choices it was started with.
CONFIG_GROUPS = ("task", "dataset", "backbone", "optimizer", "scheduler", "trainer", "cluster")


def resumed_config(resume_dir: str, overrides: list[str]) -> DictConfig:
    """The saved config of the run in `resume_dir`, with this command's plain `key=value` overrides applied
    (e.g. a larger trainer.max_steps). Group choices cannot change under a run that already has checkpoints."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    run_dir = os.path.abspath(resume_dir)
    cfg = load_config(run_dir)
    followed = trainer_follows_geometry(cfg)
    parsed = OverridesParser.create().parse_overrides(overrides)
    for o in parsed:
        key = o.key_or_group
        if key in ("resume", "run_dir") or key.startswith("hydra"):
            continue
        if key in CONFIG_GROUPS or (o.is_add() and "." not in key):
            raise ValueError(
                f"resume={resume_dir}: the run keeps the config groups it was started with; drop "
                f"'{o.input_line}' (override single keys instead, e.g. trainer.max_steps=...)"
            )
        OmegaConf.update(cfg, key, o.value(), merge=False)
        followed.discard(key)
    # The saved config holds the trainer's geometry resolved; where it followed the cluster's, it follows the
    # new one (a resume on another number of ranks: resume=RUN_DIR cluster.nodes=K)
    follow_geometry(cfg, followed)
    cfg.run_dir = run_dir
    cfg.resume = run_dir
    if cfg.cluster.get("after") is not None and not any(o.key_or_group == "cluster.after" for o in parsed):
        # what the first submission waited for is not the resume's business (it may have ended long ago)
        cfg.cluster.after = None
    live = live_job(run_dir)
    if live:
        raise RunFolderError(f"resume={resume_dir}: not while the run is alive: {live}")
    check_watchdog_timeout(cfg)
    check_resumable(cfg)
    return cfg


def check_watchdog_timeout(cfg: DictConfig) -> None:
    """Refuse a resume whose watchdog.timeout_s is not longer than the step time an earlier attempt of the run
    measured (the ranks' "step_time" record): every step would count as a hang."""
    from trainer_core import attempts

    timeout = cfg.watchdog.timeout_s if cfg.get("watchdog") is not None else None
    measured = [e for e in attempts.read(cfg.run_dir) if e["event"] == "step_time"]
    if timeout is None or not measured or float(measured[-1]["seconds"]) < float(timeout):
        return
    raise ValueError(f"resume={cfg.run_dir}: watchdog.timeout_s={timeout:g} is shorter than one optimizer step "
                     f"of this run ({float(measured[-1]['seconds']):.2f} s measured in job "
                     f"{measured[-1].get('job_id')}): every step would count as a hang; set watchdog.timeout_s to "
                     "a few times the step time (or null for no watchdog)")


# the trainer's keys that follow the cluster geometry unless set by hand (configs/schema.py)
_GEOMETRY = {"trainer.devices": "cluster.tasks_per_node", "trainer.num_nodes": "cluster.nodes"}


def trainer_follows_geometry(cfg: DictConfig) -> set[str]:
    """The trainer's geometry keys whose saved value is the cluster's: they follow a changed cluster."""
    return {k for k, c in _GEOMETRY.items() if OmegaConf.select(cfg, k) == OmegaConf.select(cfg, c)}


def follow_geometry(cfg: DictConfig, keys: set[str]) -> None:
    """Set each of `keys` (from trainer_follows_geometry) to the cluster's value again, in place."""
    for key in keys:
        OmegaConf.update(cfg, key, OmegaConf.select(cfg, _GEOMETRY[key]), merge=False)


def check_resumable(cfg: DictConfig) -> None:
    """Refuse resume=RUN_DIR before anything is written when the folder holds no checkpoint this config can
    load: none at all, a `latest` that names no complete checkpoint, or one written for another model,
    strategy, a number of ZeRO ranks it cannot be re-partitioned for, or a global batch
    the new number of ranks cannot divide. The message names what was found and the fix."""
    from trainer_core.checkpoint_store import (CheckpointError, CheckpointMeta, CheckpointStore, model_config,
                                               resumed_accumulation)

    store = CheckpointStore(cfg.run_dir)
    latest = store.latest()  # CheckpointError names a corrupt pointer
    if latest is None:
        raise CheckpointError(
            f"resume={cfg.run_dir}: the run has no checkpoint to resume from ({store.describe()}); "
            "start a new run instead (without resume=), or set trainer.checkpoint.every_n_steps next time"
        )
    found = store.read_meta(latest)
    this_run = CheckpointMeta(step=found.step, strategy=str(cfg.trainer.strategy.name),
                              world_size=int(cfg.cluster.nodes) * int(cfg.cluster.tasks_per_node), model="",
                              model_config=model_config(cfg))
    why = found.mismatch(this_run)
    if why:
        raise CheckpointError(f"resume={cfg.run_dir}: cannot resume from {latest} (step {found.step}): {why}")
    try:  # on another number of ranks: the global batch must divide over them (or keep_batch=per_rank)
        resumed_accumulation(found, this_run.world_size, int(cfg.dataset.batch_size),
                             int(cfg.trainer.accumulate_grad_batches), str(cfg.trainer.get("keep_batch", "global")))
    except CheckpointError as e:
        raise CheckpointError(f"resume={cfg.run_dir}: cannot resume from {latest} (step {found.step}): {e}") from None
