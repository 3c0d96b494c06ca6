"""The few places where the local cluster touches the machine outside its state folder.

- packages: apt-get installs what is missing (never removes anything);
- /etc/hosts: one marked line `127.0.0.1 n1 n2 # zerorun-local-slurm <state>` so node names never reach DNS;
- boot: the packages enable their own services when installed; `up` disables the ones it made enabled.
/etc/slurm/slurm.conf is conflink.py's. Each edit returns a record of what was there before; `undo_*` puts it back
from that record.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
from pathlib import Path

from cluster.localslurm.config import (
    HOSTS_FILE,
    PACKAGES,
    SERVICE_UNITS,
    ClusterSpec,
    LocalSlurmError,
    add_hosts_entry,
    hosts_line,
    parse_os_release,
    remove_hosts_entry,
    unsupported_distribution,
)
from cluster.localslurm.procs import log_tails


def require_root(verb: str) -> None:
    if os.geteuid() != 0:
        raise LocalSlurmError(
            f"`zerorun cluster {verb}` needs root: the cluster installs packages, edits /etc/hosts and runs its"
            f" daemons as root. Run it as root, or with sudo (`sudo -E zerorun cluster {verb}`)."
        )


def sudo_works() -> bool:
    """Whether `sudo` runs without asking for a password (a prompt would hang a script)."""
    if shutil.which("sudo") is None:
        return False
    return subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0


def require_supported_distribution(os_release: Path) -> None:
    try:
        text = os_release.read_text()
    except OSError as e:
        raise LocalSlurmError(f"cannot read {os_release} ({e.strerror}): `zerorun cluster up` supports apt-based"
                              " Debian and Ubuntu only") from e
    reason = unsupported_distribution(parse_os_release(text), has_apt=shutil.which("apt-get") is not None)
    if reason:
        raise LocalSlurmError(reason)


def missing_packages() -> list[str]:
    query = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n", *PACKAGES],
                           capture_output=True, text=True)
    installed = {row.split()[0] for row in query.stdout.splitlines() if row.split()[1:2] == ["ii"]}
    return [pkg for pkg in PACKAGES if pkg not in installed]


def install_packages(packages: list[str], log: Path) -> None:
    """apt-get install; on failure refresh the package lists once (a fresh image has none) and retry."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    with open(log, "ab") as out:
        if subprocess.run(install, env=env, stdout=out, stderr=subprocess.STDOUT).returncode == 0:
            return
        subprocess.run(["apt-get", "update"], env=env, stdout=out, stderr=subprocess.STDOUT)
        if subprocess.run(install, env=env, stdout=out, stderr=subprocess.STDOUT).returncode == 0:
            return
    raise LocalSlurmError(f"installing {' '.join(packages)} failed; run `{' '.join(install)}` by hand to see why.\n"
                          f"{log_tails(log)}")


# --- /etc/hosts ------------------------------------------------------------------------------------------------

def hosts_edit(spec: ClusterSpec, record: dict | None) -> tuple[str | None, dict]:
    """(new /etc/hosts text or None if the line is already there, the record `undo_hosts` needs).

    Nothing is written here: the caller saves the record first, then calls write_hosts.
    """
    line = hosts_line(spec)
    text = HOSTS_FILE.read_text()
    new_text, newline_added = add_hosts_entry(text, line)
    if new_text == text:
        # Already there (an earlier `up` that was not taken down): keep what that one recorded.
        return None, record if record and record.get("line") == line else {"line": line, "newline_added": False}
    return new_text, {"line": line, "newline_added": newline_added}


def write_hosts(text: str) -> None:
    _write_in_place(HOSTS_FILE, text)


def undo_hosts(record: dict | None) -> None:
    if not record:
        return
    text = HOSTS_FILE.read_text()
    new_text = remove_hosts_entry(text, record["line"], record["newline_added"])
    if new_text != text:
        _write_in_place(HOSTS_FILE, new_text)


def _write_in_place(path: Path, text: str) -> None:
    # Not write-and-rename: in containers /etc/hosts is a bind mount, which rename cannot replace.
    with open(path, "r+") as f:
        f.write(text)
        f.truncate()


# --- services the packages enable --------------------------------------------------------------------------

def enabled_units(units: tuple[str, ...] = SERVICE_UNITS, etc: Path = Path("/etc")) -> set[str]:
    """Which of these units start at boot: a systemd wants-link, or for a service a SysV start link."""
    found = set()
    for unit in units:
        name, kind = unit.rsplit(".", 1)
        if any((etc / "systemd" / "system").glob(f"*.wants/{unit}")):
            found.add(unit)
        elif kind == "service" and any(etc.glob(f"rc[2-5].d/S[0-9][0-9]{name}")):
            found.add(unit)
    return found


def disable_units(units: set[str] | list[str]) -> set[str]:
    """Stop these units from starting at boot (nothing is stopped now). Returns those still enabled."""
    for unit in sorted(units):
        name, kind = unit.rsplit(".", 1)
        if shutil.which("systemctl"):
            # Works without a running systemd: it edits the links, and the SysV ones through systemd-sysv-install.
            subprocess.run(["systemctl", "disable", "--quiet", unit], capture_output=True)
        if kind == "service" and Path("/etc/init.d", name).exists() and shutil.which("update-rc.d"):
            subprocess.run(["update-rc.d", name, "disable"], capture_output=True)
    return enabled_units(tuple(units))


# --- the address the daemons listen on ------------------------------------------------------------------------

def listen_address() -> str:
    """The address Slurm binds its daemons to under CommunicationParameters=NoInAddrAny: the first IPv4 address
    this machine's own name resolves to (as Slurm's getaddrinfo call sees it). Refused unless it is loopback."""
    host = socket.gethostname()
    fix = (f"make the name resolve to loopback first, e.g. with a line `127.0.1.1 {host}` in /etc/hosts above any"
           " other line naming it (what Debian's installer writes), then run `zerorun cluster up` again")
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM, 0,
                                   socket.AI_ADDRCONFIG | socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise LocalSlurmError(f"this machine's name {host!r} does not resolve ({e.strerror}): Slurm binds the"
                              f" local cluster's daemons to the address of that name; {fix}") from e
    address = infos[0][4][0]
    if not ipaddress.ip_address(address).is_loopback:
        raise LocalSlurmError(
            f"this machine's name {host!r} resolves to {address}, not to a loopback address. Slurm binds the local"
            f" cluster's daemons to the address of that name (CommunicationParameters=NoInAddrAny), so they would"
            f" be reachable from other machines; {fix}"
        )
    return address
