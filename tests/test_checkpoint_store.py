"""The checkpoint store's save protocol (trainer_core/checkpoint_store.py), without torch: a save is made of
shard files written into the temporary folder, as the ranks write them, then committed as rank 0 commits it.

What must hold: ``latest`` always names a whole checkpoint; a new save of a step replaces an older folder of that
step, never the reverse; no half-deleted folder is ever listed as a checkpoint; everything is fsynced before
``latest`` moves. The kill windows are real: a child process commits and is killed (SIGKILL) just before its
N-th file-system change, for every N until the commit runs through.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from trainer_core.checkpoint_store import CheckpointError, CheckpointMeta, CheckpointStore, resumed_accumulation

SHARDS = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_optim_states.pt", "zero_pp_rank_1_optim_states.pt")


def meta(step: int) -> CheckpointMeta:
    return CheckpointMeta(step=step, strategy="deepspeed", world_size=2, model="M/1")


def write_shards(store: CheckpointStore, step: int, tag: str) -> None:
    """What the ranks write into the temporary folder of a save (a few shards in a sub-folder)."""
    shards = store.tmp_dir(step) / "ckpt" / "checkpoint"
    shards.mkdir(parents=True)
    for name in SHARDS:
        (shards / name).write_text(f"{tag}\n" * 1000)


def save(store: CheckpointStore, step: int, tag: str, keep_last: int = 2) -> Path:
    store.clear_stale()
    write_shards(store, step, tag)
    return store.commit(meta(step), keep_last)


def tag_of(folder: Path) -> str:
    """The tag every shard of a checkpoint holds; fails when a shard is missing, torn or from another save."""
    contents = []
    for name in SHARDS:
        shard = folder / "ckpt" / "checkpoint" / name
        assert shard.is_file(), f"{folder.name} is listed as a checkpoint, but {name} is missing"
        contents.append(shard.read_text())
    tag = contents[0].split("\n", 1)[0]
    assert all(c == f"{tag}\n" * 1000 for c in contents), f"{folder.name} holds torn shards or mixes saves"
    return tag


def point_latest(store: CheckpointStore, name: str) -> None:
    (store.root / "latest").write_text(name + "\n")


def state(store: CheckpointStore) -> dict[str, str]:
    """Every complete checkpoint's name -> tag (each checked whole)."""
    return {p.name: tag_of(p) for p in store.complete()}


# ---- a new save replaces an older folder of the same step ----

def test_a_save_after_latest_was_rolled_back_replaces_the_abandoned_folder_of_its_step(tmp_path):
    store = CheckpointStore(tmp_path)
    for step in (20, 30, 40):
        save(store, step, "abandoned" if step > 20 else "kept", keep_last=0)
    point_latest(store, "step-00000020")  # as the store's own error message suggests doing

    new = save(store, 30, "new")
    assert store.latest() == new
    assert tag_of(store.latest()) == "new", "the abandoned run's weights came back instead of the new save"
    # the abandoned continuation is no part of this run: the new step 30 replaced its own, step 40 went too
    assert state(store) == {"step-00000020": "kept", new.name: "new"}
    assert not [p.name for p in store.root.iterdir() if p.name.startswith((".tmp-", ".trash-"))]


def test_a_save_of_the_step_latest_names_replaces_it(tmp_path):
    store = CheckpointStore(tmp_path)
    save(store, 20, "a")
    save(store, 40, "old")
    new = save(store, 40, "new")
    assert new.name == "step-00000040.1", "a new save gets a name no folder has"
    assert tag_of(store.latest()) == "new"
    assert state(store) == {"step-00000020": "a", "step-00000040.1": "new"}
    again = save(store, 40, "newer")
    assert again.name == "step-00000040.2" and state(store) == {"step-00000020": "a", again.name: "newer"}


