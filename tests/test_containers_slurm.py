"""Containers on the real local Slurm cluster (two nodes, n1 and n2, on this machine).

No container runtime can run here (the machine refuses the rlimit calls every OCI runtime makes; apptainer, enroot
and pyxis are not packaged), so:
- the dry runs of both runtimes are real: the rendered scripts go to the real `sbatch --test-only` (pyxis's flags
  are on the srun line, which sbatch does not read);
- the job test runs through a FAKE apptainer: a shell script on the nodes that checks the arguments the way
  `apptainer exec` reads them (options, then an image that must exist, bind sources that must exist, the folder to
  start in), hands the ranks APPTAINERENV_ variables as apptainer does, makes Slurm's commands fail inside, and
  then runs the rank command itself with no isolation. What it proves: the rendered command line runs on a real
  2-node Slurm job (quoting, mounts, the rank entry), and the requeue of a preempted job happens on the batch
  host with no Slurm command called from inside. What it cannot prove: anything about a real image.
"""

from __future__ import annotations

import io
import stat
import sys
from pathlib import Path

import pytest

from cluster import slurm
from conftest import only_run_dir, wait_until
from jobs import snapshot
from test_submit_slurm import NODE_CPU, hydra_quoted, logs_of, wait
from trainer_core import attempts

pytestmark = pytest.mark.slurm

RUN = ("trainer.val_check_interval=1000", "trainer.log_every_n_steps=10", "trainer.logger=csv",
       "trainer.enable_progress_bar=false", "dataset.synthetic_train_size=400", "dataset.max_val_samples=8",
       "task.log_samples=0")


def launch(compose, runs: Path, *overrides: str, out=None) -> int:
    import contextlib

    from jobs.app import launch as app_launch

    with contextlib.redirect_stdout(out or io.StringIO()):
        return app_launch(compose(*overrides, runs_dir=hydra_quoted(str(runs))))


@pytest.mark.parametrize("runtime", ["pyxis", "apptainer"])
def test_dry_run_of_a_container_job_is_taken_by_sbatch_test_only(slurm_cluster, compose, tmp_path, runtime):
    image = tmp_path / "torch.sif"
    image.touch()
    ref = "'nvcr.io#nvidia/pytorch:24.01-py3'" if runtime == "pyxis" else str(image)
    out = io.StringIO()
    rc = launch(compose, tmp_path / "runs", *NODE_CPU, "trainer=default", "dry_run=true",
                f"cluster.container.runtime={runtime}", f"cluster.container.image={ref}", out=out)
    text = out.getvalue()
    assert rc == 0, text
    answer = [line for line in text.splitlines() if line.startswith("sbatch --test-only:")]
    assert answer and "to start at" in answer[0], answer
    script = (only_run_dir(tmp_path / "runs") / "job.sbatch").read_text()
    assert ("--container-image=" in script) == (runtime == "pyxis")
    assert ("apptainer exec --bind " in script) == (runtime == "apptainer")
    assert slurm.run_command(["squeue", "-h", "-n", "translation", "-o", "%i"]).stdout.strip() == "", \
        "a dry run queued a job"


FAKE_APPTAINER = r"""#!/bin/bash
# FAKE apptainer for tests (no container runtime runs on this machine): reads `exec [--nv] --bind LIST --pwd DIR
# IMAGE CMD...` as apptainer does, checks what apptainer would need, then runs CMD itself (no isolation).
log=@LOG@
inside_bin=@INSIDE@
fail() { echo "fake apptainer: $*" >&2; exit 64; }
[ "$1" = exec ] || fail "expected exec, got $1"
shift
binds= pwd=
while [ $# -gt 0 ]; do
  case "$1" in
    --nv) shift ;;
    --bind) binds=$2; shift 2 ;;
    --pwd) pwd=$2; shift 2 ;;
    -*) fail "option $1 is not one zerorun renders" ;;
    *) break ;;
  esac
done
image=$1; shift
[ -f "$image" ] || fail "no image $image"
IFS=, read -ra items <<< "$binds"
for b in "${items[@]}"; do
  src=${b%%:*}; dst=${b#*:}; dst=${dst%%:*}
  [ -e "$src" ] || fail "bind source $src does not exist"
  [ "$src" = "$dst" ] || fail "bind $b: zerorun mounts every folder at its own path"
done
cd "$pwd" || fail "no folder $pwd"
# apptainer hands APPTAINERENV_NAME to the container as NAME
for var in $(compgen -e); do
  case "$var" in APPTAINERENV_*) export "${var#APPTAINERENV_}=${!var}"; unset "$var" ;; esac
done
# scontrol, srun, sbatch and scancel are absent from an image: here they fail and leave a mark
export PATH="$inside_bin:$PATH"
printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$SLURM_JOB_ID" "$SLURM_PROCID" "$SLURMD_NODENAME" "$image" "$binds" \
  "$PWD" "${ZR_PROBE-unset}" >> "$log"
printf '%s\0' "$@" >> "$log.argv"
exec "$@"
"""


