"""A study's identity on resume and stores that disagree (issue 27 item 2): one tiny study (1 trial of 1 epoch) is run
once; each resume below changes one fingerprint key (or one store) and must exit 2 before training, naming the key,
with no new MLflow run and no new Optuna trial; a change --allow-changes accepts passes and is recorded."""

from __future__ import annotations

import json
import os
import shutil

import optuna
import pytest

from harness import fingerprint, schema, study

from conftest import TINY, mlflow_client

pytestmark = pytest.mark.slow

ONE = (TINY.replace("n_trials = 4", "n_trials = 1").replace("epochs = 3", "epochs = 1")
       .replace("[pretrain]\nepochs = 2", "[pretrain]\nepochs = 1"))


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A folder holding a finished one-trial study "tiny" (its stores under mlruns/)."""
    root = tmp_path_factory.mktemp("fingerprint")
    (root / "tiny.toml").write_text(ONE)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert study.main(["--config", "tiny.toml", "--no-report"]) == 0
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def copy(done, tmp_path, monkeypatch):
    """A private copy of the finished study (a test may break its stores), as the working directory."""
    dst = tmp_path / "s"
    shutil.copytree(done, dst)
    monkeypatch.chdir(dst)
    return dst


def _counts(root) -> tuple[int, int]:
    """(MLflow runs of the experiment, Optuna trials of the study), read from the files."""
    client = mlflow_client(root)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{root / 'mlruns' / 'optuna.db'}").trials
    return len(runs), len(trials)


# one change of each kind of fingerprint key: objective (and its directions), model and weights, data and its
# content, epochs and schedule, search space, shift suite, target domain, evaluation sizes
CHANGES = {
    "study.objective": "multi", "model.name": '"resnet20"', "model.weights": '"none"', "train.epochs": "2",
    "train.schedule": '"constant"', "search.lr": "[0.01, 0.1]", "search.freeze_layers": "[0, 2]",
    "shifts.test": '["gaussian_noise"]', "shifts.selection": '["saturate"]', "data.target_shift": '"speckle_noise:2"',
    "data.labels_per_class": "10", "shifts.eval_images": "50", "study.seed": "1", "pretrain.epochs": "2",
}


@pytest.mark.parametrize("key", list(CHANGES))
def test_a_resume_with_another_fingerprint_exits_2_naming_the_key(key, done, monkeypatch, capsys):
    monkeypatch.chdir(done)
    before = _counts(done)
    assert study.main(["--config", "tiny.toml", "--no-report", "--set", f"{key}={CHANGES[key]}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and key in err.splitlines()[0] and "--study-name" in err, err
    assert len(err.strip().splitlines()) == 1
    assert _counts(done) == before


def test_the_fingerprint_is_recorded_and_every_key_is_checked(done):
    """The parent's tag holds every key of fingerprint.KEYS with the config's value (an independent read)."""
    parent = mlflow_client(done).search_runs(
        [mlflow_client(done).get_experiment_by_name("tiny").experiment_id],
        f"tags.`{schema.TAG_ROLE}` = '{schema.ROLE_STUDY}'")[0]
    recorded = json.loads(parent.data.tags[schema.TAG_FINGERPRINT])
    assert set(recorded) == set(fingerprint.KEYS)
    assert recorded["train.epochs"] == 1 and recorded["search.lr"] == [1e-3, 0.1]
    assert recorded["study.directions"] == ["maximize"] and recorded["shifts.test"] == ["gaussian_noise", "contrast"]
    rdb = optuna.storages.RDBStorage(f"sqlite:///{done / 'mlruns' / 'optuna.db'}")
    attrs = rdb.get_study_system_attrs(rdb.get_study_id_from_name("tiny"))
    assert attrs[schema.ATTR_TRACKING_URI] == f"sqlite:///{(done / 'mlruns' / 'mlflow.db').resolve()}"
    assert attrs[schema.ATTR_PARENT_RUN] == parent.info.run_id


def test_an_allowed_wider_range_passes_and_is_recorded(copy, capsys):
    before = _counts(copy)
    argv = ["--config", "tiny.toml", "--no-report", "--set", "search.lr=[1e-4, 0.2]"]
    assert study.main(argv) == 2 and "--allow-changes search.lr" in capsys.readouterr().err
    assert study.main(argv + ["--allow-changes", "search.lr"]) == 0
    client = mlflow_client(copy)
    parent = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                                f"tags.`{schema.TAG_ROLE}` = '{schema.ROLE_STUDY}'")[0]
    assert "search.lr: [0.001, 0.1] -> [0.0001, 0.2]" in parent.data.tags[schema.TAG_ALLOWED_CHANGES]
    assert json.loads(parent.data.tags[schema.TAG_FINGERPRINT])["search.lr"] == [1e-4, 0.2]
    assert _counts(copy) == before  # n_trials reached: nothing to add
    # narrowing is refused even when allowed; a key that can never change cannot be allowed
    narrow = ["--config", "tiny.toml", "--no-report", "--set", "search.lr=[0.001, 0.1]", "--allow-changes", "search.lr"]
    assert study.main(narrow) == 2 and "may only widen" in capsys.readouterr().err
    assert study.main(["--config", "tiny.toml", "--allow-changes", "train.epochs"]) == 2
    assert "train.epochs cannot change within a study" in capsys.readouterr().err


def test_a_deleted_mlflow_store_is_refused_before_training(copy, capsys):
    for f in (copy / "mlruns").glob("mlflow.db*"):
        f.unlink()
    assert study.main(["--config", "tiny.toml", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --tracking-uri: the Optuna study 'tiny'") and "no MLflow parent run" in err
    assert not (copy / "mlruns" / "mlflow.db").exists()


def test_a_deleted_optuna_storage_is_refused_before_training(copy, capsys):
    for f in (copy / "mlruns").glob("optuna.db*"):
        f.unlink()
    assert study.main(["--config", "tiny.toml", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --storage: the MLflow parent run of 'tiny'") and "1 trial runs" in err
    assert not (copy / "mlruns" / "optuna.db").exists()


def test_another_tracking_store_is_refused(copy, capsys):
    assert study.main(["--config", "tiny.toml", "--no-report", "--tracking-uri", f"sqlite:///{copy / 'other.db'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --tracking-uri: the Optuna study 'tiny'") and "it was tracked in sqlite:///" in err
    assert not (copy / "other.db").exists()


def test_the_same_study_in_two_tracking_stores_is_refused(copy, capsys):
    """Another store holding a parent run of the same name (made here directly): not the study's parent."""
    from mlflow.tracking import MlflowClient

    other = f"sqlite:///{copy / 'other.db'}"
    client = MlflowClient(other)
    client.create_run(client.create_experiment("tiny"), tags={schema.TAG_ROLE: schema.ROLE_STUDY})
    capsys.readouterr()  # MLflow's own lines on creating other.db
    assert study.main(["--config", "tiny.toml", "--no-report", "--tracking-uri", other]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --tracking-uri: the Optuna study 'tiny'") and "two tracking stores" in err
    assert len(client.search_runs([client.get_experiment_by_name("tiny").experiment_id])) == 1


def test_the_optuna_file_as_tracking_store_is_refused(copy, capsys):
    before = _counts(copy)
    assert study.main(["--config", "tiny.toml", "--tracking-uri", f"sqlite:///{copy / 'mlruns' / 'optuna.db'}"]) == 2
    assert capsys.readouterr().err.startswith("error: --tracking-uri: ") and _counts(copy) == before


def test_compare_names_every_key_old_to_new():
    """The comparison itself, on dicts: every differing key with old -> new, the allowed and the refused."""
    old = {"a": 1, "search.lr": [0.001, 0.1], "search.strategy": ["prefix"]}
    with pytest.raises(Exception) as e:
        fingerprint.compare(old, {**old, "a": 2, "search.lr": [0.0001, 0.1]}, [])
    assert str(e.value).startswith("a, search.lr: ") and "a 1 -> 2" in str(e.value)
    assert fingerprint.compare(old, {**old, "search.strategy": ["prefix", "surgical"]}, ["search.strategy"]) == \
        ['search.strategy: ["prefix"] -> ["prefix", "surgical"]']
