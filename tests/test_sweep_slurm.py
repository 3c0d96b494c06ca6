"""Sweeps on the real local Slurm cluster (two nodes on this machine): a 2 x 3 grid of 2-node DDP members queued
as one job array by `zerorun -m`, which returns before they run; one member that fails only at run time, one
preempted by a job in the `high` partition (requeued alone, resumed from its checkpoint), one cancelled and then
resubmitted with the failed one; the record, status and report; crashes of the submitter simulated at both
dangerous moments; and the dry run against the cluster.

The grid: trainer.max_steps=40,80 x scheduler.warmup_steps=2,4,6, one member at a time (sweep.parallelism=1:
two 2-node members of one CPU per rank share the two nodes, and a job taking the nodes would preempt both).
Member 2 (40 steps, warm-up 6) fails in its ranks, at run time, and only it: every bad value that a check can
see is refused before submission now, so the failure is injected for real through a test-only sitecustomize on
the members' PYTHONPATH that raises in the rank for that one combination.

Note: the preemption tests of trainer_core also put `high` jobs on every node; if one runs at the same time, a
member here may be requeued by it as well.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tempfile
import sys
import time
from pathlib import Path

import pytest

from cluster import slurm
from conftest import REPO, wait_until
from jobs.sweeps import record as sweep_record
from jobs.sweeps import submit

pytestmark = pytest.mark.slurm

NODES2 = ("cluster=slurm", "cluster.gpus_per_node=0", "cluster.tasks_per_node=1", "cluster.cpus_per_task=1",
          "cluster.partition=debug", "cluster.mem=1G", "cluster.time_min=5", "cluster.signal_delay_s=60",
          "cluster.nodes=2", "trainer=ddp")
TINY = ("trainer.val_check_interval=20", "trainer.log_every_n_steps=5", "trainer.logger=csv",
        "trainer.enable_progress_bar=false", "dataset.max_val_samples=8", "dataset.synthetic_train_size=300",
        "task.log_samples=0")
GRID = ("trainer.max_steps=40,80", "scheduler.warmup_steps=2,4,6")
INJECTED = "zr-test: injected failure of member 2 (max_steps 40, warm-up 6)"
FAILING, PREEMPTED, CANCELLED = 2, 3, 5
FINAL = sweep_record.RESUBMITTABLE | {"COMPLETED"}


def failing_member_injector(where: Path) -> Path:
    """A sitecustomize for the ranks: the member with trainer.max_steps=40 and scheduler.warmup_steps=6 raises
    at start-up (before training) with INJECTED; every other member runs untouched."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "sitecustomize.py").write_text(f"""
import sys
class _Hook:
    def find_spec(self, name, path=None, target=None):
        if name != "trainer_core.train":
            return None
        sys.meta_path.remove(self)
        from trainer_core import checkpoint_store
        original = checkpoint_store.model_config
        def model_config(cfg):
            if int(cfg.trainer.max_steps) == 40 and int(cfg.scheduler.warmup_steps) == 6:
                raise RuntimeError({INJECTED!r})
            return original(cfg)
        checkpoint_store.model_config = model_config
        return None
