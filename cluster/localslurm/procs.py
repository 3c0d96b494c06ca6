"""Daemons of the local cluster: start one in its own session, know whether it still runs, stop it by pid.

A daemon is identified by the pid we started *and* that process's start time, read from /proc: a pid reused by
an unrelated process after a reboot or a crash is never signalled. Nothing here looks a process up by name.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cluster.localslurm.config import PACKAGES, LocalSlurmError
from cluster.localslurm.daemons import DaemonPlan
from cluster.localslurm.files import open_append
from trainer_core.durable import write_atomic


@dataclass(frozen=True)
class DaemonRecord:
    """What `up` writes to <state>/pids/<name>.json for every daemon it starts."""

    name: str
    pid: int
    # Clock ticks since boot at which the process started (/proc/PID/stat field 22).
    start_ticks: int
    argv: tuple[str, ...]

    def save(self, path: Path) -> None:
        write_atomic(path, json.dumps(asdict(self), indent=1) + "\n", mode=0o644)

    @classmethod
    def load(cls, path: Path) -> DaemonRecord | None:
        try:
            data = json.loads(path.read_text())
            return cls(data["name"], int(data["pid"]), int(data["start_ticks"]), tuple(data["argv"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start ticks) of a process, or None when there is no such process."""
    full = _proc_stat_full(pid)
    return (full[1], full[3]) if full else None


def _proc_stat_full(pid: int) -> tuple[str, str, int, int] | None:
    """(command name, state letter, parent pid, start ticks), or None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and ')': the fixed fields start after the last ')'.
    rest = raw[raw.rindex(")") + 2:].split()
    return raw[raw.index("(") + 1:raw.rindex(")")], rest[0], int(rest[1]), int(rest[19])


def _reap(pid: int) -> None:
    # A daemon started by this very process (the pytest fixture) becomes a zombie when it exits; reap it so
    # it does not look alive.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def is_alive(record: DaemonRecord) -> bool:
    _reap(record.pid)
    stat = _proc_stat(record.pid)
    return stat is not None and stat[0] not in "ZX" and stat[1] == record.start_ticks


def start(plan: DaemonPlan, console_log: Path, cwd: Path) -> DaemonRecord:
    """Start the daemon in the foreground of its own session (setsid), so it outlives this process."""
    with open_append(console_log) as log:
        try:
            proc = subprocess.Popen(list(plan.argv), env=dict(plan.env), cwd=cwd, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        except FileNotFoundError as e:
            raise LocalSlurmError(f"{plan.argv[0]} is not on PATH ({dict(plan.env)['PATH']}): install it with"
                                  f" `apt-get install --no-install-recommends {' '.join(PACKAGES)}`") from e
    stat = _proc_stat(proc.pid)
    return DaemonRecord(plan.name, proc.pid, stat[1] if stat else 0, plan.argv)


def stop(record: DaemonRecord, timeout: float = 10.0) -> str:
    """SIGTERM, then SIGKILL after `timeout` seconds. Returns what happened, for the user."""
    if not is_alive(record):
        return "not running"
    _signal(record.pid, signal.SIGTERM)
    if _wait_gone(record, timeout):
        return "stopped"
    # A slurmd still retrying its registration has been seen to ignore SIGTERM.
    _signal(record.pid, signal.SIGKILL)
    if _wait_gone(record, 5.0):
        return f"killed (ignored SIGTERM for {timeout:.0f} s)"
    raise LocalSlurmError(f"{record.name} (pid {record.pid}) survived SIGKILL; check `ps -p {record.pid}`")


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # it exited between the check and the signal


def _wait_gone(record: DaemonRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(record):
            return True
        time.sleep(0.05)
    return not is_alive(record)


def port_accepts(port: int, address: str = "127.0.0.1") -> bool:
    # Slurm daemons log one "Zero Bytes were transmitted" error for this empty connection; harmless.
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def port_in_use(port: int) -> bool:
    """Whether a daemon could not bind this port. SO_REUSEADDR, as Slurm sets it, so TIME_WAIT does not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            # Any listener on this port, on any address, blocks this bind: what a daemon's own bind would meet.
            probe.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def socket_accepts(path: Path) -> bool:
    # Connect rather than test for the file: a daemon killed earlier leaves its socket file behind.
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            probe.connect(str(path))
            return True
    except OSError:
        return False


def wait_ready(plan: DaemonPlan, record: DaemonRecord, logs: dict[str, tuple[Path, ...]],
               depends_on: tuple[DaemonRecord, ...] = (), timeout: float = 60.0) -> None:
    """Block until the daemon's socket or port accepts a connection. Fail early, with the log of the daemon
    at fault, if it exits or if one it depends on (started before it) exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if plan.ready_socket is not None and socket_accepts(plan.ready_socket):
            return
        if plan.ready_port is not None and port_accepts(plan.ready_port, plan.address):
            return
        for daemon in (record, *depends_on):
            if not is_alive(daemon):
                raise LocalSlurmError(f"{daemon.name} exited while {plan.name} was starting.\n"
                                      f"{log_tails(*logs.get(daemon.name, ()))}")
        time.sleep(0.05)
    raise LocalSlurmError(f"{plan.name} (pid {record.pid}) was not ready after {timeout:.0f} s.\n"
                          f"{log_tails(*logs.get(plan.name, ()))}")


def log_tails(*logs: Path | None, lines: int = 15) -> str:
    out = []
    for log in logs:
        if log is not None and log.exists():
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- last lines of {log}:\n" + "\n".join(tail))
    return "\n".join(out) or "(no log written)"


# --- what jobs leave behind -----------------------------------------------------------------------------------

def job_processes(slurm_conf: Path) -> list[tuple[int, int]]:
    """(pid, start ticks) of every slurmstepd this cluster's slurmd started and every process below one.

    slurmd starts a slurmstepd per job step, which leaves slurmd's session and outlives it: stopping slurmd does
    not end a job. A slurmstepd is this cluster's when its environment (slurmd's, inherited) names its slurm.conf;
    a task is found as its descendant, so one that double-forked away is out of reach, as it is for Slurm itself.
    """
    needle = f"SLURM_CONF={slurm_conf}".encode()
    children: dict[int, list[int]] = {}
    info: dict[int, tuple[str, str, int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat_full(int(entry.name))) is not None:
            info[int(entry.name)] = stat
            children.setdefault(stat[2], []).append(int(entry.name))
    todo = [pid for pid, (comm, state, _, _) in info.items() if comm == "slurmstepd" and state not in "ZX"
            and needle in _environ(pid).split(b"\0")]
    found = []
    while todo:
        pid = todo.pop()
        found.append((pid, info[pid][3]))
        todo += children.get(pid, [])
    return found


def kill_all(processes: list[tuple[int, int]], timeout: float = 5.0) -> list[int]:
    """SIGKILL each (pid, start ticks) that is still that process; returns the pids still alive after `timeout`."""
    records = [DaemonRecord("job process", pid, ticks, ()) for pid, ticks in processes]
    for record in records:
        if is_alive(record):
            _signal(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(is_alive(r) for r in records) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [r.pid for r in records if is_alive(r)]


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""
