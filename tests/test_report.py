"""The HTML report: numbers equal to MLflow's, self-contained, escaped, logged on the parent run, CLI exit codes."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harness import report, results, study
from test_results import HOSTILE, shared_report, shared_study

pytestmark = pytest.mark.slow

# Allowed by config validation (1-200 characters, no slashes), so it reaches MLflow, Optuna and the page.
EVIL_NAME = "x<script>alert(1)<img src=x onerror=console.error(7)>&\"q' $a$"
SECTIONS = ("headline", "provenance", "leaderboard", "shifts", "on-the-line", "hyperparameters", "calibration",
            "training", "failures", "examples", "metrics")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    info = shared_report(tmp_path_factory)
    page = Path(info["html"]).read_text(encoding="utf-8")
    data = json.loads((Path(info["html"]).parent / "report.json").read_text())
    return {**info, "page": page, "data": data, "client": MlflowClient(info["uri"])}


@pytest.fixture(scope="module")
def evil(tmp_path_factory):
    """A study whose name carries HTML and whose every trial fails (lr 3e36 overflows in the first epoch, even the linear probe), run by
    harness.study.main with the report on, in the shared study's folder (its caches make it ~10 s)."""
    root = Path(shared_study(tmp_path_factory)["root"])
    import contextlib
    import io

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.chdir(root)
        rc = study.main(["--config", "tiny.toml", "--study-name", EVIL_NAME, "--n-trials", "1",
                         "--set", "search.lr=[1e36, 1e37]"])
    path = Path(out.getvalue().rsplit("report: ", 1)[1].strip())
    return {"rc": rc, "stdout": out.getvalue(), "path": path, "page": path.read_text(encoding="utf-8"), "root": root}


def _elements(page: str) -> set:
    """Tag names the HTML parser sees; fails on any event-handler attribute (on*) or script element."""
    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            seen.add(tag)
            assert tag != "script" and not any(k.startswith("on") for k, _ in attrs), (tag, attrs)

    seen = set()
    Collect().feed(page)
    return seen


def _rows(page: str, cls: str) -> dict:
    """{run id: {data-key: displayed text}} for the rows of every table of class cls."""
    out = {}
    for tbl in re.findall(rf'<table class="{cls}">(.*?)</table>', page, re.S):
        for run_id, body in re.findall(r'<tr data-run-id="([0-9a-f]+)"[^>]*>(.*?)</tr>', tbl, re.S):
            out[run_id] = {k: html.unescape(v) for k, v in re.findall(r'data-key="([^"]+)">([^<]*)<', body)}
    return out


def test_cli_default_paths_exit_0_and_no_torch(built):
    """`python -m harness.report --study-name tiny` in the study's folder (default sqlite paths) exits 0, prints
    the path of reports/tiny/index.html, and never imports torch."""
    assert built["rc"] == 0
    assert f"report: {built['html']}" in built["stdout"]
    assert built["torch"] is False


