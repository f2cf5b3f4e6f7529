"""pytest-benchmark wrappers for softdec.bench.bench_log_density (`make bench-pytest`).

The benchmark cases themselves live in the package (`softdec bench --only log_density`)."""

import pytest

from softdec.bench.bench_log_density import _gumbel


@pytest.mark.parametrize("B,k", [(64, 5)])
def test_gumbel_log_density(benchmark, B, k):
    fns, _ = _gumbel(B, k, "cpu", False)
    benchmark(fns["softdec"])


@pytest.mark.parametrize("B,k", [(64, 5)])
def test_gumbel_log_density_backward(benchmark, B, k):
    fns, _ = _gumbel(B, k, "cpu", True)
    benchmark(fns["softdec"])
