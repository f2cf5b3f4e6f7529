"""SofT-GRPO-style policy-gradient steps on a tiny random Llama-like model, on CPU, in a few seconds.

Per iteration:

1. sample G rollouts per prompt with ``SoftThinking(noise="gumbel", tau=0.1, top_k=5)`` (a few soft
   "thinking" tokens, then discrete answer tokens) and ``return_trace=True``;
2. reward each rollout (toy: the fraction of its discrete answer tokens equal to ``TARGET``) and
   normalise the rewards within each prompt's group (GRPO advantages);
3. replay the rollouts through the current model (``softdec.hf.replay_logits``: the stored soft
   inputs ``sum_i w_i E[id_i]``, the discrete tokens) and recompute the policy log-density of every
   soft token (``softdec.gumbel_log_density`` of the stored noisy logits ``y``) and the log-prob of
   every discrete token;
4. loss = -mean(advantage * log p(rollout)); one optimiser step.

The expected reward (the mean probability of ``TARGET`` at the discrete steps, computed exactly from
the replayed logits, not sampled) rises over the iterations.

Run: ``python examples/soft_grpo_toy.py`` (needs softdec built, transformers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import softdec
import softdec.hf as H
import softdec.strategies as S

V = 32            # vocabulary
TARGET = 5        # the token the toy reward asks for
THINK = 4         # soft tokens per rollout
ANSWER = 4        # discrete tokens per rollout (the first is drawn on the step that ends thinking)


def tiny_model(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg)


def policy_log_prob(model, prompts, trace, strategy, mask=None):
    """Per rollout: sum over soft steps of the Gumbel log-density of the stored ``y`` plus the sum
    over discrete steps of ``log softmax(logits / T)[token]``; and the replayed logits."""
    logits = H.replay_logits(model, prompts, trace, mask)                  # (B, S, V), differentiable
    B, Sn, _ = logits.shape
    soft = trace.soft
    lp = logits.new_zeros(B)
    for t in range(Sn):                                                   # the stored soft tokens
        rows = soft[:, t]
        if rows.any():
            v = softdec.gumbel_log_density(logits[:, t].contiguous(), trace.ids[:, t], trace.noisy_logits[:, t],
                                           temperature=strategy.temperature, noise_scale=strategy.noise_scale,
                                           nkept=trace.nkept[:, t])       # (B,), mean over kept ids
            lp = lp + torch.where(rows, v, torch.zeros_like(v))
    T = strategy.after.temperature                                        # discrete steps: after=Discrete(T)
    disc = trace.discrete
    tok_lp = F.log_softmax(logits / T, -1).gather(2, trace.tokens[..., None])[..., 0]
    lp = lp + torch.where(disc, tok_lp, torch.zeros_like(tok_lp)).sum(1)
    return lp, logits


def reward(trace, kind: str = "discrete"):
    """``"discrete"``: fraction of each rollout's discrete tokens equal to TARGET. ``"soft"``: mean
    weight of TARGET in the rollout's soft tokens (only the soft tokens' log-densities can learn it)."""
    if kind == "soft":
        w = ((trace.ids == TARGET) * trace.weights).sum(2)               # (B, S)
        return (w * trace.soft).sum(1) / trace.soft.sum(1).clamp(min=1)
    disc = trace.discrete
    return ((trace.tokens == TARGET) & disc).sum(1).float() / disc.sum(1).clamp(min=1).float()


def expected_reward(logits, trace, kind: str = "discrete"):
    """Mean probability of TARGET under the replayed logits at the rollouts' discrete steps
    (``"discrete"``) or soft steps (``"soft"``): exact, no sampling noise."""
    p = logits.detach().softmax(-1)[..., TARGET]
    steps = trace.soft if kind == "soft" else trace.discrete
    return float((p * steps).sum() / steps.sum())


def train(iters: int = 12, prompts_n: int = 2, group: int = 8, lr: float = 3e-2, seed: int = 0, kind: str = "discrete",
          log=print):
    """Run ``iters`` policy-gradient steps; returns one dict per step (loss, reward, expected_reward).
    ``kind="soft"`` rewards the soft tokens only and drops the discrete answer."""
    torch.manual_seed(seed)
    model = tiny_model(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(3, V, (prompts_n, 6), generator=g)
    prompts = base.repeat_interleave(group, 0)                            # (P * G, L)
    B = prompts.shape[0]
    history = []
    for it in range(iters):
        # one Philox key per rollout: the G copies of a prompt explore independently
        strategy = S.SoftThinking(top_k=5, temperature=1.0, noise="gumbel", tau=0.1, max_think_tokens=THINK,
                                  after=S.Discrete(temperature=1.0),
                                  seed=torch.arange(B, dtype=torch.int64) + 1000 * it + 7919 * seed)
        model.eval()
        answer = ANSWER if kind == "discrete" else 0
        out = H.generate(model, prompts, strategy=strategy, max_new_tokens=THINK + answer, eos_token_id=[],
                         return_trace=True)
        tr = out.trace
        r = reward(tr, kind)
        rg = r.view(prompts_n, group)
        adv = ((rg - rg.mean(1, keepdim=True)) / (rg.std(1, keepdim=True) + 1e-4)).view(B)
        model.train()
        lp, logits = policy_log_prob(model, prompts, tr, strategy)
        loss = -(adv * lp).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        row = dict(iter=it, loss=float(loss.detach()), reward=float(r.mean()),
                   expected_reward=expected_reward(logits, tr, kind))
        history.append(row)
        if log is not None:
            log(f"iter {it:2d}  loss {row['loss']:+.4f}  reward {row['reward']:.3f}  "
                f"E[reward] {row['expected_reward']:.3f}")
    return history


if __name__ == "__main__":
    import sys
    train(kind=sys.argv[1] if len(sys.argv) > 1 else "discrete")
