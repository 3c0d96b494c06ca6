"""train(cfg): what every rank runs, whether Slurm, the local backend or `python train.py` started it.

Set up (data, tokenizer, model, task, trainer), fit (resuming from the run's latest checkpoint if it has one),
report the metrics. The rendezvous is derived before this is called (jobs/rank.py) or, for a run inside the
launching process, made here for a single rank.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from trainer_core import attempts, console, layout
from trainer_core.signals import StopSignals
from trainer_core.checkpoint_store import (CheckpointError, CheckpointMeta, CheckpointStore, model_config,
                                           resumed_accumulation, write_text_atomic)
from trainer_core.contract import EXIT_BAD_NODE, Rendezvous, free_port, single_process
from trainer_core.health import NodeHealth, NodeHealthError
from trainer_core.checkpointing import AtomicCheckpoint
from trainer_core.loggers import build_logger
from trainer_core.preemption import RNGStates, StopAtStepBoundary, StopOutcome
from trainer_core.progress import HangForTest, Progress
from trainer_core.progress_report import ReportProgress
from trainer_core.resize import ResizedResume
from trainer_core.strategies import build_placement

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    metrics: dict[str, float]
    # 0, or trainer_core.contract.EXIT_RESUMABLE when training stopped early with a checkpoint
    exit_code: int
    # set when training stopped early on a signal (preemption, time limit) after saving a checkpoint
    stop: Optional[StopOutcome]


def train(cfg: DictConfig, rendezvous: Optional[Rendezvous] = None) -> dict[str, float]:
    """Train as configured; returns the final logged metrics (validation BLEU or perplexity, losses)."""
    return fit(cfg, rendezvous).metrics


def fit(cfg: DictConfig, rendezvous: Optional[Rendezvous] = None, signals: Optional[StopSignals] = None) -> Outcome:
    """Set up, resume from the run's latest checkpoint if it has one, fit until done or asked to stop.

    `signals` is the rank's stop-signal record when the rank installed it at start-up (jobs/rank.py)."""
    from trainer_core.data.datamodule import build_datamodule
    from trainer_core.data.loading import load_raw
    from trainer_core.data.tokenizer import load_tokenizer, tokenizer_fingerprint
    from trainer_core.models import build_model
    from trainer_core.tasks import build_task, load_task

    console.quiet()
    run_dir = Path(cfg.run_dir)
    rendezvous = rendezvous or single_process(port=free_port())
    # the hang watchdog (outside this process) reads this rank's step and phase from here on
    progress = Progress(run_dir, rendezvous)
    progress.report(0, "startup")
    hang = HangForTest(cfg.get("watchdog"), rendezvous)
    hang.maybe("startup", 0)
    torch.set_num_threads(max(1, int(cfg.cluster.cpus_per_task)))
    pl.seed_everything(cfg.seed, workers=True)

    spec = load_task(cfg.task)  # what the task needs from the model, tokenizer and data (trainer_core/tasks)
    raw = load_raw(cfg.dataset)
    tokenizer = load_tokenizer(cfg.backbone, raw, cfg.dataset, spec)
    model = build_model(cfg.backbone, spec, tokenizer)
    datamodule = build_datamodule(cfg, tokenizer, raw=raw, task=spec)
    task = build_task(cfg, model, tokenizer, datamodule, task=spec)

    store = CheckpointStore(run_dir)
    micro_batch = int(cfg.dataset.batch_size)
    meta = CheckpointMeta(step=0, strategy=cfg.trainer.strategy.name, world_size=rendezvous.world_size,
                          model=model_signature(model), model_config=model_config(cfg),
                          tokenizer=tokenizer_fingerprint(tokenizer), micro_batch_size=micro_batch,
                          accumulate_grad_batches=int(cfg.trainer.accumulate_grad_batches))
    resume_from = _resume_from(store, meta, required=bool(cfg.get("resume")))
    load_universal = False
    if resume_from is not None:
        # on another number of ranks the global batch is kept (or keep_batch=per_rank), the rest follows it
        accumulate = resumed_accumulation(resume_from.found, rendezvous.world_size, micro_batch,
                                          meta.accumulate_grad_batches, str(cfg.trainer.get("keep_batch", "global")))
        meta = dataclasses.replace(meta, accumulate_grad_batches=accumulate)
        if resume_from.found.strategy == "deepspeed" and resume_from.found.world_size != rendezvous.world_size:
            # ZeRO shards cut for another number of ranks: re-partitioned through the universal format, once
            from trainer_core.zero_resize import universal_checkpoint

            universal = universal_checkpoint(resume_from.path.parent, rendezvous.rank,
                                             timeout_s=float(cfg.trainer.collective_timeout_s))
            resume_from, load_universal = resume_from._replace(path=universal), True
    if rendezvous.rank == 0:
        store.clear_stale()  # a save a killed attempt left half-written
    trainer, stopper = build_trainer(cfg, rendezvous, run_dir, store, meta, signals,
                                     resumed_step=resume_from.step if resume_from else None,
                                     resumed=resume_from.found if resume_from else None,
                                     load_universal=load_universal, progress=progress, hang=hang)
    if rendezvous.rank == 0:
        attempts.append(run_dir, "start", job_id=rendezvous.job_id, world_size=rendezvous.world_size,
                        restart_count=rendezvous.restart_count,
                        resumed_from_step=resume_from.step if resume_from else None,
                        resumed_world_size=resume_from.found.world_size if resume_from else None,
                        global_batch=rendezvous.world_size * micro_batch * meta.accumulate_grad_batches,
                        accumulate_grad_batches=meta.accumulate_grad_batches)
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=str(resume_from.path) if resume_from else None)
    except NodeHealthError as e:
        # recorded (bad_node) by the check; the batch host requeues the job without this node
        log.error("zerorun: %s", e)
        print(f"zerorun: {e}", flush=True)
        progress.close()
        return Outcome({}, EXIT_BAD_NODE, None)
    if signals is not None:
        # A rank (jobs/rank.py): nothing is left to stop at a step boundary; it finishes its reports and exits
        # with its own status.
        signals.hold()
    else:
        stopper.signals.restore()  # training inside another program: its handlers back

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    metrics["global_step"] = float(trainer.global_step)
    _write_rank_report(run_dir, rendezvous, metrics, model, stopper.handlers_in_training)
    stopped = stopper.outcome is not None
    if trainer.is_global_zero:
        if not stopped:
            write_text_atomic(run_dir / layout.METRICS, json.dumps(metrics, indent=1, sort_keys=True))
        attempts.append(run_dir, "end", status="stopped" if stopped else "completed", step=trainer.global_step)
    # the job script on the batch host decides what follows a resumable exit (requeue, or why not)
    stop = stopper.finish()
    progress.report(trainer.global_step, "done")  # nothing left that could hang: the process exits
    progress.close()
    return Outcome(metrics, stop.exit_code if stop else 0, stop)


