"""The Hydra app behind `zerorun` and `python train.py`: config -> checks -> plan -> run, submit or dry run."""

from __future__ import annotations

import sys
from typing import Sequence

import hydra
from omegaconf import DictConfig

from configs.finalize import finalize
from configs.schema import register
from cluster.backends import get_backend
from configs.validate import ConfigError, check_config
from jobs import chains

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
        get_backend(str(cfg.cluster.backend))  # an unknown backend: the message lists the valid ones
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"zerorun: {e}", file=sys.stderr)
        return 2
    cfg = finalize(cfg)
    try:
        # the setup file and cluster.after are read here, at submission, so that planning itself stays pure;
        # a foreground backend has no queue: it waits here for cluster.after (jobs/chains.py)
        if get_backend(str(cfg.cluster.backend)).runs_in_foreground:
            chains.wait_here(cfg, wait=not cfg.dry_run)
            dependency = None
        else:
            dependency = chains.dependency(cfg)
        plan = make_plan(cfg, setup_file_lines=read_setup_file(cfg.cluster.setup_file), dependency=dependency)
    except (SetupFileError, chains.ChainError) as e:
        print(f"zerorun: {e}", file=sys.stderr)
        return 2
    if cfg.dry_run:
        from jobs.dryrun import dry_run

        return dry_run(cfg, plan)
    # submit writes the run folder itself, once the preflight has passed; a local job runs to its end there
    from jobs.submit import submit

    return submit(cfg, plan)


@hydra.main(version_base="1.3", config_path="pkg://configs", config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    rc = launch(cfg, HydraConfig.get().overrides.task)
    if rc:
        sys.exit(rc)
