#!/usr/bin/env bash
# The main job on the embedded default: install, make an AiiDA profile, set up the OpenMX code, build a
# small Hamiltonian database with the DatabaseWorkChain, print its statistics, then compute DeepH vs DFT
# bands of a structure left out of training with the DeepH-2 carbon model shipped in the package
# (examples/train_and_bands.py).
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
# The database: two rattled diamond cells of the carbon set (../shared/openmx-carbon), whose real OpenMX runs
# are shipped as recordings. The model: the carbon model shipped in the package. It was trained with
# `aiida-deeph train --preset small` on 33 other cells of the set (aiida_deeph/resources/models/carbon-small,
# RECIPE.md). C-dia2-r003 was never seen in training; it is predicted from its overlap S alone.
# AIIDA_DEEPH_DEMO_TRAIN_ARGS='--parent MODEL --minutes 2 ...' fine-tunes on C-dia2-r008 first; that is
# measured as worse on one cell, see benchmarks/RESULTS.md.
RES="$(python -c 'from aiida_deeph.cli.setup import shipped_recordings; print(shipped_recordings())')"
MODEL="$(python -c 'from aiida_deeph.cli.setup import shipped_model; print(shipped_model("carbon-small"))')"
verdi run examples/build_database.py --code "$CODE" --source files --group "$GROUP" --no-stats \
    --structures "$RES/C-dia2-r008/meta.json" "$RES/C-dia2-r003/meta.json"
verdi data deeph stats "$GROUP"
echo "(the demo's AiiDA profile '$PROFILE': in a new shell, 'export AIIDA_PATH=$AIIDA_PATH' before verdi)"
# shellcheck disable=SC2086
verdi run examples/train_and_bands.py --group "$GROUP" --test C-dia2-r003 --preset small \
    ${AIIDA_DEEPH_DEMO_TRAIN_ARGS:---model $MODEL}
