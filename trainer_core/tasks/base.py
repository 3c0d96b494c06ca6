"""What a task is (TaskSpec), and the training and validation-loss code every transformer task shares.

Every task runs unchanged on one device, under DDP and under DeepSpeed ZeRO-2. With ZeRO-2 every rank still holds
all parameters, so a task may call ``self.model.generate`` directly; only the optimizer state and gradients are
sharded. Validation totals are summed over ranks by the strategy before they are turned into a metric, so the
logged numbers are those of the whole validation set, not a mean of per-rank means.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trainer_core.optim import build_optimizer, build_scheduler, param_groups

# (rng, dataset config, train size, validation size) -> (train rows, validation rows), rows as JSON-able dicts
SyntheticRecords = Callable[[random.Random, Any, int, int], Tuple[List[dict], List[dict]]]


@dataclass(frozen=True)
class TaskSpec:
    """Everything the model, tokenizer and data code need to know about a task; a task module's ``TASK``."""

    name: str
    # the LightningModule: lightning_module(cfg, model, tokenizer, datamodule)
    lightning_module: Callable[..., pl.LightningModule]
    # the LightningDataModule: datamodule(cfg, tokenizer, raw); a trainer_core.data.datamodule.TextDataModule
    datamodule: Callable[..., pl.LightningDataModule]
    # the transformers Auto class that builds or loads the model (AutoModelForSeq2SeqLM, AutoModelForCausalLM)
    auto_model: Any
    # True: the model must be an encoder-decoder (t5, bart); False: decoder-only (gpt2, llama). A tokenizer
    # trained for an encoder-decoder ends every sequence with eos; a decoder-only one pads with eos.
    encoder_decoder: bool
    # special tokens of a tokenizer trained here, as PreTrainedTokenizerFast takes them; their order fixes their ids
    tokenizer_specials: Mapping[str, str]
    # the training text a tokenizer trained here reads: tokenizer_texts(train split, dataset config)
    tokenizer_texts: Callable[[Any, Any], List[str]]
    # dataset keys holding token lengths that must fit the model's positions (checked before training)
    length_keys: Tuple[str, ...]
    # the metric its validation logs, and whether lower ("min") or higher ("max") is better
    metric: str
    mode: str
    # a small learnable data set made in code (dataset.synthetic=<this task>); None: the task has none
    synthetic_records: Optional[SyntheticRecords] = None
    # dataset keys the synthetic rows depend on besides seed and sizes (they name the generated files)
    synthetic_keys: Tuple[str, ...] = ()

    def check_lengths(self, dataset_cfg: Any, model: PreTrainedModel) -> None:
        """Models with learned absolute positions (GPT-2, Marian) fail deep inside forward on longer inputs."""
        positions = getattr(model.config, "max_position_embeddings", None)
        if not positions:
            return
        for key in self.length_keys:
            length = dataset_cfg[key]
            if length > positions:
                raise ValueError(
                    f"dataset.{key}={length} is longer than the model's {positions} positions; lower dataset.{key} "
                    f"or raise backbone.model_config.max_position_embeddings (n_positions for gpt2)"
                )


def gather_objects(obj: Any) -> List[Any]:
    """Every rank's ``obj``, on every rank (just ``[obj]`` outside a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    gathered: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


class TransformerTask(pl.LightningModule):
    """Training loss, token-weighted validation loss, and the optimizer; subclasses add their metrics."""

    def __init__(self, cfg: Any, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, datamodule: Any = None):
        super().__init__()
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self._val_loss_sum = torch.zeros((), dtype=torch.float64)
        self._val_tokens = torch.zeros((), dtype=torch.float64)

    def _predicted_tokens(self, labels: torch.Tensor) -> torch.Tensor:
        """How many label positions the model's mean loss was taken over."""
        raise NotImplementedError

    def training_step(self, batch: Dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        # Lightning's self.log costs ~5 ms a call (a quarter of a tiny model's step on CPU); the loggers only
        # write every log_every_n_steps, so record the loss on those steps (the progress bar shows the latest).
        if (self.trainer.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log("train_loss", loss, prog_bar=True, batch_size=batch["input_ids"].size(0))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_tokens = torch.zeros((), dtype=torch.float64, device=self.device)

    def _validation_loss(self, inputs: Dict[str, torch.Tensor]) -> None:
        # The model's loss is a mean over this batch's tokens; keep sums so the epoch's mean weighs every token
        # equally, whatever the batch sizes and however the rows were split over ranks.
        tokens = self._predicted_tokens(inputs["labels"])
        self._val_loss_sum += self.model(**inputs).loss.detach().double() * tokens
        self._val_tokens += tokens

    def _mean_validation_loss(self) -> torch.Tensor:
        totals = self.trainer.strategy.reduce(torch.stack([self._val_loss_sum, self._val_tokens]), reduce_op="sum")
        return (totals[0] / totals[1].clamp(min=1)).float()

    def configure_optimizers(self) -> Dict[str, Any]:
        optimizer = build_optimizer(
            param_groups(self.model, self.cfg.optimizer.weight_decay),
            self.cfg.optimizer,
            offload=self.cfg.trainer.strategy.offload_optimizer,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": build_scheduler(optimizer, self.cfg.scheduler, self.cfg.trainer.max_steps),
        }
