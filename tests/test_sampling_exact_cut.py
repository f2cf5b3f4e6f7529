"""The top-p cut in fixed point (include/softdec/filter.h, "top-p masses in fixed point"):
masses q_i = floor(m_i * 2^shift) summed exactly as integers, kept = the shortest prefix of
the filter order whose integer mass reaches ceil(top_p * total). Checked here against a
Python replica of that rule with exact integers (top_p_renorm_probs, where the mass is the
value itself), at cuts that fall exactly on a token, inside ties and on the boundary of the
CPU's 4096-bucket histogram; and CUDA == CPU for sample's top-p paths on peaked rows, B = 1
and 64, V = 151936 (those run where a GPU is present)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import softdec

INF = float("inf")
CUDA = torch.cuda.is_available() and "cuda" in softdec.info()["backends"]


def fixed_point_cut(p: np.ndarray, top_p: float) -> np.ndarray:
    """The kept mask of one float32 row of probabilities under filter.h's fixed-point rule."""
    V = p.shape[0]
    pos = np.nonzero(p > 0)[0]
    m = float(p.max())
    _, E = math.frexp(m)  # m < 2^E
    sh = (63 - V.bit_length()) - E
    q = {int(i): int(math.ldexp(float(p[i]), sh)) for i in pos}  # exact scaling, truncation
    total = sum(q.values())
    target = math.ceil(Fraction(float(np.float32(top_p))) * total)
    order = sorted(pos.tolist(), key=lambda i: (-float(p[i]), i))
    kept = np.zeros(V, dtype=bool)
    if target == 0:
        kept[order[0]] = True
        return kept
    run = 0
    for i in order:
        kept[i] = True
        run += q[i]
        if run >= target:
            break
    return kept


def _rows():
    g = torch.Generator().manual_seed(17)
    rows = []
    rows.append(torch.softmax(torch.randn(1000, generator=g, dtype=torch.float64) * 2, -1).float())
    rows.append(torch.softmax(torch.randn(32000, generator=g, dtype=torch.float64) * 8, -1).float())  # peaked
    # exact cuts: four equal masses (top_p 0.5 / 0.75 end exactly on a token)
    r = torch.zeros(4096)
    r[[3, 900, 901, 4000]] = 0.25
    rows.append(r)
    # ties straddling the cut, with a larger token first
    r = torch.zeros(777)
    r[50] = 0.4
    r[100:160] = 0.01
    rows.append(r)
    # the boundary of the CPU's 4096 buckets (order_key >> 20): 1.0 and the float just below it
    r = torch.zeros(3000)
    r[[10, 20, 30]] = 1.0
    r[[5, 15, 25, 35]] = float(np.nextafter(np.float32(1.0), np.float32(0.0)))
    rows.append(r / 7)
    # masses far apart (tail tokens below 2^-shift count as 0) and an unnormalised row
    r = torch.full((5000,), 1e-30)
    r[7] = 3.0
    r[8] = 1e-20
    rows.append(r)
    # subnormal entries only
    r = torch.zeros(64)
    r[[1, 2, 3]] = torch.tensor([3e-45, 1e-44, 7e-45])
    rows.append(r)
    return rows


TOP_PS = [0.0, 1e-40, 1e-35, 1e-30, 0.1, 0.25, 0.5, 0.6, 0.75, 0.9, 0.99, 0.999999]


@pytest.mark.parametrize("row", range(len(_rows())))
def test_top_p_renorm_keeps_the_fixed_point_prefix(row, device):
    p = _rows()[row]
    for tp in TOP_PS:
        want = fixed_point_cut(p.numpy(), tp)
        out = softdec.top_p_renorm_probs(p[None].to(device), tp)[0].cpu()
        got = (out > 0).numpy()
        assert np.array_equal(got, want), (tp, np.nonzero(got != want)[0][:10])


def test_exact_cut_on_equal_masses_is_the_math(device):
    # 4 equal masses: top_p 0.5 keeps exactly 2 (the prefix reaches top_p * total exactly)
    p = torch.zeros(1, 4096)
    p[0, [3, 900, 901, 4000]] = 0.25
    for tp, n in [(0.5, 2), (0.75, 3), (0.5000001, 3), (0.25, 1), (0.2499999, 1), (1.0, 4)]:
        assert int((softdec.top_p_renorm_probs(p.to(device), tp) > 0).sum()) == n, tp


