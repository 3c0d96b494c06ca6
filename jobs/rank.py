"""What each rank runs: `python -m jobs.rank RUN_DIR`.

Load the config saved at submission, derive the rendezvous from the environment Slurm (or the local backend)
set, check it against the plan, then train. Threads are set before torch is imported.
"""

from __future__ import annotations

import os
import sys

from cluster.rendezvous import RendezvousError, derive
from jobs.runs import load_config
from jobs.signals import StopSignals


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m jobs.rank RUN_DIR", file=sys.stderr)
        return 2
    cfg = load_config(argv[0])
    signals = StopSignals(cfg.cluster.signal)
    signals.hold()  # before the slow imports: a stop asked for during start-up is kept, not fatal
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
