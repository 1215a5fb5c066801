"""Scratch probe: the expert FFN (gate/up gmm, SwiGLU, down gmm), forward + backward, for
equal groups: the cpu gmm on sorted rows, a batched einsum on a padded (E, R, d) layout, and the
FLOP-matched dense FFN. Usage: ffn.py TOKENS D F E K."""
import sys, time, json, os
import numpy as np, jax, jax.numpy as jnp
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from moejax.kernels import gmm
T, D, F, E, K = [int(v) for v in sys.argv[1:6]]
M, R = T * K, T * K // E
rng = np.random.default_rng(0)
f32 = lambda a: jnp.asarray(a, np.float32)
x = f32(rng.standard_normal((M, D))); xt = f32(rng.standard_normal((T, D)))
w1 = f32(rng.standard_normal((E, D, 2 * F)) / D ** .5); w2 = f32(rng.standard_normal((E, F, D)) / F ** .5)
W1 = f32(rng.standard_normal((D, 2 * F * K)) / D ** .5); W2 = f32(rng.standard_normal((F * K, D)) / (F * K) ** .5)
sizes = jnp.full((E,), R, jnp.int32)
def swiglu(h):
    g, u = jnp.split(h, 2, axis=-1); return jax.nn.silu(g) * u
def moe_cpu(x, w1, w2):
    return gmm(swiglu(gmm(x, w1, sizes, impl="cpu")), w2, sizes, impl="cpu")
def moe_batched(x, w1, w2):
    h = swiglu(jnp.einsum("erd,edf->erf", x.reshape(E, R, D), w1))
    return jnp.einsum("erf,efd->erd", h, w2).reshape(M, D)
def dense(x, w1, w2):
    return swiglu(x @ w1) @ w2
def fb(f):
    def run(x, a, b):
        out, vjp = jax.vjp(f, x, a, b)
        return (out, *vjp(jnp.ones_like(out)))
    return jax.jit(run)
fns = {"dense": (fb(dense), (xt, W1, W2)), "cpu": (fb(moe_cpu), (x, w1, w2)), "batched": (fb(moe_batched), (x, w1, w2))}
a = fns["cpu"][0](*fns["cpu"][1]); b = fns["batched"][0](*fns["batched"][1])
for u, v in zip(a, b): np.testing.assert_allclose(u, v, rtol=2e-3, atol=2e-3)
times = {k: [] for k in fns}
for rep in range(7):
    for k, (f, args) in fns.items():
        t = time.perf_counter(); jax.block_until_ready(f(*args)); times[k].append(time.perf_counter() - t)
med = {k: round(float(np.median(v)) * 1e3, 1) for k, v in times.items()}
print(json.dumps({"tokens": T, "D": D, "F": F, "E": E, "K": K, "ms": med,
                  "cpu_vs_dense": round(med["cpu"] / med["dense"], 2), "batched_vs_dense": round(med["batched"] / med["dense"], 2)}))
