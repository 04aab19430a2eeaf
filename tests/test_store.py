"""Store: default URIs, scheme checks, redaction, content-addressed cache keys and atomic cache files."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

from harness import store


@pytest.mark.parametrize("text, expected", [
    ("postgresql://u:secret@host:5432/db", "postgresql://u:***@host:5432/db"),
    ("mysql+pymysql://u:secret@h/db", "mysql+pymysql://u:***@h/db"),
    ("http://user:secret@host:5000", "http://user:***@host:5000"),
    ("https://user:se%40cret@host/mlflow", "https://user:***@host/mlflow"),
    ("postgresql://u:sec@ret@h/db", "postgresql://u:***@h/db"),  # a raw "@" in the password: hidden whole
    ("postgresql://h/db?user=u&password=secret", "postgresql://h/db?user=u&password=***"),
    ('storage = "postgresql://u:secret@h/db"\ntracking_uri = "http://a:secret@h"',
     'storage = "postgresql://u:***@h/db"\ntracking_uri = "http://a:***@h"'),
    ("error: tracking server http://a:secret@h:1 is unreachable", "error: tracking server http://a:***@h:1 is unreachable"),
    ("sqlite:///mlruns/optuna.db", "sqlite:///mlruns/optuna.db"), ("http://token-user@h/x", "http://token-user@h/x")])
def test_redact_keeps_scheme_user_host_path_and_hides_the_password(text, expected):
    assert store.redact(text) == expected and "secret" not in store.redact(text)


def test_userinfo_is_split_off_http_uris_percent_decoded():
    assert store.split_userinfo("http://us%40r:p%3Aw@h:5000/x") == ("http://h:5000/x", "us@r", "p:w")
    assert store.split_userinfo("http://h:5000") == ("http://h:5000", None, None)


def test_printed_commands_are_shell_quoted_and_redacted():
    """Each argument survives a POSIX shell as one word (shlex.split is the shell's own splitting) and runs nothing."""
    import shlex

    args = ["python", "-m", "harness.report", "--study-name", "a;touch X", "--tracking-uri", "postgresql://u:pw@h/db"]
    for name in ("a;touch X", "it's", 'say "hi"', "two\nlines", "$(rm -rf ~)", "*"):
        args[4] = name
        assert shlex.split(store.command_line(*args)) == args[:6] + ["postgresql://u:***@h/db"]


def test_default_uris_live_under_mlruns_and_never_share_a_file(tmp_path):
    """MLflow and Optuna each get their own sqlite file under ./mlruns (their Alembic checks clash, optuna#2866)."""
    tracking, storage = store.default_tracking_uri(tmp_path), store.default_storage(tmp_path)
    assert store.sqlite_path(tracking) == (tmp_path / "mlruns" / "mlflow.db").resolve()
    assert store.sqlite_path(storage) == (tmp_path / "mlruns" / "optuna.db").resolve()
    assert store.sqlite_path("postgresql://h/db") is None
    assert store.same_sqlite(f"sqlite:///{tmp_path}/a/../x.db", f"sqlite:///{tmp_path}/x.db")


def test_written_sqlite_stores_use_a_write_ahead_log_synced_at_checkpoints(tmp_path):
    """The writer's MLflow store and the Optuna storage are in WAL mode (a property of the file, read here by a
    plain sqlite3 connection) and every SQLAlchemy connection this process opens afterwards commits with
    synchronous=NORMAL (1), not the default FULL (2) that syncs the disk at each of a trial's ~55 commits."""
    import sqlite3

    import sqlalchemy

    from harness import bookkeeping

    tracking, storage = store.default_tracking_uri(tmp_path), store.default_storage(tmp_path)
    store.connect(tracking)
    bookkeeping.storage(storage)
    for uri in (tracking, storage):
        with sqlite3.connect(store.sqlite_path(uri)) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'other.db'}").connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1
    with sqlite3.connect(tmp_path / "plain.db") as raw:  # a connection made without SQLAlchemy keeps sqlite's default
        assert raw.execute("PRAGMA synchronous").fetchone()[0] == 2


@pytest.mark.parametrize("storage, uri, flag", [
    ("redis://h/0", "", "--storage"), ("", "file:///tmp/mlruns", "--tracking-uri"),
    ("sqlite:///same.db", "sqlite:///same.db", "--storage")])
def test_scheme_checks_name_the_flag(storage, uri, flag):
    with pytest.raises(ValueError, match=f"^{flag}: "):
        store.check_uris(storage, uri)


def test_scheme_checks_accept_the_documented_stores():
    store.check_uris("postgresql://u:p@h/db", "http://127.0.0.1:5000")
    store.check_uris("sqlite:///a/optuna.db", "sqlite:///a/mlflow.db")


