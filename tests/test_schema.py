"""Schema: every metric, param and tag name a real study writes to MLflow is declared in harness.schema, no other
harness module writes a name as a literal, a read of an undeclared name fails, and the `python -m harness.study` and
`python -m harness.ui` / `harness.bench` entry points run as real subprocesses."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harness import schema

from conftest import mlflow_client


def _cli(module: str, *args, cwd, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"harness.{module}", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def undeclared(client: MlflowClient, exp_id: str) -> dict[str, set[str]]:
    """Every name in the experiment's runs that the schema does not declare, by kind."""
    out = {"metric": set(), "param": set(), "tag": set()}
    for run in client.search_runs([exp_id], max_results=1000):
        out["metric"] |= {k for k in run.data.metrics if not schema.is_metric(k)}
        out["param"] |= {k for k in run.data.params if not schema.is_param(k)}
        out["tag"] |= {k for k in run.data.tags if not schema.is_tag(k) and not k.startswith("mlflow.")}
    return out


def undeclared_records(client: MlflowClient, exp_id: str, model: str) -> dict[str, set[str]]:
    """The names on the runs' dataset inputs and on the registered model, its versions and aliases that the schema
    does not declare (INPUT_TAGS, MODEL_VERSION_TAGS, REGISTERED_MODEL_TAGS, REGISTERED_MODEL_ALIASES)."""
    out = {"input tag": set(), "model version tag": set(), "registered model tag": set(), "alias": set()}
    for run in client.search_runs([exp_id], max_results=1000):
        for d in client.get_run(run.info.run_id).inputs.dataset_inputs:
            out["input tag"] |= {t.key for t in d.tags if not schema.is_input_tag(t.key)}
    registered = client.get_registered_model(model)
    out["registered model tag"] = set(registered.tags) - set(schema.REGISTERED_MODEL_TAGS)
    out["alias"] = set(registered.aliases) - set(schema.REGISTERED_MODEL_ALIASES)
    for v in client.search_model_versions(f"name = '{model}'"):
        out["model version tag"] |= {k for k in v.tags if not schema.is_version_tag(k)}
    return out


def test_templates_match_their_instances_only():
    """shift/{shift}/acc matches one shift name (no slash), not a deeper path; plain names match themselves."""
    assert schema.is_metric("shift/gaussian_noise/acc") and schema.is_metric("ood_acc/noise")
    assert not schema.is_metric("shift/a/b/acc") and not schema.is_metric("shift/gaussian_noise/f1")
    assert schema.is_metric("id_acc") and not schema.is_metric("id_accuracy")
    assert schema.is_tag("harness.version.torch") and not schema.is_tag("harness.made_up")
    assert schema.is_param("train.epochs") and schema.is_param("lr") and not schema.is_param("Train Epochs")
    assert schema.shift_key("fog", "ce") == "shift/fog/ce" and schema.is_metric(schema.shift_key("fog", "ce"))


@pytest.mark.slow
def test_a_study_run_as_a_subprocess_writes_only_declared_names(tiny_config, workdir):
    """`python -m harness.study` in a subprocess (module-level code and __main__ included) exits 0 and prints where
    to look; every metric, param and tag on its parent and trial runs (label shift, corruption errors, per-class
    priors included) is declared in harness.schema."""
    done = _cli("study", "--config", str(tiny_config), "--no-report", "--set", "study.keep_weights=8", "--set",
                "study.wise_ft=true", cwd=workdir)  # the soups' and WiSE-FT's names too (off in the tiny config)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "python -m harness.report --study-name tiny" in done.stdout
    client = mlflow_client(workdir)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    written = {k for r in runs for k in r.data.metrics}
    # the study wrote the name families the schema's templates stand for
    assert {"shift/gaussian_noise/acc", "ood_acc/noise", "label_shift/prior_bbse", "train_loss", "id_acc",
            schema.ENSEMBLES_SECONDS} <= written
    assert any(r.data.tags.get(schema.TAG_ROLE) == schema.ROLE_SOUP for r in runs)  # soups wrote their tags
    assert undeclared(client, exp.experiment_id) == {"metric": set(), "param": set(), "tag": set()}
    assert set(exp.tags) <= set(schema.TAGS)
    # the MLflow-native records: dataset inputs, the registered model (champion), its versions and aliases
    assert undeclared_records(client, exp.experiment_id, "tiny") == {
        "input tag": set(), "model version tag": set(), "registered model tag": set(), "alias": set()}


