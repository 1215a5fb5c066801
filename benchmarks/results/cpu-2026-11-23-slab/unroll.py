import time, json
import jax, jax.numpy as jnp, numpy as np
M, K, N, E = 8192, 1024, 1024, 128
R = M // E
x = jax.random.normal(jax.random.PRNGKey(0), (M, K)); w = jax.random.normal(jax.random.PRNGKey(1), (E, K, N))
def t(f, *a, reps=5):
    jax.block_until_ready(f(*a)); ts = []
    for _ in range(reps):
        s = time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter() - s)
    return min(ts)
def loop(x, w):
    def body(e, out):
        xs = jax.lax.dynamic_slice_in_dim(x, e * R, R)
        return jax.lax.dynamic_update_slice_in_dim(out, xs @ jax.lax.dynamic_index_in_dim(w, e, keepdims=False), e * R, 0)
    return jax.lax.fori_loop(0, E, body, jnp.zeros((M, N)))
def unrolled(x, w):
    out = jnp.zeros((M, N))
    for e in range(E):
        start = jnp.int32(e * R) + (x[0, 0] > 1e30).astype(jnp.int32)  # dynamic rows, static weight
        xs = jax.lax.dynamic_slice_in_dim(x, start, R)
        out = jax.lax.dynamic_update_slice_in_dim(out, xs @ w[e], start, 0)
    return out
fns = {"dense": (jax.jit(lambda x, w: x @ w[0]), (x, w)), "loop": (jax.jit(loop), (x, w))}
s = time.perf_counter(); u = jax.jit(unrolled); c = u.lower(x, w).compile(); print("unrolled compile s", round(time.perf_counter() - s, 1))
fns["unrolled"] = (u, (x, w))
hlo = c.as_text(); print("copies of w slices:", hlo.count("f32[1024,1024]{1,0} fusion("), "ynn:", hlo.count("__ynn_fusion"))
res = {n: t(f, *a) for n, (f, a) in fns.items()}
print({n: (round(v * 1e3, 1), round(res["dense"] / v, 3)) for n, v in res.items()})
