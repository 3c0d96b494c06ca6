"""The local cluster's life: `up`, `down`, `status` and `current`, and the manifest that ties them together.

`up` installs what is missing, writes the configs under the state folder, starts every daemon in its own session,
registers the cluster in accounting and waits until all nodes are idle and `srun` works. `down` stops every daemon
by the pid `up` recorded and undoes the system edits; it is safe to repeat. The pure half (spec, rendered configs,
daemon argv) is in config.py; processes in procs.py; system edits in system.py; questions to the running cluster
(sacctmgr, sinfo, srun) in probe.py. Everything runs with argv lists, never through a shell.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cluster.localslurm.conflink as conflink
import cluster.localslurm.probe as probe
import cluster.localslurm.procs as procs
import cluster.localslurm.system as system
from cluster.localslurm.config import (
    DEFAULT_PARTITION,
    HIGH_PARTITION,
    PARTITIONS,
    STATE_DIR_ENV,
    ClusterSpec,
    LocalSlurmError,
    differences,
    render_slurm_conf,
    render_slurmdbd_conf,
    resolve_state_dir,
)
from cluster.localslurm.daemons import DaemonPlan, daemon_plans, mariadb_install_argv
from cluster.localslurm.files import open_append, open_lock, secure_folder
from trainer_core.durable import write_atomic

__all__ = ["ClusterSpec", "LocalCluster", "LocalSlurmError", "current", "default_spec", "down", "recorded_spec",
           "status", "up"]

Say = Callable[[str], None]


@dataclass(frozen=True)
class LocalCluster:
    """Facts about a running local cluster: what a client needs to talk to it."""

    cluster_name: str
    state_dir: Path
    slurm_conf: Path
    nodes: tuple[str, ...]  # n1..nN, all on 127.0.0.1
    partitions: tuple[str, ...]
    default_partition: str
    high_partition: str  # a job here preempts (requeues) jobs in the default partition
    spec: ClusterSpec  # every setting, ports included
    daemons: tuple[procs.DaemonRecord, ...]  # in start order

    @classmethod
    def of(cls, spec: ClusterSpec, daemons: tuple[procs.DaemonRecord, ...]) -> LocalCluster:
        return cls(spec.cluster_name, spec.state_dir, spec.paths.slurm_conf, spec.node_names, PARTITIONS,
                   DEFAULT_PARTITION, HIGH_PARTITION, spec, daemons)

    def env(self) -> dict[str, str]:
        """Environment for any Slurm client (sbatch, srun, sacct, submitit) aimed at this cluster."""
        return {"SLURM_CONF": str(self.slurm_conf)}


# --- the manifest: <state>/cluster.json ---------------------------------------------------------------------

def _read_manifest(state_dir: Path) -> dict | None:
    path = ClusterSpec(state_dir).paths.manifest
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise LocalSlurmError(f"{path} is not valid JSON ({e}); if no cluster runs from {state_dir},"
                              " delete that folder or pick another --state-dir") from e


def _write_manifest(spec: ClusterSpec, manifest: dict) -> None:
    # Written before every system edit, so a crash part-way leaves a record `down` can undo from.
    manifest["spec"] = spec.to_record()
    write_atomic(spec.paths.manifest, json.dumps(manifest, indent=1, sort_keys=True) + "\n", mode=0o644)


def recorded_spec(state_dir: str | Path | None = None) -> ClusterSpec | None:
    """The spec of the cluster last started from this state folder, if any."""
    root = resolve_state_dir(state_dir)
    manifest = _read_manifest(root)
    if not manifest:
        return None
    return dataclasses.replace(ClusterSpec.from_record(manifest["spec"]), state_dir=root)


def _records(spec: ClusterSpec) -> list[tuple[DaemonPlan, procs.DaemonRecord | None]]:
    return [(plan, procs.DaemonRecord.load(spec.paths.pid_record(plan.name))) for plan in daemon_plans(spec)]


def current(state_dir: str | Path | None = None) -> LocalCluster | None:
    """The cluster running from this state folder, or None unless every one of its daemons is alive."""
    spec = recorded_spec(state_dir)
    if spec is None:
        return None
    records = _records(spec)
    if not all(rec is not None and procs.is_alive(rec) for _, rec in records):
        return None
    return LocalCluster.of(spec, tuple(rec for _, rec in records))


# --- up ---------------------------------------------------------------------------------------------------------

def default_spec(state_dir: str | Path | None = None) -> ClusterSpec:
    return ClusterSpec(resolve_state_dir(state_dir), cpus_per_node=os.cpu_count() or 1)


def up(spec: ClusterSpec | None = None, *, os_release: Path = Path("/etc/os-release"), smoke_test: bool = True,
       say: Say = print) -> LocalCluster:
    """Bring the cluster up (or reuse it if it already runs with this spec) and return its facts."""
    spec = spec or default_spec()
    spec = dataclasses.replace(spec, state_dir=resolve_state_dir(spec.state_dir))
    spec.validate()
    system.require_root("up")
    system.require_supported_distribution(os_release)
    spec = dataclasses.replace(spec, address=system.listen_address())
    with _exclusive(spec.state_dir):
        running = current(spec.state_dir)
        manifest = _read_manifest(spec.state_dir) or {}
        _refuse_foreign(spec, manifest, running, say)
        if running:
            diffs = differences(running.spec, spec)
            if diffs:
                raise LocalSlurmError(f"a cluster already runs from {spec.state_dir} with other settings ("
                                      + "; ".join(diffs) + "): run `zerorun cluster down` first to change them")
            say(f"local Slurm cluster {spec.cluster_name!r} is already up; reusing it")
            say(_summary(running))
            return running
        return _start(spec, manifest, smoke_test, say)


@contextlib.contextmanager
def _exclusive(state_dir: Path):
    """One up or down at a time per state folder: two test sessions starting at once must not both start
    daemons. The second waits, then finds the cluster up and reuses it."""
    secure_folder(state_dir)
    with open_lock(state_dir / ".lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _start(spec: ClusterSpec, manifest: dict, smoke_test: bool, say: Say) -> LocalCluster:
    """Install, write the state folder, start every daemon in order. On any failure, stop what was started."""
    _stop_leftovers(spec, say)
    _refuse_busy_ports(spec)

    missing = system.missing_packages()
    secure_folder(spec.paths.logs)
    if missing:
        say(f"installing {' '.join(missing)} with apt-get (log: {spec.paths.log('apt')})")
        _install(spec, manifest, missing, say)
    _prepare_state_folder(spec)

    started: list[procs.DaemonRecord] = []
    try:
        _apply_system_edits(spec, manifest)
        for plan in daemon_plans(spec):
            record = procs.start(plan, spec.paths.log(f"{plan.name}.console"), cwd=spec.state_dir)
            record.save(spec.paths.pid_record(plan.name))
            started.append(record)
            procs.wait_ready(plan, record, _daemon_logs(spec), depends_on=tuple(started[:-1]))
            if plan.name == "slurmdbd":
                probe.register_in_accounting(spec)
        probe.wait_nodes_idle(spec)
        if smoke_test:
            probe.smoke_test(spec)
    except BaseException:
        # Nothing half-started stays behind: stop what this call started and undo its system edits.
        say("start-up failed; stopping what was started")
        for record in reversed(started):
            procs.stop(record)
            spec.paths.pid_record(record.name).unlink(missing_ok=True)
        _remove_runtime_folder(spec)
        _undo_system_edits(spec, manifest, say)
        raise
    cluster = LocalCluster.of(spec, tuple(started))
    say(_summary(cluster))
    return cluster


def _install(spec: ClusterSpec, manifest: dict, missing: list[str], say: Say) -> None:
    """apt-get install; then the services those packages enabled for boot are disabled again (recorded first,
    so that `down` finishes the job if this is interrupted): the machine boots as it did before `up`."""
    enabled_before = system.enabled_units()
    system.install_packages(missing, spec.paths.log("apt"))
    enabled_now = system.enabled_units()
    newly = sorted(enabled_now - enabled_before)
    if newly:
        manifest["units_disabled"] = sorted({*manifest.get("units_disabled", []), *newly})
        _write_manifest(spec, manifest)
        still = system.disable_units(newly)
        say(f"disabled at boot what the packages enabled: {' '.join(newly)}"
            + (f" (still enabled: {' '.join(sorted(still))})" if still else ""))


def _refuse_foreign(spec: ClusterSpec, manifest: dict, running: LocalCluster | None, say: Say) -> None:
    recorded_name = manifest.get("spec", {}).get("cluster_name")
    if recorded_name is None or recorded_name == spec.cluster_name:
        return
    if running:
        raise LocalSlurmError(
            f"state folder {spec.state_dir} belongs to cluster {recorded_name!r}, which is running; to start"
            f" {spec.cluster_name!r} pick another --state-dir (or ${STATE_DIR_ENV}), or stop it first"
            f" with `zerorun cluster down --state-dir {spec.state_dir}`"
        )
    # The old cluster is down: its accounting database is kept (one database per cluster name), but the
    # controller refuses state saved under another cluster name, so that state goes.
    say(f"state folder {spec.state_dir} held cluster {recorded_name!r}, which is down; reusing it for"
        f" {spec.cluster_name!r} (the controller state of {recorded_name!r} is reset, its accounting is kept)")
    for leftover in spec.paths.ctld_state.glob("*"):
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()


def _stop_leftovers(spec: ClusterSpec, say: Say) -> None:
    """A cluster that is only partly alive (a daemon crashed) is stopped completely before starting again."""
    old = recorded_spec(spec.state_dir) or spec
    alive = [rec for _, rec in _records(old) if rec is not None and procs.is_alive(rec)]
    if alive:
        say("part of the cluster is still running (" + ", ".join(r.name for r in alive) + "); restarting it")
        for record in reversed(alive):
            procs.stop(record)


def _refuse_busy_ports(spec: ClusterSpec) -> None:
    for port, daemon, flag in spec.ports():
        if procs.port_in_use(port):
            raise LocalSlurmError(f"port {port} (for {daemon}) is already in use on this machine: free it, or"
                                  f" choose another port with `zerorun cluster up {flag} PORT`")


def _prepare_state_folder(spec: ClusterSpec) -> None:
    paths = spec.paths
    for folder, mode in (*paths.dirs(), (paths.munge_run, 0o755)):
        secure_folder(folder, mode).chmod(mode)  # not a link: secure_folder refuses those
    if not os.path.lexists(paths.munge_key):
        # A key of our own: this cluster never talks to a system munged, and vice versa.
        write_atomic(paths.munge_key, secrets.token_bytes(128), mode=0o600)
    if not (paths.mysql_data / "mysql").exists():
        log = paths.log("mariadb-install-db")
        with open_append(log) as out:
            if subprocess.run(mariadb_install_argv(spec), stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                raise LocalSlurmError(f"creating the accounting database failed.\n{procs.log_tails(log)}")
    write_atomic(paths.slurm_conf, render_slurm_conf(spec), mode=0o644)
    # slurmdbd refuses a config that others can read
    write_atomic(paths.slurmdbd_conf, render_slurmdbd_conf(spec), mode=0o600)
    for plan in daemon_plans(spec):
        paths.pid_record(plan.name).unlink(missing_ok=True)
    # No daemon of ours runs now; sockets left by one that was killed would only confuse the next start.
    for stale in (paths.munge_socket, paths.mysql_socket):
        stale.unlink(missing_ok=True)


def _apply_system_edits(spec: ClusterSpec, manifest: dict) -> None:
    """/etc/hosts line and /etc/slurm/slurm.conf link, each recorded in the manifest before it is made, so a
    crash part-way still leaves `down` what it needs to undo it."""
    new_hosts, manifest["hosts"] = system.hosts_edit(spec, manifest.get("hosts"))
    _write_manifest(spec, manifest)
    if new_hosts is not None:
        system.write_hosts(new_hosts)

    state = conflink.link_state()
    target_alive = False
    if state[0] == "symlink" and Path(state[1]) != spec.paths.slurm_conf:
        other = conflink.cluster_state_dir(state[1])
        target_alive = other is not None and _alive(other)
    decision = conflink.decide(state, spec.paths.slurm_conf, target_alive)
    if decision == "claim":
        manifest["conf_link"] = conflink.plan_claim(spec.paths.slurm_conf, state)
        _write_manifest(spec, manifest)
        conflink.claim(manifest["conf_link"])
    elif decision == "leave":
        manifest["conf_link"] = None
        _write_manifest(spec, manifest)


def _undo_system_edits(spec: ClusterSpec, manifest: dict, say: Say) -> None:
    system.undo_hosts(manifest.get("hosts"))
    note = conflink.undo(manifest.get("conf_link"), alive=_alive)
    if note:
        say(note)
    manifest["hosts"] = manifest["conf_link"] = None
    if spec.paths.manifest.parent.exists():
        _write_manifest(spec, manifest)


def _remove_runtime_folder(spec: ClusterSpec) -> None:
    """munged leaves its socket behind once stopped; the folder under /run holding it is this cluster's alone."""
    spec.paths.munge_socket.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        spec.paths.munge_run.rmdir()


