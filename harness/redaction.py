"""Passwords out of everything printed, logged or written: URIs parsed for their userinfo and secret query keys, the
secrets this process has seen masked wherever they appear, and the one malformed shape refused (a raw "@")."""

from __future__ import annotations

import html
import json
import re
import shlex
import threading
import urllib.parse

from harness.config import ConfigError

MASK = "***"
# query keys whose value is a secret (libpq's password and sslpassword, MySQL drivers' passwd/pwd); sslkey, sslcert
# and sslrootcert are file paths, kept: a person needs them to tell which key was used
SECRET_QUERY_KEYS = ("password", "sslpassword", "passwd", "pwd")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# in free text a URI runs to the next blank; a password with a blank in it is masked by the registry (remember())
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S*")
# ?sslpassword=... in a URI, or password=... in a libpq keyword string (host=h password=...)
_QUERY_SECRET = re.compile(r"((?:^|[?&;\s])(?:%s)=)[^&;\s\"'<>]*" % "|".join(SECRET_QUERY_KEYS), re.IGNORECASE)
# a secret shorter than this is masked only where a URI is parsed, never by plain search (a 2-character password
# would mask every "ab" of a page)
MIN_REGISTERED = 4
_SEEN: set[str] = set()
_LOCK = threading.Lock()


class AmbiguousUserinfo(ConfigError):
    """More than one "@" before the host: PostgreSQL, SQLAlchemy and urllib each read another host out of it (the
    tail of the password is then looked up in DNS)."""


def userinfo(uri: str) -> tuple[int, int, int] | None:
    """(start of the user, start of the password or -1, index of the "@") of a URI's userinfo, None without one.
    The authority runs from "://" to the first "?" or "#" (not "/": SQLAlchemy and libpq accept a raw "/" in a
    password, postgresql://u:ab/cd@host/db); its "@" ends the userinfo, the last one when there are several (so a
    raw "@" is masked whole)."""
    m = _SCHEME.match(uri)
    if not m:
        return None
    head_end = min([i for i in (uri.find("?", m.end()), uri.find("#", m.end())) if i >= 0] or [len(uri)])
    at = uri.rfind("@", m.end(), head_end)
    if at < 0:
        return None
    colon = uri.find(":", m.end(), at)
    # a ":" after a "/" is no password separator when the user part itself holds no ":" (http://h/x:y@z is a path)
    slash = uri.find("/", m.end(), at)
    if colon >= 0 and 0 <= slash < colon:
        colon = -1
    return m.end(), colon + 1 if colon >= 0 else -1, at


def password(uri: str) -> str | None:
    """The password of a URI as the store's client reads it: SQLAlchemy's make_url for a database URL (it
    percent-decodes), urllib's unquote of the userinfo for http(s). None without one."""
    parts = userinfo(uri)
    if parts is None or parts[1] < 0:
        return None
    raw = uri[parts[1]:parts[2]]
    if not uri.startswith(("http://", "https://")):
        try:
            import sqlalchemy

            return sqlalchemy.engine.make_url(uri).password or raw
        except Exception:  # not a URL SQLAlchemy reads (check_uris says so): the raw text is what leaks
            return raw
    return urllib.parse.unquote(raw)


def query_secrets(uri: str) -> list[str]:
    """Values of the secret query keys (?sslpassword=...), decoded."""
    query = urllib.parse.urlsplit(uri).query if "?" in uri else ""
    return [v for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True) if k.lower() in SECRET_QUERY_KEYS]


def check(flag: str, uri: str) -> None:
    """Bad input (exit 2) for a URI whose userinfo is ambiguous: more than one "@" before the host. The message
    names the flag and says to percent-encode; it quotes no part of the password."""
    m = _SCHEME.match(uri or "")
    if not m:
        return
    head_end = min([i for i in (uri.find("?", m.end()), uri.find("#", m.end())) if i >= 0] or [len(uri)])
    if uri.count("@", m.end(), head_end) > 1:
        raise AmbiguousUserinfo(flag, f"more than one '@' before the host in {redact(uri)!r}: a raw '@' in the user "
                                      f"or password makes the host ambiguous; percent-encode it as %40 (and '/' "
                                      f"as %2F, ':' as %3A, '%' as %25, a space as %20)")


def remember(*uris: str) -> None:
    """Register the passwords of these URIs (and of their secret query keys): every later redact() masks them
    wherever they appear, decoded, percent-encoded, TOML/JSON-escaped or HTML-escaped. The way a password with a
    blank in it is masked inside free text, where no parser can tell where the URI ends."""
    found = []
    for uri in uris:
        if uri and "://" in uri:
            parts = userinfo(uri)
            found += [password(uri), uri[parts[1]:parts[2]] if parts and parts[1] >= 0 else None]
            found += query_secrets(uri)
    forms = set()
    for s in found:
        if s and len(s) >= MIN_REGISTERED:
            forms |= {s, urllib.parse.quote(s, safe=""), urllib.parse.quote_plus(s), json.dumps(s)[1:-1],
                      html.escape(s), html.escape(s, quote=False)}
    with _LOCK:
        _SEEN.update(f for f in forms if len(f) >= MIN_REGISTERED)


def redact_uri(uri: str) -> str:
    """One URI fit to show: the userinfo's password (whatever characters it holds) and secret query values become
    ***; scheme, user, host, port, path and the other query keys stay, so a person can tell which store it is."""
    parts = userinfo(uri)
    if parts is not None and parts[1] >= 0:
        uri = uri[:parts[1]] + MASK + uri[parts[2]:]
    return _QUERY_SECRET.sub(r"\1" + MASK, uri)


def redact(text: str) -> str:
    """Text fit to print, log or write: the passwords of this process's URIs (remember()) masked wherever they
    appear, then every URI in the text redacted by redact_uri, then secret query keys. The one redaction of the
    harness: console lines, error messages, report HTML and JSON, MLflow params, tags and config artifacts."""
    if not isinstance(text, str):
        text = str(text)
    if "\n" not in text and _SCHEME.match(text.strip()):  # one whole URI: its bounds are known, blanks included
        remember(text.strip())
    with _LOCK:
        seen = sorted(_SEEN, key=len, reverse=True)
    for s in seen:
        if s in text:
            text = text.replace(s, MASK)
    if "://" in text:
        text = _URI_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text)
    if "=" in text:
        text = _QUERY_SECRET.sub(r"\1" + MASK, text)
    return text


def command_line(*args: str) -> str:
    """A command to print for a person to paste into a POSIX shell: every argument redacted, then shell-quoted, so
    a study name such as `a;touch X` or one with quotes or a newline stays one argument and runs nothing."""
    return " ".join(shlex.quote(redact(str(a))) for a in args)


def split_userinfo(uri: str) -> tuple[str, str | None, str | None]:
    """(uri without user:password@, user, password) of an http(s) URI, percent-decoded: the credentials go in an
    Authorization header (and MLflow's MLFLOW_TRACKING_USERNAME/PASSWORD), never into a host name lookup. A raw "/"
    in the password stays in it (userinfo() reads the authority up to the "@")."""
    parts = userinfo(uri)
    if parts is None:
        return uri, None, None
    start, pw, at = parts
    user = uri[start:(pw - 1 if pw >= 0 else at)]
    bare = uri[:start] + uri[at + 1:]
    return bare, urllib.parse.unquote(user), urllib.parse.unquote(uri[pw:at]) if pw >= 0 and pw < at else None
