"""Planning: a resolved config in, a frozen JobPlan out. Pure: no cluster probe, no file, no clock.

The plan is everything a backend needs to start the job: its geometry, resources, the command each rank runs,
the environment every rank gets, and the setup lines that run before it. Dry-run prints it, the local backend
starts its ranks from it, the Slurm backend renders it into an sbatch script (cluster/render.py).

The one input that lives in a file, cluster.setup_file, is read before planning by `read_setup_file` and handed
to `make_plan` as data.
"""

from __future__ import annotations

import os
import posixpath
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from cluster.rendezvous import PORT_OVERRIDE_ENV
from configs.validate import container_of, image_is_local

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
class ContainerPlan:
    """How srun starts the ranks inside a container (cluster.container; rendered by cluster/render.py)."""

    # "pyxis" or "apptainer"
    runtime: str
    # a registry reference as given, or a local image's absolute path
    image: str
    # folders of zerorun's own mounted at their paths besides the run folder (the folder submitted from, the data
    # cache); all_mounts() adds the run folder, which a sweep's array plan replaces
    folders: tuple[str, ...]
    # the user's mounts, SRC:DST[:FLAGS]
    mounts: tuple[str, ...]
    # the folder the ranks start in, inside the container
    workdir: str
    # the image's Python: the rank entry inside is (python, *JobPlan.entry[1:])
    python: str
    # variables set for the ranks inside the container, over the image's own values
    env: tuple[tuple[str, str], ...]
    extra_args: tuple[str, ...]
    # apptainer's program ("apptainer", "singularity", a path)
    command: str
    # mounted folders of zerorun's own that may not exist yet when the job starts (made on the batch host)
    make_dirs: tuple[str, ...]


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
    # the GPU model (a GRES type) and how GPUs are asked for: "gpus_per_node" or "gres" (cluster.gres_style)
    gpu_type: Optional[str] = None
    gres_style: str = "gpus_per_node"
    # the fewest nodes the job may start on (None: exactly `nodes`)
    min_nodes: Optional[int] = None
    # start only after these jobs (sbatch --dependency=KIND:ID[:ID...]); resolved from cluster.after at
    # submission (jobs/chains.py), like the setup file: None when there is nothing left to wait for
    dependency: Optional[str] = None
    # the container the ranks run in (None: on the node as they are); the batch host's steps stay outside it
    container: Optional[ContainerPlan] = None

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
    workdir = workdir if workdir is not None else os.getcwd()
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
        workdir=workdir,
        exports=tuple(dict.fromkeys((*BASE_EXPORTS, *passthrough))),
        gpu_type=None if c.get("gpu_type") is None else str(c.gpu_type),
        gres_style=str(c.get("gres_style", "gpus_per_node")),
        min_nodes=None if c.get("min_nodes") in (None, int(c.nodes)) else int(c.min_nodes),
        dependency=dependency,
        container=container_plan(cfg, workdir),
    )


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _absolute(workdir: str, path: str) -> str:
    return posixpath.normpath(posixpath.join(workdir, path))


def all_mounts(plan: JobPlan) -> tuple[str, ...]:
    """Every bind mount of the plan's container, SRC:DST[:FLAGS]: the run folder (a sweep's: the sweep folder,
    which holds its members'), zerorun's other folders, each at its own path and once (a folder inside another
    mounted one is not mounted again), then the user's."""
    if plan.container is None:
        return ()
    own = list(dict.fromkeys((_absolute(plan.workdir, plan.run_dir), *plan.container.folders)))
    own = [p for p in own if not any(q != p and _inside(p, q) for q in own)]
    return (*(f"{p}:{p}" for p in own), *plan.container.mounts)


def container_plan(cfg: Any, workdir: str) -> Optional[ContainerPlan]:
    """The container of a config whose cluster.container.runtime is not "none" (None otherwise). Relative paths
    are taken from `workdir`, where the job runs; a folder inside another mounted one is not mounted twice."""
    c = container_of(cfg.cluster)
    if c is None:
        return None
    absolute = lambda p: _absolute(workdir, os.path.expanduser(str(p)))  # noqa: E731
    image = str(c.image)
    return ContainerPlan(
        runtime=str(c.runtime),
        image=absolute(image) if image_is_local(str(c.runtime), image) else image,
        folders=(absolute(workdir), absolute(cfg.dataset.cache_dir)),
        mounts=tuple(m if ":" in m else f"{m}:{m}" for m in (str(m) for m in c.mounts)),
        workdir=str(c.workdir) if c.workdir is not None else absolute(workdir),
        python=str(c.python),
        env=tuple((str(k), str(v)) for k, v in c.env.items()),
        extra_args=tuple(str(a) for a in c.extra_args),
        command=str(c.command),
        make_dirs=(absolute(cfg.dataset.cache_dir),),
    )
