"""Planning: a resolved config in, a frozen JobPlan out. Pure: no cluster probe, no file, no clock.

The plan is everything a backend needs to start the job: its geometry, resources, the command each rank runs,
the environment every rank gets, and the setup lines that run before it. Dry-run prints it, the local backend
starts its ranks from it, the Slurm backend renders it into an sbatch script (cluster/render.py).

The one input that lives in a file, cluster.setup_file, is read before planning by `read_setup_file` and handed
to `make_plan` as data.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from cluster.rendezvous import PORT_OVERRIDE_ENV

# The module each rank runs, with the run folder as its only argument.
RANK_ENTRY = "jobs.rank"
# The module the batch host runs once the ranks have exited (`after STATUS RUN_DIR`).
HOST_ENTRY = "jobs.host"
# The hang watchdog the batch host runs beside srun (same arguments as the rank entry).
WATCHDOG_ENTRY = "jobs.watchdog"

# Environment variables a Slurm job inherits from the submitting shell (sbatch --export=NAMES, never ALL):
# what a Python job needs to find itself and its caches. Nothing here may carry a secret; a token reaches the
# job only when its name is listed in cluster.env_passthrough.
BASE_EXPORTS: tuple[str, ...] = (
    "HOME", "PATH", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR", "TERM",
    "PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX", "LD_LIBRARY_PATH",
    "ZERORUN_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE",
    "TORCH_EXTENSIONS_DIR", "DS_ACCELERATOR", "DS_BUILD_OPS",
)


class SetupFileError(ValueError):
    """cluster.setup_file cannot be read; the message names the fix."""


@dataclass(frozen=True)
class RankSpec:
    rank: int
    node_rank: int
    local_rank: int
    host: str
    device: str


@dataclass(frozen=True)
class JobPlan:
    name: str
    backend: str
    run_dir: str
    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int
    mem: Optional[str]
    time_min: int
    partition: Optional[str]
    account: Optional[str]
    qos: Optional[str]
    constraint: Optional[str]
    exclude: Optional[str]
    exclusive: bool
    signal: str
    signal_delay_s: int
    master_port: Optional[int]
    setup: tuple[str, ...]
    srun_args: tuple[str, ...]
    sbatch_extra: tuple[tuple[str, Any], ...]
    env_passthrough: tuple[str, ...]
    # environment every rank gets on top of what the scheduler sets
    env: tuple[tuple[str, str], ...]
    # the command each rank runs
    entry: tuple[str, ...]
    # the training strategy ("auto", "ddp", "deepspeed"): the preflight checks it against the resources
    strategy: str = "auto"
    # DeepSpeed on CPU ranks was asked for (cluster.cpu_rehearsal)
    cpu_rehearsal: bool = False
    requeue: bool = True
    # the batch host runs the hang watchdog beside srun (watchdog.timeout_s is set)
    watchdog: bool = False
    # nodes a run may exclude from its requeues (requeue.max_excluded_nodes; None: what the partition spares)
    max_excluded_nodes: Optional[int] = None
    # the directory the job runs its setup lines and ranks in: where the user submitted from
    workdir: str = "/"
    # names of the submitting shell's variables the job inherits (sbatch --export); values never enter the plan
    exports: tuple[str, ...] = ()
    # the fewest nodes the job may start on (None: exactly `nodes`)
    min_nodes: Optional[int] = None
    # start only after these jobs (sbatch --dependency=KIND:ID[:ID...]); resolved from cluster.after at
    # submission (jobs/chains.py), like the setup file: None when there is nothing left to wait for
    dependency: Optional[str] = None

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node

    def ranks(self, hosts: Optional[list[str]] = None) -> list[RankSpec]:
        """Every rank in Slurm's block layout: rank = node_rank x tasks_per_node + local_rank."""
        hosts = hosts or [f"node{n}" for n in range(self.nodes)]
        return [
            RankSpec(
                rank=n * self.tasks_per_node + lr,
                node_rank=n,
                local_rank=lr,
                host=hosts[n],
                device=f"cuda:{lr}" if self.gpus_per_node else "cpu",
            )
            for n in range(self.nodes)
            for lr in range(self.tasks_per_node)
        ]


