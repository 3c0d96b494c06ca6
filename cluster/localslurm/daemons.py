"""The daemons of a local cluster as pure data: argv, environment, start order, how to tell each is ready.

procs.py starts and stops what these plans describe; nothing here touches the machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cluster.localslurm.config import ClusterSpec


@dataclass(frozen=True)
class DaemonPlan:
    """One daemon: how to start it and how to tell it is ready (a socket accepts, or a port on `address`)."""

    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    ready_socket: Path | None = None
    ready_port: int | None = None
    address: str = "127.0.0.1"


def daemon_env(spec: ClusterSpec, **extra: str) -> tuple[tuple[str, str], ...]:
    """A clean environment: nothing from the caller's shell leaks into the daemons."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "SLURM_CONF": str(spec.paths.slurm_conf)}
    return tuple(sorted({**env, **extra}.items()))


def mariadb_install_argv(spec: ClusterSpec) -> tuple[str, ...]:
    # socket auth for root: slurmdbd runs as root and needs no password on disk.
    return ("mariadb-install-db", "--no-defaults", f"--datadir={spec.paths.mysql_data}", "--user=root",
            "--auth-root-authentication-method=socket", "--skip-test-db")


def daemon_plans(spec: ClusterSpec) -> tuple[DaemonPlan, ...]:
    """Start order: each daemon depends only on the ones before it. `down` stops them in reverse."""
    p = spec.paths
    conf = str(p.slurm_conf)
    plans = [
        # No --force: munged checks its key, folders and socket, and `up` gives them what munged asks for.
        DaemonPlan("munged", ("munged", "--foreground", f"--key-file={p.munge_key}",
                              f"--socket={p.munge_socket}", f"--pid-file={p.run}/munged.pid",
                              f"--log-file={p.logs}/munged.log", f"--seed-file={p.munge_dir}/munged.seed"),
                   daemon_env(spec), ready_socket=p.munge_socket),
        # --skip-networking: the database answers on its unix socket only.
        DaemonPlan("mariadbd", ("mariadbd", "--no-defaults", f"--datadir={p.mysql_data}",
                                f"--socket={p.mysql_socket}", f"--pid-file={p.run}/mariadbd.pid",
                                "--skip-networking", "--user=root", f"--log-error={p.logs}/mariadbd.log",
                                "--innodb-buffer-pool-size=64M", "--innodb-lock-wait-timeout=900"),
                   daemon_env(spec), ready_socket=p.mysql_socket),
        DaemonPlan("slurmdbd", ("slurmdbd", "-D"), daemon_env(spec, MYSQL_UNIX_PORT=str(p.mysql_socket)),
                   ready_port=spec.slurmdbd_port, address=spec.address),
        DaemonPlan("slurmctld", ("slurmctld", "-D", "-f", conf), daemon_env(spec), ready_port=spec.slurmctld_port,
                   address=spec.address),
    ]
    plans += [
        # Debian builds Slurm with MULTIPLE_SLURMD: one slurmd per node name on the same machine.
        DaemonPlan(f"slurmd-{name}", ("slurmd", "-D", "-N", name, "-f", conf), daemon_env(spec), ready_port=port,
                   address=spec.address)
        for name, port in spec.slurmd_ports.items()
    ]
    return tuple(plans)
