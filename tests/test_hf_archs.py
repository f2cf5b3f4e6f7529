"""softdec.hf over many transformers architectures x strategies (tiny random configs built in
tests/hf_archs.py, never downloaded).

Every cell either equals transformers' own greedy decoding token for token (greedy strategies), or
runs with the documented invariants (sampling / soft strategies), or is refused with a clear
message. Sliding windows are 4 tokens, so every sequence crosses them; the recurrent and hybrid
models (Mamba, LFM2, Qwen3-Next) exercise state snapshots on speculative rollback.

The fast subset (CI, about a minute on a quiet 2-core machine) runs Discrete(T=0) and greedy
speculative decoding on every architecture at B = 3 with left padding, the soft strategies on a
few, the sparse backend on all, and exact speculative sampling's first-token distribution on
Mistral (sliding window) and LFM2 (recurrent). The rest is marked ``slow`` and runs only with
``SOFTDEC_SLOW=1`` (``SOFTDEC_SLOW=1 pytest -m slow tests/test_hf_archs.py``): B = 1 for every cell,
every soft cell, the other first-token distributions, and the compiled decode step.
"""

from __future__ import annotations

import os

import pytest
import torch

import softdec
import softdec.hf as H
import softdec.strategies as S
from softdec.strategies import MODE_DISCRETE, MODE_FINISHED, MODE_SOFT

from hf_archs import ALL, V, make_arch_model

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(not all(hasattr(softdec, n) for n in ("sample", "soft_mixture", "verify")),
                                reason="softdec sample / soft_mixture / verify are not in this build")

NO_EOS = []
SLOW = [pytest.mark.slow, pytest.mark.skipif(os.environ.get("SOFTDEC_SLOW") != "1",
                                             reason="slow: run with SOFTDEC_SLOW=1")]


def _cells(archs, fast):
    return [pytest.param(a, marks=() if a in fast else SLOW) for a in archs]

N_NEW = 12
# transformers 4.x: the hybrids (LFM2, Qwen3-Next) build their own cache classes, whose recurrent / conv
# states softdec cannot roll back, so Speculative refuses them there with the version it needs
TF5 = int(transformers.__version__.split(".")[0]) >= 5
HYBRIDS = {"lfm2", "qwen3_next"}


def spec_refused(arch) -> bool:
    return not TF5 and arch in HYBRIDS


def assert_spec_refused(arch, call):
    with pytest.raises(ValueError, match=r"Speculative on .* needs transformers >= 5 to roll back"):
        call()
_MODELS = {}


def model_for(arch, **kw):
    key = (arch, tuple(sorted(kw.items())))
    if key not in _MODELS:
        _MODELS[key] = make_arch_model(arch, **kw)
    return _MODELS[key]


def perturbed(arch, noise=0.03, seed=5):
    """A draft that agrees with the target often but not always (partial acceptances every few rounds)."""
    key = (arch, "draft", noise, seed)
    if key not in _MODELS:
        d = make_arch_model(arch)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in d.parameters():
                if p.dim() >= 2:
                    p.add_(noise * torch.randn(p.shape, generator=g))
        _MODELS[key] = d
    return _MODELS[key]


def prompts(batch, length=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for b in range(1, batch):  # left padding of different lengths
        mask[b, :b] = 0
        ids[b, :b] = 0
    return ids, mask


_REF = {}


def hf_greedy(arch, B):
    if (arch, B) not in _REF:
        ids, mask = prompts(B)
        _REF[arch, B] = model_for(arch).generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=N_NEW,
                                                 min_new_tokens=0, eos_token_id=None, pad_token_id=0)
    return _REF[arch, B]


def _strategy(name, arch):
    if name == "discrete":
        return S.Discrete(temperature=0.0)
    if name == "soft_top1":
        return S.SoftThinking(top_k=1)
    if name == "router_top1":  # soft and discrete rows in the same step
        return S.Router(threshold=0.5, top_k=1, discrete=S.Discrete(temperature=0.0))
    if name == "spec_greedy":
        return S.Speculative(perturbed(arch), 3, "greedy")
    raise KeyError(name)


