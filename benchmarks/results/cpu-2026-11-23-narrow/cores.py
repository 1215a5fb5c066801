"""Scratch probe: time of a loop of E (R, k) x (k, n) dots (the cpu gmm, equal groups) against one
dense (M, k) x (k, n) dot; run under `taskset -c 0` and without it to see which use both cores."""
import sys, time, json, os
import numpy as np, jax, jax.numpy as jnp
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from moejax.kernels import gmm as mgmm
K, N, M = [int(v) for v in sys.argv[1:4]]
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((M, K), np.float32))
fns, args = {'dense': jax.jit(lambda x, w: x @ w[0])}, {}
ws = {}
for R in (64, 128, 256, 512, 1024, 2048):
    E = M // R
    w = jnp.asarray(rng.standard_normal((E, K, N), np.float32) / 30)
    sizes = jnp.full((E,), R, jnp.int32)
    fns[f'cpu_R{R}'] = jax.jit(lambda x, w, s=sizes: mgmm(x, w, s, impl='cpu'))
    ws[f'cpu_R{R}'] = w
ws['dense'] = ws['cpu_R2048']
for k, f in fns.items(): f(x, ws[k]).block_until_ready()
times = {k: [] for k in fns}
for rep in range(7):
    for k, f in fns.items():
        t = time.perf_counter(); f(x, ws[k]).block_until_ready(); times[k].append(time.perf_counter() - t)
med = {k: round(float(np.median(v)) * 1e3, 2) for k, v in times.items()}
print(json.dumps({'k': K, 'n': N, 'M': M, 'cpus': len(os.sched_getaffinity(0)), 'ms': med}))
