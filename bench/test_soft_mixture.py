"""pytest-benchmark wrappers for softdec.bench.bench_soft_mixture (`make bench-pytest`).

The benchmark cases themselves live in the package (`softdec bench --only soft_mixture`)."""

import pytest

from softdec.bench.bench_soft_mixture import _make


@pytest.mark.parametrize("B,k", [(8, 10), (64, 30)])
def test_soft_mixture(benchmark, B, k):
    fns, _ = _make(B, k, "cpu")
    benchmark(fns["softdec"])


@pytest.mark.parametrize("B,k", [(8, 10)])
def test_soft_mixture_eager_reference(benchmark, B, k):
    fns, _ = _make(B, k, "cpu")
    benchmark(fns["eager"])
