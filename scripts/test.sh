#!/usr/bin/env bash
# Set everything up (Python packages, and a real 2-node Slurm cluster on this machine), then run every test.
# Extra arguments go to pytest and run as one pytest: bash scripts/test.sh -k rendezvous
# Without arguments the suite runs as two pytest processes side by side: the Slurm tests, one at a time (they
# share one cluster), and every other test beside them. A Slurm test spends most of its time waiting on the
# scheduler, so the two together take about the time of the longer one.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The Slurm tests need the local cluster; the pytest fixture reuses it (and would bring it up itself).
.venv/bin/zerorun cluster up
export OMP_NUM_THREADS=1
pytest=(.venv/bin/python -m pytest)
# pytest exits 5 when it collected nothing: that is a failure of the suite, not a pass.
verdict() { [ "$1" = 5 ] && echo "zerorun tests ($2): no test ran" >&2; return 0; }
set +e
if [ $# -gt 0 ]; then
  "${pytest[@]}" "$@"
  rc=$?
  verdict "$rc" "$*"
  exit "$rc"
fi
work=$(mktemp -d)
"${pytest[@]}" -m "not slurm" -p no:cacheprovider --basetemp="$work/other" --durations=15 >"$work/other.log" 2>&1 &
other=$!
"${pytest[@]}" -m slurm -p no:cacheprovider --basetemp="$work/slurm" --durations=15
rc_slurm=$?
wait "$other"
rc_other=$?
echo
echo "==================== the tests without Slurm (run beside the Slurm tests) ===================="
cat "$work/other.log"
verdict "$rc_slurm" "-m slurm"
verdict "$rc_other" "-m 'not slurm'"
rm -rf "$work"
[ "$rc_slurm" = 0 ] && [ "$rc_other" = 0 ]
