"""`python -m harness.report`: the command line of the report (exit 0 written, 1 runtime failure, 2 bad input)."""

from __future__ import annotations

import argparse
import sys

from harness import results, store
from harness.report import build


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.report", description="Write the HTML report of one or more "
                                 "studies (several: side by side) from MLflow, and log it on each study's parent run.",
                                 epilog="Exit codes: 0 success, 1 runtime failure (e.g. server unreachable), 2 bad input.")
    ap.add_argument("--study-name", action="append", required=True, metavar="NAME",
                    help="study to report on; repeat to compare studies side by side")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlruns/mlflow.db in the current "
                    "directory)")
    ap.add_argument("--storage", help="Optuna storage URL (default: sqlite:///mlruns/optuna.db in the current "
                    "directory; used for the trial states, optional)")
    ap.add_argument("--out", default="reports", help="output folder (default: reports)")
    ap.add_argument("--ui-url", help="base URL of an MLflow UI on this store (e.g. http://127.0.0.1:5000, what "
                    "python -m harness.ui serves): every trial links to its run there (default: the tracking URI "
                    "when it is an http(s) server, else no links)")
    args = ap.parse_args(argv)
    uri = args.tracking_uri or store.default_tracking_uri()
    store.redaction.remember(uri, args.storage or "")  # masked wherever the page or an error quotes them
    if not uri.startswith(store.TRACKING_SCHEMES):
        print(f"error: --tracking-uri: unsupported URI {store.redact(uri)!r}; use sqlite:///PATH or http://HOST:PORT", file=sys.stderr)
        return 2
    if any(not n.strip() for n in args.study_name):
        print("error: --study-name: must not be empty", file=sys.stderr)
        return 2
    try:
        store.check_reachable(uri)
        out = build(args.study_name, uri, args.storage, args.out, ui_url=args.ui_url)
    except results.StudyNotFound as e:
        print(store.redact(f"error: {e.args[0] if e.args else e}"), file=sys.stderr)
        return 2
    except Exception as e:  # ConnectionError, OSError, an MlflowException from a broken store: a message, not a traceback
        print(store.redact(f"error: {type(e).__name__}: {e}"), file=sys.stderr)
        return 1
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
