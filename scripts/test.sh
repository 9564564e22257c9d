#!/usr/bin/env bash
# Install aiida-deeph in .venv and run the test suite (CPU only; ../shared must sit beside the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install.sh
# Lint and architecture first (seconds): ruff's rules and the import-linter contracts of pyproject.toml
ruff check aiida_deeph tests benchmarks examples scripts
lint-imports --no-cache >/dev/null || lint-imports --no-cache
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
if [ -f scripts/slurm-local.sh ]; then
    . scripts/slurm-local.sh || true       # starts a local Slurm when possible (root); tests skip otherwise
fi
# The real OpenMX 3.9 for the `real_openmx` tests: built once into the cache (about 2-4 minutes), then instant.
if [ -f scripts/install-openmx.sh ]; then
    . scripts/install-openmx.sh --quiet >/dev/null || true   # exports OPENMX_EXECUTABLE/OPENMX_DATA_PATH
fi
# Everything the run writes (AiiDA's configuration, pytest's and torchrun's temporary folders) goes into one
# temporary folder, removed when the run ends: /tmp is left as it was. (Set after the daemons above start,
# so that a Slurm left running never points at a removed folder.)
RUN_TMP="$(mktemp -d -t aiida-deeph-tests-XXXXXX)"
trap 'rm -rf "$RUN_TMP"' EXIT
export TMPDIR="$RUN_TMP"
export AIIDA_PATH="$RUN_TMP/aiida"        # never touch ~/.aiida
mkdir -p "$AIIDA_PATH"
python -m pytest -q -p no:cacheprovider "$@"
