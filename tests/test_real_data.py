"""Datasets in their real on-disk formats: torchvision's own files (fake trees the tests write, read offline) and,
when ../shared/data is present, a study on real CIFAR-10 JPEGs with the real ResNet-20 CIFAR-10 weights loaded into
a custom model function (skipped cleanly without ../shared, which a fresh clone does not have)."""

from __future__ import annotations

import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from harness import data, study
from harness.config import ROOT, Data

from conftest import SHARED, load_study

CIFAR_JPG = SHARED / "cifar10_jpg"
RESNET20 = SHARED / "weights" / "cifar10_resnet_akamaster" / "resnet20-12fca82f.th"


def _idx(path: Path, arr: np.ndarray) -> None:
    """An MNIST idx file: magic (0, 0, 0x08 = ubyte, ndim), big-endian int32 dims, raw bytes."""
    header = bytes([0, 0, 8, arr.ndim]) + np.array(arr.shape, dtype=">i4").tobytes()
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def _fake_mnist(root: Path, n_train=50, n_test=20):
    """torchvision's MNIST layout, <root>/MNIST/raw/*-ubyte (uncompressed), with random digits of 10 classes."""
    rng = np.random.default_rng(0)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x, y = rng.integers(0, 256, (n, 28, 28)), np.arange(n) % 10
        _idx(raw / f"{split}-images-idx3-ubyte", x)
        _idx(raw / f"{split}-labels-idx1-ubyte", y)
        out[split] = (x, y)
    return out


def test_mnist_reads_offline_from_a_local_tree(tmp_path):
    """data.source = 'mnist' reads torchvision's raw files under data.path without downloading: grayscale becomes
    3 channels, pixels are exact at the native size, the official test set is the test split."""
    written = _fake_mnist(tmp_path)
    d = data.load(Data(source="mnist", path=str(tmp_path), image_size=28, val_fraction=0.2), 0)
    assert d["classes"][0] == "0 - zero" and len(d["classes"]) == 10
    assert [len(d[s][0]) for s in ("train", "val", "test")] == [40, 10, 20]
    x, y = d["test"]
    assert x.shape == (20, 3, 28, 28) and torch.equal(x[:, 0], x[:, 2])
    assert x.dtype == torch.uint8  # held as the files' bytes (issue 26), converted per batch
    assert torch.equal(x[:, 0], torch.from_numpy(written["t10k"][0].astype(np.uint8)))
    assert y.tolist() == written["t10k"][1].tolist()
    small = data.load(Data(source="mnist", path=str(tmp_path), image_size=16, val_fraction=0.2), 0)
    assert small["train"][0].shape[1:] == (3, 16, 16) and small["train"][0].dtype == torch.uint8


