"""What a local Slurm cluster is, as pure data: the spec, its file layout, its config files and daemon argv.

Nothing here touches the machine. lifecycle.py reads the machine, decides with these functions and
then acts, so every rendered file and every command line can be compared in a unit test.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server")
# What those packages enable for boot when installed. The local cluster starts its own daemons; the machine's
# boot stays as `up` found it.
SERVICE_UNITS = ("munge.service", "mariadb.service", "mariadb.socket", "slurmctld.service", "slurmd.service",
                 "slurmdbd.service")
SUPPORTED_DISTRIBUTIONS = ("debian", "ubuntu")
STATE_DIR_ENV = "ZERORUN_LOCAL_SLURM_DIR"
# Root's own default. Anyone else's is SHARED_STATE_DIR: the cluster runs as root, which must not write in a
# folder that another user can change (files.py), and there `sudo zerorun cluster up` and everyone's `status` meet.
DEFAULT_STATE_DIR = Path("~/.zerorun/local-slurm")
SHARED_STATE_DIR = Path("/var/lib/zerorun/local-slurm")
SYSTEM_SLURM_CONF = Path("/etc/slurm/slurm.conf")
HOSTS_FILE = Path("/etc/hosts")
HOSTS_MARKER = "# zerorun-local-slurm"
# Where the backup of the machine's own /etc/slurm/slurm.conf lives while a local cluster replaces it: outside
# every state folder, so it survives a state folder being deleted and is found by whichever cluster goes down last.
MACHINE_BACKUP_DIR = Path("/var/lib/zerorun/machine-backup")
# munged insists that every folder above its socket lets everyone in, which a state folder in root's home does
# not: each cluster's munge socket lives in a folder of its own under /run instead.
RUNTIME_DIR = Path("/run/zerorun-local-slurm")
# Linux caps a unix socket path at 107 bytes; MariaDB puts its socket in the state folder.
MAX_SOCKET_PATH = 107
# slurmctld refuses to start with a larger MaxArraySize.
MAX_ARRAY_SIZE_LIMIT = 4_000_001

# The two partitions share every node: a job in `high` preempts (requeues) jobs in `debug`.
DEFAULT_PARTITION = "debug"
HIGH_PARTITION = "high"
PARTITIONS = (DEFAULT_PARTITION, HIGH_PARTITION)


class LocalSlurmError(RuntimeError):
    """A problem the user can fix; the message says how. The CLI prints it and exits non-zero."""


@dataclass(frozen=True)
class ClusterSpec:
    """Everything that decides what `up` starts. Stored in the state folder; `down` and `status` read it back."""

    state_dir: Path
    # Recorded in the state folder: `up` under another name is refused while this cluster runs there.
    cluster_name: str = "zerorun"
    # Number of slurmd daemons, named n1..nN, all on `address`.
    nodes: int = 2
    # CPUs each node advertises; every node shares this machine's cores (SlurmdParameters=config_overrides).
    cpus_per_node: int = 2
    # Caps what a job may ask with --mem; not checked against this machine's memory (config_overrides).
    real_memory_mb: int = 8000
    slurmctld_port: int = 16817
    slurmdbd_port: int = 16819
    # slurmd of node i listens on slurmd_base_port + i - 1.
    slurmd_base_port: int = 17001
    # Largest job array index + 1 (Slurm's default).
    max_array_size: int = 1001
    # The loopback address every daemon listens on. Not a flag: Slurm binds to what this machine's own name
    # resolves to (CommunicationParameters=NoInAddrAny), so `up` reads it from the machine and refuses
    # anything but loopback.
    address: str = "127.0.0.1"

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(f"n{i}" for i in range(1, self.nodes + 1))

    @property
    def slurmd_ports(self) -> dict[str, int]:
        return {name: self.slurmd_base_port + i for i, name in enumerate(self.node_names)}

    @property
    def paths(self) -> StatePaths:
        return StatePaths.under(self.state_dir)

    def ports(self) -> list[tuple[int, str, str]]:
        """(port, daemon, CLI flag that moves it) for every TCP port the cluster listens on."""
        ports = [
            (self.slurmctld_port, "slurmctld", "--slurmctld-port"),
            (self.slurmdbd_port, "slurmdbd", "--slurmdbd-port"),
        ]
        ports += [(port, f"slurmd {name}", "--slurmd-base-port") for name, port in self.slurmd_ports.items()]
        return ports

    def validate(self) -> None:
        """Raise LocalSlurmError naming the fix for the first setting that cannot work."""
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,39}", self.cluster_name):
            raise LocalSlurmError(
                f"cluster name {self.cluster_name!r} is not usable by Slurm: use 1-40 lowercase letters, digits,"
                " '-' or '_', starting with a letter (--cluster-name)"
            )
        if not 1 <= self.nodes <= 64:
            raise LocalSlurmError(f"--nodes must be between 1 and 64, got {self.nodes}")
        if self.cpus_per_node < 1 or self.real_memory_mb < 1 or self.max_array_size < 1:
            raise LocalSlurmError(
                f"--cpus-per-node ({self.cpus_per_node}), --real-memory ({self.real_memory_mb}) and"
                f" --max-array-size ({self.max_array_size}) must all be at least 1"
            )
        if self.max_array_size > MAX_ARRAY_SIZE_LIMIT:
            raise LocalSlurmError(f"--max-array-size {self.max_array_size} is above Slurm's limit of"
                                  f" {MAX_ARRAY_SIZE_LIMIT}")
        seen: dict[int, tuple[str, str]] = {}
        for port, daemon, flag in self.ports():
            if not 1024 <= port <= 65535:
                raise LocalSlurmError(f"port {port} for {daemon} is outside 1024-65535: change it with {flag}")
            if port in seen:
                other, other_flag = seen[port]
                raise LocalSlurmError(
                    f"port {port} is given to both {other} ({other_flag}) and {daemon} ({flag}); node i's slurmd"
                    f" uses --slurmd-base-port + i - 1, here {self.slurmd_base_port}.."
                    f"{self.slurmd_base_port + self.nodes - 1}: change one of the two flags"
                )
            seen[port] = (daemon, flag)
        if re.search(r"[\s,#=\"']", str(self.state_dir)):
            raise LocalSlurmError(
                f"state folder {str(self.state_dir)!r} contains a space, quote, ',', '#' or '=', which slurm.conf"
                " cannot carry in a path; pick another --state-dir"
            )
        if not _is_loopback(self.address):
            raise LocalSlurmError(f"address {self.address!r} is not a loopback address: the local cluster listens on"
                                  " loopback only")
        longest = max((self.paths.munge_socket, self.paths.mysql_socket), key=lambda p: len(str(p)))
        if len(str(longest)) > MAX_SOCKET_PATH:
            raise LocalSlurmError(
                f"state folder {self.state_dir} is too long: the socket {longest} exceeds {MAX_SOCKET_PATH}"
                " characters; pick a shorter --state-dir"
            )

    def to_record(self) -> dict:
        return {f.name: str(getattr(self, f.name)) if f.name == "state_dir" else getattr(self, f.name)
                for f in fields(self)}

    @classmethod
    def from_record(cls, record: dict) -> ClusterSpec:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in record.items() if k in known}
        return cls(**{**values, "state_dir": Path(values["state_dir"])})


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def differences(recorded: ClusterSpec, requested: ClusterSpec) -> list[str]:
    """'nodes: running 2, requested 3' for every setting that differs."""
    return [
        f"{f.name}: running {getattr(recorded, f.name)}, requested {getattr(requested, f.name)}"
        for f in fields(ClusterSpec)
        if getattr(recorded, f.name) != getattr(requested, f.name)
    ]


def resolve_state_dir(state_dir: str | Path | None = None, environ: dict | None = None,
                      euid: int | None = None) -> Path:
    """--state-dir, else $ZERORUN_LOCAL_SLURM_DIR, else ~/.zerorun/local-slurm for root and
    /var/lib/zerorun/local-slurm for everyone else; always absolute."""
    environ = os.environ if environ is None else environ
    euid = os.geteuid() if euid is None else euid
    chosen = state_dir or environ.get(STATE_DIR_ENV) or (DEFAULT_STATE_DIR if euid == 0 else SHARED_STATE_DIR)
    return Path(chosen).expanduser().absolute()


@dataclass(frozen=True)
class StatePaths:
    """Where every file of one cluster lives. Only the state folder is written, apart from two system edits."""

    root: Path
    manifest: Path  # cluster.json: the spec and the system edits, read by `down` and `status`
    slurm_conf: Path
    slurmdbd_conf: Path  # slurmdbd finds its config beside $SLURM_CONF; it has no flag for it
    munge_dir: Path
    munge_key: Path
    munge_socket: Path
    mysql_socket: Path
    mysql_data: Path
    ctld_state: Path
    slurmd_spool: Path
    logs: Path
    run: Path  # pid files the daemons write themselves (Slurm insists on having one)
    pids: Path  # our own record of each daemon we started: pid + start time
    # a folder of this cluster's own under /run, named after a hash of the state folder (see RUNTIME_DIR)
    munge_run: Path

    @classmethod
    def under(cls, root: Path) -> StatePaths:
        munge_run = RUNTIME_DIR / hashlib.sha256(str(root).encode()).hexdigest()[:16]
        return cls(
            root=root,
            manifest=root / "cluster.json",
            slurm_conf=root / "etc" / "slurm.conf",
            slurmdbd_conf=root / "etc" / "slurmdbd.conf",
            munge_dir=root / "munge",
            munge_key=root / "munge" / "munge.key",
            munge_socket=munge_run / "munge.socket",
            mysql_socket=root / "sock" / "mysql",
            mysql_data=root / "mysql",
            ctld_state=root / "slurmctld",
            slurmd_spool=root / "slurmd",
            logs=root / "log",
            run=root / "run",
            pids=root / "pids",
            munge_run=munge_run,
        )

    def pid_record(self, daemon: str) -> Path:
        return self.pids / f"{daemon}.json"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def dirs(self) -> list[tuple[Path, int]]:
        """(folder, mode) to create in the state folder. munged refuses a key folder that others can read."""
        return [(self.slurm_conf.parent, 0o755), (self.munge_dir, 0o700), (self.mysql_socket.parent, 0o755),
                (self.ctld_state, 0o755), (self.slurmd_spool, 0o755), (self.logs, 0o755), (self.run, 0o755),
                (self.pids, 0o755)]


def render_slurm_conf(spec: ClusterSpec) -> str:
    """slurm.conf for the whole cluster. Deterministic: the same spec gives the same bytes."""
    p = spec.paths
    nodes = ",".join(spec.node_names)
    lines = [
        f"# Written by `zerorun cluster up` for cluster {spec.cluster_name}; rewritten on every up.",
        f"ClusterName={spec.cluster_name}",
        # An explicit address: neither the controller nor any client has to resolve a name through DNS.
        f"SlurmctldHost=localhost({spec.address})",
        f"SlurmctldPort={spec.slurmctld_port}",
        # Everything runs as root: the state folder lives in root's home, which the slurm user cannot enter.
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # cred_expire=5 (the minimum) holds a requeued job 6 s instead of the default 121 s before it reruns.
        f"AuthInfo=socket={p.munge_socket},cred_expire=5",
        f"StateSaveLocation={p.ctld_state}",
        f"SlurmdSpoolDir={p.slurmd_spool}/%n",
        f"SlurmctldPidFile={p.run}/slurmctld.pid",
        f"SlurmdPidFile={p.run}/slurmd-%n.pid",
        f"SlurmctldLogFile={p.logs}/slurmctld.log",
        f"SlurmdLogFile={p.logs}/slurmd-%n.log",
        # No cgroups here; every node shares this machine's cores and memory, so slurmd trusts the config.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SlurmdParameters=config_overrides",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "MpiDefault=none",
        # Listen on this machine's own address (loopback, checked by `up`), not on every address: slurmctld and
        # slurmd bind to what the hostname resolves to instead of 0.0.0.0. Clients read it too (srun's ports).
        "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny",
        # Nothing sends mail here; without this slurmctld logs an error that /bin/mail is missing.
        "MailProg=/bin/true",
        # Fast turnaround for tests: schedule every second, short kill waits, nodes back to idle on restart.
        "SchedulerParameters=sched_interval=1,bf_interval=1",
        "KillWait=2",
        "MessageTimeout=10",
        "ReturnToService=2",
        f"MaxArraySize={spec.max_array_size}",
        # Preemption: a job in `high` requeues jobs in `debug`, which first get their own --signal.
        "JobRequeue=1",
        "PreemptType=preempt/partition_prio",
        "PreemptMode=REQUEUE",
        "SlurmctldParameters=preempt_send_user_signal",
        # Accounting (sacct, and submitit's job polling) through slurmdbd.
        "AccountingStorageType=accounting_storage/slurmdbd",
        f"AccountingStorageHost={spec.address}",
        f"AccountingStoragePort={spec.slurmdbd_port}",
        # For slurmdbd this field names the munge socket, not a password.
        f"AccountingStoragePass={p.munge_socket}",
        "JobAcctGatherType=jobacct_gather/none",
    ]
    lines += [
        f"NodeName={name} NodeHostname=localhost NodeAddr={spec.address} Port={port}"
        f" CPUs={spec.cpus_per_node} RealMemory={spec.real_memory_mb} State=UNKNOWN"
        for name, port in spec.slurmd_ports.items()
    ]
    lines += [
        f"PartitionName={DEFAULT_PARTITION} Nodes={nodes} Default=YES PriorityTier=1 GraceTime=5"
        " MaxTime=INFINITE State=UP",
        f"PartitionName={HIGH_PARTITION} Nodes={nodes} PriorityTier=10 PreemptMode=OFF MaxTime=INFINITE State=UP",
    ]
    return "\n".join(lines) + "\n"


def render_slurmdbd_conf(spec: ClusterSpec) -> str:
    p = spec.paths
    lines = [
        f"# Written by `zerorun cluster up` for cluster {spec.cluster_name}; rewritten on every up.",
        "AuthType=auth/munge",
        f"AuthInfo=socket={p.munge_socket}",
        "DbdHost=localhost",
        f"DbdAddr={spec.address}",
        # DbdAddr names the address clients use; slurmdbd binds to 0.0.0.0 unless told to bind to its host's address.
        "CommunicationParameters=NoInAddrAny",
        f"DbdPort={spec.slurmdbd_port}",
        "SlurmUser=root",
        f"LogFile={p.logs}/slurmdbd.log",
        f"PidFile={p.run}/slurmdbd.pid",
        "StorageType=accounting_storage/mysql",
        # localhost makes the MySQL client use the unix socket named by $MYSQL_UNIX_PORT; MariaDB has no TCP.
        "StorageHost=localhost",
        "StorageUser=root",
        f"StorageLoc=slurm_acct_{spec.cluster_name.replace('-', '_')}",
    ]
    return "\n".join(lines) + "\n"


def hosts_line(spec: ClusterSpec) -> str:
    # The marker names the state folder so two clusters never remove each other's line.
    return f"{spec.address} {' '.join(spec.node_names)} {HOSTS_MARKER} {spec.state_dir}"


def add_hosts_entry(text: str, line: str) -> tuple[str, bool]:
    """(new /etc/hosts text, whether a newline had to be added first). A no-op if the line is already there."""
    if line in text.splitlines():
        return text, False
    newline_added = bool(text) and not text.endswith("\n")
    return text + ("\n" if newline_added else "") + line + "\n", newline_added


def remove_hosts_entry(text: str, line: str, newline_added: bool) -> str:
    """Inverse of add_hosts_entry: remove(add(t)) == t byte for byte; lines others added since stay."""
    rows = text.splitlines(keepends=True)
    ours = [i for i, row in enumerate(rows) if row.rstrip("\r\n") == line]
    if not ours:
        return text
    kept = [row for i, row in enumerate(rows) if i not in ours]
    if newline_added and ours[-1] == len(rows) - 1 and kept and kept[-1].endswith("\n"):
        # The newline before our line was ours too, and nothing was appended after it since.
        kept[-1] = kept[-1][:-1]
    return "".join(kept)


def parse_os_release(text: str) -> dict[str, str]:
    fields_ = {}
    for raw in text.splitlines():
        key, sep, value = raw.strip().partition("=")
        if sep and key and not key.startswith("#"):
            fields_[key] = value.strip().strip("\"'")
    return fields_


def unsupported_distribution(os_release: dict[str, str], has_apt: bool) -> str | None:
    """Why `up` cannot install here, or None. Only apt-based Debian/Ubuntu is known to work."""
    ids = {os_release.get("ID", "").lower(), *os_release.get("ID_LIKE", "").lower().split()}
    name = os_release.get("PRETTY_NAME") or os_release.get("ID") or "unknown"
    if not ids & set(SUPPORTED_DISTRIBUTIONS):
        return (f"unsupported distribution {name!r}: `zerorun cluster up` installs Slurm with apt and supports"
                f" {' and '.join(d.capitalize() for d in SUPPORTED_DISTRIBUTIONS)}; on other systems use an"
                " existing Slurm cluster and point SLURM_CONF at its slurm.conf")
    if not has_apt:
        return f"{name} without apt-get: install apt or use an existing Slurm cluster (SLURM_CONF)"
    return None
