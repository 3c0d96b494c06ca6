"""A site's probe: what the cluster said once (`zerorun site probe NAME`), kept beside the profile, and read at
every submission instead of asking Slurm again.

`probe(name)` asks (the only function here with side effects on Slurm's side: read-only queries): the Slurm
version (`scontrol --version`), the partitions with MaxTime, MaxNodes, DefaultTime and whether each is the
default (`scontrol show partition -o`), their nodes with CPUs, memory and GRES (`sinfo -N`), MaxArraySize and
MaxJobCount (`scontrol show config`), and where accounting shows them, the QOS limits (`sacctmgr show qos`) and
the user's association limits (`sacctmgr show assoc`). The parsers are pure. The answer is a frozen `SiteProbe`,
written as YAML (`NAME.probe.yaml` in the user's site folder, atomically) and read back with `load`.

`facts(probe)` and `limits(probe, plan)` turn it into what the preflight and the sweep size check read
(cluster.preflight.ClusterFacts, cluster.slurm.ClusterLimits), quoting the probe as their source.
"""

from __future__ import annotations

import dataclasses
import getpass
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from cluster import preflight, slurm
from cluster.preflight import ClusterFacts, NodeFacts, QosLimits
from configs import sites

FORMAT_VERSION = 1
QOS_FIELDS = "Name,MaxWall,MaxJobsPU,MaxSubmitPU"
ASSOC_FIELDS = "Account,Partition,MaxJobs,MaxSubmit,QOS,DefaultQOS"


class SiteProbeError(RuntimeError):
    """A probe that cannot be taken or read; the message names the fix."""


@dataclass(frozen=True)
class NodeGroup:
    """Nodes of a partition that look alike (one sinfo line each, grouped)."""

    count: int
    cpus: int
    mem_mb: int
    gpus: int
    gres: str
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class PartitionProbe:
    name: str
    default: bool = False
    # minutes; None: unlimited
    max_time_min: Optional[int] = None
    default_time_min: Optional[int] = None
    max_nodes: Optional[int] = None
    total_nodes: int = 0
    # the partition's own QOS (its limits apply to every job in it), if any
    qos: Optional[str] = None
    gres_types: tuple[str, ...] = ()
    nodes: tuple[NodeGroup, ...] = ()


@dataclass(frozen=True)
class Association:
    """One of the user's associations (account, partition) with its per-user limits."""

    account: str
    partition: Optional[str] = None
    max_jobs: Optional[int] = None
    max_submit: Optional[int] = None
    qos: tuple[str, ...] = ()
    default_qos: Optional[str] = None


@dataclass(frozen=True)
class SiteProbe:
    site: str
    probed_at: str
    user: str
    slurm_version: str
    partitions: tuple[PartitionProbe, ...]
    max_array_size: int
    max_job_count: int
    qos: tuple[QosLimits, ...] = ()
    associations: tuple[Association, ...] = ()
    # what could not be asked, and why (accounting off, sacctmgr not visible, ...)
    notes: tuple[str, ...] = ()
    format: int = FORMAT_VERSION

    @property
    def default_partition(self) -> Optional[str]:
        return next((p.name for p in self.partitions if p.default), None)

    def partition(self, name: Optional[str]) -> Optional[PartitionProbe]:
        name = name or self.default_partition
        return next((p for p in self.partitions if p.name == name), None)

    @property
    def source(self) -> str:
        return f"the probe of site {self.site} ({self.probed_at}; `zerorun site probe {self.site}` refreshes it)"


# ---- parsers (pure) ---------------------------------------------------------------------------------------------

def _limit(text: str) -> Optional[int]:
    text = text.strip()
    return int(text) if text.isdigit() else None


def parse_partitions(text: str) -> dict[str, dict[str, str]]:
    """`scontrol show partition -o`: partition -> its fields (PartitionName=debug ... MaxTime=1-00:00:00 ...)."""
    parts = {}
    for line in text.splitlines():
        fields = dict(m.groups() for m in re.finditer(r"(?:^|\s)(\w+)=(\S*)", line))
        if fields.get("PartitionName"):
            parts[fields["PartitionName"]] = fields
    return parts


