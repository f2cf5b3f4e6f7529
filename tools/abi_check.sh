#!/usr/bin/env bash
# make abi-check: compile every csrc source against the headers of each supported torch
# release (objects only, nothing linked), so a header that moved or a macro that is newer
# than torch 2.10 fails here rather than on a user's machine.
#
# For each version: torch's include/ tree is taken from the registry's Linux x86_64 cp311
# wheel (pip download, only torch/include/* extracted, the wheel deleted) and cached outside
# the repository in $SOFTDEC_ABI_CACHE/torch-<version>/include. Then one check-only CMake
# build (SOFTDEC_CHECK_ONLY, SOFTDEC_TORCH_INCLUDE) per version in build/abi/torch-<version>:
#   cpu   csrc/registration.cpp, csrc/cpu/*.cpp (softdec_cpu_objects) and csrc/module.cpp
#         (softdec_module_objects), with the flags of the real build;
#   cuda  csrc/cuda/*.cu for one architecture (softdec_cuda_objects, CUTLASS from nvidia-cutlass).
# Prints a version x {cpu, cuda} table with the times; exits 1 on any failure (a download
# failure included).
#
# Environment:
#   PYTHON               interpreter with pybind11, nvidia-cutlass, cmake, ninja (default python3)
#   JOBS                 parallel compiles (default: nproc)
#   ABI_VERSIONS         torch versions for the CPU sources (default 2.10.0 2.11.0 2.12.0 2.13.0)
#   ABI_CUDA_VERSIONS    torch versions for the .cu files (default: ABI_VERSIONS; "" skips CUDA)
#   ABI_CUDA_ARCH        one CMAKE_CUDA_ARCHITECTURES entry (default 90a)
#   SOFTDEC_ABI_CACHE    header cache (default ${XDG_CACHE_HOME:-$HOME/.cache}/softdec-abi)
#   SOFTDEC_ABI_WHEELS   keep downloaded wheels in this folder (pip reuses them) instead of
#                        deleting them
#   ABI_PIP_ARGS         extra `pip download` arguments (e.g. --index-url ...)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc)}
ABI_VERSIONS=${ABI_VERSIONS:-2.10.0 2.11.0 2.12.0 2.13.0}
ABI_CUDA_VERSIONS=${ABI_CUDA_VERSIONS-$ABI_VERSIONS}
ABI_CUDA_ARCH=${ABI_CUDA_ARCH:-90a}
CACHE=${SOFTDEC_ABI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/softdec-abi}
BUILD=build/abi

now() { date +%s; }
secs() { echo $(($2 - $1)); }

# torch/include of one release into $CACHE/torch-$1/include; prints how it was obtained.
fetch_headers() {
  local v=$1 dest=$CACHE/torch-$1 t0 dl keep=1 whl
  if [[ -f $dest/include/torch/csrc/stable/library.h ]]; then
    echo "cached"
    return
  fi
  t0=$(now)
  mkdir -p "$CACHE"
  if [[ -n ${SOFTDEC_ABI_WHEELS:-} ]]; then
    dl=$SOFTDEC_ABI_WHEELS
    mkdir -p "$dl"
  else
    dl=$(mktemp -d "$CACHE/download.XXXXXX")
    keep=0
  fi
  # The Linux x86_64 CPython 3.11 wheel whatever the interpreter running this. pip's own
  # configuration (index, find-links, constraints) applies; on a machine whose find-links holds
  # torch==X+cpu pip takes that one, which has the same torch/csrc/stable and aoti_torch headers.
  # shellcheck disable=SC2086
  if ! "$PYTHON" -m pip download -q "torch==$v" --no-deps --only-binary=:all: \
      --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311 \
      -d "$dl" ${ABI_PIP_ARGS:-} >&2; then
    echo "abi-check: pip download torch==$v failed" >&2
    [[ $keep == 1 ]] || rm -rf "$dl"
    return 1
  fi
  whl=$(ls -t "$dl"/torch-"$v"[-+]*cp311*manylinux*x86_64.whl 2>/dev/null | head -n 1)
  if [[ -z $whl ]]; then
    echo "abi-check: no torch-$v wheel in $dl after pip download" >&2
    [[ $keep == 1 ]] || rm -rf "$dl"
    return 1
  fi
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  if command -v unzip >/dev/null 2>&1; then
    unzip -q "$whl" 'torch/include/*' -d "$dest.tmp"
  else
    "$PYTHON" - "$whl" "$dest.tmp" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("torch/include/")])
EOF
  fi
  if [[ ! -f $dest.tmp/torch/include/torch/csrc/stable/library.h ]]; then
    echo "abi-check: $whl has no torch/include/torch/csrc/stable/library.h" >&2
    rm -rf "$dest.tmp"
    [[ $keep == 1 ]] || rm -rf "$dl"
    return 1
  fi
  rm -rf "$dest" && mkdir -p "$dest"
  mv "$dest.tmp/torch/include" "$dest/include" && rm -rf "$dest.tmp"
  basename "$whl" > "$dest/wheel.txt"
  [[ $keep == 1 ]] || rm -rf "$dl"
  echo "downloaded $(secs "$t0" "$(now)")s"
}

