"""Running the model on a device mesh: meshes from gin, logical-axis sharding, expert parallelism.

In: a ModelConfig/TrainConfig and the devices of this process (one CPU, a GPU, a TPU slice, or a
multi-host TPU VM). Out: a ``jax.sharding.Mesh`` with the named axes ``data``, ``fsdp``,
``expert`` and ``tensor``, shardings for parameters, optimizer state and batches, and the
expert-parallel MoE dispatch that moves tokens to the devices owning their experts.
"""
