"""Weight-space ensembles (issue 23 items 4-6): WiSE-FT's interpolation, the soups' averaging and greedy rule, the
kept weights' bound, and a tiny study whose soup runs carry their ingredients and whose report has the section."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

from harness import ensembles, models, selection, soups, study
from conftest import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed: int):
    """A tiny resnet8 whose BatchNorm statistics moved (train-mode passes on seeded noise): every endpoint differs in
    weights and in running statistics."""
    m, _ = models.build("resnet8", 5, seed=seed)
    g = torch.Generator().manual_seed(seed + 10)
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.rand(8, 3, 16, 16, generator=g) * (1 + seed))
    return m.eval()


X = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(99))


def _logits(state: dict) -> torch.Tensor:
    m, _ = models.build("resnet8", 5, seed=123)
    m.load_state_dict(state)
    with torch.no_grad():
        return m.eval()(X)


def test_wise_ft_endpoints_are_exact_and_the_midpoint_is_the_interpolation():
    """alpha 0 and 1 give theta_0's and theta_ft's logits bit for bit; alpha 0.5 equals an independent interpolation
    (parameters as one vector, BatchNorm statistics module by module) and differs from both endpoints."""
    m0, m1 = _model(0), _model(1)
    s0, s1 = ensembles.cpu_state(m0), ensembles.cpu_state(m1)
    with torch.no_grad():
        l0, l1 = m0(X), m1(X)
    assert torch.equal(_logits(ensembles.interpolate(s0, s1, 0.0)), l0)
    assert torch.equal(_logits(ensembles.interpolate(s0, s1, 1.0)), l1)

    mid, _ = models.build("resnet8", 5, seed=7)
    v = (torch.nn.utils.parameters_to_vector(m0.parameters()) + torch.nn.utils.parameters_to_vector(m1.parameters())) / 2
    torch.nn.utils.vector_to_parameters(v, mid.parameters())
    for a, b, c in zip(m0.modules(), m1.modules(), mid.modules()):
        if isinstance(c, torch.nn.BatchNorm2d):
            c.running_mean.copy_((a.running_mean + b.running_mean) / 2)
            c.running_var.copy_((a.running_var + b.running_var) / 2)
    with torch.no_grad():
        want = mid.eval()(X)
    got = _logits(ensembles.interpolate(s0, s1, 0.5))
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, l0, atol=1e-3) and not torch.allclose(got, l1, atol=1e-3)


def test_average_is_the_mean_of_the_states():
    states = [ensembles.cpu_state(_model(s)) for s in range(3)]
    avg = ensembles.average(states)
    for k, v in avg.items():
        if v.is_floating_point():
            assert torch.allclose(v, torch.stack([s[k] for s in states]).mean(0), atol=1e-6)
        else:
            assert torch.equal(v, states[0][k])


def test_greedy_soup_follows_the_rule_on_a_fixture():
    """Hand-run of Wortsman et al.'s rule: order a (.90), c (.85), e (.85, tie: after c), b (.80), d (.70).
    {a} .90; + c -> .91 kept; + e -> .905 dropped; + b -> .91 (equal: kept); + d -> .95 kept."""
    cands = [("a", 0.90), ("b", 0.80), ("c", 0.85), ("d", 0.70), ("e", 0.85)]
    table = {"a": 0.90, "ac": 0.91, "ace": 0.905, "abc": 0.91, "abcd": 0.95}
    calls = []

    def score(keys):
        calls.append(list(keys))
        return table["".join(sorted(keys))]

    g = ensembles.greedy(cands, score)
    assert g["ingredients"] == ["a", "c", "b", "d"]
    assert [(k, kept) for k, _, kept in g["tried"]] == [("a", True), ("c", True), ("e", False), ("b", True),
                                                         ("d", True)]
    assert g["score"] == 0.95 and calls[2] == ["a", "c", "e"] and calls[3] == ["a", "c", "b"]


def test_soup_wins_only_with_a_paired_interval_above_zero():
    """On 200 validation images: a soup right on 20 more images than every seed of the selected configuration wins;
    right on 1 more (a higher mean, within noise) does not; nor a one-ingredient soup, however good. The bound is
    checked against an independent bootstrap (numpy: images and seeds resampled)."""
    rng = np.random.default_rng(0)
    base = (rng.random(200) < 0.8).astype(float)
    seeds = [base.tolist(), base.tolist()]
    wrong = np.flatnonzero(base == 0)
    better, barely = base.copy(), base.copy()
    better[wrong[:20]], barely[wrong[:1]] = 1, 1
    assert selection.soup_wins(seeds, better.tolist(), 2)
    assert not selection.soup_wins(seeds, barely.tolist(), 2)  # +0.5 points: the interval covers 0
    assert not selection.soup_wins(seeds, better.tolist(), 1)  # one ingredient: a trial, judged on its seeds already
    # independent: 2000 resamples of images, the soup's +20 images give a lower bound near +0.06, the +1 one at 0
    idx = rng.integers(0, 200, (2000, 200))
    lo = lambda x: np.percentile((x[idx] - base[idx]).mean(1), 2.5)  # noqa: E731
    assert lo(better) > 0.05 and lo(barely) <= 0


def test_keep_holds_the_top_k_within_the_bound(tmp_path):
    """study.keep_weights = 2: the third better trial drops the worst file; a bound below one model keeps none; the
    linear probe (it trains nothing) is never kept."""
    m = _model(0)
    cfg = types.SimpleNamespace(study=types.SimpleNamespace(keep_weights=2, keep_weights_mb=64.0))
    ctx = types.SimpleNamespace(cfg=cfg, cache=tmp_path, parent_id="p")
    full = {"strategy": "prefix", "lr": 0.1, "freeze_layers": 0, "unfreeze_epoch": 0}
    search = {}
    for n, v in [(0, 0.5), (1, 0.7), (2, 0.6)]:
        assert soups.keep(ctx, search, n, v, full, "full_ft", m)
        search[n] = v
    assert sorted(soups.kept(ctx)) == [1, 2]
    assert not soups.keep(ctx, search, 3, 0.55, full, "full_ft", m)  # not in the top 2
    assert not soups.keep(ctx, search, 4, 0.99, {"strategy": "prefix", "freeze_layers": 4}, "linear_probe", m)
    ctx.cfg.study.keep_weights_mb = 0.01  # resnet8 is ~0.3 MiB
    ctx.parent_id = "q"
    assert not soups.keep(ctx, {}, 0, 0.5, full, "full_ft", m) and soups.kept(ctx) == {}


# ------------------------------------------------------------------------------------------------ a tiny study

@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A tiny study of 4 trials (the 3 baselines and a TPE trial, no pruning: 2 random-head ingredients): WiSE-FT
    for the selected trial and the baselines, the soups of the random-head start (~40 s on 2 idle cores)."""
    root = tmp_path_factory.mktemp("ensembles")
    (root / "tiny.toml").write_text(TINY)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert study.main(["--config", "tiny.toml", "--n-trials", "4", "--no-report", "--set", 'study.pruner="none"',
                           "--set", "study.keep_weights=8", "--set", "study.wise_ft=true"]) == 0
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    return {"root": root, "uri": uri, "storage": f"sqlite:///{root / 'mlruns' / 'optuna.db'}"}


