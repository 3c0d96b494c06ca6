"""Raw text data as a DatasetDict with splits "train" and "validation", from local files, code, or the hub.

Three sources, in this order of precedence:
  - ``dataset.data_files``: local files keyed by split name (``dataset.train_split`` / ``dataset.validation_split``,
    "train" / "validation" by default). ``.txt`` files are read line by line, everything else as JSON lines
    (for translation the WMT16 layout ``{"translation": {"en": ..., "ro": ...}}``).
  - ``dataset.synthetic``: a small data set made in code (synthetic.py), then read as files like the above.
  - ``dataset.name`` / ``dataset.subset``: ``load_dataset`` from the Hugging Face hub.

Every check here runs before any model is built, so a wrong path or a wrong language key fails in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict

from datasets import Dataset, DatasetDict, load_dataset

from trainer_core.data.synthetic import write_synthetic


def _hf_cache(dataset_cfg: Any) -> str:
    # Keep the datasets library's arrow cache beside ours, so one cache_dir (and a test's tmp_path) holds it all.
    return os.path.join(dataset_cfg.cache_dir, "hf_datasets")


def _split_names(dataset_cfg: Any) -> Dict[str, str]:
    """Our split name -> the name the source uses."""
    return {"train": dataset_cfg.train_split, "validation": dataset_cfg.validation_split}


def _checked_files(data_files: Dict[str, str], dataset_cfg: Any) -> Dict[str, str]:
    files = {}
    for split in _split_names(dataset_cfg).values():
        if split not in data_files or not data_files[split]:
            raise ValueError(
                f"dataset.data_files has no {split!r} entry (it has {sorted(data_files)}); "
                f"add dataset.data_files.{split}=PATH"
            )
        path = Path(data_files[split]).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"data file {str(path)!r} does not exist; fix dataset.data_files.{split} "
                f"(relative paths are taken from {os.getcwd()})"
            )
        files[split] = str(path.resolve())
    return files


def _load_files(files: Dict[str, str], dataset_cfg: Any) -> DatasetDict:
    builder = "text" if all(p.endswith(".txt") for p in files.values()) else "json"
    return load_dataset(builder, data_files=files, cache_dir=_hf_cache(dataset_cfg))


def _cap(split: Dataset, limit: Any) -> Dataset:
    # The first N rows, not a random subset: the same N gives the same data on every rank and every run.
    if limit is None or limit >= len(split):
        return split
    return split.select(range(limit))


def _validate_columns(raw: DatasetDict, dataset_cfg: Any) -> None:
    source, target = dataset_cfg.source_language, dataset_cfg.target_language
    for split_name, split in raw.items():
        if len(split) == 0:
            raise ValueError(f"the {split_name} split is empty; check the data files or dataset.max_*_samples")
        if source or target:
            if "translation" not in split.column_names:
                raise ValueError(
                    f"translation data needs a 'translation' column ({{'translation': {{'{source}': ..., "
                    f"'{target}': ...}}}} per line); the {split_name} split has columns {split.column_names}"
                )
            found = sorted(split[0]["translation"])
            missing = [lang for lang in (source, target) if lang not in found]
            if missing:
                raise ValueError(
                    f"language key(s) {missing} not in the {split_name} split's translations, which have "
                    f"{found}; set dataset.source_language / dataset.target_language to two of {found}"
                )
        elif dataset_cfg.text_column not in split.column_names:
            raise ValueError(
                f"text column {dataset_cfg.text_column!r} not in the {split_name} split, which has columns "
                f"{split.column_names}; set dataset.text_column (or dataset.source_language/target_language "
                f"for translation data)"
            )


def load_raw(dataset_cfg: Any) -> DatasetDict:
    """Load the raw train and validation splits named by the dataset config, capped and checked."""
    splits = _split_names(dataset_cfg)
    data_files = {split: path for split, path in dataset_cfg.data_files.items() if path}
    if data_files:
        loaded = _load_files(_checked_files(data_files, dataset_cfg), dataset_cfg)
    elif dataset_cfg.synthetic != "none":
        loaded = _load_files(write_synthetic(dataset_cfg.synthetic, dataset_cfg), dataset_cfg)
    elif dataset_cfg.name:
        loaded = load_dataset(dataset_cfg.name, dataset_cfg.subset, cache_dir=_hf_cache(dataset_cfg))
        absent = [name for name in splits.values() if name not in loaded]
        if absent:
            raise ValueError(
                f"{dataset_cfg.name} has no split(s) {absent} (it has {list(loaded)}); "
                f"set dataset.train_split / dataset.validation_split"
            )
    else:
        raise ValueError(
            "no data source: set dataset.data_files.train and .validation, dataset.synthetic, or dataset.name"
        )

    raw = DatasetDict(
        train=_cap(loaded[splits["train"]], dataset_cfg.max_train_samples),
        validation=_cap(loaded[splits["validation"]], dataset_cfg.max_val_samples),
    )
    _validate_columns(raw, dataset_cfg)
    return raw
