"""Data: deterministic stratified splits per seed, few-shot subsets, caching, ImageFolder trees."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from harness import data
from harness.config import Data


def test_digits_source_and_target_splits():
    """Digits 0-4 are the source task, 5-9 the target; labels are remapped to 0..4; train/val/test are disjoint
    and stratified; images are 3xHxW in [0, 1]."""
    d = data.load(Data(), seed=0)
    assert d["classes"] == ["5", "6", "7", "8", "9"] and d["source_classes"] == ["0", "1", "2", "3", "4"]
    assert "subpop" not in d  # only with data.holdout_classes
    n = {s: len(d[s][0]) for s in data.SPLITS if s in d}
    assert n["train"] + n["val"] + n["test"] == 896  # digits 5-9 in sklearn's 1797 (182+181+179+174+180)
    assert n["source_train"] + n["source_val"] == 901
    for s in n:
        x, y = d[s]
        assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32
        assert 0 <= x.min() and x.max() <= 1 and set(y.tolist()) == {0, 1, 2, 3, 4}
    flat = lambda s: {tuple(v) for v in d[s][0].flatten(1)[:, ::37].tolist()}
    assert not flat("train") & flat("test") and not flat("val") & flat("test")


def test_split_deterministic_per_seed():
    a, b, c = data.load(Data(), 0), data.load(Data(), 0), data.load(Data(), 1)
    assert torch.equal(a["train"][0], b["train"][0]) and torch.equal(a["test"][1], b["test"][1])
    assert not torch.equal(a["train"][0], c["train"][0])


def test_labels_per_class_few_shot():
    d = data.load(Data(labels_per_class=5, image_size=16), 0)
    assert d["train"][1].bincount().tolist() == [5] * 5 and d["train"][0].shape[-1] == 16


def test_cache_round_trip(tmp_path):
    """The second load reads the cached file and returns identical tensors."""
    a = data.load(Data(labels_per_class=3), 0, tmp_path)
    files = list(tmp_path.glob("data-*.safetensors"))
    assert len(files) == 1
    b = data.load(Data(labels_per_class=3), 0, tmp_path)
    assert all(torch.equal(a[s][0], b[s][0]) for s in data.SPLITS if s in a)


def _tree(root, splits, classes=("ants", "bees"), n=6, size=20):
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.jpg")


@pytest.mark.parametrize("layout", ["train_val", "single"])
def test_imagefolder_reads_a_tree(tmp_path, layout):
    """A root with train/ and val/ folders, or a single folder split by fractions: resized to image_size, the
    class names come from the folders, and every image lands in exactly one split."""
    root = tmp_path / "imgs"
    _tree(root, ["train", "val"] if layout == "train_val" else [""])
    d = data.load(Data(source="imagefolder", path=str(root), image_size=16, val_fraction=0.25, test_fraction=0.25), 0)
    assert d["classes"] == ["ants", "bees"]
    total = sum(len(d[s][0]) for s in ("train", "val", "test"))
    assert total == (24 if layout == "train_val" else 12)
    assert d["train"][0].shape[1:] == (3, 16, 16) and 0 <= d["train"][0].min() and d["train"][0].max() <= 1


def _tree_counts(root, counts, classes=("ants", "bees")):
    """Like _tree, with a different number of images per split folder, so a count says which folder a split is."""
    for split, n in counts.items():
        _tree(root, [split], classes, n=n)


def test_imagefolder_with_train_val_and_test_uses_each_folder(tmp_path):
    """train/ (7 a class), val/ (3) and test/ (4): the val split is val/ and the test split is test/, none of them
    re-split, and val/ is not left unread."""
    root = tmp_path / "imgs"
    _tree_counts(root, {"train": 7, "val": 3, "test": 4})
    d = data.load(Data(source="imagefolder", path=str(root), image_size=16), 0)
    assert d["classes"] == ["ants", "bees"]
    assert {s: d[s][1].bincount().tolist() for s in ("train", "val", "test")} == {
        "train": [7, 7], "val": [3, 3], "test": [4, 4]}


def test_imagefolder_with_train_alone_splits_it_by_fractions(tmp_path):
    """train/ and nothing beside it: 'train' is not a class; its class folders are split into train/val/test
    (8 images a class, val_fraction = test_fraction = 0.25: 4/2/2 a class)."""
    _tree_counts(tmp_path, {"train": 8})
    d = data.load(Data(source="imagefolder", path=str(tmp_path), image_size=16, val_fraction=0.25,
                       test_fraction=0.25), 0)
    assert d["classes"] == ["ants", "bees"]
    assert [d[s][1].bincount().tolist() for s in ("train", "val", "test")] == [[4, 4], [2, 2], [2, 2]]


@pytest.mark.parametrize("present", [["val"], ["val", "test"], ["test"]])
def test_imagefolder_split_folders_without_train_name_data_path(tmp_path, present):
    """val/ or test/ without train/: an error naming data.path and the folders it found, never classes 'val'/'test'."""
    _tree_counts(tmp_path, {n: 2 for n in present})
    with pytest.raises(ValueError, match=r"^data.path: .* has val/.*but no train/|^data.path: .* has test/ but no train/"):
        data.load(Data(source="imagefolder", path=str(tmp_path), image_size=16), 0)


def test_imagefolder_class_folders_must_match_across_splits(tmp_path):
    _tree(tmp_path, ["train"], ("ants", "bees"), n=2)
    _tree(tmp_path, ["test"], ("ants", "wasps"), n=2)
    with pytest.raises(ValueError, match=r"data.path: class folders differ .*wasps"):
        data.load(Data(source="imagefolder", path=str(tmp_path), image_size=16), 0)


def test_parity_task_holds_out_a_subpopulation():
    """task = parity with holdout digits 8, 9: fine-tuning sees only 5, 6, 7 (labels odd/even); the held-out
    digits form the subpopulation split with the same superclass labels."""
    cfg = Data(task="parity", holdout_classes=[8, 9])
    d = data.load(cfg, 0)
    digits, labels = data.digits()
    assert d["classes"] == ["even", "odd"]
    n_seen = int(sum((labels == c).sum() for c in (5, 6, 7)))
    assert sum(len(d[s][0]) for s in ("train", "val", "test")) == n_seen
    x, y = d["subpop"]
    assert len(x) == int((labels == 8).sum() + (labels == 9).sum())
    assert y.bincount().tolist() == [int((labels == 8).sum()), int((labels == 9).sum())]  # 8 even, 9 odd
