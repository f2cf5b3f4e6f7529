"""Runtime CPU capability dispatch (csrc/cpu_dispatch.cpp, csrc/cpu/capability.h).

Every compiled level this machine runs is forced in a child process (SOFTDEC_CPU_CAPABILITY):
info() reports it, the ids of the random ops are bit-identical across levels on fixed seeds
(the math is defined to be the same: explicit FMAs, fixed summation orders), floats agree
within the documented tolerance (compilers contract and vectorise differently per level),
bad values of the variable fail the import with a message naming it, and the built library
keeps AVX-512 inside the avx512 level (tools/check_isa.py).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

import softdec

ROOT = pathlib.Path(__file__).resolve().parents[1]
INFO = softdec.info()
SUPPORTED = INFO["cpu_capabilities_supported"]
PKG_PARENT = str(pathlib.Path(softdec.__file__).resolve().parents[1])

# Cross-level agreement of float outputs (documented in README "CPU dispatch"): float32 results
# within 2e-6 relative (+1e-6 absolute for values near 0); 16-bit outputs within one unit in the
# last place of the dtype (rounding of a float32 value that differs in its last bits).
FLOAT_TOL = {torch.float32: (1e-6, 2e-6), torch.bfloat16: (1e-6, 2**-7), torch.float16: (1e-6, 2**-10)}

# The child: fixed-seed calls of every CPU op family; saves their outputs.
CHILD = r"""
import sys, torch, softdec
_i = softdec.info()
out = {"info": {"cpu_capability": _i["cpu_capability"], "cpu_isa": list(_i["cpu_isa"])}}
g = torch.Generator().manual_seed(1234)
for dt in (torch.float32, torch.bfloat16, torch.float16):
    n = str(dt).split(".")[1]
    for V in (7, 1000, 50257):
        x = (torch.randn(6, V, generator=g) * 3).to(dt)
        out[f"sample/{n}/{V}"] = softdec.sample(x, seed=11, temperature=0.8).ids
        out[f"sample_topk/{n}/{V}"] = softdec.sample(x, seed=12, top_k=40, top_p=0.9).ids
        out[f"sample_minp/{n}/{V}"] = softdec.sample(x, seed=13, min_p=0.05).ids
        y = softdec.gumbel_softmax(x, tau=0.7, seed=14)
        out[f"gumbel/{n}/{V}/probs"] = y
        for j, y in enumerate(softdec.gumbel_softmax(x, tau=0.7, seed=15, top_k=min(V, 8))):
            out[f"gumbel_topk/{n}/{V}/{j}"] = y  # (weights, ids)
        out[f"top_k_mask/{n}/{V}"] = softdec.top_k_mask_logits(x, min(V, 5))
        p = torch.softmax(x.float(), -1).to(dt)
        out[f"top_p_renorm/{n}/{V}"] = softdec.top_p_renorm_probs(p, 0.8)
        E = torch.randn(V, 32, generator=g).to(dt)
        st = softdec.soft_mixture(x, E, top_k=min(V, 10), noise="gumbel", seed=16)
        out[f"soft_mixture/{n}/{V}/ids"] = st.ids
        out[f"soft_mixture/{n}/{V}/weights"] = st.weights
        out[f"soft_mixture/{n}/{V}/embeds"] = st.embeds
        K = 4
        t = (torch.randn(6, K + 1, V, generator=g) * 2).to(dt)
        d = torch.randint(0, V, (6, K), generator=g)
        dp = torch.softmax(torch.randn(6, K, V, generator=g), -1).to(dt)
        v = softdec.verify(t, d, draft_probs=dp, seed=17)
        out[f"verify/{n}/{V}/tokens"] = v.tokens
        out[f"verify/{n}/{V}/accepted"] = v.num_accepted
        v = softdec.verify(t, d, method="typical", seed=18)
        out[f"verify_typical/{n}/{V}/tokens"] = v.tokens
        for j, kw in enumerate((dict(min_p=0.05), dict(top_p=0.9), dict(temperature=0.8))):
            v = softdec.verify(t, d, seed=19 + j, **kw)  # one-hot drafts: the exact normaliser's paths
            out[f"verify_exact_{j}/{n}/{V}/tokens"] = v.tokens
        # a tree whose root has three children drafted densely: rejections update the dense residual
        # (explicit FMA, exact mass) before the next sibling; accepted paths bit for bit at every level
        par = torch.tensor([-1, 0, 0, 0, 1]).expand(6, 5)
        tt = torch.cat([torch.zeros(6, 1, dtype=torch.long), torch.randint(0, V, (6, 4), generator=g)], 1)
        dpt = torch.softmax(torch.randn(6, 5, V, generator=g), -1).to(dt)
        vt = softdec.verify_tree(t, tt, par, draft_probs=dpt, seed=20)
        out[f"verify_tree_dense/{n}/{V}/tokens"] = vt.tokens
        out[f"verify_tree_dense/{n}/{V}/accepted"] = vt.num_accepted
        xr = x.float().contiguous()
        R = xr.shape[0]
        z, _ = torch.ops.softdec.shard_kept_mass(xr, 0, xr.max(1).values, torch.full((R,), 0.8),
                                                 torch.full((R,), 0.01), torch.full((R,), float("-inf")),
                                                 torch.full((R,), V), torch.arange(R))
        out[f"kept_mass/{n}/{V}/digits"] = z  # int64 digit sums: bit for bit at every level
    q = torch.randn(2, 8, 64, generator=g).to(dt)
    k = torch.randn(2, 2, 700, 64, generator=g).to(dt)
    vv = torch.randn(2, 2, 700, 64, generator=g).to(dt)
    for sel in ("page", "token"):
        o, idx = softdec.sparse_decode_attention(q, k, vv, budget=128, select=sel, return_indices=True)
        out[f"sparse_decode/{n}/{sel}/indices"] = idx
        out[f"sparse_decode/{n}/{sel}/out"] = o
