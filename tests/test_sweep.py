"""Sweeps without a cluster: the grid becomes members built from one composed config (and the same config a full
composition gives), arrays split under MaxArraySize, bad input refused before anything is written, the dry run,
the record, the index an array task reads, and a small sweep run here with cluster=local.

The real Slurm side (queued arrays, failures, preemption, a crashed submitter, the report) is
tests/test_sweep_slurm.py.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cluster import preflight, render, sweep_plan
from cluster.plan import make_plan
from cluster.slurm import ClusterLimits, parse_sacct_tasks, parse_scontrol_config, parse_squeue
from conftest import REPO, shrink
from jobs.sweeps import dryrun, expansion, local, members, plan, refresh, submit
from jobs.sweeps import record as sweep_record

CPU_SLURM = ("cluster=slurm", "cluster.gpus_per_node=0", "cluster.tasks_per_node=1", "cluster.cpus_per_task=1",
             "cluster.mem=1G", "cluster.time_min=5", "cluster.signal_delay_s=60", "cluster.partition=debug")
NO_CLUSTER = preflight.ClusterFacts(error="no cluster in this test")
LIMITS = ClusterLimits(1001, 10000, "scontrol show config (as this test fixes it)")


def multirun(runs: Path, *overrides: str):
    """(config, config_loader, members' overrides) as `zerorun -m OVERRIDES` hands them to the launcher."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from configs.schema import register

    register()
    args = [f"cluster.runs_dir={runs}", *overrides]
    with initialize_config_module("configs", version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        cfg = hydra.compose_config("config", overrides=args, run_mode=RunMode.MULTIRUN, with_log_configuration=False)
        loader = hydra.config_loader
        lines = expansion.expand(cfg, loader, [str(x) for x in cfg.hydra.overrides.task])
        return cfg, loader, lines


def build(runs: Path | str, *overrides: str) -> members.BuiltSweep:
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from configs.schema import register

    register()
    args = [f"cluster.runs_dir={runs}", *overrides]
    with initialize_config_module("configs", version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        cfg = hydra.compose_config("config", overrides=args, run_mode=RunMode.MULTIRUN, with_log_configuration=False)
        lines = expansion.expand(cfg, hydra.config_loader, [str(x) for x in cfg.hydra.overrides.task])
        return members.build(cfg, hydra.config_loader, lines)


def full_composition(runs: Path, member: members.MemberSpec, sweep_id: str, *base: str) -> str:
    """The member's config as a plain `zerorun OVERRIDES` run would save it (one full composition)."""
    from hydra import compose, initialize_config_module

    from jobs.app import finalize

    with initialize_config_module("configs", version_base="1.3"):
        overrides = [f"cluster.runs_dir={runs}", *base, *member.overrides, f"sweep.id={sweep_id}"]
        cfg = compose("config", overrides=overrides)
    cfg = finalize(cfg)
    cfg.run_dir, cfg.run_id = member.run_dir, member.config["run_id"]
    return OmegaConf.to_yaml(cfg)


# ---- members ---------------------------------------------------------------------------------------------------

def test_members_are_the_grid_and_each_config_is_what_a_full_composition_gives(tmp_path):
    runs = tmp_path / "runs"
    base = ("trainer.max_steps=7",)
    built = build(runs, *base, "optimizer.lr=1e-4,3e-4", "seed=1,2,3", "trainer=default,ddp",
                  "task.name=translation,language_modeling")
    assert len(built.members) == 2 * 3 * 2 * 2
    assert built.params == ["optimizer.lr", "seed", "trainer", "task.name"]
    assert built.sweep_dir == f"{runs}/translation/sweep-{built.sweep_id}"
    m = built.members[-1]
    assert m.overrides == ("optimizer.lr=0.0003", "seed=3", "trainer=ddp", "task.name=language_modeling")
    assert m.params == {"optimizer.lr": 0.0003, "seed": 3, "trainer": "ddp", "task.name": "language_modeling"}
    assert m.run_dir == f"{built.sweep_dir}/{m.num}"
    # a group sweep (trainer=...) and a key another key interpolates (name: ${task.name}) included
    for member in (built.members[0], built.members[5], m):
        assert member.yaml == full_composition(runs, member, built.sweep_id, *base), member.overrides
    assert m.config["name"] == "language_modeling" and m.config["trainer"]["strategy"]["name"] == "ddp"
    assert m.config["trainer"]["max_steps"] == 7
    # unchanged sections are shared with the base, not copied per member
    assert built.members[0].config["dataset"] is built.members[1].config["dataset"]


def test_the_same_command_gives_the_same_sweep_id_and_another_grid_another(tmp_path):
    a = build(tmp_path, "optimizer.lr=1e-4,3e-4", "seed=1,2")
    b = build(tmp_path, "seed=1,2", "optimizer.lr=1e-4,3e-4", "dry_run=true", "sweep.parallelism=3")
    c = build(tmp_path, "optimizer.lr=1e-4,3e-4", "seed=1,2,3")
    d = build(tmp_path, "optimizer.lr=1e-4,3e-4", "seed=1,2", "sweep.id=again")
    assert a.sweep_id == b.sweep_id, "order, dry_run and parallelism do not change what the sweep is"
    assert a.sweep_id != c.sweep_id
    assert d.sweep_id == "again" and d.sweep_dir.endswith("/sweep-again")


def test_10000_members_split_into_arrays_under_max_array_size(tmp_path):
    # how long it takes is measured by bench/bench_sweep.py, not asserted here (a loaded machine is not slow code)
    built = build(tmp_path, *CPU_SLURM, "seed=range(0,10000)")
    base = make_plan(members.ConfigView(built.plan_configs[0]))
    plan = sweep_plan.plan_sweep(base, [m.num for m in built.members], sweep_id=built.sweep_id,
                                 sweep_dir=built.sweep_dir, name=built.name, submission=0, nonce="abc123",
                                 parallelism=50, limits=LIMITS)
    scripts = [render.sbatch_script(a.plan, render.RenderContext("T", ("zerorun",)), a.array, script=a.script)
               for a in plan.arrays]
    assert [len(a.members) for a in plan.arrays] == [1001] * 9 + [991]
    assert [m for a in plan.arrays for m in a.members] == list(range(10000)), "every member once, in order"
    # sweep.parallelism=50 is the whole sweep's: ten arrays side by side, 5 members each at once
    assert [a.array.flag for a in plan.arrays] == ["0-1000%5"] * 9 + ["0-990%5"]
    assert [a.after for a in plan.arrays] == [None] * 10
    assert len({a.tag for a in plan.arrays}) == 10 and all(len(a.job_name) <= 64 for a in plan.arrays)
    assert "#SBATCH --array=0-1000%5" in scripts[0] and "#SBATCH --array=0-990%5" in scripts[-1]
    assert f"--array {built.sweep_dir}/arrays/s00-a009.index.json" in scripts[-1]
    index = json.loads(sweep_plan.index_text(plan.arrays[9], {m.num: m.run_dir for m in built.members}))
    assert index["run_dirs"][0] == f"{built.sweep_dir}/9009" and len(index["run_dirs"]) == 991


def test_split_and_size_limits():
    assert sweep_plan.split(0, 1001) == []
    assert [len(r) for r in sweep_plan.split(1002, 1001)] == [1001, 1]
    assert [len(r) for r in sweep_plan.split(5, 2)] == [2, 2, 1]
    assert sweep_plan.sweep_problems(10000, 1, LIMITS) == []
    too_many = sweep_plan.sweep_problems(10001, 1, LIMITS)
    assert len(too_many) == 1 and "MaxJobCount=10000" in too_many[0] and "at most 10000 members" in too_many[0]
    assert "sweep.parallelism=1 or more" in sweep_plan.sweep_problems(4, 0, LIMITS)[0]
    assert "no members" in sweep_plan.sweep_problems(0, 4, LIMITS)[0]


def running_at_once(sizes: list[int], lanes: list[tuple[int, int | None]]) -> int:
    """The most members the arrays can run at once: per lane (a chain of arrays, one after another), the
    largest throttle any of its arrays can use, summed over the lanes."""
    chains: dict[int, int] = {}
    lane_of: dict[int, int] = {}
    for k, ((throttle, after), size) in enumerate(zip(lanes, sizes)):
        lane_of[k] = k if after is None else lane_of[after]
        chains[lane_of[k]] = max(chains.get(lane_of[k], 0), min(throttle, size))
    return sum(chains.values())


def test_the_arrays_of_a_split_sweep_share_its_parallelism():
    # one array: the whole throttle, as before
    assert sweep_plan.lanes([10], 4) == [(4, None)]
    # side by side, shared in proportion to the members (each at least 1): 9 + 1 = 10
    assert sweep_plan.lanes([1001, 1], 10) == [(9, None), (1, None)]
    assert sweep_plan.lanes([1001, 1001, 998], 256) == [(86, None), (85, None), (85, None)]
    assert sweep_plan.lanes([1001, 1001, 498], 256) == [(103, None), (102, None), (51, None)], "docs/sweeps.md's"
    # fewer slots than arrays: two lanes of throttle 1, array 2 starts after array 0 has ended
    assert sweep_plan.lanes([2, 2, 1], 2) == [(1, None), (1, None), (1, 0)]
    assert sweep_plan.lanes([5] * 7, 3) == [(1, None), (1, None), (1, None), (1, 0), (1, 1), (1, 2), (1, 3)]
    assert sweep_plan.lanes([3, 3], 1) == [(1, None), (1, 0)]
    import random

    rng = random.Random(7)
    for _ in range(500):
        sizes = [rng.randint(1, 50) for _ in range(rng.randint(1, 12))]
        p = rng.randint(1, 40)
        lanes = sweep_plan.lanes(sizes, p)
        assert all(t >= 1 for t, _ in lanes) and all(a is None or a < k for k, (_, a) in enumerate(lanes))
        lane_heads = [t for t, a in lanes if a is None]
        assert sum(lane_heads) == p, (sizes, p, lanes)
        assert running_at_once(sizes, lanes) <= p, (sizes, p, lanes)


def test_a_split_sweeps_scripts_carry_each_arrays_share(tmp_path):
    built = build(tmp_path, *CPU_SLURM, "seed=range(0,5)", "sweep.parallelism=2")
    base = make_plan(members.ConfigView(built.plan_configs[0]))
    splan = sweep_plan.plan_sweep(base, [m.num for m in built.members], sweep_id=built.sweep_id,
                                  sweep_dir=built.sweep_dir, name=built.name, submission=0, nonce="abc123",
                                  parallelism=2, limits=ClusterLimits(2, 10000, "this test"))
    assert [(a.members, a.array.flag, a.after) for a in splan.arrays] == [
        ((0, 1), "0-1%1", None), ((2, 3), "0-1%1", None), ((4,), "0-0%1", 0)]
    assert "#SBATCH --array=0-1%1" in render.sbatch_script(splan.arrays[1].plan, render.RenderContext("T", ()),
                                                           splan.arrays[1].array)


def test_the_report_axis_is_a_category_unless_numbers_have_a_scale(tmp_path):
    from jobs.sweeps.report import axis

    def kind(values, declared="auto"):  # type: ignore[no-untyped-def]
        a = axis(values, declared)
        return a.kind, a.labels

    # a seed, listed: labels, not 1.0 .. 2.0 with fractions between
    assert kind([1, 2, 3, 1, 2, 3]) == ("category", ["1", "2", "3"])
    assert axis([2, 1, 2], "auto").positions == [1.0, 0.0, 1.0]
    assert kind([64, 8, 16]) == ("category", ["8", "16", "64"]), "numeric order, evenly spaced"
    assert kind(["ddp", "deepspeed", "ddp"]) == ("category", ["ddp", "deepspeed"])
    assert kind(["zeta", "alpha"]) == ("category", ["zeta", "alpha"]), "the command line's order"
    assert kind([True, False]) == ("category", ["True", "False"])
    assert kind([[1, 2], [3], [1, 2]]) == ("category", ["[1, 2]", "[3]"]), "a swept list is one label"
    # numbers with a fraction: a numeric axis, log when positive and a decade or more apart
    assert kind([1e-4, 3e-4, 1e-3]) == ("log", None)
    assert kind([0.1, 0.2, 0.3]) == ("linear", None)
    assert kind([0, 0.1, 1.0]) == ("linear", None), "a zero has no place on a log axis"
    # a declared range is a numeric axis, integers too; tag(log, ...) asks for log
    assert kind([1, 2, 3], "linear") == ("linear", None)
    assert axis([1, 5, 3], "linear").positions == [1.0, 5.0, 3.0]
    assert kind([1, 10, 100], "log") == ("log", None)
    assert kind([0, 10], "log") == ("linear", None)
    assert kind(["a", "b"], "linear") == ("category", ["a", "b"])


def test_the_sweep_records_how_each_key_was_declared(tmp_path):
    built = build(tmp_path, "seed=range(1,4)", "optimizer.lr=1e-4,1e-3", "trainer.max_steps=tag(log,choice(10,100))",
                  "dataset.max_val_samples=choice(8,16)")
    assert built.scales == {"seed": "linear", "optimizer.lr": "auto", "trainer.max_steps": "log",
                            "dataset.max_val_samples": "auto"}
    record = submit._start(built)
    assert record.scales == built.scales


def write_member_results(record, values):  # type: ignore[no-untyped-def]
    """metrics.json and a CSV train_loss curve for each member, as a finished run leaves them."""
    for m, v in zip(record.members, values):
        curve = Path(m.run_dir) / "csv" / "version_0"
        curve.mkdir(parents=True)
        (curve / "metrics.csv").write_text("step,train_loss\n" + "".join(f"{s},{v + 1 / (s + 1)}\n" for s in range(5)))
        (Path(m.run_dir) / "metrics.json").write_text(json.dumps({"val_loss": v, "global_step": 5}))


def test_report_draws_seeds_as_categories_and_marks_the_best_member(tmp_path):
    from jobs.sweeps import report as report_
    from jobs.sweeps import verbs

    built = build(tmp_path / "runs", "optimizer.lr=1e-4,1e-3", "seed=1,2,3", "sweep.id=rep")
    record = submit._start(built)
    for m in record.members:
        m.state = "COMPLETED"  # a finished sweep: the report asks Slurm nothing
    sweep_record.save(record)
    write_member_results(record, [0.9, 0.8, 0.7, 0.6, 0.25, 0.5])
    out, err = io.StringIO(), io.StringIO()
    assert verbs.report([built.sweep_dir, "--top", "3"], out, err) == 0, err.getvalue()
    png = Path(built.sweep_dir) / report_.REPORT_PNG
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    data = json.loads((Path(built.sweep_dir) / report_.REPORT_JSON).read_text())
    assert data["axes"]["seed"]["kind"] == "category" and data["axes"]["seed"]["labels"] == ["1", "2", "3"]
    assert data["axes"]["optimizer.lr"]["kind"] == "log"
    assert data["best_member"] == 4 and [b["member"] for b in data["best"]] == [4, 5, 3]
    lines = out.getvalue().splitlines()
    best_row = next(line for line in lines if line.startswith("*"))
    assert best_row.split()[1:4] == ["1", "4", "0.25"] and "seed=2" in best_row
    assert not any(line.startswith("*") for line in lines if line is not best_row)
    status_out = io.StringIO()
    assert verbs.status([built.sweep_dir], status_out, err) == 0
    assert [line.split()[0] for line in status_out.getvalue().splitlines() if "*best" in line] == ["4"]


def test_status_without_a_target_lists_the_sweeps_beside_the_runs(tmp_path, capsys):
    from jobs import cli

    runs = tmp_path / "runs"
    built = build(runs, "optimizer.lr=1e-4,1e-3", "sweep.id=listed")
    record = submit._start(built)
    write_member_results(record, [0.5, 0.7])
    # as the last `zerorun status` left it: both final, with what their run folders said
    record.members[0].state, record.members[1].state = "COMPLETED", "FAILED"
    for m in record.members:
        refresh.read_member(m)
    sweep_record.save(record)
    assert cli._status(["--runs-dir", str(runs)]) == 0
    shown = capsys.readouterr().out
    row = next(line for line in shown.splitlines() if line.startswith("listed"))
    assert "1 COMPLETED, 1 FAILED" in row and built.sweep_dir in row and "member 0: val_loss=0.5" in row
    assert "zerorun: no runs" not in shown
    assert cli._status(["--runs-dir", str(tmp_path / "none")]) == 0
    assert "no runs or sweeps under" in capsys.readouterr().out


def test_cluster_limits_are_read_from_scontrol_show_config():
    text = "Configuration data as of ...\nMaxArraySize            = 1001\nMaxJobCount             = 10000\n"
    assert parse_scontrol_config(text) == ClusterLimits(1001, 10000)
    assert parse_scontrol_config("") == ClusterLimits(), "Slurm's defaults when unsaid"


def test_array_task_states_parse_for_every_final_state():
    sacct = ("301_0|COMPLETED|0:0|00:00:14|n[1-2]\n301_1|FAILED|1:0|00:00:12|n[1-2]\n"
             "301_2|TIMEOUT|0:0|00:05:00|n[1-2]\n301_3|PREEMPTED|0:15|00:00:09|n[1-2]\n"
             "301_4|CANCELLED by 0|0:15|00:00:03|n[1-2]\n301_[5-6%2]|PENDING|0:0|00:00:00|None assigned\n"
             "302_[0-1]|CANCELLED by 0|0:0|00:00:00|None assigned\n")
    states = parse_sacct_tasks(sacct)
    assert {k: v.state for k, v in states.items()} == {
        "301_0": "COMPLETED", "301_1": "FAILED", "301_2": "TIMEOUT", "301_3": "PREEMPTED", "301_4": "CANCELLED",
        "301_5": "PENDING", "301_6": "PENDING", "302_0": "CANCELLED", "302_1": "CANCELLED"}
    assert [k for k, s in states.items() if not s.finished] == ["301_5", "301_6"]
    live = parse_squeue("301_5|PENDING|JobArrayTaskLimit|0:00|\n301_6|RUNNING|None|0:07|n[1-2]\n")
    assert live["301_5"].state == "PENDING" and live["301_5"].reason == "JobArrayTaskLimit"
    assert live["301_6"].state == "RUNNING" and not live["301_6"].finished
    assert {"FAILED", "TIMEOUT", "PREEMPTED", "CANCELLED"} <= sweep_record.RESUBMITTABLE
    assert "COMPLETED" not in sweep_record.RESUBMITTABLE


# ---- bad input, refused before anything is written -------------------------------------------------------------

@pytest.mark.parametrize("overrides, expected", [
    (("optimizer.lrr=1e-4,3e-4",), "no key 'optimizer.lrr'"),
    (("optimizer.lrr=1e-4,3e-4",), "did you mean optimizer.lr?"),
    (("trainer.max_steps=10,ten",), "trainer.max_steps=ten"),
    (("cluster.nodes=1,2",), "cluster.* cannot vary inside a sweep"),
    (("run_dir=/a,/b",), "run_dir names the sweep's folders"),
    (("seed=range(0,0)",), "has no members"),
    (("seed=interval(0,1)",), "a grid sweep takes a list of values"),
    (("seed=3",), "nothing to sweep"),
    (("trainer=ddp,nosuch",), "nosuch"),
])
def test_bad_sweeps_are_refused_with_the_fix_and_nothing_is_written(tmp_path, overrides, expected):
    runs = tmp_path / "runs"
    with pytest.raises(expansion.SweepError) as e:
        build(runs, *overrides)
    assert expected in str(e.value)
    assert not runs.exists(), "nothing is written for a sweep that cannot run"


def test_a_member_that_cannot_run_is_refused_with_its_number(tmp_path):
    with pytest.raises(expansion.SweepError) as e:
        build(tmp_path / "runs", "trainer.max_steps=10,0")
    assert "members 1: trainer.max_steps=0" in str(e.value)


def test_a_member_whose_data_file_is_missing_is_refused_with_its_number(tmp_path):
    there = tmp_path / "train.jsonl"
    there.write_text('{"text": "a"}\n')
    runs = tmp_path / "runs"
    with pytest.raises(expansion.SweepError) as e:
        build(runs, f"dataset.data_files.validation={there}",
              f"dataset.data_files.train={there},{tmp_path / 'gone.jsonl'}")
    assert len(e.value.problems) == 1 and e.value.problems[0].startswith("members 1: dataset.data_files.train="), \
        e.value.problems
    assert "no such file" in e.value.problems[0] and not runs.exists()


def test_zero_parallelism_and_too_many_members_are_refused_before_anything_is_written(tmp_path):
    runs = tmp_path / "runs"
    built = build(runs, *CPU_SLURM, "seed=1,2", "sweep.parallelism=0")
    out, err = io.StringIO(), io.StringIO()
    assert dryrun.dry_run(built, out, err, facts=NO_CLUSTER, limits=LIMITS) == 2
    assert "sweep.parallelism=1 or more" in err.getvalue()
    built = build(runs, *CPU_SLURM, "seed=range(0,12)")
    err = io.StringIO()
    assert dryrun.dry_run(built, out, err, facts=NO_CLUSTER, limits=ClusterLimits(5, 10, "test")) == 2
    assert "12 members (3 arrays of at most MaxArraySize=5)" in err.getvalue()
    local = build(runs, "seed=1,2", "sweep.parallelism=0")
    rc, _ = submit.run(local, out, err)
    assert rc == 2 and not runs.exists()


def test_a_swept_value_that_is_a_secret_is_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_zr_sweep_secret_0123456789")
    built = build(tmp_path / "runs", *CPU_SLURM, "dataset.source_prefix=hf_zr_sweep_secret_0123456789,plain")
    out, err = io.StringIO(), io.StringIO()
    assert dryrun.dry_run(built, out, err, facts=NO_CLUSTER, limits=LIMITS) == 2
    assert "$HF_TOKEN would be written" in err.getvalue() and "cluster.env_passthrough" in err.getvalue()
    local = build(tmp_path / "runs", "dataset.source_prefix=hf_zr_sweep_secret_0123456789,plain")
    assert submit.run(local, out, err)[0] == 2 and not (tmp_path / "runs").exists()


# ---- dry run -----------------------------------------------------------------------------------------------

def test_dry_run_writes_the_array_script_and_member_table_and_submits_nothing(tmp_path):
    built = build(tmp_path / "runs", *CPU_SLURM, "cluster.nodes=2", "trainer=ddp", "sweep.parallelism=2",
                  "optimizer.lr=1e-3,3e-3", "seed=1,2,3", "dry_run=true")
    out, err = io.StringIO(), io.StringIO()
    assert dryrun.dry_run(built, out, err, facts=NO_CLUSTER, limits=LIMITS) == 0, err.getvalue()
    text, files = out.getvalue(), Path(built.sweep_dir) / dryrun.DRY_RUN_DIR
    script = (files / "arrays/s00-a000.sbatch").read_text()
    assert script in text
    assert "#SBATCH --array=0-5%2" in script and "#SBATCH --nodes=2" in script
    assert "logs/%A_%a_%t.out" in script and '"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"_batch.out' in script
    assert f"-m jobs.rank --array {files}/arrays/s00-a000.index.json" in script
    table = (files / plan.MEMBERS_TABLE).read_text()
    assert table in text
    rows = [line.split() for line in table.splitlines()[1:]]
    assert [r[0] for r in rows] == ["0", "1", "2", "3", "4", "5"]
    assert rows[4] == ["4", "s0a0/4", "optimizer.lr=0.003", "seed=2"]
    index = json.loads((files / "arrays/s00-a000.index.json").read_text())
    assert index["run_dirs"] == [f"{built.sweep_dir}/{i}" for i in range(6)]
    assert "sbatch --test-only: not asked" in text
    sweep_dir = Path(built.sweep_dir)
    assert not (sweep_dir / sweep_record.RECORD_NAME).exists() and not (sweep_dir / "0").exists(), \
        "a dry run writes no record and no member folders"


def modes(root: Path) -> dict[str, str]:
    """path relative to root -> its permission bits, for root and everything below it."""
    return {str(p.relative_to(root)): oct(p.stat().st_mode & 0o777) for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("backend", [CPU_SLURM, ("cluster=local",)])
def test_a_dry_runs_folders_are_owner_only_as_a_run_folder(tmp_path, backend):
    built = build(tmp_path / "runs", *backend, "seed=1,2", "dry_run=true")
    out, err = io.StringIO(), io.StringIO()
    assert dryrun.dry_run(built, out, err, facts=NO_CLUSTER, limits=LIMITS) == 0, err.getvalue()
    sweep_dir = Path(built.sweep_dir)
    found = modes(sweep_dir)
    folders = {k: v for k, v in found.items() if (sweep_dir / k).is_dir()}
    assert set(folders.values()) == {"0o700"}, folders
    files = {k: v for k, v in found.items() if (sweep_dir / k).is_file()}
    assert files and set(files.values()) == {"0o600"}, files
    assert not [k for k in found if ".tmp" in k], "written atomically: no temporary file left behind"


def test_hostile_folder_names_reach_the_array_task_exactly(tmp_path):
    import shlex

    # no '%': Slurm 22.05 cannot carry it into srun's --output, so preflight refuses it (test below)
    runs = tmp_path / "it's \"q\" $(touch /tmp/pwned-zr-sweep) `id` ünï 100j"
    quoted = "'" + str(runs).replace("\\", "\\\\").replace("'", "\\'") + "'"  # as typed for Hydra
    built = build(quoted, *CPU_SLURM, "seed=1,2", "dry_run=true")
    assert built.sweep_dir.startswith(str(runs))
    out, err = io.StringIO(), io.StringIO()
    assert dryrun.dry_run(built, out, err, facts=NO_CLUSTER, limits=LIMITS) == 0, err.getvalue()
    files = Path(built.sweep_dir) / dryrun.DRY_RUN_DIR
    script = (files / "arrays/s00-a000.sbatch").read_text()
    srun = shlex.split(next(line for line in script.splitlines() if line.startswith("srun ")))
    assert srun[-2:] == ["--array", f"{files}/arrays/s00-a000.index.json"]
    assert srun[4] == f"--output={built.sweep_dir.replace('%', '%%')}/logs/%A_%a_%t.out"
    proc = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    index = json.loads((files / "arrays/s00-a000.index.json").read_text())
    assert index["run_dirs"] == [f"{built.sweep_dir}/0", f"{built.sweep_dir}/1"]
    assert not Path("/tmp/pwned-zr-sweep").exists()


def test_a_percent_in_the_sweep_folder_is_refused_before_anything_is_written(tmp_path):
    built = build(f"'{tmp_path}/runs%j'", *CPU_SLURM, "seed=1,2", "dry_run=true")
    err = io.StringIO()
    assert dryrun.dry_run(built, io.StringIO(), err, facts=NO_CLUSTER, limits=LIMITS) == 2
    assert "holds a '%'" in err.getvalue() and "without %" in err.getvalue()
    assert not (Path(built.sweep_dir) / dryrun.DRY_RUN_DIR).exists()


def test_a_1000_member_dry_run_through_the_cli_asks_no_cluster_and_abbreviates(tmp_path):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + ":/bin"}  # no Slurm commands: nothing asked
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "-m", *CPU_SLURM, f"cluster.runs_dir={tmp_path}",
                           "seed=range(0,100)", "optimizer.lr=1e-4,2e-4,3e-4,4e-4,5e-4,6e-4,7e-4,8e-4,9e-4,1e-3",
                           "dry_run=true"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "zerorun dry run: nothing is submitted. 1000 members" in proc.stdout
    assert "(980 more members; all in" in proc.stdout


# ---- record and index ----------------------------------------------------------------------------------------

def test_record_round_trip_and_submission_bookkeeping(tmp_path):
    built = build(tmp_path / "runs", "optimizer.lr=1e-3,3e-3", "seed=1,2")
    record = submit._start(built)
    sweep_record.save(record)
    assert (Path(built.sweep_dir) / "2" / "config.yaml").read_text() == built.members[2].yaml
    sweep_record.add_submission(record, [("s0a0-x", "job.s0a0-x", "arrays/s00-a000.sbatch",
                                          "arrays/s00-a000.index.json", [0, 1, 2, 3], None)])
    sweep_record.save(record)
    again = sweep_record.load(built.sweep_dir)
    assert again == record
    assert again.pending()[0].tag == "s0a0-x" and again.members[3].tasks == [[0, 3]]
    assert again.job_of(again.members[3]) is None, "no job until sbatch answered"
    again.submissions[0].array_job_id, again.submissions[0].state = "77", sweep_record.SUBMITTED
    sweep_record.save(again)
    third = sweep_record.load(built.sweep_dir)
    assert third.job_of(third.members[3]) == "77_3" and not third.pending()
    assert third.members[1].overrides == ["optimizer.lr=0.001", "seed=2"]
    assert third.members[1].params == {"optimizer.lr": 0.001, "seed": 2}
    assert not list(Path(built.sweep_dir).glob(".sweep.json.*")), "the record is replaced atomically"


def test_the_rank_finds_its_member_from_the_array_task_id(tmp_path):
    index = tmp_path / "i.json"
    index.write_text(json.dumps({"tag": "t", "members": [4, 5], "run_dirs": ["/s/4", "/s/5"]}))
    assert sweep_plan.member_run_dir(str(index), {"SLURM_ARRAY_TASK_ID": "1"}) == "/s/5"
    with pytest.raises(sweep_plan.SweepIndexError, match="lists 2 members"):
        sweep_plan.member_run_dir(str(index), {"SLURM_ARRAY_TASK_ID": "2"})
    with pytest.raises(sweep_plan.SweepIndexError, match="only as a task of a zerorun sweep"):
        sweep_plan.member_run_dir(str(index), {})
    from jobs.rank import main

    assert main(["--array", str(index)]) == 3, "a rank outside an array says why and exits"


def test_zeroruns_launcher_and_sweeper_are_hydras_and_import_nothing_heavy():
    code = ("import sys; from hydra.core.plugins import Plugins; from hydra.plugins.launcher import Launcher; "
            "from hydra.plugins.sweeper import Sweeper; "
            "import cluster.adapters, cluster.sweep_plan, jobs.sweeps.launcher, jobs.sweeps.verbs; "
            "print([c.__name__ for c in Plugins.instance().discover(Launcher)]); "
            "print([c.__name__ for c in Plugins.instance().discover(Sweeper)]); "
            "print(sorted(m for m in ('torch', 'pytorch_lightning', 'lightning', 'deepspeed', 'transformers', "
            "'datasets', 'matplotlib') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    launchers, sweepers, heavy = proc.stdout.splitlines()
    assert "ZerorunLauncher" in launchers and "ZerorunSweeper" in sweepers
    assert heavy == "[]"


# ---- cluster=local ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_local_sweep_runs_every_member_here_and_records_it(tmp_path):
    runs = tmp_path / "runs"
    tiny = shrink("trainer.max_steps=6", "trainer.val_check_interval=6", "dataset.max_val_samples=8",
                  "dataset.synthetic_train_size=300", "task.log_samples=0")
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "-m", f"cluster.runs_dir={runs}", *tiny,
                           "sweep.parallelism=2", "backbone.model_type=t5,t6"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, f"one member fails, so the sweep does:\n{proc.stdout}\n{proc.stderr}"
    sweep_dir = next(runs.glob("*/sweep-*"))
    record = sweep_record.load(sweep_dir)
    assert [(m.overrides, m.state) for m in record.members] == [
        (["backbone.model_type=t5"], "COMPLETED"), (["backbone.model_type=t6"], "FAILED")]
    assert record.members[0].metrics and record.members[0].metrics["global_step"] == 6
    assert "is not a transformers model type" in (sweep_dir / "1" / local.LOCAL_LOG).read_text()
    out = io.StringIO()
    from jobs.sweeps.verbs import status

    assert status([str(sweep_dir)], out=out) == 0
    assert "1 member(s) can be resubmitted" in out.getvalue()