def build_trainer(cfg: DictConfig, rendezvous: Rendezvous, run_dir: Path, store: CheckpointStore,
                  meta: CheckpointMeta, signals: Optional[StopSignals] = None,
                  resumed_step: Optional[int] = None,
                  resumed: Optional[CheckpointMeta] = None,
                  load_universal: bool = False, progress: Optional[Progress] = None,
                  hang: Optional[HangForTest] = None) -> tuple[pl.Trainer, StopAtStepBoundary]:
    """The Trainer for this rank. `meta` describes what this run's checkpoints hold (its accumulation is the
    one the run uses: resumed on another number of ranks it keeps the global batch); `resumed`, the checkpoint
    it resumes from, and `load_universal` whether DeepSpeed loads it re-partitioned (universal format)."""
    t = cfg.trainer
    placement = build_placement(cfg, rendezvous, load_universal=load_universal)
    checkpoint = AtomicCheckpoint(store, meta, t.checkpoint.every_n_steps, t.checkpoint.keep_last,
                                  t.checkpoint.save_at_end)
    if resumed_step is not None:
        checkpoint.last_saved_step = resumed_step  # that step is on disk, whole
    stopper = StopAtStepBoundary(cfg, str(run_dir), checkpoint, signals=signals)
    reporting: list[pl.Callback] = []
    if progress is not None:
        w = cfg.get("watchdog")
        def measured(seconds: float) -> None:  # rank 0 keeps it: a resume with a shorter timeout is refused
            if rendezvous.rank == 0:
                attempts.append(run_dir, "step_time", seconds=round(seconds, 4), job_id=rendezvous.job_id,
                                restart_count=rendezvous.restart_count)

        report = ReportProgress(progress, hang or HangForTest(None, rendezvous),
                                w.timeout_s if w is not None else None, measured)
        checkpoint.progress = report
        reporting.append(report)
    health = cfg.get("health")
    if health is None or health.get("check", True):
        reporting.append(NodeHealth(str(run_dir), rendezvous, health))
    trainer = pl.Trainer(
        accelerator=placement.accelerator,
        devices=placement.devices,
        num_nodes=placement.num_nodes,
        strategy=placement.strategy,
        precision=placement.precision,
        plugins=list(placement.plugins) or None,
        max_steps=t.max_steps,
        max_epochs=-1,  # the schedule is defined in steps (see trainer_core/optim.py)
        val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=None,  # val_check_interval counts steps across epochs
        limit_val_batches=t.limit_val_batches,
        log_every_n_steps=t.log_every_n_steps,
        accumulate_grad_batches=meta.accumulate_grad_batches or t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        deterministic=t.deterministic,
        # every attempt of a run continues the same logger run (version 0), from the step it resumes at
        logger=build_logger(t.logger, run_dir, resumed_step, t.get("tracker"), str(cfg.name)),
        callbacks=[*reporting, checkpoint, stopper, RNGStates(),
                   *([ResizedResume(resumed, int(cfg.dataset.batch_size))] if resumed is not None else []),
                   *console.progress_bars(t.enable_progress_bar and rendezvous.rank == 0)],
        enable_checkpointing=False,  # AtomicCheckpoint owns checkpoints
        enable_progress_bar=t.enable_progress_bar and rendezvous.rank == 0,
        enable_model_summary=rendezvous.rank == 0,
        # The datamodule's stateful sampler shards the data and saves its position and epoch in checkpoints;
        # Lightning's fit loop calls its set_epoch at every epoch start.
        use_distributed_sampler=False,
        default_root_dir=str(run_dir),
        num_sanity_val_steps=0,
    )
    return trainer, stopper


