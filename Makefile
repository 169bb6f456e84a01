# Set-up, tests and benchmarks. Every target creates .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# Build requirements for the editable install (the same ranges as pyproject.toml).
BUILD_REQS := "scikit-build-core>=0.10,<2" "nanobind>=2.7,!=2.6.0,<4"

.PHONY: all demo test bench lint stubs clean

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

# Builds and tests the runtime on 64-bit ARM under qemu-user emulation (Cortex-A72 and
# Cortex-A76) against this host; needs root, so it is not part of `make test`.
test-arm64: $(INSTALLED)
	ELR_ARM64_PYTHON=$(abspath $(PY)) tools/arm64/test-arm64.sh

lint: $(INSTALLED)
	$(VENV)/bin/ruff check runtime export tools tests benchmarks

# The runtime benchmark also needs the bench extra of pyproject.toml (the same ranges):
# onnxruntime-genai and transformers for its peer model.
bench: $(INSTALLED)
	$(PY) -m pip install --quiet "onnxruntime-genai>=0.18" "transformers>=4.50"
	$(PY) benchmarks/run.py

# Regenerate the type stub of the compiled patcher after changing cpp/bindings.cpp.
stubs: $(INSTALLED)
	$(PY) -m nanobind.stubgen -q -P -m elr_runtime._patcher -o runtime/elr_runtime/_patcher.pyi
	$(VENV)/bin/ruff check -q --fix runtime/elr_runtime/_patcher.pyi
	$(VENV)/bin/ruff format -q runtime/elr_runtime/_patcher.pyi

# The demo: export the committed default model to an int8 bundle, measuring int8 against fp32
# on the held-out last 10 % of tinyshakespeare (the part the model never trained on), then
# stream a continuation of a real prompt with elr-run. The TorchScript exporter is used
# because it exports this model about 4x faster than the dynamo exporter, with the same parity.
SHARED ?= ../shared
DEMO_TEXT := $(SHARED)/data/text/tinyshakespeare.txt
DEMO_BUNDLE := build/demo/bundle

demo: $(INSTALLED)
	@test -f $(DEMO_TEXT) || { echo "demo: $(DEMO_TEXT) not found: check out the shared data beside this repository or set SHARED=DIR" >&2; exit 1; }
	@mkdir -p build/demo
	tail -c 111539 $(DEMO_TEXT) > build/demo/heldout.txt
	$(VENV)/bin/elr-export models/default --out $(DEMO_BUNDLE) --precision int8 \
		--latent-steps 4 --exporter torchscript --eval-text build/demo/heldout.txt
	printf 'KING HENRY:\nWhat news from France? Speak, and be brief.\n\n' | \
		$(VENV)/bin/elr-run $(DEMO_BUNDLE) --max-bytes 400 --temperature 0.8 --top-p 0.95 \
			--seed 1 --stats

clean:
	rm -rf build dist .pytest_cache
