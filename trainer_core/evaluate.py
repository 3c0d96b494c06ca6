"""evaluate(cfg): what every rank of an evaluation job runs: a finished run's latest checkpoint, measured on one
split with its task's metric (translation: BLEU and loss; language modeling: perplexity and loss).

Set up exactly as training does (task, data, tokenizer, model), check the checkpoint holds this model, load its
weights, run Lightning's validation loop once, write the metrics. The loop is the task's own validation, so an
evaluation measures what the run's validations measured, on the split asked for.

Weights, not the training state, are loaded: a DDP or single-device checkpoint is one file with the whole
state_dict; a DeepSpeed ZeRO-2 checkpoint is a folder of shards, from which DeepSpeed's own converter
(zero_to_fp32) gathers the full fp32 weights, whatever number of ranks wrote it. So an evaluation runs on any
number of ranks: one process, or DDP over the job's ranks (validation totals and translations are gathered over
them by the task).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from trainer_core import attempts, console, layout
from trainer_core.checkpoint_store import CheckpointError, CheckpointMeta, CheckpointStore, model_config
from trainer_core.contract import Rendezvous, free_port, single_process
from trainer_core.durable import write_atomic
from trainer_core.strategies import build_placement

# DeepSpeed's state dict keys carry Lightning's wrapper around the module
_DEEPSPEED_PREFIX = "_forward_module."


def load_weights(module: torch.nn.Module, ckpt: Path, strategy: str) -> None:
    """Load the weights of a checkpoint written by `strategy` into the LightningModule `module`."""
    if strategy == "deepspeed":
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt))
        state = {k[len(_DEEPSPEED_PREFIX):] if k.startswith(_DEEPSPEED_PREFIX) else k: v for k, v in state.items()}
    else:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    missing, unexpected = module.load_state_dict(state, strict=False)
    # tied weights (a decoder's output layer shares the embedding) may be stored once: only real gaps count
    tied = {k for k in missing if k.endswith("lm_head.weight")}
    if set(missing) - tied or unexpected:
        raise CheckpointError(f"{ckpt} does not fit this model: missing {sorted(set(missing) - tied)[:4]}, "
                              f"unexpected {sorted(unexpected)[:4]}")


def evaluate(cfg: DictConfig, rendezvous: Optional[Rendezvous], source_run_dir: str,
             provenance: Optional[dict[str, Any]] = None) -> dict[str, float]:
    """Evaluate the latest checkpoint of the run in `source_run_dir` as configured by `cfg` (the run's config
    with the evaluation's split and geometry). Rank 0 writes metrics.json and eval.json into cfg.run_dir.
    Returns the metrics."""
    from trainer_core.data.datamodule import build_datamodule
    from trainer_core.data.loading import load_raw
    from trainer_core.data.tokenizer import load_tokenizer, tokenizer_fingerprint
    from trainer_core.models import build_model
    from trainer_core.tasks import build_task, load_task
    from trainer_core.train import model_signature

    console.quiet()
    rendezvous = rendezvous or single_process(port=free_port())
    torch.set_num_threads(max(1, int(cfg.cluster.cpus_per_task)))
    pl.seed_everything(cfg.seed, workers=True)

    store = CheckpointStore(source_run_dir)
    latest = store.latest()
    if latest is None:
        raise CheckpointError(f"{source_run_dir} has no checkpoint to evaluate ({store.describe()}); train it with "
                              "trainer.checkpoint.save_at_end=true (the default), or evaluate another run")
    found = store.read_meta(latest)

    spec = load_task(cfg.task)
    raw = load_raw(cfg.dataset)
    tokenizer = load_tokenizer(cfg.backbone, raw, cfg.dataset, spec)
    model = build_model(cfg.backbone, spec, tokenizer)
    datamodule = build_datamodule(cfg, tokenizer, raw=raw, task=spec)
    task = build_task(cfg, model, tokenizer, datamodule, task=spec)
    this = CheckpointMeta(step=found.step, strategy=found.strategy, world_size=rendezvous.world_size,
                          model=model_signature(model), model_config=model_config(cfg),
                          tokenizer=tokenizer_fingerprint(tokenizer))
    why = found.mismatch(this)
    if why:
        raise CheckpointError(f"cannot evaluate {latest} (step {found.step}): {why}")
    load_weights(task, latest / "ckpt", found.strategy)

    # the weights are whole on every rank: plain data parallelism over the job's ranks, one process if one
    eval_cfg = cfg.copy()
    eval_cfg.trainer.strategy.name = "ddp" if rendezvous.world_size > 1 else "auto"
    placement = build_placement(eval_cfg, rendezvous)
    trainer = pl.Trainer(
        accelerator=placement.accelerator, devices=placement.devices, num_nodes=placement.num_nodes,
        strategy=placement.strategy, precision=placement.precision, plugins=list(placement.plugins) or None,
        limit_val_batches=cfg.trainer.limit_val_batches, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
        default_root_dir=str(cfg.run_dir),
    )
    if rendezvous.rank == 0:
        attempts.append(cfg.run_dir, "start", job_id=rendezvous.job_id, world_size=rendezvous.world_size,
                        restart_count=rendezvous.restart_count, evaluates=str(latest))
    trainer.validate(task, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    metrics["checkpoint_step"] = float(found.step)
    if trainer.is_global_zero:
        info = {**(provenance or {}), "run_dir": str(source_run_dir), "checkpoint": str(latest),
                "checkpoint_step": found.step, "split": str(cfg.dataset.validation_split),
                "metric": spec.metric, "mode": spec.mode, "world_size": rendezvous.world_size}
        out = Path(cfg.run_dir)
        write_atomic(out / layout.EVALUATED, json.dumps(info, indent=1, sort_keys=True) + "\n")
        write_atomic(out / layout.METRICS, json.dumps(metrics, indent=1, sort_keys=True) + "\n")
        attempts.append(out, "end", status="completed", step=found.step)
        print(f"zerorun: evaluated {latest} on split {cfg.dataset.validation_split!r}: "
              + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())), flush=True)
    return metrics