def parse_nodes(text: str) -> dict[str, list[tuple[str, int, int, int, str]]]:
    """`sinfo -h -N -o SINFO_FORMAT`: partition -> (node, CPUs, memory MB, GPUs, GRES) for every node, whatever
    its state now (a probe keeps what the partition has, not who is up today)."""
    nodes: dict[str, list[tuple[str, int, int, int, str]]] = {}
    for line in text.splitlines():
        f = line.strip().split("|")
        if len(f) < 5:
            continue
        node, part, cpus, mem, gres = f[:5]
        part = part.rstrip("*")
        digits = re.sub(r"\D.*", "", mem)
        nodes.setdefault(part, []).append((node, int(cpus) if cpus.isdigit() else 0, int(digits) if digits else 0,
                                           preflight._gpus(gres), gres))
    return nodes


def group_nodes(rows: list[tuple[str, int, int, int, str]]) -> tuple[NodeGroup, ...]:
    groups: dict[tuple[int, int, int, str], list[str]] = {}
    for node, cpus, mem, gpus, gres in rows:
        groups.setdefault((cpus, mem, gpus, gres), []).append(node)
    return tuple(NodeGroup(len(names), cpus, mem, gpus, gres, tuple(sorted(set(names))))
                 for (cpus, mem, gpus, gres), names in sorted(groups.items()))


def parse_qos(text: str) -> tuple[QosLimits, ...]:
    """`sacctmgr -n -P show qos format=Name,MaxWall,MaxJobsPU,MaxSubmitPU`."""
    out = []
    for line in text.splitlines():
        f = line.strip().split("|")
        if len(f) >= 4 and f[0]:
            out.append(QosLimits(f[0], preflight.slurm_minutes(f[1]) if f[1] else None, _limit(f[2]), _limit(f[3])))
    return tuple(out)


def parse_assoc(text: str) -> tuple[Association, ...]:
    """`sacctmgr -n -P show assoc where user=U format=Account,Partition,MaxJobs,MaxSubmit,QOS,DefaultQOS`."""
    out = []
    for line in text.splitlines():
        f = line.strip().split("|")
        if len(f) >= 6 and f[0]:
            out.append(Association(f[0], f[1] or None, _limit(f[2]), _limit(f[3]),
                                   tuple(q for q in f[4].split(",") if q), f[5] or None))
    return tuple(out)


def build(site: str, *, version: str, partitions_text: str, sinfo_text: str, config_text: str,
          qos_text: Optional[str], assoc_text: Optional[str], user: str, probed_at: str,
          notes: tuple[str, ...] = ()) -> SiteProbe:
    """The probe from the commands' answers (pure)."""
    fields = parse_partitions(partitions_text)
    nodes = parse_nodes(sinfo_text)
    parts = []
    for name in sorted(set(fields) | set(nodes)):
        f = fields.get(name, {})
        rows = nodes.get(name, [])
        types: list[str] = []
        for *_, gres in rows:
            types += [t for t in preflight.gpu_types(gres) if t not in types]
        qos = f.get("QoS", "N/A")
        parts.append(PartitionProbe(
            name=name,
            default=f.get("Default") == "YES",
            max_time_min=preflight.slurm_minutes(f.get("MaxTime", "UNLIMITED")),
            default_time_min=preflight.slurm_minutes(f.get("DefaultTime", "NONE")),
            max_nodes=_limit(f.get("MaxNodes", "")),
            total_nodes=_limit(f.get("TotalNodes", "")) or len(rows),
            qos=None if qos in ("N/A", "", "(null)") else qos,
            gres_types=tuple(types),
            nodes=group_nodes(rows),
        ))
    limits = slurm.parse_scontrol_config(config_text)
    return SiteProbe(site=site, probed_at=probed_at, user=user, slurm_version=version.strip(),
                     partitions=tuple(parts), max_array_size=limits.max_array_size,
                     max_job_count=limits.max_job_count, qos=parse_qos(qos_text or ""),
                     associations=parse_assoc(assoc_text or ""), notes=notes)


# ---- asking the cluster ------------------------------------------------------------------------------------------

