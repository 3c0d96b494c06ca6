"""What zerorun's Hydra sweeper and launcher do (hydra_plugins/zerorun_launcher holds the classes Hydra sees).

`zerorun -m optimizer.lr=1e-4,3e-4 seed=1,2,3 cluster=slurm`:

1. `sweep()`: parse the command line's overrides once, expand the grid (Hydra's basic sweeper's own expansion,
   without its per-member composition), give the sweep its id (sweep.id, else a hash of the overrides, so the
   same command finds the same sweep folder), and hand every member to the launcher in one batch.
2. `launch()`: members are built from ONE composed config: Hydra composed the base (every override but the
   swept ones); it is resolved once, and each member is that resolved config with its own swept values set
   (copy-on-write, a few dict writes). Each distinct swept value is validated once against the structured
   config (a key that does not exist, a value of the wrong type: an error before anything is written). Only a
   sweep over config groups (trainer=ddp,deepspeed) composes again, once per distinct combination of groups;
   a swept key that another key interpolates re-resolves those keys, once per distinct value.
3. jobs/sweep.py writes the member run folders and the record and submits job arrays (or runs the members
   here, or prints the dry run).

Returns as soon as the arrays are queued: Hydra's JobReturn of each member carries its array task
("ARRAYJOB_TASK"), not a result; `zerorun status SWEEP_DIR` follows them.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

# overrides that do not change what a sweep is: left out of the sweep id
ID_NEUTRAL_KEYS = ("dry_run", "sweep.resubmit", "sweep.parallelism")
SWEEP_ID_LEN = 10


class SweepError(ValueError):
    """The sweep cannot be planned; every problem names its fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("the sweep cannot run:\n" + "".join(f"  - {p}\n" for p in problems))


@dataclass
class MemberSpec:
    num: int
    run_dir: str
    # the swept overrides as Hydra wrote them, and their values
    overrides: tuple[str, ...]
    params: dict[str, Any]
    # the member's resolved config (shares unchanged sub-dicts with the base)
    config: dict
    # the base's config.yaml, one text per top-level key, and the top-level keys this member changed
    sections: dict[str, str]
    changed: frozenset[str]

    @property
    def yaml(self) -> str:
        """The member's config.yaml: the base's sections, with the changed ones written anew."""
        return "".join(_section(k, v) if k in self.changed else self.sections[k] for k, v in self.config.items())


@dataclass
class BuiltSweep:
    sweep_id: str
    sweep_dir: str
    name: str
    backend: str
    dry_run: bool
    parallelism: int
    resubmit: str
    metric: str
    mode: str
    # the command line's overrides and the swept keys, in order
    overrides: list[str]
    params: list[str]
    members: list[MemberSpec]
    # one member config per distinct plan (geometry is shared; the strategy may differ with a group sweep)
    plan_configs: list[dict] = field(default_factory=list)


class ConfigView(dict):
    """Attribute access over a plain config dict: what configs.validate and cluster.plan read, without building
    an OmegaConf node per member."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            value = self[name]
        except KeyError:
            raise AttributeError(name) from None
        return ConfigView(value) if isinstance(value, dict) else value


# ---- the sweeper ----------------------------------------------------------------------------------------------

def sweep_id(arguments: Sequence[str]) -> str:
    """A short hash of the command line's overrides, order-insensitive, leaving out ID_NEUTRAL_KEYS."""
    kept = sorted(a for a in arguments if a.lstrip("+~").split("=", 1)[0] not in ID_NEUTRAL_KEYS)
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()[:SWEEP_ID_LEN]