def test_pruning_keeps_the_newest_of_this_run(tmp_path):
    store = CheckpointStore(tmp_path)
    for step, tag in ((10, "a"), (20, "b"), (30, "c")):
        save(store, step, tag, keep_last=2)
    assert state(store) == {"step-00000020": "b", "step-00000030": "c"}
    save(store, 40, "d", keep_last=1)
    assert state(store) == {"step-00000040": "d"}
    assert sorted(p.name for p in store.root.iterdir()) == ["latest", "step-00000040"]


# ---- every file is durable before latest moves ----

def test_commit_fsyncs_every_file_and_folder_before_latest_moves__seen_by_wrapping_os_fsync(tmp_path, monkeypatch):
    """A node crash cannot be injected here: the order of fsyncs and renames is recorded instead."""
    store = CheckpointStore(tmp_path)
    save(store, 20, "a")
    write_shards(store, 40, "b")
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def moved(kind, real):  # type: ignore[no-untyped-def]
        def move(src, dst, *args, **kwargs):  # type: ignore[no-untyped-def]
            events.append((kind, f"{src} -> {dst}"))
            return real(src, dst, *args, **kwargs)
        return move

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", moved("replace", real_replace))
    monkeypatch.setattr(os, "rename", moved("rename", real_rename))
    tmp = store.tmp_dir(40)
    written = sorted(str(p) for p in tmp.rglob("*")) + [str(tmp)]
    final = store.commit(meta(40), keep_last=1)
    monkeypatch.undo()

    pointer_moved = next(i for i, (k, what) in enumerate(events) if k == "replace" and what.endswith("/latest"))
    synced_before = {path for k, path in events[:pointer_moved] if k == "fsync"}
    unsynced = [p for p in written if p not in synced_before]
    assert not unsynced, f"not fsynced before latest moved: {unsynced}"
    assert any(p.startswith(f"{tmp}/.meta.json.") for p in synced_before), "meta.json was not fsynced"
    renamed = next(i for i, (k, what) in enumerate(events) if k == "rename" and what.startswith(f"{tmp} -> "))
    assert ("fsync", str(store.root)) in events[renamed:pointer_moved], "the rename into place was not fsynced"
    assert ("fsync", str(store.root)) in events[pointer_moved:], "the pointer's folder was not fsynced"
    assert store.latest() == final and state(store) == {final.name: "b"}


# ---- killed at every moment of a commit ----

KILLER = """
import os, signal, sys, shutil
from trainer_core.checkpoint_store import CheckpointMeta, CheckpointStore

run_dir, kill_at, step, keep_last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
calls = 0

def counted(real):
    def call(*args, **kwargs):
        global calls
        calls += 1
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call

# every change a commit makes to the file system goes through one of these
for name in ("rename", "replace", "unlink", "rmdir", "mkdir"):
    setattr(os, name, counted(getattr(os, name)))
CheckpointStore(run_dir).commit(CheckpointMeta(step=step, strategy="deepspeed", world_size=2, model="M/1"), keep_last)
"""


def commit_killed_at(tmp_path: Path, run_dir: Path, kill_at: int, step: int, keep_last: int) -> bool:
    """Commit in a child process killed (SIGKILL) just before its kill_at-th file-system change; whether it was."""
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(script), str(run_dir), str(kill_at), str(step), str(keep_last)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode in (0, -9), proc.stderr[-2000:]
    return proc.returncode == -9