GREEDY = ["discrete", "soft_top1", "router_top1", "spec_greedy"]
NAMED = {"mistral", "starcoder2", "gemma2", "gemma3", "gpt_oss", "lfm2", "qwen3_next", "mamba"}
_SOFT_FAST = {"gemma", "gemma2", "lfm2", "mamba"}
_GRID = [pytest.param(a, st, marks=() if st in ("discrete", "spec_greedy") or a in _SOFT_FAST else SLOW)
         for a in ALL for st in GREEDY]


@pytest.mark.parametrize("arch,strategy", _GRID)
def test_greedy_cells_equal_transformers(arch, strategy):
    """Discrete(T=0), SoftThinking(top_k=1), Router with one-hot soft tokens, and greedy speculative
    decoding all equal transformers' greedy, batched with left padding."""
    B = 3
    ids, mask = prompts(B)
    run = lambda strat: H.generate(model_for(arch), ids, attention_mask=mask, strategy=strat,  # noqa: E731
                                   max_new_tokens=N_NEW, eos_token_id=NO_EOS)
    if strategy == "spec_greedy" and spec_refused(arch):
        return assert_spec_refused(arch, lambda: run(_strategy(strategy, arch)))
    out = run(_strategy(strategy, arch))
    assert torch.equal(out.sequences, hf_greedy(arch, B))
    if strategy == "spec_greedy":
        # drafts accepted and rejected (the caches rolled back); how close the perturbed draft is
        # depends on the architecture's init (transformers versions differ), so other noise levels
        # are tried until a run has both; every run must equal greedy
        mixed = lambda a: int(a.max()) > 0 and bool(((a >= 0) & (a < 3)).any())  # noqa: E731
        for noise in (0.06, 0.1, 0.15, 0.2, 0.3, 0.01):
            if mixed(out.stats.num_accepted):
                break
            out = run(S.Speculative(perturbed(arch, noise=noise), 3, "greedy"))
            assert torch.equal(out.sequences, hf_greedy(arch, B))
        acc = out.stats.num_accepted
        assert int(acc.max()) > 0  # drafts were accepted ...
        assert bool(((acc >= 0) & (acc < 3)).any())  # ... and rejected: the caches were rolled back
    elif strategy == "discrete":
        assert bool((out.stats.mode == MODE_DISCRETE).all())


@pytest.mark.parametrize("strategy", GREEDY)
@pytest.mark.parametrize("arch", _cells(ALL, ()))
def test_greedy_cells_equal_transformers_one_row(arch, strategy):
    ids, mask = prompts(1)
    out = H.generate(model_for(arch), ids, attention_mask=mask, strategy=_strategy(strategy, arch),
                     max_new_tokens=N_NEW, eos_token_id=NO_EOS)
    assert torch.equal(out.sequences, hf_greedy(arch, 1))


@pytest.mark.parametrize("arch", _cells(ALL, {"llama", "gemma3", "lfm2", "mamba"}))
def test_soft_thinking_and_self_speculation(arch):
    """Real soft tokens (top-4 mixtures) run on every architecture; a model drafting for itself
    (exact sampling and soft drafts) has every draft accepted."""
    ids, mask = prompts(3)
    model = model_for(arch)
    out = H.generate(model, ids, attention_mask=mask, strategy=S.SoftThinking(top_k=4, seed=3),
                     max_new_tokens=6, eos_token_id=NO_EOS)
    gen = out.sequences[:, ids.shape[1]:]
    assert gen.shape == (3, 6) and bool(((gen >= 0) & (gen < V)).all())
    assert bool((out.stats.mode == MODE_SOFT).all()) and torch.isfinite(out.stats.entropy).all()
    if spec_refused(arch):
        return assert_spec_refused(arch, lambda: H.generate(model, ids, attention_mask=mask, max_new_tokens=7,
                                                            strategy=S.Speculative(model, 3, "exact"),
                                                            eos_token_id=NO_EOS))
    for spec in (S.Speculative(model, 3, "exact", temperature=1.0, seed=4),
                 S.Speculative(model, 3, "soft", top_k=4, temperature=1.0, delta=0.05, seed=2)):
        out = H.generate(model, ids, attention_mask=mask, strategy=spec, max_new_tokens=7, eos_token_id=NO_EOS)
        acc = out.stats.num_accepted
        assert out.sequences.shape == (3, ids.shape[1] + 7)
        assert bool((acc[acc >= 0] == 3).all()), acc
        assert bool((out.stats.mode != MODE_FINISHED).all())


