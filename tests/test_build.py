"""The package itself: info(), the CLI, registered ops."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

import softdec


def test_info_fields():
    i = softdec.info()
    for k in ("version", "torch", "backends", "cuda_archs", "cpu_isa", "threads", "compiler"):
        assert k in i
    assert i["backends"][0] == "cpu"
    assert i["version"] == softdec.__version__
    assert i["torch"] == torch.__version__
    assert i["threads"] == torch.get_num_threads()
    if "cuda" in i["backends"]:
        assert "80" in i["cuda_archs"] and "90a" in i["cuda_archs"]


def test_python_m_softdec_info():
    out = subprocess.run([sys.executable, "-m", "softdec", "info"], capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out)["version"] == softdec.__version__


def registered_ops():
    return sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("softdec::"))


def test_every_registered_op_has_a_fake_kernel():
    from torch._library.simple_registry import singleton
    names = registered_ops()
    assert "softdec::philox_uniform" in names
    missing = [n for n in names if singleton.find(n).fake_impl.kernel is None]
    assert not missing, f"ops without a fake kernel: {missing}"


def test_every_registered_op_has_a_cpu_kernel():
    names = registered_ops()
    # a kernel for CPU itself, or a device-generic one (torch.library.custom_op ops such as
    # softdec::_row_seeds, which build the folded int-seed keys under torch.compile)
    missing = [n for n in names if not (torch._C._dispatch_has_kernel_for_dispatch_key(n, "CPU")
                                        or torch._C._dispatch_has_kernel_for_dispatch_key(n, "CompositeExplicitAutograd"))]
    assert not missing, f"ops without a CPU kernel: {missing}"


def readme_python_blocks(marker: str) -> list:
    """The ```python blocks of README.md between <!-- marker --> and <!-- /marker -->."""
    import os
    import re
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")
    text = open(path).read()
    m = re.search(rf"<!-- {marker} -->(.*?)<!-- /{marker} -->", text, re.S)
    assert m, f"README.md has no {marker} section"
    return re.findall(r"```python\n(.*?)```", m.group(1), re.S)


def test_readme_op_quickstart_runs():
    blocks = readme_python_blocks("softdec-ops-quickstart")
    assert len(blocks) >= 5
    scope = {}
    for code in blocks:
        exec(compile(code, "<README quickstart>", "exec"), scope)
    assert scope["st"].embeds.shape == (4, 64)
    assert scope["out"].shape == (1, 32, 128)
