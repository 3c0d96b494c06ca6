"""Run folders: where a run's resolved config, logs, checkpoints and record live, for every attempt of it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONFIG_NAME = "config.yaml"


def prepare(run_dir: str) -> Path:
    """Create the run folder, readable by its owner only (it holds the config and, later, the user's diff)."""
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


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
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.key_or_group
        if key in ("resume", "run_dir") or key.startswith("hydra"):
            continue
        if key in CONFIG_GROUPS or (o.is_add() and "." not in key):
            raise ValueError(
                f"resume={resume_dir}: the run keeps the config groups it was started with; drop "
                f"'{o.input_line}' (override single keys instead, e.g. trainer.max_steps=...)"
            )
        OmegaConf.update(cfg, key, o.value(), merge=False)
    cfg.run_dir = run_dir
    cfg.resume = run_dir
    check_resumable(cfg)
    return cfg


def check_resumable(cfg: DictConfig) -> None:
    """Refuse resume=RUN_DIR before anything is written when the folder holds no checkpoint this config can
    load: none at all, a `latest` that names no complete checkpoint, or one written for another model,
    strategy or number of ZeRO ranks. The message names what was found."""
    from trainer_core.checkpoint_store import CheckpointError, CheckpointMeta, CheckpointStore, model_config

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
