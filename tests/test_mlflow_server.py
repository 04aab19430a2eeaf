"""A real MLflow tracking server on loopback: a tiny study logs to it over HTTP, the report is built through it, and
everything is found again through the server's API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harness import results, study

from conftest import free_port

pytestmark = pytest.mark.slow

STARTUP_S = 150  # an idle 2-core machine needs ~8 s (imports); at a load average of ~18 it took over 60 s


@pytest.fixture(scope="module")
def server_dir(tmp_path_factory):
    """Where the module's MLflow server keeps its sqlite database and proxied artifacts."""
    return tmp_path_factory.mktemp("mlflow-server")


@pytest.fixture(scope="module")
def server(server_dir):
    """`mlflow server` of this venv on 127.0.0.1:<free port>, sqlite backend and proxied artifacts in server_dir,
    started once for the module (its tests use experiments of their own); waits for /health (at most STARTUP_S) and
    always stops it, with its worker, at the end."""
    tmp_path = server_dir
    port = free_port()
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


def _study_over_http(server, tiny_config, workdir, capsys):
    """One trial of the tiny study through the server; exit 0. Returns (stdout, client, experiment, parent run)."""
    rc = study.main(["--config", str(tiny_config), "--n-trials", "1", "--tracking-uri", server,
                     "--storage", f"sqlite:///{workdir / 'optuna.db'}"])
    out = capsys.readouterr().out
    assert rc == 0, out[-2000:]
    client = MlflowClient(tracking_uri=server)
    exp = client.get_experiment_by_name("tiny")
    return out, client, exp, client.search_runs([exp.experiment_id], "tags.`harness.role` = 'study'")[0]


def test_study_report_and_native_records_over_http(server, tiny_config, workdir, capsys):
    """harness.study with --tracking-uri http://127.0.0.1:PORT (one study, both checks on it): exit 0; through the
    server's API there is the experiment, the parent run (tags, config artifact), one child run per trial with its
    per-epoch and final metrics, and the report (report/index.html, report/report.json) logged on the parent run by
    the study's end; the downloaded report equals the file written under reports/.
    MLflow-native records: the study's end registers the selected trial's model, which loads through
    models:/tiny@champion from the server and predicts the test images with the accuracy the trial logged; the trial
    run holds its dataset inputs and system metrics; the report links each trial to its page in the server's UI."""
    import mlflow
    import torch

    from harness import config, data as datamod

    out, client, exp, parent = _study_over_http(server, tiny_config, workdir, capsys)
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

    # the MLflow-native records (the former test_mlflow_native_records_over_http, on the same study)
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

SECRET = "S3cretPW-http"
# issue 27: a password with a raw "/", a blank and ":" (as typed in the URI: "%25" for its "%"), the PostgreSQL
# password percent-encoded whole and a ?sslpassword= holding "/", a blank, "@", ":" and "%"
HOSTILE = "S3c/r et:Pw%x"
HOSTILE_SSL = "Ssl/ p@ss:w%rd"


