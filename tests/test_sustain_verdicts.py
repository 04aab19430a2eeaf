"""Issue 24: sustainability verdicts a reviewer accepts. The policy search never evaluates on a reported image, the
deployed model's logged accuracy is what an independent evaluation of its weights gives, the control stream has no
shift and the same labelled budget, and the paired policy difference is the hand computation."""

from __future__ import annotations

import json

import pytest
import torch

from harness import context, data as datamod, models, schema, sustain_verdicts
from harness.sustain import cli, replay, streams
from conftest import SUSTAIN_TINY, mlflow_client

CPU = torch.device("cpu")


def _config(which: str, tmp_path):
    if which == "default":
        return cli.load_config(cli.parse_args([]))
    path = tmp_path / "tiny.toml"
    path.write_text(SUSTAIN_TINY.replace("seeds = [0]", "seeds = [0, 1]"))
    return cli.load_config(cli.parse_args(["--config", str(path)]))


def _run(cfg, tmp_path, monkeypatch) -> replay.SustainRun:
    """A SustainRun on cfg's data with a stand-in deployed model (these tests are about the streams)."""
    data = datamod.load(cfg.data, seed=cfg.study.seed)
    body, groups = models.build(cfg.model.name, len(data["classes"]), seed=0)
    head = models.head_prefix(body, groups)
    pre = {k: v for k, v in body.body.state_dict().items() if not k.startswith(head)}
    monkeypatch.setattr(replay, "_deploy", lambda *a, **k: {"test_acc": 0.0, "epochs": 0, "best_epoch": 0,
                                                            "val_acc": 0.0, "how": "stand-in"})
    ctx = context.Context(cfg=cfg, device=CPU, data=data, data_cpu=data, suite=None, pretrained=pre,
                          weights_key="test", n_groups=4, client=None, uri="", storage=None, exp_id="", parent_id="",
                          created=False, cache=tmp_path / "cache", info={})
    return replay.SustainRun(ctx, log=lambda *_: None)


def _streams(run, seed: int, half: str) -> list[list[dict]]:
    """The streams a run on `seed` evaluates on: search trials use the search half (run_policy: trial_number >= 0)."""
    sc = replay.seed_context(run, seed, half)
    return [sc.stream] + ([sc.control] if sc.control is not None else [])


def _rows(x: torch.Tensor) -> set[bytes]:
    return {v.contiguous().numpy().tobytes() for v in x}


@pytest.mark.parametrize("which", ["default", "tiny"])
def test_search_never_evaluates_on_a_reported_image(which, tmp_path, monkeypatch):
    """On the default (studies/sustain.toml, 3 seeds) and the tiny configuration: no evaluation image of any search
    stream (seed + 10000, every period, shifted as the model sees it) is pixel-identical to an evaluation image of any
    reported stream or control, and no labelled image of a search stream is either. Before issue 24 both drew from
    the whole test split: 125-128 of a reported period's 150 images were search images."""
    cfg = _config(which, tmp_path)
    run = _run(cfg, tmp_path, monkeypatch)
    reported = set()
    for seed in streams.seeds_of(cfg):
        for stream in _streams(run, seed, "reported"):
            for p in stream:
                reported |= _rows(p["eval_x"])
    assert reported
    for seed in streams.search_seeds(cfg):
        for stream in _streams(run, seed, "search"):
            for p in stream:
                assert _rows(p["eval_x"]).isdisjoint(reported), (which, seed, p["period"])
                assert _rows(p["x"]).isdisjoint(reported), (which, seed, p["period"])
    halves = streams.eval_halves(*run.ctx.data_cpu["test"], cfg.study.seed)
    test = run.ctx.data_cpu["test"]
    assert sorted(torch.cat(list(halves.values())).tolist()) == list(range(len(test[1])))  # a partition
    for c in test[1].unique().tolist():  # stratified: each class split within one image
        counts = [int((test[1][h] == c).sum()) for h in halves.values()]
        assert abs(counts[0] - counts[1]) <= 1, (c, counts)


