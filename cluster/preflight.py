"""Preflight: the problems of a plan, named before anything is submitted.

`probe()` asks the cluster once (`sinfo`) and returns its facts; `check(plan, facts)` is pure: the plan and
those facts in, one sentence per problem out, each naming the key to change. Dry-run and submit both run it;
submit refuses a plan with problems.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from typing import Any, Optional

from cluster import quoting
from cluster.plan import JobPlan

# node, partition (* marks the default), CPUs, memory (MB), GRES, node state, the partition's time limit
SINFO_FORMAT = "%N|%P|%c|%m|%G|%T|%l"
# node states in which a node takes no new job (sinfo's long names; a trailing * or ~ marks more detail)
UNAVAILABLE_STATES = ("down", "drain", "draining", "drained", "fail", "failing", "future", "inval", "maint",
                      "no_respond", "not_responding", "power_down", "powered_down", "powering_down", "reboot_issued",
                      "unknown")
PROBE_TIMEOUT_S = 10.0
_MEM = re.compile(r"^(\d+)([KMGT]?)B?$", re.IGNORECASE)
_MEM_UNIT_MB = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}
_SIGNAL = re.compile(r"^((SIG)?[A-Z]+[0-9]*|[0-9]+)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class NodeFacts:
    name: str
    cpus: int
    mem_mb: int
    gpus: int


@dataclass(frozen=True)
class QosLimits:
    name: str
    # MaxWall in minutes; jobs (running) and submissions (queued + running) per user; None: no limit
    max_wall_min: Optional[int] = None
    max_jobs_pu: Optional[int] = None
    max_submit_pu: Optional[int] = None


@dataclass(frozen=True)
class ClusterFacts:
    """What sinfo said: partition -> its nodes; `error` when it did not answer."""

    partitions: dict[str, tuple[NodeFacts, ...]] = field(default_factory=dict)
    default_partition: Optional[str] = None
    error: Optional[str] = None
    # partition -> its MaxTime in minutes (None: unlimited or not said)
    max_time_min: dict[str, Optional[int]] = field(default_factory=dict)
    # partition -> nodes that take no job now (down, drained, ...), with their state
    unavailable: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # partition -> the GPU types (GRES types) its nodes offer, e.g. ("a100", "h100"); untyped GPUs add none
    gres_types: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # partition -> its MaxNodes (None: unlimited or not said); known from a site probe
    max_nodes: dict[str, Optional[int]] = field(default_factory=dict)
    # QOS name -> its limits, where the cluster showed them (a site probe: sacctmgr show qos)
    qos: dict[str, "QosLimits"] = field(default_factory=dict)
    # where the facts came from, quoted in the problems: "sinfo" (asked now), or a site's probe
    source: str = "sinfo"

    @property
    def answered(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Preflight:
    problems: list[str]
    # what could not be checked, and why (not a reason to refuse)
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def mem_mb(text: str) -> Optional[int]:
    """A Slurm memory size ("32G", "500M", "1T", "4096") in MB; None when it is not one."""
    m = _MEM.match(text.strip())
    if not m:
        return None
    return int(int(m.group(1)) * _MEM_UNIT_MB[m.group(2).upper()])


def gpu_types(gres: str) -> tuple[str, ...]:
    """GPU types in a gres string: "gpu:a100:4(S:0-1),gpu:h100:2" -> ("a100", "h100"); "gpu:8" -> ()."""
    found = []
    for item in gres.split(","):
        parts = re.sub(r"\(.*?\)", "", item).split(":")
        if parts[0] == "gpu" and len(parts) >= 3 and parts[1] not in found:
            found.append(parts[1])
    return tuple(found)


def _gpus(gres: str) -> int:
    """GPUs in a gres string: "gpu:8", "gpu:a100:4(S:0-1),shard:2" -> 8, 4; "(null)" -> 0."""
    total = 0
    for item in gres.split(","):
        parts = re.sub(r"\(.*?\)", "", item).split(":")
        if parts[0] == "gpu" and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def slurm_minutes(text: str) -> Optional[int]:
    """A Slurm time limit ("infinite", "30:00", "1-00:00:00", "2:00:00", "45") in minutes; None when unlimited."""
    text = text.strip()
    if not text or text.lower() in ("infinite", "unlimited", "n/a", "none"):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(x) for x in rest.split(":")] if all(x.isdigit() for x in rest.split(":")) else []
    if not parts or (days and not days.isdigit()):
        return None
    if len(parts) == 1:
        h, m, sec = 0, parts[0], 0
    elif len(parts) == 2:
        h, m, sec = 0, parts[0], parts[1]
    else:
        h, m, sec = parts[-3], parts[-2], parts[-1]
    return (int(days or 0) * 24 + h) * 60 + m + (1 if sec else 0)


def parse_sinfo(text: str) -> ClusterFacts:
    """Facts from `sinfo -h -N -o SINFO_FORMAT` (one line per node and partition); nodes that take no job now
    (down, drained, ...) are kept apart. Lines of the older five-field format are read too."""
    partitions: dict[str, list[NodeFacts]] = {}
    unavailable: dict[str, list[str]] = {}
    max_time: dict[str, Optional[int]] = {}
    types: dict[str, list[str]] = {}
    default = None
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) not in (5, 7):
            continue
        node, part, cpus, mem, gres = fields[:5]
        state, limit = fields[5:7] if len(fields) == 7 else ("idle", "infinite")
        if part.endswith("*"):
            part = part[:-1]
            default = part
        max_time[part] = slurm_minutes(limit)
        partitions.setdefault(part, [])
        types.setdefault(part, [])
        types[part] += [t for t in gpu_types(gres) if t not in types[part]]
        if state.lower().rstrip("*~#!%$@^-+").split("+")[0] in UNAVAILABLE_STATES:
            unavailable.setdefault(part, []).append(f"{node} ({state})")
            continue
        digits = re.sub(r"\D.*", "", mem)
        partitions[part].append(
            NodeFacts(node, int(cpus) if cpus.isdigit() else 0, int(digits) if digits else 0, _gpus(gres))
        )
    return ClusterFacts({p: tuple(n) for p, n in sorted(partitions.items())}, default, None, max_time,
                        {p: tuple(n) for p, n in unavailable.items()},
                        gres_types={p: tuple(t) for p, t in types.items()})


def probe(timeout: float = PROBE_TIMEOUT_S) -> ClusterFacts:
    """Ask sinfo what the cluster has. The one place the preflight touches the cluster."""
    from cluster import slurm

    if shutil.which("sinfo") is None:
        return ClusterFacts(error="sinfo is not on PATH")
    try:
        out = slurm.run_command(["sinfo", "-h", "-N", "-o", SINFO_FORMAT], timeout=timeout)
    except slurm.SlurmError as e:
        return ClusterFacts(error=str(e))
    if out.returncode != 0:
        return ClusterFacts(error=f"sinfo failed: {out.stderr.strip() or out.returncode}")
    return parse_sinfo(out.stdout)


def ask_test_only(folder: str, script: Optional[str], facts: Optional[ClusterFacts], out: Any, what: str) -> list[str]:
    """Ask `sbatch --test-only` about a rendered script where the cluster answers; print its answer and return the
    problem it names (if it refuses)."""
    from cluster import slurm

    if facts is not None and not facts.answered:
        out.write(f"sbatch --test-only: not asked (the cluster did not answer: {facts.error})\n")
        return []
    if not shutil.which("sbatch"):
        out.write("sbatch --test-only: not asked (sbatch is not on PATH)\n")
        return []
    try:
        ok, answer = slurm.test_only(folder, script) if script else slurm.test_only(folder)
    except slurm.SlurmError as e:
        ok, answer = False, str(e)
    out.write(f"sbatch --test-only: {answer}\n")
    return [] if ok else [f"sbatch --test-only refused the {what}: {answer}"]


def plan_problems(plan: JobPlan) -> list[str]:
    """Problems of the plan alone (no cluster facts needed)."""
    from cluster.render import OWNED_SBATCH_KEYS

    p: list[str] = []
    if plan.nodes < 1:
        p.append(f"cluster.nodes={plan.nodes}: a job needs at least 1 node; set cluster.nodes=1 or more")
    if plan.tasks_per_node < 1:
        p.append(f"cluster.tasks_per_node={plan.tasks_per_node}: set it to the ranks per node (the GPUs per node, "
                 "or the CPU ranks when cluster.gpus_per_node=0)")
    if plan.gpus_per_node < 0:
        p.append(f"cluster.gpus_per_node={plan.gpus_per_node}: must be 0 (CPU ranks) or more")
    if plan.gpus_per_node > 0 and plan.tasks_per_node != plan.gpus_per_node:
        p.append(f"nodes({plan.nodes}) x tasks_per_node({plan.tasks_per_node}) = {plan.world_size} ranks on "
                 f"nodes({plan.nodes}) x gpus_per_node({plan.gpus_per_node}) = {plan.nodes * plan.gpus_per_node} "
                 "GPUs: zerorun runs one rank per GPU; set cluster.tasks_per_node=${cluster.gpus_per_node}")
    p += gres_problems(plan)
    if plan.cpus_per_task < 1:
        p.append(f"cluster.cpus_per_task={plan.cpus_per_task}: must be at least 1")
    if plan.time_min < 1:
        p.append(f"cluster.time_min={plan.time_min}: the time limit must be at least 1 minute")
    if plan.signal_delay_s < 0:
        p.append(f"cluster.signal_delay_s={plan.signal_delay_s}: must be 0 or more seconds")
    elif plan.signal_delay_s >= plan.time_min * 60:
        p.append(f"cluster.signal_delay_s({plan.signal_delay_s}) is not shorter than the time limit "
                 f"cluster.time_min({plan.time_min}) x 60 = {plan.time_min * 60} s: lower signal_delay_s or raise "
                 "time_min")
    if not _SIGNAL.match(plan.signal):
        p.append(f"cluster.signal={plan.signal!r} is not a signal name or number; use e.g. USR1, USR2 or TERM")
    if plan.mem is not None and mem_mb(plan.mem) is None:
        p.append(f"cluster.mem={plan.mem!r} is not a Slurm memory size; write e.g. 32G or 500M (per node)")
    for name in plan.env_passthrough:
        if not _ENV_NAME.match(name):
            p.append(f"cluster.env_passthrough lists {name!r}, which is not a variable name; list names only "
                     "(HF_TOKEN, not HF_TOKEN=...): values are taken from the submitting shell")
    for key, _ in plan.sbatch_extra:
        if key in OWNED_SBATCH_KEYS:
            p.append(f"cluster.sbatch_extra.{key}: zerorun sets --{key.replace('_', '-')} itself from "
                     f"{OWNED_SBATCH_KEYS[key]}; remove it from sbatch_extra")
    return p


_GRES_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def gres_problems(plan: JobPlan) -> list[str]:
    """The GPU spelling keys (cluster.gpu_type, cluster.gres_style) on their own."""
    from cluster.render import GRES_STYLES

    p: list[str] = []
    if plan.gres_style not in GRES_STYLES:
        p.append(f"cluster.gres_style={plan.gres_style!r}; choose one of: {', '.join(GRES_STYLES)} "
                 "(--gpus-per-node=[TYPE:]N or --gres=gpu[:TYPE]:N, whichever the site's Slurm takes)")
    if plan.gpu_type is not None:
        if not _GRES_TYPE.match(plan.gpu_type):
            p.append(f"cluster.gpu_type={plan.gpu_type!r} is not a GRES type name; write the type as the site "
                     "names it (e.g. a100, h100_80gb; `zerorun site probe NAME` lists them)")
        elif plan.gpus_per_node == 0:
            p.append(f"cluster.gpu_type={plan.gpu_type} with cluster.gpus_per_node=0: a GPU model for a job without "
                     "GPUs; set cluster.gpus_per_node (and tasks_per_node), or cluster.gpu_type=null")
    if plan.gpus_per_node and plan.gres_style == "gres" and any(k == "gres" for k, _ in plan.sbatch_extra):
        p.append("cluster.sbatch_extra.gres with cluster.gres_style=gres: zerorun writes --gres=gpu:... itself "
                 "from cluster.gpus_per_node and cluster.gpu_type; remove gres from sbatch_extra, or use "
                 "cluster.gres_style=gpus_per_node to keep your own --gres")
    return p


def slurm_plan_problems(plan: JobPlan) -> list[str]:
    """Problems of a plan that only a Slurm job has: DeepSpeed without GPUs, values sbatch cannot carry."""
    from cluster.render import sbatch_parameters

    p: list[str] = []
    if plan.strategy == "deepspeed" and plan.gpus_per_node == 0 and not plan.cpu_rehearsal:
        p.append("trainer.strategy.name=deepspeed on a Slurm job with cluster.gpus_per_node=0: DeepSpeed needs "
                 "GPUs; set cluster.gpus_per_node (and tasks_per_node) to the GPUs of a node, or "
                 "cluster.cpu_rehearsal=true to rehearse DeepSpeed on CPU ranks")
    if "%" in plan.run_dir:
        p.append(f"the run folder {plan.run_dir!r} holds a '%': Slurm 22.05 reads it as a file-name pattern in "
                 "the ranks' --output and no rank could start; choose cluster.runs_dir, name and run_id without %")
    p += container_problems(plan)
    if not p and not plan_problems(plan):
        try:
            sbatch_parameters(plan)
            quoting.filename_pattern(plan.run_dir)
        except quoting.QuotingError as e:
            p.append(str(e))
    return p


def container_problems(plan: JobPlan) -> list[str]:
    """The folders zerorun mounts into the container must each fit one SRC:DST item of a comma-separated list."""
    if plan.container is None:
        return []
    folders = (plan.run_dir, *plan.container.folders)
    return [f"the folder {path!r} is mounted into the container, but ':' and ',' separate mounts there; choose "
            "cluster.runs_dir, name, dataset.cache_dir and the folder you submit from without them"
            for path in dict.fromkeys(folders) if ":" in path or "," in path]


def local_container_problems(plan: JobPlan) -> list[str]:
    """The local backend runs the ranks as processes here, never in a container: a plan asking for one is refused
    rather than run without it."""
    if plan.container is None:
        return []
    return [f"cluster.container.runtime={plan.container.runtime}: the local backend runs the ranks on this machine "
            "without a container; set cluster.container.runtime=none to run them here, or submit with "
            "cluster=slurm (a dry run shows the container's srun line)"]


def cluster_problems(plan: JobPlan, facts: ClusterFacts) -> list[str]:
    """Problems of the plan on this cluster: partition, node count, memory, CPUs and GPUs per node."""
    if not facts.answered:
        return []
    valid = ", ".join(facts.partitions) or "(none)"
    name = plan.partition or facts.default_partition
    if name is None:
        return [f"cluster.partition is not set and the cluster has no default partition; choose one of: {valid}"]
    if name not in facts.partitions:
        return [f"cluster.partition={name!r} does not exist on this cluster; choose one of: {valid}"]
    nodes = facts.partitions[name]
    p: list[str] = []
    where = f"partition {name!r}"
    down = facts.unavailable.get(name, ())
    need, key = (plan.min_nodes, "cluster.min_nodes") if plan.min_nodes else (plan.nodes, "cluster.nodes")
    if need > len(nodes):
        why = f" ({len(down)} more take no job now: {', '.join(down[:4])})" if down else ""
        p.append(f"{key}={need} but {where} has {len(nodes)} nodes that take jobs{why}; lower {key} or "
                 f"choose another partition ({valid})")
    elif plan.min_nodes and plan.nodes > len(nodes) + len(down):
        p.append(f"cluster.nodes={plan.nodes} but {where} has {len(nodes) + len(down)} nodes in all: the range "
                 f"{plan.min_nodes}-{plan.nodes} can never be granted whole; lower cluster.nodes")
    spare = len(nodes) - plan.nodes
    if plan.max_excluded_nodes is not None and plan.max_excluded_nodes > max(spare, 0):
        p.append(f"requeue.max_excluded_nodes={plan.max_excluded_nodes} but {where} has {len(nodes)} nodes and the "
                 f"job needs {plan.nodes}: at most {max(spare, 0)} can be left out of a requeue; lower "
                 f"requeue.max_excluded_nodes to {max(spare, 0)}")
    said = "" if facts.source == "sinfo" else f", from {facts.source}"
    limit = facts.max_time_min.get(name)
    if limit is not None and plan.time_min > limit:
        p.append(f"cluster.time_min={plan.time_min} is over the MaxTime of {where} ({limit} min{said}); lower "
                 f"cluster.time_min to {limit} or less (a resumable run continues across requeues)")
    most_nodes = facts.max_nodes.get(name)
    if most_nodes is not None and plan.nodes > most_nodes:
        p.append(f"cluster.nodes={plan.nodes} is over the MaxNodes of {where} ({most_nodes}{said}); lower "
                 f"cluster.nodes to {most_nodes} or less, or choose another partition ({valid})")
    p += _gres_type_problems(plan, facts, name, said)
    p += _qos_problems(plan, facts, said)
    want_mb = mem_mb(plan.mem) if plan.mem else None
    if want_mb is not None:
        fit = [n for n in nodes if n.mem_mb >= want_mb]
        if len(fit) < plan.nodes:
            largest = max((n.mem_mb for n in nodes), default=0)
            p.append(f"cluster.mem={plan.mem} ({want_mb} MB per node) is more than {where} offers on "
                     f"{plan.nodes} node(s) (largest node: {largest} MB); lower cluster.mem")
    cpus = plan.tasks_per_node * plan.cpus_per_task
    most_cpus = max((n.cpus for n in nodes), default=0)
    if cpus > most_cpus:
        p.append(f"tasks_per_node({plan.tasks_per_node}) x cpus_per_task({plan.cpus_per_task}) = {cpus} CPUs per "
                 f"node, but the nodes of {where} have at most {most_cpus}; lower cluster.cpus_per_task or "
                 "cluster.tasks_per_node")
    most_gpus = max((n.gpus for n in nodes), default=0)
    if plan.gpus_per_node > most_gpus:
        p.append(f"cluster.gpus_per_node={plan.gpus_per_node}, but the nodes of {where} have at most {most_gpus} "
                 "GPUs; set cluster.gpus_per_node (and tasks_per_node) to what a node has"
                 + (" (0 for CPU ranks)" if most_gpus == 0 else ""))
    return p


def _gres_type_problems(plan: JobPlan, facts: ClusterFacts, name: str, said: str) -> list[str]:
    """A GPU type the partition does not offer (`--gres=gpu:TYPE:N` would be refused by sbatch, or pend)."""
    if plan.gpu_type is None or plan.gpus_per_node == 0:
        return []
    offered = facts.gres_types.get(name, ())
    if plan.gpu_type in offered:
        return []
    elsewhere = sorted(p for p, types in facts.gres_types.items() if plan.gpu_type in types)
    hint = (f"; partition(s) {', '.join(elsewhere)} offer it (cluster.partition)" if elsewhere else "")
    known = ", ".join(offered) if offered else "none: its GPUs are untyped, or it has none"
    return [f"cluster.gpu_type={plan.gpu_type} is not a GRES type of partition {name!r} (its GPU types: "
            f"{known}{said}); set cluster.gpu_type to one of them, or cluster.gpu_type=null for any GPU{hint}"]


def _qos_problems(plan: JobPlan, facts: ClusterFacts, said: str) -> list[str]:
    """A QOS the cluster does not have, or a time over its MaxWall (only where the QOS list is known)."""
    if plan.qos is None or not facts.qos:
        return []
    q = facts.qos.get(plan.qos)
    if q is None:
        return [f"cluster.qos={plan.qos} is not a QOS of this cluster (its QOS: {', '.join(sorted(facts.qos))}"
                f"{said}); choose one of them, or cluster.qos=null for the default"]
    if q.max_wall_min is not None and plan.time_min > q.max_wall_min:
        return [f"cluster.time_min={plan.time_min} is over the MaxWall of QOS {q.name} ({q.max_wall_min} min{said}); "
                f"lower cluster.time_min to {q.max_wall_min} or less, or choose another cluster.qos"]
    return []


def check(plan: JobPlan, facts: ClusterFacts) -> Preflight:
    """The backend's preflight (cluster/backends/): the plan's problems, and the cluster's where it answered."""
    from cluster.backends import get_backend

    return get_backend(plan.backend).preflight(plan, facts)