def _alive(state_dir: Path) -> bool:
    return current(state_dir) is not None


def _daemon_logs(spec: ClusterSpec) -> dict[str, tuple[Path, ...]]:
    """Each daemon's console output and its own LogFile (named after it), for error messages."""
    return {plan.name: (spec.paths.log(f"{plan.name}.console"), spec.paths.log(plan.name))
            for plan in daemon_plans(spec)}


def _summary(cluster: LocalCluster) -> str:
    spec = cluster.spec
    rows = [f"local Slurm cluster {spec.cluster_name!r} is up (state folder {spec.state_dir})"]
    ports = {"slurmdbd": spec.slurmdbd_port, "slurmctld": spec.slurmctld_port,
             **{f"slurmd-{n}": p for n, p in spec.slurmd_ports.items()}}
    for rec in cluster.daemons:
        where = f"port {ports[rec.name]}" if rec.name in ports else "unix socket"
        rows.append(f"  {rec.name:<12} pid {rec.pid:<8} {where}")
    rows += [
        f"  nodes {' '.join(spec.node_names)}: {spec.cpus_per_node} CPUs and {spec.real_memory_mb} MB each",
        f"  partitions {DEFAULT_PARTITION} (default) and {HIGH_PARTITION} (preempts {DEFAULT_PARTITION} by requeue)",
        "point a shell at it:",
        f"  export SLURM_CONF={spec.paths.slurm_conf}",
    ]
    return "\n".join(rows)


