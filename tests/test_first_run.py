"""A new user's first commands: `python train.py` prints nothing they would read as their own mistake, and
`python train.py cluster=slurm` is a job the cluster runs, as it comes."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import warnings

import pytest

from conftest import REPO, compose_config

# what a user reads as "I did something wrong": (what, pattern of an output line)
NOISE = (
    ("a Python warning", re.compile(r"\b\w*Warning\b")),
    ("a deprecation", re.compile(r"deprecat", re.IGNORECASE)),
    ("Lightning's litlogger advertisement", re.compile(r"litlogger")),
    ("Lightning defaulting weights_only", re.compile(r"weights_only")),
    ("transformers' loss_type notice", re.compile(r"loss_type=")),
    ("an epoch count of -1 epochs", re.compile(r"Epoch \d+/-\d")),
    ("the logger version in the bar", re.compile(r"v_num")),
)


def noise_in(output: str) -> list[str]:
    lines = [x for x in re.split(r"[\r\n]+", output) if x.strip()]
    return [f"{what}: {line.strip()[:200]}" for line in lines for what, pattern in NOISE if pattern.search(line)]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["nlp/translation", "nlp/language_modeling"])
def test_the_first_training_run_prints_no_warnings_and_counts_steps(tmp_path, task):
    """The default command, shrunk to a few steps with one validation and one checkpoint save, and the bar on."""
    proc = subprocess.run(
        [sys.executable, "train.py", f"task={task}", "trainer.max_steps=6", "trainer.val_check_interval=6",
         "trainer.checkpoint.every_n_steps=3", "dataset.max_val_samples=8", f"cluster.runs_dir={tmp_path / 'runs'}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "zerorun: done." in output
    assert noise_in(output) == []
    assert "step 6/6" in output, "the progress bar counts steps out of trainer.max_steps"


def test_noise_patterns_catch_what_a_first_run_used_to_print():
    old = ("/x/torchdata/stateful_dataloader/stateful_dataloader.py:379: UserWarning: 'set_vital' is deprecated\n"
           "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](https://x)\n"
           "`weights_only` was not set, defaulting to `False`.\n"
           "Epoch 4/-2 ━━━━━━━━━━━━━━━━━ 20/20 0:00:00 • 0:00:00 34.34it/s v_num: 0.000\n")
    assert len(noise_in(old)) == 6
    assert noise_in("Epoch 0 · step 20/20 ━━━━ 20/20 0:00:02 • 9.34it/s train_loss: 5.304\n") == []


def test_quiet_silences_exactly_the_known_warnings_by_module():
    from trainer_core import console

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        console.quiet()
        console.quiet()
        for message, category, module in console.KNOWN_WARNINGS:
            text = message.replace("\\", "")
            raiser = module.replace("\\", "")
            warnings.warn_explicit(text, category, "x.py", 1, module=raiser)
            # the same warning from the user's code still shows
            warnings.warn_explicit(text, category, "mine.py", 1, module="my_project.train")
    assert [w.filename for w in caught] == ["mine.py"] * len(console.KNOWN_WARNINGS)


def test_quiet_drops_only_the_known_log_lines(caplog):
    from trainer_core import console

    console.quiet()
    console.quiet()
    for name, fragment in console.KNOWN_LOG_LINES:
        logger = logging.getLogger(name)
        assert sum(isinstance(f, console._DropMessages) for f in logger.filters) == 1
        with caplog.at_level(logging.INFO, logger=name):
            logger.warning("before %s after", fragment)
            logger.warning("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"] * len(
        console.KNOWN_LOG_LINES)


# a cluster of the smallest nodes a default job should fit: 2 CPUs, no GPUs (the local test cluster's shape)
SMALL_SINFO = "n1|debug*|2|1000|(null)\nn2|debug*|2|1000|(null)\n"


def test_cluster_slurm_as_it_comes_is_a_job_the_default_trainer_runs(tmp_path):
    from cluster import preflight
    from cluster.plan import make_plan
    from configs.validate import check_config
    from jobs.app import finalize

    cfg = finalize(compose_config("cluster=slurm", f"cluster.runs_dir={tmp_path}"))
    check_config(cfg)  # the default trainer runs one process: the job has one rank
    plan = make_plan(cfg)
    assert (plan.nodes, plan.tasks_per_node, plan.gpus_per_node) == (1, 1, 0)
    check = preflight.check(plan, preflight.parse_sinfo(SMALL_SINFO))
    assert check.ok, check.problems


@pytest.mark.slurm
def test_cluster_slurm_dry_run_passes_the_real_preflight(slurm_cluster, tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", "cluster=slurm", "dry_run=true", f"cluster.runs_dir={tmp_path / 'runs'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "preflight: ok" in proc.stdout and "sbatch --test-only: sbatch: Job" in proc.stdout
