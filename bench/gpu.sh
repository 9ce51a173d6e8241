#!/usr/bin/env bash
# One prepared run for a bare CUDA machine (issue 16, DESIGN §9): what the machine has, the CUDA
# tests, then the library part of the realistic benchmark. Everything goes to $OUT.
#
#   OUT=/some/dir bash bench/gpu.sh                 # on the GPU machine (about 5 minutes on an H200)
#   OUT=/tmp/gpuout bash bench/gpu.sh --cpu-dry-run # anywhere: the same steps on the CPU, quick sizes
#
# The machine brings its own python3 with PyTorch (PYTHON=... to choose another); it needs no
# PostgreSQL, Redis or network. The library also needs pydantic, which such an image may lack:
# `make gpu-wheels` (where PyPI is reachable) puts it in .whl/ and this script installs it from
# there into a temporary folder (carry .whl with the working tree). Every step has a time limit;
# the whole run stays under 8 minutes. Exit status: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
DEVICE=cuda
for arg in "$@"; do
  case $arg in
    --cpu-dry-run) DEVICE=cpu ;;
    *) echo "usage: OUT=DIR bash bench/gpu.sh [--cpu-dry-run]" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu.log") 2>&1
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
failed=()
step() { printf '\n=== %s (%s UTC)\n' "$*" "$(date -u +%H:%M:%S)"; }

step "machine"
nvidia-smi || echo "nvidia-smi: not available"
if [ "$DEVICE" = cpu ] && [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi  # the dry run: the project's venv
echo "python: $(command -v "$PY") ($("$PY" -V 2>&1))"
if ! "$PY" -c 'import torch' 2>/dev/null; then
  [ "$DEVICE" = cpu ] && { echo "FAILED: $PY has no torch (PYTHON=... names another interpreter)"; exit 1; }
  echo "$PY has no torch: trying a venv with torch==2.13.0 (needs a package registry)"
  if timeout 30 "$PY" -m venv /tmp/lethe-venv && timeout 150 /tmp/lethe-venv/bin/pip install -q torch==2.13.0 numpy safetensors \
      pydantic scikit-learn pytest hypothesis; then
    PY=/tmp/lethe-venv/bin/python
  else
    echo "FAILED: no torch here and none could be installed"; exit 1
  fi
fi
if ! "$PY" -c 'import pydantic, safetensors, sklearn, pytest, hypothesis' 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    echo "pydantic, safetensors, scikit-learn or pytest missing: installing $(ls .whl | tr '\n' ' ')into /tmp/lethe-site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/lethe-site .whl/*.whl \
      || failed+=("pydantic from .whl")
    export PYTHONPATH=/tmp/lethe-site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "pydantic missing and no .whl/ here: run 'make gpu-wheels' where PyPI is reachable and carry .whl"
  fi
fi
timeout 60 "$PY" - <<'EOF' || failed+=("environment")
import importlib, os, platform

import torch

print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}, {os.cpu_count()} CPUs")
print(f"cuda available: {torch.cuda.is_available()}, devices: {torch.cuda.device_count()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}, {p.multi_processor_count} SMs")
missing = []
for name in ("numpy", "safetensors", "pydantic", "sklearn", "pytest", "hypothesis"):
    try:
        print(f"{name} {getattr(importlib.import_module(name), '__version__', '?')}")
    except ImportError as exc:
        missing.append(name)
        print(f"{name}: MISSING ({exc})")
from workers.unlearning import get_method

print("workers.unlearning imports; method:", get_method("mixed_linear").name)
raise SystemExit(1 if missing else 0)
EOF

step "CUDA tests (pytest -m gpu; skipped without CUDA)"
# only the library's test files (the others need the service stack); warnings are not errors on a
# foreign stack (the image's torch is not the pinned one)
timeout 120 "$PY" -m pytest -q -p no:cacheprovider --confcutdir=tests/workers/unlearning -W default -m gpu -rs \
  tests/workers/unlearning/test_unlearning_devices.py tests/workers/unlearning/test_unlearning_paths.py \
  tests/workers/unlearning/test_lcodec_oracle.py || failed+=("CUDA tests")

step "realistic benchmark, library part ($DEVICE)"
if [ "$DEVICE" = cuda ]; then
  timeout 270 "$PY" bench/realistic.py --library --device cuda --out "$OUT" || failed+=("realistic benchmark")
else
  timeout 600 "$PY" bench/realistic.py --library --quick --device cpu --dtypes float64,mixed,float32 --out "$OUT" || failed+=("realistic benchmark")
fi

step "done"
ls -l "$OUT"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED steps: ${failed[*]}"
  exit 1
fi
echo "all steps passed"
