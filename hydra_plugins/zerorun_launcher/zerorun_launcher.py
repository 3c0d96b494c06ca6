"""The plugin classes and their config nodes (hydra/sweeper=zerorun, hydra/launcher=zerorun).

configs/config.yaml selects both for zerorun. Both are Hydra's public plugin bases; what the launcher does
differently from hydra-submitit-launcher: instead of pickling Hydra's state per member into submitit's
`map_array` and waiting for every result, it plans the whole sweep as job arrays of zerorun's own batch script
and returns once they are queued (jobs/sweeps/launcher.py).
"""

# No `from __future__ import annotations`: Hydra's scanner runs this module before it is in sys.modules, and
# dataclasses then cannot resolve string annotations.
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class ZerorunSweeperConf:
    _target_: str = "hydra_plugins.zerorun_launcher.zerorun_launcher.ZerorunSweeper"


@dataclass
class ZerorunLauncherConf:
    # The array geometry, resources and parallelism come from zerorun's own config (cluster.*, sweep.*), not from
    # here: one place per setting. Queue fields such as hydra-submitit-launcher's (nodes, partition, ...) would
    # duplicate cluster.* and are left out on purpose.
    _target_: str = "hydra_plugins.zerorun_launcher.zerorun_launcher.ZerorunLauncher"


ConfigStore.instance().store(group="hydra/sweeper", name="zerorun", node=ZerorunSweeperConf, provider="zerorun")
ConfigStore.instance().store(group="hydra/launcher", name="zerorun", node=ZerorunLauncherConf, provider="zerorun")


class ZerorunSweeper(Sweeper):
    """Expands the command line's sweep overrides into members without composing a config per member (Hydra's
    basic sweeper composes each one to validate it: ~45 ms a member here) and hands all of them to the launcher
    in one batch."""

    def __init__(self) -> None:
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: List[str]) -> Any:
        from jobs.sweeps.launcher import sweep

        assert self.config is not None and self.hydra_context is not None
        return sweep(self.config, self.hydra_context, self.launcher, arguments)


class ZerorunLauncher(Launcher):
    """Plans every member's run folder, writes the sweep record, renders one array script per MaxArraySize
    members and submits each with one sbatch call (cluster=slurm); or runs the members here (cluster=local);
    or writes and prints it all (dry_run=true)."""

    def __init__(self) -> None:
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from jobs.sweeps.launcher import launch

        assert self.config is not None and self.hydra_context is not None
        return launch(self.config, self.hydra_context, job_overrides, initial_job_idx)
