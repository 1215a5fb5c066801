"""Expert parallelism on the fake 8-device CPU mesh, against the single-device dropless layer.

The count and offset math is checked against a numpy simulation of every device (a loop that fills
each receiver's buffer sender by sender). The layer is checked end to end: outputs and gradients
(w.r.t. x, expert weights and router) equal the single-device layer's within float32 tolerance
(ATOL, RTOL below) when nothing overflows; with a small ep_buffer_factor the drops are counted and
the kept rows still match. XLA:CPU cannot run ``ragged_all_to_all``: the ragged exchange is
lowered (its HLO checked) and run with a numpy-faithful emulation of the collective built from
all_gather.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from moejax.errors import ConfigError
from moejax.model import dispatch
from moejax.model.config import MoEConfig, validate_moe_config
from moejax.model.experts import swiglu_experts
from moejax.model.moe import MoEFeedForward, dispatch_path
from moejax.parallel import expert_parallel as ep

D, F = 8, 6
RTOL, ATOL = 1e-5, 1e-5  # float32; atol relative to the largest reference entry


def assert_close(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL * scale)


def mesh_of(shape, names):
    # Auto axes (GSPMD): the model code outside the shard_map has no explicit-sharding annotations.
    return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


# --- numpy references of the count and offset math -------------------------------------------

def numpy_plan(counts_SE, receive_rows, rows_per_peer=None):
    """Every receiver fills its buffer sender by sender, each chunk in (expert, row) order."""
    S, E = counts_SE.shape
    G = E // S
    kept_SSG = np.zeros((S, S, G), int)
    out_offsets = np.zeros((S, S), int)
    for j in range(S):
        filled = 0
        for i in range(S):
            out_offsets[i, j] = filled if rows_per_peer is None else i * rows_per_peer
            chunk = [g for g in range(G) for _ in range(counts_SE[i, j * G + g])]
            budget = receive_rows - filled if rows_per_peer is None else rows_per_peer
            for g in chunk[:max(budget, 0)]:
                kept_SSG[i, j, g] += 1
            filled += min(len(chunk), max(budget, 0))
    requested = counts_SE.reshape(S, S, G).sum(-1)
    in_offsets = np.cumsum(requested, axis=1) - requested
    return kept_SSG, in_offsets, out_offsets


def numpy_receive_layout(kept_SG, offsets_S, receive_rows):
    G = kept_SG.shape[1]
    expert_R = np.full(receive_rows, G)
    for i, offset in enumerate(offsets_S):
        row = offset
        for g in range(G):
            expert_R[row:row + kept_SG[i, g]] = g
            row += kept_SG[i, g]
    return expert_R


@pytest.mark.parametrize("S,E,receive_rows,rows_per_peer", [
    (4, 8, 1000, None), (4, 8, 20, None), (4, 8, 0, None), (2, 2, 7, None),
    (4, 8, 40, 10), (8, 8, 24, 3), (4, 4, 4, 1)])
def test_plan_and_receive_layout_match_numpy(S, E, receive_rows, rows_per_peer):
    rng = np.random.default_rng(S * 100 + receive_rows)
    counts_SE = rng.integers(0, 6, size=(S, E))
    counts_SE[0, :] = 0  # an idle sender
    plan = ep.plan_exchange(jnp.asarray(counts_SE), receive_rows=receive_rows,
                            rows_per_peer=rows_per_peer)
    kept_SSG, in_offsets, out_offsets = numpy_plan(counts_SE, receive_rows, rows_per_peer)
    np.testing.assert_array_equal(plan.kept_SSG, kept_SSG)
    np.testing.assert_array_equal(plan.kept_SS, kept_SSG.sum(-1))
    np.testing.assert_array_equal(plan.requested_SS, counts_SE.reshape(S, S, -1).sum(-1))
    np.testing.assert_array_equal(plan.input_offsets_SS, in_offsets)
    np.testing.assert_array_equal(plan.output_offsets_SS, out_offsets)
    assert np.all(np.asarray(plan.output_offsets_SS) <= receive_rows)
    for j in range(S):
        expert_R, sizes_G = ep.receive_layout(plan.kept_SSG[:, j], plan.output_offsets_SS[:, j],
                                              receive_rows)
        np.testing.assert_array_equal(
            expert_R, numpy_receive_layout(kept_SSG[:, j], out_offsets[:, j], receive_rows))
        np.testing.assert_array_equal(sizes_G, kept_SSG[:, j].sum(0))


def test_buffer_rows_worst_case_and_rounding():
    # T=16, K=2, G=1: one shard can receive at most 16*1 rows from each of 8 senders
    assert ep.buffer_rows(16, 2, 8, 1, None, per_peer=True) == 16
    assert ep.buffer_rows(16, 2, 8, 1, None, per_peer=False) == 128
    # G=4 >= K: every choice of every token may land on one shard
    assert ep.buffer_rows(16, 2, 2, 4, None, per_peer=False) == 64
    assert ep.buffer_rows(16, 2, 8, 1, 1.0, per_peer=False) == 32  # balanced load T*K
    assert ep.buffer_rows(16, 2, 8, 1, 1.0, per_peer=True) == 8  # 32/8 = 4, one tile
    assert ep.buffer_rows(16, 2, 8, 1, 100.0, per_peer=True) == 16  # never above the worst case


def test_bad_configs_name_the_knob():
    with pytest.raises(ConfigError, match="MoEConfig.ep_buffer_factor"):
        validate_moe_config(MoEConfig(ep_buffer_factor=0))
    with pytest.raises(ConfigError, match="MoEConfig.ep_buffer_factor"):
        validate_moe_config(MoEConfig(ep_buffer_factor=-1.5))
    with pytest.raises(ConfigError, match="MoEConfig.ep_exchange"):
        validate_moe_config(MoEConfig(ep_exchange="nccl"))
    with pytest.raises(ConfigError, match="MoEConfig.num_experts = 6.*'expert' = 4"):
        ep.validate_expert_parallel(6, 4, None)
    with pytest.raises(ConfigError, match="MoEConfig.ep_buffer_factor"):
        ep.validate_expert_parallel(8, 4, 0.0)
    assert ep.validate_expert_parallel(8, 4, 0.5) == 2
    assert ep.resolve_exchange("auto") == "dense"  # the tests run on CPU


def test_layer_with_indivisible_experts_fails_before_compiling():
    layer = MoEFeedForward(D, MoEConfig(num_experts=6, top_k=2, d_expert=F), n_layers=2,
                           init_std=0.5, rngs=nnx.Rngs(0))
    x = jnp.ones((8, 2, D))
    with jax.set_mesh(mesh_of((2, 4), ("data", "expert"))):
        with pytest.raises(ConfigError, match="MoEConfig.num_experts"):
            jax.jit(lambda x: layer(x, jnp.ones(x.shape[:2]))).lower(x)


# --- the layer: expert parallel vs single device ----------------------------------------------

def build_layer(moe, seed=0):
    layer = MoEFeedForward(D, moe, n_layers=2, init_std=0.5, rngs=nnx.Rngs(seed))
    return nnx.split(layer)


def layer_loss(graphdef, state, x_BTD, cotangent_BTD):
    y, stats = nnx.merge(graphdef, state)(x_BTD, jnp.ones(x_BTD.shape[:2]), train=False)
    return jnp.sum(y * cotangent_BTD), (y, stats)


def shard_layer_inputs(mesh, state, x_BTD, cotangent_BTD):
    """Expert weights split over 'expert' on E, everything else replicated; tokens split."""
    def place(path, leaf):
        is_expert = any(getattr(k, "key", None) in ("w_in_EDF2", "w_out_EFD") for k in path)
        return jax.device_put(leaf, NamedSharding(mesh, P("expert") if is_expert else P()))

    tokens = NamedSharding(mesh, P(ep.token_axes(mesh)))
    return (jax.tree_util.tree_map_with_path(place, state), jax.device_put(x_BTD, tokens),
            jax.device_put(cotangent_BTD, tokens))


def run_layer(moe, mesh, *, batch=8, seq=8, seed=0, single=True, repeats=1):
    """(single-device (y, stats, grads) or None, [expert-parallel (y, stats, grads)] * repeats,
    the sharded layer state)."""
    graphdef, state = build_layer(moe, seed)
    x = jax.random.normal(jax.random.key(seed + 1), (batch, seq, D))
    cot = jax.random.normal(jax.random.key(seed + 2), (batch, seq, D))
    step = jax.jit(jax.value_and_grad(functools.partial(layer_loss, graphdef), argnums=(0, 1),
                                      has_aux=True))

    def flat(result):
        (_, (y, stats)), grads = result
        return y, stats, grads

    reference = flat(step(state, x, cot)) if single else None
    with jax.set_mesh(mesh):
        sharded = shard_layer_inputs(mesh, state, x, cot)
        runs = [flat(step(*sharded)) for _ in range(repeats)]
    return reference, runs, sharded[0]


def leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


@pytest.mark.parametrize("shape,names", [((2, 4), ("data", "expert")), ((8,), ("expert",)),
                                         ((4, 2, 1), ("data", "fsdp", "expert"))])
def test_layer_matches_single_device(shape, names):
    moe = MoEConfig(num_experts=8, top_k=2, d_expert=F)
    single, (parallel,), state = run_layer(moe, mesh_of(shape, names))
    (y, stats, grads), (y_ep, stats_ep, grads_ep) = single, parallel
    assert_close(y_ep, y)
    for g_ep, g in zip(leaves(grads_ep), leaves(grads)):  # x, expert weights, router
        assert_close(g_ep, g)
    assert float(stats_ep.dropped_fraction) == 0.0
    np.testing.assert_array_equal(stats_ep.tokens_per_expert_E, stats.tokens_per_expert_E)
    # each device holds E/EP experts
    w_in = state["groups"][0]["experts"]["w_in_EDF2"][...]
    ep_size = dict(zip(names, shape))["expert"]
    assert {s.data.shape for s in w_in.addressable_shards} == {(8 // ep_size, D, 2 * F)}


def test_dispatch_path_follows_the_mesh():
    assert dispatch_path(None) == "dropless"
    assert dispatch_path(1.0) == "capacity"
    with jax.set_mesh(mesh_of((8,), ("data",))):
        assert dispatch_path(None) == "dropless_data_parallel"
    with jax.set_mesh(mesh_of((1, 8), ("data", "tensor"))):
        assert dispatch_path(None) == "dropless"  # tokens not split: nothing to do per shard
    with jax.set_mesh(mesh_of((2, 4), ("data", "expert"))):
        assert dispatch_path(None) == "dropless_expert_parallel"
        assert dispatch_path(2.0) == "capacity"


@pytest.mark.slow
def test_heterogeneous_groups_with_shared_expert_match_single_device():
    moe = MoEConfig(expert_groups=((4, 6, 2), (8, 3, 3)), num_shared_experts=1)
    single, (parallel,), _ = run_layer(moe, mesh_of((2, 4), ("data", "expert")), seed=3)
    assert_close(parallel[0], single[0])
    for g_ep, g in zip(leaves(parallel[2]), leaves(single[2])):
        assert_close(g_ep, g)


@pytest.mark.slow
@pytest.mark.parametrize("remat", ["none", "block"])
def test_transformer_loss_and_grads_match_single_device(remat):
    """The whole model (attention, two MoE blocks) under a (data=2, expert=4) mesh, its blocks
    rematerialised or not, against the single-device model without rematerialisation."""
    import dataclasses

    from moejax.model import ModelConfig, build_model

    config = ModelConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, d_ff=32,
                         moe=MoEConfig(num_experts=8, top_k=2, d_expert=8))
    model = build_model(config)
    params = model.init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (8, 16), 0, 64)

    def loss_of(model):
        def loss(params, tokens):
            logits, _ = model.apply(params, tokens)
            return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
                logits, tokens[..., None], -1)[..., 0])
        return jax.jit(jax.value_and_grad(loss))

    value, grads = loss_of(model)(params, tokens)
    step = loss_of(build_model(dataclasses.replace(config, remat=remat)))
    mesh = mesh_of((2, 4), ("data", "expert"))
    with jax.set_mesh(mesh):
        sharded_params, sharded_tokens, _ = shard_layer_inputs(mesh, params, tokens, tokens)
        value_ep, grads_ep = step(sharded_params, sharded_tokens)
        assert "all_to_all" in step.lower(sharded_params, sharded_tokens).as_text()
    assert_close(value_ep, value)
    for g_ep, g in zip(leaves(grads_ep), leaves(grads)):
        assert_close(g_ep, g)


def test_overflow_is_counted_and_deterministic():
    moe = MoEConfig(num_experts=8, top_k=2, d_expert=F, ep_buffer_factor=0.25)
    mesh = mesh_of((8,), ("expert",))
    _, (first, second), _ = run_layer(moe, mesh, batch=8, seq=32, single=False, repeats=2)
    stats = first[1]
    assert 0.0 < float(stats.dropped_fraction) < 1.0
    total = 8 * 32 * 2
    assert float(jnp.sum(stats.tokens_per_expert_E)) == pytest.approx(
        total * (1 - float(stats.dropped_fraction)))
    for a, b in zip(leaves(first), leaves(second)):
        np.testing.assert_array_equal(a, b)


# --- the function: kept rows match, both exchanges ---------------------------------------------

def skewed_inputs(num_tokens, num_experts, top_k, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    x_TD = jax.random.normal(keys[0], (num_tokens, D))
    # Popular low experts: overflow on their shards with a small buffer.
    logits_TE = jax.random.normal(keys[1], (num_tokens, num_experts)) - 0.4 * jnp.arange(num_experts)
    weights_TK, ids_TK = jax.lax.top_k(jax.nn.softmax(logits_TE), top_k)
    w_in = jax.random.normal(keys[2], (num_experts, D, 2 * F)) / np.sqrt(D)
    w_out = jax.random.normal(keys[3], (num_experts, F, D)) / np.sqrt(F)
    return x_TD, ids_TK.astype(jnp.int32), weights_TK, w_in, w_out


def single_device(x_TD, ids_TK, weights_TK, w_in, w_out):
    sorted_dispatch = dispatch.sort_by_expert(ids_TK, w_in.shape[0])
    x_MD = dispatch.dispatch(x_TD, sorted_dispatch, ids_TK.shape[1])
    y_MD = swiglu_experts(x_MD, w_in, w_out, sorted_dispatch.group_sizes_E)
    return dispatch.combine(y_MD, sorted_dispatch, weights_TK)


def place(mesh, x_TD, ids_TK, weights_TK, w_in, w_out, *mask_T):
    tokens = NamedSharding(mesh, P(ep.token_axes(mesh)))
    experts = NamedSharding(mesh, P("expert"))
    return [jax.device_put(a, s) for a, s in ((x_TD, tokens), (ids_TK, tokens),
                                               (weights_TK, tokens), (w_in, experts),
                                               (w_out, experts), *((m, tokens) for m in mask_T))]


def check_kept_rows_match(run, mesh, inputs, mask_T, *, expect_drops):
    """Forward and gradients equal the single-device layer with dropped assignments zeroed.

    run(x, ids, weights, w_in, w_out, mask) -> (y_TD, kept_TK). Padding (mask 0) is never kept
    and comes out zero.
    """
    x_TD, ids_TK, weights_TK, w_in, w_out = inputs
    with jax.set_mesh(mesh):
        args = place(mesh, *inputs, mask_T)
        y_TD, kept_TK = jax.jit(run)(*args)
        y_again, kept_again = jax.jit(run)(*args)
        grads = jax.jit(jax.grad(
            lambda x, w, a, b: jnp.sum(run(x, args[1], w, a, b, args[5])[0] ** 2),
            argnums=(0, 1, 2, 3)))(args[0], args[2], args[3], args[4])
    kept_TK = np.asarray(kept_TK)
    np.testing.assert_array_equal(kept_TK, np.asarray(kept_again))
    np.testing.assert_array_equal(np.asarray(y_TD), np.asarray(y_again))
    padding = np.asarray(mask_T) == 0
    assert not kept_TK[padding].any()
    assert (not kept_TK[~padding].all()) == expect_drops

    def reference(x, w, a, b):
        return single_device(x, ids_TK, jnp.where(kept_TK, w, 0.0), a, b)

    assert_close(y_TD, jax.jit(reference)(x_TD, weights_TK, w_in, w_out))
    ref_grads = jax.jit(jax.grad(lambda *p: jnp.sum(reference(*p) ** 2), argnums=(0, 1, 2, 3)))(
        x_TD, weights_TK, w_in, w_out)
    for g, r in zip(grads, ref_grads):
        assert_close(g, r)
    return kept_TK


def test_dense_exchange_drops_by_plan_and_kept_rows_match():
    mesh = mesh_of((2, 4), ("data", "expert"))
    inputs = skewed_inputs(128, 8, 2)
    mask_T = (jnp.arange(128) % 16 < 12).astype(jnp.float32)  # 4 padding tokens per device

    def run(x, ids, w, a, b, mask):
        return ep.expert_parallel_dropless(x, ids, w, a, b, mask_T=mask, buffer_factor=0.5,
                                           exchange="dense")

    kept_TK = check_kept_rows_match(run, mesh, inputs, mask_T, expect_drops=True)
    # the number kept is what the plan promises for the real tokens, data group by data group
    ids = np.asarray(inputs[1]).reshape(2, 4, 16, 2)  # (data, expert shard, local tokens, K)
    real = np.asarray(mask_T).reshape(2, 4, 16) > 0
    rows_per_peer = ep.buffer_rows(16, 2, 4, 2, 0.5, per_peer=True)
    for d in range(2):
        counts_SE = np.stack([np.bincount(ids[d, s][real[d, s]].ravel(), minlength=8)
                              for s in range(4)])
        kept_SSG, _, _ = numpy_plan(counts_SE, 4 * rows_per_peer, rows_per_peer)
        assert kept_TK.reshape(2, 4, 16, 2)[d].sum() == kept_SSG.sum()


def emulated_ragged_all_to_all(operand, output, input_offsets, send_sizes, output_offsets,
                               recv_sizes, *, axis_name):
    """jax.lax.ragged_all_to_all's semantics from all_gather (XLA:CPU lacks the real one)."""
    me = jax.lax.axis_index(axis_name)
    operand_SND = jax.lax.all_gather(operand, axis_name)
    start_S = jax.lax.all_gather(output_offsets, axis_name)[:, me]  # where sender i writes here
    size_S = jax.lax.all_gather(send_sizes, axis_name)[:, me]
    source_S = jax.lax.all_gather(input_offsets, axis_name)[:, me]
    row_R = jnp.arange(output.shape[0])
    for i in range(operand_SND.shape[0]):
        inside_R = (row_R >= start_S[i]) & (row_R < start_S[i] + size_S[i])
        source_R = jnp.clip(source_S[i] + row_R - start_S[i], 0, operand.shape[0] - 1)
        output = jnp.where(inside_R[:, None], operand_SND[i][source_R], output)
    return output


