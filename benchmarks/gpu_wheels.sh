#!/usr/bin/env bash
# Fetch, on this machine, the wheels that benchmarks/gpu.sh needs on the device machine
# (Python 3.12, x86-64, no network there) into .whl/, which git ignores.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl pydantic==2.14.4 pydantic_core==2.50.5 annotated-types typing-inspection
