"""softdec's PEP 517 build backend: scikit-build-core behind a torch check.

softdec compiles against the torch already installed (an isolated build would
otherwise pull the registry's multi-GB CUDA torch, or find none). The check
runs in the first hook pip calls for a wheel, before any CMake work, so an
isolated build (``pip install softdec`` without ``--no-build-isolation``) or a
too-old torch stops at once with what to do. Building an sdist needs no torch.
"""

from __future__ import annotations

import re

from scikit_build_core import build as _skb
from scikit_build_core.build import *  # noqa: F401,F403  (every hook, then the wrapped ones below)

MIN_TORCH = (2, 10)


def _parse(version: str):
    """(major, minor) of a torch version string ('2.13.0+cpu', '2.10.0a0+git1', '2.11.0.dev20250101')."""
    m = re.match(r"\s*(\d+)\.(\d+)", version or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def torch_problem(version) -> str | None:
    """The message for a build environment whose torch is ``version`` (None: no torch); None when fine."""
    need = ".".join(map(str, MIN_TORCH))
    if version is None:
        return ("softdec builds against an installed torch, and this build environment has none (an isolated "
                "pip build never sees the torch you installed): pip install torch first (on a CPU machine: "
                "pip install torch==2.13.0), then pip install --no-build-isolation softdec "
                "(or `pip install --no-build-isolation .` in a source checkout).")
    mm = _parse(version)
    if mm is None or mm < MIN_TORCH:
        return (f"softdec needs torch >= {need} to build, but this build environment has torch {version}: "
                f"pip install 'torch>={need}' first, then pip install --no-build-isolation softdec.")
    return None


def _installed_torch():
    from importlib import metadata
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def _check():
    msg = torch_problem(_installed_torch())
    if msg:
        raise SystemExit("error: " + msg)


def get_requires_for_build_wheel(config_settings=None):
    _check()
    return _skb.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_editable(config_settings=None):
    _check()
    return _skb.get_requires_for_build_editable(config_settings)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _check()
    return _skb.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _check()
    return _skb.build_editable(wheel_directory, config_settings, metadata_directory)
