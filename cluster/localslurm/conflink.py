"""/etc/slurm/slurm.conf while a local cluster runs: a symlink to the cluster's own slurm.conf, so a client without
$SLURM_CONF finds it instead of falling back to DNS SRV look-ups.

The machine's own slurm.conf, if it has one, is moved to one fixed place outside every state folder
(MACHINE_BACKUP_DIR), never overwritten there, and put back by whichever local cluster goes down last. Several
clusters may claim the link one after another (one dies in a reboot, another is started from another state folder):
each records what it replaced, and on `down` a link to a cluster that no longer runs is not restored, so the chain
always ends with the machine's own file back in place.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cluster.localslurm.config import MACHINE_BACKUP_DIR, SYSTEM_SLURM_CONF, LocalSlurmError
from cluster.localslurm.files import secure_folder
from trainer_core.durable import fsync_dir


@dataclass(frozen=True)
class Where:
    """The two paths this module touches; tests point them at a folder of their own."""

    conf: Path = SYSTEM_SLURM_CONF
    backup: Path = MACHINE_BACKUP_DIR / "slurm.conf"


def link_state(where: Where = Where()) -> tuple[str, str | None]:
    """('absent' | 'symlink' | 'file' | 'other', symlink target)."""
    if where.conf.is_symlink():
        return "symlink", os.readlink(where.conf)
    if not where.conf.exists():
        return "absent", None
    return ("file", None) if where.conf.is_file() else ("other", None)


def decide(state: tuple[str, str | None], ours: Path, target_cluster_alive: bool) -> str:
    """'keep' (already ours), 'leave' (another live cluster's, or not a file) or 'claim'. Pure."""
    kind, target = state
    if kind == "symlink" and Path(target) == ours:
        return "keep"
    if (kind == "symlink" and target_cluster_alive) or kind == "other":
        return "leave"
    return "claim"


def cluster_state_dir(link_target: str) -> Path | None:
    """The state folder of the local cluster a link target belongs to (<state>/etc/slurm.conf), if it is one."""
    target = Path(link_target)
    if target.name == "slurm.conf" and target.parent.name == "etc":
        state = target.parent.parent
        if (state / "cluster.json").exists():
            return state
    return None


def plan_claim(ours: Path, state: tuple[str, str | None], where: Where = Where()) -> dict:
    """The record `undo` reads, for what `claim` is about to do; changes nothing. Refuses to plan moving the
    machine's file onto a backup that is already there."""
    kind, target = state
    previous: dict | None = None
    if kind == "symlink":
        previous = {"symlink": target}
    elif kind == "file":
        if os.path.lexists(where.backup):
            raise LocalSlurmError(
                f"{where.conf} is a file, and {where.backup} already holds a slurm.conf that an earlier local cluster"
                f" moved aside; it is not overwritten. Keep the one this machine needs at {where.conf} (compare them"
                f" with `diff {where.backup} {where.conf}`), delete the other, then run `zerorun cluster up` again"
            )
        previous = {"machine_file": str(where.backup)}
    return {"link": str(ours), "previous": previous, "created_dir": not where.conf.parent.exists()}


def claim(record: dict, where: Where = Where()) -> None:
    """Point the system slurm.conf at this cluster, moving whatever was there as the record says."""
    previous = record["previous"] or {}
    if "symlink" in previous:
        where.conf.unlink()
    elif "machine_file" in previous:
        secure_folder(where.backup.parent, 0o700, what="backup folder")
        if os.path.lexists(where.backup):
            raise LocalSlurmError(f"{where.backup} appeared meanwhile; not overwritten. Run `zerorun cluster up` again")
        _move(where.conf, where.backup)
    where.conf.parent.mkdir(parents=True, exist_ok=True)
    where.conf.symlink_to(record["link"])


def undo(record: dict | None, alive: Callable[[Path], bool], where: Where = Where()) -> str | None:
    """Put back what `claim` replaced. A link to another local cluster is put back only while that cluster runs;
    otherwise the machine's own file comes back if one was saved. Returns a note when the link was changed by
    someone else since (then nothing is touched)."""
    if not record or "link" not in record:
        return None
    if link_state(where) != ("symlink", record["link"]):
        return f"{where.conf} no longer points at {record['link']}; left as it is"
    where.conf.unlink()
    previous = record.get("previous") or {}
    link = previous.get("symlink")
    if link:
        other = cluster_state_dir(link)
        if other is None or alive(other):
            where.conf.symlink_to(link)
            return None
    # "file": where records written before the fixed backup place kept it, inside their own state folder.
    for backup in (where.backup, previous.get("file")):
        if backup and _is_root_file(Path(backup)):
            _move(Path(backup), where.conf)
            return None
    if record.get("created_dir"):
        try:
            where.conf.parent.rmdir()
        except OSError:
            pass  # someone put files there since; it stays
    return None


def _is_root_file(path: Path) -> bool:
    """A regular file that root owns, as the backups `claim` makes are; a link or a user's file is never moved."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == 0


def _move(src: Path, dst: Path) -> None:
    # Same file system: an atomic rename. Otherwise (/var on its own disk) copy with metadata, then remove.
    try:
        os.rename(src, dst)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)
        src.unlink()
    fsync_dir(dst.parent)
