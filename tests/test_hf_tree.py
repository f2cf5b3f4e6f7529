"""Token-tree speculation in softdec.hf: tree masks / positions, KV compaction, Speculative(tree=...)."""

from __future__ import annotations

import pytest
import torch

import softdec.hf as H
import softdec.strategies as S
from softdec.hf.tree import (compact_cache, tree_ancestors, tree_attention_mask, tree_depths, tree_from_spec,
                             tree_position_ids)
from softdec.hf._common import _cache_kwarg
from test_hf import NO_EOS, hf_greedy, make_model, perturbed_copy, prompts

transformers = pytest.importorskip("transformers")


def test_tree_mask_positions_and_depths():
    parents = torch.tensor([-1, 0, 0, 1, 1, 2, -1])
    anc = tree_ancestors(parents)[0]
    assert anc[3].tolist() == [True, True, False, True, False, False, False]
    assert anc[6].tolist() == [False] * 6 + [True]  # padding: itself only
    assert tree_depths(parents)[0].tolist() == [0, 1, 1, 2, 2, 2, 0]
    assert tree_position_ids(parents, 5)[0].tolist() == [5, 6, 6, 7, 7, 7, 5]
    m = tree_attention_mask(parents, 2, dtype=torch.float32)
    assert m.shape == (1, 1, 7, 9)
    allowed = m[0, 0] == 0
    assert bool(allowed[:, :2].all())
    assert torch.equal(allowed[:, 2:], anc)
    assert float(m.min()) == torch.finfo(torch.float32).min
    pm = torch.tensor([[1, 0]])
    assert not bool((tree_attention_mask(parents, 2, past_mask=pm)[0, 0, :, 1] == 0).any())


def test_tree_from_spec():
    assert tree_from_spec((2, 2)) == [(0,), (1,), (0, 0), (0, 1), (1, 0), (1, 1)]
    assert tree_from_spec([(0, 0), (1,), (0,)]) == [(0,), (1,), (0, 0)]
    with pytest.raises(ValueError, match=r"needs its parent path \(0,\) in the tree"):
        tree_from_spec([(0, 1)])
    with pytest.raises(ValueError, match=r"tree=\(k, depth\) needs k >= 1 and depth >= 1"):
        tree_from_spec((0, 2))
    with pytest.raises(ValueError, match="tree speculation supports methods"):
        S.Speculative(make_model("llama"), method="soft", tree=(2, 2))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma", "gpt2"])
