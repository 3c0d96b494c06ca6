"""Checkpoints that are either whole or absent.

Layout inside a run folder:

    checkpoints/
      step-00000040/ckpt        a file (ddp, single device) or a folder of shards (DeepSpeed ZeRO)
      step-00000040/meta.json   step, strategy, world size, model: what a resume checks before loading
      latest                    the name of the newest complete checkpoint ("step-00000040")
      .tmp-step-00000060/       a save in progress; never pointed at, removed on the next start

Every rank writes into the temporary folder (DeepSpeed writes one optimizer shard per rank), all ranks meet at a
barrier, then rank 0 renames the folder into place and replaces ``latest`` atomically, then prunes old ones.
A kill at any moment leaves ``latest`` naming a complete checkpoint (or no ``latest`` at all).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl

STEP_DIR = re.compile(r"^step-(\d{8})$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used for this run; the message says what was found."""


@dataclass(frozen=True)
class CheckpointMeta:
    step: int
    strategy: str
    world_size: int
    model: str

    def mismatch(self, other: "CheckpointMeta") -> Optional[str]:
        """Why a checkpoint written as `self` cannot resume a run configured as `other` (None if it can)."""
        if self.model != other.model:
            return f"it holds model {self.model!r}, this run builds {other.model!r}"
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


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small file so that readers see the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
        return sorted(p for p in self.root.iterdir() if STEP_DIR.match(p.name) and (p / "meta.json").exists())

    def latest(self) -> Optional[Path]:
        """The newest complete checkpoint folder, by the ``latest`` pointer; None when the run has none."""
        pointer = self.root / "latest"
        if not pointer.exists():
            return None
        name = pointer.read_text().strip()
        target = self.root / name
        if not STEP_DIR.match(name) or not (target / "meta.json").exists():
            found = ", ".join(p.name for p in self.complete()) or "none"
            raise CheckpointError(
                f"{pointer} names {name!r}, which is not a complete checkpoint (complete ones: {found}); "
                f"write the name of one of them into {pointer}, or remove it to start from scratch"
            )
        return target

    def read_meta(self, ckpt_dir: Path) -> CheckpointMeta:
        return CheckpointMeta(**json.loads((ckpt_dir / "meta.json").read_text()))

    # -- the save protocol; the callers are all ranks, in order --------------------------------------------------

    def clear_stale(self) -> None:
        """Rank 0, before a save: remove temporary folders a killed attempt left behind."""
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith(".tmp-"):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def commit(self, meta: CheckpointMeta, keep_last: int) -> Path:
        """Rank 0, after every rank has written into tmp_dir: move it into place, point ``latest`` at it, prune."""
        tmp, final = self.tmp_dir(meta.step), self.step_dir(meta.step)
        write_text_atomic(tmp / "meta.json", json.dumps(asdict(meta), indent=1))
        if final.exists():  # the same step saved twice (e.g. periodic save then end of training)
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_text_atomic(self.root / "latest", final.name + "\n")
        for old in self.complete()[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        return final


def on_last_batch(trainer: pl.Trainer) -> bool:
    """Whether the batch that just ended is its epoch's last. A save then waits for on_train_epoch_end: saved
    before the epoch is counted as processed, a resumed run would repeat the epoch's end with the next epoch's
    data order, and the data position and epoch counter would disagree (the run would not resume exactly)."""
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


class AtomicCheckpoint(pl.Callback):
    """Saves through CheckpointStore every `every_n_steps` optimizer steps and at the end of training."""

    def __init__(self, store: CheckpointStore, meta: CheckpointMeta, every_n_steps: int, keep_last: int,
                 save_at_end: bool) -> None:
        self.store, self.meta = store, meta
        self.every_n_steps, self.keep_last, self.save_at_end = every_n_steps, keep_last, save_at_end
        self._last_saved_step = -1
        self._due_at_epoch_end = False

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if self.every_n_steps and step and step % self.every_n_steps == 0 and step != self._last_saved_step:
            if on_last_batch(trainer):
                self._due_at_epoch_end = True
            else:
                self.save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._due_at_epoch_end:
            self._due_at_epoch_end = False
            self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_at_end and trainer.global_step != self._last_saved_step:
            self.save(trainer)

    def save(self, trainer: pl.Trainer) -> Path:
        step = trainer.global_step
        strategy = trainer.strategy
        if strategy.is_global_zero:
            self.store.clear_stale()
            self.store.tmp_dir(step).mkdir(parents=True, exist_ok=True)
        strategy.barrier("zerorun_ckpt_begin")
        trainer.save_checkpoint(self.store.tmp_dir(step) / "ckpt")
        strategy.barrier("zerorun_ckpt_written")
        final = self.store.step_dir(step)
        if strategy.is_global_zero:
            meta = CheckpointMeta(step, self.meta.strategy, self.meta.world_size, self.meta.model)
            final = self.store.commit(meta, self.keep_last)
        strategy.barrier("zerorun_ckpt_committed")
        self._last_saved_step = step
        return final
