"""Optimizer and learning-rate schedule.

The schedule length is passed in (``trainer.max_steps``), never read from ``trainer.estimated_stepping_batches``:
reading that with max_epochs set drops the loader state on resume (notes/exact-resume.md, item 4).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List

import torch

OPTIMIZERS = ("adamw",)
SCHEDULERS = ("linear_warmup", "constant")


def param_groups(model: torch.nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """Two groups: matrices with ``weight_decay``; biases and normalization gains (vectors) without.

    Decaying a bias or a norm gain toward 0 only hurts; telling them apart by shape (as nanoGPT does) needs no
    list of parameter names per model family.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(params: Iterable, optimizer_cfg: Any, offload: bool) -> torch.optim.Optimizer:
    """AdamW; with ZeRO-Offload DeepSpeed's CPU Adam in AdamW mode (the step then runs on the CPU)."""
    if optimizer_cfg.name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer.name {optimizer_cfg.name!r}; valid: {', '.join(OPTIMIZERS)}")
    hyper = {
        "lr": optimizer_cfg.lr,
        "betas": tuple(optimizer_cfg.betas),
        "eps": optimizer_cfg.eps,
        "weight_decay": optimizer_cfg.weight_decay,
    }
    if offload:
        # Imported only here: its first use JIT-compiles a C++ op (~40 s, cached in TORCH_EXTENSIONS_DIR).
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, adamw_mode=True, **hyper)
    return torch.optim.AdamW(params, **hyper)


def _linear_warmup_decay(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, scheduler_cfg: Any, max_steps: int) -> Dict[str, Any]:
    """A per-step LambdaLR in Lightning's dict form: linear warm-up then linear decay to 0 at max_steps, or constant.

    Warm-up lasts ``scheduler.warmup_steps``, or ``warmup_ratio x max_steps`` when that is 0.
    """
    if scheduler_cfg.name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler.name {scheduler_cfg.name!r}; valid: {', '.join(SCHEDULERS)}")
    if scheduler_cfg.name == "constant":
        factor: Callable[[int], float] = lambda step: 1.0  # noqa: E731
    else:
        if max_steps is None or max_steps <= 0:
            raise ValueError(
                f"scheduler.name=linear_warmup decays to 0 at trainer.max_steps, which is {max_steps}; "
                f"set trainer.max_steps to a positive number of steps, or scheduler=constant"
            )
        warmup = scheduler_cfg.warmup_steps or round(scheduler_cfg.warmup_ratio * max_steps)
        if not 0 <= warmup < max_steps:
            raise ValueError(
                f"warm-up of {warmup} steps does not fit in trainer.max_steps={max_steps}; "
                f"lower scheduler.warmup_steps / scheduler.warmup_ratio"
            )
        factor = _linear_warmup_decay(warmup, max_steps)
    # The factor is a closure, so LambdaLR leaves it out of its state_dict: a resumed run rebuilds it from the
    # config, and only the step count comes from the checkpoint.
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step", "frequency": 1}
