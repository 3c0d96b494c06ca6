"""Translation: a seq2seq model (AutoModelForSeq2SeqLM) trained on source/target pairs, validated by its loss
and the corpus BLEU (sacrebleu) of its greedy or beam translations of the validation set.

Data are WMT16-style pairs, ``{"translation": {source_language: ..., target_language: ...}}`` per row; the
synthetic set translates the tiny grammar of trainer_core/data/synthetic.py into its invented language "xx".
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Optional, Tuple

import sacrebleu
import torch
from datasets import DatasetDict
from transformers import (
    AutoModelForSeq2SeqLM,
    DataCollatorForSeq2Seq,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from trainer_core.data import synthetic
from trainer_core.data.datamodule import TextDataModule
from trainer_core.data.tokenizer import SEQ2SEQ_SPECIALS
from trainer_core.tasks.base import TaskSpec, TransformerTask, gather_objects


def corpus_bleu(hypotheses: List[str], references: List[str]) -> float:
    """sacrebleu's corpus BLEU (0-100) with one reference per sentence."""
    return sacrebleu.corpus_bleu(hypotheses, [references]).score


class TranslationDataModule(TextDataModule):
    """Source/target pairs encoded for a seq2seq model; labels padded with -100 so padding costs no loss."""

    task_name = "translation"
    keep_example_ids = True

    def __init__(self, cfg: Any, tokenizer: PreTrainedTokenizerBase, raw: Optional[DatasetDict] = None):
        super().__init__(cfg, tokenizer, raw)
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "the tokenizer has no pad token, which seq2seq batches need; set backbone.tokenizer.name_or_path "
                "to a seq2seq model's tokenizer, or null to train one"
            )
        self._seq2seq_collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding="longest")

    def _encoding_params(self) -> Dict[str, Any]:
        d = self.dataset_cfg
        return {
            "languages": [d.source_language, d.target_language],
            "prefix": d.source_prefix,
            "max_source_length": d.max_source_length,
            "max_target_length": d.max_target_length,
        }

    def _encode(self, batch: Dict[str, List], indices: Optional[List[int]] = None) -> Dict[str, List]:
        d = self.dataset_cfg
        pairs = batch["translation"]
        sources = [d.source_prefix + pair[d.source_language] for pair in pairs]
        targets = [pair[d.target_language] for pair in pairs]
        encoded = dict(self.tokenizer(sources, max_length=d.max_source_length, truncation=True))
        encoded["labels"] = self.tokenizer(text_target=targets, max_length=d.max_target_length, truncation=True)[
            "input_ids"
        ]
        if indices is not None:
            encoded["example_id"] = list(indices)
        return encoded

    def _collate_train(self, features: List[Dict]) -> Dict[str, torch.Tensor]:
        return dict(self._seq2seq_collator(features))

    def _collate_eval(self, features: List[Dict]) -> Dict[str, torch.Tensor]:
        ids = [f["example_id"] for f in features]
        batch = self._collate_train([{k: v for k, v in f.items() if k != "example_id"} for f in features])
        batch["example_id"] = torch.tensor(ids, dtype=torch.long)
        return batch

    def validation_pairs(self) -> List[Tuple[str, str]]:
        """(source, reference) raw text of every validation example, indexed by its ``example_id``."""
        if self.raw is None:
            self.setup()
        d = self.dataset_cfg
        return [(pair[d.source_language], pair[d.target_language]) for pair in self.raw["validation"]["translation"]]


class TranslationTask(TransformerTask):
    """Seq2seq translation: validation loss, and BLEU of greedy/beam translations of the validation set."""

    def __init__(self, cfg: Any, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, datamodule: Any):
        super().__init__(cfg, model, tokenizer, datamodule)
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
        for part in gather_objects(self._hypotheses):
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


def tokenizer_texts(train: Any, dataset_cfg: Any) -> List[str]:
    """Both sides of every training pair."""
    languages = (dataset_cfg.source_language, dataset_cfg.target_language)
    return [pair[lang] for pair in train["translation"] for lang in languages]


def synthetic_records(rng: random.Random, dataset_cfg: Any, train_size: int, val_size: int):  # type: ignore[no-untyped-def]
    """Grammar sentences and their "xx" translations; validation sentences never occur in training."""
    source, target = dataset_cfg.source_language, dataset_cfg.target_language
    if not source or not target:
        raise ValueError(
            "synthetic translation data needs language keys: set dataset.source_language and "
            "dataset.target_language (e.g. en and xx)"
        )
    seen: set = set()
    # train first: validation then avoids every training sentence
    train = list(synthetic.translation_records(rng, train_size, source, target, seen))
    validation = list(synthetic.translation_records(rng, val_size, source, target, seen))
    return train, validation


TASK = TaskSpec(
    name="translation",
    lightning_module=TranslationTask,
    datamodule=TranslationDataModule,
    auto_model=AutoModelForSeq2SeqLM,
    encoder_decoder=True,
    tokenizer_specials=SEQ2SEQ_SPECIALS,
    tokenizer_texts=tokenizer_texts,
    length_keys=("max_source_length", "max_target_length"),
    metric="val_bleu",
    mode="max",
    synthetic_records=synthetic_records,
    synthetic_keys=("source_language", "target_language"),
)
