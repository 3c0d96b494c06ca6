#!/usr/bin/env bash
# Set up zerorun in ./.venv on a Debian or Ubuntu machine with Python >= 3.10. Safe to run again: it only
# installs what is missing, and reinstalls the package when pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "zerorun setup: need root or sudo to install system packages ($*)" >&2; exit 1; fi; }

if ! command -v "$PYTHON" >/dev/null; then
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-dev
fi
"$PYTHON" - <<'PY' || { echo "zerorun setup: Python >= 3.10 is required (set PYTHON=/path/to/python3.x)" >&2; exit 1; }
import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY

# System packages: venv support, and a C++ compiler plus Python headers for DeepSpeed's JIT-built CPU ops.
missing=()
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing+=("python3-venv")
"$PYTHON" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || missing+=("python3-dev")
command -v g++ >/dev/null || missing+=("g++")
if [ ${#missing[@]} -gt 0 ]; then
  echo "zerorun setup: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.zerorun-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "zerorun setup: installing Python packages into .venv (torch pinned by constraints.txt)"
  .venv/bin/python -m pip install -q --upgrade pip
  # DeepSpeed builds its ops just in time on first use (cached in TORCH_EXTENSIONS_DIR), not at install.
  # The trackers' extras too, so that their tests run (about 100 MB and 15 s more; docs/trackers.md).
  DS_BUILD_OPS=0 .venv/bin/python -m pip install -q -c constraints.txt -e '.[dev,wandb,mlflow]'
  echo "$want" > "$stamp"
fi
