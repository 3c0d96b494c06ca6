"""`zerorun cluster`: the pure half (rendered configs, /etc/hosts edits, decisions) and the real cluster.

Tests marked `slurm` run real jobs on the session cluster (tests/conftest_slurm.py). Nothing here is mocked;
the one stand-in is a fake os-release file, and the test that uses it says so in its name.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cluster.localslurm as localslurm
import cluster.localslurm.conflink as conflink
import cluster.localslurm.procs as procs
import cluster.localslurm.system as system
from cluster.localslurm.config import (
    ClusterSpec,
    LocalSlurmError,
    add_hosts_entry,
    parse_os_release,
    remove_hosts_entry,
    render_slurm_conf,
    render_slurmdbd_conf,
    resolve_state_dir,
    unsupported_distribution,
)
from cluster.localslurm.daemons import daemon_plans
from cluster.localslurm.files import secure_folder

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
AuthInfo=socket=/run/zerorun-local-slurm/8e295f312d7e62d4/munge.socket,cred_expire=5
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
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
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
AccountingStorageHost=127.0.0.1
AccountingStoragePort=16819
AccountingStoragePass=/run/zerorun-local-slurm/8e295f312d7e62d4/munge.socket
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
    assert conflink.decide(("absent", None), ours, False) == "claim"
    assert conflink.decide(("symlink", str(ours)), ours, True) == "keep"
    assert conflink.decide(("symlink", "/b/etc/slurm.conf"), ours, True) == "leave"
    assert conflink.decide(("symlink", "/b/etc/slurm.conf"), ours, False) == "claim"
    assert conflink.decide(("file", None), ours, False) == "claim"


def fake_state(root: Path) -> Path:
    """A state folder as conflink sees one: etc/slurm.conf and a cluster.json."""
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "slurm.conf").write_text(f"ClusterName={root.name}\n")
    (root / "cluster.json").write_text("{}")
    return root / "etc" / "slurm.conf"


def claim(ours: Path, where: conflink.Where) -> dict:
    record = conflink.plan_claim(ours, conflink.link_state(where), where)
    conflink.claim(record, where)
    return record


def test_the_machines_slurm_conf_comes_back_whichever_cluster_goes_down_last(tmp_path):
    # Real files in a folder of the test's own instead of /etc/slurm and /var/lib/zerorun.
    where = conflink.Where(conf=tmp_path / "etc-slurm" / "slurm.conf", backup=tmp_path / "backup" / "slurm.conf")
    where.conf.parent.mkdir()
    where.conf.write_text("the machine's own\n")
    a, b = fake_state(tmp_path / "a"), fake_state(tmp_path / "b")
    nothing_runs = lambda state: False  # noqa: E731  (A died in a reboot; B is going down)

    # A claims; the machine dies; B, from another state folder, claims A's dead link.
    record_a = claim(a, where)
    record_b = claim(b, where)
    assert conflink.link_state(where) == ("symlink", str(b))
    # A goes down first: the link is B's now, so A leaves it alone...
    assert "no longer points" in conflink.undo(record_a, nothing_runs, where)
    # ...and B, last, puts back the machine's file rather than a link to a cluster that no longer runs.
    assert conflink.undo(record_b, nothing_runs, where) is None
    assert not where.conf.is_symlink() and where.conf.read_text() == "the machine's own\n"
    assert not where.backup.exists()

    # The other order: B down first also ends with the machine's file, and A's down then touches nothing.
    record_a = claim(a, where)
    record_b = claim(b, where)
    conflink.undo(record_b, nothing_runs, where)
    assert where.conf.read_text() == "the machine's own\n"
    assert "no longer points" in conflink.undo(record_a, nothing_runs, where)
    assert where.conf.read_text() == "the machine's own\n"


def test_a_link_to_a_running_cluster_is_put_back(tmp_path):
    where = conflink.Where(conf=tmp_path / "etc-slurm" / "slurm.conf", backup=tmp_path / "backup" / "slurm.conf")
    a, b = fake_state(tmp_path / "a"), fake_state(tmp_path / "b")
    claim(a, where)
    record_b = claim(b, where)
    conflink.undo(record_b, lambda state: state == a.parent.parent, where)
    assert conflink.link_state(where) == ("symlink", str(a))


def test_an_existing_backup_of_the_machines_slurm_conf_is_never_overwritten(tmp_path):
    where = conflink.Where(conf=tmp_path / "etc-slurm" / "slurm.conf", backup=tmp_path / "backup" / "slurm.conf")
    where.conf.parent.mkdir()
    where.conf.write_text("now\n")
    where.backup.parent.mkdir()
    where.backup.write_text("saved earlier\n")
    with pytest.raises(LocalSlurmError, match=r"already holds a slurm.conf(.|\n)*not overwritten(.|\n)*diff "):
        claim(fake_state(tmp_path / "a"), where)
    assert where.backup.read_text() == "saved earlier\n" and where.conf.read_text() == "now\n"


def test_every_daemon_is_told_to_bind_its_hosts_address_not_every_address():
    spec = ClusterSpec(Path("/s"), address="127.0.1.1")
    conf = render_slurm_conf(spec)
    assert "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny\n" in conf
    assert "SlurmctldHost=localhost(127.0.1.1)\n" in conf and "NodeAddr=127.0.1.1 " in conf
    dbd = render_slurmdbd_conf(spec)
    assert "CommunicationParameters=NoInAddrAny\n" in dbd and "DbdAddr=127.0.1.1\n" in dbd
    with pytest.raises(LocalSlurmError, match="not a loopback address"):
        ClusterSpec(Path("/s"), address="10.0.0.5").validate()


def test_munged_runs_without_force():
    munged = next(plan for plan in daemon_plans(ClusterSpec(Path("/s"))) if plan.name == "munged")
    assert "--force" not in munged.argv and "-f" not in munged.argv


def test_only_root_gets_a_state_folder_in_its_home_by_default():
    assert resolve_state_dir(environ={}, euid=0) == Path("~/.zerorun/local-slurm").expanduser()
    # Anyone else's home is theirs to change, so root (under sudo) would refuse it: a root-owned folder instead.
    assert resolve_state_dir(environ={}, euid=1000) == Path("/var/lib/zerorun/local-slurm")
    assert resolve_state_dir(environ={"ZERORUN_LOCAL_SLURM_DIR": "/x"}, euid=1000) == Path("/x")


def test_secure_folder_creates_what_is_missing_and_accepts_a_sticky_tmp(tmp_path):
    made = secure_folder(tmp_path / "a" / "b", 0o700)
    assert made.is_dir() and (made.stat().st_mode & 0o777) == 0o700
    assert (made.parent.stat().st_mode & 0o777) == 0o755
    assert Path("/tmp").stat().st_mode & 0o1000, "this test assumes a sticky /tmp"
    secure_folder(Path("/tmp"))


def test_units_enabled_by_an_install_are_found_and_disabled():
    # A real unit of the test's own, enabled and disabled through systemctl as `up` does after apt-get install.
    if shutil.which("systemctl") is None:
        pytest.fail("systemctl is missing; `up` disables what the packages enable through it")
    unit = f"zerorun-test-{os.getpid()}.service"
    path = Path("/etc/systemd/system") / unit
    path.write_text("[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n")
    try:
        subprocess.run(["systemctl", "enable", "--quiet", unit], check=True, capture_output=True)
        before = system.enabled_units((unit,))
        assert before == {unit}
        assert system.disable_units(before) == set()
        assert system.enabled_units((unit,)) == set()
    finally:
        subprocess.run(["systemctl", "disable", "--quiet", unit], capture_output=True)
        path.unlink()


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


SPARE_PORTS = ("--cluster-name", "zrrefused", "--slurmctld-port", "46817", "--slurmdbd-port", "46819",
               "--slurmd-base-port", "47001")


def test_up_refuses_a_state_folder_that_is_a_link(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "state").symlink_to(real)
    refused = run_cli("up", "--state-dir", str(tmp_path / "state"), *SPARE_PORTS)
    assert refused.returncode != 0
    assert f"{tmp_path / 'state'} is a symbolic link" in refused.stderr, refused.stderr
    assert "remove the link" in refused.stderr.lower() and "--state-dir" in refused.stderr
    assert list(real.iterdir()) == [], "nothing is written through the link"


def test_up_refuses_a_link_planted_inside_the_state_folder(tmp_path):
    state, elsewhere = tmp_path / "state", tmp_path / "elsewhere"
    state.mkdir()
    elsewhere.mkdir()
    (state / "etc").symlink_to(elsewhere)  # up would write slurm.conf there
    refused = run_cli("up", "--state-dir", str(state), *SPARE_PORTS)
    assert refused.returncode != 0
    assert f"{state / 'etc'} is a symbolic link" in refused.stderr, refused.stderr
    assert list(elsewhere.iterdir()) == []
    assert_nothing_started(state)


def test_up_refuses_a_linked_lock_file(tmp_path):
    state, victim = tmp_path / "state", tmp_path / "victim"
    state.mkdir()
    victim.write_text("a system file\n")
    (state / ".lock").symlink_to(victim)
    refused = run_cli("up", "--state-dir", str(state), *SPARE_PORTS)
    assert refused.returncode != 0
    assert f"{state / '.lock'} is a symbolic link" in refused.stderr and "rm " in refused.stderr, refused.stderr
    assert victim.read_text() == "a system file\n"


def test_up_refuses_a_state_folder_that_another_user_owns(tmp_path):
    # What `sudo zerorun cluster up --state-dir ~/x` would meet: the folder is the user's to swap for a link.
    state = tmp_path / "users"
    state.mkdir()
    os.chown(state, pwd.getpwnam("nobody").pw_uid, -1)
    refused = run_cli("up", "--state-dir", str(state / "local-slurm"), *SPARE_PORTS)
    assert refused.returncode != 0
    assert f"{state} is owned by user 'nobody', not by root" in refused.stderr, refused.stderr
    assert "/var/lib/zerorun/local-slurm" in refused.stderr
    assert not (state / "local-slurm").exists()


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
    link_before = conflink.link_state()
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
        assert conflink.link_state() == link_before
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
    assert not spec.paths.munge_run.exists()
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


# --- what the cluster exposes, and what `down` leaves behind ---------------------------------------------------

def _address(hex_address: str, family: int) -> str:
    raw = bytes.fromhex(hex_address)
    # /proc/net/tcp* print each 32-bit word of the address in the machine's (little-endian) order.
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(family, raw)


def listeners_of(pids: list[int]) -> dict[int, list[str]]:
    """{pid: ['127.0.0.1:16817', ...]}: the TCP addresses each process listens on, from /proc (what `ss -ltnp`
    reads)."""
    owner = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[target[len("socket:["):-1]] = pid
    found: dict[int, list[str]] = {pid: [] for pid in pids}
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            (address, port), state, inode = fields[1].split(":"), fields[3], fields[9]
            if state == "0A" and inode in owner:  # 0A: LISTEN
                found[owner[inode]].append(f"{_address(address, family)}:{int(port, 16)}")
    return found


@pytest.mark.slurm
def test_every_daemon_of_the_cluster_listens_on_loopback_only(slurm_cluster):
    listening = listeners_of([d.pid for d in slurm_cluster.daemons])
    print("\n" + "\n".join(f"{d.name:<12} {' '.join(listening[d.pid]) or '-'}" for d in slurm_cluster.daemons))
    for daemon in slurm_cluster.daemons:
        if daemon.name.startswith("slurm"):
            assert listening[daemon.pid], f"{daemon.name} (pid {daemon.pid}) listens on nothing that /proc shows"
    exposed = {d.name: [a for a in listening[d.pid] if not ipaddress.ip_address(a.rsplit(":", 1)[0]).is_loopback]
               for d in slurm_cluster.daemons}
    assert not any(exposed.values()), f"listening beyond loopback: {exposed}"


@pytest.mark.slurm
def test_munged_of_the_cluster_runs_with_its_checks_on(slurm_cluster):
    munged = next(d for d in slurm_cluster.daemons if d.name == "munged")
    argv = Path(f"/proc/{munged.pid}/cmdline").read_bytes().split(b"\0")
    assert b"--force" not in argv and b"-f" not in argv, argv
    paths = slurm_cluster.spec.paths
    # What munged demands without --force: a key only its owner reads, in a folder only its owner writes, and a
    # socket in a folder everyone may enter.
    assert stat.S_IMODE(paths.munge_key.stat().st_mode) == 0o600 and paths.munge_key.stat().st_uid == 0
    assert stat.S_IMODE(paths.munge_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(paths.munge_run.stat().st_mode) == 0o755
    assert slurm(slurm_cluster, "scontrol", "ping").count("UP") == 1


def spare_spec(state_dir: Path, name: str) -> ClusterSpec:
    """A second cluster with its own name and ports, so the session cluster keeps running beside it."""
    return dataclasses.replace(localslurm.default_spec(state_dir), cluster_name=name, slurmctld_port=26817,
                               slurmdbd_port=26819, slurmd_base_port=27001)


def start_stubborn_job(cluster: localslurm.LocalCluster, pid_file: Path) -> int:
    """A job whose task ignores SIGTERM; returns the task's pid once it runs."""
    sbatch(cluster, "-o", "/dev/null", "--wrap", f"trap '' TERM; echo $$ > {shlex.quote(str(pid_file))}; exec sleep 600")
    assert wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=60), "the job never ran"
    return int(pid_file.read_text())


