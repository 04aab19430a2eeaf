"""Schema: every metric, param and tag name a real study writes to MLflow is declared in harness.schema, and the
`python -m harness.study` and `python -m harness.ui` / `harness.bench` entry points run as real subprocesses."""

from __future__ import annotations

import subprocess
import sys

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
    done = _cli("study", "--config", str(tiny_config), "--no-report", cwd=workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "python -m harness.report --study-name tiny" in done.stdout
    client = mlflow_client(workdir)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    written = {k for r in runs for k in r.data.metrics}
    # the study wrote the name families the schema's templates stand for
    assert {"shift/gaussian_noise/acc", "ood_acc/noise", "label_shift/prior_bbse", "train_loss", "id_acc"} <= written
    assert undeclared(client, exp.experiment_id) == {"metric": set(), "param": set(), "tag": set()}
    assert set(exp.tags) - {"mlflow.experimentKind"} <= set(schema.TAGS) | {"harness.study_name"}


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
    assert {"shift/clean/acc", "ood_acc/clean", "shift/c10c.frost/acc", "shift/c10c.frost/ce"} <= written
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
