"""Rendering and its pure neighbours: golden sbatch scripts compared whole, the quoting choke point against
hostile strings under a real bash, the preflight's problems, and the parsers of Slurm's answers.

Regenerate the golden files after an intended change: ZERORUN_REGEN_GOLDEN=1 pytest tests/test_render.py
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from cluster import preflight, quoting, render, slurm
from cluster.backends import get_backend
from cluster.plan import BASE_EXPORTS, JobPlan, SetupFileError, make_plan, read_setup_file

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("ZERORUN_REGEN_GOLDEN") == "1"
PYTHON = "/opt/venv/bin/python"
WORKDIR = "/home/user/project"
CTX = render.RenderContext(version="GOLDEN", command=("zerorun", "cluster=slurm", "dry_run=true"))
HOSTILE = "it's \"quoted\" $(touch /tmp/pwned-zr) `id` $HOME\nline two\ttab ünïcødé ✓ 100%j"

# name -> overrides of a representative plan
GOLDEN_PLANS = {
    "cpu_1node": ("cluster=slurm", "cluster.gpus_per_node=0", "cluster.tasks_per_node=1", "cluster.cpus_per_task=1",
                  "cluster.partition=debug", "cluster.mem=1G", "cluster.time_min=30", "trainer=default"),
    "deepspeed_2x4": ("cluster=slurm", "cluster.nodes=2", "cluster.gpus_per_node=4", "cluster.tasks_per_node=4",
                      "cluster.cpus_per_task=8", "trainer=deepspeed",
                      "cluster.partition=gpu", "cluster.account=proj", "cluster.mem=64G", "cluster.signal=USR1",
                      "cluster.signal_delay_s=300", "cluster.exclusive=true",
                      "cluster.setup=[module load cuda/12.1,source /opt/venv/bin/activate]",
                      "cluster.env_passthrough=[HF_TOKEN,WANDB_API_KEY]"),
    "offload_1x8": ("cluster=slurm", "cluster.gpus_per_node=8", "cluster.tasks_per_node=8", "cluster.cpus_per_task=8",
                    "trainer=deepspeed_offload", "cluster.qos=high",
                    "cluster.constraint=a100", "cluster.master_port=29500", "cluster.requeue=false",
                    "cluster.srun_args=['--cpu-bind=none']", "+cluster.sbatch_extra.mail_type=END",
                    "+cluster.sbatch_extra.mail_user=me@example.org"),
}


def hydra_quoted(text: str) -> str:
    """`text` as a quoted value of Hydra's override grammar (how a user types it on the command line)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def plan_of(compose, *overrides: str, runs_dir: str = "/runs", workdir: str = WORKDIR, **kw) -> JobPlan:
    from jobs.app import finalize

    cfg = finalize(compose("name=golden", "run_id=r1", *overrides, runs_dir=hydra_quoted(runs_dir)))
    return make_plan(cfg, python=PYTHON, workdir=workdir, **kw)


@pytest.mark.parametrize("name", sorted(GOLDEN_PLANS))
def test_rendered_script_matches_golden_file(compose, name):
    script = render.sbatch_script(plan_of(compose, *GOLDEN_PLANS[name]), CTX)
    path = GOLDEN / f"{name}.sbatch"
    if REGEN:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(script)
    assert path.exists(), f"no golden file {path}: run ZERORUN_REGEN_GOLDEN=1 pytest {__file__}"
    assert script == path.read_text(), f"{name} differs from {path}; if intended, regenerate (see module doc)"


def test_rendering_is_deterministic_and_reads_nothing_of_its_own(compose, monkeypatch):
    plan = plan_of(compose, *GOLDEN_PLANS["deepspeed_2x4"])
    first = render.sbatch_script(plan, CTX)
    monkeypatch.setattr("sys.argv", ["something", "else"])
    monkeypatch.setenv("HF_TOKEN", "hf_should_not_matter_123")
    monkeypatch.chdir("/")
    assert render.sbatch_script(plan, CTX) == first


