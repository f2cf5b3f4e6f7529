"""softdec.gumbel_log_density / dirichlet_log_density / gaussian_log_density: float64
references (incl. SofT-GRPO's trainer formula), the round trip through soft_mixture's
noise, consistency with the samplers at >= 1e5 draws (mean log-likelihood, zero-mean
score, normalisation), gradcheck, opcheck, torch.compile and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

import softdec
from softdec import reference as ref

EULER = 0.5772156649015329
LD_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _rollout(B, V, k, *, dtype=torch.float32, device="cpu", noise="gumbel", seed=0, scale=2.0, **kw):
    g = torch.Generator().manual_seed(B * 1000 + V + k)
    logits = (torch.randn(B, V, generator=g) * scale).to(dtype).to(device)
    table = torch.zeros(V, 4, device=device)
    tok = softdec.soft_mixture(logits, table, top_k=k, noise=noise, seed=seed, **kw)
    return logits, tok


# ---------------------------------------------------------------- references

@pytest.mark.parametrize("dtype", LD_DTYPES)
@pytest.mark.parametrize("B,V,k", [(1, 7, 1), (5, 50, 5), (64, 1000, 10), (2, 151936, 5), (3, 300, 64)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gumbel_matches_reference(device, dtype, B, V, k, reduction):
    logits, tok = _rollout(B, V, k, dtype=dtype, device=device, temperature=0.7, top_p=0.9)
    # new logits: the policy moved
    new = (logits.float() + 0.3 * torch.randn(B, V, device=device)).to(dtype)
    kw = dict(temperature=0.7, noise_scale=1.3, gumbel_clamp=(-1.5, 3.0), gumbel_eps=1e-6, reduction=reduction)
    got = softdec.gumbel_log_density(new, tok.ids, tok.noisy_logits, **kw)
    want = ref.gumbel_log_density(new.cpu(), tok.ids.cpu(), tok.noisy_logits.cpu(), **kw)
    assert got.dtype == torch.float32 and got.shape == want.shape
    # the kernel reads the same quantised logits; float32 arithmetic on O(1) values
    torch.testing.assert_close(got.cpu().double(), want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", LD_DTYPES)
def test_gumbel_matches_soft_grpo_trainer(device, dtype):
    """SofT-GRPO's trainer formula (clamp [-1.5, 3], log(pi + 1e-6), mean over log(pi + 1e-6) > -3)
    on the same inputs, within 1e-3; peaked rows make the mask and the clamp active."""
    B, V, k = 256, 2000, 5
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(B, V, generator=g) * torch.linspace(0.5, 6, B)[:, None]
    logits = logits.to(dtype).to(device)
    tok = softdec.soft_mixture(logits, torch.zeros(V, 4, device=device), top_k=k, noise="gumbel",
                               seed=torch.arange(B, device=device))
    new = (logits.float() + 0.5 * torch.randn(B, V, generator=g).to(device)).to(dtype)
    got = softdec.gumbel_log_density(new, tok.ids, tok.noisy_logits, gumbel_clamp=(-1.5, 3), gumbel_eps=1e-6,
                                     min_log_weight=-3)
    want = ref.soft_grpo_gumbel_log_prob(new.cpu(), tok.ids.cpu(), tok.noisy_logits.cpu())
    assert (got.cpu().double() - want).abs().max() <= 1e-3
    # the settings matter: the clamp and the mask both change the value on these rows
    plain = softdec.gumbel_log_density(new, tok.ids, tok.noisy_logits)
    assert (plain.cpu().double() - want).abs().max() > 1e-2


@pytest.mark.parametrize("dtype", LD_DTYPES)
@pytest.mark.parametrize("B,V,k", [(1, 5, 1), (8, 40, 4), (64, 1000, 10), (2, 151936, 5)])
def test_dirichlet_matches_reference(device, dtype, B, V, k):
    logits, tok = _rollout(B, V, k, dtype=dtype, device=device, noise="dirichlet", dirichlet_alpha=4.0,
                           temperature=0.8, top_p=0.95)
    new = (logits.float() + 0.3 * torch.randn(B, V, device=device)).to(dtype)
    got = softdec.dirichlet_log_density(new, tok.ids, tok.weights, temperature=0.8, alpha=4.0)
    want = ref.dirichlet_log_density(new.cpu(), tok.ids.cpu(), tok.weights.cpu(), temperature=0.8, alpha=4.0)
    torch.testing.assert_close(got.cpu().double(), want, atol=1e-4, rtol=1e-5)


def test_dirichlet_matches_scipy():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 30, generator=g, dtype=torch.float64)
    ids = torch.stack([torch.randperm(30, generator=g)[:4] for _ in range(6)])
    w = torch.distributions.Dirichlet(torch.ones(6, 4, dtype=torch.float64)).sample()
    got = softdec.dirichlet_log_density(logits, ids, w, alpha=2.5, temperature=0.9)
    pi = torch.softmax(logits / 0.9, 1).gather(1, ids)
    pi = pi / pi.sum(1, keepdim=True)
    for b in range(6):
        want = stats.dirichlet(2.5 * pi[b].numpy()).logpdf(w[b].numpy())
        assert abs(got[b].item() - want) < 1e-9


@pytest.mark.parametrize("dtype", LD_DTYPES + [torch.float64])
@pytest.mark.parametrize("B,D", [(1, 1), (3, 17), (64, 1536), (0, 8)])
def test_gaussian_matches_reference(device, dtype, B, D):
    x = torch.randn(B, D, device=device).to(dtype)
    mean = (x.float() + 0.1 * torch.randn(B, D, device=device)).to(dtype)
    got = softdec.gaussian_log_density(x, mean, std=0.1)
    want = ref.gaussian_log_density(x.cpu(), mean.cpu(), std=0.1)
    assert got.shape == (B,)
    torch.testing.assert_close(got.cpu().double(), want, atol=1e-4, rtol=1e-5)
    want_t = torch.distributions.Normal(mean.double().cpu(), 0.1).log_prob(x.double().cpu()).sum(1)
    torch.testing.assert_close(want, want_t)


def test_nkept_padding_and_default():
    """Rows with fewer kept tokens (top_p): padding (y = -inf, weight 0) is excluded, and
    nkept=None finds it; an explicit nkept that cuts a row shorter gives pi over that prefix."""
    logits, tok = _rollout(32, 200, 8, top_p=0.6, temperature=0.8, scale=3.0)
    nk = (tok.noisy_logits > -math.inf).sum(1)
    assert (nk < 8).any()
    a = softdec.gumbel_log_density(logits, tok.ids, tok.noisy_logits, temperature=0.8)
    b = softdec.gumbel_log_density(logits, tok.ids, tok.noisy_logits, temperature=0.8, nkept=nk)
    assert torch.equal(a, b)
    short = torch.clamp(nk - 1, min=0)
    c = softdec.gumbel_log_density(logits, tok.ids, tok.noisy_logits, temperature=0.8, nkept=short,
                                   reduction="none")
    want = ref.gumbel_log_density(logits, tok.ids, tok.noisy_logits, temperature=0.8, nkept=short,
                                  reduction="none")
    torch.testing.assert_close(c.double(), want, atol=2e-5, rtol=1e-5)
    assert (c[torch.arange(8)[None, :] >= short[:, None]] == 0).all()
    # a row with nothing kept: 0, and no gradient
    z = softdec.gumbel_log_density(logits[:2], tok.ids[:2], tok.noisy_logits[:2], nkept=0)
    assert torch.equal(z, torch.zeros(2))


# ---------------------------------------------------------------- round trip and the samplers

@pytest.mark.parametrize("noise_scale", [1.0, 0.5])
def test_round_trip_is_the_rollout_gumbel_draw(device, noise_scale):
    """Under the rollout's own logits, z_i is exactly the Philox Gumbel draw of token ids_i:
    v_i = -log s - G_i - exp(-G_i), G_i = -log(-log u), u = element ids_i of (seed, offset)."""
    B, V, k = 16, 500, 6
    logits, tok = _rollout(B, V, k, device=device, temperature=0.6, noise_scale=noise_scale, seed=11)
    got = softdec.gumbel_log_density(logits, tok.ids, tok.noisy_logits, temperature=0.6, noise_scale=noise_scale,
                                     reduction="none")
    u = ref.philox_at(ref.row_keys(11, B), 0, tok.ids.cpu()).double()  # an int seed: folded row keys
    G = -torch.log(-torch.log(u))
    want = -math.log(noise_scale) - G - torch.exp(-G)
    torch.testing.assert_close(got.cpu().double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif("gumbel_eps" not in __import__("inspect").signature(softdec.soft_mixture).parameters,
                    reason="soft_mixture has no gumbel_eps / gumbel_clamp yet (SofT-GRPO noise options)")
def test_round_trip_with_soft_grpo_noise_options(device):
    """With soft_mixture's y = log(w + eps) + s * clamp(G) (SofT-GRPO's rollout), the density with the
    same eps and clamp sees z = clamp(G)."""
    B, V, k = 16, 500, 5
    kw = dict(noise_scale=0.7, gumbel_eps=1e-6, gumbel_clamp=(-1.5, 3.0))
    logits, tok = _rollout(B, V, k, device=device, temperature=0.6, seed=11, **kw)
    got = softdec.gumbel_log_density(logits, tok.ids, tok.noisy_logits, temperature=0.6, reduction="none", **kw)
    u = ref.philox_at(ref.row_keys(11, B), 0, tok.ids.cpu()).double()  # an int seed: folded row keys
    G = (-torch.log(-torch.log(u))).clamp(-1.5, 3.0)
    want = -math.log(0.7) - G - torch.exp(-G)
    torch.testing.assert_close(got.cpu().double(), want, atol=1e-4, rtol=1e-5)


def _many(noise, N, **kw):
    """N independent rollouts of one row (per-row seeds)."""
    g = torch.Generator().manual_seed(5)
    row = torch.randn(1, 8, generator=g, dtype=torch.float64) * 1.5
    logits = row.expand(N, 8).contiguous()
    tok = softdec.soft_mixture(logits, torch.zeros(8, 2, dtype=torch.float64), top_k=3, noise=noise,
                               seed=torch.arange(N), **kw)
    return logits, tok


def test_gumbel_density_consistent_with_sampler():
    """1e5 rollouts: z is Gumbel(0, 1) (KS), the mean log-likelihood is -(1 + gamma) per entry, and
    the score (gradient of the log-density w.r.t. the logits) has mean 0."""
    N = 100_000
    logits, tok = _many("gumbel", N)
    # z = y - log pi (pi: float64 softmax renormalised over the kept ids) is the rollout's Gumbel draw
    lp = torch.log(torch.softmax(logits, 1).gather(1, tok.ids))
    lp = lp - torch.logsumexp(lp, 1, keepdim=True)
    z = (tok.noisy_logits - lp).reshape(-1)
    assert stats.kstest(z.numpy(), stats.gumbel_r.cdf).pvalue > 1e-3
    x = logits.clone().requires_grad_()
    v = softdec.gumbel_log_density(x, tok.ids, tok.noisy_logits, reduction="mean")
    m, se = v.mean().item(), v.std().item() / math.sqrt(N)
    assert abs(m + 1 + EULER) < 5 * se
    v.sum().backward()
    score = x.grad  # (N, 8), per draw
    mean, se = score.mean(0), score.std(0) / math.sqrt(N)
    assert (mean.abs() <= 5 * se + 1e-12).all(), (mean, se)


@pytest.mark.parametrize("noise_scale", [1.0, 0.4, 2.5])
def test_gumbel_density_integrates_to_one(noise_scale):
    """One kept entry (pi = 1): exp(log-density) over a grid of y integrates to 1, which needs
    the -log(noise_scale) Jacobian term."""
    y = torch.linspace(-12 * noise_scale, 40 * noise_scale, 200_001, dtype=torch.float64)
    logits = torch.zeros(y.numel(), 3, dtype=torch.float64)
    ids = torch.zeros(y.numel(), 1, dtype=torch.int64)
    v = softdec.gumbel_log_density(logits, ids, y[:, None], noise_scale=noise_scale)
    assert abs(torch.trapezoid(v.exp(), y).item() - 1) < 1e-6


def test_dirichlet_density_consistent_with_sampler():
    """1e5 rollouts of soft_mixture(noise="dirichlet"): the mean log-likelihood is minus the
    Dirichlet's differential entropy and the score has mean 0."""
    N, alpha = 100_000, 4.0
    logits, tok = _many("dirichlet", N, dirichlet_alpha=alpha)
    x = logits.clone().requires_grad_()
    v = softdec.dirichlet_log_density(x, tok.ids, tok.weights, alpha=alpha)
    # entropy per distinct kept set (the sampler sorts by weight, so ids are permuted per row)
    pi = torch.softmax(logits[0], 0)
    keys = torch.sort(tok.ids, 1).values
    top = torch.sort(torch.topk(logits[0], 3).indices).values
    assert (keys == top).all()
    a = alpha * pi[top] / pi[top].sum()
    H = stats.dirichlet(a.numpy()).entropy()
    m, se = v.mean().item(), v.std().item() / math.sqrt(N)
    assert abs(m + H) < 5 * se, (m, -H, se)
    v.sum().backward()
    mean, se = x.grad.mean(0), x.grad.std(0) / math.sqrt(N)
    assert (mean.abs() <= 5 * se + 1e-12).all(), (mean, se)