def test_tree_forward_and_compaction_equal_sequential(arch):
    """Scoring a tree with the 4-D mask gives each node the logits of its path fed sequentially; after
    compacting the cache to one path, the next token's logits equal a plain forward of that path."""
    model = make_model(arch)
    ctx = torch.tensor([[5, 9, 17, 33]])
    parents = torch.tensor([-1, 0, 0, 1, 2, 3])
    tokens = torch.tensor([40, 11, 12, 13, 14, 15])
    cache = transformers.DynamicCache(config=model.config)
    P = ctx.shape[1]
    model(input_ids=ctx, use_cache=True, **{_cache_kwarg(model): cache})
    out = model(input_ids=tokens[None], position_ids=tree_position_ids(parents, P),
                attention_mask=tree_attention_mask(parents, P), use_cache=True, **{_cache_kwarg(model): cache})
    path = [0, 1, 3, 5]  # root -> 11 -> 13 -> 15
    seq = torch.cat([ctx, tokens[path][None]], 1)
    ref = model(input_ids=seq).logits
    for j, n in enumerate(path):
        torch.testing.assert_close(out.logits[0, n], ref[0, P + j], rtol=1e-4, atol=1e-4)
    compact_cache(cache, torch.tensor(list(range(P)) + [P + n for n in path]))
    assert cache.get_seq_length() == P + len(path)
    nxt = model(input_ids=torch.tensor([[7]]), use_cache=True, **{_cache_kwarg(model): cache}).logits
    full = model(input_ids=torch.cat([seq, torch.tensor([[7]])], 1)).logits
    torch.testing.assert_close(nxt[0, -1], full[0, -1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma"])
@pytest.mark.parametrize("tree", [(2, 2), [(0,), (1,), (2,), (0, 0), (0, 0, 0), (1, 0)]])
def test_tree_greedy_equals_greedy(arch, tree):
    model = make_model(arch)
    ids, mask = prompts(3)
    ref = hf_greedy(model, ids, mask, 12)
    spec = S.Speculative(perturbed_copy(model, arch, 0.03), method="greedy", tree=tree)
    out = H.generate(model, ids, attention_mask=mask, strategy=spec, max_new_tokens=12, eos_token_id=NO_EOS)
    assert torch.equal(out.sequences, ref)
    acc = out.stats.num_accepted
    assert int(acc[acc >= 0].sum()) > 0


def test_tree_exact_self_draft_and_eos():
    model = make_model("llama")
    ids, mask = prompts(2)
    spec = S.Speculative(model, method="exact", tree=(3, 2), seed=1, temperature=0.0)
    out = H.generate(model, ids, attention_mask=mask, strategy=spec, max_new_tokens=9, eos_token_id=NO_EOS)
    ref = hf_greedy(model, ids, mask, 9)
    assert torch.equal(out.sequences, ref)
    acc = out.stats.num_accepted
    assert bool((acc[:, :-1][acc[:, :-1] >= 0] == 2).all())  # T = 0, self-draft: the full depth every round
    eos = int(ref[0, ids.shape[1] + 3])
    out = H.generate(model, ids[:1], strategy=spec, max_new_tokens=9, eos_token_id=eos)
    assert int(out.sequences[0, -1]) == eos and out.sequences.shape[1] <= ids.shape[1] + 4


# ============================================================================ sampled siblings (exact, T > 0)

def _chi2_p(counts, probs):
    from scipy import stats
    keep = probs > 0
    assert float(counts[~keep].sum()) == 0, "a token of zero target probability was emitted"
    if int(keep.sum()) == 1:
        return 1.0  # one cell: everything landed in it (checked above)
    exp = probs[keep] / probs[keep].sum() * counts.sum()
    return stats.chisquare(counts[keep].numpy(), exp.numpy()).pvalue


@pytest.mark.parametrize("m,support", [(2, 5), (3, 5), (4, 2)])
def test_sample_siblings_draws_without_replacement(m, support):
    """Child j is a draw from q with the earlier children removed; q_j is that conditional (and one-hot
    once q's support is exhausted)."""
    from softdec.hf.tree import sample_siblings
    import softdec
    V, n = 5, 100_000
    g = torch.Generator().manual_seed(1)
    q = torch.softmax(torch.randn(V, generator=g) * 1.5, -1)
    if support < V:
        q[support:] = 0
        q /= q.sum()
    u = softdec.philox_uniform((n, V), 7)
    tok, pr = sample_siblings(q.expand(n, V), m, u)
    assert tok.shape == (n, m) and pr.shape == (n, m, V)
    torch.testing.assert_close(pr.sum(-1), torch.ones(n, m))
    # first child ~ q, second child given the first ~ q without it
    assert _chi2_p(torch.bincount(tok[:, 0], minlength=V).double(), q.double()) > 1e-3
    if support >= 2:
        sel = tok[:, 0] == int(q.argmax())
        q2 = q.clone()
        q2[q.argmax()] = 0
        assert _chi2_p(torch.bincount(tok[sel, 1], minlength=V).double(), q2.double()) > 1e-3
        assert bool((tok[:, 1] != tok[:, 0]).all())
        torch.testing.assert_close(pr[sel, 1], (q2 / q2.sum()).expand(int(sel.sum()), V))
    if m > support:  # exhausted: one-hot at the child's own token
        j = support
        assert torch.equal(pr[:, j].argmax(-1), tok[:, j]) and bool((pr[:, j].max(-1).values == 1).all())


@pytest.mark.parametrize("m,support", [(2, 7), (3, 7), (4, 3)])
def test_sampled_siblings_then_verify_tree_is_lossless_depth1(m, support):
    """Siblings drawn by sample_siblings and verified with their conditionals q_j: the first emitted
    token is distributed as the target (recursive rejection without replacement), 1e5 trials."""
    from softdec.hf.tree import sample_siblings
    import softdec
    V, n = 7, 100_000
    g = torch.Generator().manual_seed(2 + m)
    lp = torch.randn(V, generator=g) * 1.5
    q = torch.softmax(torch.randn(V, generator=g) * 1.5, -1)
    q[support:] = 0
    q /= q.sum()
    p = torch.softmax(lp.double(), -1)
    tok, pr = sample_siblings(q.expand(n, V), m, softdec.philox_uniform((n, V), 11))
    N = 1 + m
    tokens = torch.cat([torch.zeros(n, 1, dtype=torch.long), tok], 1)
    parents = torch.tensor([-1] + [0] * m).expand(n, N).contiguous()
    dp = torch.cat([torch.zeros(n, 1, V).scatter_(-1, torch.zeros(n, 1, 1, dtype=torch.long), 1.0), pr], 1)
    out = softdec.verify_tree(lp.expand(n, N, V).contiguous(), tokens, parents, draft_probs=dp,
                              seed=torch.arange(n) * 31 + 5)
    first = out.tokens[:, 0]
    assert _chi2_p(torch.bincount(first, minlength=V).double(), p) > 1e-3
    # acceptance at the root beats one draft (the siblings are distinct)
    acc = (out.num_accepted > 0).double().mean()
    single = float(torch.minimum(p, q.double()).sum())
    assert float(acc) > single + 0.02


def test_sampled_siblings_then_verify_tree_is_lossless_depth2():
    """A (2, 2) tree whose target and draft depend on the path token: the joint of the first two
    emitted tokens equals the target's (rows that stop at the root draw token 2 from the target)."""
    from softdec.hf.tree import sample_siblings
    import softdec
    V, n, m = 5, 100_000, 2
    g = torch.Generator().manual_seed(9)
    L0, L1 = torch.randn(V, generator=g) * 1.5, torch.randn(V, V, generator=g) * 1.5
    Q0 = torch.softmax(torch.randn(V, generator=g) * 1.5, -1)
    Q1 = torch.softmax(torch.randn(V, V, generator=g) * 1.5, -1)
    parents = torch.tensor([-1, 0, 0, 1, 1, 2, 2]).expand(n, 7).contiguous()
    t1, p1 = sample_siblings(Q0.expand(n, V), m, softdec.philox_uniform((n, V), 1))
    tokens = torch.zeros(n, 7, dtype=torch.long)
    dp = torch.zeros(n, 7, V)
    dp[:, 0, 0] = 1
    tokens[:, 1:3], dp[:, 1:3] = t1, p1
    for c, kids in ((1, (3, 4)), (2, (5, 6))):
        tk, pk = sample_siblings(Q1[tokens[:, c]], m, softdec.philox_uniform((n, V), 2 + c))
        tokens[:, list(kids)], dp[:, list(kids)] = tk, pk
    lg = torch.empty(n, 7, V)
    lg[:, 0] = L0
    for c in range(1, 7):
        lg[:, c] = L1[tokens[:, c]] if c < 3 else 0.0  # leaves' rows: only used for a bonus past token 2
    out = softdec.verify_tree(lg, tokens, parents, draft_probs=dp, seed=torch.arange(n) * 17 + 3)
    x1 = out.tokens[:, 0]
    x2 = out.tokens[:, 1].clone()
    stop = out.num_accepted == 0
    x2[stop] = torch.multinomial(torch.softmax(L1[x1[stop]], -1), 1, generator=g)[:, 0]
    joint = torch.softmax(L0.double(), -1)[:, None] * torch.softmax(L1.double(), -1)
    counts = torch.bincount(x1 * V + x2, minlength=V * V).double()
    assert _chi2_p(counts, joint.reshape(-1)) > 1e-3


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.8, 5)])
def test_tree_exact_sampled_first_token_distribution(temperature, top_k):
    """End to end: Speculative(tree=(3, 2), method="exact") with a different draft model; the first
    generated token is distributed as the target's filtered softmax (2e4 rows, each its own seed)."""
    from softdec.reference import filter_probs
    vocab = 8
    target = make_model("llama", vocab=vocab, hidden=16, seed=21, std=0.5)
    draft = make_model("llama", vocab=vocab, hidden=16, seed=22, std=0.5)
    prompt = torch.tensor([[3, 5, 1, 6]])
    with torch.no_grad():
        lt = target(prompt).logits[0, -1:].double()
        ld = draft(prompt).logits[0, -1:].double()
    p = filter_probs(lt, temperature, top_k, 1.0)[0][0]
    q = filter_probs(ld, temperature, top_k, 1.0)[0][0]
    assert float((p - q).abs().sum()) > 0.2  # the draft really differs
    n = 20000
    ids = prompt.expand(n, -1).contiguous()
    seeds = torch.arange(n, dtype=torch.int64) * 7919 + 1
    spec = S.Speculative(draft, method="exact", temperature=temperature, top_k=top_k, seed=seeds, tree=(3, 2))
    out = H.generate(target, ids, strategy=spec, max_new_tokens=1, eos_token_id=NO_EOS)
    first = out.sequences[:, prompt.shape[1]]
    counts = torch.bincount(first, minlength=vocab).double()
    assert _chi2_p(counts, p) > 1e-3
    assert float((counts / n - q).abs().sum()) > 0.1  # far from the draft's distribution


