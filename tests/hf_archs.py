"""Tiny random configs of many transformers decoder architectures (built here, never downloaded).

``make_arch_model(name)`` returns a seeded, eval-mode model whose logits are far
from uniform. Sliding windows are small (4) so that short tests cross them.
"""

from __future__ import annotations

import torch

V = 96
WINDOW = 4


def _cfg(name: str, T, vocab: int = V):
    h, L = 32, 2
    common = dict(vocab_size=vocab, hidden_size=h, intermediate_size=2 * h, num_hidden_layers=L,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if name == "llama":
        return T.LlamaConfig(**common), T.LlamaForCausalLM
    if name == "qwen2":
        return T.Qwen2Config(**common), T.Qwen2ForCausalLM
    if name == "qwen3":
        return T.Qwen3Config(**common, head_dim=8), T.Qwen3ForCausalLM
    if name == "phi3":
        return T.Phi3Config(**common), T.Phi3ForCausalLM
    if name == "mistral":  # every layer sliding
        return T.MistralConfig(**common, sliding_window=WINDOW), T.MistralForCausalLM
    if name == "starcoder2":  # sliding, biases, LayerNorm
        return T.Starcoder2Config(**common, sliding_window=WINDOW), T.Starcoder2ForCausalLM
    if name == "gemma":  # embedding scaled by sqrt(hidden)
        return T.GemmaConfig(**common, head_dim=8), T.GemmaForCausalLM
    if name == "gemma2":  # alternating sliding/global, attention and final logit softcapping
        return T.Gemma2Config(**common, head_dim=8, sliding_window=WINDOW, attn_logit_softcapping=50.0,
                              final_logit_softcapping=30.0), T.Gemma2ForCausalLM
    if name == "gemma3":  # 5 sliding : 1 global pattern, here sliding then global
        return T.Gemma3TextConfig(**common, head_dim=8, sliding_window=WINDOW,
                                  layer_types=["sliding_attention", "full_attention"]), T.Gemma3ForCausalLM
    if name == "gpt_oss":  # attention sinks, sliding/full layers, MoE
        c = dict(common, intermediate_size=h)
        return T.GptOssConfig(**c, head_dim=8, sliding_window=WINDOW, num_local_experts=4, num_experts_per_tok=2,
                              layer_types=["sliding_attention", "full_attention"]), T.GptOssForCausalLM
    if name == "gpt2":
        return T.GPT2Config(vocab_size=vocab, n_embd=h, n_layer=L, n_head=4, n_positions=512, bos_token_id=1,
                            eos_token_id=2, pad_token_id=0), T.GPT2LMHeadModel
    if name == "bloom":  # ALiBi
        return T.BloomConfig(vocab_size=vocab, hidden_size=h, n_layer=L, n_head=4, bos_token_id=1, eos_token_id=2,
                             pad_token_id=0), T.BloomForCausalLM
    if name == "falcon":  # ALiBi variant
        return T.FalconConfig(vocab_size=vocab, hidden_size=h, num_hidden_layers=L, num_attention_heads=4, alibi=True,
                              new_decoder_architecture=False, multi_query=True, bos_token_id=1, eos_token_id=2,
                              pad_token_id=0), T.FalconForCausalLM
    if name == "lfm2":  # hybrid: short convolutions + attention
        return T.Lfm2Config(**{k: v for k, v in common.items() if k != "intermediate_size"}, intermediate_size=2 * h,
                            layer_types=["conv", "full_attention"]), T.Lfm2ForCausalLM
    if name == "qwen3_next":  # hybrid: gated delta-net linear attention + full attention, MoE
        return T.Qwen3NextConfig(**common, head_dim=8, layer_types=["linear_attention", "full_attention"],
                                 linear_num_value_heads=2, linear_num_key_heads=2, linear_key_head_dim=8,
                                 linear_value_head_dim=8, num_experts=4, num_experts_per_tok=2,
                                 moe_intermediate_size=h, shared_expert_intermediate_size=h), T.Qwen3NextForCausalLM
    if name == "mamba":  # pure state-space model
        return T.MambaConfig(vocab_size=vocab, hidden_size=h, state_size=8, num_hidden_layers=L, bos_token_id=1,
                             eos_token_id=2, pad_token_id=0), T.MambaForCausalLM
    raise KeyError(name)


ALL = ["llama", "qwen2", "qwen3", "phi3", "mistral", "starcoder2", "gemma", "gemma2", "gemma3", "gpt_oss", "gpt2",
       "bloom", "falcon", "lfm2", "qwen3_next", "mamba"]


def init_normal(model, std: float):
    """Every weight matrix ~ N(0, std^2): peaked enough that greedy paths are stable, random
    enough that drafts get rejected."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)
    return model


def make_arch_model(name: str, seed: int = 0, std: float = 0.15, attn: str = "sdpa", vocab: int = V):
    import transformers as T
    cfg, cls = _cfg(name, T, vocab)
    torch.manual_seed(seed)
    try:
        cfg._attn_implementation = attn
        model = cls(cfg).eval()
    except ValueError:  # the architecture has no SDPA path (Gemma 2, gpt-oss, Bloom, Mamba): its default
        cfg, cls = _cfg(name, T, vocab)
        cfg._attn_implementation = "eager"
        torch.manual_seed(seed)
        model = cls(cfg).eval()
    return init_normal(model, std)
