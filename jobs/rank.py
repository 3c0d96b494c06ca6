"""What each rank runs: `python -m jobs.rank RUN_DIR` (a sweep's array task: `--array SWEEP_INDEX_FILE`).

Record that this rank started, load the config saved at submission, let the backend derive the rank contract
from what its scheduler set (checked against the plan), put the contract in place, then train. Threads are set
before torch is imported. The rank's exit status is training's: 0 done, EXIT_RESUMABLE stopped with a checkpoint.
"""

from __future__ import annotations

import os
import sys

from trainer_core.contract import DEFAULT_SIGNAL, RUN_DIR_ENV, SIGNAL_ENV
from trainer_core.signals import StopSignals

# First thing, before the config is read: a stop asked for during start-up is kept, not fatal.
_SIGNALS = StopSignals(os.environ.get(SIGNAL_ENV, DEFAULT_SIGNAL))
_SIGNALS.hold()

from cluster.backends import get_backend  # noqa: E402
from cluster.rendezvous import RendezvousError  # noqa: E402
from jobs.runs import load_config  # noqa: E402
from trainer_core import attempts  # noqa: E402

# the entry's arguments are read as the watchdog and the host step read them (jobs/runs.py: no signal hold there)
from jobs.runs import USAGE, run_dir_from_args  # noqa: E402,F401


def follow_allocation(cfg, granted_nodes: int) -> None:  # type: ignore[no-untyped-def]
    """A job that started on fewer nodes than cluster.nodes (cluster.min_nodes): the trainer follows the nodes
    granted, and the planned global batch is kept by accumulating more (configs/validate.py checked that it
    divides). A resume from a checkpoint keeps that checkpoint's global batch the same way (trainer_core/resize.py)."""
    planned = int(cfg.cluster.nodes)
    if granted_nodes == planned:
        return
    accumulate, rest = divmod(planned * int(cfg.trainer.accumulate_grad_batches), granted_nodes)
    if rest:
        raise ValueError(f"the job got {granted_nodes} of cluster.nodes={planned} nodes and the global batch does "
                         "not divide over them; choose cluster.min_nodes so that every node count divides it")
    cfg.trainer.accumulate_grad_batches = accumulate
    cfg.cluster.nodes = cfg.trainer.num_nodes = granted_nodes


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    run_dir = run_dir_from_args(argv, os.environ)
    if run_dir is None:
        return 3 if argv and argv[0] == "--array" else 2
    cfg = load_config(run_dir)
    signals = _SIGNALS
    if StopSignals(cfg.cluster.signal).job_signal != signals.job_signal:  # started without ZERORUN_SIGNAL
        signals = StopSignals(cfg.cluster.signal)
        signals.hold()
    os.environ["OMP_NUM_THREADS"] = str(cfg.cluster.cpus_per_task)
    backend = get_backend(str(cfg.cluster.backend))
    try:
        contract = backend.rank_contract(os.environ, nodes=cfg.cluster.nodes, tasks_per_node=cfg.cluster.tasks_per_node,
                                         min_nodes=cfg.cluster.get("min_nodes"))
    except RendezvousError as e:
        print(f"zerorun: rank cannot start: {e}", file=sys.stderr)
        return 3
    # the batch host counts these: a job in which not every rank started has failed, whatever srun said
    attempts.append(run_dir, "rank_start", rank=contract.rank, node=contract.node, job_id=contract.job_id,
                    restart_count=contract.restart_count, world_size=contract.world_size, pid=os.getpid())
    follow_allocation(cfg, contract.num_nodes)
    os.environ.update(contract.env())
    os.environ[RUN_DIR_ENV] = os.path.abspath(run_dir)

    if cfg.get("eval") is not None:  # an evaluation job (zerorun eval): measure a checkpoint, train nothing
        from jobs.evaluation import evaluate_rank

        return evaluate_rank(cfg, contract)

    from trainer_core.train import fit

    return fit(cfg, contract, signals).exit_code


if __name__ == "__main__":
    sys.exit(main())
