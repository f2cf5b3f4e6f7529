"""Seeds (DESIGN, Public API): an int seed gives every row an independent stream
(row b is keyed by ``reference.row_seed(seed, b)``); a ``(B,)`` seed tensor keys each
row by its own entry, and then a row's draws never depend on the batch around it.

Checked for every random op: sample, gumbel_softmax (dense and top-k), soft_mixture
(Gumbel and Dirichlet noise), verify, chain_speculative_sampling, philox_uniform;
and for the strategies through softdec.hf.generate.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import softdec
from softdec import _params
from softdec import reference as ref

from conftest import DEVICES

V = 8
P8 = torch.tensor([0.02, 0.05, 0.08, 0.1, 0.12, 0.15, 0.18, 0.3], dtype=torch.float64)
N = 100_000  # rows of one repeated prompt in one call


def _chi2_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    counts = counts.double().cpu().numpy()
    exp = probs.double().cpu().numpy() * counts.sum()
    keep = exp > 0
    assert counts[~keep].sum() == 0, "draws outside the support"
    return float(stats.chisquare(counts[keep], exp[keep]).pvalue)


def _check_repeated_row(ids: torch.Tensor, probs: torch.Tensor):
    """ids[b] drawn for N identical rows: the histogram follows probs, and neighbouring
    rows are independent (the joint histogram of (ids[2i], ids[2i+1]) follows probs x probs)."""
    ids = ids.cpu().long()
    k = probs.numel()
    assert _chi2_p(torch.bincount(ids, minlength=k), probs) > 1e-3
    a, b = ids[0::2], ids[1::2]
    joint = torch.bincount(a * k + b, minlength=k * k)
    assert _chi2_p(joint, torch.outer(probs, probs).reshape(-1)) > 1e-3
    # equal neighbours as often as independence predicts (sum p^2), not always
    eq = float((a == b).double().mean())
    p_eq = float((probs ** 2).sum())
    assert abs(eq - p_eq) < 5 * (p_eq * (1 - p_eq) / a.numel()) ** 0.5


def _repeated_logits(device, n=N):
    return torch.log(P8).float().to(device)[None].expand(n, V).contiguous()


# ---------------------------------------------------------------- the key formula

@pytest.mark.parametrize("seed", [0, 1, 7, -1, 123456789, (1 << 63) - 1, -(1 << 63), (1 << 64) - 1])
@pytest.mark.parametrize("batch", [1, 5, 32, 33, 300])
def test_row_keys_follow_the_documented_formula(seed, batch):
    # _params and reference are two independent implementations (the small-batch path is
    # Python ints, the large one int64 tensor ops)
    _params._CONST_ROWS.clear()
    got = _params.row_seeds(seed, batch, torch.device("cpu"))
    want = [ref.row_seed(seed, b) for b in range(batch)]
    assert got.dtype == torch.int64 and got.tolist() == want
    assert _params.row_seeds(seed, batch, torch.device("cpu")).tolist() == want  # cached hit
    # a 0-D tensor seed folds the same way (tensor path)
    t = torch.tensor(seed - (1 << 64) if seed >= 1 << 63 else seed)
    assert _params.row_seeds(t, batch, torch.device("cpu")).tolist() == want
    # row b's key does not depend on the batch size
    assert _params.row_seeds(seed, batch + 40, torch.device("cpu")).tolist()[:batch] == want


def test_row_keys_are_distinct_and_differ_from_the_seed():
    keys = [ref.row_seed(s, b) for s in range(64) for b in range(64)]
    assert len(set(keys)) == len(keys)
    assert all(ref.row_seed(s, 0) != s for s in range(64))


def test_row_keys_under_compile_match_eager():
    f = torch.compile(lambda t: _params.row_seeds(7, t.shape[0], t.device) + t, fullgraph=True)
    z = torch.zeros(50, dtype=torch.int64)
    assert f(z).tolist() == [ref.row_seed(7, b) for b in range(50)]


def test_row_keys_op_opcheck():
    # the opaque op torch.compile builds the keys with
    base = torch.tensor(_params._signed64(_params.mix64(7)))
    torch.library.opcheck(torch.ops.softdec._row_seeds.default, (base, 40))
    assert torch.ops.softdec._row_seeds(base, 40).tolist() == [ref.row_seed(7, b) for b in range(40)]


def test_bad_seed_arguments_are_named():
    x = torch.zeros(2, V)
    with pytest.raises(ValueError, match="seed must be an int or an int64 tensor, got a float32 tensor"):
        softdec.sample(x, seed=torch.tensor(1.0))
    with pytest.raises(ValueError, match="seed must fit in 64 bits"):
        softdec.sample(x, seed=1 << 64)
    with pytest.raises(ValueError, match="seed must be an int"):
        softdec.sample(x, seed=1.5)
    with pytest.raises(ValueError, match=r"seed must be an int or a tensor of shape \(2,\)"):
        softdec.sample(x, seed=torch.tensor([1, 2, 3]))


# ---------------------------------------------------------------- independent rows under one int seed

def test_sample_repeated_row_is_independent(device):
    ids = softdec.sample(_repeated_logits(device), seed=7, offset=3).ids
    _check_repeated_row(ids, P8)


def test_gumbel_softmax_repeated_row_is_independent(device):
    x = _repeated_logits(device)
    y = softdec.gumbel_softmax(x, seed=11, hard=True)
    _check_repeated_row(y.argmax(-1), P8)
    ids, _ = softdec.gumbel_softmax(x, top_k=3, seed=12)
    _check_repeated_row(ids[:, 0], P8)


def test_soft_mixture_gumbel_repeated_row_is_independent(device):
    x = _repeated_logits(device)
    table = torch.eye(V, device=device)
    out = softdec.soft_mixture(x, table, top_k=V, noise="gumbel", seed=5, offset=1)
    # the heaviest id after Gumbel noise on log w is argmax(log w + G): distributed as w
    _check_repeated_row(out.ids[:, 0], P8)


def test_soft_mixture_dirichlet_repeated_row_is_independent(device):
    x = _repeated_logits(device)
    table = torch.eye(V, device=device)
    out = softdec.soft_mixture(x, table, top_k=V, noise="dirichlet", dirichlet_alpha=4.0, seed=5)
    w = out.embeds.double().cpu()  # the identity table: embeds = dense weights
    # mean weights = P8; Var(w_i) = p_i (1 - p_i) / (alpha + 1)
    var = P8 * (1 - P8) / 5.0
    assert torch.all((w.mean(0) - P8).abs() < 5 * (var / N).sqrt())
    # neighbouring rows uncorrelated (identical under the old broadcast seed)
    for i in (0, 5, 7):
        r = stats.pearsonr(w[0::2, i].numpy(), w[1::2, i].numpy())[0]
        assert abs(r) < 5 / (N / 2) ** 0.5
    # heaviest id: every id occurs, and neighbours disagree often
    top = out.ids[:, 0].cpu()
    assert float((top[0::2] == top[1::2]).double().mean()) < 0.5


def _verify_case(n, device):
    p = torch.tensor([0.1, 0.3, 0.05, 0.2, 0.05, 0.1, 0.15, 0.05], dtype=torch.float64)
    q = torch.tensor([0.3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1], dtype=torch.float64)
    d = 0  # p_d / q_d = 1/3: rejected two times in three, then the residual is drawn
    a = min(1.0, float(p[d] / q[d]))
    r = (p - q).clamp_min(0)
    want = a * torch.nn.functional.one_hot(torch.tensor(d), V).double() + (1 - a) * r / r.sum()
    logits = torch.log(torch.stack([p, p]))[None].float().expand(n, 2, V).contiguous().to(device)
    qs = q.float()[None, None].expand(n, 1, V).contiguous().to(device)
    drafts = torch.full((n, 1), d, dtype=torch.int64, device=device)
    return logits, qs, drafts, want


def test_verify_repeated_row_is_independent(device):
    logits, qs, drafts, want = _verify_case(N, device)
    out = softdec.verify(logits, drafts, draft_probs=qs, method="exact", seed=9, offset=2)
    _check_repeated_row(out.tokens[:, 0], want)


def test_chain_speculative_sampling_repeated_row_is_independent(device):
    logits, qs, drafts, want = _verify_case(N, device)
    out, _, _ = softdec.chain_speculative_sampling(qs, drafts, torch.softmax(logits.double(), -1).float(), seed=9)
    _check_repeated_row(out[:, 0], want)


def test_philox_uniform_rows_are_independent(device):
    u = softdec.philox_uniform((N, 2), seed=3, offset=1, device=device).double().cpu()
    assert stats.kstest(u[:, 0].numpy(), "uniform").pvalue > 1e-3
    r = stats.pearsonr(u[0::2, 0].numpy(), u[1::2, 0].numpy())[0]
    assert abs(r) < 5 / (N / 2) ** 0.5


# ---------------------------------------------------------------- int seed = folded keys; tensor seeds batch-invariant

def _ops(device):
    """(name, fn(rows, seed) -> tuple of tensors) for every random op, on one shared input of 6 rows."""
    g = torch.Generator().manual_seed(1)
    B, Vb = 6, 50
    x = (torch.randn(B, Vb, generator=g) * 2).to(device)
    table = torch.randn(Vb, 4, generator=g).to(device)
    tl = (torch.randn(B, 4, Vb, generator=g) * 2).to(device)
    dp = torch.softmax(torch.randn(B, 3, Vb, generator=g), -1).to(device)
    di = torch.randint(0, Vb, (B, 3), generator=g).to(device)
    tp = torch.softmax(tl, -1)
    return [
        ("sample", lambda r, s: (softdec.sample(x[r], top_k=20, top_p=0.9, seed=s, offset=4).ids,)),
        ("gumbel_softmax", lambda r, s: (softdec.gumbel_softmax(x[r], tau=0.7, seed=s, offset=4),)),
        ("gumbel_softmax_topk", lambda r, s: softdec.gumbel_softmax(x[r], tau=0.7, top_k=5, seed=s)),
        ("soft_mixture_gumbel", lambda r, s: tuple(softdec.soft_mixture(
            x[r], table, top_k=6, noise="gumbel", tau=0.5, seed=s, offset=2)[:3])),
        ("soft_mixture_dirichlet", lambda r, s: tuple(softdec.soft_mixture(
            x[r], table, top_k=6, noise="dirichlet", seed=s, offset=2)[:3])),
        ("verify_exact", lambda r, s: tuple(softdec.verify(tl[r], di[r], draft_probs=dp[r], seed=s, offset=1)[:2])),
        ("verify_typical", lambda r, s: tuple(softdec.verify(tl[r], di[r], method="typical", seed=s)[:2])),
        ("chain_speculative_sampling", lambda r, s: softdec.chain_speculative_sampling(dp[r], di[r], tp[r], seed=s)),
        ("philox_uniform", lambda r, s: (softdec.philox_uniform((len(range(6)[r]), 9), s, 2, device=device),)),
    ]


OP_NAMES = [n for n, _ in _ops("cpu")]


def _equal(a, b):
    return all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("name", OP_NAMES)
def test_int_seed_row_equals_single_row_call_with_its_key(name, device):
    fn = dict(_ops(device))[name]
    full = fn(slice(0, 6), 123)
    assert _equal(full, fn(slice(0, 6), 123))  # the same int seed reproduces
    assert not _equal(full, fn(slice(0, 6), 124))
    for b in range(6):
        key = torch.tensor([ref.row_seed(123, b)], device=device)
        alone = fn(slice(b, b + 1), key)
        assert _equal([t[b:b + 1] for t in full], alone), (name, b)
    # one int seed over a batch = the (B,) tensor of its folded keys
    assert _equal(full, fn(slice(0, 6), ref.row_keys(123, 6).to(device)))


@pytest.mark.parametrize("name", OP_NAMES)
def test_seed_tensor_rows_are_batch_invariant(name, device):
    fn = dict(_ops(device))[name]
    seeds = torch.tensor([5, 5, -3, 1 << 40, 0, 77], device=device)
    full = fn(slice(0, 6), seeds)
    for b in range(6):
        assert _equal([t[b:b + 1] for t in full], fn(slice(b, b + 1), seeds[b:b + 1])), (name, b)
    # a sub-batch: each row keeps its draw
    sub = fn(slice(2, 5), seeds[2:5])
    assert _equal([t[2:5] for t in full], sub)


def test_seed_tensor_identical_entries_draw_identically():
    x = _repeated_logits("cpu", 4)
    ids = softdec.sample(x, seed=torch.full((4,), 7)).ids
    assert ids.unique().numel() == 1


# ---------------------------------------------------------------- kernels == references under int seeds

def test_sample_int_seed_matches_reference():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 300, generator=g) * 2
    for kw in (dict(), dict(top_k=20), dict(top_p=0.8, temperature=0.7)):
        got = softdec.sample(x, seed=99, offset=5, **kw)
        want = ref.sample_exact(x, seed=99, offset=5, **kw)
        assert torch.equal(got.ids, want[0]) and torch.equal(got.valid, want[1])


def test_gumbel_softmax_int_seed_matches_reference():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20, 100, generator=g)
    y = softdec.gumbel_softmax(x, tau=0.8, seed=4, offset=2)
    want, _ = ref.gumbel_softmax(x.double(), tau=0.8, seed=4, offset=2)
    torch.testing.assert_close(y.double(), want, atol=1e-5, rtol=1e-4)
    ids, w = softdec.gumbel_softmax(x, tau=0.8, top_k=5, seed=4, offset=2)
    rids, rw = ref.gumbel_softmax_topk(x.double(), 5, tau=0.8, seed=4, offset=2)[:2]
    assert torch.equal(ids, rids)
    torch.testing.assert_close(w.double(), rw, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("noise", ["gumbel", "dirichlet"])
def test_soft_mixture_int_seed_matches_reference(noise):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(12, 200, generator=g) * 2
    table = torch.randn(200, 16, generator=g)
    got = softdec.soft_mixture(x, table, top_k=8, top_p=0.95, noise=noise, seed=21, offset=3)
    want = ref.soft_mixture(x.double(), table.double(), top_k=8, top_p=0.95, noise=noise, seed=21, offset=3)
    torch.testing.assert_close(got.embeds.double(), want[0], atol=1e-5, rtol=1e-4)
    assert torch.equal(got.ids, want[1])


def test_verify_and_chain_int_seed_match_reference():
    g = torch.Generator().manual_seed(5)
    B, K, Vb = 16, 3, 40
    tl = torch.randn(B, K + 1, Vb, generator=g) * 2
    dp = torch.softmax(torch.randn(B, K, Vb, generator=g), -1)
    di = torch.multinomial(dp.reshape(-1, Vb), 1, generator=g).reshape(B, K)
    got = softdec.verify(tl, di, draft_probs=dp, seed=31, offset=6)
    want = ref.verify(tl, di, draft_probs=dp, seed=31, offset=6)
    assert torch.equal(got.tokens, want.tokens) and torch.equal(got.num_accepted, want.num_accepted)
    tp = torch.softmax(tl, -1)
    out = softdec.chain_speculative_sampling(dp, di, tp, seed=31, offset=6)
    rout = ref.chain_speculative_sampling(dp, di, tp, seed=31, offset=6)
    for a, b in zip(out, rout):
        assert torch.equal(a, b)


def test_int_seed_under_compile_matches_eager():
    x = torch.randn(6, 64)
    table = torch.randn(64, 8)
    f = torch.compile(lambda x: softdec.sample(x, seed=17, offset=2).ids, fullgraph=True)
    assert torch.equal(f(x), softdec.sample(x, seed=17, offset=2).ids)
    h = torch.compile(lambda x, s: softdec.soft_mixture(x, table, top_k=4, noise="gumbel", seed=s).ids,
                      fullgraph=True)
    want = softdec.soft_mixture(x, table, top_k=4, noise="gumbel", seed=17).ids
    assert torch.equal(h(x, torch.tensor(17)), want)  # a 0-D tensor seed folds like the int


@pytest.mark.cuda
def test_int_seed_cuda_matches_cpu():
    x = torch.randn(64, 300) * 2
    table = torch.randn(300, 16)
    a = softdec.sample(x, top_k=30, seed=5, offset=1).ids
    b = softdec.sample(x.cuda(), top_k=30, seed=5, offset=1).ids.cpu()
    assert torch.equal(a, b)
    sa = softdec.soft_mixture(x, table, top_k=8, noise="gumbel", seed=5)
    sb = softdec.soft_mixture(x.cuda(), table.cuda(), top_k=8, noise="gumbel", seed=5)
    assert torch.equal(sa.ids, sb.ids.cpu())
    assert torch.equal(_params.row_seeds(5, 300, torch.device("cuda")).cpu(),
                       torch.tensor([ref.row_seed(5, b) for b in range(300)]))


# ---------------------------------------------------------------- strategies through softdec.hf.generate

transformers = pytest.importorskip("transformers")


def _tiny_model(vocab=64):
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    m = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.05)
    return m


def _strategies(model):
    import softdec.strategies as S
    return {
        "discrete": lambda seed: S.Discrete(temperature=1.0, seed=seed),
        "soft_thinking": lambda seed: S.SoftThinking(top_k=4, temperature=1.0, noise="gumbel",
                                                     think_end_token_id=3, max_think_tokens=2,
                                                     after=S.Discrete(temperature=1.0), seed=seed),
        "speculative": lambda seed: S.Speculative(model, 2, "exact", temperature=1.0, seed=seed),
    }


@pytest.mark.parametrize("kind", ["discrete", "soft_thinking", "speculative"])
def test_generate_repeated_prompt_rows_are_independent_and_reproducible(kind):
    import softdec.hf as H
    model = _tiny_model()
    make = _strategies(model)[kind]
    B = 16
    ids = torch.randint(3, 64, (1, 5), generator=torch.Generator().manual_seed(0)).expand(B, 5).contiguous()
    kw = dict(max_new_tokens=6)
    out = H.generate(model, ids, strategy=make(7), **kw).sequences[:, 5:]
    # a near-uniform tiny model: 16 repeated prompts give (almost surely) many different continuations
    assert len({tuple(r) for r in out.tolist()}) > B // 2
    again = H.generate(model, ids, strategy=make(7), **kw).sequences[:, 5:]
    assert torch.equal(out, again)
    # row b of the int-seed batch = that prompt alone with the row's folded key
    for b in (0, 5):
        alone = H.generate(model, ids[b:b + 1], strategy=make(torch.tensor([ref.row_seed(7, b)])),
                           **kw).sequences[:, 5:]
        n = alone.shape[1]  # a row that stopped (EOS) early is padded in the batch
        assert torch.equal(alone[0], out[b, :n]) and bool((out[b, n:] == 0).all())
