"""The HTML report: numbers equal to MLflow's, self-contained, escaped, logged on the parent run, CLI exit codes."""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest
import numpy as np
from mlflow.tracking import MlflowClient

from harness import report, results, schema, selection, stats, study
from harness.report import __main__ as cli, figures, kit
from conftest import HOSTILE, shared_report, shared_study

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
    """A study whose name carries HTML and whose every trial fails (lrs of 1e36 overflow in the first epoch), run by
    harness.study.main with the report on, in the shared study's folder (its caches make it ~10 s)."""
    root = Path(shared_study(tmp_path_factory)["root"])
    import contextlib
    import io

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.chdir(root)
        # the three full FT trials of the sweep fail first (3 in a row stop the study; the probe, which has no lr and
        # would complete, never runs)
        rc = study.main(["--config", "tiny.toml", "--study-name", EVIL_NAME, "--n-trials", "1",
                         "--set", "search.lr=[1e36, 1e37]", "--set", "study.baseline_lrs=[1e36, 2e36, 3e36]"])
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


# ------------------------------------------------------------------------------------ the page, cell by cell
# Every number the page shows sits in a table cell or a headline card. Each cell is identified by its offset in the
# page, so test_every_number_on_the_page_is_verified can tell which cells the table tests below have checked.

KEYED = re.compile(r'<(td|span|small|div|p)\b[^>]*?\sdata-key="([^"]*)"[^>]*>(.*?)</\1>', re.S)
TD = re.compile(r"<td\b([^>]*)>(.*?)</td>", re.S)
CARD_DESC = re.compile(r'<div class="d">(.*?)</div>', re.S)
# data-key cells that hold words, not numbers: the test that owns the cell still compares it with MLflow when it can
NON_NUMERIC_KEYS = {"reason": "a pruned/failed trial's reason: free text from an exception or the pruner",
                    "Worst shift": "the name of the selected trial's worst held-out shift"}
PCT, ECE, SIG = 1, 3, 4  # display rounding: accuracies in % with 1 decimal, calibration with 3, all metrics 4 digits


@dataclass
class Cell:
    pos: int  # offset of the element in the page: its identity
    text: str  # the text a reader sees (tags dropped, entities decoded)
    inner: str = ""  # the raw HTML inside the element
    key: str | None = None


@dataclass
class Row:
    cells: list  # the row's <td> cells, left to right
    keyed: dict  # data-key -> Cell of every keyed element in the row (the <td> itself or a <span>/<small> in it)
    attrs: dict = field(default_factory=dict)


def _text(fragment: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def _table(page: str, cls: str) -> tuple[list[str], list[Row]]:
    """(header texts, rows) of the one table of class cls on the page (a single-study page has one of each)."""
    found = [m for m in re.finditer(r'<table class="([^"]*)">(.*?)</table>', page, re.S) if m.group(1) == cls]
    assert len(found) == 1, (cls, len(found))
    m = found[0]
    head = [_text(h) for h in re.findall(r"<th>(.*?)</th>", m.group(2), re.S)]
    rows = []
    for tr in re.compile(r"<tr([^>]*)>(.*?)</tr>", re.S).finditer(page, m.start(2), m.end(2)):
        cells = [Cell(c.start(), _text(c.group(2)), c.group(2)) for c in TD.finditer(page, tr.start(2), tr.end(2))]
        if not cells:
            continue  # the header row
        keyed = {k.group(2): Cell(k.start(), _text(k.group(3)), k.group(3), k.group(2))
                 for k in KEYED.finditer(page, tr.start(2), tr.end(2))}
        rows.append(Row(cells, keyed, dict(re.findall(r'([\w-]+)="([^"]*)"', tr.group(1)))))
    return head, rows


def _numeric_cells(page: str) -> dict:
    """{offset: description} of every element on the page that shows a number: each data-key element whose key is
    not in NON_NUMERIC_KEYS, and each <td> without data-key (and without a keyed element inside) whose text has a
    digit (the fits, conditions, provenance, effective-robustness and Pareto tables carry no data-key)."""
    keyed = list(KEYED.finditer(page))
    assert len(keyed) == page.count('data-key="'), "a data-key on an element this test does not parse"
    out = {k.start(): f"data-key={k.group(2)!r}: {_text(k.group(3))!r}"
           for k in keyed if k.group(2) not in NON_NUMERIC_KEYS}
    for c in TD.finditer(page):
        if "data-key" not in c.group(0) and re.search(r"\d", _text(c.group(2))):
            out[c.start()] = f"<td> {_text(c.group(2))!r}"
    return out


def near(shown: str, value: float, decimals: int, scale: float = 1.0) -> bool:
    """shown is value * scale rounded to `decimals` decimals (e.g. an accuracy 0.2444 shown as '24.4')."""
    return abs(float(shown) - scale * value) <= 0.5 * 10 ** -decimals + 1e-9


def near_sig(shown: str, value: float, digits: int = SIG) -> bool:
    """shown is value rounded to `digits` significant digits (format '.4g')."""
    if value == 0:
        return float(shown) == 0
    return abs(float(shown) - value) <= 0.5 * 10 ** (math.floor(math.log10(abs(value))) - digits + 1) * (1 + 1e-9)


def check_strategy(text: str, trial: dict, epochs: int) -> None:
    """The 'strategy' words hold MLflow's freeze_layers and unfreeze_epoch params (>= train.epochs: never); the
    linear probe names its logistic regression and the probe_c param, LP-FT its start from the probe's head."""
    if trial["baseline"] == "linear_probe":
        assert text == f"logistic regression on frozen features, C {trial['raw_params']['probe_c']}", text
        return
    if trial["baseline"] == "lp_ft":
        assert text == "train everything from the linear-probe head", text
        return
    k, e = trial["params"]["freeze_layers"], trial["params"]["unfreeze_epoch"]
    if k == 0:
        assert text == "train everything", (text, trial["params"])
        return
    m = re.fullmatch(r"freeze (\d+) groups?, (never unfreeze|unfreeze at epoch (\d+))", text)
    assert m and int(m[1]) == k, (text, trial["params"])
    assert (m[2] == "never unfreeze") if e >= epochs else (m[3] is not None and int(m[3]) == e), (text, trial["params"])


def check_lr(text: str, trial: dict) -> None:
    """The lr cell: MLflow's lr param to 3 significant digits; '–' for the linear probe, which has none."""
    if "lr" not in trial["params"]:
        assert text == "\u2013", text
    else:
        assert float(text) == pytest.approx(trial["params"]["lr"], rel=5e-3), (text, trial["params"])


def worst_shift(trial: dict, t) -> float:
    """The lowest mean accuracy over the trial's held-out shifts (selection shifts excluded)."""
    return min(v for n, v in trial["shift_mean"].items() if n not in t.selection)


def trial_of(text: str, t) -> dict:
    """The MLflow trial a '#N' cell names (N is the run's optuna.trial_number tag)."""
    m = re.match(r"#(\d+)\b", text)
    assert m, text
    return t.trials[int(m[1])]


# --------------------------------------------------------------------------------- MLflow, read independently

def _series(client, run_id: str, key: str) -> dict:
    """{step: value} of one metric history; a step logged twice keeps its latest value (MLflow's own rule)."""
    latest = {}
    for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)):
        latest[m.step] = m.value
    return latest


def _correct(client, run) -> dict | None:
    """correct.json of a FINISHED run, downloaded with MlflowClient."""
    import tempfile

    if run.info.status != "FINISHED":
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return json.loads(Path(client.download_artifacts(run.info.run_id, schema.CORRECT_ARTIFACT, tmp)).read_text())
        except Exception:
            return None


