"""Runs: a trial's or replicate's child run ends as its block does (FINISHED, KILLED, FAILED, taken); models freed."""

from __future__ import annotations

import types
import weakref

import optuna
import pytest
import torch

from harness import bookkeeping, config, runs, store, tracking


def _ctx(tmp_path):
    """What the run lifecycle reads of a Context: the stores, the config (words of the description), the device and
    the dataset inputs (none here)."""
    client = store.connect(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp_id = client.create_experiment("runs", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp_id).info.run_id
    return types.SimpleNamespace(cfg=config.load(None, ["study.name=runs"]), client=client, exp_id=exp_id,
                                 parent_id=parent, device=torch.device("cpu"), n_groups=4,
                                 info={"dataset_inputs": []})


def _trial(study):
    t = study.ask()
    t.suggest_float("lr", 1e-3, 0.1, log=True)
    return t


P = {"lr": 0.01, "strategy": "prefix", "freeze_layers": 0, "unfreeze_epoch": 0}


def test_a_trial_run_ends_as_its_block_does(tmp_path):
    """FINISHED when the block returns; KILLED when it raises optuna.TrialPruned, with the epoch training reached
    and the reason (tags and the trial's pruned_epoch); FAILED with the epoch and the reason when it raises anything
    else (and the trial's fail_reason); when another process finished the trial (Optuna refuses the write), FAILED
    saying so, and TrialTaken raised instead. Every run has its description, params and a system-metrics sample."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    ctx, study = _ctx(tmp_path), optuna.create_study(storage=storage)
    ended = {}

    t = _trial(study)
    with runs.trial_run(ctx, t, P) as run:
        ended["finished"] = run.id
    t = _trial(study)
    with pytest.raises(optuna.TrialPruned), runs.trial_run(ctx, t, P) as run:
        ended["killed"], run.epoch = run.id, 1
        raise optuna.TrialPruned("pruned at epoch 1: below the median")
    assert t.user_attrs["pruned_epoch"] == 1
    t = _trial(study)
    with pytest.raises(FloatingPointError), runs.trial_run(ctx, t, P) as run:
        ended["failed"], run.epoch = run.id, 0
        raise FloatingPointError("non-finite train_loss (nan) at epoch 1")
    assert t.user_attrs["fail_reason"] == "FloatingPointError: non-finite train_loss (nan) at epoch 1"
    t = _trial(study)
    with pytest.raises(bookkeeping.TrialTaken, match="FAIL by another process"), runs.trial_run(ctx, t, P) as run:
        ended["taken"], run.epoch = run.id, 2
        other = optuna.load_study(study_name=study.study_name, storage=storage)  # another process's handle
        other.tell(t.number, state=optuna.trial.TrialState.FAIL)
        t.report(0.5, 2)  # the write Optuna refuses

    got = {k: ctx.client.get_run(v) for k, v in ended.items()}
    assert {k: r.info.status for k, r in got.items()} == {"finished": "FINISHED", "killed": "KILLED",
                                                          "failed": "FAILED", "taken": "FAILED"}
    tags = {k: r.data.tags for k, r in got.items()}
    assert tags["killed"]["harness.pruned_epoch"] == "1" and "median" in tags["killed"]["harness.pruned_reason"]
    assert tags["failed"]["harness.failed_epoch"] == "0" and tags["failed"]["harness.fail_reason"].startswith("Float")
    assert tags["taken"]["harness.failed_epoch"] == "2"
    assert "finished FAIL by another process while this worker ran it" in tags["taken"]["harness.fail_reason"]
    for k, r in got.items():
        assert r.data.tags["harness.role"] == "trial" and r.data.params["lr"] == "0.01", k
        assert r.data.tags[tracking.DESCRIPTION].startswith("train everything, lr 0.01"), k
        assert "system/process_rss_megabytes" in r.data.metrics, k
    assert [t.user_attrs["mlflow_run_id"] for t in study.trials] == list(ended.values())


def test_a_replicate_run_ends_as_its_block_does(tmp_path):
    """FINISHED when the block returns; FAILED with the epoch and the reason when it raises; on_run gets each run's id
    before it starts (the unit that runs it records it)."""
    ctx, seen = _ctx(tmp_path), []
    source = {"number": 3, "params": {"lr": 0.01}, "baseline": "full_ft"}
    with runs.replicate_run(ctx, source, 1, P, seen.append) as run:
        finished = run.id
    with pytest.raises(RuntimeError), runs.replicate_run(ctx, source, 2, P, seen.append) as run:
        failed, run.epoch = run.id, 1
        raise RuntimeError("out of memory")
    assert seen == [finished, failed]
    a, b = ctx.client.get_run(finished), ctx.client.get_run(failed)
    assert a.info.status == "FINISHED" and a.info.run_name == "trial-0003-seed1"
    assert b.info.status == "FAILED" and b.data.tags["harness.fail_reason"] == "RuntimeError: out of memory"
    assert b.data.tags["harness.failed_epoch"] == "1" and b.data.tags["harness.baseline"] == "full_ft"


def test_a_failed_run_frees_its_model_too():
    """frees_memory frees what its function built when it fails too, a reference cycle included: the frames its
    traceback keeps (and those of the error it was raised from) hold the model no longer; the error's type and
    message stay."""
    refs = []

    @runs.frees_memory
    def fails():
        model = torch.nn.Linear(2, 2)
        model.cycle = [model]
        refs.append(weakref.ref(model))
        try:
            raise KeyError("first")
        except KeyError:
            raise RuntimeError("diverged")

    with pytest.raises(RuntimeError, match="diverged") as err:
        fails()
    assert refs[0]() is None and isinstance(err.value.__context__, KeyError)
