"""Each rank's progress, for the hang watchdog that runs outside the ranks (jobs/watchdog.py).

A rank reports its optimizer step and phase (startup, first_step, training, validation, checkpoint, end: after
training, done: about to exit) from
the training thread itself, at the points Lightning calls back: a step boundary, validation's start and end, a
save's start and end. A thread that beat on its own would keep beating while the training thread is stuck in C;
a report from the training thread stops exactly when the rank stops making progress.

The record is RUN_DIR/progress/rank-R.json, one fixed-size JSON line rewritten in place with one pwrite: a few
microseconds a step, no new file, no rename, no fsync (it is a heartbeat, not a record to keep: attempts.jsonl
keeps what must survive). A reader that catches a write half-done skips that read.

No torch here (the watchdog reads records with `read`); the Lightning callback that reports is
trainer_core/progress_report.py. The watchdog's settings (watchdog.*) hold a test-only fault: a rank that blocks for good in a chosen phase
(`test_only_block_here` is the frame its stack then shows).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

from trainer_core import layout
from trainer_core.contract import Rendezvous

PHASES = ("startup", "first_step", "training", "validation", "checkpoint", "end", "done")
# bytes of one record: the JSON line padded with spaces, so every write covers the whole previous one
RECORD_SIZE = 512


class Progress:
    """Writes one rank's progress record."""

    def __init__(self, run_dir: str | os.PathLike, rendezvous: Rendezvous) -> None:
        path = Path(run_dir) / layout.progress_file(rendezvous.rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._fixed = {"rank": rendezvous.rank, "node": rendezvous.node or socket.gethostname(),
                       "pid": os.getpid(), "job_id": rendezvous.job_id, "restart_count": rendezvous.restart_count}
        self.phase, self.step = "startup", 0

    def report(self, step: int, phase: Optional[str] = None) -> None:
        self.step, self.phase = step, phase or self.phase
        line = json.dumps({**self._fixed, "step": step, "phase": self.phase, "time": time.time()})
        os.pwrite(self._fd, line.ljust(RECORD_SIZE - 1).encode() + b"\n", 0)

    def close(self) -> None:
        os.close(self._fd)


def read(path: str | os.PathLike) -> Optional[dict[str, Any]]:
    """A progress record, or None where there is none whole (not written yet, or caught mid-write)."""
    try:
        return json.loads(Path(path).read_bytes().decode().strip())
    except (OSError, ValueError):
        return None


def test_only_block_here(where: str) -> None:
    """TEST ONLY (watchdog.test_only_hang_*): block this thread for good, as a rank stuck in a call would."""
    while True:
        time.sleep(3600)


class HangForTest:
    """The test-only fault of watchdog.test_only_hang_*: whether this rank blocks here."""

    def __init__(self, watchdog_cfg: Any, rendezvous: Rendezvous) -> None:
        w = watchdog_cfg
        self.armed = (w is not None and w.get("test_only_hang_rank") is not None
                      and int(w.test_only_hang_rank) == rendezvous.rank
                      and rendezvous.restart_count < int(w.get("test_only_hang_attempts", 1)))
        self.phase = str(w.get("test_only_hang_in", "step")) if w is not None else ""
        self.step = int(w.get("test_only_hang_at_step", 1)) if w is not None else 0

    def maybe(self, phase: str, step: int) -> None:
        if self.armed and phase == self.phase and (phase == "startup" or step == self.step):
            test_only_block_here(f"{phase} at step {step}")