def bootstrap(a: list[float], b: list[float], resamples: int = 2000) -> tuple[float, float, float]:
    """The paired bootstrap the page promises, written out: numpy default_rng(0) draws (resamples x n) image indices;
    (mean difference, 2.5th, 97.5th percentile of the resampled mean differences)."""
    d = np.array(a) - np.array(b)
    boot = d[np.random.default_rng(0).integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    return d.mean(), np.percentile(boot, 2.5), np.percentile(boot, 97.5)


def per_image(tr: dict, t, key: str = "shifts") -> list[float]:
    """One run's per-image accuracy: each image's correctness averaged over the held-out severity shifts and their
    severities (key "shifts"), or its clean correctness (key "clean"), from correct.json."""
    c = tr["correct"]
    if key == "clean":
        return [float(ch == "1") for ch in c["clean"]]
    bits = [c["shifts"][n][str(s)] for n in t.test for s in t.severities]
    return [sum(b[i] == "1" for b in bits) / len(bits) for i in range(len(bits[0]))]


def seeds_of(tr: dict, t, key: str = "shifts") -> list[list[float]]:
    """A configuration's per-image accuracy for each of its seeds (the trial's run and its replicate runs)."""
    return [per_image(x, t, key) for x in tr["seeds"]]


def compare(a: list[list[float]], b: list[list[float]], resamples: int = 2000) -> tuple[float, float, float, float]:
    """(difference, 2.5th, 97.5th percentile, two-sided p) of two configurations on the same images, as the page
    promises, written out with numpy: per resample, n image indices shared by both sides, then each side's seeds,
    with replacement, in that order from default_rng(0); the mean over the drawn seeds and images; p = 2 (1 + the
    smaller tail's count) / (R + 1)."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    rng = np.random.default_rng(0)
    img = rng.integers(0, x.shape[1], size=(resamples, x.shape[1]))
    sx, sy = (rng.integers(0, v.shape[0], size=(resamples, v.shape[0])) for v in (x, y))

    def side(v, s):
        return np.take_along_axis(v[s], img[:, None, :].repeat(v.shape[0], 1), axis=2).mean(axis=(1, 2))

    boot = side(x, sx) - side(y, sy)
    tail = min((boot <= 0).sum(), (boot >= 0).sum())
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return x.mean() - y.mean(), lo, hi, min(1.0, 2 * (1 + tail) / (resamples + 1))


def holm(p: list[float]) -> list[float]:
    """Holm's adjusted p-values, written out: the k-th smallest times (m - k), running maximum, capped at 1."""
    order, out, run = np.argsort(p), [0.0] * len(p), 0.0
    for k, i in enumerate(order):
        run = max(run, min(1.0, (len(p) - k) * p[i]))
        out[i] = run
    return out


def seed_ci(values: list[float]) -> tuple[float, float]:
    """(mean, 95% t half-width) over seeds with scipy's t quantile."""
    from scipy.stats import t as student

    v = np.array(values)
    return v.mean(), student.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))


@pytest.fixture(scope="module")
def truth(built):
    """What the page must show, read with MlflowClient alone (never through harness.results.load or summarize) and
    derived with the documented formulas: completed trials ranked by val_acc_final (ties: lower trial number),
    per-shift accuracy = mean of shift/<name>/acc over its steps (step = severity), sample sizes from the parent's
    harness.n_test / harness.n_shift_eval tags, and the accuracy-on-the-line fits (stats.on_the_line, a pure
    helper) over MLflow's id_acc and ood_acc_mean or per-shift means."""
    client = built["client"]
    exp = client.get_experiment_by_name("tiny")
    parent = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'study'")[0]
    tags, params = parent.data.tags, parent.data.params
    trials, replicates = {}, []
    for run in client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"):
        rid, m = run.info.run_id, run.data.metrics
        if run.data.tags.get("harness.role") == "replicate":
            replicates.append({"of": int(run.data.tags["harness.replicate_of"]), "status": run.info.status, "m": m, "run_id": rid,
                               "seed": int(run.data.tags["harness.seed"]), "correct": _correct(client, run)})
            continue
        assert run.data.params["strategy"] == "prefix"  # every run names its strategy; a prefix-only study's: prefix
        hist = {k: _series(client, rid, k) for k in m}
        acc = {k.split("/")[1]: v for k, v in hist.items() if k.startswith("shift/") and k.endswith("/acc")}
        trials[int(run.data.tags["optuna.trial_number"])] = {
            "number": int(run.data.tags["optuna.trial_number"]), "run_id": rid, "run": run, "status": run.info.status,
            "baseline": run.data.tags.get("harness.baseline", ""), "tags": run.data.tags, "m": m, "hist": hist,
            "params": {k: float(v) if k in ("lr", "probe_c") else int(v) for k, v in run.data.params.items()
                       if k != "strategy"},
            "raw_params": dict(run.data.params), "correct": _correct(client, run),
            "shift_acc": acc, "shift_mean": {n: sum(v.values()) / len(v) for n, v in acc.items()},
            "shift_ece": {k.split("/")[1]: v for k, v in hist.items() if k.startswith("shift/") and k.endswith("/ece")}}
    done = sorted((r for r in trials.values() if r["status"] == "FINISHED" and "id_acc" in r["m"]),
                  key=lambda r: (-r["m"]["val_acc_final"], r["number"]))
    selection, test = tags["harness.shifts.selection"].split(","), tags["harness.shifts.test"].split(",")
    sev = json.loads(params["shifts.severities"])
    sets = sorted({n for r in done for n in r["shift_acc"]} - set(selection) - set(test))
    n_test, n_shift = int(tags["harness.n_test"]), int(tags["harness.n_shift_eval"])
    line = stats.on_the_line({r["number"]: (r["m"]["id_acc"], r["m"]["ood_acc_mean"]) for r in done}, n_test)
    per_shift = {n: stats.on_the_line({r["number"]: (r["m"]["id_acc"], r["shift_mean"].get(n)) for r in done}, n_test)
                 for n in test + sets + selection}
    pid = parent.info.run_id
    artifacts = {p: json.loads(results.artifact(client, pid, p)) for p in ("versions.json", "search_space.json")}
    artifacts["pretrain"] = json.loads(results.artifact(client, pid, f"pretrain/{tags['harness.pretrain']}.json"))
    # the best of each baseline family on validation (val_acc_final; ties: the lower trial number)
    fam_best = {f: next(r for r in done if r["baseline"] == f) for f in schema.BASELINES
                if any(r["baseline"] == f for r in done)}
    for r in trials.values():  # the seeds a configuration's test numbers use: its FINISHED replicate runs (fresh
        # seeds; the search-time run, which won on validation, left out), else the trial's own run
        fresh = sorted((x for x in replicates if x["of"] == r["number"] and x["status"] == "FINISHED"),
                       key=lambda x: x["seed"])  # by seed: the seed bootstrap draws seed indices
        r["fresh"], r["seeds"] = fresh, fresh or [r]
    # the selection (issue 22), written out: the finalists are the top harness.finalists trials by val_acc_final
    # (ties: the lower number) and each family's best; the selected one has the highest mean val_acc_final over the
    # search-time run and its fresh seeds (ties: more seeds, then the lower number)
    k = int(tags["harness.finalists"])
    pool = {r["number"]: r for r in done[:k] + list(fam_best.values())}
    best = max(pool.values(), key=lambda r: (round(float(np.mean([r["m"]["val_acc_final"]] + [x["m"]["val_acc_final"]
                                                                                             for x in r["fresh"]])), 12),
                                             len(r["fresh"]), -r["number"]))
    keep = [r for r in done if r["baseline"] or r is best]
    keep += [r for r in done if r not in keep][:figures.MAX_CURVES - 1]  # baselines, the selected one, the next best
    # the hindsight-best: the highest mean OOD accuracy over the paired images, seeds averaged (ties: lower number)
    oracle = max(done, key=lambda r: (float(np.mean([per_image(x, SimpleNamespace(test=test, severities=sev))
                                                    for x in r["seeds"]])), -r["number"]))
    return SimpleNamespace(
        client=client, uri=built["uri"], exp=exp, parent=parent, tags=tags, params=params, artifacts=artifacts,
        trials=trials, done=done, best=best, shown=[r for r in done if r in keep], fam_best=fam_best, oracle=oracle,
        epochs=int(params["train.epochs"]),
        selection=selection, test=test, sets=sets, severities=json.loads(params["shifts.severities"]),
        n_test=n_test, n_shift=n_shift, line=line, per_shift=per_shift)


