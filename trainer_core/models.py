"""The transformer: pretrained from the hub or a local path, or built from a config with random weights.

Every mismatch between task, model and tokenizer is checked here, before training starts, and the error says
which config key to change.
"""

from __future__ import annotations

from typing import Any, Dict

from transformers import AutoConfig, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from trainer_core.tasks import load_task
from trainer_core.tasks.base import TaskSpec

# model families, for messages: encoder-decoder (True) or decoder-only (False)
FAMILY_EXAMPLES = {True: "t5, bart, marian", False: "gpt2, llama, mistral"}


def _token_ids(tokenizer: PreTrainedTokenizerBase, encoder_decoder: bool) -> Dict[str, Any]:
    """Special token ids a new model takes from the tokenizer it was built for."""
    ids = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    if encoder_decoder:
        # The decoder starts from pad, as in T5 and Marian; a model trained from scratch can use any fixed id.
        ids["decoder_start_token_id"] = tokenizer.pad_token_id
    return ids


def _check_architecture(config: PretrainedConfig, task: TaskSpec, source: str) -> None:
    encoder_decoder = task.encoder_decoder
    if bool(config.is_encoder_decoder) != encoder_decoder:
        kind = "an encoder-decoder" if config.is_encoder_decoder else "a decoder-only"
        wanted = "an encoder-decoder" if encoder_decoder else "a decoder-only (causal)"
        raise ValueError(
            f"task {task.name!r} needs {wanted} model but {source} is {kind} {config.model_type!r} model; "
            f"choose a backbone for this task (backbone.model_type one of {FAMILY_EXAMPLES[encoder_decoder]}, "
            f"or backbone.pretrained_model_name_or_path=<such a model>)"
        )


def _check_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: TaskSpec) -> None:
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embedding has only {rows} rows, so some "
            f"token ids would index past it; set backbone.tokenizer.name_or_path to the model's own tokenizer "
            f"(the same value as backbone.pretrained_model_name_or_path), or leave both null to train both here"
        )
    if task.encoder_decoder:
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "the tokenizer has no pad token, which seq2seq labels and decoder inputs need; set "
                "backbone.tokenizer.name_or_path to a seq2seq model's tokenizer"
            )
        if model.config.decoder_start_token_id is None and model.generation_config.decoder_start_token_id is None:
            raise ValueError(
                f"the {model.config.model_type!r} model has no decoder_start_token_id; set "
                f"backbone.model_config.decoder_start_token_id (usually the pad id, {tokenizer.pad_token_id})"
            )


def build_model(backbone_cfg: Any, task: Any, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """The model of `task` (a TaskSpec, a task config or a task name), with the task's Auto class:
    ``from_pretrained`` when a path is given, else ``model_type`` with random weights."""
    spec = load_task(task)
    auto_class, encoder_decoder = spec.auto_model, spec.encoder_decoder
    path = backbone_cfg.pretrained_model_name_or_path
    if path:
        _check_architecture(AutoConfig.from_pretrained(path), spec, f"backbone.pretrained_model_name_or_path={path}")
        model = auto_class.from_pretrained(path)
    else:
        if not backbone_cfg.model_type:
            raise ValueError(
                "no model: set backbone.model_type (with backbone.model_config) or backbone.pretrained_model_name_or_path"
            )
        try:
            # model_config wins over the tokenizer's ids: a vocab_size set there is checked below, not ignored
            kwargs = {**_token_ids(tokenizer, encoder_decoder), **dict(backbone_cfg.model_config)}
            config = AutoConfig.for_model(backbone_cfg.model_type, **kwargs)
        except ValueError as err:
            # transformers' own message lists every model type it knows (hundreds); the cause keeps it
            raise ValueError(
                f"backbone.model_type {backbone_cfg.model_type!r} is not a transformers model type; "
                f"for this task use e.g. {FAMILY_EXAMPLES[encoder_decoder]}"
            ) from err
        _check_architecture(config, spec, f"backbone.model_type={backbone_cfg.model_type}")
        model = auto_class.from_config(config)
    _check_tokenizer(model, tokenizer, spec)
    return model
