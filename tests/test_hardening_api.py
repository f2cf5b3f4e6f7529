"""Regression tests of issue 14, API side: one pinned test per reproducer.

7  non-differentiable ops under autograd (gradients implemented for the mask and
   the renorm ops, checked against float64 references; the others raise);
8  valid inputs refused by contiguity checks (torch's definition: size-0 and
   size-1 dimensions are ignored);
11 argument errors name the argument, the expected and the actual value.
"""
import re

import numpy as np
import pytest
import torch

import softdec
from softdec import reference

torch.manual_seed(0)


def _raises(msg, fn, *a, exc=ValueError, **kw):
    with pytest.raises(exc, match=re.escape(msg)):
        fn(*a, **kw)


# ============================================================================ 7: autograd

def _kept_renorm64(p64, kept):
    """float64 reference of a renormalisation over a fixed kept set."""
    q = torch.where(kept, p64, torch.zeros_like(p64))
    return q / q.sum(-1, keepdim=True)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
def test_top_k_mask_logits_gradient_passes_kept_entries(dtype, tol):
    x = torch.randn(4, 33, dtype=dtype).requires_grad_()
    g = torch.randn(4, 33)
    out = softdec.top_k_mask_logits(x, 5)
    assert out.requires_grad
    kept = out != float("-inf")
    (torch.where(kept, out.float(), torch.zeros(())) * g).sum().backward()
    want = torch.where(kept, g, torch.zeros(()))
    assert x.grad is not None and x.grad.dtype == dtype
    torch.testing.assert_close(x.grad.float(), want, atol=tol, rtol=tol)
    assert int(kept.sum()) == 4 * 5


@pytest.mark.parametrize("op, arg", [(softdec.top_p_renorm_probs, 0.7), (softdec.min_p_renorm_probs, 0.2)])
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.float16, 3e-3)])
def test_renorm_gradient_matches_float64_jacobian(op, arg, dtype, atol):
    p = torch.softmax(torch.randn(3, 17, dtype=torch.float64) * 2, -1)
    g = torch.randn(3, 17, dtype=torch.float64)
    x = p.to(dtype).requires_grad_()
    out = op(x, arg)
    assert out.requires_grad
    (out.double() * g).sum().backward()
    kept = out.detach() > 0
    p64 = x.detach().double().requires_grad_()
    (_kept_renorm64(p64, kept) * g).sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad.double(), p64.grad, atol=atol, rtol=atol)
    # the forward agrees with the fixed-set reference too (the set is the op's own)
    torch.testing.assert_close(out.double(), _kept_renorm64(p64.detach(), kept), atol=atol, rtol=atol)


def test_renorm_gradient_of_invalid_row_is_zero():
    x = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.3, 0.5]]).requires_grad_()
    softdec.top_p_renorm_probs(x, 0.5).sum().backward()
    assert torch.equal(x.grad[0], torch.zeros(3))
    assert torch.isfinite(x.grad).all()


