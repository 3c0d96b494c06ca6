#!/usr/bin/env bash
# Set everything up (Python packages, and a real 2-node Slurm cluster on this machine), then run every test.
# Extra arguments go to pytest: bash scripts/test.sh -k rendezvous
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The Slurm tests need the local cluster; the pytest fixture reuses it (and would bring it up itself).
.venv/bin/zerorun cluster up
set +e
OMP_NUM_THREADS=1 .venv/bin/python -m pytest "$@"
rc=$?
set -e
# pytest exits 5 when it collected nothing: that is a failure of the suite, not a pass.
[ "$rc" = 5 ] && echo "zerorun tests: no test ran" >&2
exit "$rc"