def test_control_stream_has_no_shift_and_the_same_budget_and_images(tmp_path, monkeypatch):
    """The control of a severity ramp (tiny configuration): every period's recipe has shift none, severity 0 and no
    prior, and it draws the same labelled images (so the same labelled budget) and the same evaluation images as the
    drifting stream, clean: its images equal the source images those indices point to."""
    cfg = _config("tiny", tmp_path)
    run = _run(cfg, tmp_path, monkeypatch)
    sc = replay.seed_context(run, 0)
    assert any(r["severity"] > 0 for r in sc.recipes)
    for p, c in zip(sc.stream, sc.control, strict=True):
        assert (c["shift"], c["severity"], c["prior"]) == ("none", 0, None)
        assert torch.equal(p["idx"], c["idx"]) and len(c["y"]) == len(p["y"]) == cfg.stream.labelled
        assert torch.equal(p["eval_idx"], c["eval_idx"]) and torch.equal(p["eval_y"], c["eval_y"])
        x, y = run.ctx.data_cpu["train"]
        assert torch.equal(c["x"], x[sc.pool_idx][c["idx"]])
        assert torch.equal(c["eval_x"], run.ctx.data_cpu["test"][0][sc.eval_idx][c["eval_idx"]])


def test_logged_deployed_accuracy_equals_an_independent_evaluation(workdir):
    """A tiny sustain run (never and every2, seed 0, drift and control, no report): deployed.json on the parent holds,
    for the deployed model and the reachable one (whole train split), a clean test accuracy equal to evaluating the
    cached weights by hand (plain forward pass, argmax, share correct), an early stop that follows the rule (stopped at
    best_epoch + patience, or at max_epochs), and their training images. Each control run's recipes have severity 0
    and it spends the drift run's labelled budget (equal update_examples, the same evaluation images)."""
    path = workdir / "s.toml"
    path.write_text(SUSTAIN_TINY.replace('name = "sustain-tiny"', 'name = "sustain-tiny"\nreport = false')
                    .replace('policies = ["never", "every", "accuracy", "embedding"]', 'policies = ["never", "every"]'))
    assert cli.main(["--config", str(path)]) == 0
    client = mlflow_client(workdir)
    exp = client.get_experiment_by_name("sustain-tiny")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.info.run_name == "sustain-tiny")
    logged = json.loads((workdir / client.download_artifacts(parent.info.run_id, "deployed.json", str(workdir)))
                        .read_text())["0"]
    cfg = cli.load_config(cli.parse_args(["--config", str(path)]))
    data = datamod.load(cfg.data, seed=cfg.study.seed)
    x, y = data["test"]
    deploy_idx, _ = streams.split_pool(data["train"][1], 0, cfg.stream.pool_fraction)
    for what, n_train in (("deployed", len(deploy_idx)), ("reachable", len(data["train"][1]))):
        files = list((workdir / "mlruns" / "cache").glob(f"sustain-{what}-*.safetensors"))
        assert len(files) == 1, what
        from safetensors.torch import load_file

        model, _ = models.build(cfg.model.name, len(data["classes"]), seed=0)
        model.load_state_dict(load_file(str(files[0])))
        model.eval()
        with torch.no_grad():
            hand = int((model(x).argmax(1) == y).sum()) / len(y)
        rec = logged[what]
        assert rec["test_acc"] == pytest.approx(hand, abs=1e-9), what
        assert rec["train_images"] == n_train
        assert rec["epochs"] == min(cfg.stream.init_epochs, rec["best_epoch"] + cfg.stream.init_patience)
    assert logged["gap"] == pytest.approx(logged["reachable"]["test_acc"] - logged["deployed"]["test_acc"])

    children = {r.info.run_name: r for r in runs if r.info.run_name != "sustain-tiny"}
    assert set(children) == {"policy-never-seed0", "policy-never-seed0-control", "policy-every2-seed0",
                             "policy-every2-seed0-control"}

    def matrix(name):
        rid = children[name].info.run_id
        return json.loads((workdir / client.download_artifacts(rid, schema.MATRIX_ARTIFACT, str(workdir))).read_text())

    for lab in ("never", "every2"):
        d, c = matrix(f"policy-{lab}-seed0"), matrix(f"policy-{lab}-seed0-control")
        assert children[f"policy-{lab}-seed0-control"].data.tags[schema.TAG_STREAM_VARIANT] == schema.STREAM_CONTROL
        assert all((p["shift"], p["severity"], p["prior"]) == ("none", 0, None) for p in c["periods"])
        assert any(p["severity"] > 0 for p in d["periods"])
        assert c["eval_idx"] == d["eval_idx"] and c["eval_half"] == d["eval_half"] == "reported"
        assert c[schema.UPDATE_EXAMPLES] == d[schema.UPDATE_EXAMPLES]
    assert matrix("policy-every2-seed0-control")[schema.UPDATE_EXAMPLES] == 2 * 2 * cfg.stream.labelled  # (1+1) x 20, 2x


