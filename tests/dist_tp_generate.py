"""softdec.hf.generate on a tensor-parallel tiny Llama / Qwen2, under torchrun (gloo):

    torchrun --nproc-per-node 2 tests/dist_tp_generate.py ARCH OUT.json [auto|manual]

"auto": transformers' tp_plan="auto" (needs accelerate): attention / MLP split over heads,
the input embedding split over the vocabulary (Shard(0)), logits gathered.
"manual": the same layout by hand with torch.distributed.tensor.parallel (embedding
RowwiseParallel = vocabulary-sharded, lm_head ColwiseParallel with gathered output).
Every rank decodes with Discrete(T=0), SoftThinking (its soft_mixture runs
softdec.distributed.soft_mixture on the vocabulary shard) and greedy Speculative, and
compares with the same model unsharded in this process; rank 0 writes the sequences.
"""
import json
import os
import sys

import torch
import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import transformers as T  # noqa: E402

import softdec.hf  # noqa: E402
from softdec.strategies import Discrete, SoftThinking, Speculative  # noqa: E402
from hf_archs import make_arch_model  # noqa: E402


def manual_tp(model, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
    mesh = init_device_mesh("cpu", (world,))
    plan = {"model.embed_tokens": RowwiseParallel(input_layouts=Replicate()),
            "lm_head": ColwiseParallel(output_layouts=Replicate())}
    for i in range(len(model.model.layers)):
        p = f"model.layers.{i}."
        for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
            plan[p + n] = ColwiseParallel()
        plan[p + "self_attn.o_proj"] = RowwiseParallel()
        plan[p + "mlp.down_proj"] = RowwiseParallel()
    return parallelize_module(model, mesh, plan)


def main():
    arch, out = sys.argv[1], sys.argv[2]
    mode = sys.argv[3] if len(sys.argv) > 3 else "manual"
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    ref = make_arch_model(arch).float().eval()
    if mode == "auto":
        path = out + f".{arch}.model"
        if rank == 0:
            ref.save_pretrained(path)
        dist.barrier()
        tp = T.AutoModelForCausalLM.from_pretrained(path, tp_plan="auto", dtype=torch.float32).eval()
    else:
        tp = manual_tp(make_arch_model(arch).float().eval(), world)
    emb = tp.get_input_embeddings().weight
    assert type(emb).__name__ == "DTensor" and emb.placements[0].is_shard(0), emb.placements
    ids = torch.tensor([[1, 5, 9, 13, 17], [0, 1, 7, 8, 9]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])

    def strategy(name, m):
        if name == "discrete":
            return Discrete(temperature=0.0)
        if name == "soft":
            return SoftThinking(top_k=5, temperature=1.0, max_think_tokens=8, after=Discrete(temperature=0.0))
        return Speculative(m, num_draft=3, method="greedy")

    res = {"mode": mode, "world": world}
    for name in ("discrete", "soft", "spec"):
        with torch.no_grad():
            a = softdec.hf.generate(tp, ids, attention_mask=mask, strategy=strategy(name, tp), max_new_tokens=12)
            b = softdec.hf.generate(ref, ids, attention_mask=mask, strategy=strategy(name, ref), max_new_tokens=12)
        res[name] = dict(tp=a.sequences.tolist(), ref=b.sequences.tolist(),
                         equal=bool(torch.equal(a.sequences, b.sequences)))
    if rank == 0:
        with open(out, "w") as f:
            json.dump(res, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
