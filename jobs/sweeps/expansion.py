"""From the command line's overrides to every member's overrides, and each swept value typed.

`zerorun -m optimizer.lr=1e-4,3e-4 seed=1,2,3`: the sweeper parses the overrides once and expands the grid
(Hydra's basic sweeper's own expansion, without its per-member composition), and gives the sweep its id
(sweep.id, else a hash of the overrides, so the same command finds the same sweep folder). The launcher then
reads each member's lines back through `Swept`: the typed value of every line the expansion wrote, so members
need no parsing of their own. Keys a sweep may not vary are refused here, each with its fix.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from cluster import adapters

# overrides that do not change what a sweep is: left out of the sweep id
ID_NEUTRAL_KEYS = ("dry_run", "sweep.resubmit", "sweep.parallelism")
SWEEP_ID_LEN = 10


class SweepError(ValueError):
    """The sweep cannot be planned; every problem names its fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("the sweep cannot run:\n" + "".join(f"  - {p}\n" for p in problems))


def sweep_id(arguments: Sequence[str]) -> str:
    """A short hash of the command line's overrides, order-insensitive, leaving out ID_NEUTRAL_KEYS."""
    kept = sorted(a for a in arguments if a.lstrip("+~").split("=", 1)[0] not in ID_NEUTRAL_KEYS)
    digest = hashlib.sha256("\n".join(kept).encode()).hexdigest()[:SWEEP_ID_LEN]
    # never a number to a YAML or override parser ("29e7043048" reads as a float, inf): start with a letter
    return "abcdef"[int(digest[0], 16) % 6] + digest[1:]


def expand(config: Any, config_loader: Any, arguments: list[str]) -> list[list[str]]:
    """Every member's overrides (Hydra's own grid expansion), after giving the sweep its id; raises SweepError."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = OverridesParser.create(config_loader=config_loader).parse_overrides(arguments)
    problems = [f"{o.input_line}: a grid sweep takes a list of values (KEY=A,B,C, KEY=range(1,4) or "
                f"KEY=choice(A,B)); {o.value_type.name if o.value_type else 'this'} sweeps are for optimizing "
                "sweepers" for o in overrides if o.is_sweep_override() and not o.is_discrete_sweep()]
    if problems:
        raise SweepError(problems)
    if not any(o.is_sweep_override() for o in overrides):
        raise SweepError(["-m/--multirun without a swept key (KEY=A,B): there is nothing to sweep; drop -m to run "
                          "one job, or give a key several values"])
    if config.sweep.id is None:
        config.sweep.id = sweep_id(arguments)
    members = adapters.grid(overrides)
    if not members:
        raise SweepError(["the sweep has no members: a swept key has no values (e.g. seed=range(0,0)); give every "
                          "swept key at least one value"])
    return members


def refused(key: str, line: str) -> Optional[str]:
    """Why a key may not vary inside a sweep, with the fix; None when it may."""
    if key == "cluster" or key.startswith("cluster."):
        return (f"{line}: the members of a sweep share one job geometry and one batch script, so cluster.* "
                "cannot vary inside a sweep; run one sweep per value (zerorun -m ... cluster.X=A, then cluster.X=B)")
    if key in ("name", "run_dir", "run_id"):
        return f"{line}: {key} names the sweep's folders and takes one value; sweep other keys (sweep.id names a sweep)"
    if key == "resume":
        return f"{line}: resume cannot be swept; a sweep's members resume with zerorun resubmit SWEEP_DIR --failed"
    if key == "dry_run":
        return f"{line}: dry_run is not a sweep parameter; give it one value (dry_run=true) to see the sweep"
    if key == "sweep" or key.startswith("sweep."):
        return f"{line}: {key} configures the sweep itself and takes one value"
    return None


@dataclass(frozen=True)
class Value:
    """One value of a swept key, as a member's override line names it."""

    key: str
    value: Any
    line: str
    add: bool = False
    force_add: bool = False


@dataclass
class Swept:
    """The command line's overrides, parsed once: which keys are swept, the lines every member shares, and the
    typed value of every line the grid expansion writes."""

    # the command line's override lines, as typed
    lines: list[str]
    # the swept keys, in command-line order
    keys: list[str]
    # the lines that are not sweeps (every member has them)
    common: list[str]
    # swept key -> the axis its values were declared for (`scale`)
    scales: dict[str, str] = field(default_factory=dict)
    # override line -> its value
    known: dict[str, Value] = field(default_factory=dict)
    # lines seen that are not swept values (another sweeper's, or a common override)
    skipped: set[str] = field(default_factory=set)
    parser: Any = None

    def values(self, member_lines: Sequence[str]) -> list[Value]:
        """A member's swept values, from the lines the expansion (or another sweeper) gave it."""
        mine = []
        for line in member_lines:
            v = self.known.get(line)
            if v is None and line not in self.skipped:
                o = self.parser.parse_overrides([line])[0]
                if o.key_or_group in self.keys:
                    v = self.known[line] = Value(o.key_or_group, o.value(), line, o.is_add(), o.is_force_add())
                else:
                    self.skipped.add(line)
            if v is not None:
                mine.append(v)
        return mine


def scale(override: Any) -> str:
    """The axis a swept key was declared for: "log" (tagged: tag(log, ...)), "linear" (range(...), or tagged
    linear), else "auto" (a list of values or choice(...): the report decides from the values)."""
    from hydra.core.override_parser.types import ValueType

    tags = getattr(override.value(), "tags", None) or set()
    if "log" in tags:
        return "log"
    if "linear" in tags or override.value_type == ValueType.RANGE_SWEEP:
        return "linear"
    return "auto"


def parse(task_lines: list[str], resume: Any = None) -> Swept:
    """The command line's overrides as a sweep; raises SweepError for a key that may not vary (or a resume)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(task_lines)
    swept = [o for o in parsed if o.is_sweep_override()]
    problems = [p for o in swept if (p := refused(o.key_or_group, o.input_line))]
    problems += [f"{o.input_line}: a sweep cannot delete a key; delete it for every member (~KEY, no values)"
                 for o in swept if o.is_delete()]
    if resume:
        problems.append(f"resume={resume} with -m: a sweep starts new runs; its members resume with "
                        "zerorun resubmit SWEEP_DIR --failed")
    if problems:
        raise SweepError(problems)
    known = {}
    for o in swept:
        if o.is_discrete_sweep():
            head = o.get_key_element()
            for v in o.sweep_iterator():
                line = f"{head}={adapters.value_text(v)}"
                known[line] = Value(o.key_or_group, adapters.plain_value(v), line, o.is_add(), o.is_force_add())
    return Swept(lines=task_lines, keys=list(dict.fromkeys(o.key_or_group for o in swept)),
                 common=[line for o, line in zip(parsed, task_lines) if not o.is_sweep_override()],
                 scales={o.key_or_group: scale(o) for o in swept}, known=known, parser=parser)