# ---------------------------------------------------------------------------------------------------- verdicts

def _group(key, policy, bits: dict, examples: float, seconds: float = 1.0, eval_idx=None):
    """A policy group as sustain_numbers makes it, with its runs' stream_correct (seed -> T x n 0/1)."""
    rows = [{"seed": s, "matrix": {"stream_correct": b,
                                   "eval_idx": eval_idx or [list(range(len(b[0])))] * len(b)}} for s, b in bits.items()]
    acc = sum(sum(map(sum, b)) / (len(b) * len(b[0])) for b in bits.values()) / len(bits)
    return {"key": key, "policy": policy, "rows": rows,
            "metrics": {schema.STREAM_ACC_MEAN: {"mean": acc}, schema.UPDATE_EXAMPLES: {"mean": examples},
                        schema.UPDATE_SECONDS: {"mean": seconds}}}


def _bits(seed: int, p: float, t: int = 4, n: int = 25) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(t, n, generator=g) < p).int().tolist()


def test_paired_policy_difference_is_the_hand_computation():
    """Three seeds, 4 periods x 25 images: the paired difference of A and B is the mean over seeds and cells of A's
    correctness minus B's (by hand, from the bits), its interval holds it, n is 3 seeds x 100 cells; drift minus control
    gain is the mean of (A - never) - (A control - never control). The verdict: A clearly better at lower cost passes,
    at higher cost is inconclusive, a clearly worse A fails; equal policies are inconclusive."""
    seeds = (0, 1, 2)
    a = {s: _bits(10 + s, 0.9) for s in seeds}
    b = {s: _bits(20 + s, 0.4) for s in seeds}
    hand = sum(a[s][t][i] - b[s][t][i] for s in seeds for t in range(4) for i in range(25)) / (3 * 100)
    d = sustain_verdicts.paired_difference([(1, _group("A", "every", a, 10)["rows"]),
                                            (-1, _group("B", "never", b, 0)["rows"])])
    assert d["diff"] == pytest.approx(hand, abs=1e-12) and d["ci"][0] < hand < d["ci"][1]
    assert (d["n_seeds"], d["n_images"], d["level"]) == (3, 100, "seeds and images")

    never, cheap_a = _group("never", "never", b, 0), _group("A", "every", a, 0)
    out = sustain_verdicts.comparisons([never, cheap_a])
    assert [(c["a"], c["b"], c["outcome"]) for c in out] == [("A", "never", "pass")]
    assert out[0]["diff"] == pytest.approx(hand, abs=1e-12)
    assert sustain_verdicts.comparisons([never, _group("A", "every", a, 500)])[0]["outcome"] == "inconclusive"
    assert sustain_verdicts.comparisons([_group("A", "every", a, 0), _group("B", "every", b, 0)])[0]["outcome"] == "fail"
    assert sustain_verdicts.comparisons([never, _group("B2", "every", b, 0)])[0]["outcome"] == "inconclusive"

    ac, nc = {s: _bits(30 + s, 0.8) for s in seeds}, {s: _bits(40 + s, 0.7) for s in seeds}
    gain = sum((a[s][t][i] - b[s][t][i]) - (ac[s][t][i] - nc[s][t][i]) for s in seeds for t in range(4)
               for i in range(25)) / 300
    row = sustain_verdicts.drift_vs_control([never, _group("A", "every", a, 10)],
                                            {"never": _group("never", "never", nc, 0), "A": _group("A", "every", ac, 10)})
    assert len(row) == 1 and row[0]["difference"]["diff"] == pytest.approx(gain, abs=1e-12)
    ctrl = sum(ac[s][t][i] - nc[s][t][i] for s in seeds for t in range(4) for i in range(25)) / 300
    assert row[0]["control"]["diff"] == pytest.approx(ctrl, abs=1e-12)


