# Two commands set up everything on a machine that has only python3 3.11:
#   make study   runs the embedded default study (then writes the report)
#   make test    runs the test suite
#   make device-check   the GPU check of issue 26 (scripts/device_check.sh; CUDA only, else exit 2)
# uv is bootstrapped into .tools/ when missing; dependencies come from the committed uv.lock.
PY ?= python3
UV := $(shell command -v uv 2>/dev/null || echo .tools/uvenv/bin/uv)
ARGS ?=

.PHONY: study test bench report ui sync device-check

$(UV):
	$(PY) -m venv .tools/uvenv
	.tools/uvenv/bin/pip install --quiet "uv==0.13.8"

.venv/.synced: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen
	touch $@

sync: .venv/.synced

study: sync
	$(UV) run --frozen python -m harness.study $(ARGS)

test: sync
	$(UV) run --frozen python -m pytest $(ARGS)

bench: sync
	$(UV) run --frozen python -m harness.bench $(ARGS)

ui: sync
	$(UV) run --frozen python -m harness.ui $(ARGS)

device-check: sync
	scripts/device_check.sh $(ARGS)
