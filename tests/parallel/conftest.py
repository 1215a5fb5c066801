import gin
import pytest


@pytest.fixture(autouse=True)
def _clear_gin():
    """Tests here parse gin (mesh files, rule overrides); none may leak into the next test."""
    yield
    gin.clear_config()