# `python -m harness.<module> --help` for several modules in one fresh interpreter: each runs as __main__ through
# runpy, as `python -m` does (sys.argv[0] the module's file), its exit code and output captured apart
_HELP_ALL = """
import contextlib, io, json, runpy, sys
out = {}
for module in sys.argv[1:]:
    sys.argv, stdout, stderr, code = ["-m", "--help"], io.StringIO(), io.StringIO(), None
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            runpy.run_module(f"harness.{module}", run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code
    out[module] = [code, stdout.getvalue(), stderr.getvalue()]
print(json.dumps(out))
"""


def test_ui_and_bench_run_as_subprocesses(workdir):
    """The other entry points import and parse their arguments as `python -m`: --help exits 0, and bad input to the
    UI (no store here) exits 2 naming the flag. The UI runs in its own subprocess; the four heavy modules (torch,
    MLflow: seconds of imports each) share one, each run as __main__ by runpy as `python -m` runs it."""
    import json

    done = _cli("ui", "--help", cwd=workdir, timeout=120)
    assert done.returncode == 0 and "python -m harness.ui" in done.stdout, done.stderr[-2000:]
    heavy = ("bench", "study", "report", "sustain")
    done = subprocess.run([sys.executable, "-c", _HELP_ALL, *heavy], cwd=workdir, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert list(out) == list(heavy)
    for module, (code, stdout, stderr) in out.items():
        assert code == 0 and f"python -m harness.{module}" in stdout, (module, code, stderr[-2000:])
    # the sustain command's description comes from its module docstring (was tests/test_sustain_cli.py's own subprocess)
    assert "replay a drifting data stream under re-fine-tuning policies" in out["sustain"][1]
    done = _cli("ui", cwd=workdir, timeout=120)
    assert done.returncode == 2 and "--tracking-uri" in done.stderr and "no MLflow store" in done.stderr


@pytest.mark.slow
def test_strategies_target_domain_and_files_write_only_declared_names(tiny_config, workdir, capsys):
    """A study searching surgical and gradual fine-tuning on a shifted target domain, with a CIFAR-10-C-layout
    folder as extra test shifts: the strategy params, the clean OOD set and the c10c.* sets are all declared names.
    Run in this process (harness.study.main): the entry point as a subprocess is the test above's."""
    from harness import study

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_suite import write_c10c

    write_c10c(workdir / "c10c", per=10)
    assert study.main(["--config", str(tiny_config), "--no-report", "--n-trials", "5",
                       "--set", 'search.strategy=["surgical", "gradual"]', "--set", 'data.target_shift="impulse_noise:5"',
                       "--set", 'shifts.files="c10c"']) == 0, capsys.readouterr().err[-3000:]
    client = mlflow_client(workdir)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert {r.data.params.get("strategy") for r in runs if r.data.params.get("lr")} >= {"prefix"}
    assert any(r.data.params.get("strategy") in ("surgical", "gradual") for r in runs)
    written = {k for r in runs for k in r.data.metrics}
    assert {"shift/clean/acc", "target/clean_acc", "label_shift/acc", "files/acc_mean", "shift/c10c.frost/acc",
            "shift/c10c.frost/ce"} <= written and "ood_acc/clean" not in written  # the clean set: its own name
    assert undeclared(client, exp.experiment_id) == {"metric": set(), "param": set(), "tag": set()}
    # the report names the target domain (provenance, report.json) from the tag the study wrote
    from harness import numbers, results
    from harness.report import study_page

    parent = next(r for r in runs if r.data.tags.get("harness.role") == "study")
    assert parent.data.tags["harness.target_domain"] == "impulse_noise:5"
    s = numbers.summarize(results.load("tiny", f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}",
                                       f"sqlite:///{workdir / 'mlruns' / 'optuna.db'}"))
    assert s["provenance"]["target_domain"] == "impulse_noise:5"
    assert dict(study_page._provenance_fields(s))["target domain"].startswith("impulse_noise:5: the target train")
    capsys.readouterr()
    assert study.main(["--config", str(tiny_config), "--set", 'data.target_shift="gaussian_noise:5"']) == 2
    err = capsys.readouterr().err
    assert "data.target_shift" in err and "cannot also be a test shift" in err