# ------------------------------------------------------------------------ one verifier per table (or card row)
# Each compares a table with MLflow and returns the offsets of the cells it checked (see _numeric_cells).

def _verify_leaderboard(page: str, t) -> set:
    head, rows = _table(page, "leaderboard")
    assert [r.attrs["data-run-id"] for r in rows] == [r["run_id"] for r in t.done]  # ranked by val_acc_final
    ok = set()
    for rank, (row, tr) in enumerate(zip(rows, t.done), 1):
        k, m = row.keyed, tr["m"]
        assert row.cells[0].text == str(rank) and row.attrs["data-trial"] == str(tr["number"])
        assert k["number"].text == f"#{tr['number']}"
        check_strategy(row.cells[2].text, tr, t.epochs)
        check_lr(k["lr"].text, tr)
        for key, metric in (("objective", "val_acc_final"), ("id_acc", "id_acc"), ("ood_acc_mean", "ood_acc_mean"),
                            ("ood_acc_worst", "ood_acc_worst"), ("effective_robustness", None)):
            want = t.line["effective_robustness"][tr["number"]] if metric is None else m[metric]
            assert near(k[key].text, want, PCT, 100), (tr["number"], key, k[key].text, want)
        for key in ("id_ece", "ood_ece_mean"):
            assert near(k[key].text, m[key], ECE), (tr["number"], key, k[key].text, m[key])
        for key, p, n in (("id_acc_ci", m["id_acc"], t.n_test), ("ood_acc_ci", m["ood_acc_mean"], t.n_shift)):
            lo, hi = k[key].text.split("\u2013")
            want = stats.wilson(p, n)  # the OOD sets are a subset of the test split: n = one shifted set's size
            assert near(lo, want[0], PCT, 100) and near(hi, want[1], PCT, 100), (key, k[key].text, want)
        # the worst held-out shift's name (any of them on a tie), before the seeds line of a replicated row
        name = re.sub(r" [\d.]+ \u00b1 .*$", "", row.cells[7].text).split()[-1]
        assert name not in t.selection and tr["shift_mean"][name] == worst_shift(tr, t), (tr["number"], name)
        for key in ("id_acc", "ood_acc_mean", "ood_acc_worst"):  # replicated rows: mean over seeds +- scipy's t
            if len(tr["seeds"]) > 1:
                mean, half = seed_ci([x["m"][key] for x in tr["seeds"]])
                got = re.fullmatch(r"([\d.]+) \u00b1 ([\d.]+) \((\d+) seeds\)", k[f"{key}_seeds"].text)
                assert got and int(got[3]) == len(tr["seeds"]), (tr["number"], key, k[f"{key}_seeds"].text)
                assert near(got[1], mean, PCT, 100) and near(got[2], half, PCT, 100), (tr["number"], key, got[0], half)
            else:
                assert f"{key}_seeds" not in k
        ok |= {row.cells[0].pos, row.cells[2].pos} | {c.pos for c in k.values()}
    return ok


def _verify_cards(page: str, t) -> set:
    b, m = t.best, t.best["m"]
    cards = {k.group(2): k for k in KEYED.finditer(page) if k.group(0).startswith('<div class="v')}
    assert set(cards) == {"Selected configuration", "ID test accuracy", "Mean OOD accuracy", "Worst shift",
                          "Against the baselines"}
    desc = {key: _text(CARD_DESC.match(page, c.end()).group(1)) for key, c in cards.items()}  # the line under it
    val = {key: _text(c.group(3)) for key, c in cards.items()}

    assert val["Selected configuration"] == f"trial #{b['number']}" == f"trial #{t.tags['harness.best_trial']}"
    strategy, lr = re.fullmatch(r"(.*), lr (\S+)(?: \(.* baseline\))?", desc["Selected configuration"]).groups()
    check_strategy(strategy, b, t.epochs)
    check_lr(lr, b)

    for key, metric, n in (("ID test accuracy", "id_acc", t.n_test), ("Mean OOD accuracy", "ood_acc_mean", t.n_shift)):
        p = m[metric]
        if b["fresh"]:  # the mean over its fresh seeds (the search-time run left out) with scipy's t interval
            mean, half = seed_ci([x["m"][metric] for x in b["seeds"]])
            assert val[key].endswith("%") and near(val[key][:-1], mean, PCT, 100), (key, val[key], mean)
            got = re.search(rf"mean of {len(b['seeds'])} fresh seeds \(the search-time run, which won on validation, "
                            rf"left out\), 95% CI ([\d.]+)\u2013([\d.]+) over seeds", desc[key])
            assert got and near(got[1], mean - half, PCT, 100) and near(got[2], mean + half, PCT, 100), (key, desc[key])
            assert f"n = {n} images a seed" in desc[key]
        else:  # the selected run's own Wilson interval over n images
            lo, hi = re.search(r"^95% CI ([\d.]+)\u2013([\d.]+)", desc[key]).groups()
            want = stats.wilson(p, n)
            assert near(lo, want[0], PCT, 100) and near(hi, want[1], PCT, 100), (key, desc[key], want)
            assert val[key].endswith("%") and near(val[key][:-1], p, PCT, 100), (key, val[key], p)
    assert f"n = {t.n_test}" in desc["ID test accuracy"]
    # OOD - clean on the same images, averaged over the seeds the cards use (each run's correct.json)
    gap = float(np.mean([per_image(x, t) for x in b["seeds"]])) - float(np.mean([per_image(x, t, "clean")
                                                                                 for x in b["seeds"]]))
    drop = re.search(r"OOD \u2212 clean \(same images\) ([+-][\d.]+) points", desc["Mean OOD accuracy"]).group(1)
    assert near(drop, gap, PCT, 100), (drop, gap)

    assert val["Worst shift"] not in t.selection and b["shift_mean"][val["Worst shift"]] == worst_shift(b, t)
    assert near(re.fullmatch(r"([\d.]+)% accuracy", desc["Worst shift"]).group(1), m["ood_acc_worst"], PCT, 100)

    # each family's best on validation: the paired difference over the shifted sets' images with its bootstrap interval
    lines = [_text(x) for x in cards["Against the baselines"].group(3).split("<br>")]
    pat = r"([+-][\d.]+) \[([+-][\d.]+), ([+-][\d.]+)\] vs (.+) #(\d+) \((significant|not significant)\)"
    got = {}
    for x in lines:
        v, lo, hi, name, number, sig = re.fullmatch(pat, x).groups()
        got[name] = (v, lo, hi, int(number), sig)
    others = {f: r for f, r in t.fam_best.items() if r is not b}
    assert set(got) == {schema.BASELINES[f] for f in others}
    for f, r in others.items():
        v, lo, hi, number, sig = got[schema.BASELINES[f]]
        want = compare(seeds_of(b, t), seeds_of(r, t))[:3]
        assert number == r["number"]
        assert all(near(x, w, PCT, 100) for x, w in zip((v, lo, hi), want)), (f, (v, lo, hi), want)
        assert sig == ("significant" if want[1] > 0 or want[2] < 0 else "not significant")

    note = _text(re.search(r'<p class="note">(Selected by .*?)</p>', page).group(1))
    if "the same trial is also the best under shift" in note:
        assert t.oracle is b, note
    else:  # 'in hindsight trial #N has the highest mean OOD accuracy over the paired images, +x points over ...'
        hindsight = re.search(r"in hindsight trial #(\d+) has the highest mean OOD accuracy over the paired images, "
                              r"([+-][\d.]+) points over the selected one", note)
        assert int(hindsight[1]) == t.oracle["number"], note
        assert near(hindsight[2], compare(seeds_of(t.oracle, t), seeds_of(b, t))[0], PCT, 100), note
    return {c.start() for c in cards.values()}


