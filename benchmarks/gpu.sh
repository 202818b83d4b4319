#!/usr/bin/env bash
# GPU benchmark, one short run on a lent device machine (see issue 6 and docs/performance.md).
# It installs nothing from the network: the device image has PyTorch, torchvision, pyarrow,
# Pillow, PyYAML and tqdm; pydantic (this package's config schema) travels as wheels in .whl/,
# fetched here beforehand with benchmarks/gpu_wheels.sh. Run from the repository root:
#   device run: bash benchmarks/gpu.sh        (carry: .whl)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import pydantic" 2>/dev/null || {
  echo "pydantic is missing: run benchmarks/gpu_wheels.sh here and carry .whl" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu.py --device "${DEVICE:-cuda}" "$@"
