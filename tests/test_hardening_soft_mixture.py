"""soft_mixture hardening (issue 14): the entropy / max_prob gradients w.r.t. the
logits stay right for logits of any magnitude and any temperature."""
import pytest
import torch

import softdec


def _reference_grads(logits, temperature, g_h=1.0, g_m=0.0):
    """float64 autograd of g_h * H(p) + g_m * max p, p = softmax(logits / T)."""
    x = logits.double().clone().requires_grad_(True)
    lp = torch.log_softmax(x / temperature, -1)
    p = lp.exp()
    h = -(p * torch.where(p > 0, lp, torch.zeros_like(lp))).sum(-1)  # 0 log 0 = 0, no 0 * inf in backward
    (g_h * h.sum() + g_m * p.max(-1).values.sum()).backward()
    return x.grad


CASES = {
    # every logit -1e30: uniform p, dH/dx = 0 (the lse form gave -log 3 per entry)
    "all_minus_1e30": (torch.full((1, 3), -1e30), 1.0),
    # two huge equal logits: dH/dx = 0 (the lse form gave -log 2 on both)
    "huge_pair": (torch.tensor([[1e10, 1e10, 0.0]]), 1.0),
    "huge_pair_hot": (torch.tensor([[1e10, 1e10, 0.0]]), 1e6),
    "huge_spread_hot": (torch.tensor([[3e37, -3e37, 1e37, 0.0]]), 1e6),
    "normal_hot": (torch.randn(2, 50, generator=torch.Generator().manual_seed(0)) * 3, 1e6),
    "normal": (torch.randn(3, 200, generator=torch.Generator().manual_seed(1)) * 3, 0.7),
    "with_minus_inf": (torch.tensor([[2.0, float("-inf"), 1.0, float("-inf"), -1.0]]), 1.0),
    "offset_1e6": (torch.randn(2, 64, generator=torch.Generator().manual_seed(2)) + 1e6, 1.0),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("g_h,g_m", [(1.0, 0.0), (0.0, 1.0), (0.5, -2.0)])
def test_entropy_and_max_prob_gradient_any_magnitude(name, g_h, g_m):
    logits, temperature = CASES[name]
    V = logits.shape[-1]
    x = logits.clone().requires_grad_(True)
    out = softdec.soft_mixture(x, torch.randn(V, 4), top_k=min(3, V), temperature=temperature, seed=0)
    assert out.valid.all()
    (g_h * out.entropy.sum() + g_m * out.max_prob.sum()).backward()
    ref = _reference_grads(logits, temperature, g_h, g_m)
    assert torch.isfinite(x.grad).all()
    # float32 gradient of a float32-rounded p: absolute error a few ulps of the largest term
    scale = ref.abs().max().item() + 1.0 / temperature
    torch.testing.assert_close(x.grad.double(), ref, rtol=0, atol=4e-6 * scale)


def test_entropy_gradient_huge_logits_is_exactly_zero_where_uniform():
    for logits in (torch.full((1, 3), -1e30), torch.full((2, 1000), 3e38), torch.tensor([[1e10, 1e10, 0.0]])):
        x = logits.clone().requires_grad_(True)
        softdec.soft_mixture(x, torch.randn(logits.shape[1], 2), top_k=2, seed=0).entropy.sum().backward()
        assert torch.equal(x.grad, torch.zeros_like(x.grad)), (logits[0, :3], x.grad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_entropy_gradient_half_logits(dtype):
    logits = (torch.randn(2, 300, generator=torch.Generator().manual_seed(3)) * 4).to(dtype)
    x = logits.clone().requires_grad_(True)
    softdec.soft_mixture(x, torch.randn(300, 8), top_k=5, seed=0).entropy.sum().backward()
    ref = _reference_grads(logits, 1.0)
    # the gradient comes back in the logits' dtype: half-precision rounding of each entry
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(x.grad.double(), ref, rtol=eps, atol=eps * ref.abs().max().item())


def test_entropy_gradcheck_float64():
    logits = torch.randn(2, 17, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 2
    emb = torch.randn(17, 3, dtype=torch.float64)

    def f(x):
        o = softdec.soft_mixture(x, emb, top_k=17, seed=0, temperature=0.8)
        return o.entropy, o.max_prob

    assert torch.autograd.gradcheck(f, (logits.clone().requires_grad_(True),), eps=1e-6, atol=1e-6)
