"""softdec.philox_normal is bit-identical to the scalar float64 Box-Muller of libm
(soft::embed_normal: sqrt(-2 log u0) * cos(2 pi u1) rounded to float32), at every CPU level.

The CPU kernel computes log / cos in float64 SIMD lanes and recomputes with libm the lanes whose
value lies near a float32 rounding midpoint (csrc/cpu/philox_normal.cpp); Python's math module is
the same libm, so it is the exact reference here. The near-midpoint elements are found on purpose
(those are the lanes where a vector log / cos a few ulp off could round the other way).
"""

from __future__ import annotations

import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

import softdec
from softdec import reference as ref

SUPPORTED = softdec.info()["cpu_capabilities_supported"]
PKG_PARENT = str(pathlib.Path(softdec.__file__).resolve().parents[1])
MASK = np.uint64(0xFFFFFFFF)
SEEDS = [-(2**63), -1, 0, 7, 2**40 + 3, 2**63 - 1]
OFFS = [0, 2**32 - 1, 5, -(2**62), 11, 2**33]
N = 180_000  # per row: ~1e6 elements in all, ~60 of them near a float32 midpoint
TAILS = (1, 15, 16, 17, 31, 33, 100)


def lanes01(seed: int, offset: int, d: np.ndarray):
    """u0, u1 (float64) of element(s) d of the (seed, offset) stream's normal blocks."""
    s, o = np.uint64(seed % 2**64), np.uint64(offset % 2**64)
    blk = np.uint64(1 << 63) + d.astype(np.uint64)
    ctr = np.stack([blk & MASK, blk >> np.uint64(32), np.full_like(blk, o & MASK),
                    np.full_like(blk, o >> np.uint64(32))], -1)
    key = np.broadcast_to(np.array([s & MASK, s >> np.uint64(32)], dtype=np.uint64), ctr.shape[:-1] + (2,))
    x = ref.philox4x32_10(ctr, key)
    return (x[..., 0].astype(np.float64) + 0.5) / 2.0**32, (x[..., 1].astype(np.float64) + 0.5) / 2.0**32


def libm(u0: np.ndarray, u1: np.ndarray) -> np.ndarray:
    z = [math.sqrt(-2.0 * math.log(a)) * math.cos(6.283185307179586 * b) for a, b in zip(u0.tolist(), u1.tolist())]
    return np.asarray(z, dtype=np.float64).astype(np.float32)


def near_midpoint(u0: np.ndarray, u1: np.ndarray, within: int = 2**16) -> np.ndarray:
    """Indices whose float64 z (numpy's log / cos) lies within `within` ulps of a float32 midpoint."""
    z = np.sqrt(-2.0 * np.log(u0)) * np.cos(6.283185307179586 * u1)
    low = z.view(np.uint64) & np.uint64((1 << 29) - 1)
    return np.nonzero(np.abs(low.astype(np.int64) - (1 << 28)) < within)[0]


CHILD = r"""
import sys, torch, softdec
seeds, offs, n, tails = eval(sys.argv[2])
out = {"full": softdec.philox_normal((len(seeds), n), torch.tensor(seeds), torch.tensor(offs)),
       "info": softdec.info()["cpu_capability"]}
for t in tails:
    out[t] = softdec.philox_normal((len(seeds), t), torch.tensor(seeds), torch.tensor(offs))
torch.save(out, sys.argv[1])
"""


@pytest.fixture(scope="module")
def per_level(tmp_path_factory):
    res = {}
    for level in SUPPORTED:
        path = tmp_path_factory.mktemp("pn") / f"{level}.pt"
        env = dict(os.environ, SOFTDEC_CPU_CAPABILITY=level,
                   PYTHONPATH=PKG_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        r = subprocess.run([sys.executable, "-c", CHILD, str(path), repr((SEEDS, OFFS, N, TAILS))], env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"level {level}:\n{r.stderr[-3000:]}"
        res[level] = torch.load(path)
        assert res[level]["info"] == level
    return res


@pytest.mark.parametrize("level", SUPPORTED)
def test_bit_identical_to_libm_near_float32_midpoints(per_level, level):
    full = per_level[level]["full"].numpy()
    checked = 0
    for r, (s, o) in enumerate(zip(SEEDS, OFFS)):
        u0, u1 = lanes01(s, o, np.arange(N))
        idx = near_midpoint(u0, u1)
        checked += idx.size
        np.testing.assert_array_equal(full[r, idx].view(np.uint32), libm(u0[idx], u1[idx]).view(np.uint32))
    assert checked >= 100  # the near-midpoint lanes exist in this sample (expected ~370)


@pytest.mark.parametrize("level", SUPPORTED)
def test_bit_identical_to_libm_sample_and_tails(per_level, level):
    full = per_level[level]["full"].numpy()
    rng = np.random.default_rng(5)
    for r, (s, o) in enumerate(zip(SEEDS, OFFS)):
        d = np.sort(rng.choice(N, 4000, replace=False))
        d[:40] = np.arange(40)  # the first chunks
        d[-40:] = np.arange(N - 40, N)  # the row's last (short) chunk
        u0, u1 = lanes01(s, o, d)
        np.testing.assert_array_equal(full[r, d].view(np.uint32), libm(u0, u1).view(np.uint32))
        for t in TAILS:  # every width of a short last chunk; equal to the long row's prefix
            u0, u1 = lanes01(s, o, np.arange(t))
            got = per_level[level][t][r].numpy()
            np.testing.assert_array_equal(got.view(np.uint32), libm(u0, u1).view(np.uint32))
            np.testing.assert_array_equal(got, full[r, :t])


def test_levels_agree(per_level):
    base = per_level[SUPPORTED[0]]
    for level in SUPPORTED[1:]:
        assert torch.equal(per_level[level]["full"], base["full"]), level
