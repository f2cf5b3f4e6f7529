"""The bench's FlashInfer columns (python/softdec/bench/_peers.py): wired on CUDA only, with a note
when the package is missing. FlashInfer itself is CUDA-only, so a stand-in module records the calls."""

import sys
import types

import torch

from softdec.bench import _peers, bench_sampling


def _fake_flashinfer(calls):
    s = types.SimpleNamespace(
        sampling_from_logits=lambda x: calls.append(("plain", x.shape)),
        top_k_top_p_sampling_from_logits=lambda x, k, p: calls.append(("topk_topp", k, p)),
        min_p_sampling_from_probs=lambda probs, p: calls.append(("min_p", float(probs.sum(-1)[0]), p)),
        top_k_mask_logits=lambda x, k: calls.append(("top_k_mask_logits", k)),
        top_p_renorm_probs=lambda x, p: calls.append(("top_p_renorm_probs", p)),
    )
    return types.SimpleNamespace(sampling=s)


def test_no_flashinfer_column_on_cpu(monkeypatch):
    calls = []
    monkeypatch.setitem(_peers._cache, "flashinfer", _fake_flashinfer(calls))
    assert _peers.sample_fns(torch.zeros(1, 4), {}, "cpu") == {}
    assert _peers.filter_fns("top_p_renorm_probs", torch.zeros(1, 4), 0.9, "cpu") == {}
    assert _peers.note("cpu") == ""
    fns, _ = bench_sampling._make(1, 64, {"top_k": 50, "top_p": 0.9}, "cpu", compile_=False)
    assert "flashinfer" not in fns


def test_flashinfer_columns_on_cuda_call_the_matching_kernels(monkeypatch):
    calls = []
    monkeypatch.setitem(_peers._cache, "flashinfer", _fake_flashinfer(calls))
    x = torch.randn(2, 16)
    _peers.sample_fns(x, {}, "cuda")["flashinfer"]()
    _peers.sample_fns(x, {"top_k": 50, "top_p": 0.9}, "cuda")["flashinfer"]()
    _peers.sample_fns(x, {"min_p": 0.05}, "cuda")["flashinfer"]()
    _peers.filter_fns("top_k_mask_logits", x, 50, "cuda")["flashinfer"]()
    _peers.filter_fns("top_p_renorm_probs", x, 0.9, "cuda")["flashinfer"]()
    assert _peers.filter_fns("min_p_renorm_probs", x, 0.05, "cuda") == {}  # FlashInfer has none
    assert calls[0] == ("plain", (2, 16))
    assert calls[1] == ("topk_topp", 50, 0.9)
    assert calls[2][0] == "min_p" and abs(calls[2][1] - 1.0) < 1e-6 and calls[2][2] == 0.05  # given probs
    assert calls[3] == ("top_k_mask_logits", 50) and calls[4] == ("top_p_renorm_probs", 0.9)
    assert _peers.note("cuda") == ""


def test_missing_flashinfer_is_noted_on_cuda(monkeypatch):
    monkeypatch.setitem(_peers._cache, "flashinfer", None)
    assert _peers.sample_fns(torch.zeros(1, 4), {}, "cuda") == {}
    assert _peers.note("cuda") == "flashinfer: not importable, column skipped"
    monkeypatch.delitem(_peers._cache, "flashinfer")
    monkeypatch.setitem(sys.modules, "flashinfer", None)  # import fails
    assert _peers.flashinfer() is None
