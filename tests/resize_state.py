"""Digests of the full training state, to compare bit for bit what the ranks held when a checkpoint was saved
with what the ranks of a resumed run hold right after loading it, whatever the number of ranks on either side.

Per parameter (by name): the fp32 weights the optimizer updates and its Adam moments, gathered to full tensors;
under ZeRO they are cut over the ranks (and offloaded to CPU with deepspeed_offload), so DeepSpeed's own
gatherers put them together (a collective: every rank calls this at the same moment). Plus the learning rate.

Copied beside the recorder's sitecustomize (tests/test_resize_local.py) and imported by the ranks.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

MOMENTS = ("exp_avg", "exp_avg_sq")


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().to("cpu", torch.float32).reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def full_state_digest(trainer: Any) -> dict[str, str]:
    """{"fp32": ..., "exp_avg": ..., "exp_avg_sq": ..., "lr": ...}: one digest each over every parameter."""
    module = trainer.lightning_module
    optimizer = trainer.optimizers[0] if trainer.optimizers else None
    zero = hasattr(trainer.strategy, "deepspeed_engine")
    if zero:
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        # DeepSpeed links each parameter to its slice of the optimizer state once, after the first param
        # group's first step, when the other groups' state does not exist yet (their moments then read as
        # missing); link again from the state as it is now. Nothing is copied or changed.
        zero_optimizer = trainer.strategy.deepspeed_engine.optimizer
        zero_optimizer._hp_optimizer_states_linked = False
        zero_optimizer._lazy_init_hp_params_optimizer_state()
    digests = {key: hashlib.sha256() for key in ("fp32", *MOMENTS)}
    for name, p in module.named_parameters():
        if zero:
            values = {"fp32": safe_get_full_fp32_param(p),
                      **{m: safe_get_full_optimizer_state(p, m) for m in MOMENTS}}
        else:
            state = optimizer.state[p]
            values = {"fp32": p, **{m: state[m] for m in MOMENTS}}
        for key, value in values.items():
            digests[key].update(name.encode())
            digests[key].update(_bytes(value))
    out = {key: d.hexdigest() for key, d in digests.items()}
    lrs = [g["lr"] for g in (trainer.strategy.deepspeed_engine.optimizer if zero else optimizer).param_groups]
    out["lr"] = repr(lrs)
    return out
