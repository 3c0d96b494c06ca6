"""The requeue decision and the reading of a stop's cause: pure functions, every branch; plus what the attempts
record makes of a run's events."""

from __future__ import annotations

import time

import pytest

from cluster.requeue import (EXIT_RESUMABLE, TIMEOUT_TOLERANCE_S, JobClock, decide, job_to_requeue,
                             parse_job_clock, stop_cause)
from trainer_core import attempts

NOW = 1_000_000.0
DELAY = 120


def _decide(cause: str, **kw):
    args = dict(checkpointed=True, timeouts_so_far=0, max_timeouts=3, preemptions_so_far=0,
                max_preemptions=None)
    args.update(kw)
    return decide(cause, **args)


# ---- decide ----

def test_preemption_is_requeued_without_limit_by_default():
    d = _decide("preemption", preemptions_so_far=57)
    assert d.requeue and d.exit_code == 0 and d.reason == "preempted: requeue 58"


def test_preemption_stops_when_its_limit_is_set_and_used_up():
    d = _decide("preemption", preemptions_so_far=2, max_preemptions=2)
    assert not d.requeue and d.exit_code == EXIT_RESUMABLE
    assert "requeue.max_preemptions=2 is used up" in d.reason
    assert _decide("preemption", preemptions_so_far=1, max_preemptions=2).reason == "preempted: requeue 2 of 2"


def test_timeout_is_requeued_up_to_max_timeouts():
    assert [_decide("timeout", timeouts_so_far=n, max_timeouts=2).requeue for n in range(4)] == \
           [True, True, False, False]
    assert _decide("timeout", timeouts_so_far=1, max_timeouts=2).reason == "time limit: requeue 2 of 2"


def test_timeout_count_exhausted_says_why_and_how_to_go_on():
    d = _decide("timeout", timeouts_so_far=3, max_timeouts=3)
    assert not d.requeue and d.exit_code == EXIT_RESUMABLE
    assert d.reason.startswith("time limit reached 4 times; requeue.max_timeouts=3 is used up")
    assert "resume=RUN_DIR" in d.reason


def test_max_timeouts_zero_never_requeues_a_timeout():
    assert not _decide("timeout", max_timeouts=0).requeue


def test_not_checkpointable_is_not_requeued():
    for cause in ("preemption", "timeout"):
        d = _decide(cause, checkpointed=False)
        assert not d.requeue and "no checkpoint was written" in d.reason and d.exit_code == 1


def test_terminated_is_not_requeued_but_resumable():
    d = _decide("terminated")
    assert not d.requeue and d.exit_code == EXIT_RESUMABLE and "terminated" in d.reason


def test_a_job_that_cannot_be_requeued_stays_resumable_and_says_why():
    # a local run, or cluster.requeue=false: never requeued, and the exit status says "resumable", not "done"
    for cause in ("preemption", "timeout", "terminated"):
        d = _decide(cause, no_requeue="cluster.requeue=false")
        assert not d.requeue and d.exit_code == EXIT_RESUMABLE
        assert d.reason == "cluster.requeue=false; continue it with resume=RUN_DIR"


def test_unknown_cause_is_an_error_naming_the_valid_ones():
    with pytest.raises(ValueError, match="preemption, timeout, terminated"):
        _decide("meteor")


# ---- stop_cause ----

def test_job_signal_near_the_end_is_a_timeout():
    clock = JobClock(end_time=NOW + DELAY, preempt_time=None)
    assert stop_cause("USR2", "USR2", NOW, clock, DELAY) == "timeout"
    # Slurm may send it up to a minute early
    early = JobClock(end_time=NOW + DELAY + 60, preempt_time=None)
    assert stop_cause("USR2", "USR2", NOW, early, DELAY) == "timeout"


def test_job_signal_with_a_preempt_time_is_a_preemption_even_near_the_end():
    # Slurm moves the end time to preempt time + GraceTime, so the clock alone would read "timeout"
    clock = JobClock(end_time=NOW + 5, preempt_time=NOW)
    assert stop_cause("USR2", "USR2", NOW, clock, DELAY) == "preemption"


def test_sigterm_with_a_preempt_time_is_a_preemption():
    # sites without preempt_send_user_signal send SIGTERM at the start of the grace time
    assert stop_cause("TERM", "USR2", NOW, JobClock(NOW + 30, NOW), DELAY) == "preemption"


def test_job_signal_long_before_the_end_without_preempt_time_is_a_preemption():
    clock = JobClock(end_time=NOW + DELAY + TIMEOUT_TOLERANCE_S + 1, preempt_time=None)
    assert stop_cause("USR2", "USR2", NOW, clock, DELAY) == "preemption"


def test_sigterm_and_sigint_without_preemption_are_terminated():
    for name in ("TERM", "INT"):
        assert stop_cause(name, "USR2", NOW, JobClock(NOW + 3600, None), DELAY) == "terminated"
        assert stop_cause(name, "USR2", NOW, None, DELAY) == "terminated"


def test_no_clock_reads_the_job_signal_as_a_timeout():
    assert stop_cause("USR2", "USR2", NOW, None, DELAY) == "timeout"
    assert stop_cause("USR2", "USR2", NOW, JobClock(None, None), DELAY) == "timeout"


