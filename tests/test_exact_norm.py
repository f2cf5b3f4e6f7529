"""The normaliser Z of a filtered target by one exact rule (include/softdec/filter.h "the kept
mass Z, exactly"): each kept mass cut into three base-2^32 digits, integer digit sums (exact in
any order), rounded once to double; p_i = e_i * float(1 / Z).

- filter.h's arithmetic (a host program compiled from tests/host/mass_sum.cpp) against Python's
  exact integers: the digits, the digit sums in two orders, the single rounding (ties to even,
  sums at their bound), inv_norm;
- verify(method="exact") on CPU: targets whose kept set is the same but which take different
  filter paths (plain / min-p vector pass, top-k candidates, the radix cut of top-k > 1024 and of
  top-p) give the same tokens bit for bit, with one-hot and dense drafts, for many seeds;
(verify_tree's target filter, sampling's fast_row_filter, is another path to the same Z:
tests/test_verify_tree.py test_chain_as_tree_equals_verify checks a chain against verify.)
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch

import softdec
from softdec import reference as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler on PATH")
    exe = str(tmp_path_factory.mktemp("mass_sum") / "mass_sum")
    subprocess.run([cxx, "-std=c++17", "-O2", "-I", os.path.join(ROOT, "include"),
                    os.path.join(ROOT, "tests", "host", "mass_sum.cpp"), "-o", exe], check=True)
    return lambda mode: subprocess.run([exe, mode], check=True, capture_output=True, text=True).stdout.splitlines()


def test_digit_sums_and_single_rounding_are_exact(harness):
    lines = harness("sum")
    assert len(lines) == 3003
    for line in lines:
        vals, sums, z = line.split("|")
        vals = [float.fromhex(v) for v in vals.split()[1:]]
        s = [int(v) for v in sums.split()]
        if vals:  # the digit sums of the masses, and each mass is its digits up to 2^-96
            assert tuple(s) == ref.kept_mass_digits(vals)
            for e in vals[:8]:
                d0, d1, d2 = ref.kept_mass_digits([e])
                assert 0 <= e * 2 ** 96 - ((d0 << 64) + (d1 << 32) + d2) < 1
        assert float.fromhex(z.strip()) == ref.kept_mass_value(s)  # int / int: correctly rounded, ties to even


def test_fixed128_rounding_ties_to_even(harness):
    lines = harness("round")
    ties = 0
    for line in lines:
        hl, z = line.split("|")
        hi, lo = (int(v) for v in hl.split())
        n = (hi << 64) + lo
        ties += n.bit_length() > 54 and (n >> (n.bit_length() - 54)) & 1 == 1 and \
            n & ((1 << (n.bit_length() - 54)) - 1) == 0
        assert float.fromhex(z.strip()) == n / 2 ** 96, line
    assert ties > 1000  # the tie cases were exercised


def test_inv_norm_is_the_correctly_rounded_reciprocal(harness):
    import numpy as np
    for line in harness("inv"):
        z, inv = (float.fromhex(v.strip()) for v in line.split("|"))
        assert inv == float(np.float32(1.0 / z))


def _targets(B, K, V, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, K + 1, V, generator=g) * 2.5
    d = torch.randint(0, V, (B, K), generator=g)
    top = x.argsort(-1, descending=True)[..., :3]  # drafts among the likely tokens: accepts and rejects
    pick = torch.randint(0, 3, (B, K), generator=g)
    d = torch.where(torch.rand(B, K, generator=g) < 0.7, top[:, :K].gather(-1, pick[..., None])[..., 0], d)
    return x, d


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_verify_filter_paths_with_the_same_kept_set_agree_bit_for_bit(dtype):
    B, K, V = 64, 4, 5003
    x, d = _targets(B, K, V, 1)
    x = x.to(dtype)
    # min-p keeps < 1024 tokens of every position; top-k at or above that count removes nothing more
    mp = 0.02
    counts = (torch.softmax(x.float() / 0.9, -1) >= mp * torch.softmax(x.float() / 0.9, -1).amax(-1, keepdim=True))
    assert counts.sum(-1).max() < 1024
    settings = [dict(min_p=mp), dict(min_p=mp, top_k=1024), dict(min_p=mp, top_k=2000),
                dict(min_p=mp, top_k=V - 1), dict(min_p=mp, top_p=1.0 - 2 ** -24)]
    g = torch.Generator().manual_seed(2)
    dp = torch.softmax(torch.randn(B, K, V, generator=g) * 2, -1)
    for draft_probs in (None, dp):
        ref = None
        for kw in settings:
            outs = [softdec.verify(x, d, draft_probs=draft_probs, temperature=0.9, seed=s, **kw) for s in range(3)]
            toks = torch.stack([o.tokens for o in outs]), torch.stack([o.num_accepted for o in outs])
            if ref is None:
                ref = toks
                acc = toks[1]
                assert (acc > 0).any() and (acc < K).any()  # accepts and rejects both happen
            else:
                assert torch.equal(toks[0], ref[0]) and torch.equal(toks[1], ref[1]), kw


@pytest.mark.parametrize("kw", [dict(top_p=0.9), dict(top_k=1500, top_p=0.9), dict(top_k=1024, top_p=0.8),
                                dict(min_p=0.02), dict(temperature=0.7, top_k=3000, top_p=0.95)])
def test_chain_as_tree_equals_verify_on_every_filter_path(kw):
    """verify_tree's target filter (fast_row_filter with the 1024 candidate limit) and verify's
    (candidates up to k = 1024, then the radix cut; top-p alone by the vectorised cut) keep the
    same set with the same Z for every k: a chain gives verify's tokens bit for bit."""
    B, K, V = 48, 4, 5003
    x, d = _targets(B, K, V, 3)
    seeds = torch.arange(B) * 13 + 1
    want = softdec.verify(x, d, seed=seeds, offset=5, **kw)
    tokens = torch.cat([torch.zeros(B, 1, dtype=torch.long), d], 1)
    parents = torch.arange(-1, K).expand(B, K + 1)
    got = softdec.verify_tree(x, tokens, parents, seed=seeds, offset=5, **kw)
    assert torch.equal(got.tokens, want.tokens) and torch.equal(got.num_accepted, want.num_accepted)
    assert (want.num_accepted > 0).any() and (want.num_accepted < K).any()
