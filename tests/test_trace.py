"""Rollout traces of softdec.hf.generate (return_trace=True), replay, and think_end_token_id as a string.

Tiny random models from test_hf (built from configs, never downloaded); a tiny WordLevel tokenizer
built in memory.
"""

from __future__ import annotations

import pytest
import torch

import softdec
import softdec.hf as H
import softdec.reference
import softdec.strategies as S
from softdec.strategies import MODE_DISCRETE, MODE_FINISHED, MODE_SOFT, MODE_THINK_END
from test_hf import V, model_for, prompts

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(not (hasattr(softdec, "soft_mixture") and hasattr(softdec, "sample")),
                                reason="softdec.soft_mixture / sample are not in this build")


class _LogitsTap:
    """Records the last-position logits of every forward of the model (what the loop decoded from)."""

    def __init__(self, model):
        self.seen = []
        self.h = model.get_output_embeddings().register_forward_hook(
            lambda mod, inp, out: self.seen.append(out[:, -1].detach().float().clone()))

    def close(self):
        self.h.remove()


def _soft_strategy(noise, **kw):
    base = dict(top_k=4, temperature=0.8, top_p=0.97, tau=0.5, max_think_tokens=5, think_end_token_id=7, seed=11)
    base.update(kw)
    return S.SoftThinking(noise=noise, **base)


# ============================================================================ shapes, dtypes, modes

@pytest.mark.parametrize("noise", [None, "gumbel", "dirichlet"])
def test_trace_shapes_and_modes_soft_thinking(noise):
    model = model_for("llama")
    ids, mask = prompts(3)
    out = H.generate(model, ids, attention_mask=mask, strategy=_soft_strategy(noise), max_new_tokens=9,
                     eos_token_id=[])
    assert out.trace is None
    out = H.generate(model, ids, attention_mask=mask, strategy=_soft_strategy(noise), max_new_tokens=9,
                     eos_token_id=[], return_trace=True)
    tr = out.trace
    B, L = ids.shape
    Sn = out.sequences.shape[1] - L
    assert isinstance(tr, H.RolloutTrace) and tr.noise == noise
    assert tr.mode.shape == (B, Sn) and tr.mode.dtype == torch.int8
    assert torch.equal(tr.mode, out.stats.mode)
    assert torch.equal(tr.tokens, out.sequences[:, L:])
    assert tr.ids.shape == (B, Sn, 4) and tr.ids.dtype == torch.int64
    assert tr.weights.shape == (B, Sn, 4) and tr.weights.dtype == torch.float32
    assert tr.nkept.shape == (B, Sn) and tr.nkept.dtype == torch.int32
    # an int seed keys row b by its folded key (softdec.reference.row_seed)
    keys = torch.tensor([softdec.reference.row_seed(11, b) for b in range(B)], dtype=torch.int64)
    assert tr.seed.shape == (B,) and tr.seed.dtype == torch.int64 and torch.equal(tr.seed, keys)
    assert torch.equal(tr.offset, (2 * torch.arange(Sn))[None].expand(B, Sn))
    assert torch.equal(tr.positions, mask.sum(1)[:, None] + torch.arange(Sn)[None])
    if noise == "gumbel":
        assert tr.noisy_logits.shape == (B, Sn, 4) and tr.noisy_logits.dtype == torch.float32
    else:
        assert tr.noisy_logits is None
    # 5 soft steps, then the think-end token, then discrete decoding
    soft = tr.mode == MODE_SOFT
    assert bool((soft.sum(1) == 5).all())
    assert bool((tr.mode[:, 5] == MODE_THINK_END).all()) and bool((tr.tokens[:, 5] == 7).all())
    assert bool((tr.mode[:, 6:] == MODE_DISCRETE).all())
    assert torch.equal(tr.soft, soft) and torch.equal(tr.discrete, tr.mode == MODE_DISCRETE)
    assert not bool(tr.discrete[:, 5].any())
    # soft steps: nkept in [1, k], weights sum to 1 over the kept entries, zero past them, distinct ids
    n = tr.nkept[soft]
    assert bool(((n >= 1) & (n <= 4)).all())
    w = tr.weights[soft]
    col = torch.arange(4)[None]
    assert torch.allclose(w.sum(1), torch.ones(len(w)), atol=1e-5)
    assert bool((w[col >= n[:, None]] == 0).all())
    kid = tr.ids[soft]
    for r in range(len(kid)):
        assert len(set(kid[r, :int(n[r])].tolist())) == int(n[r])
    if noise == "gumbel":
        y = tr.noisy_logits[soft]
        assert bool(torch.isfinite(y[col < n[:, None]]).all()) and bool((y[col >= n[:, None]] == -float("inf")).all())
        assert bool((tr.noisy_logits[~soft] == -float("inf")).all())
    # non-soft steps carry no soft token
    assert bool((tr.nkept[~soft] == 0).all()) and bool((tr.weights[~soft] == 0).all())
    assert bool((tr.ids[~soft] == 0).all())
    # the top id is the recorded token
    assert torch.equal(tr.ids[soft][:, 0], tr.tokens[soft])


