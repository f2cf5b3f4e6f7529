"""Property-based fuzz cases for every public softdec op (used by tests/test_fuzz.py).

Each op has a hypothesis strategy that draws a *spec*: a small JSON-able dict
(shapes, dtypes, layouts, value kinds, parameters given as scalars or per-row
tensors, valid or not) and a ``run_<op>(spec)`` that builds the tensors from the
spec (seeded), calls the op and checks:

- a spec holding a deliberately invalid argument (``spec["bad"]`` names it)
  must raise ValueError/RuntimeError/TypeError whose message names that argument;
- a valid spec must not raise, and its outputs must satisfy the documented
  invariants (shapes and dtypes, ids in range on valid rows, weights finite,
  non-negative and summing to 1, no NaN on valid rows, determinism for a seed,
  agreement with ``softdec.reference`` where that is exact).

A crash (segfault, abort, sanitizer report) kills the process; test_fuzz.py runs
these cases in a child process that writes every spec to a file before running
it, so the parent can name the op and the spec that crashed.
"""
from __future__ import annotations

import math
import os

import torch
from hypothesis import strategies as st

import softdec
from softdec import reference

ERRORS = (ValueError, RuntimeError, TypeError)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64, "int64": torch.int64, "int32": torch.int32, "uint8": torch.uint8,
          "bool": torch.bool, "complex64": torch.complex64}
FLOATS = ["float32", "bfloat16", "float16"]
# |sum - 1| allowed on a valid row of V weights in each dtype (outputs rounded per entry)
SUM_TOL = {torch.float32: 1e-4, torch.float64: 1e-9, torch.bfloat16: 2e-2, torch.float16: 4e-3}


class Violation(AssertionError):
    pass


def check(cond, what, spec=None):
    if not bool(cond):
        raise Violation(what)


# ============================================================================ tensor building

def _gen(spec, salt=0):
    g = torch.Generator().manual_seed(int(spec["seed"]) * 7919 + salt)
    return g