def runs(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1] not in "ZX"
    except OSError:
        return False


@pytest.mark.slurm
@pytest.mark.timeout(180)
def test_down_ends_the_jobs_still_running(slurm_cluster, tmp_path):
    spec = spare_spec(tmp_path / "jobs", "zrjobs")
    try:
        cluster = localslurm.up(spec, smoke_test=False)
        task = start_stubborn_job(cluster, tmp_path / "cancelled.pid")
        said = []
        localslurm.down(spec.state_dir, say=said.append)
        assert not runs(task), "down must cancel the jobs before it stops the daemons"
        assert any("cancelled 1 job" in line for line in said), said

        # With no controller left to cancel through, down still ends what the job runs.
        cluster = localslurm.up(spec, smoke_test=False)
        task = start_stubborn_job(cluster, tmp_path / "orphaned.pid")
        os.kill(next(d for d in cluster.daemons if d.name == "slurmctld").pid, signal.SIGKILL)
        localslurm.down(spec.state_dir, say=lambda _: None)
        assert not runs(task), "down must kill what the jobs left running"
        assert processes_of(spec.state_dir) == []
        assert not spec.paths.munge_run.exists(), "down removes the cluster's folder under /run"
    finally:
        localslurm.down(spec.state_dir, say=lambda _: None)
    assert localslurm.current(slurm_cluster.state_dir) is not None, "the session cluster must still run"



