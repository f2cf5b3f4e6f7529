"""End-to-end decoding on a randomly initialised model with Qwen2.5-0.5B's shapes (built from a config,
nothing downloaded): soft thinking with softdec kernels vs discrete greedy vs the same soft-thinking loop
written with plain torch ops (dense ``softmax @ E``).

Each timed call generates ``new`` tokens for ``B`` rows from a short prompt; the table's time is per call,
the notes give tokens/s. Ratios are baseline time / softdec time: ``greedy`` >= 0.95 means soft thinking
costs at most 5% more per token than discrete greedy decoding on the same model; ``eager`` > 1 means
softdec's soft thinking beats the plain-torch loop.
"""

from __future__ import annotations

import torch

from .harness import Case

# Qwen2.5-0.5B (config.json of Qwen/Qwen2.5-0.5B), written out so nothing is downloaded
QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                  rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                  bos_token_id=151643, eos_token_id=151643)


def build_model(layers: int, device: str, dtype: torch.dtype, **over):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(**{**QWEN25_05B, "num_hidden_layers": layers, **over})
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(dtype).eval()
    return model


@torch.no_grad()
def torch_soft_thinking(model, input_ids, max_new_tokens: int, *, top_k: int = 10, temperature: float = 1.0):
    """Soft Thinking written with plain torch ops: full softmax, entropy, top-k renormalisation scattered
    back into a dense [B, V] weight matrix, and ``weights @ E`` (a dense GEMV over the whole table)."""
    from transformers import DynamicCache
    cache = DynamicCache(config=model.config)
    emb = model.get_input_embeddings().weight
    out = model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    tokens, entropies = [], []
    for _ in range(max_new_tokens):
        logits = out.logits[:, -1].float()
        p = torch.softmax(logits / temperature, -1)
        entropies.append(-(p * torch.log(p.clamp_min(1e-30))).sum(-1))
        w, ids = p.topk(top_k, -1)
        dense = torch.zeros_like(p).scatter_(-1, ids, w / w.sum(-1, keepdim=True))
        embeds = (dense.to(emb.dtype) @ emb)[:, None]
        tokens.append(ids[:, 0])
        out = model(inputs_embeds=embeds, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return torch.stack(tokens, 1), torch.stack(entropies, 1)


def _fns(model, batch: int, prompt: int, new: int):
    import softdec.hf as H
    import softdec.strategies as S
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt), generator=g).to(model.device)
    soft = S.SoftThinking(top_k=10, temperature=1.0, seed=1)
    greedy = S.Discrete(temperature=0.0, stats=False)  # the leanest discrete loop
    return {
        "softdec": lambda: H.generate(model, ids, strategy=soft, max_new_tokens=new, eos_token_id=[]),
        "eager": lambda: torch_soft_thinking(model, ids, new, top_k=10, temperature=1.0),
        "greedy": lambda: H.generate(model, ids, strategy=greedy, max_new_tokens=new, eos_token_id=[]),
        "hf_greedy": lambda: model.generate(ids, do_sample=False, max_new_tokens=new, min_new_tokens=new,
                                            pad_token_id=0),
    }


def cases(quick: bool, device: str, full: bool = False):
    try:
        import transformers  # noqa: F401
        import softdec
    except ImportError:
        return []
    if not (hasattr(softdec, "soft_mixture") and hasattr(softdec, "sample")):
        return []
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if quick:
        return []  # model build and seconds-long generate calls do not fit a smoke run
    if full:
        layers, shapes = 24, [(1, 16, 16), (8, 16, 16)]
    else:
        # default run: 4 of the 24 layers (a 24-layer generate call takes 10-40 s on 2 cores); fewer
        # layers make the per-token sampling overhead a larger share, so the greedy ratio is conservative
        layers, shapes = 4, [(1, 16, 8)]
    model = build_model(layers, device, dtype)
    out = []
    for batch, prompt, new in shapes:
        out.append(Case(op="e2e_soft_thinking", label=f"qwen2.5-0.5b L={layers} B={batch} new={new}",
                        fns=_fns(model, batch, prompt, new), bytes=0, memory_bound=False, device=device,
                        # whole generate calls take seconds: time several so noise averages out
                        budget_s=20.0 if full else None,
                        notes=f"{batch * new} tokens per call; eager = plain-torch soft thinking "
                              f"(dense softmax @ E); greedy = softdec.hf discrete greedy; "
                              f"hf_greedy = transformers generate"))
    return out