def test_gaussian_density_consistent_with_samples():
    N, D, std = 100_000, 6, 0.3
    mean = torch.randn(1, D, dtype=torch.float64).expand(N, D).contiguous()
    x = mean + std * torch.randn(N, D, dtype=torch.float64)
    m = mean.clone().requires_grad_()
    v = softdec.gaussian_log_density(x, m, std=std)
    want = -0.5 * D * (1 + math.log(2 * math.pi * std * std))
    assert abs(v.mean().item() - want) < 5 * v.std().item() / math.sqrt(N)
    v.sum().backward()
    mu, se = m.grad.mean(0), m.grad.std(0) / math.sqrt(N)
    assert (mu.abs() <= 5 * se).all()


# ---------------------------------------------------------------- autograd, opcheck, compile

def _f64_case(k=5, V=12, B=3):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(B, V, generator=g, dtype=torch.float64)
    ids = torch.stack([torch.randperm(V, generator=g)[:k] for _ in range(B)])
    y = torch.randn(B, k, generator=g, dtype=torch.float64)
    return logits, ids, y


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gumbel_gradcheck(reduction):
    logits, ids, y = _f64_case()
    nk = torch.tensor([5, 3, 1])
    temp = torch.tensor([0.7, 1.0, 1.3], dtype=torch.float64)

    def f(lg, yy):
        return softdec.gumbel_log_density(lg, ids, yy, temperature=temp, noise_scale=0.8, gumbel_clamp=(-1.0, 2.0),
                                          gumbel_eps=1e-3, nkept=nk, reduction=reduction, min_log_weight=-2.5)

    inputs = (logits.requires_grad_(), y.requires_grad_())
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)
    # gradients of kernel == autograd of the float64 reference
    got = torch.autograd.grad(f(*inputs).sum(), inputs)
    want = torch.autograd.grad(ref.gumbel_log_density(
        inputs[0], ids, inputs[1], temperature=temp, noise_scale=0.8, gumbel_clamp=(-1.0, 2.0), gumbel_eps=1e-3,
        nkept=nk, reduction=reduction, min_log_weight=-2.5).sum(), inputs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_dirichlet_gradcheck():
    logits, ids, _ = _f64_case(k=4)
    w = torch.distributions.Dirichlet(torch.full((3, 4), 2.0, dtype=torch.float64)).sample()
    w[2, 3] = 0  # row 2 keeps 3 entries (nkept from weights != 0)
    w[2] = w[2] / w[2].sum()

    def f(lg, ww):
        return softdec.dirichlet_log_density(lg, ids, ww, alpha=3.0, temperature=0.8, nkept=torch.tensor([4, 4, 3]))

    assert torch.autograd.gradcheck(f, (logits.requires_grad_(), w.requires_grad_()), eps=1e-7, atol=1e-5)


def test_gaussian_gradcheck():
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    m = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: softdec.gaussian_log_density(a, b, std=0.7), (x, m))