def expand(config: DictConfig, config_loader: Any, arguments: list[str]) -> list[list[str]]:
    """Every member's overrides (Hydra's own grid expansion), after giving the sweep its id; raises SweepError."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
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
    members = BasicSweeper.split_arguments(overrides, None)[0]
    if not members:
        raise SweepError(["the sweep has no members: a swept key has no values (e.g. seed=range(0,0)); give every "
                          "swept key at least one value"])
    return members


def sweep(config: DictConfig, hydra_context: Any, launcher: Any, arguments: list[str]) -> Any:
    """Expand the sweep and launch every member in one batch (the body of ZerorunSweeper.sweep)."""
    try:
        members = expand(config, hydra_context.config_loader, arguments)
    except SweepError as e:
        _exit(e.problems)
    return launcher.launch(members, initial_job_idx=0)


def _exit(problems: list[str], code: int = 2) -> None:
    sys.stderr.write("zerorun: the sweep cannot run (nothing was submitted):\n"
                     + "".join(f"  - {p}\n" for p in problems))
    sys.exit(code)


# ---- the launcher ---------------------------------------------------------------------------------------------

def launch(config: DictConfig, hydra_context: Any, job_overrides: Sequence[Sequence[str]],
           initial_job_idx: int) -> list[Any]:
    """Build the members, then dry-run, submit or run them (the body of ZerorunLauncher.launch)."""
    from hydra.core.utils import JobReturn, JobStatus

    from jobs import sweep as sweeps

    try:
        built = build(config, hydra_context.config_loader, job_overrides, initial_job_idx)
    except SweepError as e:
        _exit(e.problems)
    rc, jobs = sweeps.run(built)
    if rc:
        sys.exit(rc)
    returns = []
    for m in built.members:
        r = JobReturn(overrides=list(m.overrides), cfg=None, hydra_cfg=None, working_dir=m.run_dir,
                      task_name="zerorun", status=JobStatus.COMPLETED)
        r._return_value = jobs.get(m.num)  # the array task that runs it; None for a dry run
        returns.append(r)
    return returns


# keys a sweep may not vary, and why (with the fix)
def _refused(key: str, line: str) -> Optional[str]:
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
class _Value:
    """One value of a swept key, as a member's override line names it."""

    key: str
    value: Any
    line: str
    add: bool = False
    force_add: bool = False


def _values(parsed: list[Any]) -> dict[str, _Value]:
    """line -> typed value for every value of every sweep override: the lines Hydra's grid expansion writes
    (`KEY=VALUE_AS_STR`), so members need no parsing of their own."""
    from hydra.core.override_parser.types import Override

    known = {}
    for o in parsed:
        if o.is_sweep_override() and o.is_discrete_sweep():
            head = o.get_key_element()
            for v in o.sweep_iterator():
                line = f"{head}={Override._get_value_element_as_str(v)}"
                known[line] = _Value(o.key_or_group, Override._convert_value(v), line, o.is_add(), o.is_force_add())
    return known


@dataclass
class _Combo:
    """A base for members: the composed config of one combination of swept config groups."""

    cfg: DictConfig
    probe: DictConfig
    resolved: dict
    sections: dict[str, str]
    # (dotted path, text) of every value that interpolates another
    interpolations: list[tuple[str, str]]
    validated: dict[str, Any] = field(default_factory=dict)
    derived: dict[tuple[str, ...], list[tuple[str, Any]]] = field(default_factory=dict)
    # key -> a function that validates and converts a value for it (None: use OmegaConf.update)
    checkers: dict[str, Any] = field(default_factory=dict)


_UNSET = object()


