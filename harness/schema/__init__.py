"""What harness writes to MLflow and Optuna: every metric, param, tag and attr name, when it is logged, what it means.

The contract: every name the harness writes or reads is a constant (or a template function) of this package, declared
once, with its meaning in one table of its modules: metrics.py (EPOCH, FINAL, SEVERITY, ..., the params), tags.py (TAGS,
INPUT_TAGS, MODEL_VERSION_TAGS), optuna_attrs.py (the Optuna attrs); names.py holds the templates and the readers. Writers (tracking, runs, trial, launch, closing, sustain, records, champion, bookkeeping, units) and readers (results,
numbers, sustain_numbers, the report) import the constants, so a misspelled name is an AttributeError at import or
first use; readers that take a name from elsewhere go through tag() / metric() / param() / attr(), which raise
UndeclaredName for a name no table declares (where a bare `.get` would return None). tests/test_schema.py fails on a
`"harness.` string, a declared metric name or an Optuna attr name written as a literal in harness/ outside this package,
and runs a study and a sustain study to check that every name in the store is declared here.
A name with `{...}` is a template: `shift/{shift}/acc` stands for shift/gaussian_noise/acc and so on; its function
(shift_key, family_key, version_tag, ...) builds the instances.

When (the `step` of a metric):
  epoch     one value per training epoch, step = epoch (0-based)
  final     once at the end of the run, step 0
  severity  one value per shift severity, step = severity (1-5; a set or domain, e.g. label shift: step 1)
  class     one value per class, step = class index
  period    one value per stream period, step = period (0-based), harness.sustain only
"""

from __future__ import annotations

# the tables live in one module each (metrics and params, tags, Optuna attrs); names.py builds and checks names
from harness.schema.metrics import *  # noqa: F401,F403
from harness.schema.metrics import _SYSTEM_PREFIX  # noqa: F401
from harness.schema.names import *  # noqa: F401,F403
from harness.schema.optuna_attrs import *  # noqa: F401,F403
from harness.schema.tags import *  # noqa: F401,F403
