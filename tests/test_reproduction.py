"""The reproduction table (issue 23): each configuration's best on validation, read on its fresh seeds, paired against
full FT on the same images; the README block generated from report.json by one command."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np

from harness import reproduction, stats
from harness.report import reproduction as page

N = 60  # images


def _bits(p: float, seed: int) -> str:
    rng = random.Random(seed)
    return "".join("1" if rng.random() < p else "0" for _ in range(N))


def _study():
    """Full FT at two lrs (val 0.5 and 0.6), the probe, a surgical first block at two lrs and both BN modes, layer2 at
    one lr; every trial's fresh seeds 1-3 as replicates whose correctness is drawn at a known rate."""
    spec = [  # number, baseline, params, val, (target rate, clean rate)
        (0, "full_ft", {"lr": 0.01, "freeze_layers": 0, "bn": "eval"}, 0.5, (0.3, 0.3)),
        (1, "full_ft", {"lr": 0.001, "freeze_layers": 0, "bn": "eval"}, 0.6, (0.5, 0.4)),
        (2, "linear_probe", {"freeze_layers": 4, "bn": "eval"}, 0.4, (0.4, 0.8)),
        (3, "", {"lr": 0.01, "strategy": "surgical", "tune_set": "stem+layer1", "bn": "eval"}, 0.7, (0.7, 0.6)),
        (4, "", {"lr": 0.001, "strategy": "surgical", "tune_set": "stem+layer1", "bn": "eval"}, 0.65, (0.1, 0.1)),
        (5, "", {"lr": 0.01, "strategy": "surgical", "tune_set": "stem+layer1", "bn": "train"}, 0.55, (0.6, 0.2)),
        (6, "", {"lr": 0.01, "strategy": "surgical", "tune_set": "layer2", "bn": "eval"}, 0.45, (0.5, 0.5)),
    ]
    trials, reps, done = [], [], []
    for number, fam, params, val, (pt, pc) in spec:
        trials.append({"number": number, "role": "trial", "baseline": fam, "params": params,
                       "metrics": {"selected_epoch": 2}, "run_id": f"r{number}", "replicate_of": None,
                       "correct": {"test": _bits(pt, number), "sets": {"clean": _bits(pc, 100 + number)}}})
        done.append({"number": number, "baseline": fam, "objective": val})
        for seed in (1, 2, 3):
            reps.append({"number": None, "role": "replicate", "replicate_of": number, "seed": seed, "status": "FINISHED",
                         "start_time": seed, "run_id": f"r{number}s{seed}",
                         "correct": {"test": _bits(pt, 1000 * seed + number),
                                     "sets": {"clean": _bits(pc, 1000 * seed + 100 + number)}}})
    study = {"trials": trials + reps, "replicates": reps,
             "parent": {"params": {}, "tags": {"harness.target_domain": "gaussian_noise:5"}}}
    return study, done, reps


def _mat(reps, number, key):
    rows = [r["correct"]["test"] if key == "test" else r["correct"]["sets"]["clean"]
            for r in sorted(reps, key=lambda r: r["seed"]) if r["replicate_of"] == number]
    return np.array([[float(c == "1") for c in s] for s in rows])


def test_rows_are_the_best_on_validation_paired_against_full_ft():
    study, done, reps = _study()
    out = reproduction.summarize(study, done)
    labels = [(r["label"], r["number"]) for r in out["rows"]]
    # full FT's best on val is trial 1 (0.6 > 0.5); the first block at BN eval: trial 3 (0.7 > 0.65)
    assert labels == [("full FT", 1), ("linear probe", 2), ("surgical: stem+layer1 (BN eval)", 3),
                      ("surgical: stem+layer1 (BN train)", 5), ("surgical: layer2 (BN eval)", 6)]
    ft_t, ft_c = _mat(reps, 1, "test"), _mat(reps, 1, "clean")
    for r in out["rows"][1:]:
        a_t, a_c = _mat(reps, r["number"], "test"), _mat(reps, r["number"], "clean")
        assert r["seeds"] == 3 and abs(r["target"] - a_t.mean()) < 1e-12 and abs(r["clean"] - a_c.mean()) < 1e-12
        assert abs(r["vs_ft"]["diff"] - (a_t.mean() - ft_t.mean())) < 1e-12
        assert abs(r["clean_vs_ft"]["diff"] - (a_c.mean() - ft_c.mean())) < 1e-12
        want = stats.two_level_bootstrap(a_t.tolist(), ft_t.tolist(), seed=0)
        assert r["vs_ft"]["ci"] == want["ci"] and r["vs_ft"]["level"] == "seeds and images"
    assert out["rows"][0]["vs_ft"] is None and out["rows"][0]["target"] == ft_t.mean()
    assert [r["number"] for r in out["rows"] if r.get("best_val")] == [3]  # the highest val among surgical choices
    holm = stats.holm([r["vs_ft"]["p"] for r in out["rows"][1:]])
    assert [r["vs_ft"]["p_holm"] for r in out["rows"][1:]] == holm
    (c,) = out["contrasts"]
    assert (c["choice"], c["eval"], c["train"]) == ("stem+layer1", 3, 5)
    assert abs(c["target"]["diff"] - (_mat(reps, 3, "test").mean() - _mat(reps, 5, "test").mean())) < 1e-12
    assert out["n"] == N and out["target"] == "gaussian_noise:5"


def test_markdown_block_is_generated_from_report_json(tmp_path):
    study, done, _ = _study()
    report = {"studies": [{"name": "sc-noise", "reproduction": reproduction.summarize(study, done)}]}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{page.BEGIN}\nSTALE ROW\n{page.END}\nafter\n<!-- end generated -->\n")
    run = lambda *a: subprocess.run([sys.executable, "-m", "harness.report.reproduction", *a], capture_output=True,
                                    text=True)
    assert run(str(path), "--out", str(readme)).returncode == 0
    text = readme.read_text()
    assert text.startswith("before\n" + page.BEGIN) and text.endswith(f"{page.END}\nafter\n<!-- end generated -->\n")
    assert "STALE ROW" not in text and "| surgical: stem+layer1 (BN eval) (best on val) | 1e-02 | 2 | 70.0 | 3 |" in text
    assert "BN eval - BN train, surgical stem+layer1 (trials 3 and 5, paired)" in text
    again = run(str(path), "--out", str(readme))
    assert again.returncode == 0 and readme.read_text() == text  # regenerates to the same block
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"studies": [{"name": "x"}]}))
    out = run(str(bad))
    assert out.returncode == 2 and "REPORT_JSON" in out.stderr and "reproduction" in out.stderr
