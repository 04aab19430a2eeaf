"""Real domains (shifts.domains, issue 25): a <domain>/<class>/<image> folder checked before anything exists, each
domain a held-out set domain.<name> with per-image correctness in correct.json and report.json, leave-one-domain-out
through data.path, the simulated-vs-real Spearman figure and its bootstrap, and the offline digit domains."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats as sps

from harness import config, data as datamod, domain_numbers, domainfiles, domains, launch, study, suite as suitemod

from conftest import TINY, mlflow_client as conftest_client

pytestmark = pytest.mark.usefixtures("one_thread")


def _folder(root, domains_classes: dict, n=4, size=8, seed=0):
    """root/<domain>/<class>/<i>.png: n random RGB images of size x size per class, values kept for comparison."""
    rng = np.random.default_rng(seed)
    pixels = {}
    for dom, classes in domains_classes.items():
        for c in classes:
            (root / dom / c).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr, "RGB").save(root / dom / c / f"{i}.png")
                pixels[(dom, c, i)] = arr
    return pixels


DIGITS = ["5", "6", "7", "8", "9"]  # the tiny study's classes (data.target_classes of the default)


@pytest.mark.parametrize("case, named", [
    ("extra", "'4'"),  # a class folder the study does not have
    ("missing", "'9'"),  # a study class without a folder
    ("order", "'5'"),  # the same names, but target_classes in another order than the folders sort
])
def test_mismatched_domain_classes_exit_2_and_create_nothing(workdir, capsys, case, named):
    good = {"ok": DIGITS}
    bad = {"extra": DIGITS + ["4"], "missing": DIGITS[:-1], "order": DIGITS}[case]
    _folder(workdir / "doms", {**good, "broken": bad}, n=2)
    (workdir / "tiny.toml").write_text(TINY)
    before = set(workdir.rglob("*"))
    args = ["--config", "tiny.toml", "--no-report", "--set", "shifts.domains=doms"]
    if case == "order":
        args += ["--set", "data.target_classes=[9, 5, 6, 7, 8]"]
    assert study.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: shifts.domains: ") and "domain 'broken'" in err and named in err, err
    assert "'ok'" not in err  # the good domain passed; the message names the bad one
    assert set(workdir.rglob("*")) == before  # no mlruns/, no optuna.db, no cache
    assert not (workdir / "mlruns").exists()


def test_domain_names_and_paths_are_bad_input(workdir):
    _folder(workdir / "doms", {"has space": DIGITS}, n=1)
    with pytest.raises(config.ConfigError, match="shifts.domains: domain folder 'has space'"):
        domainfiles.domains(config.Shifts(domains=str(workdir / "doms")))
    with pytest.raises(config.ConfigError, match="shifts.domains: .* is not a folder"):
        config.load(None, ["shifts.domains=nowhere"])


def test_domain_sets_are_the_files_decoded(workdir):
    """Each evaluated domain is a set domain.<name> of family domain, its images the PNGs' pixels (8 px: no
    resampling), its labels the class folders' positions; eval_images picks a stratified subset."""
    pixels = _folder(workdir / "doms", {"a": ["x", "y"], "b": ["x", "y"]}, n=3)
    cfg = config.Shifts(domains=str(workdir / "doms"), eval_images=0)
    sets = suitemod.read_domains(cfg, 8, ["x", "y"])
    assert [e.name for e in sets] == ["domain.a", "domain.b"] and {e.family for e in sets} == {"domain"}
    for e in sets:
        dom = e.name.split(".", 1)[1]
        want = np.stack([pixels[(dom, c, i)] for c in "xy" for i in range(3)])
        assert e.images[0].dtype == torch.uint8 and torch.equal(e.images[0].permute(0, 2, 3, 1), torch.from_numpy(want))
        assert e.labels.tolist() == [0, 0, 0, 1, 1, 1]
    sub = suitemod.read_domains(config.Shifts(domains=str(workdir / "doms"), eval_images=4), 8, ["x", "y"])
    assert all(sorted(e.labels.tolist()) == [0, 0, 1, 1] for e in sub)