def judge(lo, hi, margin, smaller_is_better=True) -> str:
    if smaller_is_better:
        return "pass" if hi < margin else "fail" if lo > margin else "inconclusive"
    return "pass" if lo > margin else "fail" if hi < margin else "inconclusive"


def _comparisons(t) -> list:
    """[(family or "oracle", first, second, (d, lo, hi, p), Holm p)] of the page's OOD comparisons, recomputed."""
    b = t.best
    rows = [(f, b, r) for f, r in t.fam_best.items() if r is not b]
    rows += [("oracle", t.oracle, b)] if t.oracle is not b else []
    res = [compare(seeds_of(x, t), seeds_of(y, t)) for _, x, y in rows]
    return [(f, x, y, c, adj) for (f, x, y), c, adj in zip(rows, res, holm([c[3] for c in res]))]


def _shown_interval(text: str) -> tuple[float, float]:
    lo, hi = text.split(" to ")
    return float(lo) / 100, float(hi) / 100


def _verify_conditions(page: str, t) -> set:
    """Each condition recomputed from MLflow: the drops from correct.json (clean minus shifted, same images, every
    seed), the regret against the hindsight-best by the same metric, beats-every-baseline with Holm over the page's
    comparisons, R\u00b2 with its Fisher interval, BBSE and failed runs; outcome by the three-way rule."""
    from scipy.stats import norm

    b, m = t.best, t.best["m"]
    clean = seeds_of(b, t, "clean")
    ood = seeds_of(b, t)
    byshift = {n: [[sum(x["correct"]["shifts"][n][str(v)][i] == "1" for v in t.severities) / len(t.severities)
                    for i in range(len(clean[0]))] for x in b["seeds"]] for n in t.test}
    worst = min(byshift, key=lambda n: (np.mean(byshift[n]), n))
    drop, wdrop = compare(clean, ood), compare(clean, byshift[worst])
    comps = _comparisons(t)
    fams = [c for c in comps if c[0] != "oracle"]
    if t.oracle is b:
        regret = ("pass", 0.0, None)
    else:
        r = next(c for c in comps if c[0] == "oracle")[3]
        regret = (judge(r[1], r[2], 0.02), r[0], r[1:3])
    if b["baseline"]:
        beats = "fail"
    elif any(adj < 0.05 and c[0] < 0 for _, _, _, c, adj in fams):
        beats = "fail"
    elif all(adj < 0.05 and c[0] > 0 and len(x["seeds"]) >= 3 and len(y["seeds"]) >= 3 for _, x, y, c, adj in fams):
        beats = "pass"
    else:
        beats = "inconclusive"
    r2, k = t.line["r2"], t.line["n"]
    if k >= 4:
        z, h = np.arctanh(np.sqrt(r2)), norm.ppf(0.975) / np.sqrt(k - 3)
        r2_ci = sorted([max(0.0, np.tanh(z - h)) ** 2, np.tanh(z + h) ** 2])
        r2_out = judge(r2_ci[0], r2_ci[1], 0.7, smaller_is_better=False)
    else:
        r2_out = "n/a"
    failed = sum(r["status"] == "FAILED" for r in t.trials.values())
    sev = max(t.severities)
    ece, deb, q95 = (m[k] for k in ("ood_ece_pooled", "ood_ece_pooled_debiased", "ood_ece_pooled_calibrated_q95"))
    ece_out = "pass" if ece <= q95 < 0.10 else "fail" if ece > q95 and deb > 0.10 else "inconclusive"
    want = {  # name: (outcome, shown value, shown interval or None)
        "OOD accuracy drop under 10 points": (judge(drop[1], drop[2], 0.10), drop[0], drop[1:3]),
        "Worst-shift drop under 20 points": (judge(wdrop[1], wdrop[2], 0.20), wdrop[0], wdrop[1:3]),
        f"Calibrated at severity {sev} (ECE within 0.10)": (ece_out, ece, None),
        "Selection regret under 2 points": regret,
        "Beats every baseline on OOD accuracy": (beats, None, None),
        "ID accuracy predicts OOD accuracy (R\u00b2 \u2265 0.7)": (r2_out, r2, None),
        "Label-shift prior error (BBSE) under 0.05": ("inconclusive", m["label_shift/prior_l1_error"], None),
        "No failed trials": ("pass" if not failed else "fail", failed, None),
    }
    _, rows = _table(page, "conditions")
    names = [re.sub(r"<br>.*", "", r.cells[1].inner, flags=re.S) for r in rows]
    assert [_text(n) for n in names] == list(want)
    ok = set()
    for row, name in zip(rows, want):
        outcome, cond, value, interval, n, rule = (c.text for c in row.cells)
        w = want[name]
        assert "Rule:" in rule, rule
        if name.startswith("Beats"):
            assert outcome == w[0], (name, outcome, w)
            if b["baseline"]:
                assert f"the search found nothing better than {schema.BASELINES[b['baseline']]}".lower() in cond.lower(), cond
            for f, x, y, c, adj in fams:
                got = re.search(rf"{re.escape(schema.BASELINES[f])} \(trial (\d+)\) ([+-][\d.]+) \[([+-][\d.]+), "
                                rf"([+-][\d.]+)\], Holm p ([\d.e+-]+)", cond)
                assert got and int(got[1]) == y["number"], (cond, f)
                assert all(near(g, v, PCT, 100) for g, v in zip(got.groups()[1:4], c[:3])), (cond, f, c)
                assert float(got[5]) == pytest.approx(adj, rel=5e-3, abs=1e-12), (cond, f, adj)
        else:
            assert outcome == w[0], (name, outcome, w)
            if w[1] is None:
                pass
            elif value.endswith(" points"):
                assert near(value[:-len(" points")], w[1], PCT, 100), (name, value, w)
            elif name.startswith("No failed"):
                assert value == str(w[1])
            else:
                assert near(value, w[1], ECE), (name, value, w)
            if w[2] is not None:
                lo, hi = _shown_interval(interval)
                assert near(str(100 * lo), w[2][0], PCT, 100) and near(str(100 * hi), w[2][1], PCT, 100), (name, interval, w)
        if name.startswith(("OOD accuracy drop", "Worst-shift")):
            assert n.startswith(f"{t.n_shift} images, {len(b['seeds'])} seeds"), n
        ok |= {c.pos for c in row.cells}
    return ok


