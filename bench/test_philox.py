"""pytest-benchmark wrappers for softdec.bench.bench_philox (`make bench-pytest`).

The benchmark cases themselves live in the package (`softdec bench --only philox`)."""

import pytest

from softdec.bench.bench_philox import _make


@pytest.mark.parametrize("shape", [(64, 151936)])
def test_philox_uniform(benchmark, shape):
    ours, _ = _make(shape, "cpu")
    benchmark(ours)


@pytest.mark.parametrize("shape", [(64, 151936)])
def test_torch_rand(benchmark, shape):
    _, rand = _make(shape, "cpu")
    benchmark(rand)
