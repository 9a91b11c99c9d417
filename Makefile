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

demo: $(STAMP)
	$(BIN)/python -m sparsecodec.demo
	$(BIN)/python -m fl compare --out runs/demo

test: $(TEST_STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python -m benchmarks codecs

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
