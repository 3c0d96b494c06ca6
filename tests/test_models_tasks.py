"""Models, optimizer, schedule and the Lightning tasks, built from the real configs and trained briefly on CPU."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from conftest import REPO, compose_config, data_and_tokenizer
from trainer_core.data.datamodule import build_datamodule
from trainer_core.models import build_model
from trainer_core.optim import build_optimizer, build_scheduler, param_groups
from trainer_core.tasks import build_task, load_task
from trainer_core.tasks.translation import TranslationTask

SMALL = [
    "dataset.synthetic_train_size=400",
    "dataset.synthetic_val_size=16",
    "dataset.max_val_samples=null",
    "dataset.batch_size=16",
    "dataset.eval_batch_size=16",
    "task.max_generate_length=12",
]
TRANSLATION = ["task=nlp/translation", *SMALL]
LANGUAGE_MODELING = ["task=nlp/language_modeling", "dataset.block_size=32", *SMALL]


def compose_cfg(tmp_path: Path, *overrides: str):
    return compose_config(f"dataset.cache_dir={tmp_path}", *overrides)


def built_data(tmp_path: Path, *overrides: str):
    cfg = compose_cfg(tmp_path, *overrides)
    return (cfg, *data_and_tokenizer(cfg))


def cpu_trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return pl.Trainer(**{**defaults, **kwargs})


# ---- models


def test_tiny_t5_is_built_from_config_with_the_tokenizers_ids(tmp_path):
    cfg, _, tokenizer = built_data(tmp_path, *TRANSLATION)
    model = build_model(cfg.backbone, cfg.task.name, tokenizer)
    assert type(model).__name__ == "T5ForConditionalGeneration"
    assert model.config.d_model == cfg.backbone.model_config.d_model
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert model.config.decoder_start_token_id == model.config.pad_token_id == tokenizer.pad_token_id == 0
    assert model.config.eos_token_id == tokenizer.eos_token_id


def test_tiny_gpt2_is_built_from_config_with_the_tokenizers_ids(tmp_path):
    cfg, _, tokenizer = built_data(tmp_path, *LANGUAGE_MODELING)
    model = build_model(cfg.backbone, cfg.task.name, tokenizer)
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert model.config.n_embd == cfg.backbone.model_config.n_embd
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert model.config.eos_token_id == model.config.bos_token_id == tokenizer.eos_token_id


def test_pretrained_path_loads_offline(tmp_path):
    cfg, _, tokenizer = built_data(tmp_path, *TRANSLATION)
    build_model(cfg.backbone, cfg.task.name, tokenizer).save_pretrained(tmp_path / "t5")
    cfg.backbone.pretrained_model_name_or_path = str(tmp_path / "t5")
    model = build_model(cfg.backbone, cfg.task.name, tokenizer)
    assert type(model).__name__ == "T5ForConditionalGeneration"


def test_decoder_only_backbone_for_translation_names_the_fix(tmp_path):
    cfg, _, tokenizer = built_data(tmp_path, *TRANSLATION, "backbone=nlp/causal/tiny")
    with pytest.raises(ValueError, match="needs an encoder-decoder model.*backbone.model_type one of t5"):
        build_model(cfg.backbone, cfg.task.name, tokenizer)


def test_encoder_decoder_backbone_for_language_modeling_names_the_fix(tmp_path):
    cfg, _, tokenizer = built_data(tmp_path, *LANGUAGE_MODELING, "backbone=nlp/seq2seq/tiny")
    with pytest.raises(ValueError, match="needs a decoder-only.*backbone.pretrained_model_name_or_path"):
        build_model(cfg.backbone, cfg.task.name, tokenizer)


def test_pretrained_model_of_the_wrong_family_names_its_path(tmp_path):
    cfg, _, tokenizer = built_data(tmp_path, *LANGUAGE_MODELING)
    build_model(cfg.backbone, cfg.task.name, tokenizer).save_pretrained(tmp_path / "gpt2")
    cfg = compose_cfg(tmp_path, *TRANSLATION, f"backbone.pretrained_model_name_or_path={tmp_path}/gpt2")
    with pytest.raises(ValueError, match=f"pretrained_model_name_or_path={tmp_path}/gpt2 is a decoder-only 'gpt2'"):
        build_model(cfg.backbone, cfg.task.name, tokenizer)


def test_tokenizer_larger_than_the_embedding_names_the_fix(tmp_path):
    cfg, _, tokenizer = built_data(tmp_path, *TRANSLATION, "+backbone.model_config.vocab_size=100")
    with pytest.raises(ValueError, match=f"{len(tokenizer)} tokens.*100 rows.*backbone.tokenizer.name_or_path"):
        build_model(cfg.backbone, cfg.task.name, tokenizer)


def test_seq2seq_tokenizer_without_pad_token_names_the_fix(tmp_path):
    cfg, _, tokenizer = built_data(tmp_path, *TRANSLATION)
    tokenizer.pad_token = None
    with pytest.raises(ValueError, match="no pad token.*backbone.tokenizer.name_or_path"):
        build_model(cfg.backbone, cfg.task.name, tokenizer)


def test_unknown_model_type_names_the_key(tmp_path):
    cfg, _, tokenizer = built_data(tmp_path, *TRANSLATION, "backbone.model_type=t6")
    with pytest.raises(ValueError, match="backbone.model_type 't6' is not a transformers model type"):
        build_model(cfg.backbone, cfg.task.name, tokenizer)


def test_block_longer_than_the_models_positions_names_the_fix(tmp_path):
    cfg, raw, tokenizer = built_data(tmp_path, *LANGUAGE_MODELING, "backbone.model_config.n_positions=16")
    model = build_model(cfg.backbone, cfg.task.name, tokenizer)
    with pytest.raises(ValueError, match="dataset.block_size=32 is longer than the model's 16 positions"):
        build_task(cfg, model, tokenizer, build_datamodule(cfg, tokenizer, raw))


# ---- optimizer and schedule


def test_adamw_takes_the_configured_hyperparameters_and_spares_vectors_from_decay(tmp_path):
    cfg = compose_cfg(tmp_path, "optimizer.lr=3e-4", "optimizer.weight_decay=0.1")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = build_optimizer(param_groups(model, cfg.optimizer.weight_decay), cfg.optimizer, offload=False)
    assert type(optimizer) is torch.optim.AdamW
    decayed, spared = optimizer.param_groups
    assert [p.shape for p in decayed["params"]] == [(4, 4)] and decayed["weight_decay"] == 0.1
    assert len(spared["params"]) == 3 and spared["weight_decay"] == 0.0
    assert decayed["lr"] == 3e-4 and decayed["betas"] == (0.9, 0.999)


def test_unknown_optimizer_lists_the_valid_ones(tmp_path):
    cfg = compose_cfg(tmp_path, "optimizer.name=sgd")
    with pytest.raises(ValueError, match="optimizer.name 'sgd'; valid: adamw"):
        build_optimizer(torch.nn.Linear(2, 2).parameters(), cfg.optimizer, offload=False)


def _learning_rates(scheduler_cfg, max_steps: int, steps: int):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    config = build_scheduler(optimizer, scheduler_cfg, max_steps)
    assert config["interval"] == "step"
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        config["scheduler"].step()
    return rates


def test_linear_warmup_rises_then_decays_to_zero_at_max_steps(tmp_path):
    cfg = compose_cfg(tmp_path, "scheduler=linear_warmup", "scheduler.warmup_ratio=0.1")
    rates = _learning_rates(cfg.scheduler, max_steps=100, steps=101)
    assert rates[0] == 0.0 and rates[5] == pytest.approx(0.5) and rates[10] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(rates[:10], rates[1:11]))
    assert all(a > b for a, b in zip(rates[10:100], rates[11:101]))
    assert rates[55] == pytest.approx(0.5) and rates[100] == 0.0


def test_warmup_steps_win_over_the_ratio(tmp_path):
    cfg = compose_cfg(tmp_path, "scheduler.warmup_steps=4")
    rates = _learning_rates(cfg.scheduler, max_steps=20, steps=5)
    assert rates == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_constant_schedule_keeps_the_rate(tmp_path):
    cfg = compose_cfg(tmp_path, "scheduler=constant")
    assert _learning_rates(cfg.scheduler, max_steps=10, steps=12) == [1.0] * 12


def test_scheduler_errors_name_the_fix(tmp_path):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="scheduler.name 'cosine'; valid: linear_warmup, constant"):
        build_scheduler(optimizer, compose_cfg(tmp_path, "scheduler.name=cosine").scheduler, 10)
    with pytest.raises(ValueError, match="set trainer.max_steps"):
        build_scheduler(optimizer, compose_cfg(tmp_path).scheduler, -1)
    with pytest.raises(ValueError, match="lower scheduler.warmup_steps"):
        build_scheduler(optimizer, compose_cfg(tmp_path, "scheduler.warmup_steps=10").scheduler, 10)


@pytest.mark.slow
@pytest.mark.deepspeed
def test_offload_uses_deepspeed_cpu_adam_in_adamw_mode(tmp_path):
    # The first use JIT-compiles DeepSpeed's cpu_adam op (~40 s); TORCH_EXTENSIONS_DIR keeps it for later runs.
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    cfg = compose_cfg(tmp_path, "optimizer.lr=0.5", "optimizer.weight_decay=0.1")
    model = torch.nn.Linear(3, 3)
    optimizer = build_optimizer(param_groups(model, 0.1), cfg.optimizer, offload=True)
    assert isinstance(optimizer, DeepSpeedCPUAdam) and optimizer.adam_w_mode
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.5]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    before = model.weight.detach().clone()
    model(torch.ones(2, 3)).sum().backward()
    optimizer.step()
    assert not torch.equal(model.weight, before)


# ---- tasks


class _TrainLosses(pl.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def _train_briefly(tmp_path: Path, overrides, steps: int = 40):
    cfg, raw, tokenizer = built_data(tmp_path, *overrides, f"trainer.max_steps={steps}", "optimizer.lr=3e-3")
    pl.seed_everything(0)
    model = build_model(cfg.backbone, cfg.task.name, tokenizer)
    datamodule = build_datamodule(cfg, tokenizer, raw)
    task = build_task(cfg, model, tokenizer, datamodule)
    before = dict(cpu_trainer().validate(task, datamodule=datamodule, verbose=False)[0])
    losses = _TrainLosses()
    cpu_trainer(max_steps=steps, limit_val_batches=0, callbacks=[losses]).fit(task, datamodule=datamodule)
    after = dict(cpu_trainer().validate(task, datamodule=datamodule, verbose=False)[0])
    return before, losses.losses, after


def _mean(values):
    return sum(values) / len(values)


def test_translation_training_lowers_the_loss_and_logs_samples(tmp_path, capsys):
    before, losses, after = _train_briefly(tmp_path, [*TRANSLATION, "task.log_samples=2"])
    assert len(losses) == 40
    assert _mean(losses[-5:]) < _mean(losses[:5]) - 1.0
    assert after["val_loss"] < before["val_loss"] - 1.0
    assert set(after) == {"val_loss", "val_bleu"} and 0.0 <= after["val_bleu"] <= 100.0
    assert load_task("translation").metric == "val_bleu"  # the metric the task declares is the one it logs
    printed = capsys.readouterr().out
    assert printed.count("hypothesis: ") == 4  # two samples, after each of the two validations


def test_language_modeling_training_lowers_the_loss_and_perplexity(tmp_path):
    before, losses, after = _train_briefly(tmp_path, LANGUAGE_MODELING)
    assert _mean(losses[-5:]) < _mean(losses[:5]) - 1.0
    assert after["val_loss"] < before["val_loss"] - 1.0
    assert after["val_ppl"] == pytest.approx(torch.exp(torch.tensor(after["val_loss"])).item(), rel=1e-4)
    assert load_task("language_modeling").metric == "val_ppl"


def test_bleu_through_the_tasks_scoring_is_100_for_references_and_0_for_garbage(tmp_path):
    cfg, raw, tokenizer = built_data(tmp_path, *TRANSLATION)
    datamodule = build_datamodule(cfg, tokenizer, raw)
    task = build_task(cfg, build_model(cfg.backbone, cfg.task.name, tokenizer), tokenizer, datamodule)
    assert isinstance(task, TranslationTask)
    references = {i: reference for i, (_, reference) in enumerate(datamodule.validation_pairs())}
    assert len(references) == 16
    assert task.score(references) == pytest.approx(100.0)
    assert task.score({i: "zq xv wk" for i in references}) < 1.0
    # scored against the references of the ids given, not of the first rows: a subset of perfect ids is 100
    assert task.score({i: references[i] for i in (3, 7, 11)}) == pytest.approx(100.0)


# ---- the task registry: a task is one module and one YAML file

HEAVY = ("torch", "pytorch_lightning", "lightning", "transformers", "datasets", "deepspeed")


def test_naming_listing_and_checking_tasks_imports_no_training_stack():
    code = (
        "import json, sys\n"
        "import trainer_core.tasks as tasks, configs.validate as validate\n"
        "print(json.dumps({'tasks': tasks.builtin_tasks(), 'seen_by_checks': validate.builtin_tasks(),\n"
        f"  'heavy': sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})}}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert found["tasks"] == found["seen_by_checks"] == ["language_modeling", "translation"]
    assert found["heavy"] == []


def test_a_module_that_is_no_task_is_refused_naming_the_fix(tmp_path, monkeypatch):
    (tmp_path / "not_tasks").mkdir()
    (tmp_path / "not_tasks" / "__init__.py").write_text("")
    (tmp_path / "not_tasks" / "plain.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ValueError, match="module 'not_tasks.plain' defines no TASK = TaskSpec"):
            load_task("not_tasks.plain")
    finally:
        sys.modules.pop("not_tasks.plain", None)
        sys.modules.pop("not_tasks", None)
    with pytest.raises(ValueError, match="task.name='summaries' names no task.*language_modeling, translation"):
        load_task("summaries")


COUNTING_MODULE = """\
\"\"\"Counting, a task written outside zerorun: a causal LM on runs of consecutive numbers, measured in bits per
token. It reuses the language-modeling data module and declares everything else here.\"\"\"
import math