@pytest.mark.parametrize("dtype", LD_DTYPES)
def test_low_precision_gradients_match_reference(dtype):
    logits, tok = _rollout(8, 3000, 5, dtype=dtype, temperature=0.7)
    x = logits.clone().requires_grad_()
    softdec.gumbel_log_density(x, tok.ids, tok.noisy_logits, temperature=0.7, gumbel_clamp=(-1.5, 3)).sum().backward()
    xr = logits.double().requires_grad_()
    ref.gumbel_log_density(xr, tok.ids, tok.noisy_logits, temperature=0.7, gumbel_clamp=(-1.5, 3)).sum().backward()
    assert x.grad.dtype == dtype
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-3}[dtype]
    torch.testing.assert_close(x.grad.double(), xr.grad, atol=tol, rtol=tol)
    # zero outside the kept ids
    mask = torch.ones_like(x.grad, dtype=torch.bool).scatter_(1, tok.ids, False)
    assert (x.grad[mask] == 0).all()


def _native_gumbel_args(dtype=torch.float32):
    logits, ids, y = _f64_case()
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return (logits.to(dtype), ids, y.to(acc), torch.tensor([5, 3, 0]), torch.tensor([0.7, 1.0, 1.3], dtype=torch.float64),
            0.8, -1.0, 2.0, 1e-3, -2.5)


