"""Data: deterministic stratified splits per seed, few-shot subsets, caching, ImageFolder trees."""

from __future__ import annotations

import os

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
    assert d["train"][0].shape[1:] == (3, 16, 16) and d["train"][0].dtype == torch.uint8  # at rest (issue 26)


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


# ------------------------------------------------------------------ issue 27: links, 16-bit and float images, files

def _rgb_images(folder, n, seed=0, size=12):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_cache_key_follows_symlinked_class_folders(tmp_path):
    """Class folders that are links to folders elsewhere: an image added there changes the dataset key (a listing
    that does not follow links keeps the key, and a new study reuses the stale cache)."""
    for c in ("ants", "bees"):
        _rgb_images(tmp_path / "real" / c, 4)
        (tmp_path / "ds").mkdir(exist_ok=True)
        os.symlink(tmp_path / "real" / c, tmp_path / "ds" / c)
    cfg = Data(source="imagefolder", path=str(tmp_path / "ds"), image_size=12, val_fraction=0.25, test_fraction=0.25)
    key = data.cache_key(cfg, 0)
    assert data.cache_key(cfg, 0) == key
    Image.new("RGB", (12, 12)).save(tmp_path / "real" / "ants" / "new.png")
    assert data.cache_key(cfg, 0) != key
    d = data.load(cfg, 0)
    assert sum(len(d[s][1]) for s in ("train", "val", "test")) == 9  # 5 ants (4 + new) and 4 bees, all read


def test_a_file_reachable_twice_is_counted_once(tmp_path):
    """Two links to one file and one folder linked twice into a class: each image once. ants: 6 files, l1 and l2 ->
    0.png, more/ and again/ -> extra/ (3 files): 6 + 3 = 9 images; bees: 6."""
    _rgb_images(tmp_path / "ds" / "ants", 6)
    _rgb_images(tmp_path / "ds" / "bees", 6, seed=1)
    _rgb_images(tmp_path / "extra", 3, seed=2)
    ants = tmp_path / "ds" / "ants"
    os.symlink(ants / "0.png", ants / "l1.png")
    os.symlink(ants / "0.png", ants / "l2.png")
    os.symlink(tmp_path / "extra", ants / "more")
    os.symlink(tmp_path / "extra", ants / "again")
    d = data.load(Data(source="imagefolder", path=str(tmp_path / "ds"), image_size=12, val_fraction=0.25,
                       test_fraction=0.25), 0)
    y = torch.cat([d[s][1] for s in ("train", "val", "test")])
    assert y.bincount().tolist() == [9, 6]
    x = torch.cat([d[s][0] for s in ("train", "val", "test")]).flatten(1)
    assert len({tuple(v.tolist()) for v in x}) == 15  # no image twice (random images: all distinct)


def test_16_bit_and_float_images_keep_their_range(tmp_path):
    """A 16-bit PNG (PIL mode I;16) is scaled by 257 (65535 -> 255) and a float TIFF (mode F) in [0, 1] by 255,
    grey in all 3 channels; PIL's own convert("RGB") clips both at 255 (16-bit: white) or truncates (float: black)."""
    size = 12
    v16 = (np.arange(size * size).reshape(size, size) * 455).astype(np.uint16)  # 0 .. 65065
    vf = np.linspace(0, 1, size * size, dtype=np.float32).reshape(size, size)
    for c, arr, ext in (("deep", v16, "png"), ("float", vf, "tiff")):
        (tmp_path / c).mkdir()
        for i in range(5):
            Image.fromarray(arr).save(tmp_path / c / f"{i}.{ext}")
    assert Image.open(tmp_path / "deep" / "0.png").mode == "I;16" and Image.open(tmp_path / "float" / "0.tiff").mode == "F"
    d = data.load(Data(source="imagefolder", path=str(tmp_path), image_size=size, val_fraction=0.2, test_fraction=0.2), 0)
    x, y = (torch.cat([d[s][i] for s in ("train", "val", "test")]) for i in (0, 1))
    want = {0: np.rint(v16 / 257) / 255, 1: np.rint(vf.astype(np.float64) * 255) / 255}  # classes: deep, float
    for label, expected in want.items():
        got = data.pixels(x[y == label])
        assert len(got) == 5
        assert torch.allclose(got, torch.from_numpy(expected).float().expand_as(got), atol=1e-6)


def test_float_corruption_files_are_read_as_they_are(tmp_path):
    """shifts.files: a float32 corruption file in [0, 1] is read as it is (0.5 stays 0.5), a uint8 one divided by
    255 (128 -> 0.502); dividing the float file by 255 would give 0.00196."""
    from harness import suite
    from harness.config import Shifts

    folder = tmp_path / "c10c"
    folder.mkdir()
    np.save(folder / "labels.npy", np.tile(np.arange(10) % 2, 5))
    np.save(folder / "fog.npy", np.full((50, 8, 8, 3), 0.5, np.float32))
    np.save(folder / "snow.npy", np.full((50, 8, 8, 3), 128, np.uint8))
    sets = {e.name: e for e in suite.read_files(Shifts(files=str(folder), severities=[1, 5], eval_images=0), 8, 2)}
    assert torch.allclose(sets["c10c.fog"].images[1], torch.full((10, 3, 8, 8), 0.5))
    assert sets["c10c.snow"].images[0].dtype == torch.uint8  # held as the file's bytes (issue 26)
    assert torch.allclose(data.pixels(sets["c10c.snow"].images[0]), torch.full((10, 3, 8, 8), 128 / 255))
