#!/usr/bin/env bash
# The GPU path, proven in one command (issue 15). On any CUDA machine, after the README's install
# (python3 -m venv .venv && .venv/bin/pip install -e '.[dev,dali]'):
#
#   scripts/gpu_check.sh                      # estimated 10-15 minutes on one H100 (never run yet)
#   scripts/gpu_check.sh --max-batch 512      # extra arguments go to scripts/bench_gpu.py
#
# 1. prints the GPU, driver, torch / CUDA / cuDNN / DALI versions;
# 2. runs every `gpu`-marked test (tests/test_gpu.py): AMP bf16 and fp16 (GradScaler, a skipped
#    inf step), channels_last, runtime.compile, decode=gpu, DALI on CUDA, NCCL DDP + SyncBN,
#    population BN statistics, the 144-crop ensemble, exact resume; a failure stops here, before
#    any figure is written;
# 3. runs scripts/bench_gpu.py, which writes results/bench_gpu.md (figures, command, machine).
# Without CUDA it says so in one line, writes nothing and exits 1. Commit results/bench_gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: no CUDA device visible to torch ($PY): nothing run, nothing written" >&2
  exit 1
fi

echo "== machine"
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader || true
"$PY" - <<'PYTHON'
import platform

import torch

print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"{torch.cuda.device_count()} GPU(s), first {torch.cuda.get_device_name(0)}, "
      f"Python {platform.python_version()}")
try:
    import nvidia.dali

    print(f"DALI {nvidia.dali.__version__}")
except ImportError:
    print("DALI not installed: pip install -e '.[dali]' to test and benchmark data.decode=dali")
PYTHON

export WANDB_MODE=disabled WANDB_SILENT=true
echo "== gpu tests"
"$PY" -m pytest -m gpu -v -p no:cacheprovider tests/

echo "== benchmarks"
"$PY" scripts/bench_gpu.py --out results/bench_gpu.md "$@"
echo "gpu_check: every gpu test passed; figures in results/bench_gpu.md (commit them)"