def _first_token_distribution(arch, n):
    from scipy import stats
    from softdec.reference import filter_probs
    vocab = 8
    std = 0.08 if arch.startswith("gemma") else 0.5  # Gemma's scaled embeddings make std=0.5 one-hot
    target = make_arch_model(arch, vocab=vocab, seed=21, std=std)
    draft = make_arch_model(arch, vocab=vocab, seed=22, std=std)
    if spec_refused(arch):
        return assert_spec_refused(arch, lambda: H.generate(target, torch.tensor([[3, 5, 1]]), max_new_tokens=1,
                                                            strategy=S.Speculative(draft, 2, "exact")))
    prompt = torch.tensor([[3, 5, 1, 6, 4, 7]])
    with torch.no_grad():
        p = filter_probs(target(prompt).logits[0, -1:].double(), 1.0, 0, 1.0)[0][0]
        q = filter_probs(draft(prompt).logits[0, -1:].double(), 1.0, 0, 1.0)[0][0]
    assert float((p - q).abs().sum()) > 0.2  # the draft really differs
    seeds = torch.arange(n, dtype=torch.int64) * 7919 + 1
    spec = S.Speculative(draft, 3, "exact", temperature=1.0, seed=seeds)
    out = H.generate(target, prompt.expand(n, -1).contiguous(), strategy=spec, max_new_tokens=1, eos_token_id=NO_EOS)
    counts = torch.bincount(out.sequences[:, prompt.shape[1]], minlength=vocab).double()
    chi = stats.chisquare(counts.numpy(), (p * n).numpy())
    assert chi.pvalue > 1e-3, (counts, p * n)
    assert float((counts / n - q).abs().sum()) > 0.1  # far from the draft's own distribution


@pytest.mark.parametrize("arch", ["mistral", "lfm2"])
def test_exact_speculative_first_token_distribution(arch):
    _first_token_distribution(arch, 6000)


@pytest.mark.parametrize("arch", _cells(sorted(NAMED - {"mistral", "lfm2"}) + ["llama", "bloom"], ()))
def test_exact_speculative_first_token_distribution_slow(arch):
    _first_token_distribution(arch, 20000)


@pytest.mark.parametrize("arch", ["gemma3", "lfm2", "mamba"])
def test_rowwise_speculative_streams_and_pads(arch):
    """Models with sliding windows or recurrent states verify one row at a time: rows stop at eos
    independently, are padded after, and the streamer still gets (B,) columns."""
    ids, mask = prompts(3)
    if spec_refused(arch):
        return assert_spec_refused(arch, lambda: H.generate(model_for(arch), ids, attention_mask=mask,
                                                            strategy=S.Speculative(perturbed(arch), 3, "greedy"),
                                                            max_new_tokens=N_NEW))
    ref = hf_greedy(arch, 3)
    L = ids.shape[1]
    eos = int(ref[1, L + 4])
    got = []

    class Collect:
        def put(self, x):
            got.append(x.clone())

        def end(self):
            pass

    out = H.generate(model_for(arch), ids, attention_mask=mask, strategy=S.Speculative(perturbed(arch), 3, "greedy"),
                     max_new_tokens=N_NEW, eos_token_id=eos, pad_token_id=0, streamer=Collect())
    for b in range(3):
        row = ref[b, L:].tolist()
        stop = row.index(eos) + 1 if eos in row else N_NEW
        n = out.sequences.shape[1] - L
        assert out.sequences[b, L:L + stop].tolist() == row[:stop][:n]
        assert bool((out.sequences[b, L + stop:] == 0).all())
        assert int((out.stats.mode[b] != MODE_FINISHED).sum()) == min(stop, n)
    assert torch.equal(got[0], ids) and all(g.shape == (3,) for g in got[1:])
    assert torch.equal(torch.stack(got[1:], 1), out.sequences[:, L:])


