"""Multi-host pieces: environment detection, each process's rows, global batches."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from moejax.errors import ConfigError
from moejax.parallel import distributed
from moejax.parallel.mesh import MeshConfig, make_mesh
from moejax.parallel.rules import sharding_rules
from moejax.parallel.sharding import batch_sharding, put_batch


def test_one_process_environment_initialises_nothing():
    assert distributed.distributed_settings({}) is None
    assert distributed.distributed_settings({"TPU_WORKER_HOSTNAMES": "t1k-0"}) is None
    assert distributed.maybe_initialize_distributed({}) is False
    assert distributed.is_primary()


def test_multi_host_tpu_vm_and_explicit_coordinator_are_detected():
    assert distributed.distributed_settings({"TPU_WORKER_HOSTNAMES": "w-0,w-1,w-2,w-3"}) == {}
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "MOEJAX_NUM_PROCESSES": "4",
           "MOEJAX_PROCESS_ID": "2"}
    assert distributed.distributed_settings(env) == {
        "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2}
    with pytest.raises(ConfigError, match="MOEJAX_PROCESS_ID is not"):
        distributed.distributed_settings({"JAX_COORDINATOR_ADDRESS": "h:1",
                                          "MOEJAX_NUM_PROCESSES": "2"})
    with pytest.raises(ConfigError, match="must be in \\[0, MOEJAX_NUM_PROCESSES = 2\\)"):
        distributed.distributed_settings({**env, "MOEJAX_NUM_PROCESSES": "2"})


@pytest.mark.multidevice
def test_single_process_reads_every_row_and_builds_the_same_global_batch():
    mesh = make_mesh(MeshConfig(data=2, expert=4))
    sharding = batch_sharding(mesh, sharding_rules())
    assert distributed.process_batch_shard(sharding, (8, 4)) == (0, 1)
    rows = {"inputs": np.arange(32, dtype=np.int32).reshape(8, 4)}
    built = distributed.global_batch(rows, sharding, 8)["inputs"]
    placed = put_batch(rows, sharding)["inputs"]
    assert built.sharding == placed.sharding == sharding
    np.testing.assert_array_equal(built, placed)
    assert built.addressable_shards[0].data.shape == (1, 4)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_assemble_one_global_batch():
    """A real jax.distributed run on localhost: 2 processes x 4 CPU devices (about 5 s)."""
    if not hasattr(jax.config, "jax_cpu_collectives_implementation"):
        pytest.skip("this JAX has no multi-process CPU collectives (jax_cpu_collectives_implementation)")
    worker = os.path.join(os.path.dirname(__file__), "two_process_worker.py")
    port = str(_free_port())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.dirname(__file__)))] + sys.path)}
    procs = [subprocess.Popen([sys.executable, worker, port, str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=120)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("two-process run timed out")
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]
    assert "process 0 primary=True ok" in outputs[0]
    assert "process 1 primary=False ok" in outputs[1]
