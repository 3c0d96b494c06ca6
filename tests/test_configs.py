"""Every config users will type composes, passes the checks and builds its model, data and strategy;
bad input fails before anything runs, with a message that names the fix."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from cluster.rendezvous import single_process
from configs.validate import ConfigError, check_config
from conftest import REPO

TASKS = {
    "nlp/translation": ("nlp/translation/tiny", "nlp/translation/wmt16"),
    "nlp/language_modeling": ("nlp/language_modeling/tiny", "nlp/language_modeling/wikitext"),
}
TRAINERS = ("default", "ddp", "deepspeed", "deepspeed_offload")


@pytest.mark.parametrize("trainer", TRAINERS)
@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_and_trainer_composes_and_passes_checks(compose, task, trainer):
    for dataset in TASKS[task]:
        cfg = compose(f"task={task}", f"dataset={dataset}", f"trainer={trainer}",
                      *(["cluster.tasks_per_node=2"] if trainer != "default" else []))
        check_config(cfg)
        assert cfg.task.name == task.split("/")[1]
        assert cfg.trainer.strategy.name == {"default": "auto", "ddp": "ddp"}.get(trainer, "deepspeed")
        assert cfg.trainer.strategy.offload_optimizer == (trainer == "deepspeed_offload")


def test_seed_commands_compose_with_zero2_options(compose):
    ds = compose("task=nlp/translation", "dataset=nlp/translation/wmt16", "trainer=deepspeed")
    off = compose("task=nlp/translation", "dataset=nlp/translation/wmt16", "trainer=deepspeed_offload")
    assert (ds.dataset.name, ds.dataset.subset) == ("wmt16", "ro-en")
    assert ds.trainer.strategy.stage == off.trainer.strategy.stage == 2
    assert (ds.trainer.strategy.offload_optimizer, off.trainer.strategy.offload_optimizer) == (False, True)
    assert ds.backbone.model_type == "t5"


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("trainer", ("default", "ddp", "deepspeed", "deepspeed_offload"))
def test_model_data_and_strategy_build_without_training(compose, task, trainer):
    from trainer_core.data.datamodule import build_datamodule
    from trainer_core.data.loading import load_raw
    from trainer_core.data.tokenizer import load_tokenizer
    from trainer_core.models import build_model
    from trainer_core.strategies import CPURehearsalDeepSpeedStrategy, build_placement
    from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy

    cfg = compose(f"task={task}", f"trainer={trainer}", "dataset.synthetic_train_size=200")
    raw = load_raw(cfg.dataset)
    tok = load_tokenizer(cfg.backbone, raw, cfg.dataset, cfg.task.name)
    model = build_model(cfg.backbone, cfg.task.name, tok)
    dm = build_datamodule(cfg, tok)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    out = model(**batch)
    assert out.loss.isfinite()
    placement = build_placement(cfg, single_process(port=29999))
    expected = {"default": SingleDeviceStrategy, "ddp": DDPStrategy}.get(trainer, CPURehearsalDeepSpeedStrategy)
    assert type(placement.strategy) is expected
    assert placement.precision == "32-true"  # fp32 on CPU
    if expected is CPURehearsalDeepSpeedStrategy:
        zero = placement.strategy.config["zero_optimization"]
        assert zero["stage"] == 2
        assert zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == 1_000_000  # CPU bucket size
        assert ("offload_optimizer" in zero) == (trainer == "deepspeed_offload")


def test_unknown_group_option_lists_valid_ones(compose):
    with pytest.raises(ConfigCompositionException) as e:
        compose("trainer=deepspeed_stage3")
    for valid in TRAINERS:
        assert valid in str(e.value)


def test_typo_in_a_key_fails_at_composition(compose):
    with pytest.raises((ConfigCompositionException, ConfigAttributeError, ConfigKeyError)) as e:
        compose("trainer.max_step=10")
    assert "max_step" in str(e.value)


def test_wrong_type_fails_at_composition(compose):
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        compose("trainer.max_steps=ten")
    assert "max_steps" in str(e.value)


@pytest.mark.parametrize(
    "overrides, fix",
    [
        (("trainer=ddp", "trainer.strategy.offload_optimizer=true"), "use trainer=deepspeed_offload"),
        (("trainer=deepspeed", "trainer.strategy.stage=3"), "supports ZeRO stage 2 only"),
        (("trainer=default", "cluster.tasks_per_node=2"), "use trainer=ddp"),
        (("cluster.nodes=0",), "at least 1 node"),
        (("trainer.max_steps=0",), "set it to at least 1"),
        (("cluster.time_min=1", "cluster.signal_delay_s=90"), "lower signal_delay_s or raise time_min"),
        (("trainer.logger=wandb",), "choose one of: tensorboard, csv"),
    ],
)
def test_bad_config_is_rejected_with_the_fix(compose, overrides, fix):
    with pytest.raises(ConfigError) as e:
        check_config(compose(*overrides))
    assert fix in str(e.value)


def test_cli_rejects_bad_config_before_anything_runs(tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "train.py", f"cluster.runs_dir={runs}", "trainer=ddp", "trainer.strategy.offload_optimizer=true"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "use trainer=deepspeed_offload" in proc.stderr
    assert not list(runs.glob("*/*/checkpoints")), "a rejected config must not start a run"


def test_missing_local_data_file_names_the_key(compose, tmp_path):
    from trainer_core.data.loading import load_raw

    cfg = compose("dataset=nlp/translation/wmt16",
                  f"dataset.data_files={{train:{tmp_path}/nope.jsonl,validation:{tmp_path}/nope2.jsonl}}")
    with pytest.raises(Exception) as e:
        load_raw(cfg.dataset)
    assert "nope.jsonl" in str(e.value) and "dataset.data_files.train" in str(e.value)


def test_tokenizer_model_mismatch_names_the_fix(compose):
    from trainer_core.data.loading import load_raw
    from trainer_core.data.tokenizer import load_tokenizer
    from trainer_core.models import build_model

    cfg = compose("task=nlp/translation", "backbone=nlp/causal/tiny", "dataset.synthetic_train_size=200")
    raw = load_raw(cfg.dataset)
    tok = load_tokenizer(cfg.backbone, raw, cfg.dataset, cfg.task.name)
    with pytest.raises(ValueError) as e:
        build_model(cfg.backbone, cfg.task.name, tok)
    assert "encoder-decoder" in str(e.value) and "backbone.pretrained_model_name_or_path" in str(e.value)
