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


def save_config(cfg: Any, run_dir: str) -> Path:
    """Save the resolved config; ranks load it from here, so later edits to the user's files do not leak in."""
    path = prepare(run_dir) / CONFIG_NAME
    tmp = path.with_name(f".{CONFIG_NAME}.tmp")
    tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    os.replace(tmp, path)
    return path


def load_config(run_dir: str | os.PathLike) -> DictConfig:
    path = Path(run_dir) / CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a zerorun run folder")
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ValueError(f"{path} does not hold a zerorun config (a mapping at the top)")
    return cfg
