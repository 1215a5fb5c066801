#!/usr/bin/env bash
# Wheels for `gpu_session.sh rivals`: tokamax (MaxText's GPU/TPU grouped matmul) and what it
# needs beyond the GPU machine's image (JAX, flax's own needs, absl, jaxtyping, chex and tqdm are
# there). Run here before a GPU session, then carry ".whl" in the device tool's run:
#   bash benchmarks/rival_wheels.sh          # -> .whl/rivals/*.whl (Python 3.12, x86-64 Linux)
#   PY=3.11 DEST=/tmp/rw bash benchmarks/rival_wheels.sh   # for this machine's Python instead
# Pinned, so a GPU session measures the versions named in benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${DEST:-.whl/rivals}
mkdir -p "$DEST"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PY:-3.12}" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DEST" \
  tokamax==0.0.12 qwix==0.1.8 flax==0.12.8 einshape==1.0 typeguard==2.13.3 \
  immutabledict==4.3.1 pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.7.0 \
  typing-inspection==0.4.5 typing-extensions==4.16.0 tensorboardx==2.6.4 \
  2> >(grep -v 'is ignored: it is neither' >&2)
ls "$DEST"
