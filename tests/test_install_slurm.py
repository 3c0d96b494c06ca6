"""Installing zerorun as a cluster user does, without root: the wheel built from this repository, installed with
pip into a fresh venv owned by an unprivileged user, and that user's `zerorun` console script submitting a 2-node
DDP job from a folder outside the repository, to a real Slurm cluster on this machine, which completes.

What is real: the wheel (built from the tracked files, so a file the packaging leaves out fails here), the venv
(made by the user with the system's python3 -m venv), `pip install --no-index -c constraints.txt WHEEL` as that
user (nothing can be downloaded; pip must find every dependency satisfied), the user's own job on two Slurm nodes,
and the repository kept off the user's sys.path (no PYTHONPATH; it runs from its home folder).

What is borrowed, to keep this under two minutes: the dependencies (torch, Lightning, ...) are not downloaded
again; the venv sees the test environment's installed packages through a .pth file naming a folder of links to
them (zerorun's own installation left out). And the cluster is a second local cluster whose state folder everyone
may enter: the session cluster keeps its slurm.conf in root's home, which a user's srun inside the job cannot read
(on a real cluster slurm.conf is readable by all).
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest

import cluster.localslurm as localslurm
from cluster import slurm
from conftest import REPO, only_run_dir, read_rank_reports, shrink
from jobs import snapshot

pytestmark = pytest.mark.slurm

USER = "zrtest"
PACKAGES = ("cluster", "configs", "hydra_plugins", "jobs", "trainer_core")
TWO_NODES = ("cluster=slurm", "cluster.gpus_per_node=0", "cluster.tasks_per_node=1", "cluster.cpus_per_task=1",
             "cluster.partition=debug", "cluster.mem=1G", "cluster.time_min=5", "cluster.signal_delay_s=60",
             "cluster.nodes=2", "trainer=ddp")
TINY = shrink("trainer.max_steps=6", "trainer.val_check_interval=6", "dataset.max_val_samples=8",
              "dataset.synthetic_train_size=300", "task.log_samples=0")


def source_files() -> list[str]:
    """The repository's files as a checkout has them: tracked, plus new ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                            text=True, check=True, timeout=30).stdout.splitlines()
    return [f for f in listed if (REPO / f).is_file()]


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """zerorun's wheel, built once per session from a copy of the repository's files (a build folder left in
    the checkout could hide a file the packaging misses)."""
    src = tmp_path_factory.mktemp("zerorun-src")
    for f in source_files():
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, src / f)
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (whl,) = out.glob("zerorun-*.whl")
    return whl


def ensure_user() -> bool:
    """The unprivileged user, made if absent (True: made now, so the test removes it)."""
    try:
        pwd.getpwnam(USER)
        return False
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True, timeout=30)
        return True


def dependency_links(into: Path) -> Path:
    """A folder of links to every package installed beside this test, zerorun's own installation left out."""
    import sysconfig

    into.mkdir()
    for where in dict.fromkeys((sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])):
        for entry in Path(where).iterdir():
            name = entry.name.lower()
            if "zerorun" in name or name == "pip" or name.startswith("pip-") or name.endswith(".pth"):
                continue
            if not (into / entry.name).exists():
                (into / entry.name).symlink_to(entry)
    return into


def system_python() -> str:
    """A python of this test's version that an unprivileged user may run (as a cluster's login node has)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        if os.access(candidate, os.X_OK) and os.stat(candidate).st_mode & 0o001:
            return candidate
    pytest.fail(f"no python{version} any user may run in /usr/bin or /usr/local/bin: install python{version} and "
                f"python{version}-venv (the installed packages are for {version})", pytrace=False)


def processes_of(uid: int, mentioning: str) -> list[int]:
    """Processes of `uid` whose command line mentions `mentioning` (what this test started, and only that)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and proc.stat().st_uid == uid \
                    and mentioning.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.timeout(300)
