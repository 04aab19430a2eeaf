"""Where state lives: default paths and URIs, scheme checks, connecting to MLflow, cache keys, atomic cache files."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

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


def redact(url: str) -> str:
    """A URL fit to print or log: never a database password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def check_uris(storage: str, tracking_uri: str) -> None:
    """Scheme checks with no side effect (bad input, exit 2): ValueError "<flag>: why"."""
    if storage and not storage.startswith(STORAGE_SCHEMES):
        raise ValueError(f"--storage: unsupported URL {storage!r}; use sqlite:///PATH or "
                         f"postgresql://USER:PASSWORD@HOST/DB")
    if tracking_uri and not tracking_uri.startswith(TRACKING_SCHEMES):
        raise ValueError(f"--tracking-uri: unsupported URI {tracking_uri!r}; use sqlite:///PATH or http://HOST:PORT "
                         f"(MLflow 3 refuses the file store)")
    if storage and (storage == tracking_uri or same_sqlite(storage, tracking_uri or default_tracking_uri())):
        raise ValueError("--storage: the Optuna storage must not be the MLflow database (their Alembic schema "
                         "checks clash, optuna#2866); give it its own file or database")


# ------------------------------------------------------------------------------------------------ MLflow

def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Fail fast (seconds, not MLflow's minutes of retries) when an HTTP tracking server or a tracking database
    does not answer."""
    if uri.startswith(("postgresql", "mysql", "mssql")):
        # MLflow's own connect retries with backoff for ~110 s before it gives up on a dead database
        import sqlalchemy

        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": int(timeout)})
        try:
            with engine.connect():
                pass
        except Exception as e:
            first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            if "@" in uri:
                first = first.replace(uri.split("://", 1)[1].split("@", 1)[0], "***")
            raise ConnectionError(f"tracking database {redact(uri)} is unreachable ({first}); start it or pass "
                                  f"another --tracking-uri") from None
        finally:
            engine.dispose()
        return
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            r.read(1)
    except urllib.error.HTTPError as e:
        if e.code >= 500:
            raise ConnectionError(f"tracking server {uri} answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConnectionError(f"tracking server {uri} is unreachable ({reason}); start it or pass another "
                              f"--tracking-uri") from None


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


class StoreNotFound(LookupError):
    """connect(..., existing=True) found no sqlite file: the reader's 'wrong path', not an empty new store."""


def connect(uri: str, existing: bool = False):
    """An MlflowClient (with log_batch_later and flush, see _client_class) on `uri`. The writer (existing=False) fails fast on a dead server before any training; the
    reader (existing=True) refuses a missing sqlite file, which MLflow would silently create empty."""
    path = sqlite_path(uri)
    if existing and path is not None and not path.is_file():
        raise StoreNotFound(f"no MLflow store at {path} (from --tracking-uri {uri}); run a study first or pass the "
                            f"store the study used")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per small artifact is noise
    if uri.startswith(("http://", "https://")):
        # a dead server should cost seconds, not MLflow's default 7 retries with backoff (minutes)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    if not existing:
        check_reachable(uri)
    return _client_class()(uri)


# ------------------------------------------------------------------------------------------------ caches

def cache_key(obj, extra: str = "", n: int = 16) -> str:
    """Content address of a JSON-able description (sorted keys; non-JSON values by str) plus any extra text."""
    blob = json.dumps(obj, sort_keys=True, default=str) + extra
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def save_tensors(tensors: dict, path: Path, meta: dict | None = None) -> None:
    """A safetensors cache file (and its JSON sidecar), written under a temporary name and renamed: concurrent
    workers or a kill never leave half a file under the final name. The sidecar is written first, so a file under
    the final name always has its sidecar."""
    from safetensors.torch import save_file  # torch stays out of the reader's imports (results, report)

    path.parent.mkdir(parents=True, exist_ok=True)
    if meta is not None:
        side = path.with_suffix(".json")
        tmp_meta = side.with_suffix(f".json.{os.getpid()}.tmp")
        tmp_meta.write_text(json.dumps(meta))
        tmp_meta.replace(side)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)


def load_tensors(path: Path, device: str = "cpu") -> tuple[dict, dict | None] | None:
    """(tensors, sidecar or None) of a cache file, or None when it is absent."""
    if not path.exists():
        return None
    from safetensors.torch import load_file

    side = path.with_suffix(".json")
    return load_file(str(path), device=device), (json.loads(side.read_text()) if side.exists() else None)