def values(shape, kind, g):
    """float64 values of ``kind`` (normal, huge, tiny, ties, nan, inf, neginf_rows, zeros)."""
    n = math.prod(shape)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    if kind == "huge":
        x = x * 3e4
    elif kind == "tiny":
        x = x * 1e-3
    elif kind == "ties":
        x = torch.randint(-2, 3, (n,), generator=g).double()
    elif kind in ("nan", "inf"):
        if n:
            idx = torch.randint(0, n, (max(1, n // 7),), generator=g)
            x[idx] = float("nan") if kind == "nan" else float("inf")
            if kind == "inf" and n > 1:
                x[torch.randint(0, n, (max(1, n // 5),), generator=g)] = -float("inf")
    elif kind == "neginf":
        if n:
            x[torch.rand(n, generator=g) < 0.5] = -float("inf")
    elif kind == "zeros":
        x = torch.zeros(n, dtype=torch.float64)
    x = x.reshape(shape)
    if kind == "neginf_rows" and len(shape) >= 2 and shape[0] > 0:
        x[torch.rand(shape[0], generator=g) < 0.5] = -float("inf")
    return x


def layout(x64, dtype, lay, g):
    """``x64`` cast to ``dtype`` with the memory layout ``lay`` (same shape and values)."""
    shape = tuple(x64.shape)
    x = x64.to(dtype)
    if lay == "contig" or x.dim() == 0:
        return x.contiguous()
    if lay == "offset":  # storage offset: the tail of a larger buffer
        buf = torch.empty(x.numel() + 3, dtype=dtype)
        out = buf[3:].view(shape)
        out.copy_(x)
        return out
    if lay == "last_stride2":  # every other column of a wider tensor (last dim not contiguous)
        buf = torch.zeros(shape[:-1] + (2 * shape[-1],), dtype=dtype)
        out = buf[..., ::2]
        out.copy_(x)
        return out
    if lay == "transposed":  # first two dims swapped in memory
        if x.dim() < 2:
            return x
        t = x.transpose(0, 1).contiguous()
        return t.transpose(0, 1)
    if lay == "row_stride":  # every other row (dim 0) of a taller tensor
        buf = torch.zeros((2 * shape[0],) + shape[1:], dtype=dtype)
        out = buf[::2]
        out.copy_(x)
        return out
    if lay == "expand":  # dim 0 of stride 0 (one row repeated)
        if shape[0] == 0:
            return x
        return x[:1].expand(shape)
    raise AssertionError(lay)


LAYOUTS = ["contig", "offset", "last_stride2", "transposed", "row_stride", "expand"]


def expanded_values(x64, lay):
    """The values the layout actually holds (expand repeats row 0)."""
    if lay == "expand" and x64.shape[0] > 0:
        return x64[:1].expand(x64.shape)
    return x64


def row_valid(x):
    """sample / soft_mixture / gumbel row validity: no NaN, no +inf, some logit > -inf."""
    x = x.double()
    return ~torch.isnan(x).any(-1) & ~(x == float("inf")).any(-1) & (x > -float("inf")).any(-1)


# ============================================================================ parameters

def st_param(name, kind, valid, invalid_scalars, *, tensor_ok=True, int_dtypes=("int64", "int32")):
    """A per-row parameter: (form, value) with form scalar / tensor / bad_*.

    valid: strategy of valid scalar values. Returns a strategy of dicts
    {"name", "form", "value", "dtype", "bad"}; the tensor's values are drawn at
    build time from ``value`` (one value, broadcast, or per row).
    """
    good_dtypes = list(int_dtypes) if kind == "int" else ["float32", "float64", "bfloat16", "float16"]
    bad_dtypes = ["uint8", "bool", "complex64"] + (["float32"] if kind == "int" else ["int64"])
    forms = [st.fixed_dictionaries({"name": st.just(name), "form": st.just("scalar"), "value": valid,
                                    "dtype": st.none(), "bad": st.just(False)})]
    if tensor_ok:
        forms.append(st.fixed_dictionaries({"name": st.just(name), "form": st.just("tensor"),
                                            "value": st.lists(valid, min_size=1, max_size=4),
                                            "dtype": st.sampled_from(good_dtypes), "bad": st.just(False)}))
        forms.append(st.fixed_dictionaries({"name": st.just(name), "form": st.just("tensor"),
                                            "value": st.lists(valid, min_size=1, max_size=4),
                                            "dtype": st.sampled_from(bad_dtypes), "bad": st.just(True)}))
        forms.append(st.fixed_dictionaries({"name": st.just(name), "form": st.just("bad_shape"),
                                            "value": valid, "dtype": st.sampled_from(good_dtypes),
                                            "bad": st.just(True)}))
    if invalid_scalars:
        forms.append(st.fixed_dictionaries({"name": st.just(name), "form": st.just("scalar"),
                                            "value": st.sampled_from(invalid_scalars), "dtype": st.none(),
                                            "bad": st.just(True)}))
    # valid values dominate: invalid forms are one draw in ~3
    return st.one_of(forms[0], forms[0], *forms[1:]) if len(forms) > 1 else forms[0]


def build_param(p, B):
    """The Python argument of a drawn parameter."""
    v = p["value"]
    if p["form"] == "scalar":
        return v
    dt = DTYPES[p["dtype"]]
    if p["form"] == "bad_shape":
        return torch.full((B + 1,), v).to(dt) if dt != torch.complex64 else torch.full((B + 1,), complex(v))
    vals = [v[i % len(v)] for i in range(B)]
    if dt == torch.complex64:
        return torch.tensor([complex(a) for a in vals], dtype=dt)
    if dt == torch.bool:
        return torch.tensor([bool(a) for a in vals], dtype=torch.bool)
    if dt == torch.uint8:
        return torch.tensor([int(abs(a)) % 256 for a in vals], dtype=dt)
    if not dt.is_floating_point:
        return torch.tensor([int(a) for a in vals], dtype=dt)
    return torch.tensor([float(a) for a in vals], dtype=torch.float64).to(dt)


def param_rows(p, B):
    """The per-row float64 values of a valid parameter (after the op's dtype cast)."""
    arg = build_param(p, B)
    if isinstance(arg, torch.Tensor):
        return arg.double()
    return torch.full((B,), float(arg), dtype=torch.float64)


st_seed = st.one_of(st.integers(0, 2 ** 63 - 1), st.integers(-(2 ** 63), -1), st.just(2 ** 64 - 1))
F = st.floats
BAD_INT = [-1, 2.5, True, float("nan"), float("inf"), 2 ** 64, "3"]
BAD_PROB = [-0.1, 1.5, float("nan"), float("inf"), True, "0.5"]
BAD_TEMP = [-1.0, float("nan"), float("inf"), True]


def bad_params(params):
    return [p["name"] for p in params if p["bad"]]


def expect(spec, fn):
    """Run ``fn``: a spec with bad arguments must raise naming one of them; a valid one must not raise."""
    bad = spec.get("bad", [])
    if bad:
        try:
            fn()
        except ERRORS as e:
            msg = str(e)
            check(any(b in msg for b in bad), f"error does not name a bad argument {bad}: {msg!r}")
            return None
        raise Violation(f"no error for bad argument(s) {bad}")
    return fn()


def named_error_or(spec, fn, names):
    """Run ``fn`` where an error is allowed but must name one of ``names``; None on error."""
    try:
        return fn()
    except ERRORS as e:
        check(any(n in str(e) for n in names), f"error names no argument {names}: {e!r}")
        return None


# ============================================================================ sampling family

@st.composite
def st_sample(draw):
    B = draw(st.sampled_from([0, 1, 2, 3, 5]))
    V = draw(st.sampled_from([1, 2, 7, 33, 130]))
    params = [
        draw(st_param("temperature", "float", st.sampled_from([0.0, 0.5, 1.0, 3.0]) | F(0, 5), BAD_TEMP)),
        draw(st_param("top_k", "int", st.integers(0, V + 3), BAD_INT)),
        draw(st_param("top_p", "float", F(0, 1), BAD_PROB)),
        draw(st_param("min_p", "float", F(0, 1), BAD_PROB)),
    ]
    spec = dict(op="sample", B=B, V=V, dtype=draw(st.sampled_from(FLOATS)), layout=draw(st.sampled_from(LAYOUTS)),
                kind=draw(st.sampled_from(["normal", "huge", "ties", "nan", "inf", "neginf", "neginf_rows"])),
                params=params, seed=draw(st.integers(0, 2 ** 31)), rng_seed=draw(st_seed),
                offset=draw(st.integers(0, 2 ** 40)), seed_form=draw(st.sampled_from(["int", "tensor"])))
    spec["bad"] = bad_params(params)
    return spec


def _rng_arg(spec, B):
    if spec["seed_form"] == "tensor":
        s = spec["rng_seed"]
        s = s - 2 ** 64 if s >= 2 ** 63 else s
        return torch.full((B,), s, dtype=torch.int64) + torch.arange(B)
    return spec["rng_seed"]


def _logits(spec, shape, salt=0):
    g = _gen(spec, salt)
    x64 = values(shape, spec["kind"], g)
    x = layout(x64, DTYPES[spec["dtype"]], spec["layout"], g)
    return x, expanded_values(x64, spec["layout"]).to(DTYPES[spec["dtype"]]).double()


def run_sample(spec):
    B, V = spec["B"], spec["V"]
    x, xv = _logits(spec, (B, V))
    kw = {p["name"]: build_param(p, B) for p in spec["params"]}
    seed = _rng_arg(spec, B)
    out = expect(spec, lambda: softdec.sample(x, seed=seed, offset=spec["offset"], **kw))
    if out is None:
        return
    ids, valid = out
    check(ids.shape == (B,) and ids.dtype == torch.int64, f"ids shape/dtype {ids.shape} {ids.dtype}")
    check(valid.shape == (B,) and valid.dtype == torch.bool, "valid shape/dtype")
    check(((ids >= 0) & (ids < V)).all(), f"ids out of [0, {V}): {ids.tolist()}")
    check(torch.equal(valid, row_valid(xv)), f"valid {valid.tolist()} != {row_valid(xv).tolist()}")
    if B:
        chosen = xv.gather(1, ids[:, None])[:, 0]
        check((chosen[valid] > -float("inf")).all(), "a valid row drew a -inf logit")
        k = param_rows(next(p for p in spec["params"] if p["name"] == "top_k"), B)
        greater = (xv > chosen[:, None]).sum(-1)
        lim = torch.where(k > 0, k, torch.full_like(k, V + 1))
        check((greater[valid] < lim[valid]).all(), "a valid row drew a token outside its top-k")
        check((ids[~valid] == 0).all(), "invalid rows must report id 0")
    again = softdec.sample(x, seed=seed, offset=spec["offset"], **kw)
    check(torch.equal(again.ids, ids), "not deterministic for a fixed seed")


@st.composite
def st_gumbel(draw):
    B = draw(st.sampled_from([0, 1, 2, 4]))
    V = draw(st.sampled_from([1, 2, 7, 33, 130]))
    params = [draw(st_param("tau", "float", F(0.05, 5), [0.0, -1.0, float("nan"), float("inf"), True]))]
    top_k = draw(st.one_of(st.just(0), st.integers(1, V), st.sampled_from([V + 1, -1, 1.0, True])))
    hard = draw(st.sampled_from([False, True, 1]))
    spec = dict(op="gumbel_softmax", B=B, V=V, dtype=draw(st.sampled_from(FLOATS)),
                layout=draw(st.sampled_from(LAYOUTS)),
                kind=draw(st.sampled_from(["normal", "huge", "ties", "nan", "inf", "neginf", "neginf_rows"])),
                params=params, top_k=top_k, hard=hard, seed=draw(st.integers(0, 2 ** 31)),
                rng_seed=draw(st_seed), offset=draw(st.integers(0, 2 ** 40)),
                seed_form=draw(st.sampled_from(["int", "tensor"])))
    spec["bad"] = bad_params(params)
    if (type(top_k) is not int) or top_k < 0 or (top_k > V and B > 0):
        spec["bad"].append("top_k")
    if type(hard) is not bool:
        spec["bad"].append("hard")
    return spec


def run_gumbel_softmax(spec):
    B, V = spec["B"], spec["V"]
    x, xv = _logits(spec, (B, V))
    kw = {p["name"]: build_param(p, B) for p in spec["params"]}
    seed = _rng_arg(spec, B)
    call = lambda: softdec.gumbel_softmax(x, seed=seed, offset=spec["offset"], top_k=spec["top_k"],  # noqa: E731
                                          hard=spec["hard"], **kw)
    out = expect(spec, call)
    if out is None:
        return
    valid = row_valid(xv)
    hard = spec["hard"]
    if spec["top_k"] == 0:
        y = out
        check(y.shape == (B, V) and y.dtype == x.dtype, f"dense output {y.shape} {y.dtype}")
        yv = y.double()
        check(torch.isfinite(yv[valid]).all() and (yv[valid] >= 0).all(), "valid rows not finite / negative")
        check(((yv[valid].sum(-1) - 1).abs() <= SUM_TOL[x.dtype]).all(), "valid rows do not sum to 1")
        check((yv[valid] > 0).sum(-1).le(V).all(), "count")
        if hard:
            check(((yv[valid] == 0) | (yv[valid] == 1)).all(), "hard rows not one-hot")
        check((yv[~valid] == 0).all(), "invalid rows not all zero")
        check((yv[valid] > 0).logical_and(xv[valid] == -float("inf")).logical_not().all() or hard,
              "a -inf logit got weight")
    else:
        ids, w = out
        k = spec["top_k"]
        check(ids.shape == (B, k) and ids.dtype == torch.int64 and w.shape == (B, k), "sparse shapes")
        check(((ids >= 0) & (ids < V)).all(), "sparse ids out of range")
        wv = w.double()
        check(torch.isfinite(wv).all() and (wv >= 0).all(), "weights not finite / negative")
        check(((wv[valid].sum(-1) - 1).abs() <= 1e-4).all(), "valid rows' weights do not sum to 1")
        check((wv[~valid] == 0).all(), "invalid rows' weights not zero")
        picked = xv.gather(1, ids)
        check(((wv == 0) | (picked > -float("inf")))[valid].all(), "a -inf logit got weight")
    again = call()
    a, b = (out, again) if spec["top_k"] == 0 else (out[1], again[1])
    check(torch.equal(a, b), "not deterministic for a fixed seed")


@st.composite
def st_topk_mask(draw):
    B = draw(st.sampled_from([0, 1, 3, 4]))
    V = draw(st.sampled_from([1, 2, 7, 33, 130]))
    params = [draw(st_param("top_k", "int", st.integers(0, V + 3), BAD_INT))]
    spec = dict(op="top_k_mask_logits", B=B, V=V, dtype=draw(st.sampled_from(FLOATS)),
                layout=draw(st.sampled_from(LAYOUTS)),
                kind=draw(st.sampled_from(["normal", "huge", "ties", "nan", "inf", "neginf", "neginf_rows"])),
                params=params, seed=draw(st.integers(0, 2 ** 31)))
    spec["bad"] = bad_params(params)
    return spec


def run_top_k_mask_logits(spec):
    B, V = spec["B"], spec["V"]
    x, xv = _logits(spec, (B, V))
    k = build_param(spec["params"][0], B)
    out = expect(spec, lambda: softdec.top_k_mask_logits(x, k))
    if out is None:
        return
    check(out.shape == (B, V) and out.dtype == x.dtype, "shape/dtype")
    ref = reference.top_k_mask_logits(xv, param_rows(spec["params"][0], B).long())
    o = out.double()
    same = (o == ref) | (torch.isnan(o) & torch.isnan(ref))
    check(same.all(), "differs from reference.top_k_mask_logits")


def _probs(spec, shape):
    g = _gen(spec, 1)
    kind = spec["kind"]
    p = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64) * 2, -1)
    if kind == "unnormalised":
        p = p * 37.0
    elif kind == "zeros_some":
        p = torch.where(torch.rand(shape, generator=g) < 0.4, torch.zeros_like(p), p)
    elif kind == "ties":
        p = torch.randint(0, 3, shape, generator=g).double()
    elif kind == "nan":
        p = p.flatten()
        if p.numel():
            p[torch.randint(0, p.numel(), (1,), generator=g)] = float("nan")
        p = p.reshape(shape)
    elif kind == "negative":
        p = p - 0.05
    elif kind == "inf":
        p = p.flatten()
        if p.numel():
            p[torch.randint(0, p.numel(), (1,), generator=g)] = float("inf")
        p = p.reshape(shape)
    elif kind == "all_zero":
        p = torch.zeros(shape, dtype=torch.float64)
    elif kind == "subnormal":
        p = p * 1e-41
    x = layout(p, DTYPES[spec["dtype"]], spec["layout"], g)
    return x, expanded_values(p, spec["layout"]).to(DTYPES[spec["dtype"]]).double()


@st.composite
def st_renorm(draw, op):
    B = draw(st.sampled_from([0, 1, 3, 4]))
    V = draw(st.sampled_from([1, 2, 7, 33, 130]))
    name = "top_p" if op == "top_p_renorm_probs" else "min_p"
    params = [draw(st_param(name, "float", F(0, 1), BAD_PROB))]
    spec = dict(op=op, B=B, V=V, dtype=draw(st.sampled_from(FLOATS)), layout=draw(st.sampled_from(LAYOUTS)),
                kind=draw(st.sampled_from(["normal", "unnormalised", "zeros_some", "ties", "nan", "negative",
                                           "inf", "all_zero", "subnormal"])),
                params=params, seed=draw(st.integers(0, 2 ** 31)))
    spec["bad"] = bad_params(params)
    return spec


def _run_renorm(spec, fn):
    B, V = spec["B"], spec["V"]
    x, pv = _probs(spec, (B, V))
    arg = build_param(spec["params"][0], B)
    out = expect(spec, lambda: fn(x, arg))
    if out is None:
        return
    check(out.shape == (B, V) and out.dtype == x.dtype, "shape/dtype")
    o = out.double()
    valid = (torch.isfinite(pv) & (pv >= 0)).all(-1) & (pv > 0).any(-1)
    check((o[~valid] == 0).all(), "invalid rows not all zero")
    check(torch.isfinite(o).all() and (o >= 0).all(), "output not finite / negative")
    check((o[pv == 0] == 0).all(), "a zero probability got mass")
    rows = valid
    check(((o[rows].sum(-1) - 1).abs() <= SUM_TOL[x.dtype]).all(), "valid rows do not sum to 1")
    kept = o > 0
    for b in torch.nonzero(rows).flatten().tolist():
        kp, dp = pv[b][kept[b]], pv[b][~kept[b] & (pv[b] > 0)]
        if len(kp) and len(dp):
            check(kp.min() >= dp.max(), f"row {b}: a dropped entry is larger than a kept one")
    return o, pv, kept, rows


def run_top_p_renorm_probs(spec):
    r = _run_renorm(spec, softdec.top_p_renorm_probs)
    if r is None:
        return
    o, pv, kept, rows = r
    tp = param_rows(spec["params"][0], spec["B"])
    for b in torch.nonzero(rows).flatten().tolist():
        mass = pv[b][kept[b]].sum() / pv[b].sum()
        check(mass >= tp[b] * (1 - 1e-2) - 1e-6 or kept[b].sum() == (pv[b] > 0).sum(),
              f"row {b}: kept mass {float(mass)} below top_p {float(tp[b])}")


def run_min_p_renorm_probs(spec):
    r = _run_renorm(spec, softdec.min_p_renorm_probs)
    if r is None:
        return
    o, pv, kept, rows = r
    mp = param_rows(spec["params"][0], spec["B"])
    eps = 1e-2 if spec["dtype"] != "float32" else 1e-5
    for b in torch.nonzero(rows).flatten().tolist():
        thr = mp[b] * pv[b].max()
        check((pv[b][kept[b]] >= thr * (1 - eps)).all(), f"row {b}: kept an entry below min_p * max")
        check((pv[b][~kept[b] & (pv[b] > 0)] < thr * (1 + eps)).all(), f"row {b}: dropped an entry above min_p * max")


# ============================================================================ philox

_PHILOX_FORMS = {"philox_uniform": ["int", "tensor", "bad_shape", "bad_seed", "bad_offset", "bad_device"],
                 "philox_normal": ["int", "tensor", "bad_shape", "bad_seed", "bad_offset"]}


@st.composite
def st_philox(draw, op):
    """philox_uniform / philox_normal: rows x n from an int or a per-row tensor seed, or one bad argument."""
    rows = draw(st.sampled_from([0, 1, 2, 5]))
    n = draw(st.sampled_from([0, 1, 3, 4, 5, 17]))
    form = draw(st.sampled_from(_PHILOX_FORMS[op]))
    spec = dict(op=op, rows=rows, n=n, form=form, rng_seed=draw(st_seed),
                offset=draw(st.integers(0, 2 ** 62)), seed=draw(st.integers(0, 2 ** 31)))
    spec["bad"] = {"bad_shape": ["shape"], "bad_seed": ["seed"], "bad_offset": ["offset"],
                   "bad_device": ["device"]}.get(form, [])
    return spec


def _philox_call(fn, spec):
    """(the call spec describes for fn = softdec.philox_uniform / philox_normal, the per-row seeds)."""
    rows, n, form = spec["rows"], spec["n"], spec["form"]
    s = spec["rng_seed"] - 2 ** 64 if spec["rng_seed"] >= 2 ** 63 else spec["rng_seed"]
    seeds = torch.full((rows,), s, dtype=torch.int64) + torch.arange(rows)
    if form == "int":
        call = lambda: fn((rows, n), spec["rng_seed"], spec["offset"])  # noqa: E731
    elif form == "tensor":
        call = lambda: fn((rows, n), seeds, torch.full((rows,), spec["offset"]))  # noqa: E731
    elif form == "bad_shape":
        call = lambda: fn((rows, n, 2.0), spec["rng_seed"])  # noqa: E731
    elif form == "bad_seed":
        call = lambda: fn((rows, n), seeds.float() if rows else 1.5)  # noqa: E731
    elif form == "bad_offset":
        call = lambda: fn((rows, n), 3, offset=True)  # noqa: E731
    else:
        call = lambda: fn((rows, n), 3, device="meta")  # noqa: E731
    return call, seeds


def run_philox_uniform(spec):
    rows, n, form = spec["rows"], spec["n"], spec["form"]
    call, seeds = _philox_call(softdec.philox_uniform, spec)
    u = expect(spec, call)
    if u is None:
        return
    check(u.shape == (rows, n) and u.dtype == torch.float32, "shape/dtype")
    check(((u > 0) & (u < 1)).all(), "values outside (0, 1)")
    check(torch.equal(u, call()), "not deterministic")
    if form == "tensor" and rows > 1:
        one = softdec.philox_uniform((1, n), seeds[1:2], torch.full((1,), spec["offset"]))
        check(torch.equal(one[0], u[1]), "a row's stream depends on the batch")


# ============================================================================ log-densities

_LD_FORMS = ["ok", "ok", "ok", "bad_shape", "nan_y", "bad_ids", "bad_clamp", "bad_dtype", "bad_temperature",
             "bad_nkept"]


@st.composite
def st_log_density(draw, op):
    B = draw(st.sampled_from([0, 1, 2, 5]))
    V = draw(st.sampled_from([1, 3, 17, 130]))
    k = draw(st.sampled_from([1, 2, 5]))
    forms = _LD_FORMS if op != "gaussian_log_density" else ["ok", "ok", "bad_shape", "bad_dtype", "bad_std"]
    form = draw(st.sampled_from(forms))
    if op == "dirichlet_log_density" and form in ("nan_y", "bad_clamp"):
        form = "bad_weights"
    spec = dict(op=op, B=B, V=V, k=k, form=form, dtype=draw(st.sampled_from(FLOATS + ["float64"])),
                kind=draw(st.sampled_from(["normal", "huge", "ties"])), seed=draw(st.integers(0, 2 ** 31)),
                reduction=draw(st.sampled_from(["mean", "sum", "none"])), clamp=draw(st.booleans()),
                eps=draw(st.sampled_from([0.0, 1e-6])), nkept=draw(st.sampled_from(["none", "int", "tensor"])),
                D=draw(st.sampled_from([1, 5, 64])))
    bad = {"bad_shape": ["y", "weights", "mean"], "nan_y": ["y"], "bad_ids": ["ids"], "bad_clamp": ["gumbel_clamp"],
           "bad_dtype": ["y", "weights", "mean", "ids"], "bad_temperature": ["temperature"], "bad_nkept": ["nkept"],
           "bad_weights": ["weights"], "bad_std": ["std"]}.get(form, [])
    # nan / out-of-range values need a kept entry to be seen
    if form in ("nan_y", "bad_ids", "bad_weights", "bad_nkept") and B == 0:
        bad = []
    spec["bad"] = bad
    return spec


def _ld_inputs(spec):
    B, V, k = spec["B"], spec["V"], spec["k"]
    k = min(k, V)
    g = _gen(spec)
    dt = DTYPES[spec["dtype"]]
    acc = torch.float64 if dt == torch.float64 else torch.float32
    logits = values((B, V), spec["kind"], g).to(dt)
    ids = torch.stack([torch.randperm(V, generator=g)[:k] for _ in range(B)]) if B else \
        torch.zeros(0, k, dtype=torch.int64)
    y = torch.randn(B, k, generator=g, dtype=torch.float64).to(acc)
    w = torch.distributions.Dirichlet(torch.ones(max(B, 1), k, dtype=torch.float64)).sample()[:B].to(acc)
    w = w / w.sum(1, keepdim=True) if B else w
    return logits, ids, y, w, k


def run_log_density(spec):
    op, form = spec["op"], spec["form"]
    if op == "gaussian_log_density":
        g = _gen(spec)
        dt = DTYPES[spec["dtype"]]
        x = torch.randn(spec["B"], spec["D"], generator=g).to(dt)
        m = torch.randn(spec["B"], spec["D"], generator=g).to(dt)
        if form == "bad_shape":
            m = m[:, :-1]
        elif form == "bad_dtype":
            m = m.to(torch.float64 if dt != torch.float64 else torch.float32)
        std = 0.0 if form == "bad_std" else 0.5
        out = expect(spec, lambda: softdec.gaussian_log_density(x, m, std=std))
        if out is None:
            return
        check(out.shape == (spec["B"],), "shape")
        check(torch.isfinite(out).all(), "non-finite Gaussian log-density")
        want = reference.gaussian_log_density(x, m, std=std)
        check(torch.allclose(out.double(), want, atol=1e-3, rtol=1e-4), "differs from the reference")
        return
    logits, ids, y, w, k = _ld_inputs(spec)
    B = logits.shape[0]
    vals = y if op == "gumbel_log_density" else w
    temperature = 0.7
    nkept = None
    if spec["nkept"] == "int":
        nkept = k
    elif spec["nkept"] == "tensor":
        nkept = torch.full((B,), k, dtype=torch.int64)
    clamp = (-1.5, 3.0) if spec["clamp"] else None
    if form == "bad_shape":
        vals = vals[:, :-1] if k > 1 else vals[:, :0]
    elif form == "nan_y" and B:
        vals = vals.clone()
        vals[B - 1, 0] = float("nan")
    elif form == "bad_weights" and B:
        vals = vals.clone() * 2
    elif form == "bad_ids" and B:
        ids = ids.clone()
        ids[0, 0] = logits.shape[1]
    elif form == "bad_clamp":
        clamp = (3.0, -1.5)
    elif form == "bad_dtype":
        vals = vals.to(torch.float16)
    elif form == "bad_temperature":
        temperature = -1.0
    elif form == "bad_nkept" and B:
        nkept = k + 1
    if op == "gumbel_log_density":
        kw = dict(temperature=temperature, gumbel_clamp=clamp, gumbel_eps=spec["eps"], nkept=nkept,
                  reduction=spec["reduction"])
        call = lambda: softdec.gumbel_log_density(logits, ids, vals, **kw)  # noqa: E731
        refn = lambda: reference.gumbel_log_density(logits, ids, vals, **kw)  # noqa: E731
    else:
        kw = dict(temperature=temperature, alpha=2.0, nkept=nkept)
        call = lambda: softdec.dirichlet_log_density(logits, ids, vals, **kw)  # noqa: E731
        refn = lambda: reference.dirichlet_log_density(logits, ids, vals, **kw)  # noqa: E731
    out = expect(spec, call)
    if out is None:
        return
    want = refn()
    check(out.shape == want.shape, "shape")
    again = call()
    check(torch.equal(out.isnan(), again.isnan()) and torch.equal(out.nan_to_num(), again.nan_to_num()),
          "not deterministic")
    fin = torch.isfinite(want)
    check(torch.equal(torch.isfinite(out), fin), "finiteness differs from the reference")
    # float32 arithmetic on logits of any size: a relative tolerance
    check(torch.allclose(out.double()[fin], want[fin], atol=1e-3, rtol=1e-3), "differs from the reference")


def run_philox_normal(spec):
    rows, n = spec["rows"], spec["n"]
    call, _ = _philox_call(softdec.philox_normal, spec)
    e = expect(spec, call)
    if e is None:
        return
    check(e.shape == (rows, n) and e.dtype == torch.float32, "shape/dtype")
    check(torch.isfinite(e).all(), "non-finite normal")
    check(torch.equal(e, call()), "not deterministic")


# ============================================================================ soft_mixture

@st.composite
def st_soft_mixture(draw):
    B = draw(st.sampled_from([0, 1, 2, 3]))
    V = draw(st.sampled_from([1, 2, 7, 33, 130]))
    D = draw(st.sampled_from([1, 4, 9]))
    params = [
        draw(st_param("temperature", "float", st.sampled_from([0.0, 1.0]) | F(0, 4), BAD_TEMP)),
        draw(st_param("top_k", "int", st.integers(1, 12), [0, 257, 2.0, True, float("nan")])),
        draw(st_param("top_p", "float", F(0.01, 1), [0.0, 1.5, float("nan")])),
        draw(st_param("min_p", "float", F(0, 1), BAD_PROB)),
    ]
    noise = draw(st.sampled_from([None, "gumbel", "dirichlet", "uniform"]))
    spec = dict(op="soft_mixture", B=B, V=V, D=D, dtype=draw(st.sampled_from(FLOATS)),
                edtype=draw(st.sampled_from(FLOATS)), layout=draw(st.sampled_from(LAYOUTS)),
                elayout=draw(st.sampled_from(["contig", "offset", "last_stride2", "row_stride"])),
                kind=draw(st.sampled_from(["normal", "huge", "ties", "nan", "inf", "neginf", "neginf_rows"])),
                params=params, noise=noise, tau=draw(st.sampled_from([1.0, 0.3, 0.0, float("inf")])),
                seed=draw(st.integers(0, 2 ** 31)), rng_seed=draw(st_seed), offset=draw(st.integers(0, 2 ** 40)),
                seed_form=draw(st.sampled_from(["int", "tensor"])))
    bad = bad_params(params)
    if noise == "uniform":
        bad.append("noise")
    if spec["tau"] <= 0 or math.isinf(spec["tau"]):
        bad.append("tau")
    spec["bad"] = bad
    return spec


def run_soft_mixture(spec):
    B, V, D = spec["B"], spec["V"], spec["D"]
    x, xv = _logits(spec, (B, V))
    g = _gen(spec, 2)
    emb = layout(torch.randn(V, D, generator=g, dtype=torch.float64), DTYPES[spec["edtype"]], spec["elayout"], g)
    kw = {p["name"]: build_param(p, B) for p in spec["params"]}
    seed = _rng_arg(spec, B)
    call = lambda: softdec.soft_mixture(x, emb, noise=spec["noise"], tau=spec["tau"], seed=seed,  # noqa: E731
                                        offset=spec["offset"], **kw)
    out = expect(spec, call)
    if out is None:
        return
    kp = next(p for p in spec["params"] if p["name"] == "top_k")
    k = int(param_rows(kp, B).max()) if (kp["form"] == "tensor" and B) else (kp["value"] if kp["form"] == "scalar" else 1)
    valid = row_valid(xv)
    check(out.embeds.shape == (B, D) and out.embeds.dtype == emb.dtype, "embeds shape/dtype")
    check(out.ids.shape == (B, k) and out.ids.dtype == torch.int64, f"ids shape {out.ids.shape} want {(B, k)}")
    check(out.weights.shape == (B, k) and out.weights.dtype == torch.float32, "weights shape/dtype")
    check(torch.equal(out.valid, valid), f"valid {out.valid.tolist()} != {valid.tolist()}")
    check(((out.ids >= 0) & (out.ids < V)).all(), "ids out of range")
    w = out.weights.double()
    check(torch.isfinite(w).all() and (w >= 0).all(), "weights not finite / negative")
    check(((w[valid].sum(-1) - 1).abs() <= 1e-4).all(), "valid rows' weights do not sum to 1")
    check((w[~valid] == 0).all() and (out.embeds[~valid] == 0).all(), "invalid rows not zero")
    check(torch.isfinite(out.embeds.double()).all(), "embeds not finite")
    check(torch.isfinite(out.entropy).all() and (out.entropy >= -1e-6).all(), "entropy not finite / negative")
    mp = out.max_prob.double()
    check(((mp[valid] > 0) & (mp[valid] <= 1 + 1e-6)).all(), "max_prob outside (0, 1]")
    picked = xv.gather(1, out.ids)
    check(((w == 0) | (picked > -float("inf")))[valid].all(), "a -inf logit got weight")
    check((out.noisy_logits is not None) == (spec["noise"] == "gumbel"), "noisy_logits presence")
    again = call()
    check(torch.equal(again.ids, out.ids) and torch.equal(again.weights, out.weights), "not deterministic")


# ============================================================================ verify

@st.composite
def st_verify(draw):
    B = draw(st.sampled_from([0, 1, 2, 3]))
    K = draw(st.sampled_from([0, 1, 2, 4]))
    V = draw(st.sampled_from([1, 2, 7, 33]))
    method = draw(st.sampled_from(["exact", "greedy", "typical", "relaxed", "soft"]))
    probs = draw(st.sampled_from(["none", "dense", "sparse"])) if method != "soft" else "sparse"
    ks = draw(st.integers(1, min(V, 4)))
    params = [
        draw(st_param("temperature", "float", st.sampled_from([0.0, 1.0]) | F(0, 4), BAD_TEMP)),
        draw(st_param("top_k", "int", st.integers(0, ks if method == "soft" else V + 2), [-1, 2.5, True])),
        draw(st_param("top_p", "float", F(0, 1), BAD_PROB)),
        draw(st_param("min_p", "float", F(0, 1), BAD_PROB)),
        draw(st_param("num_draft", "int", st.integers(0, K), [-1, K + 1, 1.0, True])),
    ]
    spec = dict(op="verify", B=B, K=K, V=V, method=method, probs=probs, ks=ks,
                dtype=draw(st.sampled_from(FLOATS)), wdtype=draw(st.sampled_from(FLOATS)),
                layout=draw(st.sampled_from(LAYOUTS)),
                kind=draw(st.sampled_from(["normal", "huge", "ties", "nan", "inf", "neginf", "neginf_rows"])),
                params=params, ids_layout=draw(st.sampled_from(["contig", "transposed", "row_stride"])),
                ids_none=draw(st.booleans()) if method == "soft" else False,
                ids_dtype=draw(st.sampled_from(["int64", "int32"])),
                delta=draw(st.sampled_from([0.0, 0.1, 1.0, -0.1, float("nan")])),
                seed=draw(st.integers(0, 2 ** 31)), rng_seed=draw(st_seed), offset=draw(st.integers(0, 2 ** 40)),
                seed_form=draw(st.sampled_from(["int", "tensor"])),
                corrupt=draw(st.sampled_from([None] * 6 + ["draft_ids", "weights_sum", "sparse_ids", "neighbours"])))
    # filter_top_k (soft only; None elsewhere, else a named error): None, whole (0 or >= V), = ks, -1
    fk_opts = [None, None, 0, ks, V + 5, -1] if method == "soft" else [None] * 5 + [0]
    spec["filter_top_k"] = draw(st.sampled_from(fk_opts))
    bad = bad_params(params)
    if spec["filter_top_k"] is not None and (method != "soft" or spec["filter_top_k"] < 0):
        bad.append("filter_top_k")
    if not (spec["delta"] >= 0):
        bad.append("delta")
    if spec["corrupt"] == "draft_ids" and B and K and not spec["ids_none"]:
        bad.append("draft_ids")
    if spec["corrupt"] in ("weights_sum", "sparse_ids") and probs == "sparse" and B and K:
        bad.append("draft_probs")
    if spec["corrupt"] == "neighbours" and method == "relaxed" and B and K:
        bad.append("neighbours")
    spec["bad"] = bad
    return spec


def _verify_inputs(spec):
    B, K, V, ks = spec["B"], spec["K"], spec["V"], spec["ks"]
    tl, tv = _logits(spec, (B, K + 1, V))
    g = _gen(spec, 3)
    ids64 = torch.randint(0, V, (B, K), generator=g)
    draft_probs = None
    if spec["probs"] == "dense":
        q = torch.softmax(torch.randn(B, K, V, generator=g, dtype=torch.float64), -1)
        dt = torch.float32 if spec["wdtype"] == "float32" else tl.dtype
        draft_probs = q.to(dt)
    elif spec["probs"] == "sparse":
        sid = torch.argsort(torch.rand(B, K, V, generator=g), -1)[..., :ks]
        # the draft id is one of its position's ids
        sid[..., 0] = ids64
        sid = torch.where(sid == ids64[..., None], sid, sid)
        perm = torch.argsort(torch.rand(B, K, V, generator=g), -1)
        # keep ids distinct: replace duplicates of the draft id with unused ids
        for b in range(B):
            for j in range(K):
                row = [int(ids64[b, j])]
                for t in perm[b, j].tolist():
                    if len(row) == ks:
                        break
                    if t not in row:
                        row.append(t)
                sid[b, j] = torch.tensor(row)
        w = torch.softmax(torch.randn(B, K, ks, generator=g, dtype=torch.float64), -1)
        if spec["corrupt"] == "weights_sum" and B and K:
            w[0, 0] *= 1.5
        if spec["corrupt"] == "sparse_ids" and B and K:
            sid[-1, -1, -1] = V + 5
        draft_probs = (sid, w.to(DTYPES[spec["wdtype"]]))
    if spec["corrupt"] == "draft_ids" and B and K:
        ids64[0, -1] = -3 if spec["seed"] % 2 else V
    ids = layout(ids64, DTYPES[spec["ids_dtype"]], spec["ids_layout"], g)
    nb = torch.randint(-1, V, (V, 3), generator=g)
    if spec["corrupt"] == "neighbours":
        nb[:] = V + 1
    return tl, tv, ids, ids64, draft_probs, nb


def run_verify(spec):
    B, K, V = spec["B"], spec["K"], spec["V"]
    tl, tv, ids, ids64, draft_probs, nb = _verify_inputs(spec)
    kw = {p["name"]: build_param(p, B) for p in spec["params"]}
    seed = _rng_arg(spec, B)
    call = lambda: softdec.verify(tl, None if spec["ids_none"] else ids, draft_probs=draft_probs,  # noqa: E731
                                  method=spec["method"], neighbours=nb, delta=spec["delta"], seed=seed,
                                  offset=spec["offset"], filter_top_k=spec.get("filter_top_k"), **kw)
    out = expect(spec, call)
    if out is None:
        return
    tokens, nacc = out.tokens, out.num_accepted
    check(tokens.shape == (B, K + 1) and tokens.dtype == torch.int64, "tokens shape/dtype")
    check(nacc.shape == (B,) and nacc.dtype == torch.int64, "num_accepted shape/dtype")
    n = param_rows(next(p for p in spec["params"] if p["name"] == "num_draft"), B).long()
    check(((nacc >= 0) & (nacc <= n)).all(), f"num_accepted {nacc.tolist()} outside [0, num_draft {n.tolist()}]")
    rowv = row_valid(tv) if B else torch.zeros(B, K + 1, dtype=torch.bool)
    for b in range(B):
        a = int(nacc[b])
        if not spec["ids_none"]:
            check(torch.equal(tokens[b, :a], ids64[b, :a]), f"row {b}: accepted tokens are not the drafts")
        t = int(tokens[b, a])
        check((0 <= t < V) if rowv[b, a] else t == -1, f"row {b}: token {t} at the stop position "
                                                       f"(target row valid: {bool(rowv[b, a])})")
        check((tokens[b, a + 1:] == -1).all(), f"row {b}: padding is not -1")
        check(all(bool(rowv[b, j]) for j in range(a)), f"row {b}: accepted a draft at an invalid target row")
    if spec["method"] == "soft":
        ks = spec["ks"]
        check(out.soft_ids.shape == (B, ks) and out.soft_weights.shape == (B, ks), "soft token shapes")
        check(((out.soft_ids >= 0) & (out.soft_ids < V)).all(), "soft_ids out of range")
        w = out.soft_weights.double()
        check(torch.isfinite(w).all() and (w >= 0).all(), "soft weights not finite / negative")
        ok = torch.tensor([bool(rowv[b, int(nacc[b])]) for b in range(B)], dtype=torch.bool)
        check(((w[ok].sum(-1) - 1).abs() <= 1e-4).all(), "soft weights of a valid stop row do not sum to 1")
        check((w[~ok] == 0).all(), "soft weights of an invalid stop row are not 0")
    else:
        check(out.soft_ids is None and out.soft_weights is None, "soft outputs for a non-soft method")
    again = call()
    check(torch.equal(again.tokens, tokens), "not deterministic")


@st.composite
def st_chain(draw):
    B = draw(st.sampled_from([0, 1, 2, 3]))
    K = draw(st.sampled_from([0, 1, 3]))
    V = draw(st.sampled_from([1, 2, 9]))
    counter = draw(st.sampled_from([None, "ok", "ok64", "bad_len", "bad_dtype"]))
    spec = dict(op="chain_speculative_sampling", B=B, K=K, V=V, dtype=draw(st.sampled_from(FLOATS)),
                counter=counter, seed=draw(st.integers(0, 2 ** 31)), rng_seed=draw(st_seed))
    spec["bad"] = ["maybe_output_accepted_token_num"] if counter in ("bad_len", "bad_dtype") else []
    return spec


def run_chain_speculative_sampling(spec):
    B, K, V = spec["B"], spec["K"], spec["V"]
    g = _gen(spec)
    dt = DTYPES[spec["dtype"]]
    q = torch.softmax(torch.randn(B, K, V, generator=g), -1).to(dt)
    p = torch.softmax(torch.randn(B, K + 1, V, generator=g), -1).to(dt)
    ids = torch.randint(0, V, (B, K), generator=g)
    c = spec["counter"]
    acc = {None: None, "ok": torch.zeros(B, dtype=torch.int32), "ok64": torch.zeros(B, dtype=torch.int64),
           "bad_len": torch.zeros(B + 1, dtype=torch.int32), "bad_dtype": torch.zeros(B)}[c]
    out = expect(spec, lambda: softdec.chain_speculative_sampling(q, ids, p, acc, seed=spec["rng_seed"]))
    if out is None:
        return
    tok, a, e = out
    check(tok.shape == (B, K + 1) and tok.dtype == torch.int32, "tokens shape/dtype")
    check(((a >= 0) & (a <= K)).all() and ((e >= 0) & (e <= K)).all(), "counts outside [0, K]")
    for b in range(B):
        n = int(e[b])
        check(((tok[b, :n + 1] >= 0) & (tok[b, :n + 1] < V)).all() and (tok[b, n + 1:] == -1).all(),
              f"row {b}: tokens {tok[b].tolist()} with {n} emitted")


# ============================================================================ attention

@st.composite
def st_sparse_decode(draw):
    B = draw(st.sampled_from([0, 1, 2]))
    Hkv = draw(st.sampled_from([1, 2]))
    G = draw(st.sampled_from([1, 3]))
    N = draw(st.sampled_from([0, 1, 5, 40, 70]))
    d = draw(st.sampled_from([1, 8, 16]))
    lens_p = draw(st_param("seq_lens", "int", st.integers(0, N), [-1, N + 1, 1.0, True]))
    spec = dict(op="sparse_decode_attention", B=B, Hkv=Hkv, Hq=Hkv * G, N=N, d=d,
                dtype=draw(st.sampled_from(FLOATS)), layout=draw(st.sampled_from(LAYOUTS)),
                kind=draw(st.sampled_from(["normal", "huge", "ties", "nan", "inf", "zeros"])),
                select=draw(st.sampled_from(["page", "token"])),
                budget=draw(st.one_of(st.integers(1, 80), st.sampled_from([0, -2, 3.0, True]))),
                page_size=draw(st.sampled_from([1, 4, 16, 3])), sink=draw(st.sampled_from([0, 1, 4, -1])),
                window=draw(st.sampled_from([0, 2, 8])), lens=lens_p,
                summary=draw(st.booleans()), return_indices=draw(st.booleans()),
                seed=draw(st.integers(0, 2 ** 31)))
    bad = bad_params([lens_p])
    bud = spec["budget"]
    if type(bud) is not int or bud < 1:
        bad.append("budget")
    if spec["page_size"] == 3:
        bad.append("page_size")
    if spec["sink"] < 0:
        bad.append("sink")
    spec["bad"] = bad
    return spec


def run_sparse_decode_attention(spec):
    B, Hkv, Hq, N, d = spec["B"], spec["Hkv"], spec["Hq"], spec["N"], spec["d"]
    dt = DTYPES[spec["dtype"]]
    g = _gen(spec)
    q64 = values((B, Hq, d), "normal" if spec["kind"] in ("nan", "inf") else spec["kind"], g)
    k64 = values((B, Hkv, N, d), spec["kind"], g)
    v64 = values((B, Hkv, N, d), "normal", g)
    q = layout(q64, dt, spec["layout"] if spec["layout"] != "last_stride2" else "contig", g)
    k = layout(k64, dt, spec["layout"], g)
    v = layout(v64, dt, spec["layout"], g)
    lens = build_param(spec["lens"], B)
    summ = None
    ps = spec["page_size"]
    if spec["summary"] and spec["select"] == "page" and ps != 3 and not spec["bad"]:
        summ = softdec.build_page_summary(k, page_size=ps, seq_lens=lens)
    call = lambda: softdec.sparse_decode_attention(  # noqa: E731
        q, k, v, budget=spec["budget"], select=spec["select"], page_size=ps, sink=spec["sink"],
        window=spec["window"], seq_lens=lens, return_indices=spec["return_indices"], page_summary=summ)
    out = expect(spec, call)
    if out is None:
        return
    o, idx = out if spec["return_indices"] else (out, None)
    check(o.shape == (B, Hq, d) and o.dtype == dt, "out shape/dtype")
    L = param_rows(spec["lens"], B).long() if B else torch.zeros(0, dtype=torch.long)
    # (huge values overflow to inf in float16: finiteness of the tensors actually passed)
    finite_in = all(bool(torch.isfinite(t.double()).all()) for t in (q, k, v))
    if finite_in:
        check(torch.isfinite(o.double()).all(), "output not finite for finite inputs")
    for b in range(B):
        if int(L[b]) == 0:
            check((o[b] == 0).all(), f"row {b}: seq_len 0 but non-zero output")
    if idx is not None:
        check(idx.dim() == 3 and idx.shape[:2] == (B, Hkv) and idx.dtype == torch.int64, "indices shape")
        for b in range(B):
            for h in range(Hkv):
                r = idx[b, h]
                sel = r[r >= 0]
                check((r[len(sel):] == -1).all(), "indices: -1 padding not at the end")
                check((sel < int(L[b])).all(), "indices beyond seq_len")
                check((sel[1:] > sel[:-1]).all(), "indices not strictly ascending")
    if finite_in and B and spec["budget"] >= N and spec["kind"] != "huge":
        ref = reference.dense_decode_attention(q.double(), k.double(), v.double(), seq_lens=L)
        ref = torch.where((L > 0)[:, None, None], ref, torch.zeros_like(ref))
        tol = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 4e-3}[dt]
        check(torch.allclose(o.double(), ref, atol=tol, rtol=tol), "budget >= N is not dense attention")


@st.composite
def st_page_summary(draw):
    B = draw(st.sampled_from([0, 1, 2]))
    H = draw(st.sampled_from([1, 2]))
    N = draw(st.sampled_from([0, 1, 7, 33]))
    d = draw(st.sampled_from([1, 8]))
    start = draw(st.integers(0, N))
    spec = dict(op="build_page_summary", B=B, H=H, N=N, d=d, dtype=draw(st.sampled_from(FLOATS)),
                layout=draw(st.sampled_from(LAYOUTS)), kind=draw(st.sampled_from(["normal", "huge", "ties", "nan", "inf"])),
                page_size=draw(st.sampled_from([1, 2, 8, 16, 6, 0])), start=start, end=draw(st.integers(start, N)),
                seed=draw(st.integers(0, 2 ** 31)))
    spec["bad"] = ["page_size"] if spec["page_size"] in (0, 6) else []
    return spec


def run_build_page_summary(spec):
    B, H, N, d, ps = spec["B"], spec["H"], spec["N"], spec["d"], spec["page_size"]
    g = _gen(spec)
    k64 = values((B, H, N, d), spec["kind"], g)
    k = layout(k64, DTYPES[spec["dtype"]], spec["layout"], g)
    kv = expanded_values(k64, spec["layout"]).to(k.dtype)
    s = expect(spec, lambda: softdec.build_page_summary(k, page_size=ps, seq_lens=spec["start"]))
    if s is None:
        return
    P = -(-N // ps)
    check(s.kmin.shape == (B, H, P, d) and s.kmin.dtype == k.dtype, "summary shape/dtype")
    def same(a, r):  # bit-equal, NaN (propagated from NaN keys) equal to NaN
        return torch.allclose(a.double(), r.double(), rtol=0, atol=0, equal_nan=True)
    rmin, rmax = reference.page_summary(kv, ps, spec["start"])
    check(same(s.kmin, rmin) and same(s.kmax, rmax), "build differs from reference.page_summary")
    softdec.update_page_summary(s, k, start=spec["start"], end=spec["end"])
    rmin, rmax = reference.page_summary(kv, ps, spec["end"])
    check(same(s.kmin, rmin) and same(s.kmax, rmax), "update differs from a build at end")


@st.composite
def st_prefill(draw):
    B = draw(st.sampled_from([0, 1, 2]))
    Hkv = draw(st.sampled_from([1, 2]))
    G = draw(st.sampled_from([1, 2]))
    L = draw(st.sampled_from([0, 1, 5, 24, 40]))
    d = draw(st.sampled_from([1, 8, 16]))
    spec = dict(op="token_sparse_prefill", B=B, Hkv=Hkv, Hq=Hkv * G, L=L, d=d, dtype=draw(st.sampled_from(FLOATS)),
                layout=draw(st.sampled_from(LAYOUTS)), kind=draw(st.sampled_from(["normal", "huge", "ties", "nan"])),
                coverage=draw(st.sampled_from([0.0, 0.05, 0.5, 0.99, 1.0, -0.1, float("nan")])),
                min_tokens=draw(st.sampled_from([0, 1, 4, 1024, -1])), window=draw(st.sampled_from([1, 4, 128, 0])),
                causal=draw(st.booleans()), seed=draw(st.integers(0, 2 ** 31)))
    bad = []
    if not (0 <= spec["coverage"] < 1):
        bad.append("coverage")
    if spec["min_tokens"] < 0:
        bad.append("min_tokens")
    if spec["window"] < 1:
        bad.append("window")
    spec["bad"] = bad
    return spec


def run_token_sparse_prefill(spec):
    B, Hkv, Hq, L, d = spec["B"], spec["Hkv"], spec["Hq"], spec["L"], spec["d"]
    dt = DTYPES[spec["dtype"]]
    g = _gen(spec)
    q = layout(values((B, Hq, L, d), spec["kind"], g), dt, spec["layout"], g)
    k = layout(values((B, Hkv, L, d), spec["kind"], g), dt, spec["layout"], g)
    v = layout(values((B, Hkv, L, d), "normal", g), dt, spec["layout"], g)
    out = expect(spec, lambda: softdec.token_sparse_prefill(
        q, k, v, coverage=spec["coverage"], min_tokens=spec["min_tokens"], window=spec["window"],
        causal=spec["causal"], return_kept=True))
    if out is None:
        return
    o, kept = out
    check(o.shape == (B, Hq, L, d) and o.dtype == dt, "out shape/dtype")
    check(kept.shape == (B, Hq, L) and kept.dtype == torch.bool, "kept shape/dtype")
    w = min(spec["window"], L)
    if w:
        check(kept[..., L - w:].all(), "the last window tokens are not kept")
    check(kept.sum(-1).ge(min(spec["min_tokens"], L)).all(), "fewer than min_tokens kept")
    check((o[~kept] == 0).all(), "dropped rows are not zero")
    if spec["kind"] in ("normal", "ties", "huge") and all(bool(torch.isfinite(t.double()).all()) for t in (q, k, v)):
        check(torch.isfinite(o.double()).all(), "output not finite for finite inputs")
    if spec["kind"] in ("normal", "ties"):
        if spec["coverage"] == 0.0 and spec["causal"] and B and L:
            check(kept.all(), "coverage 0 must keep every token")
            ref = reference.dense_causal_attention(q.double(), k.double(), v.double())
            tol = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 4e-3}[dt]
            check(torch.allclose(o.double(), ref, atol=tol, rtol=tol), "coverage 0 is not dense causal attention")


# ============================================================================ wrong-type inputs for every op

@st.composite
def st_wrong_input(draw):
    op = draw(st.sampled_from(["sample", "gumbel_softmax", "top_k_mask_logits", "top_p_renorm_probs",
                               "min_p_renorm_probs", "soft_mixture", "verify", "sparse_decode_attention",
                               "build_page_summary", "token_sparse_prefill", "chain_speculative_sampling"]))
    what = draw(st.sampled_from(["int64", "float64", "bool", "complex64", "1d", "4d", "list", "none", "numpy"]))
    return dict(op="wrong_input", target=op, what=what, seed=draw(st.integers(0, 2 ** 31)))


_FIRST_ARG = {"sample": "logits", "gumbel_softmax": "logits", "top_k_mask_logits": "logits",
              "top_p_renorm_probs": "probs", "min_p_renorm_probs": "probs", "soft_mixture": "logits",
              "verify": "target_logits", "sparse_decode_attention": "q", "build_page_summary": "k_cache",
              "token_sparse_prefill": "q", "chain_speculative_sampling": "draft_probs"}


def run_wrong_input(spec):
    import numpy as np
    op, what = spec["target"], spec["what"]
    good_dim = {"sparse_decode_attention": 3, "build_page_summary": 4, "token_sparse_prefill": 4, "verify": 3,
                "chain_speculative_sampling": 3}.get(op, 2)
    shape = (2, 3, 4, 5)[:good_dim]
    if what in ("int64", "float64", "bool", "complex64"):
        x = torch.zeros(shape, dtype=DTYPES[what])
        if op == "soft_mixture" and what == "float64":
            return  # float64 is documented for soft_mixture (gradcheck)
    elif what == "1d":
        x = torch.zeros(5)
    elif what == "4d":
        x = torch.zeros((2, 3, 4, 5, 6)[:good_dim + 1])
    elif what == "list":
        x = [[0.0, 1.0]]
    elif what == "none":
        x = None
    else:
        x = np.zeros(shape, dtype=np.float32)
    calls = {
        "sample": lambda: softdec.sample(x),
        "gumbel_softmax": lambda: softdec.gumbel_softmax(x),
        "top_k_mask_logits": lambda: softdec.top_k_mask_logits(x, 1),
        "top_p_renorm_probs": lambda: softdec.top_p_renorm_probs(x, 0.5),
        "min_p_renorm_probs": lambda: softdec.min_p_renorm_probs(x, 0.5),
        "soft_mixture": lambda: softdec.soft_mixture(x, torch.zeros(3, 4)),
        "verify": lambda: softdec.verify(x, torch.zeros(2, 2, dtype=torch.long)),
        "sparse_decode_attention": lambda: softdec.sparse_decode_attention(x, torch.zeros(2, 1, 8, 4),
                                                                           torch.zeros(2, 1, 8, 4), budget=2),
        "build_page_summary": lambda: softdec.build_page_summary(x),
        "token_sparse_prefill": lambda: softdec.token_sparse_prefill(x, torch.zeros(2, 1, 4, 5),
                                                                     torch.zeros(2, 1, 4, 5)),
        "chain_speculative_sampling": lambda: softdec.chain_speculative_sampling(
            x, torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, 5)),
    }
    spec = dict(spec, bad=[_FIRST_ARG[op]])
    expect(spec, calls[op])



# ============================================================================ verify_tree

@st.composite
def st_verify_tree(draw):
    B = draw(st.sampled_from([0, 1, 2, 3]))
    N = draw(st.sampled_from([1, 2, 5, 9]))
    V = draw(st.sampled_from([1, 2, 7, 33]))
    method = draw(st.sampled_from(["exact", "greedy", "typical", "soft"]))
    probs = draw(st.sampled_from(["none", "dense", "sparse"])) if method != "soft" else "sparse"
    ks = draw(st.integers(1, min(V, 4)))
    params = [
        draw(st_param("temperature", "float", st.sampled_from([0.0, 1.0]) | F(0, 4), BAD_TEMP)),
        draw(st_param("top_k", "int", st.integers(0, V + 2), [-1, 2.5, True])),
        draw(st_param("top_p", "float", F(0, 1), BAD_PROB)),
        draw(st_param("min_p", "float", F(0, 1), BAD_PROB)),
    ]
    spec = dict(op="verify_tree", B=B, N=N, V=V, method=method, probs=probs, ks=ks,
                dtype=draw(st.sampled_from(FLOATS)), layout=draw(st.sampled_from(LAYOUTS)),
                kind=draw(st.sampled_from(["normal", "huge", "ties", "nan", "inf", "neginf", "neginf_rows"])),
                params=params, seed=draw(st.integers(0, 2 ** 31)), rng_seed=draw(st_seed),
                offset=draw(st.integers(0, 2 ** 40)), seed_form=draw(st.sampled_from(["int", "tensor"])),
                corrupt=draw(st.sampled_from([None] * 6 + ["root", "forward", "range", "pad_parent", "token"])))
    bad = bad_params(params)
    c = spec["corrupt"]
    if B and ((c == "root") or (c in ("forward", "range", "pad_parent", "token") and N >= 3)):
        bad.append("tree_parents" if c != "token" else "tree_tokens")
    spec["bad"] = bad
    return spec


def _tree_inputs(spec):
    B, N, V, ks = spec["B"], spec["N"], spec["V"], spec["ks"]
    tl, tv = _logits(spec, (B, N, V))
    g = _gen(spec, 5)
    par = torch.full((B, N), -1, dtype=torch.long)
    for n in range(1, N):
        par[:, n] = torch.randint(0, n, (B,), generator=g)
    if N > 1:  # ragged: the last node of row 0 is padding
        par[0 if B else slice(0, 0), N - 1] = -1
    tokens = torch.randint(0, V, (B, N), generator=g)
    c = spec["corrupt"]
    if B and c == "root":
        par[0, 0] = 0
    if B and N >= 3:
        if c == "forward":
            par[0, 1] = 2
        elif c == "range":
            par[0, 1] = -3
        elif c == "pad_parent":
            par[0, 1] = -1
            par[0, 2] = 1
        elif c == "token":
            par[0, 2] = 0
            tokens[0, 2] = V
    draft_probs = None
    if spec["probs"] == "dense":
        draft_probs = torch.softmax(torch.randn(B, N, V, generator=g, dtype=torch.float64), -1).float()
    elif spec["probs"] == "sparse":
        sid = torch.argsort(torch.rand(B, N, V, generator=g), -1)[..., :ks]
        tok = tokens.clamp(0, V - 1)
        has = (sid == tok[..., None]).any(-1)
        sid[..., 0] = torch.where(has, sid[..., 0], tok)
        sid = torch.where((sid == tok[..., None]) & (torch.arange(ks) > 0), sid[..., :1].expand_as(sid), sid)
        w = torch.softmax(torch.randn(B, N, ks, generator=g, dtype=torch.float64), -1).float()
        draft_probs = (sid, w)
    return tl, tv, tokens, par, draft_probs


def run_verify_tree(spec):
    B, N, V = spec["B"], spec["N"], spec["V"]
    tl, tv, tokens, par, dp = _tree_inputs(spec)
    kw = {p["name"]: build_param(p, B) for p in spec["params"]}
    seed = _rng_arg(spec, B)
    call = lambda: softdec.verify_tree(tl, tokens, par, draft_probs=dp, method=spec["method"],  # noqa: E731
                                       seed=seed, offset=spec["offset"], **kw)
    out = expect(spec, call)
    if out is None:
        return
    check(out.tokens.shape == (B, N) and out.nodes.shape == (B, N), "tokens / nodes shape")
    rowv = row_valid(tv) if B else torch.zeros(B, N, dtype=torch.bool)
    for b in range(B):
        a = int(out.num_accepted[b])
        check(0 <= a <= N - 1, f"row {b}: num_accepted {a} outside [0, N - 1]")
        cur = 0
        for j in range(a):
            n = int(out.nodes[b, j])
            check(0 < n < N and int(par[b, n]) == cur, f"row {b}: node {n} is not a child of {cur}")
            check(int(out.tokens[b, j]) == int(tokens[b, n]), f"row {b}: accepted token is not the node's")
            check(bool(rowv[b, cur]), f"row {b}: moved past an invalid target row")
            cur = n
        t = int(out.tokens[b, a])
        check((0 <= t < V) if rowv[b, cur] else t == -1, f"row {b}: stop token {t}")
        check((out.tokens[b, a + 1:] == -1).all() and (out.nodes[b, a:] == -1).all(), f"row {b}: padding")
    again = call()
    check(torch.equal(again.tokens, out.tokens), "not deterministic")


# ============================================================================ registry

CASES = {
    "sample": (st_sample(), run_sample),
    "gumbel_softmax": (st_gumbel(), run_gumbel_softmax),
    "top_k_mask_logits": (st_topk_mask(), run_top_k_mask_logits),
    "top_p_renorm_probs": (st_renorm("top_p_renorm_probs"), run_top_p_renorm_probs),
    "min_p_renorm_probs": (st_renorm("min_p_renorm_probs"), run_min_p_renorm_probs),
    "philox_uniform": (st_philox("philox_uniform"), run_philox_uniform),
    "philox_normal": (st_philox("philox_normal"), run_philox_normal),
    "soft_mixture": (st_soft_mixture(), run_soft_mixture),
    "verify": (st_verify(), run_verify),
    "verify_tree": (st_verify_tree(), run_verify_tree),
    "chain_speculative_sampling": (st_chain(), run_chain_speculative_sampling),
    "sparse_decode_attention": (st_sparse_decode(), run_sparse_decode_attention),
    "build_page_summary": (st_page_summary(), run_build_page_summary),
    "token_sparse_prefill": (st_prefill(), run_token_sparse_prefill),
    "wrong_input": (st_wrong_input(), run_wrong_input),
    "gumbel_log_density": (st_log_density("gumbel_log_density"), run_log_density),
    "dirichlet_log_density": (st_log_density("dirichlet_log_density"), run_log_density),
    "gaussian_log_density": (st_log_density("gaussian_log_density"), run_log_density),
}

if os.environ.get("SOFTDEC_FUZZ_SELFTEST"):  # the runner's own tests (test_fuzz.py)
    def _selftest_crash(spec):
        if spec["boom"] == 3:
            os.abort()

    def _selftest_fail(spec):
        check(spec["boom"] < 2, "selftest invariant")

    _st_boom = st.fixed_dictionaries({"boom": st.integers(0, 5), "seed": st.just(0)})
    CASES["_selftest_crash"] = (_st_boom.map(lambda d: dict(d, op="_selftest_crash")), _selftest_crash)
    CASES["_selftest_fail"] = (_st_boom.map(lambda d: dict(d, op="_selftest_fail")), _selftest_fail)

# every public op is fuzzed (update_page_summary inside build_page_summary's case;
# the NamedTuples and info() are not ops)
COVERED = set(CASES) | {"update_page_summary"}
NOT_OPS = {"info", "__version__", "SoftTokens", "Sampled", "Verified", "VerifiedTree", "PageSummary"}


def run(spec):
    """Run one spec (dispatch on spec["op"])."""
    CASES[spec["op"]][1](spec)
