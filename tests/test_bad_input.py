"""Hostile input (issue 15): every case exits 2, the message names the key (and what is allowed or why), no secret is
printed, and nothing is created: no mlruns/, no sqlite file, no cache, no report."""

from __future__ import annotations

import os
import struct
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from harness import study

from conftest import created_files

SECRET = "S3cretPW"
FACTORIES = '''
import sys


def raises(num_classes):
    raise RuntimeError("boom from the factory")


def reads_stdin(num_classes):
    return input("classes? ")


def returns_junk(num_classes):
    return 42
'''


def _setup(workdir):
    """Files the cases refer to: a module of bad factories, a one-class ImageFolder, a text file and a checkpoint whose
    pickle would run code (it would create PWNED if it ran)."""
    (workdir / "badfactories.py").write_text(FACTORIES)
    for i in range(4):
        (workdir / "oneclass" / "cat").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(workdir / "oneclass" / "cat" / f"{i}.png")
    (workdir / "weights.txt").write_text("these are not weights\n" * 20)

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {workdir / 'PWNED'}",))

    torch.save({"w": Payload()}, workdir / "evil.pt")
    (workdir / "configdir").mkdir()


INPUTS = ["badfactories.py", "oneclass", "cat", "0.png", "1.png", "2.png", "3.png", "weights.txt", "evil.pt", "configdir"]
HUGE = "1" + "0" * 399  # a 400-digit number

# (arguments, the key the message names, a phrase the message must hold)
BAD = [
    (["--set", "model.name=badfactories:raises"], "model.name", "RuntimeError: boom from the factory"),
    (["--set", "model.name=sys:exit"], "model.name", "sys.exit(5)"),
    (["--set", "model.name=badfactories:reads_stdin"], "model.name", "read standard input"),
    (["--set", "model.name=badfactories:returns_junk"], "model.name", "must return (model, groups)"),
    (["--set", f"train.momentum={HUGE}"], "train.momentum", "finite number"),
    (["--set", "data.memory_budget=0"], "data.memory_budget", "(0, 1]"),  # issue 26
    (["--set", f"train.batch_size={HUGE}"], "train.batch_size", "64 bits"),
    (["--seed", "99999999999999999999"], "study.seed", "64 bits"),
    (["--seed", "4294967296"], "study.seed", "0..4294967295"),
    (["--set", "data.source=imagefolder", "--set", "data.path=oneclass", "--set", "model.weights=none"], "data.path",
     "at least 2"),
    (["--storage", "sqlite:////sys/harness/optuna.db"], "--storage", "cannot write"),
    (["--storage", "sqlite:///weights.txt/optuna.db"], "--storage", "not a folder"),
    (["--tracking-uri", "sqlite:////proc/mlflow.db"], "--tracking-uri", "cannot write"),
    (["--storage", f"mysql://harness:{SECRET}@127.0.0.1/optuna"], "--storage", "driver"),
    (["--tracking-uri", f"mysql://harness:{SECRET}@127.0.0.1/mlflow"], "--tracking-uri", "driver"),
    (["--storage", f"postgresql+nodriver://harness:{SECRET}@127.0.0.1/x"], "--storage", "SQLAlchemy"),
    (["--tracking-uri", f"ftp://harness:{SECRET}@127.0.0.1/x"], "--tracking-uri", "unsupported"),
    (["--workers", "1000"], "study.workers", "per CPU core"),
    (["--config", "configdir"], "--config", "is a folder"),
    (["--set", "train.epochs=true"], "train.epochs", "expected an integer"),
    (["--set", "model.weights=weights.txt"], "model.weights", "not a torch.save or safetensors file"),
    (["--set", "model.weights=evil.pt"], "model.weights", "GLOBAL posix.system whose module posix is blocked"),
]