@pytest.fixture
def auth_proxy(server, request):
    """A basic-auth gate in front of the MLflow server, on 127.0.0.1: a request without `harness:SECRET` gets 401,
    any other is forwarded as is (method, headers, body). Yields (its URL, the list of Authorization headers seen),
    so a test proves the credentials really travelled, in the header and never in a host name."""
    import base64
    import http.client
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import urlsplit

    target = urlsplit(server)
    secret = getattr(request, "param", SECRET)
    expected = "Basic " + base64.b64encode(f"harness:{secret}".encode()).decode()
    seen = []

    class Gate(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _forward(self):
            seen.append(self.headers.get("Authorization"))
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "authorization", "connection")}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            conn.close()

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward

    gate = ThreadingHTTPServer(("127.0.0.1", 0), Gate)
    thread = threading.Thread(target=gate.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{gate.server_address[1]}", seen
    finally:
        gate.shutdown()
        gate.server_close()


def _secrets_in_files(root: Path, secrets: list[str]) -> list[str]:
    """Every file under root (sqlite databases, artifacts, reports, caches) that holds a secret, read as bytes."""
    return [f"{p}: {s}" for p in root.rglob("*") if p.is_file() for s in secrets if s.encode() in p.read_bytes()]


@pytest.mark.parametrize("auth_proxy", [SECRET, HOSTILE], indirect=True, ids=["plain", "hostile"])
def test_passwords_reach_no_output_file_or_artifact(auth_proxy, server_dir, tiny_config, workdir, capfd, monkeypatch,
                                                    request):
    """Issue 15: a real study (report included) with a password in --tracking-uri (an MLflow server behind basic
    auth) and in --storage (PostgreSQL, when there): the password is in no console line, no file under the working
    directory (MLflow server database and artifacts, Optuna sqlite or PostgreSQL rows, report HTML and JSON, caches),
    and no MLflow tag, param or artifact read back through the API; the credentials did reach the server, as a
    basic-auth header. A rebuild of the report through `python -m harness.report` and a bad-input error leak nothing
    either."""
    import base64

    import sqlalchemy
    from urllib.parse import urlsplit

    from harness.report.__main__ import main as report_main
    from conftest import need_service

    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # set by the study; gone after this test
        monkeypatch.delenv(var, raising=False)
    from urllib.parse import quote

    gate, seen = auth_proxy
    http_secret = request.node.callspec.params["auth_proxy"]
    # as typed: the "%" percent-encoded (its "/", blank and ":" raw, which the harness reads to the last "@")
    uri = gate.replace("http://", f"http://harness:{http_secret.replace('%', '%25')}@")
    pg = os.environ.get("HARNESS_TEST_POSTGRES")
    need_service(bool(pg), "PostgreSQL (HARNESS_TEST_POSTGRES, set by .ci/run)")
    pg_secret = urlsplit(pg).password
    secrets = [http_secret] + ([pg_secret] if pg_secret and pg_secret not in pg.replace(f":{pg_secret}@", "@") else [])
    if os.environ.get("HARNESS_REQUIRE_SERVICES") == "1":
        assert len(secrets) == 2, "HARNESS_TEST_POSTGRES's password must differ from its user and database names"
    if http_secret == HOSTILE and pg_secret:  # the same role through a URL that hides its password differently
        encoded = "".join("%%%02X" % b for b in pg_secret.encode())
        pg = pg.replace(f":{pg_secret}@", f":{encoded}@") + "?sslpassword=" + quote(HOSTILE_SSL, safe="")
        # every form and a fragment of each: a cut at a blank or "@" would leak the rest
        secrets += [encoded, HOSTILE_SSL, quote(HOSTILE_SSL, safe=""), "p@ss", "r et:Pw", HOSTILE.replace("%", "%25")]
    name = f"secret-{int(time.time())}"
    argv = ["--config", str(tiny_config), "--n-trials", "2", "--tracking-uri", uri, "--storage", pg,
            "--study-name", name]
    assert study.main(argv) == 0
    assert report_main(["--study-name", name, "--tracking-uri", uri, "--storage", pg]) == 0
    bad = [a if a != pg else pg.replace("postgresql://", "mysql://") for a in argv]
    assert study.main(bad) == 2  # an error message quoting the (redacted) storage URL
    out = capfd.readouterr()
    console = out.out + out.err
    assert "harness:***@127.0.0.1" in console and "rebuild the report" in console
    assert not [s for s in secrets if s in console], console[-3000:]

    expected = "Basic " + base64.b64encode(f"harness:{http_secret}".encode()).decode()
    assert len(seen) > 20 and set(seen) == {expected}  # every request of the study and the report carried it
    assert not _secrets_in_files(workdir, secrets)  # mlruns/ (caches), reports/
    assert not _secrets_in_files(server_dir, secrets)  # the server's db and artifacts
    assert (workdir / "reports" / name / "index.html").is_file()

    import mlflow

    client = MlflowClient(tracking_uri=gate)  # authenticated by MLFLOW_TRACKING_USERNAME/PASSWORD, set by the study
    exp = client.get_experiment_by_name(name)
    # MLflow lists the selected trial's logged model (the champion) among its run's artifacts and resolves it through
    # the global tracking URI, not the client's: point that at the server for the walk
    old = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(gate)
    try:
        for run in client.search_runs([exp.experiment_id]):
            for text in (str(run.data.tags), str(run.data.params)):
                assert not [s for s in secrets if s in text]
            stack = [a for a in client.list_artifacts(run.info.run_id)]
            while stack:
                a = stack.pop()
                if a.is_dir:
                    stack += client.list_artifacts(run.info.run_id, a.path)
                else:
                    data = results.artifact(client, run.info.run_id, a.path)
                    assert not [s for s in secrets if s.encode() in data], a.path
    finally:
        mlflow.set_tracking_uri(old)
    engine = sqlalchemy.create_engine(pg)  # every row of the Optuna storage, as text
    with engine.connect() as conn:
        for table in sqlalchemy.inspect(engine).get_table_names():
            rows = str(conn.execute(sqlalchemy.text(f'SELECT * FROM "{table}"')).fetchall())
            assert not [s for s in secrets if s in rows], table
    engine.dispose()