def probe(site: str, run: Callable[[list[str]], Any] = slurm.run_command) -> SiteProbe:
    """Ask the cluster once; raises SiteProbeError when its partitions cannot be read. QOS and association
    limits are asked where accounting shows them (a note says why not otherwise)."""
    user = getpass.getuser()
    notes: list[str] = []

    def ask(argv: list[str], required: bool) -> Optional[str]:
        try:
            out = run(argv)
        except slurm.SlurmError as e:
            if required:
                raise SiteProbeError(f"{' '.join(argv[:3])}: {e}") from None
            notes.append(f"{' '.join(argv[:3])} not asked: {e}")
            return None
        if out.returncode != 0:
            why = out.stderr.strip() or f"exit {out.returncode}"
            if required:
                raise SiteProbeError(f"`{' '.join(argv)}` failed: {why}; run the probe where the Slurm commands "
                                     "reach the cluster (a login node)")
            notes.append(f"{' '.join(argv[:3])} not visible: {why}")
            return None
        return out.stdout

    version = ask(["scontrol", "--version"], True) or ""
    partitions_text = ask(["scontrol", "show", "partition", "-o"], True) or ""
    sinfo_text = ask(["sinfo", "-h", "-N", "-o", preflight.SINFO_FORMAT], True) or ""
    config_text = ask(["scontrol", "show", "config"], True) or ""
    qos_text = ask(["sacctmgr", "-n", "-P", "show", "qos", f"format={QOS_FIELDS}"], False)
    assoc_text = ask(["sacctmgr", "-n", "-P", "show", "assoc", f"where", f"user={user}",
                      f"format={ASSOC_FIELDS}"], False)
    return build(site, version=version, partitions_text=partitions_text, sinfo_text=sinfo_text,
                 config_text=config_text, qos_text=qos_text, assoc_text=assoc_text, user=user,
                 probed_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), notes=tuple(notes))


# ---- kept as YAML ------------------------------------------------------------------------------------------------

HEADER = ("# What the cluster said to `zerorun site probe {site}` on {when}. The preflight reads it at every\n"
          "# submission with site={site} instead of asking Slurm; run the probe again after the cluster changes.\n")


def to_text(p: SiteProbe) -> str:
    import yaml

    def plain(value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return HEADER.format(site=p.site, when=p.probed_at) + yaml.safe_dump(plain(dataclasses.asdict(p)),
                                                                        sort_keys=False, default_flow_style=None)


def _make(cls: type, data: Any) -> Any:
    """A dataclass from its YAML mapping, nested ones and tuples included; a missing or wrong field raises."""
    import typing

    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        args = typing.get_args(hint)
        inner = args[0] if args else None
        if typing.get_origin(hint) is tuple and dataclasses.is_dataclass(inner):
            value = tuple(_make(inner, v) for v in value)
        elif typing.get_origin(hint) is tuple:
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def from_text(text: str) -> SiteProbe:
    import yaml

    data = yaml.safe_load(text)
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
        raise ValueError(f"not a zerorun site probe of format {FORMAT_VERSION}")
    return _make(SiteProbe, data)


def save(p: SiteProbe, path: Optional[Path] = None) -> Path:
    from trainer_core.durable import write_atomic

    path = path or sites.probe_path(p.site)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, to_text(p), mode=0o644)