def _verify_comparisons(page: str, t) -> set:
    """The paired-comparisons table: the selected trial against each family's best (OOD and clean subset) and the
    hindsight-best against the selected, each recomputed from every seed's correct.json (trial and replicate runs),
    with Holm's adjustment over the table's OOD rows and each family's budget counted from MLflow's runs."""
    _, rows = _table(page, "compare")
    comps = _comparisons(t)
    assert [r.attrs["data-compare"] for r in rows] == [c[0] for c in comps]
    for row, (f, first, second, (d, lo, hi, p), adj) in zip(rows, comps):
        name, seeds, od, oci, cd, cci, n, level, hp, sig, budget = (c.text for c in row.cells)
        assert seeds == f"{len(first['seeds'])} / {len(second['seeds'])}" and int(n) == t.n_shift
        assert name.startswith(f"{'hindsight-best' if f == 'oracle' else 'selected'} #{first['number']} vs ")
        assert f"#{second['number']}" in name
        lo_s, hi_s = oci.split(" to ")
        assert near(od, d, PCT, 100) and near(lo_s, lo, PCT, 100) and near(hi_s, hi, PCT, 100), (f, od, oci, d, lo, hi)
        assert float(hp) == pytest.approx(adj, rel=5e-3, abs=1e-12), (f, hp, adj)
        assert sig == ("yes" if lo > 0 or hi < 0 else "no")
        assert level == ("image noise only" if min(len(first["seeds"]), len(second["seeds"])) < 2 else
                         "seeds and images"), (f, level)
        if f != "oracle":
            d, lo, hi, _ = compare(seeds_of(first, t, "clean"), seeds_of(second, t, "clean"))
            lo_s, hi_s = cci.split(" to ")
            assert near(cd, d, PCT, 100) and near(lo_s, lo, PCT, 100) and near(hi_s, hi, PCT, 100), (f, cd, cci)
            lr = "\u2013" if "lr" not in second["params"] else format(second["params"]["lr"], ".3g")
            assert f"(lr {lr})" in name
            runs = [r for r in t.trials.values() if r["baseline"] == f]
            epochs = sum(len(r["hist"].get("val_acc", {})) for r in runs)
            done = sum(r["status"] == "FINISHED" for r in runs)
            pruned = sum(r["status"] == "KILLED" for r in runs)
            assert budget.startswith(f"{len(runs)} trial{'s' * (len(runs) != 1)} ({done} finished, {pruned} pruned), "
                                     f"{epochs} epoch{'s' * (epochs != 1)}"), (f, budget)
    return {c.pos for r in rows for c in r.cells}


def _verify_provenance(page: str, t) -> set:
    p = t.parent
    kids = list(t.trials.values())
    counts = [sum(r["status"] == s for r in kids) for s in ("FINISHED", "KILLED", "FAILED", "RUNNING")]
    versions, pre = t.artifacts["versions.json"], t.artifacts["pretrain"]
    want = {
        "study": "tiny", "MLflow experiment / parent run": f"{t.exp.experiment_id} / {p.info.run_id}",
        "tracking URI": t.uri, "Optuna storage": t.tags["harness.optuna_storage"],
        "sampler / pruner": f"{t.tags['harness.sampler']} / {t.tags['harness.pruner']}",
        "objective": t.tags["harness.objective"], "seed": t.tags["harness.seed"],
        "trials: target / complete / pruned / failed / running":
            " / ".join([t.tags["harness.n_trials_target"]] + [str(n) for n in counts]),
        "Optuna agrees": "yes", "device": t.tags["harness.device"], "git SHA": t.tags["harness.git_sha"],
        "versions": ", ".join(f"{k} {versions[k]}" for k in
                              ("python", "torch", "torchvision", "optuna", "mlflow", "numpy") if k in versions),
        "platform": versions["platform"],
        "held-out test shifts": ", ".join(t.test + t.sets), "selection shifts (validation)": ", ".join(t.selection),
        "severities": ", ".join(map(str, t.severities)),
        "data / shift-suite cache keys": f"{t.tags['harness.data']} / {t.tags['harness.shift_suite']}",
        "target domain": "the clean target task (no data.target_shift)",  # the tiny study has none
    }
    assert t.tags["harness.target_domain"] == "none"
    _, rows = _table(page, "kv")
    got = {r.cells[0].text: r.cells[1] for r in rows}
    for label, text in want.items():
        assert got[label].text == text, (label, got[label].text, text)
    span, trial_s = re.fullmatch(r"(\d+) s from first start to last end of the parent run; (\d+) s in trials",
                                 got["wall time"].text).groups()
    assert abs(int(span) - (p.info.end_time - p.info.start_time) / 1000) <= 0.5
    assert abs(int(trial_s) - sum((r["run"].info.end_time - r["run"].info.start_time) / 1000 for r in kids
                                  if r["run"].info.end_time)) <= 0.5
    n, n_shift = re.match(r"(\d+) images \(logged\); each shifted test set (\d+) images",
                          got["test-set size"].text).groups()
    assert (int(n), int(n_shift)) == (t.n_test, t.n_shift)
    key, acc, secs = re.fullmatch(r"(\w+): source val acc ([\d.]+)%, (\d+) s", got["pretraining"].text).groups()
    assert key == t.tags["harness.pretrain"] and near(acc, p.data.metrics["pretrain_source_val_acc"], PCT, 100)
    assert abs(int(secs) - pre["seconds"]) <= 0.5
    ref = re.fullmatch(r"trial #(\d+) \(the tuned full FT baseline, lr (\S+)\): ce, mce and relative_mce divide by its "
                       r"errors", got["corruption-error reference"].text)
    want_ref = t.fam_best["full_ft"]  # the full FT with the best val_acc_final, named by every run's tag
    assert int(ref[1]) == want_ref["number"] and float(ref[2]) == pytest.approx(want_ref["params"]["lr"], rel=5e-3)
    assert {r["tags"].get("harness.ce_reference") for r in t.done} == {want_ref["run_id"]}
    assert set(got) == set(want) | {"wall time", "test-set size", "pretraining", "corruption-error reference"}
    return {r.cells[1].pos for r in rows} | {r.cells[0].pos for r in rows}



def test_corruption_errors_are_finite_and_of_sensible_magnitude(truth):
    """Against the tuned full FT reference (issue 11), every completed trial of the study logs a finite mce and
    relative_mce; the reference's are exactly 1 and the others lie within a factor of 10 of it (the unconverged
    linear probe as reference had made relative mCE 6-10 for every trial); each per-corruption ce agrees with its
    pooled definition recomputed from the logged accuracies: sum of errors over sum of the reference's."""
    t, ref = truth, truth.fam_best["full_ft"]
    for r in t.done:
        for key in ("mce", "relative_mce"):
            assert math.isfinite(r["m"][key]) and 0.1 <= r["m"][key] <= 10, (r["number"], key, r["m"][key])
        for name in t.test:
            mine, theirs = r["shift_acc"][name], ref["shift_acc"][name]
            want = sum(1 - a for a in mine.values()) / sum(1 - a for a in theirs.values())
            assert r["m"][f"shift/{name}/ce"] == pytest.approx(want, rel=1e-9)
    assert ref["m"]["mce"] == pytest.approx(1.0) and ref["m"]["relative_mce"] == pytest.approx(1.0)

def _verify_fits(page: str, t) -> set:
    _, rows = _table(page, "fits")
    want = {"mean over held-out shifts": t.line}
    want.update({n + (" (selection, validation images)" if n in t.selection else ""): f
                 for n, f in t.per_shift.items() if f is not None})
    assert sorted(r.cells[0].text for r in rows) == sorted(want)
    assert rows[0].cells[0].text == "mean over held-out shifts"
    for row in rows:
        f = want[row.cells[0].text]
        name, slope, intercept, r2, n = (c.text for c in row.cells)
        assert near(slope, f["slope"], 3) and near(intercept, f["intercept"], 3) and near(r2, f["r2"], 3), (name, f)
        assert int(n) == f["n"] == len(t.done)
    return {c.pos for r in rows for c in r.cells}


def _verify_effective_robustness(page: str, t) -> set:
    _, rows = _table(page, "er")
    er = t.line["effective_robustness"]
    assert [trial_of(r.cells[0].text, t)["number"] for r in rows] == sorted(sorted(er), key=lambda n: -er[n])
    for row in rows:
        tr = trial_of(row.cells[0].text, t)
        _, _, strategy, id_acc, ood, eff = (c.text for c in row.cells)
        check_strategy(strategy, tr, t.epochs)
        assert near(id_acc, tr["m"]["id_acc"], PCT, 100) and near(ood, tr["m"]["ood_acc_mean"], PCT, 100)
        assert near(eff, er[tr["number"]], PCT, 100), (tr["number"], eff, er[tr["number"]])
    return {c.pos for r in rows for c in r.cells}


