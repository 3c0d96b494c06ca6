"""The one way this project writes a file that must be whole or absent: write a temporary file beside it, fsync
it, rename it over the target, fsync the folder. Every writer of records, configs, scripts and checkpoints
metadata uses it, so a crash at any moment leaves either the old file or the new one, never a torn one.

Pure standard library: the submission side uses it as well as the ranks.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

Text = Union[str, bytes]


def fsync_dir(path: Union[str, os.PathLike]) -> None:
    """Make a rename or a new entry in `path` durable (POSIX: the folder's own entry list is fsynced)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Union[str, os.PathLike], data: Text, mode: int = 0o600) -> Path:
    """Write `data` to `path` atomically and durably; the file gets `mode` (owner-only by default)."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def append_line(path: Union[str, os.PathLike], line: str, mode: int = 0o600) -> None:
    """Append one line with a single write (a kill leaves whole lines; a torn last line is the reader's to skip)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode())
    finally:
        os.close(fd)


def fsync_tree(root: Union[str, os.PathLike]) -> None:
    """fsync every file and folder below `root` (a checkpoint written by other code, before it is published)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)