def test_a_user_without_root_installs_the_wheel_and_runs_a_2_node_job(slurm_cluster, wheel, monkeypatch):
    t0 = time.monotonic()
    names = set(zipfile.ZipFile(wheel).namelist())
    packaged = {f for f in source_files() if f.split("/")[0] in PACKAGES and "__pycache__" not in f}
    assert sorted(packaged - names) == [], "files of the packages that the wheel leaves out"
    assert any(n.startswith("configs/trainer/") and n.endswith(".yaml") for n in names)

    shared = Path(tempfile.mkdtemp(prefix="zr-install-", dir="/tmp"))  # both nodes see it (one machine)
    os.chmod(shared, 0o755)
    made_user = ensure_user()
    user = pwd.getpwnam(USER)
    home, runs = shared / "home", shared / "home" / "runs"
    home.mkdir()
    os.chown(home, user.pw_uid, user.pw_gid)
    deps = dependency_links(shared / "deps")
    shutil.copy(wheel, shared / wheel.name)
    shutil.copy(REPO / "constraints.txt", shared / "constraints.txt")
    spec = dataclasses.replace(localslurm.default_spec(shared / "cluster"), cluster_name="zrinstall",
                               slurmctld_port=26837, slurmdbd_port=26839, slurmd_base_port=27021)
    try:
        cluster = localslurm.up(spec, smoke_test=False, say=lambda _: None)
        venv = home / "venv"
        env = {"HOME": str(home), "USER": USER, "LOGNAME": USER, "LANG": "C.UTF-8",
               "PATH": f"{venv}/bin:/usr/local/bin:/usr/bin:/bin", "SLURM_CONF": str(cluster.slurm_conf),
               "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

        def as_user(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
            return subprocess.run(["runuser", "-u", USER, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()),
                                   *argv], cwd=home, capture_output=True, text=True, timeout=timeout)

        made = as_user(system_python(), "-m", "venv", str(venv))
        assert made.returncode == 0, made.stderr
        site = Path(as_user(f"{venv}/bin/python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                    .stdout.strip())
        wrote = as_user(f"{venv}/bin/python", "-c", "import sys; open(sys.argv[1], 'w').write(sys.argv[2] + '\\n')",
                        str(site / "zz-borrowed-dependencies.pth"), str(deps))
        assert wrote.returncode == 0, wrote.stderr
        # the venv's own setuptools (what ensurepip bundles) is older than torch asks for; with an index pip would
        # upgrade it, here it steps aside for the borrowed one
        dropped = as_user(f"{venv}/bin/python", "-m", "pip", "uninstall", "-y", "-q", "setuptools")
        assert dropped.returncode == 0, dropped.stderr
        installed = as_user(f"{venv}/bin/python", "-m", "pip", "install", "--no-index", "--disable-pip-version-check",
                            "-c", str(shared / "constraints.txt"), str(shared / wheel.name))
        assert installed.returncode == 0, installed.stdout + installed.stderr
        assert "Successfully installed zerorun-" in installed.stdout, installed.stdout
        assert "Requirement already satisfied: torch" in installed.stdout, "the dependencies are found, not fetched"

        where = as_user(f"{venv}/bin/python", "-c", "import sys, jobs, configs; print(jobs.__file__); "
                        "print(configs.__file__); print(*sys.path, sep='\\n')")
        assert where.returncode == 0, where.stderr
        jobs_file, configs_file, *path = where.stdout.splitlines()
        assert jobs_file.startswith(str(site)) and configs_file.startswith(str(site)), where.stdout
        assert not [p for p in path if p and Path(p).resolve().is_relative_to(REPO)], "the repository is on sys.path"

        submitted = as_user("zerorun", *TWO_NODES, *TINY, f"cluster.runs_dir={runs}")
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        run_dir = only_run_dir(runs)
        record = snapshot.read_record(run_dir)
        assert record is not None and record.job_id.isdigit()
        monkeypatch.setenv("SLURM_CONF", str(cluster.slurm_conf))
        deadline = time.monotonic() + 150
        while not (st := slurm.query([record.job_id])[record.job_id]).finished and time.monotonic() < deadline:
            time.sleep(1)
        logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in sorted((run_dir / "logs").glob("*")))
        assert st.state == "COMPLETED", f"job {record.job_id} ended {st}:\n{logs}"
        owner = subprocess.run(["sacct", "-n", "-P", "-X", "-j", record.job_id, "-o", "User"], capture_output=True,
                               text=True, timeout=30).stdout.split()
        assert owner == [USER], f"sacct says the job is {owner}'s"
        assert run_dir.stat().st_uid == user.pw_uid and (run_dir / "checkpoints").stat().st_uid == user.pw_uid
        reports = read_rank_reports(run_dir)
        assert [(r["rank"], r["world_size"]) for r in reports] == [(0, 2), (1, 2)]
        assert {r["host"] for r in reports} == {"n1", "n2"} and reports[0]["metrics"]["global_step"] == 6
        print(f"installed and ran a 2-node job as {USER} in {time.monotonic() - t0:.0f} s")
    finally:
        localslurm.down(spec.state_dir, say=lambda _: None)
        left = processes_of(user.pw_uid, str(shared))
        for pid in left:  # (the user cannot be removed while a process of theirs runs)
            os.kill(pid, signal.SIGKILL)
        if left:
            print(f"killed {len(left)} process(es) the job left behind: {left}")
        if made_user:
            subprocess.run(["userdel", USER], capture_output=True, timeout=30)
        shutil.rmtree(shared, ignore_errors=True)
