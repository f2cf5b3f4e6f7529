"""Vocabulary-parallel softdec ops on torch.distributed (``softdec.distributed``).

Tensor-parallel serving splits the LM head and the input embedding over the
vocabulary: rank r holds the logits of tokens ``[vocab_offset, vocab_offset +
V_local)`` and the same rows of the embedding table. The ops here take such a
shard plus a process group and return, on every rank, the result of the
single-device op on the full row (ids exactly; floats within the tolerance
stated per op), while the ranks exchange only O(B * k) partial statistics
(and, for soft_mixture, one ``[B, D]`` all_reduce of the embedding mixture).

How each op reaches the single-device result
--------------------------------------------
Every row's decision depends on a few statistics of the whole row, which
merge exactly across shards: validity flags (any NaN, any +inf, any finite
logit), the maximum and its lowest index, the online-softmax partials
``(m, S = sum e^{(l-m)/T}, A = sum e^{(l-m)/T} (l-m)/T)`` (entropy, max_prob),
and the row's first ``k`` tokens in the filter order (logit descending, lower
vocabulary id first on ties): the global first ``k`` are among the union of
every shard's first ``k``. Each rank computes these on its shard, one
``all_gather`` exchanges them (``world * B * (2k + 8)`` float64 per call),
and every rank derives the same global decision.

Where the single-device decision depends only on the row's first ``k``
tokens (soft_mixture; sample with top-k; verify "greedy" and "soft"), every
rank then builds the *compact row*: the gathered candidates in global-id
order (padded with -inf) and runs the single-device native op on it with the
same settings and the same per-row (seed, offset). The relative order of ids,
the values, the sums over the kept set and the one uniform of the draw are
those of the full row, so the native op takes the same decision; compact ids
map back to global ids. Gumbel noise (its uniform is element ``id`` of the
row's stream) is applied afterwards with the global ids.

Decisions that depend on every token of the row:

- ``sample`` plain and min-p rows (no top-k, no top-p): the single-device op draws by
  inversion over 1024-token blocks of the full row (sums in a fixed order, see
  csrc/cpu/sampling_kernels.h). Each block's sum depends on that block only, so each rank
  sums the blocks inside its shard (csrc/cpu/distributed.cpp), the blocks split between
  shards are rebuilt on every rank from the ranks' boundary tokens (< 2048 per row, sent
  with the round-1 partials), one all_gather exchanges the block sums (one float64 per
  block), every rank walks them as the kernel does, and the rank holding the drawn block
  picks the token (an all_reduce(MAX) of one int64 per row, skipped when the block is a
  split one): the single-device id bit for bit, 3 collectives.
- ``sample`` top-p rows without top-k (and top-k > 2048): the single-device cut is the first
  token of the filter order at which the running count (top-k) or the running top-p mass
  reaches its target, the masses in filter.h's uint64 fixed point (q_i = to_fixed(fexp((x_i -
  m) / T), mass_shift(V, 1))), whose sums are exact in any order. So the ranks run
  filter::detail::select_nth's radix selection on order_key together (:func:`_radix_select`):
  4 rounds of 8 bits, each rank histograms its own tokens ([B, 256] int64, with the row's
  global max, 1/T and V; csrc/cpu/distributed.cpp ``shard_radix_hist``), the histograms are
  summed (all_reduce; the last round all_gathers them, for every rank's tie count), every rank
  picks the same bucket and, at the selected value, the same number of ties (fixed_take);
  when the cut splits a run of equal logits, the rank holding the last kept tie finds its id
  (``shard_nth_tie``, one all_reduce(MAX)). The target is fixed_target(top_p, total), total
  the first round's sum. Then the blockwise draw above with the kept set ended at the cut
  (``shard_cut_block_masses`` / ``shard_cut_block_pick``): the single-device id bit for bit,
  7 collectives (8 with a split run of ties; top-k > 2048 adds 4-5 for its count select).
- ``verify``: top-k targets (any method, dense / sparse drafts) use the candidates-only row
  (see :func:`verify`), exact; "exact" with one-hot drafts and no top-k (temperature, top-p,
  min-p) finds each position's top-p cut as ``sample`` does, then the normaliser Z by the
  exact rule every single-device path uses (include/softdec/filter.h "the kept mass Z,
  exactly": each kept mass cut into three base-2^32 digits, integer digit sums, rounded once):
  each rank sums its own tokens' digits (``shard_kept_mass``), one all_reduce adds them
  (exact in any order), then each rank races its own tokens with the kernel's float arithmetic (``shard_verify_race``: p_i =
  fexp(.) * inv_z, key p_i / -flog(u_i), u_i element ``id`` of the row's stream) and the
  shard winners merge by max; the other targets without top-k all_gather the rows (see
  :func:`verify`).

Limits (documented, checked): every rank must pass the same settings, B and
draft tensors; the shards must tile ``[0, vocab_size)`` without overlap.
The ops are not differentiable (call them under ``torch.no_grad()``).
Implementation status: without a temperature (sample, verify) a shard's partials and their
merge are one native pass each (csrc/cpu/distributed.cpp); soft_mixture's partials (which
carry the softmax sums at the row's temperature) come from softdec.soft_mixture on the
shard with a 1-column table and a Python merge. The decisions on the compact rows are the
native kernels. ``verify(method="exact")`` with one-hot drafts and no top-k is bit for bit the
single-device op (CPU or CUDA: the normaliser is the same exact digit sum on every backend,
path and split).

Devices: CPU shards (gloo) and CUDA shards (NCCL, or gloo with CUDA tensors): every tensor
the ops create is on the shard's device, and every shard helper has a CUDA kernel
(csrc/cuda/distributed.cu) computing the CPU op's numbers: the partials, their merge and the
blockwise draw (block sums in the CPU's lane order, bit for bit); the top-p / large-k cut
(shard_radix_hist: integer histograms of the uint64 fixed-point masses, exact in any order;
shard_nth_tie; shard_cut_block_masses / shard_cut_block_pick); and verify(method="exact")'s
normaliser and race (shard_kept_mass: block-parallel integer digit sums, exact in any order;
shard_verify_race: the kernel's fexp / flog and Philox element ``id``, then a block (key, id)
max, exact in any order). So CUDA shards take the same paths and collectives as CPU shards
(bytes_per_call holds for both). sample and verify(method="exact") with one-hot drafts and no
top-k equal the single-device op (CPU or CUDA) bit for bit. The CUDA path compiles (sm_80, sm_90a) but
has not been run yet (tests/test_distributed_cuda.py runs when a GPU is present). On CUDA a
few steps read values on the host as the CPU path does: the layout / branch decisions
(``tolist``, ``bool(...any())``), the top-p targets (exact Python integers) and the
normaliser's ``exp(-log z)`` (one read each), the acceptance walk of ``verify(method="exact")``
(one copy), the Philox / Gamma draws of soft_mixture's Gumbel / Dirichlet noise
(softdec.reference.philox_at / soft_gamma, numpy), and the per-row id sets of the greedy /
soft verify's compact rows (``torch.unique``).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.distributed as dist

from ._params import FLOAT_DTYPES, check_tensor, float_arg, int_arg, rng_state, row_param
from ._sampling import Sampled
from ._soft_mixture import SoftTokens, _SM_MAX_K
from ._verify import Verified

__all__ = ["sample", "soft_mixture", "verify", "Shard", "shard_range", "bytes_per_call"]

_ops = torch.ops.softdec


@torch.library.register_fake("softdec::shard_block_masses")
def _shard_block_masses_fake(logits, offset, vocab_size, max_logit, temperature, min_p):
    lo, hi = _inner(offset, logits.shape[1], vocab_size)
    return logits.new_empty((logits.shape[0], hi - lo), dtype=torch.float64)


@torch.library.register_fake("softdec::shard_block_pick")
def _shard_block_pick_fake(logits, offset, vocab_size, max_logit, temperature, min_p, block, target):
    return logits.new_empty((logits.shape[0],), dtype=torch.int64)


@torch.library.register_fake("softdec::shard_partials")
def _shard_partials_fake(logits, offset, c):
    return logits.new_empty((logits.shape[0], _HEAD + 2 * c), dtype=torch.float64)


@torch.library.register_fake("softdec::merge_partials")
def _merge_partials_fake(g, c):
    R, n = g.shape[1], g.shape[0] * c + 1
    return (g.new_empty((R,), dtype=torch.bool), g.new_empty((R,), dtype=torch.float64),
            g.new_empty((R,), dtype=torch.int64), g.new_empty((R, n), dtype=torch.float32),
            g.new_empty((R, n), dtype=torch.int64))


@torch.library.register_fake("softdec::shard_kept_mass")
def _shard_kept_mass_fake(logits, offset, max_logit, temperature, min_p, cut_value, cut_index, want):
    R = logits.shape[0]
    return logits.new_empty((R, 3), dtype=torch.int64), logits.new_empty((R,), dtype=torch.float32)


@torch.library.register_fake("softdec::shard_verify_race")
def _shard_verify_race_fake(logits, offset, max_logit, temperature, min_p, cut_value, cut_index, inv_z, seed,
                            stream, skip):
    R = logits.shape[0]
    return (logits.new_empty((R,), dtype=torch.float32), logits.new_empty((R,), dtype=torch.int64),
            logits.new_empty((R,), dtype=torch.float32))


@torch.library.register_fake("softdec::block_draw_target")
def _block_draw_target_fake(blk, seed, offset):
    return blk.new_empty((blk.shape[0],), dtype=torch.int64), blk.new_empty((blk.shape[0],), dtype=torch.float64)

@torch.library.register_fake("softdec::shard_radix_hist")
def _shard_radix_hist_fake(logits, offset, vocab_size, max_logit, temperature, cut_value, cut_index, prefix, shift):
    return logits.new_empty((logits.shape[0], 512), dtype=torch.int64)


@torch.library.register_fake("softdec::shard_nth_tie")
def _shard_nth_tie_fake(logits, offset, value, cut_value, cut_index, n):
    return logits.new_empty((logits.shape[0],), dtype=torch.int64)


@torch.library.register_fake("softdec::shard_cut_block_masses")
def _shard_cut_block_masses_fake(logits, offset, vocab_size, max_logit, temperature, min_p, cut_value, cut_index):
    lo, hi = _inner(offset, logits.shape[1], vocab_size)
    return logits.new_empty((logits.shape[0], hi - lo), dtype=torch.float64)


@torch.library.register_fake("softdec::shard_cut_block_pick")
def _shard_cut_block_pick_fake(logits, offset, vocab_size, max_logit, temperature, min_p, cut_value, cut_index,
                               block, target):
    return logits.new_empty((logits.shape[0],), dtype=torch.int64)


_SMALL_K = 2048         # sample: the native top-k candidate path (kSmallK in sampling_kernels.h)
_HEAD = 8               # per-row header of the exchanged partials (see _local_stats)
_NO_ID = float(1 << 62)  # padding id of an empty candidate slot (sorts last)


class Shard(NamedTuple):
    """A rank's vocabulary shard: ``[offset, offset + size)`` of ``vocab_size`` tokens."""
    group: Optional[dist.ProcessGroup]
    rank: int
    world: int
    offset: int
    size: int
    vocab_size: int