@pytest.mark.parametrize("reduction", [0, 1, 2])
def test_opcheck(reduction):
    args = _native_gumbel_args() + (reduction,)
    torch.library.opcheck(torch.ops.softdec.gumbel_log_density, args)
    g = torch.ones(3, 5) if reduction == 0 else torch.ones(3)
    torch.library.opcheck(torch.ops.softdec.gumbel_log_density_backward, (g,) + args)
    lg = args[0].clone().requires_grad_()
    torch.library.opcheck(torch.ops.softdec.gumbel_log_density, (lg,) + args[1:])
    logits, ids, _ = _f64_case(k=4)
    w = torch.distributions.Dirichlet(torch.full((3, 4), 2.0)).sample()
    dargs = (logits.float(), ids, w, torch.tensor([4, 4, 4]), torch.ones(3, dtype=torch.float64), 2.0)
    torch.library.opcheck(torch.ops.softdec.dirichlet_log_density, dargs)
    torch.library.opcheck(torch.ops.softdec.dirichlet_log_density_backward, (torch.ones(3),) + dargs)
    x, m = torch.randn(3, 9), torch.randn(3, 9)
    torch.library.opcheck(torch.ops.softdec.gaussian_log_density, (x, m, 0.5))
    torch.library.opcheck(torch.ops.softdec.gaussian_log_density_backward, (torch.ones(3), x, m, 0.5))


