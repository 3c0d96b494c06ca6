"""The pieces of a resume on another number of ranks that need no training run: the global data position and
the rebasing of Lightning's per-rank batch counters. (The runs themselves: tests/test_resize_local.py.)"""

from __future__ import annotations

import copy

import pytest
from torch.utils.data import DistributedSampler

from trainer_core.data.datamodule import EpochStatefulDistributedSampler
from trainer_core.resize import rebase_epoch_position

DATA = list(range(101))


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_from_the_epoch_start_each_rank_gets_what_torch_distributed_sampler_gives(world):
    for rank in range(world):
        ours = EpochStatefulDistributedSampler(DATA, world, rank, seed=3)
        ours.set_epoch(2)
        theirs = DistributedSampler(DATA, world, rank, seed=3, drop_last=True)
        theirs.set_epoch(2)
        assert list(ours) == list(theirs)


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2), (2, 3), (4, 2), (3, 3)])
def test_a_position_resumed_on_another_number_of_ranks_takes_every_sample_once(before, after):
    samplers = [EpochStatefulDistributedSampler(DATA, before, r, seed=5) for r in range(before)]
    iters = [iter(s) for s in samplers]
    seen = [next(i) for _ in range(12) for i in iters]  # 12 samples on every rank
    state = samplers[0].state_dict()
    assert state == {"epoch": 0, "consumed": 12 * before, "world_size": before}

    resumed = [EpochStatefulDistributedSampler(DATA, after, r, seed=5) for r in range(after)]
    for s in resumed:
        s.load_state_dict(copy.deepcopy(state))
        s.set_epoch(0)  # Lightning's epoch start: the same epoch keeps the position
    rest = [list(s) for s in resumed]
    assert len({len(r) for r in rest}) == 1, "ranks with different numbers of batches would hang a collective"
    everything = seen + [i for r in rest for i in r]
    assert len(everything) == len(set(everything)), "a sample was taken twice"
    assert len(DATA) - len(everything) < max(before, after), "more was dropped than the ranks' remainder"
    # the same permutation continues: the union is a prefix of the epoch's order
    order = list(EpochStatefulDistributedSampler(DATA, 1, 0, seed=5))
    assert sorted(everything) == sorted(order[:len(everything)])


def test_a_position_of_another_epoch_is_dropped():
    s = EpochStatefulDistributedSampler(DATA, 2, 0, seed=5)
    s.load_state_dict({"epoch": 0, "consumed": 100, "world_size": 2})
    s.set_epoch(1)  # the checkpoint was taken at epoch 0's end
    assert len(list(s)) == 50


def test_an_older_per_rank_position_is_read_as_global():
    s = EpochStatefulDistributedSampler(DATA, 1, 0, seed=5)
    s.load_state_dict({"epoch": 0, "yielded": 10, "world_size": 2})  # torchdata's count, per rank
    assert len(list(s)) == 101 - 20


def _checkpoint(processed: int, consumed: int) -> dict:
    counters = {"ready": processed, "started": processed, "processed": processed, "completed": processed - 1}
    loader = {"_sampler_iter_state": {"sampler_state": {"epoch": 0, "consumed": consumed, "world_size": 2},
                                      "samples_yielded": consumed // 2}}
    return {"loops": {"fit_loop": {
        "epoch_loop.batch_progress": {"current": dict(counters), "total": {k: v + 7 for k, v in counters.items()}},
        "state_dict": {"combined_loader": [loader]}}}}


def test_lightning_batch_counters_follow_the_samples_consumed():
    # 2 ranks x 32 rows, 5 batches done: 320 samples; on 1 rank of 32 rows that is 10 batches
    ckpt = _checkpoint(processed=5, consumed=320)
    assert rebase_epoch_position(ckpt, world_size=1, micro_batch_size=32, written_by=2) == (320, 5, 10)
    progress = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    assert progress["current"] == {"ready": 10, "started": 10, "processed": 10, "completed": 9}
    assert progress["total"] == {"ready": 17, "started": 17, "processed": 17, "completed": 16}
    # the same ranks and batch: nothing moves
    ckpt = _checkpoint(processed=5, consumed=320)
    assert rebase_epoch_position(ckpt, world_size=2, micro_batch_size=32, written_by=2) == (320, 5, 5)


def test_between_epochs_there_is_nothing_to_rebase():
    ckpt = _checkpoint(processed=0, consumed=384)
    assert rebase_epoch_position(ckpt, world_size=1, micro_batch_size=32, written_by=2) is None