def test_renorm_gradcheck_float64_path():
    # float64 gradcheck of the registered formula through a float32 op call (the
    # kept set is fixed away from ties; eps far below the gaps between entries)
    p = torch.tensor([[0.05, 0.4, 0.15, 0.3, 0.1]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: softdec.top_p_renorm_probs(a.float(), 0.6).double(), (p,),
                                    eps=1e-3, atol=5e-3)


@pytest.mark.parametrize("name, call", [
    ("sparse_decode_attention",
     lambda q: softdec.sparse_decode_attention(q, torch.randn(1, 2, 40, 8), torch.randn(1, 2, 40, 8), budget=4)),
    ("token_sparse_prefill",
     lambda q: softdec.token_sparse_prefill(q[:, :, None].expand(1, 4, 12, 8), torch.randn(1, 2, 12, 8),
                                            torch.randn(1, 2, 12, 8), min_tokens=4, window=4)),
])
def test_attention_backward_raises_naming_the_op(name, call):
    q = torch.randn(1, 4, 8, requires_grad=True)
    out = call(q)
    assert out.requires_grad  # a loss reaching it must not silently get no gradient
    _raises(f"softdec.{name} is not differentiable", (out.sum() + q.sum()).backward, exc=RuntimeError)


def test_page_summary_outputs_do_not_require_grad():
    k = torch.randn(1, 2, 32, 8, requires_grad=True)
    s = softdec.build_page_summary(k, page_size=8)
    assert not s.kmin.requires_grad and not s.kmax.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        s.kmax.sum().backward()
    # and the in-place update still works on them
    softdec.update_page_summary(s, k.detach(), start=0, end=32)


def test_verify_soft_weights_backward_raises():
    tl = torch.randn(1, 3, 10, requires_grad=True)
    ids = torch.tensor([[[1, 2], [3, 4]]])
    w = torch.tensor([[[0.5, 0.5], [0.5, 0.5]]])
    r = softdec.verify(tl, None, draft_probs=(ids, w), method="soft")
    assert r.soft_weights.requires_grad and not r.tokens.requires_grad
    _raises("softdec.verify is not differentiable", r.soft_weights.sum().backward, exc=RuntimeError)


def test_sample_and_philox_outputs_never_require_grad():
    x = torch.randn(2, 10, requires_grad=True)
    out = softdec.sample(x, seed=0)
    assert not out.ids.requires_grad and not out.valid.requires_grad
    assert not softdec.philox_uniform((2, 3), seed=0).requires_grad


def test_opcheck_and_compile_with_autograd_registrations():
    x = torch.randn(3, 20, requires_grad=True)
    k = torch.tensor([0, 3, 25])
    torch.library.opcheck(torch.ops.softdec.top_k_mask_logits, (x, k))
    p = torch.softmax(torch.randn(3, 20), -1).requires_grad_()
    torch.library.opcheck(torch.ops.softdec.top_p_renorm_probs, (p, torch.tensor([0.5, 0.9, 1.0])))
    torch.library.opcheck(torch.ops.softdec.min_p_renorm_probs, (p, torch.tensor([0.5, 0.0, 1.0])))
    f = torch.compile(lambda a: softdec.top_p_renorm_probs(softdec.top_k_mask_logits(a, 5).softmax(-1), 0.8),
                      fullgraph=True)
    y = f(x)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ============================================================================ 8: contiguity

def test_sample_empty_batch_with_strided_vocab():
    x = torch.zeros(3, 200)[:0, ::2]
    out = softdec.sample(x, seed=0)
    assert out.ids.shape == (0,) and out.valid.shape == (0,)


@pytest.mark.parametrize("op", [softdec.top_k_mask_logits, softdec.gumbel_softmax])
def test_filters_empty_batch_with_strided_vocab(op):
    x = torch.zeros(3, 200)[:0, ::2]
    out = op(x, 3) if op is softdec.top_k_mask_logits else op(x, seed=0)
    assert out.shape == (0, 100)


def test_verify_size1_dims_ignored_by_contiguity():
    tl = torch.randn(1, 3, 10)
    ids = torch.tensor([[1], [2]]).t()  # (1, 2) with strides (1, 1): contiguous per torch
    assert ids.is_contiguous()
    a = softdec.verify(tl, ids, seed=torch.tensor([3]))  # the raw op below takes the key as given
    b = softdec.verify(tl, ids.contiguous(), seed=torch.tensor([3]))
    assert torch.equal(a.tokens, b.tokens)
    # straight to the C++ layer too (the wrapper's .contiguous() keeps this view)
    ops = torch.ops.softdec
    one = torch.ones(1)
    z = torch.zeros(1, dtype=torch.long)
    out = ops.verify(tl, ids, torch.full((1,), 2), None, None, None, None, 0, one, z, one, torch.zeros(1),
                     0.09, 0.3, 0.1, torch.full((1,), 3), z)
    assert torch.equal(out[0], a.tokens)


def test_verify_sparse_size1_strides_ignored():
    tl = torch.randn(1, 2, 10)
    sid = torch.tensor([[[3, 4]]]).transpose(0, 1)  # (1, 1, 2), odd strides on size-1 dims
    sw = torch.tensor([[[0.25, 0.75]]]).transpose(0, 1)
    a = softdec.verify(tl, torch.tensor([[4]]), draft_probs=(sid, sw), seed=1)
    assert a.tokens.shape == (1, 2)


def test_cpp_contiguity_still_refuses_real_strides():
    ops = torch.ops.softdec
    ids = torch.zeros(3, 2, dtype=torch.long).t()  # (2, 3) strides (1, 2): not contiguous
    one = torch.ones(2)
    z = torch.zeros(2, dtype=torch.long)
    _raises("draft_ids must be contiguous, got shape (2, 3) and strides (1, 2)", ops.verify,
            torch.zeros(2, 4, 5), ids, z, None, None, None, None, 0, one, z, one, torch.zeros(2), 0.09, 0.3,
            0.1, z, z)


# ============================================================================ 11: error quality

X = torch.randn(2, 8)


@pytest.mark.parametrize("value, msg", [
    (float("inf"), "top_k must be an int, got float inf"),
    (2 ** 64, "top_k must fit in int64 (|value| < 2**63), got 18446744073709551616"),
    (float("nan"), "top_k must be an int, got float nan"),
    (2.7, "top_k must be an int, got float 2.7"),
    (3.0, "top_k must be an int, got float 3.0"),
    (True, "top_k must be an int or a tensor of shape (2,), got bool True"),
    (-1, "top_k must be >= 0, got -1"),
    (np.float64(2.0), "top_k must be an int, got numpy.float64"),
    (np.array([3, 3]), "top_k must be an int or a tensor of shape (2,), got numpy.ndarray"),
    (torch.tensor([3, 3], dtype=torch.uint8), "top_k must be an integer tensor (int64, int32), got uint8"),
    (torch.tensor([True, True]), "top_k must be an integer tensor (int64, int32), got bool"),
    (torch.tensor([3 + 0j, 3]), "top_k must be an integer tensor (int64, int32), got complex64"),
    (torch.tensor([3.0, 3.0]), "top_k must be an integer tensor (int64, int32), got float32"),
    (torch.tensor([3, 3, 3]), "top_k must be a scalar or a tensor of shape (2,), got shape (3,)"),
    (torch.tensor([3, -2]), "top_k must be >= 0, got -2 at row 1"),
])
def test_sample_top_k_errors(value, msg):
    _raises(msg, softdec.sample, X, top_k=value, seed=0)


def test_numpy_integers_accepted():
    a = softdec.sample(X, top_k=np.int64(3), top_p=np.float32(0.5), seed=np.int64(4))
    b = softdec.sample(X, top_k=3, top_p=0.5, seed=4)
    assert torch.equal(a.ids, b.ids)


@pytest.mark.parametrize("kw, msg", [
    (dict(top_p=1.5), "top_p must be in [0.0, 1.0], got 1.5"),
    (dict(top_p=-0.1), "top_p must be in [0.0, 1.0], got -0.1"),
    (dict(top_p=float("nan")), "top_p must not be NaN, got nan"),
    (dict(top_p=True), "top_p must be a number or a tensor of shape (2,), got bool True"),
    (dict(top_p=torch.tensor([0.5, 0.5 + 0j])), "top_p must be a floating-point tensor"),
    (dict(top_p=torch.tensor([0.5, float("nan")])), "top_p must be finite and in [0.0, 1.0], got nan at row 1"),
    (dict(min_p=-0.5), "min_p must be in [0.0, 1.0], got -0.5"),
    (dict(min_p=1.01), "min_p must be in [0.0, 1.0], got 1.01"),
    (dict(temperature=-1.0), "temperature must be >= 0.0, got -1.0"),
    (dict(temperature=float("nan")), "temperature must not be NaN, got nan"),
    (dict(temperature=float("inf")), "temperature must be a finite number >= 0.0, got inf"),
    (dict(temperature=torch.tensor([1.0, float("inf")])), "temperature must be finite and >= 0.0, got inf at row 1"),
    (dict(temperature="hot"), "temperature must be a number or a tensor of shape (2,), got str"),
    (dict(seed=1.5), "seed must be an int or an int64 tensor, got float"),
    (dict(seed=True), "seed must be an int or an int64 tensor, got bool"),
    (dict(seed=2 ** 64), "seed must fit in 64 bits, got 18446744073709551616"),
    (dict(offset=torch.tensor([1.0, 2.0])), "offset must be an int or an int64 tensor, got a float32 tensor"),
])
def test_sample_parameter_errors(kw, msg):
    _raises(msg, softdec.sample, X, **kw)


def test_no_integer_tensor_typo():
    with pytest.raises(ValueError) as e:
        softdec.sample(X, top_k=torch.tensor([1.0, 2.0]))
    assert "a integer" not in str(e.value) and "an integer tensor" in str(e.value)


def test_philox_cuda_on_cpu_build_is_a_value_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    _raises("device must be an available device: CUDA is not available", softdec.philox_uniform, (2, 3), 0,
            device="cuda")


@pytest.mark.parametrize("kw, msg", [
    (dict(shape=(2, 2.0)), "shape must be a sequence of ints, got (2, 2.0)"),
    (dict(shape=(2, True)), "shape must be a sequence of ints, got (2, True)"),
    (dict(shape="ab"), "shape must be an int or a sequence of ints, got str 'ab'"),
    (dict(shape=(2, -1)), "shape must hold non-negative sizes, got (2, -1)"),
    (dict(shape=(2, 3), device="meta"), "device must be a CPU or CUDA device, got 'meta'"),
    (dict(shape=(2, 3), device="nonsense"), "device must be a torch.device or a device string"),
])
def test_philox_argument_errors(kw, msg):
    shape = kw.pop("shape")
    _raises(msg, softdec.philox_uniform, shape, 0, **kw)


def test_philox_numpy_shape_accepted():
    a = softdec.philox_uniform((np.int64(2), 3), seed=5)
    assert torch.equal(a, softdec.philox_uniform((2, 3), seed=5))


def _chain_args():
    q = torch.softmax(torch.randn(2, 3, 10), -1)
    p = torch.softmax(torch.randn(2, 4, 10), -1)
    return q, torch.zeros(2, 3, dtype=torch.long), p


@pytest.mark.parametrize("kw, msg", [
    (dict(maybe_output_accepted_token_num=torch.zeros(3, dtype=torch.int32)),
     "maybe_output_accepted_token_num must have shape (2,) (one counter per row of target_probs), got (3,)"),
    (dict(maybe_output_emitted_draft_token_num=torch.zeros(2)),
     "maybe_output_emitted_draft_token_num must have dtype in (int32, int64), got float32"),
    (dict(maybe_output_accepted_token_num=torch.zeros(2, 1, dtype=torch.int32)),
     "maybe_output_accepted_token_num must be a 1-D tensor (batch,), got shape (2, 1)"),
    (dict(deterministic=1), "deterministic must be a bool, got int 1"),
])
def test_chain_speculative_sampling_counter_errors(kw, msg):
    _raises(msg, softdec.chain_speculative_sampling, *_chain_args(), seed=0, **kw)


def test_chain_counters_accumulate():
    acc = torch.full((2,), 5, dtype=torch.int32)
    _, a, _ = softdec.chain_speculative_sampling(*_chain_args(), maybe_output_accepted_token_num=acc, seed=0)
    assert a is acc and bool((acc >= 5).all()) and bool((acc <= 8).all())


def test_verify_bf16_sparse_weights_that_summed_to_one_are_accepted():
    torch.manual_seed(1)
    w = torch.softmax(torch.randn(2, 3, 8, dtype=torch.float64) * 3, -1)
    sid = torch.argsort(torch.rand(2, 3, 50), -1)[..., :8]
    wb = w.to(torch.bfloat16)
    assert ((wb.double().sum(-1) - 1).abs() > 1e-3).any()  # the cast moved some sums past 1e-3
    drafts = sid[..., 0]
    out = softdec.verify(torch.randn(2, 4, 50), drafts, draft_probs=(sid, wb), seed=0)
    assert out.tokens.shape == (2, 4)
    # float32 weights keep the tight tolerance
    bad = w.float().clone()
    bad[0, 0, 0] += 2e-3
    _raises("draft_probs weights must sum to 1 (within 0.001) at every drafted position", softdec.verify,
            torch.randn(2, 4, 50), drafts, draft_probs=(sid, bad), seed=0)
    # and bf16 weights far from 1 are still refused
    _raises("draft_probs weights must sum to 1 (within 0.03225)", softdec.verify, torch.randn(2, 4, 50), drafts,
            draft_probs=(sid, (wb.float() * 1.1).to(torch.bfloat16)), seed=0)


@pytest.mark.parametrize("kw, msg", [
    (dict(top_k=True), "top_k must be an int, got bool True"),
    (dict(top_k=2.0), "top_k must be an int, got float 2.0"),
    (dict(top_k=0), "top_k must be in [1, 256], got 0"),
    (dict(top_k=torch.tensor([3, 300])), "top_k must be in [1, 256], got 300 at row 1"),
    (dict(top_k=torch.tensor([3, 3], dtype=torch.uint8)), "top_k must be an integer tensor (int64, int32), got uint8"),
    (dict(tau=float("inf")), "tau must be a finite number > 0, got inf"),
    (dict(tau=0), "tau must be > 0, got 0.0"),
    (dict(tau=True), "tau must be a real number, got bool True"),
    (dict(noise_scale=float("nan")), "noise_scale must not be NaN, got nan"),
    (dict(dirichlet_alpha=-1), "dirichlet_alpha must be > 0, got -1.0"),
    (dict(embed_scale=1j), "embed_scale must be a real number, got complex 1j"),
    (dict(temperature=float("inf")), "temperature must be a finite number >= 0, got inf"),
])
def test_soft_mixture_argument_errors(kw, msg):
    _raises(msg, softdec.soft_mixture, X, torch.randn(8, 4), **kw)


@pytest.mark.parametrize("kw, msg", [
    (dict(top_k=True), "top_k must be an int, got bool True"),
    (dict(top_k=1.0), "top_k must be an int, got float 1.0"),
    (dict(top_k=9), "top_k must be in [0, vocab] = [0, 8], got 9"),
    (dict(hard=1), "hard must be a bool, got int 1"),
    (dict(tau=0.0), "tau must be > 0.0, got 0.0"),
    (dict(tau=torch.tensor([1.0, float("inf")])), "tau must be finite and > 0.0, got inf at row 1"),
])
def test_gumbel_softmax_argument_errors(kw, msg):
    _raises(msg, softdec.gumbel_softmax, X, seed=0, **kw)


@pytest.mark.parametrize("kw, msg", [
    (dict(posterior_threshold=float("nan")), "posterior_threshold must not be NaN, got nan"),
    (dict(posterior_alpha=-1.0), "posterior_alpha must be >= 0, got -1.0"),
    (dict(delta=float("inf")), "delta must be a finite number >= 0, got inf"),
    (dict(delta=True), "delta must be a real number, got bool True"),
    (dict(num_draft=1.0), "num_draft must be an int, got float 1.0"),
    (dict(num_draft=3), "num_draft must be in [0, 2], got 3"),
    (dict(num_draft=torch.tensor([1, 1], dtype=torch.uint8)), "num_draft must be an integer tensor"),
    (dict(top_k=2.5), "top_k must be an int, got float 2.5"),
    (dict(method="fast"), "method must be one of ('exact', 'greedy', 'typical', 'relaxed', 'soft'), got 'fast'"),
])
def test_verify_argument_errors(kw, msg):
    _raises(msg, softdec.verify, torch.randn(2, 3, 10), torch.zeros(2, 2, dtype=torch.long), seed=0, **kw)


def _attn():
    return torch.randn(1, 4, 8), torch.randn(1, 2, 40, 8), torch.randn(1, 2, 40, 8)


@pytest.mark.parametrize("kw, msg", [
    (dict(budget=4.0), "budget must be an int, got float 4.0"),
    (dict(budget=True), "budget must be an int, got bool True"),
    (dict(budget=0), "budget must be >= 1, got 0"),
    (dict(budget=4, sink=-1), "sink must be >= 0, got -1"),
    (dict(budget=4, window=np.float32(3)), "window must be an int, got numpy.float32"),
    (dict(budget=4, page_size=12), "page_size must be a power of two, got 12"),
    (dict(budget=4, page_size=True), "page_size must be an int, got bool True"),
    (dict(budget=4, scale=float("nan")), "scale must not be NaN, got nan"),
    (dict(budget=4, scale=float("inf")), "scale must be a finite number, got inf"),
    (dict(budget=4, return_indices=1), "return_indices must be a bool, got int 1"),
    (dict(budget=4, seq_lens=41), "seq_lens must be in [0, 40], got 41"),
    (dict(budget=4, seq_lens=torch.tensor([3.0])), "seq_lens must be an integer tensor (int64, int32), got float32"),
])
def test_sparse_decode_attention_argument_errors(kw, msg):
    _raises(msg, softdec.sparse_decode_attention, *_attn(), **kw)


@pytest.mark.parametrize("kw, msg", [
    (dict(coverage=1.0), "coverage must be in [0, 1), got 1.0"),
    (dict(coverage=float("nan")), "coverage must not be NaN, got nan"),
    (dict(min_tokens=2.0), "min_tokens must be an int, got float 2.0"),
    (dict(window=0), "window must be >= 1, got 0"),
    (dict(causal=1), "causal must be a bool, got int 1"),
    (dict(scale=float("-inf")), "scale must be a finite number, got -inf"),
])
def test_token_sparse_prefill_argument_errors(kw, msg):
    q = torch.randn(1, 4, 12, 8)
    _raises(msg, softdec.token_sparse_prefill, q, torch.randn(1, 2, 12, 8), torch.randn(1, 2, 12, 8), **kw)


@pytest.mark.parametrize("kw, msg", [
    (dict(page_size=3), "page_size must be a power of two, got 3"),
    (dict(page_size=16.0), "page_size must be an int, got float 16.0"),
    (dict(seq_lens=-1), "seq_lens must be in [0, 32], got -1"),
])
def test_build_page_summary_argument_errors(kw, msg):
    _raises(msg, softdec.build_page_summary, torch.randn(1, 2, 32, 8), **kw)


def test_update_page_summary_argument_errors():
    k = torch.randn(1, 2, 32, 8)
    s = softdec.build_page_summary(k, page_size=8)
    _raises("start must be an int, got float 1.5", softdec.update_page_summary, s, k, start=1.5, end=3)
    _raises("end must be in [0, 32], got 33", softdec.update_page_summary, s, k, start=0, end=33)
    _raises("summary must be a PageSummary", softdec.update_page_summary, (s.kmin, s.kmax), k, start=0, end=3)


def test_reference_oracles_unchanged():
    # the references the fuzz suite compares against still take the same inputs
    p = torch.softmax(torch.randn(2, 9, dtype=torch.float64), -1)
    r = reference.top_p_renorm_probs(p, torch.tensor([0.5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(r.sum(-1), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("call, msg", [
    (lambda: softdec.soft_mixture(X, torch.randn(8, 4), noise=["gumbel"]), "noise must be None, 'gumbel' or 'dirichlet'"),
    (lambda: softdec.verify(torch.randn(2, 3, 10), torch.zeros(2, 2, dtype=torch.long), method=["exact"]),
     "method must be one of"),
    (lambda: softdec.sparse_decode_attention(*_attn(), budget=4, select={"page"}), "select must be 'page' or 'token'"),
    (lambda: softdec.sample(X, generator="cpu"), "generator must be a torch.Generator or None, got str"),
    (lambda: softdec.soft_mixture(X, torch.randn(8, 4), noise="gumbel", generator=1),
     "generator must be a torch.Generator or None, got int"),
])
def test_unhashable_or_wrong_type_choices_name_the_argument(call, msg):
    _raises(msg, call)


# ============================================================================ found by the fuzz suite

@pytest.mark.parametrize("op", [softdec.top_p_renorm_probs, softdec.min_p_renorm_probs])
@pytest.mark.parametrize("V", [33, 5])  # the AVX-512 path (16-wide blocks) and the scalar tail
def test_renorm_row_with_inf_is_zero_not_nan(op, V):
    # found by test_fuzz (top_p_renorm_probs, kind "inf"): the vectorised pass kept the +inf entry
    # of an invalid row and wrote inf * 0 = NaN; rows with an inf are documented all-zero
    p = torch.softmax(torch.randn(2, V), -1)
    p[0, 2] = float("inf")
    out = op(p, 0.5)
    assert torch.equal(out[0], torch.zeros(V))
    torch.testing.assert_close(out[1].sum(), torch.tensor(1.0))


def test_update_page_summary_on_empty_cache():
    # found by test_fuzz (build_page_summary, N = 0): start = end = 0 raised "kmin must have at least one page"
    k = torch.randn(2, 2, 0, 8)
    s = softdec.build_page_summary(k, page_size=4)
    assert s.kmin.shape == (2, 2, 0, 8)
    assert softdec.update_page_summary(s, k, start=0, end=0) is s


def test_attention_accepts_strided_last_dim():
    q, k, v = _attn()
    ks = torch.zeros(1, 2, 40, 16)[..., ::2]
    ks.copy_(k)
    a = softdec.sparse_decode_attention(q, ks, v, budget=4, select="token")
    b = softdec.sparse_decode_attention(q, k, v, budget=4, select="token")
    assert torch.equal(a, b)
    s = softdec.build_page_summary(ks, page_size=8)
    torch.testing.assert_close(s.kmax, softdec.build_page_summary(k, page_size=8).kmax, rtol=0, atol=0)