def shard_range(vocab_size: int, world: int, rank: int) -> tuple[int, int]:
    """``(offset, size)`` of rank ``rank``'s shard when ``vocab_size`` tokens are split in
    ``world`` contiguous shards the way ``torch.chunk`` / tensor-parallel LM heads split them
    (``ceil(V / world)`` tokens per shard, the last ones shorter)."""
    vocab_size = int_arg(vocab_size, "vocab_size", lo=1)
    world = int_arg(world, "world", lo=1)
    rank = int_arg(rank, "rank", lo=0, hi=world - 1)
    step = -(-vocab_size // world)
    lo = min(vocab_size, rank * step)
    return lo, min(vocab_size, lo + step) - lo


def _shard(group, vocab_offset, vocab_size, size: int) -> Shard:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("softdec.distributed needs an initialised torch.distributed process group "
                           "(torch.distributed.init_process_group)")
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    off = int_arg(vocab_offset, "vocab_offset", lo=0)
    if vocab_size is None:
        raise ValueError("vocab_size (the global vocabulary size V) is required")
    V = int_arg(vocab_size, "vocab_size", lo=1)
    if off + size > V:
        raise ValueError(f"vocab_offset + shard size must be <= vocab_size ({V}), got {off} + {size}")
    return Shard(group, rank, world, off, size, V)


def _gather(t: torch.Tensor, sh: Shard) -> torch.Tensor:
    """all_gather of equally shaped tensors -> [world, *t.shape] (group rank order)."""
    t = t.contiguous()
    if sh.world == 1:
        return t.unsqueeze(0)
    out = [torch.empty_like(t) for _ in range(sh.world)]
    dist.all_gather(out, t, group=sh.group)
    return torch.stack(out)


def _row_settings(temperature, top_k, top_p, min_p, B: int, dev):
    """Per-row (temperature, top_k, top_p, min_p) tensors of a sample / verify call, checked."""
    return (row_param(temperature, "temperature", B, dev, torch.float32, lo=0),
            row_param(top_k, "top_k", B, dev, torch.int64, lo=0),
            row_param(top_p, "top_p", B, dev, torch.float32, lo=0, hi=1),
            row_param(min_p, "min_p", B, dev, torch.float32, lo=0, hi=1))


def _sync_rng(seed, offset, B, dev, generator, sh: Shard):
    """Per-row (seed, offset) as the single-device op derives them; with seed=None the
    seeds drawn on the group's first rank are broadcast (the other ranks' generators
    are not advanced)."""
    if seed is not None:
        return rng_state(seed, offset, B, dev, generator)
    s, o = rng_state(None, offset, B, dev, generator) if sh.rank == 0 else rng_state(0, offset, B, dev)
    s = s.clone()
    if sh.world > 1:
        src = dist.get_global_rank(sh.group, 0) if sh.group is not None else 0
        dist.broadcast(s, src=src, group=sh.group)
    return s, o


# ---------------------------------------------------------------- shard statistics

def _first_k(x: torch.Tensor, c: int, base: int):
    """The first ``c`` tokens of each row of x [R, Vl] in the filter order (logit
    descending, lower id first among ties), returned in id order as (values, global ids);
    -inf slots get id _NO_ID."""
    R, Vl = x.shape
    c = min(c, Vl)
    if c == 0:
        return x.new_empty(R, 0), torch.empty(R, 0, dtype=torch.float64, device=x.device)
    safe = torch.nan_to_num(x, nan=float("inf"))  # NaN rows are invalid anyway
    thr = torch.topk(safe, c, dim=1, sorted=True).values[:, -1:]
    gt = safe > thr
    eq = safe == thr
    need = c - gt.sum(1, keepdim=True)
    sel = gt | (eq & (torch.cumsum(eq, 1) <= need))
    idx = sel.nonzero()[:, 1].view(R, c)
    vals = torch.gather(x, 1, idx)
    ids = (idx + base).to(torch.float64)
    ids = torch.where(vals > -math.inf, ids, torch.full_like(ids, _NO_ID))
    return vals, ids


def _local_stats(x: torch.Tensor, c: int, it: Optional[torch.Tensor], sh: Shard) -> torch.Tensor:
    """Partials of rows x [R, Vl] (float32), see _local_stats_torch. Rows that are valid on the
    shard take one native pass (softdec.soft_mixture with a 1-column table: its first c ids in the
    filter order, its entropy and max_prob give S = 1 / max_prob and A = S (log S - H)); the
    other rows (NaN, +inf or no finite logit on this shard) the torch-op path."""
    from ._soft_mixture import soft_mixture as _sm
    R, Vl = x.shape
    if it is None:  # one native pass (csrc/cpu/distributed.cpp)
        return _ops.shard_partials(x, sh.offset, c)
    if R == 0 or Vl == 0 or c > _SM_MAX_K:
        return _local_stats_torch(x, c, it, sh)
    k = max(c, 1)
    dev = x.device
    T = torch.ones(R, dtype=torch.float64, device=dev) if it is None else 1.0 / it
    st = _sm(x, torch.zeros(Vl, 1, device=dev), top_k=k, temperature=T, seed=0, offset=0)
    out = torch.zeros(R, _HEAD + 2 * c, dtype=torch.float64, device=dev)
    ids = st.ids
    vals = torch.gather(x, 1, ids)
    out[:, 2] = 1.0
    out[:, 3] = vals[:, 0].double()
    out[:, 4] = (ids[:, 0] + sh.offset).double()
    if it is not None:
        S = 1.0 / st.max_prob.double()
        out[:, 5] = S
        out[:, 6] = S * (torch.log(S) - st.entropy.double())
    if c > 0:
        n = ids.shape[1]
        # padding repeats the first id (fewer than c finite tokens on the shard)
        pad = (ids == ids[:, :1]) & (torch.arange(n, device=dev)[None] > 0)
        pad |= ~(vals > -math.inf)
        out[:, _HEAD:_HEAD + c] = -math.inf
        out[:, _HEAD + c:] = _NO_ID
        out[:, _HEAD:_HEAD + n] = torch.where(pad, torch.full_like(vals, -math.inf), vals).double()
        out[:, _HEAD + c:_HEAD + c + n] = torch.where(pad, torch.full_like(ids, 1 << 62), ids + sh.offset).double()
    bad = ~st.valid
    if bool(bad.any()):
        r = bad.nonzero()[:, 0]
        out[r] = _local_stats_torch(x[r], c, None if it is None else it[r], sh)
    return out


def _local_stats_torch(x: torch.Tensor, c: int, it: Optional[torch.Tensor], sh: Shard) -> torch.Tensor:
    """Partials of rows x [R, Vl] (float32): [R, _HEAD + 2c] float64 =
    (nan, +inf, any finite, max, argmax id, S, A, 0, candidate values, candidate ids).
    S, A: online-softmax sums at inverse temperature ``it`` [R] relative to the shard max."""
    R, Vl = x.shape
    out = torch.zeros(R, _HEAD + 2 * c, dtype=torch.float64, device=x.device)
    if R == 0:
        return out
    out[:, 0] = torch.isnan(x).any(1).double()
    out[:, 1] = (x == math.inf).any(1).double()
    fin = x > -math.inf
    out[:, 2] = fin.any(1).double()
    if Vl > 0:
        clean = torch.where(torch.isnan(x) | (x == math.inf), torch.full_like(x, -math.inf), x)
        m, am = clean.max(1), torch.argmax(clean, 1)
        m = m.values
        out[:, 3] = m.double()
        out[:, 4] = (am + sh.offset).double()
        if it is not None:
            # float64 sums: the statistics are compared to the kernel within tolerance
            mm = torch.where(m > -math.inf, m, torch.zeros_like(m)).double()
            z = ((clean.double() - mm[:, None]) * it[:, None]).clamp_min(-1e4)
            e = torch.where(clean > -math.inf, torch.exp(z), torch.zeros_like(z))
            out[:, 5] = e.sum(1)
            out[:, 6] = (e * z).sum(1)
    else:
        out[:, 3] = -math.inf
        out[:, 4] = _NO_ID
    if c > 0:
        vals, ids = _first_k(x, c, sh.offset)
        n = vals.shape[1]
        out[:, _HEAD:_HEAD + c] = -math.inf
        out[:, _HEAD + c:] = _NO_ID
        out[:, _HEAD:_HEAD + n] = vals.double()
        out[:, _HEAD + c:_HEAD + c + n] = ids
    return out


class _Merged(NamedTuple):
    valid: torch.Tensor      # [R] bool
    max: torch.Tensor        # [R] float64 (global max logit)
    argmax: torch.Tensor     # [R] int64 (lowest id among ties)
    entropy: torch.Tensor    # [R] float64 (when it was given)
    max_prob: torch.Tensor   # [R] float64
    cand_v: torch.Tensor     # [R, W*c] float32, in global id order, -inf padding
    cand_id: torch.Tensor    # [R, W*c] int64, in global id order, -1 padding


def _merge(g: torch.Tensor, c: int, it) -> _Merged:
    """Merge gathered partials g [W, R, _HEAD + 2c] into the global statistics."""
    W, R, _ = g.shape
    if it is None:  # one native pass (csrc/cpu/distributed.cpp)
        valid, m, am, cv, ci = _ops.merge_partials(g.contiguous(), c)
        z = torch.zeros(R, dtype=torch.float64, device=g.device)
        return _Merged(valid, m, am, z, z, cv[:, :-1], ci[:, :-1])
    nan = g[:, :, 0].amax(0) > 0
    pinf = g[:, :, 1].amax(0) > 0
    fin = g[:, :, 2].amax(0) > 0
    mx = g[:, :, 3]
    m = mx.amax(0)
    am = torch.where(mx == m[None], g[:, :, 4], torch.full_like(mx, _NO_ID)).amin(0)
    valid = ~nan & ~pinf & fin
    ent = torch.zeros(R, dtype=torch.float64, device=g.device)
    mp = torch.zeros(R, dtype=torch.float64, device=g.device)
    if it is not None:
        mloc = torch.where(mx > -math.inf, mx, torch.zeros_like(mx))
        mg = torch.where(m > -math.inf, m, torch.zeros_like(m))
        d = ((mloc - mg[None]) * it[None]).clamp_min(-1e4)
        scale = torch.where(mx > -math.inf, torch.exp(d), torch.zeros_like(d))
        S = (g[:, :, 5] * scale).sum(0)
        A = ((g[:, :, 6] + g[:, :, 5] * d) * scale).sum(0)
        ent = torch.log(S) - A / S
        mp = 1.0 / S
    if c > 0:
        v = g[:, :, _HEAD:_HEAD + c].permute(1, 0, 2).reshape(R, W * c)
        i = g[:, :, _HEAD + c:].permute(1, 0, 2).reshape(R, W * c)
        i, order = torch.sort(i, dim=1)
        v = torch.gather(v, 1, order)
        pad = i >= _NO_ID
        cand_v = torch.where(pad, torch.full_like(v, -math.inf), v).float()
        cand_id = torch.where(pad, torch.full_like(i, -1), i).long()
    else:
        cand_v = torch.empty(R, 0, device=g.device)
        cand_id = torch.empty(R, 0, dtype=torch.int64, device=g.device)
    amx = torch.where(am >= _NO_ID, torch.zeros_like(am), am).long()
    return _Merged(valid, m, amx, ent, mp, cand_v, cand_id)


def _compact(mg: _Merged) -> torch.Tensor:
    """The compact rows: candidate values in id order, one more -inf column (so a top-k
    equal to the number of candidates still takes the native top-k path), NaN rows where the
    full row is invalid (the native op then reports them invalid)."""
    R = mg.cand_v.shape[0]
    x = torch.cat([mg.cand_v, mg.cand_v.new_full((R, 1), -math.inf)], 1)
    return torch.where(mg.valid[:, None], x, torch.full_like(x, math.nan))


def _map_ids(compact_ids: torch.Tensor, mg: _Merged) -> torch.Tensor:
    ids = torch.cat([mg.cand_id, mg.cand_id.new_full((mg.cand_id.shape[0], 1), -1)], 1)
    out = torch.gather(ids, 1, compact_ids.clamp(0, ids.shape[1] - 1))
    return torch.where(out >= 0, out, torch.zeros_like(out))


def _rows(x: torch.Tensor, name: str) -> torch.Tensor:
    check_tensor(x, name, dim=2, layout="(batch, vocab_local)", dtypes=FLOAT_DTYPES)
    if x.device.type not in ("cpu", "cuda"):
        raise NotImplementedError(f"softdec.distributed supports CPU (gloo) and CUDA (NCCL) shards; "
                                  f"{name} is on {x.device}")
    return x


def bytes_per_call(op: str, B: int, k: int, world: int, D: int = 0, K: int = 0, vocab_size: int = 0) -> int:
    """Bytes one rank receives per call through the collectives (all_gather: (world - 1) x the
    tensor; all_reduce: 2 (world - 1) / world x the tensor, a ring), shards of
    :func:`shard_range`:

    - "sample" (top-k or greedy rows) and "soft_mixture": the partials of B rows (+ one
      layout row for sample), ``8 (8 + 2k)`` bytes each; soft_mixture adds the [B, D] float32
      all_reduce;
    - "sample_plain" (plain / min-p rows, needs ``vocab_size``): the header and boundary
      tokens (``8 (8 + 1024)`` bytes per row, + the layout row), one float64 per block inside
      the largest shard, one int64 per row (all_reduce; skipped when the drawn block is split);
    - "sample_top_p" (top-p rows without top-k, needs ``vocab_size``): "sample_plain" plus the
      cut's radix rounds: three all_reduces of ``[B, 256]`` int64 and one all_gather of
      ``[B, 512]`` int64 (masses and tie counts), + one int64 per row (all_reduce) when the cut
      splits a run of ties (not counted);
    - "verify_exact" / "verify_exact_top_p" (one-hot drafts, no top-k): the partials of B (K + 1)
      positions + the layout row, the normaliser's all_reduce (four int64 per position: the
      kept mass's three digit sums and the draft token's mass) and the race winners (two
      float64 per row that draws: at most B); top-p adds the radix rounds over the B (K + 1)
      positions (as "sample_top_p");
    - "verify" (greedy, soft): the partials of B (K + 1) positions; top-k targets add one
      layout row of partials, and a dense draft ``4 (world k + 1)`` bytes per drafted position
      (all_reduce).

    The same on CPU and CUDA shards (CUDA shards run the same native shard helpers).
    """
    per_row = 8 * (_HEAD + 2 * k)
    if op == "soft_mixture":
        return (world - 1) * B * per_row + int(2 * (world - 1) / world * B * D * 4)
    if op == "sample":
        return (world - 1) * (B + 1) * per_row
    if op == "sample_plain":
        V = int_arg(vocab_size, "vocab_size", lo=1)
        nb = max(_inner(*shard_range(V, world, r), V)[1] - _inner(*shard_range(V, world, r), V)[0]
                 for r in range(world))
        return (world - 1) * ((B + 1) * 8 * (_HEAD + _FRAG // 2) + B * nb * 8) + int(2 * (world - 1) / world * B * 8)
    if op == "sample_top_p":
        radix = 3 * int(2 * (world - 1) / world * B * 256 * 8) + (world - 1) * B * 512 * 8
        return bytes_per_call("sample_plain", B, 0, world, vocab_size=vocab_size) + radix
    if op in ("verify_exact", "verify_exact_top_p"):
        R = B * (K + 1)
        out = (world - 1) * (R + 1) * 8 * _HEAD + int(2 * (world - 1) / world * R * 32) + (world - 1) * B * 16
        if op == "verify_exact_top_p":
            out += 3 * int(2 * (world - 1) / world * R * 256 * 8) + (world - 1) * R * 512 * 8
        return out
    if op == "verify":
        return (world - 1) * B * (K + 1) * per_row
    raise ValueError("op must be 'sample', 'sample_plain', 'sample_top_p', 'soft_mixture', 'verify', 'verify_exact' "
                     f"or 'verify_exact_top_p', got {op!r}")


# ---------------------------------------------------------------- sample

def sample(logits: torch.Tensor, *, vocab_offset: int, vocab_size: int,
           group: Optional[dist.ProcessGroup] = None,
           temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=None, offset=0,
           generator: Optional[torch.Generator] = None) -> Sampled:
    """:func:`softdec.sample` on vocabulary shards: the same ids on every rank, equal to
    ``softdec.sample`` on the full logits with the same settings and (seed, offset).

    ``logits`` [B, V_local] holds tokens ``[vocab_offset, vocab_offset + V_local)`` of a
    ``vocab_size`` vocabulary. Per row:

    - greedy (T = 0) and top-k rows (0 < k <= 2048): one all_gather of ``2k + 8`` float64
      per row (the shard's first k tokens and its statistics);
    - plain and min-p rows (no top-k, no top-p): the single-device inverse-CDF draw on
      shards (see :func:`_draw_blocks`): 3 small rounds, per row ``8 KiB`` of boundary
      logits + one float64 per 1024-token block + one int64;
    - top-p rows without top-k (and k > 2048): the single-device cut found by a radix select
      over fixed-point mass histograms summed across ranks (4 rounds of ``[B, 256]`` int64,
      see the module docstring), then the blockwise draw with that cut: 7 collectives (8 when
      the cut splits a run of equal logits), per row ``8 KiB`` of boundary logits + 3 x 2 KiB
      (all_reduce) + 4 KiB per rank (all_gather) + the block sums; no row of logits moves.
    """
    x = _rows(logits, "logits")
    sh = _shard(group, vocab_offset, vocab_size, x.shape[1])
    B, Vl = x.shape
    V = sh.vocab_size
    dev = x.device
    if not any(isinstance(v, torch.Tensor) for v in (temperature, top_k, top_p, min_p)):
        # scalar settings (the common case): one path for every row, decided in Python on the
        # float32 values the op sees, no per-row masks
        t = float(np.float32(float_arg(temperature, "temperature", lo=0)))
        k = int_arg(top_k, "top_k", lo=0)
        p = float(np.float32(float_arg(top_p, "top_p", lo=0, hi=1)))
        mp = float(np.float32(float_arg(min_p, "min_p", lo=0, hi=1)))
        mode = "greedy" if t == 0 else "cand" if 0 < k < V and k <= _SMALL_K else \
            "blocks" if (k == 0 or k >= V) and p >= 1 else "cut"
        sel = {mode: None}  # None: all rows
        T, K, P, MP = t, k, p, mp
    else:
        T, K, P, MP = _row_settings(temperature, top_k, top_p, min_p, B, dev)
        greedy = T == 0
        cand = ~greedy & (K > 0) & (K < V) & (K <= _SMALL_K)
        blocks = ~greedy & ((K == 0) | (K >= V)) & (P >= 1)  # plain / min-p: the blockwise draw
        cut = ~greedy & ~cand & ~blocks  # top-p without top-k, or k > 2048: the cut on shards
        sel = {name: m.nonzero()[:, 0] for name, m in (("cand", cand), ("blocks", blocks), ("cut", cut))
               if bool(m.any())}
    s, o = _sync_rng(seed, offset, B, dev, generator, sh)

    def take(v, r):
        return v if r is None or not isinstance(v, torch.Tensor) else v[r]

    def per_row(v, r, dtype):
        n = B if r is None else r.numel()
        return v[r] if isinstance(v, torch.Tensor) and r is not None else \
            (v if isinstance(v, torch.Tensor) else torch.full((n,), v, dtype=dtype, device=dev))

    if "cand" in sel:
        rc = sel["cand"]
        c = k if rc is None else int(K[rc].max())
    else:
        c = 0
    part = _local_stats(x, c, None, sh)
    if "blocks" in sel or "cut" in sel:  # the shard's tokens in blocks it shares with other shards (float32 bits)
        part = torch.cat([part, _fragments(x, sh)], 1)
    head = torch.zeros(1, part.shape[1], dtype=torch.float64, device=dev)
    head[0, 0], head[0, 1] = sh.offset, Vl
    g = _gather(torch.cat([part, head]), sh)
    shards = [(int(a), int(b)) for a, b in g[:, B, :2].tolist()]
    _check_tiling(shards, V)
    w0 = _HEAD + 2 * c
    mg = _merge(g[:, :B, :w0], c, None)
    ids = mg.argmax.clone()
    from ._sampling import sample as _sample
    if "cand" in sel:
        r = sel["cand"]
        m = mg if r is None else _Merged(*[t_[r] for t_ in mg])
        res = _sample(_compact(m), temperature=take(T, r), top_k=take(K, r), top_p=take(P, r),
                      min_p=take(MP, r), seed=take(s, r), offset=take(o, r))
        got = _map_ids(res.ids[:, None], m)[:, 0]
        if r is None:
            ids = got
        else:
            ids[r] = got
    if "blocks" in sel:
        r = sel["blocks"]
        r = mg.valid.nonzero()[:, 0] if r is None else r[mg.valid[r]]
        # every rank takes the same branch: the rows and validity are the same on all ranks
        if r.numel() == B:  # all rows: no copies
            ids = _draw_blocks(x, g[:, :B, w0:], shards, mg.max.float(), per_row(T, None, torch.float32),
                               per_row(MP, None, torch.float32), s, o, sh)
        elif r.numel():
            ids[r] = _draw_blocks(x[r], g[:, r, w0:], shards, mg.max[r].float(), per_row(T, r, torch.float32),
                                  per_row(MP, r, torch.float32), s[r], o[r], sh)
    if "cut" in sel:
        r = sel["cut"]
        r = mg.valid.nonzero()[:, 0] if r is None else r[mg.valid[r]]
        if r.numel():
            every = r.numel() == B  # all rows: no copies
            xr = x if every else x[r]
            fr = g[:, :B, w0:] if every else g[:, r, w0:]
            rr = None if every else r
            m = mg.max.float() if every else mg.max[r].float()
            Tr = per_row(T, rr, torch.float32)
            Kr = per_row(K, rr, torch.int64)
            Pr = per_row(P, rr, torch.float32)
            cv, ci = _cut(xr, shards, m, mg.argmax if every else mg.argmax[r], Tr, Kr, Pr, sh)
            got = _draw_blocks(xr, fr, shards, m, Tr, per_row(MP, rr, torch.float32),
                               s if every else s[r], o if every else o[r], sh, cut=(cv, ci))
            if every:
                ids = got
            else:
                ids[r] = got
    ids = torch.where(mg.valid, ids, torch.zeros_like(ids))
    return Sampled(ids.to(dev), mg.valid.to(dev))


# ---------------------------------------------------------------- the blockwise draw

_BLK = 1024          # kCdfBlock (csrc/cpu/sampling_kernels.h)
_FRAG = 2 * _BLK     # float32 slots per row for a shard's boundary tokens (two partial blocks)


def _inner(off: int, n: int, V: int) -> tuple[int, int]:
    """The 1024-token blocks of [0, V) lying entirely in the shard [off, off + n)."""
    end = off + n
    lo = -(-off // _BLK)
    hi = -(-V // _BLK) if end == V else end // _BLK
    return lo, max(lo, hi)


def _pieces(off: int, n: int, V: int) -> list[tuple[int, int]]:
    """The shard's tokens in blocks it shares with another shard: at most two [a, b) spans
    (its first and its last block), each shorter than a block."""
    if n == 0:
        return []
    end = off + n
    lo, hi = _inner(off, n, V)
    bf, bl = off // _BLK, (end - 1) // _BLK
    out = []
    if not lo <= bf < hi:
        out.append((off, min(end, (bf + 1) * _BLK)))
    if bl != bf and not lo <= bl < hi:
        out.append((bl * _BLK, end))
    return out


def _fragments(xf: torch.Tensor, sh: Shard) -> torch.Tensor:
    """[B, _FRAG / 2] float64 columns holding the float32 bits of the shard's boundary tokens."""
    B = xf.shape[0]
    out = torch.zeros(B, _FRAG, dtype=torch.float32, device=xf.device)
    at = 0
    for a, b in _pieces(sh.offset, xf.shape[1], sh.vocab_size):
        out[:, at:at + b - a] = xf[:, a - sh.offset:b - sh.offset].float()
        at += b - a
    return out.view(torch.float64)


def _draw_blocks(x, frag, shards, m, T, MP, s, o, sh: Shard, cut=None) -> torch.Tensor:
    """softdec.sample's inverse-CDF draw of plain / min-p rows on shards, the same id as the
    single-device op (csrc/cpu/sampling_kernels.h: block sums of 16 float lanes added in
    double, then a double walk over the blocks and inside one block; csrc/cpu/distributed.cpp).

    Blocks inside one shard are summed by their rank; blocks split between shards are
    rebuilt on every rank from the gathered boundary tokens ``frag`` [W, R, _FRAG / 2]
    (round 1). Round 2 all_gathers the inner block sums (float64 per block), every rank
    walks the same full list of block sums; round 3 (only when a drawn block is some rank's
    inner block) is an all_reduce(MAX) of the rank-local picks (int64 per row)."""
    V = sh.vocab_size
    R = x.shape[0]
    nb = -(-V // _BLK)
    # the split blocks, rebuilt from the ranks' boundary tokens
    split: dict[int, torch.Tensor] = {}
    for w, (off, n) in enumerate(shards):
        vals = frag[w].contiguous().view(torch.float32)
        at = 0
        for a, b in _pieces(off, n, V):
            b0 = a // _BLK * _BLK
            blk = split.get(b0)
            if blk is None:
                blk = split[b0] = torch.full((R, min(_BLK, V - b0)), -math.inf, device=x.device)
            blk[:, a - b0:b - b0] = vals[:, at:at + b - a]
            at += b - a
    inner = [_inner(off, n, V) for off, n in shards]
    if cut is None:
        def masses(t, off):
            return _ops.shard_block_masses(t, off, V, m, T, MP)

        def pick(t, off, block, target):
            return _ops.shard_block_pick(t, off, V, m, T, MP, block, target)
    else:  # the kept set ends at the row's cut (cut_value, global cut_index)
        cv, ci = cut

        def masses(t, off):
            return _ops.shard_cut_block_masses(t, off, V, m, T, MP, cv, ci)

        def pick(t, off, block, target):
            return _ops.shard_cut_block_pick(t, off, V, m, T, MP, cv, ci, block, target)
    mine = masses(x, sh.offset)
    width = max(hi - lo for lo, hi in inner)
    if width:
        pad = torch.zeros(R, width, dtype=torch.float64, device=x.device)
        pad[:, :mine.shape[1]] = mine
        got = _gather(pad, sh)
    sums = torch.zeros(R, nb, dtype=torch.float64, device=x.device)
    for w, (lo, hi) in enumerate(inner):
        if hi > lo:
            sums[:, lo:hi] = got[w, :, :hi - lo]
    for b0, blk in split.items():
        sums[:, b0 // _BLK] = masses(blk, b0)[:, 0]
    block, target = _ops.block_draw_target(sums, s, o)
    ids = pick(x, sh.offset, block, target)
    for b0, blk in split.items():
        ids = torch.maximum(ids, pick(blk, b0, block, target))
    in_split = torch.zeros(R, dtype=torch.bool, device=x.device)
    for b0 in split:
        in_split |= block == b0 // _BLK
    if sh.world > 1 and not bool(in_split.all()):
        dist.all_reduce(ids, op=dist.ReduceOp.MAX, group=sh.group)
    return ids.clamp_min(0)


# ---------------------------------------------------------------- the top-p / large-k cut

_IMAX = (1 << 63) - 1  # cut_index keeping every tie at the cut value


def _fixed_target(top_p: float, total: int) -> int:
    """filter::fixed_target: ceil(top_p * total) exactly, top_p a float32 in [0, 1)."""
    if not top_p > 0 or total == 0:
        return 0
    bits = int(np.array(top_p, dtype=np.float32).view(np.uint32))
    be = (bits >> 23) & 0xFF
    mant = ((bits & 0x7FFFFF) | 0x800000) if be else (bits & 0x7FFFFF)
    sft = 150 - be if be else 149  # top_p = mant * 2^-sft
    return (mant * total + (1 << sft) - 1) >> sft


def _key_float(key: torch.Tensor) -> torch.Tensor:
    """filter::key_float of int64 keys (< 2^32) -> float32 (on the keys' device)."""
    bits = torch.where(key >= 0x80000000, key & 0x7FFFFFFF, (~key) & 0xFFFFFFFF)
    # the uint32 bits as an int32 (two's complement), viewed as float32
    return torch.where(bits >= 0x80000000, bits - (1 << 32), bits).to(torch.int32).view(torch.float32)


def _radix_select(x, shards, m, T, pcv, pci, want, sh: Shard, top_p=None):
    """The first token of the filter order, among the finite tokens inside the prefix
    (pcv, pci), at which the running count (top_p None: want [R] int64, clamped to the
    prefix's count) or the running fixed-point mass (top_p [R] float32 > 0: target
    fixed_target(top_p, prefix mass)) reaches the target: filter::detail::select_nth on the
    whole row, by rounds over the shards (shard_radix_hist, summed across ranks).
    Returns (cut_value [R] float32, cut_index [R] int64 global -- _IMAX when every tie at the
    value is kept --, the prefix's count or mass [R] int64)."""
    R = x.shape[0]
    dev = x.device
    mass = top_p is not None
    half = slice(0, 256) if mass else slice(256, 512)
    prefix = torch.zeros(R, dtype=torch.int64, device=dev)
    acc = torch.zeros(R, dtype=torch.int64, device=dev)  # count / mass strictly above the selected key prefix
    rows = torch.arange(R, device=dev)
    for shift in (24, 16, 8, 0):
        h = _ops.shard_radix_hist(x, sh.offset, sh.vocab_size, m, T, pcv, pci, prefix, shift)
        if shift:  # one all_reduce of the half the select reads
            H = h[:, half].contiguous()
            if sh.world > 1:
                dist.all_reduce(H, group=sh.group)
        else:  # the last round: every rank's histograms (its tie counts)
            gh = _gather(h, sh)
            H = gh[:, :, half].sum(0)
        if shift == 24:
            total = H.sum(1)
            if mass:  # (exact Python integers; one host read of top_p and the totals)
                target = torch.tensor([_fixed_target(float(p), int(t)) for p, t in zip(top_p.tolist(), total.tolist())],
                                      dtype=torch.int64, device=dev)
            else:
                target = torch.minimum(want, total)
        rev = H.flip(1)  # buckets from the largest key down
        cum = acc[:, None] + rev.cumsum(1)
        first = (cum >= target[:, None]).int().argmax(1)  # always reached: target <= the prefix's total
        acc = cum[rows, first] - rev[rows, first]
        prefix = prefix | ((255 - first) << shift)
    value = _key_float(prefix)
    b = (prefix & 0xFF).long()
    cnt = gh[:, rows, 256 + b]  # [W, R] tie counts per rank
    ties = cnt.sum(0)
    e = gh[:, rows, b].sum(0) // ties.clamp_min(1) if mass else torch.ones(R, dtype=torch.int64, device=dev)
    need = target - acc
    take = torch.where(e > 0, torch.where(need > 0, (need + e - 1) // e.clamp_min(1), torch.zeros_like(need)), ties)
    take = torch.minimum(take, ties).clamp_min(1)
    take = torch.minimum(take, ties)
    # every tie kept: the prefix's own index where the value is the prefix's cut value
    ci = torch.where(value == pcv, pci, torch.full_like(pci, _IMAX))
    part = take < ties
    if bool(part.any()):
        # the take-th tie in id order: ranks in vocabulary order, the holder finds its id
        order = sorted(range(sh.world), key=lambda w: shards[w][0])
        before = torch.zeros(R, dtype=torch.int64, device=dev)
        for w in order:
            if w == sh.rank:
                break
            before += cnt[w]
        got = _ops.shard_nth_tie(x, sh.offset, value, pcv, pci, torch.where(part, take - before, torch.zeros_like(take)))
        if sh.world > 1:
            dist.all_reduce(got, op=dist.ReduceOp.MAX, group=sh.group)
        ci = torch.where(part, got, ci)
    return value, ci, total


def _cut(x, shards, m, argmax, T, K, P, sh: Shard):
    """(cut_value, cut_index) of valid rows (T > 0) without a small top-k, as softdec.sample's
    top_p_cut / filter::detail::generic_cut decide them on the full row: top-k (k > 2048) by
    count, then top-p by fixed-point mass inside the top-k prefix (see _radix_select)."""
    R = x.shape[0]
    V = sh.vocab_size
    cv = torch.full((R,), -math.inf, dtype=torch.float32, device=x.device)
    ci = torch.full((R,), _IMAX, dtype=torch.int64, device=x.device)

    def sub(t, r):
        return t if r is None else t[r]

    klim = (K > 0) & (K < V)
    if bool(klim.any()):
        r = None if bool(klim.all()) else klim.nonzero()[:, 0]
        xr = sub(x, r).contiguous()
        v, i, finite = _radix_select(xr, shards, sub(m, r), sub(T, r), sub(cv, r), sub(ci, r), sub(K, r), sh)
        lim = sub(K, r) < finite  # k >= the finite tokens: no top-k
        v = torch.where(lim, v, torch.full_like(v, -math.inf))
        i = torch.where(lim, i, torch.full_like(i, _IMAX))
        if r is None:
            cv, ci = v, i
        else:
            cv[r], ci[r] = v, i
    zero = P <= 0  # top_p = 0: the top token
    cv = torch.where(zero, m, cv)
    ci = torch.where(zero, argmax, ci)
    tp = (P > 0) & (P < 1)
    if bool(tp.any()):
        r = None if bool(tp.all()) else tp.nonzero()[:, 0]
        xr = sub(x, r).contiguous()
        v, i, _ = _radix_select(xr, shards, sub(m, r), sub(T, r), sub(cv, r), sub(ci, r), None, sh, top_p=sub(P, r))
        if r is None:
            cv, ci = v, i
        else:
            cv[r], ci[r] = v, i
    return cv.contiguous(), ci.contiguous()


def _check_tiling(shards, V):
    spans = sorted(shards)
    at = 0
    for lo, n in spans:
        if lo != at:
            raise ValueError(f"the ranks' shards must tile [0, vocab_size) without gaps or overlap, "
                             f"got (vocab_offset, size) = {shards} for vocab_size {V}")
        at = lo + n
    if at != V:
        raise ValueError(f"the ranks' shards must cover [0, vocab_size = {V}), got (vocab_offset, size) = {shards}")


# ---------------------------------------------------------------- soft_mixture

def soft_mixture(logits: torch.Tensor, embedding: torch.Tensor, *, vocab_offset: int, vocab_size: int,
                 group: Optional[dist.ProcessGroup] = None, top_k=10, temperature=1.0, top_p=1.0,
                 min_p=0.0, noise: Optional[str] = None, tau: float = 1.0, noise_scale: float = 1.0,
                 dirichlet_alpha: float = 1.0, seed=None, offset=0,
                 generator: Optional[torch.Generator] = None, embed_scale: float = 1.0,
                 filter_top_k: Optional[int] = None, gumbel_clamp=None, gumbel_eps: float = 0.0,
                 embed_noise_std: float = 0.0) -> SoftTokens:
    """:func:`softdec.soft_mixture` on vocabulary shards.

    ``filter_top_k`` None or an int in ``[top_k, 256]`` (each shard contributes that many
    candidates); 0 (the whole vocabulary: its top-p cut needs every shard's mass) and per-row
    tensors raise NotImplementedError. ``gumbel_clamp`` / ``gumbel_eps`` / ``embed_noise_std`` as
    in the single-device op (the Gaussian noise is ``softdec.philox_normal`` of the row's key).

    ``logits`` [B, V_local] and ``embedding`` [V_local, D] hold tokens ``[vocab_offset,
    vocab_offset + V_local)``. Every rank returns the single-device result: ids exactly
    (and valid); weights to float32 rounding (1e-6); entropy / max_prob from float64 shard
    sums (1e-5 relative); embeds as the fp32 sum of each rank's weighted rows
    (all_reduce, so the summation order differs: the embedding dtype's rounding).
    Exchanged per call: ``B * (2k + 8)`` float64 per rank (all_gather) and one
    ``[B, D]`` float32 all_reduce. Noise is applied to the merged soft token with the
    global ids (Gumbel in float32, Dirichlet's Gamma draws in float64, as the kernel).
    """
    from ._soft_mixture import soft_mixture as _sm
    x = _rows(logits, "logits")
    check_tensor(embedding, "embedding", dim=2, layout="(vocab_local, dim)", dtypes=FLOAT_DTYPES,
                 device=x.device, device_of="logits")
    B, Vl = x.shape
    if embedding.shape[0] != Vl:
        raise ValueError(f"embedding must have as many rows as logits has columns ({Vl}), got {embedding.shape[0]}")
    if noise not in (None, "gumbel", "dirichlet"):
        raise ValueError(f"noise must be None, 'gumbel' or 'dirichlet', got {noise!r}")
    dev = x.device
    if not isinstance(top_k, torch.Tensor):
        top_k = int_arg(top_k, "top_k", lo=1, hi=_SM_MAX_K)
    K = row_param(top_k, "top_k", B, dev, torch.int64, lo=1, hi=_SM_MAX_K)
    k = top_k if not isinstance(top_k, torch.Tensor) else (int(K.max()) if B else 1)
    if filter_top_k is not None:
        if isinstance(filter_top_k, torch.Tensor):
            raise NotImplementedError("softdec.distributed.soft_mixture: a per-row filter_top_k tensor is not "
                                      "supported on shards yet (pass an int)")
        filter_top_k = int_arg(filter_top_k, "filter_top_k", lo=0)
        if filter_top_k == 0 or filter_top_k >= vocab_size:
            raise NotImplementedError("softdec.distributed.soft_mixture: filter_top_k=0 (the whole vocabulary) "
                                      "is not supported on shards yet: its top-p cut needs every shard's mass")
        if filter_top_k < k:
            raise ValueError(f"top_k (the output width, {k}) must be <= filter_top_k ({filter_top_k}) "
                             "when filter_top_k > 0")
        if filter_top_k > _SM_MAX_K:
            raise ValueError(f"filter_top_k must be <= {_SM_MAX_K} (or 0), got {filter_top_k}")
    kc = k if filter_top_k is None else filter_top_k
    if gumbel_clamp is not None:
        lo, hi = (float(v) for v in gumbel_clamp)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"gumbel_clamp must be (lo, hi) with finite lo < hi, got {tuple(gumbel_clamp)}")
    embed_noise_std = float_arg(embed_noise_std, "embed_noise_std", lo=0.0)
    sh = _shard(group, vocab_offset, vocab_size, Vl)
    T = row_param(temperature, "temperature", B, dev, torch.float64, lo=0)
    random = noise is not None or embed_noise_std != 0.0
    s, o = _sync_rng(seed if random else 0, offset, B, dev, generator, sh)
    it = torch.where(T > 0, 1.0 / T.clamp_min(1e-300), torch.ones_like(T))  # T = 0: statistics at T = 1
    it = it.clamp_max(3.4028234663852886e38)
    g = _gather(_local_stats(x.float(), kc, it, sh), sh)
    mg = _merge(g, kc, it)
    comp = _compact(mg)
    dummy = torch.zeros(comp.shape[1], 1, device=dev)
    res = _sm(comp.to(torch.float32), dummy, top_k=top_k, temperature=temperature, top_p=top_p,
              min_p=min_p, seed=0, offset=0, filter_top_k=filter_top_k)
    ids = _map_ids(res.ids, mg)
    w = res.weights
    noisy = None
    if noise == "gumbel":
        w, ids, noisy = _gumbel(w, ids, s, o, float(tau), float(noise_scale), gumbel_clamp, float(gumbel_eps))
    elif noise == "dirichlet":
        w, ids = _dirichlet(w, ids, s, o, float(dirichlet_alpha))
    valid = mg.valid
    ids = torch.where(valid[:, None], ids, torch.zeros_like(ids))
    w = torch.where(valid[:, None], w, torch.zeros_like(w))
    if noisy is not None:  # invalid rows: y = -inf, as the kernel (with gumbel_eps, log(0 + eps) is finite)
        noisy = torch.where(valid[:, None], noisy, torch.full_like(noisy, -math.inf))
    # the mixture: each rank's weighted rows of its own shard, summed over ranks
    local = (ids >= sh.offset) & (ids < sh.offset + Vl) & (w != 0)
    rows = embedding[(ids - sh.offset).clamp(0, max(Vl - 1, 0))].float() if Vl else \
        torch.zeros(B, ids.shape[1], embedding.shape[1], device=dev)
    emb = (rows * torch.where(local, w, torch.zeros_like(w))[:, :, None]).sum(1)
    if sh.world > 1:
        dist.all_reduce(emb, group=sh.group)
    emb = (emb * float(embed_scale)).to(embedding.dtype)
    if embed_noise_std != 0.0:
        # as the kernel: std * philox_normal of the row's key, added in fp32 (fp64 for a float64
        # table) to the mixture in the embedding's dtype, valid rows only, rounded again
        from ._rng import philox_normal
        acc = torch.float64 if embedding.dtype == torch.float64 else torch.float32
        eps = philox_normal((B, emb.shape[1]), seed=s, offset=o).to(acc)
        noisy_emb = (emb.to(acc) + torch.tensor(embed_noise_std, dtype=acc, device=dev) * eps).to(embedding.dtype)
        emb = torch.where(valid[:, None], noisy_emb, emb)
    # T = 0: the statistics of softmax(logits) (T = 1), as softdec.soft_mixture reports them
    # (the shard partials were taken at T = 1 for those rows)
    entropy = torch.where(valid, mg.entropy, res.entropy.double()).float()
    max_prob = torch.where(valid, mg.max_prob, res.max_prob.double()).float()
    return SoftTokens(emb.to(dev), ids.to(dev), w.to(dev), entropy.to(dev), max_prob.to(dev),
                      valid.to(dev), noisy)


def _kept(w, ids):
    """The kept entries of a soft token: all but the padding (the top id repeated after it)."""
    pos = torch.arange(ids.shape[1], device=ids.device)[None]
    return ~((ids == ids[:, :1]) & (pos > 0))


def _resort(w, ids, y, kept):
    """Re-sort after noise (include/softdec/soft_mixture.h): the kept entries by weight
    descending, ties lower id first; the padding after them with weight 0 and the new top id."""
    wk = torch.where(kept, w, torch.full_like(w, -1.0))
    o1 = torch.sort(ids, dim=1, stable=True).indices
    w1, i1, y1, k1 = (torch.gather(t, 1, o1) for t in (wk, ids, y, kept))
    o2 = torch.sort(w1, dim=1, descending=True, stable=True).indices
    w2, i2, y2, k2 = (torch.gather(t, 1, o2) for t in (w1, i1, y1, k1))
    i2 = torch.where(k2, i2, i2[:, :1].expand_as(i2))
    w2 = torch.where(k2, w2, torch.zeros_like(w2))
    y2 = torch.where(k2, y2, torch.full_like(y2, -math.inf))
    return w2, i2, y2


def _gumbel(w, ids, s, o, tau, scale, clamp=None, eps=0.0):
    """Gumbel noise on the kept weights w [B, k] with the uniform of token id = element id of
    the row's stream (include/softdec/soft_mixture.h), float32 as the kernel (G clamped to
    ``clamp``; y = log(w + eps) + scale * G); then the re-sort."""
    from .reference import philox_at
    kept = _kept(w, ids)
    u = philox_at(s, o, ids).to(w.device)  # (computed on the host: one copy of ids and back on CUDA)
    gmb = -torch.log(-torch.log(u))
    if clamp is not None:
        gmb = gmb.clamp(float(clamp[0]), float(clamp[1]))
    y = torch.where(kept, torch.log(w + eps) + scale * gmb, torch.full_like(w, -math.inf))
    ymax = y.amax(1, keepdim=True)
    e = torch.where(y > -math.inf, torch.exp((y - ymax) * (1.0 / tau)), torch.zeros_like(w))
    wn = e / e.sum(1, keepdim=True)
    return _resort(wn, ids, y, kept)


def _dirichlet(w, ids, s, o, alpha):
    """Dirichlet noise w ~ Dir(alpha w) by the kernels' Gamma draws (float64, the Philox layout of
    include/softdec/soft_mixture.h, softdec.reference.soft_gamma); then the re-sort."""
    from .reference import soft_gamma
    kept = _kept(w, ids)
    a = torch.where(kept, alpha * w.double(), torch.zeros_like(w, dtype=torch.float64))
    g = soft_gamma(a, s, o, ids).to(w.device)  # (on the host, as philox_at)
    tot = g.sum(1, keepdim=True)
    wn = torch.where(tot > 0, (g / torch.where(tot > 0, tot, torch.ones_like(tot))).float(), w)
    y = torch.full_like(w, -math.inf)
    wn, i2, _ = _resort(wn, ids, y, kept)
    return wn, i2


# ---------------------------------------------------------------- verify

_METHODS = ("exact", "greedy", "typical", "relaxed", "soft")


def verify(target_logits: torch.Tensor, draft_ids: Optional[torch.Tensor], *, vocab_offset: int,
           vocab_size: int, group: Optional[dist.ProcessGroup] = None, num_draft=None,
           draft_probs=None, method: str = "exact", temperature=1.0, top_k=0, top_p=1.0,
           min_p=0.0, posterior_threshold: float = 0.09, posterior_alpha: float = 0.3,
           neighbours: Optional[torch.Tensor] = None, delta: float = 0.1, seed=None, offset=0,
           generator: Optional[torch.Generator] = None, filter_top_k=None) -> Verified:
    """:func:`softdec.verify` on vocabulary shards (every method and draft kind).

    ``target_logits`` [B, K+1, V_local] holds tokens ``[vocab_offset, vocab_offset +
    V_local)``; a dense ``draft_probs`` is the matching shard [B, K, V_local]; ``draft_ids``,
    sparse drafts ``(ids, weights)`` and ``neighbours`` [V, m] carry global ids (every rank
    passes the same). Every rank returns the single-device result (tokens and num_accepted
    exactly; soft weights to float32 rounding). What is exchanged:

    - "greedy", and "soft" without ``filter_top_k``: the first k tokens of each position
      (k = 1, or the soft token's width), ``(2k + 8)`` float64 per position and rank;
    - every method with a top-k target on every row (0 < top_k < V, top_k <= 2048; top_p /
      min_p on top of it), and "soft" with ``filter_top_k`` > 0: the first ``max(top_k,
      filter_top_k)`` tokens of each position the same way; a dense draft adds one
      all_reduce of its values at those candidates (float32, ``W k + 1`` per position).
      Every rank then runs the single-device op on a row holding only those candidates at
      their global ids (-inf elsewhere): the kept set, its mass, the acceptance uniforms and
      the race uniforms (element id of the stream) are those of the full row, so the
      result is the single-device one bit for bit (the compute is O(V) per position on
      every rank, the exchange O(k));
    - "exact" with one-hot drafts and no top-k (or top_k > 2048; temperature, top-p, min-p):
      O(B (K + 1)) values: the partials, the cut's radix rounds (as ``sample``),
      the normaliser as a running sum passed rank to rank (one broadcast per rank) and each
      rank's race winner with the draft token's p (native, the kernel's float arithmetic);
      top-p targets give the single-device result bit for bit, others up to the
      normaliser's last-bit rounding (see the module docstring);
    - anything else (top-p or min-p targets without top-k with dense / sparse drafts or the
      typical / relaxed rules, filter_top_k = 0): all_gather of the full rows (O(B K V),
      the serving engines' baseline), then the single-device op. Those targets need every
      token's mass in the kernel's float64 summation order (top-p cut, normaliser,
      entropy), which per-shard partial sums do not reproduce bit for bit.
    """
    from ._verify import verify as _verify
    check_tensor(target_logits, "target_logits", dim=3, layout="(batch, K + 1, vocab_local)",
                 dtypes=FLOAT_DTYPES)
    _rows(target_logits[:, 0], "target_logits")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS} for softdec.distributed.verify, got {method!r}")
    B, K1, Vl = target_logits.shape
    K = K1 - 1
    sh = _shard(group, vocab_offset, vocab_size, Vl)
    V = sh.vocab_size
    dev = target_logits.device
    sparse = isinstance(draft_probs, tuple)
    dense = None
    if draft_probs is not None and not sparse:
        dense = check_tensor(draft_probs, "draft_probs", dim=3, layout="(batch, K, vocab_local)",
                             dtypes=FLOAT_DTYPES)
        if tuple(dense.shape) != (B, K, Vl):
            raise ValueError(f"a dense draft_probs must be the shard (batch, K, vocab_local) = ({B}, {K}, {Vl}), "
                             f"got {tuple(dense.shape)}")
    given = draft_ids is not None
    if not given:
        if method != "soft":
            raise ValueError(f"draft_ids is required for method {method!r}")
        draft_ids = torch.zeros(B, K, dtype=torch.int64, device=dev)
    check_tensor(draft_ids, "draft_ids", dim=2, layout="(batch, K)", dtypes=(torch.int64, torch.int32))
    if tuple(draft_ids.shape) != (B, K):
        raise ValueError(f"draft_ids must have shape ({B}, {K}), got {tuple(draft_ids.shape)}")
    draft_ids = draft_ids.long()
    if draft_ids.numel() and (int(draft_ids.min()) < 0 or int(draft_ids.max()) >= V):
        raise ValueError(f"draft_ids must lie in [0, {V}) (the global vocabulary), got values in "
                         f"[{int(draft_ids.min())}, {int(draft_ids.max())}]")
    nd = row_param(num_draft if num_draft is not None else K, "num_draft", B, dev, torch.int64, lo=0, hi=K)
    kt = row_param(top_k, "top_k", B, dev, torch.int64, lo=0)
    x = target_logits.float()
    kw = dict(method=method, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
              posterior_threshold=posterior_threshold, posterior_alpha=posterior_alpha,
              neighbours=neighbours, delta=delta)
    fk_int = None
    if filter_top_k is not None:
        if method != "soft":
            raise ValueError("filter_top_k is only defined for method 'soft'")
        if not isinstance(filter_top_k, torch.Tensor):
            fk_int = int_arg(filter_top_k, "filter_top_k", lo=0)
            fk_int = 0 if fk_int >= V else fk_int
        kw["filter_top_k"] = filter_top_k
    if method == "soft" and not sparse:
        raise ValueError("method 'soft' needs draft_probs=(ids[B, K, k], weights[B, K, k])")
    if method == "soft" and filter_top_k is not None:
        if fk_int:  # the first max(width, filter_top_k) tokens hold the filtered soft token
            c = max(fk_int, draft_probs[0].shape[-1])
            return _verify_candidates(x, draft_ids if given else None, nd, None, draft_probs, c, sh, kw,
                                      seed, offset, generator)
        return _verify_gathered(x, draft_ids if given else None, nd, None, draft_probs, sh, kw,
                                seed, offset, generator)
    topk_rows = B > 0 and bool(((kt > 0) & (kt < V) & (kt <= _SMALL_K)).all())
    if method not in ("greedy", "soft") or dense is not None:
        if topk_rows:
            return _verify_candidates(x, draft_ids, nd, dense, draft_probs if sparse else None,
                                      int(kt.max()), sh, kw, seed, offset, generator)
        if method == "exact" and draft_probs is None \
                and not bool(((kt > 0) & (kt < V) & (kt <= _SMALL_K)).any()):
            return _verify_exact(x, draft_ids, nd, temperature, top_k, top_p, min_p, seed, offset, generator, sh)
        return _verify_gathered(x, draft_ids, nd, dense, draft_probs if sparse else None, sh, kw,
                                seed, offset, generator)
    # greedy / soft: the compact problem
    if method == "greedy":
        c = 1
    else:
        ks = draft_probs[0].shape[-1]
        c = int(torch.where(kt > 0, kt.clamp_max(ks), torch.full_like(kt, ks)).max()) if B else ks
    g = _gather(_local_stats(x.reshape(B * K1, Vl).contiguous(), c, None, sh), sh)
    mg = _merge(g, c, None)
    extra = [draft_ids] if given else []
    if sparse:
        sid = draft_probs[0]
        check_tensor(sid, "draft_probs[0]", dim=3, layout="(batch, K, k)", dtypes=(torch.int64, torch.int32))
        if sid.numel() and (int(sid.min()) < 0 or int(sid.max()) >= V):
            raise ValueError(f"draft_probs ids must lie in [0, {V}) (the global vocabulary)")
        extra.append(sid.reshape(B, -1).long())
    known = torch.cat([mg.cand_id.reshape(B, K1 * mg.cand_id.shape[1])] + extra, 1)
    vocab = [torch.unique(r[r >= 0]) for r in known]
    Vc = max(v.numel() for v in vocab) + 1 if B else 1
    comp = torch.full((B, K1, Vc), -math.inf, device=dev)
    cid = mg.cand_id.reshape(B, K1, -1)
    cv = mg.cand_v.reshape(B, K1, -1)
    for b in range(B):
        pos = torch.searchsorted(vocab[b], cid[b].clamp_min(0).contiguous())
        pos = torch.where(cid[b] >= 0, pos, torch.full_like(pos, Vc - 1))
        row = torch.full((K1, Vc), -math.inf, device=dev)
        row.scatter_(1, pos, torch.where(cid[b] >= 0, cv[b], torch.full_like(cv[b], -math.inf)))
        row[:, Vc - 1] = -math.inf
        comp[b] = row
    comp = torch.where(mg.valid.reshape(B, K1, 1), comp, torch.full_like(comp, math.nan))

    def to_compact(t):
        return torch.stack([torch.searchsorted(vocab[b], t[b].reshape(-1)).reshape(t[b].shape) for b in range(B)]) \
            if B else t
    dp = None if not sparse else (to_compact(draft_probs[0].long()), draft_probs[1])
    res = _verify(comp, to_compact(draft_ids) if given else None, num_draft=nd, draft_probs=dp, method=method,
                  temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, delta=delta,
                  seed=0, offset=0)

    def to_global(t):
        out = torch.stack([torch.where(t[b] >= 0, vocab[b][t[b].clamp(0, vocab[b].numel() - 1)],
                                       t[b]) if vocab[b].numel() else t[b] for b in range(B)]) if B else t
        return out
    soft_ids = None if res.soft_ids is None else to_global(res.soft_ids)
    if soft_ids is not None and res.soft_weights is not None:
        soft_ids = torch.where(res.soft_weights.sum(1, keepdim=True) > 0, soft_ids, res.soft_ids)
    return Verified(to_global(res.tokens), res.num_accepted, soft_ids, res.soft_weights)


def _layout(sh: Shard, Vl: int, dev=None) -> list[tuple[int, int]]:
    """Every rank's (vocab_offset, size), checked to tile [0, vocab_size) (one small all_gather)."""
    g = _gather(torch.tensor([sh.offset, Vl], dtype=torch.int64, device=dev), sh)
    shards = [(int(a), int(b)) for a, b in g.tolist()]
    _check_tiling(shards, sh.vocab_size)
    return shards


def _full_rows(t: torch.Tensor, shards, sh: Shard) -> torch.Tensor:
    """all_gather of shards t [..., V_local] into the full rows [..., V]."""
    width = max(n for _, n in shards)
    pad = torch.zeros(*t.shape[:-1], width, dtype=t.dtype, device=t.device)
    pad[..., :t.shape[-1]] = t
    parts = _gather(pad, sh)
    out = torch.empty(*t.shape[:-1], sh.vocab_size, dtype=t.dtype, device=t.device)
    for w, (lo, n) in enumerate(shards):
        out[..., lo:lo + n] = parts[w, ..., :n]
    return out


def _verify_gathered(x, draft_ids, nd, dense, sp, sh: Shard, kw, seed, offset, generator) -> Verified:
    """The fallback: all_gather the full target rows (and a dense draft), the single-device op."""
    from ._verify import verify as _verify
    B = x.shape[0]
    shards = _layout(sh, x.shape[2], x.device)
    s, o = _sync_rng(seed, offset, B, x.device, generator, sh)
    full = _full_rows(x, shards, sh)
    dp = sp if sp is not None else (None if dense is None else _full_rows(dense, shards, sh))
    return _verify(full, draft_ids, num_draft=nd, draft_probs=dp, seed=s, offset=o, **kw)


def _verify_candidates(x, draft_ids, nd, dense, sp, c: int, sh: Shard, kw, seed, offset, generator) -> Verified:
    """Targets that depend on each position's first c tokens only: gather them, put them at
    their global ids of an otherwise -inf row, run the single-device op on it (see verify)."""
    from ._verify import verify as _verify
    B, K1, Vl = x.shape
    K = K1 - 1
    V = sh.vocab_size
    R = B * K1
    s, o = _sync_rng(seed, offset, B, x.device, generator, sh)
    part = _local_stats(x.reshape(R, Vl).contiguous(), c, None, sh)
    head = torch.zeros(1, part.shape[1], dtype=torch.float64, device=x.device)
    head[0, 0], head[0, 1] = sh.offset, Vl
    g = _gather(torch.cat([part, head]), sh)
    _check_tiling([(int(a), int(b)) for a, b in g[:, R, :2].tolist()], V)
    mg = _merge(g[:, :R], c, None)
    cid, cv = mg.cand_id, mg.cand_v
    pad = cid < 0
    # padding slots rewrite the first candidate (same id, same value)
    cid = torch.where(pad, cid[:, :1].clamp_min(0), cid)
    cv = torch.where(pad, cv[:, :1], cv)
    row = torch.full((R, V), -math.inf, device=x.device)
    row.scatter_(1, cid, cv)
    row[~mg.valid] = math.nan
    row = row.view(B, K1, V)
    dp = sp
    if dense is not None:
        # the draft's q at every candidate of positions 0..K-1 and at the drafted token:
        # each rank writes the ones it holds, zeros elsewhere; a sum puts them on every rank
        ids = torch.cat([cid.view(B, K1, -1)[:, :K], draft_ids[..., None]], 2)
        own = (ids >= sh.offset) & (ids < sh.offset + Vl)
        q = dense.gather(2, (ids - sh.offset).clamp(0, max(Vl - 1, 0))) if Vl else \
            torch.zeros(ids.shape, device=x.device)
        q = torch.where(own, q.float(), torch.zeros(ids.shape, device=x.device))
        if sh.world > 1:
            dist.all_reduce(q, group=sh.group)
        dp = torch.zeros(B, K, V, device=x.device)
        dp.scatter_(2, ids, q)
    return _verify(row, draft_ids, num_draft=nd, draft_probs=dp, seed=s, offset=o, **kw)


def _verify_exact(x, draft_ids, nd, temperature, top_k, top_p, min_p, seed, offset, generator, sh: Shard):
    """Exact rejection sampling with one-hot drafts, targets without a small top-k (T, top-k >
    2048, top-p, min-p).

    Round 1: flags, max, argmax and the layout (one all_gather); the
    top-p cut of each position (``_cut``: the radix rounds of ``sample``); the normaliser as
    the kept masses' exact digit sums (``shard_kept_mass``, summed over the ranks by one
    all_reduce of int64 that also carries the draft token's mass), Z rounded once as every
    single-device path does;
    the acceptances; then, for the one position of each row that draws (the first rejection or
    the bonus), each rank's race winner (``shard_verify_race``, the kernel's float arithmetic;
    one all_gather of [B, 2])."""
    from ._rng import philox_uniform
    B, K1, Vl = x.shape
    K = K1 - 1
    dev = x.device
    T, kt, tp, mp = _row_settings(temperature, top_k, top_p, min_p, B, dev)
    if bool(((kt > 0) & (kt < sh.vocab_size) & (kt <= _SMALL_K)).any()):
        raise ValueError("_verify_exact takes targets without top-k or with top_k > 2048 (the candidates path "
                         "takes the others)")
    s, o = _sync_rng(seed, offset, B, dev, generator, sh)
    # round 1: flags, max, argmax per position, the layout
    R = B * K1
    xr = x.reshape(R, Vl).contiguous()
    st = _local_stats(xr, 0, None, sh)
    dpos = torch.cat([draft_ids, torch.full((B, 1), -1, dtype=torch.int64, device=dev)], 1).reshape(R)
    head = torch.zeros(1, st.shape[1], dtype=torch.float64, device=dev)
    head[0, 0], head[0, 1] = sh.offset, Vl
    g = _gather(torch.cat([st, head]), sh)
    shards = [(int(a), int(b)) for a, b in g[:, R, :2].tolist()]
    _check_tiling(shards, sh.vocab_size)
    mg = _merge(g[:, :R].contiguous(), 0, None)
    greedy = (T == 0).repeat_interleave(K1)
    Tp = T.repeat_interleave(K1)
    live = mg.valid & ~greedy  # positions with a filtered target to normalise and race
    m = torch.where(mg.valid, mg.max, torch.zeros_like(mg.max)).float()
    Tl = torch.where(live, Tp, torch.ones_like(Tp))
    mpl = mp.repeat_interleave(K1)
    cv = torch.full((R,), -math.inf, dtype=torch.float32, device=dev)
    ci = torch.full((R,), _IMAX, dtype=torch.int64, device=dev)
    tpl = tp.repeat_interleave(K1)
    ktl = torch.where(kt < sh.vocab_size, kt, torch.zeros_like(kt)).repeat_interleave(K1)
    cutr = (live & ((tpl < 1) | (ktl > 0))).nonzero()[:, 0]
    if cutr.numel():  # the top-k (> 2048) / top-p cut (same rows and order on every rank)
        cv[cutr], ci[cutr] = _cut(xr[cutr].contiguous(), shards, m[cutr], mg.argmax[cutr], Tl[cutr],
                                  ktl[cutr], tpl[cutr], sh)
    # the normaliser: the exact digit sums of the kept masses (filter.h MassSum), added over the
    # ranks (int64: exact in any order); column 3 carries the draft token's mass as float bits from
    # its holder (the other ranks add 0)
    zw = torch.zeros(R, 4, dtype=torch.int64, device=dev)
    if bool(live.any()):
        dg, ex = _ops.shard_kept_mass(xr, sh.offset, m, Tl, mpl, cv, ci, dpos)
        zw[:, :3] = dg
        zw[:, 3] = torch.where(ex >= 0, ex, torch.zeros_like(ex)).view(torch.int32).long()
        if sh.world > 1:
            dist.all_reduce(zw, group=sh.group)
    # Z = (S0 2^64 + S1 2^32 + S2) 2^-96 rounded to the nearest double (Python's int / int is
    # correctly rounded, ties to even: filter::MassSum::value), inv_z = float(1 / Z) (filter::inv_norm)
    from .reference import kept_mass_value
    inv_z = torch.tensor(np.array([1.0 / kept_mass_value(d) if any(d) else 0.0 for d in zw[:, :3].tolist()],
                                  dtype=np.float32), dtype=torch.float32, device=dev)
    wm = zw[:, 3].to(torch.int32).view(torch.float32)
    px = wm * inv_z  # p_of: fexp(.) * inv_z in float
    px = torch.where(greedy, (dpos == mg.argmax).float(), px)
    ua = philox_uniform((B, max(K, 1)), s, o)
    tokens = torch.full((B, K1), -1, dtype=torch.int64)
    nacc = torch.zeros(B, dtype=torch.int64)
    # the acceptance walk reads per-position scalars: one copy to the host (no-op on CPU)
    valid, pxb, am, gr, ua, ndh, dh = (t.cpu() for t in (mg.valid.reshape(B, K1), px.reshape(B, K1),
                                                         mg.argmax.reshape(B, K1), greedy.reshape(B, K1), ua, nd,
                                                         draft_ids))
    race_rows, race_at = [], []  # the position of each row that draws from the residual / target
    for b in range(B):
        n = int(ndh[b])
        for jj in range(n + 1):
            if not bool(valid[b, jj]):
                break
            if jj < n and float(ua[b, jj]) < float(pxb[b, jj]):
                tokens[b, jj] = dh[b, jj]
                nacc[b] += 1
                continue
            if bool(gr[b, jj]):
                tokens[b, jj] = am[b, jj]
            else:
                race_rows.append(b * K1 + jj)
                race_at.append((b, jj))
            break
    if race_rows:  # every rank has the same rows: the decisions above are the same everywhere
        rr = torch.tensor(race_rows, dtype=torch.int64, device=dev)
        jr = torch.tensor([jj for _, jj in race_at], dtype=torch.int64, device=dev)
        bonus = jr == nd[rr // K1]
        skip = torch.where(bonus, torch.full_like(rr, -1), dpos[rr])
        key, bid, _ = _ops.shard_verify_race(xr[rr].contiguous(), sh.offset, m[rr], Tl[rr], mpl[rr], cv[rr], ci[rr],
                                             inv_z[rr], s[rr // K1].contiguous(), (o[rr // K1] + 1 + jr).contiguous(),
                                             skip.contiguous())
        g2 = _gather(torch.stack([key.double(), bid.double()], 1), sh)
        kb, ib = g2[:, :, 0], g2[:, :, 1]
        kmax = kb.amax(0)
        win = torch.where((kb == kmax[None]) & (ib >= 0), ib, torch.full_like(kb, 2.0 ** 62)).amin(0)
        race = torch.where(win < 2.0 ** 62, win, mg.argmax[rr].double()).long().cpu()
        for t_, (b, jj) in enumerate(race_at):
            tokens[b, jj] = race[t_]
    return Verified(tokens.to(dev), nacc.to(dev), None, None)


# ---------------------------------------------------------------- tensor-parallel models

import weakref as _weakref

# id(table) -> (weak reference, (group, vocab_offset, vocab_size)); ids, not the tensors, are the
# keys (a tensor's == is elementwise)
_TABLES: dict = {}


def from_dtensor(w) -> tuple[torch.Tensor, Optional[dist.ProcessGroup], int, int]:
    """``(local rows, group, vocab_offset, vocab_size)`` of a DTensor sharded over its first
    dimension (``Shard(0)`` on a 1-D mesh: a vocabulary-parallel embedding or LM head, as
    transformers' ``tp_plan`` and torch.distributed.tensor.parallel build them)."""
    from torch.distributed.tensor import DTensor, Shard as _Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    if not isinstance(w, DTensor):
        raise ValueError(f"expected a DTensor, got {type(w).__name__}")
    if w.device_mesh.ndim != 1 or len(w.placements) != 1 or not isinstance(w.placements[0], _Shard) \
            or w.placements[0].dim != 0:
        raise ValueError(f"expected a DTensor sharded over dim 0 of a 1-D mesh, got placements {w.placements}")
    local = w.to_local()
    _, off = compute_local_shape_and_global_offset(w.shape, w.device_mesh, w.placements)
    return local, w.device_mesh.get_group(), int(off[0]), int(w.shape[0])


def register_table(local: torch.Tensor, group, vocab_offset: int, vocab_size: int) -> torch.Tensor:
    """Mark ``local`` as a rank's rows of a vocabulary-sharded embedding table: the strategies'
    ``soft_mixture`` (softdec.strategies) then runs :func:`soft_mixture` on the matching slice of
    the (full) logits. Returns ``local``."""
    key = id(local)
    _TABLES[key] = (_weakref.ref(local, lambda _r, k=key: _TABLES.pop(k, None)),
                    (group, int(vocab_offset), int(vocab_size)))
    return local


def table_shard(t) -> Optional[tuple]:
    """``(group, vocab_offset, vocab_size)`` of a table marked by :func:`register_table`, else None."""
    hit = _TABLES.get(id(t))
    return hit[1] if hit is not None and hit[0]() is t else None


def soft_mixture_full_logits(logits: torch.Tensor, table: torch.Tensor, **kw) -> SoftTokens:
    """:func:`soft_mixture` for full (replicated) logits [B, V] and a registered shard table."""
    group, off, V = table_shard(table)
    if logits.shape[-1] < V:
        raise ValueError(f"logits must hold the full vocabulary ({V}), got {logits.shape[-1]} columns")
    return soft_mixture(logits[:, off:off + table.shape[0]], table, vocab_offset=off, vocab_size=V,
                        group=group, **kw)
