"""harness.sustain as a command and as a registry: `python -m harness.sustain` in a subprocess, and the policy
registry as the one place that decides which policy names are valid and what a search samples for each."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest

from harness import config, flags, study
from harness.sustain import cli, policies, search
from conftest import SUSTAIN_TINY, mlflow_client


def _config(*sets):
    """The default sustain config with overrides; stream.k = 7 lies outside search_k = [1, 5], so a sampled k can
    never pass for the configured one."""
    args = ["--config", str(cli.DEFAULT_CONFIG)] + [a for s in ("stream.k=7", *sets) for a in ("--set", s)]
    return cli.load_config(cli.parse_args(args))


def _ask(s: config.Stream, policy: str) -> tuple[dict, dict]:
    """(spec, Optuna params) of one trial of an in-memory study whose policy is fixed to `policy`."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"policy": policy})
    trial = study.ask()
    return search.suggest(trial, s), trial.params


def test_registry_drives_validation_and_search(workdir, capsys, monkeypatch):
    """Every policy of policies.POLICIES passes preflight in stream.policies and stream.search_policies, and a search
    trial that picks it samples exactly its own searched setting (within its [stream] bounds, into the spec entry the
    registry names) plus the update recipe (lr, freeze_layers), or nothing else for a policy that never updates; its
    setting is in search_space.json. A policy added to the registry alone (no other file) is accepted and searched the
    same way. An unknown name exits 2 naming the key, and nothing is created."""
    for name, p in policies.POLICIES.items():
        cfg = _config(f"stream.policies=['{name}']", f"stream.search_policies=['{name}']")
        assert cli.preflight(cfg) == 4
        spec, params = _ask(cfg.stream, name)
        expect = {"policy"} | ({p.searched.param} if p.searched else set()) | (
            {"lr", "freeze_layers"} if p.updates else set())
        assert spec["policy"] == name and set(params) == expect, name
        if p.searched:
            low, high = getattr(cfg.stream, p.searched.bounds)
            assert low <= params[p.searched.param] <= high and spec[p.searched.key] == params[p.searched.param]
            assert p.searched.param in search.space(cfg.stream)
        for key in ("k", "threshold", "window"):  # settings from [stream] unless searched; None where it has none
            if p.searched and key == p.searched.key:
                continue
            assert spec[key] == (getattr(cfg.stream, p.settings[key]) if key in p.settings else None), (name, key)

    monkeypatch.setitem(policies.POLICIES, "always", policies.Policy(lambda o: (True, None, None)))
    cfg = _config("stream.policies=['always']", "stream.search_policies=['always','never']")
    assert cli.preflight(cfg) == 4
    spec, params = _ask(cfg.stream, "always")
    assert policies.label(spec) == "always" and set(params) == {"policy", "lr", "freeze_layers"}

    for key in ("policies", "search_policies"):
        assert cli.main(["--set", f"stream.{key}=['never','sometimes']"]) == 2
        err = capsys.readouterr().err
        assert f"stream.{key}" in err and "'sometimes' is not allowed" in err and "never, every" in err
    assert not (workdir / "mlruns").exists()


@pytest.mark.slow
def test_the_shared_flags_in_each_commands_words(capsys):
    """harness.study and harness.sustain share their flags (harness.flags) and each words its help its own way: sustain
    passes its texts to add_common_args, the study keeps the shared ones. A text for a flag that is not shared is an
    error, not a silent no-op."""
    import argparse

    texts = {}
    for name, parse in (("study", study.parse_args), ("sustain", cli.parse_args)):
        with pytest.raises(SystemExit):
            parse(["--help"])
        texts[name] = " ".join(capsys.readouterr().out.split())
    assert "study TOML file (default: studies/default.toml)" in texts["study"]
    assert "study TOML file with a [stream] section (default: studies/sustain.toml)" in texts["sustain"]
    assert "reuses its finished policy runs" in texts["sustain"] and "reuses" not in texts["study"]
    assert "stream.search = true: the number of completed Optuna trials" in texts["sustain"]
    for flag in flags.FLAGS:
        assert flag in texts["study"] and flag in texts["sustain"]
    with pytest.raises(ValueError, match="--n-trial"):
        flags.add_common_args(argparse.ArgumentParser(), help={"--n-trial": "a typo"})


def test_python_m_harness_sustain_runs_in_a_subprocess(tmp_path):
    """A tiny study (never, every2, mmd; seed 0; no report) run as `python -m harness.sustain` in a fresh directory
    exits 0 and leaves one FINISHED parent run and two FINISHED child runs per policy (drift and no-drift control)
    in mlruns/mlflow.db. (That
    `python -m harness.sustain --help` prints the description from the module docstring is checked in
    tests/test_schema.py::test_ui_and_bench_run_as_subprocesses, which runs every heavy module's --help in one
    interpreter.)"""
    run = lambda *args: subprocess.run([sys.executable, "-m", "harness.sustain", *args], cwd=tmp_path,  # noqa: E731
                                       capture_output=True, text=True, timeout=600)
    (tmp_path / "s.toml").write_text(SUSTAIN_TINY)
    done = run("--config", "s.toml", "--no-report", "--set", "stream.policies=['never','every','mmd']")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "every2" in done.stdout and "Traceback" not in done.stderr

    client = mlflow_client(tmp_path)
    exp = client.get_experiment_by_name("sustain-tiny")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    names = {f"policy-{p}-seed0{v}" for p in ("never", "every2", "mmd") for v in ("", "-control")}
    assert set(runs) == {"sustain-tiny"} | names  # each policy also on the no-drift control (stream.control)
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert runs["sustain-tiny"].data.tags["harness.role"] == "sustain"
    parent = runs["sustain-tiny"].info.run_id
    for name in ("policy-never-seed0", "policy-every2-seed0", "policy-mmd-seed0"):
        assert runs[name].data.tags["mlflow.parentRunId"] == parent
        assert {"stream_acc_mean", "bwt", "forgetting", "fwt", "n_updates"} <= set(runs[name].data.metrics)
    assert [m.step for m in client.get_metric_history(runs["policy-mmd-seed0"].info.run_id, "monitor")] == [0, 1, 2, 3]