def test_torch_compile_fullgraph():
    logits, tok = _rollout(6, 400, 5, temperature=0.7)
    _, dtok = _rollout(6, 400, 5, noise="dirichlet", dirichlet_alpha=2.0)
    x = torch.randn(6, 16)

    def f(lg, ids, y, w, dids, xx, mean):
        a = softdec.gumbel_log_density(lg, ids, y, temperature=0.7, gumbel_clamp=(-1.5, 3), gumbel_eps=1e-6)
        b = softdec.dirichlet_log_density(lg, dids, w, alpha=2.0)
        c = softdec.gaussian_log_density(xx, mean, std=0.5)
        return a + b + c

    args = (logits, tok.ids, tok.noisy_logits, dtok.weights, dtok.ids, x, x + 0.1)
    cf = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(cf(*args), f(*args))
    lg1, lg2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    cf(lg1, *args[1:]).sum().backward()
    f(lg2, *args[1:]).sum().backward()
    torch.testing.assert_close(lg1.grad, lg2.grad)


# ---------------------------------------------------------------- bad input

def test_bad_input():
    logits, ids, y = _f64_case()
    lf, yf = logits.float(), y.float()
    gl = softdec.gumbel_log_density
    with pytest.raises(ValueError, match=r"y must have the shape of ids \(3, 5\), got \(3, 4\)"):
        gl(lf, ids, yf[:, :4])
    ynan = yf.clone()
    ynan[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"y must be finite in the kept entries .* got nan at row 1, entry 2"):
        gl(lf, ids, ynan)
    bad_ids = ids.clone()
    bad_ids[0, 1] = 12
    with pytest.raises(ValueError, match=r"ids must be in \[0, 12\) \(the vocabulary of logits\), got 12 at row 0"):
        gl(lf, bad_ids, yf)
    with pytest.raises(ValueError, match=r"gumbel_clamp must be \(lo, hi\) with lo < hi, got \(3.0, -1.5\)"):
        gl(lf, ids, yf, gumbel_clamp=(3, -1.5))
    with pytest.raises(ValueError, match=r"gumbel_clamp must be None or a pair"):
        gl(lf, ids, yf, gumbel_clamp=3.0)
    with pytest.raises(ValueError, match=r"y must be float32 for float32 logits"):
        gl(lf, ids, y)
    with pytest.raises(ValueError, match=r"ids must have dtype in \(int64\), got int32"):
        gl(lf, ids.int(), yf)
    with pytest.raises(ValueError, match=r"temperature must be > 0"):
        gl(lf, ids, yf, temperature=0.0)
    with pytest.raises(ValueError, match=r"noise_scale must be > 0"):
        gl(lf, ids, yf, noise_scale=-1.0)
    with pytest.raises(ValueError, match=r"reduction must be 'mean', 'sum' or 'none'"):
        gl(lf, ids, yf, reduction="avg")
    with pytest.raises(ValueError, match=r"nkept must be in \[0, 5\]"):
        gl(lf, ids, yf, nkept=6)
    with pytest.raises(ValueError, match=r"gumbel_eps must be >= 0"):
        gl(lf, ids, yf, gumbel_eps=-1e-6)
    w = torch.full((3, 5), 0.2)
    dl = softdec.dirichlet_log_density
    with pytest.raises(ValueError, match=r"weights must lie on the simplex: the kept entries of row 0 sum to 7.5 \(tolerance 1e-3\)"):
        dl(lf, ids, torch.cat([w[:1] * 7.5, w[1:]]))
    wn = w.clone()
    wn[1, 0], wn[1, 1] = -0.1, 0.5
    with pytest.raises(ValueError, match=r"weights must lie on the simplex .* got -0.1\d* at row 1, entry 0"):
        dl(lf, ids, wn)
    with pytest.raises(ValueError, match=r"alpha must be > 0"):
        dl(lf, ids, w, alpha=0.0)
    with pytest.raises(ValueError, match=r"std must be > 0"):
        softdec.gaussian_log_density(torch.zeros(2, 3), torch.zeros(2, 3), std=0.0)
    with pytest.raises(ValueError, match=r"mean must have the dtype of x \(float32\), got bfloat16"):
        softdec.gaussian_log_density(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bfloat16), std=1.0)
    with pytest.raises(ValueError, match=r"mean must have the shape of x \(2, 3\), got \(2, 4\)"):
        softdec.gaussian_log_density(torch.zeros(2, 3), torch.zeros(2, 4), std=1.0)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"y must be on the same device as logits \(cpu\), got cuda:0"):
            gl(lf, ids, yf.cuda())
    # the native ops check too (called directly)
    with pytest.raises(ValueError, match=r"gumbel_clamp must be \(lo, hi\) with lo < hi"):
        torch.ops.softdec.gumbel_log_density(lf, ids, yf, torch.full((3,), 5), torch.ones(3, dtype=torch.float64),
                                             1.0, 2.0, 1.0, 0.0, -math.inf, 2)
    with pytest.raises(ValueError, match=r"y must be float32, got float64"):
        torch.ops.softdec.gumbel_log_density(lf, ids, y, torch.full((3,), 5), torch.ones(3, dtype=torch.float64),
                                             1.0, -math.inf, math.inf, 0.0, -math.inf, 2)


