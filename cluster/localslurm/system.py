"""The few places where the local cluster touches the machine outside its state folder.

- packages: apt-get installs what is missing (never removes anything);
- /etc/hosts: one marked line `127.0.0.1 n1 n2 # zerorun-local-slurm <state>` so node names never reach DNS;
- /etc/slurm/slurm.conf: a symlink to the cluster's slurm.conf, so a client without $SLURM_CONF does not fall
  back to DNS SRV look-ups either.
Each edit returns a record of what was there before; `undo_*` puts it back from that record.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from cluster.localslurm.config import (
    HOSTS_FILE,
    PACKAGES,
    SYSTEM_SLURM_CONF,
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


# --- /etc/slurm/slurm.conf ------------------------------------------------------------------------------------

def conf_link_state(path: Path = SYSTEM_SLURM_CONF) -> tuple[str, str | None]:
    """('absent' | 'symlink' | 'file' | 'other', symlink target)."""
    if path.is_symlink():
        return "symlink", os.readlink(path)
    if not path.exists():
        return "absent", None
    return ("file", None) if path.is_file() else ("other", None)


def decide_conf_link(state: tuple[str, str | None], ours: Path, target_cluster_alive: bool) -> str:
    """'keep' (already ours), 'leave' (another live cluster's, or not a file) or 'claim'. Pure."""
    kind, target = state
    if kind == "symlink" and Path(target) == ours:
        return "keep"
    if (kind == "symlink" and target_cluster_alive) or kind == "other":
        return "leave"
    return "claim"


def conf_link_record(spec: ClusterSpec, state: tuple[str, str | None], backup_dir: Path) -> dict:
    """What claim_conf_link is about to do, as the record undo_conf_link reads; changes nothing."""
    kind, target = state
    if kind == "symlink":
        previous = {"symlink": target}
    elif kind == "file":
        previous = {"file": str(backup_dir / "slurm.conf")}
    else:
        previous = None
    return {"link": str(spec.paths.slurm_conf), "previous": previous,
            "created_dir": not SYSTEM_SLURM_CONF.parent.exists()}


def claim_conf_link(record: dict) -> None:
    """Point /etc/slurm/slurm.conf at this cluster, moving whatever was there as the record says."""
    previous = record["previous"] or {}
    if "symlink" in previous:
        SYSTEM_SLURM_CONF.unlink()
    elif "file" in previous:
        shutil.move(SYSTEM_SLURM_CONF, previous["file"])
    SYSTEM_SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SYSTEM_SLURM_CONF.symlink_to(record["link"])


def undo_conf_link(record: dict | None) -> str | None:
    """Put back what claim_conf_link replaced. Returns a note when the link was changed by someone else since."""
    if not record or "link" not in record:
        return None
    state = conf_link_state()
    if state != ("symlink", record["link"]):
        return f"{SYSTEM_SLURM_CONF} no longer points at {record['link']}; left as it is"
    SYSTEM_SLURM_CONF.unlink()
    previous = record.get("previous") or {}
    if "symlink" in previous:
        SYSTEM_SLURM_CONF.symlink_to(previous["symlink"])
    elif "file" in previous:
        shutil.move(previous["file"], SYSTEM_SLURM_CONF)
    elif record.get("created_dir"):
        try:
            SYSTEM_SLURM_CONF.parent.rmdir()
        except OSError:
            pass  # someone put files there since; it stays
    return None
