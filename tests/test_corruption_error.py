"""corruption_error: CE per corruption and pooled against the tuned full-FT reference, and which trial that is."""

import optuna
import pytest

from harness import corruption_error


def test_corruption_errors_against_the_tuned_reference():
    """CE_c = sum_s E_s,c / sum_s E_ref_s,c and relative CE subtracts the clean errors of the same images (Hendrycks &
    Dietterich 2019, the tuned full FT baseline in AlexNet's place); mce and relative_mce pool the sums over
    corruptions; the reference itself scores 1; a corruption the reference does not degrade gets no rce."""
    ref = {"clean_acc": 0.8, "shift_acc": {"fog": {"1": 0.6, "3": 0.4}, "blur": {"1": 0.8, "3": 0.8}}}
    curves = {"fog": {1: {"acc": 0.7}, 3: {"acc": 0.5}}, "blur": {1: {"acc": 0.9}, 3: {"acc": 0.7}}}
    out = corruption_error.corruption_errors(0.9, curves, ref)
    assert out["shift/fog/ce"] == pytest.approx((0.3 + 0.5) / (0.4 + 0.6))
    assert out["shift/fog/rce"] == pytest.approx((0.2 + 0.4) / (0.2 + 0.4))
    assert out["shift/blur/ce"] == pytest.approx((0.1 + 0.3) / (0.2 + 0.2)) and "shift/blur/rce" not in out
    assert out["mce"] == pytest.approx((0.3 + 0.5 + 0.1 + 0.3) / (0.4 + 0.6 + 0.2 + 0.2))
    assert out["relative_mce"] == pytest.approx((0.2 + 0.4 + 0.0 + 0.2) / (0.2 + 0.4 + 0 + 0))
    own = {n: {int(s): {"acc": a} for s, a in v.items()} for n, v in ref["shift_acc"].items()}
    assert corruption_error.corruption_errors(0.8, own, ref)["mce"] == pytest.approx(1.0)
    assert corruption_error.corruption_errors(0.9, curves, None) == {}


def test_mce_over_the_15_benchmark_corruptions_only_when_all_are_tested():
    """mce_benchmark is the CE pooled over CIFAR-10-C's 15 corruptions when all 15 are test shifts (extra shifts such
    as rotate do not enter it), and is absent when one of the 15 is missing."""
    names = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
             "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression"]
    ref = {"clean_acc": 0.8, "id_acc": 0.8, "shift_acc": {n: {"1": 0.5} for n in names + ["rotate"]}}
    curves = {n: {1: {"acc": 0.5 + 0.01 * i}} for i, n in enumerate(names)}
    curves["rotate"] = {1: {"acc": 0.0}}
    out = corruption_error.corruption_errors(0.9, curves, ref)
    assert out["mce_benchmark"] == pytest.approx(sum((0.5 - 0.01 * i) / 0.5 for i in range(15)) / 15)
    assert out["mce"] != out["mce_benchmark"]  # mce pools every test corruption, rotate included
    del curves["frost"]
    assert "mce_benchmark" not in corruption_error.corruption_errors(0.9, curves, ref)


def test_ce_reference_is_the_best_full_ft_once_the_sweep_is_done(tmp_path):
    """The reference is the full_ft trial with the highest val_acc_final (ties: the lower number), and none while a
    full_ft trial still waits or runs."""
    st = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="r", direction="maximize")
    for lr in (0.01, 0.1, 0.3):
        st.enqueue_trial({"lr": lr, "freeze_layers": 0}, user_attrs={"baseline": "full_ft"})
    attrs = lambda v, n: {"val_acc_final": v, "id_acc": 0.9, "clean_subset_acc": 0.85, "mlflow_run_id": f"run{n}",
                          "shift_acc": {"fog": {"1": 0.5}}}
    for n, v in enumerate((0.8, 0.9, 0.9)):
        t = st.ask()
        assert corruption_error.ce_reference(st.get_trials()) is None  # this one runs, later ones wait
        for k, a in attrs(v, n).items():
            t.set_user_attr(k, a)
        st.tell(t, v)
    ref = corruption_error.ce_reference(st.get_trials())
    assert ref["number"] == 1 and ref["run_id"] == "run1" and ref["clean_acc"] == 0.85


def test_real_corruption_files_take_their_clean_error_from_the_whole_test_split():
    """A shifts.files set (c10c.<name>) holds the whole test split, not the shifted sets' subset: its relative CE
    subtracts the clean test error (id_acc, the reference's id_acc), while a simulated shift uses the subset's."""
    ref = {"clean_acc": 0.9, "id_acc": 0.8, "shift_acc": {"fog": {"1": 0.6}, "c10c.fog": {"1": 0.6}}}
    curves = {"fog": {1: {"acc": 0.5}}, "c10c.fog": {1: {"acc": 0.5}}}
    out = corruption_error.corruption_errors(0.95, curves, ref, id_acc=0.7, files={"c10c.fog"})
    assert out["shift/fog/rce"] == pytest.approx((0.95 - 0.5) / (0.9 - 0.6))
    assert out["shift/c10c.fog/rce"] == pytest.approx((0.7 - 0.5) / (0.8 - 0.6))
    assert out["shift/c10c.fog/ce"] == pytest.approx(0.5 / 0.4) == out["shift/fog/ce"]
    assert out["relative_mce"] == pytest.approx((0.45 + 0.2) / (0.3 + 0.2))
