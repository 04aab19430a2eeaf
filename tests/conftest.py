"""Shared fixtures: a tiny study config (seconds on CPU) run in a temporary working directory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

# make test runs pytest-xdist with 2 workers: the cores are shared between them (2 cores, 2 workers: 1 thread each),
# as harness.cores shares them between a study's --workers; a plain pytest run keeps 2 threads
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"

# Small enough that a trial takes well under a second on 2 cores, big enough that learning shows:
# 12 labels per class, 16x16 images, 1 pretraining epoch, 3 fine-tuning epochs, 2 test shifts at 2 severities.
TINY = """
[study]
name = "tiny"
n_trials = 4
seed = 0
prune_warmup = 1
baseline_lrs = [0.01]  # one lr per baseline family: the 3 baselines are trials 0-2 (tests of the sweep set their own)
replicates = 1         # no seed replicates (the default is 3): tests of replicates set their own
keep_weights = 0       # no soups and no WiSE-FT curves (they add ~30% to a tiny study): test_ensembles and
wise_ft = false        # test_schema's subprocess study turn them on

[data]
source = "digits"
image_size = 16
labels_per_class = 12

[model]
name = "resnet8"
weights = "pretrain"

[pretrain]
epochs = 2

[train]
epochs = 3
batch_size = 32

[search]
lr = [1e-3, 0.1]
freeze_layers = [0, 4]
unfreeze_epoch = [1, 3]

[shifts]
selection = ["gaussian_blur"]
test = ["gaussian_noise", "contrast"]
severities = [1, 3]
label_alpha = 1.0
"""

# A tiny sustain study: TINY at 8x8 plus a 4-period stream (seconds on 2 cores).
SUSTAIN_TINY = TINY.replace('name = "tiny"', 'name = "sustain-tiny"').replace("image_size = 16", "image_size = 8") + """
[stream]
kind = "severity"
shift = "contrast"
periods = 4
labelled = 20
eval_size = 40
seeds = [0]
policies = ["never", "every", "accuracy", "embedding"]
k = 2
epochs = 1
replay = 1
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A temporary working directory: mlruns/ and reports/ are created under it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def tiny_config(workdir) -> Path:
    path = workdir / "tiny.toml"
    path.write_text(TINY)
    return path


def need_service(present: bool, what: str) -> None:
    """Skip a test whose system service (PostgreSQL, Chromium) is missing, except under .ci/run, which installs them
    and sets HARNESS_REQUIRE_SERVICES=1: there a missing service is a failure, never a silent skip."""
    if present:
        return
    if os.environ.get("HARNESS_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} is required under .ci/run (HARNESS_REQUIRE_SERVICES=1) but missing")
    pytest.skip(f"{what} is missing (.ci/run installs it)")


def created_files(root: Path, ignore=("tiny.toml",)) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name not in ignore)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_client(root: Path):
    """An MlflowClient on the tracking store a study run in `root` writes by default: root/mlruns/mlflow.db."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")


def load_study(root: Path, name: str = "tiny"):
    """The Optuna study `name` in the storage a study run in `root` writes by default: root/mlruns/optuna.db."""
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'mlruns' / 'optuna.db'}")


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny tensors (pytestmark = pytest.mark.usefixtures("one_thread")): a second OpenMP thread gains
    nothing there, and when the other core is busy its barriers cost ~100x (a zoom_blur call measured 600 ms on 2
    threads vs 7 ms on 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smooth_images(n=16, c=3, size=32, seed=0):
    """Colourful images with structure at ~4 px: bilinear upsampling of 8x8 uniform noise, so blurs change them."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, c, 8, 8, generator=g), size=size, mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def images():
    """16 smooth_images, the shift tests' input."""
    return smooth_images()


# ------------------------------------------------------------------------------------------ the shared tiny study
# One real tiny study that test_results, test_numbers, test_report, test_report_cli, test_browser and
# test_mlflow_native share (built once per pytest session: a study costs ~30 s on 2 cores, one per module would blow
# the test budget). Harness, MLflow and Optuna are imported inside the helpers: sessions that never build the study
# (test_shifts, test_metrics) do not pay for importing them (seconds).

# Reasons and tags may hold anything a user or an exception message holds; the report must show them inert.
HOSTILE = "<img src=x onerror=console.error('xss')> <script>alert(1)</script> & \"q' $x$"