def test_existing_sqlite_files_are_accepted_for_a_resume_and_folders_refused(tmp_path):
    """A resumed study names files that exist: each is writable (opened for update, its folder takes a journal).
    A folder given as the file, or a file whose 'folder' is a file, is refused naming the flag."""
    import sqlite3

    for name in ("o.db", "m.db"):
        sqlite3.connect(tmp_path / name).close()
    store.check_uris(f"sqlite:///{tmp_path / 'o.db'}", f"sqlite:///{tmp_path / 'm.db'}")
    with pytest.raises(ValueError, match="--tracking-uri: .* is a folder"):
        store.check_uris("", f"sqlite:///{tmp_path}")
    with pytest.raises(ValueError, match="--storage: .* is not a folder"):
        store.check_uris(f"sqlite:///{tmp_path / 'o.db' / 'x.db'}", f"sqlite:///{tmp_path / 'm.db'}")


def test_cache_key_is_sha256_of_sorted_json():
    """Independent computation: the key is the first 16 hex digits of sha256 over the sorted JSON plus extra text,
    so dict order never changes a key and any value change does."""
    obj = {"b": [1, 2], "a": {"y": 1.5, "x": "s"}}
    expected = hashlib.sha256((json.dumps(obj, sort_keys=True) + "tail").encode()).hexdigest()[:16]
    assert store.cache_key(obj, "tail") == expected
    assert store.cache_key({"a": obj["a"], "b": obj["b"]}, "tail") == expected
    assert store.cache_key({**obj, "b": [1, 3]}, "tail") != expected


def test_cache_files_round_trip_atomically(tmp_path):
    """save_tensors writes the sidecar and the tensors under temporary names and renames them: only the final files
    remain, a reader gets both back, and an absent file reads as None."""
    path = tmp_path / "c" / "x.safetensors"
    assert store.load_tensors(path) is None
    tensors = {"w": torch.arange(6.0).reshape(2, 3), "y": torch.tensor([1, 2])}
    store.save_tensors(tensors, path, meta={"n": 2})
    assert sorted(os.listdir(path.parent)) == ["x.json", "x.safetensors"]
    back, meta = store.load_tensors(path)
    assert meta == {"n": 2} and back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in back)
    store.save_tensors({"w": torch.zeros(1)}, tmp_path / "bare.safetensors")
    assert store.load_tensors(tmp_path / "bare.safetensors")[1] is None


def test_cache_description_can_live_in_the_file_header(tmp_path):
    """inline=True: the JSON description goes into the safetensors header, so the cache is one file written at once
    (no sidecar), and load_tensors gives it back as it gives a sidecar's."""
    path = tmp_path / "c" / "x.safetensors"
    index = {"version": 3, "sets": [{"name": "c10c.frost", "images": ["0", "1"], "labels": "2"}]}
    store.save_tensors({"0": torch.ones(2, 3), "1": torch.zeros(2, 3), "2": torch.tensor([0, 1])}, path, meta=index,
                       inline=True)
    assert os.listdir(path.parent) == ["x.safetensors"]
    back, meta = store.load_tensors(path)
    assert meta == index and sorted(back) == ["0", "1", "2"] and torch.equal(back["2"], torch.tensor([0, 1]))


def test_reader_refuses_a_missing_store_instead_of_creating_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'nothing.db'}"
    with pytest.raises(store.StoreNotFound, match="no MLflow store"):
        store.connect(uri, existing=True)
    assert not (tmp_path / "nothing.db").exists()


def test_http_credentials_go_in_a_header_never_to_a_name_lookup(monkeypatch):
    """check_reachable on http://user:password@127.0.0.1:PORT: the server receives the basic-auth header MLflow would
    send; no host name looked up holds the userinfo; a dead port's message shows the user and *** only."""
    import base64
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    got, looked_up, real = [], [], socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: looked_up.append(host) or real(host, *a, **k))

    class Api(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            got.append((self.path, self.headers.get("Authorization")))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    server = HTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.handle_request, daemon=True).start()
    port = server.server_address[1]
    store.check_reachable(f"http://us%40r:se%3Acret@127.0.0.1:{port}", timeout=5)
    server.server_close()
    assert got == [("/api/2.0/mlflow/experiments/search?max_results=1",
                    "Basic " + base64.b64encode(b"us@r:se:cret").decode())]
    with pytest.raises(ConnectionError) as e:
        store.check_reachable(f"http://harness:secret@127.0.0.1:{port}", timeout=5)  # nothing listens now
    assert f"http://harness:***@127.0.0.1:{port} is unreachable" in str(e.value) and "secret" not in str(e.value)
    assert looked_up and not [h for h in looked_up if "@" in str(h) or "cret" in str(h)]
