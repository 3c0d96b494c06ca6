"""The LightningDataModules: tokenized, cached data and loaders that can resume mid-epoch.

The train loader is torchdata's StatefulDataLoader over a stateful distributed sampler (torchdata treats any
sampler with state_dict and load_state_dict as stateful), so Lightning's checkpoint carries the position inside
the epoch, counted in samples all ranks consumed, and the epoch: a resumed run, on the same number of ranks or
another, sees exactly the samples it had not seen yet (notes/exact-resume.md). The Trainer must run with ``use_distributed_sampler=False`` so that it keeps this
sampler; ``datamodule.train_sampler.set_epoch(epoch)`` at each epoch start gives every epoch its own order.

Tokenized splits are cached as arrow files under ``dataset.cache_dir/tokenized``, named by a hash of the raw
split's fingerprint, the tokenizer and every length setting, so another tokenizer or max length never reuses a
stale file. A file lock lets the first rank tokenize while the others wait and then read its file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytorch_lightning as pl
import torch
from datasets import Dataset, DatasetDict
from filelock import FileLock
from torch.utils.data import DataLoader, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerBase

from trainer_core.data.loading import load_raw
from trainer_core.data.tokenizer import tokenizer_fingerprint
from trainer_core.resize import CONSUMED, WORLD, global_position
from trainer_core.tasks import load_task

# Bump when the encoding functions change: it is part of the cache key.
ENCODING_VERSION = 1
# Rows per datasets.map batch. Language modeling packs blocks within one batch and drops each batch's remainder.
MAP_BATCH_SIZE = 1000


class EpochStatefulDistributedSampler(DistributedSampler):
    """A distributed sampler whose state is a position in the epoch counted globally: the epoch and the samples
    of its permutation that all ranks together have consumed, so a run can resume on another number of ranks.

    Every rank draws the epoch's permutation (seed + epoch, as torch's DistributedSampler), cut to a multiple of
    the number of ranks (drop_last). From a global position g the ranks take the rest round robin: rank r gets
    order[g + r], order[g + r + W], ... Consumed with W ranks, k samples per rank from g is the prefix
    order[:g + k*W], whichever W did the consuming, so a resume on W' ranks continues the same permutation and
    every sample of the epoch is taken once (at most W'-1 at the epoch's end are dropped so that every rank has
    as many batches). From position 0 the ranks get exactly what torch's DistributedSampler gives them.

    - The epoch travels with the position: the order depends on the epoch.
    - A restored position belongs to its epoch and to nothing else: a checkpoint taken at an epoch's end holds
      "epoch e, every sample consumed"; the resumed run goes on with epoch e+1 (Lightning calls set_epoch(e+1)),
      and that position must not make epoch e+1 begin at its end. So moving to another epoch drops it.
    """

    _EPOCH = "epoch"

    def __init__(self, dataset: Any, num_replicas: int, rank: int, shuffle: bool = True, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        # the global position this iteration started at, and the samples this rank has yielded since
        self.start, self.yielded = 0, 0
        # a restored position, taken by the next iteration of its epoch
        self.pending: Optional[int] = None

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self.dataset), generator=g).tolist()  # type: ignore[arg-type]
        else:
            order = list(range(len(self.dataset)))  # type: ignore[arg-type]
        self.start = min(self.pending or 0, self.total_size)
        self.pending, self.yielded = None, 0
        for k in range((self.total_size - self.start) // self.num_replicas):
            self.yielded += 1
            yield order[self.start + self.rank + k * self.num_replicas]

    def consumed(self) -> int:
        """Samples of this epoch's permutation that every rank together has consumed."""
        return self.start + self.yielded * self.num_replicas

    def state_dict(self) -> Dict[str, Any]:
        return {self._EPOCH: self.epoch, CONSUMED: self.consumed(), WORLD: self.num_replicas}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        # the epoch first: set_epoch would drop a position that belongs to another epoch
        self.set_epoch(state_dict.get(self._EPOCH, self.epoch))
        self.pending = global_position(state_dict, self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.pending = None
        super().set_epoch(epoch)


class TextDataModule(pl.LightningDataModule):
    """Shared loading, caching and loaders; a task's subclass says how to encode a batch and how to collate."""

    # names the task's cached tokenized files
    task_name = ""
    # add each validation row's index as "example_id" (to find its raw text again after generation)
    keep_example_ids = False

    def __init__(self, cfg: Any, tokenizer: PreTrainedTokenizerBase, raw: Optional[DatasetDict] = None):
        super().__init__()
        self.dataset_cfg = cfg.dataset
        self.seed = cfg.seed
        self.tokenizer = tokenizer
        self.raw = raw
        self.train_dataset: Optional[Dataset] = None
        self.val_dataset: Optional[Dataset] = None
        # made by train_dataloader (rank and world size are known only then); the trainer calls set_epoch on it
        self.train_sampler: Optional[EpochStatefulDistributedSampler] = None

    # ---- subclass hooks
    def _encode(self, batch: Dict[str, List], indices: Optional[List[int]] = None) -> Dict[str, List]:
        raise NotImplementedError

    def _encoding_params(self) -> Dict[str, Any]:
        raise NotImplementedError

    def _collate_train(self, features: List[Dict]) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def _collate_eval(self, features: List[Dict]) -> Dict[str, torch.Tensor]:
        return self._collate_train(features)

    # ---- setup
    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_dataset is not None:
            return
        if self.raw is None:
            self.raw = load_raw(self.dataset_cfg)
        self.train_dataset = self._tokenized(self.raw["train"], "train", with_ids=False)
        self.val_dataset = self._tokenized(self.raw["validation"], "validation", with_ids=self.keep_example_ids)
        for name, data in (("train", self.train_dataset), ("validation", self.val_dataset)):
            if len(data) == 0:
                raise ValueError(f"the {name} split has no examples after tokenization; {self._empty_hint()}")

    def _empty_hint(self) -> str:
        return "check the data files"

    def _tokenized(self, split: Dataset, split_name: str, with_ids: bool) -> Dataset:
        key_parts = {
            "task": self.task_name,
            "version": ENCODING_VERSION,
            "data": split._fingerprint,  # datasets' content hash: changes with the files and every transform
            "tokenizer": tokenizer_fingerprint(self.tokenizer),
            "with_ids": with_ids,
            **self._encoding_params(),
        }
        key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
        path = Path(self.dataset_cfg.cache_dir) / "tokenized" / f"{self.task_name}-{split_name}-{key}.arrow"
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            return split.map(
                self._encode,
                batched=True,
                batch_size=MAP_BATCH_SIZE,
                with_indices=with_ids,
                remove_columns=split.column_names,
                cache_file_name=str(path),
                load_from_cache_file=True,
                # our own key, so datasets does not try to hash the bound method and its tokenizer
                new_fingerprint=key,
                desc=f"tokenizing {split_name}",
            )

    # ---- loaders
    def _rank_and_world(self) -> Tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _loader_kwargs(self) -> Dict[str, Any]:
        workers = self.dataset_cfg.num_workers
        return {"num_workers": workers, "persistent_workers": workers > 0}

    def train_dataloader(self) -> StatefulDataLoader:
        rank, world = self._rank_and_world()
        self.train_sampler = EpochStatefulDistributedSampler(
            self.train_dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed
        )
        return StatefulDataLoader(
            self.train_dataset,
            batch_size=self.dataset_cfg.batch_size,
            sampler=self.train_sampler,
            collate_fn=self._collate_train,
            # Every new iterator (each epoch) draws its workers' base seed from this generator. Left out, it draws
            # from the global torch RNG, which the model's dropout also uses: a run resumed at an epoch's end
            # restores that RNG after its first iterator was built, the uninterrupted run draws once more at the
            # next epoch start, and the two runs drop different units from then on.
            generator=torch.Generator().manual_seed(self.seed),
            **self._loader_kwargs(),
        )

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_and_world()
        # DistributedSampler pads the last round with up to world_size-1 repeated rows: the translation task drops
        # them by example_id before scoring BLEU; in val_loss they weigh a few tokens more, as in any DDP eval.
        sampler = DistributedSampler(self.val_dataset, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
        return DataLoader(
            self.val_dataset,
            batch_size=self.dataset_cfg.eval_batch_size,
            sampler=sampler,
            shuffle=False,
            collate_fn=self._collate_eval,
            # as for the train loader: a validation never draws from the RNG training uses
            generator=torch.Generator().manual_seed(self.seed),
            **self._loader_kwargs(),
        )


def build_datamodule(
    cfg: Any, tokenizer: PreTrainedTokenizerBase, raw: Optional[DatasetDict] = None, task: Any = None
) -> pl.LightningDataModule:
    """The data module of the configured task (or of `task`); pass ``raw`` when it is already loaded, else
    setup() loads it."""
    spec = load_task(task if task is not None else cfg.task)
    return spec.datamodule(cfg, tokenizer, raw)