def fake_apptainer(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(the fake apptainer, its log, the file Slurm commands called inside would write)."""
    inside = tmp_path / "inside-bin"
    inside.mkdir()
    calls = tmp_path / "slurm-calls-inside"
    for name in ("scontrol", "srun", "sbatch", "scancel", "squeue"):
        tool = inside / name
        tool.write_text(f'#!/bin/bash\necho "$0 $*" >> {calls}\necho "{name}: not in the container" >&2\nexit 127\n')
        tool.chmod(0o755)
    log = tmp_path / "apptainer.log"
    shim = tmp_path / "fake-apptainer"
    shim.write_text(FAKE_APPTAINER.replace("@LOG@", str(log)).replace("@INSIDE@", str(inside)))
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    return shim, log, calls


def test_two_node_job_through_a_fake_apptainer_requeues_on_the_batch_host_and_resumes(slurm_cluster, compose,
                                                                                       tmp_path):
    shim, log, calls = fake_apptainer(tmp_path)
    image = tmp_path / "images" / "torch.sif"
    image.parent.mkdir()
    image.write_bytes(b"not a real image: the fake apptainer only checks that it is there")
    data = tmp_path / "data"
    data.mkdir()
    runs = tmp_path / "runs"
    assert launch(compose, runs, *NODE_CPU, "cluster.nodes=2", "trainer=ddp", "trainer.max_steps=60", *RUN,
                  "cluster.container.runtime=apptainer", f"cluster.container.image={image}",
                  f"cluster.container.command={shim}", f"cluster.container.python={sys.executable}",
                  f"cluster.container.mounts=[{data}]", "+cluster.container.env.ZR_PROBE=inside") == 0
    run_dir = only_run_dir(runs)
    job_id = snapshot.read_record(run_dir).job_id
    wait_until("the first step", lambda: any(e["event"] == "first_step" for e in attempts.read(run_dir)), 90)
    slurm.run_command(["scancel", "--signal=USR2", job_id])  # asked to yield: a preemption to zerorun
    st = wait(job_id, timeout=120)
    assert st.state == "COMPLETED", f"{st}\n{logs_of(run_dir)}"

    runs_ = attempts.attempts(attempts.read(run_dir))
    assert [(a.job_id, a.cause, a.requeued) for a in runs_] == [(job_id, "preemption", True), (job_id, None, None)]
    assert runs_[1].resumed_from_step == runs_[0].checkpoint_step > 0
    assert not calls.exists(), f"a Slurm command was called inside the container: {calls.read_text()}"

    rows = [line.split("\t") for line in log.read_text().splitlines()]
    assert sorted((r[0], r[1], r[2]) for r in rows) == [(job_id, "0", "n1"), (job_id, "0", "n1"),
                                                        (job_id, "1", "n2"), (job_id, "1", "n2")], rows
    binds = rows[0][4].split(",")
    assert f"{run_dir}:{run_dir}" in binds and f"{data}:{data}" in binds
    assert {r[3] for r in rows} == {str(image)} and {r[5] for r in rows} == {str(Path.cwd())}
    assert {r[6] for r in rows} == {"inside"}, "cluster.container.env reached the ranks"
    argv = log.with_name(log.name + ".argv").read_bytes().split(b"\0")[:-1]
    assert [a.decode() for a in argv[:5]] == [sys.executable, "-u", "-m", "jobs.rank", str(run_dir)]
    assert (run_dir / "metrics.json").exists()


def test_a_pyxis_job_on_a_cluster_without_pyxis_fails_and_says_no_rank_started(slurm_cluster, compose, tmp_path):
    # this cluster has no pyxis plugin (none here does): srun refuses --container-image, for real
    runs = tmp_path / "runs"
    assert launch(compose, runs, *NODE_CPU, "trainer=default", "cluster.container.runtime=pyxis",
                  "cluster.container.image=ubuntu:22.04") == 0
    run_dir = only_run_dir(runs)
    st = wait(snapshot.read_record(run_dir).job_id, timeout=60)
    assert st.state == "FAILED", st
    failed = [e for e in attempts.read(run_dir) if e["event"] == "failed"]
    assert failed and "1 of 1 ranks never started" in failed[0]["reason"], failed
    assert "container-image" in logs_of(run_dir), "srun's own refusal is in the job's log"
