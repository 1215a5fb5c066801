"""Preload tcmalloc into the training processes a sweep starts, where the machine has it.

In: the sweep's environment. Out: the environment for its ``moejax train`` processes, and one
line saying what was chosen. Why: XLA:CPU allocates its large buffers (activations, the
(E, k, n) expert weight gradients) afresh at every step; glibc maps each one from the kernel,
so every 4 KB page faults on first touch, every step. tcmalloc keeps freed pages and hands them
out again. On 2 cores it made training steps 18-31 % faster, MoE and dense alike
(benchmarks/RESULTS.md). It cannot be loaded after a process starts, hence ``LD_PRELOAD`` for
the child processes; the sweep process itself only prepares runs and scores them.

``MOEJAX_TCMALLOC``: unset or ``auto`` preloads the first library found in ``SEARCH_DIRS``;
``0``/``off`` preloads nothing; a path preloads that file (an error if it is missing).
An ``LD_PRELOAD`` that already names an allocator is left alone. For one ``moejax train``
started by hand: ``LD_PRELOAD=$(python -m moejax.sweep.allocator) moejax train ...``.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping

from moejax.errors import ConfigError

LIBRARIES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
SEARCH_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
               "/usr/lib", "/usr/local/lib")
_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")  # names that mean "already chosen"
_OFF = ("0", "off", "false", "no")


def find_tcmalloc(search_dirs=SEARCH_DIRS) -> str | None:
    """The first tcmalloc library in search_dirs, or None."""
    for directory in search_dirs:
        for name in LIBRARIES:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                return path
    return None


def training_environment(environ: Mapping[str, str] = os.environ, search_dirs=SEARCH_DIRS
                         ) -> tuple[dict[str, str], str]:
    """(environment for a training process, one line describing the allocator chosen)."""
    env = dict(environ)
    preload = env.get("LD_PRELOAD", "")
    if any(name in preload for name in _ALLOCATORS):
        return env, f"allocator: LD_PRELOAD already set ({preload}), left as is"
    setting = env.get("MOEJAX_TCMALLOC", "auto").strip()
    if setting.lower() in _OFF:
        return env, "allocator: glibc malloc (MOEJAX_TCMALLOC=0)"
    if setting.lower() == "auto":
        path = find_tcmalloc(search_dirs)
        if path is None:
            return env, ("allocator: glibc malloc; CPU training steps run ~20% faster with "
                         "tcmalloc (Debian/Ubuntu: apt install libtcmalloc-minimal4)")
    else:
        path = setting
        if not os.path.isfile(path):
            raise ConfigError(f"MOEJAX_TCMALLOC={setting!r}: no such file (give a path to "
                              f"libtcmalloc, 'auto', or 0 for glibc malloc)")
    env["LD_PRELOAD"] = f"{path}:{preload}" if preload else path
    return env, f"allocator: tcmalloc preloaded ({path}; MOEJAX_TCMALLOC=0 turns it off)"


if __name__ == "__main__":  # print the library to preload, or nothing
    try:
        chosen, _ = training_environment()
    except ConfigError as e:
        print(f"moejax.sweep.allocator: error: {e}", file=sys.stderr)
        raise SystemExit(2)
    print(chosen.get("LD_PRELOAD", ""))
