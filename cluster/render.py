"""Rendering: a JobPlan in, the exact text that would run out. Pure and deterministic (no clock, no argv, no
environment read): the same plan and context give the same bytes, so scripts compare whole against golden files.

- `sbatch_script`: the Slurm batch script, from submitit's own renderer (through cluster/adapters.py): one allocation
  of nodes x tasks_per_node, srun starting every rank with the plan's entry command.
- `rank_table`: who is who in the job (host, RANK, LOCAL_RANK, ...), derived through the same rendezvous
  function the ranks use, from the variables Slurm (or the local backend) will set.
- `local_commands`: what the local backend would start.

A sweep (`zerorun -m`) renders the same script as a job array (`array=ArraySpec(...)`, the `--array` line from
submitit's own `map_count`/`array_parallelism`): every task is a whole job of the plan's geometry, the plan's
run_dir is the sweep folder, and the entry command finds the member's own run folder from the array task id
(jobs/rank.py). Logs of array tasks are named by array job and task (`%A_%a`), as Slurm names them.

Every literal goes through cluster.quoting. The run folder's path, whatever characters it holds, never reaches
an #SBATCH line: sbatch's directive parser cannot carry a newline, and Slurm expands `%j` even in the working
directory it prefixes to a relative log path. So the batch script's own output is sent to /dev/null by Slurm and
redirected by the script's first line (a shell word, quoted like any other); the ranks' logs are named on the
srun line, with `%` escaped for Slurm's file name patterns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from cluster import quoting, table
from cluster.plan import HOST_ENTRY, RANK_ENTRY, WATCHDOG_ENTRY, JobPlan, all_mounts
from cluster.rendezvous import SLURM_ENV, derive
from cluster.adapters import sbatch_text
from trainer_core import layout

SCRIPT_NAME = "job.sbatch"
# the run folder's names are defined once, in trainer_core/layout.py
LOG_DIR = layout.LOGS
RANK_LOG_PATTERN = layout.RANK_LOG_PATTERN
BATCH_LOG_SUFFIX = layout.BATCH_LOG_SUFFIX
ARRAY_RANK_LOG_PATTERN = layout.ARRAY_RANK_LOG_PATTERN

# sbatch flags zerorun sets from cluster.* keys: cluster.sbatch_extra may not set them behind its back.
OWNED_SBATCH_KEYS = {
    "job_name": "name", "nodes": "cluster.nodes", "ntasks_per_node": "cluster.tasks_per_node",
    "mincpus": "cluster.tasks_per_node and cluster.cpus_per_task",
    "ntasks": "cluster.nodes and cluster.tasks_per_node", "gpus_per_node": "cluster.gpus_per_node",
    "cpus_per_task": "cluster.cpus_per_task", "mem": "cluster.mem", "time": "cluster.time_min",
    "partition": "cluster.partition", "account": "cluster.account", "qos": "cluster.qos",
    "constraint": "cluster.constraint", "exclude": "cluster.exclude", "exclusive": "cluster.exclusive",
    "signal": "cluster.signal and cluster.signal_delay_s", "requeue": "cluster.requeue",
    "no_requeue": "cluster.requeue", "export": "cluster.env_passthrough", "output": "(zerorun's log layout)",
    "error": "(zerorun's log layout)", "open_mode": "(zerorun's log layout)", "chdir": "(the run folder)",
    "array": "(zerorun -m: a sweep is one job array)",
    "dependency": "cluster.after and cluster.after_kind", "kill_on_invalid_dep": "cluster.after",
}


@dataclass(frozen=True)
class RenderContext:
    """What the script names besides the plan: given as data, so rendering reads nothing of its own."""

    version: str
    # the command line that produced the script (argv), for the header comment
    command: tuple[str, ...]


@dataclass(frozen=True)
class ArraySpec:
    """A job array of `size` tasks (0..size-1), at most `parallelism` of them running at once."""

    size: int
    parallelism: int

    @property
    def flag(self) -> str:
        """The value of sbatch --array, as submitit writes it."""
        return f"0-{self.size - 1}%{min(self.size, self.parallelism)}"


@dataclass(frozen=True)
class RankRow:
    host: str
    rank: int
    local_rank: int
    node_rank: int
    world_size: int
    master: str
    device: str


rank_log = layout.rank_log
batch_log = layout.batch_log
array_rank_log = layout.array_rank_log
array_batch_log = layout.array_batch_log


def sbatch_argv(test_only: bool = False, script: str = SCRIPT_NAME) -> list[str]:
    """The sbatch call, run with the run folder (a sweep's: the sweep folder) as its working directory."""
    return ["sbatch", "--test-only" if test_only else "--parsable", script]


def srun_argv(plan: JobPlan, array: Optional[ArraySpec] = None) -> list[str]:
    """srun inside the allocation: every rank, one log per rank, and one failing rank ends them all."""
    pattern = ARRAY_RANK_LOG_PATTERN if array else RANK_LOG_PATTERN
    rank_logs = quoting.filename_pattern(f"{plan.run_dir}/{LOG_DIR}/") + pattern
    # a node range's tasks are laid out here, on the nodes granted (see sbatch_parameters)
    per_node = [f"--ntasks-per-node={plan.tasks_per_node}"] if plan.min_nodes is not None else []
    return ["srun", "--unbuffered", "--kill-on-bad-exit=1", "--open-mode=append", f"--output={rank_logs}",
            *per_node, *container_srun_flags(plan), *plan.srun_args, *rank_command(plan)]


GRES_STYLES = ("gpus_per_node", "gres")


def gpu_request(plan: JobPlan) -> dict[str, str]:
    """The sbatch parameter that asks for the plan's GPUs, in the site's spelling (cluster.gres_style):
    --gpus-per-node=[TYPE:]N, or --gres=gpu[:TYPE]:N. Nothing for CPU ranks."""
    if not plan.gpus_per_node:
        return {}
    typed = f"{plan.gpu_type}:" if plan.gpu_type else ""
    if plan.gres_style == "gres":
        return {"gres": f"gpu:{typed}{plan.gpus_per_node}"}
    return {"gpus_per_node": f"{typed}{plan.gpus_per_node}"}


def sbatch_parameters(plan: JobPlan) -> tuple[dict[str, Any], dict[str, Any]]:
    """(submitit's named parameters, its additional_parameters), every value checked by quoting.directive."""
    params: dict[str, Any] = {
        "job_name": quoting.slurm_name(plan.name),
        "partition": plan.partition,
        "time": plan.time_min,
        "nodes": plan.nodes,
        "ntasks_per_node": plan.tasks_per_node,
        "cpus_per_task": plan.cpus_per_task,
        **gpu_request(plan),
        "qos": plan.qos,
        "mem": plan.mem,
        "constraint": plan.constraint,
        "exclude": plan.exclude,
        "account": plan.account,
        "exclusive": True if plan.exclusive else None,
    }
    checked = {k: quoting.directive(k, v) if v is not True else v for k, v in params.items() if v is not None}
    additional: dict[str, Any] = {
        # submitit hardcodes USR2@90; this key replaces it, so the script has exactly one --signal line
        "signal": quoting.directive("signal", f"{plan.signal}@{plan.signal_delay_s}"),
        # the script's first line redirects its output into the run folder (see the module doc)
        "output": "/dev/null",
        "export": quoting.directive("export", ",".join(plan.exports) or "NONE"),
    }
    if plan.min_nodes is not None:
        # Start on what is free: Slurm grants the most nodes of the range it can without delaying the start
        # (replaces submitit's --nodes). Not with --ntasks-per-node: slurmctld then fixes the job's task count at
        # MIN x tasks_per_node when the job is created, and the node selection never gives a job more nodes
        # than tasks, so the job (and every requeue of it) would get MIN nodes even with all of them idle. The
        # CPUs per node are asked with --mincpus instead, and srun lays out tasks_per_node ranks per node granted.
        additional["nodes"] = quoting.directive("nodes", f"{plan.min_nodes}-{plan.nodes}")
        del checked["ntasks_per_node"]
        additional["mincpus"] = quoting.directive("mincpus", plan.tasks_per_node * plan.cpus_per_task)
    # cluster.requeue=false: Slurm itself must not requeue the job either (on a node failure, say)
    additional["requeue" if plan.requeue else "no_requeue"] = True
    if plan.dependency is not None:
        # cluster.after: wait for those jobs; a dependency that can never be satisfied (afterok on a job that
        # failed) cancels this job instead of leaving it pending forever (Slurm's default)
        additional["dependency"] = quoting.directive("dependency", plan.dependency)
        additional["kill_on_invalid_dep"] = "yes"
    for key, value in plan.sbatch_extra:
        quoting.directive("sbatch_extra key", key)
        if value is False or value is None:
            continue
        additional[key] = True if value is True else quoting.directive(key, value)
    return checked, additional


# the shell variables the script keeps srun's exit status and the watchdog's process id in
RANKS_STATUS_VAR = "ZERORUN_RANKS_STATUS"
WATCHDOG_PID_VAR = "ZERORUN_WATCHDOG_PID"


def _entry_args(plan: JobPlan) -> tuple[str, list[str]]:
    python, *rest = plan.entry
    return python, rest[rest.index(RANK_ENTRY) + 1:] if RANK_ENTRY in rest else []


def watchdog_start(plan: JobPlan) -> list[str]:
    """Before srun: the hang watchdog (jobs/watchdog.py) in the background on the batch host, outside the ranks."""
    if not plan.watchdog:
        return []
    return [f"{quoting.join(watchdog_argv(plan))} &", f"{WATCHDOG_PID_VAR}=$!"]


def watchdog_argv(plan: JobPlan) -> list[str]:
    """The hang watchdog's command (the rank entry's arguments): the job script's and the local launcher's."""
    python, args = _entry_args(plan)
    return [python, "-u", "-m", WATCHDOG_ENTRY, *args]


def host_step(plan: JobPlan) -> list[str]:
    """The batch script's last lines: once srun has returned, the watchdog is stopped and the batch host reads
    how the ranks ended and decides what follows (requeue, or why not; a failure when not every rank started;
    a hang the watchdog recorded): jobs/host.py. Its exit status is the job's."""
    python, args = _entry_args(plan)
    stop = [f'kill "${WATCHDOG_PID_VAR}" 2>/dev/null'] if plan.watchdog else []
    return [f"{RANKS_STATUS_VAR}=$?", *stop,
            f'exec {quoting.join([python, "-u", "-m", HOST_ENTRY, "after"])} "${RANKS_STATUS_VAR}" {quoting.join(args)}']


def _setup_lines(plan: JobPlan, array: Optional[ArraySpec] = None) -> list[str]:
    job = '"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"' if array else '"${SLURM_JOB_ID}"'
    batch_log = quoting.word(f"{plan.run_dir}/{LOG_DIR}/") + job + BATCH_LOG_SUFFIX
    return [
        f"exec >>{batch_log} 2>&1",
        # setup lines and ranks run where the user submitted from
        f"cd {quoting.word(plan.workdir)}",
        # sbatch --export=NAMES hands srun the same list; ALL gives the ranks what the lines below export
        "export SLURM_EXPORT_ENV=ALL",
        *plan.setup,
        *(quoting.assign(k, v) for k, v in plan.env),
        *container_setup(plan),
        *watchdog_start(plan),
    ]


def sbatch_script(plan: JobPlan, ctx: RenderContext, array: Optional[ArraySpec] = None,
                  script: str = SCRIPT_NAME) -> str:
    """The batch script for `plan`, rendered by submitit, with zerorun's header; a job array when `array`
    (`script`: its file name in the sweep folder, for the header)."""
    params, additional = sbatch_parameters(plan)
    if array is not None:
        # submitit's own array line: --array=0-{map_count-1}%{min(map_count, array_parallelism)}
        params["map_count"] = array.size
        params["array_parallelism"] = array.parallelism
    body = sbatch_text(
        command=quoting.join(srun_argv(plan, array)),
        setup=_setup_lines(plan, array),
        teardown=[*host_step(plan), ""],  # the empty line ends the script with a newline
        additional=additional,
        **params,
    )
    shebang, _, rest = body.partition("\n")
    what = f"a job array of {array.size} sweep members" if array else "run"
    folder = "sweep" if array else "run"
    header = [
        shebang,
        f"# rendered by zerorun {ctx.version} for {what} {quoting.comment(plan.name)}",
        f"# command: {quoting.comment(quoting.join(ctx.command))}",
        f"# submitted from the {folder} folder: {' '.join(sbatch_argv(script=script))}",
    ]
    return "\n".join(header) + "\n" + rest


# ---- containers (cluster.container; docs/containers.md) ----
# Only the ranks run in the container: srun starts them there, while the script's own lines (setup, the watchdog,
# `jobs.host after`, which asks scontrol and requeues) run on the batch host, where Slurm's commands are.


def rank_command(plan: JobPlan) -> list[str]:
    """What srun starts on every task: the plan's entry, or the same entry run by the image's Python inside the
    container (apptainer: through `apptainer exec`; pyxis: srun's own flags, container_srun_flags)."""
    c = plan.container
    if c is None:
        return list(plan.entry)
    inside = [c.python, *plan.entry[1:]]
    if c.runtime == "pyxis":
        return inside
    gpus = ["--nv"] if plan.gpus_per_node else []
    return [c.command, "exec", *gpus, "--bind", ",".join(all_mounts(plan)), "--pwd", c.workdir, *c.extra_args, c.image,
            *inside]


def container_srun_flags(plan: JobPlan) -> list[str]:
    """pyxis's srun flags: the image, the mounts, the folder the ranks start in, and the variables of
    cluster.container.env, whose values must win over the image's own (pyxis lets the image's win otherwise)."""
    c = plan.container
    if c is None or c.runtime != "pyxis":
        return []
    env = [f"--container-env={','.join(k for k, _ in c.env)}"] if c.env else []
    return [f"--container-image={c.image}", f"--container-mounts={','.join(all_mounts(plan))}",
            f"--container-workdir={c.workdir}", *env, *c.extra_args]


def container_env_prefix(command: str) -> str:
    """The prefix that hands a variable to the ranks inside apptainer (or singularity) over the image's value."""
    return "SINGULARITYENV_" if command.rsplit("/", 1)[-1].startswith("singularity") else "APPTAINERENV_"


def container_setup(plan: JobPlan) -> list[str]:
    """Batch-host lines before srun: the mounted folders zerorun owns made (a bind mount of a missing folder fails),
    and the variables of cluster.container.env exported for the ranks inside."""
    c = plan.container
    if c is None:
        return []
    prefix = container_env_prefix(c.command) if c.runtime == "apptainer" else ""
    return [f"mkdir -p {quoting.join(c.make_dirs)}", *(quoting.assign(prefix + k, v) for k, v in c.env)]


def port_text(plan: JobPlan, unknown: str) -> str:
    """The rendezvous port as the rank table shows it: the pinned one, else how it will be chosen."""
    return str(plan.master_port) if plan.master_port is not None else unknown


def rank_table(plan: JobPlan, hosts: list[str], port: str) -> list[RankRow]:
    """Every rank as the rendezvous contract will derive it from the variables the scheduler sets for it (the
    backend says how it names its hosts and how the port is chosen)."""
    nodelist = hosts[0] if len(set(hosts)) == 1 else ",".join(hosts)
    common = {
        SLURM_ENV["world_size"]: str(plan.world_size),
        SLURM_ENV["num_nodes"]: str(plan.nodes),
        SLURM_ENV["nodelist"]: nodelist,
        SLURM_ENV["job_id"]: "0",
    }
    rows = []
    for spec in plan.ranks(hosts):
        env = {
            **common,
            SLURM_ENV["global_rank"]: str(spec.rank),
            SLURM_ENV["local_rank"]: str(spec.local_rank),
            SLURM_ENV["node_rank"]: str(spec.node_rank),
        }
        r = derive(env, nodes=plan.nodes, tasks_per_node=plan.tasks_per_node)
        rows.append(RankRow(spec.host, r.rank, r.local_rank, r.node_rank, r.world_size, f"{r.master_addr}:{port}",
                            spec.device))
    return rows


TABLE_COLUMNS = ("host", "RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR:PORT", "device")


def table_cells(row: RankRow) -> tuple[str, ...]:
    return (row.host, str(row.rank), str(row.local_rank), str(row.node_rank), str(row.world_size), row.master,
            row.device)


def table_text(rows: list[RankRow]) -> str:
    """The rank table as aligned plain text (what the run folder keeps)."""
    return table.text(TABLE_COLUMNS, [table_cells(r) for r in rows])


