"""Asking the running cluster through Slurm's own clients: accounting registration, node states, a smoke job.

Every client gets SLURM_CONF explicitly, so none of them falls back to DNS SRV look-ups for its controller.
"""

from __future__ import annotations

import os
import subprocess
import time

from cluster.localslurm.config import DEFAULT_PARTITION, ClusterSpec, LocalSlurmError
from cluster.localslurm.procs import log_tails


def slurm(spec: ClusterSpec, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {**os.environ, "SLURM_CONF": str(spec.paths.slurm_conf)}
    return subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=timeout)


def register_in_accounting(spec: ClusterSpec, timeout: float = 60) -> None:
    """`sacctmgr add cluster` once slurmdbd answers; slurmctld refuses to start without it."""
    deadline = time.monotonic() + timeout
    listed = slurm(spec, "sacctmgr", "-n", "-P", "list", "clusters", "format=cluster")
    while listed.returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        listed = slurm(spec, "sacctmgr", "-n", "-P", "list", "clusters", "format=cluster")
    if listed.returncode != 0:
        raise LocalSlurmError(f"slurmdbd did not answer sacctmgr within {timeout:.0f} s: {listed.stderr.strip()}\n"
                              f"{log_tails(spec.paths.log('slurmdbd'))}")
    if spec.cluster_name not in listed.stdout.split():
        added = slurm(spec, "sacctmgr", "-i", "add", "cluster", spec.cluster_name)
        if added.returncode != 0:
            raise LocalSlurmError(f"registering cluster {spec.cluster_name!r} in accounting failed:"
                                  f" {added.stdout.strip()} {added.stderr.strip()}")


def node_states(spec: ClusterSpec) -> dict[str, str]:
    try:
        out = slurm(spec, "sinfo", "-h", "-N", "-o", "%N %t")
    except subprocess.TimeoutExpired:
        return {}
    # sinfo -N prints a node once per partition; the state is the same in each.
    return dict(row.split(maxsplit=1) for row in out.stdout.splitlines() if row.strip())


def wait_nodes_idle(spec: ClusterSpec, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = node_states(spec)
        if all(states.get(node) == "idle" for node in spec.node_names):
            return
        time.sleep(0.2)
    raise LocalSlurmError(f"nodes not idle after {timeout:.0f} s: {states or 'sinfo printed nothing'}\n"
                          + log_tails(spec.paths.log("slurmctld"),
                                            *(spec.paths.log(f"slurmd-{n}") for n in spec.node_names)))


def smoke_test(spec: ClusterSpec, timeout: float = 60) -> None:
    argv = ("srun", f"-N{spec.nodes}", "-p", DEFAULT_PARTITION, "--time=1", "true")
    try:
        run = slurm(spec, *argv, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise LocalSlurmError(f"smoke test `{' '.join(argv)}` did not finish in {timeout:.0f} s") from e
    if run.returncode != 0:
        raise LocalSlurmError(f"smoke test `{' '.join(argv)}` failed: {run.stderr.strip()}")


def cancel_all_jobs(spec: ClusterSpec, timeout: float = 30) -> list[str]:
    """scancel every job of the cluster and wait until the queue is empty (their tasks killed, KillWait
    included). Returns the job ids it cancelled; the queue may still hold some after `timeout`."""
    def queued() -> list[str]:
        try:
            out = slurm(spec, "squeue", "-h", "-o", "%A", timeout=15)
        except subprocess.TimeoutExpired:
            return []
        return out.stdout.split() if out.returncode == 0 else []

    jobs = queued()
    if not jobs:
        return []
    try:
        slurm(spec, "scancel", *jobs, timeout=15)
    except subprocess.TimeoutExpired:
        return jobs
    deadline = time.monotonic() + timeout
    while queued() and time.monotonic() < deadline:
        time.sleep(0.2)
    return jobs
