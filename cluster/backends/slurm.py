"""The Slurm backend: an sbatch script (cluster/render.py) submitted with sbatch, followed with squeue, sacct
and scontrol (cluster/slurm.py), and inside the job the rank contract derived from Slurm's variables
(cluster/rendezvous.py); on the batch host, the job's clock and `scontrol requeue` (cluster/requeue.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, TextIO

from cluster import preflight, render, rendezvous, requeue, slurm
from cluster.here import local_command
from cluster.plan import JobPlan
from trainer_core import layout
from trainer_core.contract import Rendezvous


class SlurmBackend:
    name = "slurm"
    no_requeue: Optional[str] = None
    runs_in_foreground = False

    def script_files(self, plan: JobPlan, ctx: render.RenderContext) -> dict[str, str]:
        return {render.SCRIPT_NAME: render.sbatch_script(plan, ctx)}

    def rank_table(self, plan: JobPlan) -> list[render.RankRow]:
        return render.rank_table(plan, [f"node{n}" for n in range(plan.nodes)],
                                 port=render.port_text(plan, f"<{rendezvous.PORT_BASE}+jobid%{rendezvous.PORT_SPAN}>"))

    def probe(self) -> preflight.ClusterFacts:
        return preflight.probe()

    def preflight(self, plan: JobPlan, facts: preflight.ClusterFacts) -> preflight.Preflight:
        problems = preflight.plan_problems(plan) + preflight.slurm_plan_problems(plan)
        notes = []
        if facts.answered:
            problems += preflight.cluster_problems(plan, facts)
            if facts.source != "sinfo":
                notes.append(f"partitions, nodes and limits checked against {facts.source}; Slurm was not asked")
        else:
            notes.append(f"the cluster was not asked ({facts.error}): partition, nodes and memory were not checked")
        return preflight.Preflight(problems, notes)

    def ask_scheduler(self, run_dir: str, facts: preflight.ClusterFacts, out: TextIO) -> list[str]:
        return preflight.ask_test_only(run_dir, None, facts, out, "script")

    def launch(self, plan: JobPlan, run_dir: str, out: TextIO, err: TextIO,
               restart_count: int = 0) -> tuple[str, int]:  # Slurm restarts its jobs itself
        return slurm.sbatch_or_find(run_dir, render.sbatch_parameters(plan)[0]["job_name"]), 0

    def query(self, job_ids: list[str]) -> dict[str, slurm.JobState]:
        return slurm.query(job_ids)

    def cancel(self, job_id: str) -> None:
        slurm.scancel(job_id)

    def rank_logs(self, run_dir: Path, job_id: Optional[str]) -> dict[int, Path]:
        found: dict[int, Path] = {}
        if job_id is None:  # the newest job's
            candidates = sorted((run_dir / layout.LOGS).glob("*_*.out"), key=lambda p: p.stat().st_mtime)
            for p in candidates:
                head, _, rank = p.stem.rpartition("_")
                if rank.isdigit() and head.isdigit():
                    job_id = head
        return layout.logs_by_rank(run_dir, f"{job_id}_*.out", "_") if job_id is not None else found

    def rank_contract(self, environ: Mapping[str, str], *, nodes: int, tasks_per_node: int,
                      min_nodes: Optional[int] = None) -> Rendezvous:
        return rendezvous.derive(environ, nodes=nodes, tasks_per_node=tasks_per_node, min_nodes=min_nodes)

    def granted_nodes(self, environ: Mapping[str, str]) -> Optional[int]:
        value = environ.get(rendezvous.SLURM_ENV["num_nodes"], "")
        return int(value) if value.isdigit() else None

    def job_identity(self, environ: Mapping[str, str]) -> tuple[str, int]:
        return environ.get(rendezvous.SLURM_ENV["job_id"], "0"), rendezvous.restart_count(environ)

    def job_clock(self, environ: Mapping[str, str]) -> Optional[requeue.JobClock]:
        return requeue.job_clock(requeue.job_to_requeue(environ))

    def requeue(self, environ: Mapping[str, str], exclude: Sequence[str] = ()) -> tuple[bool, str]:
        job = requeue.job_to_requeue(environ)
        ok, what = requeue.scontrol_requeue(job)
        if ok and exclude:
            excluded, said = requeue.scontrol_exclude(job, sorted(exclude))
            what = f"{what}, {said}" if excluded else f"{what}, but not {said}"
        return ok, what

    def rank_failures(self, environ: Mapping[str, str], run_dir: str) -> list[slurm.TaskFailure]:
        env = rendezvous.SLURM_ENV
        array_job, task = environ.get(env["array_job_id"]), environ.get(env["array_task_id"], "")
        if array_job and task.isdigit():  # a sweep member: its array task's batch log is in the sweep folder
            log = Path(run_dir).parent / layout.array_batch_log(array_job, int(task))
        else:
            log = Path(run_dir) / layout.batch_log(environ.get(env["job_id"], "0"))
        try:
            return slurm.failed_tasks(log.read_text(errors="replace"))
        except OSError:
            return []

    def on_node(self, node: str, argv: list[str], environ: Mapping[str, str], timeout: float) -> tuple[int, str]:
        job_id = environ.get(rendezvous.SLURM_ENV["job_id"], "")
        if node == environ.get(rendezvous.SLURM_ENV["node_name"]):
            return local_command(argv, timeout)  # the batch host is that node: no srun needed
        return slurm.on_node(job_id, node, argv, timeout)

    def end_ranks(self, environ: Mapping[str, str], pids: Sequence[tuple[str, int]]) -> tuple[bool, str]:
        return slurm.kill_steps(environ.get(rendezvous.SLURM_ENV["job_id"], ""))
