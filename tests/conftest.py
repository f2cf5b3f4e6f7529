"""Shared test fixtures: devices, seeded RNG, dtype tolerances."""

from __future__ import annotations

import pytest
import torch

import softdec  # noqa: F401  (registers the ops)

CUDA = torch.cuda.is_available() and "cuda" in softdec.info()["backends"]
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])

# (dtype, atol, rtol) against a float64 reference
TOLS = {
    torch.float32: (1e-5, 1e-4),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2e-3, 2e-3),
}


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU and a CUDA build of softdec")
    for item in items:
        # the device="cuda" instance of a test parametrized over DEVICES runs the CUDA backend too:
        # mark it, so `pytest -m cuda` (bench/gpu_check.sh) selects every test that runs a kernel on the GPU
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("device") == "cuda":
            item.add_marker(pytest.mark.cuda)
        if "cuda" in item.keywords and not CUDA:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
