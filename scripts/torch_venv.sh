#!/usr/bin/env bash
# A throwaway venv with PyTorch for the training-step comparison only
# (`make bench-train-vs-torch`): not a project dependency (PyPI's wheel is the
# CUDA build, several GB with its nvidia-* packages). Idempotent: does nothing
# when .venv-torch already has these versions.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=2.15.0
NUMPY=2.4.6
VENV=.venv-torch
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$TORCH" <<'PY' 2>/dev/null; then
import sys, torch
sys.exit(0 if torch.__version__.split("+")[0] == sys.argv[1] else 1)
PY
    exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet "torch==$TORCH" "numpy==$NUMPY" \
    || { echo "installing torch==$TORCH from PyPI failed (is the registry reachable?)" >&2; exit 1; }
