"""The MoE feed-forward layer: routed expert groups plus optional shared experts.

In: hidden states x_BTD, a token mask (1 on real tokens, 0 on padding), the token ids (for
routing rules that read them), the mode (train or eval) and an rng for router jitter. Out: y_BTD
and ``MoEStats`` (balancing losses and routing metrics).

A layer holds one ``RoutedGroup`` per expert width — one for a homogeneous MoE, several for
heterogeneous experts — each with its own router and top-k, and their outputs are summed with the
shared experts' output. A group is glue: the router comes from ``ROUTERS`` by
``MoEConfig.routing``; each dispatch path (dropless, capacity, expert choice, and dropless expert
parallel — ``moejax.parallel.expert_parallel``, taken when the current mesh has an ``expert``
axis > 1) and the balancing math are pure functions in their own modules, and the path is picked
from ``DISPATCH_PATHS`` by name, so a new scheme is a new entry, not a branch in here.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from moejax.model import balancing, capacity as capacity_lib, dispatch, expert_choice
from moejax.model.config import ExpertGroup, MoEConfig, capacity
from moejax.model.experts import SwiGLUExperts
from moejax.model.layers import SwiGLU
from moejax.model.router import SCORE_FUNCTIONS, HashRouter, Router
from moejax.parallel import expert_parallel

EXPERT_CHOICE_WARNING = (
    "MoEConfig.routing = 'expert_choice' lets every token's routing depend on later tokens of the "
    "batch: in a causal decoder this leaks future tokens, so its losses are not comparable with "
    "token-choice models. Use it for analysis or encoder-style models only.")


class GroupStats(NamedTuple):
    """Routing statistics of one expert group (float32 scalars unless noted)."""

    aux_loss: jax.Array
    z_loss: jax.Array
    tokens_per_expert_E: jax.Array  # (E,) assignments processed per expert, padding excluded
    dropped_fraction: jax.Array  # of real (token, choice) assignments (expert choice: of tokens)
    router_entropy: jax.Array
    bias_norm: jax.Array  # L2 norm of the balancing bias (0 when disabled)


class MoEStats(NamedTuple):
    """Per-layer routing statistics, summed or averaged over the layer's expert groups.

    Attributes:
      aux_loss, z_loss: mean over groups (aux is 1.0 when perfectly balanced).
      tokens_per_expert_E: every group's loads concatenated, in group order.
      load_imbalance: the worst group's max/mean load.
      dropped_fraction: assignments dropped by capacity, over all groups.
      router_entropy: mean over groups of the mean token entropy (nats).
      bias_norm: L2 norm of all balancing biases.
      group_loads: per-group (E_g,) loads, for the balancing-bias update.
    """

    aux_loss: jax.Array
    z_loss: jax.Array
    tokens_per_expert_E: jax.Array
    load_imbalance: jax.Array
    dropped_fraction: jax.Array
    router_entropy: jax.Array
    bias_norm: jax.Array
    group_loads: tuple


def combine_group_stats(groups: list[GroupStats], assignments: list[float]) -> MoEStats:
    """Aggregate the stats of a layer's groups; ``assignments`` weights the dropped fractions."""
    total = float(sum(assignments))
    return MoEStats(
        aux_loss=jnp.mean(jnp.stack([g.aux_loss for g in groups])),
        z_loss=jnp.mean(jnp.stack([g.z_loss for g in groups])),
        tokens_per_expert_E=jnp.concatenate([g.tokens_per_expert_E for g in groups]),
        load_imbalance=jnp.max(jnp.stack([balancing.load_imbalance(g.tokens_per_expert_E)
                                          for g in groups])),
        dropped_fraction=sum(g.dropped_fraction * (a / total) for g, a in zip(groups, assignments)),
        router_entropy=jnp.mean(jnp.stack([g.router_entropy for g in groups])),
        bias_norm=jnp.sqrt(sum(g.bias_norm**2 for g in groups)),
        group_loads=tuple(g.tokens_per_expert_E for g in groups),
    )


# --- dispatch paths: (group, x_TD, routing, mask_T, capacity_factor) -> (y_TD, kept_TK) ---------

def _dropless(group: "RoutedGroup", x_TD, routing, mask_T, capacity_factor):
    y_TD = dispatch.sorted_experts_apply(x_TD, routing.expert_ids_TK, routing.weights_TK,
                                         group.num_experts, group.experts)
    return y_TD, jnp.broadcast_to(mask_T[:, None], routing.expert_ids_TK.shape)


