"""softdec.hf and softdec.strategies on tiny random causal LMs built from configs (never downloaded).

Architectures: Llama, Qwen2, Mistral, Gemma (embedding scaled by sqrt(hidden)), GPT-2.
"""

from __future__ import annotations

import math

import pytest
import torch

import softdec
import softdec.hf as H
from hf_archs import init_normal
import softdec.strategies as S
from softdec.strategies import MODE_DISCRETE, MODE_FINISHED, MODE_SOFT, MODE_THINK_END

transformers = pytest.importorskip("transformers")

needs_sample = pytest.mark.skipif(not hasattr(softdec, "sample"), reason="softdec.sample is not in this build")
needs_soft = pytest.mark.skipif(not hasattr(softdec, "soft_mixture"), reason="softdec.soft_mixture is not in this build")
needs_verify = pytest.mark.skipif(not hasattr(softdec, "verify"), reason="softdec.verify is not in this build")
needs_sparse = pytest.mark.skipif(not (hasattr(softdec, "sparse_decode_attention")
                                       and hasattr(softdec, "token_sparse_prefill")),
                                  reason="softdec sparse attention ops are not in this build")

V = 96
ARCHS = ["llama", "qwen2", "mistral", "gemma", "gpt2"]


def make_model(arch: str, vocab: int = V, hidden: int = 32, layers: int = 2, seed: int = 0, std: float = 0.15):
    """A tiny random model whose logits are far from uniform (no near-ties)."""
    T = transformers
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "llama":
        cfg = T.LlamaConfig(**common)
        cls = T.LlamaForCausalLM
    elif arch == "qwen2":
        cfg = T.Qwen2Config(**common)
        cls = T.Qwen2ForCausalLM
    elif arch == "mistral":
        cfg = T.MistralConfig(**common)
        cls = T.MistralForCausalLM
    elif arch == "gemma":
        cfg = T.GemmaConfig(**common, head_dim=hidden // 4)
        cls = T.GemmaForCausalLM
    elif arch == "gpt2":
        cfg = T.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=512,
                           bos_token_id=1, eos_token_id=2, pad_token_id=0)
        cls = T.GPT2LMHeadModel
    else:
        raise AssertionError(arch)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    return init_normal(model, std)


_CACHE = {}


def model_for(arch, **kw):
    key = (arch, tuple(sorted(kw.items())))
    if key not in _CACHE:
        _CACHE[key] = make_model(arch, **kw)
    return _CACHE[key]


def prompts(batch: int, length: int = 6, pad: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    if pad and batch > 1:
        for b in range(1, batch):  # left padding of different lengths
            n = min(b, length - 1)
            ids[b, :n] = 0
            mask[b, :n] = 0
    return ids, mask


def hf_greedy(model, ids, mask, n, eos=None):
    return model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=n, min_new_tokens=0,
                          eos_token_id=eos, pad_token_id=0)


NO_EOS = []


# ============================================================================ discrete / soft thinking

@needs_sample
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("B", [1, 3])
def test_discrete_greedy_matches_transformers(arch, B):
    model = model_for(arch)
    ids, mask = prompts(B)
    out = H.generate(model, ids, attention_mask=mask, strategy=S.Discrete(temperature=0.0), max_new_tokens=12,
                     eos_token_id=NO_EOS)
    ref = hf_greedy(model, ids, mask, 12, eos=None)
    assert torch.equal(out.sequences, ref)
    assert out.stats.mode.shape == (B, 12)
    assert bool((out.stats.mode == MODE_DISCRETE).all())
    assert torch.isfinite(out.stats.entropy).all() and bool(((out.stats.max_prob > 0) & (out.stats.max_prob <= 1)).all())


@needs_soft
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("B", [1, 3])
def test_soft_thinking_top1_is_greedy(arch, B):
    """A one-token mixture is that token's embedding (scaled like the model scales it): exact greedy."""
    model = model_for(arch)
    ids, mask = prompts(B)
    st = S.SoftThinking(top_k=1, after=S.Discrete(temperature=0.0))
    out = H.generate(model, ids, attention_mask=mask, strategy=st, max_new_tokens=12, eos_token_id=NO_EOS)
    ref = hf_greedy(model, ids, mask, 12)
    assert torch.equal(out.sequences, ref)
    assert bool((out.stats.mode == MODE_SOFT).all())