def test_leave_one_domain_out_evaluates_the_other_domains(workdir):
    """data.path = <domains>/<name> (imagefolder): that domain is the study's data, the others are evaluated; a path
    inside the folder that is not a domain is bad input."""
    _folder(workdir / "doms", {"art": ["cat", "dog"], "photo": ["cat", "dog"], "sketch": ["cat", "dog"]}, n=10)
    cfg = config.load(None, ["data.source=imagefolder", f"data.path={workdir / 'doms' / 'photo'}", "data.image_size=8",
                             "model.weights=none", f"shifts.domains={workdir / 'doms'}", "shifts.eval_images=0",
                             "data.labels_per_class=0"])
    assert domainfiles.target_of(cfg.data, cfg.shifts) == "photo"
    launch.preflight(cfg)
    data = datamod.load(cfg.data, 0)
    suite, _ = suitemod.build(cfg.shifts, data, None, domainfiles.target_of(cfg.data, cfg.shifts))
    assert [e.name for e in suite.domains] == ["domain.art", "domain.sketch"]
    assert all(len(e.labels) == 20 for e in suite.domains)  # every image of each other domain
    assert len(data["train"][1]) + len(data["val"][1]) + len(data["test"][1]) == 20  # photo's own 20 images
    inside = config.load(None, ["data.source=imagefolder", f"data.path={workdir / 'doms' / 'photo' / 'cat'}",
                                "model.weights=none", f"shifts.domains={workdir / 'doms'}"])
    with pytest.raises(config.ConfigError, match="data.path: .* not one of its domains"):
        domainfiles.target_of(inside.data, inside.shifts)


def test_spearman_is_scipys_and_the_bootstrap_covers_it():
    """The point is scipy's rho (and, with no ties, 1 - 6 sum d^2 / (n (n^2 - 1))); the bootstrap's per-row rho,
    an implementation of its own, matches scipy's on rows with ties; its interval contains the point."""
    rng = np.random.default_rng(3)
    sim = rng.random(9)
    dom = sim + 0.3 * rng.random(9)
    rho = domain_numbers.spearman(list(sim), list(dom))
    assert rho == pytest.approx(sps.spearmanr(sim, dom).statistic, abs=1e-12)
    d = sps.rankdata(sim) - sps.rankdata(dom)
    assert rho == pytest.approx(1 - 6 * (d ** 2).sum() / (9 * (81 - 1)), abs=1e-12)
    rows_a, rows_b = rng.integers(0, 4, (50, 7)).astype(float), rng.integers(0, 4, (50, 7)).astype(float)  # ties
    mine = domain_numbers._row_spearman(rows_a, rows_b)
    for a, b, m in zip(rows_a, rows_b, mine):
        ref = sps.spearmanr(a, b).statistic if len(set(a)) > 1 and len(set(b)) > 1 else float("nan")
        assert (math.isnan(m) and math.isnan(ref)) or m == pytest.approx(ref, abs=1e-12)
    # per-image data whose means are sim and dom: 200 images a trial
    img_sim = (rng.random((9, 200)) < sim[:, None]).astype(float)
    img_dom = (rng.random((9, 200)) < (dom / dom.max())[:, None]).astype(float)
    point = domain_numbers.spearman(list(img_sim.mean(1)), list(img_dom.mean(1)))
    boot = domain_numbers.spearman_bootstrap(img_sim, img_dom, resamples=500)
    assert boot["ci"][0] <= point <= boot["ci"][1] and boot["ci"][1] - boot["ci"][0] > 0.05
    # a ranking reversed on every resample: the interval is pinned at -1
    rev = domain_numbers.spearman_bootstrap(np.arange(5.0)[:, None], -np.arange(5.0)[:, None], resamples=200)
    assert rev["ci"] == [-1.0, -1.0]


