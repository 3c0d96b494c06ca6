"""Site profiles without a cluster: `site=NAME` found in the user's folder (ZERORUN_SITES, a temporary folder
here) before the shipped examples, its keys composed into cluster.*, an unknown site named with the sites found
and where they were looked for; the GPU spelling rendered (golden file); a probe's answer kept and read back;
and the preflight and the sweep size check fed a probe of a GPU cluster (its scontrol/sinfo/sacctmgr answers
as text), refusing what that cluster would refuse, with the numbers and the fix.

The Slurm side (a real probe of the local cluster, a submission checked against it) is tests/test_sites_slurm.py.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import preflight, render, site_probe, slurm, sweep_plan
from cluster.plan import make_plan
from conftest import REPO
from configs import sites

PYTHON = "/opt/venv/bin/python"
WORKDIR = "/home/user/project"
GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("ZERORUN_REGEN_GOLDEN") == "1"
CTX = render.RenderContext(version="GOLDEN", command=("zerorun", "site=gpusite", "dry_run=true"))

GPU_PROFILE = """# @package _global_
defaults:
  - override /cluster: slurm
cluster:
  account: proj
  partition: gpu
  qos: normal
  constraint: a100_80g
  gpu_type: a100
  gres_style: gres
  gpus_per_node: 8
  tasks_per_node: 8
  cpus_per_task: 8
  time_min: 600
  setup: [module load cuda/12.1, conda activate zr]
  env_passthrough: [HF_TOKEN]
  # container: {runtime: pyxis, image: nvcr.io/nvidia/pytorch:24.05-py3}
