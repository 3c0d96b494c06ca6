"""Real training on CPU ranks started by the local backend: DDP over gloo, DeepSpeed ZeRO-2 and ZeRO-2 with
optimizer offload through the CPU rehearsal strategy (the real DeepSpeed engine). Each run: loss finite and
falling, weights equal on every rank, a checkpoint saved, then loaded by a resumed run that continues from it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, only_run_dir, read_csv_metric, read_rank_reports, shrink
from jobs.app import launch
from trainer_core.checkpointing import CheckpointStore


@pytest.mark.slow
@pytest.mark.parametrize(
    "trainer, ranks",
    [
        ("ddp", 2),
        pytest.param("deepspeed", 1, marks=pytest.mark.deepspeed),
        pytest.param("deepspeed", 2, marks=pytest.mark.deepspeed),
        pytest.param("deepspeed_offload", 1, marks=pytest.mark.deepspeed),
        pytest.param("deepspeed_offload", 2, marks=pytest.mark.deepspeed),
    ],
)
def test_train_checkpoint_and_resume_on_cpu_ranks(compose, tmp_path, trainer, ranks):
    cfg = compose(f"trainer={trainer}", f"cluster.tasks_per_node={ranks}", *shrink())
    assert launch(cfg) == 0
    run_dir = only_run_dir(tmp_path / "runs")

    losses = [v for _, v in read_csv_metric(run_dir, "train_loss")]
    assert len(losses) >= 4 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-2:]) < sum(losses[:2]), f"loss did not fall: {losses}"

    reports = read_rank_reports(run_dir)
    assert sorted(r["rank"] for r in reports) == list(range(ranks))
    assert {r["world_size"] for r in reports} == {ranks}
    assert len({r["weights_sha256"] for r in reports}) == 1, "ranks ended with different weights"

    store = CheckpointStore(run_dir)
    latest = store.latest()
    assert latest is not None and store.read_meta(latest).step == 30
    if trainer.startswith("deepspeed"):
        shards = list((latest / "ckpt").rglob("*optim_states.pt"))
        assert len(shards) == ranks, "ZeRO-2 writes one optimizer shard per rank"
    else:
        assert (latest / "ckpt").is_file()

    # Load it: a resumed run continues from step 30 instead of starting over.
    resumed = compose(f"resume={run_dir}", "trainer.max_steps=40")
    assert launch(resumed, overrides=[f"resume={run_dir}", "trainer.max_steps=40"]) == 0
    assert store.read_meta(store.latest()).step == 40
    steps = [s for s, _ in read_csv_metric(run_dir, "train_loss")]
    assert max(steps) >= 35, steps
    assert all(r["metrics"]["global_step"] == 40 for r in read_rank_reports(run_dir))


def _wmt16_style_files(root: Path) -> tuple[Path, Path]:
    """A small local set in WMT16's format: {"translation": {"en": ..., "ro": ...}} per line."""
    root.mkdir(parents=True, exist_ok=True)
    words = ["casa", "mare", "apa", "carte", "drum", "soare", "munte", "oras"]
    english = ["house", "sea", "water", "book", "road", "sun", "mountain", "city"]
    paths = []
    for split, n in (("train", 400), ("validation", 16)):
        path = root / f"{split}.jsonl"
        with open(path, "w") as f:
            for i in range(n):
                a, b = i % 8, (i * 3 + 1) % 8
                pair = {"en": f"the {english[a]} and the {english[b]}", "ro": f"{words[a]} si {words[b]}"}
                f.write(json.dumps({"translation": pair}) + "\n")
        paths.append(path)
    return paths[0], paths[1]


@pytest.mark.slow
@pytest.mark.deepspeed
@pytest.mark.parametrize("trainer", ["deepspeed", "deepspeed_offload"])
def test_seed_command_runs_end_to_end(tmp_path, trainer):
    """The command users know from lightning-transformers, verbatim, plus local data and fewer steps."""
    train_file, val_file = _wmt16_style_files(tmp_path / "wmt16")
    runs = tmp_path / "runs"
    seed_command = ["task=nlp/translation", "dataset=nlp/translation/wmt16", f"trainer={trainer}"]
    proc = subprocess.run(
        [sys.executable, "train.py", *seed_command,
         f"dataset.data_files.train={train_file}", f"dataset.data_files.validation={val_file}",
         f"cluster.runs_dir={runs}", *shrink("trainer.max_steps=20", "trainer.val_check_interval=20")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "CPU rehearsal" in proc.stdout + proc.stderr
    run_dir = only_run_dir(runs)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 20 and "val_bleu" in metrics
    assert CheckpointStore(run_dir).latest() is not None