# --- down and status ------------------------------------------------------------------------------------------

def down(state_dir: str | Path | None = None, *, say: Say = print) -> bool:
    """Cancel the cluster's jobs, stop every daemon `up` recorded (by pid), end what the jobs left running, and
    undo the system edits. Returns whether anything ran."""
    spec = recorded_spec(state_dir)
    if spec is None:
        say(f"no local Slurm cluster recorded in {resolve_state_dir(state_dir)}; nothing to stop")
        return False
    system.require_root("down")
    stopped_any = False
    with _exclusive(spec.state_dir):
        records = _records(spec)
        if any(plan.name == "slurmctld" and rec is not None and procs.is_alive(rec) for plan, rec in records):
            # Through Slurm first, while it runs: the jobs end as a cancel ends them (signals, KillWait, epilog).
            cancelled = probe.cancel_all_jobs(spec)
            if cancelled:
                say(f"  cancelled {len(cancelled)} job(s): {' '.join(cancelled)}")
        for plan, record in reversed(records):
            if record is None:
                continue
            outcome = procs.stop(record)
            stopped_any |= outcome != "not running"
            say(f"  {plan.name:<12} pid {record.pid:<8} {outcome}")
            spec.paths.pid_record(plan.name).unlink(missing_ok=True)
        # A job step's slurmstepd outlives slurmd; whatever a cancel did not end (or could not: no controller) ends here.
        leftovers = procs.job_processes(spec.paths.slurm_conf)
        if leftovers:
            survivors = procs.kill_all(leftovers)
            say(f"  killed {len(leftovers)} process(es) left by jobs"
                + (f"; still alive: {' '.join(map(str, survivors))}" if survivors else ""))
        _remove_runtime_folder(spec)
        manifest = _read_manifest(spec.state_dir) or {}
        if manifest.get("units_disabled"):
            system.disable_units(set(manifest["units_disabled"]) & system.enabled_units())
        _undo_system_edits(spec, manifest, say)
    was = "is down" if stopped_any else "was not running"
    say(f"local Slurm cluster {spec.cluster_name!r} {was} (state kept in {spec.state_dir})")
    return stopped_any


