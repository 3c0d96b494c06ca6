"""Hands Lightning the rendezvous zerorun derived, as its one cluster environment.

Lightning would otherwise guess from the variables it finds (SLURMEnvironment, LightningEnvironment, TorchElastic)
and can pick a different answer on different ranks; zerorun derives the rendezvous once (cluster/rendezvous.py),
checks it against the plan, and every rank hands the same kind of object to the Trainer.
"""

from __future__ import annotations

import logging

from pytorch_lightning.plugins.environments import ClusterEnvironment

from trainer_core.contract import Rendezvous

log = logging.getLogger(__name__)


class ZerorunEnvironment(ClusterEnvironment):
    def __init__(self, rendezvous: Rendezvous) -> None:
        super().__init__()
        self.rendezvous = rendezvous

    @property
    def creates_processes_externally(self) -> bool:
        # Slurm's srun or zerorun's local backend started every rank; Lightning must not launch more.
        return True

    @property
    def main_address(self) -> str:
        return self.rendezvous.master_addr

    @property
    def main_port(self) -> int:
        return self.rendezvous.master_port

    @staticmethod
    def detect() -> bool:
        return True

    def world_size(self) -> int:
        return self.rendezvous.world_size

    def set_world_size(self, size: int) -> None:
        if size != self.rendezvous.world_size:
            raise RuntimeError(
                f"Lightning computed world size {size} (trainer.devices x trainer.num_nodes) but the job has "
                f"{self.rendezvous.world_size} ranks; keep trainer.devices/num_nodes following cluster.tasks_per_node/nodes"
            )

    def global_rank(self) -> int:
        return self.rendezvous.rank

    def set_global_rank(self, rank: int) -> None:
        if rank != self.rendezvous.rank:
            raise RuntimeError(f"Lightning computed global rank {rank}, the rendezvous says {self.rendezvous.rank}")

    def local_rank(self) -> int:
        return self.rendezvous.local_rank

    def node_rank(self) -> int:
        return self.rendezvous.node_rank

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        r = self.rendezvous
        if num_devices != r.tasks_per_node or num_nodes != r.num_nodes:
            raise ValueError(
                f"trainer.devices({num_devices}) x trainer.num_nodes({num_nodes}) does not match the job: "
                f"tasks_per_node({r.tasks_per_node}) x nodes({r.num_nodes}); let the trainer follow the cluster "
                "geometry (do not set trainer.devices/num_nodes by hand)"
            )
