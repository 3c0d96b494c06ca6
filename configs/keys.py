"""The keys the schema declares, and the messages that name them: a key that does not exist gets the nearest
valid one and the full list. Shared by the command line (a composition error) and the sweeper (a swept key that
does not exist). Pure standard library plus the schema.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing

CLI_HINT = "(zerorun --help lists the config groups and their options)"


def schema_keys(path: str) -> list[str]:
    """The keys the schema declares at a dotted path ("cluster" -> nodes, gpus_per_node, ...)."""
    from configs import schema

    node: object = schema.ZerorunConfig
    for part in filter(None, path.split(".")):
        hints = typing.get_type_hints(node) if dataclasses.is_dataclass(node) else {}
        node = hints.get(part)
    if not dataclasses.is_dataclass(node):
        return []
    return [f.name for f in dataclasses.fields(node)]


def near_keys(key: str) -> tuple[str, list[str]]:
    """("did you mean PARENT.NEAR? ", the valid keys of PARENT) for a dotted key; ("", []) when the schema does not
    declare PARENT."""
    parent, _, leaf = key.rpartition(".")
    valid = schema_keys(parent)
    near = difflib.get_close_matches(leaf, valid, n=1)
    return (f"did you mean {parent + '.' if parent else ''}{near[0]}? " if near else ""), valid


def composition_error(e: BaseException) -> str:
    """Hydra's message with its causes (the reason an override failed), plus the keys that do exist."""
    messages = []
    while e is not None and str(e) not in messages:
        messages.append(str(e))
        e = e.__cause__  # type: ignore[assignment]
    text = "\n".join(messages)
    site = re.search(r"Could not find '(?:/)?site/([^']+)'", text)
    if site:
        from configs.sites import unknown_site

        return unknown_site(site.group(1))
    m = re.search(r"Could not override '([\w.]+)'", text)
    if m:
        parent = m.group(1).rpartition(".")[0]
        hint, valid = near_keys(m.group(1))
        if valid:
            text += f"\n{hint}valid keys of {parent or 'the config'}: {', '.join(valid)}"
    return text + "\n" + CLI_HINT


def missing_key(key: str, line: str) -> str:
    """Why a swept key that the config does not have cannot run, with the nearest valid key and the fix."""
    parent = key.rpartition(".")[0]
    hint, valid = near_keys(key)
    keys = f"valid keys of {parent or 'the config'}: {', '.join(valid)}; " if valid else ""
    return (f"{line}: the config has no key {key!r}, so no member could run with it; {hint}{keys}"
            f"to add a new key to a free-form section write +{line}")