def test_trace_nkept_counts_filtered_rows():
    # a peaked model + tight top_p keeps fewer than top_k ids on some steps
    model = model_for("llama", std=0.6)
    ids, mask = prompts(3)
    st = S.SoftThinking(top_k=8, top_p=0.6, max_think_tokens=6, seed=2)
    out = H.generate(model, ids, attention_mask=mask, strategy=st, max_new_tokens=6, eos_token_id=[],
                     return_trace=True)
    tr = out.trace
    soft = tr.soft
    assert bool((tr.nkept[soft] < 8).any())
    w = tr.weights[soft]
    assert bool((w[:, :][torch.arange(8)[None] < tr.nkept[soft][:, None]] > 0).all())


def test_trace_router_and_discrete():
    model = model_for("llama")
    ids, mask = prompts(3)
    r = S.Router(threshold=0.07, top_k=3, noise="gumbel", tau=0.3, discrete=S.Discrete(0.7), seed=5)
    out = H.generate(model, ids, attention_mask=mask, strategy=r, max_new_tokens=10, eos_token_id=[],
                     return_trace=True)
    tr = out.trace
    soft = tr.soft
    assert bool(soft.any()) and bool((~soft).any()), "the threshold should route both ways on this model"
    assert bool((tr.nkept[soft] >= 1).all()) and bool((tr.nkept[~soft] == 0).all())
    assert bool((tr.noisy_logits[~soft] == -float("inf")).all())
    out = H.generate(model, ids, attention_mask=mask, strategy=S.Discrete(0.9, seed=1), max_new_tokens=6,
                     eos_token_id=[], return_trace=True)
    tr = out.trace
    assert tr.ids.shape == (3, 6, 0) and tr.weights.shape == (3, 6, 0) and bool((tr.nkept == 0).all()) and tr.noisy_logits is None
    assert torch.equal(tr.tokens, out.sequences[:, ids.shape[1]:])
    assert bool((tr.mode == MODE_DISCRETE).all())


def test_trace_finished_rows_and_zero_steps():
    model = model_for("llama")
    ids, mask = prompts(3)
    ref = H.generate(model, ids, attention_mask=mask, strategy=S.Discrete(0.0), max_new_tokens=6, eos_token_id=[])
    eos = int(ref.sequences[1, ids.shape[1] + 2])  # row 1 stops at step 2 (maybe others too)
    out = H.generate(model, ids, attention_mask=mask, strategy=S.SoftThinking(top_k=1, max_think_tokens=0,
                     after=S.Discrete(0.0)), max_new_tokens=6, eos_token_id=eos, pad_token_id=0, return_trace=True)
    tr = out.trace
    assert torch.equal(tr.mode, out.stats.mode)
    assert bool((tr.mode[1, 3:] == MODE_FINISHED).all()) and bool((tr.tokens[1, 3:] == 0).all())
    out = H.generate(model, ids, attention_mask=mask, strategy=_soft_strategy("gumbel"), max_new_tokens=0,
                     return_trace=True)
    assert out.trace.mode.shape == (3, 0) and out.trace.ids.shape == (3, 0, 4)
    assert out.trace.noisy_logits.shape == (3, 0, 4)