def test_leaderboard_numbers_equal_mlflow(built):
    """Every number in the leaderboard equals the MLflow value of the same run within display rounding: trial
    number, lr (3 significant digits), objective/ID/OOD/worst accuracies (0.1 point), ECEs (0.001), the 95%
    Wilson interval recomputed from MLflow's id_acc and the test-set size, and effective robustness recomputed
    from MLflow's ID and OOD accuracies of all completed trials."""
    client, data = built["client"], built["data"]["studies"][0]
    rows = _rows(built["page"], "leaderboard")
    assert len(rows) == 3
    runs = {rid: client.get_run(rid) for rid in rows}
    fit = results.on_the_line({rid: (r.data.metrics["id_acc"], r.data.metrics["ood_acc_mean"]) for rid, r in runs.items()},
                              data["n_test"])
    for rid, cells in rows.items():
        m, p = runs[rid].data.metrics, runs[rid].data.params
        assert cells["number"] == f"#{runs[rid].data.tags['optuna.trial_number']}"
        assert float(cells["lr"]) == pytest.approx(float(p["lr"]), rel=5e-3)
        for key, metric in (("objective", "val_acc_final"), ("id_acc", "id_acc"), ("ood_acc_mean", "ood_acc_mean"),
                            ("ood_acc_worst", "ood_acc_worst")):
            assert abs(float(cells[key]) - 100 * m[metric]) <= 0.05 + 1e-9, (key, cells[key], m[metric])
        for key in ("id_ece", "ood_ece_mean"):
            assert abs(float(cells[key]) - m[key]) <= 0.0005 + 1e-12
        lo, hi = (float(v) for v in cells["id_acc_ci"].split("\u2013"))
        want = results.wilson(m["id_acc"], data["n_test"])
        assert abs(lo - 100 * want[0]) <= 0.05 + 1e-9 and abs(hi - 100 * want[1]) <= 0.05 + 1e-9
        lo, hi = (float(v) for v in cells["ood_acc_ci"].split("\u2013"))
        want = results.wilson(m["ood_acc_mean"], data["n_shift_eval"])  # shifted sets: a subset of the test split
        assert abs(lo - 100 * want[0]) <= 0.05 + 1e-9 and abs(hi - 100 * want[1]) <= 0.05 + 1e-9
        assert abs(float(cells["effective_robustness"]) - 100 * fit["effective_robustness"][rid]) <= 0.05 + 1e-9
    best = next(r for r in data["trials"] if r["number"] == data["best"])
    card = re.search(r'data-key="ID test accuracy">([^<]*)<', built["page"]).group(1)
    assert abs(float(card.rstrip("%")) - 100 * client.get_run(best["run_id"]).data.metrics["id_acc"]) <= 0.05 + 1e-9


def test_json_numbers_equal_mlflow(built):
    """The JSON next to the page holds, per trial, MLflow's exact final metrics and per-severity shift accuracies,
    and per-epoch val_acc; pruned and failed trials carry their reasons."""
    client, data = built["client"], built["data"]["studies"][0]
    assert data["name"] == "tiny" and data["n_test"] > 0
    for r in data["trials"]:
        run = client.get_run(r["run_id"])
        for k, v in r["final"].items():
            assert v == run.data.metrics[k], k
        for name, sev in r["shift_acc"].items():
            hist = {str(m.step): m.value for m in client.get_metric_history(r["run_id"], f"shift/{name}/acc")}
            assert sev == hist
        assert [v for _, v in r["curves"]["val_acc"]] == \
            [m.value for m in sorted(client.get_metric_history(r["run_id"], "val_acc"), key=lambda m: m.step)]
    states = {r["run_id"]: r for r in data["trials"]}
    assert states[built["pruned"]]["state"] == "pruned" and "below the median" in states[built["pruned"]]["reason"]
    assert states[built["failed"]]["reason"] == client.get_run(built["failed"]).data.tags["harness.fail_reason"]


def test_page_is_self_contained_sectioned_and_logged(built):
    """One file: every section has its anchor and a 'how to read' line and is linked from the contents; no script,
    no stylesheet or image from anywhere but the page itself (data: URIs); the shift grid is embedded; the HTML
    and JSON are logged on the study's parent run as report/index.html and report/report.json."""
    page, client = built["page"], built["client"]
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page and f'href="#{sid}"' in page
    assert page.count('<p class="how">') >= len(SECTIONS)
    assert "<script" not in page.lower()
    for attr, url in re.findall(r'\b(src|href)="([^"]*)"', page):
        assert url.startswith(("data:image/png;base64,", "#")), (attr, url[:80])
    assert "@import" not in page and "url(" not in page
    assert page.count("data:image/png;base64,") >= 6  # figures plus the shift example grid
    parent = built["data"]["studies"][0]["parent_run_id"]
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert logged == {"report/index.html", "report/report.json"}
    assert results.artifact(client, parent, "report/index.html").decode() == page


