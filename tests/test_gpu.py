"""The same training on CUDA with Lightning's stock DeepSpeedStrategy (and DDP). Skipped without CUDA."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import only_run_dir, read_csv_metric, read_rank_reports, shrink
from jobs.app import launch
from trainer_core.checkpointing import CheckpointStore

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: no GPU on this machine"),
]


@pytest.mark.parametrize("trainer", ["ddp", "deepspeed", "deepspeed_offload"])
def test_train_and_resume_on_gpus(compose, tmp_path, trainer):
    gpus = min(2, torch.cuda.device_count())
    cfg = compose(f"trainer={trainer}", f"cluster.gpus_per_node={gpus}", f"cluster.tasks_per_node={gpus}",
                  *shrink())
    assert launch(cfg) == 0
    run_dir = only_run_dir(tmp_path / "runs")
    losses = [v for _, v in read_csv_metric(run_dir, "train_loss")]
    assert all(math.isfinite(v) for v in losses) and sum(losses[-2:]) < sum(losses[:2])
    reports = read_rank_reports(run_dir)
    assert len({r["weights_sha256"] for r in reports}) == 1
    assert CheckpointStore(run_dir).latest() is not None
    assert launch(compose(f"resume={run_dir}", "trainer.max_steps=40"),
                  overrides=[f"resume={run_dir}", "trainer.max_steps=40"]) == 0


def test_stock_deepspeed_strategy_and_bf16_on_cuda(compose):
    from pytorch_lightning.strategies import DeepSpeedStrategy

    from trainer_core.contract import single_process
    from trainer_core.strategies import CPURehearsalDeepSpeedStrategy, build_placement

    placement = build_placement(compose("trainer=deepspeed", "cluster.gpus_per_node=1"), single_process(29500))
    assert type(placement.strategy) is DeepSpeedStrategy
    assert not isinstance(placement.strategy, CPURehearsalDeepSpeedStrategy)
    assert placement.precision == ("bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true")
    zero = placement.strategy.config["zero_optimization"]
    assert zero["reduce_bucket_size"] == 200_000_000


def test_node_health_check_on_a_gpu():
    """The health check's GPU branch: the rank's device is visible and a matmul on it is right; a GPU index past
    the visible ones is named as not visible."""
    from trainer_core.health import check_device

    assert check_device(torch.device("cuda:0")) is None
    missing = torch.cuda.device_count()
    why = check_device(torch.device(f"cuda:{missing}"))
    assert why is not None and "not visible" in why, why


@pytest.mark.deepspeed
def test_eval_of_a_bf16_deepspeed_run_on_a_gpu(compose, tmp_path):
    """zerorun eval of a ZeRO-2 run trained on a GPU in bf16: its fp32 master weights, gathered from the shards,
    give the run's own final validation loss within bf16's rounding (the run validated with bf16 weights, the
    evaluation with the fp32 master copy under bf16 autocast: a difference of a few parts in a thousand)."""
    import io
    import json

    from jobs import evaluation, verbs

    cfg = compose("task=nlp/language_modeling", "trainer=deepspeed", "cluster.gpus_per_node=1",
                  *shrink("trainer.max_steps=8", "trainer.val_check_interval=8", "dataset.max_val_samples=16"))
    assert launch(cfg) == 0
    run_dir = only_run_dir(tmp_path / "runs")
    err = io.StringIO()
    assert verbs.eval_verb([str(run_dir), "split=validation"], err=err) == 0, err.getvalue()
    [eval_dir] = evaluation.evaluations(run_dir)
    trained = json.loads((run_dir / "metrics.json").read_text())
    measured = json.loads((eval_dir / "metrics.json").read_text())
    print(f"GPU eval: run val_loss {trained['val_loss']:.6f}, eval {measured['val_loss']:.6f}")
    assert measured["val_loss"] == pytest.approx(trained["val_loss"], rel=2e-2)