@needs_soft
@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_soft_thinking_top1_is_greedy_with_eos(arch):
    """Rows stop at eos in soft mode too, the same step greedy decoding stops."""
    model = model_for(arch)
    ids, mask = prompts(3)
    ref = hf_greedy(model, ids, mask, 16, eos=None)
    eos = int(ref[0, ids.shape[1] + 3])  # row 0's 4th greedy token acts as eos
    ref_eos = hf_greedy(model, ids, mask, 16, eos=eos)
    out = H.generate(model, ids, attention_mask=mask, strategy=S.SoftThinking(top_k=1, after=S.Discrete(0.0)),
                     max_new_tokens=16, eos_token_id=eos, pad_token_id=0)
    n = out.sequences.shape[1]
    assert torch.equal(out.sequences, ref_eos[:, :n])
    assert bool((ref_eos[:, n:] == 0).all())
    j = int((ref[0, ids.shape[1]:] == eos).nonzero()[0, 0])  # first occurrence (<= 3)
    assert out.stats.mode[0, j] == MODE_DISCRETE and bool((out.stats.mode[0, j + 1:] == MODE_FINISHED).all())
    assert bool((out.stats.mode[0, :j] == MODE_SOFT).all())


def test_gemma_embedding_scale_applied_once():
    """transformers 5.x Gemma scales inside its embedding module, which inputs_embeds bypass (so the soft
    embeds carry sqrt(hidden)); 4.x scales in the decoder, after inputs_embeds (so they carry 1)."""
    import transformers
    model = model_for("gemma")
    emb, w, scale = H._input_embedding(model, "test")
    tf5 = int(transformers.__version__.split(".")[0]) >= 5
    assert scale == pytest.approx(math.sqrt(model.config.hidden_size) if tf5 else 1.0, rel=1e-5)
    for arch in ("llama", "gpt2"):
        assert H._input_embedding(model_for(arch), "test")[2] == pytest.approx(1.0)
    # a soft embedding built with that scale reproduces the model's own logits for a one-hot mixture
    ids = torch.tensor([[5, 17, 33]])
    logits = torch.randn(3, V)
    logits[torch.arange(3), ids[0]] = 50.0
    st = softdec.soft_mixture(logits, w, top_k=1, embed_scale=scale)
    a = model(inputs_embeds=st.embeds[None]).logits
    b = model(input_ids=ids).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # with the scale applied twice (or never, on 5.x) the model would see a different input
    st1 = softdec.soft_mixture(logits, w, top_k=1, embed_scale=math.sqrt(model.config.hidden_size) * scale)
    assert not torch.allclose(model(inputs_embeds=st1.embeds[None]).logits, b, atol=1e-3)


def _first_cold_stop(entropy_row, thr, n):
    run = 0
    for i, h in enumerate(entropy_row):
        run = run + 1 if h < thr else 0
        if run >= n:
            return i
    return None


@needs_soft
@needs_sample
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_cold_stop_per_row(arch):
    """Row 0 thinks at a tiny temperature (entropy ~ 0), row 1 at T=2: only row 0 cold-stops,
    exactly on its N-th consecutive low-entropy step; then both modes coexist in one step."""
    model = model_for(arch)
    ids, mask = prompts(3, pad=False)
    think_end = 7
    n = 4
    temps = torch.tensor([0.001, 2.0, 0.001])
    st = S.SoftThinking(top_k=4, temperature=temps, cold_stop_entropy=0.05, cold_stop_steps=n,
                        think_end_token_id=think_end, after=S.Discrete(temperature=0.0), seed=3)
    out = H.generate(model, ids, strategy=st, max_new_tokens=14, eos_token_id=NO_EOS)
    gen = out.sequences[:, ids.shape[1]:]
    modes, ent = out.stats.mode, out.stats.entropy
    for b in range(3):
        stop = _first_cold_stop(ent[b].tolist(), 0.05, n)
        top1_end = [i for i in range(gen.shape[1]) if int(gen[b, i]) == think_end]
        if b != 1:
            assert stop is not None
        if stop is None or (top1_end and top1_end[0] < stop):
            stop = top1_end[0] if top1_end else None
        if stop is None:
            assert bool((modes[b] == MODE_SOFT).all())
            continue
        assert bool((modes[b, :stop] == MODE_SOFT).all())
        assert modes[b, stop] == MODE_THINK_END and gen[b, stop] == think_end
        assert bool((modes[b, stop + 1:] == MODE_DISCRETE).all())
    # row 1 never reached the threshold
    assert bool((ent[1] > 0.05).all()) and bool((modes[1] == MODE_SOFT).all())
    # mixed step: rows 0/2 discrete while row 1 is soft
    assert bool(((modes[0] == MODE_DISCRETE) & (modes[1] == MODE_SOFT)).any())


