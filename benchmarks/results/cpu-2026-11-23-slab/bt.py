import os, time, json, sys
import jax, jax.numpy as jnp
M, K, N, E = 8192, 1024, 512, 128
R = M // E
key = jax.random.PRNGKey(0)
x = jax.random.normal(key, (M, K), jnp.float32)
g = jax.random.normal(key, (M, N), jnp.float32)
def t(f, *a, reps=7):
    jax.block_until_ready(f(*a)); best = 1e9
    for _ in range(reps):
        s = time.perf_counter(); jax.block_until_ready(f(*a)); best = min(best, time.perf_counter() - s)
    return best
ob = jax.lax.optimization_barrier
fs = {
 "dense_t": lambda x, g: x.T @ g,
 "dense_t_ynn": lambda x, g: ob(x.T) @ g,
 "bein_ynn": lambda x, g: jnp.einsum("ekr,ern->ekn", ob(jnp.swapaxes(x.reshape(E, R, K), 1, 2)), g.reshape(E, R, N)),
}
for name, f in fs.items():
    f = jax.jit(f)
    hlo = f.lower(x, g).compile().as_text()
    print(json.dumps(dict(name=name, ynn=hlo.count("__ynn_fusion"), ms=round(t(f, x, g)*1e3, 1))))