def _dropless_expert_parallel(group: "RoutedGroup", x_TD, routing, mask_T, capacity_factor):
    y_TD, kept_TK = expert_parallel.expert_parallel_dropless(
        x_TD, routing.expert_ids_TK, routing.weights_TK, group.experts.w_in_EDF2[...],
        group.experts.w_out_EFD[...], mask_T=mask_T, buffer_factor=group.moe.ep_buffer_factor,
        exchange=group.moe.ep_exchange, compute_dtype=group.experts.compute_dtype,
        gmm_impl=group.experts.gmm_impl)
    return y_TD, kept_TK.astype(jnp.float32)  # padding is never kept


def _dropless_data_parallel(group: "RoutedGroup", x_TD, routing, mask_T, capacity_factor):
    y_TD, kept_TK = expert_parallel.data_parallel_dropless(
        x_TD, routing.expert_ids_TK, routing.weights_TK, group.experts.w_in_EDF2[...],
        group.experts.w_out_EFD[...], mask_T=mask_T, compute_dtype=group.experts.compute_dtype,
        gmm_impl=group.experts.gmm_impl)
    return y_TD, kept_TK.astype(jnp.float32)


def _capacity(group: "RoutedGroup", x_TD, routing, mask_T, capacity_factor):
    slots = capacity(x_TD.shape[0], group.num_experts, group.top_k, capacity_factor)
    slot_TK, kept_TK = capacity_lib.capacity_slots(routing.expert_ids_TK, group.num_experts,
                                                   slots, mask_T)
    y_TD = capacity_lib.capacity_dispatch_combine(x_TD, routing.expert_ids_TK, routing.weights_TK,
                                                  kept_TK, slot_TK, group.num_experts, slots,
                                                  group.experts.batched)
    return y_TD, kept_TK


DISPATCH_PATHS: dict[str, Callable] = {"dropless": _dropless,
                                        "dropless_data_parallel": _dropless_data_parallel,
                                        "dropless_expert_parallel": _dropless_expert_parallel,
                                        "capacity": _capacity}


def dispatch_path(capacity_factor: float | None) -> str:
    """The token-choice path: capacity if a factor is set, else dropless — expert parallel when
    the current mesh (``jax.set_mesh``) has an ``expert`` axis of size > 1, shard-local when it
    only splits the tokens, single-device without a mesh."""
    if capacity_factor is not None:
        return "capacity"
    if expert_parallel.expert_shards() > 1:
        return "dropless_expert_parallel"
    return "dropless_data_parallel" if expert_parallel.token_shards() > 1 else "dropless"


# --- routers: MoEConfig.routing -> f(d_model, group, moe, init_std, rngs) -> router module ------

def _learned_router(d_model: int, group: ExpertGroup, moe: MoEConfig, init_std: float,
                    rngs: nnx.Rngs) -> Router:
    groups = (None if moe.router_groups == 1 else
              (moe.router_groups, moe.router_groups_per_token))
    return Router(d_model, group.num_experts, group.top_k, scores=moe.router_scores,
                  renormalize=moe.renormalize, jitter=moe.router_jitter,
                  balancing_bias=moe.bias_update_rate > 0, groups=groups,
                  scale=moe.routed_scaling, init_std=init_std, rngs=rngs)


def _hash_router(d_model: int, group: ExpertGroup, moe: MoEConfig, init_std: float,
                 rngs: nnx.Rngs) -> HashRouter:
    return HashRouter(group.num_experts, group.top_k)


# Token-choice rules route every token to K experts, then share the dispatch paths; expert choice
# uses the learned router's scores on its own path (RoutedGroup._expert_choice).
ROUTERS: dict[str, Callable] = {"token_choice": _learned_router, "hash": _hash_router,
                                "expert_choice": _learned_router}