@pytest.mark.parametrize("buffer_factor", [0.5, pytest.param(None, marks=pytest.mark.slow)])
def test_ragged_exchange_emulated_matches_single_device(buffer_factor):
    mesh = mesh_of((8,), ("expert",))
    inputs = skewed_inputs(128, 8, 2, seed=1)
    exchange = ep.RaggedExchange(ep.buffer_rows(16, 2, 8, 1, buffer_factor, per_peer=False),
                                 collective=emulated_ragged_all_to_all)
    tokens, experts = P("expert"), P("expert")

    def run(*args):
        body = functools.partial(ep.expert_parallel_ffn, num_experts=8, exchange=exchange)
        return jax.shard_map(body, mesh=mesh,
                             in_specs=(tokens, tokens, tokens, experts, experts, tokens),
                             out_specs=(tokens, tokens), check_vma=False)(*args)

    mask_T = (jnp.arange(128) % 7 != 3).astype(jnp.float32)
    check_kept_rows_match(run, mesh, inputs, mask_T, expect_drops=buffer_factor is not None)


def test_ragged_exchange_lowers_forward_and_backward():
    mesh = mesh_of((2, 4), ("data", "expert"))
    inputs = skewed_inputs(64, 8, 2)

    def loss(x, ids, w, a, b):
        y, _ = ep.expert_parallel_dropless(x, ids, w, a, b, exchange="ragged", buffer_factor=1.0)
        return jnp.sum(y ** 2)

    with jax.set_mesh(mesh):
        args = place(mesh, *inputs)
        text = jax.jit(jax.grad(loss, argnums=(0, 2, 3, 4))).lower(*args).as_text()
    # two exchanges forward, their two transposes backward
    assert text.count("stablehlo.custom_call @ragged_all_to_all") == 4


def test_compiled_memory_holds_a_slice_of_the_experts():
    mesh = mesh_of((2, 4), ("data", "expert"))  # tokens split 8 ways, experts 4 ways
    x_TD, ids_TK, weights_TK, w_in, w_out = skewed_inputs(64, 8, 2)
    with jax.set_mesh(mesh):
        args = place(mesh, x_TD, ids_TK, weights_TK, w_in, w_out)
        compiled = jax.jit(ep.expert_parallel_dropless).lower(*args).compile()
    token_bytes = sum(a.nbytes for a in (x_TD, ids_TK, weights_TK))
    expert_bytes = w_in.nbytes + w_out.nbytes
    per_device = compiled.memory_analysis().argument_size_in_bytes
    assert per_device == token_bytes // 8 + expert_bytes // 4