def build(config: DictConfig, config_loader: Any, job_overrides: Sequence[Sequence[str]],
          initial_job_idx: int = 0) -> BuiltSweep:
    """Every member's run folder, swept values, resolved config and config.yaml; raises SweepError."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from configs.validate import config_problems

    parser = OverridesParser.create()
    task_lines = [str(x) for x in config.hydra.overrides.task]
    parsed = parser.parse_overrides(task_lines)
    swept = list(dict.fromkeys(o.key_or_group for o in parsed if o.is_sweep_override()))
    problems = [p for o in parsed if o.is_sweep_override() and (p := _refused(o.key_or_group, o.input_line))]
    problems += [f"{o.input_line}: a sweep cannot delete a key; delete it for every member (~KEY, no values)"
                 for o in parsed if o.is_sweep_override() and o.is_delete()]
    if config.resume:
        problems.append(f"resume={config.resume} with -m: a sweep starts new runs; its members resume with "
                        "zerorun resubmit SWEEP_DIR --failed")
    if problems:
        raise SweepError(problems)
    swept_set = set(swept)
    choices = dict(config.hydra.runtime.choices)
    groups = {k for k in swept if k in choices}
    common = [line for o, line in zip(parsed, task_lines) if not o.is_sweep_override()]
    sweep_dir = os.path.abspath(str(config.hydra.sweep.dir))
    sid = str(config.sweep.id)

    known = _values(parsed)
    skipped: set[str] = set()
    combos: dict[tuple, _Combo] = {}
    members: list[MemberSpec] = []
    plan_configs: dict[tuple, dict] = {}
    bad: dict[str, list[int]] = {}
    for i, lines in enumerate(job_overrides):
        num = initial_job_idx + i
        mine: list[_Value] = []
        for line in lines:
            v = known.get(line)
            if v is None and line not in skipped:
                # a line this sweeper did not write (another sweeper's), or an override common to all members
                o = parser.parse_overrides([line])[0]
                if o.key_or_group in swept_set:
                    v = known[line] = _Value(o.key_or_group, o.value(), line, o.is_add(), o.is_force_add())
                else:
                    skipped.add(line)
            if v is not None:
                mine.append(v)
        combo_key = tuple((v.key, v.value) for v in mine if v.key in groups)
        combo = combos.get(combo_key)
        if combo is None:
            combo = combos[combo_key] = _combo(config, config_loader, common, combo_key, sid)
        run_dir = f"{sweep_dir}/{num}"
        try:
            member, changed = _member(combo, [v for v in mine if v.key not in groups])
        except SweepError as e:  # a value that cannot be set: the message names the value, not the member
            raise SweepError(e.problems) from None
        member["run_dir"] = run_dir
        member["run_id"] = f"sweep-{sid}-{num}"
        member["dry_run"] = False
        for p in config_problems(ConfigView(member)):
            bad.setdefault(p, []).append(num)
        plan_configs.setdefault((combo_key, member["trainer"]["strategy"]["name"]), member)
        members.append(MemberSpec(num, run_dir, tuple(v.line for v in mine),
                                  {v.key: _plain(v.value) if v.key in groups else _lookup(member, v.key) for v in mine},
                                  member, combo.sections, frozenset(changed | {"run_dir", "run_id", "dry_run"})))
    if bad:
        raise SweepError([f"members {_ranges(nums)}: {p}" for p, nums in bad.items()])
    return BuiltSweep(
        sweep_id=sid, sweep_dir=sweep_dir, name=str(config.name), backend=str(config.cluster.backend),
        dry_run=bool(config.dry_run), parallelism=int(config.sweep.parallelism), resubmit=str(config.sweep.resubmit),
        metric=str(config.sweep.metric), mode=str(config.sweep.mode), overrides=task_lines, params=swept,
        members=members, plan_configs=list(plan_configs.values()),
    )


def _combo(config: DictConfig, config_loader: Any, common: list[str], combo_key: tuple, sid: str) -> _Combo:
    if combo_key:
        from hydra.errors import HydraException

        from jobs.cli import composition_error

        lines = [*common, *(f"{k}={v}" for k, v in combo_key)]
        try:
            cfg = config_loader.load_sweep_config(config, lines)
        except HydraException as e:
            raise SweepError([composition_error(e)]) from None
        cfg.sweep.id = sid
    else:
        cfg = config
    resolved = {}
    for k in cfg:
        if k == "hydra":
            continue
        v = cfg[k]
        resolved[k] = OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
    raw = {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"}
    return _Combo(cfg=cfg, probe=copy.deepcopy(cfg), resolved=resolved,
                  sections={k: _section(k, v) for k, v in resolved.items()},
                  interpolations=list(_interpolations(raw, "")))


def _interpolations(node: Any, prefix: str):  # type: ignore[no-untyped-def]
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _interpolations(v, f"{prefix}{k}.")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _interpolations(v, f"{prefix}{i}.")
    elif isinstance(node, str) and "${" in node:
        yield prefix[:-1], node


def _member(combo: _Combo, values: list[_Value]) -> tuple[dict, set[str]]:
    """The combo's resolved config with these values set (copy-on-write); also the top-level keys changed."""
    member = dict(combo.resolved)
    changed: set[str] = set()
    dependent: list[_Value] = []
    for v in values:
        value = combo.validated.get(v.line, _UNSET)
        if value is _UNSET:
            value = combo.validated[v.line] = _validate(combo, v)
        _set(member, v.key, value)
        changed.add(v.key.split(".")[0])
        leaf = re.escape(v.key.split(".")[-1])
        if any(re.search(rf"\b{leaf}\b", text) for _, text in combo.interpolations):
            dependent.append(v)
    if dependent:
        key = tuple(v.line for v in dependent)
        if key not in combo.derived:
            combo.derived[key] = _rederive(combo, dependent)
        for path, value in combo.derived[key]:
            _set(member, path, value)
            changed.add(path.split(".")[0])
    return member, changed


def _checker(probe: DictConfig, key: str) -> Any:
    """A validate-and-convert function for a leaf value node that exists, as its type declares (what
    OmegaConf.update does there, without walking the config each time); None for anything else."""
    from omegaconf import ValueNode

    parent_path, _, leaf = key.rpartition(".")
    try:
        parent = OmegaConf.select(probe, parent_path) if parent_path else probe
        node = parent._get_node(leaf) if isinstance(parent, DictConfig) else None
    except Exception:  # a missing parent: the slow path says why
        return None
    if not isinstance(node, ValueNode):
        return None

    def check(value: Any) -> Any:
        node._set_value(value)
        return node._value()

    return check