class RoutedGroup(nnx.Module):
    """One group of equally wide experts with its router: token choice (learned or hashed) or
    expert choice."""

    def __init__(self, d_model: int, group: ExpertGroup, moe: MoEConfig, *, n_layers: int,
                 init_std: float, compute_dtype, rngs: nnx.Rngs):
        self.num_experts, self.top_k = group.num_experts, group.top_k
        self.moe = moe
        self.router = ROUTERS[moe.routing](d_model, group, moe, init_std, rngs)
        self.experts = SwiGLUExperts(group.num_experts, d_model, group.d_expert,
                                     out_scale=1.0 / math.sqrt(2 * n_layers),
                                     compute_dtype=compute_dtype, gmm_impl=moe.gmm_impl, rngs=rngs)

    def __call__(self, x_TD, mask_T, *, batch: int, train: bool, rng,
                 token_ids_T=None) -> tuple[jax.Array, GroupStats]:
        if self.moe.routing == "expert_choice":
            return self._expert_choice(x_TD, mask_T, train=train, rng=rng)
        routing = self.router(x_TD, token_ids_T=token_ids_T, rng=rng if train else None)
        capacity_factor = self.moe.capacity_factor if train else self.moe.eval_capacity_factor
        path = DISPATCH_PATHS[dispatch_path(capacity_factor)]
        y_TD, kept_TK = path(self, x_TD, routing, mask_T, capacity_factor)
        aux, z_loss = self.router.balancing_losses(routing, mask_T, batch=batch,
                                                   aux_scope=self.moe.aux_loss_scope)
        real_assignments = jnp.maximum(jnp.sum(mask_T) * self.top_k, 1.0)
        kept = kept_TK.astype(jnp.float32)
        load_E = jnp.einsum("tke,tk->e", jax.nn.one_hot(routing.expert_ids_TK, self.num_experts),
                            kept)
        stats = GroupStats(
            aux_loss=aux,
            z_loss=z_loss,
            tokens_per_expert_E=load_E,
            dropped_fraction=1.0 - jnp.sum(kept) / real_assignments,
            router_entropy=balancing.router_entropy(routing.scores_TE, mask_T),
            bias_norm=self.router.bias_norm(),
        )
        return y_TD, stats

    def _expert_choice(self, x_TD, mask_T, *, train: bool, rng):
        logits_TE = self.router.logits(x_TD, rng if train else None)
        scores_TE = balancing.normalized_scores(SCORE_FUNCTIONS[self.moe.router_scores](logits_TE))
        factor = self.moe.capacity_factor if self.moe.capacity_factor is not None else 1.0
        if not train and self.moe.eval_capacity_factor is not None:
            factor = self.moe.eval_capacity_factor
        per_expert = min(x_TD.shape[0], capacity(x_TD.shape[0], self.num_experts, self.top_k,
                                                 factor))
        choice = expert_choice.choose_tokens(scores_TE, per_expert, mask_T)
        y_TD = expert_choice.expert_choice_apply(x_TD, choice, self.experts.batched)
        processed_T = expert_choice.tokens_per_expert_choice(choice, x_TD.shape[0])
        n_real = jnp.maximum(jnp.sum(mask_T), 1.0)
        stats = GroupStats(
            aux_loss=jnp.zeros((), jnp.float32),  # balanced by construction
            z_loss=balancing.router_z_loss(logits_TE, mask_T),
            tokens_per_expert_E=jnp.sum((choice.gates_EC > 0).astype(jnp.float32), axis=-1),
            dropped_fraction=jnp.sum((processed_T == 0) * mask_T) / n_real,
            router_entropy=balancing.router_entropy(scores_TE, mask_T),
            bias_norm=jnp.zeros((), jnp.float32),
        )
        return y_TD, stats


class MoEFeedForward(nnx.Module):
    """Routed expert groups (token or expert choice) plus optional always-active shared experts."""

    def __init__(self, d_model: int, moe: MoEConfig, *, n_layers: int, init_std: float,
                 compute_dtype=jnp.float32, rngs: nnx.Rngs):
        if moe.routing == "expert_choice":
            warnings.warn(EXPERT_CHOICE_WARNING, stacklevel=2)
        self.groups = nnx.List([
            RoutedGroup(d_model, group, moe, n_layers=n_layers, init_std=init_std,
                        compute_dtype=compute_dtype, rngs=rngs) for group in moe.groups])
        self.shared = (SwiGLU(d_model, moe.shared_width, out_scale=1.0 / math.sqrt(2 * n_layers),
                              compute_dtype=compute_dtype, rngs=rngs)
                       if moe.num_shared_experts > 0 else None)

    def __call__(self, x_BTD: jax.Array, mask_BT: jax.Array, *, train: bool = False,
                 rng: jax.Array | None = None,
                 token_ids_BT: jax.Array | None = None) -> tuple[jax.Array, MoEStats]:
        """``token_ids_BT`` feeds routing rules that read token ids (hash routing)."""
        batch, seq, d_model = x_BTD.shape
        x_TD = x_BTD.reshape(batch * seq, d_model)
        mask_T = mask_BT.reshape(batch * seq).astype(jnp.float32)
        token_ids_T = None if token_ids_BT is None else token_ids_BT.reshape(batch * seq)
        y_TD = jnp.zeros((batch * seq, d_model), jnp.float32)
        group_stats, assignments = [], []
        for index, group in enumerate(self.groups):
            group_rng = None if rng is None else jax.random.fold_in(rng, index)
            y_group_TD, stats = group(x_TD, mask_T, batch=batch, train=train, rng=group_rng,
                                      token_ids_T=token_ids_T)
            y_TD = y_TD + y_group_TD
            group_stats.append(stats)
            assignments.append(group.top_k)
        if self.shared is not None:
            y_TD = y_TD + self.shared(x_TD).astype(jnp.float32)
        return (y_TD.reshape(batch, seq, d_model).astype(x_BTD.dtype),
                combine_group_stats(group_stats, assignments))