def _verify_pareto(page: str, t) -> set:
    _, rows = _table(page, "pareto")
    front = stats.pareto({r["number"]: (r["m"]["id_acc"], r["m"]["ood_acc_mean"]) for r in t.done})
    assert [trial_of(r.cells[0].text, t)["number"] for r in rows] == sorted(front)
    for row in rows:
        tr = trial_of(row.cells[0].text, t)
        _, strategy, lr, id_acc, ood = (c.text for c in row.cells)
        check_strategy(strategy, tr, t.epochs)
        check_lr(lr, tr)
        assert near(id_acc, tr["m"]["id_acc"], PCT, 100) and near(ood, tr["m"]["ood_acc_mean"], PCT, 100)
    return {c.pos for r in rows for c in r.cells}


def _fanova(t) -> dict:
    """fANOVA importances (Optuna, seed 0) of lr, freeze_layers and unfreeze_epoch (0 when nothing is frozen) for
    id_acc and ood_acc_mean of the completed trials in rank order, over the search space of search_space.json (lr
    bounds [low, high] widened to the trials' values); only hyperparameters that vary get a value."""
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    space = t.artifacts["search_space.json"]
    use = [r for r in t.done if "lr" in r["params"]]  # the linear probe has no lr: outside the search space
    if len(use) < 3:  # the page's rule (stats.importances): fANOVA needs 3 completed trials, else '–' everywhere
        return {"id_acc": {}, "ood_acc_mean": {}}
    lrs = [r["params"]["lr"] for r in use] + [space["lr"]["low"], space["lr"]["high"]]
    ks = [r["params"]["freeze_layers"] for r in use]
    es = [r["params"]["unfreeze_epoch"] if k else 0 for r, k in zip(use, ks)]
    dists = {"lr": FloatDistribution(min(lrs), max(lrs), log=True), "freeze_layers": IntDistribution(min(ks), max(ks)),
             "unfreeze_epoch": IntDistribution(min(es), max(es))}
    varying = [n for n, v in (("lr", [r["params"]["lr"] for r in use]), ("freeze_layers", ks), ("unfreeze_epoch", es))
               if len(set(v)) > 1]
    out, verbosity = {}, optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for target in ("id_acc", "ood_acc_mean"):
        mem = optuna.create_study(direction="maximize")
        mem.add_trials([optuna.trial.create_trial(
            params={"lr": r["params"]["lr"], "freeze_layers": k, "unfreeze_epoch": e}, distributions=dists,
            value=r["m"][target]) for r, k, e in zip(use, ks, es)])
        out[target] = optuna.importance.get_param_importances(
            mem, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=varying)
    optuna.logging.set_verbosity(verbosity)
    return out


def _verify_importances(page: str, t) -> set:
    if not hasattr(t, "fanova"):  # ~1.5 s per target on 2 cores: once per module
        t.fanova = _fanova(t)
    want = t.fanova
    _, rows = _table(page, "imp")
    assert [r.cells[0].text for r in rows] == ["lr", "freeze_layers", "unfreeze_epoch"]
    ok = set()
    for row in rows:
        param = row.cells[0].text
        for target in ("id_acc", "ood_acc_mean"):
            cell = row.keyed[f"importance/{target}/{param}"]
            v = want[target].get(param)
            if v is None:
                assert cell.text == "\u2013", (target, param, cell.text)
            else:
                assert near(cell.text, v, 2), (target, param, cell.text, v)
            width = int(re.search(r"width:(\d+)%", cell.inner).group(1))  # the bar behind the number
            assert width == (0 if v is None else round(100 * v)), (target, param, width, v)
            ok.add(cell.pos)
    return ok


def _verify_calibration(page: str, t) -> set:
    head, rows = _table(page, "calib")
    keys = head[2:]
    assert keys == ["id_ece", "id_nll", "id_brier", "ood_ece_mean", "ood_nll_mean"]
    assert [trial_of(r.cells[0].text, t)["number"] for r in rows] == [r["number"] for r in t.shown]
    ok = set()
    for row in rows:
        tr = trial_of(row.cells[0].text, t)
        assert [c.key for c in row.keyed.values()] == keys
        for key in keys:
            assert near(row.keyed[key].text, tr["m"][key], ECE), (tr["number"], key, row.keyed[key].text, tr["m"][key])
        ok |= {row.cells[0].pos} | {c.pos for c in row.keyed.values()}
    return ok


def _final_keys(r: dict) -> set:
    """A run's keys that are not curves the report draws: all but the per-epoch curves and shift/<name>/{acc,ece,nll}
    (step = severity) and the system/* samples (over time; MLflow's system-metrics tab shows them). Most are logged
    once; label_shift/prior_* are per-class series (step = class index)."""
    return {k for k in r["m"] if k not in schema.LEARNING_CURVES and not re.fullmatch(r"shift/[^/]+/(acc|ece|nll)", k)
            and k not in schema.SYSTEM}


def _verify_metrics(page: str, t) -> set:
    head, rows = _table(page, "metrics")
    cols = [trial_of(h, t) for h in head[1:]]
    assert [r["number"] for r in cols] == [r["number"] for r in t.shown]
    keys = set().union(*(_final_keys(r) for r in cols))
    single = {k for k in keys if all(len(r["hist"].get(k, {0: 0})) == 1 for r in cols)}
    shown = [r.cells[0].text for r in rows]
    # every single-valued metric (per-class series are left out: see the test below)
    assert shown == sorted(shown) and single <= set(shown) <= keys, (single - set(shown), set(shown) - keys)
    ok = set()
    for row in rows:
        key = row.cells[0].text
        for cell, tr in zip(row.cells[1:], cols):
            if key not in tr["m"]:
                assert cell.text == "\u2013", (tr["number"], key, cell.text)
            else:
                assert near_sig(cell.text, tr["m"][key]), (tr["number"], key, cell.text, tr["m"][key])
            ok.add(cell.pos)
        ok.add(row.cells[0].pos)
    return ok


def _verify_failures(page: str, t) -> set:
    _, rows = _table(page, "failures")
    bad = sorted((r for r in t.trials.values() if r["status"] != "FINISHED"), key=lambda r: r["number"])
    assert [r.attrs["data-run-id"] for r in rows] == [r["run_id"] for r in bad]
    for row, tr in zip(rows, bad):
        number, state, strategy, lr, epoch, reason = (c.text for c in row.cells)
        # "#N", then the run's MLflow name and id
        assert number.split() == [f"#{tr['number']}", tr["run"].info.run_name, tr["run_id"]], number
        assert state == {"KILLED": "pruned", "FAILED": "failed"}[tr["status"]]
        check_strategy(strategy, tr, t.epochs)
        check_lr(lr, tr)
        assert epoch == tr["tags"].get("harness.pruned_epoch", tr["tags"].get("harness.failed_epoch"))
        assert reason == tr["tags"].get("harness.pruned_reason", tr["tags"].get("harness.fail_reason"))
    return {c.pos for r in rows for c in r.cells}