@pytest.mark.parametrize("V", [4096, 151936])
def test_sample_top_p_exact_cut_on_equal_logits(V, device):
    # finite logits only at four places, equal: top_p 0.5 keeps the two of lower index,
    # for the top-p path (top_k 0) and the generic path (top_k > 2048, not binding)
    x = torch.full((64, V), -INF)
    idx = torch.tensor([10, V // 3, V // 2, V - 5])
    x[:, idx] = 1.5
    seed = torch.arange(64, device=device)
    for k in (0, 3000):
        for tp, allowed in [(0.5, idx[:2]), (0.75, idx[:3]), (0.0, idx[:1])]:
            out = softdec.sample(x.to(device), top_p=tp, top_k=k, seed=seed, offset=3)
            assert out.valid.all()
            assert torch.isin(out.ids.cpu(), allowed).all(), (k, tp)
            assert len(set(out.ids.tolist())) == len(allowed), (k, tp)  # 64 draws hit each kept token


# ---------------------------------------------------------------- CUDA == CPU (GPU machines)

def _peaked(B, V, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, V, generator=g, dtype=torch.float64) * 2
    x[:, :3] += 14.0  # most mass in three tokens; the tail lands in a few histogram buckets
    x[0, 5:9] = x[0, 0]  # ties at the top
    return x.to(dtype)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs the CUDA backend")
@pytest.mark.parametrize("B", [1, 64])
@pytest.mark.parametrize("V", [1000, 151936])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_sample_top_p_matches_cpu_on_peaked_rows(B, V, dtype):
    x = _peaked(B, V, dtype, seed=B * V)
    seeds = torch.arange(B) * 31 + 7
    for kw in [dict(top_p=0.5), dict(top_p=0.9), dict(top_p=0.999), dict(top_p=0.0), dict(top_p=1e-30),
               dict(top_p=0.95, temperature=3.0), dict(top_p=0.9, min_p=0.01), dict(top_p=0.8, top_k=3000),
               dict(top_k=2500, temperature=0.5), dict(temperature=1.0), dict(temperature=40.0)]:
        for off in range(0, 40, 13):
            a = softdec.sample(x, seed=seeds, offset=off, **kw)
            b = softdec.sample(x.cuda(), seed=seeds.cuda(), offset=off, **kw)
            assert torch.equal(a.valid, b.valid.cpu()), kw
            assert torch.equal(a.ids, b.ids.cpu()), (kw, off, (a.ids != b.ids.cpu()).nonzero().flatten()[:8].tolist())


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs the CUDA backend")
@pytest.mark.parametrize("B", [1, 64])
def test_cuda_sample_plain_block_masses_match_cpu(B):
    # the block-mass kernel at B = 1 (one 1024-token block per split) and B = 64 (many per
    # split): CPU == CUDA for many uniforms, including V not a multiple of 1024 or of 4
    for V in (151936, 151933, 1023, 5):
        x = torch.randn(B, V, generator=torch.Generator().manual_seed(V), dtype=torch.float64).float() * 3
        seeds = torch.arange(B) + 1
        for off in range(0, 200, 7 if B == 1 else 50):
            a = softdec.sample(x, seed=seeds, offset=off)
            b = softdec.sample(x.cuda(), seed=seeds.cuda(), offset=off)
            assert torch.equal(a.ids, b.ids.cpu()), (V, off)
        # unaligned rows (a strided view): the scalar load path
        xs = torch.randn(B, V + 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64).float()[:, 1:]
        a = softdec.sample(xs, seed=seeds, offset=3, top_p=0.9)
        b = softdec.sample(xs.cuda(), seed=seeds.cuda(), offset=3, top_p=0.9)
        assert torch.equal(a.ids, b.ids.cpu()), V


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs the CUDA backend")
@pytest.mark.parametrize("row", range(len(_rows())))
def test_cuda_top_p_renorm_kept_set_matches_cpu(row):
    p = _rows()[row][None].repeat(3, 1)
    for tp in TOP_PS:
        a = softdec.top_p_renorm_probs(p, tp)
        b = softdec.top_p_renorm_probs(p.cuda(), tp).cpu()
        assert torch.equal(a > 0, b > 0), tp
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
