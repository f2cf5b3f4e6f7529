#!/bin/sh
# CMAKE_CUDA_COMPILER_LAUNCHER of the CUDA compile check: runs one nvcc compile
# (built with -Xptxas=-v) and keeps its ptxas report beside the object as
# <object>.ptxas.log, for tools/check_launch_resources.py. The report is
# rewritten whenever the object is rebuilt, so incremental builds stay checkable.
# Everything else nvcc prints (warnings, errors) still goes to stderr.
out=""
prev=""
for a in "$@"; do
  [ "$prev" = "-o" ] && out="$a"
  prev="$a"
done
[ -n "$out" ] || exec "$@"
"$@" 2> "$out.ptxas.tmp"
rc=$?
grep -v -e '^ptxas info *:' -e '^    [0-9]* bytes stack frame' "$out.ptxas.tmp" >&2
mv -f "$out.ptxas.tmp" "$out.ptxas.log"
exit $rc
