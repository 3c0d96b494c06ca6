"""Checks of a composed config: they run before anything starts or is submitted.

Each problem is one sentence that names the key to change and a valid value. `config_problems` needs nothing but
the config (pure); `file_problems` looks at this machine's files (data files, the task's module) without reading
or importing them. `check_config` runs both. Imported on the submission side (no torch).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any, Optional

from configs.schema import BUILTIN_TASKS, NOT_TASKS, task_module

STRATEGIES = ("auto", "ddp", "deepspeed")
ZERO_STAGES = (2,)
LOGGERS = ("tensorboard", "csv", "wandb", "mlflow")
# trackers: the package each needs on the machine the ranks run on, and the extra that installs it
TRACKER_PACKAGES = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}
TRACKER_MODES = ("online", "offline")
# how a job waits for cluster.after (sbatch --dependency=KIND:ID...)
AFTER_KINDS = ("afterok", "afterany")
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true")
# signals Slurm may send as the job's own (--signal); zerorun records it and TERM/INT (trainer_core/signals.py). Not HUP:
# ninja resets it to the default for the compilers it starts, so it would kill an op build at start-up.
JOB_SIGNALS = ("USR2", "URG", "ALRM", "PWR", "XCPU", "VTALRM")
# Slurm's --signal=SIG@TIME takes TIME in seconds up to this (a 16-bit field)
MAX_SIGNAL_DELAY_S = 65535
MODULE_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class ConfigError(ValueError):
    """The config cannot run; the message lists every problem and its fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("the config cannot run:\n" + "\n".join(f"  - {p}" for p in problems))


def _choice(problems: list[str], key: str, value: Any, valid: tuple) -> None:
    if value not in valid:
        problems.append(f"{key}={value!r} is not supported; choose one of: {', '.join(map(str, valid))}")


def _at_least(problems: list[str], key: str, value: Any, low: int, why: str) -> None:
    if value is not None and value < low:
        problems.append(f"{key}={value}: set it to at least {low} ({why})")


def _path_part(problems: list[str], key: str, value: Any) -> None:
    """`value` becomes part of a folder path: it must stay inside the runs folder."""
    if value is not None and ".." in str(value).replace("\\", "/").split("/"):
        problems.append(f"{key}={value!r}: it is part of the run folder's path and '..' would leave cluster.runs_dir; "
                        "use a name without '..' (e.g. my-experiment)")


def config_problems(cfg: Any) -> list[str]:
    """Every problem found in the config (empty when it can run)."""
    p: list[str] = []
    p += _task_problems(cfg.task)
    p += _data_problems(cfg.dataset)
    p += _optimization_problems(cfg)
    p += _cluster_problems(cfg)
    p += _checkpoint_and_requeue_problems(cfg)
    p += _container_problems(cfg)
    p += _tracker_problems(cfg.trainer)
    for key, value in (("name", cfg.name), ("run_id", cfg.get("run_id")), ("sweep.id", cfg.sweep.id)):
        _path_part(p, key, value)
    return p


def _tracker_problems(t: Any) -> list[str]:
    p: list[str] = []
    tracker = t.get("tracker")
    if t.logger not in TRACKER_PACKAGES or tracker is None:
        return p
    _choice(p, "trainer.tracker.mode", tracker.mode, TRACKER_MODES)
    uri = tracker.get("tracking_uri")
    if t.logger == "mlflow" and tracker.mode == "offline" and uri and not str(uri).startswith("file:"):
        p.append(f"trainer.tracker.mode=offline logs to a file store, but trainer.tracker.tracking_uri={uri!r} is a "
                 "server; set trainer.tracker.tracking_uri=null (the run folder's mlruns) or a file: URI, or "
                 "trainer.tracker.mode=online")
    return p


def _task_problems(task: Any) -> list[str]:
    p: list[str] = []
    if not task.name or "/" in str(task.name):
        p.append(f"task.name={task.name!r}: name the task, e.g. task=nlp/translation or task=nlp/language_modeling")
    module = task.get("module")
    if module is not None and not MODULE_PATH.match(str(module)):
        p.append(f"task.module={module!r} is not a Python module path; set it like my_package.my_task, or null for "
                 "zerorun's own task named by task.name")
    return p