@needs_soft
@needs_sample
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("m", [0, 1, 5])
def test_max_think_tokens(B, m):
    model = model_for("mistral")
    ids, mask = prompts(B)
    think_end = V - 1
    st = S.SoftThinking(top_k=3, max_think_tokens=m, think_end_token_id=think_end, after=S.Discrete(0.0))
    out = H.generate(model, ids, attention_mask=mask, strategy=st, max_new_tokens=9, eos_token_id=NO_EOS)
    gen = out.sequences[:, ids.shape[1]:]
    for b in range(B):
        natural = [i for i in range(m) if int(gen[b, i]) == think_end]
        stop = natural[0] if natural else m
        assert bool((out.stats.mode[b, :stop] == MODE_SOFT).all())
        assert out.stats.mode[b, stop] == MODE_THINK_END and int(gen[b, stop]) == think_end
        assert bool((out.stats.mode[b, stop + 1:] == MODE_DISCRETE).all())
    assert int(out.stats.soft_tokens.max()) <= m


@needs_soft
@needs_sample
def test_max_think_tokens_without_think_end_id_switches_to_after():
    model = model_for("llama")
    ids, _ = prompts(2, pad=False)
    st = S.SoftThinking(top_k=3, max_think_tokens=3, after=S.Discrete(0.0))
    out = H.generate(model, ids, strategy=st, max_new_tokens=6, eos_token_id=NO_EOS)
    assert bool((out.stats.mode[:, :3] == MODE_SOFT).all()) and bool((out.stats.mode[:, 3:] == MODE_DISCRETE).all())


@needs_soft
@needs_sample
@pytest.mark.parametrize("noise", ["gumbel", "dirichlet"])
def test_soft_noise_is_seeded_and_batch_invariant(noise):
    model = model_for("qwen2")
    ids, _ = prompts(3, pad=False)
    seeds = torch.tensor([11, 12, 13])
    mk = lambda s: S.SoftThinking(top_k=5, noise=noise, tau=0.5, max_think_tokens=4, think_end_token_id=V - 1,
                                  after=S.Discrete(temperature=1.0), seed=s)
    a = H.generate(model, ids, strategy=mk(seeds), max_new_tokens=8, eos_token_id=NO_EOS)
    b = H.generate(model, ids, strategy=mk(seeds), max_new_tokens=8, eos_token_id=NO_EOS)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(a.stats.entropy, b.stats.entropy, equal_nan=True)
    # row 1 alone with its own seed: the same tokens (a row's randomness is its own)
    one = H.generate(model, ids[1:2], strategy=mk(seeds[1:2]), max_new_tokens=8, eos_token_id=NO_EOS)
    assert torch.equal(one.sequences, a.sequences[1:2])
    c = H.generate(model, ids, strategy=mk(seeds + 100), max_new_tokens=8, eos_token_id=NO_EOS)
    assert not torch.allclose(a.stats.entropy[:, 1:], c.stats.entropy[:, 1:])


# ============================================================================ routers

@needs_soft
@needs_sample
@pytest.mark.parametrize("B", [1, 3])
def test_router_max_prob(B):
    model = model_for("llama")
    ids, mask = prompts(B)
    temps = torch.tensor([0.05, 5.0, 1.0][:B])
    r = S.Router(threshold=0.5, top_k=4, temperature=temps, discrete=S.Discrete(temperature=0.0), seed=1)
    out = H.generate(model, ids, attention_mask=mask, strategy=r, max_new_tokens=10, eos_token_id=NO_EOS)
    m, mp = out.stats.mode, out.stats.max_prob
    assert torch.equal(m == MODE_SOFT, mp >= 0.5)
    assert bool((m[0] == MODE_SOFT).all())
    if B == 3:
        assert bool((m[1] == MODE_DISCRETE).all())


def _lead_modes(ent, lo, hi, min_steps):
    soft, steps, last_h, modes = True, 0, math.inf, []
    for h in ent:
        steps += 1
        if soft and h < lo and h < last_h:
            soft, steps, last_h = False, 0, h
        elif not soft and h > hi and steps >= min_steps:
            soft, steps, last_h = True, 0, h
        modes.append(MODE_SOFT if soft else MODE_DISCRETE)
    return modes


