"""Tasks: what is trained and how it is measured. A task is one module here plus one YAML under configs/task/.

The module defines ``TASK``, a TaskSpec (base.py): the model family, the tokenizer's special tokens, how its data
is encoded and made up, its LightningModule and its metric. The YAML sets ``task.name`` (and ``task.module`` for a
task defined outside this package). Nothing else names tasks: the model, tokenizer, data and synthetic code take
what they need from the TaskSpec this file loads. docs/tasks.md walks through adding one.

This file imports nothing heavy, so naming, listing or checking tasks costs nothing; a task's own module (and
base.py) imports the training stack when it is loaded.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any, Union

from configs.schema import NOT_TASKS, task_module

if TYPE_CHECKING:
    from trainer_core.tasks.base import TaskSpec

def builtin_tasks() -> list[str]:
    """The names of zerorun's own tasks: the modules of this package (found without importing them)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in NOT_TASKS)


def task_ref(task: Any) -> str:
    """The module path of a task given as a task config (task.name, task.module), a name or a module path."""
    if isinstance(task, str):
        return task_module(task)
    return task_module(task.get("module") or task.name)


def load_task(task: Union["TaskSpec", Any, str], key: str = "task.name") -> "TaskSpec":
    """The TaskSpec of `task`: a task config (``cfg.task``), a task name or module path, or a TaskSpec itself.
    `key` is the config key that named it, for the message when there is no such task."""
    from trainer_core.tasks.base import TaskSpec

    if isinstance(task, TaskSpec):
        return task
    path = task_ref(task)
    try:
        module = importlib.import_module(path)
    except ModuleNotFoundError as e:
        if e.name is None or not (path == e.name or path.startswith(e.name + ".")):
            raise  # the task's module exists but imports something missing: that error is the one to see
        named = task if isinstance(task, str) else (task.get("module") or task.name)
        if not isinstance(task, str) and task.get("module"):
            key = "task.module"
        raise ValueError(
            f"{key}={named!r} names no task: there is no module {path!r}; choose one of zerorun's tasks "
            f"({', '.join(builtin_tasks())}) or the module path of a task on the Python path (docs/tasks.md)"
        ) from None
    spec = getattr(module, "TASK", None)
    if not isinstance(spec, TaskSpec):
        raise ValueError(
            f"module {path!r} defines no TASK = TaskSpec(...); point task.module at a task's module (docs/tasks.md)"
        )
    return spec


def build_task(cfg: Any, model: Any, tokenizer: Any, datamodule: Any, task: Any = None) -> Any:
    """The LightningModule of the configured task (or of `task`), after checking the data fits the model."""
    spec = load_task(task if task is not None else cfg.task)
    spec.check_lengths(cfg.dataset, model)
    return spec.lightning_module(cfg, model, tokenizer, datamodule)