def _validate(combo: _Combo, v: _Value) -> Any:
    """The value as the schema converts it, checked as Hydra would check the override; SweepError if it cannot
    be set (a key that does not exist, a value of the wrong type)."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    probe, key, value = combo.probe, v.key, v.value
    simple = not (v.add or v.force_add) and not (isinstance(value, str) and "${" in value) \
        and not isinstance(value, (dict, list))
    try:
        if simple:
            if key not in combo.checkers:
                combo.checkers[key] = _checker(probe, key)
            if combo.checkers[key] is not None:
                return combo.checkers[key](value)
        if v.add and OmegaConf.select(probe, key, throw_on_missing=False) is not None:
            raise SweepError([f"{v.line}: {key} already exists; drop the + to change it"])
        OmegaConf.update(probe, key, value, merge=True, force_add=v.add or v.force_add)
    except (ConfigAttributeError, ConfigKeyError):
        raise SweepError([_missing_key(key, v.line)]) from None
    except OmegaConfBaseException as e:
        reason = str(e).splitlines()[0]
        raise SweepError([f"{v.line}: {reason}; give {key} values of the type the config declares "
                          "(zerorun --cfg job shows it)"]) from None
    got = OmegaConf.select(probe, key)
    return OmegaConf.to_container(got, resolve=True) if OmegaConf.is_config(got) else got


def _missing_key(key: str, line: str) -> str:
    from jobs.cli import schema_keys

    parent, _, leaf = key.rpartition(".")
    valid = schema_keys(parent)
    near = difflib.get_close_matches(leaf, valid, n=1)
    hint = f"did you mean {parent + '.' if parent else ''}{near[0]}? " if near else ""
    keys = f"valid keys of {parent or 'the config'}: {', '.join(valid)}; " if valid else ""
    return (f"{line}: the config has no key {key!r}, so no member could run with it; {hint}{keys}"
            f"to add a new key to a free-form section write +{line}")


def _rederive(combo: _Combo, values: list[_Value]) -> list[tuple[str, Any]]:
    """The values of the interpolations that read any of these keys, resolved with the members' values."""
    cfg = copy.deepcopy(combo.cfg)
    for v in values:
        OmegaConf.update(cfg, v.key, combo.validated[v.line], merge=True, force_add=v.add or v.force_add)
    out = []
    for path, _ in combo.interpolations:
        if path in ("run_dir", "run_id"):
            continue  # set per member
        value = OmegaConf.select(cfg, path)
        value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        if value != _lookup(combo.resolved, path):
            out.append((path, value))
    return out


def _set(root: dict, path: str, value: Any) -> None:
    """Set a dotted path, copying each container on the way (the base's are shared and never changed)."""
    parts = path.split(".")
    node: Any = root
    for p in parts[:-1]:
        at = int(p) if isinstance(node, list) else p
        child = node[at]
        child = list(child) if isinstance(child, list) else dict(child)
        node[at] = child
        node = child
    node[int(parts[-1]) if isinstance(node, list) else parts[-1]] = value


def _lookup(root: Any, path: str) -> Any:
    node = root
    for p in path.split("."):
        node = node[int(p)] if isinstance(node, list) else node.get(p)
        if node is None:
            return None
    return node


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def _ranges(nums: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    out, start = [], None
    for i, n in enumerate(nums):
        if start is None:
            start = n
        if i + 1 == len(nums) or nums[i + 1] != n + 1:
            out.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(out)


# ---- config.yaml, fast --------------------------------------------------------------------------------------

def _dumper() -> type:
    """PyYAML's C emitter with OmegaConf's quoting of strings that would read back as another type, so the text
    is what OmegaConf.to_yaml writes (a test compares them), ~15x faster."""
    import yaml
    from omegaconf._utils import is_float, is_int, yaml_is_bool

    base = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

    class Dumper(base):  # type: ignore[misc, valid-type]
        pass

    def represent_str(dumper: Any, data: str) -> Any:
        quoted = yaml_is_bool(data) or is_int(data) or is_float(data)
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="'" if quoted else None)

    Dumper.add_representer(str, represent_str)
    return Dumper


_DUMPER: Optional[type] = None


def _section(key: str, value: Any) -> str:
    """One top-level key of config.yaml; a config is the concatenation of its sections in order."""
    import yaml

    global _DUMPER
    if _DUMPER is None:
        _DUMPER = _dumper()
    return yaml.dump({key: value}, Dumper=_DUMPER, sort_keys=False, allow_unicode=True)