@pytest.mark.parametrize("before,latest_before,step,keep_last", [
    # latest names the step being saved again
    ({20: "a", 40: "old"}, "step-00000040", 40, 2),
    # latest was rolled back by hand; the abandoned folders of the step and later ones are there
    ({20: "a", 40: "old", 50: "old"}, "step-00000020", 40, 2),
    # an ordinary save that prunes two older checkpoints
    ({10: "a", 20: "b", 30: "c"}, "step-00000030", 40, 1),
], ids=["same-step-as-latest", "latest-rolled-back", "pruning"])
def test_a_commit_killed_at_any_moment_leaves_latest_whole_and_the_next_save_wins(tmp_path, before, latest_before,
                                                                                 step, keep_last):
    seen_after_kill = set()
    kill_at = 1
    while True:
        run_dir = tmp_path / f"run-{kill_at}"
        store = CheckpointStore(run_dir)
        for s, tag in sorted(before.items()):
            save(store, s, tag, keep_last=0)
        point_latest(store, latest_before)
        expected_before = state(store)[latest_before]
        write_shards(store, step, "new")

        killed = commit_killed_at(tmp_path, run_dir, kill_at, step, keep_last)
        # whatever the moment: latest names a whole checkpoint, the one before or the new one, and every folder
        # listed as a checkpoint is whole (no half-written or half-deleted one)
        found = tag_of(store.latest())
        assert found in (expected_before, "new"), f"killed at change {kill_at}: latest names a {found!r} save"
        state(store)
        seen_after_kill.add(found)
        if not killed:
            assert found == "new"
            break
        # the next attempt starts (clears what the killed one left) and saves the same step: it wins
        latest = save(store, step, "next", keep_last)
        assert tag_of(store.latest()) == "next" and latest == store.latest()
        assert [p for p in store.complete() if int(p.name[5:13]) >= step] == [latest], state(store)
        assert not [p.name for p in store.root.iterdir() if p.name.startswith((".tmp-", ".trash-"))]
        kill_at += 1
    assert kill_at > 3 and seen_after_kill == {expected_before, "new"}, (kill_at, seen_after_kill)


# ---- what a resume refuses ----

@pytest.mark.parametrize("strategy", ["ddp", "deepspeed", "auto"])
def test_a_resume_on_another_number_of_ranks_is_not_refused_for_the_world_size_alone(strategy):
    """DDP and a single device write the whole state, ZeRO shards are re-partitioned (trainer_core/zero_resize),
    the data position is global; what can refuse it is the batch (below) or another model."""
    written = CheckpointMeta(step=40, strategy=strategy, world_size=2, model="M/1")
    for ranks in (1, 2, 4):
        assert written.mismatch(CheckpointMeta(step=0, strategy=strategy, world_size=ranks, model="M/1")) is None
    assert "this run builds 'M/2'" in written.mismatch(CheckpointMeta(step=0, strategy=strategy, world_size=4,
                                                                      model="M/2"))


@pytest.mark.parametrize("written,ranks,rows,keep,expected", [
    ((2, 32, 1), 1, 32, "global", 2),   # 64 rows a step: 1 rank accumulates 2 batches
    ((1, 32, 2), 2, 32, "global", 1),
    ((2, 16, 3), 4, 8, "global", 3),    # 96 = 4 x 8 x 3
    ((2, 32, 1), 2, 32, "global", 5),   # the same number of ranks: the configured accumulation
    ((2, 32, 1), 1, 32, "per_rank", 5),
])
def test_the_global_batch_is_kept_across_sizes_by_accumulation(written, ranks, rows, keep, expected):
    world, b, acc = written
    found = CheckpointMeta(step=4, strategy="ddp", world_size=world, model="M/1", micro_batch_size=b,
                           accumulate_grad_batches=acc)
    assert resumed_accumulation(found, ranks, rows, 5, keep) == expected


def test_a_global_batch_that_does_not_divide_is_refused_naming_the_fix():
    found = CheckpointMeta(step=4, strategy="ddp", world_size=2, model="M/1", micro_batch_size=32,
                           accumulate_grad_batches=1)
    with pytest.raises(CheckpointError) as e:
        resumed_accumulation(found, 3, 32, 1, "global")
    msg = str(e.value)
    assert "global batch of 64 rows (2 ranks x 32 rows x 1 accumulated) cannot be kept on 3 ranks" in msg, msg
    assert "(with 32 rows per rank: 1, 2)" in msg and "trainer.keep_batch=per_rank" in msg, msg
    # older checkpoints, which did not record the batch: the run's config says what it was
    older = CheckpointMeta(step=4, strategy="ddp", world_size=2, model="M/1")
    assert resumed_accumulation(older, 1, 32, 1, "global") == 2
