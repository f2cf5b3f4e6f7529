"""Release-wheel properties of the loaded extension (tools/build_wheels.sh writes softdec/BUILD.json)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

import softdec
from softdec import _C

BUILD_JSON = os.path.join(os.path.dirname(softdec.__file__), "BUILD.json")


def _glibc_versions(so):
    out = subprocess.run(["objdump", "-T", so], capture_output=True, text=True, check=True).stdout
    return sorted({tuple(int(x) for x in v.split(".")) for v in re.findall(r"GLIBC_([0-9.]+)\)", out)})


@pytest.mark.skipif(not os.path.exists(BUILD_JSON), reason="not a release wheel (tools/build_wheels.sh)")
@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump")
def test_release_wheel_needs_at_most_glibc_2_28():
    vs = _glibc_versions(_C.__file__)
    assert vs and max(vs) <= (2, 28), f"{_C.__file__} needs GLIBC_{'.'.join(map(str, max(vs)))}"


@pytest.mark.skipif(not os.path.exists(BUILD_JSON), reason="not a release wheel (tools/build_wheels.sh)")
def test_release_wheel_build_json_matches_info():
    b = json.load(open(BUILD_JSON))
    info = softdec.info()
    assert b["cpu_arch"] == info["cpu_arch"] != "native"
    assert b["cuda_archs"] == info["cuda_archs"]
