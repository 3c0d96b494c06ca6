"""`zerorun`: the Hydra training app, plus a few verbs (`zerorun cluster up`, `zerorun status`, ...).

A first argument that names a verb runs the verb; anything else is Hydra's command line
(`zerorun task=nlp/translation trainer=deepspeed cluster=slurm ...`). Verbs import only what they use, so
`zerorun status` and `zerorun --help` stay fast and never import torch.
"""

from __future__ import annotations

import sys
from typing import Callable


def _cluster(argv: list[str]) -> int:
    from cluster.local_slurm import main

    return main(argv)


VERBS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "cluster": (_cluster, "a real Slurm cluster on this machine: zerorun cluster up | down | status"),
}


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] in VERBS:
        sys.exit(VERBS[argv[0]][0](argv[1:]))
    from jobs.app import hydra_main

    hydra_main()