# One check-only build; $1 version, $2 cpu|cuda. Prints "ok <wall>s/<cpu>s" or "FAIL ...": the
# wall time, and the compilers' CPU time (user + sys), which does not depend on other load.
compile() {
  local v=$1 kind=$2 dir=$BUILD/torch-$1 targets rc=0 t TIMEFORMAT='%R %U %S'
  if [[ $kind == cpu ]]; then
    # the glue objects and every CPU level's kernel objects (softdec_cpu_<level>: an OBJECT
    # library's add_dependencies only orders it under Ninja, it does not build its objects)
    targets="softdec_cpu_objects softdec_module_objects $(ninja -C "$dir" -t targets all |
      sed -n 's/^\(softdec_cpu_[a-z0-9_]*\): phony$/\1/p' | grep -v '^softdec_cpu_objects$' | tr '\n' ' ')"
  else targets="softdec_cuda_objects"; fi
  # shellcheck disable=SC2086
  t=$( { time cmake --build "$dir" -j "$JOBS" --target $targets >"$dir/$kind.log" 2>&1; } 2>&1 ) || rc=$?
  t=$(awk '{printf "%.0fs/%.0fs", $1, $2 + $3}' <<<"${t##*$'\n'}")
  if [[ $rc == 0 ]]; then
    echo "ok $t"
  else
    echo "FAIL $t"
    { echo "---- torch $v, $kind: $dir/$kind.log"; grep -E -A3 'error' "$dir/$kind.log" | head -n 60; } >&2
  fi
}

t_all=$(now)
declare -A HDR CPU CUDA
failed=0
for v in $ABI_VERSIONS $ABI_CUDA_VERSIONS; do
  [[ -n ${HDR[$v]:-} ]] && continue
  echo "== torch $v: headers" >&2
  if ! HDR[$v]=$(fetch_headers "$v"); then HDR[$v]="FAIL"; failed=1; fi
done

for v in $(echo $ABI_VERSIONS $ABI_CUDA_VERSIONS | tr ' ' '\n' | awk '!seen[$0]++'); do
  CPU[$v]="-"; CUDA[$v]="-"
  want_cuda=OFF
  [[ " $ABI_CUDA_VERSIONS " == *" $v "* ]] && want_cuda=ON
  if [[ ${HDR[$v]} == FAIL ]]; then
    [[ " $ABI_VERSIONS " == *" $v "* ]] && CPU[$v]="FAIL (no headers)"
    [[ $want_cuda == ON ]] && CUDA[$v]="FAIL (no headers)"
    continue
  fi
  dir=$BUILD/torch-$v
  mkdir -p "$dir"
  echo "== torch $v: configure (CUDA $want_cuda)" >&2
  if ! cmake -S . -B "$dir" -G Ninja -DSOFTDEC_CHECK_ONLY=ON -DSOFTDEC_CUDA=$want_cuda \
      -DSOFTDEC_TORCH_INCLUDE="$CACHE/torch-$v/include" -DSOFTDEC_CUDA_ARCHS="$ABI_CUDA_ARCH" \
      -DPython_EXECUTABLE="$(command -v "$PYTHON")" >"$dir/configure.log" 2>&1; then
    cat "$dir/configure.log" >&2
    CPU[$v]="FAIL (configure)"; CUDA[$v]="FAIL (configure)"; failed=1
    continue
  fi
  if [[ " $ABI_VERSIONS " == *" $v "* ]]; then
    echo "== torch $v: cpu sources" >&2
    CPU[$v]=$(compile "$v" cpu)
  fi
  if [[ $want_cuda == ON ]]; then
    echo "== torch $v: cuda sources (sm_$ABI_CUDA_ARCH)" >&2
    CUDA[$v]=$(compile "$v" cuda)
  fi
  [[ ${CPU[$v]} == FAIL* || ${CUDA[$v]} == FAIL* ]] && failed=1
done

echo
echo "(times: wall / compiler CPU time)"
printf '%-8s | %-16s | %-16s | %-16s\n' torch headers cpu "cuda sm_$ABI_CUDA_ARCH"
printf '%-8s-|-%-16s-|-%-16s-|-%-16s\n' -------- ---------------- ---------------- ----------------
for v in $(echo $ABI_VERSIONS $ABI_CUDA_VERSIONS | tr ' ' '\n' | awk '!seen[$0]++'); do
  printf '%-8s | %-16s | %-16s | %-16s\n' "$v" "${HDR[$v]}" "${CPU[$v]}" "${CUDA[$v]}"
done
echo "abi-check: $(secs "$t_all" "$(now)")s in all, JOBS=$JOBS, headers in $CACHE"
if [[ $failed != 0 ]]; then
  echo "abi-check FAILED (logs in $BUILD/torch-*/)" >&2
  exit 1
fi
