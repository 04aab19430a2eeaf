# Two commands set up everything on a machine that has only python3 3.11:
#   make study   runs the embedded default study (then writes the report)
#   make test    runs the test suite
#   make device-check   the GPU check of issue 26 (scripts/device_check.sh; CUDA only, else exit 2)
# uv is bootstrapped into .tools/ when missing; dependencies come from the committed uv.lock.
PY ?= python3
UV := $(shell command -v uv 2>/dev/null || echo .tools/uvenv/bin/uv)
ARGS ?=

.PHONY: study test bench report ui sync readme device-check

$(UV):
	$(PY) -m venv .tools/uvenv
	.tools/uvenv/bin/pip install --quiet "uv==0.13.8"

.venv/.synced: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen
	touch $@

sync: .venv/.synced

study: sync
	$(UV) run --frozen python -m harness.study $(ARGS)

# two test processes (pytest-xdist): the suite waits on subprocesses, servers and imports much of its time
JOBS ?= 2
test: sync
	$(UV) run --frozen python -m pytest -n $(JOBS) --dist loadgroup $(ARGS)

bench: sync
	$(UV) run --frozen python -m harness.bench $(ARGS)

ui: sync
	$(UV) run --frozen python -m harness.ui $(ARGS)

# the README's generated results blocks, written from the stored results under results/ (a study's report.json, the
# benchmark's bench.json; results/README.md says how each was made); tests/test_readme.py checks them
readme: sync
	$(UV) run --frozen python -m harness.report --markdown --json results/default.json --out README.md
	$(UV) run --frozen python -m harness.report --markdown --spread --json results/default.json --json results/default-rerun.json --json results/default-seed1.json --out README.md
	$(UV) run --frozen python -m harness.report.reproduction results/surgical_cifar10/sc-noise.json results/surgical_cifar10/sc-pixelate.json --out README.md
	$(UV) run --frozen python -m harness.sustain --markdown results/sustain.json --out README.md
	$(UV) run --frozen python -m harness.report --markdown --json results/domains_digits.json --out README.md
	$(UV) run --frozen python -m harness.report --markdown --json results/default-budgets.json --out README.md
	$(UV) run --frozen python scripts/measure_datasizes.py --readme README.md --out results/datasizes.json

device-check: sync
	scripts/device_check.sh $(ARGS)
