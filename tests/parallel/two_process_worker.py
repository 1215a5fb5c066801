"""One of two CPU processes joined with jax.distributed (run by test_distributed.py).

argv: coordinator port, process id. Each process has 4 CPU devices; together a data=8 mesh.
Every process reads its own rows of the global batch (process_batch_shard), the global array is
assembled with global_batch, and a jitted reduction over it must see all 8 rows.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from moejax.parallel import distributed  # noqa: E402
from moejax.parallel.mesh import MeshConfig, make_mesh  # noqa: E402
from moejax.parallel.rules import sharding_rules  # noqa: E402
from moejax.parallel.sharding import batch_sharding  # noqa: E402

port, process_id = sys.argv[1], int(sys.argv[2])
assert distributed.maybe_initialize_distributed({
    "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "MOEJAX_NUM_PROCESSES": "2",
    "MOEJAX_PROCESS_ID": str(process_id)})
assert jax.process_count() == 2 and len(jax.devices()) == 8
mesh = make_mesh(MeshConfig(data=-1))
sharding = batch_sharding(mesh, sharding_rules())
batch, seq = 8, 4
shard_index, num_shards = distributed.process_batch_shard(sharding, (batch, seq))
assert num_shards == 2 and shard_index == process_id, (shard_index, num_shards)
rows = np.arange(batch * seq, dtype=np.float32).reshape(batch, seq)
local = rows[shard_index * 4:(shard_index + 1) * 4]
arrays = distributed.global_batch({"x": local}, sharding, batch)
total = jax.jit(lambda x: jnp.sum(x * x), out_shardings=jax.sharding.NamedSharding(
    mesh, jax.sharding.PartitionSpec()))(arrays["x"])
assert float(total) == float(np.sum(rows * rows)), (float(total), float(np.sum(rows * rows)))
print(f"process {process_id} primary={distributed.is_primary()} ok")