def _verify_selection(page: str, t) -> set:
    """The Selection table (issue 22): the finalists are the top harness.finalists trials by val_acc_final (ties:
    the lower number) and each baseline family's best, ranked by mean validation over the search-time run and its
    fresh seeds (ties: more seeds, then the lower number); seeds = 1 + fresh seeds, mean validation (2 decimals, %),
    fresh seeds, and each share what selection.selection_frequency (checked against an enumerated bootstrap in
    test_selection) gives on the val_correct.json of each run, read with MlflowClient."""
    import tempfile

    k = int(t.tags["harness.finalists"])
    pool = {r["number"]: r for r in t.done[:k] + list(t.fam_best.values())}
    runs = {n: [r] + r["fresh"] for n, r in pool.items()}
    mean_val = {n: float(np.mean([x["m"]["val_acc_final"] for x in rs])) for n, rs in runs.items()}
    order = sorted(pool, key=lambda n: (-round(mean_val[n], 12), -len(runs[n]), n))
    scores = {}
    for n in order:
        scores[n] = []
        for x in runs[n]:
            with tempfile.TemporaryDirectory() as tmp:
                vc = json.loads(Path(t.client.download_artifacts(x["run_id"], schema.VAL_CORRECT_ARTIFACT,
                                                                 tmp)).read_text())
            scores[n].append([float(c == "1") for c in vc["val"]])
    share = selection.selection_frequency(scores)
    _, rows = _table(page, "selection")
    assert [int(r.cells[0].text.split()[0][1:]) for r in rows] == order
    assert rows[0].cells[0].text.endswith("(selected)") and order[0] == t.best["number"]
    ok = set()
    for r, n in zip(rows, order):
        assert r.cells[2].text == str(len(runs[n])) and r.cells[5].text == str(len(pool[n]["fresh"]))
        assert near(r.cells[3].text, mean_val[n], 2, 100)
        assert near(r.cells[4].text, share[n], 1, 100)
        ok |= {c.pos for c in r.cells}
    return ok


def _verify_budgets(page: str, t) -> set:
    """Each family's budget counted from MLflow's trial runs: runs, FINISHED and KILLED ones, val_acc epochs logged,
    the distinct lr params; the sampled (non-baseline) trials are the search's."""
    _, rows = _table(page, "budgets")
    fams = [f for f in schema.BASELINES if any(r["baseline"] == f for r in t.trials.values())]
    fams += ["search"] if any(not r["baseline"] for r in t.trials.values()) else []
    assert [r.cells[0].text for r in rows] == [schema.BASELINES.get(f, "search (sampled trials)") for f in fams]
    for row, f in zip(rows, fams):
        runs = [r for r in t.trials.values() if r["baseline"] == ("" if f == "search" else f)]
        epochs = sum(len(r["hist"].get("val_acc", {})) for r in runs)
        lrs = sorted({r["params"]["lr"] for r in runs if "lr" in r["params"]})
        text = row.cells[1].text
        head = (f"{len(runs)} trial{'s' * (len(runs) != 1)} ({sum(r['status'] == 'FINISHED' for r in runs)} finished, "
                f"{sum(r['status'] == 'KILLED' for r in runs)} pruned), {epochs} epoch{'s' * (epochs != 1)}, ")
        assert text.startswith(head), (f, text, head)
        grid = text[len(head):]
        if not lrs:
            assert grid.startswith("no lr"), grid
        elif len(lrs) == 1:
            assert grid.startswith(f"1 lr ({lrs[0]:.3g})"), grid
        else:
            assert grid.startswith(f"{len(lrs)} lr points ({lrs[0]:.3g} to {lrs[-1]:.3g})"), grid
    return {c.pos for r in rows for c in r.cells}


VERIFIERS = (_verify_selection, _verify_budgets, _verify_leaderboard, _verify_cards, _verify_conditions, _verify_comparisons,
             _verify_provenance, _verify_fits,
             _verify_effective_robustness, _verify_pareto, _verify_importances, _verify_calibration, _verify_metrics,
             _verify_failures)


def test_cli_default_paths_exit_0_and_no_torch(built):
    """`python -m harness.report --study-name tiny` in the study's folder (default sqlite paths) exits 0, prints
    the path of reports/tiny/index.html, and never imports torch."""
    assert built["rc"] == 0
    assert f"report: {built['html']}" in built["stdout"]
    assert built["torch"] is False


def test_leaderboard_numbers_equal_mlflow(built, truth):
    """Rows in MLflow's val_acc_final order, and every cell equals the MLflow value of that run within display
    rounding: rank, trial number, strategy (freeze_layers / unfreeze_epoch params), lr (3 significant digits),
    objective/ID/OOD/worst accuracies (0.1 point) and the worst shift's name, ECEs (0.001), the 95% Wilson
    intervals (n = the harness.n_test tag for ID, harness.n_shift_eval for the OOD mean) and effective robustness
    recomputed from MLflow's ID and OOD accuracies of all completed trials."""
    assert len(truth.done) == 3
    _verify_leaderboard(built["page"], truth)


def test_headline_cards_equal_mlflow(built, truth):
    """The headline cards show the top-ranked trial (also the study's harness.best_trial tag): its strategy and lr,
    ID and mean OOD accuracy with their Wilson intervals and n, OOD minus ID, the worst held-out shift (lowest mean
    of shift/<name>/acc over severities) with MLflow's ood_acc_worst, the OOD margin over each other baseline, and
    the hindsight note names the trial with the highest ood_acc_mean."""
    _verify_cards(built["page"], truth)


def test_conditions_table_equals_mlflow(built, truth):
    """Each pass/warn/fail check of the selected trial, value and status recomputed from MLflow with the documented
    thresholds (pass below / warn below): OOD drop = id_acc - ood_acc_mean (10 / 20 points), worst drop = id_acc -
    ood_acc_worst (20 / 35), mean of shift/<test shift>/ece at the highest severity (0.10 / 0.20), the gap to the
    OOD-best trial (pass within the Wilson half-width, n = n_shift_eval), the margin over the best baseline (>= 0),
    the on-the-line R² (>= 0.7 / 0.3), MLflow's label_shift/prior_l1_error (0.05 / 0.15) and the number of FAILED
    runs (0); values in points (0.1) or to 0.001, and the numbers in the 'why' column name the right trials."""
    _verify_conditions(built["page"], truth)


def test_paired_comparisons_equal_mlflow(built, truth):
    """Each comparison of the selected trial (3 fresh seeds) with a family's best and of the hindsight-best with the selected:
    difference, two-level bootstrap interval, Holm p over the table's OOD rows, level and each family's budget,
    recomputed from every seed's correct.json with numpy (compare above)."""
    assert all(len(truth.fam_best[f]["seeds"]) == 3 for f in truth.fam_best) and len(truth.best["seeds"]) == 3
    _verify_comparisons(built["page"], truth)


def test_budgets_equal_mlflow(built, truth):
    _verify_budgets(built["page"], truth)


def test_provenance_numbers_equal_mlflow(built, truth):
    """The provenance table: experiment and parent run ids, tags (sampler, pruner, objective, seed, target, device, git
    SHA, cache keys, shifts), run-state counts of the child runs, wall time from the parent run's start/end and the
    summed child run durations (1 s), sample sizes, severities, versions.json, and the pretraining line (source val
    acc = the parent's pretrain_source_val_acc metric, seconds from pretrain/<key>.json)."""
    _verify_provenance(built["page"], truth)


def test_on_the_line_fits_table_equals_mlflow(built, truth):
    """One row per fit (mean OOD first, then every held-out, label and selection shift with a fit): slope, intercept
    and R² (0.001) of least squares of probit(OOD accuracy) on probit(id_acc), clipped with n = harness.n_test, where
    a shift's OOD accuracy is the mean of its shift/<name>/acc history; trials = the completed trials."""
    _verify_fits(built["page"], truth)


def test_effective_robustness_table_equals_mlflow(built, truth):
    """Completed trials by decreasing effective robustness (ood_acc_mean - Phi(slope * probit(id_acc) + intercept)),
    with their strategy and MLflow ID/OOD accuracies (0.1 point)."""
    _verify_effective_robustness(built["page"], truth)


def test_pareto_table_equals_mlflow(built, truth):
    """The Pareto table lists exactly the completed trials no other beats on both MLflow id_acc and ood_acc_mean, by
    trial number, with strategy, lr and accuracies."""
    _verify_pareto(built["page"], truth)


def test_importance_table_equals_fanova_on_mlflow_values(built, truth):
    """Each importance cell (0.01) and its bar width (%) equal Optuna's fANOVA (seed 0) on MLflow params and metrics
    over search_space.json; a hyperparameter that does not vary shows '–' and an empty bar."""
    _verify_importances(built["page"], truth)


