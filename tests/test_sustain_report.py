"""The sustainability report: a real tiny sustain study in MLflow (sqlite in a temp dir) read back into HTML and JSON."""

from __future__ import annotations

import html
import html.parser
import json
import statistics

import pytest
from mlflow.tracking import MlflowClient

from harness import store
from harness.report import __main__ as cli, kit, sustain_page
from harness.sustain import cli as sustain
from conftest import SUSTAIN_TINY

HOSTILE_STUDY = "sus<img src=x onerror=alert(1)>\"'&"
HOSTILE_POLICY = '<script>alert("policy")</script>'


class Cells(html.parser.HTMLParser):
    """Rows of the policy table (tr with data-policy): {policy: {data-key: (text, data-mean, data-sd)}}, and every
    start tag seen (a hostile name that became markup would show up as a tag)."""

    def __init__(self):
        super().__init__()
        self.rows, self.tags, self.row, self.cell, self.text = {}, [], None, None, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "tr" and "data-policy" in a:
            self.row = self.rows.setdefault(a["data-policy"], {})
        elif tag == "td" and self.row is not None and "data-mean" in a:
            self.cell = (a["data-key"], float(a["data-mean"]), float(a["data-sd"]) if "data-sd" in a else None)
            self.text = []

    def handle_data(self, data):
        if self.cell is not None:
            self.text.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None:
            key, mean, sd = self.cell
            self.row[key] = ("".join(self.text), mean, sd)
            self.cell = None
        elif tag == "tr":
            self.row = None


def _parse(page: str) -> Cells:
    p = Cells()
    p.feed(page)
    return p


@pytest.mark.slow
def test_sustain_report_numbers_equal_mlflow_escape_names_and_log_on_the_parent(workdir, capsys):
    """A sustain study with a hostile name (policies never and every2, seeds 0 and 1, 4 periods):
    - harness.sustain exits 0 and writes reports/<slug>/index.html with report.json next to it, and logs both on
      the sustain parent run (report/index.html, report/report.json);
    - the page has the sustainability section (id="sustainability") with its three figures and a policy table
      whose every metric cell (data-key) holds the mean and sample sd over seeds of the child runs' final metrics
      as MlflowClient returns them: data-mean / data-sd equal, and the text is their rounding; report.json holds
      the same numbers;
    - python -m harness.report --study-name <name> rebuilds it (exit 0), and after a child run's harness.policy tag
      is set to a <script> string, neither that nor the study name becomes markup (escaped, no script/img tag);
    - no section of the fine-tuning report (leaderboard) appears on the page."""
    path = workdir / "sustain.toml"
    path.write_text(SUSTAIN_TINY)
    args = ["--config", str(path), "--study-name", HOSTILE_STUDY, "--seeds", "0,1",
            "--set", "stream.policies=['never','every']"]
    assert sustain.main(args) == 0
    out = capsys.readouterr().out
    folder = workdir / "reports" / kit.slug(HOSTILE_STUDY)
    assert f"report: {folder / 'index.html'}" in out
    page = (folder / "index.html").read_text()
    data = json.loads((folder / "report.json").read_text())

    client = MlflowClient(tracking_uri=store.default_tracking_uri(workdir))
    exp = client.get_experiment_by_name(HOSTILE_STUDY)
    parent = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'sustain'")[0]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert logged == {"report/index.html", "report/report.json"}

    assert 'id="sustainability"' in page and 'id="leaderboard"' not in page
    assert page.count('src="data:image/png;base64,') == 3
    kids = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_policy = {}
    for run in kids:  # the policy table shows the drifting stream's runs; the control runs feed the control table
        if run.data.tags["harness.stream_variant"] == "drift":
            by_policy.setdefault(run.data.tags["harness.policy"], []).append(run)
    assert {k: len(v) for k, v in by_policy.items()} == {"never": 2, "every2": 2} and len(kids) == 8

    table = _parse(page).rows
    summary = {g["key"]: g for g in data["studies"][0]["policies"]}
    assert set(table) == set(summary) == set(by_policy)
    for policy, runs in by_policy.items():
        assert set(table[policy]) == {k for k, _, _ in sustain_page.SUSTAIN_COLUMNS}
        for key, _, how in sustain_page.SUSTAIN_COLUMNS:
            values = [r.data.metrics[key] for r in runs]
            mean, sd = statistics.fmean(values), statistics.stdev(values)
            text, shown_mean, shown_sd = table[policy][key]
            assert shown_mean == pytest.approx(mean, rel=1e-12, abs=1e-15), (policy, key)
            assert shown_sd == pytest.approx(sd, rel=1e-9, abs=1e-12), (policy, key)
            assert text == sustain_page.stat_text({"mean": mean, "sd": sd}, how), (policy, key)
            stat = summary[policy]["metrics"][key]
            assert sorted(stat["values"]) == sorted(values) and stat["mean"] == pytest.approx(mean, rel=1e-12, abs=1e-15)
    assert summary["never"]["metrics"]["n_updates"]["mean"] == 0
    assert summary["every2"]["update_share"] == [0, 1, 0, 1]  # every 2 of 4 periods: after periods 1 and 3

    for run in by_policy["every2"]:
        client.set_tag(run.info.run_id, "harness.policy", HOSTILE_POLICY)
    assert cli.main(["--study-name", HOSTILE_STUDY, "--tracking-uri", store.default_tracking_uri(workdir)]) == 0
    page = (folder / "index.html").read_text()
    parsed = _parse(page)
    assert "script" not in parsed.tags and "img" in parsed.tags  # the figures are the only images
    assert parsed.tags.count("img") == 3
    assert "<script" not in page.lower() and "<img src=x" not in page
    assert html.escape(HOSTILE_POLICY) in page and html.escape(HOSTILE_STUDY) in page
    assert HOSTILE_POLICY in parsed.rows  # the tag reached the page, as text
    assert cli.main(["--study-name", HOSTILE_STUDY + "-missing",
                     "--tracking-uri", store.default_tracking_uri(workdir)]) == 2