def _data_problems(d: Any) -> list[str]:
    p: list[str] = []
    _at_least(p, "dataset.batch_size", d.batch_size, 1, "a batch needs rows")
    _at_least(p, "dataset.eval_batch_size", d.eval_batch_size, 1, "a batch needs rows")
    _at_least(p, "dataset.num_workers", d.num_workers, 0, "0 loads data in the training process")
    for key in ("max_source_length", "max_target_length", "block_size"):
        _at_least(p, f"dataset.{key}", d[key], 1, "a length is counted in tokens")
    for key in ("max_train_samples", "max_val_samples"):
        _at_least(p, f"dataset.{key}", d[key], 1, "null keeps every example")
    files = {split: path for split, path in d.data_files.items() if path}
    if files:
        missing = [split for split in (d.train_split, d.validation_split) if split not in files]
        for split in missing:
            p.append(
                f"dataset.data_files.{split} is not set but dataset.data_files has {sorted(files)}: a run reads both "
                f"splits from files; set dataset.data_files.{split}=PATH"
            )
    elif d.synthetic != "none":
        _at_least(p, "dataset.synthetic_train_size", d.synthetic_train_size, 1, "synthetic data needs rows")
        _at_least(p, "dataset.synthetic_val_size", d.synthetic_val_size, 1, "synthetic data needs rows")
    elif not d.name:
        p.append("dataset has no data source: set dataset.data_files.train and dataset.data_files.validation, "
                 "dataset.synthetic (e.g. translation), or dataset.name (e.g. wmt16)")
    return p


def _optimization_problems(cfg: Any) -> list[str]:
    p: list[str] = []
    o, sch, t = cfg.optimizer, cfg.scheduler, cfg.trainer
    if not o.lr > 0:
        p.append(f"optimizer.lr={o.lr}: the learning rate must be positive, e.g. optimizer.lr=1e-3")
    if o.weight_decay < 0:
        p.append(f"optimizer.weight_decay={o.weight_decay}: must be 0 (none) or positive, e.g. 0.01")
    if not o.eps > 0:
        p.append(f"optimizer.eps={o.eps}: must be positive, e.g. 1e-8")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        p.append(f"optimizer.betas={list(o.betas)}: two values in [0, 1), e.g. [0.9,0.999]")
    if sch.warmup_steps < 0 or not 0 <= sch.warmup_ratio < 1:
        p.append(f"scheduler.warmup_steps={sch.warmup_steps} / scheduler.warmup_ratio={sch.warmup_ratio}: "
                 "warmup_steps must be 0 or more and warmup_ratio in [0, 1), e.g. scheduler.warmup_ratio=0.1")
    elif sch.name == "linear_warmup" and t.max_steps >= 1:
        warmup = sch.warmup_steps or round(sch.warmup_ratio * t.max_steps)
        if warmup >= t.max_steps:
            p.append(f"scheduler.warmup_steps={warmup} does not fit in trainer.max_steps={t.max_steps}; "
                     "lower scheduler.warmup_steps (or scheduler.warmup_ratio) below trainer.max_steps")
    _at_least(p, "trainer.val_check_interval", t.val_check_interval, 1, "validation runs every N steps")
    _at_least(p, "trainer.log_every_n_steps", t.log_every_n_steps, 1, "metrics are logged every N steps")
    _at_least(p, "trainer.accumulate_grad_batches", t.accumulate_grad_batches, 1, "1 accumulates nothing")
    _choice(p, "trainer.keep_batch", t.get("keep_batch", "global"), ("global", "per_rank"))
    _at_least(p, "trainer.limit_val_batches", t.limit_val_batches, 0, "null validates on every batch")
    if t.gradient_clip_val is not None and t.gradient_clip_val <= 0:
        p.append(f"trainer.gradient_clip_val={t.gradient_clip_val}: must be positive, or null to clip nothing")
    return p


