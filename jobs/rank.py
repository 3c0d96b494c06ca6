"""What each rank runs: `python -m jobs.rank RUN_DIR` (a sweep's array task: `--array SWEEP_INDEX_FILE`).

Load the config saved at submission, derive the rendezvous from the environment Slurm (or the local backend)
set, check it against the plan, then train. Threads are set before torch is imported.
"""

from __future__ import annotations

import os
import sys

from trainer_core.signals import StopSignals

# First thing, before the config is read: a stop asked for during start-up is kept, not fatal.
_SIGNALS = StopSignals(os.environ.get("ZERORUN_SIGNAL", "USR2"))
_SIGNALS.hold()

from cluster.rendezvous import RendezvousError, derive  # noqa: E402
from jobs.runs import load_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--array":
        # a sweep member: the array task id picks its run folder from the sweep's index file
        from cluster.sweep_plan import SweepIndexError, member_run_dir

        try:
            run_dir = member_run_dir(argv[1], os.environ)
        except SweepIndexError as e:
            print(f"zerorun: rank cannot start: {e}", file=sys.stderr)
            return 3
    elif len(argv) == 1:
        run_dir = argv[0]
    else:
        print("usage: python -m jobs.rank RUN_DIR | python -m jobs.rank --array SWEEP_INDEX_FILE", file=sys.stderr)
        return 2
    cfg = load_config(run_dir)
    signals = _SIGNALS
    if StopSignals(cfg.cluster.signal).job_signal != signals.job_signal:  # started without ZERORUN_SIGNAL
        signals = StopSignals(cfg.cluster.signal)
        signals.hold()
    os.environ["OMP_NUM_THREADS"] = str(cfg.cluster.cpus_per_task)
    try:
        rendezvous = derive(os.environ, nodes=cfg.cluster.nodes, tasks_per_node=cfg.cluster.tasks_per_node)
    except RendezvousError as e:
        print(f"zerorun: rank cannot start: {e}", file=sys.stderr)
        return 3
    os.environ.update(rendezvous.env())

    from trainer_core.train import fit

    return fit(cfg, rendezvous, signals).exit_code


if __name__ == "__main__":
    sys.exit(main())
