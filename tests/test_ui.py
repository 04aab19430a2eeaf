"""`python -m harness.ui`: the MLflow UI command line on the project's store, loopback only (nothing is started)."""

from __future__ import annotations

import socket

import pytest

from harness import ui


def test_command_binds_loopback_and_uses_the_store(tmp_path):
    """The command is this venv's `mlflow ui` with --host 127.0.0.1, the given port, the given store as
    --backend-store-uri and artifacts for new experiments under mlruns/artifacts; every flag exists in the CLI
    of the installed MLflow (checked on its click command, without starting anything)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = ui.command(uri, 5123, tmp_path / "artifacts")
    assert cmd[0].endswith("mlflow") and cmd[1] == "ui"
    opts = dict(zip(cmd[2::2], cmd[3::2]))
    assert opts["--host"] == "127.0.0.1" and opts["--port"] == "5123" and opts["--backend-store-uri"] == uri
    assert opts["--default-artifact-root"] == (tmp_path / "artifacts").as_uri()
    import click
    from mlflow.cli import cli

    command = cli.get_command(click.Context(cli), "ui")  # `ui` is an alias of `server` in MLflow 3
    known = {o for p in command.params for o in p.opts}
    assert set(opts) <= known


def test_main_prints_url_and_execs_mlflow(workdir, capsys):
    """With no flag: the default store mlruns/mlflow.db of the working directory, port 5000, the URL on stdout,
    then the process is replaced by mlflow (a fake exec here, so no server is left running)."""
    (workdir / "mlruns").mkdir()
    (workdir / "mlruns" / "mlflow.db").touch()
    calls = []
    with socket.socket() as s:  # pick a port that is free now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert ui.main(["--port", str(port)], execv=lambda exe, argv: calls.append(argv)) == 0
    assert f"http://127.0.0.1:{port}" in capsys.readouterr().out
    (argv,) = calls
    assert argv[argv.index("--backend-store-uri") + 1] == f"sqlite:///{(workdir / 'mlruns' / 'mlflow.db').resolve()}"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"


def test_bad_input_exits_2(workdir, capsys):
    """No store yet, a port already taken, or an unsupported URI: exit 2 with a message, nothing started; an
    http:// URI is already a UI and is only printed."""
    never = lambda *a: (_ for _ in ()).throw(AssertionError("must not exec"))
    assert ui.main([], execv=never) == 2
    assert "no MLflow store" in capsys.readouterr().err
    (workdir / "mlruns").mkdir()
    (workdir / "mlruns" / "mlflow.db").touch()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert ui.main(["--port", str(s.getsockname()[1])], execv=never) == 2
    assert "in use" in capsys.readouterr().err
    assert ui.main(["--tracking-uri", "file:///tmp/x"], execv=never) == 2
    assert ui.main(["--tracking-uri", "http://127.0.0.1:5000"], execv=never) == 0
    assert "already a tracking server" in capsys.readouterr().out


def test_optuna_dashboard_serves_the_study_on_loopback_and_stops(workdir):
    """`python -m harness.ui --optuna --storage URL --port P` (a real subprocess): optuna-dashboard answers on
    127.0.0.1:P with the study in /api/studies, listens on loopback only, and SIGTERM stops it within seconds."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    import optuna
    import psutil

    storage = f"sqlite:///{workdir / 'optuna.db'}"
    s = optuna.create_study(study_name="dash", storage=storage, direction="maximize")
    s.optimize(lambda t: t.suggest_float("lr", 1e-3, 1e-1, log=True), n_trials=3)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "harness.ui", "--optuna", "--storage", storage, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline, studies = time.monotonic() + 60, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    studies = json.loads(r.read())["study_summaries"]
                break
            except OSError:
                time.sleep(0.3)
        assert studies is not None, proc.stdout.read() if proc.poll() is not None else "no answer in 60 s"
        assert [(st["study_name"], st["directions"]) for st in studies] == [("dash", ["maximize"])]
        # the server runs in a process group of its own under harness.ui (harness.ui.run_group)
        family = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
        listening = [c.laddr for p in family for c in p.net_connections("inet") if c.status == "LISTEN"]
        assert listening and all(a.ip == "127.0.0.1" and a.port == port for a in listening)
        os.kill(proc.pid, signal.SIGTERM)  # harness.ui alone: it takes the server's whole group down (issue 27)
        assert proc.wait(timeout=15) == 128 + signal.SIGTERM
        time.sleep(0.5)
        assert not [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with pytest.raises(ConnectionRefusedError):  # nothing listens any more: no server left running
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_optuna_flag_bad_input_exits_2(workdir, capsys):
    """--optuna without a storage file: exit 2 naming --storage, nothing started."""
    never = lambda *a: (_ for _ in ()).throw(AssertionError("must not exec"))
    assert ui.main(["--optuna"], execv=never) == 2
    assert "--storage" in capsys.readouterr().err
