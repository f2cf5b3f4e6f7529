"""pytest-benchmark wrappers for softdec.bench.bench_e2e (`make bench-pytest`).

The benchmark cases themselves live in the package (`softdec bench --only e2e`)."""

import pytest
import torch

from softdec.bench.bench_e2e import _fns, build_model


_SMALL = dict(vocab_size=32000, hidden_size=256, intermediate_size=512, num_attention_heads=4,
              num_key_value_heads=2)


@pytest.fixture(scope="module")
def small_fns():
    pytest.importorskip("transformers")
    model = build_model(2, "cpu", torch.float32, **_SMALL)
    return _fns(model, 1, 16, 8)


def test_e2e_soft_thinking_softdec(benchmark, small_fns):
    benchmark(small_fns["softdec"])


def test_e2e_soft_thinking_torch(benchmark, small_fns):
    benchmark(small_fns["eager"])


def test_e2e_greedy(benchmark, small_fns):
    benchmark(small_fns["greedy"])