def _runs(done):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(done["uri"])
    exp = client.get_experiment_by_name("tiny")
    return client, exp, {r.info.run_id: r for r in client.search_runs([exp.experiment_id], max_results=1000)}


def test_soup_runs_carry_their_ingredients(done):
    """Two soup runs (uniform, greedy) of the random-head start: their ingredients tag names the kept random-head
    trials (uniform: all, best first; greedy: a subset starting with the best), their weights artifact is the mean
    of those trials' kept files, and they are no trials for the report's readers."""
    import optuna
    from safetensors.torch import load, load_file

    from harness import results, schema

    client, exp, runs = _runs(done)
    parent = next(r for r in runs.values() if r.data.tags.get(schema.TAG_ROLE) == schema.ROLE_STUDY)
    soup = {r.data.tags[schema.TAG_SOUP_KIND]: r for r in runs.values() if r.data.tags.get(schema.TAG_ROLE) == "soup"}
    assert set(soup) == {"uniform", "greedy"}
    st = optuna.load_study(study_name="tiny", storage=done["storage"])
    random_head = sorted(((t.values[0], -t.number, t.number) for t in st.trials
                          if t.user_attrs.get(schema.ATTR_BASELINE, "") in ("", "full_ft")), reverse=True)
    want = [n for _, _, n in random_head]
    uniform = [int(n) for n in soup["uniform"].data.tags[schema.TAG_SOUP_INGREDIENTS].split(",")]
    greedy = [int(n) for n in soup["greedy"].data.tags[schema.TAG_SOUP_INGREDIENTS].split(",")]
    assert uniform == want and greedy[0] == want[0] and set(greedy) <= set(want)
    from harness import store

    folder = store.cache_dir(done["root"]) / "kept-weights" / parent.info.run_id
    files = {n: load_file(str(folder / f"{n}.safetensors")) for n in uniform}
    weights = load(results.artifact(client, soup["uniform"].info.run_id, "model/weights.safetensors"))
    for k, v in weights.items():
        if v.is_floating_point():
            assert torch.allclose(v, torch.stack([files[n][k] for n in uniform]).mean(0), atol=1e-6), k
    assert soup["uniform"].data.tags[schema.TAG_SOUP_START] == "random_head"
    assert schema.OOD_ACC_MEAN in soup["greedy"].data.metrics
    loaded = results.load("tiny", done["uri"], done["storage"])
    assert {t["run_id"] for t in loaded["soups"]} == {r.info.run_id for r in soup.values()}
    assert not {t["run_id"] for t in loaded["trials"]} & {r.info.run_id for r in soup.values()}


