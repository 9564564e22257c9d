#!/usr/bin/env bash
# The main job on the embedded default: install, make an AiiDA profile, set up the OpenMX code, build a
# small Hamiltonian database with the DatabaseWorkChain, print its statistics, then train a small DeepH-2
# model on it and compute DeepH vs DFT bands of a structure left out of training (examples/train_and_bands.py).
# With OPENMX_EXECUTABLE and OPENMX_DATA_PATH set, the real OpenMX runs; otherwise the REPLAY stand-in
# copies recorded real OpenMX outputs shipped in the package (and says so).
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
if [ -n "${OPENMX_EXECUTABLE:-}" ]; then
    aiida-deeph setup openmx --executable "$OPENMX_EXECUTABLE" --data-path "${OPENMX_DATA_PATH:?set OPENMX_DATA_PATH}" --label openmx
    CODE=openmx
else
    echo "No OPENMX_EXECUTABLE set: using the REPLAY stand-in with recorded real OpenMX 3.9 outputs."
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