def test_calibration_table_equals_mlflow(built, truth):
    """The calibration table shows the baselines, the selected trial and the next best (figures.MAX_CURVES) in rank
    order, each with MLflow's id_ece, id_nll, id_brier, ood_ece_mean and ood_nll_mean (0.001)."""
    _verify_calibration(built["page"], truth)


def test_all_final_metrics_table_equals_mlflow(built, truth):
    """The 'all final metrics' table: one column per shown trial, a row for every key those runs logged once (besides
    the per-epoch curves and shift/<name>/{acc,ece,nll}), rows sorted by key, each cell MLflow's value of that run
    (4 significant digits) or '–' where the run lacks the key. (Per-class series: see the test below.)"""
    _verify_metrics(built["page"], truth)


def test_failures_table_equals_mlflow(built, truth):
    """Pruned and failed runs by trial number: state from the run status, strategy and lr from params, the stopped
    epoch and the reason from the harness.pruned_* / harness.failed_epoch / harness.fail_reason tags."""
    _verify_failures(built["page"], truth)


def test_every_number_on_the_page_is_verified(built, truth):
    """Every element that shows a number (each data-key cell or card, except the NON_NUMERIC_KEYS allow-list, and each
    unkeyed table cell holding a digit) was compared with MLflow by one of the table tests above: a new number on the
    page fails here until a test checks it."""
    page = built["page"]
    verified = set().union(*(verify(page, truth) for verify in VERIFIERS))
    unverified = {pos: what for pos, what in _numeric_cells(page).items() if pos not in verified}
    assert not unverified, "numbers on the page no test compares with MLflow:\n" + "\n".join(unverified.values())
    keys = set(re.findall(r'data-key="([^"]+)"', page))
    assert set(NON_NUMERIC_KEYS) <= keys, "an allow-listed key no longer exists: drop it from NON_NUMERIC_KEYS"


def test_final_metrics_table_shows_single_values_only(built, truth):
    """The 'all final metrics' table promises final (single-step) metrics: a key MLflow holds at several steps (a
    per-class prior vector) must not appear there as one number (its last step's value)."""
    _, rows = _table(built["page"], "metrics")
    multi = {r.cells[0].text for r in rows if any(len(tr["hist"].get(r.cells[0].text, {})) > 1 for tr in truth.shown)}
    assert not multi, multi


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
    assert cli.main(["--study-name", "nope", "--tracking-uri", built["uri"], "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "'nope' not found" in err and "'tiny'" in err
    missing = tmp_path / "missing.db"
    assert cli.main(["--study-name", "tiny", "--tracking-uri", f"sqlite:///{missing}", "--out", str(tmp_path / "r")]) == 2
    assert "no MLflow store" in capsys.readouterr().err and not missing.exists()
    assert cli.main(["--study-name", "tiny", "--tracking-uri", "ftp://x", "--out", str(tmp_path / "r")]) == 2
    assert "unsupported URI" in capsys.readouterr().err
    assert cli.main([]) == 2 and "--study-name: required" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_slug_keeps_plain_names_and_separates_odd_ones():
    """Plain study names are their own folder; names with odd characters get a cleaned name plus a hash."""
    assert kit.slug("tiny") == "tiny" and kit.slug("exp-1.2_b") == "exp-1.2_b"
    a, b = kit.slug("a<b"), kit.slug("a>b")
    assert a != b and re.fullmatch(r"[A-Za-z0-9._-]+", a)


# ------------------------------------------------------------------------------ figure values (report.json)

def _probit(p: float, n: int) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(min(max(p, 1 / (2 * n)), 1 - 1 / (2 * n)))


def check_figure_values(s: dict, t) -> None:
    """Every number the figures draw, as report.json holds it, against MLflow read here:
    - severity curves (accuracy and ECE per family) of the shown trials: severity 0 is the run's clean_subset_acc /
      clean_subset_ece (the shifted sets' own clean images), severity k the mean over the family's held-out shifts of
      shift/<name>/acc (ece) at step k;
    - heatmap cells: id_acc for ID, else the mean of shift/<name>/acc over its steps, rows in rank order;
    - accuracy-on-the-line fits: least squares (numpy.polyfit) on probit values clipped at 1/2n, n = harness.n_test."""
    fams = dict(x.split(":", 1) for x in t.tags["harness.shifts.family"].split(","))
    by_fam = {}
    for n in t.test:
        by_fam.setdefault(fams[n], []).append(n)
    for key, clean_key in (("acc", "clean_subset_acc"), ("ece", "clean_subset_ece")):
        curves = s["severity_curves"][key]
        assert sorted(map(int, curves)) == sorted(r["number"] for r in t.shown)
        for r in t.shown:
            got = curves[str(r["number"])]
            assert set(got) == set(by_fam)
            hist = r["shift_acc"] if key == "acc" else r["shift_ece"]
            for fam, names in by_fam.items():
                want = [[0, r["m"][clean_key]]] + [[sev, sum(hist[n][sev] for n in names) / len(names)]
                                                   for sev in t.severities]
                assert [p[0] for p in got[fam]] == [w[0] for w in want], (r["number"], fam)
                for (_, v), (_, w) in zip(got[fam], want):
                    assert v == pytest.approx(w, abs=1e-12), (key, r["number"], fam, v, w)
    hm = s["heatmap"]
    assert hm["rows"] == [r["number"] for r in t.done]
    assert hm["cols"][0] == "ID" and set(hm["cols"][1:]) == {n for r in t.done for n in r["shift_mean"]}
    for number, row in zip(hm["rows"], hm["cells"]):
        tr = t.trials[number]
        for col, v in zip(hm["cols"], row):
            w = tr["m"]["id_acc"] if col == "ID" else tr["shift_mean"].get(col)
            assert v == pytest.approx(w, abs=1e-12), (number, col, v, w)
    fits = s["on_the_line"]
    points = {"mean": {r["number"]: (r["m"]["id_acc"], r["m"]["ood_acc_mean"]) for r in t.done}}
    points.update({n: {r["number"]: (r["m"]["id_acc"], r["shift_mean"][n]) for r in t.done if n in r["shift_mean"]}
                   for n in fits["per_shift"]})
    for name, pts_ in points.items():
        fit = fits["mean"] if name == "mean" else fits["per_shift"][name]
        x = [_probit(a, t.n_test) for a, _ in pts_.values()]
        y = [_probit(b, t.n_test) for _, b in pts_.values()]
        slope, intercept = np.polyfit(x, y, 1)
        assert fit["slope"] == pytest.approx(slope, abs=1e-9) and fit["intercept"] == pytest.approx(intercept, abs=1e-9)
        assert fit["n"] == len(x)


def test_figure_values_in_json_equal_mlflow(built, truth):
    """The figures draw report.json's severity_curves, heatmap and on_the_line; each of those numbers equals the value
    recomputed from MlflowClient (check_figure_values)."""
    check_figure_values(built["data"]["studies"][0], truth)


@pytest.mark.parametrize("where", ["heatmap", "severity", "fit"])
def test_a_mutated_figure_value_fails_the_figure_check(built, truth, where):
    """One figure value moved by 0.01 (a heatmap cell, a severity-curve point, a fit's slope) fails check_figure_values."""
    import copy

    s = copy.deepcopy(built["data"]["studies"][0])
    if where == "heatmap":
        s["heatmap"]["cells"][0][1] += 0.01
    elif where == "severity":
        first = next(iter(s["severity_curves"]["acc"].values()))
        next(iter(first.values()))[1][1] += 0.01
    else:
        s["on_the_line"]["mean"]["slope"] += 0.01
    with pytest.raises(AssertionError):
        check_figure_values(s, truth)
