#!/usr/bin/env bash
# Install aiida-deeph in .venv and run the test suite (CPU only; ../shared must sit beside the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install.sh
export AIIDA_PATH="$(mktemp -d)"          # never touch ~/.aiida
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
if [ -f scripts/slurm-local.sh ]; then
    . scripts/slurm-local.sh || true       # starts a local Slurm when possible (root); tests skip otherwise
fi
python -m pytest -q -p no:cacheprovider "$@"