# ----------------------------------------------------------------------- the schema is the contract (issue 21 item 3)
# Every name the harness writes or reads comes from harness.schema: a name written as a literal anywhere else in
# harness/ fails here. The scan reads string constants through `ast`, so comments and docstrings never count.

HARNESS = Path(__file__).resolve().parent.parent / "harness"

# "lr" is a metric (EPOCH), a trial param (strategies.PARAMS) and a policy param, and also the optimizer's param-group
# key and config keys (train.lr, stream.lr): the literal alone cannot say which, so the scan leaves it out.
AMBIGUOUS_METRICS = {schema.LR}

# A literal equal to a metric name that means something else in that file (file, literal): reason.
OTHER_MEANINGS = {
    ("config/sections.py", schema.VAL_ACC): "study.objective's values name the metric they select on; config is the "
                                            "top layer (it may not import schema): "
                                            "test_config_objectives_are_declared_metrics",
    ("config/sections.py", schema.OOD_VAL_ACC): "the same",
    ("config/checks.py", schema.OOD_VAL_ACC): "the same (the objectives that need a selection shift)",
    ("pretrain.py", schema.VAL_ACC): "a key of the pretraining cache's history (the parent logs it as "
                                     "pretrain_source_val_acc)",
    ("probe.py", schema.TRAIN_LOSS): "the probe cache's fields (trial logs them through schema names)",
    ("probe.py", schema.VAL_ACC): "the same", ("probe.py", schema.VAL_LOSS): "the same",
    ("launch.py", schema.VAL_ACC): "a key of the pretraining cache's history (logged as pretrain_source_val_acc)",
}

OPTUNA_SETTERS = {"set_user_attr", "set_system_attr", "set_trial_system_attr", "set_trial_user_attr",
                  "set_study_system_attr", "set_study_user_attr"}


# Optuna attr names that are also keys of the harness's own dicts (results' and numbers' rows, a unit's payload, a
# policy's spec): found as attr names only where Optuna reads or writes them (_optuna_keys)
WORDS = {schema.ATTR_BASELINE, schema.ATTR_SPEC, schema.ATTR_SHIFT_ACC, schema.ATTR_CE_REFERENCE}


def _names() -> dict:
    """What the scan looks for: declared metric names and the instances of its templates, and the Optuna attr names."""
    metrics = {k for k in schema.METRICS if "{" not in k} - AMBIGUOUS_METRICS
    templates = [re.sub(r"\{[a-z]+\}", "x", k) for k in schema.METRICS if "{" in k]
    attrs = {k for table in (schema.TRIAL_SYSTEM_ATTRS, schema.TRIAL_USER_ATTRS, schema.UNIT_ATTRS, schema.CLAIM_ATTRS,
                             schema.STUDY_SYSTEM_ATTRS) for k in table if "{" not in k} - WORDS
    return {"metrics": metrics, "instances": sorted(metrics) + templates, "attrs": attrs}


def _docstrings(tree) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def _module_args(tree) -> set[int]:
    """String constants right after "-m" in a list or a call's arguments: module names (python -m harness.study)."""
    out = set()
    for node in ast.walk(tree):
        seq = node.elts if isinstance(node, (ast.List, ast.Tuple)) else node.args if isinstance(node, ast.Call) else []
        for a, b in zip(seq, seq[1:]):
            if isinstance(a, ast.Constant) and a.value == "-m" and isinstance(b, ast.Constant):
                out.add(id(b))
    return out


def _optuna_keys(tree) -> set[int]:
    """String constants used as Optuna attr names: set_*_attr(...) arguments, user_attrs= / system_attrs= dict keys,
    and .user_attrs / .system_attrs subscripts, .get() and `in` tests."""
    def attrs_of(node):
        return isinstance(node, ast.Attribute) and node.attr in ("user_attrs", "system_attrs")

    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in OPTUNA_SETTERS:
                out |= {id(a) for a in node.args if isinstance(a, ast.Constant)}
            if node.func.attr == "get" and attrs_of(node.func.value) and node.args:
                out.add(id(node.args[0]))
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg in ("user_attrs", "system_attrs"):
                    out |= {id(k) for d in ast.walk(kw.value) if isinstance(d, ast.Dict)
                            for k in d.keys if k is not None}
        if isinstance(node, ast.Subscript) and attrs_of(node.value):
            out.add(id(node.slice))
        if isinstance(node, ast.Compare) and any(attrs_of(c) for c in node.comparators):
            out.add(id(node.left))
    return out


