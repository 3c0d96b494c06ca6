"""`python -m cluster.localslurm up|down|status`: what `zerorun cluster` runs, and what sudo re-runs."""

import sys

from cluster.localslurm.cli import main

sys.exit(main(sys.argv[1:]))
