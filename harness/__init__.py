"""harness: fine-tuning under distribution shift (Optuna studies, MLflow tracking, shift reports)."""

import os

# Before anything imports torch (python -m harness.<tool> imports this package first): OpenMP reads its wait policy
# once, when torch loads it. PASSIVE threads sleep at barriers instead of spinning, so a study does not burn the
# cores of a shared machine, nor stall on its own descheduled threads: on 2 cores next to other jobs (load 3-5) the
# bench's bare loop took 3.8-4.8 s PASSIVE against 12-20 s with libgomp's default (harness.cores.WAIT_POLICY). An
# OMP_WAIT_POLICY the user exported wins; spawned --workers get theirs from harness.cores.worker_env.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