def test_script_shape(compose):
    plan = plan_of(compose, *GOLDEN_PLANS["deepspeed_2x4"])
    script = render.sbatch_script(plan, CTX)
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert "zerorun GOLDEN" in lines[1] and "cluster=slurm dry_run=true" in lines[2]
    directives = [x for x in lines if x.startswith("#SBATCH")]
    assert directives == sorted(directives), "flags sorted: a diff between two scripts is readable"
    assert [x for x in directives if "--signal" in x] == ["#SBATCH --signal=USR1@300"], "exactly one, configured"
    assert "#SBATCH --nodes=2" in directives and "#SBATCH --ntasks-per-node=4" in directives
    assert "#SBATCH --gpus-per-node=4" in directives and "#SBATCH --requeue" in directives
    assert "#SBATCH --output=/dev/null" in directives, "the script sends its output to the run folder itself"
    assert lines[lines.index("# setup") + 1] == "exec >>/runs/golden/r1/logs/\"${SLURM_JOB_ID}\"_batch.out 2>&1"
    srun = [x for x in lines if x.startswith("srun ")]
    assert len(srun) == 1 and "--kill-on-bad-exit=1" in srun[0]
    assert srun[0].endswith(f"{PYTHON} -u -m jobs.rank /runs/golden/r1")
    assert "--output=/runs/golden/r1/logs/%j_%t.out" in srun[0]
    # the user's setup lines run after the cd to where they submitted, before srun
    assert lines.index("module load cuda/12.1") > lines.index(f"cd {WORKDIR}")
    assert lines.index("source /opt/venv/bin/activate") < lines.index(srun[0])


def test_header_names_the_installed_version():
    from importlib.metadata import version

    from jobs.dryrun import context, invocation

    assert context().version == version("zerorun")
    assert invocation(["/x/bin/zerorun", "a=1"]) == ("zerorun", "a=1")
    assert context(["train.py", "b=2"]).command == ("train.py", "b=2")


