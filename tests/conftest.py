"""Shared fixtures: composing the real config, shrinking it for tests, and an isolated cache and runs folder.

The real local Slurm cluster fixture lives in conftest_slurm.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import pytest

from conftest_slurm import *  # noqa: F401,F403  (session fixtures for the real local Slurm cluster)

REPO = Path(__file__).resolve().parents[1]

# Overrides that make any config a seconds-long run: tiny steps, little validation, CSV logs to read back.
SHRINK = (
    "trainer.max_steps=30",
    "trainer.val_check_interval=30",
    "trainer.log_every_n_steps=5",
    "trainer.logger=csv",
    "trainer.enable_progress_bar=false",
    "dataset.max_val_samples=16",
    "dataset.synthetic_train_size=600",
)


@pytest.fixture(scope="session", autouse=True)
def _offline_and_isolated(tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test touches the network, and generated data/tokenizers go to one cache for the session."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["ZERORUN_CACHE"] = str(tmp_path_factory.mktemp("zerorun-cache"))


def compose_config(*overrides: str):
    """The app's config, as `python train.py OVERRIDES` would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from configs.schema import register

    register()
    with initialize_config_module("configs", version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def data_and_tokenizer(cfg):  # type: ignore[no-untyped-def]
    """The raw data set and the tokenizer a run of `cfg` would build (made offline, cached)."""
    from trainer_core.data.loading import load_raw
    from trainer_core.data.tokenizer import load_tokenizer

    raw = load_raw(cfg.dataset)
    return raw, load_tokenizer(cfg.backbone, raw, cfg.dataset, cfg.task.name)


@pytest.fixture
def compose(tmp_path: Path) -> Callable[..., "DictConfig"]:  # noqa: F821
    """compose(*overrides) -> the app's config with its runs folder in tmp_path."""

    def _compose(*overrides: str, runs_dir: Path = tmp_path / "runs"):
        return compose_config(f"cluster.runs_dir={runs_dir}", *overrides)

    return _compose


def wait_until(what: str, predicate: Callable[[], object], timeout: float, poll: float = 0.1) -> object:
    """Poll until predicate() is truthy and return its value; fail the test naming `what` after `timeout` s."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(poll)
    raise AssertionError(f"waited {timeout:.0f} s for {what}")


def read_rank_reports(run_dir: str | Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(run_dir, "ranks").glob("rank-*.json"))]


def read_csv_metric(run_dir: str | Path, name: str) -> list[tuple[int, float]]:
    """(step, value) rows of one metric from the CSV logger of a run."""
    import csv

    rows = []
    with open(Path(run_dir) / "csv" / "version_0" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get(name):
                rows.append((int(row["step"]), float(row[name])))
    return rows


def only_run_dir(runs_dir: Path) -> Path:
    dirs = [p for p in runs_dir.glob("*/*") if (p / "config.yaml").exists()]
    assert len(dirs) == 1, f"expected one run folder under {runs_dir}, found {dirs}"
    return dirs[0]


def shrink(*extra: str) -> Sequence[str]:
    return (*SHRINK, *extra)