def test_frontier_names_the_best_policy_at_each_budget():
    """Policies by update cost; at each budget the most accurate one costing no more."""
    g = [_group("never", "never", {0: [[0, 1]]}, 0, 0), _group("cheap", "every", {0: [[1, 1]]}, 10, 5),
         _group("dear", "every", {0: [[1, 0]]}, 20, 2)]
    f = sustain_verdicts.frontier(g)
    assert [(r["policy"], r["best"]) for r in f[schema.UPDATE_EXAMPLES]] == [("never", "never"), ("cheap", "cheap"),
                                                                            ("dear", "cheap")]
    assert [(r["policy"], r["best"]) for r in f[schema.UPDATE_SECONDS]] == [("never", "never"), ("dear", "never"),
                                                                           ("cheap", "cheap")]


def test_readme_sustainability_table_is_the_markdown_of_a_report_json(tmp_path, capsys):
    """`python -m harness.sustain --markdown report.json --out X.md` replaces exactly the sustain block of X.md (the
    report's own generated block and every other line stay), its paired row carries the JSON's numbers, and the
    commit, date and machine head it. Bad input exits 2 and writes nothing: a .md without the block, --out not .md,
    an unreadable JSON. The README holds one sustain block."""
    from harness.report import markdown as report_md
    from harness.sustain import markdown

    readme = (__import__("pathlib").Path(__file__).parent.parent / "README.md").read_text()
    assert readme.count(markdown.BEGIN) == 1 and readme.count(markdown.END) == 1
    assert readme.index(markdown.BEGIN) < readme.index(markdown.END)

    seeds = (0, 1, 2)
    never, a = _group("never", "never", {s: _bits(20 + s, 0.4) for s in seeds}, 0), \
        _group("A", "every", {s: _bits(10 + s, 0.9) for s in seeds}, 0)
    cmp = sustain_verdicts.comparisons([never, a])
    for g in (never, a):
        g.update(n_seeds=3, trial=None, metrics={**g["metrics"], schema.N_UPDATES: {"mean": 1.0, "sd": 0.0}})
        del g["rows"]
    summary = {"kind": "sustain", "name": "sustain-x", "policies": [never, a], "comparisons": cmp,
               "drift_vs_control": [], "frontier": sustain_verdicts.frontier([never, a]), "deployed": {},
               "provenance": {"git_sha": "abcdef1234567890", "started_ms": 1.7e12, "versions": {"platform": "Linux-x"},
                              "cpu_count": "2", "load_average": "1.00,2.00,3.00", "device": "cpu", "stream": "severity",
                              "stream_shift": "contrast", "seeds": "0,1,2", "params": {"stream.periods": "4"},
                              "counts": {"complete": 6, "failed": 0}, "span_seconds": 12.0}}
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"studies": [summary]}))
    other = f"# title\n\n{report_md.BEGIN}\nreport tables\n{report_md.END}\n\ntext\n"
    md = tmp_path / "X.md"
    md.write_text(f"intro\n{markdown.BEGIN}\nold\n{markdown.END}\n" + other)
    assert cli.main(["--markdown", str(report), "--out", str(md)]) == 0
    text = md.read_text()
    assert text.startswith("intro\n" + markdown.BEGIN) and text.endswith(markdown.END + "\n" + other)
    assert "old" not in text and "commit abcdef123456" in text and "machine 2 CPUs, Linux-x" in text
    c = cmp[0]
    row = f"| A vs never | {100 * c['diff']:+.1f} | [{100 * c['ci'][0]:+.1f}, {100 * c['ci'][1]:+.1f}] | 3 x 100 |"
    assert row in text and "| pass |" in text

    before = md.read_text()
    for args in (["--markdown", str(report), "--out", str(tmp_path / "X.txt")],
                 ["--markdown", str(tmp_path / "missing.json"), "--out", str(md)], ["--out", str(md)]):
        assert cli.main(args) == 2, args
        assert "error: --" in capsys.readouterr().err
    bare = tmp_path / "bare.md"
    bare.write_text("no block\n")
    assert cli.main(["--markdown", str(report), "--out", str(bare)]) == 2 and bare.read_text() == "no block\n"
    assert md.read_text() == before and not (tmp_path / "X.txt").exists()
