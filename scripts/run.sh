#!/usr/bin/env bash
# Set everything up, then train the default model (tiny translation, offline, CPU or GPU). Extra arguments are
# Hydra overrides: bash scripts/run.sh trainer=deepspeed
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python train.py "$@"