@needs_soft
@needs_sample
def test_router_lead_hysteresis():
    model = model_for("qwen2")
    ids, mask = prompts(3)
    probe = H.generate(model, ids, attention_mask=mask, strategy=S.SoftThinking(top_k=4, temperature=0.7),
                       max_new_tokens=16, eos_token_id=NO_EOS)
    e = probe.stats.entropy.flatten()
    lo, hi = float(e.quantile(0.4)), float(e.quantile(0.6))
    r = S.Router(variant="lead", low_entropy=lo, high_entropy=hi, min_steps=2, top_k=4, temperature=0.7,
                 discrete=S.Discrete(temperature=0.0))
    out = H.generate(model, ids, attention_mask=mask, strategy=r, max_new_tokens=16, eos_token_id=NO_EOS)
    for b in range(3):
        want = _lead_modes(out.stats.entropy[b].tolist(), lo, hi, 2)
        assert out.stats.mode[b].tolist() == want
    assert bool((out.stats.mode == MODE_DISCRETE).any()) and bool((out.stats.mode == MODE_SOFT).any())


# ============================================================================ speculative

def perturbed_copy(model, arch, noise: float, seed: int = 5):
    d = make_model(arch, seed=seed)
    d.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in d.parameters():
            if p.dim() >= 2:
                p.add_(noise * torch.randn(p.shape, generator=g))
    return d


@needs_verify
@needs_sample
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("B", [1, 3])
def test_speculative_self_draft_accepts_everything(arch, B):
    model = model_for(arch)
    ids, mask = prompts(B)
    K = 3
    out = H.generate(model, ids, attention_mask=mask, strategy=S.Speculative(model, K, "exact", temperature=1.0, seed=4),
                     max_new_tokens=10, eos_token_id=NO_EOS)
    acc = out.stats.num_accepted
    assert bool((acc[acc >= 0] == K).all())
    assert out.sequences.shape == (B, ids.shape[1] + 10)


@needs_verify
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("B", [1, 3])
def test_speculative_greedy_equals_greedy(arch, B):
    """A draft that agrees sometimes: partial acceptances roll both caches back, per row."""
    model = model_for(arch)
    ids, mask = prompts(B)
    ref = hf_greedy(model, ids, mask, 12)
    out = H.generate(model, ids, attention_mask=mask, strategy=S.Speculative(perturbed_copy(model, arch, 0.03), 3,
                     "greedy"), max_new_tokens=12, eos_token_id=NO_EOS)
    assert torch.equal(out.sequences, ref)
    assert int(out.stats.num_accepted.sum()) > 0


@needs_verify
@pytest.mark.parametrize("K", [1, 5])
def test_speculative_greedy_any_draft(K):
    model = model_for("qwen2")
    ids, mask = prompts(3)
    ref = hf_greedy(model, ids, mask, 10)
    for draft in (make_model("llama", hidden=16, layers=1, seed=9), perturbed_copy(model, "qwen2", 0.05)):
        out = H.generate(model, ids, attention_mask=mask, strategy=S.Speculative(draft, K, "greedy"),
                         max_new_tokens=10, eos_token_id=NO_EOS)
        assert torch.equal(out.sequences, ref)
    acc = out.stats.num_accepted
    assert bool(((acc > 0) & (acc < K)).any()) or K == 1


@needs_verify
def test_speculative_greedy_stops_at_eos():
    arch = "llama"
    model = model_for(arch)
    ids, mask = prompts(3)
    ref = hf_greedy(model, ids, mask, 16)
    eos = int(ref[1, ids.shape[1] + 5])
    ref_eos = hf_greedy(model, ids, mask, 16, eos=eos)
    out = H.generate(model, ids, attention_mask=mask, strategy=S.Speculative(perturbed_copy(model, arch, 0.05), 3,
                     "greedy"), max_new_tokens=16, eos_token_id=eos, pad_token_id=0)
    n = out.sequences.shape[1]
    assert torch.equal(out.sequences, ref_eos[:, :n])


