"""corruption_error: CE per corruption, mCE as published and the pooled variant against the tuned full-FT reference,
and which trial that is."""

from types import SimpleNamespace

import optuna
import pytest
import torch

from harness import corruption_error, schema, suite, trial


def test_corruption_errors_against_the_tuned_reference():
    """CE_c = sum_s E_s,c / sum_s E_ref_s,c and relative CE subtracts the clean errors of the same images (Hendrycks &
    Dietterich 2019, the tuned full FT baseline in AlexNet's place); the reference itself scores 1; a corruption the
    reference does not degrade gets no rce, and then no relative_mce (the published mean needs every corruption)."""
    ref = {"clean_acc": 0.8, "shift_acc": {"fog": {"1": 0.6, "3": 0.4}, "contrast": {"1": 0.8, "3": 0.8}}}
    curves = {"fog": {1: {"acc": 0.7}, 3: {"acc": 0.5}}, "contrast": {1: {"acc": 0.9}, 3: {"acc": 0.7}}}
    out = corruption_error.corruption_errors(0.9, curves, ref)
    assert out["shift/fog/ce"] == pytest.approx((0.3 + 0.5) / (0.4 + 0.6))
    assert out["shift/fog/rce"] == pytest.approx((0.2 + 0.4) / (0.2 + 0.4))
    assert out["shift/contrast/ce"] == pytest.approx((0.1 + 0.3) / (0.2 + 0.2)) and "shift/contrast/rce" not in out
    assert out["mce"] == pytest.approx(((0.8 / 1.0) + (0.4 / 0.4)) / 2) and "relative_mce" not in out
    own = {n: {int(s): {"acc": a} for s, a in v.items()} for n, v in ref["shift_acc"].items()}
    assert corruption_error.corruption_errors(0.8, own, ref)["mce"] == pytest.approx(1.0)
    assert corruption_error.corruption_errors(0.9, curves, None) == {}


def test_published_mce_is_the_mean_of_per_corruption_ratios_not_the_pooled_ratio():
    """Three benchmark corruptions whose references differ (the reference nearly perfect on fog) and rotate, which
    is geometric: mce = mean_c CE_c over fog, contrast and gaussian_noise only, relative_mce = mean_c rCE_c, each
    worked out by hand below; mce_pooled keeps the ratio of sums over the same three, and the two differ (1.52 vs
    1.18 here)."""
    ref = {"clean_acc": 0.95, "shift_acc": {"fog": {"1": 0.94, "5": 0.92}, "contrast": {"1": 0.7, "5": 0.5},
                                            "gaussian_noise": {"1": 0.8, "5": 0.6}, "rotate": {"1": 0.9, "5": 0.9}}}
    curves = {"fog": {1: {"acc": 0.85}, 5: {"acc": 0.81}}, "contrast": {1: {"acc": 0.72}, 5: {"acc": 0.5}},
              "gaussian_noise": {1: {"acc": 0.7}, 5: {"acc": 0.6}}, "rotate": {1: {"acc": 0.1}, 5: {"acc": 0.1}}}
    out = corruption_error.corruption_errors(0.9, curves, ref)
    ce = {"fog": (0.15 + 0.19) / (0.06 + 0.08), "contrast": (0.28 + 0.5) / (0.3 + 0.5),
          "gaussian_noise": (0.3 + 0.4) / (0.2 + 0.4)}
    rce = {"fog": (0.05 + 0.09) / (0.01 + 0.03), "contrast": (0.18 + 0.4) / (0.25 + 0.45),
           "gaussian_noise": (0.2 + 0.3) / (0.15 + 0.35)}
    assert out["mce"] == pytest.approx((ce["fog"] + ce["contrast"] + ce["gaussian_noise"]) / 3)
    assert out["relative_mce"] == pytest.approx((rce["fog"] + rce["contrast"] + rce["gaussian_noise"]) / 3)
    assert out["mce_pooled"] == pytest.approx((0.34 + 0.78 + 0.7) / (0.14 + 0.8 + 0.6))
    assert out["relative_mce_pooled"] == pytest.approx((0.14 + 0.58 + 0.5) / (0.04 + 0.7 + 0.5))
    assert out["mce"] == pytest.approx(1.5234, abs=1e-4) and out["mce_pooled"] == pytest.approx(1.1818, abs=1e-4)
    assert out["shift/rotate/ce"] == pytest.approx(9.0)  # logged, but in no mean
    assert "mce_files" not in out


