#!/usr/bin/env bash
# The main job on the embedded default: install, make an AiiDA profile, set up the OpenMX code, build a
# small Hamiltonian database with the DatabaseWorkChain, print its statistics, then train a small DeepH-2
# model on it and compute DeepH vs DFT bands of a structure left out of training (examples/train_and_bands.py).
# With a real OpenMX found (OPENMX_EXECUTABLE + OPENMX_DATA_PATH, or the install of scripts/install-openmx.sh)
# the real OpenMX runs; otherwise the REPLAY stand-in copies recorded real OpenMX outputs shipped in the
# package (and says so).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install.sh
export AIIDA_PATH="${AIIDA_PATH:-$PWD/.aiida-demo}"
PROFILE="${AIIDA_DEEPH_PROFILE:-deeph-demo}"
if ! verdi profile show "$PROFILE" >/dev/null 2>&1; then
    verdi presto --profile-name "$PROFILE" >/dev/null
fi
verdi profile set-default "$PROFILE" >/dev/null
GROUP="${AIIDA_DEEPH_GROUP:-deeph-demo}"
# Real OpenMX when an install is found (OPENMX_EXECUTABLE/OPENMX_DATA_PATH, else the one built by
# scripts/install-openmx.sh); otherwise the replay stand-in, saying why.
if WHY="$(aiida-deeph setup openmx --auto --label openmx 2>&1)"; then
    echo "$WHY"
    echo "OpenMX: running the REAL OpenMX 3.9."
    CODE=openmx
else
    echo "OpenMX: ${WHY#aiida-deeph setup: error: }"
    echo "OpenMX: using the REPLAY stand-in instead: it copies recorded real OpenMX 3.9 outputs and computes nothing."
    aiida-deeph setup openmx-replay --label openmx-replay
    CODE=openmx-replay
fi
# NaCl, KCl, NaBr, KBr: the structures whose real OpenMX runs are shipped with the package.
verdi run examples/build_database.py --code "$CODE" --source snapshot \
    --ids mp-22862,mp-23193,mp-22916,mp-23251 --group "$GROUP"
verdi data deeph stats "$GROUP"
if [ -f examples/train_and_bands.py ]; then
    verdi run examples/train_and_bands.py --group "$GROUP" --test mp-23251
fi