def test_trace_bad_input():
    model = model_for("llama")
    ids, mask = prompts(2)
    with pytest.raises(ValueError, match="return_trace must be a bool"):
        H.generate(model, ids, strategy=S.Discrete(), max_new_tokens=2, return_trace=1)
    with pytest.raises(ValueError, match="return_trace=True .*compile=True"):
        H.generate(model, ids, strategy=S.Discrete(), max_new_tokens=2, return_trace=True, compile=True)
    if hasattr(softdec, "verify"):
        with pytest.raises(ValueError, match="return_trace=True .*Speculative"):
            H.generate(model, ids, strategy=S.Speculative(model, 2), max_new_tokens=2, return_trace=True)
    out = H.generate(model, ids, strategy=S.Discrete(), max_new_tokens=2, return_trace=True)
    with pytest.raises(ValueError, match="trace must be a softdec.hf.RolloutTrace"):
        H.replay_logits(model, ids, out.stats)
    with pytest.raises(ValueError, match="trace has 2 rows, input_ids 1"):
        H.replay_logits(model, ids[:1], out.trace)


def test_trace_memory_is_per_k():
    model = model_for("llama")
    ids, mask = prompts(2)
    out = H.generate(model, ids, strategy=_soft_strategy("gumbel", max_think_tokens=20), max_new_tokens=20,
                     eos_token_id=[], return_trace=True)
    for f in out.trace:
        if isinstance(f, torch.Tensor):
            assert f.numel() <= 2 * 20 * 4, "a trace field is not O(B * steps * k)"


# ============================================================================ replay

@pytest.mark.parametrize("arch", ["llama", "gemma", "gpt2"])
@pytest.mark.parametrize("noise", [None, "gumbel", "dirichlet"])
def test_replay_reproduces_logits_and_noise(arch, noise):
    model = model_for(arch)
    ids, mask = prompts(3)
    st = _soft_strategy(noise, max_think_tokens=4, think_end_token_id=None, after=S.Discrete(0.8, seed=4))
    tap = _LogitsTap(model)
    try:
        out = H.generate(model, ids, attention_mask=mask, strategy=st, max_new_tokens=8, eos_token_id=[],
                         return_trace=True)
    finally:
        tap.close()
    tr = out.trace
    Sn = tr.mode.shape[1]
    seen = torch.stack(tap.seen[:Sn], 1)                    # (B, S, V): step t's logits
    assert len(tap.seen) == Sn - 1 + 1                      # prompt + one forward per fed step
    with torch.no_grad():
        rl = H.replay_logits(model, ids, tr, mask)
    assert rl.shape == (3, Sn, V)
    torch.testing.assert_close(rl, seen, atol=2e-5, rtol=1e-4)
    # soft_mixture on the replayed logits with the trace's (seed, offset) reproduces each soft token
    emb = model.get_input_embeddings().weight
    for t in range(Sn):
        rows = tr.soft[:, t]
        if not rows.any():
            continue
        sm = softdec.soft_mixture(rl[:, t].contiguous(), emb, top_k=st.top_k, temperature=st.temperature,
                                  top_p=st.top_p, min_p=st.min_p, noise=noise, tau=st.tau,
                                  noise_scale=st.noise_scale, dirichlet_alpha=st.dirichlet_alpha,
                                  seed=tr.seed, offset=tr.offset[:, t])
        assert torch.equal(sm.ids[rows], tr.ids[rows, t])
        torch.testing.assert_close(sm.weights[rows].float(), tr.weights[rows, t], atol=1e-5, rtol=1e-4)
        if noise == "gumbel":
            torch.testing.assert_close(sm.noisy_logits[rows].float(), tr.noisy_logits[rows, t], atol=1e-5,
                                       rtol=1e-4)


