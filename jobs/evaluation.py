"""`zerorun eval RUN_DIR [overrides]` and `zerorun eval SWEEP_DIR --best [overrides]`: evaluate a run's final
checkpoint on a split as a job of its own.

The evaluation is a run folder of its own inside the evaluated one, RUN_DIR/eval/SPLIT-ID (a sweep's:
SWEEP_DIR/eval/best-SPLIT-ID), submitted through the one submission path (jobs/app.py launch: checks, plan,
render, submit) on any backend. Its config is the evaluated run's saved config with the command line's overrides
(`split=test`, `cluster=local`, `cluster.nodes=1`, `dataset.max_val_samples=null`, ...) and an `eval` section
(configs/schema.py EvalConfig); its ranks (jobs/rank.py) see that section and evaluate instead of training
(trainer_core/evaluate.py). By default it waits for the evaluated run's job (cluster.after=RUN_DIR, afterok), so
it can be submitted while the run still trains; for a sweep, for all of its arrays (afterany: a failed member
does not stop the evaluation of the best one). The best member is chosen when the job runs, among the members
that have final metrics then.

Results: EVAL_DIR/metrics.json (the task's metrics, as a run's) and EVAL_DIR/eval.json (what was evaluated: run,
checkpoint, step, split); `zerorun status RUN_DIR` and `zerorun status SWEEP_DIR` list the evaluations.
The verb itself is jobs/verbs.py eval_verb. Imports nothing of the training stack on the submission side.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, TextIO

from omegaconf import DictConfig, OmegaConf

from jobs import runs
from jobs.sweeps import record as sweep_record
from trainer_core import layout

EVALS = layout.EVALS
EVALUATED = layout.EVALUATED
# groups an evaluation may choose anew (the cluster it runs on); the others are the run's model and data
FREE_GROUPS = ("cluster",)
MODEL_GROUPS = ("task", "dataset", "backbone", "optimizer", "scheduler", "trainer")


class EvalError(ValueError):
    """The evaluation cannot be submitted; the message names the fix."""


def _parse(overrides: Sequence[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except Exception as e:  # Hydra's parser error: the message says where
        raise EvalError(f"cannot read the overrides: {e}") from None


def _cluster_group(name: str) -> DictConfig:
    """The cluster section a plain `cluster=NAME` composes to (its interpolations resolved as a run's are)."""
    from hydra import compose, initialize_config_module

    from configs.schema import register

    register()
    with initialize_config_module("configs", version_base="1.3"):
        composed = compose("config", overrides=[f"cluster={name}"])
    return OmegaConf.create(OmegaConf.to_container(composed.cluster, resolve=True))  # type: ignore[return-value]


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> str:
    """Apply the command line's overrides to an evaluated run's config, in place; returns the split asked for.
    `split=NAME` chooses the split, `cluster=NAME` the cluster group; the model's groups cannot change."""
    split = str(cfg.dataset.validation_split)
    follows = runs.trainer_follows_geometry(cfg)
    parsed = _parse(overrides)
    for o in parsed:  # the group first, then keys inside it
        if o.key_or_group in FREE_GROUPS and not o.is_add() and "." not in o.key_or_group:
            runs_dir = cfg.cluster.runs_dir
            cfg.cluster = _cluster_group(str(o.value()))
            cfg.cluster.runs_dir = runs_dir
    for o in parsed:
        key = o.key_or_group
        if key in FREE_GROUPS:
            continue
        if key == "split":
            split = str(o.value())
            continue
        if key in MODEL_GROUPS or key in ("resume", "run_dir", "run_id", "eval") or key.startswith(("hydra", "eval.")):
            raise EvalError(f"'{o.input_line}': an evaluation keeps the run's model, data set and folder; override "
                            "single keys instead (split=test, dataset.max_val_samples=null, cluster.nodes=1, ...)")
        if o.is_add() and "." not in key:
            raise EvalError(f"'{o.input_line}': no such setting of a run")
        OmegaConf.update(cfg, key, o.value(), merge=False)
        follows.discard(key)
    runs.follow_geometry(cfg, follows)  # the trainer's geometry follows the evaluation's cluster
    return split


def eval_config(target: str, best: bool, overrides: Sequence[str]) -> DictConfig:
    """The config of an evaluation job of `target` (a run folder, or a sweep folder with best=True)."""
    from configs.schema import EvalConfig, new_run_id
    from trainer_core.checkpoint_store import CheckpointStore

    folder = Path(target)
    is_sweep = folder.is_dir() and sweep_record.exists(folder)
    if is_sweep and not best:
        raise EvalError(f"{target} is a sweep: add --best to evaluate its best member, or give a member's run folder")
    if best and not is_sweep:
        raise EvalError(f"--best needs a sweep folder (runs/NAME/sweep-ID); {target} is not one")
    if is_sweep:
        record = sweep_record.load(folder)
        base = record.members[0].run_dir
    else:
        if not (folder / layout.CONFIG).exists():
            raise EvalError(f"{target} is not a zerorun run folder (it has no {layout.CONFIG}); give the folder a "
                            "submission printed (runs/NAME/RUN_ID)")
        base = str(folder)
    folder = folder.resolve()
    cfg = runs.load_config(base)
    if cfg.get("eval") is not None:
        raise EvalError(f"{target} is an evaluation itself; give the run folder it evaluated")
    split = apply_overrides(cfg, overrides)
    cfg.dataset.validation_split = split
    if not any(o.split("=", 1)[0].lstrip("+") == "cluster.after" for o in overrides):
        cfg.cluster.after = str(folder)  # wait for what is evaluated (nothing to wait for once it has ended)
        if is_sweep and not any(o.split("=", 1)[0] == "cluster.after_kind" for o in overrides):
            cfg.cluster.after_kind = "afterany"
    run_id = new_run_id()
    cfg.run_id = run_id
    cfg.name = f"eval-{cfg.name}"
    cfg.run_dir = str(folder / EVALS / f"{'best-' if best else ''}{split}-{run_id}")
    cfg.resume = None
    cfg.watchdog.timeout_s = None  # an evaluation reports no steps to a watchdog
    cfg.trainer.logger = "csv"  # it logs to no tracker: the run's wandb/mlflow package is not needed for it
    cfg.eval = OmegaConf.structured(EvalConfig(of=str(folder), split=split, best=best, overrides=list(overrides)))
    if not is_sweep and runs.live_job(folder) is None and CheckpointStore(folder).latest() is None:
        raise EvalError(f"{target} has ended without a checkpoint to evaluate "
                        f"({CheckpointStore(folder).describe()}); resume it (resume={target}) or evaluate another run")
    return cfg


# ---- inside the job ---------------------------------------------------------------------------------------------

def _metrics(run_dir: str) -> Optional[dict]:
    try:
        return json.loads((Path(run_dir) / layout.METRICS).read_text())
    except (OSError, ValueError):
        return None


def best_member(sweep_dir: str) -> tuple[sweep_record.Member, float, str, str]:
    """The sweep's best member now, by sweep.metric and sweep.mode, among the members with final metrics (read
    from their run folders). (member, its value, metric, mode)"""
    from jobs.sweeps.report import best

    record = sweep_record.load(sweep_dir)
    for m in record.members:
        m.metrics = _metrics(m.run_dir)
    found = best(record, record.metric, record.mode, 1)
    if not found:
        raise EvalError(f"no member of {sweep_dir} has a final {record.metric} (none completed); nothing to evaluate")
    value, member = found[0]
    return member, value, record.metric, record.mode


def chosen_config(cfg: DictConfig) -> tuple[DictConfig, str, dict[str, Any]]:
    """In an evaluation's ranks: (the config to evaluate with, the run folder evaluated, what was chosen). For a
    sweep's best member, that member's config with the evaluation's overrides, cluster and folder."""
    e = cfg.eval
    if not e.best:
        return cfg, str(e.of), {}
    member, value, metric, mode = best_member(str(e.of))
    chosen = runs.load_config(member.run_dir)
    apply_overrides(chosen, list(e.overrides))
    for key in ("cluster", "run_id", "name", "run_dir", "resume", "eval"):
        chosen[key] = cfg[key]
    chosen.dataset.validation_split = e.split
    chosen.trainer.devices, chosen.trainer.num_nodes = cfg.trainer.devices, cfg.trainer.num_nodes
    why = {"sweep_dir": str(e.of), "member": member.num, "member_overrides": list(member.overrides),
           "sweep_metric": metric, "sweep_mode": mode, "sweep_value": value if math.isfinite(value) else None}
    return chosen, member.run_dir, why


def evaluate_rank(cfg: DictConfig, contract: Any) -> int:
    """An evaluation job's rank: choose what to evaluate, evaluate it (trainer_core/evaluate.py). 0, or 1 with
    the reason printed."""
    from trainer_core.checkpoint_store import CheckpointError

    try:
        chosen, source, why = chosen_config(cfg)
        from trainer_core.evaluate import evaluate

        evaluate(chosen, contract, source, why)
    except (EvalError, CheckpointError, sweep_record.RecordError) as e:
        print(f"zerorun: evaluation failed: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


# ---- what `zerorun status` shows ---------------------------------------------------------------------------------

def evaluations(folder: str | os.PathLike) -> list[Path]:
    """The evaluation folders of a run or sweep folder, oldest first."""
    found = [p.parent for p in Path(folder, EVALS).glob(f"*/{layout.CONFIG}")]
    return sorted(found, key=lambda p: (p.stat().st_mtime, str(p)))


def read_result(eval_dir: Path) -> tuple[Optional[dict], Optional[dict]]:
    """(metrics, what was evaluated) of an evaluation folder; None for what is not written yet."""
    try:
        info = json.loads((eval_dir / EVALUATED).read_text())
    except (OSError, ValueError):
        info = None
    return _metrics(str(eval_dir)), info


def show_evaluations(folder: Optional[str | os.PathLike], out: TextIO) -> None:
    """The evaluations of a run or sweep folder, one row each: job, state, split, what was evaluated, metrics."""
    from cluster import table
    from cluster.backends import get_backend
    from jobs import chains, snapshot

    found = evaluations(folder) if folder else []
    if not found:
        return
    rows = []
    for d in found:
        metrics, info = read_result(d)
        record = snapshot.read_record(d)
        state, detail = ("DONE" if metrics else "NOT RUN"), ""
        if record is not None and record.job_id:
            backend = get_backend(str(runs.load_config(d).cluster.backend))
            st = backend.query([record.job_id])[record.job_id]
            state = st.state
            if st.state == "PENDING" and record.dependency:
                detail = f"waits for {record.dependency} ({st.reason or 'Dependency'})"
            elif st.state == "CANCELLED":
                detail = chains.explain_cancel(record.dependency, backend.query) or ""
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted((metrics or {}).items()) if k != "checkpoint_step")
        what = ""
        if info:
            what = f"step {info.get('checkpoint_step')}" + (f" of member {info['member']}" if "member" in info else "")
        cfg_split = (info or {}).get("split") or d.name.split("-")[0]
        rows.append([record.job_id if record and record.job_id else "-", state, cfg_split, what,
                     shown or detail or "-", str(d)])
    out.write("\nevaluations (zerorun eval):\n")
    table.show(("JOB", "STATE", "SPLIT", "EVALUATED", "METRICS", "FOLDER"), rows, out)
