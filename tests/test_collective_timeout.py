"""trainer.collective_timeout_s: how long a rank's collectives wait for the others, from the config to the
strategy that passes it to the process group (torch.distributed.init_process_group / deepspeed.init_distributed)."""

from __future__ import annotations

import datetime

import pytest

from configs.validate import config_problems
from trainer_core.contract import single_process


@pytest.mark.parametrize("trainer", ["ddp", pytest.param("deepspeed", marks=pytest.mark.deepspeed)])
def test_the_strategy_built_from_a_config_carries_its_collective_timeout(compose, trainer):
    from trainer_core.strategies import build_placement

    rendezvous = single_process(port=29999)
    default = build_placement(compose(f"trainer={trainer}", "cluster.tasks_per_node=1"), rendezvous).strategy
    assert default._timeout == datetime.timedelta(minutes=30)
    cfg = compose(f"trainer={trainer}", "cluster.tasks_per_node=1", "trainer.collective_timeout_s=7200")
    assert not config_problems(cfg)
    assert build_placement(cfg, rendezvous).strategy._timeout == datetime.timedelta(hours=2)


@pytest.mark.parametrize("value", [0, -5])
def test_a_collective_timeout_that_is_not_positive_is_refused(compose, value):
    problems = config_problems(compose("trainer=ddp", f"trainer.collective_timeout_s={value}"))
    assert [p for p in problems if p.startswith(f"trainer.collective_timeout_s={value}:") and "above 0" in p], \
        problems
