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
    """The README's results blocks (the default study's, the real-domain example's) are the output of `python -m
    harness.report --markdown` (its format, not its numbers, which depend on the machine): the markers, then per study
    a header line and the four tables (and the optional ones a study has, e.g. "Simulated vs real")."""
    from harness.report import markdown

    text = README.read_text(encoding="utf-8")
    assert text.count(markdown.BEGIN) >= 1  # every generated block (each command's) ends with END
    allowed = set(markdown.TABLES) | set(markdown.OPTIONAL_TABLES)
    for block in text.split(markdown.BEGIN)[1:]:
        studies = markdown.parse(markdown.BEGIN + block)
        assert studies and all(set(markdown.TABLES) <= set(s["tables"]) <= allowed for s in studies)


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
    # --spread: one row per study given, its comparisons read from report.json (the same file twice: two rows), and
    # into a file, its own block replaced, the results block left alone
    rj = str(tmp_path / "tiny" / "report.json")
    sp = run("--markdown", "--spread", "--json", rj, "--json", rj)
    rows = [r for r in sp.stdout.splitlines() if r.startswith("| ") and not r.startswith("| study seed")]
    assert sp.returncode == 0 and len(rows) == 2 and rows[0] == rows[1], sp.stderr
    cells = [c.strip() for c in rows[0].strip("|").split(" | ")]
    fam = {"full_ft": 5, "linear_probe": 6, "lp_ft": 7}
    for f, c in data["paired"]["baselines"].items():
        o = c["ood"]
        assert cells[fam[f]].startswith(f"{100 * o['diff']:+.1f} [{100 * o['ci'][0]:+.1f}, {100 * o['ci'][1]:+.1f}]")
        assert cells[fam[f]].endswith(" *") == (o["p_holm"] < 0.05)
    assert cells[0] == str(data["provenance"]["seed"]) and cells[2].startswith(f"#{data['best']} ")
    doc.write_text(doc.read_text() + f"{markdown.SPREAD_BEGIN}\nold spread\n{markdown.END}\n")
    assert run("--markdown", "--spread", "--json", rj, "--out", str(doc)).returncode == 0
    text = doc.read_text()
    assert "old spread" not in text and rows[0] in text and markdown.parse(text)[0]["tables"] == s["tables"]
    for bad in (["--markdown", "--out", "x.txt"], ["--json", "r.json", "--study", "tiny"], ["--spread"],
                ["--markdown", "--json", str(tmp_path / "nope.json")]):
        p = run(*bad)
        assert p.returncode == 2 and "error: --" in p.stderr, (bad, p.stderr)
