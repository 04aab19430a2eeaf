"""Config: TOML into frozen dataclasses, --set overrides with type checks, and malformed input exits 2."""

from __future__ import annotations

import dataclasses

import pytest

from harness import config, study
from harness.config import ConfigError

from conftest import created_files


def test_default_config_loads_and_round_trips():
    """studies/default.toml loads; the resolved TOML logged with a study loads back to the same Config."""
    cfg = config.load()
    assert cfg.study.name == "default" and cfg.model.name == "resnet8" and cfg.data.source == "digits"
    import tomllib

    assert config.from_dict(tomllib.loads(config.to_toml(cfg))) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 3


def test_set_overrides_are_type_checked():
    """--set takes TOML values (bare strings allowed) and ints where floats are expected; wrong types name the key."""
    cfg = config.load(None, ["train.epochs=3", "model.name=resnet20", "search.lr=[1e-4, 1]", "train.momentum=0"])
    assert cfg.train.epochs == 3 and cfg.model.name == "resnet20"
    assert cfg.search.lr == [1e-4, 1.0] and isinstance(cfg.search.lr[1], float) and cfg.train.momentum == 0.0
    with pytest.raises(ConfigError) as e:
        config.load(None, ["train.epochs=three"])
    assert e.value.key == "train.epochs"


# (overrides or CLI args, the key the message must name). Each is a distinct malformed input.
BAD = [
    (["--set", "train.epochz=3"], "train.epochz"),                       # unknown key
    (["--set", "trian.epochs=3"], "trian"),                              # unknown section
    (["--set", "train.epochs=-1"], "train.epochs"),                      # negative epochs
    (["--set", "train.epochs=2.5"], "train.epochs"),                     # wrong type
    (["--set", "search.lr=[0.1, 0.001]"], "search.lr"),                  # reversed bounds
    (["--set", "search.lr=[0, 0.1]"], "search.lr"),                      # zero on a log scale
    (["--set", "search.freeze_layers=[0, 9]"], "search.freeze_layers"),  # more groups than the model has
    (["--set", "search.unfreeze_epoch=[3, 1]"], "search.unfreeze_epoch"),
    (["--set", "model.name=resnet9000"], "model.name"),                  # unknown model
    (["--set", "model.name=nosuchpkg.mod:fn"], "model.name"),            # unimportable custom model
    (["--set", "model.weights=/no/such/ckpt.pt"], "model.weights"),      # missing checkpoint path
    (["--set", "data.source=imagenette"], "data.source"),                # unknown dataset
    (["--set", "data.source=imagefolder", "--set", "data.path=/no/such/dir", "--set", "model.weights=none"], "data.path"),
    (["--set", "data.val_fraction=1.5"], "data.val_fraction"),
    (["--set", "study.sampler=grid"], "study.sampler"),
    (["--set", "study.pruner=asha"], "study.pruner"),
    (["--set", "study.objective=loss"], "study.objective"),
    (["--set", "study.objective=multi", "--set", "shifts.selection=[]"], "study.objective"),  # no OOD value
    (["--set", "train.optimizer=lion"], "train.optimizer"),
    (["--set", "shifts.test=[\"snowstorm\"]"], "shifts.test"),           # unknown shift
    (["--set", "shifts.selection=[\"gaussian_blur\"]", "--set", "shifts.test=[\"gaussian_blur\"]"], "shifts.test"),  # overlap
    (["--set", "shifts.severities=[0, 6]"], "shifts.severities"),
    (["--set", "train.epochs"], "--set"),                                # not KEY=VALUE
    (["--n-trials", "0"], "study.n_trials"),
    (["--set", "study.keep_weights=-1"], "study.keep_weights"),
    (["--set", "study.keep_weights_mb=-5"], "study.keep_weights_mb"),
    (["--storage", "redis://localhost"], "--storage"),
    (["--tracking-uri", "file:///tmp/mlruns"], "--tracking-uri"),        # MLflow 3 refuses the file store
    (["--config", "does_not_exist.toml"], "--config"),
    (["--set", "train.weight_decay=nan"], "train.weight_decay"),         # TOML nan: not a number we can use
    (["--set", "search.lr=[1e-3, inf]"], "search.lr[1]"),                # TOML inf
    (["--timeout", "nan"], "study.timeout"),
    (["--storage", "sqlite:///mlruns/mlflow.db"], "--storage"),          # Optuna in the MLflow database
]


