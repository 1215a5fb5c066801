"""What every benchmark line records about where it ran (imports JAX only when called, so
scripts that set XLA_FLAGS first can import this at the top)."""

from __future__ import annotations

import datetime
import os


def run_environment() -> dict:
    """Backend, device kind, JAX version, date, the 1-minute load average (a shared machine's
    load explains noisy figures), GLIBC_TUNABLES and LD_PRELOAD (huge pages for malloc, or
    tcmalloc, change CPU timings of large fresh buffers; benchmarks/RESULTS.md), and XLA_FLAGS
    (which choose ragged_dot's GPU lowering)."""
    import jax

    return {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "jax": jax.__version__, "date": datetime.date.today().isoformat(),
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
            "ld_preload": os.environ.get("LD_PRELOAD", ""),
            # how XLA lowers ragged_dot (the "xla" and "cudnn" contenders) depends on these
            "xla_flags": os.environ.get("XLA_FLAGS", "")}