def test_replay_inputs_embeds_match_generate():
    # the soft inputs rebuilt from the trace are what the loop fed (the model's inputs_embeds argument;
    # transformers 5.x Gemma scales by sqrt(hidden) in its embedding module, so they carry the scale,
    # 4.x scales them inside the decoder)
    model = model_for("gemma")
    ids, mask = prompts(2)
    fed = []
    h = model.register_forward_pre_hook(lambda mod, args, kw: fed.append(
        None if kw.get("inputs_embeds") is None else kw["inputs_embeds"].detach().clone()), with_kwargs=True)
    try:
        out = H.generate(model, ids, attention_mask=mask, strategy=_soft_strategy("dirichlet", think_end_token_id=None),
                         max_new_tokens=5, eos_token_id=[], return_trace=True)
    finally:
        h.remove()
    L = ids.shape[1]
    emb = H.replay_inputs_embeds(model, ids, out.trace)
    assert emb.shape == (2, L + 5, model.config.hidden_size)
    for t in range(4):  # fed steps 0..3 (step 4 is never fed)
        torch.testing.assert_close(emb[:, L + t], fed[1 + t][:, -1], atol=1e-6, rtol=1e-5)


def test_replay_is_differentiable():
    model = model_for("llama", seed=3)
    ids, mask = prompts(2)
    out = H.generate(model, ids, attention_mask=mask, strategy=_soft_strategy("gumbel"), max_new_tokens=4,
                     eos_token_id=[], return_trace=True)
    model.zero_grad()
    rl = H.replay_logits(model, ids, out.trace, mask)
    rl.logsumexp(-1).sum().backward()
    g = model.get_input_embeddings().weight.grad
    assert g is not None and bool(g.abs().sum() > 0)
    model.zero_grad()


@pytest.mark.skipif(not hasattr(softdec, "gumbel_log_density"), reason="softdec.gumbel_log_density not in this build")
def test_replay_gumbel_log_density_recovers_the_draws():
    # under the rollout's own logits, z = y - log pi~ is exactly the Philox Gumbel draw of each kept id
    model = model_for("llama")
    ids, mask = prompts(3)
    st = _soft_strategy("gumbel", tau=0.1, temperature=1.0, top_p=1.0, think_end_token_id=None)
    out = H.generate(model, ids, attention_mask=mask, strategy=st, max_new_tokens=5, eos_token_id=[],
                     return_trace=True)
    tr = out.trace
    with torch.no_grad():
        rl = H.replay_logits(model, ids, tr, mask)
    for t in range(4):
        v = softdec.gumbel_log_density(rl[:, t].contiguous(), tr.ids[:, t], tr.noisy_logits[:, t],
                                       temperature=st.temperature, nkept=tr.nkept[:, t], reduction="none")
        u = softdec.philox_uniform((3, V), seed=tr.seed, offset=tr.offset[:, t]).double()
        g = -torch.log(-torch.log(u.gather(1, tr.ids[:, t])))
        want = -g - torch.exp(-g)
        torch.testing.assert_close(v.double(), want, atol=2e-4, rtol=1e-4)


# ============================================================================ custom_generate

def test_custom_generate_returns_trace():
    model = model_for("llama")
    ids, mask = prompts(2)
    st = _soft_strategy("gumbel")
    a = model.generate(ids, attention_mask=mask, custom_generate=H.soft_thinking_generate, strategy=st,
                       max_new_tokens=6, eos_token_id=None, pad_token_id=0, return_dict_in_generate=True,
                       return_trace=True)
    b = H.generate(model, ids, attention_mask=mask, strategy=st, max_new_tokens=6, eos_token_id=[], pad_token_id=0,
                   return_trace=True)
    assert isinstance(a.trace, H.RolloutTrace)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.trace.ids, b.trace.ids)
    torch.testing.assert_close(a.trace.noisy_logits, b.trace.noisy_logits)
    c = model.generate(ids, attention_mask=mask, custom_generate=H.router_generate,
                       strategy=S.Router(threshold=0.0, top_k=2, seed=1), max_new_tokens=3, eos_token_id=None,
                       pad_token_id=0, return_dict_in_generate=True, return_trace=True)
    assert c.trace.ids.shape == (2, 3, 2)
    d = model.generate(ids, attention_mask=mask, custom_generate=H.discrete_generate, max_new_tokens=3,
                       eos_token_id=None, pad_token_id=0, return_dict_in_generate=True, return_trace=True)
    assert d.trace.tokens.shape == (2, 3)


