"""The hang watchdog's pure parts, the progress record, the host step's answer to a hang and the config checks
(no Slurm here: tests/test_hangs_slurm.py runs real hangs on the local cluster)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from configs.validate import config_problems
from jobs import host
from jobs.watchdog import Limits, RankView, dump, first_stalled, rank_views, stalled, waits_for_others
from trainer_core import attempts, layout
from trainer_core.contract import Rendezvous
from trainer_core.progress import RECORD_SIZE, Progress, read

LIMITS = Limits(training_s=10, startup_s=100, checkpoint_s=50)
DDP_WAITING = """Thread 1 (idle): "MainThread"
    _engine_run_backward (torch/autograd/graph.py:979)
    backward (torch/autograd/__init__.py:395)
    Strategy.backward (pytorch_lightning/strategies/strategy.py:213)
"""
BLOCKED = """Thread 2 (idle): "MainThread"
    test_only_block_here (trainer_core/progress.py:70)
    ReportProgress.on_before_backward (trainer_core/progress_report.py:40)
    Strategy.backward (pytorch_lightning/strategies/strategy.py:211)
"""
IN_BARRIER = """Thread 3 (idle): "MainThread"
    barrier (torch/distributed/distributed_c10d.py:4000)
    AtomicCheckpoint.save (trainer_core/checkpointing.py:130)