def _checkpoint_and_requeue_problems(cfg: Any) -> list[str]:
    p: list[str] = []
    ck = cfg.trainer.checkpoint
    _at_least(p, "trainer.checkpoint.every_n_steps", ck.every_n_steps, 0,
              "0 saves only at the end and when a stop is asked for")
    if ck.keep_last < 1:
        p.append(f"trainer.checkpoint.keep_last={ck.keep_last}: a run keeps its newest N checkpoints and N must be "
                 "at least 1; set trainer.checkpoint.keep_last=2 (or more to keep more)")
    r = cfg.requeue
    _at_least(p, "requeue.max_timeouts", r.max_timeouts, 0, "0 never requeues after a time-out")
    _at_least(p, "requeue.max_preemptions", r.max_preemptions, 0, "null requeues without limit")
    _at_least(p, "requeue.max_excluded_nodes", r.get("max_excluded_nodes", 0), 0, "0 never leaves a node out")
    return p


def _cluster_problems(cfg: Any) -> list[str]:
    p: list[str] = []
    t, s, c = cfg.trainer, cfg.trainer.strategy, cfg.cluster
    _choice(p, "trainer.strategy.name", s.name, STRATEGIES)
    _choice(p, "trainer.logger", t.logger, LOGGERS)
    _choice(p, "trainer.precision", str(t.precision), PRECISIONS)
    if s.name == "deepspeed" and s.stage not in ZERO_STAGES:
        p.append(
            f"trainer.strategy.stage={s.stage}: this project supports ZeRO stage 2 only "
            "(trainer=deepspeed or trainer=deepspeed_offload)"
        )
    if s.offload_optimizer and s.name != "deepspeed":
        p.append(
            f"trainer.strategy.offload_optimizer=true needs DeepSpeed, but trainer.strategy.name={s.name!r}; "
            "use trainer=deepspeed_offload"
        )
    if c.nodes < 1:
        p.append(f"cluster.nodes={c.nodes}: a job needs at least 1 node")
    p += _min_nodes_problems(cfg)
    if c.tasks_per_node < 1:
        p.append(
            f"cluster.tasks_per_node={c.tasks_per_node}: set it to the devices per node "
            "(cluster.gpus_per_node, or the number of CPU ranks when gpus_per_node=0)"
        )
    if c.gpus_per_node > 0 and c.tasks_per_node != c.gpus_per_node:
        p.append(
            f"cluster.tasks_per_node({c.tasks_per_node}) != cluster.gpus_per_node({c.gpus_per_node}): "
            "zerorun runs one rank per GPU; set cluster.tasks_per_node=${cluster.gpus_per_node}"
        )
    if c.cpus_per_task < 1:
        p.append(f"cluster.cpus_per_task={c.cpus_per_task}: must be at least 1")
    if t.devices != c.tasks_per_node or t.num_nodes != c.nodes:
        p.append(
            f"trainer.devices({t.devices}) x trainer.num_nodes({t.num_nodes}) differs from the job geometry "
            f"cluster.tasks_per_node({c.tasks_per_node}) x cluster.nodes({c.nodes}); "
            "set the cluster keys and leave the trainer's to follow them"
        )
    world = c.nodes * c.tasks_per_node
    if s.name == "auto" and world > 1:
        p.append(
            f"trainer.strategy.name=auto runs a single process, but the job has nodes({c.nodes}) x "
            f"tasks_per_node({c.tasks_per_node}) = {world} ranks; use trainer=ddp, trainer=deepspeed or "
            "trainer=deepspeed_offload"
        )
    if t.max_steps < 1:
        p.append(f"trainer.max_steps={t.max_steps}: training is defined in optimizer steps; set it to at least 1")
    if t.collective_timeout_s <= 0:
        p.append(
            f"trainer.collective_timeout_s={t.collective_timeout_s}: the ranks' collectives need a time limit; "
            "set it to a number of seconds above 0 (default 1800)"
        )
    p += _watchdog_problems(cfg)
    _choice(p, "cluster.after_kind", c.get("after_kind", "afterok"), AFTER_KINDS)
    if c.time_min < 1:
        p.append(f"cluster.time_min={c.time_min}: the time limit must be at least 1 minute")
    signal_name = str(c.signal).upper().removeprefix("SIG")
    if signal_name not in JOB_SIGNALS:
        p.append(
            f"cluster.signal={c.signal!r} cannot be the job's stop signal; choose one of: {', '.join(JOB_SIGNALS)} "
            "(not USR1, which Lightning and other tools claim; TERM and INT are handled already)"
        )
    if not 1 <= c.signal_delay_s <= MAX_SIGNAL_DELAY_S:
        p.append(
            f"cluster.signal_delay_s={c.signal_delay_s}: the stop signal comes this many seconds before the time "
            f"limit, which Slurm takes from 1 to {MAX_SIGNAL_DELAY_S}; e.g. cluster.signal_delay_s=120"
        )
    elif c.signal_delay_s >= c.time_min * 60:
        p.append(
            f"cluster.signal_delay_s({c.signal_delay_s}) is not shorter than the time limit "
            f"cluster.time_min({c.time_min}) x 60 = {c.time_min * 60} s; the stop signal would come before the "
            "job starts: lower signal_delay_s or raise time_min"
        )
    return p


