"""Meshes from MeshConfig: -1 fills the rest, a wrong mesh fails before anything compiles."""

import time

import gin
import jax
import pytest

from moejax.errors import ConfigError
from moejax.ginconf import parse_gin
from moejax.parallel.mesh import MESH_AXES, MeshConfig, configured_mesh, make_mesh, resolve_mesh_shape


def test_minus_one_takes_the_rest():
    assert resolve_mesh_shape(MeshConfig(data=-1, expert=4), 8) == {
        "data": 2, "fsdp": 1, "expert": 4, "tensor": 1}
    assert resolve_mesh_shape(MeshConfig(data=1, fsdp=-1, expert=8), 16)["fsdp"] == 2
    assert resolve_mesh_shape(MeshConfig(), 1) == {"data": 1, "fsdp": 1, "expert": 1, "tensor": 1}


@pytest.mark.parametrize("config, count, words", [
    (MeshConfig(data=2, expert=2), 8, ["data=2", "expert=2", "4 devices", "there are 8"]),
    (MeshConfig(data=-1, expert=3), 8, ["expert=3", "multiple of 3", "there are 8"]),
    (MeshConfig(data=-1, fsdp=-1), 8, ["data, fsdp", "at most one"]),
    (MeshConfig(tensor=0), 8, ["MeshConfig.tensor = 0"]),
])
def test_wrong_mesh_names_axes_sizes_and_device_count(config, count, words):
    with pytest.raises(ConfigError) as error:
        resolve_mesh_shape(config, count)
    for word in words:
        assert word in str(error.value)


@pytest.mark.multidevice
def test_wrong_mesh_for_the_devices_fails_clearly_before_compiling():
    assert len(jax.devices()) == 8
    start = time.time()
    with pytest.raises(ConfigError, match=r"data=4 x fsdp=1 x expert=4 x tensor=1 has 16 devices"
                                          r" in all, but there are 8"):
        make_mesh(MeshConfig(data=4, expert=4))
    assert time.time() - start < 1.0


@pytest.mark.multidevice
def test_make_mesh_has_the_four_named_axes():
    mesh = make_mesh(MeshConfig(data=2, fsdp=1, expert=2, tensor=2))
    assert mesh.axis_names == MESH_AXES
    assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "expert": 2, "tensor": 2}
    assert make_mesh(MeshConfig(), devices=jax.devices()[:1]).size == 1


def test_gin_names_a_mesh_only_when_a_meshconfig_knob_is_bound():
    parse_gin(["smoke.gin"])
    assert configured_mesh() is None
    parse_gin(["smoke.gin", "mesh/cpu8_expert.gin"])
    assert configured_mesh() == MeshConfig(data=2, fsdp=1, expert=4, tensor=1)
    parse_gin(["smoke.gin"], ["MeshConfig.data = -1"])
    assert configured_mesh() == MeshConfig()
    gin.clear_config()