@needs_verify
@needs_sample
@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 0.9)])
def test_speculative_exact_first_token_distribution(temperature, top_k, top_p):
    """With a different draft model, the first generated token is distributed exactly as the target's
    filtered softmax (chi-square over many rows, each its own Philox seed)."""
    from scipy import stats
    from softdec.reference import filter_probs
    vocab = 8
    target = make_model("llama", vocab=vocab, hidden=16, seed=21, std=0.5)
    draft = make_model("llama", vocab=vocab, hidden=16, seed=22, std=0.5)
    prompt = torch.tensor([[3, 5, 1, 6]])
    with torch.no_grad():
        lt = target(prompt).logits[0, -1:].double()
        ld = draft(prompt).logits[0, -1:].double()
    p = filter_probs(lt, temperature, top_k, top_p)[0][0]
    q = filter_probs(ld, temperature, top_k, top_p)[0][0]
    assert float((p - q).abs().sum()) > 0.2  # the draft really differs
    n = 20000
    ids = prompt.expand(n, -1).contiguous()
    seeds = torch.arange(n, dtype=torch.int64) * 7919 + 1
    spec = S.Speculative(draft, 2, "exact", temperature=temperature, top_k=top_k, top_p=top_p, seed=seeds)
    out = H.generate(target, ids, strategy=spec, max_new_tokens=1, eos_token_id=NO_EOS)
    first = out.sequences[:, prompt.shape[1]]
    counts = torch.bincount(first, minlength=vocab).double()
    support = p > 0
    assert bool((counts[~support] == 0).all())  # filtered tokens are never emitted
    chi = stats.chisquare(counts[support].numpy(), (p[support] * n).numpy())
    assert chi.pvalue > 1e-3, (counts, p * n)
    # the emitted tokens are far from the draft's distribution (the test would see a draft-biased verifier)
    assert float((counts / n - q).abs().sum()) > 0.1


def test_draft_filtered_probs_match_reference():
    from softdec.reference import filter_probs
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 50, generator=g) * 3
    for t, k, tp, mp in [(1.0, 0, 1.0, 0.0), (0.7, 5, 1.0, 0.0), (1.3, 0, 0.8, 0.0), (0.9, 10, 0.9, 0.05),
                         (0.0, 0, 1.0, 0.0)]:
        ours = H._filtered_probs(logits, t, k, tp, mp)
        ref = filter_probs(logits.double(), t, k, tp, mp)[0]
        torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)


@needs_verify
@needs_sample
@pytest.mark.parametrize("method", ["typical", "relaxed"])
def test_speculative_typical_and_relaxed_run(method):
    model = model_for("llama")
    ids, mask = prompts(3)
    nb = torch.randint(0, V, (V, 3), generator=torch.Generator().manual_seed(0))
    spec = S.Speculative(perturbed_copy(model, "llama", 0.05), 3, method, temperature=0.8, seed=1,
                         neighbours=nb if method == "relaxed" else None)
    out = H.generate(model, ids, attention_mask=mask, strategy=spec, max_new_tokens=10, eos_token_id=NO_EOS)
    assert out.sequences.shape == (3, ids.shape[1] + 10)
    gen = out.sequences[:, ids.shape[1]:]
    assert bool(((gen >= 0) & (gen < V)).all())
    acc = out.stats.num_accepted
    assert bool(((acc >= -1) & (acc <= 3)).all()) and int(acc.max()) > 0


@needs_verify
@needs_soft
def test_speculative_soft_runs_and_self_draft_accepts():
    model = model_for("llama")
    ids, mask = prompts(3)
    out = H.generate(model, ids, attention_mask=mask,
                     strategy=S.Speculative(model, 3, "soft", top_k=4, temperature=1.0, delta=0.05, seed=2),
                     max_new_tokens=9, eos_token_id=NO_EOS)
    acc = out.stats.num_accepted
    assert bool((acc[acc >= 0] == 3).all())
    assert bool((out.stats.mode[out.stats.mode != MODE_FINISHED] == MODE_SOFT).all())
    other = perturbed_copy(model, "llama", 0.3)
    out2 = H.generate(model, ids, attention_mask=mask,
                      strategy=S.Speculative(other, 3, "soft", top_k=4, delta=0.05, seed=2),
                      max_new_tokens=9, eos_token_id=NO_EOS)
    assert out2.sequences.shape == (3, ids.shape[1] + 9)
    assert bool((out2.stats.num_accepted < 3).any())


