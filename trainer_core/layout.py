"""A run folder's layout: every name in it is defined here once, for the ranks that write it, the backends that
render paths into it and the verbs that read it.

    RUN_DIR/
      config.yaml            the resolved config the ranks load (written at submission)
      job.*                  the job's script as its backend renders it (cluster/backends/)
      ranks.txt              the rank table (dry run and submission)
      submission.json        what was submitted, when, as which job
      snapshot/              the code state at submission (git, versions)
      attempts.jsonl         one line per event of every attempt (trainer_core/attempts.py)
      checkpoints/           step-NNNNNNNN/ folders and the `latest` pointer (trainer_core/checkpoint_store.py)
      logs/                  one log per rank per job, and the batch script's own
      ranks/rank-N.json      what each rank saw (place in the job, node, metrics, weights digest)
      progress/rank-N.json   each rank's latest step and phase, rewritten in place (the hang watchdog reads it)
      stacks/JOB-R/rank-N.txt  every rank's stacks when the watchdog found attempt R of job JOB hung
      metrics.json           the final metrics (written once, by rank 0, when the run completes)
      csv/ tensorboard/      the logger's files, one continuous run across attempts
      wandb/ mlruns/         a tracker's local files (W&B offline or cache, MLflow's default file store)
      tracker.json           the tracker run every attempt continues (W&B id, MLflow run id; trainer_core/trackers.py)
      eval/SPLIT-ID/         evaluations of this run (`zerorun eval`): run folders of their own, with
                             metrics.json and eval.json (what was evaluated)

Pure: names and path arithmetic only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

PathLike = Union[str, os.PathLike]

CONFIG = "config.yaml"
# created exclusively by the first launch of a run: a second launch into the same folder is refused
CLAIM = ".zerorun-run"
RANK_TABLE = "ranks.txt"
SUBMISSION = "submission.json"
SNAPSHOT = "snapshot"
ATTEMPTS = "attempts.jsonl"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
RANK_REPORTS = "ranks"
METRICS = "metrics.json"
PROGRESS = "progress"
STACKS = "stacks"
TRACKER = "tracker.json"
# evaluations of a run (`zerorun eval`): EVALS/SPLIT-ID/, each with EVALUATED (what it evaluated) beside METRICS
EVALS = "eval"
EVALUATED = "eval.json"

# A scheduler's file-name pattern expands %j (job id) and %t (task id = global rank); one file per rank.
RANK_LOG_PATTERN = "%j_%t.out"
# An array task's rank logs: %A the array job id, %a the array task id, %t the rank.
ARRAY_RANK_LOG_PATTERN = "%A_%a_%t.out"
# The batch script's own output (setup lines, srun's report, the requeue decision).
BATCH_LOG_SUFFIX = "_batch.out"
# The local backend's rank logs (no job id to name them by).
LOCAL_RANK_LOG = "rank-{rank}.log"


def path(run_dir: PathLike, *parts: str) -> Path:
    return Path(run_dir, *parts)


def rank_log(job_id: str, rank: int) -> str:
    """A rank's log file, relative to the run folder (what RANK_LOG_PATTERN expands to)."""
    return f"{LOGS}/{job_id}_{rank}.out"


def batch_log(job_id: str) -> str:
    return f"{LOGS}/{job_id}{BATCH_LOG_SUFFIX}"


def array_rank_log(array_job_id: str, task_id: int, rank: int) -> str:
    """An array task's rank log, relative to the sweep folder (ARRAY_RANK_LOG_PATTERN expanded)."""
    return f"{LOGS}/{array_job_id}_{task_id}_{rank}.out"


def array_batch_log(array_job_id: str, task_id: int) -> str:
    return f"{LOGS}/{array_job_id}_{task_id}{BATCH_LOG_SUFFIX}"


def local_rank_log(rank: int) -> str:
    return f"{LOGS}/{LOCAL_RANK_LOG.format(rank=rank)}"


def rank_report(rank: int) -> str:
    return f"{RANK_REPORTS}/rank-{rank}.json"


def logs_by_rank(run_dir: PathLike, pattern: str, sep: str) -> dict[int, Path]:
    """rank -> log file, for the logs in RUN_DIR/logs matching the glob `pattern` whose stem ends in
    `sep` + the rank ("123_4.out" with sep "_", "rank-4.log" with sep "-")."""
    found = {}
    for p in Path(run_dir, LOGS).glob(pattern):
        rank = p.stem.rpartition(sep)[2]
        if rank.isdigit():
            found[int(rank)] = p
    return dict(sorted(found.items()))


def progress_file(rank: int) -> str:
    return f"{PROGRESS}/rank-{rank}.json"


def stacks_dir(job_id: str, restart_count: int) -> str:
    """The folder of one attempt's stack files (the attempt: a job id and how often Slurm restarted it)."""
    return f"{STACKS}/{job_id}-{restart_count}"


def stack_file(job_id: str, restart_count: int, rank: int) -> str:
    return f"{stacks_dir(job_id, restart_count)}/rank-{rank}.txt"
