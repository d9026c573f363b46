# The two commands a newcomer runs (see README):
#   make serve   set up a serving environment and serve the shipped models on :8000
#   make test    set up a full environment (training + serving + tests) and run the test suite
# Everything installs into .venv; re-running skips what is already installed.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# A CPU build of torch. On Linux, PyPI's torch is the CUDA build (GBs of nvidia wheels): the CPU build comes from
# PyTorch's CPU index, torch alone (its dependencies come from PyPI with the project's install; a machine
# that cannot reach that index but has the wheel on disk goes on after pip's retries for torch). macOS's
# PyPI wheel is the CPU build. TORCH_SPEC= lets pip choose (e.g. a CUDA build on a GPU host).
ifeq ($(shell uname -s),Linux)
TORCH_SPEC ?= torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
else
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
endif
# serve (CPU onnxruntime) or serve-gpu (onnxruntime-gpu). Never both in one environment.
SERVE_EXTRA ?= serve
PYTEST_ARGS ?=
# Test processes (pytest-xdist; each test file runs whole in one of them). 2 fits the 2-core CI box: the
# suite's subprocesses, servers and start-ups overlap (7 min -> 4.6 min there). TEST_JOBS=0: one process.
TEST_JOBS ?= 2

.PHONY: serve test setup-serve setup-dev models gallery clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.serve-installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e ".[$(SERVE_EXTRA)]"
	touch $@

$(VENV)/.dev-installed: $(BIN)/python pyproject.toml
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--no-deps --extra-index-url $(TORCH_INDEX)))
	$(BIN)/python -m pip install -q -e ".[train,$(SERVE_EXTRA),test]"
	touch $@ $(VENV)/.serve-installed

setup-serve: $(VENV)/.serve-installed
setup-dev: $(VENV)/.dev-installed

serve: setup-serve
	$(BIN)/dermagan serve

test: setup-dev
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile $(PYTEST_ARGS)

# Retrain, export and evaluate every shipped model (resumable: run it again to continue).
models: setup-dev
	$(BIN)/dermagan release --profile cpu

gallery: setup-dev
	$(BIN)/dermagan gallery

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
