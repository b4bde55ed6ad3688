# jaxlava: `make demo` runs the main job on the embedded shapes world; `make test` runs the test suite.
# Both create .venv on first use. JAX_PLATFORMS defaults to cpu; run `make demo JAX_PLATFORMS=` on an accelerator.
VENV        ?= .venv
PY          := $(VENV)/bin/python
PYTHON      ?= python3
JAX_PLATFORMS ?= cpu
export JAX_PLATFORMS
# glibc malloc on transparent huge pages: XLA:CPU steps fault far fewer pages (jaxlava/hostenv.py); the CLIs
# restart themselves with it when it is unset, and setting it here spares them that and covers the test process
GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1
export GLIBC_TUNABLES
PYTEST_ARGS ?=
# pytest-xdist workers; a test module stays on one worker (its module fixtures are built once). 0: no workers.
# Three on 2 cores: one worker compiles (single-threaded) while the others compute (docs/decisions.md 18, 27)
PYTEST_WORKERS ?= 3

.PHONY: demo test test-fast test-long install clean-venv

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m jaxlava.demo

# the whole suite, slow tests included (CI budget: well under 20 minutes on 2 cores)
test: $(VENV)/.installed
	$(VENV)/bin/pytest -q -rfE --durations=15 -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: $(VENV)/.installed
	$(VENV)/bin/pytest -q -rfE -m "not slow and not long" -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# opt-in runs (marker `long`): the reward model's 0.9 bar (about 110 minutes on 2 cores, estimate), one seed of the
# full reproduction against the claim's three inequalities (about 45-100 minutes), vision stage 0's shape bar and the
# SFT step on the one-axis meshes (a few minutes)
test-long: $(VENV)/.installed
	$(VENV)/bin/pytest -q -rfE -s -m long $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
