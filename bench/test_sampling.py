"""pytest-benchmark wrappers for softdec.bench.bench_sampling (`make bench-pytest`).

The benchmark cases themselves live in the package (`softdec bench --only sampling`)."""

import pytest

from softdec.bench.bench_sampling import VARIANTS, _make


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_sample(benchmark, variant):
    fns, _ = _make(64, 151936, VARIANTS[variant], "cpu")
    benchmark(fns["softdec"])


def test_reference_sample(benchmark):
    fns, _ = _make(64, 151936, VARIANTS["top_k=50,top_p=0.9"], "cpu")
    benchmark(fns["eager"])