def test_rowwise_speculative_keeps_per_row_seeds():
    """Exact sampling with per-row seeds on a sliding-window model: each row of the batch equals
    that row decoded alone with its own seed (rows are independent and seeded per row)."""
    arch = "mistral"
    ids, mask = prompts(3)
    seeds = torch.tensor([11, 22, 33])
    out = H.generate(model_for(arch), ids, attention_mask=mask, max_new_tokens=8, eos_token_id=NO_EOS,
                     strategy=S.Speculative(perturbed(arch, noise=0.1), 3, "exact", temperature=1.0, seed=seeds))
    for b in range(3):
        one = H.generate(model_for(arch), ids[b:b + 1], attention_mask=mask[b:b + 1], max_new_tokens=8,
                         eos_token_id=NO_EOS, strategy=S.Speculative(perturbed(arch, noise=0.1), 3, "exact",
                                                                     temperature=1.0, seed=seeds[b:b + 1]))
        assert torch.equal(out.sequences[b], one.sequences[0])


def test_rowwise_speculative_int_seed_keeps_the_batched_row_keys():
    """An int seed on the row-at-a-time path: row b uses its folded key row_seed(seed, b), as the
    batched loop does, so a repeated prompt gives independent rows."""
    from softdec.reference import row_seed
    arch = "mistral"
    ids, mask = prompts(1)
    ids, mask = ids.expand(3, -1).contiguous(), mask.expand(3, -1).contiguous()
    out = H.generate(model_for(arch), ids, attention_mask=mask, max_new_tokens=8, eos_token_id=NO_EOS,
                     strategy=S.Speculative(perturbed(arch, noise=0.1), 3, "exact", temperature=1.0, seed=7))
    for b in range(3):
        one = H.generate(model_for(arch), ids[b:b + 1], attention_mask=mask[b:b + 1], max_new_tokens=8,
                         eos_token_id=NO_EOS, strategy=S.Speculative(perturbed(arch, noise=0.1), 3, "exact",
                                                                     temperature=1.0,
                                                                     seed=torch.tensor([row_seed(7, b)])))
        assert torch.equal(out.sequences[b], one.sequences[0])
    assert not (torch.equal(out.sequences[0], out.sequences[1]) and torch.equal(out.sequences[1], out.sequences[2]))


class _NoCacheLM(torch.nn.Module):
    """A causal LM whose forward takes no cache at all."""

    def __init__(self):
        super().__init__()
        self.config = transformers.LlamaConfig(vocab_size=V, hidden_size=8, num_hidden_layers=1,
                                               num_attention_heads=1, num_key_value_heads=1, intermediate_size=8)
        self.emb = torch.nn.Embedding(V, 8)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids=None, attention_mask=None, position_ids=None):
        raise AssertionError("never called")


def test_model_without_cache_is_refused():
    with pytest.raises(ValueError, match=r"takes a cache .*_NoCacheLM \(llama\) takes none of them, so it is not supported"):
        H.generate(_NoCacheLM(), torch.tensor([[3, 4]]), strategy=S.Discrete(temperature=0.0), max_new_tokens=2)


# ============================================================================ token-sparse attention backend

_needs_sparse = pytest.mark.skipif(not (hasattr(softdec, "sparse_decode_attention")
                                        and hasattr(softdec, "token_sparse_prefill")),
                                   reason="softdec sparse attention ops are not in this build")
_DENSE_WHY = {"gemma2": "logit softcapping", "gpt_oss": "attention sinks",
              "bloom": "not routed through transformers' AttentionInterface",
              "falcon": "not routed through transformers' AttentionInterface"}
_ATTN_LAYERS = {"lfm2": [1], "qwen3_next": [1]}  # the hybrids' attention layers; the rest have [0, 1]


