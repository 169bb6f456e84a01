# Set-up, tests and benchmarks. Every target creates .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# Build requirements for the editable install (the same ranges as pyproject.toml).
BUILD_REQS := "scikit-build-core>=0.10,<2" "nanobind>=2.7,!=2.6.0,<4"

.PHONY: all demo test bench lint clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# An editable install that rebuilds the C++ patcher on import when a source changed;
# warnings are errors in this build.
$(INSTALLED): $(PY) pyproject.toml CMakeLists.txt
	$(PY) -m pip install --quiet torch==2.13.0 $(BUILD_REQS)
	$(PY) -m pip install --quiet --no-build-isolation \
		-Ceditable.rebuild=true -Ceditable.verbose=false -Cbuild-dir=build/editable \
		-Ccmake.define.ELR_WERROR=ON \
		-e ".[export,test]"
	touch $@

test: $(INSTALLED)
	$(PY) -m pytest -q tests

lint: $(INSTALLED)
	$(VENV)/bin/ruff check runtime export tools tests benchmarks

bench: $(INSTALLED)
	$(PY) benchmarks/run.py

demo: $(INSTALLED)
	$(PY) -m elr_export.demo

clean:
	rm -rf build dist .pytest_cache
