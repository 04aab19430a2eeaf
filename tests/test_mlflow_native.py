"""MLflow-native results on a real store: the selected model as a registered MLflow model (champion), datasets as run
inputs with content digests, system metrics, descriptions, the experiment kind, report <-> UI links and the UI URLs
the study prints. Values are checked against independent computations (hashlib on the tensors, the trial's own
id_acc, a model rebuilt from the weights artifact with torch alone)."""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load as st_load

from harness import champion, config, context, data as datamod, models, records, results, study, tracking
from conftest import shared_report, shared_study

pytestmark = pytest.mark.slow


def _trial_runs(client, exp_id: str) -> list:
    """The shared study's three real trials (the pruned and failed rows of test_results are written by hand)."""
    runs = client.search_runs([exp_id], "tags.`harness.role` = 'trial'", max_results=100)
    return sorted((r for r in runs if r.data.tags.get("harness.baseline")),
                  key=lambda r: int(r.data.tags["optuna.trial_number"]))


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    info = shared_study(tmp_path_factory)
    client = MlflowClient(info["uri"])
    exp = client.get_experiment_by_name("tiny")
    parent = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'study'")[0]
    return {**info, "client": client, "exp": exp, "parent": parent, "trials": _trial_runs(client, exp.experiment_id)}


@pytest.fixture(scope="module")
def ctx(shared):
    """The shared study's Context, opened from its caches (as a resume would); the parent run's status, which opening
    sets to RUNNING, is restored at the end."""
    cfg, _ = _test_images(shared["root"])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(shared["root"])
        c = context.open_context(cfg, 4, with_suite=False, log=lambda *_: None)
        try:
            yield c
        finally:
            shared["client"].update_run(shared["parent"].info.run_id, status=shared["parent"].info.status)


@contextlib.contextmanager
def tracking_uri(uri: str):
    """mlflow.pyfunc.load_model resolves models:/ URIs through the global tracking URI: set it for the call only.
    (Loading also opens MLflow's default store, ./mlflow.db of the working directory: callers run in a tmp dir.)"""
    old = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old)


def _test_images(root: str):
    cfg = config.load(Path(root) / "tiny.toml")
    return cfg, datamod.load(cfg.data, cfg.study.seed, Path(root) / "mlruns" / "cache")


def _trial_model_from_weights(client, run_id: str, cfg, n_classes: int):
    """The trial's model rebuilt with the registry and torch alone from its weights artifact."""
    model, _ = models.build(cfg.model.name, n_classes, seed=0)
    model.load_state_dict(st_load(results.artifact(client, run_id, "model/weights.safetensors")))
    return model.eval()


def test_champion_is_a_registered_pytorch_model_that_predicts_like_the_trial(shared, workdir):
    """The end of the study logged the selected trial's model (pytorch flavour, signature N x 3 x H x W float32,
    input example) on its run and registered it as version 1 of "tiny" with the alias champion and the study,
    trial and metrics as tags. Loaded through models:/tiny@champion it gives the same logits as the trial's weights
    and its accuracy on the test images equals the id_acc the trial logged while it ran."""
    client, parent = shared["client"], shared["parent"]
    best_run = parent.data.tags["harness.best_run_id"]
    assert parent.data.tags["harness.registered_model"] == "tiny" and parent.data.tags["harness.model_version"] == "1"
    mv = client.get_model_version_by_alias("tiny", "champion")
    assert str(mv.version) == "1" and mv.run_id == best_run
    run = client.get_run(best_run)
    assert mv.tags["harness.trial"] == run.data.tags["optuna.trial_number"] and mv.tags["harness.study"] == "tiny"
    assert mv.tags["harness.run_name"] == run.info.run_name
    assert float(mv.tags["id_acc"]) == pytest.approx(run.data.metrics["id_acc"], abs=1e-6)
    (output,) = run.outputs.model_outputs  # the run lists the logged model as its output; the version points at it
    logged = client.get_logged_model(output.model_id)
    assert logged.source_run_id == best_run and logged.experiment_id == shared["exp"].experiment_id
    assert mv.source == logged.artifact_location and logged.status.name == "READY"

    cfg, data = _test_images(shared["root"])
    x, y = data["test"]
    with tracking_uri(shared["uri"]):  # predict too: it touches the fluent store (a ./mlflow.db in the cwd otherwise)
        pyfunc = mlflow.pyfunc.load_model("models:/tiny@champion")
        logits = torch.as_tensor(pyfunc.predict(x.numpy()))
    inputs = pyfunc.metadata.get_input_schema().inputs[0]
    assert inputs.type.name == "float32" and list(inputs.shape) == [-1, *x.shape[1:]]
    assert logits.shape == (len(y), len(data["classes"]))
    assert (logits.argmax(1) == y).double().mean().item() == pytest.approx(run.data.metrics["id_acc"], abs=1e-9)
    with torch.no_grad():
        want = _trial_model_from_weights(client, best_run, cfg, len(data["classes"]))(x)
    assert torch.equal(logits.argmax(1), want.argmax(1)) and torch.allclose(logits, want, atol=1e-4)


