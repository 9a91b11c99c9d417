# Two entry points: `make demo` and `make test`. Each creates .venv if missing and installs
# torch==2.13.0 FIRST: it is the local CPU wheel; any other torch spec downloads GBs of CUDA wheels.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test install bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[fl,plot,test]"
	touch $(STAMP)

# the tests also cover fl on Flower (extra [flower]: flwr + Ray), which the demo does not need
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[fl,plot,test,flower]"
	touch $(TEST_STAMP)

install: $(STAMP)

# torch (ATen, oneDNN, MKL) and numpy pick SIMD kernels by CPU, and AVX2 and AVX-512 kernels
# round floats differently (FedAvg after 2 demo rounds: 0.9275 with AVX-512, 0.9245 with
# ATen pinned to AVX2, one machine: python tools/simd_dispatch.py): pinning all to AVX2 makes machines with and without
# AVX-512 run the same kernels, so the README's demo table does not depend on that
PIN_SIMD := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
	NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR"

demo: $(STAMP)
	$(PIN_SIMD) $(BIN)/python -m sparsecodec.demo
	$(PIN_SIMD) $(BIN)/python -m fl compare --out runs/demo

# mypy first: the package is typed (py.typed) and must stay clean (mypy is in the [test] extra)
test: $(TEST_STAMP)
	$(BIN)/python -m mypy sparsecodec
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python -m benchmarks codecs

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