def read_setup_file(path: Optional[str]) -> tuple[str, ...]:
    """The lines of cluster.setup_file (read at submission, outside planning); () when none is set."""
    if not path:
        return ()
    try:
        text = Path(path).expanduser().read_text()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise SetupFileError(
            f"cluster.setup_file={path!r} cannot be read ({reason}); point it at a readable file of shell lines, "
            "or set cluster.setup_file=null and list the lines in cluster.setup"
        ) from None
    return tuple(line for line in text.splitlines() if line.strip())


def make_plan(
    cfg: Any,
    python: str = sys.executable,
    *,
    setup_file_lines: tuple[str, ...] = (),
    workdir: Optional[str] = None,
    dependency: Optional[str] = None,
) -> JobPlan:
    """The plan of a config that passed configs.validate.check_config and has been resolved.

    `setup_file_lines` come from read_setup_file(cfg.cluster.setup_file); `workdir` defaults to the current
    directory (like `python`, a fact of the submitting process, passed in so tests can fix it); `dependency` is
    cluster.after resolved against the scheduler ("afterok:123:456", jobs/chains.py), None for none.
    """
    c = cfg.cluster
    env = [
        # one thread per CPU the rank was given: more oversubscribes the node (46 vs 7 steps/s measured)
        ("OMP_NUM_THREADS", str(c.cpus_per_task)),
        ("PYTHONUNBUFFERED", "1"),
        # read by the rank before anything else, to hold the stop signals from its first moment (jobs/rank.py)
        ("ZERORUN_SIGNAL", str(c.signal)),
    ]
    if c.master_port is not None:
        env.append((PORT_OVERRIDE_ENV, str(c.master_port)))
    passthrough = tuple(str(n) for n in c.env_passthrough)
    return JobPlan(
        name=str(cfg.name),
        backend=str(c.backend),
        run_dir=str(cfg.run_dir),
        nodes=int(c.nodes),
        tasks_per_node=int(c.tasks_per_node),
        gpus_per_node=int(c.gpus_per_node),
        cpus_per_task=int(c.cpus_per_task),
        mem=None if c.mem is None else str(c.mem),
        time_min=int(c.time_min),
        partition=c.partition,
        account=c.account,
        qos=c.qos,
        constraint=c.constraint,
        exclude=c.exclude,
        exclusive=bool(c.exclusive),
        signal=str(c.signal),
        signal_delay_s=int(c.signal_delay_s),
        master_port=c.master_port,
        setup=(*(str(s) for s in c.setup), *setup_file_lines),
        srun_args=tuple(str(a) for a in c.srun_args),
        # one spelling per flag (submitit writes both ntasks_per_node and ntasks-per-node as --ntasks-per-node)
        sbatch_extra=tuple(sorted((str(k).replace("-", "_"), v) for k, v in c.sbatch_extra.items())),
        env_passthrough=passthrough,
        env=tuple(env),
        entry=(python, "-u", "-m", RANK_ENTRY, str(cfg.run_dir)),
        strategy=str(cfg.trainer.strategy.name),
        cpu_rehearsal=bool(c.get("cpu_rehearsal", False)),
        requeue=bool(c.get("requeue", True)),
        watchdog=getattr(cfg, "watchdog", None) is not None and cfg.watchdog.timeout_s is not None,
        max_excluded_nodes=cfg.requeue.get("max_excluded_nodes"),
        workdir=workdir if workdir is not None else os.getcwd(),
        exports=tuple(dict.fromkeys((*BASE_EXPORTS, *passthrough))),
        min_nodes=None if c.get("min_nodes") in (None, int(c.nodes)) else int(c.min_nodes),
        dependency=dependency,
    )