@pytest.mark.parametrize("args,key,phrase", BAD, ids=[f"{k}:{' '.join(a)[-40:]}" for a, k, _ in BAD])
def test_hostile_input_exits_2_names_key_creates_nothing(workdir, capsys, monkeypatch, args, key, phrase):
    monkeypatch.syspath_prepend(str(workdir))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # importing badfactories must not leave __pycache__
    _setup(workdir)
    code = study.main(args)
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, err
    first = err.strip().splitlines()[0]
    assert first.startswith(f"error: {key}: ") and phrase in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err  # one line, not a traceback
    assert SECRET not in captured.out + err
    assert created_files(workdir, ignore=INPUTS) == []  # no mlruns/, no sqlite, no cache, no PWNED
    sys.modules.pop("badfactories", None)


# ----------------------------------------------------------------------------- issue 27: bad data, last tracebacks
# Each case runs `python -m harness.study` in-process on the tiny config and must stop in the preflight: exit 2, one
# line naming the key (and the file), at most MAX_ERR characters, no secret, no file created. launch.run is replaced
# by a failure, so code that lets a case through fails the test instead of running a study.

MAX_ERR = 1200  # ConfigError's MESSAGE_LIMIT (1000) plus the key and "error: "


def _images(folder, n=6, size=12, classes=("a", "b")):
    rng = np.random.default_rng(0)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / c / f"{i}.png")


def _png_header(path, side):
    """A PNG whose header claims side x side RGB pixels (900 MP at 30000) in 57 bytes: a decompression bomb's shape."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _truncated_jpeg(path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _tiff(path, arr):
    Image.fromarray(arr).save(path)


# name -> (what it does to the image folder imgs/ with classes a and b, 6 images each; the file the message names)
IMAGE_CASES = {
    "link loop": (lambda d: os.symlink(".", d / "a" / "self"), "self"),
    "dangling link": (lambda d: os.symlink("nowhere.png", d / "a" / "gone.png"), "gone.png"),
    "one file in two classes": (lambda d: os.symlink(d / "a" / "0.png", d / "b" / "dup.png"), "dup.png"),
    "truncated jpeg": (lambda d: _truncated_jpeg(d / "a" / "cut.jpg"), "cut.jpg"),
    "not an image": (lambda d: (d / "a" / "junk.jpg").write_bytes(os.urandom(300)), "junk.jpg"),
    "decompression bomb": (lambda d: _png_header(d / "a" / "bomb.png", 30000), "bomb.png"),
    "float image beyond [0, 1]": (lambda d: _tiff(d / "a" / "f.tiff", np.full((12, 12), 700.0, np.float32)), "f.tiff"),
    "float image with NaN": (lambda d: _tiff(d / "a" / "n.tiff", np.full((12, 12), np.nan, np.float32)), "n.tiff"),
    "int image beyond 16 bits": (lambda d: _tiff(d / "a" / "i.tiff", np.full((12, 12), 70000, np.int32)), "i.tiff"),
    "class too small to split": (lambda d: _images(d, n=1, classes=("c",)), "class 'c' has 1 image(s)"),
}


def _labels(folder, y):
    folder.mkdir(exist_ok=True)
    np.save(folder / "labels.npy", y)


def _c10c(folder, images=None, y=None):
    """A CIFAR-10-C folder for the tiny study's 5 classes: 5 severities x 10 images of 8 x 8."""
    _labels(folder, np.tile(np.arange(10) % 5, 5) if y is None else y)
    np.save(folder / "fog.npy", np.zeros((50, 8, 8, 3), np.uint8) if images is None else images)


