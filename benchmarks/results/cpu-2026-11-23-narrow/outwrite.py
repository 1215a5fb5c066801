"""Scratch probe: is the per-chunk output write what the narrow (k = 64) loop pays? 8 chunks of
2048 rows: dot + dynamic_update_slice (the cpu gmm's pattern), dot + row sum (no output), dense."""
import sys, time, json, os
import numpy as np, jax, jax.numpy as jnp
K, N, M, R = [int(v) for v in sys.argv[1:5]]
E = M // R
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((M, K), np.float32))
w = jnp.asarray(rng.standard_normal((E, K, N), np.float32) / 30)
def dus(x, w):
    def body(g, out):
        return jax.lax.dynamic_update_slice_in_dim(out, jax.lax.dynamic_slice_in_dim(x, g * R, R) @ w[g], g * R, 0)
    return jax.lax.fori_loop(0, E, body, jnp.zeros((M, N), jnp.float32))
def nosave(x, w):
    def body(g, acc):
        return acc + (jax.lax.dynamic_slice_in_dim(x, g * R, R) @ w[g])[::64].sum(0)
    return jax.lax.fori_loop(0, E, body, jnp.zeros((N,), jnp.float32))
def dense_chunks(x, w):  # same weights for every chunk (no weight copy), still DUS
    def body(g, out):
        return jax.lax.dynamic_update_slice_in_dim(out, jax.lax.dynamic_slice_in_dim(x, g * R, R) @ w[0], g * R, 0)
    return jax.lax.fori_loop(0, E, body, jnp.zeros((M, N), jnp.float32))
fns = {'dense': jax.jit(lambda x, w: x @ w[0]), 'dense_sum': jax.jit(lambda x, w: (x @ w[0])[::64].sum(0)),
       'dus': jax.jit(dus), 'nosave': jax.jit(nosave), 'dense_chunks': jax.jit(dense_chunks)}
for f in fns.values(): f(x, w).block_until_ready()
times = {k: [] for k in fns}
for rep in range(9):
    for k, f in fns.items():
        t = time.perf_counter(); f(x, w).block_until_ready(); times[k].append(time.perf_counter() - t)
print(json.dumps({'k': K, 'n': N, 'M': M, 'R': R, 'cpus': len(os.sched_getaffinity(0)), 'ms': {k: round(float(np.median(v)) * 1e3, 2) for k, v in times.items()}}))
