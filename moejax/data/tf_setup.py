"""TensorFlow, imported quietly and kept off the accelerators.

In: nothing but the process environment. Out: the ``tf`` module, imported after
``TF_CPP_MIN_LOG_LEVEL`` is set (so its C++ start-up log spam stays hidden) and with every
GPU hidden from TensorFlow, so tf.data runs on the host CPU and never reserves accelerator
memory that JAX needs. Every module of ``moejax.data`` imports TensorFlow (and seqio, which
imports TensorFlow) only after importing this one.
"""

import os

# Must happen before the first `import tensorflow` anywhere in the process; "2" hides INFO and
# WARNING lines from the C++ runtime but keeps errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402


def hide_accelerators_from_tensorflow() -> None:
    """Makes TensorFlow see no GPU; a no-op once TF's devices are already initialised."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        # Devices were initialised earlier in this process (someone used TF before us); the
        # visible set can no longer change, and there is nothing better to do than go on.
        pass


hide_accelerators_from_tensorflow()
