"""Pinned messages of the C++ argument checks shared by the CPU and CUDA entry points
(csrc/sampling_checks.h, csrc/soft_mixture_checks.h, csrc/verify_checks.h).

The Python wrappers repeat most checks with more context, so these tests call the raw
``torch.ops.softdec`` ops to reach the C++ layer directly (CPU).
"""
import re

import pytest
import torch

import softdec  # noqa: F401  (loads the extension)

ops = torch.ops.softdec
B, K, V = 2, 3, 11


def _f(*s, dtype=torch.float32):
    return torch.zeros(*s, dtype=dtype)


def _l(*s):
    return torch.zeros(*s, dtype=torch.long)


def _raises(msg, fn, **kw):
    with pytest.raises(ValueError, match=re.escape(msg)):
        fn(**kw)


# ---------------------------------------------------------------- verify

def _verify_args(**kw):
    a = dict(target_logits=_f(B, K + 1, V), draft_ids=_l(B, K), num_draft=_l(B), draft_probs=None,
             sparse_ids=None, sparse_weights=None, neighbours=None, method=0,
             temperature=torch.ones(B), top_k=_l(B), top_p=torch.ones(B), min_p=_f(B),
             posterior_threshold=0.09, posterior_alpha=0.3, delta=0.1, seed=_l(B), offset=_l(B))
    a.update(kw)
    return a


def test_verify_valid_call_runs():
    tokens, nacc, soft_ids, soft_w = ops.verify(**_verify_args())
    assert tokens.shape == (B, K + 1) and nacc.shape == (B,)
    assert soft_ids.shape == (B, 0) and soft_w.shape == (B, 0)
    assert (nacc == 0).all()  # num_draft = 0: only the bonus token
    assert ((tokens[:, 0] >= 0) & (tokens[:, 0] < V)).all()


@pytest.mark.parametrize("kw, msg", [
    (dict(target_logits=_f(B, 0, V)), "target_logits must have K+1 >= 1 positions, got shape (2, 0, 11)"),
    (dict(target_logits=_f(B, K + 1, 0)), "target_logits must have a vocabulary in [1, 2^31), got 0"),
    (dict(method=5), "method must be in [0, 4], got 5"),
    (dict(method=-1), "method must be in [0, 4], got -1"),
    (dict(draft_ids=_l(B, K + 1)), "draft_ids must have shape (2, 3) to match target_logits (2, 4, 11), got (2, 4)"),
    (dict(draft_ids=_l(K, B).t()), "draft_ids must be contiguous"),
    (dict(sparse_ids=_l(B, K, 2)), "sparse draft ids and weights must be given together"),
    (dict(draft_probs=_f(B, K, V), sparse_ids=_l(B, K, 2), sparse_weights=_f(B, K, 2)),
     "give either dense draft_probs or sparse draft ids/weights, not both"),
    (dict(draft_probs=_f(B, K, V - 1)), "draft_probs must have shape (2, 3, 11) to match target_logits, got (2, 3, 10)"),
    (dict(target_logits=_f(B, K + 1, V, dtype=torch.bfloat16), draft_probs=_f(B, K, V, dtype=torch.float16)),
     "draft_probs must be float32 or the dtype of target_logits (bfloat16), got float16"),
    (dict(sparse_ids=_l(B, K, 0), sparse_weights=_f(B, K, 0)), "draft_probs ids must have shape (2, 3, k >= 1), got (2, 3, 0)"),
    (dict(sparse_ids=_l(B, K, 2), sparse_weights=_f(B, K, 3)),
     "draft_probs weights must have the shape of its ids (2, 3, 2), got (2, 3, 3)"),
    (dict(sparse_ids=_l(2, K, B).transpose(0, 2), sparse_weights=_f(B, K, 2)), "draft_probs ids must be contiguous"),
    (dict(sparse_ids=_l(B, K, 2), sparse_weights=_f(2, K, B).transpose(0, 2)), "draft_probs weights must be contiguous"),
    (dict(method=4), "method 'soft' needs sparse draft ids and weights"),
    (dict(method=3), "method 'relaxed' needs neighbours, a (vocab, m) int64 tensor"),
    (dict(method=3, neighbours=_l(V + 1, 2)), "neighbours must have one row per vocabulary entry (11), got shape (12, 2)"),
    (dict(method=3, neighbours=_l(2, V).t()), "neighbours must be contiguous"),
])
def test_verify_cpp_messages(kw, msg):
    _raises(msg, ops.verify, **_verify_args(**kw))


