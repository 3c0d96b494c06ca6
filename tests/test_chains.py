"""Chains and evaluation jobs without Slurm: what cluster.after waits for (the pure decision), the lines it
renders, the refusals of `zerorun eval`, cluster=local waiting in the foreground, and a real evaluation of a
DeepSpeed ZeRO-2 checkpoint (language modeling: perplexity) on the local backend."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from cluster import render
from cluster.plan import make_plan
from cluster.slurm import JobState
from conftest import only_run_dir, shrink
from jobs import chains, evaluation, verbs
from jobs.app import launch
from jobs.chains import Decision, Upstream, decide


def test_live_dependencies_are_waited_for_ended_ones_dropped_or_refused():
    live = Upstream("12", "job 12", "RUNNING", False)
    requeued = Upstream("13", "job 13", "PENDING", False)
    done = Upstream("14", "run R (job 14)", "COMPLETED", True, True)
    failed = Upstream("15", "run F (job 15)", "FAILED", True, False, "a rank failed")
    d = decide("afterok", [live, requeued, done], "X")
    assert d.wait_for == ("12", "13") and d.dependency("afterok") == "afterok:12:13" and not d.problems
    assert d.notes == ("run R (job 14) has ended (COMPLETED): nothing to wait for",)

    d = decide("afterok", [live, failed], "F")
    assert len(d.problems) == 1 and "run F (job 15) ended FAILED: a rank failed" in d.problems[0]
    assert "cluster.after_kind=afterany" in d.problems[0] and "resume=RUN_DIR" in d.problems[0]
    d = decide("afterany", [live, failed], "F")
    assert d.dependency("afterany") == "afterany:12" and not d.problems

    # a job id nobody knows is refused; a run whose job Slurm forgot is judged by its folder
    d = decide("afterok", [Upstream("99", "job 99", "UNKNOWN", False)], "99")
    assert "job 99 does not exist" in d.problems[0] and d.dependency("afterok") is None
    forgotten = Upstream("16", "run G (job 16)", "UNKNOWN", True, True)
    assert decide("afterok", [forgotten], "G") == Decision((), (), (
        "run G (job 16) has ended (UNKNOWN): nothing to wait for",), ())
    # a run still running on this machine: only a foreground backend can wait for it
    here = Upstream("", "run L (run here)", "RUNNING", False, False)
    assert decide("afterok", [here], "L").running_here == ("run L (run here)",)


def test_the_dependency_is_rendered_with_kill_on_invalid_dep_and_owned_by_cluster_after(compose):
    cfg = compose("cluster=slurm")
    script = render.sbatch_script(make_plan(cfg, dependency="afterok:12:13"), render.RenderContext("t", ("zr",)))
    assert "#SBATCH --dependency=afterok:12:13\n" in script and "#SBATCH --kill-on-invalid-dep=yes\n" in script
    plain = render.sbatch_script(make_plan(cfg), render.RenderContext("t", ("zr",)))
    assert "--dependency" not in plain and "kill-on-invalid-dep" not in plain
    from cluster import preflight

    problems = preflight.plan_problems(make_plan(compose("cluster=slurm", "+cluster.sbatch_extra.dependency=afterok:1")))
    assert any("cluster.after" in p for p in problems), problems


def test_explain_cancel_names_the_dependency_that_failed():
    states = {"12": JobState("12", "FAILED", "FAILED", True), "13": JobState("13", "COMPLETED", "COMPLETED", True)}
    why = chains.explain_cancel("afterok:12:13", lambda ids: {i: states[i] for i in ids})
    assert why is not None and "dependency job 12 ended FAILED" in why and "13" not in why
    assert chains.explain_cancel("afterok:13", lambda ids: {i: states[i] for i in ids}) is None
    assert chains.explain_cancel(None, lambda ids: {}) is None


def test_local_waits_in_the_foreground_until_the_dependency_ends_then_starts_or_refuses(compose, monkeypatch):
    """The scheduler's answers are faked (a fixed sequence of decisions): what is tested is the waiting loop."""
    cfg = compose("cluster.after=12")
    running = Decision(("12",), (), (), ())
    for final, raises in ((Decision((), (), ("job 12 has ended (COMPLETED): nothing to wait for",), ()), False),
                          (Decision((), (), (), ("job 12 ended FAILED ...",)), True)):
        answers = iter([running, running, final])
        monkeypatch.setattr(chains, "resolve", lambda after, kind: next(answers))
        slept: list[float] = []
        err = io.StringIO()
        if raises:
            with pytest.raises(chains.ChainError, match="ended FAILED"):
                chains.wait_here(cfg, err=err, poll_s=3.0, sleep=slept.append)
        else:
            chains.wait_here(cfg, err=err, poll_s=3.0, sleep=slept.append)
            assert "nothing to wait for" in err.getvalue()
        assert slept == [3.0, 3.0] and err.getvalue().count("waiting here for 12") == 1


def test_eval_refuses_what_it_cannot_evaluate_before_submitting(compose, tmp_path):
    assert launch(compose("dry_run=true")) == 0  # a run folder that never ran: no checkpoint
    run_dir = only_run_dir(tmp_path / "runs")
    cases = {
        (str(tmp_path),): "not a zerorun run folder",
        (str(run_dir), "--best"): "--best needs a sweep folder",
        (str(run_dir), "trainer=ddp"): "keeps the run's model",
        (str(run_dir),): "without a checkpoint to evaluate",
    }
    for argv, message in cases.items():
        err = io.StringIO()
        assert verbs.eval_verb(list(argv), err=err) == 2, argv
        assert message in err.getvalue(), (argv, err.getvalue())
    assert not (run_dir / "eval").exists()


@pytest.mark.slow
@pytest.mark.deepspeed
def test_eval_of_a_deepspeed_run_measures_its_final_perplexity(compose, tmp_path):
    cfg = compose("task=nlp/language_modeling", "trainer=deepspeed", *shrink("trainer.max_steps=8",
                  "trainer.val_check_interval=8", "dataset.max_val_samples=16"))
    assert launch(cfg) == 0
    run_dir = only_run_dir(tmp_path / "runs")
    err = io.StringIO()
    assert verbs.eval_verb([str(run_dir), "split=validation"], err=err) == 0, err.getvalue()
    [eval_dir] = evaluation.evaluations(run_dir)
    trained = json.loads((run_dir / "metrics.json").read_text())
    measured = json.loads((eval_dir / "metrics.json").read_text())
    assert json.loads((eval_dir / "eval.json").read_text())["checkpoint_step"] == 8
    # the fp32 weights gathered from the ZeRO shards give the run's own final validation
    assert measured["val_ppl"] == pytest.approx(trained["val_ppl"], rel=1e-4)
    assert measured["val_loss"] == pytest.approx(trained["val_loss"], rel=1e-4)
    out = io.StringIO()
    evaluation.show_evaluations(run_dir, out)
    assert f"val_ppl={measured['val_ppl']:.4g}" in out.getvalue()
