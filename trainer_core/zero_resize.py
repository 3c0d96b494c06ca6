"""Re-partitioning a ZeRO-2 checkpoint for another number of ranks, through DeepSpeed's universal format.

A ZeRO-2 checkpoint holds the fp32 master weights and the Adam moments cut into one flat shard per rank (with
optimizer offload too: the same files). DeepSpeed's converter (deepspeed.checkpoint.ds_to_universal) merges
them into one file per parameter and state, which an engine of any size loads with
``"checkpoint": {"load_universal": true}`` in its config (trainer_core/strategies.py deepspeed_config) and cuts
for its own ranks. The conversion runs once per checkpoint, on rank 0, into a temporary folder beside it that
is renamed into place whole:

    step-00000040/ckpt/            the checkpoint as written (never modified)
    step-00000040/universal/       latest, latest_universal, checkpoint/{mp_rank_00_model_states.pt, zero/...}

and every later resume on another size finds it there. The other ranks wait for the folder to appear (no
process group exists yet at this point of a rank's start). `--inject_missing_state`: Lightning's strategy does
not write the version record the converter asks for; ZeRO-2 needs nothing else from it.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import time
from pathlib import Path

from trainer_core.durable import fsync_dir, fsync_tree

log = logging.getLogger(__name__)

UNIVERSAL = "universal"
TAG = "checkpoint"  # the tag Lightning's DeepSpeedStrategy saves under
POLL_S = 0.2


def universal_checkpoint(step_dir: Path, rank: int, timeout_s: float) -> Path:
    """The universal form of the ZeRO checkpoint in `step_dir` (made by rank 0 if it is not there yet), as a
    folder Lightning's DeepSpeedStrategy loads: pass it as ckpt_path with load_universal in the engine config."""
    done = step_dir / UNIVERSAL
    if done.is_dir():
        return done
    if rank == 0:
        convert(step_dir / "ckpt" / TAG, done)
        return done
    deadline = time.monotonic() + timeout_s
    while not done.is_dir():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank 0 did not finish converting {step_dir / 'ckpt'} to {done} within "
                               f"{timeout_s:.0f} s; see rank 0's log, or raise trainer.collective_timeout_s")
        time.sleep(POLL_S)
    return done


def convert(zero_folder: Path, out: Path, workers: int = 1) -> float:
    """Convert the ZeRO checkpoint `zero_folder` (the folder of the *_optim_states.pt shards) to the universal
    format at `out`, whole or not at all. Returns the seconds it took."""
    from deepspeed.checkpoint import ds_to_universal

    start = time.monotonic()
    tmp = out.parent / f".{out.name}-tmp-{secrets.token_hex(4)}"
    args = argparse.Namespace(input_folder=str(zero_folder), output_folder=str(tmp / TAG),
                              num_extract_workers=workers, num_merge_workers=workers, keep_temp_folder=False,
                              strict=True, inject_missing_state=True)
    try:
        ds_to_universal.main(args)
        # Lightning looks for `latest` before handing the folder to DeepSpeed, which reads `latest_universal`
        (tmp / "latest").write_text(TAG)
        fsync_tree(tmp)
        os.rename(tmp, out)
        fsync_dir(out.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.monotonic() - start
    log.info("zerorun: converted %s to the universal format in %.2f s", zero_folder, seconds)
    return seconds
