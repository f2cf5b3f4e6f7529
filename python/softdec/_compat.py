"""Import-time checks: the running torch against the minimum and the build's torch.

softdec's extension targets torch's stable ABI (TORCH_TARGET_VERSION 2.10), so
one build serves torch 2.10 and later. An older torch, or an extension that
does not load with the running torch, would otherwise surface as an undefined
symbol from the dynamic loader; these turn it into an ImportError naming both
versions and what to do.
"""

from __future__ import annotations

import re
from typing import Optional

MIN_TORCH = (2, 10)
MIN_TORCH_TEXT = "2.10"


def parse_version(version: str) -> Optional[tuple]:
    """``(major, minor)`` of a torch version string (``'2.13.0+cpu'``, ``'2.10.0a0+git1'``,
    ``'2.11.0.dev20250101'``), or None when it has no such prefix."""
    m = re.match(r"\s*(\d+)\.(\d+)", version or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def build_torch_version() -> Optional[str]:
    """The torch version this softdec was built against (softdec/_build_config.py), or None."""
    try:
        from ._build_config import TORCH_VERSION
    except ImportError:
        return None
    return TORCH_VERSION or None


def _built(build: Optional[str]) -> str:
    return f"torch {build}" if build else "a torch of unknown version"


def too_old_message(running: str, build: Optional[str]) -> Optional[str]:
    """The ImportError text when the running torch is older than the minimum, else None."""
    mm = parse_version(running)
    if mm is not None and mm >= MIN_TORCH:
        return None
    return (f"softdec needs torch >= {MIN_TORCH_TEXT}, but torch {running} is installed "
            f"(this softdec was built against {_built(build)}). Upgrade torch "
            f"(pip install 'torch>={MIN_TORCH_TEXT}'), or reinstall softdec against the torch you have "
            f"if it is >= {MIN_TORCH_TEXT}.")


def load_failure_message(running: str, build: Optional[str], error: BaseException) -> str:
    """The ImportError text when the native extension fails to load."""
    return (f"softdec's native extension failed to load with torch {running}; it was built against "
            f"{_built(build)} (softdec needs torch >= {MIN_TORCH_TEXT}). Rebuild softdec against the "
            f"installed torch: pip install --no-build-isolation --force-reinstall --no-deps softdec "
            f"(or `make dev` in a checkout). The loader said: {error}")


def check_torch(running: str) -> None:
    """Raise ImportError if the running torch is older than the minimum."""
    msg = too_old_message(running, build_torch_version())
    if msg:
        raise ImportError(msg)