# ============================================================================ think_end_token_id as a string

def _tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "</think>": 7, "<think>": 6}
    for i in range(8, V):
        vocab[f"w{i}"] = i
    tk = tokenizers.Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>",
                                                bos_token="<s>", eos_token="</s>")


def test_think_end_token_from_string():
    tok = _tokenizer()
    st = S.SoftThinking(top_k=3, think_end_token_id="</think>", tokenizer=tok)
    assert st.think_end_token_id == 7
    r = S.Router(top_k=3, think_end_token_id="</think>", tokenizer=tok)
    assert r.think_end_token_id == 7
    model = model_for("llama")
    ids, mask = prompts(2)
    kw = dict(attention_mask=mask, max_new_tokens=7, eos_token_id=[], return_trace=True)
    a = H.generate(model, ids, strategy=_soft_strategy("gumbel", think_end_token_id=7), **kw)
    lazy = _soft_strategy("gumbel", think_end_token_id="</think>")
    b = H.generate(model, ids, strategy=lazy, tokenizer=tok, **kw)
    assert lazy.think_end_token_id == "</think>"  # the caller's strategy is not modified
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.trace.mode, b.trace.mode)
    assert bool((b.trace.tokens[b.trace.mode == MODE_THINK_END] == 7).all())


def test_think_end_token_string_errors():
    tok = _tokenizer()
    with pytest.raises(ValueError, match=r"think_end_token_id='w8 w9' must map to exactly one token id.*2 tokens"):
        S.SoftThinking(think_end_token_id="w8 w9", tokenizer=tok)
    with pytest.raises(ValueError, match=r"think_end_token_id='</thonk>' is not in the tokenizer's vocabulary"):
        S.SoftThinking(think_end_token_id="</thonk>", tokenizer=tok)
    with pytest.raises(ValueError, match=r"think_end_token_id='' must map to exactly one token id.*no token"):
        S.Router(think_end_token_id="", tokenizer=tok)
    model = model_for("llama")
    ids, _ = prompts(1)
    with pytest.raises(ValueError, match=r"think_end_token_id='</think>' is a string: pass tokenizer="):
        H.generate(model, ids, strategy=S.SoftThinking(think_end_token_id="</think>"), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"think_end_token_id must be an int"):
        S.SoftThinking(think_end_token_id=7.0)


@pytest.mark.skipif(not hasattr(softdec, "dirichlet_log_density"), reason="softdec.dirichlet_log_density not in this build")
def test_replay_dirichlet_log_density_of_the_trace():
    # the trace's Dirichlet weights and nkept (exact, from the ids: a weight that underflowed to 0
    # still counts) under the replayed logits: finite, equal to the float64 reference
    from softdec import reference as R
    model = model_for("llama")
    ids, mask = prompts(3)
    st = _soft_strategy("dirichlet", dirichlet_alpha=4.0, think_end_token_id=None)
    tr = H.generate(model, ids, attention_mask=mask, strategy=st, max_new_tokens=5, eos_token_id=[],
                    return_trace=True).trace
    with torch.no_grad():
        rl = H.replay_logits(model, ids, tr, mask)
    for t in range(5):
        kw = dict(temperature=st.temperature, alpha=st.dirichlet_alpha, nkept=tr.nkept[:, t])
        v = softdec.dirichlet_log_density(rl[:, t].contiguous(), tr.ids[:, t], tr.weights[:, t], **kw)
        want = R.dirichlet_log_density(rl[:, t].double(), tr.ids[:, t], tr.weights[:, t].double(), **kw)
        assert bool(torch.isfinite(v).all())
        torch.testing.assert_close(v.double(), want, atol=1e-3, rtol=1e-4)
