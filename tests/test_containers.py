"""Containers (cluster.container, docs/containers.md), without a cluster: the pyxis and apptainer scripts compared
whole against golden files, only the ranks inside the container (watchdog, host step and requeue outside), every
literal reaching srun exactly under a real bash, and bad input refused before anything is written.

No container runtime runs here: these tests read rendered text and run it under bash with a stand-in srun.
tests/test_containers_slurm.py runs a job on the real local Slurm through a fake apptainer shim.
Regenerate the golden files after an intended change: ZERORUN_REGEN_GOLDEN=1 pytest tests/test_containers.py
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import subprocess
from pathlib import Path

import pytest

from cluster import preflight, render
from cluster.backends import get_backend
from cluster.plan import all_mounts
from cluster.sweep_plan import array_plan
from configs.validate import ConfigError, check_config, image_is_local
from test_render import CTX, GOLDEN, HOSTILE, PYTHON, REGEN, WORKDIR, _fake_srun_dir, hydra_quoted, plan_of

GOLDEN_CONTAINER_PLANS = {
    "pyxis_2x8": ("cluster=slurm", "cluster.nodes=2", "cluster.gpus_per_node=8", "cluster.tasks_per_node=8",
                  "cluster.cpus_per_task=8", "trainer=deepspeed", "cluster.partition=gpu",
                  "cluster.container.runtime=pyxis", "cluster.container.image='nvcr.io#nvidia/pytorch:24.01-py3'",
                  "cluster.container.mounts=[/datasets:/datasets:ro]", "+cluster.container.env.NCCL_DEBUG=WARN",
                  "cluster.container.extra_args=[--no-container-mount-home]", "cluster.srun_args=['--cpu-bind=none']",
                  "dataset.cache_dir=/scratch/cache"),
    "apptainer_2x4": ("cluster=slurm", "cluster.nodes=2", "cluster.gpus_per_node=4", "cluster.tasks_per_node=4",
                      "cluster.cpus_per_task=8", "trainer=ddp", "cluster.partition=gpu",
                      "cluster.container.runtime=apptainer", "cluster.container.image=/images/pytorch.sif",
                      "cluster.container.python=/usr/bin/python3", "cluster.container.mounts=[/datasets]",
                      "+cluster.container.env.HF_HUB_OFFLINE=1", "dataset.cache_dir=/scratch/cache"),
}
CPU_APPTAINER = ("cluster=slurm", "trainer=default", "cluster.container.runtime=apptainer",
                 "cluster.container.image=/images/pytorch.sif")


def script_of(compose, *overrides: str, **kw) -> str:
    return render.sbatch_script(plan_of(compose, *overrides, **kw), CTX)


@pytest.mark.parametrize("name", sorted(GOLDEN_CONTAINER_PLANS))
def test_container_script_matches_golden_file(compose, name):
    script = script_of(compose, *GOLDEN_CONTAINER_PLANS[name])
    path = GOLDEN / f"{name}.sbatch"
    if REGEN:
        path.write_text(script)
    assert path.exists(), f"no golden file {path}: run ZERORUN_REGEN_GOLDEN=1 pytest {__file__}"
    assert script == path.read_text(), f"{name} differs from {path}; if intended, regenerate (see module doc)"


@pytest.mark.parametrize("name", sorted(GOLDEN_CONTAINER_PLANS))
def test_only_the_ranks_run_in_the_container(compose, name):
    lines = script_of(compose, *GOLDEN_CONTAINER_PLANS[name]).splitlines()
    marker = "--container-image=" if "pyxis" in name else "apptainer exec"
    inside = [x for x in lines if marker in x]
    srun = [x for x in lines if x.startswith("srun ")]
    assert inside == srun and len(srun) == 1, "the container is on the srun line and nowhere else"
    assert srun[0].endswith(" -u -m jobs.rank /runs/golden/r1")
    assert PYTHON not in srun[0], "the ranks run the image's Python, not the submitting host's"
    # the batch host's own steps run outside: the watchdog before srun, the host step (scontrol, requeue) after
    watchdog = lines.index(f"{PYTHON} -u -m jobs.watchdog /runs/golden/r1 &")
    host = lines.index(f'exec {PYTHON} -u -m jobs.host after "$ZERORUN_RANKS_STATUS" /runs/golden/r1')
    assert watchdog < lines.index(srun[0]) < host and host == len(lines) - 1


def test_mounts_cover_the_run_folder_the_code_and_the_cache(compose):
    plan = plan_of(compose, *GOLDEN_CONTAINER_PLANS["apptainer_2x4"])
    c = plan.container
    assert all_mounts(plan) == ("/runs/golden/r1:/runs/golden/r1", f"{WORKDIR}:{WORKDIR}",
                                "/scratch/cache:/scratch/cache", "/datasets:/datasets")
    assert c.workdir == WORKDIR and c.make_dirs == ("/scratch/cache",)
    # a run folder and cache inside the folder submitted from are mounted once, through it
    nested = plan_of(compose, *CPU_APPTAINER, f"dataset.cache_dir={WORKDIR}/.cache", runs_dir=f"{WORKDIR}/runs")
    assert all_mounts(nested) == (f"{WORKDIR}:{WORKDIR}",)
    # a relative run folder is taken from the folder submitted from
    relative = dataclasses.replace(plan, run_dir="runs/golden/r1")
    assert all_mounts(relative)[0] == f"{WORKDIR}:{WORKDIR}" and len(all_mounts(relative)) == 3
    # a relative image is taken from the folder submitted from, where the job runs
    rel = plan_of(compose, "cluster=slurm", "trainer=default", "cluster.container.runtime=pyxis",
                  "cluster.container.image=images/torch.sqsh", "cluster.container.workdir=/workspace")
    assert rel.container.image == f"{WORKDIR}/images/torch.sqsh" and rel.container.workdir == "/workspace"


def test_apptainer_asks_for_gpus_only_when_the_job_has_them(compose):
    gpu = script_of(compose, *GOLDEN_CONTAINER_PLANS["apptainer_2x4"])
    cpu = script_of(compose, *CPU_APPTAINER)
    assert " exec --nv --bind " in gpu
    assert "--nv" not in cpu and " exec --bind " in cpu


def test_singularity_gets_its_own_environment_prefix(compose):
    script = script_of(compose, *CPU_APPTAINER, "cluster.container.command=/opt/singularity/bin/singularity",
                       "+cluster.container.env.X=1")
    assert "export SINGULARITYENV_X=1" in script and "/opt/singularity/bin/singularity exec " in script
    assert "export APPTAINERENV_X=1" in script_of(compose, *CPU_APPTAINER, "+cluster.container.env.X=1")


def test_no_container_renders_as_before(compose):
    plan = plan_of(compose, "cluster=slurm", "trainer=default")
    assert plan.container is None
    assert render.srun_argv(plan)[-5:] == [PYTHON, "-u", "-m", "jobs.rank", "/runs/golden/r1"]


def test_a_sweep_array_runs_its_members_in_the_container(compose):
    plan = plan_of(compose, *CPU_APPTAINER)
    array = array_plan(plan, "/runs/golden/sweep-1", "/runs/golden/sweep-1/arrays/s00-a000.index.json", "sweep")
    argv = render.srun_argv(array, render.ArraySpec(4, 2))
    image = argv.index("/images/pytorch.sif")
    assert argv[image + 1:] == ["python", "-u", "-m", "jobs.rank", "--array",
                                "/runs/golden/sweep-1/arrays/s00-a000.index.json"]
    assert "/runs/golden/sweep-1:/runs/golden/sweep-1" in argv[argv.index("--bind") + 1].split(",")


@pytest.mark.parametrize("runtime", ["pyxis", "apptainer"])
def test_hostile_strings_reach_srun_exactly_under_bash_with_a_fake_srun(compose, tmp_path, runtime):
    # what the batch script hands srun (a stand-in recording its argv: there is no Slurm in a pure test) is
    # exactly the argv planned, whatever the image, mounts, variables and extra arguments hold
    pwned = Path("/tmp/pwned-zr")
    pwned.unlink(missing_ok=True)
    hostile = HOSTILE.replace("%", "").replace(",", "").replace(":", "")
    plan = plan_of(compose, "cluster=slurm", "trainer=default", f"cluster.container.runtime={runtime}",
                   f"cluster.container.image={hydra_quoted('/images/' + hostile + '.sif')}",
                   f"cluster.container.mounts=[{hydra_quoted('/data/' + hostile)}]",
                   f"cluster.container.extra_args=[{hydra_quoted('--x=' + HOSTILE)}]",
                   f"+cluster.container.env.ZR_HOSTILE={hydra_quoted(HOSTILE)}",
                   runs_dir=str(tmp_path / "runs"), workdir=str(tmp_path))
    bin_dir = _fake_srun_dir(tmp_path)
    # this srun records the variables the ranks' runtime would read, then its argv
    (bin_dir / "srun").write_text('#!/bin/bash\nprintf "%s\\0" "${ZR_HOSTILE-unset}" "${APPTAINERENV_ZR_HOSTILE-unset}" '
                                  '"$@" > "$ARGV_OUT"\nexit 75\n')
    plan = dataclasses.replace(plan, entry=(str(bin_dir / "python"), *plan.entry[1:]))
    script = tmp_path / "job.sbatch"
    script.write_text(render.sbatch_script(plan, CTX))
    Path(plan.run_dir, "logs").mkdir(parents=True)
    srun_out, host_out = tmp_path / "srun.argv", tmp_path / "host.argv"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "7",
           "ARGV_OUT": str(srun_out), "HOST_OUT": str(host_out)}
    env.pop("ZR_HOSTILE", None)
    subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, timeout=30)
    plain, prefixed, *got = srun_out.read_bytes().decode().split("\0")[:-1]
    assert got == render.srun_argv(plan)[1:]
    assert hostile in plan.container.image and f"--x={HOSTILE}" in got
    assert (plain, prefixed) == ((HOSTILE, "unset") if runtime == "pyxis" else ("unset", HOSTILE))
    # the batch host's step ran after srun, outside, with srun's status
    assert host_out.read_bytes().decode().split("\0")[:5] == ["-u", "-m", "jobs.host", "after", "75"]
    assert not pwned.exists(), "a hostile string ran a command"


def test_container_env_reaches_srun_and_beats_the_image(compose, tmp_path):
    plan = plan_of(compose, *GOLDEN_CONTAINER_PLANS["pyxis_2x8"])
    argv = render.srun_argv(plan)
    assert "--container-env=NCCL_DEBUG" in argv, "pyxis lets the image's value win unless the name is listed"
    assert "export NCCL_DEBUG=WARN" in render.sbatch_script(plan, CTX).splitlines()


# ---- bad input, refused before anything is written ----

def problems_of(compose, *overrides: str) -> list[str]:
    try:
        check_config(compose(*overrides))
    except ConfigError as e:
        return e.problems
    return []


def test_image_kinds():
    assert image_is_local("pyxis", "/images/a.sqsh") and image_is_local("pyxis", "./a.sqsh")
    assert image_is_local("pyxis", "images/a.sqsh") and not image_is_local("pyxis", "nvcr.io#nvidia/pytorch:24.01")
    assert not image_is_local("pyxis", "ubuntu:22.04") and not image_is_local("pyxis", "docker://ubuntu")
    assert image_is_local("apptainer", "pytorch.sif") and image_is_local("apptainer", "sandbox-folder")
    assert not image_is_local("apptainer", "docker://nvcr.io/nvidia/pytorch:24.01-py3")
    assert not image_is_local("apptainer", "oras://ghcr.io/x/y:1")


def test_a_local_image_that_does_not_exist_is_refused(compose, tmp_path):
    missing = tmp_path / "nope.sif"
    for runtime in ("pyxis", "apptainer"):
        p = problems_of(compose, "cluster=slurm", f"cluster.container.runtime={runtime}",
                        f"cluster.container.image={missing}")
        assert len(p) == 1 and f"cluster.container.image='{missing}': no such" in p[0], p
    missing.touch()
    assert problems_of(compose, "cluster=slurm", "cluster.container.runtime=apptainer",
                       f"cluster.container.image={missing}") == []
    # a sandbox folder is an apptainer image; pyxis takes a squashfs file only
    assert problems_of(compose, "cluster=slurm", "cluster.container.runtime=apptainer",
                       f"cluster.container.image={tmp_path}") == []
    assert problems_of(compose, "cluster=slurm", "cluster.container.runtime=pyxis",
                       f"cluster.container.image={tmp_path}")
    # a registry image is pulled on the nodes: not checked here
    assert problems_of(compose, "cluster=slurm", "cluster.container.runtime=pyxis",
                       "cluster.container.image='nvcr.io#nvidia/pytorch:24.01-py3'") == []


def test_a_missing_local_image_writes_nothing_and_submits_nothing(compose, tmp_path):
    from jobs.app import launch

    runs = tmp_path / "runs"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = launch(compose("cluster=slurm", "cluster.container.runtime=apptainer",
                            f"cluster.container.image={tmp_path / 'missing.sif'}", runs_dir=runs))
    assert rc == 2 and "missing.sif" in err.getvalue() and "no such image" in err.getvalue()
    assert not runs.exists(), "a refused run wrote into the runs folder"


@pytest.mark.parametrize("overrides, expected", [
    (("cluster.container.runtime=docker",), "cluster.container.runtime='docker' is not supported; choose one of"),
    (("cluster.container.runtime=pyxis",), "cluster.container.runtime=pyxis needs cluster.container.image"),
    (("cluster.container.runtime=pyxis", "cluster.container.image=ubuntu:22.04",
      "cluster.container.mounts=[data:/data]"), "is not SRC[:DST[:FLAGS]] with absolute paths"),
    (("cluster.container.runtime=pyxis", "cluster.container.image=ubuntu:22.04",
      "cluster.container.mounts=['/a:/a,/b:/b']"), "no ','"),
    (("cluster.container.runtime=pyxis", "cluster.container.image=ubuntu:22.04",
      "cluster.container.workdir=workspace"), "cluster.container.workdir='workspace': a folder inside"),
    (("cluster.container.runtime=apptainer", "cluster.container.image=docker://ubuntu",
      "cluster.container.extra_args=[--cleanenv]"), "--cleanenv hides Slurm's variables"),
    (("cluster.container.runtime=pyxis", "cluster.container.image=ubuntu:22.04",
      "cluster.container.python=' '"), "cluster.container.python is empty"),
])
def test_bad_container_settings_name_their_fix(compose, overrides, expected):
    p = problems_of(compose, "cluster=slurm", *overrides)
    assert any(expected in x for x in p), p


def test_the_local_backend_refuses_a_container(compose):
    plan = plan_of(compose, "cluster=local", "cluster.container.runtime=apptainer",
                   "cluster.container.image=docker://ubuntu")
    check = get_backend("local").preflight(plan, get_backend("local").probe())
    assert len(check.problems) == 1 and "set cluster.container.runtime=none" in check.problems[0]
    assert "cluster=slurm" in check.problems[0]
    assert get_backend("local").preflight(plan_of(compose, "cluster=local"), preflight.ClusterFacts()).ok


def test_a_mounted_folder_with_a_comma_is_refused(compose):
    plan = plan_of(compose, *CPU_APPTAINER, runs_dir="/runs,x")
    p = preflight.slurm_plan_problems(plan)
    assert len(p) == 1 and "'/runs,x/golden/r1' is mounted into the container" in p[0], p
    assert preflight.slurm_plan_problems(plan_of(compose, *CPU_APPTAINER)) == []


def test_a_sweep_with_a_missing_local_image_is_refused_for_every_member(tmp_path):
    from jobs.sweeps.members import SweepError
    from test_sweep import CPU_SLURM, build

    image = tmp_path / "torch.sif"
    with pytest.raises(SweepError) as e:
        build(tmp_path / "runs", *CPU_SLURM, "seed=1,2", "cluster.container.runtime=apptainer",
              f"cluster.container.image={image}")
    assert len(e.value.problems) == 1 and e.value.problems[0].startswith("members 0-1: cluster.container.image="), \
        e.value.problems
    image.touch()
    assert len(build(tmp_path / "runs", *CPU_SLURM, "seed=1,2", "cluster.container.runtime=apptainer",
                     f"cluster.container.image={image}").members) == 2
