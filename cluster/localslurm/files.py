"""Root writing in a folder a user may have named, without being led by a link onto a system file.

`up` and `down` run as root and write configs, the munge key, pid records and logs in the state folder, and move
the machine's /etc/slurm/slurm.conf aside. If the state folder, or any folder above it, belonged to a user or let
others write, that user could swap a folder for a symbolic link between our check and our write and have root
overwrite any file. So, as root:

- every folder from / down to the one we write in must be a real folder (not a link), owned by root and writable
  by root alone, or sticky like /tmp (others may not rename what root made there); missing ones are created one
  at a time, by root, and checked again;
- files are replaced with write_atomic (a rename replaces a link at the target instead of following it) or opened
  with O_NOFOLLOW.

As another user nothing is checked: such a user writes nothing but its own files (`status` only reads).
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from pathlib import Path

from cluster.localslurm.config import SHARED_STATE_DIR, STATE_DIR_ENV, LocalSlurmError

__all__ = ["open_append", "open_lock", "secure_folder", "unsafe_folder_reason"]


def unsafe_folder_reason(st: os.stat_result) -> str | None:
    """Why root must not write in a folder with this lstat() result, or None."""
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "not a folder"
    if st.st_uid != 0:
        return f"owned by {_user(st.st_uid)}, not by root"
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        return f"writable by others than root (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def secure_folder(folder: Path, mode: int = 0o755, *, what: str = "state folder") -> Path:
    """Check (as root) that `folder` and every folder above it are safe to write in, creating the missing ones
    (`folder` itself with `mode`, those above it with 0o755). Returns the folder. Raises LocalSlurmError naming
    the folder at fault and the fix."""
    folder = Path(os.path.abspath(folder))
    if os.geteuid() != 0:
        folder.mkdir(mode=mode, parents=True, exist_ok=True)
        return folder
    step = Path(folder.anchor)
    for part in (None, *folder.parts[1:]):
        step = step / part if part else step
        try:
            st = os.lstat(step)
        except FileNotFoundError:
            os.mkdir(step, mode if step == folder else 0o755)
            st = os.lstat(step)
        reason = unsafe_folder_reason(st)
        if reason:
            hint = "remove the link and run again, or pick another --state-dir" if reason == "a symbolic link" \
                else "pick another --state-dir"
            raise LocalSlurmError(
                f"{what} {folder}: {step} is {reason}. `zerorun cluster` runs as root and writes configs, keys and"
                f" backups there, so whoever can change {step} could plant a link and have root overwrite a system"
                f" file. {hint.capitalize()}: one that root owns and only root can write, all the way from /, such"
                f" as `--state-dir {SHARED_STATE_DIR}` (or ${STATE_DIR_ENV})."
            )
    return folder


def open_append(path: Path):
    """A log file opened for appending, never through a link planted in its place."""
    return os.fdopen(_open_no_link(path, os.O_WRONLY | os.O_APPEND), "ab")


def open_lock(path: Path):
    return os.fdopen(_open_no_link(path, os.O_RDWR), "r+b")


def _open_no_link(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise LocalSlurmError(f"{path} is a symbolic link; root does not write through links in the state folder."
                              f" Remove it (`rm {path}`) and run again") from e


def _user(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name!r}"
    except KeyError:
        return f"uid {uid}"
