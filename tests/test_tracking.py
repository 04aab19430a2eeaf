"""Tracking: the MLflow writer of runs; per-epoch batches on a logging thread, flushed before a run ends."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException

from harness import store, tracking


def _run(tmp_path):
    client = store.connect(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    return client, client.create_run(exp).info.run_id


def test_background_batches_land_before_the_run_ends(tmp_path):
    """wait=False batches (per-epoch metrics) are all in the store, at their steps, once end_run returns."""
    client, run_id = _run(tmp_path)
    for epoch in range(5):
        tracking.log_metrics(client, run_id, {"val_acc": epoch / 10, "train_loss": 1 - epoch / 10}, step=epoch, wait=False)
    tracking.end_run(client, run_id, "FINISHED")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "harness.logging_error" not in run.data.tags
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val_acc")] == [(e, e / 10) for e in range(5)]


def test_a_failed_background_batch_still_ends_the_run_with_the_error(tmp_path):
    """A batch MLflow rejects on the logging thread (an invalid metric name) never leaves the run RUNNING: end_run
    ends it and tags the error; a synchronous log_metrics after it raises the error instead."""
    client, run_id = _run(tmp_path)
    tracking.log_metrics(client, run_id, {"bad name?!": 1.0}, wait=False)
    tracking.end_run(client, run_id, "KILLED")
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and "bad name" in run.data.tags["harness.logging_error"]

    (tmp_path / "again").mkdir()
    client, run_id = _run(tmp_path / "again")
    tracking.log_metrics(client, run_id, {"bad name?!": 1.0}, wait=False)
    with pytest.raises(MlflowException, match="bad name"):  # raised where the trial records it as its fail reason
        tracking.log_metrics(client, run_id, {"id_acc": 0.5})