# every key file_problems reads: two configs equal on these have the same file problems (a sweep checks once
# per distinct set)
FILE_KEYS = ("task.name", "task.module", "dataset.synthetic", "dataset.data_files", "trainer.logger",
             "cluster.container")


def file_problems(cfg: Any) -> list[str]:
    """Problems only this machine's files show: a data file that is not there, a task with no module. Reads no
    file and imports nothing; relative paths are taken from the current folder, as the ranks take them."""
    p: list[str] = []
    task_ref = cfg.task.get("module") or cfg.task.name
    task_key = "task.module" if cfg.task.get("module") else "task.name"
    refs = [(task_key, task_ref)]
    if cfg.dataset.synthetic != "none":
        refs.append(("dataset.synthetic", cfg.dataset.synthetic))
    for key, ref in refs:
        if ref and MODULE_PATH.match(str(ref)) and _module_origin(task_module(str(ref))) is None:
            p.append(
                f"{key}={ref!r} names no task: there is no module {task_module(str(ref))} on the Python path; "
                f"choose one of zerorun's tasks ({', '.join(builtin_tasks())}) or the module path of a task "
                "(docs/tasks.md)"
            )
    if cfg.trainer.logger in TRACKER_PACKAGES:
        module, extra = TRACKER_PACKAGES[cfg.trainer.logger]
        if importlib.util.find_spec(module) is None:  # found, not imported (the submission side stays light)
            p.append(f"trainer.logger={cfg.trainer.logger} needs the {module} package, which is not installed for "
                     f"{sys.executable}; install it with: pip install 'zerorun[{extra}]' (or choose "
                     "trainer.logger=tensorboard or csv)")
    for split, path in cfg.dataset.data_files.items():
        if path and not Path(os.path.expanduser(str(path))).is_file():
            p.append(f"dataset.data_files.{split}={path!r}: no such file (relative paths are taken from "
                     f"{os.getcwd()}); point it at the {split} file")
    p += container_image_problems(cfg)
    return p


def builtin_tasks() -> list[str]:
    """zerorun's own task names: the modules of trainer_core/tasks, found without importing them."""
    origin = _module_origin(BUILTIN_TASKS, package=True)
    if origin is None:
        return []
    names = {f.stem for folder in origin for f in Path(folder).glob("*.py")}
    return sorted(n for n in names if not n.startswith("_") and n not in NOT_TASKS)


