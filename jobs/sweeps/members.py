"""Building a sweep's members: every member's run folder, swept values, resolved config and config.yaml text.

Members are built from ONE composed config: Hydra composed the base (every override but the swept ones); it is
resolved once, and each member is that resolved config with its own swept values set (copy-on-write, a few dict
writes). Each distinct swept value is validated once against the structured config (a key that does not exist,
a value of the wrong type: an error before anything is written). Only a sweep over config groups
(trainer=ddp,deepspeed) composes again, once per distinct combination of groups; a swept key that another key
interpolates re-resolves those keys, once per distinct value. A member's config.yaml is the base's text, one
section per top-level key, with the sections it changed written anew (the same text OmegaConf.to_yaml writes).
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from cluster import adapters
from configs.keys import composition_error, missing_key
from configs.validate import FILE_KEYS, config_problems, file_problems
from jobs.sweeps.expansion import SweepError, Value, parse


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
    # swept key -> the axis its values were declared for (expansion.scale)
    scales: dict[str, str] = field(default_factory=dict)


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
    swept = parse([str(x) for x in config.hydra.overrides.task], config.resume)
    choices = dict(config.hydra.runtime.choices)
    groups = {k for k in swept.keys if k in choices}
    sweep_dir = os.path.abspath(str(config.hydra.sweep.dir))
    sid = str(config.sweep.id)

    combos: dict[tuple, _Combo] = {}
    members: list[MemberSpec] = []
    plan_configs: dict[tuple, dict] = {}
    bad: dict[str, list[int]] = {}
    files_checked: dict[str, list[str]] = {}
    for i, lines in enumerate(job_overrides):
        num = initial_job_idx + i
        mine = swept.values(lines)
        combo_key = tuple((v.key, v.value) for v in mine if v.key in groups)
        combo = combos.get(combo_key)
        if combo is None:
            combo = combos[combo_key] = _combo(config, config_loader, swept.common, combo_key, sid)
        run_dir = f"{sweep_dir}/{num}"
        try:
            member, changed = _member(combo, [v for v in mine if v.key not in groups])
        except SweepError as e:  # a value that cannot be set: the message names the value, not the member
            raise SweepError(e.problems) from None
        member["run_dir"] = run_dir
        member["run_id"] = f"sweep-{sid}-{num}"
        member["dry_run"] = False
        view = ConfigView(member)
        # the files and modules a member names (data files, task module, tracker package, container image):
        # checked once per distinct set of them, so a 10,000-member grid over the learning rate looks once
        files_key = repr([_lookup(member, k) for k in FILE_KEYS])
        if files_key not in files_checked:
            files_checked[files_key] = file_problems(view)
        for p in config_problems(view) + files_checked[files_key]:
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
        metric=str(config.sweep.metric), mode=str(config.sweep.mode), overrides=swept.lines, params=swept.keys,
        members=members, plan_configs=list(plan_configs.values()), scales=dict(swept.scales),
    )


def _combo(config: DictConfig, config_loader: Any, common: list[str], combo_key: tuple, sid: str) -> _Combo:
    if combo_key:
        from hydra.errors import HydraException

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


def _member(combo: _Combo, values: list[Value]) -> tuple[dict, set[str]]:
    """The combo's resolved config with these values set (copy-on-write); also the top-level keys changed."""
    member = dict(combo.resolved)
    changed: set[str] = set()
    dependent: list[Value] = []
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


def _validate(combo: _Combo, v: Value) -> Any:
    """The value as the schema converts it, checked as Hydra would check the override; SweepError if it cannot
    be set (a key that does not exist, a value of the wrong type)."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    probe, key, value = combo.probe, v.key, v.value
    simple = not (v.add or v.force_add) and not (isinstance(value, str) and "${" in value) \
        and not isinstance(value, (dict, list))
    try:
        if simple:
            if key not in combo.checkers:
                combo.checkers[key] = adapters.leaf_setter(probe, key)
            if combo.checkers[key] is not None:
                return combo.checkers[key](value)
        if v.add and OmegaConf.select(probe, key, throw_on_missing=False) is not None:
            raise SweepError([f"{v.line}: {key} already exists; drop the + to change it"])
        OmegaConf.update(probe, key, value, merge=True, force_add=v.add or v.force_add)
    except (ConfigAttributeError, ConfigKeyError):
        raise SweepError([missing_key(key, v.line)]) from None
    except OmegaConfBaseException as e:
        reason = str(e).splitlines()[0]
        raise SweepError([f"{v.line}: {reason}; give {key} values of the type the config declares "
                          "(zerorun --cfg job shows it)"]) from None
    got = OmegaConf.select(probe, key)
    return OmegaConf.to_container(got, resolve=True) if OmegaConf.is_config(got) else got


def _rederive(combo: _Combo, values: list[Value]) -> list[tuple[str, Any]]:
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

    base = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

    class Dumper(base):  # type: ignore[misc, valid-type]
        pass

    quotes = adapters.yaml_quoter()

    def represent_str(dumper: Any, data: str) -> Any:
        quoted = quotes(data)
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
