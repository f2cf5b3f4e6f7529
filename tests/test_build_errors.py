"""Build-time and import-time errors (issue 20 item 4): a build environment without torch
(an isolated pip build) or with a torch older than 2.10 stops at once with what to do, and
importing softdec with an older torch, or with an extension that does not load, raises an
ImportError naming the running and the build's torch versions."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import softdec
from softdec import _compat

ROOT = Path(__file__).resolve().parent.parent
BACKEND_DIR = ROOT / "tools" / "build_backend"
PKG_PARENT = Path(softdec.__file__).resolve().parent.parent


def _backend():
    spec = importlib.util.spec_from_file_location("softdec_build", BACKEND_DIR / "softdec_build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------- the build backend

def test_pyproject_uses_the_checking_backend():
    tomllib = pytest.importorskip("tomllib")
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    assert cfg["build-backend"] == "softdec_build"
    assert (ROOT / cfg["backend-path"][0] / "softdec_build.py").is_file()
    assert not any(r.startswith("torch") for r in cfg["requires"])  # never pull torch into a build


@pytest.mark.parametrize("version, ok", [("2.13.0+cpu", True), ("2.10.0", True), ("2.10.0a0+git1234", True),
                                         ("2.11.0.dev20250101", True), ("3.0.0", True), ("2.9.1+cu121", False),
                                         ("1.13.1", False), ("garbage", False)])
def test_backend_torch_version_check(version, ok):
    pytest.importorskip("scikit_build_core")
    msg = _backend().torch_problem(version)
    if ok:
        assert msg is None
    else:
        assert f"has torch {version}" in msg and "torch>=2.10" in msg and "--no-build-isolation" in msg


def test_backend_message_without_torch():
    pytest.importorskip("scikit_build_core")
    msg = _backend().torch_problem(None)
    assert "softdec builds against an installed torch" in msg
    assert "pip install torch first" in msg and "pip install --no-build-isolation softdec" in msg


def test_isolated_build_environment_fails_fast(tmp_path):
    # an isolated pip build: scikit-build-core importable, torch not (python -I -S and a sys.path
    # holding only the build requirements); the first wheel hook exits with the advice, no CMake
    skb = pytest.importorskip("scikit_build_core")
    site = Path(skb.__file__).resolve().parent.parent
    for name in ("scikit_build_core", "packaging", "pathspec"):
        if (site / name).exists():
            os.symlink(site / name, tmp_path / name)
    code = ("import sys; sys.path[:0] = [%r, %r]\n"
            "import softdec_build\n"
            "softdec_build.get_requires_for_build_wheel()\n") % (str(tmp_path), str(BACKEND_DIR))
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "softdec builds against an installed torch" in r.stderr
    assert "pip install --no-build-isolation softdec" in r.stderr
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------- import time

@pytest.mark.parametrize("v, mm", [("2.13.0+cpu", (2, 13)), ("2.10.0a0+git1", (2, 10)), ("10.2", (10, 2)),
                                   ("x2.1", None), ("", None)])
def test_parse_version(v, mm):
    assert _compat.parse_version(v) == mm


def test_too_old_message_names_both_versions():
    assert _compat.too_old_message("2.10.0", "2.13.0+cpu") is None
    assert _compat.too_old_message("2.13.0+cpu", "2.13.0+cpu") is None
    msg = _compat.too_old_message("2.9.1+cpu", "2.13.0+cpu")
    assert "softdec needs torch >= 2.10, but torch 2.9.1+cpu is installed" in msg
    assert "built against torch 2.13.0+cpu" in msg
    assert "a torch of unknown version" in _compat.too_old_message("2.8.0", None)


def test_load_failure_message_names_both_versions():
    msg = _compat.load_failure_message("2.14.0", "2.13.0+cpu", ImportError("undefined symbol: _ZN3c10foo"))
    assert "failed to load with torch 2.14.0" in msg and "built against torch 2.13.0+cpu" in msg
    assert "undefined symbol: _ZN3c10foo" in msg and "--no-build-isolation" in msg


def test_check_torch_raises_import_error(monkeypatch):
    monkeypatch.setattr(_compat, "build_torch_version", lambda: "2.13.0+cpu")
    with pytest.raises(ImportError, match=r"needs torch >= 2\.10, but torch 2\.9\.0 is installed"):
        _compat.check_torch("2.9.0")
    _compat.check_torch("2.10.1")  # fine: returns


def test_build_records_its_torch():
    # the build's torch (softdec/_build_config.py, written by CMake) is reported by info()
    built = _compat.build_torch_version()
    assert built is not None, "softdec/_build_config.py missing: rebuild (make dev / pip install)"
    assert _compat.parse_version(built) >= (2, 10)
    assert softdec.info()["torch_build"] == built


def _import_softdec_with(prelude: str) -> subprocess.CompletedProcess:
    code = prelude + "\nimport softdec\n"
    env = dict(os.environ, PYTHONPATH=str(PKG_PARENT))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)


def test_import_with_an_old_torch_names_both_versions():
    r = _import_softdec_with("import torch; torch.__version__ = '2.9.0+cpu'")
    assert r.returncode != 0
    assert "ImportError: softdec needs torch >= 2.10, but torch 2.9.0+cpu is installed" in r.stderr
    assert f"built against torch {_compat.build_torch_version()}" in r.stderr


def test_extension_that_fails_to_load_names_both_versions():
    # an extension built for an incompatible torch fails in the loader (undefined symbol):
    # simulated by making `softdec._C` unimportable
    r = _import_softdec_with("import sys; sys.modules['softdec._C'] = None")
    assert r.returncode != 0
    assert f"softdec's native extension failed to load with torch {torch.__version__}" in r.stderr
    assert f"built against torch {_compat.build_torch_version()}" in r.stderr
