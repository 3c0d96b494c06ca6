"""Causal language modeling: a decoder-only model (AutoModelForCausalLM) trained on text packed into blocks,
validated by its loss and perplexity.

Data are rows with a text column (``dataset.text_column``); the synthetic set is lines of the tiny grammar of
trainer_core/data/synthetic.py.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Optional

import torch
from transformers import AutoModelForCausalLM, default_data_collator

from trainer_core.data import synthetic
from trainer_core.data.datamodule import TextDataModule
from trainer_core.data.tokenizer import CAUSAL_SPECIALS
from trainer_core.tasks.base import TaskSpec, TransformerTask


class LanguageModelingDataModule(TextDataModule):
    """Text packed into blocks of ``dataset.block_size`` tokens, each text closed by eos; labels = input_ids."""

    task_name = "language_modeling"

    def _encoding_params(self) -> Dict[str, Any]:
        return {"text_column": self.dataset_cfg.text_column, "block_size": self.dataset_cfg.block_size}

    def _encode(self, batch: Dict[str, List], indices: Optional[List[int]] = None) -> Dict[str, List]:
        block = self.dataset_cfg.block_size
        texts = [t for t in batch[self.dataset_cfg.text_column] if t]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        stream = [token for seq in ids for token in seq + [self.tokenizer.eos_token_id]]
        blocks = [stream[i : i + block] for i in range(0, len(stream) - block + 1, block)]
        return {"input_ids": blocks, "attention_mask": [[1] * block for _ in blocks], "labels": [list(b) for b in blocks]}

    def _collate_train(self, features: List[Dict]) -> Dict[str, torch.Tensor]:
        return default_data_collator(features)

    def _empty_hint(self) -> str:
        return (
            f"its text is shorter than one block of dataset.block_size={self.dataset_cfg.block_size} tokens: "
            f"lower dataset.block_size or raise dataset.max_val_samples / max_train_samples"
        )


class LanguageModelingTask(TransformerTask):
    """Causal language modeling: validation loss and perplexity."""

    def _predicted_tokens(self, labels: torch.Tensor) -> torch.Tensor:
        # the model predicts token t+1 from tokens up to t: the first label of each row is never a target
        return (labels[:, 1:] != -100).sum()

    def validation_step(self, batch: Dict[str, torch.Tensor], batch_idx: int) -> None:
        self._validation_loss(batch)

    def on_validation_epoch_end(self) -> None:
        loss = self._mean_validation_loss()
        self.log("val_loss", loss, sync_dist=True)
        self.log("val_ppl", torch.exp(loss), prog_bar=True, sync_dist=True)


def tokenizer_texts(train: Any, dataset_cfg: Any) -> List[str]:
    """The training split's non-empty texts."""
    return [text for text in train[dataset_cfg.text_column] if text]


def synthetic_records(rng: random.Random, dataset_cfg: Any, train_size: int, val_size: int):  # type: ignore[no-untyped-def]
    """Lines of one to three grammar sentences."""
    return list(synthetic.text_records(rng, train_size)), list(synthetic.text_records(rng, val_size))


TASK = TaskSpec(
    name="language_modeling",
    lightning_module=LanguageModelingTask,
    datamodule=LanguageModelingDataModule,
    auto_model=AutoModelForCausalLM,
    encoder_decoder=False,
    tokenizer_specials=CAUSAL_SPECIALS,
    tokenizer_texts=tokenizer_texts,
    length_keys=("block_size",),
    metric="val_ppl",
    mode="min",
    synthetic_records=synthetic_records,
)