def test_empty_batch():
    lg = torch.zeros(0, 10)
    ids = torch.zeros(0, 3, dtype=torch.int64)
    y = torch.zeros(0, 3)
    assert softdec.gumbel_log_density(lg, ids, y).shape == (0,)
    assert softdec.gumbel_log_density(lg, ids, y, reduction="none").shape == (0, 3)
    assert softdec.dirichlet_log_density(lg, ids, y).shape == (0,)
    x = lg.clone().requires_grad_()
    softdec.gumbel_log_density(x, ids, y).sum().backward()
    assert x.grad.shape == (0, 10)


# ---------------------------------------------------------------- CUDA

@pytest.mark.cuda
def test_cuda_matches_cpu_with_gradients():
    for dtype in LD_DTYPES:
        logits, tok = _rollout(64, 151936, 10, dtype=dtype, temperature=0.7)
        out = {}
        for dev in ("cpu", "cuda"):
            x = logits.to(dev).clone().requires_grad_()
            y = tok.noisy_logits.to(dev).clone().requires_grad_()
            v = softdec.gumbel_log_density(x, tok.ids.to(dev), y, temperature=0.7, gumbel_clamp=(-1.5, 3),
                                           gumbel_eps=1e-6, min_log_weight=-3)
            v.sum().backward()
            out[dev] = (v.detach().cpu(), x.grad.cpu(), y.grad.cpu())
        for a, b in zip(out["cpu"], out["cuda"]):
            torch.testing.assert_close(a.double(), b.double(), atol=1e-5, rtol=1e-4)
        _, dtok = _rollout(64, 151936, 10, dtype=dtype, noise="dirichlet", dirichlet_alpha=3.0)
        d = {}
        for dev in ("cpu", "cuda"):
            x = logits.to(dev).clone().requires_grad_()
            w = dtok.weights.to(dev).clone().requires_grad_()
            v = softdec.dirichlet_log_density(x, dtok.ids.to(dev), w, alpha=3.0)
            v.sum().backward()
            d[dev] = (v.detach().cpu(), x.grad.cpu(), w.grad.cpu())
        for a, b in zip(d["cpu"], d["cuda"]):
            torch.testing.assert_close(a.double(), b.double(), atol=1e-4, rtol=1e-4)


