"""Scratch probe (RESULTS.md, sixth CPU session): forward of E equal groups through n-panels of
the weights, against the cpu gmm, a batched einsum and dense. Usage: panel.py M K N E."""
import sys, time, json, functools
import numpy as np, jax, jax.numpy as jnp
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from moejax.kernels import gmm as mgmm
M, K, N, E = [int(v) for v in sys.argv[1:5]]
R = M // E
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((M, K), np.float32))
w = jnp.asarray(rng.standard_normal((E, K, N), np.float32) / 30)
wd = w[0]
sizes = jnp.full((E,), R, jnp.int32)

def panel(x, w, tn):
    P = N // tn
    def body(i, out):
        g, j = i // P, i % P
        xr = jax.lax.dynamic_slice_in_dim(x, g * R, R)
        wp = jax.lax.dynamic_slice(w, (g, 0, j * tn), (1, K, tn))[0]
        y = xr @ wp
        return jax.lax.dynamic_update_slice(out, y, (g * R, j * tn))
    return jax.lax.fori_loop(0, E * P, body, jnp.zeros((M, N), jnp.float32))

def panel_lay(x, w, tn):
    # weights pre-laid (E, P, K, tn): contiguous panels
    P = N // tn
    wl = w.reshape(E, K, P, tn).transpose(0, 2, 1, 3)
    def body(i, out):
        g, j = i // P, i % P
        xr = jax.lax.dynamic_slice_in_dim(x, g * R, R)
        wp = wl[g, j]
        y = xr @ wp
        return jax.lax.dynamic_update_slice(out, y, (g * R, j * tn))
    return jax.lax.fori_loop(0, E * P, body, jnp.zeros((M, N), jnp.float32))

fns = {
  'dense': jax.jit(lambda x, w: x @ wd),
  'cpu': jax.jit(lambda x, w: mgmm(x, w, sizes, impl='cpu')),
  'batched': jax.jit(lambda x, w: jnp.einsum('erk,ekn->ern', x.reshape(E, R, K), w).reshape(M, N)),
}
for tn in (64, 128, 256):
    if N % tn == 0 and tn < N:
        fns[f'panel{tn}'] = jax.jit(functools.partial(panel, tn=tn))
        fns[f'lay{tn}'] = jax.jit(functools.partial(panel_lay, tn=tn))
ref = fns['cpu'](x, w)
for k, f in fns.items():
    out = f(x, w).block_until_ready()
    if k not in ('dense',):
        np.testing.assert_allclose(out, ref, rtol=2e-3, atol=2e-3)
times = {k: [] for k in fns}
for rep in range(7):
    for k, f in fns.items():
        t = time.perf_counter(); f(x, w).block_until_ready(); times[k].append(time.perf_counter() - t)
med = {k: float(np.median(v)) for k, v in times.items()}
print(json.dumps({'shape': [M, K, N, E], **{k: round(med['dense'] / v, 3) for k, v in med.items()}, 'dense_ms': round(med['dense']*1e3, 1)}))