@pytest.mark.parametrize("method,temperature", [("exact", 1.0), ("greedy", 0.0)])
def test_tree_batched_rows_equal_rows_alone(method, temperature):
    """The batched tree loop (ragged acceptance, per-row cache compaction, left padding) gives each row
    what that row gives alone with its own seed."""
    model = make_model("llama")
    draft = perturbed_copy(model, "llama", 0.05)
    ids, mask = prompts(3)
    seeds = torch.tensor([11, 22, 33])
    kw = dict(method=method, temperature=temperature, tree=(2, 2))
    out = H.generate(model, ids, attention_mask=mask, strategy=S.Speculative(draft, seed=seeds, **kw),
                     max_new_tokens=10, eos_token_id=NO_EOS)
    acc = out.stats.num_accepted
    for b in range(3):
        row = ids[b][mask[b].bool()][None]
        one = H.generate(model, row, strategy=S.Speculative(draft, seed=seeds[b:b + 1], **kw), max_new_tokens=10,
                         eos_token_id=NO_EOS)
        assert torch.equal(one.sequences[0, row.shape[1]:], out.sequences[b, ids.shape[1]:])
        a1 = one.stats.num_accepted[0]
        assert torch.equal(a1[a1 >= 0], acc[b][acc[b] >= 0])
    assert len(set(acc[acc >= 0].tolist())) > 1  # acceptance really is ragged
