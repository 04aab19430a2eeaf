"""The README's results are generated, never typed: every generated block in README.md equals what its command
writes from the stored results under results/ (`make readme` runs them all). Editing a figure by hand, or storing
new results without regenerating the README, fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness import bench_report
from harness.report import markdown, reproduction

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "results"


def _block(text: str, begin: str) -> str:
    """The block that starts with begin, through the first END after it."""
    a = text.index(begin)
    return text[a:text.index(markdown.END, a) + len(markdown.END)]


def _makefile_readme() -> list[str]:
    """The commands of the Makefile's readme target (what `make readme` runs)."""
    text = (ROOT / "Makefile").read_text()
    body = text.split("\nreadme:", 1)[1].split("\n\n", 1)[0]
    return [line.strip().split("python ", 1)[1] for line in body.splitlines()[1:] if "python " in line]


def _studies(*names: str) -> list[dict]:
    return [s for n in names for s in json.loads((RESULTS / n).read_text())["studies"]]


BLOCKS = {  # marker -> (the command in the Makefile, what it renders from results/)
    markdown.BEGIN: ("-m harness.report --markdown --json results/default.json --out README.md",
                     lambda: markdown.render(_studies("default.json"))),
    markdown.SPREAD_BEGIN: (None, lambda: markdown.spread(_studies(*_spread_files()))),
    bench_report.README_BEGIN: ("-m harness.bench --readme README.md --json results/bench.json",
                                lambda: bench_report.readme_block(json.loads((RESULTS / "bench.json").read_text()))),
    reproduction.BEGIN: ("-m harness.report.reproduction results/surgical_cifar10/sc-noise.json "
                         "results/surgical_cifar10/sc-pixelate.json --out README.md",
                         lambda: reproduction.render([json.loads((RESULTS / "surgical_cifar10" / f).read_text())
                                                      for f in ("sc-noise.json", "sc-pixelate.json")])),
}


def _spread_files() -> list[str]:
    cmd = next(c for c in _makefile_readme() if "--spread" in c)
    return [Path(p).name for p in re.findall(r"--json (\S+)", cmd)]


@pytest.mark.parametrize("begin", list(BLOCKS), ids=["results", "spread", "bench", "reproduction"])
def test_readme_block_is_what_its_command_writes_from_results(begin):
    """The block equals its renderer's output on the committed results (byte for byte), and the Makefile's readme
    target runs that command."""
    text = README.read_text(encoding="utf-8")
    assert text.count(begin) == 1, f"README.md has {text.count(begin)} blocks {begin!r}"
    command, render = BLOCKS[begin]
    cmds = _makefile_readme()
    assert (command in cmds) if command else any("--spread" in c for c in cmds), cmds
    assert _block(text, begin) + "\n" == render(), "README.md's block differs from `make readme`'s: regenerate it"