def test_another_configured_signal_is_the_job_signal():
    assert stop_cause("USR1", "USR1", NOW, JobClock(NOW + 10, None), 10) == "timeout"
    assert stop_cause("USR2", "USR1", NOW, JobClock(NOW + 10, None), 10) == "terminated"


def test_parse_job_clock_reads_scontrol_show_job():
    line = ("JobId=281 JobName=low.sh UserId=root(0) JobState=RUNNING Reason=None RunTime=00:00:02 "
            "TimeLimit=00:03:00 StartTime=2026-11-25T16:07:40 EndTime=2026-11-25T16:07:47 Deadline=N/A "
            "PreemptEligibleTime=2026-11-25T16:07:40 PreemptTime=2026-11-25T16:07:42 SuspendTime=None")
    clock = parse_job_clock(line)
    assert clock.end_time == time.mktime(time.strptime("2026-11-25T16:07:47", "%Y-%m-%dT%H:%M:%S"))
    assert clock.preempt_time is not None and clock.end_time - clock.preempt_time == 5
    assert parse_job_clock(line.replace("PreemptTime=2026-11-25T16:07:42", "PreemptTime=None")).preempt_time is None
    assert parse_job_clock("") == JobClock(None, None)


# ---- job_to_requeue ----

def test_job_to_requeue_is_the_job_id():
    assert job_to_requeue({"SLURM_JOB_ID": "4242"}) == "4242"


def test_job_to_requeue_is_the_exact_array_task():
    # an array task has its own SLURM_JOB_ID; the array's other tasks must not be touched
    env = {"SLURM_JOB_ID": "4250", "SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "7"}
    assert job_to_requeue(env) == "4242_7"


# ---- the attempts record ----

def _events(*pairs):
    return [{"event": e, "time": float(i), **facts} for i, (e, facts) in enumerate(pairs)]


def test_attempts_group_events_and_count_requeues_by_cause():
    events = _events(
        ("start", {"job_id": "9", "resumed_from_step": None}), ("first_step", {"step": 1}),
        ("signal", {"signal": "USR2", "cause": "preemption", "step": 25}), ("checkpoint", {"step": 25}),
        ("end", {"status": "stopped", "step": 25}),
        ("requeue", {"cause": "preemption", "requeued": True, "reason": "preempted: requeue 1", "exit_code": 0}),
        ("start", {"job_id": "9", "resumed_from_step": 25, "restart_count": 1}),
        ("signal", {"signal": "USR2", "cause": "timeout", "step": 40}), ("checkpoint", {"step": 40}),
        ("end", {"status": "stopped", "step": 40}),
        ("requeue", {"cause": "timeout", "requeued": False, "reason": "time limit reached 2 times; ...",
                     "exit_code": 75}),
    )
    runs = attempts.attempts(events)
    assert [(a.number, a.resumed_from_step, a.checkpoint_step, a.requeued) for a in runs] == \
           [(1, None, 25, True), (2, 25, 40, False)]
    assert runs[1].restart_count == 1 and runs[1].signals == ["USR2 (timeout)"]
    assert attempts.requeue_counts(events) == {"timeout": 0, "preemption": 1}
    assert attempts.resumable(events) == "stopped at step 40: time limit reached 2 times; ..."
    assert attempts.resumable(events[:6]) is None, "requeued: not waiting for a hand"
    assert attempts.resumable([]) is None


def test_attempts_read_skips_a_torn_line(tmp_path):
    attempts.append(tmp_path, "start", job_id="1")
    with open(tmp_path / attempts.FILE, "a") as f:
        f.write('{"event": "sig')
    assert [e["event"] for e in attempts.read(tmp_path)] == ["start"]


# ---- the job's signal ----

@pytest.mark.parametrize("name", ["USR1", "SIGUSR1", "TERM", "INT", "KILL", "HUP", "nonsense"])
def test_the_job_signal_is_never_usr1_nor_one_already_handled(compose, name):
    from configs.validate import config_problems

    problems = [p for p in config_problems(compose(f"cluster.signal={name}")) if p.startswith("cluster.signal=")]
    assert problems and "choose one of: USR2" in problems[0], problems


def test_the_default_job_signal_is_usr2(compose):
    from configs.validate import config_problems

    cfg = compose()
    assert cfg.cluster.signal == "USR2"
    assert not [p for p in config_problems(cfg) if p.startswith("cluster.signal=")]


def test_a_job_that_ran_no_rank_is_an_attempt_of_its_own_with_its_failure():
    events = [{"event": "rank_start", "rank": 0, "job_id": "5"}, {"event": "start", "job_id": "5"},
              {"event": "end", "status": "completed", "step": 10},
              {"event": "failed", "job_id": "6", "reason": "1 of 1 ranks never started (rank 0)", "exit_code": 1}]
    runs = attempts.attempts(events)
    assert [(a.job_id, a.end, a.failure) for a in runs] == [
        ("5", "completed", None), ("6", None, "1 of 1 ranks never started (rank 0)")]


def test_a_rank_failure_belongs_to_the_attempt_it_ended():
    events = [{"event": "rank_start", "rank": 0, "job_id": "5"}, {"event": "start", "job_id": "5"},
              {"event": "failed", "job_id": "5", "reason": "a rank failed (exit status 1)", "exit_code": 1}]
    (only,) = attempts.attempts(events)
    assert only.failure == "a rank failed (exit status 1)" and only.exit_code == 1
