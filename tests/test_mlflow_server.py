"""A real MLflow tracking server on loopback: a tiny study logs to it over HTTP, the report is built through it, and
everything is found again through the server's API."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harness import results, study

pytestmark = pytest.mark.slow

STARTUP_S = 150  # an idle 2-core machine needs ~8 s (imports); at a load average of ~18 it took over 60 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """`mlflow server` of this venv on 127.0.0.1:<free port>, sqlite backend and proxied artifacts in tmp_path; waits
    for /health (at most STARTUP_S) and always stops it, with its worker, at the end."""
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'srv.db'}",
                             "--artifacts-destination", str(tmp_path / "art")],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # own group: one kill stops all
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"MLflow server not healthy after {STARTUP_S} s (exit {proc.poll()}):\n"
                            + (tmp_path / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_study_and_report_over_http(server, tiny_config, workdir, capsys):
    """harness.study with --tracking-uri http://127.0.0.1:PORT: exit 0; through the server's API there is the
    experiment, the parent run (tags, config artifact), one child run per trial with its per-epoch and final metrics,
    and the report (report/index.html, report/report.json) logged on the parent run by the study's end; the
    downloaded report equals the file written under reports/."""
    rc = study.main(["--config", str(tiny_config), "--n-trials", "1", "--tracking-uri", server,
                     "--storage", f"sqlite:///{workdir / 'optuna.db'}"])
    out = capsys.readouterr().out
    assert rc == 0, out[-2000:]
    client = MlflowClient(tracking_uri=server)
    exp = client.get_experiment_by_name("tiny")
    parent = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'study'")[0]
    assert parent.info.run_name == "tiny" and parent.data.tags["harness.shifts.test"] == "gaussian_noise,contrast"
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    child = children[0]
    assert 0 <= child.data.metrics["id_acc"] <= 1 and "ood_acc_mean" in child.data.metrics
    assert [m.step for m in client.get_metric_history(child.info.run_id, "val_acc")] == [0, 1, 2]
    assert [m.step for m in client.get_metric_history(child.info.run_id, "shift/contrast/acc")] == [1, 3]

    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config", "versions.json", "shift_examples.png", "report"} <= arts
    logged = results.artifact(client, parent.info.run_id, "report/index.html").decode()
    local = Path(out.rsplit("report: ", 1)[1].strip())
    assert local == workdir / "reports" / "tiny" / "index.html" and logged == local.read_text(encoding="utf-8")
    assert results.artifact(client, parent.info.run_id, "report/report.json") is not None
    assert child.info.run_id in logged  # the leaderboard row of the trial, read back through the server


def test_mlflow_native_records_over_http(server, tiny_config, workdir, capsys):
    """Through a real tracking server: the study's end registers the selected trial's model, which loads through
    models:/tiny@champion from the server and predicts the test images with the accuracy the trial logged; the trial
    run holds its dataset inputs and system metrics; the report links each trial to its page in the server's UI."""
    import mlflow
    import torch

    from harness import config, data as datamod

    rc = study.main(["--config", str(tiny_config), "--n-trials", "1", "--tracking-uri", server,
                     "--storage", f"sqlite:///{workdir / 'optuna.db'}"])
    out = capsys.readouterr().out
    assert rc == 0, out[-2000:]
    client = MlflowClient(tracking_uri=server)
    exp = client.get_experiment_by_name("tiny")
    parent = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'study'")[0]
    child = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")[0]
    assert client.get_model_version_by_alias("tiny", "champion").run_id == child.info.run_id
    names = {d.dataset.name for d in client.get_run(child.info.run_id).inputs.dataset_inputs}
    assert {"digits/train", "digits/val", "digits/test", "digits/test/contrast/s3"} <= names
    assert "system/cpu_utilization_percentage" in child.data.metrics
    assert f"{server}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" in out  # the summary's URL
    page = results.artifact(client, parent.info.run_id, "report/index.html").decode()
    assert (f'<a class="run" href="{server}/#/experiments/{exp.experiment_id}/runs/{child.info.run_id}'
            f'?workflowType=machine_learning"') in page

    cfg = config.load(tiny_config)
    x, y = datamod.load(cfg.data, cfg.study.seed, workdir / "mlruns" / "cache")["test"]
    old = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(server)
    try:
        logits = torch.as_tensor(mlflow.pyfunc.load_model("models:/tiny@champion").predict(x.numpy()))
    finally:
        mlflow.set_tracking_uri(old)
    assert (logits.argmax(1) == y).double().mean().item() == pytest.approx(child.data.metrics["id_acc"], abs=1e-9)
