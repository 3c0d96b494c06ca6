"""The Hydra app behind `zerorun` and `python train.py`: config -> checks -> plan -> run, submit or dry run."""

from __future__ import annotations

import sys
from typing import Sequence

import hydra
from omegaconf import DictConfig

from configs.finalize import finalize
from configs.schema import register
from configs.validate import ConfigError, check_config

register()


def launch(cfg: DictConfig, overrides: Sequence[str] = ()) -> int:
    """Check, plan, and run locally, submit to Slurm, or print the dry run. Returns the exit status.

    `overrides` are the command line's; with resume=RUN_DIR they are applied to the run's saved config.
    """
    from cluster.plan import SetupFileError, make_plan, read_setup_file
    from jobs import runs

    try:
        if cfg.resume:
            cfg = runs.resumed_config(cfg.resume, list(overrides))
        check_config(cfg)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"zerorun: {e}", file=sys.stderr)
        return 2
    cfg = finalize(cfg)
    try:
        # the setup file is read here, at submission, so that planning itself stays pure
        plan = make_plan(cfg, setup_file_lines=read_setup_file(cfg.cluster.setup_file))
    except SetupFileError as e:
        print(f"zerorun: {e}", file=sys.stderr)
        return 2
    if cfg.dry_run:
        from jobs.dryrun import dry_run

        return dry_run(cfg, plan)
    if plan.backend == "local":
        runs.save_config(cfg, plan.run_dir)
        return _run_local(plan)
    # submit writes the run folder itself, once the preflight has passed
    from jobs.submit import submit

    return submit(cfg, plan)


def _run_local(plan) -> int:  # type: ignore[no-untyped-def]
    import json
    from pathlib import Path

    from cluster import local

    result = local.run(plan)
    if result.returncode != 0:
        where = f"rank {result.failed_rank}" if result.failed_rank is not None else "the job"
        print(f"\nzerorun: {where} failed (exit {result.returncode}); log: {result.logs.get(result.failed_rank or 0)}",
              file=sys.stderr)
        if result.failed_rank:
            print(local.tail(result.logs[result.failed_rank]), file=sys.stderr)
        return result.returncode
    metrics_file = Path(plan.run_dir) / "metrics.json"
    if metrics_file.exists():
        metrics = json.loads(metrics_file.read_text())
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
        print(f"\nzerorun: done. {shown}\nrun folder: {plan.run_dir}")
    return 0


@hydra.main(version_base="1.3", config_path="pkg://configs", config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    rc = launch(cfg, HydraConfig.get().overrides.task)
    if rc:
        sys.exit(rc)
