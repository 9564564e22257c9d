# Sourced by scripts/demo.sh and scripts/test.sh: create/activate .venv and install aiida-deeph.
# torch==2.13.0 first: on these machines it is a CPU wheel on disk (a plain `torch` pulls a CUDA build).
set -euo pipefail
VENV="${AIIDA_DEEPH_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip >/dev/null
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[${AIIDA_DEEPH_EXTRAS:-tests}]"
