"""The stop signals' one owner in a rank: the handler only records that a stop was asked for.

During start-up the signals are blocked (`hold`): Slurm delivers the job's signal to every process of the job
step, and a child the rank starts meanwhile (the compiler DeepSpeed runs to build its ops) would die of it and
fail the rank. Children inherit the blocked mask. When training starts, `install` puts the recording handler
in place (replacing the ones Lightning registers) and releases the signals: one that came during start-up is
delivered then, recorded, and acted on at the first optimizer-step boundary.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class StopRequest:
    signal_name: str
    at: float


class StopSignals:
    """`requested` is set (never cleared) when the job's signal, SIGTERM or SIGINT arrives."""

    def __init__(self, job_signal: str) -> None:
        self.job_signal = job_signal.upper().removeprefix("SIG")
        self.requested: Optional[StopRequest] = None

    def signums(self) -> set[int]:
        # INT too: Ctrl-C on a local run saves a checkpoint at the next step instead of losing the work
        return {getattr(signal, f"SIG{name}") for name in (self.job_signal, "TERM", "INT")}

    def hold(self) -> None:
        """Block the signals until `install` (start-up: nothing to checkpoint yet, children to protect)."""
        signal.pthread_sigmask(signal.SIG_BLOCK, self.signums())

    def install(self) -> None:
        for signum in self.signums():
            signal.signal(signum, self._record)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.signums())

    def _record(self, signum: int, frame: Any) -> None:
        if self.requested is None:  # only record: no I/O, no collective, nothing that can hang in a handler
            self.requested = StopRequest(signal.Signals(signum).name.removeprefix("SIG"), time.time())
