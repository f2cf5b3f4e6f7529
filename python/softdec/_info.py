"""softdec.info(): what this build is and what it runs on."""

from __future__ import annotations

import os
import platform

import torch

from . import _C, _compat


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def info() -> dict:
    """Describe this softdec build and the machine it runs on.

    Returns
    -------
    dict
        ``version``, ``torch`` (the running torch version), ``torch_target``
        (the oldest torch the stable-ABI build serves), ``torch_build`` (the
        torch it was compiled against; None if unrecorded), ``backends`` (``["cpu"]``
        plus ``"cuda"`` when compiled), ``cuda_archs``, ``cuda_available``,
        ``cpu_capability`` (the CPU kernel level in use: ``avx2``, ``avx512``,
        ... chosen at import from the CPU, or forced by ``SOFTDEC_CPU_CAPABILITY``),
        ``cpu_capabilities`` (the levels compiled, lowest first),
        ``cpu_capabilities_supported`` (those this CPU runs), ``cpu_isa``
        (instruction-set extensions of the level in use), ``cpu_arch``
        (``dispatch``, or the ``-march`` of a single-level build), ``cpu``, ``threads`` (torch's
        intra-op threads, used by the CPU kernels), ``compiler``, ``build_type``.

    Examples
    --------
    >>> import softdec
    >>> softdec.info()["backends"]
    ['cpu']
    """
    b = _C.build_info()
    backends = ["cpu"] + (["cuda"] if b["cuda"] else [])
    return {
        "version": b["version"],
        "torch": torch.__version__,
        "torch_target": "2.10",
        "torch_build": _compat.build_torch_version(),
        "backends": backends,
        "cuda_archs": list(b["cuda_archs"]),
        "cuda_available": bool(b["cuda"] and torch.cuda.is_available()),
        "cpu_capability": b["cpu_capability"],
        "cpu_capabilities": list(b["cpu_capabilities"]),
        "cpu_capabilities_supported": list(b["cpu_capabilities_supported"]),
        "cpu_isa": list(b["cpu_isa"]),
        "cpu_arch": b["cpu_arch"],
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "compiler": b["compiler"],
        "build_type": b["build_type"],
        "sanitizers": b["sanitizers"],
        "python": platform.python_version(),
    }