def schema_literals(source: str, path: str = "") -> list[tuple[int, str, str]]:
    """(line, kind, literal) of every name written as a literal: a `harness.` name or a prefix of one (a string that
    starts with it and has no space; a module name after "-m" is none) or one in a search filter (tags.`harness.x`); a
    declared metric name, an f-string or a prefix ending in "/" that builds one; a metric name as a keyword of dict()
    or .update(); an Optuna attr name, anywhere, or any string used as one."""
    tree, names = ast.parse(source), _names()
    skip, modules, optuna_keys = _docstrings(tree), _module_args(tree), _optuna_keys(tree)
    out = []

    def metric(value: str) -> bool:
        return value in names["metrics"] and (path, value) not in OTHER_MEANINGS

    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            skip |= {id(v) for v in node.values}
            parts = [v.value if isinstance(v, ast.Constant) else None for v in node.values]
            if not parts or parts[0] is None:
                continue
            if parts[0].startswith("harness.") or "tags.`harness." in parts[0]:
                out.append((node.lineno, "harness name", "".join(p if p is not None else "{}" for p in parts)))
                continue
            # a placeholder stands for one word after a separator (ood_{key}_mean, shift/{name}/acc, the templates'
            # slots are "x" in names["instances"]); f"clean_{name}" or f"g{i}" build no metric name
            if any(p is None and not (q or "").endswith(("/", "_", ".")) for q, p in zip(parts, parts[1:])):
                continue
            pattern = re.compile("^" + "".join(re.escape(p) if p is not None else "[^/_]+" for p in parts) + "$")
            if any(pattern.match(n) for n in names["instances"]):
                out.append((node.lineno, "metric name", "".join(p if p is not None else "{}" for p in parts)))
        elif isinstance(node, ast.Call) and ((isinstance(node.func, ast.Name) and node.func.id == "dict")
                                             or (isinstance(node.func, ast.Attribute) and node.func.attr == "update")):
            out += [(node.lineno, "metric keyword", kw.arg) for kw in node.keywords if kw.arg and metric(kw.arg)]
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skip:
            continue
        v = node.value
        if id(node) in optuna_keys or v in names["attrs"]:
            out.append((node.lineno, "Optuna attr", v))
        elif (v.startswith("harness.") and not any(c.isspace() for c in v) and id(node) not in modules) \
                or "tags.`harness." in v:
            out.append((node.lineno, "harness name", v))
        elif metric(v) or ("/" in v and any(n.startswith(v) and n != v for n in names["instances"])):
            out.append((node.lineno, "metric name", v))
    return sorted(out)


def harness_literals() -> dict[str, list]:
    """{file under harness/: its literals} outside harness/schema/."""
    out = {}
    for f in sorted(HARNESS.rglob("*.py")):
        rel = f.relative_to(HARNESS).as_posix()
        if rel.startswith("schema/"):
            continue
        found = schema_literals(f.read_text(), rel)
        if found:
            out[rel] = found
    return out


def test_no_name_is_written_as_a_literal_outside_the_schema():
    """No harness module outside harness/schema/ writes a metric, tag or Optuna attr name as a string literal: each comes from
    a harness.schema constant or template function. Each exception in OTHER_MEANINGS still names a literal of its
    file (a stale one goes)."""
    assert harness_literals() == {}
    for path, literal in OTHER_MEANINGS:
        constants = {n.value for n in ast.walk(ast.parse((HARNESS / path).read_text())) if isinstance(n, ast.Constant)}
        assert literal in constants, (path, literal)


