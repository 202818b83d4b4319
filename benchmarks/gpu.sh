#!/usr/bin/env bash
# GPU benchmark, one short run on a GPU machine (docs/performance.md, "GPU").
# It installs nothing from the network: the device image has PyTorch, torchvision, pyarrow,
# Pillow, PyYAML and tqdm; pydantic (this package's config schema) travels as wheels in .whl/,
# fetched here beforehand with benchmarks/gpu_wheels.sh. Run from the repository root:
#   device run: bash benchmarks/gpu.sh        (carry: .whl)
set -euo pipefail
cd "$(dirname "$0")/.."
has_pydantic2() { python3 -c "import pydantic, sys; sys.exit(pydantic.VERSION[0] != '2')" 2>/dev/null; }
# Only where pydantic 2 is missing: the wheels are for the device's Python 3.12.
if ! has_pydantic2 && [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
has_pydantic2 || {
  echo "pydantic 2 is missing: run benchmarks/gpu_wheels.sh here and carry .whl" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu.py --device "${DEVICE:-cuda}" "$@"
