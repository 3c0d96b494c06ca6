"""ddp, deepspeed (ZeRO-2) and deepspeed_offload (ZeRO-2 + CPU optimizer offload), from trainer.strategy.

On CUDA these are Lightning's own DDPStrategy and DeepSpeedStrategy. Without CUDA, DeepSpeed runs through
CPURehearsalDeepSpeedStrategy: the real DeepSpeed engine (partitioning, reduce-scatter, sharded checkpoints,
CPU Adam) over gloo, so a GPU job's configs can be rehearsed on a laptop or in CI. It is not meant to be fast.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any, Union

import torch
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy, Strategy
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from trainer_core.contract import Rendezvous
from trainer_core.environment import ZerorunEnvironment

log = logging.getLogger(__name__)

# Lightning's default of 2e8 elements suits GPUs; on CPU it makes DeepSpeed allocate two 800 MB buffers every
# step (measured: 45 s instead of 1.5 s for 60 tiny steps), so CPU ranks get 1e6.
BUCKET_SIZE_CUDA = 200_000_000
BUCKET_SIZE_CPU = 1_000_000


class CPURehearsalDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy on CPU ranks: the real ZeRO engine over gloo, for rehearsal without GPUs.

    Lightning refuses any accelerator but CUDA in ``setup_environment``; that check is the only thing skipped.
    """

    strategy_name = "deepspeed_cpu_rehearsal"

    def setup_environment(self) -> None:
        rank_zero_info(
            "zerorun: no CUDA here; DeepSpeed runs as a CPU rehearsal (real ZeRO engine over gloo, CPU ranks). "
            "On a GPU node the same config uses Lightning's DeepSpeedStrategy."
        )
        # Skip DeepSpeedStrategy.setup_environment (the CUDA check) and run everything above it.
        super(DeepSpeedStrategy, self).setup_environment()


@dataclass(frozen=True)
class Placement:
    """What the Trainer is given: accelerator, devices per node, nodes, strategy and precision."""

    accelerator: str
    devices: int
    num_nodes: int
    strategy: Union[str, Strategy]
    precision: str
    cuda: bool
    # the cluster environment, where the strategy does not carry it (a single device)
    plugins: tuple[Any, ...] = ()


def deepspeed_config(strategy_cfg: Any, *, cuda: bool, micro_batch_size: int,
                     load_universal: bool = False) -> dict[str, Any]:
    """The DeepSpeed config dict for ZeRO stage 2, with or without optimizer offload. `load_universal`: the
    checkpoint to resume is in DeepSpeed's universal format (re-partitioned for another number of ranks:
    trainer_core/zero_resize.py); Lightning's strategy passes the config to the engine as it is."""
    bucket = BUCKET_SIZE_CUDA if cuda else BUCKET_SIZE_CPU
    zero: dict[str, Any] = {
        "stage": int(strategy_cfg.stage),
        "contiguous_gradients": bool(strategy_cfg.contiguous_gradients),
        "overlap_comm": bool(strategy_cfg.overlap_comm),
        "reduce_bucket_size": int(strategy_cfg.reduce_bucket_size or bucket),
        "allgather_bucket_size": int(strategy_cfg.allgather_bucket_size or bucket),
        "allgather_partitions": True,
        "reduce_scatter": True,
    }
    if strategy_cfg.offload_optimizer:
        # pinned host memory speeds up GPU<->CPU copies; on CPU ranks there is nothing to pin for
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cuda}
    config: dict[str, Any] = {
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "train_micro_batch_size_per_gpu": int(micro_batch_size),
    }
    if load_universal:
        config["checkpoint"] = {"load_universal": True}
    return config


def resolve_precision(precision: str, *, cuda: bool) -> str:
    """"auto" is bf16-mixed on GPUs that support it and 32-true on CPU; anything else is passed through."""
    if precision != "auto":
        return precision
    if cuda and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def build_placement(cfg: Any, rendezvous: Rendezvous, load_universal: bool = False) -> Placement:
    """Accelerator, strategy and precision for this rank, from cfg.trainer and the derived rendezvous.
    `load_universal`: DeepSpeed resumes from a universal checkpoint (see deepspeed_config)."""
    trainer_cfg, s = cfg.trainer, cfg.trainer.strategy
    cuda = _use_cuda(trainer_cfg.accelerator)
    precision = resolve_precision(trainer_cfg.precision, cuda=cuda)
    devices, num_nodes = rendezvous.tasks_per_node, rendezvous.num_nodes
    env = ZerorunEnvironment(rendezvous)
    # how long a collective waits for the other ranks (the process group's timeout; configs/validate.py: > 0)
    timeout = datetime.timedelta(seconds=int(trainer_cfg.collective_timeout_s))

    if cuda:
        accelerator = "cuda"
        parallel_devices = [torch.device("cuda", i) for i in range(devices)]
    else:
        accelerator = "cpu"
        # Indexed CPU devices behave as plain "cpu" in torch, and give DeepSpeed the device rank it reads from
        # root_device.index (None would break its engine set-up).
        parallel_devices = [torch.device("cpu", i) for i in range(devices)]

    if s.name == "auto":
        # One process: no process group. The environment still goes to Lightning, which would otherwise detect
        # the Slurm variables and install its own requeue signal handlers.
        strategy: Union[str, Strategy] = SingleDeviceStrategy(device=parallel_devices[0])
        return Placement(accelerator, devices, num_nodes, strategy, precision, cuda, plugins=(env,))
    elif s.name == "ddp":
        ddp_kwargs: dict[str, Any] = {"find_unused_parameters": bool(s.find_unused_parameters)}
        if s.bucket_cap_mb is not None:
            ddp_kwargs["bucket_cap_mb"] = float(s.bucket_cap_mb)
        strategy = DDPStrategy(
            parallel_devices=parallel_devices,
            cluster_environment=env,
            process_group_backend="nccl" if cuda else "gloo",
            timeout=timeout,
            **ddp_kwargs,
        )
    elif s.name == "deepspeed":
        ds_cls = DeepSpeedStrategy if cuda else CPURehearsalDeepSpeedStrategy
        strategy = ds_cls(
            config=deepspeed_config(s, cuda=cuda, micro_batch_size=cfg.dataset.batch_size,
                                    load_universal=load_universal),
            parallel_devices=parallel_devices,
            cluster_environment=env,
            process_group_backend="nccl" if cuda else "gloo",
            timeout=timeout,
        )
    else:  # configs/validate.py rejects other names before anything runs
        raise ValueError(f"unknown trainer.strategy.name={s.name!r}")
    return Placement(accelerator, devices, num_nodes, strategy, precision, cuda)


def _use_cuda(accelerator: str) -> bool:
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"trainer.accelerator={accelerator} but CUDA is not available on this node; "
                "use trainer.accelerator=auto (CPU rehearsal) or run on a GPU node"
            )
        return True
    if accelerator == "cpu":
        return False
    return torch.cuda.is_available()