sys.meta_path.insert(0, _Hook())
""")
    return where


INJECTOR = failing_member_injector(Path(tempfile.mkdtemp(prefix="zr-sweep-inject-")))


def zerorun(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    # the members inherit PYTHONPATH (sbatch --export names it): the injector reaches their ranks
    pythonpath = os.pathsep.join(p for p in (str(INJECTOR), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": pythonpath, **(env or {})})


def sweep_dir_of(runs: Path) -> Path:
    dirs = [p for p in runs.glob("*/sweep-*") if (p / sweep_record.RECORD_NAME).exists()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def refreshed(sweep_dir: Path) -> sweep_record.SweepRecord:
    """The record with fresh states, saved as `zerorun status` saves it (so the tests reading sweep.json see them,
    whichever of them runs alone)."""
    from jobs.sweeps.verbs import refreshed as status_refresh

    record = status_refresh(str(sweep_dir), sys.stderr)
    assert record is not None
    return record


def stepped(run_dir: Path) -> bool:
    """Has the member taken its first optimizer step? Stopped before it, a member has no checkpoint to resume."""
    events = run_dir / "attempts.jsonl"
    return events.exists() and '"event": "first_step"' in events.read_text()


def wait_all_final(sweep_dir: Path, members: list[int] | None = None, timeout: float = 300) -> sweep_record.SweepRecord:
    """Every (given) member in a final state twice in a row, 2 s apart (a requeued task is never seen between)."""
    seen_final = [0]

    def check():  # type: ignore[no-untyped-def]
        record = refreshed(sweep_dir)
        chosen = [m for m in record.members if members is None or m.num in members]
        if all(m.state in FINAL for m in chosen):
            seen_final[0] += 1
            return record if seen_final[0] >= 2 else None
        seen_final[0] = 0
        return None

    return wait_until("every member to finish", check, timeout, poll=2.0)


def my_jobs_named(name: str) -> list[str]:
    ids, _ = slurm.find_named(name, since=time.time() - 3600)
    return ids


def tasks_of(array_job: str) -> list[str]:
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", array_job, "-o", "JobID"], capture_output=True,
                         text=True, timeout=30).stdout.split()
    live = subprocess.run(["squeue", "-h", "-r", "-j", array_job, "-o", "%i"], capture_output=True, text=True,
                          timeout=30).stdout.split()
    return sorted(t for t in set(out) | set(live) if re.fullmatch(r"\d+_\d+", t))


@pytest.fixture(scope="module")
def grid(slurm_cluster, tmp_path_factory):
    """The 2 x 3 sweep, run to the end: member 3 preempted while it trains, member 5 cancelled while it trains."""
    runs = tmp_path_factory.mktemp("sweep") / "runs"
    t0 = time.monotonic()
    proc = zerorun("-m", *NODES2, *TINY, f"cluster.runs_dir={runs}", "sweep.parallelism=1", *GRID)
    returned_after = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    sweep_dir = sweep_dir_of(runs)
    at_return = refreshed(sweep_dir)
    mine: list[str] = [s.array_job_id for s in at_return.submissions if s.array_job_id]
    try:
        # preempt member 3 while it trains: a job in the high partition that takes both nodes whole
        run3 = sweep_dir / str(PREEMPTED)
        wait_until("member 3 to take a step", lambda: stepped(run3), timeout=240)
        high = subprocess.run(["sbatch", "--parsable", "-p", "high", "-N", "2", "--exclusive", "--mem=100M",
                               "-t", "2", "-J", "zr-sweep-test-preemptor", "-o", "/dev/null", "--wrap", "sleep 4"],
                              capture_output=True, text=True, timeout=30)
        assert high.returncode == 0, high.stderr
        mine.append(high.stdout.strip().split(";")[0])
        # cancel member 5 while it trains: CANCELLED, with the checkpoint of its stop
        run5 = sweep_dir / str(CANCELLED)
        wait_until("member 5 to take a step", lambda: stepped(run5), timeout=240)
        job5 = at_return.job_of(at_return.members[CANCELLED])
        subprocess.run(["scancel", job5], check=True, timeout=30)
        final = wait_all_final(sweep_dir)
        yield {"sweep_dir": sweep_dir, "proc": proc, "returned_after": returned_after, "at_return": at_return,
               "final": final, "mine": mine}
    finally:
        for job in mine:
            subprocess.run(["scancel", job], capture_output=True, timeout=30)


def test_the_sweep_is_one_array_queued_before_any_member_ran(grid):
    at_return = grid["at_return"]
    assert grid["returned_after"] < 10, f"zerorun -m took {grid['returned_after']:.1f} s to return"
    assert len(at_return.submissions) == 1, "one sbatch call"
    sub = at_return.submissions[0]
    assert sub.state == sweep_record.SUBMITTED and sub.members == [0, 1, 2, 3, 4, 5]
    assert not any(m.state == "COMPLETED" for m in at_return.members), "returned before the members finished"
    script = (grid["sweep_dir"] / sub.script).read_text()
    assert "#SBATCH --array=0-5%1" in script and "#SBATCH --nodes=2" in script
    assert "queued in" in grid["proc"].stdout and sub.array_job_id in grid["proc"].stdout


def test_the_record_holds_every_member_with_its_overrides_state_and_metrics(grid):
    record = sweep_record.load(grid["sweep_dir"])  # what the fixture's refresh saved is on disk too
    assert record.params == ["trainer.max_steps", "scheduler.warmup_steps"]
    assert [m.overrides for m in record.members] == [
        [f"trainer.max_steps={s}", f"scheduler.warmup_steps={w}"] for s in (40, 80) for w in (2, 4, 6)]
    final = grid["final"]
    states = {m.num: m.state for m in final.members}
    assert states == {0: "COMPLETED", 1: "COMPLETED", 2: "FAILED", 3: "COMPLETED", 4: "COMPLETED", 5: "CANCELLED"}
    for m in final.members:
        if m.state == "COMPLETED":
            assert m.metrics and m.metrics["global_step"] == m.params["trainer.max_steps"]
            assert "val_loss" in m.metrics and m.checkpoint and m.step == m.params["trainer.max_steps"]
    assert final.members[FAILING].metrics is None


def test_status_says_failed_for_the_failing_member_only(grid):
    proc = zerorun("status", str(grid["sweep_dir"]))
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()
            if line.split() and line.split()[0].isdigit() and "trainer.max_steps=" in line}
    assert sorted(rows) == ["0", "1", "2", "3", "4", "5"]
    assert [n for n, row in rows.items() if " FAILED " in row] == ["2"]
    assert INJECTED in rows["2"]
    assert " CANCELLED " in rows["5"] and " COMPLETED " in rows["3"]
    assert "best so far (min val_loss): member" in proc.stdout


def test_the_preempted_task_alone_was_requeued_and_resumed_from_its_checkpoint(grid):
    final = grid["final"]
    preempted = final.members[PREEMPTED]
    assert preempted.state == "COMPLETED" and preempted.attempts == 2, preempted
    starts = [json.loads(line) for line in (grid["sweep_dir"] / "3" / "attempts.jsonl").read_text().splitlines()
              if '"start"' in line]
    assert starts[0]["resumed_from_step"] is None and starts[1]["resumed_from_step"] > 0
    assert starts[1]["restart_count"] >= 1, "the same array task, run again by Slurm"
    assert preempted.metrics["global_step"] == 80
    others = {m.num: m.attempts for m in final.members if m.num != PREEMPTED}
    assert others == {0: 1, 1: 1, 2: 1, 4: 1, 5: 1}, "no other member was requeued (unless a concurrent test did)"


def test_the_report_has_one_point_per_member_with_a_metric(grid):
    proc = zerorun("report", str(grid["sweep_dir"]))
    assert proc.returncode == 0, proc.stderr
    png = grid["sweep_dir"] / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((grid["sweep_dir"] / "report.json").read_text())
    completed = sorted(m.num for m in grid["final"].members if m.state == "COMPLETED")
    for key in ("trainer.max_steps", "scheduler.warmup_steps"):
        points = data["points"][key]
        assert sorted(p["member"] for p in points) == completed, key
        members = {m.num: m for m in grid["final"].members}
        assert all(p["value"] == members[p["member"]].params[key] for p in points)
        assert all(p["metric"] == members[p["member"]].metrics["val_loss"] for p in points)
    assert set(data["curves"]) >= {str(n) for n in completed}, "a loss curve per member that trained"
    assert len(data["curves"]["4"]) >= 80 // 5 - 1, "train_loss about every 5 steps"
    best = data["best"][0]
    assert best["metric"] == min(p["metric"] for p in data["points"]["trainer.max_steps"])
    assert re.search(rf"^\*\s+1\s+{best['member']}\s", proc.stdout, re.M), "the best member, marked *"
    assert data["best_member"] == best["member"]


def test_resubmit_failed_runs_just_the_failed_and_cancelled_members_and_they_resume(grid):
    sweep_dir = grid["sweep_dir"]
    before = sweep_record.load(sweep_dir)
    ckpt5 = before.members[CANCELLED].checkpoint
    assert ckpt5, "the cancelled member stopped with a checkpoint"
    proc = zerorun("resubmit", str(sweep_dir), "--failed")
    assert proc.returncode == 0, proc.stderr
    record = sweep_record.load(sweep_dir)
    assert len(record.submissions) == 2 and record.submissions[1].members == [FAILING, CANCELLED]
    array_job = record.submissions[1].array_job_id
    grid["mine"].append(array_job)
    assert "#SBATCH --array=0-1%1" in (sweep_dir / record.submissions[1].script).read_text()
    final = wait_all_final(sweep_dir, [FAILING, CANCELLED], timeout=240)
    assert tasks_of(array_job) == [f"{array_job}_0", f"{array_job}_1"], "only those two ran again"
    states = {m.num: m.state for m in final.members}
    assert states[FAILING] == "FAILED", "the bad value fails again: resubmission does not change a member"
    assert states[CANCELLED] == "COMPLETED"
    starts = [json.loads(line) for line in (sweep_dir / "5" / "attempts.jsonl").read_text().splitlines()
              if '"start"' in line]
    assert starts[-1]["resumed_from_step"] == int(Path(ckpt5).name.split("-")[1]) > 0
    for m in final.members:
        if m.num not in (FAILING, CANCELLED):
            assert len(m.tasks) == 1, f"member {m.num} was not resubmitted"


# ---- crashes of the submitter, simulated -------------------------------------------------------------------

def held_sweep(runs: Path, sweep_id: str, crash: str | None, *more: str) -> subprocess.CompletedProcess:
    """A 2-member sweep whose array is held (it never runs: these tests count jobs, not results)."""
    env = {submit.CRASH_ENV: crash} if crash else {}
    return zerorun("-m", *NODES2, *TINY, f"cluster.runs_dir={runs}", f"sweep.id={sweep_id}",
                   "+cluster.sbatch_extra.hold=true", "trainer.max_steps=5", "seed=1,2", *more, env=env)


@pytest.mark.parametrize("moment", ["after-record", "after-sbatch"])
def test_a_submitter_crash_simulated_then_the_same_command_leaves_one_job_per_member(slurm_cluster, tmp_path,
                                                                                   moment):
    runs = tmp_path / "runs"
    sweep_id = f"crash-{moment}-{os.getpid()}"
    crashed = held_sweep(runs, sweep_id, moment)
    assert crashed.returncode == submit.CRASH_EXIT, crashed.stderr
    sweep_dir = sweep_dir_of(runs)
    record = sweep_record.load(sweep_dir)
    sub = record.submissions[0]
    assert sub.state == sweep_record.SUBMITTING and sub.array_job_id is None, "the record never heard of sbatch"
    queued = my_jobs_named(sub.job_name)
    try:
        assert len(queued) == (1 if moment == "after-sbatch" else 0)
        again = held_sweep(runs, sweep_id, None)
        assert again.returncode == 0, again.stderr
        if moment == "after-sbatch":
            assert "already queued" in again.stderr and "adopted" in again.stderr
            assert "(found by name)" in again.stdout
        else:
            assert "(sbatch)" in again.stdout, "the interrupted submission is made now, once"
        record = sweep_record.load(sweep_dir)
        assert [s.state for s in record.submissions] == [sweep_record.SUBMITTED]
        queued = my_jobs_named(sub.job_name)
        assert queued == [record.submissions[0].array_job_id], "exactly one array for the sweep"
        assert tasks_of(queued[0]) == [f"{queued[0]}_0", f"{queued[0]}_1"], "exactly one job per member"
        third = held_sweep(runs, sweep_id, None)
        assert third.returncode == 0 and "nothing else submitted" in third.stdout
        asked = held_sweep(runs, sweep_id, None, "sweep.resubmit=failed")
        assert asked.returncode == 0 and "nothing resubmitted" in asked.stdout, "held members have not failed"
        assert my_jobs_named(sub.job_name) == queued
        cancelled = zerorun("cancel", str(sweep_dir))
        assert cancelled.returncode == 0 and f"cancel requested for array {queued[0]}" in cancelled.stdout
        record = wait_until("both members cancelled", lambda: (r := refreshed(sweep_dir)) and
                          all(m.state == "CANCELLED" for m in r.members) and r, timeout=30)
        assert [m.state for m in record.members] == ["CANCELLED", "CANCELLED"]
    finally:
        for job in my_jobs_named(sub.job_name):
            subprocess.run(["scancel", job], capture_output=True, timeout=30)


def live_tasks(array_job: str) -> list[str]:
    return subprocess.run(["squeue", "-h", "-r", "-j", array_job, "-t", "PENDING,RUNNING,SUSPENDED,REQUEUED",
                           "-o", "%i"], capture_output=True, text=True, timeout=30).stdout.split()


def crashed_after_sbatch(runs: Path, sweep_id: str) -> tuple[Path, sweep_record.Submission, str]:
    """A held sweep whose submitter died after sbatch: the record says "submitting", Slurm holds the array."""
    crashed = held_sweep(runs, sweep_id, "after-sbatch")
    assert crashed.returncode == submit.CRASH_EXIT, crashed.stderr
    sweep_dir = sweep_dir_of(runs)
    sub = sweep_record.load(sweep_dir).submissions[0]
    queued = my_jobs_named(sub.job_name)
    assert sub.state == sweep_record.SUBMITTING and len(queued) == 1
    return sweep_dir, sub, queued[0]


def test_cancel_finds_and_cancels_an_array_the_record_still_calls_submitting(slurm_cluster, tmp_path):
    runs = tmp_path / "runs"
    sweep_dir, sub, array_job = crashed_after_sbatch(runs, f"cancel-submitting-{os.getpid()}")
    try:
        proc = zerorun("cancel", str(sweep_dir))
        assert proc.returncode == 0, proc.stderr
        assert f"cancel requested for array {array_job}" in proc.stdout, proc.stdout
        assert "adopted" in proc.stderr
        record = sweep_record.load(sweep_dir)
        assert record.submissions[0].array_job_id == array_job and not record.pending()
        wait_until("the array to leave the queue", lambda: not live_tasks(array_job), timeout=30)
    finally:
        for job in my_jobs_named(sub.job_name):
            subprocess.run(["scancel", job], capture_output=True, timeout=30)


def test_status_never_undoes_a_job_id_a_concurrent_submitter_recorded(slurm_cluster, tmp_path, monkeypatch):
    """status reads the record (the array "submitting"), and while it asks Slurm, the same command run again
    adopts the array and records its id; what status then saves must keep that id."""
    from jobs.sweeps import verbs

    runs = tmp_path / "runs"
    sweep_id = f"status-race-{os.getpid()}"
    sweep_dir, sub, array_job = crashed_after_sbatch(runs, sweep_id)
    real_query = slurm.query_tasks
    others: list[subprocess.CompletedProcess] = []

    def query_while_another_submits(tasks):  # type: ignore[no-untyped-def]
        found = real_query(tasks)
        if not others:
            others.append(held_sweep(runs, sweep_id, None))
        return found

    monkeypatch.setattr(slurm, "query_tasks", query_while_another_submits)
    try:
        out, err = io.StringIO(), io.StringIO()
        assert verbs.status([str(sweep_dir)], out, err) == 0, err.getvalue()
        assert others and others[0].returncode == 0 and "adopted" in others[0].stderr, others
        record = sweep_record.load(sweep_dir)
        assert record.submissions[0].array_job_id == array_job, "status saved an older record over the submitter's"
        assert record.submissions[0].state == sweep_record.SUBMITTED
    finally:
        for job in my_jobs_named(sub.job_name):
            subprocess.run(["scancel", job], capture_output=True, timeout=30)


# ---- dry run and bad input against the cluster -----------------------------------------------------------

def test_dry_run_asks_sbatch_test_only_and_submits_nothing(slurm_cluster, tmp_path):
    runs = tmp_path / "runs"
    proc = zerorun("-m", *NODES2, *TINY, f"cluster.runs_dir={runs}", "trainer.max_steps=5", "seed=1,2,3",
                   "dry_run=true")
    assert proc.returncode == 0, proc.stderr
    assert "sbatch --test-only: sbatch: Job" in proc.stdout and "preflight: ok" in proc.stdout
    assert not list(runs.glob("*/sweep-*/sweep.json")), "no record, nothing submitted"


def test_a_sweep_larger_than_the_cluster_allows_is_refused_with_its_limit(slurm_cluster, tmp_path):
    proc = zerorun("-m", *NODES2, f"cluster.runs_dir={tmp_path}", "seed=range(0,10001)")
    assert proc.returncode == 2
    assert "10001 members (10 arrays of at most MaxArraySize=1001)" in proc.stderr
    assert "MaxJobCount=10000, from scontrol show config" in proc.stderr
    assert not any(tmp_path.iterdir()), "nothing written"


# ---- a sweep split into several arrays ---------------------------------------------------------------------

def built_sweep(runs: Path, *overrides: str):  # type: ignore[no-untyped-def]
    """A sweep as `zerorun -m OVERRIDES` builds it, in this process (members.BuiltSweep)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from configs.schema import register
    from jobs.sweeps import expansion, members

    register()
    with initialize_config_module("configs", version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        cfg = hydra.compose_config("config", overrides=[f"cluster.runs_dir={runs}", *overrides],
                                   run_mode=RunMode.MULTIRUN, with_log_configuration=False)
        lines = expansion.expand(cfg, hydra.config_loader, [str(x) for x in cfg.hydra.overrides.task])
        return members.build(cfg, hydra.config_loader, lines)


def task_times(array_jobs: list[str]) -> dict[str, tuple[float, float]]:
    """"ARRAYJOB_TASK" -> (start, end) in seconds, from sacct."""
    from datetime import datetime

    out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ",".join(array_jobs), "-o", "JobID,Start,End"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    times = {}
    for line in out.split():
        job, start, end = line.split("|")
        if re.fullmatch(r"\d+_\d+", job):
            times[job] = (datetime.fromisoformat(start).timestamp(), datetime.fromisoformat(end).timestamp())
    return times


def test_split_arrays_share_the_sweeps_parallelism_max_array_size_faked_to_1(slurm_cluster, tmp_path, monkeypatch):
    """MaxArraySize of this cluster (1001) is faked to 1 in the submitter, so 3 members are 3 real arrays; with
    sweep.parallelism=2 they run in two lanes (%1 each), the third array after the first has ended."""
    monkeypatch.setattr(slurm, "limits", lambda: slurm.ClusterLimits(1, 10000, "scontrol show config (this test "
                                                                       "fakes MaxArraySize=1)"))
    one_node = tuple(x for x in NODES2 if x not in ("cluster.nodes=2", "trainer=ddp"))
    built = built_sweep(tmp_path / "runs", *one_node, *TINY, "trainer.max_steps=3", "sweep.parallelism=2",
                        "seed=1,2,3")
    out, err = io.StringIO(), io.StringIO()
    rc, _ = submit.run(built, out, err)
    assert rc == 0, err.getvalue()
    sweep_dir = Path(built.sweep_dir)
    record = sweep_record.load(sweep_dir)
    arrays = [s.array_job_id for s in record.submissions]
    try:
        assert len(arrays) == 3 and all(arrays) and [s.after for s in record.submissions] == [None, None, 0]
        flags = [re.search(r"#SBATCH --array=(\S+)", (sweep_dir / s.script).read_text()).group(1)
                 for s in record.submissions]
        assert flags == ["0-0%1"] * 3
        assert f"after {arrays[0]})" in out.getvalue(), out.getvalue()
        waits = subprocess.run(["squeue", "-h", "-j", arrays[2], "-o", "%E"], capture_output=True, text=True,
                               timeout=30).stdout
        assert f"afterany:{arrays[0]}" in waits, f"the third array waits for the first: {waits!r}"
        final = wait_all_final(sweep_dir, timeout=240)
        assert [m.state for m in final.members] == ["COMPLETED"] * 3, [(m.state, m.detail) for m in final.members]
        times = task_times(arrays)
        (s0, e0), (s1, e1), (s2, e2) = (times[f"{a}_0"] for a in arrays)
        assert s2 >= e0, "the third array started before the first had ended"
        edges = sorted({s0, s1, s2})
        assert all(sum(s <= t < e for s, e in times.values()) <= 2 for t in edges), f"more than 2 at once: {times}"
    finally:
        for job in arrays:
            if job:
                subprocess.run(["scancel", job], capture_output=True, timeout=30)

