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



def test_a_lost_dataset_insert_race_is_retried(tmp_path):
    """Two processes logging the same new datasets at once (two launchers on a fresh store, two workers): MLflow
    looks up the experiment's datasets, then inserts the missing ones, so the second insert hits the unique key
    (experiment, name, digest). Staged for real: just before this client's INSERT INTO datasets, a second client on the
    same sqlite file logs the same datasets on another run and commits. log_inputs retries and both runs end with
    the 2 inputs, which the store holds once each; MLflow's own call, without the retry, fails on that race."""
    import sqlalchemy

    client, run_a = _run(tmp_path)
    exp = client.get_run(run_a).info.experiment_id
    run_b, run_c = (client.create_run(exp).info.run_id for _ in range(2))
    other = store.connect(f"sqlite:///{tmp_path / 'mlflow.db'}")
    inputs = [tracking.dataset_input(f"digits/{split}", f"d-{split}", "sklearn", "training") for split in ("a", "b")]
    engine = client._tracking_client.store.engine
    staged, rival = [], {"run": run_b, "inputs": inputs}

    def before(conn, cursor, statement, *_):
        if statement.lstrip().upper().startswith("INSERT INTO DATASETS") and not staged:
            staged.append(statement)
            other.log_inputs(rival["run"], datasets=rival["inputs"])  # the other process wins: its rows commit first

    sqlalchemy.event.listen(engine, "before_cursor_execute", before)
    try:
        tracking.log_inputs(client, run_a, inputs)
        assert staged, "the race was not staged"
        staged.clear()
        rival["run"] = run_c
        rival["inputs"] = [tracking.dataset_input(f"digits/{split}", f"e-{split}", "sklearn", "training")
                           for split in "ab"]
        with pytest.raises(MlflowException, match="UNIQUE constraint"):
            client.log_inputs(client.create_run(exp).info.run_id, datasets=rival["inputs"])  # MLflow alone loses
        assert staged
    finally:
        sqlalchemy.event.remove(engine, "before_cursor_execute", before)
    for run in (run_a, run_b):
        assert sorted(d.dataset.name for d in client.get_run(run).inputs.dataset_inputs) == ["digits/a", "digits/b"]
    with sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'mlflow.db'}").connect() as c:
        rows = c.execute(sqlalchemy.text("SELECT name, digest FROM datasets WHERE digest LIKE 'd-%'")).fetchall()
    assert sorted(rows) == [("digits/a", "d-a"), ("digits/b", "d-b")]