def test_cifar10_reads_offline_from_python_batches(tmp_path, monkeypatch):
    """data.source = 'cifar10' reads cifar-10-batches-py/ pickles (NHWC after torchvision) into NCHW. torchvision
    checks each file's md5 against the real dataset, so the check is stubbed to 'the file exists'."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (10, 3 * 32 * 32), dtype=np.uint8)  # rows are R, G, B planes of 32x32
        batches[name] = (x, list(range(10)))
        (folder / name).write_bytes(pickle.dumps({"data": x, "labels": list(range(10))}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    d = data.load(Data(source="cifar10", path=str(tmp_path), image_size=32, val_fraction=0.2), 0)
    assert d["classes"] == names
    assert [len(d[s][0]) for s in ("train", "val", "test")] == [40, 10, 10]
    x, y = d["test"]
    expect = torch.from_numpy(batches["test_batch"][0]).view(10, 3, 32, 32)
    assert torch.equal(x, expect) and y.tolist() == list(range(10))


def test_torchvision_dataset_missing_without_download_names_the_keys(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.path: mnist not found.*data.download = true"):
        data.load(Data(source="mnist", path=str(tmp_path), image_size=28), 0)


def _cifar_subset(dest: Path, n_train: int, n_test: int) -> Path:
    """The first images of each class of the real CIFAR-10 JPEG tree, copied: same format, seconds to train."""
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in sorted(p for p in (CIFAR_JPG / split).iterdir() if p.is_dir()):
            (dest / split / cls.name).mkdir(parents=True)
            for f in sorted(cls.iterdir())[:n]:
                shutil.copy(f, dest / split / cls.name / f.name)
    return dest


# A user's own model package, written by the test: model.name = "byo_cifar.nets:resnet20" builds the CIFAR ResNet-20
# by hand from harness.models' pieces (docs/bring_your_own.md section 5), so the real checkpoint goes through the
# custom-model path, not the registry.
BYO_NETS = '''"""A custom model factory: CIFAR ResNet-20 (3 blocks a stage), grouped stem, layer1..3, head."""
import torch.nn as nn

from harness.models import CifarResNet, Normalized


def resnet20(num_classes):
    net = CifarResNet(3, num_classes)
    groups = {"stem": nn.ModuleList([net.conv1, net.bn1]), "layer1": net.layer1, "layer2": net.layer2,
              "layer3": net.layer3, "head": net.linear}
    return Normalized(net), groups
'''


@pytest.mark.slow
@pytest.mark.skipif(not (CIFAR_JPG.is_dir() and RESNET20.is_file()), reason="../shared/data is absent (optional real data)")
def test_study_on_real_cifar10_jpegs_with_real_resnet20_weights_as_a_custom_model(workdir, monkeypatch):
    """studies/imagefolder.toml end to end through harness.study.main on real CIFAR-10 JPEGs as an ImageFolder
    (train/ and test/; 40 train images a class, 20 labelled after the val split; 30 test images a class), with
    model.name = a custom 'package.module:function' and model.weights = the real akamaster ResNet-20 checkpoint
    ('module.' prefix, under 'state_dict'; its 10-class head fits, so it is kept). 2 trials (the full fine-tuning and
    linear-probe baselines) of 2 epochs. A linear probe on a 91.8% model stays far above chance (10%)."""
    (workdir / "byo_cifar").mkdir()
    (workdir / "byo_cifar" / "__init__.py").write_text("")
    (workdir / "byo_cifar" / "nets.py").write_text(BYO_NETS)
    monkeypatch.syspath_prepend(str(workdir))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(workdir), os.environ.get("PYTHONPATH", "")]))  # for workers
    root = _cifar_subset(workdir / "cifar10_small", 40, 30)
    argv = ["--config", str(ROOT / "studies" / "imagefolder.toml"), "--study-name", "real", "--n-trials", "2",
            "--device", "cpu", "--no-report",
            "--set", f"data.path={root}", "--set", "data.image_size=32", "--set", "data.labels_per_class=20",
            "--set", "model.name=byo_cifar.nets:resnet20", "--set", f"model.weights={RESNET20}",
            "--set", "train.epochs=2", "--set", "train.batch_size=64", "--set", "search.freeze_layers=[0, 4]",
            "--set", "search.unfreeze_epoch=[1, 2]", "--set", "search.lr=[1e-3, 1e-2]",
            "--set", "study.baseline_lrs=[3e-3]",  # one lr: trials 0 and 1 are full FT and the linear probe
            "--set", 'shifts.selection=["gaussian_blur"]', "--set", 'shifts.test=["gaussian_noise"]',
            "--set", "shifts.severities=[3]", "--set", "shifts.label_alpha=0", "--set", "shifts.eval_images=0"]
    try:
        assert study.main(argv) == 0
    finally:
        for name in ("byo_cifar.nets", "byo_cifar"):
            sys.modules.pop(name, None)
    trials = load_study(workdir, "real").trials
    done = {t.user_attrs["baseline"]: t for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert set(done) == {"full_ft", "linear_probe"}
    best = max(done, key=lambda n: done[n].value)
    figures = {n: {"val_acc": t.value, "id_acc": t.user_attrs["id_acc"], "ood_acc_mean": t.user_attrs["ood_acc_mean"]}
               for n, t in done.items()}
    print(f"300 real CIFAR-10 test JPEGs; best trial by val_acc: {best}; {figures}")
    assert figures["linear_probe"]["id_acc"] > 0.7, figures
    # gaussian_noise at severity 3 (sigma .08) is hard on a CIFAR ResNet (28% here), yet above chance (10%)
    assert figures[best]["ood_acc_mean"] > 0.15, figures