def test_make_digits_writes_the_study_classes(tmp_path, capsys):
    """The offline domains: every domain has the study's classes, per_class PNGs each, 32x32 (typed) or 8x8
    (typed8x8, 17 levels of ink as optdigits), RGB; a non-empty OUT is refused."""
    out = tmp_path / "dd"
    assert domains.main(["make-digits", str(out), "--per-class", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == list(domains.DOMAINS)
    for dom, side in (("typed", 32), ("typed8x8", 8)):
        assert sorted(p.name for p in (out / dom).iterdir()) == DIGITS
        imgs = [Image.open(p) for p in sorted((out / dom).glob("*/*.png"))]
        assert len(imgs) == 15 and {(i.size, i.mode) for i in imgs} == {((side, side), "RGB")}
    assert domains.main(["make-digits", str(out)]) == 2 and "not an empty folder" in capsys.readouterr().err


def test_a_domain_study_logs_per_image_correctness_into_report_json(workdir):
    """A tiny study with two domains: each trial's correct.json holds one bit per image of each domain, whose mean is
    the logged shift/domain.<name>/acc, and the selected trial's bits are its saved weights' predictions on the PNGs
    read independently (PIL, 8 px: no resampling); domains/acc_mean is the mean of the domains; report.json carries
    each domain's numbers, and ood_acc_mean is the simulated shifts' alone."""
    from harness import models, results
    from safetensors.torch import load as st_load

    pixels = _folder(workdir / "doms", {"one": DIGITS, "two": DIGITS}, n=4, size=8)
    (workdir / "tiny.toml").write_text(TINY)
    assert study.main(["--config", "tiny.toml", "--n-trials", "3", "--set", "shifts.domains=doms",
                       "--set", "shifts.eval_images=0", "--set", "data.image_size=8", "--set", "pretrain.epochs=1"]) == 0
    loaded = results.load("tiny", "sqlite:///mlruns/mlflow.db")
    for t in loaded["trials"]:
        c, m = t["correct"], t["metrics"]
        accs = []
        for name in ("domain.one", "domain.two"):
            bits = c["domains"][name]["1"]
            assert len(bits) == 20 and set(bits) <= {"0", "1"}
            assert m[f"shift/{name}/acc"] == pytest.approx(bits.count("1") / 20)
            accs.append(bits.count("1") / 20)
        assert m["domains/acc_mean"] == pytest.approx(sum(accs) / 2) and m["domains/acc_worst"] == min(accs)
        sim = [sum(v for _, v in t["curves"][f"shift/{n}/acc"]) / 2 for n in ("gaussian_noise", "contrast")]
        assert m["ood_acc_mean"] == pytest.approx(sum(sim) / 2)  # the domains are not in it
    data = json.loads(next(workdir.glob("reports/tiny/report.json")).read_text())
    s = data["studies"][0]
    assert sorted(s["domains"]) == ["domain.one", "domain.two"]
    best = next(t for t in loaded["trials"] if t["number"] == s["best"])
    model, _ = models.build("resnet8", 5, seed=0)
    model.load_state_dict(st_load(results.artifact(conftest_client(workdir), best["run_id"], "model/weights.safetensors")))
    for dom in ("one", "two"):
        x = torch.from_numpy(np.stack([pixels[(dom, c, i)] for c in DIGITS for i in range(4)])).permute(0, 3, 1, 2)
        with torch.no_grad():
            pred = model.eval()(x.float() / 255).argmax(1)
        want = "".join("1" if p == i // 4 else "0" for i, p in enumerate(pred.tolist()))
        assert best["correct"]["domains"][f"domain.{dom}"]["1"] == want
    for name, d in s["domains"].items():
        assert d["n"] == 20 and d["selected_acc"] == pytest.approx(best["metrics"][f"shift/{name}/acc"])
        r = d["ranking"]
        sim = [p["simulated"] for p in r["points"]]
        dom = [p["domain"] for p in r["points"]]
        want = sps.spearmanr(sim, dom).statistic if len(set(sim)) > 1 and len(set(dom)) > 1 else None
        assert (r["rho"] is None and want is None) or r["rho"] == pytest.approx(want)
    assert "Simulated vs real shift" in next(workdir.glob("reports/tiny/index.html")).read_text()


def test_a_readme_with_two_generated_blocks_gets_each_study_in_its_own():
    """--markdown --out README.md replaces the block of the same study: the default study's block and the real-domain
    example's live in one README; a block of a study not there replaces the first (as with one block)."""
    from harness.report import markdown

    def block(name, body):
        return (f"{markdown.BEGIN}\n\n_Study `{name}`: commit abc, 2026-12-07 20:29 UTC, machine 2 CPUs, x, device cpu, "
                f"load average 1 at study start._\n\n{body}\n{markdown.END}")

    text = f"intro\n{block('default', 'old default')}\nmiddle\n{block('domains_digits', 'old domains')}\nend\n"
    out = markdown.replace_block(text, block("domains_digits", "new domains") + "\n")
    assert "new domains" in out and "old domains" not in out and "old default" in out
    assert out.startswith("intro\n") and out.endswith("\nend\n") and "\nmiddle\n" in out
    out = markdown.replace_block(out, block("default", "new default"))
    assert "new default" in out and "new domains" in out and "old default" not in out
    assert "other" in markdown.replace_block(text, block("other", "x")).split("middle")[0]
    empty = f"intro\n{block('default', 'old default')}\nmiddle\n{markdown.BEGIN}\n{markdown.END}\nend\n"
    out = markdown.replace_block(empty, block("domains_digits", "new domains"))
    assert "old default" in out and out.split("middle")[1].count("new domains") == 1  # the empty block, not the first


def test_the_study_fingerprint_covers_the_domain_files(workdir):
    """A resume on other domain images is another study: the fingerprint holds the folder's content address."""
    from harness import fingerprint

    _folder(workdir / "doms", {"one": DIGITS}, n=1)
    cfg = config.load(None, [f"shifts.domains={workdir / 'doms'}"])
    before = fingerprint.of(cfg)["shifts.domains_key"]
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(workdir / "doms" / "one" / "5" / "extra.png")
    assert before and fingerprint.of(cfg)["shifts.domains_key"] != before
    assert fingerprint.of(config.load(None, []))["shifts.domains_key"] is None
