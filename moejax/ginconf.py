"""Parsing gin files and bindings with errors a researcher can act on.

In: gin file paths and binding strings (t5x flag style). Out: gin's global config set, or a
``GinConfigError`` that names the file, the offending binding and, for a misspelt knob, the closest
known names. Search paths: the directory of each file and the repository's ``configs/`` folder, so
``include 'base.gin'`` and ``--gin_file=smoke.gin`` both work from anywhere.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import logging
import os
import re
from typing import Sequence

import gin

REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


class GinConfigError(ValueError):
    """A gin file or binding could not be applied; the message names it."""


def register_configurables() -> None:
    """Import every module that defines gin configurables, so bindings can name them."""
    import moejax.data  # noqa: F401  (DataConfig and the task registrations)
    import moejax.kernels.autotune  # noqa: F401  (gmm_tuning)
    import moejax.kernels.tiling  # noqa: F401  (cpu_/pallas_tpu_/pallas_gpu_/mosaic_gpu_tiling)
    import moejax.model.config  # noqa: F401
    import moejax.model.granularity  # noqa: F401  (fine_grained_moe, width_tied_moe)
    import moejax.parallel.mesh  # noqa: F401  (MeshConfig)
    import moejax.parallel.rules  # noqa: F401  (sharding_rules)
    import moejax.sweep.constraints  # noqa: F401  (the constraint library)
    import moejax.sweep.grid  # noqa: F401  (Grid, top_k_at_most_experts)
    import moejax.train.config  # noqa: F401


def _suggest(message: str) -> str:
    """For 'no parameter named X' / 'no configurable matching X', list the closest known names."""
    param = re.search(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'", message)
    if param:
        name, wrong = param.groups()
        try:
            fn = gin.config._REGISTRY.get_match(name).wrapped  # noqa: SLF001
            known = [p for p in inspect.signature(fn).parameters if p != "self"]
        except Exception:  # gin internals differ between versions: no suggestion then
            return ""
        close = difflib.get_close_matches(wrong, known, n=3)
        return (f" Did you mean {', '.join(name + '.' + c for c in close)}?" if close
                else f" Known parameters of {name}: {', '.join(known)}.")
    configurable = re.search(r"No configurable matching '([\w.]+)'", message)
    if configurable:
        try:
            known = sorted({k.split(".")[-1] for k, _ in gin.config._REGISTRY.items()})  # noqa: SLF001
        except Exception:
            return ""
        close = difflib.get_close_matches(configurable.group(1).split(".")[-1], known, n=3)
        return f" Did you mean {', '.join(close)}?" if close else ""
    return ""


def find_gin_file(path: str) -> str:
    """Resolve a gin file given as a path or as a name under the repository's configs/."""
    for candidate in (path, os.path.join(REPO_CONFIGS, path)):
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise GinConfigError(f"gin file {path!r} not found (looked in the working directory and "
                         f"{REPO_CONFIGS})")


class _DropGinSearchMisses(logging.Filter):
    """gin logs an ERROR for every search path that lacks an included file, even when a later
    search path has it; a file that is really missing still raises, with all paths tried."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Path not found")


@contextlib.contextmanager
def _quiet_gin_search():
    root = logging.getLogger()
    quiet = _DropGinSearchMisses()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def parse_gin(files: Sequence[str] = (), bindings: Sequence[str] = ()) -> None:
    """Clear gin, register moejax's configurables, then apply files and bindings in order."""
    register_configurables()
    gin.clear_config()
    resolved = [find_gin_file(f) for f in files]
    for path in [REPO_CONFIGS] + [os.path.dirname(p) for p in resolved]:
        if path not in gin.config._LOCATION_PREFIXES:  # noqa: SLF001 (gin only ever appends)
            gin.add_config_file_search_path(path)
    for path in resolved:
        try:
            with _quiet_gin_search():
                gin.parse_config_file(path)
        except Exception as e:
            raise GinConfigError(f"in gin file {path}: {e}{_suggest(str(e))}") from None
    for binding in bindings:
        try:
            gin.parse_config(binding)
        except Exception as e:
            raise GinConfigError(f"in --gin_bindings {binding!r}: {e}{_suggest(str(e))}") from None