@needs_verify
@needs_soft
def test_speculative_soft_filter_top_k_self_draft_accepts():
    """filter_top_k reaches both soft_mixture (draft) and verify (target): a self-draft accepts every step."""
    model = model_for("llama")
    ids, mask = prompts(3)
    spec = S.Speculative(model, 3, "soft", top_k=4, temperature=0.6, top_p=0.95, min_p=0.001, delta=0.0,
                         seed=2, filter_top_k=30)
    out = H.generate(model, ids, attention_mask=mask, strategy=spec, max_new_tokens=9, eos_token_id=NO_EOS)
    acc = out.stats.num_accepted
    assert bool((acc[acc >= 0] == 3).all())
    with pytest.raises(ValueError, match="filter_top_k"):
        S.Speculative(model, 3, "exact", filter_top_k=30)
    with pytest.raises(ValueError, match="filter_top_k"):
        S.Speculative(model, 3, "soft", top_k=4, filter_top_k=3)


# ============================================================================ cache cropping

def test_crop_cache_portable():
    model = model_for("llama")
    cache = H._new_cache(model)
    ids = torch.randint(3, V, (2, 9))
    model(input_ids=ids, past_key_values=cache, use_cache=True)
    assert cache.get_seq_length() == 9
    H.crop_cache(cache, 0)
    assert cache.get_seq_length() == 9
    H.crop_cache(cache, 4)
    assert cache.get_seq_length() == 5
    # the cropped cache continues exactly like a fresh one on the kept prefix
    a = model(input_ids=ids[:, 5:6], past_key_values=cache, use_cache=True).logits
    b = model(input_ids=ids[:, :6]).logits[:, -1:]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# ============================================================================ custom_generate, streamer

@needs_soft
@needs_sample
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_custom_generate_entry_points(arch):
    model = model_for(arch)
    ids, mask = prompts(3)
    ref = hf_greedy(model, ids, mask, 8)
    a = model.generate(ids, attention_mask=mask, custom_generate=H.soft_thinking_generate,
                       strategy=S.SoftThinking(top_k=1, after=S.Discrete(0.0)), max_new_tokens=8,
                       eos_token_id=None, pad_token_id=0)
    assert torch.equal(a, ref)
    b = model.generate(ids, attention_mask=mask, custom_generate=H.discrete_generate, max_new_tokens=8,
                       eos_token_id=None, pad_token_id=0)
    assert torch.equal(b, ref)
    c = model.generate(ids, attention_mask=mask, custom_generate=H.router_generate,
                       strategy=S.Router(threshold=0.0, top_k=1, discrete=S.Discrete(0.0)), max_new_tokens=8,
                       eos_token_id=None, pad_token_id=0, return_dict_in_generate=True)
    assert isinstance(c, H.GenerateOutput) and torch.equal(c.sequences, ref)
    if hasattr(softdec, "verify"):
        d = model.generate(ids, attention_mask=mask, custom_generate=H.speculative_generate,
                           strategy=S.Speculative(model, 2, "greedy"), max_new_tokens=8,
                           eos_token_id=None, pad_token_id=0)
        assert torch.equal(d, ref)


class _Collect:
    def __init__(self):
        self.chunks, self.ended = [], False

    def put(self, x):
        self.chunks.append(x.clone())

    def end(self):
        self.ended = True


@needs_soft
@needs_sample
def test_streamer_receives_prompt_then_tokens():
    model = model_for("qwen2")
    ids, _ = prompts(1)
    s = _Collect()
    out = H.generate(model, ids, strategy=S.SoftThinking(top_k=3, max_think_tokens=2, after=S.Discrete(0.0)),
                     max_new_tokens=6, eos_token_id=NO_EOS, streamer=s)
    assert s.ended and torch.equal(s.chunks[0], ids)
    assert torch.equal(torch.cat([c.reshape(1, -1) for c in s.chunks], 1), out.sequences)


# ============================================================================ token-sparse attention

