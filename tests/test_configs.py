"""Every config users will type composes, passes the checks and builds its model, data and strategy;
bad input fails before anything runs, with a message that names the fix."""

from __future__ import annotations

import subprocess
import sys
import time
import os
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from trainer_core.contract import single_process
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
        (("trainer.logger=neptune",), "choose one of: tensorboard, csv, wandb, mlflow"),
        # values a rank used to refuse only after it had started, with a library traceback
        (("optimizer.lr=-1",), "optimizer.lr=-1.0: the learning rate must be positive, e.g. optimizer.lr=1e-3"),
        (("optimizer.lr=0",), "optimizer.lr=0.0: the learning rate must be positive"),
        (("dataset.batch_size=0",), "dataset.batch_size=0: set it to at least 1"),
        (("dataset.eval_batch_size=0",), "dataset.eval_batch_size=0: set it to at least 1"),
        (("dataset.block_size=0",), "dataset.block_size=0: set it to at least 1"),
        (("scheduler.warmup_steps=600",), "lower scheduler.warmup_steps (or scheduler.warmup_ratio) below"),
        (("dataset=nlp/translation/wmt16", "dataset.name=null"), "dataset has no data source: set dataset.data_files"),
        (("dataset=nlp/translation/wmt16", "dataset.data_files.train=/data/train.jsonl"),
         "dataset.data_files.validation is not set but dataset.data_files has ['train']"),
        # values that passed silently
        (("trainer.checkpoint.keep_last=0",), "trainer.checkpoint.keep_last=0: a run keeps its newest N checkpoints"),
        (("trainer.checkpoint.keep_last=-1",), "set trainer.checkpoint.keep_last=2"),
        (("trainer.checkpoint.every_n_steps=-5",), "trainer.checkpoint.every_n_steps=-5: set it to at least 0"),
        (("requeue.max_timeouts=-1",), "requeue.max_timeouts=-1: set it to at least 0"),
        (("requeue.max_preemptions=-1",), "requeue.max_preemptions=-1: set it to at least 0"),
        (("cluster.signal_delay_s=0",), "cluster.signal_delay_s=0: the stop signal comes"),
        (("cluster.time_min=2000", "cluster.signal_delay_s=65536"), "which Slurm takes from 1 to 65535"),
        (("name=../elsewhere",), "name='../elsewhere': it is part of the run folder's path"),
        (("name=a/../../b",), "'..' would leave cluster.runs_dir"),
        (("sweep.id=../x",), "sweep.id='../x': it is part of the run folder's path"),
        # the task is found by its module, without importing it
        (("task.name=translaton",), "task.name='translaton' names no task"),
        (("+task.module=no_such_package.task",), "task.module='no_such_package.task' names no task"),
        (("+task.module=not a module",), "task.module='not a module' is not a Python module path"),
        (("dataset.synthetic=summaries",), "dataset.synthetic='summaries' names no task"),
    ],
)
def test_bad_config_is_rejected_with_the_fix(compose, overrides, fix):
    with pytest.raises(ConfigError) as e:
        check_config(compose(*overrides))
    assert fix in str(e.value)


def test_the_unknown_task_message_lists_the_tasks(compose):
    with pytest.raises(ConfigError) as e:
        check_config(compose("task.name=translaton"))
    assert "choose one of zerorun's tasks (language_modeling, translation)" in str(e.value)


def test_a_config_that_can_run_has_no_problem(compose):
    from configs.validate import config_problems, file_problems

    for task in TASKS:
        cfg = compose(f"task={task}")
        assert config_problems(cfg) == [] and file_problems(cfg) == []


def test_data_files_that_do_not_exist_are_named_before_anything_runs(compose, tmp_path):
    (tmp_path / "train.jsonl").write_text("{}\n")
    cfg = compose("dataset=nlp/translation/wmt16", f"dataset.data_files.train={tmp_path}/train.jsonl",
                  "dataset.data_files.validation=relative/valid.jsonl")
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    assert e.value.problems == [
        f"dataset.data_files.validation='relative/valid.jsonl': no such file (relative paths are taken from "
        f"{Path.cwd()}); point it at the validation file"
    ]