"""

# A GPU cluster's answers, as its commands print them
PARTITIONS = """\
PartitionName=gpu AllowGroups=ALL Default=YES QoS=N/A DefaultTime=01:00:00 MaxNodes=4 MaxTime=2-00:00:00 Nodes=g[1-4] State=UP TotalCPUs=256 TotalNodes=4
PartitionName=h100 AllowGroups=ALL Default=NO QoS=h100lim DefaultTime=NONE MaxNodes=UNLIMITED MaxTime=12:00:00 Nodes=h[1-2] TotalNodes=2
PartitionName=cpu AllowGroups=ALL Default=NO QoS=N/A DefaultTime=NONE MaxNodes=UNLIMITED MaxTime=UNLIMITED Nodes=c1 TotalNodes=1
"""
SINFO = """\
g1|gpu*|64|512000|gpu:a100:8(S:0-1)|idle|2-00:00:00
g2|gpu*|64|512000|gpu:a100:8(S:0-1)|mixed|2-00:00:00
g3|gpu*|64|512000|gpu:a100:8(S:0-1)|allocated|2-00:00:00
g4|gpu*|64|512000|gpu:a100:8(S:0-1)|drained|2-00:00:00
h1|h100|96|1000000|gpu:h100:8|idle|12:00:00
h2|h100|96|1000000|gpu:h100:8|idle|12:00:00
c1|cpu|32|128000|(null)|idle|infinite
"""
CONFIG = "Configuration data as of 2026-01-01T00:00:00\nMaxArraySize            = 501\nMaxJobCount             = 20000\n"
QOS = "normal|2-00:00:00|100|200\nh100lim|08:00:00|4|8\nlong|7-00:00:00||\n"
ASSOC = "proj||50||normal,long|normal\nproj|h100|2|6|h100lim|\n"


def gpu_probe(**changes) -> site_probe.SiteProbe:
    p = site_probe.build("gpusite", version="slurm 23.02.7", partitions_text=PARTITIONS, sinfo_text=SINFO,
                         config_text=CONFIG, qos_text=QOS, assoc_text=ASSOC, user="me",
                         probed_at="2026-01-01T00:00:00+0000")
    return dataclasses.replace(p, **changes)


@pytest.fixture
def site_folder(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "sites"
    folder.mkdir()
    monkeypatch.setenv(sites.SITES_ENV, str(folder))
    (folder / "gpusite.yaml").write_text(GPU_PROFILE)
    return folder


def plan_for(compose, *overrides: str):
    from configs.finalize import finalize

    cfg = finalize(compose("name=golden", "run_id=r1", *overrides, runs_dir="/runs"))
    return cfg, make_plan(cfg, python=PYTHON, workdir=WORKDIR)


# ---- finding and composing profiles ---------------------------------------------------------------------------

def test_a_profile_in_the_users_folder_sets_cluster_keys_and_the_site_name(site_folder, compose):
    cfg = compose("site=gpusite", "trainer=deepspeed")
    c = cfg.cluster
    assert (c.backend, c.account, c.partition, c.qos, c.gpu_type, c.gres_style) == \
        ("slurm", "proj", "gpu", "normal", "a100", "gres")
    assert list(c.setup) == ["module load cuda/12.1", "conda activate zr"] and list(c.env_passthrough) == ["HF_TOKEN"]
    assert cfg.site.name == "gpusite"
    # the command line still wins over the profile
    cfg = compose("site=gpusite", "cluster.partition=h100", "cluster.time_min=30")
    assert (cfg.cluster.partition, cfg.cluster.time_min, cfg.cluster.account) == ("h100", 30, "proj")
    assert compose().site.name is None, "no site unless one is chosen"


def test_the_users_profile_hides_a_shipped_one_and_needs_no_package_header(site_folder, compose):
    assert compose("site=example").cluster.account == "my_project", "the shipped example"
    (site_folder / "example.yaml").write_text("cluster:\n  backend: slurm\n  account: mine\n")
    cfg = compose("site=example")
    assert (cfg.cluster.account, cfg.cluster.backend, cfg.site.name) == ("mine", "slurm", "example")
    assert sites.find("example") == site_folder / "example.yaml"
    assert set(sites.profiles()) >= {"example", "gpusite", "localslurm"}


def test_an_unknown_site_names_the_sites_found_and_where_they_were_looked_for(site_folder):
    env = {**os.environ, sites.SITES_ENV: str(site_folder)}
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "site=nope"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    err = proc.stderr
    assert "site=nope: no site profile nope.yaml was found" in err
    assert "Sites found: example, gpusite, localslurm" in err
    assert str(site_folder) in err and str(sites.shipped_folder()) in err and "ZERORUN_SITES" in err
    listed = subprocess.run([sys.executable, "-m", "jobs.cli", "site", "list"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "gpusite" in listed.stdout and "never (zerorun site probe gpusite)" in listed.stdout


def test_site_verbs_never_import_the_training_stack(site_folder):
    heavy = ("torch", "lightning", "pytorch_lightning", "deepspeed", "transformers", "datasets")
    code = ("import io, json, sys\nfrom jobs.cli import VERBS\nout = io.StringIO()\n"
            "from jobs.site import main\nrc = main(['list'], out=out) + main(['show', 'gpusite'], out=out)\n"
            f"print(json.dumps({{'rc': rc, 'heavy': sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})}}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, sites.SITES_ENV: str(site_folder)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"rc": 0, "heavy": []}


# ---- the GPU spelling -----------------------------------------------------------------------------------------

def test_a_gres_site_renders_its_spelling_golden_file(site_folder, compose):
    _, plan = plan_for(compose, "site=gpusite", "trainer=deepspeed")
    script = render.sbatch_script(plan, CTX)
    path = GOLDEN / "site_gres_a100.sbatch"
    if REGEN:
        path.write_text(script)
    assert script == path.read_text(), f"differs from {path}; if intended: ZERORUN_REGEN_GOLDEN=1 pytest {__file__}"
    assert "#SBATCH --gres=gpu:a100:8\n" in script and "--gpus-per-node" not in script


@pytest.mark.parametrize("overrides, line", [
    (("cluster.gres_style=gpus_per_node",), "#SBATCH --gpus-per-node=a100:8"),
    (("cluster.gres_style=gpus_per_node", "cluster.gpu_type=null"), "#SBATCH --gpus-per-node=8"),
    (("cluster.gpu_type=null",), "#SBATCH --gres=gpu:8"),
])
def test_each_spelling_of_the_gpu_request(site_folder, compose, overrides, line):
    _, plan = plan_for(compose, "site=gpusite", "trainer=deepspeed", *overrides)
    script = render.sbatch_script(plan, CTX)
    assert line + "\n" in script
    assert sum(1 for ln in script.splitlines() if ln.startswith(("#SBATCH --gres", "#SBATCH --gpus"))) == 1


@pytest.mark.parametrize("overrides, fix", [
    (("cluster.gres_style=gpu",), "cluster.gres_style='gpu'; choose one of: gpus_per_node, gres"),
    (("cluster.gpus_per_node=0", "cluster.tasks_per_node=1", "cluster.cpu_rehearsal=true"),
     "cluster.gpu_type=a100 with cluster.gpus_per_node=0"),
    (("cluster.gpu_type='a100 80g'",), "is not a GRES type name"),
    (("+cluster.sbatch_extra.gres=gpu:2",), "remove gres from sbatch_extra"),
])
def test_bad_gpu_spelling_is_refused_with_the_fix(site_folder, compose, overrides, fix):
    _, plan = plan_for(compose, "site=gpusite", "trainer=deepspeed", *overrides)
    problems = preflight.plan_problems(plan)
    assert any(fix in p for p in problems), problems


# ---- the probe: parsed, kept, read back ----------------------------------------------------------------------

def test_the_probe_reads_each_commands_answer():
    p = gpu_probe()
    assert [x.name for x in p.partitions] == ["cpu", "gpu", "h100"] and p.default_partition == "gpu"
    gpu, h100 = p.partition(None), p.partition("h100")
    assert (gpu.max_time_min, gpu.default_time_min, gpu.max_nodes, gpu.total_nodes, gpu.gres_types) == \
        (2880, 60, 4, 4, ("a100",))
    assert sum(g.count for g in gpu.nodes) == 4, "a drained node is still one of the partition's"
    assert (h100.max_time_min, h100.max_nodes, h100.qos, h100.gres_types) == (720, None, "h100lim", ("h100",))
    assert p.partition("cpu").max_time_min is None and p.partition("cpu").gres_types == ()
    assert (p.max_array_size, p.max_job_count) == (501, 20000)
    assert p.qos[1] == preflight.QosLimits("h100lim", 480, 4, 8)
    assert p.associations[1] == site_probe.Association("proj", "h100", 2, 6, ("h100lim",), None)


def test_the_probe_is_kept_and_read_back_whole(site_folder):
    p = gpu_probe()
    path = site_probe.save(p)
    assert path == site_folder / "gpusite.probe.yaml"
    assert site_probe.load("gpusite") == p
    assert site_probe.load("other") is None, "never probed"
    with pytest.raises(site_probe.SiteProbeError, match="is not a site name"):
        site_probe.load("../gpusite")
    assert "gpusite.probe" not in sites.profiles(), "a probe is not a profile"
    path.write_text("partitions: [\n")
    with pytest.raises(site_probe.SiteProbeError, match="run `zerorun site probe gpusite` again"):
        site_probe.load("gpusite")


def test_a_probe_that_cannot_read_the_partitions_fails_and_sacctmgr_is_optional():
    answers = {"scontrol --version": "slurm 23.02.7\n", "scontrol show partition": PARTITIONS, "sinfo": SINFO,
               "scontrol show config": CONFIG}

    def run(argv):
        key = next((k for k in answers if " ".join(argv).startswith(k)), None)
        ok = key is not None
        return subprocess.CompletedProcess(argv, 0 if ok else 1, answers.get(key, ""),
                                           "" if ok else "sacctmgr: error: Problem talking to the database")

    p = site_probe.probe("gpusite", run=run)
    assert p.partition("gpu").max_time_min == 2880 and p.qos == ()
    assert any("sacctmgr -n -P not visible: sacctmgr: error" in n for n in p.notes)
    del answers["sinfo"]
    with pytest.raises(site_probe.SiteProbeError, match="sinfo -h -N .* failed"):
        site_probe.probe("gpusite", run=run)


# ---- the preflight fed a probe -------------------------------------------------------------------------------

def problems_of(compose, *overrides: str, probe=None) -> list[str]:
    from cluster.backends import get_backend

    _, plan = plan_for(compose, "site=gpusite", "trainer=deepspeed", *overrides)
    check = get_backend("slurm").preflight(plan, site_probe.facts(probe or gpu_probe()))
    assert any("checked against the probe of site gpusite" in n for n in check.notes)
    return check.problems


def test_the_profile_as_written_passes_the_probe(site_folder, compose):
    assert problems_of(compose) == []


@pytest.mark.parametrize("overrides, expected", [
    (("cluster.time_min=3000",), "cluster.time_min=3000 is over the MaxTime of partition 'gpu' (2880 min, from the "
                                 "probe of site gpusite (2026-01-01T00:00:00+0000"),
    (("cluster.nodes=5",), "cluster.nodes=5 is over the MaxNodes of partition 'gpu' (4, from the probe"),
    (("cluster.gpu_type=h100",), "cluster.gpu_type=h100 is not a GRES type of partition 'gpu' (its GPU types: a100, "
                                 "from the probe of site gpusite"),
    (("cluster.gpu_type=v100",), "set cluster.gpu_type to one of them, or cluster.gpu_type=null for any GPU"),
    (("cluster.partition=cpu",), "cluster.gpu_type=a100 is not a GRES type of partition 'cpu' (its GPU types: none"),
    (("cluster.qos=gold",), "cluster.qos=gold is not a QOS of this cluster (its QOS: h100lim, long, normal, from the "
                            "probe"),
    (("cluster.partition=h100", "cluster.gpu_type=h100", "cluster.qos=h100lim"),
     "cluster.time_min=600 is over the MaxWall of QOS h100lim (480 min, from the probe"),
    (("cluster.partition=nope",), "cluster.partition='nope' does not exist on this cluster; choose one of: cpu, gpu, h100"),
])
def test_the_preflight_refuses_what_the_probed_cluster_would(site_folder, compose, overrides, expected):
    problems = problems_of(compose, *overrides)
    assert any(expected in p for p in problems), problems


def test_an_unknown_gres_type_names_the_partitions_that_offer_it(site_folder, compose):
    problems = problems_of(compose, "cluster.gpu_type=h100")
    assert "partition(s) h100 offer it (cluster.partition)" in problems[0]


def test_launch_checks_a_probed_site_against_its_probe_and_writes_nothing(site_folder, compose, capsys, tmp_path):
    from jobs.app import launch

    site_probe.save(gpu_probe())
    runs = tmp_path / "runs"
    cfg = compose("site=gpusite", "trainer=deepspeed", "cluster.time_min=3000", runs_dir=runs)
    assert launch(cfg) == 2
    err = capsys.readouterr().err
    assert "(2880 min, from the probe of site gpusite" in err
    assert not runs.exists() or not any(runs.rglob("*.sbatch")), "nothing written for a refused job"


# ---- the sweep size check: queued jobs and per-user limits -----------------------------------------------------

def test_parse_queue_counts_the_users_array_tasks_and_everyones_records():
    text = "me|101\nme|102_[3-9%2]\nyou|103\nme|104_1\nyou|105_[0-99]\n"
    assert slurm.parse_queue(text, "me") == (1 + 7 + 1, 5)


def test_limits_of_a_plan_follow_its_qos_partition_and_association(site_folder, compose):
    _, plan = plan_for(compose, "site=gpusite", "trainer=deepspeed", "cluster.partition=h100",
                       "cluster.gpu_type=h100", "cluster.qos=null")
    lim = site_probe.limits(gpu_probe(), plan)
    assert (lim.max_array_size, lim.max_job_count) == (501, 20000) and lim.source.startswith("the probe of site")
    assert lim.submit_limits == ((200, "MaxSubmitPU of QOS normal"), (8, "MaxSubmitPU of QOS h100lim"),
                                 (6, "MaxSubmitJobs of your association (account proj, partition h100)"))
    assert (4, "MaxJobsPU of QOS h100lim") in lim.run_limits and (2, "MaxJobs of your association (account proj, "
                                                                     "partition h100)") in lim.run_limits
    _, plan = plan_for(compose, "site=gpusite", "trainer=deepspeed")
    assert site_probe.limits(gpu_probe(), plan).submit_limits == ((200, "MaxSubmitPU of QOS normal"),)


def test_the_sweep_check_counts_queued_jobs_and_per_user_limits(site_folder, compose):
    _, plan = plan_for(compose, "site=gpusite", "trainer=deepspeed", "cluster.partition=h100",
                       "cluster.gpu_type=h100", "cluster.qos=null")
    lim = site_probe.limits(gpu_probe(), plan)
    assert sweep_plan.sweep_problems(5, 5, dataclasses.replace(lim, queued_mine=1, queued_all=10)) == []
    refused = sweep_plan.sweep_problems(5, 5, dataclasses.replace(lim, queued_mine=2, queued_all=10))
    assert len(refused) == 1, refused
    assert ("the sweep's 5 members + your 2 jobs already queued = 7 jobs, over the MaxSubmitJobs of your association "
            "(account proj, partition h100) of 6") in refused[0]
    assert "submit at most 4 members now" in refused[0]
    full = sweep_plan.sweep_problems(3, 3, dataclasses.replace(lim, queued_mine=6, queued_all=10))
    assert any("wait for your queued jobs to finish, or cancel some" in p for p in full), full
    crowded = sweep_plan.sweep_problems(5, 5, dataclasses.replace(lim, queued_mine=0, queued_all=19998))
    assert any("with the 19998 jobs already queued" in p and "MaxJobCount=20000" in p
               and "at most 2 members" in p for p in crowded), crowded
    notes = sweep_plan.sweep_notes(5, 5, lim)
    assert any("at most 4 of your jobs run at once (MaxJobsPU of QOS h100lim" in n for n in notes), notes
    assert sweep_plan.sweep_notes(5, 1, lim) == [], "a throttle under every cap needs no note"
