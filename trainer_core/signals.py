"""The stop signals' one owner in a rank: the handler only records that a stop was asked for.

During start-up the signals are held (`hold`): Slurm delivers the job's signal to every process of the job
step, and a child the rank starts meanwhile (the compilers DeepSpeed's ninja build of its ops runs) would die of
it and fail the rank. Blocking alone does not protect them: ninja starts its commands with an empty signal mask
(measured on the real cluster: a USR2 during the build killed the compiler and the rank). So the signals are
also set to be ignored, which children inherit through exec (ninja resets INT, TERM and HUP to their defaults,
not the job's signal). In the rank itself Linux keeps a blocked signal pending even while it is ignored. When
training starts, `install` puts the recording handler in place (replacing the ones Lightning registers) and
releases the signals: one that came during start-up is delivered then, recorded, and acted on at the first
optimizer-step boundary. When training is over they are held again: a rank that is writing its reports or has
just requeued its job (Slurm then sends SIGTERM) should finish and exit with its own status.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from typing import Any, Optional

# What `handlers()` calls zerorun's own handler.
OWNER = "zerorun"


@dataclass(frozen=True)
class StopRequest:
    signal_name: str
    at: float


class StopSignals:
    """`requested` is set (never cleared) when the job's signal, SIGTERM or SIGINT arrives."""

    def __init__(self, job_signal: str) -> None:
        self.job_signal = job_signal.upper().removeprefix("SIG")
        if not hasattr(signal, f"SIG{self.job_signal}"):
            raise ValueError(f"cluster.signal={job_signal!r} is not a signal name (e.g. USR2)")
        self.requested: Optional[StopRequest] = None
        # what held the signals before zerorun took them (`restore` puts it back)
        self._before = {signum: signal.getsignal(signum) for signum in self.signums()}

    def signums(self) -> set[int]:
        # INT too: Ctrl-C on a local run saves a checkpoint at the next step instead of losing the work
        return {getattr(signal, f"SIG{name}") for name in (self.job_signal, "TERM", "INT")}

    def hold(self) -> None:
        """Keep the signals pending, and from children (start-up: nothing to checkpoint yet, children to protect;
        after training: nothing left to stop)."""
        signums = self.signums()
        signal.pthread_sigmask(signal.SIG_BLOCK, signums)
        # setting "ignore" discards a signal already pending: note it first (the window is microseconds)
        pending = signums & signal.sigpending()
        for signum in signums:
            signal.signal(signum, signal.SIG_IGN)
        if pending:
            self._record(min(pending), None)

    def install(self) -> None:
        for signum in self.signums():
            signal.signal(signum, self._record)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.signums())

    def restore(self) -> None:
        """Give the signals back as they were before (training called inside another program, e.g. a test)."""
        for signum, handler in self._before.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.signums())

    def handlers(self) -> dict[str, str]:
        """Who handles each stop signal now: "zerorun", or a description of the other handler."""
        out = {}
        for signum in sorted(self.signums()):
            h = signal.getsignal(signum)
            ours = getattr(h, "__self__", None) is self and getattr(h, "__func__", None) is StopSignals._record
            out[signal.Signals(signum).name.removeprefix("SIG")] = OWNER if ours else _describe(h)
        return out

    def _record(self, signum: int, frame: Any) -> None:
        if self.requested is None:  # only record: no I/O, no collective, nothing that can hang in a handler
            self.requested = StopRequest(signal.Signals(signum).name.removeprefix("SIG"), time.time())


def _describe(handler: Any) -> str:
    if handler in (signal.SIG_DFL, signal.SIG_IGN, None):
        return {signal.SIG_DFL: "default", signal.SIG_IGN: "ignored", None: "not set from Python"}[handler]
    return f"{getattr(handler, '__module__', '?')}.{getattr(handler, '__qualname__', repr(handler))}"
