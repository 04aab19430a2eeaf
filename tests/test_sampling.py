"""What independent processes of one study see (issue 15): the sampler, seeded per trial number, so one process
repeats itself and processes sharing a storage draw distinct parameters; the commands the summary prints, quoted for
the shell."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import optuna
import pytest

from harness import config, sampling, study

optuna.logging.set_verbosity(optuna.logging.WARNING)
LR = (1e-4, 1.0)


def _cfg(sampler="tpe"):
    return config.load(None, [f"study.sampler={sampler}", f"search.lr=[{LR[0]}, {LR[1]}]", "study.n_trials=12"])


def _trial(s: optuna.Study) -> tuple:
    """One trial as harness.trial suggests it (lr, then freeze_layers), told a value that depends on it."""
    t = s.ask()
    lr, k = t.suggest_float("lr", *LR, log=True), t.suggest_int("freeze_layers", 0, 4)
    s.tell(t, -abs(math.log10(lr) + 2) - 0.1 * k)
    return t.number, lr, k


@pytest.mark.parametrize("kind", config.SAMPLERS)
def test_one_process_draws_the_same_sequence_on_every_run(kind):
    """Past TPE's 4 startup trials too: two runs of one process on two fresh storages draw identical parameters."""
    runs = [[_trial(s) for _ in range(10)] for s in
            (optuna.create_study(sampler=sampling.sampler(_cfg(kind)), direction="maximize") for _ in range(2))]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("kind", config.SAMPLERS)
def test_independent_processes_on_one_storage_draw_distinct_parameters(kind):
    """Two samplers built alike (as two processes started with the same command would build them) alternate on one
    storage: every trial's parameters differ. Seeded per process instead, trials 0 and 1 were identical."""
    storage = optuna.storages.InMemoryStorage()
    a = optuna.create_study(storage=storage, study_name="s", sampler=sampling.sampler(_cfg(kind)), direction="maximize")
    b = optuna.load_study(storage=storage, study_name="s", sampler=sampling.sampler(_cfg(kind)))
    drawn = [_trial(s) for _ in range(5) for s in (a, b)]
    assert [n for n, _, _ in drawn] == list(range(10))
    assert len({lr for _, lr, _ in drawn}) == 10


def test_qmc_trial_n_takes_point_n_of_the_scrambled_sequence():
    """Issue 20: QMC's point index was a counter in the study's system attrs, read then written without a transaction,
    so two processes could draw the same point. Now trial n (after the first, which QMC leaves to its independent
    sampler) takes point n of the study seed's scrambled Sobol sequence, computed here with scipy: the trial number
    is unique in the storage, so no two trials of any processes share a point, and a process joining a study whose
    first trials were made elsewhere (enqueued baselines) does not start again at point 0."""
    from scipy.stats import qmc

    s = optuna.create_study(sampler=sampling.sampler(_cfg("qmc")), direction="maximize")
    for _ in range(3):  # made elsewhere: fixed params, as the enqueued baselines are
        s.enqueue_trial({"lr": 0.01, "freeze_layers": 0})
        _trial(s)
    for n in range(3, 8):
        number, lr, k = _trial(s)
        engine = qmc.Sobol(2, seed=0, scramble=True)
        engine.fast_forward(n)
        u = engine.random(1)[0]  # dimensions in the order of the first trial's params: lr, freeze_layers
        assert number == n
        assert lr == pytest.approx(math.exp(math.log(LR[0]) + u[0] * (math.log(LR[1]) - math.log(LR[0]))), rel=1e-9)
        assert k == round(-0.5 + u[1] * 5)


def test_startup_trial_draws_what_its_seed_says():
    """Independent computation: during TPE's startup, trial n's lr is the first draw of numpy's RandomState seeded
    (sha256("0:n")[:4] little-endian + 1) mod 2^32 (the startup RandomSampler's stream), uniform on the log bounds."""
    s = optuna.create_study(sampler=sampling.sampler(_cfg("tpe")), direction="maximize")
    for n in range(4):  # n_startup_trials = min(10, max(3, 12 // 3)) = 4
        number, lr, _ = _trial(s)
        seed = (int.from_bytes(hashlib.sha256(f"0:{number}".encode()).digest()[:4], "little") + 1) % 2**32
        expected = math.exp(np.random.RandomState(seed).uniform(math.log(LR[0]), math.log(LR[1])))
        assert number == n and lr == pytest.approx(expected, rel=1e-12)


# (a newline or a leading '-' is no study name: tests/test_bad_input.py)
@pytest.mark.parametrize("name", ["a;touch X", "it's \"quoted\"", "$(touch X)", "x -y *"])
def test_summary_commands_survive_a_real_shell(name, tmp_path):
    """The UI and report commands the summary prints, given to /bin/sh: each argument arrives whole (printf shows
    them NUL-separated), nothing runs (no file X appears), and the password arrives as *** only."""
    import subprocess

    cfg = config.load(None, [], **{"study.name": name, "study.storage": "postgresql://u:pw@db/optuna"})
    uri = "http://harness:S3cret@127.0.0.1:5000"
    text = study.hints(cfg, uri)
    report = text.split("rebuild the report:\n  ", 1)[1].split("\n(passwords are shown as ***)", 1)[0]
    out = subprocess.run(["sh", "-c", "printf '%s\\0' " + report], cwd=tmp_path, capture_output=True, check=True)
    assert out.stdout.decode().split("\0")[:-1] == [
        "python", "-m", "harness.report", "--study-name", name, "--tracking-uri", "http://harness:***@127.0.0.1:5000",
        "--storage", "postgresql://u:***@db/optuna"]
    assert not list(tmp_path.iterdir()) and "S3cret" not in text
