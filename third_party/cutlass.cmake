# Locates CUTLASS / CuTe headers from the nvidia-cutlass PyPI package
# (cutlass_library/source/include). Nothing is vendored.
# Sets SOFTDEC_CUTLASS_INCLUDE (empty if not found) and, when found, the
# interface target softdec::cutlass.
set(SOFTDEC_CUTLASS_INCLUDE "" CACHE PATH "CUTLASS include dir (auto-detected from nvidia-cutlass)")
if(NOT SOFTDEC_CUTLASS_INCLUDE)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import importlib.util, os; s = importlib.util.find_spec('cutlass_library'); print(os.path.join(s.submodule_search_locations[0], 'source', 'include') if s else '')"
    OUTPUT_VARIABLE _cutlass_inc OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(_cutlass_inc AND EXISTS "${_cutlass_inc}/cute/tensor.hpp")
    set(SOFTDEC_CUTLASS_INCLUDE "${_cutlass_inc}" CACHE PATH "" FORCE)
  endif()
endif()
if(SOFTDEC_CUTLASS_INCLUDE)
  message(STATUS "softdec: CUTLASS headers at ${SOFTDEC_CUTLASS_INCLUDE}")
  add_library(softdec_cutlass INTERFACE)
  target_include_directories(softdec_cutlass SYSTEM INTERFACE "${SOFTDEC_CUTLASS_INCLUDE}")
  add_library(softdec::cutlass ALIAS softdec_cutlass)
else()
  message(STATUS "softdec: CUTLASS headers not found (pip install nvidia-cutlass); CUTLASS kernels disabled")
endif()