def status(state_dir: str | Path | None = None, *, say: Say = print) -> bool:
    """Print daemons, nodes, partitions and queue. Returns whether the cluster is fully up."""
    spec = recorded_spec(state_dir)
    if spec is None:
        say(f"no local Slurm cluster recorded in {resolve_state_dir(state_dir)}: start one with `zerorun cluster up`")
        return False
    records = _records(spec)
    alive = {plan.name: rec is not None and procs.is_alive(rec) for plan, rec in records}
    say(f"cluster {spec.cluster_name!r}, state folder {spec.state_dir}")
    for plan, rec in records:
        say(f"  {plan.name:<12} pid {rec.pid if rec else '-':<8} {'alive' if alive[plan.name] else 'not running'}")
    if alive.get("slurmctld"):
        for argv in (("sinfo", "-N", "-o", "%N %P %t %c %m"), ("sinfo", "-o", "%P %a %D %N"), ("squeue",)):
            try:
                out = probe.slurm(spec, *argv, timeout=15)
                say(f"$ {' '.join(argv)}\n{(out.stdout or out.stderr).rstrip()}")
            except subprocess.TimeoutExpired:
                say(f"$ {' '.join(argv)}\n(no answer from slurmctld in 15 s; see {spec.paths.log('slurmctld')})")
    up_now = all(alive.values())
    say(f"export SLURM_CONF={spec.paths.slurm_conf}" if up_now else "the cluster is not up: `zerorun cluster up`")
    return up_now