def load(site: str) -> Optional[SiteProbe]:
    """The kept probe of `site`, or None when it was never probed; SiteProbeError when the file is unreadable."""
    if not sites.valid_name(site):
        raise SiteProbeError(f"site.name={site!r} is not a site name (letters, digits, _ . -); choose a site with "
                             "site=NAME")
    path = sites.probe_path(site)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SiteProbeError(f"the probe of site {site} ({path}) cannot be read ({e.strerror}); fix its "
                             f"permissions, or run `zerorun site probe {site}` again") from None
    import yaml

    try:
        return from_text(text)
    except (yaml.YAMLError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise SiteProbeError(f"the probe of site {site} ({path}) is not one zerorun can read ({e}); run "
                             f"`zerorun site probe {site}` again (or delete the file to check against Slurm at "
                             "each submission)") from None


# ---- what the preflight and the sweep check read -----------------------------------------------------------------

def facts(p: SiteProbe) -> ClusterFacts:
    """The probe as the preflight's cluster facts: every node of each partition counts (a probe does not know
    who is down at submission), limits as recorded."""
    partitions = {}
    for part in p.partitions:
        partitions[part.name] = tuple(NodeFacts(g.names[i] if i < len(g.names) else f"{part.name}-{i}",
                                                g.cpus, g.mem_mb, g.gpus)
                                      for g in part.nodes for i in range(g.count))
    return ClusterFacts(
        partitions=partitions,
        default_partition=p.default_partition,
        max_time_min={part.name: part.max_time_min for part in p.partitions},
        gres_types={part.name: part.gres_types for part in p.partitions},
        max_nodes={part.name: part.max_nodes for part in p.partitions},
        qos={q.name: q for q in p.qos},
        source=p.source,
    )


def _associations(p: SiteProbe, account: Optional[str], partition: Optional[str]) -> list[Association]:
    """The user's associations that apply to a job of this account and partition (a partition's own one before
    the account-wide one)."""
    mine = [a for a in p.associations if account is None or a.account == account]
    exact = [a for a in mine if a.partition == partition]
    return exact or [a for a in mine if a.partition is None]


def limits(p: SiteProbe, plan: Any) -> slurm.ClusterLimits:
    """The array and job-count limits, and the per-user caps that apply to `plan` (its QOS, or the association's
    default QOS; its partition's QOS; its association)."""
    partition = p.partition(plan.partition)
    assocs = _associations(p, plan.account, partition.name if partition else plan.partition)
    qos_names = [plan.qos or next((a.default_qos for a in assocs if a.default_qos), None) or "normal"]
    if partition is not None and partition.qos:
        qos_names.append(partition.qos)
    by_name = {q.name: q for q in p.qos}
    submit: list[tuple[int, str]] = []
    run: list[tuple[int, str]] = []
    for name in dict.fromkeys(qos_names):
        q = by_name.get(name)
        if q is not None and q.max_submit_pu is not None:
            submit.append((q.max_submit_pu, f"MaxSubmitPU of QOS {name}"))
        if q is not None and q.max_jobs_pu is not None:
            run.append((q.max_jobs_pu, f"MaxJobsPU of QOS {name}"))
    for a in assocs:
        where = f"account {a.account}" + (f", partition {a.partition}" if a.partition else "")
        if a.max_submit is not None:
            submit.append((a.max_submit, f"MaxSubmitJobs of your association ({where})"))
        if a.max_jobs is not None:
            run.append((a.max_jobs, f"MaxJobs of your association ({where})"))
    return slurm.ClusterLimits(max_array_size=p.max_array_size, max_job_count=p.max_job_count, source=p.source,
                               submit_limits=tuple(submit), run_limits=tuple(run))


def for_config(cfg: Any) -> Optional[SiteProbe]:
    """The probe of the config's site (site=NAME), or None when no site is chosen or it was never probed."""
    site = cfg.get("site") if hasattr(cfg, "get") else None
    name = site.get("name") if site is not None else None
    return load(str(name)) if name else None


def describe(p: SiteProbe) -> str:
    """The probe as a few readable lines (`zerorun site show` and `probe` print it)."""
    from cluster import table

    rows = []
    for part in p.partitions:
        rows.append([part.name + ("*" if part.default else ""), _minutes(part.max_time_min),
                     _minutes(part.default_time_min), "-" if part.max_nodes is None else str(part.max_nodes),
                     str(part.total_nodes), ", ".join(part.gres_types) or "-", part.qos or "-"])
    lines = [f"site {p.site}: {p.slurm_version}, probed {p.probed_at} as {p.user}",
             f"MaxArraySize={p.max_array_size} MaxJobCount={p.max_job_count}",
             table.text(("PARTITION", "MAXTIME", "DEFAULTTIME", "MAXNODES", "NODES", "GPU TYPES", "QOS"), rows)
             .rstrip("\n")]
    if p.qos:
        lines.append(table.text(("QOS", "MAXWALL", "MAXJOBSPU", "MAXSUBMITPU"),
                                [[q.name, _minutes(q.max_wall_min), _num(q.max_jobs_pu), _num(q.max_submit_pu)]
                                 for q in p.qos]).rstrip("\n"))
    if p.associations:
        lines.append(table.text(("ACCOUNT", "PARTITION", "MAXJOBS", "MAXSUBMIT", "QOS", "DEFAULT QOS"),
                                [[a.account, a.partition or "-", _num(a.max_jobs), _num(a.max_submit),
                                  ",".join(a.qos) or "-", a.default_qos or "-"] for a in p.associations])
                     .rstrip("\n"))
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines) + "\n"


def _minutes(v: Optional[int]) -> str:
    return "unlimited" if v is None else f"{v} min"


def _num(v: Optional[int]) -> str:
    return "-" if v is None else str(v)