@pytest.mark.cuda
def test_cuda_gaussian_and_compile():
    for dtype in LD_DTYPES + [torch.float64]:
        for D in (1, 7, 1536, 4099):
            x = torch.randn(33, D).to(dtype)
            m = (x.float() + 0.1 * torch.randn(33, D)).to(dtype)
            out = {}
            for dev in ("cpu", "cuda"):
                xx, mm = x.to(dev).requires_grad_(), m.to(dev).requires_grad_()
                v = softdec.gaussian_log_density(xx, mm, std=0.2)
                v.sum().backward()
                out[dev] = (v.detach().cpu(), xx.grad.cpu(), mm.grad.cpu())
            for a, b in zip(out["cpu"], out["cuda"]):
                torch.testing.assert_close(a.double(), b.double(), atol=1e-3, rtol=1e-4)
    args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in _native_gumbel_args()) + (2,)
    torch.library.opcheck(torch.ops.softdec.gumbel_log_density, args)
    logits, tok = _rollout(6, 400, 5, device="cuda")
    f = lambda lg, i, y: softdec.gumbel_log_density(lg, i, y, gumbel_clamp=(-1.5, 3))  # noqa: E731
    torch.testing.assert_close(torch.compile(f, fullgraph=True)(logits, tok.ids, tok.noisy_logits),
                               f(logits, tok.ids, tok.noisy_logits))


@pytest.mark.cuda
def test_cuda_bad_values_give_nan_rows():
    logits, ids, y = _f64_case()
    y = y.float().cuda()
    y[1, 0] = float("nan")
    bad = ids.cuda().clone()
    bad[2, 0] = 99
    v = softdec.gumbel_log_density(logits.float().cuda(), bad, y)
    assert torch.isfinite(v[0]) and torch.isnan(v[1]) and torch.isnan(v[2])


def test_strided_logits_rows(device):
    """logits[:, -1, :] of a (B, L, V) model output: rows with a stride of L * V."""
    full = torch.randn(4, 3, 300, device=device)
    logits = full[:, -1, :]
    assert not logits.is_contiguous()
    tok = softdec.soft_mixture(logits, torch.zeros(300, 2, device=device), top_k=5, noise="gumbel", seed=2)
    x = full.clone().requires_grad_()
    got = softdec.gumbel_log_density(x[:, -1, :], tok.ids, tok.noisy_logits, gumbel_clamp=(-1.5, 3))
    want = ref.gumbel_log_density(logits.cpu(), tok.ids.cpu(), tok.noisy_logits.cpu(), gumbel_clamp=(-1.5, 3))
    torch.testing.assert_close(got.cpu().double(), want, atol=2e-5, rtol=1e-5)
    got.sum().backward()
    assert (x.grad[:, :-1] == 0).all() and x.grad[:, -1].abs().sum() > 0
