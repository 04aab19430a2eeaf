"""`python -m harness.ui`: the MLflow UI command line on the project's store, loopback only (nothing is started)."""

from __future__ import annotations

import socket

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
