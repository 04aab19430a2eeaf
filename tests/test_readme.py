"""The README's results are generated, never typed: every generated block in README.md equals what its command
writes from the stored results under results/, and `make readme` runs every one of those commands. Editing a figure
by hand, or storing new results without regenerating the README, fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness import bench_report
from harness.report import markdown, reproduction
from harness.sustain import markdown as sustain_markdown

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "results"


def _json(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _studies(*names: str) -> list[dict]:
    return [s for n in names for s in _json(n)["studies"]]


def _readme_commands() -> list[str]:
    """The commands of the Makefile's readme target (what `make readme` runs), from `python ` on."""
    body = (ROOT / "Makefile").read_text().split("\nreadme:", 1)[1].split("\n\n", 1)[0]
    return [line.strip().split("python ", 1)[1] for line in body.splitlines()[1:] if "python " in line]


def _spread_files() -> list[str]:
    cmd = next(c for c in _readme_commands() if "--spread" in c)
    return [Path(p).name for p in re.findall(r"--json (\S+)", cmd)]


# id -> (begin marker, end marker, the study its block names (results blocks: one per study) or None, the command
# the Makefile must run, what that command writes from results/)
BLOCKS = {
    "default": (markdown.BEGIN, markdown.END, "default",
                "-m harness.report --markdown --json results/default.json --out README.md",
                lambda: markdown.render(_studies("default.json"))),
    "spread": (markdown.SPREAD_BEGIN, markdown.END, None, "--spread",
               lambda: markdown.spread(_studies(*_spread_files()))),
    "domains": (markdown.BEGIN, markdown.END, "domains_digits",
                "-m harness.report --markdown --json results/domains_digits.json --out README.md",
                lambda: markdown.render(_studies("domains_digits.json"))),
    "budgets": (markdown.BEGIN, markdown.END, "default-budgets",
                "-m harness.report --markdown --json results/default-budgets.json --out README.md",
                lambda: markdown.render(_studies("default-budgets.json"))),
    "bench": (bench_report.README_BEGIN, markdown.END, None,
              "-m harness.bench --readme README.md --json results/bench.json",
              lambda: bench_report.readme_block(_json("bench.json"))),
    "reproduction": (reproduction.BEGIN, reproduction.END, None,
                     "-m harness.report.reproduction results/surgical_cifar10/sc-noise.json "
                     "results/surgical_cifar10/sc-pixelate.json --out README.md",
                     lambda: reproduction.render([_json("surgical_cifar10/sc-noise.json"),
                                                  _json("surgical_cifar10/sc-pixelate.json")])),
    "sustain": (sustain_markdown.BEGIN, sustain_markdown.END, None,
                "-m harness.sustain --markdown results/sustain.json --out README.md",
                lambda: sustain_markdown.render(_studies("sustain.json"))),
    "datasizes": (None, markdown.END, None, "scripts/measure_datasizes.py --readme README.md --out results/datasizes.json",
                  lambda: _datasizes().render(_json("datasizes.json")) + "\n"),
}


def _datasizes():
    """scripts/measure_datasizes.py as a module (scripts/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("measure_datasizes", ROOT / "scripts" / "measure_datasizes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _blocks(text: str, begin: str, end: str) -> list[str]:
    out, start = [], 0
    while (a := text.find(begin, start)) >= 0:
        b = text.index(end, a) + len(end)
        out.append(text[a:b])
        start = b
    return out


@pytest.mark.parametrize("name", list(BLOCKS))
def test_readme_block_is_what_its_command_writes_from_results(name):
    """The block equals its renderer's output on the committed results (byte for byte), and the Makefile's readme
    target runs that command."""
    begin, end, study, command, render = BLOCKS[name]
    begin = begin or _datasizes().MARK
    if name == "bench" and not (RESULTS / "bench.json").exists():  # no stored benchmark: no table, typed or not
        text = README.read_text(encoding="utf-8")
        assert begin not in text and "| (a) trial training" not in text and command not in "\n".join(_readme_commands())
        return
    blocks = _blocks(README.read_text(encoding="utf-8"), begin, end)
    if study is not None:  # results blocks: one per study (the default study's, the real-domain example's)
        blocks = [b for b in blocks if f"_Study `{study}`:" in b]
    assert len(blocks) == 1, f"README.md has {len(blocks)} {name} blocks"
    assert any(command in c for c in _readme_commands()), _readme_commands()
    assert blocks[0] + "\n" == render(), f"README.md's {name} block differs from what `make readme` writes"
