"""The config a run is saved and started with: every interpolation resolved once, every literal kept literal.

Resolving turns an escaped ``\\${X}`` (a literal the user wrote on purpose, e.g. ``cluster.setup=['export
A=\\${HOME}/x']``) into the bare text ``${X}``. Held in a new config, that text is an interpolation again: read,
saved or loaded, it would resolve to another key (``\\${seed}`` -> 42) or fail (``${HOME}``). So after resolving,
every ``${`` left in a string is escaped again; reading the value gives the literal, and a config saved with
``OmegaConf.to_yaml(cfg)`` (without resolve: nothing is left to resolve) loads back with the same literal.
"""

from __future__ import annotations

import os
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

# a run of backslashes (maybe none) before "${"
_BEFORE_INTERPOLATION = re.compile(r"(\\*)\$\{")


def escape_literal(text: str) -> str:
    """`text` as an OmegaConf string value that reads back as exactly `text`.

    OmegaConf reads 2n backslashes before ``${`` as n backslashes and an interpolation, 2n+1 as n backslashes and a
    literal ``${``; backslashes anywhere else are themselves. So n literal backslashes before a literal ``${``
    are written as 2n+1."""
    if "${" not in text:
        return text
    return _BEFORE_INTERPOLATION.sub(lambda m: "\\" * (2 * len(m.group(1)) + 1) + "${", text)


def _escaped(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _escaped(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_escaped(v) for v in node]
    return escape_literal(node) if isinstance(node, str) else node


def finalize(cfg: DictConfig) -> DictConfig:
    """Resolve every interpolation once, with the run folder made absolute: this is what gets saved and run."""
    resolved: dict = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    resolved["run_dir"] = os.path.abspath(resolved["run_dir"])
    return OmegaConf.create(_escaped(resolved))