@needs_sparse
@needs_sample
@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma"])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("select", ["page", "token"])
def test_sparse_attention_full_budget_is_dense(arch, B, select, monkeypatch):
    model = make_model(arch)
    ids, mask = prompts(B, length=40)
    dense = H.generate(model, ids, attention_mask=mask, strategy=S.Discrete(0.0), max_new_tokens=6,
                       eos_token_id=NO_EOS)
    calls = {"decode": 0, "prefill": 0}
    real_dec, real_pre = softdec.sparse_decode_attention, softdec.token_sparse_prefill

    def dec(*a, **k):
        calls["decode"] += 1
        return real_dec(*a, **k)

    def pre(*a, **k):
        calls["prefill"] += 1
        return real_pre(*a, **k)

    monkeypatch.setattr(softdec, "sparse_decode_attention", dec)
    monkeypatch.setattr(softdec, "token_sparse_prefill", pre)
    H.enable_token_sparse_attention(model, budget=4096, select=select, page_size=8, sink=2, window=4,
                                    coverage=0.0, min_tokens=8)
    try:
        sparse = H.generate(model, ids, attention_mask=mask, strategy=S.Discrete(0.0), max_new_tokens=6,
                            eos_token_id=NO_EOS)
        assert torch.equal(sparse.sequences, dense.sequences)
        # logits of one decode step, sparse vs dense, after the same prefix
        full = sparse.sequences
        fmask = torch.cat([mask, torch.ones(B, 6, dtype=mask.dtype)], 1)
        cache = H._new_cache(model)
        model(input_ids=full[:, :-1], attention_mask=fmask[:, :-1], past_key_values=cache, use_cache=True)
        pos = fmask.sum(1, keepdim=True) - 1
        ls = model(input_ids=full[:, -1:], attention_mask=fmask, past_key_values=cache, position_ids=pos,
                   use_cache=True).logits
    finally:
        H.disable_token_sparse_attention(model)
    assert model.config._attn_implementation == "sdpa"
    cache = H._new_cache(model)
    model(input_ids=full[:, :-1], attention_mask=fmask[:, :-1], past_key_values=cache, use_cache=True)
    ld = model(input_ids=full[:, -1:], attention_mask=fmask, past_key_values=cache, position_ids=pos,
               use_cache=True).logits
    torch.testing.assert_close(ls, ld, rtol=1e-4, atol=1e-4)
    assert calls["decode"] > 0
    if B == 1:  # unpadded long prompt: the token-sparse prefill ran
        assert calls["prefill"] > 0


@needs_sparse
@needs_sample
@pytest.mark.parametrize("select", ["page", "token"])
def test_sparse_attention_small_budget_runs_finite(select):
    model = make_model("llama")
    ids, mask = prompts(3, length=96)
    H.enable_token_sparse_attention(model, budget=8, select=select, page_size=4, sink=2, window=4, layers=[-1],
                                    coverage=0.2, min_tokens=16)
    try:
        out = H.generate(model, ids, attention_mask=mask, strategy=S.Discrete(0.0), max_new_tokens=8,
                         eos_token_id=NO_EOS)
        logits = model(input_ids=ids[:1]).logits
    finally:
        H.disable_token_sparse_attention(model)
    assert out.sequences.shape == (3, 104)
    assert torch.isfinite(out.stats.entropy).all() and torch.isfinite(logits).all()


@needs_sparse
@needs_sample
def test_sparse_attention_cached_page_summaries_match_rescans():
    """Page summaries kept across decode steps select exactly what a full rescan selects."""
    model = make_model("qwen2")
    ids, _ = prompts(1, length=70, pad=False)
    runs = []
    for cache_pages in (True, False):
        H.enable_token_sparse_attention(model, budget=16, select="page", page_size=8, sink=2, window=8,
                                        prefill=False, cache_page_summaries=cache_pages)
        try:
            runs.append(H.generate(model, ids, strategy=S.Discrete(0.0), max_new_tokens=20, eos_token_id=NO_EOS))
        finally:
            H.disable_token_sparse_attention(model)
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    torch.testing.assert_close(runs[0].stats.entropy, runs[1].stats.entropy, rtol=1e-5, atol=1e-5)


def test_sparse_attention_bad_arguments():
    model = model_for("llama")
    with pytest.raises(ValueError, match="budget must be a positive int, got 0"):
        H.enable_token_sparse_attention(model, budget=0)
    with pytest.raises(ValueError, match="select must be 'page' or 'token', got 'dense'"):
        H.enable_token_sparse_attention(model, budget=8, select="dense")
    with pytest.raises(ValueError, match=r"layers must hold layer indices in \[-2, 2\), got 5"):
        H.enable_token_sparse_attention(model, budget=8, layers=[5])
    assert model.config._attn_implementation == "sdpa"


# ============================================================================ bad arguments

class _NoEmbeddings(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config
        self.generation_config = model.generation_config

    def get_input_embeddings(self):
        raise NotImplementedError

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, **kw):
        return self.inner(**kw)