def _add_trial(root, state: str, epochs: list[float], reason: str) -> str:
    """A pruned or failed trial written exactly as harness/trial.py writes one (through harness.tracking), plus
    its Optuna record. The tiny study's baselines cannot be relied on to prune a trial (the median of three
    baselines sits near chance), and a real failing trial costs a second study run (~15 s)."""
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    from harness import store, tracking

    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    client = store.connect(uri)  # the writer's client (tracking waits on its async batches)
    exp = client.get_experiment_by_name("tiny")
    parent = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'study'")[0]
    st = optuna.load_study(study_name="tiny", storage=f"sqlite:///{root / 'mlruns' / 'optuna.db'}")
    number = len(st.trials)
    params = {"lr": 1e-7 if state == "KILLED" else 1e6, "strategy": "prefix", "freeze_layers": 0, "unfreeze_epoch": 0}
    run_id = tracking.child_run(client, exp.experiment_id, parent.info.run_id, "tiny", number, params)
    for e, v in enumerate(epochs):
        tracking.log_metrics(client, run_id, {"train_loss": 2.0 - 0.1 * e, "val_acc": v, "val_loss": 1.9 - 0.1 * e,
                                              "frozen_layers": 0, "lr": 1e-7}, step=e)
    last = len(epochs) - 1
    tags = ({"harness.pruned_epoch": last, "harness.pruned_reason": reason} if state == "KILLED" else
            {"harness.fail_reason": reason, "harness.failed_epoch": last})
    tracking.end_run(client, run_id, state, tags)
    attrs = {"mlflow_run_id": run_id, ("pruned_epoch" if state == "KILLED" else "fail_reason"): last if state == "KILLED" else reason}
    st.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED if state == "KILLED" else optuna.trial.TrialState.FAIL,
        params={"lr": params["lr"], "freeze_layers": 0},
        distributions={"lr": FloatDistribution(1e-8, 1e7, log=True), "freeze_layers": IntDistribution(0, 4)},
        intermediate_values={e: v for e, v in enumerate(epochs)} if state == "KILLED" else {}, user_attrs=attrs))
    return run_id


def shared_study(tmp_path_factory) -> dict:
    """The session's tiny study: the 3 baselines run for real by harness.study.main (sqlite MLflow + Optuna), then
    one pruned and one failed trial (the failure reason carries HTML). Returns paths, URIs and run ids."""
    from harness import study

    root = tmp_path_factory.getbasetemp() / "shared-study"
    done = root / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    root.mkdir(exist_ok=True)
    (root / "tiny.toml").write_text(TINY)
    t0 = time.perf_counter()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        # 3 fresh seeds of every finalist (the search-time run is the 4th): the report's seed and two-level intervals
        assert study.main(["--config", "tiny.toml", "--no-report", "--n-trials", "3", "--set", "study.replicates=4"]) == 0
    pruned = _add_trial(root, "KILLED", [0.11, 0.12], "pruned at epoch 1: val_acc 0.1200 below the median")
    failed = _add_trial(root, "FAILED", [0.1], f"FloatingPointError: non-finite train_loss (nan) at epoch 0 {HOSTILE}")
    info = {"root": str(root), "uri": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
            "storage": f"sqlite:///{root / 'mlruns' / 'optuna.db'}", "pruned": pruned, "failed": failed,
            "seconds": time.perf_counter() - t0}
    done.write_text(json.dumps(info))
    return info


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return shared_study(tmp_path_factory)


@pytest.fixture(scope="module")
def loaded(shared):
    from harness import results

    return results.load("tiny", shared["uri"], shared["storage"])


def shared_report(tmp_path_factory) -> dict:
    """The shared study's report, built once by the CLI in a fresh interpreter from the study's folder with the
    default store paths: `python -m harness.report --study-name tiny`. Records its exit code, stdout, and whether
    torch got imported (the report must not need it)."""
    info = shared_study(tmp_path_factory)
    done = tmp_path_factory.getbasetemp() / "shared-study" / "report.json.done"
    if done.exists():
        return json.loads(done.read_text())
    code = ("import json, sys; from harness.report.__main__ import main; rc = main(['--study-name', 'tiny']); "
            "print('RESULT', json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=info["root"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    out = {**info, **result, "stdout": proc.stdout, "html": str(Path(info["root"]) / "reports" / "tiny" / "index.html")}
    done.write_text(json.dumps(out))
    return out
