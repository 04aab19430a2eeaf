"""`python -m harness.ui`: the MLflow UI on the project's store (`--optuna`: optuna-dashboard on its Optuna storage),
bound to 127.0.0.1 only; prints the direct URL of each study's runs."""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
from pathlib import Path

from harness import links, schema, store
from harness.config import ConfigError

HOST = "127.0.0.1"  # loopback only: the UI has no authentication and can delete runs


def mlflow_executable() -> str:
    """The mlflow CLI of this interpreter's environment (the venv), not whatever is first on PATH."""
    exe = Path(sys.executable).with_name("mlflow")
    return str(exe) if exe.exists() else "mlflow"


def command(tracking_uri: str, port: int, artifact_root: Path | None = None) -> list[str]:
    """The `mlflow ui` command line for a store. New experiments get their artifacts under artifact_root
    (the harness creates its own experiments with an explicit location, so this only matters for others)."""
    cmd = [mlflow_executable(), "ui", "--backend-store-uri", tracking_uri, "--host", HOST, "--port", str(port),
           "--workers", "1"]  # one worker: ~150 MB instead of 4 x 150 MB for a single local user
    if artifact_root is not None:
        cmd += ["--default-artifact-root", artifact_root.resolve().as_uri()]
    return cmd


def dashboard_command(storage: str, port: int) -> list[str]:
    """optuna-dashboard (a dependency) on the study's Optuna storage, on 127.0.0.1 only: it can rename and delete
    studies and has no authentication."""
    exe = Path(sys.executable).with_name("optuna-dashboard")
    return [str(exe) if exe.exists() else "optuna-dashboard", storage, "--host", HOST, "--port", str(port)]


def study_urls(tracking_uri: str, base: str, log=print) -> None:
    """The direct URL of each harness study's runs view (not the GenAI overview the UI opens on), read from the store
    before the UI starts."""
    try:
        client = store.connect(tracking_uri, existing=True)
        exps = [e for e in client.search_experiments() if schema.TAG_STUDY_NAME in e.tags]
    except Exception as e:  # noqa: BLE001 - the UI starts anyway
        log(f"(could not list the studies: {type(e).__name__}: {e})")
        return
    for e in exps:
        log(f"  study {e.name}: {links.runs_url(base, e.experiment_id, e.name)}")


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def run_group(exe: str, cmd: list[str]) -> int:
    """The server in a process group of its own, waited for; Ctrl-C or SIGTERM takes the whole group down (mlflow ui
    starts uvicorn and its huey_consumer task workers: 7 processes were left behind when it replaced this one and
    was stopped). SIGTERM first, SIGKILL for what is left after 10 s. Returns the server's exit code, or 128 + the
    signal."""
    import signal
    import subprocess

    proc = subprocess.Popen(cmd, start_new_session=True)
    got = []

    def stop(signum, _frame):
        got.append(signum)
        raise KeyboardInterrupt

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    except KeyboardInterrupt:
        for s in old:
            signal.signal(s, signal.SIG_IGN)
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except Exception:  # noqa: BLE001 - TimeoutExpired: the next, harder signal
                continue
        with contextlib.suppress(ProcessLookupError):  # the group's stragglers (a huey worker that outlived its parent)
            os.killpg(proc.pid, signal.SIGKILL)
        print("stopped", file=sys.stderr)
        return 128 + (got[0] if got else signal.SIGINT)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv=None, execv=run_group) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.ui", description="Start the MLflow UI on the study store, "
                                 "on 127.0.0.1 only; Ctrl-C stops it.",
                                 epilog="Exit codes: 0 success, 2 bad input (unknown store, port in use).")
    ap.add_argument("--tracking-uri", help="MLflow store (default: sqlite:///mlruns/mlflow.db in the current directory)")
    ap.add_argument("--port", type=int, help="port on 127.0.0.1 (default: 5000; with --optuna 8080)")
    ap.add_argument("--optuna", action="store_true", help="start optuna-dashboard on the Optuna storage instead "
                    "(studies, trials, optimization history, parameter importances)")
    ap.add_argument("--storage", help="with --optuna: Optuna storage URL (default: sqlite:///mlruns/optuna.db in the "
                    "current directory)")
    args = ap.parse_args(argv)
    uri = args.tracking_uri or store.default_tracking_uri()
    store.redaction.remember(uri, args.storage or "")
    if args.port is None:
        args.port = 8080 if args.optuna else 5000
    if not 1 <= args.port <= 65535:
        print(f"error: --port: must be in 1..65535, got {args.port}", file=sys.stderr)
        return 2
    if args.optuna:
        return _dashboard(args.storage or store.default_storage(), args.port, execv)
    if uri.startswith(("http://", "https://")):
        print(f"{store.redact(uri)} is already a tracking server: open it in a browser")
        study_urls(uri, links.ui_base(uri))
        return 0
    db = store.sqlite_path(uri)
    if db is None:
        print(f"error: --tracking-uri: expected sqlite:///PATH (or an http:// server), got {store.redact(uri)!r}", file=sys.stderr)
        return 2
    if not db.is_file():
        print(f"error: --tracking-uri: no MLflow store at {db}; run `python -m harness.study` first", file=sys.stderr)
        return 2
    if not port_free(args.port):
        print(f"error: --port: {HOST}:{args.port} is in use; pass another --port", file=sys.stderr)
        return 2
    cmd = command(uri, args.port, db.parent / "artifacts")
    print(f"MLflow UI on http://{HOST}:{args.port}  (store {store.redact(uri)}; Ctrl-C to stop)\n  "
          f"{store.command_line(*cmd)}\neach study's runs:", flush=True)
    study_urls(uri, f"http://{HOST}:{args.port}")
    sys.stdout.flush()
    return execv(cmd[0], cmd) or 0  # its own process group, taken down whole on Ctrl-C (run_group)


def _dashboard(storage: str, port: int, execv) -> int:
    db = store.sqlite_path(storage)
    if db is not None and not db.is_file():
        print(f"error: --storage: no Optuna storage at {db}; run `python -m harness.study` first", file=sys.stderr)
        return 2
    if db is None:  # a database: its scheme and driver, then an answer, before optuna-dashboard replaces this process
        try:
            store.check_uris(storage, "")  # the scheme and the driver
            store.check_reachable(storage, timeout=5, flag="--storage")
        except ConfigError as e:
            print(store.redact(f"error: {e}"), file=sys.stderr)
            return 2
        except ConnectionError as e:  # a store that does not answer is the --storage given: bad input here
            print(store.redact(f"error: --storage: {e}"), file=sys.stderr)
            return 2
    if not port_free(port):
        print(f"error: --port: {HOST}:{port} is in use; pass another --port", file=sys.stderr)
        return 2
    cmd = dashboard_command(storage, port)
    print(f"optuna-dashboard on http://{HOST}:{port}  (storage {store.redact(storage)}; Ctrl-C to stop)", flush=True)
    return execv(cmd[0], cmd) or 0


if __name__ == "__main__":
    sys.exit(main())
