"""Target: the study's shifted target domain (data.target_shift), parsed by one function, built once per seed, cached,
and named on the report's provenance."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from harness import config, data as datamod, target

from conftest import TINY


def _setup(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    cfg = config.load(str(tmp_path / "tiny.toml"))
    return cfg, datamod.load(cfg.data, cfg.study.seed)


def _contrast5(x):
    """CIFAR-10-C contrast at severity 5, written out: (x - per-image channel mean) * .15 + mean."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    return ((x - mean) * 0.15 + mean).clamp(0, 1)


def test_target_shift_applies_to_train_val_and_test(tmp_path):
    """data.target_shift = "contrast:5": train, val, test and subpopulation images are the shifted images (uint8 by
    truncation, as CIFAR-10-C's files), labels unchanged, the clean val/test kept; cached, and the same per seed."""
    cfg, data = _setup(tmp_path)
    d = dataclasses.replace(cfg.data, target_shift=["contrast:5"])
    out = target.target_domain(d, data, 0, tmp_path / "cache")
    for split in ("train", "val", "test"):
        x, y = data[split]
        assert out[split][0].dtype == torch.uint8  # at rest (issue 26)
        assert torch.allclose(datamod.pixels(out[split][0]), torch.floor(_contrast5(x) * 255) / 255, atol=1.5 / 255)
        assert torch.equal(out[split][1], y)
    assert torch.equal(out["clean_test"][0], data["test"][0]) and torch.equal(out["clean_val"][0], data["val"][0])
    assert torch.equal(out["source_train"][0], data["source_train"][0])  # pretraining data is not the target's
    again = target.target_domain(d, data, 0, tmp_path / "cache")
    assert [p.name.startswith("target-") for p in (tmp_path / "cache").glob("*.safetensors")] == [True]
    assert all(torch.equal(out[s][0], again[s][0]) for s in ("train", "val", "test")) and out["key"] != data["key"]
    noise = dataclasses.replace(cfg.data, target_shift=["gaussian_noise:3"])
    a, b, c = (target.target_domain(noise, data, seed, None)["test"][0] for seed in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert target.target_domain(cfg.data, data, 0, None) is data  # no target shift: nothing changes
    # digits held out of fine-tuning (the subpopulation set) are in the target domain too
    par = dataclasses.replace(d, task="parity", holdout_classes=[9])
    pdata = datamod.load(par, cfg.study.seed)
    pout = target.target_domain(par, pdata, 0, None)
    assert len(pdata["subpop"][1]) > 0 and torch.equal(pout["subpop"][1], pdata["subpop"][1])
    assert torch.allclose(datamod.pixels(pout["subpop"][0]), torch.floor(_contrast5(pdata["subpop"][0]) * 255) / 255, atol=1.5 / 255)


def test_target_shift_mixture_deals_images_between_shifts(tmp_path):
    """A list of two target shifts: every test image is one of the two shifted versions, about half each."""
    cfg, data = _setup(tmp_path)
    d = dataclasses.replace(cfg.data, target_shift=["contrast:5", "brightness:5"])
    out = datamod.pixels(target.target_domain(d, data, 0, None)["test"][0])
    x = data["test"][0]
    brightened = x * ((x.amax(1, keepdim=True) + 0.3).clamp(max=1) / x.amax(1, keepdim=True).clamp(min=1e-12))
    is_c = ((out - torch.floor(_contrast5(x) * 255) / 255).abs() < 1.5 / 255).flatten(1).all(1)
    is_b = ((out - torch.floor(brightened.clamp(0, 1) * 255) / 255).abs() < 1.5 / 255).flatten(1).all(1)
    assert (is_c | is_b).all() and abs(int(is_c.sum()) - len(x) / 2) <= 1


def test_target_shift_cannot_also_be_a_test_shift(tmp_path):
    """The refusal names data.target_shift (exit 2 at the CLI); malformed entries and unknown names too."""
    from harness import launch

    with pytest.raises(config.ConfigError, match="cannot also be a test shift") as err:
        config.load(None, ['data.target_shift="gaussian_noise:5"', 'shifts.test=["gaussian_noise", "fog"]'])
    assert err.value.key == "data.target_shift"
    for bad in ('"gaussian_noise"', '"gaussian_noise:6"', '["fog:1", "fog:2"]'):
        with pytest.raises(config.ConfigError) as err:
            config.load(None, [f"data.target_shift={bad}"])
        assert err.value.key == "data.target_shift"
    with pytest.raises(config.ConfigError, match="unknown shift 'hail'") as err:
        launch.preflight(config.load(None, ['data.target_shift="hail:2"']))
    assert err.value.key == "data.target_shift"
    assert config.load(None, ['data.target_shift="snow:2"']).data.target_shift == ["snow:2"]


def test_one_parser_for_config_preflight_and_builder(monkeypatch, tmp_path):
    """config.target_shifts is the only reader of data.target_shift's text: config validation, preflight (with the
    registry) and the builder all go through it, so a change of its syntax is one edit."""
    from harness import launch, shifts

    _, data = _setup(tmp_path)
    calls = []
    real = config.target_shifts
    spy = lambda d, known=None: calls.append(known) or real(d, known)  # noqa: E731
    monkeypatch.setattr(config, "target_shifts", spy)  # what preflight and the builder call
    monkeypatch.setattr(config.checks, "target_shifts", spy)  # the same function, where validation calls it
    cfg = config.load(None, ['data.target_shift=["brightness:2", "snow:5"]'])
    assert calls == [None]  # validation: once
    launch.preflight(cfg)
    assert calls[1:] == [shifts.SHIFTS]  # preflight: once, with the registry
    out = target.target_domain(cfg.data, data, 0, None)
    assert calls[2:] == [None] and out["target_shift"] == ["brightness:2", "snow:5"]  # the builder: once
    assert real(cfg.data) == [("brightness", 2), ("snow", 5)]


def test_the_report_names_the_target_domain():
    """The study page's provenance and report.json name the target domain from the parent's harness.target_domain tag:
    the shifts of a target domain, the clean target task, or '-' for a study that did not log it."""
    from harness import numbers
    from harness.report import study_page

    def page_row(tags: dict) -> tuple[str | None, str]:
        parent = {"run_id": "p", "status": "FINISHED", "start_time": 0, "end_time": 1000, "tags": tags, "params": {},
                  "metrics": {}, "curves": {}, "artifacts": [], "texts": {}, "shift_examples": None}
        s = numbers.summarize({"name": "t", "tracking_uri": "sqlite:///x", "experiment_id": "1", "parent": parent,
                               "trials": [], "replicates": [], "optuna": {"available": False, "error": "none"}})
        return s["provenance"]["target_domain"], dict(study_page._provenance_fields(s))["target domain"]

    shown, words = page_row({"harness.target_domain": "gaussian_noise:5,fog:2"})
    assert shown == "gaussian_noise:5,fog:2" and words.startswith("gaussian_noise:5 + fog:2: the target train")
    assert "held-out set clean" in words
    assert page_row({"harness.target_domain": "none"}) == ("none", "the clean target task (no data.target_shift)")
    assert page_row({}) == (None, "-")


@pytest.mark.slow
def test_ood_acc_mean_is_the_held_out_severity_shifts_alone(workdir):
    """A real study with a target domain, a label-shifted set and a subpopulation set: ood_acc_mean of the trial's run
    equals, exactly, the mean over the configured test shifts of each one's severity mean, computed once from the
    shift/<name>/acc curves (MlflowClient) and once from correct.json's per-image strings; the report's paired
    comparisons (comparisons.image_accuracy) average the same number. Label shift, subpopulation and the clean set are
    logged under their own names and are not in it; clean_subset_acc is correct.json's clean images."""
    import json

    from harness import comparisons, schema, study

    from conftest import mlflow_client

    (workdir / "tiny.toml").write_text(TINY)
    sets = ['data.task="parity"', "data.holdout_classes=[9]", 'data.target_shift=["gaussian_noise:5"]',
            'shifts.test=["contrast", "impulse_noise"]']
    assert study.main(["--config", "tiny.toml", "--no-report", "--n-trials", "1",
                       *[a for s in sets for a in ("--set", s)]]) == 0
    client = mlflow_client(workdir)
    exp = client.get_experiment_by_name("tiny")
    run = next(r for r in client.search_runs([exp.experiment_id]) if schema.ID_ACC in r.data.metrics)
    m, rid = run.data.metrics, run.info.run_id
    names, severities = ["contrast", "impulse_noise"], [1, 3]

    def curve(name):
        return {h.step: h.value for h in client.get_metric_history(rid, f"shift/{name}/acc")}

    from_curves = {n: sum(curve(n)[s] for s in severities) / len(severities) for n in names}
    correct = json.loads((Path(client.download_artifacts(rid, schema.CORRECT_ARTIFACT, str(workdir)))).read_text())
    rate = lambda bits: bits.count("1") / len(bits)
    from_bits = {n: sum(rate(correct["shifts"][n][str(s)]) for s in severities) / len(severities) for n in names}
    assert set(correct["shifts"]) == set(names)  # the paired comparisons' images: the severity shifts alone
    assert m["ood_acc_mean"] == sum(from_curves.values()) / 2 == sum(from_bits.values()) / 2
    assert m["ood_acc_worst"] == min(from_curves.values()) == min(from_bits.values())
    assert m["ood_acc/digital"] == from_bits["contrast"] and m["ood_acc/noise"] == from_bits["impulse_noise"]
    ood, clean = comparisons.image_accuracy([correct], names)
    assert sum(ood) / len(ood) == pytest.approx(m["ood_acc_mean"], abs=1e-12)
    assert m["clean_subset_acc"] == rate(correct["clean"]) == sum(clean) / len(clean)
    # the other sets: their own names, their own curves at step 1, never ood_acc/<their family>
    for name, key in (("label_shift", "label_shift/acc"), ("subpopulation", "subpopulation/acc"),
                      ("clean", "target/clean_acc")):
        assert m[key] == curve(name)[1]
        assert f"ood_acc/{ {'label_shift': 'label'}.get(name, name)}" not in m
    assert m["target/clean_acc"] == m["clean_subset_acc"]  # the clean set is the clean subset: the same images
    # were label shift averaged in, the mean would move: the check above can tell
    assert (sum(from_curves.values()) + m["label_shift/acc"]) / 3 != m["ood_acc_mean"]