def test_the_scan_sees_every_kind_of_literal_and_nothing_else():
    """The scan finds each kind of literal (tag, tag prefix, search filter, metric, f-string metric, metric prefix,
    dict keyword, Optuna attr by name or by place) and ignores docstrings, comments, module names after -m, prose and
    schema's own constants."""
    source = '''
"""A docstring naming harness.fail_reason and id_acc."""
# a comment: tags["harness.role"], "val_acc"
import subprocess, sys
from harness import schema
x = tags.get("harness.fail_reason")
y = {k for k in tags if k.startswith("harness.version.")}
z = f"harness.version.{package}"
q = "tags.`harness.role` = 'study'"
m = metrics["ood_acc_mean"]
s = f"shift/{name}/acc"
o = f"ood_{key}_mean"
p = [k for k in keys if k.startswith("label_shift/prior_")]
final.update(val_acc_final=1.0)
t.user_attrs.get("baseline")
"mlflow_run_id" in t.user_attrs
study.enqueue_trial({}, user_attrs={"surgical_sweep": True})
storage.set_study_system_attr(sid, "harness.done", True)
ok = tags.get(schema.TAG_FAIL_REASON), metrics[schema.OOD_ACC_MEAN], schema.shift_key(name, "acc")
ok = subprocess.run([sys.executable, "-m", "harness.study"]), "harness.sustain runs in one process", row["baseline"]
ok = f"{prefix}trial {n}", "shift", "val_acc_finally"
'''
    found = {(line, kind) for line, kind, _ in schema_literals(source)}
    assert found == {(6, "harness name"), (7, "harness name"), (8, "harness name"), (9, "harness name"),
                     (10, "metric name"), (11, "metric name"), (12, "metric name"), (13, "metric name"),
                     (14, "metric keyword"), (15, "Optuna attr"), (16, "Optuna attr"), (17, "Optuna attr"),
                     (18, "Optuna attr")}, sorted(found)


def test_config_objectives_are_declared_metrics():
    """study.objective's values (config.OBJECTIVES, literals in the top layer) are declared metrics, but multi."""
    from harness import config

    assert set(config.OBJECTIVES) - {"multi"} <= {schema.VAL_ACC, schema.OOD_VAL_ACC}


def test_a_read_of_an_undeclared_name_fails_loudly():
    """tag / metric / param / attr return the value (or the default) for a declared name and raise UndeclaredName for
    any other, where a bare `.get` would return None for a misspelling; so do the template functions."""
    tags = {schema.TAG_ROLE: "trial", schema.version_tag("torch"): "2.5"}
    assert schema.tag(tags, schema.TAG_ROLE) == "trial" and schema.tag(tags, schema.TAG_FAIL_REASON, "") == ""
    assert schema.tag(tags, "harness.version.torch") == "2.5"
    assert schema.version_package("harness.version.torch") == "torch" and schema.version_package("harness.seed") is None
    assert schema.metric({"shift/fog/acc": 0.5}, schema.shift_key("fog", "acc")) == 0.5
    assert schema.param({"train.epochs": "3"}, "train.epochs") == "3" and schema.param({}, schema.PARAM_POLICY) is None
    assert schema.attr({schema.ATTR_BASELINE: "full_ft"}, schema.ATTR_BASELINE) == "full_ft"
    for read, name in ((schema.tag, "harness.fail_reasons"), (schema.tag, "harness.unknown"),
                       (schema.metric, "id_accuracy"), (schema.metric, "shift/a/b/acc"), (schema.param, "Train Epochs"),
                       (schema.attr, "mlflow_runid"), (schema.tag, schema.ID_ACC), (schema.metric, schema.TAG_ROLE)):
        with pytest.raises(schema.UndeclaredName, match=re.escape(repr(name))):
            read({name: 1}, name)
    assert schema.id_key("brier") == schema.ID_BRIER and schema.ood_mean("nll") == schema.OOD_NLL_MEAN
    assert schema.label_prior("bbse") == schema.LABEL_SHIFT_PRIOR_BBSE and schema.family_key("noise") == "ood_acc/noise"
    for build, arg in ((schema.shift_key, ("fog", "f1")), (schema.ood_mean, ("brier",)), (schema.label_prior, ("x",)),
                       (schema.id_key, ("f1",))):
        with pytest.raises(schema.UndeclaredName):
            build(*arg)
    assert not issubclass(schema.UndeclaredName, LookupError)  # no `except KeyError` swallows it


def test_every_declared_table_is_keyed_by_its_constants():
    """Each name is declared once: the constants are the tables' keys, and no two tables of one kind disagree."""
    consts = {v for k, v in vars(schema).items() if k.isupper() and isinstance(v, str)}
    for table in (schema.METRICS, schema.TAGS, schema.INPUT_TAGS, schema.MODEL_VERSION_TAGS, schema.POLICY_PARAMS,
                  schema.TRIAL_SYSTEM_ATTRS, schema.TRIAL_USER_ATTRS, schema.UNIT_ATTRS, schema.CLAIM_ATTRS,
                  schema.STUDY_SYSTEM_ATTRS,
                  schema.REGISTERED_MODEL_TAGS, schema.REGISTERED_MODEL_ALIASES, schema.ROLES):
        assert {k for k in table if k not in ("{metric}",)} <= consts, set(table) - consts
