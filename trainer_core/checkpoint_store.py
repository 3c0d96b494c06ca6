"""Checkpoints that are either whole or absent: the folder layout and its save protocol, without torch.

Layout inside a run folder:

    checkpoints/
      step-00000040/ckpt        a file (ddp, single device) or a folder of shards (DeepSpeed ZeRO)
      step-00000040/meta.json   step, strategy, world size, model: what a resume checks before loading
      step-00000040.1/          a later save of the same step (a rerun past a rolled-back ``latest``); it
                                replaces the older one, which is removed once ``latest`` names the new one
      latest                    the name of the newest complete checkpoint ("step-00000040")
      .tmp-step-00000060/       a save in progress; never pointed at, removed on the next start
      .trash-step-00000020-*/   a checkpoint being deleted; never pointed at, removed on the next start

Every rank writes into the temporary folder (DeepSpeed writes one optimizer shard per rank), all ranks meet at a
barrier, then rank 0 fsyncs every file and folder of it, renames it to a name no folder has, fsyncs the
checkpoints folder, replaces ``latest`` atomically, and only then prunes: a folder to delete is first renamed to a
.trash- name, so that no half-deleted step folder is ever listed as a checkpoint. A kill or a crash at any moment
leaves ``latest`` naming a complete, durable checkpoint (or no ``latest`` at all), and a new save is never
discarded in favour of an older one of the same step.

Imports nothing of the training stack: the submission side reads it to refuse a bad resume=RUN_DIR before
anything is written (jobs/runs.py); the Lightning callback that saves through it is trainer_core/checkpointing.py.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from trainer_core import layout
from trainer_core.durable import fsync_dir, fsync_tree, write_atomic

# step-00000040, or step-00000040.N for the N-th replacement of that step (the highest N is the newest)
STEP_DIR = re.compile(r"^step-(\d{8})(?:\.(\d+))?$")
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
    # rows per rank per micro-batch and micro-batches per optimizer step; 0 if unknown (older checkpoints).
    # With world_size they give the global batch a resume on another number of ranks keeps.
    micro_batch_size: int = 0
    accumulate_grad_batches: int = 0

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
        # Another number of ranks is not refused here: DDP and single-device checkpoints hold the whole state,
        # ZeRO shards are re-partitioned (trainer_core/zero_resize.py), the data position is global; the global
        # batch must divide over the new ranks (resumed_accumulation).
        return None


KEEP_BATCH = ("global", "per_rank")


def resumed_accumulation(found: CheckpointMeta, world_size: int, micro_batch_size: int, accumulate: int,
                         keep_batch: str) -> int:
    """The accumulate_grad_batches a run resumed from `found` on `world_size` ranks of `micro_batch_size` rows
    uses. On the checkpoint's own number of ranks, or with keep_batch="per_rank", the configured `accumulate`.
    Otherwise the global batch (ranks x rows x accumulation) stays what it was, so the run is the same
    optimization on other hardware; a CheckpointError names the fix where it cannot be divided."""
    if keep_batch not in KEEP_BATCH:
        raise CheckpointError(f"trainer.keep_batch={keep_batch!r}; choose one of {', '.join(KEEP_BATCH)}")
    if found.world_size == world_size or keep_batch == "per_rank":
        return accumulate
    # checkpoints from before these were recorded: the run's config says what they were
    rows, acc = found.micro_batch_size or micro_batch_size, found.accumulate_grad_batches or accumulate
    global_batch = found.world_size * rows * acc
    per_step = world_size * micro_batch_size
    if global_batch % per_step:
        fits = [n for n in range(1, global_batch // micro_batch_size + 1) if global_batch % (n * micro_batch_size) == 0]
        ranks = ", ".join(map(str, fits[:8])) or "none"
        raise CheckpointError(
            f"the global batch of {global_batch} rows ({found.world_size} ranks x {rows} rows x {acc} accumulated) "
            f"cannot be kept on {world_size} ranks x dataset.batch_size={micro_batch_size}: {global_batch} is not a "
            f"multiple of {world_size * micro_batch_size}; resume on a number of ranks that divides it "
            f"(with {micro_batch_size} rows per rank: {ranks}), or set dataset.batch_size so that {world_size} x "
            f"dataset.batch_size divides {global_batch}, or set trainer.keep_batch=per_rank to keep "
            f"{micro_batch_size} rows per rank (a global batch of {world_size * micro_batch_size * accumulate})"
        )
    return global_batch // per_step


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


def _order(folder: Path) -> tuple[int, int]:
    """(step, generation) of a step folder's name: the order in which checkpoints were made along a run."""
    m = STEP_DIR.match(folder.name)
    if m is None:
        raise ValueError(f"{folder} is not named as a checkpoint (step-NNNNNNNN or step-NNNNNNNN.N)")
    return int(m.group(1)), int(m.group(2) or 0)