"""


def view(rank: int, since: float, phase: str = "training", step: int = 5) -> RankView:
    return RankView(rank, since, phase, step, 100 + rank, f"n{rank + 1}")


def test_each_phase_has_its_own_limit():
    now = 1000.0
    views = [view(0, now - 20, "startup"), view(1, now - 20, "first_step"), view(2, now - 20, "checkpoint"),
             view(3, now - 20, "validation"), view(4, now - 5, "training")]
    assert [v.rank for v in stalled(views, now, LIMITS)] == [3]
    assert [v.rank for v in stalled(views, now + 60, LIMITS)] == [2, 3, 4]
    assert stalled([view(0, now - 200, "done"), view(1, now - 20, "end")], now, LIMITS) == []


def test_the_rank_that_stopped_first_is_the_stopped_one_then_the_one_not_in_a_collective():
    views = [view(0, 10.0), view(1, 11.0)]
    assert first_stalled(views, {0: "S (sleeping)", 1: "T (stopped)"}, {0: DDP_WAITING}) == [1]
    assert first_stalled(views, {0: "S", 1: "S"}, {0: DDP_WAITING, 1: BLOCKED}) == [1]
    assert first_stalled(views, {0: "S", 1: "S"}, {0: BLOCKED, 1: IN_BARRIER}) == [0]
    # nothing tells them apart: the lowest step, oldest report first
    assert first_stalled([view(0, 10.0, step=7), view(1, 11.0, step=6)], {}, {}) == [1]
    assert first_stalled([view(0, 10.0), view(1, 11.0)], {}, {}) == [0]


def test_collective_frames_are_read_by_function_and_file_not_by_any_substring():
    assert waits_for_others(DDP_WAITING) and waits_for_others(IN_BARRIER)
    assert not waits_for_others(BLOCKED)  # "on_before_backward" and Lightning's "backward" are not collectives


def test_a_progress_record_is_rewritten_in_place_and_read_back(tmp_path):
    rv = Rendezvous("127.0.0.1", 1, 2, 1, 0, 1, 2, 1, "77", 3, "n2")
    p = Progress(tmp_path, rv)
    p.report(0, "startup")
    p.report(12, "training")
    p.report(12, "checkpoint")
    raw = (tmp_path / layout.progress_file(1)).read_bytes()
    assert len(raw) == RECORD_SIZE
    rec = read(tmp_path / layout.progress_file(1))
    assert (rec["step"], rec["phase"], rec["node"], rec["job_id"], rec["restart_count"]) == (12, "checkpoint", "n2",
                                                                                             "77", 3)
    views = rank_views(tmp_path, 2, "77", 3, started=5.0, rank_starts={0: {"pid": 9, "node": "n1"}})
    assert (views[0].phase, views[0].since, views[0].pid) == ("startup", 5.0, 9)
    assert (views[1].phase, views[1].step) == ("checkpoint", 12)
    # a record of an earlier attempt is not this attempt's progress
    assert rank_views(tmp_path, 2, "77", 4, started=5.0, rank_starts={})[1].phase == "startup"


def test_a_stopped_process_is_recorded_with_its_state_and_a_running_one_with_its_stack(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time\ndef waiting_here():\n    time.sleep(60)\n"
                              "waiting_here()"])
    try:
        time.sleep(0.5)
        dump(child.pid, tmp_path / "running.txt")
        os.kill(child.pid, 19)  # SIGSTOP
        time.sleep(0.2)
        dump(child.pid, tmp_path / "stopped.txt")
    finally:
        child.kill()
        child.wait()
    running = (tmp_path / "running.txt").read_text()
    assert "waiting_here" in running or "py-spy" in running, running
    stopped = (tmp_path / "stopped.txt").read_text()
    assert "state: T" in stopped and "stopped" in stopped, stopped


class FakeScheduler:
    """Stands in for the backend on the batch host: records the requeue instead of calling scontrol."""

    name, no_requeue, runs_in_foreground = "fake", None, False

    def __init__(self) -> None:
        self.requeued = 0

    def job_identity(self, environ):
        return environ["JOB"], int(environ.get("RESTART", 0))

    def requeue(self, environ, exclude=()):
        self.requeued += 1
        self.excluded = list(exclude)
        return True, "requeued"

    def rank_failures(self, environ, run_dir):
        return list(getattr(self, "failures", []))


def hung(run_dir: Path, job: str, restart: int, step: int) -> None:
    attempts.append(run_dir, "rank_start", rank=0, job_id=job, restart_count=restart, world_size=2)
    attempts.append(run_dir, "hung", job_id=job, restart_count=restart, step=step, phase="training", ranks=[1],
                    nodes=["n2"], stacks=layout.stacks_dir(job, restart), stalled_s=16.0)


def after(run_dir: Path, backend: FakeScheduler, job: str, restart: int) -> host.After:
    return host.after_ranks(str(run_dir), 137, backend=backend, world_size=2, job_signal="USR2", signal_delay_s=60,
                            max_timeouts=3, max_preemptions=None, requeue_enabled=True,
                            environ={"JOB": job, "RESTART": str(restart)})


def test_a_hang_is_requeued_once_and_a_second_hang_at_the_same_step_ends_the_run(tmp_path):
    backend = FakeScheduler()
    hung(tmp_path, "41", 0, 29)
    first = after(tmp_path, backend, "41", 0)
    assert (first.exit_code, backend.requeued) == (0, 1) and "rank 1 on n2" in first.message
    hung(tmp_path, "41", 1, 29)
    second = after(tmp_path, backend, "41", 1)
    assert (second.exit_code, backend.requeued) == (1, 1) and "hung at step 29 before" in second.message
    runs = attempts.attempts(attempts.read(tmp_path))
    assert [bool(a.hang) for a in runs] == [True, True] and runs[0].requeued and "before" in runs[1].failure


def test_a_hang_at_another_step_is_requeued_again(tmp_path):
    backend = FakeScheduler()
    hung(tmp_path, "41", 0, 29)
    after(tmp_path, backend, "41", 0)
    hung(tmp_path, "41", 1, 60)
    assert after(tmp_path, backend, "41", 1).exit_code == 0 and backend.requeued == 2


def test_watchdog_timeouts_must_stay_below_the_collective_timeout(compose):
    problems = config_problems(compose("trainer=ddp", "watchdog.timeout_s=600", "watchdog.startup_timeout_s=900",
                                       "trainer.collective_timeout_s=900"))
    assert [p for p in problems if p.startswith("trainer.collective_timeout_s(900) must be above") and "900" in p]
    assert not [p for p in config_problems(compose("trainer=ddp", "watchdog.timeout_s=null",
                                                   "trainer.collective_timeout_s=60")) if "watchdog" in p]
    bad = config_problems(compose("trainer=ddp", "watchdog.timeout_s=0"))
    assert [p for p in bad if p.startswith("watchdog.timeout_s=0:")]


def test_a_run_plan_starts_the_watchdog_only_when_it_is_on(compose):
    from cluster import render
    from cluster.plan import make_plan

    on = make_plan(compose("cluster=slurm", "cluster.gpus_per_node=0", "trainer=ddp", "cluster.cpu_rehearsal=true"))
    off = make_plan(compose("cluster=slurm", "cluster.gpus_per_node=0", "trainer=ddp", "watchdog.timeout_s=null"))
    assert on.watchdog and not off.watchdog
    assert render.watchdog_start(on)[0].endswith("&") and render.watchdog_start(off) == []
    assert any("kill" in line for line in render.host_step(on)) and not any("kill" in l for l in render.host_step(off))
    assert json.dumps(render.host_step(off)[-1]).count("ZERORUN_RANKS_STATUS") == 1


def test_a_hang_on_one_node_leaves_it_out_when_the_partition_spares_a_node(tmp_path):
    backend = FakeScheduler()
    hung(tmp_path, "41", 0, 29)
    result = host.after_ranks(str(tmp_path), 137, backend=backend, world_size=2, job_signal="USR2",
                              signal_delay_s=60, max_timeouts=3, max_preemptions=None, requeue_enabled=True,
                              environ={"JOB": "41"}, max_excluded_nodes=lambda: 1)
    assert result.exit_code == 0 and backend.excluded == ["n2"] and "without n2" in result.message
    assert attempts.excluded_nodes(attempts.read(tmp_path)) == ["n2"]
    backend2 = FakeScheduler()
    (tmp_path / "b").mkdir()
    hung(tmp_path / "b", "42", 0, 29)
    after(tmp_path / "b", backend2, "42", 0)  # max_excluded_nodes=0: requeued, nothing left out
    assert backend2.excluded == []


def test_a_rank_killed_by_a_node_signal_marks_its_node_and_is_requeued_only_while_one_can_be_spared(tmp_path):
    from cluster.requeue import node_signal
    from cluster.slurm import TaskFailure

    assert [node_signal(w) for w in ("Killed", "Segmentation fault (core dumped)", "Bus error", "Terminated",
                                     "exit code 1", "Aborted")] == ["SIGKILL", "SIGSEGV", "SIGBUS", None, None, None]
    backend = FakeScheduler()

    def died(restart: int, failure: TaskFailure, status: int) -> host.After:
        backend.failures = [failure]
        for rank in (0, 1):
            attempts.append(tmp_path, "rank_start", rank=rank, job_id="41", restart_count=restart, world_size=2)
        return host.after_ranks(str(tmp_path), status, backend=backend, world_size=2, job_signal="USR2",
                                signal_delay_s=60, max_timeouts=3, max_preemptions=None, requeue_enabled=True,
                                environ={"JOB": "41", "RESTART": str(restart)}, max_excluded_nodes=lambda: 1)

    first = died(0, TaskFailure(1, "n2", "Killed"), 137)
    assert first.requeued and backend.excluded == ["n2"] and "rank 1 on n2 died of SIGKILL" in first.message
    second = died(1, TaskFailure(0, "n3", "Segmentation fault"), 139)  # a second node would pass the limit of 1
    assert (second.exit_code, second.requeued, backend.requeued) == (139, False, 1), second
    assert "more than requeue.max_excluded_nodes=1" in second.message
    bad = [(e["node"], e["rank"], e["signal"]) for e in attempts.read(tmp_path) if e["event"] == "bad_node"]
    assert bad == [("n2", 1, "SIGKILL"), ("n3", 0, "SIGSEGV")]
    third = died(2, TaskFailure(1, "n4", "exit code 1"), 1)  # the program's own failure marks no node
    assert not third.requeued and "rank 1 on n4: exit code 1" in third.message
    failed = [e for e in attempts.read(tmp_path) if e["event"] == "failed"]
    assert [(f["rank"], f["node"], f["how"]) for f in failed] == [(0, "n3", "Segmentation fault (SIGSEGV)"),
                                                                   (1, "n4", "exit code 1")]
