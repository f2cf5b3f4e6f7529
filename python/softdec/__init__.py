"""softdec: fast kernels for soft-token and speculative decoding.

Import order matters: torch first (it loads libtorch), then the native module
``softdec._C`` whose import registers every op under ``torch.ops.softdec``.
"""

from __future__ import annotations

import torch  # noqa: F401  (loads libtorch before the extension)

from . import _compat

_compat.check_torch(torch.__version__)  # an older torch: ImportError naming both versions
try:
    from . import _C  # noqa: F401  (registers torch.ops.softdec.*)
except ImportError as _e:  # e.g. an undefined symbol: built for another torch
    raise ImportError(_compat.load_failure_message(torch.__version__, _compat.build_torch_version(), _e)) from _e
from ._info import info
from .ops import *  # noqa: F401,F403
from .ops import __all__ as _ops_all

__version__: str = _C.build_info()["version"]

__all__ = ["info", "__version__", *_ops_all]
