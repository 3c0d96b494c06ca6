"""The LightningModules: what a training step and a validation pass compute, for each task.

Both tasks run unchanged on one device, under DDP and under DeepSpeed ZeRO-2. With ZeRO-2 every rank still holds
all parameters, so generation calls ``self.model.generate`` directly; only the optimizer state and gradients are
sharded. Validation totals are summed over ranks by the strategy before they are turned into a metric, so the
logged numbers are those of the whole validation set, not a mean of per-rank means.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import pytorch_lightning as pl
import sacrebleu
import torch
import torch.distributed as dist
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trainer_core.optim import build_optimizer, build_scheduler, param_groups


def _gather_objects(obj: Any) -> List[Any]:
    """Every rank's ``obj``, on every rank (just ``[obj]`` outside a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    gathered: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def corpus_bleu(hypotheses: List[str], references: List[str]) -> float:
    """sacrebleu's corpus BLEU (0-100) with one reference per sentence."""
    return sacrebleu.corpus_bleu(hypotheses, [references]).score


class _TransformerTask(pl.LightningModule):
    """Training loss, token-weighted validation loss, and the optimizer; subclasses add their metrics."""

    def __init__(self, cfg: Any, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
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


class TranslationTask(_TransformerTask):
    """Seq2seq translation: validation loss, and BLEU of greedy/beam translations of the validation set."""

    def __init__(self, cfg: Any, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, datamodule: Any):
        super().__init__(cfg, model, tokenizer)
        # raw source and reference text by example_id: BLEU is scored on the text, not on token ids
        self._pairs_source = datamodule
        self._pairs: List[Tuple[str, str]] = []
        self._hypotheses: Dict[int, str] = {}

    def _predicted_tokens(self, labels: torch.Tensor) -> torch.Tensor:
        return (labels != -100).sum()

    def validation_pairs(self) -> List[Tuple[str, str]]:
        if not self._pairs:
            self._pairs = self._pairs_source.validation_pairs()
        return self._pairs

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._hypotheses = {}

    @torch.no_grad()
    def translate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> List[str]:
        """Decoded translations (greedy, or beam search with task.num_beams) of one batch of sources."""
        generated = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            num_beams=self.cfg.task.num_beams,
            max_new_tokens=self.cfg.task.max_generate_length,
            do_sample=False,
        )
        return [text.strip() for text in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]

    def validation_step(self, batch: Dict[str, torch.Tensor], batch_idx: int) -> None:
        inputs = {k: v for k, v in batch.items() if k != "example_id"}
        self._validation_loss(inputs)
        hypotheses = self.translate(inputs["input_ids"], inputs["attention_mask"])
        self._hypotheses.update(zip(batch["example_id"].tolist(), hypotheses))

    def score(self, hypotheses: Dict[int, str]) -> float:
        """Corpus BLEU of hypotheses keyed by example_id against the raw validation references."""
        pairs = self.validation_pairs()
        ids = sorted(hypotheses)
        return corpus_bleu([hypotheses[i] for i in ids], [pairs[i][1] for i in ids])

    def on_validation_epoch_end(self) -> None:
        # All ranks' hypotheses, merged by example_id: rows that DistributedSampler repeated to even out the
        # ranks count once, and every rank computes the same BLEU.
        hypotheses: Dict[int, str] = {}
        for part in _gather_objects(self._hypotheses):
            hypotheses.update(part)
        self.log("val_loss", self._mean_validation_loss(), sync_dist=True)
        if not hypotheses:  # no batch ran on any rank: there is nothing to score
            return
        self.log("val_bleu", self.score(hypotheses), prog_bar=True, sync_dist=True)
        if not self.trainer.sanity_checking:
            self._log_samples(hypotheses)

    def _log_samples(self, hypotheses: Dict[int, str]) -> None:
        if not self.trainer.is_global_zero or self.cfg.task.log_samples <= 0:
            return
        pairs = self.validation_pairs()
        samples = [
            (pairs[i][0], pairs[i][1], hypotheses[i]) for i in sorted(hypotheses)[: self.cfg.task.log_samples]
        ]
        lines = [
            f"source:     {src}\nreference:  {ref}\nhypothesis: {hyp}" for src, ref, hyp in samples
        ]
        self.print(f"validation samples at step {self.global_step}:\n" + "\n\n".join(lines))
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "add_text"):  # TensorBoard renders markdown: two trailing spaces break a line
            markdown = "\n\n".join(text.replace("\n", "  \n") for text in lines)
            experiment.add_text("val_samples", markdown, global_step=self.global_step)


class LanguageModelingTask(_TransformerTask):
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


def _check_lengths(cfg: Any, model: PreTrainedModel) -> None:
    # Models with learned absolute positions (GPT-2, Marian) fail deep inside forward on longer inputs.
    positions = getattr(model.config, "max_position_embeddings", None)
    if not positions:
        return
    if cfg.task.name == "language_modeling":
        lengths = {"dataset.block_size": cfg.dataset.block_size}
    else:
        lengths = {
            "dataset.max_source_length": cfg.dataset.max_source_length,
            "dataset.max_target_length": cfg.dataset.max_target_length,
        }
    for key, length in lengths.items():
        if length > positions:
            raise ValueError(
                f"{key}={length} is longer than the model's {positions} positions; lower {key} or raise "
                f"backbone.model_config.max_position_embeddings (n_positions for gpt2)"
            )


TASKS = {"translation": TranslationTask, "language_modeling": LanguageModelingTask}


def build_task(cfg: Any, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, datamodule: Any) -> pl.LightningModule:
    """The LightningModule for ``cfg.task.name``, after checking the data lengths fit the model."""
    if cfg.task.name not in TASKS:
        raise ValueError(f"unknown task.name {cfg.task.name!r}; valid: {', '.join(TASKS)}")
    _check_lengths(cfg, model)
    if cfg.task.name == "translation":
        return TranslationTask(cfg, model, tokenizer, datamodule)
    return LanguageModelingTask(cfg, model, tokenizer)
