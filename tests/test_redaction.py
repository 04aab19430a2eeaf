"""Redaction by parsing (issue 27 item 1): a password of any shape is masked in a URI, in free text quoting the URI,
in the TOML and HTML forms it is written in; a raw "@" is refused (exit 2) without quoting the password."""

from __future__ import annotations

import html
import json
import subprocess
import sys
import urllib.parse

import pytest
import sqlalchemy

from harness import redaction, store
from harness.config import ConfigError

from conftest import ROOT

# (URI, the password the store's client reads: checked against SQLAlchemy's own parser below)
SHAPES = [
    ("postgresql://u:ab/cdS3cr3t@127.0.0.1:54329/optu", "ab/cdS3cr3t"),  # a raw "/": SQLAlchemy accepts it
    ("postgresql://u:S3c ret pw@h:5432/db", "S3c ret pw"),  # blanks
    ("postgresql://u:S3cr%40tPW@h/db", "S3cr@tPW"),  # a percent-encoded "@"
    ("postgresql://u:S3c:r:etPW@h/db", "S3c:r:etPW"),  # ":" after the first
    ("postgresql+psycopg://u:%2F%20%3AS3c%25r3t@h/db", "/ :S3c%r3t"),  # every character percent-encoded
    ("mysql+pymysql://u:S3c/r%3Fet@h/db", "S3c/r?et"),
]


@pytest.mark.parametrize("uri, secret", SHAPES)
def test_a_password_of_any_shape_is_masked_where_the_uri_goes(uri, secret):
    assert sqlalchemy.engine.make_url(uri).password == secret  # what the driver will send: our parse agrees
    assert redaction.password(uri) == secret
    raw = uri[uri.index(":", uri.index("://") + 3) + 1:uri.rindex("@")]  # as typed, percent-encoding included
    host = uri[uri.rindex("@"):]
    assert store.redact(uri) == uri.replace(raw, "***") and store.redact(uri).endswith(host)
    redaction.remember(uri)
    texts = [f"error: Optuna storage {uri} is unreachable (boom)", f'storage = "{uri}"\nseed = 0',
             f"connect failed: password={secret} host=h", json.dumps({"storage": uri, "pw": secret}),
             html.escape(f"<td>{uri}</td><td>{secret}</td>"), store.command_line("x", "--storage", uri)]
    for text in texts:
        out = store.redact(text)
        assert secret not in out and raw not in out and html.escape(secret) not in out, out
        assert "***" in out


def test_secret_query_keys_are_masked_and_key_paths_kept():
    uri = "postgresql://u@h/db?sslmode=require&sslpassword=S3c%2Fr%20et&sslkey=/keys/client.key&password=Pw0rd%40x"
    out = store.redact(uri)
    assert out == "postgresql://u@h/db?sslmode=require&sslpassword=***&sslkey=/keys/client.key&password=***"
    redaction.remember(uri)
    assert "S3c/r et" not in store.redact("libpq: sslpassword S3c/r et rejected")  # decoded form, anywhere


def test_http_userinfo_is_split_off_with_a_raw_slash_in_the_password():
    bare, user, password = store.split_userinfo("http://harness:ab/cd%40x:y@127.0.0.1:5000/mlflow")
    assert (bare, user, password) == ("http://127.0.0.1:5000/mlflow", "harness", "ab/cd@x:y")
    assert store.redact("http://harness:ab/cd%40x:y@127.0.0.1:5000/mlflow") == "http://harness:***@127.0.0.1:5000/mlflow"


@pytest.mark.parametrize("uri", ["postgresql://u:S3cr@tPW@127.0.0.1/db", "http://u:S3cr@tPW@127.0.0.1:5000",
                                 "postgresql://u@x:S3cr@tPW@h/db"])
def test_a_raw_at_sign_is_bad_input_without_the_password(uri):
    with pytest.raises(ConfigError) as e:
        store.check_uris(uri if uri.startswith("postgresql") else "", uri if uri.startswith("http") else "")
    assert "%40" in str(e.value) and "S3cr" not in str(e.value) and "tPW" not in str(e.value)


def test_a_raw_at_sign_exits_2_in_a_fresh_process_creating_nothing(tiny_config, workdir):
    """The study command: exit 2, one line naming --storage and %40, no part of the password, no file made."""
    before = set(workdir.iterdir())
    r = subprocess.run([sys.executable, "-m", "harness.study", "--config", str(tiny_config), "--storage",
                        "postgresql://u:S3cr@tPW@127.0.0.1:1/db"], capture_output=True, text=True, cwd=workdir,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: --storage: more than one '@'") and "%40" in r.stderr
    assert "S3cr" not in r.stdout + r.stderr and "tPW" not in r.stdout + r.stderr
    assert set(workdir.iterdir()) == before


def test_free_text_without_uris_is_left_alone():
    text = "trial 3 FAILED: ValueError: lr=0.1 (a@b is not an email here)"
    assert store.redact(text) == text
    assert urllib.parse.unquote(store.redact("sqlite:////tmp/a%20b/x.db")) == "sqlite:////tmp/a b/x.db"
