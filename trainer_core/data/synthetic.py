"""Small, deterministic, learnable data sets made in code, written as JSON lines like real data.

There is no hub here and no package ships a translation corpus, so the default runs train on text generated from a
tiny grammar. A task turns it into rows (its TaskSpec's ``synthetic_records``: WMT16-style
``{"translation": {"en": ..., "xx": ...}}`` for translation, ``{"text": ...}`` for language modeling); the rows
are written to JSON-lines files and then read by the same code path as local real data.

Translation into the invented language "xx" is a fixed word mapping plus two reorderings, so a tiny seq2seq model
can learn it in a few hundred steps and BLEU shows it: an adjective follows its noun, and the verb moves to the end.

    en: the big dog sees a cat today     ->  xx: lo kano grani un gato vida hodi
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Tuple

from trainer_core.durable import write_atomic
from trainer_core.tasks import load_task

# Bump when the generated text changes: the version is part of the file names, so stale files are not reused.
GENERATOR_VERSION = 1

# source word -> invented target word; every target word is distinct so the mapping is invertible
DETERMINERS = {"the": "lo", "a": "un", "every": "kada", "this": "esto", "that": "aqel", "no": "nul"}
ADJECTIVES = {
    "big": "grani", "small": "peko", "red": "rusa", "tall": "alta", "young": "jova", "happy": "felo",
    "quiet": "tasi", "clever": "saga", "green": "verda", "tired": "lasa", "brave": "koro", "strange": "stranu",
}
NOUNS = {
    "dog": "kano", "cat": "gato", "bird": "avo", "farmer": "agrin", "teacher": "dokto", "child": "infa",
    "king": "rego", "river": "fluvo", "house": "domo", "tree": "arbo", "horse": "equo", "friend": "amiko",
    "city": "urbo", "boat": "navo", "apple": "pomo", "book": "libro",
}
VERBS = {
    "sees": "vida", "likes": "ama", "finds": "trova", "follows": "seka", "helps": "juva", "paints": "pinta",
    "watches": "spekta", "carries": "porta", "calls": "voka", "knows": "sava",
}
ADVERBS = {"today": "hodi", "often": "ofte", "slowly": "lenta", "again": "itere", "quietly": "silme"}


def _noun_phrase(rng: random.Random) -> Tuple[List[str], List[str]]:
    """DET [ADJ] NOUN in English; DET NOUN [ADJ] in xx."""
    det, noun = rng.choice(list(DETERMINERS)), rng.choice(list(NOUNS))
    adjective = rng.choice(list(ADJECTIVES)) if rng.random() < 0.5 else None
    source = [det] + ([adjective] if adjective else []) + [noun]
    target = [DETERMINERS[det], NOUNS[noun]] + ([ADJECTIVES[adjective]] if adjective else [])
    return source, target


def sentence_pair(rng: random.Random) -> Tuple[str, str]:
    """One sentence and its translation: SUBJECT VERB OBJECT [ADVERB] -> SUBJECT OBJECT VERB [ADVERB]."""
    subject_src, subject_tgt = _noun_phrase(rng)
    object_src, object_tgt = _noun_phrase(rng)
    verb = rng.choice(list(VERBS))
    adverb = rng.choice(list(ADVERBS)) if rng.random() < 0.4 else None
    source = subject_src + [verb] + object_src + ([adverb] if adverb else [])
    target = subject_tgt + object_tgt + [VERBS[verb]] + ([ADVERBS[adverb]] if adverb else [])
    return " ".join(source), " ".join(target)


def translation_records(rng: random.Random, size: int, source: str, target: str, avoid: set) -> Iterator[dict]:
    # Validation sentences never occur in training, so BLEU measures the rule, not memory.
    made = 0
    while made < size:
        src, tgt = sentence_pair(rng)
        if src in avoid:
            continue
        avoid.add(src)
        made += 1
        yield {"translation": {source: src, target: tgt}}


def text_records(rng: random.Random, size: int) -> Iterator[dict]:
    # A line holds one to three sentences of the source grammar, each closed by " .".
    for _ in range(size):
        sentences = [sentence_pair(rng)[0] + " ." for _ in range(rng.randint(1, 3))]
        yield {"text": " ".join(sentences)}


def _parameters(spec: Any, dataset_cfg: Any) -> Dict[str, Any]:
    """Everything the generated text depends on; its hash names the files."""
    return {
        "kind": spec.name,
        "version": GENERATOR_VERSION,
        "seed": dataset_cfg.synthetic_seed,
        "train_size": dataset_cfg.synthetic_train_size,
        "val_size": dataset_cfg.synthetic_val_size,
        **{key: dataset_cfg[key] for key in spec.synthetic_keys},
    }


def _write_rows(path: Path, records: Iterable[dict]) -> None:
    # Ranks may write the same file at once: each writes its own temporary file and renames it into place.
    # The content is deterministic, so whichever rename lands last leaves the same bytes.
    write_atomic(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def write_synthetic(task: Any, dataset_cfg: Any) -> Dict[str, str]:
    """Write (or reuse) the synthetic train and validation files of `task` (a task name, module path or TaskSpec);
    return ``{split name: path}``.

    The split names are ``dataset.train_split`` and ``dataset.validation_split``, as for ``dataset.data_files``.
    """
    spec = load_task(task, key="dataset.synthetic")
    if spec.synthetic_records is None:
        raise ValueError(
            f"task {spec.name!r} makes no synthetic data; set dataset.synthetic=none and give dataset.data_files "
            "or dataset.name"
        )
    params = _parameters(spec, dataset_cfg)
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(dataset_cfg.cache_dir) / "synthetic" / f"{spec.name}-{digest}"
    folder.mkdir(parents=True, exist_ok=True)

    paths = {
        dataset_cfg.train_split: folder / "train.jsonl",
        dataset_cfg.validation_split: folder / "validation.jsonl",
    }
    if all(p.exists() for p in paths.values()):
        return {split: str(p) for split, p in paths.items()}

    rng = random.Random(f"zerorun-synthetic-{digest}")
    train, validation = spec.synthetic_records(
        rng, dataset_cfg, params["train_size"], params["val_size"]
    )
    _write_rows(paths[dataset_cfg.train_split], train)
    _write_rows(paths[dataset_cfg.validation_split], validation)
    return {split: str(p) for split, p in paths.items()}
