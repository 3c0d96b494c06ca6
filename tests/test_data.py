"""Data, tokenizer and data modules, built from the real configs on small synthetic or test-written data."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
import torch

from conftest import compose_config, data_and_tokenizer
from trainer_core.data import synthetic
from trainer_core.data.datamodule import build_datamodule
from trainer_core.data.loading import load_raw
from trainer_core.data.tokenizer import load_tokenizer

SMALL = ["dataset.synthetic_train_size=300", "dataset.synthetic_val_size=40", "dataset.max_val_samples=null"]


def compose_cfg(tmp_path: Path, *overrides: str):
    return compose_config(f"dataset.cache_dir={tmp_path}", *overrides)


def build(tmp_path: Path, *overrides: str):
    cfg = compose_cfg(tmp_path, *overrides)
    return (cfg, *data_and_tokenizer(cfg))


def write_wmt16(path: Path, pairs) -> None:
    path.write_text("".join(json.dumps({"translation": {"en": en, "ro": ro}}) + "\n" for en, ro in pairs))


# ---- synthetic data


def test_synthetic_translation_is_deterministic_wmt16_and_follows_the_rule(tmp_path):
    first = synthetic.write_synthetic("translation", compose_cfg(tmp_path / "a", *SMALL).dataset)
    second = synthetic.write_synthetic("translation", compose_cfg(tmp_path / "b", *SMALL).dataset)
    assert set(first) == {"train", "validation"}
    for split in first:
        assert Path(first[split]).read_bytes() == Path(second[split]).read_bytes()

    lexicon = {**synthetic.DETERMINERS, **synthetic.ADJECTIVES, **synthetic.NOUNS, **synthetic.VERBS, **synthetic.ADVERBS}
    rows = {s: [json.loads(line) for line in Path(p).read_text().splitlines()] for s, p in first.items()}
    assert (len(rows["train"]), len(rows["validation"])) == (300, 40)
    for row in rows["train"][:50]:
        assert set(row) == {"translation"} and set(row["translation"]) == {"en", "xx"}
        en, xx = row["translation"]["en"].split(), row["translation"]["xx"].split()
        assert sorted(lexicon[w] for w in en) == sorted(xx)  # a word-for-word mapping ...
        assert en != [next(k for k, v in lexicon.items() if v == w) for w in xx]  # ... but reordered
    train_sources = {r["translation"]["en"] for r in rows["train"]}
    assert not train_sources & {r["translation"]["en"] for r in rows["validation"]}


def test_synthetic_language_modeling_rows_are_text(tmp_path):
    cfg = compose_cfg(tmp_path, "task=nlp/language_modeling", *SMALL)
    paths = synthetic.write_synthetic("language_modeling", cfg.dataset)
    rows = [json.loads(line) for line in Path(paths["train"]).read_text().splitlines()]
    assert len(rows) == 300 and all(set(r) == {"text"} and r["text"].endswith(" .") for r in rows)


def test_synthetic_files_are_reused_and_named_by_their_parameters(tmp_path):
    dataset_cfg = compose_cfg(tmp_path, *SMALL).dataset
    paths = synthetic.write_synthetic("translation", dataset_cfg)
    stamp = Path(paths["train"]).stat().st_mtime_ns
    assert synthetic.write_synthetic("translation", dataset_cfg) == paths
    assert Path(paths["train"]).stat().st_mtime_ns == stamp
    other = synthetic.write_synthetic("translation", compose_cfg(tmp_path, *SMALL, "dataset.synthetic_seed=1").dataset)
    assert other["train"] != paths["train"]
    assert Path(other["train"]).read_text() != Path(paths["train"]).read_text()


def _write_in_process(cache_dir: str) -> dict:
    return synthetic.write_synthetic("translation", compose_cfg(Path(cache_dir), *SMALL).dataset)


def test_synthetic_concurrent_writers_leave_complete_files(tmp_path):
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(_write_in_process, [str(tmp_path)] * 4)
    assert all(r == results[0] for r in results)
    folder = Path(results[0]["train"]).parent
    assert sorted(p.name for p in folder.iterdir()) == ["train.jsonl", "validation.jsonl"]  # no temp files left
    assert len(Path(results[0]["train"]).read_text().splitlines()) == 300


def test_synthetic_unknown_kind_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="dataset.synthetic=.summaries. names no task.*language_modeling, translation"):
        synthetic.write_synthetic("summaries", compose_cfg(tmp_path).dataset)


# ---- loading


def test_load_raw_reads_local_wmt16_files_and_caps_them(tmp_path):
    write_wmt16(tmp_path / "train.jsonl", [(f"hello {i}", f"salut {i}") for i in range(10)])
    write_wmt16(tmp_path / "valid.jsonl", [(f"bye {i}", f"pa {i}") for i in range(6)])
    cfg = compose_cfg(
        tmp_path,
        "dataset=nlp/translation/wmt16",
        f"+dataset.data_files.train={tmp_path}/train.jsonl",
        f"+dataset.data_files.validation={tmp_path}/valid.jsonl",
        "dataset.max_train_samples=7",
        "dataset.max_val_samples=4",
    )
    raw = load_raw(cfg.dataset)
    assert (len(raw["train"]), len(raw["validation"])) == (7, 4)
    assert raw["train"][0]["translation"] == {"en": "hello 0", "ro": "salut 0"}
    assert raw["validation"][3]["translation"]["ro"] == "pa 3"


def test_missing_data_file_names_the_key_to_fix(tmp_path):
    write_wmt16(tmp_path / "train.jsonl", [("a", "b")])
    cfg = compose_cfg(
        tmp_path,
        "dataset=nlp/translation/wmt16",
        f"+dataset.data_files.train={tmp_path}/train.jsonl",
        f"+dataset.data_files.validation={tmp_path}/nope.jsonl",
    )
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl.*dataset\.data_files\.validation"):
        load_raw(cfg.dataset)


def test_wrong_language_key_names_the_keys_found(tmp_path):
    write_wmt16(tmp_path / "t.jsonl", [("a", "b")])
    cfg = compose_cfg(
        tmp_path,
        "dataset=nlp/translation/wmt16",
        "dataset.target_language=de",
        f"+dataset.data_files.train={tmp_path}/t.jsonl",
        f"+dataset.data_files.validation={tmp_path}/t.jsonl",
    )
    with pytest.raises(ValueError, match=r"\['de'\].*\['en', 'ro'\].*dataset.source_language / dataset.target_language"):
        load_raw(cfg.dataset)


# ---- tokenizer


def test_trained_seq2seq_tokenizer_round_trips_and_has_t5_specials(tmp_path):
    cfg, raw, tokenizer = build(tmp_path, *SMALL)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    for text in ("the big dog sees a cat today", "lo kano grani un gato vida hodi", "Zürich ünseen wörds!"):
        ids = tokenizer(text)["input_ids"]
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_trained_causal_tokenizer_uses_one_token_for_bos_eos_pad(tmp_path):
    _, _, tokenizer = build(tmp_path, "task=nlp/language_modeling", *SMALL)
    assert tokenizer.bos_token == tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token_id == 0


def test_tokenizer_reloads_from_cache_without_training(tmp_path, monkeypatch):
    cfg, raw, first = build(tmp_path, *SMALL)
    from trainer_core.data import tokenizer as tokenizer_module

    def no_training(*args, **kwargs):
        raise AssertionError("the tokenizer was trained again instead of reloaded")

    monkeypatch.setattr(tokenizer_module, "_train_bpe", no_training)
    second = load_tokenizer(cfg.backbone, raw, cfg.dataset, cfg.task.name)
    assert second.get_vocab() == first.get_vocab()
    # another vocabulary size is another tokenizer: it must be trained, not taken from the cache
    cfg.backbone.tokenizer.vocab_size = 400
    with pytest.raises(AssertionError, match="trained again"):
        load_tokenizer(cfg.backbone, raw, cfg.dataset, cfg.task.name)


def test_tokenizer_fingerprint_follows_the_ids_not_the_object(tmp_path):
    from trainer_core.data.tokenizer import tokenizer_fingerprint

    cfg, raw, first = build(tmp_path, *SMALL)
    fingerprint = tokenizer_fingerprint(first)
    first(["a b c"] * 2, max_length=2, truncation=True, padding=True)  # per-call settings left in the backend
    assert tokenizer_fingerprint(first) == fingerprint
    assert tokenizer_fingerprint(load_tokenizer(cfg.backbone, raw, cfg.dataset, cfg.task)) == fingerprint
    # other data, same vocabulary size: other ids, so another fingerprint (what a resume must refuse)
    _, _, other = build(tmp_path, *SMALL, "dataset.synthetic_seed=7")
    assert len(other) == len(first)
    assert other.get_vocab() != first.get_vocab()
    assert tokenizer_fingerprint(other) != fingerprint


# ---- data modules


def test_translation_batches_pad_inputs_and_mask_labels(tmp_path):
    cfg, raw, tokenizer = build(tmp_path, *SMALL, "dataset.batch_size=8", "dataset.eval_batch_size=5")
    dm = build_datamodule(cfg, tokenizer, raw)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[0] == 8
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()
    lengths = (batch["labels"] != -100).sum(1)
    assert lengths.min() < batch["labels"].shape[1]  # some rows are padded, and with -100, not pad ids
    assert not (batch["labels"] == tokenizer.pad_token_id).any()
    assert (batch["labels"].gather(1, (lengths - 1)[:, None]) == tokenizer.eos_token_id).all()

    val = next(iter(dm.val_dataloader()))
    assert val["example_id"].tolist() == [0, 1, 2, 3, 4]
    source, reference = dm.validation_pairs()[2]
    assert tokenizer.decode(val["input_ids"][2], skip_special_tokens=True) == source
    assert tokenizer.decode(val["labels"][2][val["labels"][2] != -100], skip_special_tokens=True) == reference


def test_language_modeling_batches_are_full_blocks(tmp_path):
    cfg, raw, tokenizer = build(tmp_path, "task=nlp/language_modeling", *SMALL, "dataset.block_size=16")
    dm = build_datamodule(cfg, tokenizer, raw)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (cfg.dataset.batch_size, 16)
    assert torch.equal(batch["labels"], batch["input_ids"])
    assert batch["attention_mask"].all()
    assert (batch["input_ids"] == tokenizer.eos_token_id).any()  # texts are separated by eos


def test_language_modeling_too_short_validation_names_the_fix(tmp_path):
    cfg, raw, tokenizer = build(
        tmp_path, "task=nlp/language_modeling", *SMALL, "dataset.max_val_samples=1", "dataset.block_size=200"
    )
    with pytest.raises(ValueError, match="dataset.block_size=200"):
        build_datamodule(cfg, tokenizer, raw).setup("fit")


def test_tokenized_cache_is_keyed_by_settings(tmp_path):
    cfg, raw, tokenizer = build(tmp_path, *SMALL)
    build_datamodule(cfg, tokenizer, raw).setup("fit")
    cached = lambda: sorted(p.name for p in (tmp_path / "tokenized").glob("*.arrow"))  # noqa: E731
    assert len(cached()) == 2
    build_datamodule(cfg, tokenizer, raw).setup("fit")
    assert len(cached()) == 2  # same settings: reused

    cfg.dataset.max_source_length = 5
    dm = build_datamodule(cfg, tokenizer, raw)
    dm.setup("fit")
    assert len(cached()) == 4  # another length: new files, not the stale ones
    assert max(len(ids) for ids in dm.train_dataset["input_ids"]) == 5


def test_train_loader_resumes_mid_epoch_at_the_next_batch(tmp_path):
    cfg, raw, tokenizer = build(tmp_path, *SMALL, "dataset.batch_size=8")
    dm = build_datamodule(cfg, tokenizer, raw)
    dm.setup("fit")
    loader = dm.train_dataloader()
    dm.train_sampler.set_epoch(1)
    iterator = iter(loader)
    for _ in range(5):
        next(iterator)
    state = loader.state_dict()
    expected = next(iterator)

    fresh = build_datamodule(cfg, tokenizer, raw)
    fresh.setup("fit")
    resumed = fresh.train_dataloader()
    resumed.load_state_dict(state)
    got = next(iter(resumed))
    assert torch.equal(got["input_ids"], expected["input_ids"])
    assert torch.equal(got["labels"], expected["labels"])
    # and it is not simply the first batch of an epoch
    assert not torch.equal(got["input_ids"], next(iter(fresh.train_dataloader()))["input_ids"])


def test_train_sampler_splits_rows_between_ranks_with_a_fake_trainer(tmp_path):
    cfg, raw, tokenizer = build(tmp_path, *SMALL)
    dm = build_datamodule(cfg, tokenizer, raw)
    dm.setup("fit")

    class FakeTrainer:  # only the two attributes the data module reads (no process group needed)
        world_size = 2

        def __init__(self, rank):
            self.global_rank = rank

    seen = []
    for rank in (0, 1):
        dm.trainer = FakeTrainer(rank)
        dm.train_dataloader()
        seen.append(list(dm.train_sampler))
    assert len(seen[0]) == len(seen[1]) == 150 and not set(seen[0]) & set(seen[1])
