"""Where site profiles are found: the user's own folder first, then the examples shipped with zerorun.

A site profile is a small config of the `site` group (`site=NAME`): `NAME.yaml` in the user's folder
($ZERORUN_SITES, default ~/.config/zerorun/sites) or in the package (configs/site/). It sets cluster.* keys
(account, partition, QOS, constraint, the GPU spelling, setup lines, variables passed by name, a container).
`zerorun site probe NAME` keeps what the cluster said beside it, in the user's folder: `NAME.probe.yaml`.
Hydra reads profiles through hydra_plugins/zerorun_sites (a config source), which uses this module.

Standard library only: imported while Hydra composes a config.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

SITES_ENV = "ZERORUN_SITES"
DEFAULT_FOLDER = "~/.config/zerorun/sites"
GROUP = "site"
PROBE_SUFFIX = ".probe.yaml"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def user_folder() -> Path:
    """The user's site folder: $ZERORUN_SITES, else ~/.config/zerorun/sites (it need not exist)."""
    return Path(os.environ.get(SITES_ENV) or DEFAULT_FOLDER).expanduser()


def shipped_folder() -> Path:
    """The examples shipped with zerorun (configs/site/)."""
    return Path(__file__).resolve().parent / GROUP


def folders() -> list[tuple[str, Path]]:
    """(what, folder) in the order a name is looked up."""
    return [(f"yours (${SITES_ENV}, default {DEFAULT_FOLDER})", user_folder()), ("shipped with zerorun", shipped_folder())]


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name)) and not name.endswith(PROBE_SUFFIX[: -len(".yaml")])


def _profiles(folder: Path) -> dict[str, Path]:
    try:
        files = sorted(folder.iterdir())
    except OSError:
        return {}
    return {p.name[: -len(".yaml")]: p for p in files
            if p.is_file() and p.name.endswith(".yaml") and not p.name.endswith(PROBE_SUFFIX)}


def profiles() -> dict[str, Path]:
    """name -> its profile file; a name in the user's folder hides a shipped one."""
    found: dict[str, Path] = {}
    for _, folder in reversed(folders()):
        found.update(_profiles(folder))
    return dict(sorted(found.items()))


def find(name: str) -> Optional[Path]:
    """The profile file of site `name`, or None."""
    if not valid_name(name):
        return None
    for _, folder in folders():
        path = folder / f"{name}.yaml"
        if path.is_file():
            return path
    return None


def probe_path(name: str) -> Path:
    """Where the probe of site `name` is kept: always in the user's folder (a shipped profile can be probed too)."""
    return user_folder() / f"{name}{PROBE_SUFFIX}"


def unknown_site(name: str) -> str:
    """Why `site=NAME` cannot be used: the sites found, and where they were looked for."""
    found = profiles()
    where = "; ".join(f"{what}: {folder}" for what, folder in folders())
    return (f"site={name}: no site profile {name}.yaml was found. Sites found: {', '.join(found) or '(none)'}. "
            f"Looked in {where}. Write {user_folder() / (name + '.yaml')} (copy one with `zerorun site show NAME`; "
            f"docs/sites.md), or set {SITES_ENV} to the folder that holds it.")