@pytest.mark.parametrize("args,key", BAD, ids=[k + ":" + " ".join(a)[-30:] for a, k in BAD])
def test_malformed_input_exits_2_names_key_creates_nothing(workdir, capsys, args, key):
    """Each malformed config or argument: exit code 2, stderr names the key, and no file (study, MLflow
    store, cache) is created."""
    code = study.main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert key in err, err
    assert created_files(workdir) == []


def test_bad_toml_file_exits_2(workdir, capsys):
    """A config file that is not TOML, or has an unknown section, exits 2 naming --config / the section."""
    (workdir / "bad.toml").write_text("[train\nepochs = 3")
    assert study.main(["--config", "bad.toml"]) == 2
    assert "--config" in capsys.readouterr().err
    (workdir / "bad.toml").write_text("[nonsense]\nx = 1\n")
    assert study.main(["--config", "bad.toml"]) == 2
    assert "nonsense" in capsys.readouterr().err
    assert created_files(workdir, ignore=("bad.toml",)) == []


def test_non_table_section_and_non_utf8_file_exit_2(workdir, capsys):
    """`train = 3` with a --set train.x override, and a file that is not UTF-8, exit 2 naming the section / --config."""
    (workdir / "odd.toml").write_text("train = 3\n")
    assert study.main(["--config", "odd.toml", "--set", "train.epochs=2"]) == 2
    assert "train" in capsys.readouterr().err
    (workdir / "odd.toml").write_bytes(b"[study]\nname = \"\xff\xfe\"\n")
    assert study.main(["--config", "odd.toml"]) == 2
    assert "--config" in capsys.readouterr().err
    assert created_files(workdir, ignore=("odd.toml",)) == []


def test_argparse_errors_exit_2(workdir):
    """Flags argparse rejects (a non-integer --n-trials, an unknown --device) also exit 2."""
    for args in (["--n-trials", "many"], ["--device", "tpu"]):
        with pytest.raises(SystemExit) as e:
            study.main(args)
        assert e.value.code == 2
    assert created_files(workdir) == []


@pytest.mark.parametrize("sets,key", [
    (["data.task=parity", "data.holdout_classes=[3]"], "data.holdout_classes"),     # not a target digit
    (["data.task=parity", "data.holdout_classes=[5, 7, 9]"], "data.holdout_classes"),  # no odd digit left
    (["data.holdout_classes=[8]"], "data.holdout_classes"),                          # needs task = parity
    (["data.task=regression"], "data.task"),
])
def test_subpopulation_config_errors(sets, key):
    with pytest.raises(ConfigError) as e:
        config.load(None, sets)
    assert e.value.key == key


def test_choices_come_from_the_registries():
    """data.source, train.augment and stream.kind are checked against the registries that own them (data.BUILDERS,
    train.AUGMENTS, harness.sustain's STREAMS) and image sizes against models.FIXED_IMAGE_SIZE: every registered
    name loads, an unknown one is refused with all of them listed."""
    from harness import data, models, train
    from harness.sustain import streams

    for key, registry in (("train.augment", train.AUGMENTS), ("stream.kind", streams.STREAMS)):
        for name in registry:
            assert config.load(None, [f"{key}={name}"])
        with pytest.raises(ConfigError, match=", ".join(registry)) as e:
            config.load(None, [f"{key}=nope"])
        assert e.value.key == key
    with pytest.raises(ConfigError, match=", ".join(data.BUILDERS)) as e:
        config.load(None, ["data.source=nope"])
    assert e.value.key == "data.source"
    for name, size in models.FIXED_IMAGE_SIZE.items():
        assert config.load(None, [f"model.name={name}", "model.weights=none", f"data.image_size={size}"])


@pytest.mark.parametrize("sets", [
    ["data.source=imagefolder", "data.path=empty", "model.weights=none"],              # no class folder
    ["data.source=imagefolder", "data.path=noimages", "model.weights=none"],           # a class folder, no image
    ["data.source=mnist", "data.path=empty", "model.weights=none", "data.image_size=28"],  # no MNIST files, no download
])
def test_dataset_problems_exit_2_before_anything_is_created(workdir, capsys, sets):
    """A data.path that exists but holds no usable dataset is bad input too: exit 2 naming data.path, found before
    the MLflow store, the Optuna storage or a cache is created."""
    (workdir / "empty").mkdir()
    (workdir / "noimages" / "cats").mkdir(parents=True)
    (workdir / "noimages" / "cats" / "notes.txt").write_text("not an image")
    code = study.main([a for s in sets for a in ("--set", s)])
    err = capsys.readouterr().err
    assert code == 2 and "data.path" in err, err
    assert created_files(workdir, ignore=("empty", "noimages", "cats", "notes.txt")) == []
