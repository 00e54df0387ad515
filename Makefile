# Two commands: `make demo` and `make test`. Each builds .venv with Python 3.12 when it is missing
# or older than the dependency list, then runs.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# python3.12 on PATH, else a pyenv-installed 3.12 (pyenv's shim refuses when 3.12 is not selected).
PYTHON312 ?= $(shell for p in python3.12 $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12*/bin/python3.12 2>/dev/null | sort -V -r); do \
  if $$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then echo $$p; break; fi; done)

.PHONY: test demo venv clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@if [ -z "$(PYTHON312)" ]; then echo "error: python3.12 not found (install it, or pass PYTHON312=/path/to/python3.12)" >&2; exit 1; fi
	@if [ ! -x $(PY) ]; then echo "creating $(VENV) with $(PYTHON312)"; $(PYTHON312) -m venv $(VENV); fi
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[torch,beam,test]'
	@touch $(STAMP)

# Tests that use PyTorch run in their own process: torch.optim imports triton, whose LLVM crashes
# (segfault) when TensorFlow's is already loaded, as it is once a tf.data test has run.
TORCH_TESTS := tests/test_import_torch.py tests/test_parity.py tests/test_torch_reference.py \
  tests/test_benchmark_torch.py

test: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) -m pytest -q $(TORCH_TESTS)
	JAX_PLATFORMS=cpu $(PY) -m pytest -q --durations=15 -n 2 --dist loadfile --no-loadscope-reorder tests \
	  $(addprefix --ignore=,$(TORCH_TESTS))

# The main job on the embedded default: synthetic data -> train -> evaluate -> metrics table.
demo: $(STAMP)
	$(PY) scripts/demo.py --workdir=runs/demo

clean:
	rm -rf $(VENV) runs .pytest_cache