def test_mce_over_the_15_benchmark_corruptions_and_the_files():
    """With all 15 benchmark corruptions, 2 extra ones (speckle_noise, rotate) and their shifts.files versions: mce is
    the mean of the 15 CE_c, the extras in no mean; the files' mean is mce_files, with relative CE against the clean
    error of the files' own rows (clean_files_acc) and none without it."""
    names = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
             "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression"]
    extra = ["speckle_noise", "rotate"]
    shift_acc = {n: {"1": 0.5} for n in names + extra}
    shift_acc.update({"c10c." + n: {"1": 0.4} for n in names + extra})
    ref = {"clean_acc": 0.8, "files_clean_acc": 0.9, "shift_acc": shift_acc}
    curves = {n: {1: {"acc": 0.5 + 0.01 * i}} for i, n in enumerate(names)}
    curves.update({n: {1: {"acc": 0.0}} for n in extra})
    curves.update({"c10c." + n: {1: {"acc": 0.3 + 0.02 * i}} for i, n in enumerate(names)})
    files = {"c10c." + n for n in names}
    out = corruption_error.corruption_errors(0.85, curves, ref, files_clean_acc=0.95, files=files)
    assert out["mce"] == pytest.approx(sum((0.5 - 0.01 * i) / 0.5 for i in range(15)) / 15)
    assert out["relative_mce"] == pytest.approx(sum((0.35 - 0.01 * i) / 0.3 for i in range(15)) / 15)
    assert out["mce_files"] == pytest.approx(sum((0.7 - 0.02 * i) / 0.6 for i in range(15)) / 15)
    assert out["relative_mce_files"] == pytest.approx(sum((0.65 - 0.02 * i) / 0.5 for i in range(15)) / 15)
    no_clean = corruption_error.corruption_errors(0.85, curves, ref, files=files)
    assert "relative_mce_files" not in no_clean and "shift/c10c.fog/rce" not in no_clean and "mce_files" in no_clean


def test_ce_reference_is_the_best_full_ft_once_the_sweep_is_done(tmp_path):
    """The reference is the full_ft trial with the highest val_acc_final (ties: the lower number), and none while a
    full_ft trial still waits or runs."""
    st = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="r", direction="maximize")
    for lr in (0.01, 0.1, 0.3):
        st.enqueue_trial({"lr": lr, "freeze_layers": 0}, user_attrs={"baseline": "full_ft"})
    attrs = lambda v, n: {"val_acc_final": v, "id_acc": 0.9, "clean_subset_acc": 0.85, "clean_files_acc": 0.8,
                          "mlflow_run_id": f"run{n}",
                          "shift_acc": {"fog": {"1": 0.5}}}
    for n, v in enumerate((0.8, 0.9, 0.9)):
        t = st.ask()
        assert corruption_error.ce_reference(st.get_trials()) is None  # this one runs, later ones wait
        for k, a in attrs(v, n).items():
            t.set_user_attr(k, a)
        st.tell(t, v)
    ref = corruption_error.ce_reference(st.get_trials())
    assert ref["number"] == 1 and ref["run_id"] == "run1" and ref["clean_acc"] == 0.85 and ref["files_clean_acc"] == 0.8


class RowModel(torch.nn.Module):
    """Reads an image's row r from its first pixel (r / 255) and predicts label r % 5 when r is even, else a wrong
    class: right on exactly the even rows."""

    def forward(self, x):
        r = (x[:, 0, 0, 0] * 255).round().long()
        pred = torch.where(r % 2 == 0, r % 5, (r + 1) % 5)
        return torch.nn.functional.one_hot(pred, 5).float()


