"""The wrappers' argument layer (python/softdec/_params.py): scalar parameters are
turned into per-row tensors once and reused (CPU), which must never change a result
or skip a range check, and the no-gradient fast path must keep gradients working."""
import pytest
import torch

import softdec
from softdec import _params, reference


def test_cached_scalar_still_range_checked_per_argument():
    dev = torch.device("cpu")
    t = _params.row_param(2.0, "temperature", 3, dev, torch.float64, lo=0)
    assert t.tolist() == [2.0, 2.0, 2.0]
    # the same value is out of range for another argument: the cache must not bypass the check
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 2.0"):
        _params.row_param(2.0, "top_p", 3, dev, torch.float64, lo=0, hi=1, lo_open=True)
    with pytest.raises(ValueError, match="temperature must not be NaN"):
        _params.row_param(float("nan"), "temperature", 3, dev, torch.float64, lo=0)


def test_cached_rows_follow_value_batch_and_dtype():
    dev = torch.device("cpu")
    a = _params.row_param(1, "top_k", 2, dev, torch.int64, lo=0)
    b = _params.row_param(1.0, "temperature", 2, dev, torch.float64, lo=0)
    c = _params.row_param(1, "top_k", 5, dev, torch.int64, lo=0)
    assert a.dtype == torch.int64 and a.shape == (2,)
    assert b.dtype == torch.float64 and b.shape == (2,)
    assert c.shape == (5,) and c.tolist() == [1] * 5
    s, o = _params.rng_state(7, 3, 4, dev)  # an int seed: row b keyed by row_seed(7, b)
    assert s.tolist() == [reference.row_seed(7, b) for b in range(4)] and o.tolist() == [3] * 4
    assert _params.rng_state(7, 3, 4, dev)[0] is s  # cached
    s2, _ = _params.rng_state((1 << 64) - 1, 0, 2, dev)  # uint64 seed, as int64 bits
    assert s2.tolist() == [reference.row_seed(-1, b) for b in range(2)]
    s3, _ = _params.rng_state(torch.tensor([7, -1]), 0, 2, dev)  # a tensor: the keys as given
    assert s3.tolist() == [7, -1]


def test_cache_is_bounded():
    dev = torch.device("cpu")
    for i in range(3 * _params._CONST_ROWS_MAX):
        _params.rng_state(i, i, 1, dev)
    assert len(_params._CONST_ROWS) <= _params._CONST_ROWS_MAX


def test_alternating_scalars_match_per_row_tensors():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 300, generator=g) * 2
    table = torch.randn(300, 16)
    for temp, tp, k in [(0.6, 0.9, 5), (1.0, 1.0, 7), (0.6, 0.9, 5), (0.0, 0.5, 3)]:
        got = softdec.soft_mixture(logits, table, top_k=k, temperature=temp, top_p=tp)
        per_row = softdec.soft_mixture(logits, table, top_k=torch.full((3,), k),
                                       temperature=torch.full((3,), temp), top_p=torch.full((3,), tp))
        want = reference.soft_mixture(logits.double(), table.double(), top_k=k, temperature=temp, top_p=tp)
        torch.testing.assert_close(got.embeds, per_row.embeds)
        torch.testing.assert_close(got.weights.double(), want[2], atol=1e-6, rtol=1e-5)
        a = softdec.sample(logits, temperature=temp, top_p=tp, top_k=k, seed=11, offset=2)
        b = softdec.sample(logits, temperature=torch.full((3,), temp), top_p=torch.full((3,), tp),
                           top_k=torch.full((3,), k), seed=reference.row_keys(11, 3), offset=torch.full((3,), 2))
        assert torch.equal(a.ids, b.ids)


def test_fast_path_keeps_gradients():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 50, generator=g, requires_grad=True)
    table = torch.randn(50, 8, requires_grad=True)
    out = softdec.soft_mixture(logits, table, top_k=4)
    out.embeds.sum().backward()
    assert logits.grad is not None and table.grad is not None
    assert logits.grad.abs().sum() > 0 and table.grad.abs().sum() > 0
    with torch.no_grad():
        out2 = softdec.soft_mixture(logits, table, top_k=4)
    assert out2.embeds.grad_fn is None
    torch.testing.assert_close(out2.embeds, out.embeds.detach())
    y = softdec.gumbel_softmax(logits, tau=0.5, seed=3)
    assert y.grad_fn is not None
    ids, w = softdec.gumbel_softmax(logits.detach(), tau=0.5, top_k=3, seed=3)
    assert w.grad_fn is None and ids.shape == (2, 3)


def test_settings_tuple_cache_keeps_checks_and_types():
    # sample / soft_mixture cache the checked per-row tensors of an all-scalar
    # setting: a hit must not skip the check of a different value or type
    x = torch.randn(3, 50)
    a = softdec.sample(x, top_k=5, top_p=0.9, seed=1)
    b = softdec.sample(x, top_k=5, top_p=0.9, seed=1)
    assert torch.equal(a.ids, b.ids)
    with pytest.raises(ValueError, match="top_p must be in"):
        softdec.sample(x, top_k=5, top_p=1.5, seed=1)
    with pytest.raises(ValueError, match="top_k must be a"):
        softdec.sample(x, top_k=True)  # bool is not an int here: not the cached int 1
    table = torch.randn(50, 8)
    good = softdec.soft_mixture(x, table, top_k=4, temperature=0.7, tau=0.5, noise="gumbel", seed=2)
    again = softdec.soft_mixture(x, table, top_k=4, temperature=0.7, tau=0.5, noise="gumbel", seed=2)
    assert torch.equal(good.embeds, again.embeds)
    with pytest.raises(ValueError, match="tau must be > 0"):
        softdec.soft_mixture(x, table, top_k=4, temperature=0.7, tau=-0.5, noise="gumbel", seed=2)
    with pytest.raises(ValueError, match="noise must be None"):
        softdec.soft_mixture(x, table, top_k=4, noise="uniform")
    # 1 and 1.0 hash alike: the cached tuple of one must not serve the other's dtype checks
    w1 = softdec.soft_mixture(x, table, top_k=4, temperature=1).weights
    w2 = softdec.soft_mixture(x, table, top_k=4, temperature=1.0).weights
    assert torch.equal(w1, w2)
    with pytest.raises(ValueError, match="top_k"):
        softdec.soft_mixture(x, table, top_k=4.0)


def test_soft_mixture_many_slices_match_one_thread():
    # B=1 splits a row in one slice per thread: with 16 threads and k=64 the merge
    # sees 16 * 64 candidates, more than its buffer holds between compactions
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 16 * 4096 + 123, generator=g) * 3
    x[0, 100] = x[0, 60000] = x.max() + 1  # a tie across slices
    table = torch.randn(x.shape[1], 8, generator=g)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(16)
        many = softdec.soft_mixture(x, table, top_k=64, temperature=0.7)
        torch.set_num_threads(1)
        one = softdec.soft_mixture(x, table, top_k=64, temperature=0.7)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(many.ids, one.ids)
    assert many.ids[0, 0] == 100 and many.ids[0, 1] == 60000
    torch.testing.assert_close(many.weights, one.weights)
    torch.testing.assert_close(many.embeds, one.embeds)