def _module_origin(dotted: str, package: bool = False) -> Optional[Any]:
    """Where `dotted` would be imported from (its file; for package=True its folders), found the way import finds
    it but without running it or its parent packages; None when there is no such module."""
    if dotted in sys.modules and not package:
        return getattr(sys.modules[dotted], "__file__", None) or dotted
    parts, path, spec = dotted.split("."), None, None
    for i in range(len(parts)):
        # the top-level package through every finder (an editable install's own finder too: PathFinder alone
        # missed it, so an installed `zerorun` run from another folder found no task), the rest by path
        name = ".".join(parts[: i + 1])
        spec = importlib.util.find_spec(name) if i == 0 else PathFinder.find_spec(name, path)
        if spec is None:
            return None
        path = spec.submodule_search_locations
        if path is None and i < len(parts) - 1:
            return None  # a module where a package was needed
    if package:
        return list(path) if path is not None else None
    return spec.origin or dotted


def check_config(cfg: Any) -> None:
    """Raise ConfigError listing every problem of the config and of the files it names."""
    problems = config_problems(cfg) + file_problems(cfg)
    if problems:
        raise ConfigError(problems)


def _min_nodes_problems(cfg: Any) -> list[str]:
    """cluster.min_nodes: a range Slurm can grant, and one the planned global batch divides over at every size
    (the job keeps the global batch of cluster.nodes by accumulating more on fewer nodes)."""
    c = cfg.cluster
    low = getattr(c, "min_nodes", None)  # a sweep member's config view gives attributes
    if low is None:
        return []
    if not 1 <= low <= c.nodes:
        return [f"cluster.min_nodes={low} must lie between 1 and cluster.nodes={c.nodes} (the job starts on any "
                "count in that range)"]
    planned = c.nodes * int(cfg.trainer.accumulate_grad_batches)
    bad = [n for n in range(low, c.nodes + 1) if planned % n]
    if bad:
        return [f"cluster.min_nodes={low}..nodes={c.nodes}: the global batch of nodes({c.nodes}) x "
                f"accumulate_grad_batches({cfg.trainer.accumulate_grad_batches}) cannot be kept on "
                f"{', '.join(map(str, bad))} node(s); raise cluster.min_nodes, or set trainer.accumulate_grad_batches "
                "to a multiple of every node count in the range"]
    return []


HANG_PHASES = ("step", "checkpoint", "startup")


def _watchdog_problems(cfg) -> list[str]:
    """The watchdog's timeouts: positive, and below the collective timeout, so that a hang is seen (and every
    rank's stack captured) before a waiting rank's collective gives up and the job fails without them."""
    w = getattr(cfg, "watchdog", None)  # a sweep member's config view gives attributes, not .get, nested
    if w is None or w.timeout_s is None:
        return []
    p = []
    timeouts = {"timeout_s": w.timeout_s, "startup_timeout_s": w.startup_timeout_s,
                "checkpoint_timeout_s": w.checkpoint_timeout_s}
    for key, value in timeouts.items():
        if value is None or float(value) <= 0:
            p.append(f"watchdog.{key}={'null' if value is None else format(float(value), 'g')}: a number of seconds above 0 (or watchdog.timeout_s=null for no watchdog)")
    collective = int(cfg.trainer.collective_timeout_s)
    longest = max(float(v) for v in timeouts.values() if v is not None)
    if not p and collective <= longest:
        p.append(f"trainer.collective_timeout_s({collective}) must be above the watchdog's longest timeout "
                 f"({longest:g}: {', '.join(f'watchdog.{k}={v}' for k, v in timeouts.items())}), or a waiting rank's "
                 "collective fails the job before the hang is recorded; raise it or lower the watchdog's")
    if w.test_only_hang_in not in HANG_PHASES:
        p.append(f"watchdog.test_only_hang_in={w.test_only_hang_in!r}: one of {', '.join(HANG_PHASES)}")
    return p


# ---- cluster.container (docs/containers.md) ----

CONTAINER_RUNTIMES = ("none", "pyxis", "apptainer")
# `apptainer exec` options that drop the host's environment, and with it Slurm's variables the ranks derive their
# place in the job from
CLEANENV_ARGS = ("--cleanenv", "-e", "--containall", "-C")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def container_of(cluster: Any) -> Optional[Any]:
    """cluster.container when the ranks run in a container (runtime other than "none"); None otherwise, and for
    a config saved before the key existed."""
    c = getattr(cluster, "container", None)  # a sweep member's config view gives attributes
    if c is None or str(c.runtime) == "none":
        return None
    return c