@pytest.mark.slurm
@pytest.mark.timeout(150)
def test_an_unprivileged_user_submits_a_job_that_completes(slurm_cluster):
    # A state folder everyone may enter (the session cluster's, in root's home, is not): the user's sbatch reads
    # slurm.conf there and reaches munged through its socket under /run.
    state = Path("/tmp") / f"zr-user-{os.getpid()}"
    user = f"zrtest{os.getpid()}"
    out = Path("/tmp") / f"{user}.out"
    spec = spare_spec(state, "zruser")
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", user], check=True)
    try:
        cluster = localslurm.up(spec, smoke_test=False, say=lambda _: None)
        submitted = subprocess.run(
            ["runuser", "-u", user, "--", "env", f"SLURM_CONF={cluster.slurm_conf}", "sbatch", "--parsable",
             "-o", str(out), "--wrap", "id -un"], capture_output=True, text=True, cwd="/tmp", timeout=60)
        assert submitted.returncode == 0, submitted.stderr
        job = submitted.stdout.strip().split(";")[0]
        assert wait_for_job(cluster, job) == {job: ("COMPLETED", "0:0")}
        assert out.read_text().strip() == user, "the job runs as the user who submitted it"
        assert out.stat().st_uid == pwd.getpwnam(user).pw_uid
    finally:
        localslurm.down(spec.state_dir, say=lambda _: None)
        subprocess.run(["userdel", user], capture_output=True)
        out.unlink(missing_ok=True)
        shutil.rmtree(state, ignore_errors=True)
