"""The benchmark: its bare loop does the harness's work exactly, and --quick writes the report (no timed asserts)."""

from __future__ import annotations

import pytest
import torch

from harness import bench, config, data, models, train


def test_bare_loop_does_identical_work():
    """Same model, data, batch order, lr schedule, optimizer and freezing: after an epoch with 2 groups frozen and
    one with all training, the bare PyTorch loop and harness.train end with bit-identical weights and BN stats."""
    cfg = config.load(None, ["data.labels_per_class=8", "data.image_size=16", "train.batch_size=16"])
    d = data.load(cfg.data, 0)
    _, a = bench.harness_run(cfg, d, torch.device("cpu"), 2)
    _, b = bench.bare_run(cfg, d, torch.device("cpu"), 2)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    fresh, _ = models.build(cfg.model.name, len(d["classes"]), seed=0)
    assert not torch.equal(fresh.body.conv1.weight, a.body.conv1.weight)  # it did train


@pytest.mark.slow
def test_quick_bench_writes_the_report(workdir):
    assert bench.main(["--quick", "--device", "cpu"]) == 0
    text = (workdir / "reports" / "bench.md").read_text()
    for line in ("| harness / bare throughput (median of 3 back-to-back pairs) |",
                 "| harness / bare throughput (median of 3 each) |", "| harness / bare throughput (best of 3) |",
                 "- ratio harness / bare:", "| MLflow logging / epoch time |", "| trials per minute, no pruning |",
                 "| trials per minute, median pruning |", "| shift-suite build |", "| per-trial evaluation (median) |",
                 "| peak RSS |", "- command: `python -m harness.bench --quick --device cpu`", "- device: cpu",
                 "torch 2."):
        assert line in text, line


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_data_kept_on_the_host_trains_like_resident_data():
    """Images too large for the GPU stay on the CPU, pinned, with labels on the device; train_one_epoch and
    evaluate copy each batch and give the same numbers as with device-resident data."""
    d = data.load(config.Data(labels_per_class=12), 0)
    dev = torch.device("cuda")
    host, resident = data.to_device(d, dev, budget=0.0), data.to_device(d, dev)
    assert host["train"][0].is_pinned() and host["train"][1].is_cuda and resident["train"][0].is_cuda
    out = []
    for dd in (host, resident):
        model, groups = models.build("resnet8", len(d["classes"]), seed=0)
        model = train.prepare(model, dev)
        opt = train.make_optimizer(model, "sgd", 0.05, 0.9, 0.0)
        loss, _ = train.train_one_epoch(model, groups, 1, opt, *dd["train"], 16, torch.Generator().manual_seed(0),
                                        0, 10, 0.05, "cosine", dev)
        out.append((loss, train.evaluate(model, *dd["val"], 64, dev)))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-2) and out[0][1]["acc"] == pytest.approx(out[1][1]["acc"], abs=0.05)
