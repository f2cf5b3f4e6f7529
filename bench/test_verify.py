"""pytest-benchmark wrappers for softdec.bench.bench_verify (`make bench-pytest`).

The benchmark cases themselves live in the package (`softdec bench --only verify`)."""

import pytest
import torch

import softdec
from softdec import reference as ref
from softdec.bench.bench_verify import _inputs


@pytest.mark.parametrize("kind", ["onehot", "dense", "sparse"])
def test_verify_exact(benchmark, kind):
    lg, d, dp = _inputs(64, 4, kind, "cpu")
    seed = torch.arange(64)
    benchmark(lambda: softdec.verify(lg, d, draft_probs=dp, seed=seed))


def test_verify_reference(benchmark):
    lg, d, dp = _inputs(64, 4, "dense", "cpu")
    benchmark(lambda: ref.verify(lg, d, draft_probs=dp, seed=torch.arange(64)))
