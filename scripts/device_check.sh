#!/usr/bin/env bash
# The GPU check of issue 26 (harness/device_check.py says what it runs): on a machine with a CUDA device, in under
# 8 minutes, the CUDA tests, harness.bench --device cuda, packed trials (--workers 1, 2, 4) and a 224 px resnet18
# study on a generated ImageFolder; figures and the card's name in reports/device_check.md.
#   scripts/device_check.sh            the check (exit 2 at once without CUDA)
#   scripts/device_check.sh --dry-run  its study steps on the CPU at toy sizes: checks the plumbing only
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
# each step has its own time limit (harness/device_check.py LIMITS: 465 s at worst), so the report is always written
exec "$PY" -m harness.device_check "$@"
