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