def image_is_local(runtime: str, image: str) -> bool:
    """Whether `image` names a file or folder (which must exist) rather than a registry reference, which the
    runtime pulls on the node and nothing here checks. apptainer reads anything without a scheme (docker://,
    library://, oras://, ...) as a path; pyxis reads [USER@][REGISTRY#]IMAGE[:TAG] unless it looks like a path."""
    text = str(image)
    if "://" in text:
        return False
    if runtime == "apptainer":
        return True
    return text.startswith(("/", "./", "../", "~")) or text.endswith((".sqsh", ".squashfs", ".sif"))


def _container_problems(cfg: Any) -> list[str]:
    c = getattr(cfg.cluster, "container", None)
    if c is None:
        return []
    p: list[str] = []
    _choice(p, "cluster.container.runtime", str(c.runtime), CONTAINER_RUNTIMES)
    if str(c.runtime) not in CONTAINER_RUNTIMES or str(c.runtime) == "none":
        return p
    key = "cluster.container"
    if not c.image:
        example = "nvcr.io#nvidia/pytorch:24.01-py3 or /images/pytorch.sqsh" if c.runtime == "pyxis" \
            else "/images/pytorch.sif or docker://nvcr.io/nvidia/pytorch:24.01-py3"
        p.append(f"{key}.runtime={c.runtime} needs {key}.image: set it to the image the ranks run in, e.g. {example}")
    for mount in c.mounts:
        parts = str(mount).split(":")
        if "," in str(mount) or not parts[0].startswith("/") or (len(parts) > 1 and not parts[1].startswith("/")) \
                or len(parts) > 3:
            p.append(f"{key}.mounts: {mount!r} is not SRC[:DST[:FLAGS]] with absolute paths and no ','; "
                     "write it like /data:/data or /data:/data:ro")
    if c.workdir is not None and not str(c.workdir).startswith("/"):
        p.append(f"{key}.workdir={c.workdir!r}: a folder inside the container is named by its absolute path "
                 "(e.g. /workspace), or null for the folder you submit from")
    if not str(c.python).strip():
        p.append(f"{key}.python is empty: name the image's Python (python, python3 or a full path)")
    for name in c.env:
        if not _ENV_NAME.match(str(name)):
            p.append(f"{key}.env: {name!r} is not an environment variable name (letters, digits, _)")
    if c.runtime == "apptainer":
        dropped = [a for a in c.extra_args if str(a).split("=")[0] in CLEANENV_ARGS]
        if dropped:
            p.append(f"{key}.extra_args={list(c.extra_args)}: {dropped[0]} hides Slurm's variables from the ranks, "
                     "which need them to find their place in the job; remove it (set variables with "
                     f"{key}.env instead)")
    elif c.runtime == "pyxis" and c.command != "apptainer":
        p.append(f"{key}.command={c.command!r} is for runtime=apptainer; pyxis runs through srun itself: remove it")
    return p


def container_image_problems(cfg: Any) -> list[str]:
    """A local image that is not there is refused here, before anything is submitted (a registry reference is
    pulled on the nodes and is not checked). Part of file_problems; a sweep checks each member with it."""
    c = container_of(cfg.cluster)
    if c is None or not c.image or not image_is_local(str(c.runtime), str(c.image)):
        return []
    path = Path(os.path.expanduser(str(c.image)))
    what = "a squashfs file" if c.runtime == "pyxis" else "a .sif file or a sandbox folder"
    found = path.is_file() or (c.runtime == "apptainer" and path.is_dir())
    if found:
        return []
    return [f"cluster.container.image={c.image!r}: no such {'file' if c.runtime == 'pyxis' else 'image'} (relative "
            f"paths are taken from {os.getcwd()}); point it at {what} on a file system the nodes share, or name a "
            "registry image (" + ("nvcr.io#nvidia/pytorch:24.01-py3" if c.runtime == "pyxis"
                                  else "docker://nvcr.io/nvidia/pytorch:24.01-py3") + ")"]
