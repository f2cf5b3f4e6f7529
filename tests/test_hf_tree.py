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