# name -> (how the shifts.files folder c10c/ is made; the file the message names)
FILES_CASES = {
    "float images in [0, 2]": (lambda d: _c10c(d, images=np.full((50, 8, 8, 3), 2.0, np.float32)), "fog.npy"),
    "int64 images": (lambda d: _c10c(d, images=np.zeros((50, 8, 8, 3), np.int64)), "fog.npy"),
    "images without channels": (lambda d: _c10c(d, images=np.zeros((50, 8, 8), np.uint8)), "fog.npy"),
    "images of another count": (lambda d: _c10c(d, images=np.zeros((40, 8, 8, 3), np.uint8)), "fog.npy"),
    "float labels": (lambda d: _c10c(d, y=np.tile(np.arange(10) % 5, 5) + 0.7), "labels.npy"),
    "label beyond the classes": (lambda d: _c10c(d, y=np.tile(np.arange(10) % 7, 5)), "labels.npy"),
    "labels not 5 blocks": (lambda d: _c10c(d, y=np.arange(50) // 10), "labels.npy"),  # 0 x 10, 1 x 10, ...
    "pickled labels": (lambda d: _c10c(d, y=np.array([{"x": 1}] * 50, dtype=object)), "labels.npy"),
    "not a npy file": (lambda d: (_c10c(d), (d / "fog.npy").write_bytes(b"no numpy here")), "fog.npy"),
}


def _study_fails(workdir, capsys, monkeypatch, args, key, named):
    """study.main(args) on the tiny config: exit 2 in the preflight, one bounded line naming key and `named`,
    no secret and nothing new in workdir."""
    from conftest import TINY

    from harness import launch

    (workdir / "tiny.toml").write_text(TINY)
    before = set(workdir.rglob("*"))
    monkeypatch.setattr(launch, "run", lambda *a, **k: pytest.fail("the preflight let it through"))
    code = study.main(["--config", str(workdir / "tiny.toml"), "--no-report", *args])
    err = capsys.readouterr().err
    assert code == 2, err[:MAX_ERR]
    assert len(err) <= MAX_ERR and "Traceback" not in err and SECRET not in err, err[:MAX_ERR]
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"error: {key}: ") and named in err, err
    assert sorted(map(str, set(workdir.rglob("*")) - before)) == []  # no mlruns/, sqlite, cache or report


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_bad_image_folder_is_refused_naming_the_file(workdir, capsys, monkeypatch, case):
    make, named = IMAGE_CASES[case]
    _images(workdir / "imgs")
    make(workdir / "imgs")
    _study_fails(workdir, capsys, monkeypatch, ["--set", "data.source=imagefolder", "--set", "data.path=imgs",
                                                "--set", "model.weights=none"], "data.path", named)


@pytest.mark.parametrize("case", FILES_CASES)
def test_bad_shift_files_are_refused_naming_the_file(workdir, capsys, monkeypatch, case):
    make, named = FILES_CASES[case]
    make(workdir / "c10c")
    _study_fails(workdir, capsys, monkeypatch, ["--set", "shifts.files=c10c"], "shifts.files", named)


EMOJI_NAME = "\U0001F600" * 70  # 70 characters, 280 bytes of UTF-8


# (arguments, the key named, a phrase of the message): inputs that raised a traceback or went through
LAST_TRACEBACKS = [
    (["--set", 'data.target_shift="gaussian_noise:\u00b2"'], "data.target_shift", "severity 1..5"),
    (["--set", "study.sampler=" + "[" * 3000 + "]" * 3000], "study.sampler", "nested too deep"),
    # a raw "/" in the password is the password's (tests/test_redaction.py); a port that is no number is not
    (["--tracking-uri", f"http://u:ab/cd{SECRET}@127.0.0.1:5o00"], "--tracking-uri", "percent-encode"),
    (["--tracking-uri", "http://127.0.0.1:5000/\nx"], "--tracking-uri", "control character"),
    (["--study-name", EMOJI_NAME], "study.name", "280 bytes"),
    (["--study-name", ".."], "study.name", "'..'"),
    (["--study-name", "."], "study.name", "'..'"),
    (["--study-name=-rf"], "study.name", "'-'"),
    (["--study-name", "a\tb"], "study.name", "control character"),
    (["--study-name", "bad\udcffbytes"], "study.name", "UTF-8"),
    (["--set", "study.sampler=" + "x" * 1_000_000], "study.sampler", "(1000002 characters)"),
    (["--set", "study." + "k" * 100_000 + "=1"], "study." + "k" * 54 + "... (100006 characters)", "unknown key"),
    (["--set", "data.target_shift=" + "y" * 100_000], "data.target_shift", "characters)"),
]


@pytest.mark.parametrize("args,key,phrase", LAST_TRACEBACKS, ids=[f"{k[:20]}-{i}" for i, (_, k, _) in enumerate(LAST_TRACEBACKS)])
def test_last_tracebacks_exit_2_naming_the_key(workdir, capsys, monkeypatch, args, key, phrase):
    _study_fails(workdir, capsys, monkeypatch, args, key, phrase)


def test_config_nested_too_deep_is_bad_input(workdir, capsys, monkeypatch):
    """A TOML array nested 3000 deep: tomllib's RecursionError becomes a message naming --config."""
    (workdir / "deep.toml").write_text("[study]\nname = " + "[" * 3000 + "]" * 3000 + "\n")
    _study_fails(workdir, capsys, monkeypatch, ["--config", "deep.toml"], "--config", "too deep")


def test_image_size_is_checked_against_memory(workdir, monkeypatch):
    """data.image_size against 80% of the memory available (4.5 GiB here), before allocating, with the numbers: the
    1797 digits are built as float32 with two more copies, 1797 x 3 x S^2 x 12 bytes: 63.2 GiB at S = 1024 and
    3.9 GiB at 256 (over 80% of 4.5 = 3.6 GiB, under 4.5) are refused; 3.0 GiB at 224 fits."""
    import types

    import psutil
    from conftest import TINY

    from harness import config, launch

    (workdir / "tiny.toml").write_text(TINY)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=4.5 * 2**30))
    for size in (1024, 256):
        need = 1797 * 3 * size**2 * 12 / 2**30
        with pytest.raises(config.ConfigError) as err:
            launch.preflight(config.load("tiny.toml", [f"data.image_size={size}"]))
        assert err.value.key == "data.image_size" and f"{need:.1f} GiB" in str(err.value), err.value
        assert "4.5 GiB available" in str(err.value) and len(str(err.value)) < MAX_ERR
    launch.preflight(config.load("tiny.toml", ["data.image_size=224"]))
    assert sorted(p.name for p in workdir.iterdir()) == ["tiny.toml"]