def test_champion_moves_when_another_trial_is_selected_and_stays_on_resume(shared, ctx):
    """publish again with the same selection: no new version. Select another trial (its run given the weights the
    study saved, the parent's best tags pointed at it): version 2, tagged with that trial, carries the alias; selecting
    the first again moves it back (version 3)."""
    client, parent = shared["client"], shared["parent"]
    same = champion.publish(ctx, log=lambda *_: None)
    assert same["version"] == "1" and not same["new"]
    assert len(client.search_model_versions("name = 'tiny'")) == 1
    best = parent.data.tags["harness.best_run_id"]
    other = next(r for r in shared["trials"] if r.info.run_id != best)
    weights = results.artifact(client, best, "model/weights.safetensors")
    tracking.log_bytes(client, other.info.run_id, weights, "model/weights.safetensors")
    try:
        tracking.set_tags(client, parent.info.run_id, {"harness.best_run_id": other.info.run_id})
        moved = champion.publish(ctx, log=lambda *_: None)
    finally:
        tracking.set_tags(client, parent.info.run_id, {"harness.best_run_id": best})
    assert moved["new"] and moved["version"] == "2"
    mv = client.get_model_version_by_alias("tiny", "champion")
    assert str(mv.version) == "2" and mv.run_id == other.info.run_id
    assert mv.tags["harness.trial"] == other.data.tags["optuna.trial_number"]
    assert client.get_model_version("tiny", "1").aliases == []
    back = champion.publish(ctx, log=lambda *_: None)
    assert back["version"] == "3" and client.get_model_version_by_alias("tiny", "champion").run_id == best
    client.delete_model_version("tiny", "2")  # the hand-made selection leaves no trace for later tests
    tracking.set_tags(client, parent.info.run_id, {"harness.model_version": "3"})


