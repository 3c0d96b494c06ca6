"""The tokenizer: a pretrained one by name, or a byte-level BPE trained offline on the training text.

A trained tokenizer is saved under ``dataset.cache_dir/tokenizers/<key>`` where the key hashes everything it
depends on (the text it read, the vocabulary size, the special tokens), and later runs reload it with
AutoTokenizer. Ranks that start together serialize on a file lock: the first trains and saves, the others find
the saved copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List

from datasets import DatasetDict
from filelock import FileLock
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from trainer_core.tasks import load_task

# Special tokens by model family, for the tasks to choose from. Their order fixes their ids: T5 wants pad=0 (also its
# decoder start), eos=1, unk=2; GPT-2 uses one <|endoftext|> as bos, eos and pad (packed blocks never pad, so that
# is harmless).
SEQ2SEQ_SPECIALS = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
CAUSAL_SPECIALS = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of what the tokenizer does: its serialized pipeline (vocabulary, merges, normalizer, ...) and its
    special tokens. Two tokenizers with one fingerprint turn every text into the same ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        pipeline = json.loads(backend.to_str())
        # Truncation and padding are per-call settings that the last call leaves behind in the backend, not
        # properties of the tokenizer: hashing them would give the same tokenizer a new key after every use.
        pipeline.pop("truncation", None)
        pipeline.pop("padding", None)
    else:  # a slow (pure Python) tokenizer: its vocabulary is what it has
        pipeline = {"class": type(tokenizer).__name__, "vocab": tokenizer.get_vocab()}
    digest = hashlib.sha256(json.dumps(pipeline, sort_keys=True).encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def _train_bpe(texts: List[str], vocab_size: int, specials: Dict[str, str], seq2seq: bool) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    unique_specials = list(dict.fromkeys(specials.values()))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=unique_specials,
        # every byte is in the vocabulary, so no input is ever unknown
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if seq2seq:
        # Like T5's own tokenizer: every encoded sequence ends with eos, so the decoder learns where to stop.
        eos = specials["eos_token"]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, tokenizer.token_to_id(eos))]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **specials)


def _cache_key(texts: List[str], vocab_size: int, specials: Dict[str, str], seq2seq: bool) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"vocab": vocab_size, "specials": specials, "seq2seq": seq2seq}).encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]


def load_tokenizer(backbone_cfg: Any, raw: DatasetDict, dataset_cfg: Any, task: Any) -> PreTrainedTokenizerFast:
    """The backbone's tokenizer: ``backbone.tokenizer.name_or_path``, or one trained (once) on ``raw["train"]`` with
    the special tokens and text of `task` (a TaskSpec, a task config or a task name)."""
    spec = load_task(task)
    tok_cfg = backbone_cfg.tokenizer
    if tok_cfg.name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(tok_cfg.name_or_path)
        if not spec.encoder_decoder and tokenizer.pad_token is None:
            # GPT-2 ships without a pad token; packed blocks never pad, but collators and generate ask for one.
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    specials, seq2seq = dict(spec.tokenizer_specials), spec.encoder_decoder
    train = raw["train"].select(range(min(tok_cfg.train_samples, len(raw["train"]))))
    texts = spec.tokenizer_texts(train, dataset_cfg)
    if not texts:
        raise ValueError("no training text to train a tokenizer on; check the data or set backbone.tokenizer.name_or_path")

    folder = Path(dataset_cfg.cache_dir) / "tokenizers" / _cache_key(texts, tok_cfg.vocab_size, specials, seq2seq)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not folder.is_dir():
            tokenizer = _train_bpe(texts, tok_cfg.vocab_size, specials, seq2seq)
            # Save into a temporary folder and rename it: a reader never sees half a tokenizer, even across
            # machines where the lock file is not shared.
            tmp = tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.")
            tokenizer.save_pretrained(tmp)
            try:
                os.replace(tmp, folder)
            except OSError:  # another writer won the rename; its copy is identical
                shutil.rmtree(tmp, ignore_errors=True)
    return AutoTokenizer.from_pretrained(str(folder))
