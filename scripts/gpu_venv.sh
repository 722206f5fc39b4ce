#!/usr/bin/env bash
# The GPU check's venv (`make gpu-check`): onnxruntime-gpu, the CUDA build of the ONNX
# Runtime the server loads with `--device cuda`, and the CUDA 13 libraries its CUDA
# execution provider and Candle's `cuda` backend load, all from PyPI and pinned.
# Not a project dependency (several GB). Idempotent: does nothing when .venv-gpu
# already has onnxruntime-gpu at this version. Prints nothing on success.
set -euo pipefail
cd "$(dirname "$0")/.."
ORT_GPU=1.31.1
VENV=.venv-gpu
PKGS=(
    "onnxruntime-gpu==$ORT_GPU"
    "numpy==2.4.6"
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-nvrtc==13.0.88
    nvidia-cublas==13.0.2.14
    nvidia-curand==10.4.0.35
    nvidia-cufft==12.0.0.61
    nvidia-cudnn-cu13==9.19.1.2
)
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$ORT_GPU" <<'PY' 2>/dev/null; then
import importlib.metadata as m, sys
sys.exit(0 if m.version("onnxruntime-gpu") == sys.argv[1] else 1)
PY
    exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet "${PKGS[@]}" \
    || { echo "installing onnxruntime-gpu==$ORT_GPU and the CUDA 13 wheels from PyPI failed (is the registry reachable?)" >&2; exit 1; }
