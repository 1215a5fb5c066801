"""Expert parallelism for the dropless MoE layer: one ``shard_map`` per layer moves each token to
the devices that own its experts, runs them there and brings the results back.

In: tokens x_TD, the router's expert_ids_TK and weights_TK (routing stays data parallel, outside),
and the expert weights sharded over the mesh axis ``expert`` (device s holds experts
s*G .. s*G+G-1). Out: y_TD, exactly what the single-device dropless layer gives on real tokens
when nothing overflows (padding tokens are not sent and come out zero), and kept_TK, which
(token, choice) assignments were processed.

Letters: T tokens on this device, K top-k, M = T*K (token, choice) rows, D d_model, F expert
hidden, E experts, S expert-parallel shards (size of the ``expert`` axis), G = E/S experts per
shard, R rows of the static receive buffer, P rows per peer slot (dense exchange).

Data movement inside the shard_map, on every device s:

1. Sort. The M rows are sorted by expert (``dispatch.sort_by_expert``; padding rows last, sent
   nowhere); group_sizes_E counts them.
   Experts are numbered shard-major, so the rows bound for shard j are one contiguous chunk.
2. Exchange counts. ``all_gather`` of group_sizes_E over ``expert`` gives every device the same
   counts_SE (row = sender). From it ``plan_exchange`` derives, identically everywhere, the
   (sender, receiver) matrices: rows requested, rows kept (the static buffer may overflow), where
   each chunk starts in the sender's sorted rows and where it lands in the receiver's buffer.
3. Move rows. An ``Exchange`` sends the kept rows: ``RaggedExchange``
   (``jax.lax.ragged_all_to_all``, GPU/TPU: receivers pack the chunks back to back in R rows) or
   ``DenseExchange`` (``jax.lax.all_to_all`` of a static (S, P, D) buffer, one P-row slot per
   peer: runs on every backend, including the CPU the tests use). Either way the receive buffer
   holds, per sender, its rows grouped by local expert, then unused rows.
4. Re-sort by local expert (``receive_layout``) so the grouped matmul sees contiguous groups;
   unused rows sort last and are not computed.
5. Compute. ``swiglu_experts`` with the local weights (G, ...), the global-length group sizes
   (zero outside this shard) and ``group_offset = s*G`` (megablox's convention).
6. Return. Undo the re-sort, the same exchange in reverse puts every result back at its row of
   the sender's sorted array (dropped rows stay zero), ``dispatch.combine`` un-sorts and sums each
   token's K outputs with its router weights.

The receive buffer is static. Its worst case is S*T*min(K, G) rows per device (every token of
every shard picks min(K, G) of this shard's experts), min(S, E/K) times the balanced load T*K.
``MoEConfig.ep_buffer_factor`` caps it at about buffer_factor * T*K rows (ragged) or
buffer_factor * T*K/S rows per peer (dense), rounded up to ``ROW_TILE``. Overflow is dropped
deterministically: a receiver keeps senders in shard order and each sender's chunk in sorted
(expert, token) order; the dense exchange also cuts each chunk at P rows. Dropped assignments
contribute zero (the token keeps its residual), as in the capacity path, and are reported through
kept_TK in ``GroupStats.dropped_fraction``.

Gradients flow through both exchanges (``all_to_all`` and ``ragged_all_to_all`` have
transposes in JAX: the reverse exchange); the count and offset math is integer and has none.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from moejax.errors import ConfigError
from moejax.kernels import platform
from moejax.model import dispatch
from moejax.model.config import EP_EXCHANGES as EXCHANGES
from moejax.model.experts import swiglu_experts

EXPERT_AXIS = "expert"
TOKEN_AXES = ("data", "fsdp", "expert")  # mesh axes the tokens are split over (in this order)
ROW_TILE = 8  # receive buffers are rounded up to a multiple of this many rows


# --- configuration ---------------------------------------------------------------------------

def validate_expert_parallel(num_experts: int, num_shards: int,
                             buffer_factor: float | None, exchange: str = "auto") -> int:
    """Check an expert-parallel layout before compiling; return G, the experts per shard."""
    if num_shards < 1 or num_experts % num_shards:
        raise ConfigError(
            f"MoEConfig.num_experts = {num_experts} is not allowed with expert parallelism: it "
            f"must be a multiple of the mesh axis '{EXPERT_AXIS}' = {num_shards}")
    if buffer_factor is not None and not (isinstance(buffer_factor, (int, float))
                                          and buffer_factor > 0):
        raise ConfigError(f"MoEConfig.ep_buffer_factor = {buffer_factor!r} is not allowed: "
                          "None (worst-case buffer, never drops) or a number > 0")
    if exchange not in EXCHANGES:
        raise ConfigError(f"MoEConfig.ep_exchange = {exchange!r} is not allowed: one of "
                          f"{EXCHANGES}")
    return num_experts // num_shards


def _round_up(rows: int, tile: int = ROW_TILE) -> int:
    return max(tile, -(-rows // tile) * tile)


def worst_case_rows_per_peer(num_tokens: int, top_k: int, experts_per_shard: int) -> int:
    """Most rows one device can send another: each token picks min(K, G) of its experts."""
    return num_tokens * min(top_k, experts_per_shard)


def buffer_rows(num_tokens: int, top_k: int, num_shards: int, experts_per_shard: int,
                buffer_factor: float | None, *, per_peer: bool) -> int:
    """Static rows of the receive buffer (per_peer=False) or of one peer's slot (per_peer=True).

    None gives the worst case (nothing can overflow); else ceil(buffer_factor * T*K), divided by
    S per peer, rounded up to ROW_TILE and never above the worst case.
    """
    worst_pair = worst_case_rows_per_peer(num_tokens, top_k, experts_per_shard)
    worst = worst_pair if per_peer else num_shards * worst_pair
    if buffer_factor is None:
        return worst
    balanced = num_tokens * top_k / (num_shards if per_peer else 1)
    return min(worst, _round_up(math.ceil(buffer_factor * balanced)))


# --- count and offset math: pure, the same on every device -----------------------------------

def _exclusive_cumsum(x, axis):
    return jnp.cumsum(x, axis=axis) - x


class ExchangePlan(NamedTuple):
    """Who sends how many rows to whom; every (S, S) matrix is indexed [sender, receiver].

    Attributes:
      requested_SS: rows the sender has for the receiver's experts.
      kept_SS: rows actually sent (requested minus overflow).
      kept_SSG: kept rows per local expert g of the receiver.
      input_offsets_SS: first row of the chunk in the sender's expert-sorted rows.
      output_offsets_SS: first row of the chunk in the receiver's buffer.
    """

    requested_SS: jax.Array
    kept_SS: jax.Array
    kept_SSG: jax.Array
    input_offsets_SS: jax.Array
    output_offsets_SS: jax.Array


def plan_exchange(counts_SE: jax.Array, *, receive_rows: int,
                  rows_per_peer: int | None = None) -> ExchangePlan:
    """The exchange of all shards, from every sender's per-expert row counts counts_SE.

    Args:
      counts_SE: (S, E) int, row i = sender i's group sizes (experts numbered shard-major).
      receive_rows: R, rows of each receiver's buffer; a receiver keeps senders in shard order
        until it is full.
      rows_per_peer: dense layout: sender i's rows land at i*P and at most P of them are kept;
        None: packed layout (sender i's rows right after sender i-1's).
    """
    num_shards, num_experts = counts_SE.shape
    requested_SSG = counts_SE.reshape(num_shards, num_shards, num_experts // num_shards)
    requested_SSG = requested_SSG.astype(jnp.int32)
    requested_SS = jnp.sum(requested_SSG, axis=-1)
    capped_SS = requested_SS if rows_per_peer is None else jnp.minimum(requested_SS, rows_per_peer)
    # Rows of lower senders already in receiver j's buffer, before sender i's chunk.
    before_SS = _exclusive_cumsum(capped_SS, axis=0)
    kept_SS = jnp.clip(receive_rows - before_SS, 0, capped_SS)
    # The chunk is sorted by expert: expert g keeps what is left after experts 0..g-1.
    expert_start_SSG = _exclusive_cumsum(requested_SSG, axis=-1)
    kept_SSG = jnp.clip(kept_SS[..., None] - expert_start_SSG, 0, requested_SSG)
    input_offsets_SS = _exclusive_cumsum(requested_SS, axis=1)
    if rows_per_peer is None:  # back to back; never past the buffer end, even for empty chunks
        output_offsets_SS = _exclusive_cumsum(kept_SS, axis=0)
    else:
        slot_S = jnp.arange(num_shards, dtype=jnp.int32) * rows_per_peer
        output_offsets_SS = jnp.broadcast_to(slot_S[:, None], (num_shards, num_shards))
    return ExchangePlan(requested_SS, kept_SS, kept_SSG, input_offsets_SS,
                        output_offsets_SS.astype(jnp.int32))


class LocalPlan(NamedTuple):
    """One device's view of the ExchangePlan (s = this shard), plus its own rows' fate.

    Attributes:
      send_sizes_S, input_offsets_S, output_offsets_S: row s of kept_SS, input_offsets_SS,
        output_offsets_SS (what this device sends, from where, to where on the receiver).
      recv_sizes_S, recv_offsets_S: column s of kept_SS and output_offsets_SS (what arrives from
        each sender, and where in this device's buffer).
      return_offsets_S: column s of input_offsets_SS (where the rows came from on each sender).
      recv_kept_SG: column s of kept_SSG (rows from each sender per local expert).
      destination_M, position_M, kept_M: for this device's sorted rows, the shard owning the
        row's expert, the row's position in the chunk for that shard, and whether it was kept.
    """

    send_sizes_S: jax.Array
    input_offsets_S: jax.Array
    output_offsets_S: jax.Array
    recv_sizes_S: jax.Array
    recv_offsets_S: jax.Array
    return_offsets_S: jax.Array
    recv_kept_SG: jax.Array
    destination_M: jax.Array
    position_M: jax.Array
    kept_M: jax.Array


def local_plan(plan: ExchangePlan, shard, sorted_expert_M: jax.Array) -> LocalPlan:
    """Device ``shard``'s slice of the plan.

    sorted_expert_M: expert of each sorted row, or E (past every expert) for rows that go
    nowhere (padding tokens, sorted last); those are never kept.
    """
    num_shards, _, experts_per_shard = plan.kept_SSG.shape
    routed_M = sorted_expert_M < num_shards * experts_per_shard
    destination_M = jnp.minimum(sorted_expert_M // experts_per_shard, num_shards - 1)
    input_offsets_S = plan.input_offsets_SS[shard]
    send_sizes_S = plan.kept_SS[shard]
    position_M = jnp.arange(sorted_expert_M.shape[0], dtype=jnp.int32) - input_offsets_S[destination_M]
    return LocalPlan(
        send_sizes_S=send_sizes_S, input_offsets_S=input_offsets_S,
        output_offsets_S=plan.output_offsets_SS[shard], recv_sizes_S=plan.kept_SS[:, shard],
        recv_offsets_S=plan.output_offsets_SS[:, shard],
        return_offsets_S=plan.input_offsets_SS[:, shard], recv_kept_SG=plan.kept_SSG[:, shard],
        destination_M=destination_M, position_M=position_M,
        kept_M=routed_M & (position_M < send_sizes_S[destination_M]))


def receive_layout(recv_kept_SG: jax.Array, recv_offsets_S: jax.Array,
                   receive_rows: int) -> tuple[jax.Array, jax.Array]:
    """Local expert of every receive-buffer row, and rows per local expert.

    Sender i's rows start at recv_offsets_S[i], grouped by local expert with recv_kept_SG[i]
    rows each. Returns local_expert_R (int32, G for an unused row) and group_sizes_G.
    """
    num_senders, experts_per_shard = recv_kept_SG.shape
    start_SG = recv_offsets_S[:, None] + _exclusive_cumsum(recv_kept_SG, axis=1)
    start_Q, end_Q = start_SG.reshape(-1), (start_SG + recv_kept_SG).reshape(-1)
    row_R = jnp.arange(receive_rows, dtype=jnp.int32)
    # Segments (sender, expert) are in buffer order, so their ends never decrease: the first
    # segment ending after row r is the only one that can hold it.
    segment_R = jnp.searchsorted(end_Q, row_R, side="right").astype(jnp.int32)
    last = num_senders * experts_per_shard - 1
    inside_R = (segment_R <= last) & (start_Q[jnp.minimum(segment_R, last)] <= row_R)
    local_expert_R = jnp.where(inside_R, segment_R % experts_per_shard, experts_per_shard)
    return local_expert_R.astype(jnp.int32), jnp.sum(recv_kept_SG, axis=0).astype(jnp.int32)


# --- the exchanges: one interface, two implementations ---------------------------------------

@dataclasses.dataclass(frozen=True)
class RaggedExchange:
    """Rows packed back to back with ``jax.lax.ragged_all_to_all`` (GPU, TPU; not XLA:CPU).

    ``collective`` is the ragged all-to-all to call (tests substitute an emulation on CPU).
    """

    receive_rows: int
    axis_name: str = EXPERT_AXIS
    collective: Callable = jax.lax.ragged_all_to_all
    rows_per_peer = None  # packed layout

    def send(self, x_MD: jax.Array, local: LocalPlan) -> jax.Array:
        """Sorted rows (M, D) -> receive buffer (R, D)."""
        out_RD = jnp.zeros((self.receive_rows, x_MD.shape[1]), x_MD.dtype)
        return self.collective(x_MD, out_RD, local.input_offsets_S, local.send_sizes_S,
                               local.output_offsets_S, local.recv_sizes_S,
                               axis_name=self.axis_name)

    def receive_back(self, y_RD: jax.Array, local: LocalPlan, num_rows: int) -> jax.Array:
        """Results (R, D) -> their rows of the sender's sorted array (M, D); dropped rows zero."""
        out_MD = jnp.zeros((num_rows, y_RD.shape[1]), y_RD.dtype)
        return self.collective(y_RD, out_MD, local.recv_offsets_S, local.recv_sizes_S,
                               local.return_offsets_S, local.send_sizes_S,
                               axis_name=self.axis_name)


@dataclasses.dataclass(frozen=True)
class DenseExchange:
    """A static (S, P, D) buffer, one P-row slot per peer, moved with ``jax.lax.all_to_all``."""

    rows_per_peer: int
    num_shards: int
    axis_name: str = EXPERT_AXIS

    @property
    def receive_rows(self) -> int:
        return self.num_shards * self.rows_per_peer

    def send(self, x_MD: jax.Array, local: LocalPlan) -> jax.Array:
        position_P = jnp.arange(self.rows_per_peer, dtype=jnp.int32)
        row_SP = local.input_offsets_S[:, None] + position_P  # sorted row filling slot j, place p
        used_SP = position_P < local.send_sizes_S[:, None]
        x_SPD = jnp.where(used_SP[..., None],
                          x_MD[jnp.minimum(row_SP, x_MD.shape[0] - 1)], 0)
        x_SPD = jax.lax.all_to_all(x_SPD, self.axis_name, 0, 0)  # slot i now holds sender i's
        return x_SPD.reshape(self.receive_rows, -1)

    def receive_back(self, y_RD: jax.Array, local: LocalPlan, num_rows: int) -> jax.Array:
        y_SPD = jax.lax.all_to_all(y_RD.reshape(self.num_shards, self.rows_per_peer, -1),
                                   self.axis_name, 0, 0)  # slot j: my rows, back from shard j
        slot_M = local.destination_M * self.rows_per_peer + jnp.minimum(
            local.position_M, self.rows_per_peer - 1)
        return jnp.where(local.kept_M[:, None], y_SPD.reshape(self.receive_rows, -1)[slot_M], 0)


Exchange = RaggedExchange | DenseExchange


def resolve_exchange(name: str) -> str:
    """"auto" is "ragged" on GPU and TPU (where XLA implements it) and "dense" elsewhere."""
    if name != "auto":
        return name
    return "ragged" if platform.current().backend in ("gpu", "tpu") else "dense"


def make_exchange(name: str, *, num_tokens: int, top_k: int, num_shards: int,
                  experts_per_shard: int, buffer_factor: float | None,
                  axis_name: str = EXPERT_AXIS) -> Exchange:
    """The exchange ``name`` ("auto", "ragged", "dense") with its static buffer for T local tokens."""
    name = resolve_exchange(name)
    sizes = dict(num_tokens=num_tokens, top_k=top_k, num_shards=num_shards,
                 experts_per_shard=experts_per_shard, buffer_factor=buffer_factor)
    if name == "ragged":
        return RaggedExchange(buffer_rows(**sizes, per_peer=False), axis_name)
    if name == "dense":
        return DenseExchange(buffer_rows(**sizes, per_peer=True), num_shards, axis_name)
    raise ConfigError(f"MoEConfig.ep_exchange = {name!r} is not allowed: one of {EXCHANGES}")


# --- the per-device layer and its shard_map --------------------------------------------------

def expert_parallel_ffn(x_TD, expert_ids_TK, weights_TK, w_in_GDF2, w_out_GFD, mask_T=None, *,
                        num_experts: int, exchange: Exchange, compute_dtype=jnp.float32,
                        gmm_impl: str = "auto") -> tuple[jax.Array, jax.Array]:
    """Dropless routed experts of one device's tokens, inside a shard_map over ``expert``.

    Args:
      x_TD, expert_ids_TK, weights_TK: this device's tokens and their routing.
      w_in_GDF2, w_out_GFD: this shard's G experts.
      mask_T: 1 on real tokens, 0 on padding (None = all real). Padding is sent nowhere, takes
        no buffer room and comes out zero.
      num_experts: E, all experts (E = S*G).
      exchange: how rows move between shards (RaggedExchange or DenseExchange).

    Returns:
      y_TD float32 (the routed output, weighted and summed over K) and kept_TK bool.
    """
    num_tokens, top_k = expert_ids_TK.shape
    experts_per_shard = w_in_GDF2.shape[0]
    shard = jax.lax.axis_index(exchange.axis_name)
    # 1. sort this device's (token, choice) rows by expert; padding as expert E, i.e. last
    if mask_T is not None:
        expert_ids_TK = jnp.where(mask_T[:, None] > 0, expert_ids_TK, num_experts)
    sorted_dispatch = dispatch.sort_by_expert(expert_ids_TK, num_experts + 1)
    x_MD = dispatch.dispatch(x_TD, sorted_dispatch, top_k)
    sorted_expert_M = expert_ids_TK.reshape(-1)[sorted_dispatch.order_M]
    # 2. every device learns every device's counts and derives the same plan
    counts_SE = jax.lax.all_gather(sorted_dispatch.group_sizes_E[:num_experts],
                                   exchange.axis_name)
    plan = plan_exchange(counts_SE, receive_rows=exchange.receive_rows,
                         rows_per_peer=exchange.rows_per_peer)
    local = local_plan(plan, shard, sorted_expert_M)
    # 3. rows to the shards owning their experts
    x_RD = exchange.send(x_MD, local)
    # 4. group the received rows by local expert; unused rows last
    local_expert_R, group_sizes_G = receive_layout(local.recv_kept_SG, local.recv_offsets_S,
                                                   exchange.receive_rows)
    order_R = jnp.argsort(local_expert_R, stable=True).astype(jnp.int32)
    inverse_R = jnp.argsort(order_R).astype(jnp.int32)
    xs_RD = dispatch.permute_rows(x_RD, order_R, inverse_R)
    # 5. the local experts: global-length group sizes, zero outside this shard
    first_expert = shard * experts_per_shard
    group_sizes_E = jax.lax.dynamic_update_slice(jnp.zeros((num_experts,), jnp.int32),
                                                 group_sizes_G, (first_expert,))
    ys_RD = swiglu_experts(xs_RD, w_in_GDF2, w_out_GFD, group_sizes_E, compute_dtype,
                           gmm_impl=gmm_impl, group_offset=first_expert)
    # 6. back to the senders, un-sort, combine with the router weights
    y_RD = dispatch.permute_rows(ys_RD, inverse_R, order_R)
    y_MD = exchange.receive_back(y_RD, local, x_MD.shape[0])
    y_TD = dispatch.combine(y_MD, sorted_dispatch, weights_TK)
    kept_TK = local.kept_M[sorted_dispatch.inverse_order_M].reshape(num_tokens, top_k)
    return y_TD, kept_TK


def expert_shards(mesh=None) -> int:
    """Size of the ``expert`` axis of ``mesh`` (default: the current mesh); 1 without one."""
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    if mesh.empty or EXPERT_AXIS not in mesh.axis_names:
        return 1
    return mesh.shape[EXPERT_AXIS]


def token_shards(mesh=None) -> int:
    """How many ways the tokens are split (product of the batch-like axes); 1 without a mesh."""
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    if mesh.empty:
        return 1
    return math.prod(mesh.shape[a] for a in token_axes(mesh))


def token_axes(mesh) -> tuple[str, ...]:
    """The mesh axes the tokens are split over inside the shard_map (batch-like axes only)."""
    return tuple(a for a in TOKEN_AXES if a in mesh.axis_names and mesh.shape[a] > 1)


def expert_parallel_dropless(x_TD, expert_ids_TK, weights_TK, w_in_EDF2, w_out_EFD, *,
                             mask_T=None, mesh=None, buffer_factor: float | None = None,
                             exchange: str = "auto", compute_dtype=jnp.float32,
                             gmm_impl: str = "auto") -> tuple[jax.Array, jax.Array]:
    """The dropless routed experts of all tokens, expert parallel over ``mesh`` (global view).

    Tokens are split over the mesh's ``data``, ``fsdp`` and ``expert`` axes; the expert weights
    (E, ...) over ``expert`` (any other sharding they have is gathered on entry). Other axes
    (``tensor``) see replicated tokens and repeat the work.

    Args:
      x_TD: (T, D) all tokens; expert_ids_TK, weights_TK: their routing (T, K).
      w_in_EDF2, w_out_EFD: all E experts' weights.
      mask_T: (T,) 1 on real tokens, 0 on padding (None = all real); padding takes no buffer
        room, is never kept and comes out zero.
      mesh: a Mesh or AbstractMesh with an ``expert`` axis; None = the current mesh.
      buffer_factor: ``MoEConfig.ep_buffer_factor`` (None = worst case, nothing dropped).
      exchange: ``MoEConfig.ep_exchange``: "auto", "ragged" or "dense".

    Returns:
      y_TD float32 and kept_TK bool, sharded like the tokens.
    """
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    num_shards = expert_shards(mesh)
    num_experts = w_in_EDF2.shape[0]
    experts_per_shard = validate_expert_parallel(num_experts, num_shards, buffer_factor, exchange)
    axes = token_axes(mesh)
    token_shards = math.prod(mesh.shape[a] for a in axes)
    num_tokens, top_k = expert_ids_TK.shape
    if num_tokens % token_shards:
        raise ValueError(f"expert parallelism: {num_tokens} tokens (batch * seq_len) do not split "
                         f"evenly over the mesh axes {axes} ({token_shards} shards)")
    chosen = make_exchange(exchange, num_tokens=num_tokens // token_shards, top_k=top_k,
                           num_shards=num_shards, experts_per_shard=experts_per_shard,
                           buffer_factor=buffer_factor)
    tokens, experts = PartitionSpec(axes), PartitionSpec(EXPERT_AXIS)
    body = functools.partial(expert_parallel_ffn, num_experts=num_experts, exchange=chosen,
                             compute_dtype=compute_dtype, gmm_impl=gmm_impl)
    # check_vma=False: the grouped-matmul kernels start their loop carries from unannotated
    # zeros, which the varying-axes type check rejects inside a shard_map.
    if mask_T is None:
        mask_T = jnp.ones((num_tokens,), jnp.float32)
    return jax.shard_map(body, mesh=mesh,
                         in_specs=(tokens, tokens, tokens, experts, experts, tokens),
                         out_specs=(tokens, tokens), check_vma=False)(
        x_TD, expert_ids_TK, weights_TK, w_in_EDF2, w_out_EFD, mask_T)


def data_parallel_dropless(x_TD, expert_ids_TK, weights_TK, w_in_EDF2, w_out_EFD, *,
                           mask_T=None, mesh=None, compute_dtype=jnp.float32,
                           gmm_impl: str = "auto") -> tuple[jax.Array, jax.Array]:
    """The dropless routed experts when tokens are split but every device holds every expert.

    Each device sorts and runs its own tokens: no exchange. Written as a shard_map because
    GSPMD cannot tell that a sort by expert is local to a token shard and would gather the
    tokens of all shards onto every device first. Same inputs and outputs as
    ``expert_parallel_dropless`` (padding, too, is processed as the single-device layer does).
    """
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    axes = token_axes(mesh)
    num_tokens, top_k = expert_ids_TK.shape
    shards = math.prod(mesh.shape[a] for a in axes)
    if num_tokens % shards:
        raise ValueError(f"{num_tokens} tokens (batch * seq_len) do not split evenly over the "
                         f"mesh axes {axes} ({shards} shards)")
    if mask_T is None:
        mask_T = jnp.ones((num_tokens,), jnp.float32)

    def body(x_TD, expert_ids_TK, weights_TK, w_in_EDF2, w_out_EFD, mask_T):
        def experts(x_MD, group_sizes_E):
            return swiglu_experts(x_MD, w_in_EDF2, w_out_EFD, group_sizes_E, compute_dtype,
                                  gmm_impl=gmm_impl)

        y_TD = dispatch.sorted_experts_apply(x_TD, expert_ids_TK, weights_TK,
                                             w_in_EDF2.shape[0], experts)
        return y_TD, jnp.broadcast_to(mask_T[:, None] > 0, expert_ids_TK.shape)

    tokens, replicated = PartitionSpec(axes), PartitionSpec()
    # check_vma=False: as above.
    return jax.shard_map(body, mesh=mesh,
                         in_specs=(tokens, tokens, tokens, replicated, replicated, tokens),
                         out_specs=(tokens, tokens), check_vma=False)(
        x_TD, expert_ids_TK, weights_TK, w_in_EDF2, w_out_EFD, mask_T)
