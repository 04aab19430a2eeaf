"""Hostile input (issue 15): every case exits 2, the message names the key (and what is allowed or why), no secret is
printed, and nothing is created: no mlruns/, no sqlite file, no cache, no report."""

from __future__ import annotations

import os
import sys

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
