"""`python -m harness.report`: the command line of the report (exit 0 written, 1 runtime failure, 2 bad input)."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from pathlib import Path

from harness import flags, results, store
from harness.config import ConfigError, _short
from harness.report import build, markdown, summaries


def _check_out(out: str) -> str:
    """--out must be a folder or a path one can become: an existing file (or a file above it) fails after the store
    was read, with an OSError."""
    path = Path(out).expanduser()
    for p in (path, *path.parents):
        if p.exists():
            return "" if p.is_dir() else f"--out: {_short(str(p))} exists and is not a folder; give a folder for the report"
    return ""


def _check_ui_url(url: str | None) -> str:
    """--ui-url becomes the href of every trial's link: only http(s) URLs with a host ('javascript:...' would run)."""
    if url is None:
        return ""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(ord(c) < 33 or ord(c) == 127 for c in url):
        return (f"--ui-url: expected an http(s) URL such as http://127.0.0.1:5000 (no spaces or control characters), "
                f"got {_short(store.redact(url))}")
    return ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.report", description="Write the HTML report of one or more "
                                 "studies (several: side by side) from MLflow, and log it on each study's parent run.",
                                 epilog="Exit codes: 0 success, 1 runtime failure (e.g. server unreachable), 2 bad input.")
    ap.add_argument("--study-name", "--study", action="append", dest="study_name", metavar="NAME",
                    help="study to report on; repeat to compare studies side by side (required, except with "
                    "--markdown, where the default is every study in the store)")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlruns/mlflow.db in the current "
                    "directory)")
    ap.add_argument("--storage", help="Optuna storage URL (default: sqlite:///mlruns/optuna.db in the current "
                    "directory; used for the trial states, optional)")
    ap.add_argument("--out", help="output folder (default: reports); with --markdown a .md file: written, or, when "
                    "it holds a generated block, that block replaced (default: standard output)")
    ap.add_argument("--markdown", action="store_true", help="print the README's results tables (headline "
                    "comparisons, conditions, leaderboard top rows, budgets) as Markdown between generated-block "
                    "markers, with the commit, date, machine and load of each study; writes no HTML")
    ap.add_argument("--json", metavar="REPORT_JSON", action="append", help="with --markdown: read the numbers from "
                    "this report.json instead of the stores (repeat it to read several)")
    ap.add_argument("--spread", action="store_true", help="with --markdown: one row per study (the same study at "
                    "several seeds or machines): its selection, selection share and paired comparisons")
    ap.add_argument("--ui-url", help="base URL of an MLflow UI on this store (e.g. http://127.0.0.1:5000, what "
                    "python -m harness.ui serves): every trial links to its run there (default: the tracking URI "
                    "when it is an http(s) server, else no links)")
    args = ap.parse_args(argv)
    for flag, given in (("--json", args.json), ("--spread", args.spread)):
        if given and not args.markdown:
            print(f"error: {flag}: only with --markdown", file=sys.stderr)
            return 2
    if not args.study_name and not args.markdown:
        print("error: --study-name: required (repeat it to compare studies)", file=sys.stderr)
        return 2
    if args.markdown and args.out and not args.out.endswith(".md"):
        print(f"error: --out: with --markdown a .md file, got {_short(args.out)}", file=sys.stderr)
        return 2
    if args.markdown and args.json:
        return _markdown_from_json(args.json, args.out, args.study_name, args.spread)
    uri = args.tracking_uri or store.default_tracking_uri()
    store.redaction.remember(uri, args.storage or "")  # masked wherever the page or an error quotes them
    if not uri.startswith(store.TRACKING_SCHEMES):
        print(f"error: --tracking-uri: unsupported URI {store.redact(uri)!r}; use sqlite:///PATH or http://HOST:PORT", file=sys.stderr)
        return 2
    if any(not n.strip() for n in args.study_name or []):
        print("error: --study-name: must not be empty", file=sys.stderr)
        return 2
    bad = (_check_out(args.out) if args.out and not args.markdown else "") or _check_ui_url(args.ui_url)
    try:
        for flag, url in (("--tracking-uri", uri), ("--storage", args.storage)):
            flags.check_url_syntax(flag, url)
    except ConfigError as e:
        bad = bad or str(e)
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    try:
        store.check_reachable(uri)
        if args.markdown:
            got = summaries(args.study_name, uri, args.storage)
            return _write_markdown(markdown.spread(got) if args.spread else markdown.render(got), args.out)
        out = build(args.study_name, uri, args.storage, args.out or "reports", ui_url=args.ui_url)
    except results.StudyNotFound as e:
        print(store.redact(f"error: {e.args[0] if e.args else e}"), file=sys.stderr)
        return 2
    except Exception as e:  # ConnectionError, OSError, an MlflowException from a broken store: a message, not a traceback
        print(store.redact(f"error: {type(e).__name__}: {e}"), file=sys.stderr)
        return 1
    print(f"report: {out}")
    return 0


def _write_markdown(text: str, out: str | None) -> int:
    """Standard output; or the .md file out: its generated block replaced when it has one, else the whole file."""
    if not out:
        sys.stdout.write(text)
        return 0
    path = Path(out)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    begin = text.split("\n", 1)[0]  # the block's own marker: the README has one block per command
    path.write_text(markdown.replace_block(old, text, begin) if begin in old else text, encoding="utf-8")
    print(f"markdown: {path.resolve()}")
    return 0


def _markdown_from_json(paths: list[str], out: str | None, names: list[str] | None, spread: bool = False) -> int:
    """--markdown --json report.json [--json ...]: the tables of the studies in existing report.json files (all, or
    those named), in the order given; with spread, one row per study (markdown.spread)."""
    studies = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            studies += [s for s in data["studies"] if not names or s["name"] in names]
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"error: --json: cannot read a report.json from {path!r} ({type(e).__name__}: {e})", file=sys.stderr)
            return 2
    if not studies:
        print(f"error: --study-name: none of {names} is in {', '.join(map(repr, paths))}", file=sys.stderr)
        return 2
    return _write_markdown(markdown.spread(studies) if spread else markdown.render(studies), out)


if __name__ == "__main__":
    sys.exit(main())
