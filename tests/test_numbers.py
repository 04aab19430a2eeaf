"""The numbers the report derives from a study read back from MLflow (harness.numbers on the shared tiny study)."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from harness import numbers

pytestmark = pytest.mark.slow


def test_summary_numbers_match_mlflow_and_the_test_split(shared, loaded):
    """summarize(): trials ranked by the objective (val_acc_final), ID/OOD numbers equal to MLflow's, the test-set
    size inferred from the accuracies equals the real test split, Wilson intervals contain the estimate, the
    baselines are found, and a study with 3 completed trials still gets an accuracy-on-the-line fit."""
    from harness import config, data

    s = numbers.summarize(loaded)
    cfg = config.load(f"{shared['root']}/tiny.toml")
    n_test = len(data.load(cfg.data, cfg.study.seed)["test"][1])
    assert (s["n_test"], s["n_test_source"]) == (n_test, "logged")
    assert s["n_shift_eval"] == min(cfg.shifts.eval_images or n_test, n_test) < n_test  # the tiny study subsets

    client = MlflowClient(shared["uri"])
    done = sorted((r for r in s["trials"] if r.get("rank")), key=lambda r: r["rank"])
    assert len(done) == 3
    objectives = [client.get_run(r["run_id"]).data.metrics["val_acc_final"] for r in done]
    assert objectives == sorted(objectives, reverse=True)
    for r in done:
        m = client.get_run(r["run_id"]).data.metrics
        assert (r["id_acc"], r["ood_acc_mean"], r["ood_acc_worst"]) == (m["id_acc"], m["ood_acc_mean"], m["ood_acc_worst"])
        lo, hi = r["id_acc_ci"]
        assert lo <= r["id_acc"] <= hi and 0 <= lo and hi <= 1
        assert r["worst_shift"] in ("gaussian_noise", "contrast", "label_shift")
    assert s["best"] == done[0]["number"]
    assert set(s["baselines"]) == {"full_ft", "linear_probe", "lp_ft"} and None not in s["baselines"].values()
    fit = s["on_the_line"]["mean"]
    assert fit is not None and fit["n"] == 3
    assert all(c["outcome"] in ("pass", "fail", "inconclusive", "n/a") for c in s["conditions"])
    json.dumps(s, allow_nan=False, default=lambda o: None)  # JSON-able
