"""verify(method="soft", filter_top_k=...): the target soft token is soft_mixture's filter_top_k chain."""
import pytest
import torch

import softdec
from softdec import reference as ref

K_OUT = 10


def _soft_draft(B, K, V, k, g):
    ql = torch.randn(B, K, V, generator=g, dtype=torch.float64)
    top = ql.topk(k, -1).indices
    w = torch.softmax(ql.gather(-1, top), -1).float()
    return top, w


def _inputs(B=6, K=3, V=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    lg = (2.0 * torch.randn(B, K + 1, V, generator=g, dtype=torch.float64)).float()
    return lg, _soft_draft(B, K, V, K_OUT, g)


SETTINGS = dict(temperature=0.6, top_p=0.95, min_p=0.001)


def test_none_is_bit_identical_to_default():
    lg, dp = _inputs()
    a = softdec.verify(lg, None, draft_probs=dp, method="soft", delta=0.5, **SETTINGS)
    b = softdec.verify(lg, None, draft_probs=dp, method="soft", delta=0.5, filter_top_k=None, **SETTINGS)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("fk", [30, 0, 10, 256, 10**6])
def test_soft_token_equals_soft_mixture(fk):
    lg, dp = _inputs(B=8, K=0, V=400, seed=1)  # K = 0: the soft token of the bonus position
    out = softdec.verify(lg, torch.zeros(8, 0, dtype=torch.long), draft_probs=(dp[0], dp[1]), method="soft",
                         filter_top_k=fk, **SETTINGS)
    emb = torch.zeros(400, 4)
    sm = softdec.soft_mixture(lg[:, 0], emb, top_k=K_OUT, filter_top_k=fk, **SETTINGS)
    ids, w = sm[1], sm[2]
    kept = w > 0
    assert torch.equal(out.soft_ids[kept], ids[kept])
    torch.testing.assert_close(out.soft_weights, torch.where(kept, w, torch.zeros_like(w)).float(),
                               rtol=2e-6, atol=1e-7)
    assert torch.equal(out.tokens[:, 0], ids[:, 0])
    # the float64 reference
    r = ref.verify(lg.double(), torch.zeros(8, 0, dtype=torch.long), draft_probs=(dp[0], dp[1]), method="soft",
                   filter_top_k=fk, **SETTINGS)
    rk = r.soft_weights > 0
    assert torch.equal(rk, kept)
    assert torch.equal(r.soft_ids[rk], out.soft_ids[rk])
    torch.testing.assert_close(out.soft_weights.double(), r.soft_weights.double(), rtol=1e-5, atol=1e-7)


def test_filter_changes_the_token():
    """A wide filter makes top_p act on more mass than the top_k-first chain: the weights differ."""
    lg, dp = _inputs(B=4, K=0, V=400, seed=2)
    z = torch.zeros(4, 0, dtype=torch.long)
    a = softdec.verify(lg, z, draft_probs=dp, method="soft", top_p=0.5, temperature=2.0)
    b = softdec.verify(lg, z, draft_probs=dp, method="soft", top_p=0.5, temperature=2.0, filter_top_k=0)
    assert not torch.equal(a.soft_weights, b.soft_weights)


@pytest.mark.parametrize("delta", [0.0, 0.05, 0.3, 1.0])
def test_decisions_match_reference(delta):
    lg, _ = _inputs(B=16, K=4, V=200, seed=3)
    # drafts: the target's own filtered soft tokens on half the positions, random elsewhere
    g = torch.Generator().manual_seed(9)
    rid, rw = _soft_draft(16, 4, 200, K_OUT, g)
    own_i, own_w, _ = ref.verify_soft_token(lg[:, :4].reshape(-1, 200).double(), K_OUT, filter_top_k=30,
                                            **SETTINGS)
    own_i, own_w = own_i.reshape(16, 4, K_OUT), own_w.reshape(16, 4, K_OUT).float()
    mix = torch.rand(16, 4, 1, generator=g) < 0.7
    did, dw = torch.where(mix, own_i, rid), torch.where(mix, own_w, rw)
    dw = dw / dw.sum(-1, keepdim=True)
    got = softdec.verify(lg, None, draft_probs=(did, dw), method="soft", delta=delta, filter_top_k=30,
                         **SETTINGS)
    want = ref.verify(lg.double(), None, draft_probs=(did, dw), method="soft", delta=delta, filter_top_k=30,
                      **SETTINGS)
    assert torch.equal(got.num_accepted, want.num_accepted)
    assert torch.equal(got.tokens, want.tokens)
    assert torch.equal(got.soft_ids[want.soft_weights > 0], want.soft_ids[want.soft_weights > 0])
    torch.testing.assert_close(got.soft_weights.double(), want.soft_weights.double(), rtol=1e-5, atol=1e-7)
    if delta == 0.05:
        assert 0 < int(got.num_accepted.sum()) < 16 * 4


def test_per_row_tensor_and_invalid_row():
    lg, dp = _inputs(B=3, K=0, V=100, seed=4)
    lg[1, 0, 5] = float("nan")
    z = torch.zeros(3, 0, dtype=torch.long)
    out = softdec.verify(lg, z, draft_probs=dp, method="soft", filter_top_k=torch.tensor([30, 0, 12]),
                         **SETTINGS)
    assert int(out.tokens[1, 0]) == -1 and bool((out.soft_weights[1] == 0).all())
    for r, fk in ((0, 30), (2, 12)):
        one = softdec.verify(lg[r:r + 1], z[:1], draft_probs=(dp[0][r:r + 1], dp[1][r:r + 1]), method="soft",
                             filter_top_k=fk, **SETTINGS)
        assert torch.equal(one.soft_ids[0], out.soft_ids[r])
        assert torch.equal(one.soft_weights[0], out.soft_weights[r])


def test_greedy_temperature_zero():
    lg, dp = _inputs(B=3, K=0, V=100, seed=5)
    out = softdec.verify(lg, torch.zeros(3, 0, dtype=torch.long), draft_probs=dp, method="soft",
                         temperature=0.0, filter_top_k=30)
    assert torch.equal(out.soft_ids[:, 0], lg[:, 0].argmax(-1))
    assert bool((out.soft_weights[:, 0] == 1).all()) and bool((out.soft_weights[:, 1:] == 0).all())


def test_bad_input():
    lg, dp = _inputs(B=2, K=2, V=300)
    with pytest.raises(ValueError, match="filter_top_k"):
        softdec.verify(lg, None, draft_probs=dp, method="soft", filter_top_k=5)  # < top_k (10)
    with pytest.raises(ValueError, match="filter_top_k"):
        softdec.verify(lg, None, draft_probs=dp, method="soft", filter_top_k=-1)
    with pytest.raises(ValueError, match="filter_top_k"):
        softdec.verify(lg, None, draft_probs=dp, method="soft", filter_top_k=257)
    with pytest.raises(ValueError, match="filter_top_k"):
        softdec.verify(lg, None, draft_probs=dp, method="soft", filter_top_k=torch.tensor([30, 4]))
    with pytest.raises(ValueError, match="filter_top_k"):
        softdec.verify(lg, None, draft_probs=dp, method="soft", filter_top_k=torch.tensor([30]))
    with pytest.raises(ValueError, match="top_k"):
        softdec.verify(lg, None, draft_probs=dp, method="soft", top_k=8, filter_top_k=6)
    d = torch.zeros(2, 2, dtype=torch.long)
    for m in ("exact", "greedy", "typical"):
        with pytest.raises(ValueError, match="filter_top_k"):
            softdec.verify(lg, d, method=m, filter_top_k=30)
    # the op itself (no wrapper) refuses a bad row value and a non-soft method
    n = torch.full((2,), 2, dtype=torch.long)
    f = lambda v: torch.full((2,), v, dtype=torch.float32)  # noqa: E731
    i = lambda v: torch.full((2,), v, dtype=torch.long)  # noqa: E731
    with pytest.raises((RuntimeError, ValueError), match="filter_top_k"):
        torch.ops.softdec.verify(lg, dp[0][..., 0].contiguous(), n, None, dp[0], dp[1], None, 4, f(1.0), i(0), f(1.0),
                                 f(0.0), 0.09, 0.3, 0.1, i(0), i(0), i(3))
    with pytest.raises((RuntimeError, ValueError), match="filter_top_k"):
        torch.ops.softdec.verify(lg, d, n, None, None, None, None, 0, f(1.0), i(0), f(1.0),
                                 f(0.0), 0.09, 0.3, 0.1, i(0), i(0), i(30))


def _op_args(lg, dp, fk):
    B = lg.shape[0]
    f = lambda v: torch.full((B,), v, dtype=torch.float32)  # noqa: E731
    i = lambda v: torch.full((B,), v, dtype=torch.long)  # noqa: E731
    return (lg, dp[0][..., 0].contiguous(), i(lg.shape[1] - 1), None, dp[0], dp[1], None, 4, f(0.6), i(0),
            f(0.95), f(0.001), 0.09, 0.3, 0.1, i(0), i(0), fk)


def test_opcheck():
    lg, dp = _inputs(B=3, K=2, V=300)
    torch.library.opcheck(torch.ops.softdec.verify.default, _op_args(lg, dp, torch.tensor([30, 0, 10])))


def test_compile_fullgraph():
    lg, dp = _inputs(B=3, K=2, V=300)

    def f(x, ids, w):
        return softdec.verify(x, None, draft_probs=(ids, w), method="soft", filter_top_k=30, **SETTINGS)

    want = f(lg, *dp)
    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True)(lg, *dp)
    for x, y in zip(want, got):
        assert torch.equal(x, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fk", [30, 0])
@pytest.mark.parametrize("B", [1, 5])  # B = 1: the vocabulary passes split over threads
def test_large_vocab_soft_token_equals_soft_mixture(fk, dtype, B):
    """The vector passes (candidate scan, whole-vocabulary mass) on a long row with -inf entries."""
    g = torch.Generator().manual_seed(11)
    V = 20_011
    lg = (3.0 * torch.randn(B, 1, V, generator=g)).to(dtype)
    lg[:, :, ::7] = float("-inf")
    dp = _soft_draft(B, 1, V, K_OUT, g)
    z = torch.zeros(B, 0, dtype=torch.long)
    out = softdec.verify(lg, z, draft_probs=(dp[0][:, :0], dp[1][:, :0]), method="soft", filter_top_k=fk,
                         **SETTINGS)
    sm = softdec.soft_mixture(lg[:, 0], torch.zeros(V, 4), top_k=K_OUT, filter_top_k=fk, **SETTINGS)
    kept = sm[2] > 0
    assert torch.equal(out.soft_ids[kept], sm[1][kept])
    torch.testing.assert_close(out.soft_weights, torch.where(kept, sm[2], torch.zeros_like(sm[2])).float(),
                               rtol=2e-6, atol=1e-7)
    r = ref.verify(lg.double(), z, draft_probs=(dp[0][:, :0], dp[1][:, :0]), method="soft", filter_top_k=fk,
                   **SETTINGS)
    assert torch.equal(r.soft_weights > 0, kept)
    assert torch.equal(r.soft_ids[kept], out.soft_ids[kept])
    torch.testing.assert_close(out.soft_weights.double(), r.soft_weights.double(), rtol=1e-5, atol=1e-7)
