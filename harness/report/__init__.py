"""The report of one or more studies: read from MLflow, summarized, written as index.html + report.json and logged on
each study's parent run (the CLI is __main__: `python -m harness.report`)."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

from harness import links, numbers, results, store, sustain_numbers
from harness.report import study_page, sustain_page
from harness.report.kit import slug

VERSION = 1


def _clean(obj):
    """JSON-safe and fit to publish: NaN and infinities become null, tuples lists, every string redacted."""
    if isinstance(obj, str):
        return store.redact(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def summaries(study_names: list[str] | None, tracking_uri: str, storage: str | None = None) -> list[dict]:
    """The JSON-safe summaries of the named studies (None: every study in the store), as report.json holds them."""
    storage = storage or store.default_storage()
    if not study_names:
        try:
            study_names = results.study_names(store.connect(tracking_uri, existing=True))
        except store.StoreNotFound as e:
            raise results.StudyNotFound(*e.args) from None
        if not study_names:
            raise results.StudyNotFound("the store has no study")
    studies = [results.load(n, tracking_uri, storage) for n in dict.fromkeys(study_names)]
    return _clean([(sustain_numbers.summarize_sustain if st.get("kind") == "sustain" else numbers.summarize)(st)
                   for st in studies])


def build(study_names: list[str], tracking_uri: str, storage: str | None = None, out_dir="reports",
          log=print, ui_url: str | None = None) -> Path:
    """Read the studies from MLflow (and Optuna), write <out_dir>/<study>/index.html (several studies:
    <a>+<b>/index.html) and report.json next to it, log both on each study's parent run, return the HTML path.
    Raises results.StudyNotFound for an unknown study or store."""
    if not study_names:
        raise results.StudyNotFound("no study name given")
    names = list(dict.fromkeys(study_names))  # the same study twice is shown once
    storage = storage or store.default_storage()
    studies = [results.load(n, tracking_uri, storage) for n in names]
    # harness.sustain studies have numbers (and a page) of their own
    summaries = [(sustain_numbers.summarize_sustain if st.get("kind") == "sustain" else numbers.summarize)(st)
                 for st in studies]
    for s in summaries:  # trials link to their runs in the MLflow UI when there is one (http server or --ui-url)
        s["ui_base"] = links.ui_base(tracking_uri, ui_url)
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sustain = any(s.get("kind") == "sustain" for s in summaries)  # harness.sustain studies have their own page
    # redacted whole: the page quotes the tracking URI and the logged config (older studies logged it unredacted)
    page = store.redact((sustain_page if sustain else study_page).render(studies, summaries, generated))
    data = _clean({"harness_report_version": VERSION, "generated": generated, "tracking_uri": tracking_uri,
                   "studies": summaries})
    folder = Path(out_dir) / "+".join(slug(n) for n in names)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "index.html"
    out.write_text(page, encoding="utf-8")
    text = json.dumps(data, indent=1, sort_keys=False, allow_nan=False)
    (folder / "report.json").write_text(text, encoding="utf-8")
    for s in summaries:
        if s["message"]:
            log(s["message"])
    _log_to_mlflow(summaries, tracking_uri, page, text, folder.name, log)
    return out.resolve()


def _log_to_mlflow(summaries, tracking_uri, page: str, text: str, folder: str, log) -> None:
    """report/index.html and report/report.json on the parent run (several studies: report/compare/<a>+<b>/ on
    each parent). A store that refuses the upload costs a warning, not the report on disk."""
    from harness import tracking

    client = store.connect(tracking_uri, existing=True)
    prefix = "report" if len(summaries) == 1 else f"report/compare/{folder}"
    for s in summaries:
        try:
            tracking.log_text(client, s["parent_run_id"], page, f"{prefix}/index.html")
            tracking.log_text(client, s["parent_run_id"], text, f"{prefix}/report.json")
        except Exception as e:  # noqa: BLE001 - e.g. a read-only store or artifact server down
            log(f"warning: could not log the report on run {s['parent_run_id']}: {type(e).__name__}: {e}")