def test_fail_reason_with_html_is_escaped(built):
    """A fail reason holding <img onerror>, <script>, quotes and & appears escaped in the pruned/failed table, never
    raw, and equals the MLflow tag once unescaped."""
    page = built["page"]
    assert HOSTILE not in page and "<img src=x" not in page and "<script>" not in page
    _elements(page)
    assert html.escape(HOSTILE, quote=True) in page
    rows = _rows(page, "failures")
    assert rows[built["failed"]]["reason"] == built["client"].get_run(built["failed"]).data.tags["harness.fail_reason"]


def test_study_without_completed_trial_and_with_html_in_its_name(evil):
    """A study whose trials all fail stops after 3 failures in a row with exit 1 (its target was not reached), a
    clear line on stdout and a report that says so on top (no traceback); its name, full of HTML, is escaped
    everywhere on the page."""
    assert evil["rc"] == 1, evil["stdout"][-2000:]
    assert "has no completed trial" in evil["stdout"] and "3 failed" in evil["stdout"]
    page = evil["page"]
    assert 'id="no-completed"' in page and "has no completed trial" in page
    assert EVIL_NAME not in page and "<script" not in page
    assert _elements(page) <= {"html", "head", "meta", "title", "style", "body", "nav", "b", "a", "main", "h1", "h2", "h3",
                               "p", "section", "div", "table", "thead", "tbody", "tr", "th", "td", "span", "small",
                               "br", "img", "details", "summary", "pre"}  # no element or attribute from the name
    assert html.escape(EVIL_NAME, quote=True) in page
    assert evil["path"].parent.parent == evil["root"] / "reports" and "<" not in str(evil["path"])
    assert page.count('<span class="badge failed">') == 3  # each failure listed with its reason


def test_two_studies_side_by_side(built, evil, tmp_path):
    """--study-name A --study-name B: one page in reports/A+B/ with both headlines, both leaderboards (the
    empty study says why it has none), both names in provenance, and report.json with both studies; the page is
    logged under report/compare/ on each parent run."""
    out = report.build(["tiny", EVIL_NAME], built["uri"], built["storage"], out_dir=tmp_path, log=lambda *_: None)
    assert out.parent.name.startswith("tiny+x_script") and out.name == "index.html"
    page = out.read_text(encoding="utf-8")
    assert EVIL_NAME not in page and html.escape(EVIL_NAME, quote=True) in page
    assert page.count('<div class="study">') == 2 and 'class="grid2"' in page
    assert len(_rows(page, "leaderboard")) == 3 and "has no completed trial" in page
    data = json.loads((out.parent / "report.json").read_text())
    assert [s["name"] for s in data["studies"]] == ["tiny", EVIL_NAME]
    parent = data["studies"][0]["parent_run_id"]
    logged = [a.path for a in built["client"].list_artifacts(parent, "report/compare")]
    assert logged == [f"report/compare/{out.parent.name}"]


def test_cli_bad_input_exits_2_with_a_message(built, tmp_path, capsys):
    """Bad input exits 2 with a message and writes nothing: an unknown study (the message names the known ones),
    a store path that does not exist (no database gets created), an unsupported URI, no --study-name."""
    assert report.main(["--study-name", "nope", "--tracking-uri", built["uri"], "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "'nope' not found" in err and "'tiny'" in err
    missing = tmp_path / "missing.db"
    assert report.main(["--study-name", "tiny", "--tracking-uri", f"sqlite:///{missing}", "--out", str(tmp_path / "r")]) == 2
    assert "no MLflow store" in capsys.readouterr().err and not missing.exists()
    assert report.main(["--study-name", "tiny", "--tracking-uri", "ftp://x", "--out", str(tmp_path / "r")]) == 2
    assert "unsupported URI" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        report.main([])
    assert e.value.code == 2
    assert not (tmp_path / "r").exists()


def test_slug_keeps_plain_names_and_separates_odd_ones():
    """Plain study names are their own folder; names with odd characters get a cleaned name plus a hash."""
    assert report.slug("tiny") == "tiny" and report.slug("exp-1.2_b") == "exp-1.2_b"
    a, b = report.slug("a<b"), report.slug("a>b")
    assert a != b and re.fullmatch(r"[A-Za-z0-9._-]+", a)