def _sha(x: torch.Tensor, y: torch.Tensor | None = None) -> str:
    h = hashlib.sha256((x if x.dtype == torch.uint8 else x.float()).contiguous().numpy().tobytes())  # as held
    if y is not None:
        h.update(y.long().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_trial_and_parent_runs_record_their_datasets_with_content_digests(shared):
    """Every trial run and the parent hold dataset inputs for train, validation and test (context, source, split)
    and for every shifted set (shift, severity, seed), the label-shift set with its target shift; each digest is
    the sha256 of the tensors, computed here independently."""
    client = shared["client"]
    cfg, data = _test_images(shared["root"])
    want = {"digits/train": _sha(*data["train"]), "digits/val": _sha(*data["val"]), "digits/test": _sha(*data["test"])}
    names_sev = {f"digits/{split}/{n}/s{s}" for split, names in (("val", ["gaussian_blur"]),
                                                                  ("test", ["gaussian_noise", "contrast"]))
                 for n in names for s in (1, 3)}
    for run in [shared["parent"], *shared["trials"]]:
        inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
        by_name = {d.dataset.name: d for d in inputs}
        assert set(by_name) == set(want) | names_sev | {"digits/test/label_shift"}, run.info.run_name
        for name, digest in want.items():
            assert by_name[name].dataset.digest == digest[:records.DIGEST_CHARS]
            assert "load_digits" in by_name[name].dataset.source
        ctx_tags = {name: {t.key: t.value for t in d.tags} for name, d in by_name.items()}
        assert ctx_tags["digits/train"]["mlflow.data.context"] == "training"
        assert ctx_tags["digits/val"]["mlflow.data.context"] == "validation"
        shifted = ctx_tags["digits/test/contrast/s3"]
        assert (shifted["harness.shift"], shifted["harness.severity"], shifted["harness.shift_seed"]) == \
            ("contrast", "3", str(cfg.shifts.seed))
        assert shifted["mlflow.data.context"] == "test-shift"
        assert ctx_tags["digits/val/gaussian_blur/s1"]["mlflow.data.context"] == "selection-shift"
        assert ctx_tags["digits/test/label_shift"]["harness.target_shift"] == "dirichlet(alpha=1.0)"


def test_a_changed_image_changes_the_digest_on_the_run(tmp_path):
    """An imagefolder dataset: the dataset inputs logged on a run before and after one test image changes differ in
    the test split's digest only."""
    from PIL import Image

    root = tmp_path / "imgs"
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(4):
                arr = (torch.rand(12, 12, 3, generator=gen) * 255).to(torch.uint8).numpy()
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    cfg = config.load(None, ["data.source=imagefolder", f"data.path={root}", "data.image_size=8",
                             "data.labels_per_class=0", "model.weights=none"])
    client = tracking.store.connect(f"sqlite:///{tmp_path / 'm.db'}")
    exp = client.create_experiment("digests")
    digests = []
    for step in range(2):
        if step:
            path = root / "test" / "b" / "2.png"
            img = Image.open(path).convert("RGB")
            img.putpixel((5, 5), (0, 0, 0) if img.getpixel((5, 5)) != (0, 0, 0) else (255, 255, 255))
            img.save(path)
            time.sleep(0.01)
        data = datamod.load(cfg.data, 0, tmp_path / "cache")
        run = client.create_run(exp).info.run_id
        tracking.log_inputs(client, run, records.dataset_inputs(cfg, data, None))
        got = {d.dataset.name: d.dataset.digest for d in client.get_run(run).inputs.dataset_inputs}
        assert got["imagefolder/test"] == _sha(*data["test"])[:records.DIGEST_CHARS]
        assert all(client.get_run(run).inputs.dataset_inputs[0].dataset.source.find(str(root)) >= 0 for _ in [0])
        digests.append(got)
    assert digests[0]["imagefolder/test"] != digests[1]["imagefolder/test"]
    assert digests[0]["imagefolder/train"] == digests[1]["imagefolder/train"]


def test_trials_record_system_metrics(shared, tmp_path):
    """Every trial run holds system/* samples (CPU %, memory in use, process RSS) with plausible values; a sampler
    at 0.2 s on a run kept open for 1.1 s logs one sample per interval plus the final one, in order of time."""
    import psutil

    client = shared["client"]
    total = psutil.virtual_memory().total / 2**20
    for run in shared["trials"]:
        m = client.get_run(run.info.run_id).data.metrics
        assert 0 <= m["system/cpu_utilization_percentage"] <= 100
        assert 0 < m["system/system_memory_usage_megabytes"] <= total
        assert 100 < m["system/process_rss_megabytes"] < total

    c = tracking.store.connect(f"sqlite:///{tmp_path / 'sys.db'}")
    run = c.create_run(c.create_experiment("sys")).info.run_id
    sampler = tracking.start_system_metrics(c, run, interval=0.2)
    time.sleep(1.1)
    cost = tracking.stop_system_metrics(sampler)
    hist = sorted(c.get_metric_history(run, "system/cpu_utilization_percentage"), key=lambda m: m.step)
    assert 5 <= len(hist) <= 7 and [m.step for m in hist] == list(range(len(hist)))
    assert all(a.timestamp <= b.timestamp for a, b in zip(hist, hist[1:]))
    assert 0 < cost < 1.1
    assert tracking.start_system_metrics(c, run, interval=0) is None  # study.system_metrics = 0: off


def test_descriptions_experiment_kind_and_ui_urls(shared):
    """Each trial's description states its strategy in words; the parent's summarizes the study (selected trial,
    ID/OOD accuracy, the registered model, the report); the experiment is of kind finetuning."""
    client, parent = shared["client"], shared["parent"]
    assert shared["exp"].tags["mlflow.experimentKind"] == "finetuning"
    words = {"full_ft": "train everything, lr 0.01",
             "linear_probe": "logistic-regression head on the frozen body's features, C chosen on validation (baseline",
             "lp_ft": "train everything from the linear probe's head, lr 0.001"}  # a tenth of full FT's (Kumar et al.)
    for run in shared["trials"]:
        note = run.data.tags["mlflow.note.content"]
        assert note.startswith(words[run.data.tags["harness.baseline"]]), note
    best = client.get_run(parent.data.tags["harness.best_run_id"])
    note = client.get_run(parent.info.run_id).data.tags["mlflow.note.content"]
    assert f"**{best.info.run_name}**" in note and "models:/tiny@champion" in note
    assert "Report" not in note  # the shared study ran with --no-report (with a report: its artifact path or URL)
    assert f"ID accuracy {100 * best.data.metrics['id_acc']:.1f}%" in note


def test_every_report_row_names_its_run_and_links_to_the_ui(tmp_path_factory, shared):
    """The report (built by the CLI on the sqlite store: no UI known, so no links) names every trial's run name and
    run id in the leaderboard and the pruned/failed table; with --ui-url every leaderboard row links to its run."""
    info = shared_report(tmp_path_factory)
    page = Path(info["html"]).read_text(encoding="utf-8")
    client = shared["client"]
    for run in client.search_runs([shared["exp"].experiment_id], "tags.`harness.role` = 'trial'"):
        row = re.search(rf'<tr[^>]*data-run-id="{run.info.run_id}"[^>]*>(.*?)</tr>', page, re.S)
        assert row and run.info.run_id in row.group(1) and run.info.run_name in row.group(1), run.info.run_name
    assert 'class="run" href=' not in page

    from harness.report import build

    try:
        out = build(["tiny"], shared["uri"], shared["storage"], out_dir=str(tmp_path_factory.mktemp("linked")),
                    log=lambda *_: None, ui_url="http://127.0.0.1:5999/")
        linked = Path(out).read_text(encoding="utf-8")
    finally:  # build logs its page on the shared parent run: put back the CLI's, which tests/test_report.py compares
        for name in ("index.html", "report.json"):
            tracking.log_text(shared["client"], shared["parent"].info.run_id,
                              (Path(info["html"]).parent / name).read_text(encoding="utf-8"), f"report/{name}")
    for run in shared["trials"]:
        href = (f'http://127.0.0.1:5999/#/experiments/{shared["exp"].experiment_id}/runs/{run.info.run_id}'
                f'?workflowType=machine_learning')
        assert f'<a class="run" href="{href}"' in linked


def test_the_study_prints_the_runs_view_and_the_comparison_urls(shared, ctx):
    """The end-of-study summary prints the URL of the study's runs view (a search filter on the study's tag: parent
    and trials listed flat, not the GenAI overview) and of the comparison of the selected trial with the baselines."""
    import optuna

    lines = []
    study.summary(ctx, optuna.load_study(study_name="tiny", storage=shared["storage"]), 0.0, lines.append)
    text, exp_id = "\n".join(lines), shared["exp"].experiment_id
    assert (f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs?workflowType=machine_learning&searchFilter="
            f"tags.%60optuna.study_name%60%20%3D%20%27tiny%27&orderByKey=metrics.%60val_acc_final%60&orderByAsc=false"
            in text)
    compare = re.search(r"(http://127\.0\.0\.1:5000/#/compare-runs\?runs=\S+)", text).group(1)
    best = shared["parent"].data.tags["harness.best_run_id"]
    ids = re.findall(r"%22([0-9a-f]{32})%22", compare)
    assert ids[0] == best and set(ids) == {r.info.run_id for r in shared["trials"]}


def test_sustain_updates_become_model_versions_with_production_on_the_last(workdir):
    """A tiny sustain study with stream.register_models = true (4 periods, every 2 periods: updates at 1 and 3):
    the every2 policy's registered model has 3 versions (deployed, period 1, period 3) with their period, policy,
    seed and trigger as tags and the alias production on version 3; never has the deployed model only, alias on
    version 1. The production model loads through models:/ and gives the accuracy R[T-1][T-1] on the last period."""
    import json

    from harness.sustain import cli
    from conftest import SUSTAIN_TINY

    path = workdir / "sustain.toml"
    path.write_text(SUSTAIN_TINY.replace('name = "sustain-tiny"', 'name = "sustain-tiny"\nreport = false')
                    .replace('policies = ["never", "every", "accuracy", "embedding"]', 'policies = ["never", "every"]')
                    .replace("replay = 1\n", "replay = 1\nregister_models = true\n"))
    assert cli.main(["--config", str(path)]) == 0
    uri = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(uri)
    every = sorted(client.search_model_versions("name = 'sustain-tiny-every2-seed0'"), key=lambda v: int(v.version))
    assert [int(v.version) for v in every] == [1, 2, 3]
    assert [v.tags["harness.period"] for v in every] == ["-1", "1", "3"]
    assert [v.tags["harness.trigger"] for v in every] == ["deployed"] + ["schedule (every 2 periods)"] * 2
    assert {(v.tags["harness.policy"], v.tags["harness.seed"]) for v in every} == {("every2", "0")}
    prod = client.get_model_version_by_alias("sustain-tiny-every2-seed0", "production")
    assert str(prod.version) == "3"
    never = client.search_model_versions("name = 'sustain-tiny-never-seed0'")
    assert len(never) == 1 and str(client.get_model_version_by_alias("sustain-tiny-never-seed0", "production").version) == "1"
    run = client.get_run(prod.run_id)
    assert run.info.run_name == "policy-every2-seed0" and run.data.tags["harness.model_version"] == "3"

    matrix = json.loads(results.artifact(client, prod.run_id, "accuracy_matrix.json"))
    cfg = config.load(path)
    from harness.sustain import replay as replaymod, streams

    data = datamod.load(cfg.data, cfg.study.seed, workdir / "mlruns" / "cache")
    _, pool = streams.split_pool(data["train"][1], 0, cfg.stream.pool_fraction)
    x, y = data["train"]
    half = streams.eval_halves(*data["test"], cfg.study.seed)["reported"]  # reported runs evaluate on this half
    stream = streams.make_stream({"train": (x[pool], y[pool]), "test": (data["test"][0][half], data["test"][1][half])},
                                 streams.schedule(cfg.stream, len(data["classes"]), 0), cfg.stream.labelled,
                                 cfg.stream.eval_size, 0)
    last = stream[-1]
    with tracking_uri(uri):
        pyfunc = mlflow.pyfunc.load_model("models:/sustain-tiny-every2-seed0@production")
        logits = torch.as_tensor(pyfunc.predict(last["eval_x"].numpy()))
    acc = (logits.argmax(1) == last["eval_y"]).double().mean().item()
    assert acc == pytest.approx(matrix["R"][-1][-1], abs=1e-9)
    assert replaymod.VERSION >= 2
