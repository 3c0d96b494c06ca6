"""Checks of a composed config that need nothing but the config: they run before anything starts or is submitted.

Each problem is one sentence that names the key to change and a valid value. Pure; imported on the
submission side (no torch).
"""

from __future__ import annotations

from typing import Any

TASKS = ("translation", "language_modeling")
STRATEGIES = ("auto", "ddp", "deepspeed")
ZERO_STAGES = (2,)
LOGGERS = ("tensorboard", "csv")
BACKENDS = ("local", "slurm")
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true")
# signals Slurm may send as the job's own (--signal); zerorun records it and TERM/INT (trainer_core/signals.py). Not HUP:
# ninja resets it to the default for the compilers it starts, so it would kill an op build at start-up.
JOB_SIGNALS = ("USR2", "URG", "ALRM", "PWR", "XCPU", "VTALRM")


class ConfigError(ValueError):
    """The config cannot run; the message lists every problem and its fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("the config cannot run:\n" + "\n".join(f"  - {p}" for p in problems))


def _choice(problems: list[str], key: str, value: Any, valid: tuple) -> None:
    if value not in valid:
        problems.append(f"{key}={value!r} is not supported; choose one of: {', '.join(map(str, valid))}")


def config_problems(cfg: Any) -> list[str]:
    """Every problem found in the config (empty when it can run)."""
    p: list[str] = []
    t, s, c = cfg.trainer, cfg.trainer.strategy, cfg.cluster
    _choice(p, "task.name", cfg.task.name, TASKS)
    _choice(p, "trainer.strategy.name", s.name, STRATEGIES)
    _choice(p, "trainer.logger", t.logger, LOGGERS)
    _choice(p, "trainer.precision", str(t.precision), PRECISIONS)
    _choice(p, "cluster.backend", c.backend, BACKENDS)
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
    if c.time_min < 1:
        p.append(f"cluster.time_min={c.time_min}: the time limit must be at least 1 minute")
    signal_name = str(c.signal).upper().removeprefix("SIG")
    if signal_name not in JOB_SIGNALS:
        p.append(
            f"cluster.signal={c.signal!r} cannot be the job's stop signal; choose one of: {', '.join(JOB_SIGNALS)} "
            "(not USR1, which Lightning and other tools claim; TERM and INT are handled already)"
        )
    if c.signal_delay_s >= c.time_min * 60:
        p.append(
            f"cluster.signal_delay_s({c.signal_delay_s}) is not shorter than the time limit "
            f"cluster.time_min({c.time_min}) x 60 = {c.time_min * 60} s; the stop signal would come before the "
            "job starts: lower signal_delay_s or raise time_min"
        )
    return p


def check_config(cfg: Any) -> None:
    problems = config_problems(cfg)
    if problems:
        raise ConfigError(problems)
