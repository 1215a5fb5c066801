import functools, json, sys, time
import jax, jax.numpy as jnp, numpy as np
import pathlib; ROOT = pathlib.Path(__file__).resolve().parents[3]; sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(pathlib.Path(__file__).parent))
from slab import t
M, K, N, E = 8192, 1024, 1024, 128
R = M // E
x = jax.random.normal(jax.random.PRNGKey(0), (M, N)); w = jax.random.normal(jax.random.PRNGKey(1), (E, K, N))
ob = jax.lax.optimization_barrier
def loop(kind):
    def f(dy, w):
        def body(e, out):
            xs = jax.lax.dynamic_slice_in_dim(dy, e * R, R)
            we = jax.lax.dynamic_index_in_dim(w, e, keepdims=False)
            if kind == "eigen": y = xs @ we.T
            elif kind == "tcopy": y = xs @ ob(we.T)
            elif kind == "swap": y = ob(we @ ob(xs.T)).T
            elif kind == "swap2": y = (we @ ob(xs.T)).T
            return jax.lax.dynamic_update_slice_in_dim(out, y, e * R, 0)
        ww = ob(jnp.swapaxes(w, 1, 2)) if kind == "alltrans" else w
        return jax.lax.fori_loop(0, E, body, jnp.zeros((M, K), jnp.float32)) if kind != "alltrans" else jax.lax.fori_loop(0, E, body, jnp.zeros((M, K), jnp.float32)) 
    return f
def alltrans(dy, w):
    wt = ob(jnp.swapaxes(w, 1, 2))
    def body(e, out):
        xs = jax.lax.dynamic_slice_in_dim(dy, e * R, R)
        return jax.lax.dynamic_update_slice_in_dim(out, xs @ jax.lax.dynamic_index_in_dim(wt, e, keepdims=False), e * R, 0)
    return jax.lax.fori_loop(0, E, body, jnp.zeros((M, K), jnp.float32))
fns = {"dense": jax.jit(lambda dy, w: dy @ w[0].T), "dense_ynn": jax.jit(lambda dy, w: dy @ ob(w[0].T)),
       "eigen": jax.jit(loop("eigen")), "swap": jax.jit(loop("swap")), "swap2": jax.jit(loop("swap2"))}
res = {}
for rep in range(3):
    for n, f in fns.items(): res.setdefault(n, []).append(t(f, x, w))
d = min(res["dense"])
print({n: (round(d / min(v), 3), round(min(v) * 1e3, 1)) for n, v in res.items()})
for n, f in fns.items(): print(n, f.lower(x, w).compile().as_text().count("__ynn"))
