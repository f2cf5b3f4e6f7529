"""The worked SofT-GRPO example (examples/soft_grpo_toy.py): a few policy-gradient steps on a tiny
random Llama on CPU, from rollout traces and softdec.gumbel_log_density, improve the expected reward."""

from __future__ import annotations

import importlib.util
import math
import pathlib

import pytest
import torch

import softdec

pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(not all(hasattr(softdec, n) for n in ("soft_mixture", "sample", "gumbel_log_density")),
                                reason="softdec.soft_mixture / sample / gumbel_log_density are not in this build")

_PATH = pathlib.Path(__file__).resolve().parents[1] / "examples" / "soft_grpo_toy.py"


@pytest.fixture(autouse=True)
def _one_thread():
    # a tiny model: intra-op threads only add contention (seconds on a loaded machine vs < 1 s)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _example():
    spec = importlib.util.spec_from_file_location("soft_grpo_toy", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_discrete_reward_improves():
    ex = _example()
    h = ex.train(iters=6, seed=0, log=None)
    e = [r["expected_reward"] for r in h]
    assert all(math.isfinite(r["loss"]) for r in h)
    # P(TARGET) at the answer steps starts near 1/V and rises several-fold in a few steps
    assert e[0] < 2.5 / ex.V
    assert e[-1] > 5 * e[0] and e[-1] > 0.3, e
    assert sum(r["reward"] for r in h[-2:]) > sum(r["reward"] for r in h[:2]), h


def test_soft_token_reward_improves_through_the_gumbel_density():
    # the reward reads only the soft tokens' weights: the gradient reaches the model only through
    # softdec.gumbel_log_density of the stored noisy logits
    ex = _example()
    h = ex.train(iters=10, seed=0, kind="soft", log=None)
    e = [r["expected_reward"] for r in h]
    assert e[-1] > 3 * e[0] and e[-1] > 0.2, e


def test_policy_log_prob_matches_the_papers_formula():
    # float64 re-derivation of SofT-GRPO's soft-token log-density, z = y - log pi~ (pi~ = softmax(logits / T)
    # over the kept ids, renormalised), log p = mean(-z - e^-z), plus discrete token log-probs
    ex = _example()
    import softdec.hf as H
    import softdec.strategies as S
    model = ex.tiny_model(1).eval()
    prompts = torch.randint(3, ex.V, (4, 5), generator=torch.Generator().manual_seed(1))
    st = S.SoftThinking(top_k=5, temperature=0.8, noise="gumbel", tau=0.1, max_think_tokens=3,
                        after=S.Discrete(temperature=0.9), seed=torch.arange(4))
    tr = H.generate(model, prompts, strategy=st, max_new_tokens=6, eos_token_id=[], return_trace=True).trace
    lp, logits = ex.policy_log_prob(model, prompts, tr, st)
    want = torch.zeros(4, dtype=torch.float64)
    lg = logits.detach().double()
    for b in range(4):
        for t in range(tr.mode.shape[1]):
            if tr.soft[b, t]:
                n = int(tr.nkept[b, t])
                kept = lg[b, t, tr.ids[b, t, :n]] / st.temperature
                log_pi = kept - torch.logsumexp(kept, 0)
                z = tr.noisy_logits[b, t, :n].double() - log_pi
                want[b] += (-z - torch.exp(-z)).mean()
            elif tr.discrete[b, t]:
                want[b] += torch.log_softmax(lg[b, t] / 0.9, 0)[tr.tokens[b, t]]
    torch.testing.assert_close(lp.detach().double(), want, atol=1e-4, rtol=1e-4)
    # and it is differentiable w.r.t. the model
    model.zero_grad()
    lp.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert float(model.lm_head.weight.grad.abs().sum()) > 0