def test_bad_arguments():
    model = model_for("llama")
    ids, mask = prompts(2)
    with pytest.raises(ValueError, match="SoftThinking needs a model with an input-embedding table"):
        H.generate(_NoEmbeddings(model), ids, strategy=S.SoftThinking(), max_new_tokens=2)
    with pytest.raises(ValueError, match="Router needs a model with an input-embedding table"):
        H.generate(_NoEmbeddings(model), ids, strategy=S.Router(), max_new_tokens=2)
    other = make_model("llama", vocab=V + 4)
    with pytest.raises(ValueError, match=f"the target has {V} tokens, the draft has {V + 4}"):
        H.generate(model, ids, strategy=S.Speculative(other, 2), max_new_tokens=2)
    for k in (0, -1):
        with pytest.raises(ValueError, match=f"num_draft must be a positive int, got {k}"):
            S.Speculative(model, k)
    with pytest.raises(ValueError, match="method must be one of"):
        S.Speculative(model, 2, "nope")
    with pytest.raises(ValueError, match="draft_model must be a causal LM module, got NoneType"):
        S.Speculative(None, 2)
    with pytest.raises(ValueError, match="strategy must be a softdec.strategies strategy"):
        H.generate(model, ids, strategy="greedy", max_new_tokens=2)
    with pytest.raises(ValueError, match="top_k must be >= 1, got 0"):
        S.SoftThinking(top_k=0)
    with pytest.raises(ValueError, match="noise must be None, 'gumbel' or 'dirichlet', got 'uniform'"):
        S.SoftThinking(noise="uniform")
    with pytest.raises(ValueError, match="cold_stop_steps must be >= 1, got 0"):
        S.SoftThinking(cold_stop_steps=0)
    with pytest.raises(ValueError, match="temperature must be >= 0.0, got -1"):
        S.Discrete(temperature=-1)
    with pytest.raises(ValueError, match="threshold must be <= 1.0, got 1.5"):
        S.Router(threshold=1.5)
    with pytest.raises(ValueError, match="variant must be 'max_prob' or 'lead', got 'x'"):
        S.Router(variant="x")
    with pytest.raises(ValueError, match="after must be a softdec.strategies.Discrete"):
        S.SoftThinking(after=S.SoftThinking())
    right = torch.ones_like(ids)
    right[0, -1] = 0
    with pytest.raises(ValueError, match="attention_mask must use left padding"):
        H.generate(model, ids, attention_mask=right, strategy=S.Discrete(0.0), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"attention_mask must have the shape of input_ids \(2, 6\), got \(2, 5\)"):
        H.generate(model, ids, attention_mask=mask[:, :5], strategy=S.Discrete(0.0), max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens must be a non-negative int, got -3"):
        H.generate(model, ids, strategy=S.Discrete(0.0), max_new_tokens=-3)
    with pytest.raises(ValueError, match=r"input_ids must be a \(batch, length\) int64 tensor, got \(6,\)"):
        H.generate(model, ids[0], strategy=S.Discrete(0.0), max_new_tokens=2)
    with pytest.raises(ValueError, match=rf"eos_token_id must hold ids in \[0, {V}\), got {V}"):
        H.generate(model, ids, strategy=S.Discrete(0.0), max_new_tokens=2, eos_token_id=V)


@needs_sample
def test_zero_new_tokens_returns_prompt():
    model = model_for("llama")
    ids, mask = prompts(2)
    out = H.generate(model, ids, attention_mask=mask, strategy=S.Discrete(0.0), max_new_tokens=0)
    assert torch.equal(out.sequences, ids) and out.stats.mode.shape == (2, 0)


def test_min_transformers_documented():
    assert H.MIN_TRANSFORMERS == "4.57"
    assert "4.57" in H.__doc__


# ============================================================================ README quickstart

def _quickstart_blocks():
    from test_build import readme_python_blocks
    return readme_python_blocks("softdec-hf-quickstart")


@needs_soft
@needs_sample
@needs_verify
@needs_sparse
def test_quickstart_snippets_run(capsys):
    blocks = _quickstart_blocks()
    assert len(blocks) >= 7
    scope = {}
    for code in blocks:
        exec(compile(code, "<quickstart>", "exec"), scope)
    assert isinstance(scope["out"], H.GenerateOutput)
    assert scope["model"].config._attn_implementation == "sdpa"