class CheckpointStore:
    def __init__(self, run_dir: os.PathLike | str) -> None:
        self.root = Path(run_dir) / layout.CHECKPOINTS

    def step_dir(self, step: int) -> Path:
        """The first name a save of `step` gets (a later save of the same step gets a suffix: see commit)."""
        return self.root / f"step-{step:08d}"

    def tmp_dir(self, step: int) -> Path:
        return self.root / f".tmp-step-{step:08d}"

    def _step_folders(self) -> list[Path]:
        """Every folder with a step name, complete or not, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted((p for p in self.root.iterdir() if STEP_DIR.match(p.name)), key=_order)

    def complete(self) -> list[Path]:
        """The complete checkpoints, oldest first (by step, then by generation within a step)."""
        return [p for p in self._step_folders() if (p / META).exists()]

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
        """Rank 0, at start and before a save: remove the temporary folders of a save a killed attempt left
        behind and the .trash- folders of a pruning it did not finish (none of them is ever pointed at)."""
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith((".tmp-", ".trash-")):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def commit(self, meta: CheckpointMeta, keep_last: int) -> Path:
        """Rank 0, after every rank has written into tmp_dir: make it durable, move it into place under a name
        no folder has, point ``latest`` at it, prune. Returns the checkpoint's folder.

        An older folder of the same step (from a run whose ``latest`` was rolled back by hand, or a save killed
        between its rename and the pointer update) is replaced by the new save, never the reverse, and ``latest``
        names a whole folder at every moment: the new save gets the next free name (step-S.1, step-S.2...) and the
        older one is pruned once ``latest`` has moved.

        Every file and folder of the save is fsynced here, after the barrier, before the pointer moves. Shards
        that ranks on other nodes wrote are covered where the shared file system makes a writer's data stable
        when it closes the file (NFS's close-to-open) or lets this node's fsync flush it."""
        tmp = self.tmp_dir(meta.step)
        fsync_tree(tmp)  # the shards, however the strategy wrote them, and their folders
        # the record last: a folder with meta.json is a complete checkpoint
        write_text_atomic(tmp / META, json.dumps(asdict(meta), indent=1))
        final = self._free_name(meta.step)
        os.rename(tmp, final)
        fsync_dir(self.root)
        write_text_atomic(self.root / POINTER, final.name + "\n")
        self._prune(final, keep_last)
        return final

    def _free_name(self, step: int) -> Path:
        same_step = [p for p in self._step_folders() if _order(p)[0] == step]
        if not same_step:
            return self.step_dir(step)
        return self.root / f"step-{step:08d}.{_order(same_step[-1])[1] + 1}"

    def _prune(self, latest: Path, keep_last: int) -> None:
        """Remove what is no longer part of the run that `latest` ends: older folders of its step (replaced),
        folders of later steps (a continuation abandoned when ``latest`` was rolled back, or a save whose pointer
        update was killed), folders without a record, and with keep_last > 0 all but the newest `keep_last`
        checkpoints. Each goes to a .trash- name first (one fsync for all), then is deleted."""
        step = _order(latest)[0]
        earlier = [p for p in self.complete() if _order(p)[0] < step]
        if keep_last > 0:  # `latest` is one of them
            earlier = earlier[max(0, len(earlier) - (keep_last - 1)):]
        keep = {latest, *earlier}
        doomed = [p for p in self._step_folders() if p not in keep]
        if not doomed:
            return
        trash = []
        for p in doomed:
            t = self.root / f".trash-{p.name}-{secrets.token_hex(4)}"
            os.rename(p, t)
            trash.append(t)
        fsync_dir(self.root)
        for t in trash:
            shutil.rmtree(t, ignore_errors=True)
