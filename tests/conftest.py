import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The multi-device tests run on a fake 8-device CPU mesh; the flag must be set before JAX starts.
# Single-device code still runs on device 0.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_force_host_platform_device_count=8").strip()


import gin  # noqa: E402  (after the environment above)
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _clear_gin():
    """Tests parse gin files and bindings; none may leak into the next test."""
    yield
    gin.clear_config()
