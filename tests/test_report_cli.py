"""`python -m harness.report` in a fresh interpreter, as a user runs it: exit 0 and both files for a fine-tuning study
and for a sustain study (the sustain page once sat after the CLI's `sys.exit(main())`: NameError, exit 1)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import store, tracking
from conftest import shared_study

pytestmark = pytest.mark.slow


def _report(cwd, uri: str, name: str, out: Path) -> str:
    """Runs the CLI; asserts exit 0, the page's path on stdout and both files; returns the page."""
    proc = subprocess.run([sys.executable, "-m", "harness.report", "--study-name", name, "--tracking-uri", uri,
                           "--out", str(out)], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = out / name
    assert f"report: {(folder / 'index.html').resolve()}" in proc.stdout
    assert json.loads((folder / "report.json").read_text())["studies"][0]["name"] == name
    return (folder / "index.html").read_text(encoding="utf-8")


def test_cli_writes_a_study_report(tmp_path_factory, tmp_path):
    """The session's tiny study (built once, shared with test_results and test_report): the fine-tuning page."""
    info = shared_study(tmp_path_factory)
    page = _report(info["root"], info["uri"], "tiny", tmp_path)
    assert 'id="leaderboard"' in page and 'id="sustainability"' not in page


def test_cli_writes_a_sustain_report(tmp_path):
    """A sustain study as harness.sustain opens one (its experiment and a parent run tagged harness.role = sustain;
    no policy run finished yet, so nothing is trained here): the sustainability page, which says so."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = store.connect(uri)
    tracking.parent_run(client, tracking.experiment(client, "sus", tmp_path), "sus", role="sustain")
    page = _report(tmp_path, uri, "sus", tmp_path / "reports")
    assert 'id="sustainability"' in page and 'id="leaderboard"' not in page
    assert "has no finished policy run yet" in page


README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_generated_block_follows_the_markdown_format():
    """The README's results block is the output of `python -m harness.report --markdown` (its format, not its
    numbers, which depend on the machine): the markers, then per study a header line and the four tables."""
    from harness.report import markdown

    text = README.read_text(encoding="utf-8")
    assert text.count(markdown.BEGIN) == 1 and text.count(markdown.END) == 1
    studies = markdown.parse(text)
    # the learning-curve tables only where a study ran study.label_budgets (markdown.OPTIONAL)
    assert studies and all(set(markdown.TABLES) - markdown.OPTIONAL <= set(s["tables"]) <= set(markdown.TABLES)
                           for s in studies)


def test_markdown_tables_equal_report_json(tmp_path_factory, tmp_path):
    """--markdown on the shared tiny study: the header carries the parent run's commit, CPU count and load average
    (tags read with MlflowClient); every condition and comparison equals report.json's; --out replaces the generated
    block of an existing file and nothing else; --json renders the same tables from report.json; bad input exits 2."""
    from mlflow.tracking import MlflowClient

    from harness.report import markdown

    info = shared_study(tmp_path_factory)
    run = lambda *a: subprocess.run([sys.executable, "-m", "harness.report", *a], cwd=info["root"],  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    proc = run("--markdown", "--study", "tiny", "--tracking-uri", info["uri"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (s,) = markdown.parse(proc.stdout)
    client = MlflowClient(info["uri"])
    exp = client.get_experiment_by_name("tiny")
    tags = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'study'")[0].data.tags
    assert s["name"] == "tiny" and s["commit"] == tags["harness.git_sha"][:12]
    assert s["load"] == ", ".join(tags["harness.load_average"].split(",")) and f"{tags['harness.cpu_count']} CPUs" in s["machine"]

    page = _report(info["root"], info["uri"], "tiny", tmp_path)
    data = json.loads((tmp_path / "tiny" / "report.json").read_text())["studies"][0]
    assert [(r[0], r[1]) for r in s["tables"]["Conditions"]] == [(c["outcome"], c["name"]) for c in data["conditions"]]
    for c in data["conditions"]:
        assert f'badge {c["outcome"]}">{c["outcome"]}<' in page
    comps = s["tables"]["Headline comparisons"]
    want = [c["ood"] for c in data["paired"]["baselines"].values()] + ([data["paired"]["oracle"]["ood"]]
                                                                       if data["paired"]["oracle"] else [])
    assert len(comps) == len(want)
    for row, c in zip(comps, want):
        assert row[3] == f"{100 * c['ci'][0]:+.1f} to {100 * c['ci'][1]:+.1f}" and row[7] == f"{c['p_holm']:.3g}"
    assert [r[0] for r in s["tables"]["Budgets"]][:3] == ["full FT", "linear probe", "LP-FT"]

    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{markdown.BEGIN}\nold\n{markdown.END}\noutro\n")
    assert run("--markdown", "--study", "tiny", "--tracking-uri", info["uri"], "--out", str(doc)).returncode == 0
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("\noutro\n") and "old" not in text
    assert markdown.parse(text)[0]["tables"] == s["tables"]
    again = run("--markdown", "--json", str(tmp_path / "tiny" / "report.json"))
    assert again.returncode == 0 and markdown.parse(again.stdout)[0]["tables"] == s["tables"]
    for bad in (["--markdown", "--out", "x.txt"], ["--json", "r.json", "--study", "tiny"],
                ["--markdown", "--json", str(tmp_path / "nope.json")]):
        p = run(*bad)
        assert p.returncode == 2 and "error: --" in p.stderr, (bad, p.stderr)
