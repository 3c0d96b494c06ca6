"""Checkpoints that are either whole or absent: the folder layout and its save protocol, without torch.

Layout inside a run folder:

    checkpoints/
      step-00000040/ckpt        a file (ddp, single device) or a folder of shards (DeepSpeed ZeRO)
      step-00000040/meta.json   step, strategy, world size, model: what a resume checks before loading
      latest                    the name of the newest complete checkpoint ("step-00000040")
      .tmp-step-00000060/       a save in progress; never pointed at, removed on the next start

Every rank writes into the temporary folder (DeepSpeed writes one optimizer shard per rank), all ranks meet at a
barrier, then rank 0 renames the folder into place and replaces ``latest`` atomically, then prunes old ones.
A kill at any moment leaves ``latest`` naming a complete checkpoint (or no ``latest`` at all).

Imports nothing of the training stack: the submission side reads it to refuse a bad resume=RUN_DIR before
anything is written (jobs/runs.py); the Lightning callback that saves through it is trainer_core/checkpointing.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from trainer_core.durable import write_atomic

STEP_DIR = re.compile(r"^step-(\d{8})$")
POINTER = "latest"
META = "meta.json"


class CheckpointError(ValueError):
    """A checkpoint cannot be used for this run; the message says what was found."""


@dataclass(frozen=True)
class CheckpointMeta:
    step: int
    strategy: str
    world_size: int
    # the built model's class and parameter count ("T5ForConditionalGeneration/123456")
    model: str
    # what configures the model (task name and backbone group), as model_config gives it; {} if unknown
    model_config: dict[str, Any] = field(default_factory=dict)
    # the tokenizer's fingerprint (trainer_core.data.tokenizer.tokenizer_fingerprint); "" if unknown
    tokenizer: str = ""

    @classmethod
    def from_json(cls, text: str) -> "CheckpointMeta":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def mismatch(self, other: "CheckpointMeta") -> Optional[str]:
        """Why a checkpoint written as `self` cannot resume a run configured as `other` (None if it can).
        A side that does not know a fact (the submission side does not build the model) does not compare it."""
        if self.model_config and other.model_config and self.model_config != other.model_config:
            diff = ", ".join(_differences(self.model_config, other.model_config)[:4])
            return f"it holds a model configured otherwise ({diff}; the checkpoint's value -> this run's)"
        if self.model and other.model and self.model != other.model:
            return f"it holds model {self.model!r}, this run builds {other.model!r}"
        if self.tokenizer and other.tokenizer and self.tokenizer != other.tokenizer:
            return (
                f"it was trained with another tokenizer (fingerprint {self.tokenizer}, this run's {other.tokenizer}): "
                "the same vocabulary size can map text to other ids; resume with the dataset and backbone.tokenizer "
                "settings the run was started with, or start a new run"
            )
        if (self.strategy == "deepspeed") != (other.strategy == "deepspeed"):
            return (
                f"it was written by strategy {self.strategy!r}, this run uses {other.strategy!r}; "
                "resume with the trainer it was written with"
            )
        if self.strategy == "deepspeed" and self.world_size != other.world_size:
            return (
                f"its ZeRO shards are for {self.world_size} ranks, this run has {other.world_size}; "
                "resume with the same nodes x tasks_per_node"
            )
        return None


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        return out
    return [] if a == b else [f"{path}: {a!r} -> {b!r}"]


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small file so that readers see the old or the new content, never a mix (trainer_core.durable)."""
    write_atomic(path, text)


def model_config(cfg: Any) -> dict[str, Any]:
    """What configures the model a checkpoint holds: the task and the backbone group (a resume compares it)."""
    from omegaconf import DictConfig, OmegaConf

    backbone = cfg.backbone
    if isinstance(backbone, DictConfig):
        backbone = OmegaConf.to_container(backbone, resolve=True)
    return {"task": str(cfg.task.name), "backbone": backbone}


class CheckpointStore:
    def __init__(self, run_dir: os.PathLike | str) -> None:
        self.root = Path(run_dir) / "checkpoints"

    def step_dir(self, step: int) -> Path:
        return self.root / f"step-{step:08d}"

    def tmp_dir(self, step: int) -> Path:
        return self.root / f".tmp-step-{step:08d}"

    def complete(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if STEP_DIR.match(p.name) and (p / META).exists())

    def latest(self) -> Optional[Path]:
        """The newest complete checkpoint folder, by the ``latest`` pointer; None when the run has none."""
        pointer = self.root / POINTER
        if not pointer.exists():
            return None
        try:
            name = pointer.read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            name = f"<unreadable: {e}>"
        target = self.root / name if STEP_DIR.match(name) else None
        if target is None or not (target / META).exists():
            found = ", ".join(p.name for p in self.complete()) or "none"
            raise CheckpointError(
                f"{pointer} names {name[:80]!r}, which is not a complete checkpoint (complete ones: {found}); "
                f"write the name of one of them into {pointer}, or remove it to start from scratch"
            )
        return target

    def describe(self) -> str:
        """What the checkpoints folder holds, for messages."""
        if not self.root.is_dir():
            return f"{self.root} does not exist"
        names = sorted(p.name for p in self.root.iterdir())
        return f"{self.root} holds {', '.join(names) if names else 'nothing'}"

    def read_meta(self, ckpt_dir: Path) -> CheckpointMeta:
        try:
            return CheckpointMeta.from_json((ckpt_dir / META).read_text())
        except (OSError, ValueError, TypeError) as e:
            raise CheckpointError(f"{ckpt_dir / META} cannot be read as a checkpoint record: {e}") from e

    # -- the save protocol; the callers are all ranks, in order --------------------------------------------------

    def clear_stale(self) -> None:
        """Rank 0, at start and before a save: remove temporary folders a killed attempt left behind."""
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith(".tmp-"):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def commit(self, meta: CheckpointMeta, keep_last: int) -> Path:
        """Rank 0, after every rank has written into tmp_dir: move it into place, point ``latest`` at it, prune.
        Pruning keeps the newest `keep_last` and never the one ``latest`` names."""
        tmp, final = self.tmp_dir(meta.step), self.step_dir(meta.step)
        if (final / META).exists():
            # The same step, already whole (a rerun that saves the step it resumed from): it stays as it is,
            # since replacing it would leave a moment where ``latest`` names nothing.
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            write_text_atomic(tmp / META, json.dumps(asdict(meta), indent=1))
            if final.exists():  # a folder without a record is no checkpoint (never pointed at)
                shutil.rmtree(final)
            os.replace(tmp, final)
        write_text_atomic(self.root / POINTER, final.name + "\n")
        if keep_last > 0:
            complete = self.complete()
            keep = set(complete[-keep_last:]) | {final}
            for old in complete:
                if old not in keep:
                    shutil.rmtree(old, ignore_errors=True)
        return final