def test_ui_optuna_with_an_unreachable_database_is_bad_input(workdir, capsys):
    """harness.ui --optuna on a PostgreSQL that does not answer: exit 2 naming --storage, before optuna-dashboard
    replaces the process (it would print a traceback); the password is not printed."""
    from conftest import free_port

    from harness import ui

    def execv(*_):
        pytest.fail("optuna-dashboard started on a dead storage")

    url = f"postgresql://harness:{SECRET}@127.0.0.1:{free_port()}/optuna"
    assert ui.main(["--optuna", "--storage", url, "--port", str(free_port())], execv=execv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --storage: ") and "unreachable" in err and SECRET not in err, err
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize("args,key", [
    (["--out", "afile"], "--out"),
    (["--out", "afile/inside"], "--out"),
    (["--ui-url", "javascript:alert(1)"], "--ui-url"),
    (["--ui-url", "data:text/html,<script>alert(1)</script>"], "--ui-url"),
    (["--ui-url", "http:///nohost"], "--ui-url"),
    (["--ui-url", "http://127.0.0.1:5000/ onmouseover=x"], "--ui-url"),
    (["--tracking-uri", f"http://u:ab/cd{SECRET}@127.0.0.1:5o00"], "--tracking-uri"),  # port '5o00'; no password shown
])
def test_report_arguments_are_checked_first(workdir, capsys, args, key):
    """report --out naming a file (or a path below one), a --ui-url that is not http(s) and a tracking URI whose
    host:port does not parse: exit 2 naming the flag, before any store is read (the study does not even exist), no
    part of the password printed, nothing written."""
    from harness.report.__main__ import main

    (workdir / "afile").write_text("not a folder")
    assert main(["--study-name", "tiny", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {key}: ") and len(err.strip().splitlines()) == 1, err
    assert "ab/cd" not in err and SECRET not in err
    assert sorted(p.name for p in workdir.iterdir()) == ["afile"]
