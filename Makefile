# Two entry points for a fresh machine:
#   make demo   install everything, then run the main job (TempFlow-GRPO on the shapes demo)
#   make test   install everything, then run the whole test suite
# A virtual environment (.venv) is created unless one is active; torch is installed only when
# missing (TORCH_SPEC, default torch==2.13.0; pass e.g. TORCH_SPEC="torch --index-url ..." to choose a build).

SHELL := /bin/bash
TORCH_SPEC ?= torch==2.13.0
ifdef VIRTUAL_ENV
PY := $(VIRTUAL_ENV)/bin/python
else
PY := $(CURDIR)/.venv/bin/python
endif
PYTEST_ARGS ?=
# test files run in parallel worker processes, one torch thread each (tests/conftest.py);
# TEST_WORKERS=0 runs them in this process
TEST_WORKERS ?= 2

.PHONY: install demo test test-fast

install:
	@if [ -z "$$VIRTUAL_ENV" ] && [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(TORCH_SPEC)
	@$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"

# the main job: TempFlow-GRPO on the shapes world, then the report page. Training ends with the
# paired comparison of the held-out set before and after (16 images per prompt, same noise)
demo: install
	$(PY) -m tempflow sample --prompt "two red circles" --num 8 --out out/demo/two-red-circles.png
	$(PY) -m tempflow verify out/demo/two-red-circles.png
	$(PY) -m tempflow train --overwrite
	$(PY) -m tempflow report runs/shapes-tempflow --out out/demo/report.html

test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# quick local loop: everything except the slow end-to-end tests
test-fast: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)