# ---------------------------------------------------------------- soft_mixture

def _sm_args(**kw):
    d64 = torch.float64
    a = dict(logits=_f(B, V), embedding=_f(V, 4), temperature=torch.ones(B, dtype=d64), top_k=torch.ones(B, dtype=torch.long),
             top_p=torch.ones(B, dtype=d64), min_p=_f(B, dtype=d64), seed=_l(B), offset=_l(B), k=4, noise=0,
             tau=1.0, noise_scale=1.0, dirichlet_alpha=1.0, embed_scale=1.0,
             filter_top_k=torch.zeros(B, dtype=torch.long), kc=4, gumbel_lo=-float("inf"),
             gumbel_hi=float("inf"), gumbel_eps=0.0, embed_noise_std=0.0)
    a.update(kw)
    return a


def test_soft_mixture_valid_call_runs():
    out = ops.soft_mixture(**_sm_args())
    assert out[0].shape == (B, 4) and out[1].shape == (B, 4)


@pytest.mark.parametrize("kw, msg", [
    (dict(logits=_f(B, V, dtype=torch.int32)), "logits must be float32, bfloat16, float16 or float64, got int32"),
    (dict(embedding=_f(V, 4, dtype=torch.int64)), "embedding must be float32, bfloat16, float16 or float64, got int64"),
    (dict(logits=_f(B, 0), embedding=_f(0, 4)), "logits must have at least one column (vocab), got shape (2, 0)"),
    (dict(embedding=_f(V + 1, 4)), "embedding must have as many rows as logits has columns (11), got 12"),
    (dict(k=0), "k (the output width, max top_k) must be in [1, "),
    (dict(noise=3), "noise must be 0 (none), 1 (gumbel) or 2 (dirichlet), got 3"),
    (dict(gumbel_lo=3.0, gumbel_hi=-1.5), "gumbel_clamp must be (lo, hi) with lo < hi, got (3, -1.5)"),
    (dict(gumbel_eps=-1.0), "gumbel_eps must be >= 0 and finite, got -1"),
    (dict(embed_noise_std=-1.0), "embed_noise_std must be >= 0 and finite, got -1"),
    (dict(kc=3), "kc (the candidate width, max(k, filter_top_k)) must be in [k = 4, 256], got 3"),
    (dict(filter_top_k=_l(B + 1)), "filter_top_k"),
    (dict(tau=0.0), "tau must be > 0 and finite, got 0"),
    (dict(tau=float("inf")), "tau must be > 0 and finite, got inf"),
    (dict(dirichlet_alpha=-1.0), "dirichlet_alpha must be > 0 and finite, got -1"),
    (dict(dirichlet_alpha=float("nan")), "dirichlet_alpha must be > 0 and finite, got nan"),
])
def test_soft_mixture_cpp_messages(kw, msg):
    _raises(msg, ops.soft_mixture, **_sm_args(**kw))


# ---------------------------------------------------------------- sampling

def test_sample_cpp_messages():
    _raises("logits must have at least one column (vocab >= 1), got shape (2, 0)", ops.sample,
            logits=_f(B, 0), temperature=torch.ones(B), top_k=_l(B), top_p=torch.ones(B), min_p=_f(B),
            seed=_l(B), offset=_l(B))
    ids, valid = ops.sample(logits=_f(0, 0), temperature=torch.ones(0), top_k=_l(0), top_p=torch.ones(0),
                            min_p=_f(0), seed=_l(0), offset=_l(0))
    assert ids.shape == (0,) and valid.shape == (0,)


@pytest.mark.parametrize("k", [0, V + 1])
def test_gumbel_softmax_topk_cpp_messages(k):
    _raises(f"k must be in [1, vocab] = [1, 11], got {k}", ops.gumbel_softmax_topk,
            logits=_f(B, V), tau=torch.ones(B), k=k, seed=_l(B), offset=_l(B))
