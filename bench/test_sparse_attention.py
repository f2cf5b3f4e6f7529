"""pytest-benchmark wrappers for softdec.bench.bench_sparse_attention (`make bench-pytest`).

The benchmark cases themselves live in the package (`softdec bench --only sparse_attention`)."""

import pytest
import torch

import softdec
from softdec import reference as ref
from softdec.bench.bench_sparse_attention import BUDGET, PS, _decode_inputs


@pytest.mark.parametrize("select", ["page", "token"])
def test_sparse_decode(benchmark, select):
    q, k, v = _decode_inputs(32768, torch.bfloat16, "cpu")
    summ = softdec.build_page_summary(k, page_size=PS)
    benchmark(lambda: softdec.sparse_decode_attention(q, k, v, budget=BUDGET, select=select,
                                                      page_summary=summ if select == "page" else None))


def test_dense_decode(benchmark):
    q, k, v = _decode_inputs(32768, torch.bfloat16, "cpu")
    benchmark(lambda: ref.dense_decode_attention(q, k, v))