def test_secrets_travel_by_name_only(compose, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secretvalue_abcdef")
    monkeypatch.setenv("WANDB_API_KEY", "wandb_secretvalue_123456")
    script = render.sbatch_script(plan_of(compose, *GOLDEN_PLANS["deepspeed_2x4"]), CTX)
    export = next(x for x in script.splitlines() if x.startswith("#SBATCH --export="))
    names = export.split("=", 1)[1].split(",")
    assert "HF_TOKEN" in names and "WANDB_API_KEY" in names and "ALL" not in names
    assert "secretvalue" not in script
    assert not any(re.search(r"TOKEN|KEY|SECRET|PASSWORD", n) for n in BASE_EXPORTS)
    # not listed: not exported at all
    plain = render.sbatch_script(plan_of(compose, *GOLDEN_PLANS["cpu_1node"]), CTX)
    assert "HF_TOKEN" not in plain and "WANDB_API_KEY" not in plain


def _fake_srun_dir(tmp_path: Path) -> Path:
    """A stand-in for srun (there is no Slurm in a pure test) that writes the argv it got, NUL-separated."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text('#!/bin/bash\nprintf "%s\\0" "$PWD" "$@" > "$ARGV_OUT"\nexit 75\n')
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    # and for the batch host's step after srun: records its argv and exits with the status it was handed
    python = bin_dir / "python"
    python.write_text('#!/bin/bash\nprintf "%s\\0" "$@" > "$HOST_OUT"\nexit "$5"\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def test_hostile_strings_reach_srun_exactly_under_bash_with_a_fake_srun(compose, tmp_path):
    pwned = Path("/tmp/pwned-zr")
    pwned.unlink(missing_ok=True)
    workdir = tmp_path / f"work {HOSTILE.replace('%', '')}"
    workdir.mkdir(parents=True)
    runs = tmp_path / f"runs {HOSTILE}"
    plan = plan_of(compose, f"name={hydra_quoted(HOSTILE.replace('%', ''))}", "cluster=slurm", "cluster.gpus_per_node=0",
                   "cluster.tasks_per_node=1", "trainer=default", runs_dir=str(runs), workdir=str(workdir))
    bin_dir = _fake_srun_dir(tmp_path)
    python = str(bin_dir / "python")
    plan = dataclasses.replace(plan, srun_args=(f"--comment={HOSTILE}",), entry=(python, *plan.entry[1:]))
    ctx = render.RenderContext("GOLDEN", ("zerorun", f"name={HOSTILE}", "x\ntouch /tmp/pwned-zr"))
    script = render.sbatch_script(plan, ctx)
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    out, host_out = tmp_path / "argv", tmp_path / "host-argv"
    Path(plan.run_dir, "logs").mkdir(parents=True)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "ARGV_OUT": str(out), "HOST_OUT": str(host_out), "SLURM_JOB_ID": "7"}
    proc = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True, timeout=30)
    # srun's status reaches the batch host's step, whose status is the job's
    assert proc.returncode == 75, proc.stderr
    assert host_out.read_bytes().decode().split("\0")[:-1] == ["-u", "-m", "jobs.host", "after", "75", plan.run_dir]
    cwd, *argv = out.read_bytes().decode().split("\0")[:-1]
    assert cwd == str(workdir)
    assert argv[-5:] == [python, "-u", "-m", "jobs.rank", plan.run_dir]
    assert f"--comment={HOSTILE}" in argv
    assert Path(plan.run_dir, "logs", "7_batch.out").exists(), "the batch log lands in the hostile run folder"
    assert argv[3] == "--output=" + plan.run_dir.replace("%", "%%") + "/logs/%j_%t.out"
    assert not pwned.exists(), "a hostile string was executed"
    # the job name Slurm shows is a safe label; the exact name is the config's
    assert "#SBATCH --job-name=it_s_quoted_touch_tmp_pwned-zr_id_HOME_line_two_tab" in script


@pytest.mark.parametrize("value", ["a b", "x'y", 'q"', "$(id)", "a\nb", "ü", "a\\b", "#x"])
def test_directive_values_outside_the_safe_set_are_refused_with_the_fix(value):
    with pytest.raises(quoting.QuotingError) as e:
        quoting.directive("partition", value)
    assert "--partition" in str(e.value) and "plain Slurm name" in str(e.value)


def test_quoting_helpers():
    assert quoting.directive("time", 60) == "60"
    assert quoting.slurm_name("") == "zerorun" and quoting.slurm_name("a b/c") == "a_b_c"
    assert len(quoting.slurm_name("x" * 500)) == quoting.NAME_MAX
    assert quoting.filename_pattern("/r/100%/x") == "/r/100%%/x"
    with pytest.raises(quoting.QuotingError, match="backslash"):
        quoting.filename_pattern("/r/a\\b")
    assert "\n" not in quoting.comment("a\nb") and quoting.comment("ü") == '"ü"'
    with pytest.raises(quoting.QuotingError, match="NUL"):
        quoting.word("a\x00b")
    with pytest.raises(quoting.QuotingError, match="variable name"):
        quoting.assign("A-B", "1")
    assert quoting.assign("A", "x y") == "export A='x y'"


def test_partition_with_a_space_is_a_preflight_problem_not_a_broken_script(compose):
    plan = plan_of(compose, "cluster=slurm", "cluster.gpus_per_node=0", "cluster.tasks_per_node=1",
                   "cluster.partition='de bug'")
    problems = preflight.check(plan, preflight.ClusterFacts(error="not asked")).problems
    assert any("--partition='de bug'" in p for p in problems)


def test_rank_table_follows_the_rendezvous_contract(compose):
    plan = plan_of(compose, *GOLDEN_PLANS["deepspeed_2x4"])
    rows = get_backend("slurm").rank_table(plan)
    assert [(r.rank, r.node_rank, r.local_rank) for r in rows] == [(n * 4 + lr, n, lr) for n in (0, 1) for lr in range(4)]
    assert {r.world_size for r in rows} == {8} and {r.master.split(":")[0] for r in rows} == {"node0"}
    assert [r.device for r in rows[:4]] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    text = render.table_text(rows)
    assert text.splitlines()[0].split() == list(render.TABLE_COLUMNS)
    assert len(text.splitlines()) == 9


def test_big_job_renders_script_and_table(compose):
    # its time is measured by bench/bench_submit.py (dry run 512x8), not asserted here
    plan = dataclasses.replace(plan_of(compose, *GOLDEN_PLANS["deepspeed_2x4"]), nodes=512, tasks_per_node=8,
                               gpus_per_node=8)
    script = render.sbatch_script(plan, CTX)
    text = render.table_text(get_backend("slurm").rank_table(plan))
    assert "#SBATCH --nodes=512" in script and len(text.splitlines()) == 4097


def test_setup_file_lines_join_the_plan(compose, tmp_path):
    f = tmp_path / "setup.sh"
    f.write_text("module load gcc\n\nexport A=1\n")
    plan = plan_of(compose, "cluster=slurm", "cluster.setup=[echo hi]", setup_file_lines=read_setup_file(str(f)))
    assert plan.setup == ("echo hi", "module load gcc", "export A=1")
    assert read_setup_file(None) == ()


@pytest.mark.parametrize("kind", ["missing", "a folder", "not text", "under a file"])
def test_unreadable_setup_file_names_the_fix(tmp_path, kind):
    path = tmp_path / "setup.sh"
    if kind == "a folder":
        path.mkdir()
    elif kind == "not text":
        path.write_bytes(b"\xff\xfe\x00module load")
    elif kind == "under a file":
        (tmp_path / "f").write_text("x")
        path = tmp_path / "f" / "setup.sh"
    with pytest.raises(SetupFileError) as e:
        read_setup_file(str(path))
    assert "cluster.setup_file" in str(e.value) and "cluster.setup" in str(e.value)


# ---- preflight (pure) ----

SINFO = "n1|debug*|2|8000|(null)\nn2|debug*|2|8000|(null)\nn1|high|2|8000|(null)\nn2|high|2|8000|(null)\n"
GPU_SINFO = "g1|gpu|64|512000|gpu:a100:8(S:0-1)\ng2|gpu|64|256000|gpu:8\n"


def test_parse_sinfo():
    facts = preflight.parse_sinfo(SINFO)
    assert facts.default_partition == "debug" and list(facts.partitions) == ["debug", "high"]
    assert [n.name for n in facts.partitions["debug"]] == ["n1", "n2"]
    gpu = preflight.parse_sinfo(GPU_SINFO).partitions["gpu"]
    assert [(n.cpus, n.mem_mb, n.gpus) for n in gpu] == [(64, 512000, 8), (64, 256000, 8)]


CPU = ("cluster=slurm", "cluster.gpus_per_node=0", "cluster.tasks_per_node=1", "cluster.cpus_per_task=1")


@pytest.mark.parametrize(
    "overrides,fix",
    [
        (("cluster.partition=gpu",), "cluster.partition='gpu' does not exist on this cluster; choose one of: debug, high"),
        (("cluster.nodes=3", "trainer=ddp"), "cluster.nodes=3 but partition 'debug' has 2 nodes"),
        (("cluster.mem=64G",), "cluster.mem=64G (65536 MB per node) is more than partition 'debug' offers"),
        (("cluster.mem=lots",), "cluster.mem='lots' is not a Slurm memory size; write e.g. 32G"),
        (("cluster.cpus_per_task=4",), "= 4 CPUs per node, but the nodes of partition 'debug' have at most 2"),
        (("cluster.gpus_per_node=2", "cluster.tasks_per_node=2", "trainer=ddp"), "have at most 0 GPUs"),
        (("trainer=deepspeed", "cluster.nodes=2"), "cluster.cpu_rehearsal=true to rehearse DeepSpeed on CPU ranks"),
        (("cluster.time_min=2", "cluster.signal_delay_s=120"), "cluster.time_min(2) x 60 = 120 s"),
        (("cluster.signal=usr 1",), "not a signal name or number"),
        (("cluster.env_passthrough=['HF_TOKEN=abc']",), "list names only"),
        (("+cluster.sbatch_extra.signal=USR1@9",), "cluster.sbatch_extra.signal: zerorun sets --signal itself"),
        (("+cluster.sbatch_extra.ntasks-per-node=3",), "cluster.sbatch_extra.ntasks_per_node: zerorun sets"),
    ],
)
def test_preflight_names_each_problem_and_its_fix(compose, overrides, fix):
    plan = plan_of(compose, *CPU, *overrides)
    check = preflight.check(plan, preflight.parse_sinfo(SINFO))
    assert any(fix in p for p in check.problems), check.problems


def test_preflight_passes_a_good_plan_and_cpu_rehearsal(compose):
    facts = preflight.parse_sinfo(SINFO)
    assert preflight.check(plan_of(compose, *CPU, "cluster.mem=1G"), facts).ok
    rehearsal = plan_of(compose, *CPU, "trainer=deepspeed", "cluster.nodes=2", "cluster.cpu_rehearsal=true")
    assert preflight.check(rehearsal, facts).ok
    unknown = preflight.check(plan_of(compose, *CPU), preflight.ClusterFacts(error="sinfo is not on PATH"))
    assert unknown.ok and "sinfo is not on PATH" in unknown.notes[0]


def test_no_partition_uses_the_default_and_a_big_gpu_cluster_passes(compose):
    plan = plan_of(compose, "cluster=slurm", "cluster.nodes=2", "cluster.gpus_per_node=8", "cluster.tasks_per_node=8",
                   "trainer=deepspeed", "cluster.partition=gpu", "cluster.mem=200G", "cluster.cpus_per_task=8")
    assert preflight.check(plan, preflight.parse_sinfo(GPU_SINFO)).ok
    assert not preflight.check(dataclasses.replace(plan, mem="300G"), preflight.parse_sinfo(GPU_SINFO)).ok


def test_mem_sizes():
    assert [preflight.mem_mb(x) for x in ("4096", "32G", "500M", "1T", "2gb", "x")] == [4096, 32768, 500, 1048576, 2048, None]


# ---- Slurm's answers (pure parsers) ----

def test_states_table_and_parsers():
    assert slurm.normalize_state("CANCELLED by 1000") == ("CANCELLED", True)
    assert slurm.normalize_state("PD") == ("PENDING", False)
    assert slurm.normalize_state("COMPLETING+") == ("COMPLETING", False)
    assert slurm.normalize_state("WEIRD") == ("UNKNOWN", False)
    q = slurm.parse_squeue("12|RUNNING|None|0:05|n[1-2]\n13|PENDING|Resources|0:00|\n")
    assert (q["12"].state, q["12"].nodelist, q["13"].reason) == ("RUNNING", "n[1-2]", "Resources")
    a = slurm.parse_sacct("14|FAILED|1:0|00:00:07|n[1-2]\n15|CANCELLED by 0|0:15|00:00:02|n1\n")
    assert (a["14"].state, a["14"].finished, a["14"].exit_code) == ("FAILED", True, "1:0")
    assert a["15"].state == "CANCELLED"
    s = slurm.parse_scontrol("JobId=16 JobName=x UserId=root(0) JobState=FAILED Reason=NonZeroExitCode "
                             "ExitCode=1:0 RunTime=00:00:03 NodeList=n[1-2] WorkDir=/a b/c\n")
    assert (s["16"].state, s["16"].exit_code, s["16"].nodelist, s["16"].reason) == ("FAILED", "1:0", "n[1-2]", "NonZeroExitCode")


def test_failed_tasks_puts_the_first_failure_before_the_killed_ones():
    log = ("srun: error: n2: task 1: Exited with exit code 1\n"
           "srun: launch/slurm: _step_signal: Terminating StepId=5.0\n"
           "srun: error: n1: tasks 2-3,5: Killed\n"
           "srun: error: n1: task 0: Exited with exit code 1\n")
    failures = slurm.failed_tasks(log)
    assert (failures[0].rank, failures[0].host, failures[0].how) == (1, "n2", "exit code 1")
    assert [f.rank for f in failures[1:]] == [0, 2, 3, 5]


def test_a_rank_killed_before_srun_ends_the_step_is_the_cause():
    # kill -9 of rank 1 (a real batch log): its peer then fails in a collective with exit code 1
    log = ("srun: error: n2: task 1: Killed\n"
           "srun: launch/slurm: _step_signal: Terminating StepId=237.0\n"
           "srun: error: n1: task 0: Exited with exit code 1\n"
           "srun: Force Terminated StepId=237.0\n")
    failures = slurm.failed_tasks(log)
    assert [(f.rank, f.host, f.how) for f in failures] == [(1, "n2", "Killed"), (0, "n1", "exit code 1")]


def test_leaked_secrets_are_found_by_value():
    from jobs.snapshot import leaked_secrets

    env = {"HF_TOKEN": "hf_abcdefgh123", "WANDB_API_KEY": "k" * 40, "PATH": "/usr/bin", "MY_PASSWORD": "short"}
    assert leaked_secrets(["a hf_abcdefgh123 b"], env) == ["HF_TOKEN"]
    assert leaked_secrets(["/usr/bin short"], env) == []
