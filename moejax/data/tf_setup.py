"""TensorFlow, imported quietly and kept off the accelerators.

In: the process environment. Out: the ``tf`` module, imported with its start-up log spam
hidden and with every GPU hidden from TensorFlow, so tf.data runs on the host CPU and never
reserves accelerator memory that JAX needs. Every module of ``moejax.data`` imports this one
before TensorFlow or seqio. Set ``MOEJAX_SHOW_TF_LOGS=1`` to see TensorFlow's start-up
messages (e.g. when TensorFlow itself fails to load).
"""

import contextlib
import logging
import os
import sys

# Must happen before the first `import tensorflow` in the process: "3" hides the C++ runtime's
# INFO/WARNING/ERROR lines (such as "failed call to cuInit" on machines without a GPU driver).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def _native_stderr_silenced():
    """Points file descriptor 2 at /dev/null inside the block.

    TensorFlow's C++ libraries print a few lines (oneDNN notice, missing CUDA driver) before
    their logging is initialised, ignoring TF_CPP_MIN_LOG_LEVEL; only redirecting the native
    stderr hides them. Python exceptions are unaffected: they are raised and printed after the
    block restores stderr.
    """
    if os.environ.get("MOEJAX_SHOW_TF_LOGS") == "1":
        yield
        return
    sys.stderr.flush()
    saved_fd = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved_fd, 2)
        os.close(saved_fd)


class _DropKnownNoise(logging.Filter):
    """Drops seqio's per-call warning about shuffling an uncached FunctionDataSource.

    Our function sources shuffle whole documents themselves with the data seed (see
    ``moejax.data.tasks``), so the advice does not apply and would repeat at every
    ``train_batches`` call.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "uncached FunctionDataset for training" not in str(record.msg)


with _native_stderr_silenced():
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        # TF's devices were initialised before we got here (someone used TF first); the
        # visible set can no longer change.
        pass

logging.getLogger("absl").addFilter(_DropKnownNoise())
