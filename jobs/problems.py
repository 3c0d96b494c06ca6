"""The one way a refusal is reported: a headline, one line per problem (each names its fix), exit status 2."""

from __future__ import annotations

from typing import Iterable, TextIO

# the exit status of a command refused before anything ran or was submitted
REFUSED = 2


def report(problems: Iterable[str], err: TextIO, what: str = "not submitted") -> int:
    items = list(dict.fromkeys(problems))
    err.write(f"zerorun: {what}:\n" + "".join(f"  - {p}\n" for p in items))
    return REFUSED