def _files_ctx(tmp_path, labels_of_clean):
    """20 clean test images whose first pixel encodes their row, and a CIFAR-10-C-layout folder made from them in
    order (every severity's images encode the same rows), read with eval_images = 10."""
    import numpy as np

    per, block = 20, np.arange(20) % 5
    folder = tmp_path / "c10c"
    folder.mkdir(parents=True)
    np.save(folder / "labels.npy", np.tile(block, 5).astype(np.uint8))
    np.save(folder / "fog.npy", np.tile(np.arange(per, dtype=np.uint8)[:, None, None, None], (5, 4, 4, 3)))
    sh = SimpleNamespace(files=str(folder), eval_images=10, seed=3, severities=[1, 5])
    sets = suite.read_files(sh, 4, 5)
    x = torch.arange(per, dtype=torch.float32)[:, None, None, None].expand(per, 3, 4, 4) / 255
    ctx = SimpleNamespace(suite=SimpleNamespace(test=sets), cfg=SimpleNamespace(shifts=sh),
                          data={"test": (x.contiguous(), torch.as_tensor(labels_of_clean))})
    return ctx, sets[0]


def test_the_files_clean_error_is_taken_on_their_own_rows(tmp_path):
    """clean_files_acc is the accuracy on the clean images of the rows the files hold: here the even rows among the
    10 rows the file set's own images name (decoded from the file, not from suite.file_rows); None when the clean
    test split's labels differ from the files' (not their source)."""
    import numpy as np

    ctx, fog = _files_ctx(tmp_path, np.arange(20) % 5)
    rows = fog.images[0][:, 0, 0, 0].long()  # held as the file's uint8 bytes (issue 26): the row itself
    assert len(rows) == 10 and torch.equal(rows, fog.images[1][:, 0, 0, 0].long())
    want = (rows % 2 == 0).double().mean().item()
    got = trial.files_clean_acc(RowModel(), ctx, 8, torch.device("cpu"))
    assert got == pytest.approx(want) and 0 < want < 1
    other, _ = _files_ctx(tmp_path / "b", (np.arange(20) + 1) % 5)
    assert trial.files_clean_acc(RowModel(), other, 8, torch.device("cpu")) is None


def test_pooled_calibration_pools_each_set_at_its_highest_severity():
    """pooled_calibration pools the images of every severity set at its highest severity (5 of gaussian_noise, 3 of
    a set tested at 1 and 3) and logs schema.ECE_POOLED's metrics: n is their count, the ECE the bin loop's on them."""
    g = torch.Generator().manual_seed(0)
    conf = lambda n: torch.rand(n, generator=g, dtype=torch.float64) * 0.5 + 0.5
    curves = {"gaussian_noise": {1: {"conf": conf(30), "correct": torch.ones(30, dtype=torch.bool)},
                                 5: {"conf": conf(30), "correct": torch.arange(30) % 3 == 0}},
              "fog": {1: {"conf": conf(40), "correct": torch.ones(40, dtype=torch.bool)},
                      3: {"conf": conf(40), "correct": torch.arange(40) % 2 == 0}}}
    sets = [SimpleNamespace(name="gaussian_noise", severities=(1, 5)), SimpleNamespace(name="fog", severities=(1, 3))]
    out = trial.pooled_calibration(curves, sets)
    c = torch.cat([curves["gaussian_noise"][5]["conf"], curves["fog"][3]["conf"]]).numpy()
    h = torch.cat([curves["gaussian_noise"][5]["correct"], curves["fog"][3]["correct"]]).numpy()
    edges, want = [i / 15 for i in range(16)], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (c > lo) & (c <= hi)
        if inside.any():
            want += inside.mean() * abs(h[inside].mean() - c[inside].mean())
    assert out["ood_ece_pooled_n"] == 70 and out["ood_ece_pooled"] == pytest.approx(want, abs=1e-12)
    assert out["ood_ece_pooled"] > out["ood_ece_pooled_calibrated_q95"]  # ~0.4 overconfident
    assert set(out) == set(schema.ECE_POOLED.values()) and trial.pooled_calibration(curves, []) == {}