def _write_rank_report(run_dir: Path, rendezvous: Rendezvous, metrics: dict[str, float], model: torch.nn.Module,
                       signal_handlers: dict[str, str]) -> None:
    """What this rank saw, for `zerorun status` and for checking ranks agree: its place in the job, its last
    metrics, a digest of its model weights (equal on every rank after a data-parallel step) and who handled the
    stop signals during training (zerorun, or what replaced it)."""
    digest = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(p.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    report = {
        **asdict(rendezvous),
        "host": rendezvous.node or socket.gethostname(),
        "metrics": metrics,
        "weights_sha256": digest.hexdigest(),
        "signal_handlers": signal_handlers,
    }
    (run_dir / layout.RANK_REPORTS).mkdir(exist_ok=True)
    write_text_atomic(run_dir / layout.rank_report(rendezvous.rank), json.dumps(report, indent=1, sort_keys=True))


def model_signature(model: torch.nn.Module) -> str:
    n = sum(p.numel() for p in model.parameters())
    return f"{type(model).__name__}/{n}"


class ResumeFrom(NamedTuple):
    path: Path  # the checkpoint Lightning loads
    step: int
    found: CheckpointMeta  # what it holds (its number of ranks and batch among them)


def _resume_from(store: CheckpointStore, meta: CheckpointMeta, required: bool) -> Optional[ResumeFrom]:
    """The run's latest checkpoint file and its step, checked against this run; None for a fresh start (an error
    where a resume was asked for: resume=RUN_DIR)."""
    latest = store.latest()
    if latest is None:
        if required:
            raise CheckpointError(f"resume={store.root.parent}: no checkpoint to resume from ({store.describe()})")
        return None
    found = store.read_meta(latest)
    why = found.mismatch(meta)
    if why:
        raise CheckpointError(f"cannot resume from {latest}: {why}")
    log.info("zerorun: resuming from %s (step %d, %d ranks)", latest, found.step, found.world_size)
    return ResumeFrom(latest / "ckpt", found.step, found)
