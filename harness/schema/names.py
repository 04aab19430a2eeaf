"""Template names built from their parts, and the checked readers: a name no table declares is UndeclaredName."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

from harness.schema.metrics import (_SYSTEM_PREFIX, FAMILY_ACC, ID_METRICS, LABEL_PRIORS, METRICS, OOD_MEANS,
                                    PARENT_PARAM, POLICY_PARAMS, SEVERITY, SHIFT_METRICS, TRIAL_PARAMS)
from harness.schema.optuna_attrs import CLAIM_ATTRS, STUDY_SYSTEM_ATTRS, TRIAL_SYSTEM_ATTRS, TRIAL_USER_ATTRS, UNIT_ATTRS
from harness.schema.tags import INPUT_TAGS, MODEL_VERSION_TAGS, TAG_VERSION, TAGS


# ========================================================================================================== templates

def shift_key(shift: str, what: str) -> str:
    """shift/<name>/<what>: acc, ece, nll (step = severity), ce, rce (final); another `what` is UndeclaredName."""
    try:
        return SHIFT_METRICS[what].replace("{shift}", shift)
    except KeyError:
        raise UndeclaredName(f"shift/{{shift}}/{what} is not a declared metric (harness.schema.SHIFT_METRICS: "
                             f"{', '.join(SHIFT_METRICS)})") from None


def shift_parts(key: str) -> tuple[str, str] | None:
    """(shift, what) of a shift/<shift>/<what> metric name (a shift name holds no slash), None for any other name."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "shift" or not parts[1]:
        return None
    return parts[1], parts[2]


def is_severity(key: str) -> bool:
    """A per-severity curve (shift/<shift>/acc, ece, nll: SEVERITY), not a final value."""
    return any(p.match(key) for p in _SEVERITY_PATTERNS)


def family_key(family: str) -> str:
    """ood_acc/<family>: the mean test-shift accuracy of one shift family."""
    return FAMILY_ACC.replace("{family}", family)


def id_key(what: str) -> str:
    """id_<what> of the clean test split (acc, nll, ece, brier)."""
    return _declared_of(ID_METRICS, what, "id_{what}")


def ood_mean(what: str) -> str:
    """ood_<what>_mean of the test shifts (ece, nll)."""
    return _declared_of(OOD_MEANS, what, "ood_{what}_mean")


def label_prior(which: str) -> str:
    """label_shift/prior_<which> (true, bbse): a class prior, step = class index."""
    return _declared_of(LABEL_PRIORS, which, "label_shift/prior_{which}")


def version_tag(package: str) -> str:
    """harness.version.<package>."""
    return TAG_VERSION.replace("{package}", package)


def version_package(tag: str) -> str | None:
    """The package of a harness.version.<package> tag, None for any other tag."""
    prefix = TAG_VERSION.replace("{package}", "")
    return tag[len(prefix):] if tag.startswith(prefix) else None


def is_system(key: str) -> bool:
    """A system metric (system/*: MLflow's sampled CPU, memory and GPU series), not a result."""
    return key.startswith(_SYSTEM_PREFIX)


def _declared_of(table: dict, key: str, template: str) -> str:
    try:
        return table[key]
    except KeyError:
        raise UndeclaredName(f"{template} for {key!r} is not a declared metric (declared: {', '.join(table)})") \
            from None


# ====================================================================================================== declarations

def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.sub(r"\\\{[a-z]+\\\}", "[^/]+", re.escape(template)) + "$")


_METRIC_PATTERNS = [_pattern(k) for k in METRICS]
_TAG_PATTERNS = [_pattern(k) for k in TAGS]
_SEVERITY_PATTERNS = [_pattern(k) for k in SEVERITY]


def is_metric(key: str) -> bool:
    return any(p.match(key) for p in _METRIC_PATTERNS)


def is_tag(key: str) -> bool:
    return any(p.match(key) for p in _TAG_PATTERNS)


def is_param(key: str) -> bool:
    return key in TRIAL_PARAMS or key in POLICY_PARAMS or bool(PARENT_PARAM.match(key))


def is_attr(key: str) -> bool:
    """An Optuna attr the harness keeps: a trial's system or user attr, a unit's, a claim's, or a final metric."""
    return (key in TRIAL_SYSTEM_ATTRS or key in TRIAL_USER_ATTRS or key in UNIT_ATTRS or key in CLAIM_ATTRS
            or key in STUDY_SYSTEM_ATTRS or is_metric(key))


def is_input_tag(key: str) -> bool:
    return key in INPUT_TAGS


def is_version_tag(key: str) -> bool:
    """A tag of a registered model version: MODEL_VERSION_TAGS, or a final metric ({metric})."""
    return key in MODEL_VERSION_TAGS or is_metric(key)


KINDS = {"metric": is_metric, "param": is_param, "tag": is_tag, "attr": is_attr, "input tag": is_input_tag,
         "model version tag": is_version_tag}


class UndeclaredName(Exception):
    """A name read or built that harness.schema does not declare: a misspelling, or a name to declare first. Not a
    LookupError, so that no reader's `except KeyError` turns it into a missing value."""


@functools.lru_cache(maxsize=4096)
def declared(kind: str, name: str) -> str:
    """`name` itself when it is a declared name of this kind (metric, param, tag, attr, input tag, model version tag);
    else raises UndeclaredName."""
    if not KINDS[kind](name):
        raise UndeclaredName(f"{name!r} is not a declared {kind} (harness.schema): misspelled, or declare it there")
    return name


def metric(metrics: Mapping, name: str, default=None):
    """metrics[name], or default when the run did not log it; raises UndeclaredName for a name schema does not
    declare (where `.get` would return None for a misspelling)."""
    return metrics.get(declared("metric", name), default)


def param(params: Mapping, name: str, default=None):
    """params[name] or default (a trial's, a policy run's, or a parent's <section>.<key>); UndeclaredName otherwise."""
    return params.get(declared("param", name), default)


def tag(tags: Mapping, name: str, default=None):
    """tags[name] or default; UndeclaredName for a tag schema does not declare."""
    return tags.get(declared("tag", name), default)


def attr(attrs: Mapping, name: str, default=None):
    """An Optuna trial's or study's attr, or default; UndeclaredName for an attr schema does not declare."""
    return attrs.get(declared("attr", name), default)
