import os, sys, time, json
import jax, jax.numpy as jnp
M, K, N, E = 8192, 1024, 512, 128
R = M // E
key = jax.random.PRNGKey(0)
x = jax.random.normal(key, (M, K), jnp.float32)
w = jax.random.normal(key, (E, K, N), jnp.float32) * 0.03
w0 = w[0]
dense = jax.jit(lambda x, w: x @ w)
def grouped(x, w):
    def body(g, out):
        xs = jax.lax.dynamic_slice_in_dim(x, g * R, R)
        y = xs @ jax.lax.dynamic_index_in_dim(w, g, keepdims=False)
        return jax.lax.dynamic_update_slice_in_dim(out, y, g * R, 0)
    return jax.lax.fori_loop(0, E, body, jnp.zeros((M, N), jnp.float32))
grouped = jax.jit(grouped)
bmm = jax.jit(lambda x, w: jnp.einsum("erk,ekn->ern", x.reshape(E, R, K), w).reshape(M, N))
def t(f, *a, reps=7):
    jax.block_until_ready(f(*a)); best = 1e9
    for _ in range(reps):
        s = time.perf_counter(); jax.block_until_ready(f(*a)); best = min(best, time.perf_counter() - s)
    return best
td = t(dense, x, w0); tg = t(grouped, x, w); tb = t(bmm, x, w)
print(json.dumps(dict(flags=os.environ.get("XLA_FLAGS", ""), dense_ms=td*1e3, grouped_ms=tg*1e3, bmm_ms=tb*1e3,
                      g_ratio=td/tg, b_ratio=td/tb, gflops=2*M*K*N/td/1e9)))
g = jax.random.normal(key, (M, N), jnp.float32)
dense_t = jax.jit(lambda x, g: x.T @ g)
def tg(x, g):
    def body(e, out):
        xs = jax.lax.dynamic_slice_in_dim(x, e * R, R); gs = jax.lax.dynamic_slice_in_dim(g, e * R, R)
        return jax.lax.dynamic_update_index_in_dim(out, (xs.T @ gs)[None], e, 0)
    return jax.lax.fori_loop(0, E, body, jnp.zeros((E, K, N), jnp.float32))
tg = jax.jit(tg)
tdt = t(dense_t, x, g); ttg = t(tg, x, g)
print(json.dumps(dict(flags=os.environ.get("XLA_FLAGS", ""), dense_t_ms=tdt*1e3, tgmm_ms=ttg*1e3, t_ratio=tdt/ttg)))