@_needs_sparse
@pytest.mark.parametrize("arch", [a for a in ALL if a != "mamba"] + ["llama_eager"])
def test_sparse_backend_full_budget_equals_dense(arch, monkeypatch):
    """At budget >= context the backend equals dense on every architecture: a layer is either
    computed exactly by the sparse kernels (sliding windows through the mask) or left on the model's
    own attention function (softcap, sinks, ALiBi) -- and the model says which."""
    name, attn = (arch[:-6], "eager") if arch.endswith("_eager") else (arch, "sdpa")
    model = make_arch_model(name, attn=attn)
    impl = model.config._attn_implementation
    ids, mask = prompts(3, length=10)
    run = dict(attention_mask=mask, strategy=S.Discrete(temperature=0.0), max_new_tokens=8, eos_token_id=NO_EOS)
    dense = H.generate(model, ids, **run)
    calls = {"n": 0}
    real = softdec.sparse_decode_attention

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(softdec, "sparse_decode_attention", counting)
    H.enable_token_sparse_attention(model, budget=4096, select="token", sink=1, window=2, prefill=False)
    try:
        sparse = H.generate(model, ids, **run)
        sparse_layers, dense_layers = model.softdec_sparse_layers, model.softdec_dense_layers
    finally:
        H.disable_token_sparse_attention(model)
    assert model.config._attn_implementation == impl and not hasattr(model, "softdec_sparse_layers")
    assert torch.equal(sparse.sequences, dense.sequences)
    torch.testing.assert_close(sparse.stats.entropy, dense.stats.entropy, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sparse.stats.max_prob, dense.stats.max_prob, rtol=1e-4, atol=1e-4)
    if name in _DENSE_WHY:
        assert sparse_layers == [] and calls["n"] == 0
        assert sorted(dense_layers) == [0, 1] and all(_DENSE_WHY[name] in r for r in dense_layers.values())
    else:
        assert sparse_layers == _ATTN_LAYERS.get(name, [0, 1]) and dense_layers == {}
        assert calls["n"] == len(sparse_layers) * 7  # every decode step of every sparse layer


@_needs_sparse
def test_sparse_backend_refusals():
    with pytest.raises(ValueError, match="found no attention layers .* in MambaForCausalLM"):
        H.enable_token_sparse_attention(make_arch_model("mamba"), budget=8)
    model = make_arch_model("llama")
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="needs a model on 'sdpa' or 'eager' attention .* got 'flex_attention'"):
        H.enable_token_sparse_attention(model, budget=8)


# ============================================================================ compiled decode step

def test_compile_arguments():
    model = model_for("llama")
    ids, mask = prompts(2)
    with pytest.raises(ValueError, match="compile must be a bool, got 'yes'"):
        H.generate(model, ids, strategy=S.Discrete(temperature=0.0), max_new_tokens=2, compile="yes")
    with pytest.raises(ValueError, match="compile=True supports Discrete, SoftThinking and Router; Speculative"):
        H.generate(model, ids, strategy=S.Speculative(model, 2, "greedy"), max_new_tokens=2, compile=True)
    with pytest.raises(ValueError, match="compile_mode must be a torch.compile mode .* got 'fast'"):
        H.generate(model, ids, strategy=S.Discrete(temperature=0.0), max_new_tokens=2, compile=True,
                   compile_mode="fast")


@pytest.mark.parametrize("arch", _cells(["llama", "gemma"], ()))
def test_compiled_step_equals_eager_loop(arch):
    """generate(compile=True) returns the eager loop's tokens, modes and stats (greedy, sampled,
    soft thinking with think-end and eos stops), reusing its compiled step on a second call."""
    model = model_for(arch)
    ids, mask = prompts(3)
    ref = hf_greedy(arch, 3)
    eos = int(ref[2, ids.shape[1] + 3])
    for st, eos_ids in ((S.Discrete(temperature=0.0), NO_EOS), (S.Discrete(temperature=0.8, top_k=20, seed=5), [eos]),
                        (S.SoftThinking(top_k=4, seed=3, think_end_token_id=7, max_think_tokens=4), [eos])):
        run = dict(attention_mask=mask, strategy=st, max_new_tokens=N_NEW, eos_token_id=eos_ids, pad_token_id=0)
        eager = H.generate(model, ids, **run)
        for _ in range(2):
            comp = H.generate(model, ids, compile=True, **run)
            assert torch.equal(comp.sequences, eager.sequences)
            assert torch.equal(comp.stats.mode, eager.stats.mode)
            torch.testing.assert_close(comp.stats.entropy, eager.stats.entropy, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert torch.equal(H.generate(model, ids, compile=True, attention_mask=mask, strategy=S.Discrete(temperature=0.0),
                                  max_new_tokens=N_NEW, eos_token_id=NO_EOS).sequences, ref)
