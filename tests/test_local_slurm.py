"""`zerorun cluster`: the pure half (rendered configs, /etc/hosts edits, decisions) and the real cluster.

Tests marked `slurm` run real jobs on the session cluster (tests/conftest_slurm.py). Nothing here is mocked;
the one stand-in is a fake os-release file, and the test that uses it says so in its name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cluster.localslurm as localslurm
import cluster.localslurm.procs as procs
import cluster.localslurm.system as system
from cluster.localslurm.config import (
    ClusterSpec,
    LocalSlurmError,
    add_hosts_entry,
    parse_os_release,
    remove_hosts_entry,
    render_slurm_conf,
    unsupported_distribution,
)

REPO = Path(__file__).resolve().parents[1]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


# --- pure: no cluster needed --------------------------------------------------------------------------------

GOLDEN_SLURM_CONF = """\
# Written by `zerorun cluster up` for cluster zerorun; rewritten on every up.
ClusterName=zerorun
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=16817
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=/s/sock/munge,cred_expire=5
StateSaveLocation=/s/slurmctld
SlurmdSpoolDir=/s/slurmd/%n
SlurmctldPidFile=/s/run/slurmctld.pid
SlurmdPidFile=/s/run/slurmd-%n.pid
SlurmctldLogFile=/s/log/slurmctld.log
SlurmdLogFile=/s/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmdParameters=config_overrides
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
SchedulerParameters=sched_interval=1,bf_interval=1
KillWait=2
MessageTimeout=10
ReturnToService=2
MaxArraySize=1001
JobRequeue=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=16819
AccountingStoragePass=/s/sock/munge
JobAcctGatherType=jobacct_gather/none
NodeName=n1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=17001 CPUs=2 RealMemory=8000 State=UNKNOWN
NodeName=n2 NodeHostname=localhost NodeAddr=127.0.0.1 Port=17002 CPUs=2 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES PriorityTier=1 GraceTime=5 MaxTime=INFINITE State=UP
PartitionName=high Nodes=n1,n2 PriorityTier=10 PreemptMode=OFF MaxTime=INFINITE State=UP
"""


def test_slurm_conf_renders_exactly_the_golden_text():
    assert render_slurm_conf(ClusterSpec(Path("/s"))) == GOLDEN_SLURM_CONF


def test_slurm_conf_follows_nodes_ports_and_array_size():
    spec = ClusterSpec(Path("/s"), nodes=3, slurmd_base_port=20000, max_array_size=50, real_memory_mb=4000)
    text = render_slurm_conf(spec)
    assert "NodeName=n3 NodeHostname=localhost NodeAddr=127.0.0.1 Port=20002 CPUs=2 RealMemory=4000" in text
    assert "PartitionName=high Nodes=n1,n2,n3 " in text
    assert "MaxArraySize=50\n" in text


@pytest.mark.parametrize("before", ["", "127.0.0.1 localhost\n", "127.0.0.1 localhost", "a\r\nb\r\n", "x\n\n"])
def test_hosts_entry_round_trip_is_byte_identical(before):
    line = "127.0.0.1 n1 n2 # zerorun-local-slurm /s"
    added, newline_added = add_hosts_entry(before, line)
    assert line in added.splitlines()
    assert add_hosts_entry(added, line) == (added, False), "adding twice must not add a second line"
    assert remove_hosts_entry(added, line, newline_added) == before
    # Lines that someone else appended after ours survive the removal.
    assert remove_hosts_entry(added + "10.0.0.1 other\n", line, newline_added).endswith("10.0.0.1 other\n")


def test_spec_errors_name_the_flag_and_the_arithmetic():
    clash = r"port 17002 .*slurmctld \(--slurmctld-port\).*\(--slurmd-base-port\).*17001..17002"
    with pytest.raises(LocalSlurmError, match=clash):
        ClusterSpec(Path("/s"), slurmctld_port=17002).validate()
    with pytest.raises(LocalSlurmError, match="--cluster-name"):
        ClusterSpec(Path("/s"), cluster_name="Has Space").validate()
    with pytest.raises(LocalSlurmError, match="shorter --state-dir"):
        ClusterSpec(Path("/" + "x" * 120)).validate()


def test_distribution_decision():
    debian = parse_os_release('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n')
    mint = parse_os_release('ID=linuxmint\nID_LIKE="ubuntu debian"\n')
    fedora = parse_os_release('ID=fedora\nPRETTY_NAME="Fedora Linux 40"\n')
    assert unsupported_distribution(debian, has_apt=True) is None
    assert unsupported_distribution(mint, has_apt=True) is None
    assert "Fedora Linux 40" in unsupported_distribution(fedora, has_apt=False)
    assert "apt-get" in unsupported_distribution(debian, has_apt=False)


def test_conf_link_decision_never_steals_a_live_clusters_link():
    ours = Path("/a/etc/slurm.conf")
    assert system.decide_conf_link(("absent", None), ours, False) == "claim"
    assert system.decide_conf_link(("symlink", str(ours)), ours, True) == "keep"
    assert system.decide_conf_link(("symlink", "/b/etc/slurm.conf"), ours, True) == "leave"
    assert system.decide_conf_link(("symlink", "/b/etc/slurm.conf"), ours, False) == "claim"
    assert system.decide_conf_link(("file", None), ours, False) == "claim"


def test_submission_side_does_not_import_the_ml_stack():
    code = ("import sys, cluster.localslurm; "
            "print(sorted(m for m in ('torch', 'lightning', 'pytorch_lightning', 'deepspeed', 'transformers',"
            " 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- bad input: each refused with a message that names the fix, nothing started -----------------------------

def run_cli(*argv: str, user: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cluster.localslurm", *argv]
    if user:
        # The venv's interpreter may sit under root's home, out of another user's reach; the cluster package is
        # standard library only, so any Python 3.10+ that user can run will do.
        python = next((p for p in (sys.executable, "/usr/bin/python3") if _runs_as(user, p)), None)
        if python is None:
            pytest.fail(f"no Python interpreter that {user!r} may execute (tried {sys.executable}, /usr/bin/python3)")
        cmd = ["runuser", "-u", user, "--", "env", f"PYTHONPATH={REPO}", python, "-m", "cluster.localslurm", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, cwd="/", timeout=120)


def _runs_as(user: str, python: str) -> bool:
    return subprocess.run(["runuser", "-u", user, "--", python, "-c", "pass"], capture_output=True).returncode == 0


def assert_nothing_started(state_dir: Path) -> None:
    pid_records = list((state_dir / "pids").glob("*.json")) if (state_dir / "pids").exists() else []
    assert pid_records == [], f"daemons were started: {pid_records}"


def test_up_refuses_an_unprivileged_user():
    state = Path("/tmp") / f"zr-nobody-{os.getpid()}"
    refused = run_cli("up", "--state-dir", str(state), user="nobody")
    assert refused.returncode != 0
    assert "needs root" in refused.stderr and "sudo" in refused.stderr, refused.stderr
    assert not state.exists()


def test_up_refuses_a_port_in_use(tmp_path):
    state = tmp_path / "state"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 46819))
        squatter.listen()
        refused = run_cli("up", "--state-dir", str(state), "--cluster-name", "zrports", "--slurmctld-port", "46817",
                          "--slurmdbd-port", "46819", "--slurmd-base-port", "47001")
    assert refused.returncode != 0
    assert "port 46819 (for slurmdbd) is already in use" in refused.stderr, refused.stderr
    assert "--slurmdbd-port" in refused.stderr
    assert_nothing_started(state)


def test_up_refuses_a_fake_unsupported_distribution(tmp_path):
    fake = tmp_path / "os-release"
    fake.write_text('NAME="Fedora Linux"\nID=fedora\nPRETTY_NAME="Fedora Linux 40 (Workstation Edition)"\n')
    refused = run_cli("up", "--state-dir", str(tmp_path / "state"), "--os-release", str(fake))
    assert refused.returncode != 0
    assert "unsupported distribution 'Fedora Linux 40" in refused.stderr, refused.stderr
    assert "SLURM_CONF" in refused.stderr
    assert_nothing_started(tmp_path / "state")


def test_status_exits_non_zero_when_not_up(tmp_path):
    status = run_cli("status", "--state-dir", str(tmp_path / "nothing-here"))
    assert status.returncode == 1
    assert "zerorun cluster up" in status.stdout


# --- the real cluster -----------------------------------------------------------------------------------------

def slurm(cluster: localslurm.LocalCluster, *argv: str, timeout: float = 60) -> str:
    done = subprocess.run(list(argv), env={**os.environ, **cluster.env()}, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{' '.join(argv)} failed: {done.stderr}"
    return done.stdout


def sbatch(cluster: localslurm.LocalCluster, *argv: str) -> str:
    return slurm(cluster, "sbatch", "--parsable", *argv).strip().split(";")[0]


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def wait_for_job(cluster: localslurm.LocalCluster, job: str, rows: int = 1, timeout: float = 60) -> dict[str, tuple]:
    """{job id: (state, exit code)} from sacct once `rows` allocations have ended (sacct lags slurmctld)."""
    deadline = time.monotonic() + timeout
    seen: dict[str, tuple] = {}
    while time.monotonic() < deadline:
        out = slurm(cluster, "sacct", "-X", "-n", "-P", "-j", job, "-o", "JobID,State,ExitCode")
        seen = {jid: (state.split()[0], code) for jid, state, code in (r.split("|") for r in out.splitlines())}
        if len(seen) >= rows and all(state in TERMINAL for state, _ in seen.values()):
            return seen
        time.sleep(0.2)
    raise AssertionError(f"job {job} not finished after {timeout:.0f} s: {seen}\n{slurm(cluster, 'squeue')}")


@pytest.mark.slurm
def test_sbatch_output_lands_and_sacct_tells_completed_from_failed(slurm_cluster, tmp_path):
    ok = sbatch(slurm_cluster, "-o", str(tmp_path / "ok.out"), "--wrap", "echo hello from $SLURMD_NODENAME")
    bad = sbatch(slurm_cluster, "-o", str(tmp_path / "bad.out"), "--wrap", "exit 3")
    assert wait_for_job(slurm_cluster, ok) == {ok: ("COMPLETED", "0:0")}
    assert wait_for_job(slurm_cluster, bad) == {bad: ("FAILED", "3:0")}
    assert (tmp_path / "ok.out").read_text().strip() in {f"hello from {n}" for n in slurm_cluster.nodes}


def rank_facts() -> tuple[str, str, str]:
    return os.environ["SLURMD_NODENAME"], os.environ["SLURM_NODEID"], os.environ["SLURM_PROCID"]


def gloo_all_reduce() -> tuple[str, float]:
    import submitit
    import torch
    import torch.distributed as dist

    job = submitit.JobEnvironment()
    os.environ["MASTER_ADDR"] = job.hostnames[0]
    os.environ["MASTER_PORT"] = str(20000 + int(os.environ["SLURM_JOB_ID"]) % 20000)
    dist.init_process_group("gloo", rank=job.global_rank, world_size=job.num_tasks)
    value = torch.tensor([float(job.global_rank + 1)])
    dist.all_reduce(value)
    dist.destroy_process_group()
    return os.environ["MASTER_ADDR"], value.item()


def two_node_executor(folder: Path):
    import cloudpickle
    import submitit

    # The job imports nothing from tests/: the functions travel by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(nodes=2, tasks_per_node=1, cpus_per_task=1, timeout_min=5, slurm_partition="debug")
    return executor


@pytest.mark.slurm
@pytest.mark.timeout(120)
def test_submitit_two_node_job_sees_one_rank_per_node(slurm_cluster, tmp_path):
    job = two_node_executor(tmp_path / "submitit").submit(rank_facts)
    assert sorted(job.results()) == [("n1", "0", "0"), ("n2", "1", "1")]


@pytest.mark.slurm
@pytest.mark.timeout(120)
def test_gloo_all_reduce_across_the_two_nodes(slurm_cluster, tmp_path):
    job = two_node_executor(tmp_path / "submitit").submit(gloo_all_reduce)
    assert job.results() == [("n1", 3.0), ("n1", 3.0)]


@pytest.mark.slurm
def test_job_array_of_ten_tasks_completes(slurm_cluster, tmp_path):
    job = sbatch(slurm_cluster, "--array=0-9", "-o", str(tmp_path / "task-%a.out"), "--wrap",
                 "echo $SLURM_ARRAY_TASK_ID")
    states = wait_for_job(slurm_cluster, job, rows=10)
    assert sorted(states) == sorted(f"{job}_{i}" for i in range(10))
    assert {state for state, _ in states.values()} == {"COMPLETED"}
    assert {(tmp_path / f"task-{i}.out").read_text().strip() for i in range(10)} == {str(i) for i in range(10)}


# Traps the preemption signal, runs until killed; the rerun (SLURM_RESTART_COUNT=1) just reports and exits.
PREEMPTIBLE = """#!/bin/bash
log={log}
echo "start ${{SLURM_RESTART_COUNT:-0}} $(date +%s.%N)" >> "$log"
[ "${{SLURM_RESTART_COUNT:-0}}" -ge 1 ] && exit 0
trap 'echo "USR2 $(date +%s.%N)" >> "$log"' USR2
trap 'echo "TERM $(date +%s.%N)" >> "$log"' TERM
while :; do sleep 0.1; done
"""


def read_events(log: Path) -> list[tuple[str, float]]:
    if not log.exists():
        return []
    return [(" ".join(w[:-1]), float(w[-1])) for w in (row.split() for row in log.read_text().splitlines())]


def wait_for_event(log: Path, name: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hits = [t for event, t in read_events(log) if event == name]
        if hits:
            return hits[0]
        time.sleep(0.1)
    raise AssertionError(f"no {name!r} in {log} after {timeout:.0f} s: {read_events(log)}")


@pytest.mark.slurm
@pytest.mark.timeout(150)
def test_high_partition_preempts_signals_and_requeues_a_debug_job(slurm_cluster, tmp_path):
    log = tmp_path / "events"
    script = tmp_path / "preemptible.sh"
    script.write_text(PREEMPTIBLE.format(log=shlex.quote(str(log))))
    all_nodes = f"-N{len(slurm_cluster.nodes)}"
    # One CPU per node, so it starts beside other jobs; the exclusive high job then needs what it holds.
    low = sbatch(slurm_cluster, "-p", slurm_cluster.default_partition, all_nodes, "--requeue",
                 "--signal=B:USR2@60", "--time=10", "-o", str(tmp_path / "low.out"), str(script))
    wait_for_event(log, "start 0", timeout=60)

    submitted = time.time()
    high = sbatch(slurm_cluster, "-p", slurm_cluster.high_partition, all_nodes, "--exclusive", "-o", "/dev/null",
                  "--wrap", "sleep 1")
    signalled = wait_for_event(log, "USR2", timeout=30)
    rerun = wait_for_event(log, "start 1", timeout=90)
    assert wait_for_job(slurm_cluster, high) == {high: ("COMPLETED", "0:0")}
    assert wait_for_job(slurm_cluster, low)[low][0] == "COMPLETED"
    # -D: every run of the job, the preempted one included; its End is when Slurm requeued it.
    history = slurm(slurm_cluster, "sacct", "-X", "-n", "-P", "-D", "-j", low, "-o", "State,End").splitlines()
    requeued = [end for state, end in (row.split("|") for row in history) if state in {"PREEMPTED", "REQUEUED"}]
    assert requeued, f"no preempted run of job {low} in sacct: {history}"
    requeued_at = time.mktime(time.strptime(requeued[0], "%Y-%m-%dT%H:%M:%S"))
    print(f"\npreemption: signal {signalled - submitted:.1f} s after the high job was submitted;"
          f" requeued {requeued_at - signalled:.0f} s after the signal; rerun {rerun - requeued_at:.0f} s after"
          f" the requeue (sacct times are whole seconds)")


@pytest.mark.slurm
def test_status_of_the_session_cluster_exits_zero(slurm_cluster):
    status = run_cli("status", "--state-dir", str(slurm_cluster.state_dir))
    assert status.returncode == 0, status.stdout + status.stderr
    assert "slurmd-n2" in status.stdout and "debug*" in status.stdout
    assert len(processes_of(slurm_cluster.state_dir)) >= len(slurm_cluster.daemons), "processes_of must see them"


@pytest.mark.slurm
def test_up_refuses_a_state_folder_of_another_running_cluster(slurm_cluster):
    refused = run_cli("up", "--state-dir", str(slurm_cluster.state_dir), "--cluster-name", "intruder")
    assert refused.returncode != 0
    assert f"belongs to cluster {slurm_cluster.cluster_name!r}, which is running" in refused.stderr, refused.stderr
    assert "--state-dir" in refused.stderr and "zerorun cluster down" in refused.stderr
    assert localslurm.current(slurm_cluster.state_dir) is not None, "the refusal must leave the cluster running"


@pytest.mark.slurm
@pytest.mark.timeout(150)
def test_up_down_up_of_a_second_cluster_leaves_nothing_behind(slurm_cluster, tmp_path):
    # Own state folder, name and ports, so the session cluster keeps running throughout.
    spec = dataclasses.replace(localslurm.default_spec(tmp_path / "second"), cluster_name="zrsecond",
                               slurmctld_port=26817, slurmdbd_port=26819, slurmd_base_port=27001)
    hosts_before = Path("/etc/hosts").read_bytes()
    link_before = system.conf_link_state()
    timings = {}
    try:
        started = time.monotonic()
        first = localslurm.up(spec)
        timings["up"] = time.monotonic() - started
        assert localslurm.up(spec).daemons == first.daemons, "up while up must reuse the running daemons"
        assert str(spec.state_dir) in Path("/etc/hosts").read_text()

        assert localslurm.down(spec.state_dir) is True
        assert [d.name for d in first.daemons if procs.is_alive(d)] == []
        assert processes_of(spec.state_dir) == []
        assert Path("/etc/hosts").read_bytes() == hosts_before
        assert system.conf_link_state() == link_before
        assert localslurm.down(spec.state_dir) is False, "a second down finds nothing to stop"

        # The folder of a cluster that is down can be taken by another cluster name...
        renamed = dataclasses.replace(spec, cluster_name="zrthird")
        started = time.monotonic()
        again = localslurm.up(renamed)
        timings["up again"] = time.monotonic() - started
        slurm(again, "srun", "-N2", "true")
        # A cluster missing one daemon is not up; `up` restarts it whole.
        crashed = next(d for d in again.daemons if d.name == "slurmd-n2")
        os.kill(crashed.pid, signal.SIGKILL)
        assert wait_until(lambda: localslurm.current(spec.state_dir) is None, timeout=10)
        healed = localslurm.up(renamed)
        assert all(procs.is_alive(d) for d in healed.daemons)
        assert not any(procs.is_alive(d) for d in again.daemons), "the survivors were restarted, not kept"
        again = healed
        # ...but not while that one runs.
        with pytest.raises(LocalSlurmError, match="belongs to cluster 'zrthird', which is running"):
            localslurm.up(spec)
        localslurm.down(spec.state_dir)
        assert [d.name for d in again.daemons if procs.is_alive(d)] == []
        assert Path("/etc/hosts").read_bytes() == hosts_before
        manifest = json.loads((spec.state_dir / "cluster.json").read_text())
        assert manifest["hosts"] is None and manifest["conf_link"] is None
    finally:
        localslurm.down(spec.state_dir, say=lambda _: None)
    print(f"\nsecond cluster: up {timings['up']:.1f} s, up again {timings['up again']:.1f} s")
    assert localslurm.current(slurm_cluster.state_dir) is not None, "the session cluster must still run"


def processes_of(state_dir: Path) -> list[str]:
    """Live processes whose command line or environment names the state folder (every daemon of ours does)."""
    needle = str(state_dir).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            state = (proc / "stat").read_text().rsplit(") ", 1)[1][:1]
            cmdline, environ = (proc / "cmdline").read_bytes(), (proc / "environ").read_bytes()
        except OSError:
            continue  # exited while we looked
        if state not in "ZX" and (needle in cmdline or needle in environ):
            found.append(proc.name + ": " + cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


@pytest.mark.slurm
def test_a_daemon_failing_during_up_stops_the_ones_started_before_it(slurm_cluster, tmp_path):
    spec = dataclasses.replace(localslurm.default_spec(tmp_path / "broken"), cluster_name="zrbroken",
                               slurmctld_port=26817, slurmdbd_port=26819, slurmd_base_port=27001)
    # A database folder without its system tables: up skips creating it, and MariaDB aborts on start.
    (spec.paths.mysql_data / "mysql").mkdir(parents=True)
    hosts_before = Path("/etc/hosts").read_bytes()
    started = time.monotonic()
    with pytest.raises(LocalSlurmError, match=r"mariadbd exited(.|\n)*Fatal error"):
        localslurm.up(spec)
    assert time.monotonic() - started < 30, "the failure must be noticed when mariadbd exits, not after a timeout"
    assert processes_of(spec.state_dir) == [], "every daemon started before the failure is stopped"
    assert list(spec.paths.pids.glob("*.json")) == []
    assert Path("/etc/hosts").read_bytes() == hosts_before
    assert localslurm.current(spec.state_dir) is None


@pytest.mark.slurm
def test_submit_to_completed_latency(slurm_cluster):
    latencies = []
    for _ in range(3):
        started = time.monotonic()
        job = sbatch(slurm_cluster, "-o", "/dev/null", "--wrap", "true")
        wait_for_job(slurm_cluster, job)
        latencies.append(time.monotonic() - started)
    print(f"\nsbatch -> COMPLETED in sacct: median {statistics.median(latencies):.2f} s")
    assert statistics.median(latencies) < 10