def test_wise_ft_curve_endpoints_are_the_probe_and_the_trial(done):
    """ensembles/wise_ft.json: 11 alphas per configuration; alpha 0 scores the linear-probe trial's id_acc and
    alpha 1 the fine-tuned trial's own id_acc and ood_acc_mean (its run's metrics); the chosen alpha has the highest
    validation accuracy."""
    from harness import results, schema

    client, exp, runs = _runs(done)
    parent = next(r for r in runs.values() if r.data.tags.get(schema.TAG_ROLE) == schema.ROLE_STUDY)
    w = json.loads(results.artifact(client, parent.info.run_id, schema.WISE_FT_ARTIFACT))
    probe = next(r for r in runs.values() if r.data.tags.get(schema.TAG_BASELINE) == "linear_probe"
                 and r.data.tags.get(schema.TAG_ROLE) == schema.ROLE_TRIAL)
    assert w["configs"] and w["configs"][0]["role"] == "selected"
    for c in w["configs"]:
        at = {p["alpha"]: p for p in c["points"]}
        assert sorted(at) == [i / 10 for i in range(11)]
        assert at[0.0][schema.ID_ACC] == pytest.approx(probe.data.metrics[schema.ID_ACC], abs=1e-9)
        ft = runs[c["run_id"]].data.metrics
        assert at[1.0][schema.ID_ACC] == pytest.approx(ft[schema.ID_ACC], abs=1e-9)
        assert at[1.0][schema.OOD_ACC_MEAN] == pytest.approx(ft[schema.OOD_ACC_MEAN], abs=1e-9)
        assert max(p[schema.VAL_ACC] for p in c["points"]) == at[c["chosen"]][schema.VAL_ACC]


def test_report_has_the_section_and_the_champion_follows_the_rule(done):
    """report.json's ensembles block and the page's section; the markdown table; the registered champion is the
    best soup's run exactly when it beats the selected trial's validation (selection.soup_wins)."""
    from mlflow.tracking import MlflowClient

    from harness import report, schema
    from harness.report import markdown

    page = report.build(["tiny"], tracking_uri=done["uri"], storage=done["storage"], out_dir=str(done["root"] / "r"))
    data = json.loads((page.parent / "report.json").read_text())["studies"][0]
    e = data["ensembles"]
    assert len(e["soups"]) == 2 and e["wise"]["configs"] and e["seconds"] > 0 and 0 < e["share"] < 1
    assert all(x["vs_selected"]["ood"]["n_images"] > 0 for x in e["soups"])
    html = page.read_text()
    assert "Weight-space ensembles" in html and "Verdict:" in html and "WiSE-FT curves" in html
    assert "#### Weight-space ensembles: tiny" in markdown.render([data])
    client, exp, runs = _runs(done)
    parent = next(r for r in runs.values() if r.data.tags.get(schema.TAG_ROLE) == schema.ROLE_STUDY)
    best = max((x for x in e["soups"] if len(x["ingredients"]) >= 2), key=lambda x: (round(x["value"], 12),
                                                                                     x["kind"] == "greedy"))
    chosen = runs[parent.data.tags[schema.TAG_BEST_RUN_ID]]
    own = [chosen.info.run_id] + [r.info.run_id for r in runs.values() if r.info.status == "FINISHED"
                                  and r.data.tags.get(schema.TAG_ROLE) == schema.ROLE_REPLICATE
                                  and r.data.tags.get(schema.TAG_REPLICATE_OF) == chosen.data.tags.get(schema.TAG_TRIAL_NUMBER)]

    def val(rid):  # the run's per-image validation correctness, read from its artifact
        path = MlflowClient(done["uri"]).download_artifacts(rid, schema.VAL_CORRECT_ARTIFACT, str(done["root"]))
        return [float(c == "1") for c in json.loads(open(path).read())["val"]]

    wins = selection.soup_wins([val(r) for r in own], val(best["run_id"]), len(best["ingredients"]))
    assert parent.data.tags.get(schema.TAG_CHAMPION_RUN_ID) == (best["run_id"] if wins else None)
    version = MlflowClient(done["uri"]).get_model_version_by_alias("tiny", "champion")
    assert version.run_id == (best["run_id"] if wins else parent.data.tags[schema.TAG_BEST_RUN_ID])
