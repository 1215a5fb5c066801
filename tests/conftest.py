import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Comparisons against loop references should not depend on reduced-precision matmul defaults.
jax.config.update("jax_default_matmul_precision", "highest")