from transformers import AutoModelForCausalLM

from trainer_core.data.tokenizer import CAUSAL_SPECIALS
from trainer_core.tasks.base import TaskSpec
from trainer_core.tasks.language_modeling import LanguageModelingDataModule, LanguageModelingTask


class CountingTask(LanguageModelingTask):
    def on_validation_epoch_end(self):
        loss = self._mean_validation_loss()
        self.log("val_loss", loss, sync_dist=True)
        self.log("val_bits_per_token", loss / math.log(2), sync_dist=True)


def records(rng, dataset_cfg, train_size, val_size):
    def row():
        start = rng.randrange(100)
        return {"text": " ".join(str(n) for n in range(start, start + rng.randint(4, 12)))}

    return [row() for _ in range(train_size)], [row() for _ in range(val_size)]


TASK = TaskSpec(
    name="counting",
    lightning_module=CountingTask,
    datamodule=LanguageModelingDataModule,
    auto_model=AutoModelForCausalLM,
    encoder_decoder=False,
    tokenizer_specials=CAUSAL_SPECIALS,
    tokenizer_texts=lambda train, dataset_cfg: list(train["text"]),
    length_keys=("block_size",),
    metric="val_bits_per_token",
    mode="min",
    synthetic_records=records,
)
"""

COUNTING_YAML = """\
# @package _global_
defaults:
  - /dataset: nlp/language_modeling/tiny
  - /backbone: nlp/causal/tiny