def test_the_file_checks_are_apart_from_the_pure_ones(compose):
    """config_problems reads no file (the sweep calls it per member); file_problems does the looking."""
    from configs.validate import config_problems, file_problems

    cfg = compose("dataset=nlp/translation/wmt16", "dataset.data_files.train=/nope/t.jsonl",
                  "dataset.data_files.validation=/nope/v.jsonl", "task.name=translaton")
    assert config_problems(cfg) == []
    assert [p.split(":")[0] for p in file_problems(cfg)] == [
        "task.name='translaton' names no task", "dataset.data_files.train='/nope/t.jsonl'",
        "dataset.data_files.validation='/nope/v.jsonl'"]


def test_cli_refuses_bad_values_in_seconds_naming_each_key(tmp_path):
    runs = tmp_path / "runs"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "train.py", f"cluster.runs_dir={runs}", "optimizer.lr=-1", "dataset.batch_size=0",
         "dataset=nlp/translation/wmt16", f"dataset.data_files.train={tmp_path}/missing.jsonl",
         "trainer.checkpoint.keep_last=0"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    for key in ("optimizer.lr=-1.0", "dataset.batch_size=0", "dataset.data_files.validation is not set",
                "dataset.data_files.train=", "trainer.checkpoint.keep_last=0"):
        assert key in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not runs.exists(), "a refused config must not make a run folder"
    assert time.monotonic() - start < 60


# ---- finalize: escaped interpolations stay literal

ESCAPED = "cluster.setup=['export A=\\${HOME}/x','echo \\${seed}']"
LITERAL_SETUP = ["export A=${HOME}/x", "echo ${seed}"]


def test_escaped_interpolations_stay_literal_through_finalize_save_and_load(compose):
    from omegaconf import OmegaConf

    from configs.finalize import finalize

    final = finalize(compose(ESCAPED))
    assert list(final.cluster.setup) == LITERAL_SETUP
    loaded = OmegaConf.create(OmegaConf.to_yaml(final))
    assert list(loaded.cluster.setup) == LITERAL_SETUP  # not 42, and no error about a missing HOME key
    assert OmegaConf.to_container(loaded, resolve=True)["cluster"]["setup"] == LITERAL_SETUP
    assert loaded.seed == 42


def test_escaped_interpolation_reaches_the_rendered_setup_line_unchanged(compose):
    from cluster import render
    from cluster.plan import make_plan
    from configs.finalize import finalize

    plan = make_plan(finalize(compose("cluster=slurm", "cluster.gpus_per_node=0", "cluster.tasks_per_node=1",
                                      ESCAPED)), python="/venv/bin/python", workdir="/work")
    assert plan.setup == tuple(LITERAL_SETUP)
    script = render.sbatch_script(plan, render.RenderContext(version="T", command=("zerorun",)))
    assert "\nexport A=${HOME}/x\n" in script and "\necho ${seed}\n" in script


def test_the_rank_loads_the_literal_from_the_run_folder(compose, tmp_path):
    from cluster.plan import make_plan
    from configs.finalize import finalize
    from jobs.dryrun import context, rendered_files, write_files
    from jobs.runs import load_config

    cfg = finalize(compose(ESCAPED, f"run_dir={tmp_path / 'run'}"))
    plan = make_plan(cfg)
    write_files(plan.run_dir, rendered_files(cfg, plan, context(("zerorun",))))
    assert list(load_config(tmp_path / "run").cluster.setup) == LITERAL_SETUP


@pytest.mark.parametrize("text", ["${HOME}", "a\\${b}", "a\\\\${b}", "C:\\dir\\", "x ${a} ${b.c} }", "\\ ${x} \\",
                                  "$${x}", "${", "plain"])
def test_escape_literal_reads_back_as_itself(text):
    from omegaconf import OmegaConf

    from configs.finalize import escape_literal

    node = OmegaConf.create({"v": escape_literal(text)})
    assert node.v == text
    assert OmegaConf.create(OmegaConf.to_yaml(node)).v == text


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


def test_the_installed_command_finds_its_tasks_from_any_folder(tmp_path):
    # the console script from a folder outside the repository: the task modules come through the install
    import subprocess
    import sys

    zerorun = Path(sys.executable).parent / "zerorun"
    if not zerorun.exists():
        pytest.skip("no zerorun console script beside this interpreter (the package is not installed)")
    proc = subprocess.run([str(zerorun), "dry_run=true", f"cluster.runs_dir={tmp_path / 'runs'}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "preflight: ok" in proc.stdout
