"""Where state lives: default paths and URIs, scheme checks, connecting to MLflow, cache keys, atomic cache files."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from harness import redaction
from harness.config import ConfigError

SQLITE = "sqlite:///"
TRACKING_SCHEMES = (SQLITE, "http://", "https://", "postgresql", "mysql", "databricks")
STORAGE_SCHEMES = (SQLITE, "postgresql", "mysql")


# ------------------------------------------------------------------------------------------ paths and URIs

def home(cwd: Path | None = None) -> Path:
    """Generated state (MLflow store, Optuna storage, caches) lives in ./mlruns, git-ignored."""
    return (cwd or Path.cwd()) / "mlruns"


def cache_dir(cwd: Path | None = None) -> Path:
    return home(cwd) / "cache"


def default_tracking_uri(cwd: Path | None = None) -> str:
    return f"{SQLITE}{(home(cwd) / 'mlflow.db').resolve()}"


def default_storage(cwd: Path | None = None) -> str:
    """The Optuna storage: its own sqlite file, never the MLflow database (their Alembic checks clash, optuna#2866)."""
    return f"{SQLITE}{(home(cwd) / 'optuna.db').resolve()}"


def sqlite_path(uri: str) -> Path | None:
    """The file of a sqlite:/// URI (None for any other scheme)."""
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


def same_sqlite(a: str, b: str) -> bool:
    pa, pb = sqlite_path(a), sqlite_path(b)
    return pa is not None and pb is not None and pa.resolve() == pb.resolve()


# the redaction lives in harness.redaction; these names stay here for their many callers
redact, command_line, split_userinfo = redaction.redact, redaction.command_line, redaction.split_userinfo


def check_uris(storage: str, tracking_uri: str) -> None:
    """Scheme checks with no side effect (bad input, exit 2): ConfigError naming the flag. Their passwords are
    registered for redaction first (harness.redaction.remember), so no message below can quote one."""
    redaction.remember(storage, tracking_uri)
    for flag, uri in (("--storage", storage), ("--tracking-uri", tracking_uri)):
        redaction.check(flag, uri)
    if storage and not storage.startswith(STORAGE_SCHEMES):
        raise ConfigError("--storage", f"unsupported URL {redact(storage)!r}; use sqlite:///PATH or "
                          f"postgresql://USER:PASSWORD@HOST/DB")
    if tracking_uri and not tracking_uri.startswith(TRACKING_SCHEMES):
        raise ConfigError("--tracking-uri", f"unsupported URI {redact(tracking_uri)!r}; use sqlite:///PATH or "
                          f"http://HOST:PORT (MLflow 3 refuses the file store)")
    if storage and (storage == tracking_uri or same_sqlite(storage, tracking_uri or default_tracking_uri())):
        raise ConfigError("--storage", "the Optuna storage must not be the MLflow database (their Alembic schema "
                          "checks clash, optuna#2866); give it its own file or database")
    if not storage and tracking_uri and same_sqlite(tracking_uri, default_storage()):  # MLflow tables in optuna.db
        raise ConfigError("--tracking-uri", f"{sqlite_path(tracking_uri)} is the Optuna storage's default file; "
                          f"their Alembic schema checks clash (optuna#2866): give MLflow its own file, e.g. the "
                          f"default sqlite:///mlruns/mlflow.db")
    for flag, uri in (("--storage", storage), ("--tracking-uri", tracking_uri)):
        if uri and uri.startswith(SQLITE):
            _check_sqlite_writable(flag, sqlite_path(uri))
        elif uri and uri.startswith(("postgresql", "mysql")):
            _check_driver(flag, uri)


def _check_sqlite_writable(flag: str, path: Path) -> None:
    """A sqlite file we could not create or write fails late (after mlruns/ and the MLflow store exist); say so now.
    Tried, not inferred from permission bits (root passes os.access everywhere, /proc and read-only mounts refuse
    anyway): the file opened for update, and a nameless temporary file in its nearest existing folder (the folders
    below it are created, as mlruns/ is), which vanishes when closed."""
    import tempfile

    # the folder is always the file's parent: sqlite writes its journal (-wal, -shm) beside the file, so an existing
    # file in a read-only folder cannot be written either (a resumed study reopens its files)
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    try:
        if path.is_dir() or not folder.is_dir():
            raise NotADirectoryError(f"{path if path.is_dir() else folder} is {'a' if path.is_dir() else 'not a'} "
                                     f"folder")
        if path.exists():
            with open(path, "r+b"):
                pass
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ConfigError(flag, f"cannot write the sqlite file {path} ({e.strerror or e}); give a file in a folder "
                          f"this user can write") from None


def _check_driver(flag: str, uri: str) -> None:
    """The database driver (DBAPI) of a postgresql:// or mysql:// URL, imported now: without it SQLAlchemy fails
    only when the store opens, after local files exist."""
    import sqlalchemy

    try:
        dialect = sqlalchemy.engine.make_url(uri).get_dialect()
    except Exception as e:  # ArgumentError (malformed URL), NoSuchModuleError (unknown +driver)
        raise ConfigError(flag, f"not a database URL SQLAlchemy reads ({redact(str(e))}); use "
                          f"postgresql://USER:PASSWORD@HOST/DB") from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        raise ConfigError(flag, f"the {dialect.name} driver {dialect.driver!r} is not installed ({e}); install it "
                          f"(e.g. pip install {'pymysql' if dialect.name == 'mysql' else 'psycopg2-binary'}) and "
                          f"name it in the URL ({dialect.name}+{'pymysql' if dialect.name == 'mysql' else 'psycopg2'}"
                          f"://...)") from None


# ------------------------------------------------------------------------------------------------ MLflow

def check_reachable(uri: str, timeout: float = 10.0, flag: str = "--tracking-uri") -> None:
    """Fail fast (seconds, not MLflow's minutes of retries) when an HTTP tracking server or a tracking database (or,
    flag="--storage", the Optuna database) does not answer. Called before any local file is made, so a dead store
    leaves nothing behind."""
    redaction.remember(uri)  # whatever the server answers may echo it
    what = "Optuna storage" if flag == "--storage" else "tracking database"
    if uri.startswith(("postgresql", "mysql", "mssql")):
        # MLflow's own connect retries with backoff for ~110 s before it gives up on a dead database
        import sqlalchemy

        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": int(timeout)})
        try:
            with engine.connect():
                pass
        except Exception as e:
            first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            raise ConnectionError(f"{what} {redact(uri)} is unreachable ({redact(first)}); start it or pass "
                                  f"another {flag}") from None
        finally:
            engine.dispose()
        return
    if not uri.startswith(("http://", "https://")):
        return
    bare, user, password = split_userinfo(uri)
    request = urllib.request.Request(bare.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1")
    if user is not None:  # basic auth as MLflow sends it; "user:pw@host" is never looked up as a host name
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            r.read(1)
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise ConnectionError(f"tracking server {redact(uri)} refused the credentials (HTTP {e.code}); pass "
                                  f"http://USER:PASSWORD@HOST or set MLFLOW_TRACKING_USERNAME/PASSWORD") from None
        if e.code >= 500:
            raise ConnectionError(f"tracking server {redact(uri)} answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConnectionError(f"tracking server {redact(uri)} is unreachable ({redact(str(reason))}); start it or "
                              f"pass another --tracking-uri") from None


def _client_class():
    """MlflowClient plus per-epoch metric batches on a logging thread of the client's own (imported lazily: mlflow
    costs ~1 s to import). MLflow's own async logging (synchronous=False) was tried: set_terminated shuts its queue
    down and joins its threads, ~275 ms a trial here, more than it saves."""
    from concurrent.futures import ThreadPoolExecutor

    from mlflow.tracking import MlflowClient

    class Client(MlflowClient):
        def __init__(self, tracking_uri: str):
            super().__init__(tracking_uri=tracking_uri)
            self._pending: dict[str, list] = {}  # run id -> batches handed to the logging thread, not waited for
            self._thread = None  # one thread per client, started on first use, never shut down between trials

        def log_batch_later(self, run_id: str, metrics: list) -> None:
            """log_batch on the logging thread, off the training loop; flush() waits for it."""
            if self._thread is None:
                self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="harness-mlflow")
            self._pending.setdefault(run_id, []).append(self._thread.submit(self.log_batch, run_id, metrics=metrics))

        def flush(self, run_id: str) -> None:
            """Wait for the run's async metric batches; a failed one raises here (MlflowException)."""
            for future in self._pending.pop(run_id, []):
                future.result()

    return Client


@contextlib.contextmanager
def init_lock(uri: str):
    """Exclusive while a new store's schema is created: a sqlite store's processes on this machine take turns (a
    lock file beside the database). Two processes creating one schema at once fail in Alembic ("Online migration
    expected to match one row ... 0 found"); other schemes get no local lock and rely on initialized()'s retries."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


INIT_TRIES, INIT_BACKOFF_S = 5, 0.5  # 0.5 + 1 + 2 + 4 s: room for another machine's migration (~2 s on PostgreSQL)


def initialized(uri: str, make):
    """make() (which opens the store at `uri`, creating its schema if new) under init_lock, retried when it fails:
    for a server database the first attempt may race another machine's schema creation, and the second then finds
    the schema made. A dead server (ConnectionError) is not retried; the last failure is raised."""
    for attempt in range(INIT_TRIES):
        try:
            with init_lock(uri):
                return make()
        except ConnectionError:
            raise
        except Exception:
            if attempt == INIT_TRIES - 1:
                raise
            time.sleep(INIT_BACKOFF_S * 2**attempt)


def _sqlite_wal(dbapi_connection, _record) -> None:
    """Every new sqlite connection of this process: write-ahead log, synced at checkpoints only. A trial commits
    ~55 times (Optuna's params and per-epoch reports, MLflow's run, batches, inputs and tags); in the default
    rollback journal each commit syncs the disk, 1 ms idle and 5 ms with the 2 cores busy, 0.28 s of a frozen-body
    trial's 0.36 s fixed cost here (0.08 s with WAL). A killed process loses nothing (its commits are in the log);
    a power cut may lose the last commits, never the database (sqlite.org/wal.html). WAL also lets readers (the
    MLflow UI, the report) read while a worker writes. Other databases are left alone."""
    import sqlite3

    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")  # persistent in the file; a no-op once set
            cursor.execute("PRAGMA synchronous=NORMAL")  # per connection
        except sqlite3.OperationalError:  # locked by another process mid-transaction: its default stays, still safe
            pass
        finally:
            cursor.close()


def quick_commits() -> None:
    """Register _sqlite_wal for every SQLAlchemy engine this process creates (MLflow's store and Optuna's storage
    make their own); once, however often called."""
    import sqlalchemy

    if not sqlalchemy.event.contains(sqlalchemy.engine.Engine, "connect", _sqlite_wal):
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", _sqlite_wal)


class StoreNotFound(LookupError):
    """connect(..., existing=True) found no sqlite file: the reader's 'wrong path', not an empty new store."""


def connect(uri: str, existing: bool = False):
    """An MlflowClient (with log_batch_later and flush, see _client_class) on `uri`. The writer (existing=False) fails fast on a dead server before any training; the
    reader (existing=True) refuses a missing sqlite file, which MLflow would silently create empty."""
    redaction.remember(uri)
    path = sqlite_path(uri)
    if existing and path is not None and not path.is_file():
        raise StoreNotFound(f"no MLflow store at {path} (from --tracking-uri {redact(uri)}); run a study first or pass the "
                            f"store the study used")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per small artifact is noise
    if uri.startswith(("http://", "https://")):
        # a dead server should cost seconds, not MLflow's default 7 retries with backoff (minutes)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    if existing:
        return _client_class()(client_uri(uri))
    check_reachable(uri)
    quick_commits()

    def make():
        client = _client_class()(client_uri(uri))
        client.search_experiments(max_results=1)  # opens the store now, under the lock: MLflow creates its schema
        return client

    return initialized(uri, make)


def client_uri(uri: str) -> str:
    """The URI MLflow gets: an http(s) URI without its user:password@, which go to MLflow's own credential variables
    (MLFLOW_TRACKING_USERNAME/PASSWORD, inherited by worker processes), so no MLflow message or log line carries
    them."""
    if not uri.startswith(("http://", "https://")):
        return uri
    bare, user, password = split_userinfo(uri)
    if user is not None:
        os.environ["MLFLOW_TRACKING_USERNAME"] = user
        if password is not None:
            os.environ["MLFLOW_TRACKING_PASSWORD"] = password
    return bare


# ------------------------------------------------------------------------------------------------ caches

def cache_key(obj, extra: str = "", n: int = 16) -> str:
    """Content address of a JSON-able description (sorted keys; non-JSON values by str) plus any extra text."""
    blob = json.dumps(obj, sort_keys=True, default=str) + extra
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def save_tensors(tensors: dict, path: Path, meta: dict | None = None, inline: bool = False) -> None:
    """A safetensors cache file and its JSON description `meta`, written under a temporary name and renamed: concurrent
    workers or a kill never leave half a file under the final name. `meta` goes to a sidecar (<name>.json, written
    first, so a file under the final name always has its sidecar) or, `inline`, into the safetensors header itself:
    one file, written at once (harness.suite's index of what each key holds)."""
    from safetensors.torch import save_file  # torch stays out of the reader's imports (results, report)

    path.parent.mkdir(parents=True, exist_ok=True)
    if meta is not None and not inline:
        side = path.with_suffix(".json")
        tmp_meta = side.with_suffix(f".json.{os.getpid()}.tmp")
        tmp_meta.write_text(json.dumps(meta))
        tmp_meta.replace(side)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={"meta": json.dumps(meta)} if meta is not None and inline else None)
    tmp.replace(path)


def load_tensors(path: Path, device: str = "cpu") -> tuple[dict, dict | None] | None:
    """(tensors, their JSON description or None) of a cache file, or None when it is absent. The description is the
    header's when save_tensors wrote it inline, else the sidecar's."""
    if not path.exists():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=device) as f:  # what safetensors.torch.load_file does
        tensors, header = f.get_tensors(), f.metadata() or {}
    if "meta" in header:
        return tensors, json.loads(header["meta"])
    side = path.with_suffix(".json")
    return tensors, (json.loads(side.read_text()) if side.exists() else None)