task:
  name: counting
  module: demo_tasks.counting
dataset:
  synthetic: demo_tasks.counting
"""


def test_a_task_written_outside_zerorun_trains_with_nothing_else_changed(tmp_path, monkeypatch):
    """One module on the Python path and one YAML on Hydra's search path: the task composes, passes the checks
    and trains; nothing in zerorun names it."""
    from configs.finalize import finalize
    from configs.validate import ConfigError, check_config
    from trainer_core.checkpoint_store import CheckpointStore
    from trainer_core.train import train

    package = tmp_path / "code" / "demo_tasks"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "counting.py").write_text(COUNTING_MODULE)
    (tmp_path / "configs" / "task" / "demo").mkdir(parents=True)
    (tmp_path / "configs" / "task" / "demo" / "counting.yaml").write_text(COUNTING_YAML)
    overrides = [
        f"hydra.searchpath=[file://{tmp_path / 'configs'}]", "task=demo/counting",
        f"cluster.runs_dir={tmp_path / 'runs'}", f"dataset.cache_dir={tmp_path / 'cache'}",
        "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.logger=csv", "trainer.enable_progress_bar=false",
        "dataset.synthetic_train_size=200", "dataset.synthetic_val_size=16", "dataset.block_size=16",
    ]
    with pytest.raises(ConfigError, match="task.module='demo_tasks.counting' names no task"):
        check_config(compose_config(*overrides))  # its module is not on the path yet

    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    try:
        cfg = compose_config(*overrides)
        check_config(cfg)
        final = finalize(cfg)
        Path(final.run_dir).mkdir(parents=True)  # the launcher makes it (jobs/runs.py)
        metrics = train(final)
    finally:
        for name in ("demo_tasks.counting", "demo_tasks"):
            sys.modules.pop(name, None)
    assert metrics["global_step"] == 2
    assert math.isfinite(metrics["val_bits_per_token"])
    made = next((tmp_path / "cache" / "synthetic").glob("counting-*/train.jsonl")).read_text().splitlines()
    numbers = [int(n) for n in json.loads(made[0])["text"].split()]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    run_dir = next((tmp_path / "runs" / "counting").iterdir())
    store = CheckpointStore(run_dir)
    meta = store.read_meta(store.latest())
    assert meta.model_config["task"] == "counting"
    assert len(meta.tokenizer) == 16  # the tokenizer's fingerprint, which a resume compares


# ---- resume: the tokenizer must be the one the checkpoint was trained with


def test_resume_with_another_tokenizer_is_refused_naming_the_fix(tmp_path):
    from trainer_core.checkpoint_store import CheckpointError, CheckpointMeta, CheckpointStore
    from trainer_core.train import _resume_from

    store = CheckpointStore(tmp_path / "run")
    saved = CheckpointMeta(step=10, strategy="ddp", world_size=1, model="M/1", model_config={"task": "t"},
                           tokenizer="aaaa")
    store.tmp_dir(10).mkdir(parents=True)
    store.commit(saved, keep_last=2)

    same = CheckpointMeta(step=0, strategy="ddp", world_size=1, model="M/1", model_config={"task": "t"},
                          tokenizer="aaaa")
    assert _resume_from(store, same, required=True)[1] == 10
    other = CheckpointMeta(**{**same.__dict__, "tokenizer": "bbbb"})
    with pytest.raises(CheckpointError, match="another tokenizer.*aaaa.*bbbb.*resume with the dataset and "
                                              "backbone.tokenizer settings the run was started with"):
        _resume_from(store, other, required=True)
    # a checkpoint written before fingerprints were recorded does not block a resume
    unknown = CheckpointMeta(**{**saved.__dict__, "tokenizer": ""})
    assert unknown.mismatch(other) is None