out["philox"] = softdec.philox_uniform((3, 1000), seed=torch.tensor([1, 2, 3]))
torch.save(out, sys.argv[1])
"""


def run_child(level: str, path, extra_env=None, script=CHILD):
    env = dict(os.environ)
    env["SOFTDEC_CPU_CAPABILITY"] = level
    env["PYTHONPATH"] = PKG_PARENT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-c", script, str(path)], env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def per_level(tmp_path_factory):
    res = {}
    for level in SUPPORTED:
        path = tmp_path_factory.mktemp("isa") / f"{level}.pt"
        r = run_child(level, path)
        assert r.returncode == 0, f"level {level}:\n{r.stderr[-3000:]}"
        res[level] = torch.load(path)
    return res


def test_info_reports_levels():
    assert INFO["cpu_capability"] in INFO["cpu_capabilities"]
    assert set(SUPPORTED) <= set(INFO["cpu_capabilities"])
    assert INFO["cpu_capability"] == (os.environ.get("SOFTDEC_CPU_CAPABILITY") or SUPPORTED[-1])
    if INFO["cpu_arch"] == "dispatch" and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert "avx2" in SUPPORTED


def test_forced_level_is_reported(per_level):
    for level, out in per_level.items():
        assert out["info"]["cpu_capability"] == level
        isa = out["info"]["cpu_isa"]
        if level == "avx512":
            assert "avx512f" in isa and "avx512bw" in isa
        if level == "avx2":
            assert "avx2" in isa and "fma" in isa and not any(i.startswith("avx512") for i in isa)


def _is_id(key):
    return key.rsplit("/", 1)[-1] in ("ids", "tokens", "accepted", "indices") or key.startswith(
        ("sample", "top_k_mask")) or key == "philox"


def test_levels_agree(per_level):
    if len(per_level) < 2:
        pytest.skip(f"only one CPU level runs here ({SUPPORTED})")
    levels = list(per_level)
    base = per_level[levels[0]]
    keys = [k for k in base if k != "info"]
    assert len(keys) > 50
    for other in levels[1:]:
        o = per_level[other]
        for key in keys:
            a, b = base[key], o[key]
            assert a.dtype == b.dtype and a.shape == b.shape, key
            if _is_id(key) or not a.is_floating_point():
                # ids, tokens, selections, Philox uniforms and masks: bit for bit
                assert torch.equal(a, b), f"{key}: {levels[0]} vs {other} differ"
            else:
                atol, rtol = FLOAT_TOL[a.dtype]
                torch.testing.assert_close(b, a, atol=atol, rtol=rtol, equal_nan=True,
                                           msg=lambda m, key=key: f"{key} ({levels[0]} vs {other}): {m}")


def test_levels_match_reference(per_level):
    """Each level's draws are the float64 oracle's on the same stream (ids identical)."""
    from softdec import reference as ref
    g = torch.Generator().manual_seed(1234)
    x = (torch.randn(6, 7, generator=g) * 3)  # the child's first draw: sample/float32/7
    want = ref.sample_exact(x, temperature=0.8, seed=11)
    want = torch.as_tensor(want[0] if isinstance(want, tuple) else want)
    for level, out in per_level.items():
        assert torch.equal(out["sample/float32/7"], want.to(out["sample/float32/7"].dtype)), level


def _import_error(env):
    e = dict(os.environ)
    e["PYTHONPATH"] = PKG_PARENT + os.pathsep + e.get("PYTHONPATH", "")
    e.update(env)
    return subprocess.run([sys.executable, "-c", "import softdec; print(softdec.info()['cpu_capability'])"],
                          env=e, capture_output=True, text=True, timeout=300)


def test_unknown_value_fails_import():
    r = _import_error({"SOFTDEC_CPU_CAPABILITY": "sse9"})
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "SOFTDEC_CPU_CAPABILITY='sse9' is not a CPU capability level" in r.stderr
    assert "valid values: auto" in r.stderr


def test_auto_and_case():
    r = _import_error({"SOFTDEC_CPU_CAPABILITY": "auto"})
    assert r.returncode == 0 and r.stdout.strip() == SUPPORTED[-1]
    r = _import_error({"SOFTDEC_CPU_CAPABILITY": SUPPORTED[0].upper()})
    assert r.returncode == 0 and r.stdout.strip() == SUPPORTED[0]


def test_level_not_compiled_fails_import():
    missing = [lv for lv in ("generic", "avx2", "avx512") if lv not in INFO["cpu_capabilities"]]
    if not missing:
        pytest.skip("every level is compiled")
    r = _import_error({"SOFTDEC_CPU_CAPABILITY": missing[0]})
    assert r.returncode != 0
    assert f"SOFTDEC_CPU_CAPABILITY={missing[0]} was not compiled into this build" in r.stderr


@pytest.mark.skipif("avx512" not in SUPPORTED or "avx2" not in SUPPORTED, reason="needs avx2 and avx512 levels")
def test_cpu_without_avx512():
    """An AVX-512-less CPU (played by hiding the feature): auto picks avx2, forcing avx512 fails clearly."""
    r = _import_error({"SOFTDEC_CPU_HIDE_FEATURES": "avx512f", "SOFTDEC_CPU_CAPABILITY": ""})
    assert r.returncode == 0 and r.stdout.strip() == "avx2", r.stderr
    r = _import_error({"SOFTDEC_CPU_HIDE_FEATURES": "avx512bw", "SOFTDEC_CPU_CAPABILITY": "avx512"})
    assert r.returncode != 0
    assert "SOFTDEC_CPU_CAPABILITY=avx512 needs CPU features this CPU (or its OS) lacks: avx512bw" in r.stderr


@pytest.mark.skipif(INFO["cpu_arch"] != "dispatch" or "generic" in INFO["cpu_capabilities"],
                    reason="a build with a generic level runs anywhere")
def test_cpu_below_lowest_level_fails_import():
    """A CPU without AVX2/FMA: a clear ImportError naming the missing features, not SIGILL."""
    r = _import_error({"SOFTDEC_CPU_HIDE_FEATURES": "avx2,fma", "SOFTDEC_CPU_CAPABILITY": ""})
    assert r.returncode == 1, r.stderr
    assert "cannot run any CPU level compiled into softdec" in r.stderr and "avx2, fma" in r.stderr


def _library():
    return pathlib.Path(softdec._C.__file__)


@pytest.mark.skipif(shutil.which("objdump") is None, reason="no objdump")
def test_no_avx512_outside_the_avx512_level():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "check_isa.py"), str(_library()),
                        "--strict-glue"], capture_output=True, text=True, timeout=600)
    if r.returncode == 2:
        pytest.skip(r.stderr.strip())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "check_isa: OK" in r.stdout or "single-level native build" in r.stdout
