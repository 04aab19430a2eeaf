"""`python -m harness.sustain`: replay a drifting data stream under re-fine-tuning policies (never, every k periods,
monitor-triggered) and measure accuracy kept against update cost, tracked in MLflow; Optuna can search the policy.

Protocol (Wild-Time Eval-Stream, CLEAR "test on the near future"; notes/science.md section 5). A stream is T periods
(0-based t = 0..T-1) drawn from the target split of the data. The train split is cut per replicate seed, stratified
by class, into two disjoint parts (stream.pool_fraction): the deployed model's training images and the stream pool. Period
t brings a labelled batch (`stream.labelled` images of the stream pool, never seen by the deployed model) and an
evaluation set (`stream.eval_size` images of the test split), both put through the period's shift (a severity ramp
of a corruption, a rotation ramp, a drifting class prior, or a recurring A/B shift). So the accuracy monitor's
reference is held-out accuracy, not training accuracy, and an update learns from images the model has not seen.
The deployed model at t = 0 is the pretrained model fully fine-tuned on its clean half. At each period the
deployed model is first evaluated on the period (its near-future accuracy), then the policy decides whether to update
it; an update fine-tunes on the period's labelled batch plus the `replay` previous ones (lr, freeze_layers, epochs
of its own). After every period the model is evaluated on every period's evaluation set: R[i][j] is the accuracy on
period j of the model after period i (after its update, if any), and `initial`[j] that of the deployed model.

Metrics (0-based, T periods):
  stream_acc[t]   = R[t-1][t] (initial[0] at t = 0): the model in service when period t arrives, before any update
                    on t. stream_acc_mean and stream_acc_worst are its mean and minimum over t.
  bwt             = GEM backward transfer (Lopez-Paz & Ranzato 2017), 1/(T-1) sum_{i<T-1} (R[T-1][i] - R[i][i]),
                    against the accuracy right after period i; negative = forgetting.
  forgetting      = Chaudhry et al. 2018 (RWalk) forgetting, 1/(T-1) sum_{i<T-1} (max_{i<=l<T-1} R[l][i] - R[T-1][i]),
                    against the best accuracy on period i at any point after it arrived; positive = forgetting, and
                    >= -bwt (equal when the accuracy on every period peaked right after it).
  fwt             = GEM forward transfer, 1/(T-1) sum_{i>=1} (R[i-1][i] - initial[i]), relative to the deployed
                    (pretrained and fine-tuned, never updated) model instead of a random init. never: bwt = fwt = 0.
  n_updates, update_seconds (wall clock of the update fine-tunes), update_examples (images x epochs trained).
A policy run that raises (a diverging update: non-finite loss, FloatingPointError; or any other error) ends its child
run FAILED with tag harness.fail_reason; the other policies and seeds go on, and the command exits 1 naming the
failures (search mode: the Optuna trial fails, the search goes on).

Policies: never; every (updates at periods k-1, 2k-1, ..., i.e. (t + 1) % k == 0: floor(T / k) updates); accuracy
(labelled-window monitor: fires when the mean labelled accuracy of the last `window` periods is more than `drop`
points below the reference, the labelled accuracy on the first period after the last update or deployment);
embedding (unlabelled monitor, Evidently's domain classifier: logistic regression on penultimate-layer features of
the period's evaluation inputs vs the reference inputs, 2-fold cross-fitted 50/50 split, fires when ROC AUC > `auc`
and above the no-drift noise floor of the sample sizes, ~0.61 at 150 inputs a side: see auc_noise_floor; the
threshold used is logged per period as monitor_threshold);
mmd (unbiased MMD^2 with an RBF kernel, median-heuristic bandwidth, on the same features; fires above `mmd`). The
reference inputs are the clean validation inputs for the deployed model, then the evaluation inputs of the period
of the last update.

MLflow layout (written only through harness.tracking):
  experiment      study.name (e.g. "sustain-default"), tag harness.study_name
  parent run      run name = study.name; tags harness.role=sustain, optuna.study_name, harness.git_sha,
                  harness.stream (kind), harness.policies, harness.seeds; params = the resolved config (flat, on
                  creation); artifacts config/resolved.toml, versions.json, stream.json (period recipes per seed),
                  summary.json (per policy: mean and std over seeds of the final metrics, and the child run ids).
                  Reused when the same study name runs again; an experiment that holds a regular study
                  (harness.study) is refused (exit 2). At the end the report is written and logged as
                  report/index.html and report/report.json (`python -m harness.report --study-name NAME` rebuilds it).
  child run       one per (policy, seed), run name policy-<label>-seed<s> (label: never, every<k>, accuracy,
                  embedding, mmd); in search mode trial-<NNNN>-<label>-seed<s>. Tags mlflow.parentRunId,
                  harness.role=sustain_policy, harness.policy=<label>, harness.seed, harness.sustain_key (hash of
                  everything that determines the result), harness.update_periods ("2,5,8"), optuna.study_name,
                  optuna.trial_number (-1 outside search mode).
                  Params: policy, k, threshold, window, lr, freeze_layers, epochs, replay, stream, shift, periods, seed
                  ("none" where a policy has no such setting: k outside every, threshold for never/every).
                  Metrics with step = period: stream_acc, labelled_acc, updated (0/1), monitor (drop in points, AUC
                  or MMD^2; triggered policies only), monitor_threshold (what monitor was compared with; triggered
                  policies only; tag harness.threshold_used lists its distinct values). Final metrics:
                  stream_acc_mean, stream_acc_worst, bwt, forgetting, fwt, n_updates, update_seconds,
                  update_examples. Artifact accuracy_matrix.json: R, initial,
                  stream_acc, updated, monitor, periods (recipes) and the definitions above.
A non-search run that finds a FINISHED child with the same harness.sustain_key reuses it instead of replaying it
again, so a killed run is finished by running it again and `--seeds 0,1,2` after `--seed 0` adds seeds 1 and 2.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import optuna
import torch
from safetensors.torch import load_file, save_file

from harness import config, data as datamod, pretrain, shifts, study as studymod, tracking, train
from harness import trial as trialmod
from harness.config import ConfigError

DEFAULT_CONFIG = config.ROOT / "studies" / "sustain.toml"
VERSION = 2  # part of harness.sustain_key and of the deployed model's cache key: bump when the protocol changes
# (2: the deployed model trains on one half of the train split, the stream draws from the other; forgetting metric)
# Share of the target train split held out as the stream pool. Half: the default's 537 train images give the
# deployed model 268 and the pool 269, from which 10 periods draw 50 labelled images each (every pool image comes
# back ~1.9 times over the stream, under a different shift each time), and the tiny test study's 60 give 30 / 30.


# ---------------------------------------------------------------------------------------------------- streams

def _ramp(t: int, periods: int, top: int) -> int:
    """Severity 0 (clean) at the first period rising linearly to `top` at the last, rounded: 0 1 1 2 2 3 3 4 4 5."""
    return round(top * t / (periods - 1))


def _severity_ramp(s: config.Stream, num_classes: int, gen: torch.Generator) -> list[dict]:
    return [{"shift": s.shift, "severity": _ramp(t, s.periods, s.severity), "prior": None} for t in range(s.periods)]


def _rotation_ramp(s: config.Stream, num_classes: int, gen: torch.Generator) -> list[dict]:
    return [{"shift": "rotate", "severity": _ramp(t, s.periods, s.severity), "prior": None} for t in range(s.periods)]


def _prior_drift(s: config.Stream, num_classes: int, gen: torch.Generator) -> list[dict]:
    """Class priors move linearly from uniform to q ~ Dirichlet(alpha), drawn once per seed; pixels stay clean."""
    q = shifts.dirichlet_prior(num_classes, s.alpha, gen)
    uniform = torch.full_like(q, 1 / num_classes)
    out = []
    for t in range(s.periods):
        a = t / (s.periods - 1)
        out.append({"shift": "none", "severity": 0, "prior": ((1 - a) * uniform + a * q).tolist()})
    return out


def _recurring(s: config.Stream, num_classes: int, gen: torch.Generator) -> list[dict]:
    """A for `phase` periods, then B, then A again ...: what was learnt once comes back (forgetting shows)."""
    return [{"shift": s.shift if (t // s.phase) % 2 == 0 else s.shift_b, "severity": s.severity, "prior": None}
            for t in range(s.periods)]


# kind -> fn(stream config, num_classes, generator) -> one recipe per period: {"shift", "severity", "prior"}
STREAMS = {"severity": _severity_ramp, "rotation": _rotation_ramp, "prior": _prior_drift, "recurring": _recurring}


def schedule(s: config.Stream, num_classes: int, seed: int) -> list[dict]:
    """The period recipes of a stream: which shift at which severity, and which class prior (None = as sampled)."""
    recipes = STREAMS[s.kind](s, num_classes, torch.Generator().manual_seed(seed))
    return [{"period": t, **r} for t, r in enumerate(recipes)]


def _draw(x, y, n, prior, gen):
    if prior is not None:
        idx = shifts.resample_to_prior(y, torch.tensor(prior, dtype=torch.float64), n, gen)
    elif n <= len(y):
        idx = torch.randperm(len(y), generator=gen)[:n]
    else:
        idx = torch.randint(len(y), (n,), generator=gen)
    return x[idx], y[idx]


def split_pool(labels: torch.Tensor, seed: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(deployed-model indices, stream-pool indices) into the train split: disjoint, together all of it, stratified by
    class and seeded by the replicate seed. The pool feeds the stream's labelled batches, so neither the accuracy
    monitor's reference nor an update ever sees an image the deployed model was fine-tuned on."""
    deploy, pool = datamod.stratified_split(labels.cpu(), [1 - fraction, fraction], torch.Generator().manual_seed(seed))
    if not len(deploy) or not len(pool):
        raise ValueError(f"the train split ({len(labels)} images) is too small to hold out a stream pool of "
                         f"{fraction:.0%}; raise data.labels_per_class")
    return deploy, pool


def make_stream(data: dict, recipes: list[dict], n_labelled: int, n_eval: int, seed: int) -> list[dict]:
    """One dict per period: x, y (labelled batch from data['train']: pass the stream pool, see split_pool), eval_x,
    eval_y (from data['test']), and the recipe. Pure and seeded: the same data, recipes and seed give identical
    tensors."""
    gen = torch.Generator().manual_seed(seed)
    periods = []
    for r in recipes:
        p = dict(r)
        for (x_key, y_key), split, n in ((("x", "y"), "train", n_labelled), (("eval_x", "eval_y"), "test", n_eval)):
            x, y = _draw(*data[split], n, r["prior"], gen)
            if r["shift"] != "none" and r["severity"] > 0:
                x = shifts.SHIFTS[r["shift"]](x, r["severity"], gen)
            p[x_key], p[y_key] = x.contiguous(), y.contiguous()
        periods.append(p)
    return periods


# ---------------------------------------------------------------------------------------------------- monitors

AUC_Z = 2.326  # one-sided 1% normal quantile: the embedding monitor also needs an AUC this many sds above 0.5

@torch.inference_mode()
def features(model, head, x, batch_size, device) -> torch.Tensor:
    """Penultimate-layer features: the input of the head, captured by a hook (works for any registry model)."""
    grabbed = []
    hook = head.register_forward_pre_hook(lambda m, inputs: grabbed.append(inputs[0].flatten(1).float().cpu()))
    try:
        train.predict(model, x, batch_size, device)
    finally:
        hook.remove()
    return torch.cat(grabbed)


def domain_auc(ref: torch.Tensor, cur: torch.Tensor, seed: int = 0) -> float:
    """ROC AUC of a domain classifier telling `cur` from `ref` features (Evidently's embedding drift, model method):
    standardized logistic regression fitted on a stratified half and scored on the other, then the halves swapped
    (2-fold cross-fitting), the two AUCs averaged."""
    from sklearn.linear_model import LogisticRegression  # ~5 s of imports on 2 busy cores: only when used
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = torch.cat([ref, cur]).double().numpy()
    y = torch.cat([torch.zeros(len(ref)), torch.ones(len(cur))]).long().numpy()
    aucs = []
    for fit, test in StratifiedKFold(2, shuffle=True, random_state=seed).split(x, y):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))
        clf.fit(x[fit], y[fit])
        aucs.append(roc_auc_score(y[test], clf.predict_proba(x[test])[:, 1]))
    return float(sum(aucs) / len(aucs))


def auc_noise_floor(n_ref: int, n_cur: int, z: float = AUC_Z) -> float:
    """The AUC that no-drift noise exceeds with ~1% probability: 0.5 + z * sd, sd the Mann-Whitney null of one
    half-sized test fold, sqrt((n0 + n1 + 1) / (12 n0 n1)). Measured: 200 vs 200 iid inputs give cross-fitted AUCs
    of 0.498 +- 0.043 (this sd: 0.041), so Evidently's 0.55, meant for large samples, alone would fire on ~11% of
    periods without drift; the floor is 0.605 at 179 vs 150 inputs, 0.61 at 150 vs 150."""
    n0, n1 = n_ref / 2, n_cur / 2
    return 0.5 + z * math.sqrt((n0 + n1 + 1) / (12 * n0 * n1))


def mmd2(ref: torch.Tensor, cur: torch.Tensor) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012) with an RBF kernel exp(-d^2 / (2 s^2)), s = the median pairwise distance
    of the pooled sample (median heuristic); diagonal terms left out, so it is ~0 (and may be < 0) without drift."""
    z = torch.cat([ref, cur]).double()
    d2 = torch.cdist(z, z).pow(2)
    n, m = len(ref), len(cur)
    sigma2 = d2[torch.triu_indices(n + m, n + m, 1).unbind()].median().clamp_min(1e-12)
    k = torch.exp(-d2 / (2 * sigma2))
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    return float((kxx.sum() - kxx.diag().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diag().sum()) / (m * (m - 1))
                 - 2 * kxy.mean())


def _never(o):
    return False, None, None


def _every(o):
    return (o["t"] + 1) % o["spec"]["k"] == 0, None, None


def _accuracy(o):
    accs = o["labelled"]  # labelled accuracy of each period since the last update; the first is the reference
    if len(accs) < 2:
        return False, 0.0, o["spec"]["threshold"]
    recent = accs[1:][-o["spec"]["window"]:]
    drop = 100 * (accs[0] - sum(recent) / len(recent))
    return drop > o["spec"]["threshold"], drop, o["spec"]["threshold"]


def _embedding(o):
    ref, cur = o["ref_features"](), o["cur_features"]()
    auc = domain_auc(ref, cur, seed=o["seed"] * 1000 + o["t"])
    # the configured AUC or the no-drift noise floor of these sample sizes, whichever is higher (logged per period)
    used = max(o["spec"]["threshold"], auc_noise_floor(len(ref), len(cur)))
    return auc > used, auc, used


def _mmd(o):
    value = mmd2(o["ref_features"](), o["cur_features"]())
    return value > o["spec"]["threshold"], value, o["spec"]["threshold"]


# policy -> fn(observation) -> (update now?, monitor statistic or None, the threshold it was compared with or None).
# The observation holds t, spec, seed, labelled (accuracies since the last update) and ref_features / cur_features
# (callables, current model).
POLICIES = {"never": _never, "every": _every, "accuracy": _accuracy, "embedding": _embedding, "mmd": _mmd}
assert set(POLICIES) == set(config.STREAM_POLICIES)


def policy_spec(s: config.Stream, policy: str, **changes) -> dict:
    """A policy with its update recipe, from [stream]; `changes` override (Optuna's samples)."""
    threshold = {"accuracy": s.drop, "embedding": s.auc, "mmd": s.mmd}.get(policy)
    spec = {"policy": policy, "k": s.k if policy == "every" else None, "threshold": threshold,
            "window": s.window if policy == "accuracy" else None, "lr": s.lr, "freeze_layers": s.freeze_layers,
            "epochs": s.epochs, "replay": s.replay}
    spec.update(changes)
    return spec


def label(spec: dict) -> str:
    return f"every{spec['k']}" if spec["policy"] == "every" else spec["policy"]


# ---------------------------------------------------------------------------------------------------- replay

def fine_tune(model, groups, x, y, lr, freeze_layers, epochs, tcfg: config.Train, device, seed) -> float:
    """One update: a fresh optimizer, `epochs` seeded passes over (x, y) with the first freeze_layers groups frozen.
    Returns the last epoch's loss; raises on divergence."""
    opt = train.make_optimizer(model, tcfg.optimizer, lr, tcfg.momentum, tcfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    total, step, loss = epochs * -(-len(x) // tcfg.batch_size), 0, float("nan")
    for _ in range(epochs):
        loss, step = train.train_one_epoch(model, groups, freeze_layers, opt, x, y, tcfg.batch_size, gen, step, total,
                                           lr, tcfg.schedule, device)
        if not math.isfinite(loss):
            raise FloatingPointError(f"non-finite loss ({loss}) in an update fine-tune at lr {lr}")
    return loss


def _accuracy_on(model, x, y, batch_size, device) -> float:
    return (train.predict(model, x, batch_size, device).argmax(1) == y).double().mean().item()


def replay(model, groups, stream: list[dict], spec: dict, reference_x, tcfg: config.Train, device, seed: int) -> dict:
    """Run one policy over the stream, in place on `model` (the deployed model). Returns R, initial, stream_acc,
    labelled_acc, updated, monitor, threshold, update_seconds, update_examples (see the module docstring)."""
    bs = tcfg.eval_batch_size
    head = groups["head"]

    def row():
        return [_accuracy_on(model, p["eval_x"], p["eval_y"], bs, device) for p in stream]

    initial = current = row()
    ref_x, ref_cache = reference_x, {}
    R, stream_acc, labelled_acc, updated, monitor, threshold, since = [], [], [], [], [], [], []
    seconds, examples = 0.0, 0
    for t, p in enumerate(stream):
        stream_acc.append(current[t])  # test on the near future: before any update on period t
        labelled_acc.append(_accuracy_on(model, p["x"], p["y"], bs, device))
        since.append(labelled_acc[-1])

        def ref_features():  # cached until the next update changes the model and the reference
            if "f" not in ref_cache:
                ref_cache["f"] = features(model, head, ref_x, bs, device)
            return ref_cache["f"]

        obs = {"t": t, "spec": spec, "seed": seed, "labelled": since, "ref_features": ref_features,
               "cur_features": lambda: features(model, head, p["eval_x"], bs, device)}
        fire, stat, used = POLICIES[spec["policy"]](obs)
        monitor.append(stat)
        threshold.append(used)
        if fire:
            window = stream[max(0, t - spec["replay"]):t + 1]
            x = torch.cat([w["x"] for w in window])
            y = torch.cat([w["y"] for w in window])
            t0 = time.perf_counter()
            fine_tune(model, groups, x, y, spec["lr"], spec["freeze_layers"], spec["epochs"], tcfg, device,
                      seed * 1000 + t)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - t0
            examples += len(x) * spec["epochs"]
            current = row()
            ref_x, ref_cache, since = p["eval_x"], {}, []
        updated.append(int(fire))
        R.append(current)
    return {"R": R, "initial": initial, "stream_acc": stream_acc, "labelled_acc": labelled_acc, "updated": updated,
            "monitor": monitor, "threshold": threshold, "update_seconds": seconds, "update_examples": examples}


def stream_metrics(R: list[list[float]], initial: list[float]) -> dict:
    """stream_acc per period, its mean and worst, GEM bwt and fwt, Chaudhry forgetting (module docstring)."""
    T = len(R)
    acc = [initial[0]] + [R[t - 1][t] for t in range(1, T)]
    return {"stream_acc": acc, "stream_acc_mean": sum(acc) / T, "stream_acc_worst": min(acc),
            # GEM (Lopez-Paz & Ranzato 2017): against the accuracy right after period i
            "bwt": sum(R[T - 1][i] - R[i][i] for i in range(T - 1)) / (T - 1),
            # Chaudhry et al. 2018: against the best accuracy on period i since it arrived (l >= i: before that the
            # model had not met period i, and a drifting stream can make R[l][i] high for l < i by chance)
            "forgetting": sum(max(R[l][i] for l in range(i, T - 1)) - R[T - 1][i] for i in range(T - 1)) / (T - 1),
            "fwt": sum(R[i - 1][i] - initial[i] for i in range(1, T)) / (T - 1)}


# ---------------------------------------------------------------------------------------------------- CLI

def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m harness.sustain",
                                 description=" ".join(__doc__.split("\n\n")[0].split()).split(": ", 1)[1],
                                 epilog="Config section [stream]; default config studies/sustain.toml. Exit codes: 0 "
                                        "success, 1 runtime failure or a failed policy run (the others finish, the "
                                        "report is written), 2 bad input (nothing created).")
    studymod.add_common_args(ap)
    # the shared flags, in this command's terms (argparse has no public setter for an added argument's help)
    ap._option_string_actions["--config"].help = "study TOML file with a [stream] section (default: studies/sustain.toml)"
    ap._option_string_actions["--n-trials"].help = ("stream.search = true: the number of completed Optuna trials to "
                                                    "reach (failed ones do not count; at most that many attempts per "
                                                    "run); re-running resumes the search")
    ap._option_string_actions["--study-name"].help = ("study name (MLflow experiment); re-running with the same name "
                                                      "reuses its finished policy runs. Not the name of a regular study")
    ap.add_argument("--seeds", help="comma-separated replicate seeds, e.g. 0,1,2 (sets stream.seeds)")
    return ap.parse_args(argv)


def load_config(args) -> config.Config:
    args = copy.copy(args)
    args.config = args.config or str(DEFAULT_CONFIG)
    if args.seeds is not None:
        try:
            seeds = [int(v) for v in args.seeds.split(",")]
        except ValueError:
            raise ConfigError("--seeds", f"expected comma-separated integers such as 0,1,2, got {args.seeds!r}") from None
        args.set = list(args.set) + [f"stream.seeds={seeds}"]
    return studymod.load_config(args)


def preflight(cfg: config.Config) -> int:
    """The study's checks plus the stream's; returns the number of freezable layer groups."""
    n_groups = studymod.preflight(cfg)
    st = cfg.stream
    for key in ("shift", "shift_b"):
        name = getattr(st, key)
        if name != "none" and name not in shifts.SHIFTS:
            raise ConfigError(f"stream.{key}", f"unknown shift {name!r}; allowed: none, {', '.join(shifts.SHIFTS)}")
    for key, value in (("freeze_layers", st.freeze_layers), ("search_freeze_layers", st.search_freeze_layers[1])):
        if value > n_groups:
            raise ConfigError(f"stream.{key}", f"{value} exceeds the {n_groups} layer groups of {cfg.model.name}")
    if cfg.study.workers > 1:
        raise ConfigError("study.workers", "harness.sustain runs in one process; use --workers 1")
    return n_groups


def seeds_of(cfg: config.Config) -> list[int]:
    return list(cfg.stream.seeds) or [cfg.study.seed]


def sustain_key(cfg: config.Config, spec: dict, seed: int, device: str) -> str:
    """Everything that determines one child's result; equal keys replay to equal metrics on CPU. `device` is the
    resolved one (cpu, cuda), never "auto": a CUDA result must not be reused on a CPU machine or back."""
    st = {k: v for k, v in config.to_dict(cfg)["stream"].items()
          if k in ("kind", "shift", "shift_b", "severity", "phase", "alpha", "periods", "labelled", "eval_size",
                   "init_lr")}
    blob = json.dumps({"data": cfg.data.__dict__, "model": cfg.model.__dict__, "pretrain": cfg.pretrain.__dict__,
                       "train": cfg.train.__dict__, "study_seed": cfg.study.seed, "stream": st, "spec": spec,
                       "seed": seed, "device": device, "pool": cfg.stream.pool_fraction, "v": VERSION}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------- run

def _seed_context(ctx: dict, seed: int) -> dict:
    """Per seed, built once and shared by every policy: the stream and the deployed model's weights. A failure
    (e.g. the deployed model's fine-tune diverged) is remembered and raised again for every policy of the seed."""
    if seed in ctx["seeds"]:
        if isinstance(ctx["seeds"][seed], Exception):
            raise ctx["seeds"][seed]
        return ctx["seeds"][seed]
    try:
        return _build_seed_context(ctx, seed)
    except Exception as err:
        ctx["seeds"][seed] = err
        raise


def _build_seed_context(ctx: dict, seed: int) -> dict:
    cfg, device, data = ctx["cfg"], ctx["device"], ctx["data"]
    st = cfg.stream
    recipes = schedule(st, len(data["classes"]), seed)
    deploy_idx, pool_idx = split_pool(data["train"][1], seed, st.pool_fraction)
    x, y = data["train"]
    cpu = {"train": (x[pool_idx], y[pool_idx]), "test": data["test"]}  # labelled batches only from the pool
    stream = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in p.items()}
              for p in make_stream(cpu, recipes, st.labelled, st.eval_size, seed)]
    seeded = {**ctx, "cfg": dataclasses.replace(cfg, study=dataclasses.replace(cfg.study, seed=seed)),
              "data": ctx["data_dev"]}
    model, groups = trialmod.fresh_model(seeded)  # head init seeded by the replicate seed
    # the deployed model is cached like the pretraining: every policy, trial and re-run of this seed starts from it
    # device.type is the resolved device (cpu / cuda), never "auto": weights fine-tuned on a GPU are not reused on
    # a CPU-only machine, where they would differ from what a CPU run computes
    blob = json.dumps({"data": data["key"], "weights": ctx["weights_key"], "model": cfg.model.name,
                       "train": cfg.train.__dict__, "init_lr": st.init_lr, "seed": seed, "device": device.type,
                       "pool": st.pool_fraction, "v": VERSION}, sort_keys=True)
    path = ctx["cache"] / f"sustain-init-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.safetensors"
    t0 = time.perf_counter()
    if path.exists():
        model.load_state_dict(load_file(str(path), device=str(device)))
        how = "cached"
    else:
        xd, yd = ctx["data_dev"]["train"]
        fine_tune(model, groups, xd[deploy_idx.to(xd.device)], yd[deploy_idx.to(yd.device)], st.init_lr, 0,
                  cfg.train.epochs, cfg.train, device, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
        tmp.replace(path)  # atomic: a kill never leaves half a file under the final name
        how = (f"fine-tuned on {len(deploy_idx)} clean train images in {time.perf_counter() - t0:.1f} s (the other "
               f"{len(pool_idx)} are the stream pool)")
    init_acc = _accuracy_on(model, *ctx["data_dev"]["test"], cfg.train.eval_batch_size, device)
    ctx["log"](f"seed {seed}: deployed model {how}, clean test acc {init_acc:.3f}")
    out = {"seed": seed, "recipes": recipes, "stream": stream, "init": copy.deepcopy(model.state_dict()),
           "seeded": seeded, "init_acc": init_acc, "deploy_idx": deploy_idx, "pool_idx": pool_idx}
    ctx["seeds"][seed] = out
    return out


def run_policy(ctx: dict, spec: dict, seed: int, trial_number: int = -1) -> dict:
    """Replay one policy on one seed's stream into its own child run. Returns the final metrics. On any error the
    child run ends FAILED with tag harness.fail_reason and the error is raised again for the caller to record."""
    cfg, client = ctx["cfg"], ctx["client"]
    st = cfg.stream
    name = f"policy-{label(spec)}-seed{seed}"
    if trial_number >= 0:
        name = f"trial-{trial_number:04d}-{label(spec)}-seed{seed}"
    key = sustain_key(cfg, spec, seed, ctx["device"].type)
    if trial_number < 0 and key in ctx["finished"]:
        run = ctx["finished"][key]
        ctx["log"](f"seed {seed} {label(spec):<10} reused finished run {run.info.run_id} ({run.info.run_name})")
        return {"run_id": run.info.run_id, **{k: run.data.metrics.get(k) for k in FINAL}}
    params = {"policy": spec["policy"], "k": spec["k"], "threshold": spec["threshold"], "window": spec["window"],
              "lr": spec["lr"], "freeze_layers": spec["freeze_layers"], "epochs": spec["epochs"],
              "replay": spec["replay"], "stream": st.kind, "shift": _stream_shift(st), "periods": st.periods,
              "seed": seed}
    params = {k: "none" if v is None else v for k, v in params.items()}
    run_id = tracking.child_run(client, ctx["exp_id"], ctx["parent_id"], cfg.study.name, trial_number, params,
                                {"harness.role": "sustain_policy", "harness.policy": label(spec),
                                 "harness.seed": str(seed), "harness.sustain_key": key})
    tracking.set_tags(client, run_id, {"mlflow.runName": name})  # child_run names runs trial-NNNN
    try:
        final, when = _replay_into(ctx, spec, seed, run_id)
    except Exception as err:
        reason = f"{type(err).__name__}: {err}"
        tracking.end_run(client, run_id, "FAILED", {"harness.fail_reason": reason[:5000]})
        ctx["log"](f"seed {seed} {label(spec):<10} FAILED ({name}, run {run_id}): {reason}")
        raise
    ctx["log"](f"seed {seed} {label(spec):<10} stream_acc mean {final['stream_acc_mean']:.3f} worst "
               f"{final['stream_acc_worst']:.3f}  bwt {final['bwt']:+.3f}  forgetting {final['forgetting']:+.3f}  "
               f"fwt {final['fwt']:+.3f}  {final['n_updates']} updates (periods {','.join(when) or '-'}) "
               f"{final['update_seconds']:.1f} s")
    return {"run_id": run_id, **final}


def _replay_into(ctx: dict, spec: dict, seed: int, run_id: str) -> tuple[dict, list[str]]:
    """The replay of run_policy and everything it logs; returns (final metrics, update periods)."""
    cfg, client = ctx["cfg"], ctx["client"]
    sc = _seed_context(ctx, seed)
    model, groups = trialmod.fresh_model(sc["seeded"])
    model.load_state_dict(sc["init"])
    res = replay(model, groups, sc["stream"], spec, ctx["reference_x"], cfg.train, ctx["device"], seed)
    m = stream_metrics(res["R"], res["initial"])
    final = {k: m[k] for k in ("stream_acc_mean", "stream_acc_worst", "bwt", "forgetting", "fwt")}
    final.update(n_updates=sum(res["updated"]), update_seconds=res["update_seconds"],
                 update_examples=res["update_examples"])
    tracking.log_steps(client, run_id, "stream_acc", dict(enumerate(m["stream_acc"])))
    tracking.log_steps(client, run_id, "labelled_acc", dict(enumerate(res["labelled_acc"])))
    tracking.log_steps(client, run_id, "updated", dict(enumerate(res["updated"])))
    tags = {}
    if any(v is not None for v in res["monitor"]):
        tracking.log_steps(client, run_id, "monitor", {t: v for t, v in enumerate(res["monitor"]) if v is not None})
    used = {t: v for t, v in enumerate(res["threshold"]) if v is not None}
    if used:
        tracking.log_steps(client, run_id, "monitor_threshold", used)
        tags["harness.threshold_used"] = ",".join(f"{v:.4g}" for v in sorted(set(used.values())))
    tracking.log_metrics(client, run_id, final)
    matrix = {"definition": "R[i][j] = accuracy on period j's evaluation set of the model after period i (after "
                            "its update, if any), 0-based; initial[j] = the deployed model before any update",
              "stream_acc_definition": "stream_acc[t] = R[t-1][t], initial[0] at t = 0 (test on the near future)",
              "bwt_definition": "GEM: 1/(T-1) sum_{i<T-1} (R[T-1][i] - R[i][i])",
              "forgetting_definition": "Chaudhry et al. 2018: 1/(T-1) sum_{i<T-1} (max_{i<=l<T-1} R[l][i] - "
                                       "R[T-1][i])",
              "fwt_definition": "GEM: 1/(T-1) sum_{i>=1} (R[i-1][i] - initial[i])",
              "R": res["R"], "initial": res["initial"], "stream_acc": m["stream_acc"],
              "labelled_acc": res["labelled_acc"], "updated": res["updated"], "monitor": res["monitor"],
              "monitor_threshold": res["threshold"], "periods": sc["recipes"], "policy": spec, "seed": seed, **final}
    tracking.log_json(client, run_id, matrix, "accuracy_matrix.json")
    when = [str(t) for t, u in enumerate(res["updated"]) if u]
    tracking.end_run(client, run_id, "FINISHED", {"harness.update_periods": ",".join(when), **tags})
    return final, when


FINAL = ("stream_acc_mean", "stream_acc_worst", "bwt", "forgetting", "fwt", "n_updates", "update_seconds",
         "update_examples")


def _stream_shift(st: config.Stream) -> str:
    return {"severity": st.shift, "rotation": "rotate", "prior": f"dirichlet({st.alpha:g})",
            "recurring": f"{st.shift}/{st.shift_b}"}[st.kind]


def summarize(results: dict[str, list[dict]]) -> dict:
    """label -> {metric: {mean, std, values}} over seeds, plus run_ids."""
    out = {}
    for lab, rows in results.items():
        entry = {"run_ids": [r["run_id"] for r in rows], "n_seeds": len(rows)}
        for k in FINAL:
            vals = [r[k] for r in rows if r.get(k) is not None]
            mean = sum(vals) / len(vals) if vals else float("nan")
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            entry[k] = {"mean": mean, "std": std, "values": vals}
        out[lab] = entry
    return out


def _table(summary: dict, log) -> None:
    """Mean ± std over seeds; update cost as wall seconds and as images x epochs trained (device independent)."""
    log(f"\n{'policy':<11} {'seeds':>5} {'stream_acc_mean':>15} {'worst':>13} {'bwt':>14} {'forgetting':>14} "
        f"{'fwt':>14} {'updates':>9} {'update_s':>11} {'update_examples':>15}")
    for lab, e in summary.items():
        f = lambda k, w=".3f": f"{e[k]['mean']:{w}} ± {e[k]['std']:.3f}"
        g = lambda k, w: f"{e[k]['mean']:{w}} ± {e[k]['std']:{w}}"
        log(f"{lab:<11} {e['n_seeds']:>5} {f('stream_acc_mean'):>15} {f('stream_acc_worst'):>13} {f('bwt', '+.3f'):>14} "
            f"{f('forgetting', '+.3f'):>14} {f('fwt', '+.3f'):>14} {g('n_updates', '.1f'):>9} "
            f"{g('update_seconds', '.1f'):>11} {g('update_examples', '.0f'):>15}")


def _search_space(s: config.Stream) -> dict:
    return {"policy": s.search_policies, "k": s.search_k, "drop": s.search_drop, "auc": s.search_auc,
            "mmd": {"low": s.search_mmd[0], "high": s.search_mmd[1], "log": True},
            "lr": {"low": s.search_lr[0], "high": s.search_lr[1], "log": True},
            "freeze_layers": s.search_freeze_layers, "epochs": s.epochs, "replay": s.replay,
            "objective": s.objective, "cost": s.cost,
            "update_rate": "update_examples / (periods x labelled x (1 + replay) x epochs)",
            "objective_definition": "penalized: mean stream_acc_mean - cost x update rate; multi: (mean "
                                    "stream_acc_mean, update rate)"}


def suggest(trial: optuna.Trial, s: config.Stream) -> dict:
    """The conditional policy space of [stream] search_*: k only for every, a threshold only for its trigger."""
    policy = trial.suggest_categorical("policy", s.search_policies)
    if policy == "never":
        return policy_spec(s, policy)
    changes = {}
    if policy == "every":
        changes["k"] = trial.suggest_int("k", *s.search_k)
    elif policy == "accuracy":
        changes["threshold"] = trial.suggest_float("drop", *s.search_drop)
    elif policy == "embedding":
        changes["threshold"] = trial.suggest_float("auc", *s.search_auc)
    elif policy == "mmd":
        changes["threshold"] = trial.suggest_float("mmd", *s.search_mmd, log=True)
    changes["lr"] = trial.suggest_float("lr", *s.search_lr, log=True)
    changes["freeze_layers"] = trial.suggest_int("freeze_layers", *s.search_freeze_layers)
    return policy_spec(s, policy, **changes)


def update_rate(s: config.Stream, update_examples: float) -> float:
    """Update cost as a share of the work of updating at every period: update_examples (images x epochs trained, so
    more epochs and more replay cost more) over T x labelled x (1 + replay) x epochs. Updating every period costs
    just under 1 (the first periods have fewer batches to replay), never 0. freeze_layers does not lower it: a
    frozen group still runs forward, and its saved backward pass shows only in update_seconds (wall clock, which
    depends on the machine and would make the search irreproducible)."""
    return update_examples / (s.periods * s.labelled * (1 + s.replay) * s.epochs)


def objective_values(s: config.Stream, rows: list[dict]) -> tuple[float, ...]:
    """Mean over seeds: penalized = mean stream acc - cost * update rate; multi = (mean acc, update rate)."""
    acc = sum(r["stream_acc_mean"] for r in rows) / len(rows)
    rate = update_rate(s, sum(r["update_examples"] for r in rows) / len(rows))
    return (acc - s.cost * rate,) if s.objective == "penalized" else (acc, rate)


def fail_stale_trials(opt_study: optuna.Study) -> int:
    """Trials left RUNNING by a killed earlier run: FAIL them (a sustain study runs in one process, so at start
    nothing can be running), as harness.study does for dead workers. Their MLflow runs are ended by run()."""
    n = 0
    storage = opt_study._storage
    for t in opt_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_system_attr(t._trial_id, "fail_reason", "the sustain process died before the trial finished")
        if storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL):
            n += 1
    return n


def run_search(ctx: dict) -> dict:
    """Optuna trials until study.n_trials have completed (at most that many attempts this run, and study.timeout).
    A trial whose replay raises fails (reason in its fail_reason system attr and on the child run) and the search
    goes on. Returns label -> rows of this run's completed trials."""
    cfg, log = ctx["cfg"], ctx["log"]
    s = cfg.stream
    directions = ["maximize"] if s.objective == "penalized" else ["maximize", "minimize"]
    opt_study = optuna.create_study(storage=studymod.storage_of(cfg, ctx["client"]), study_name=cfg.study.name,
                                    sampler=studymod._sampler(cfg), directions=directions, load_if_exists=True)
    stale = fail_stale_trials(opt_study)
    if stale:
        log(f"resume: {stale} Optuna trial(s) left RUNNING by a killed run failed")
    states = {t.state for t in opt_study.trials}
    live = {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.WAITING}
    if not states & live and "never" in s.search_policies:
        opt_study.enqueue_trial({"policy": "never"})  # the reference every policy is measured against
    results, failed, t0 = {}, [], time.perf_counter()
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in opt_study.trials)
    for _ in range(max(0, cfg.study.n_trials - done)):
        if cfg.study.timeout and time.perf_counter() - t0 > cfg.study.timeout:
            log(f"timeout of {cfg.study.timeout:.0f} s reached; not starting more trials")
            break
        trial = opt_study.ask()
        spec = suggest(trial, s)
        try:
            rows = [run_policy(ctx, spec, seed, trial.number) for seed in seeds_of(cfg)]
        except Exception as err:  # a diverging or broken policy fails its trial, not the search
            opt_study._storage.set_trial_system_attr(trial._trial_id, "fail_reason", f"{type(err).__name__}: {err}")
            opt_study.tell(trial, state=optuna.trial.TrialState.FAIL)
            failed.append(trial.number)
            log(f"trial {trial.number} FAILED: {type(err).__name__}: {err}")
            continue
        results.setdefault(f"trial-{trial.number:04d}-{label(spec)}", rows)
        for k in ("stream_acc_mean", "n_updates", "update_seconds", "update_examples"):
            trial.set_user_attr(k, sum(r[k] for r in rows) / len(rows))
        trial.set_user_attr("mlflow_run_ids", [r["run_id"] for r in rows])
        values = objective_values(s, rows)
        opt_study.tell(trial, values[0] if len(values) == 1 else list(values))
    complete = [t for t in opt_study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = opt_study.best_trials
        log("\nbest trial(s): " + "; ".join(f"#{t.number} {t.params} -> {[round(v, 4) for v in t.values]}"
                                             for t in best))
    if failed:
        log(f"{len(failed)} trial(s) failed this run: {', '.join(map(str, failed))} (reasons above and on their "
            f"MLflow runs)")
    return {"results": results, "failed": failed, "complete": len(complete)}


def _finished_children(ctx) -> dict:
    """harness.sustain_key -> FINISHED child run of this parent (read only; reused instead of replayed)."""
    runs = ctx["client"].search_runs([ctx["exp_id"]], f"tags.mlflow.parentRunId = '{ctx['parent_id']}' and "
                                     f"attributes.status = 'FINISHED'", max_results=10000)
    return {r.data.tags["harness.sustain_key"]: r for r in runs if "harness.sustain_key" in r.data.tags}


def _parent(client, exp_id: str, name: str) -> tuple[str, bool]:
    """The sustain study's parent run (tag harness.role = sustain), reused (RUNNING again) when the study reruns."""
    return tracking.parent_run(client, exp_id, name, role="sustain")


def run(cfg: config.Config, n_groups: int, log=print) -> int:
    t_start = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root, device = studymod.home(), train.pick_device(cfg.study.device)
    train.setup_device(device)
    torch.manual_seed(cfg.study.seed)
    uri = cfg.study.tracking_uri or tracking.default_uri(root)
    root.mkdir(parents=True, exist_ok=True)
    client = tracking.connect(uri)  # fails fast on a dead server, before any training
    cache = root / "cache"

    data = datamod.load(cfg.data, cfg.study.seed, cache)
    pre_state, weights_key = None, cfg.model.weights
    if cfg.model.weights == "pretrain":
        pre_device = torch.device("cpu") if device.type == "cpu" else device
        pre_state, pre_info = pretrain.pretrained(cfg, data, pre_device, cache, log=log)
        weights_key = f"pretrain-{pre_info['key']}"
    data_dev = datamod.to_device(data, device)
    exp_id = tracking.experiment(client, cfg.study.name, root if uri.startswith("sqlite") else None)
    parent_id, created = _parent(client, exp_id, cfg.study.name)
    ctx = {"cfg": cfg, "device": device, "data": data, "data_dev": data_dev, "pretrained": pre_state,
           "client": client, "exp_id": exp_id, "parent_id": parent_id, "seeds": {}, "log": log, "cache": cache,
           "weights_key": weights_key,
           "reference_x": data_dev["val"][0]}  # the deployed model's reference inputs: clean validation images
    _log_parent(ctx, created)
    orphans = [r.info.run_id for r in client.search_runs(
        [exp_id], f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'", max_results=10000)]
    for run_id in orphans:  # one process per sustain study: a RUNNING child now is one whose process died
        tracking.end_run(client, run_id, "FAILED", {"harness.fail_reason": "the sustain process died before the run "
                                                                           "finished"})
    ctx["finished"] = _finished_children(ctx)
    log(f"data: {len(data['train'][0])} train / {len(data['test'][0])} test images, {len(data['classes'])} classes; "
        f"stream {cfg.stream.kind} ({_stream_shift(cfg.stream)}), T = {cfg.stream.periods}, "
        f"{cfg.stream.labelled} labelled + {cfg.stream.eval_size} eval images per period; device {device}")

    failed, search = [], None  # failed: (label, seed, reason) of non-search policy runs
    if cfg.stream.search:
        search = run_search(ctx)
        results = search["results"]
    else:
        results = {}
        for seed in seeds_of(cfg):
            for policy in cfg.stream.policies:
                spec = policy_spec(cfg.stream, policy)
                try:
                    results.setdefault(label(spec), []).append(run_policy(ctx, spec, seed))
                except Exception as err:  # recorded on its child run by run_policy; the other policies go on
                    failed.append((label(spec), seed, f"{type(err).__name__}: {err}"))
    summary = summarize(results)
    tracking.log_json(client, parent_id, summary, "summary.json")
    tracking.log_json(client, parent_id, {str(s): c["recipes"] for s, c in ctx["seeds"].items()
                                          if isinstance(c, dict)}, "stream.json")
    n_failed = len(search["failed"]) if search else len(failed)
    tracking.end_run(client, parent_id, "FINISHED", {"harness.failed_runs": n_failed})
    if not cfg.stream.search and summary:
        _table(summary, log)
    log(f"\nsustain study {cfg.study.name!r} took {time.perf_counter() - t_start:.0f} s. Open the MLflow UI on this "
        f"store:\n  python -m harness.ui --tracking-uri {uri}")
    if cfg.study.report:
        _report(cfg, uri, log)
    if search and not search["complete"]:  # failed trials alone are part of a search; none completing is not
        print(f"error: no search trial completed ({len(search['failed'])} failed this run; reasons above, in the "
              f"Optuna trials' fail_reason and on their MLflow runs)", file=sys.stderr)
        return 1
    if failed:
        what = "; ".join(f"{lab} seed {seed}: {reason}" for lab, seed, reason in failed)
        ok = sum(len(rows) for rows in results.values())
        print(f"error: {len(failed)} policy run(s) failed ({what}); {ok} finished. Every run is in MLflow (failed "
              f"ones with tag harness.fail_reason); re-running the same command replays only what did not finish.",
              file=sys.stderr)
        return 1
    return 0


def _report(cfg: config.Config, uri: str, log) -> None:
    """The HTML report at the end, as harness.study writes it. Its failure must not turn a finished sustain study
    into an error: the runs are safe in MLflow and `python -m harness.report` rebuilds it."""
    from harness import report  # matplotlib and friends: only when a report is written

    try:
        log(f"report: {report.build([cfg.study.name], tracking_uri=uri, storage=cfg.study.storage or None)}")
    except Exception as e:  # noqa: BLE001
        log(f"warning: the report could not be written ({type(e).__name__}: {e}); rebuild it with "
            f"python -m harness.report --study-name {cfg.study.name}")


def check_store(cfg: config.Config) -> None:
    """Bad input found in the tracking store, before anything is created (exit 2): an MLflow experiment of this name
    that holds a regular study (python -m harness.study). A sustain parent there would be mixed with its trials."""
    uri = cfg.study.tracking_uri or tracking.default_uri(studymod.home())
    if tracking.existing_role(uri, cfg.study.name) == "study":
        raise ConfigError("study.name", f"{cfg.study.name!r} is the MLflow experiment of a regular study "
                          f"(python -m harness.study); a sustain study needs a name of its own, e.g. --study-name "
                          f"sustain-{cfg.study.name}")


def _log_parent(ctx: dict, created: bool) -> None:
    cfg, client, run = ctx["cfg"], ctx["client"], ctx["parent_id"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tracking.log_text(client, run, config.to_toml(cfg), "config/resolved.toml")
    tracking.log_text(client, run, config.to_toml(cfg), f"config/invocations/{stamp}.toml")
    tracking.log_json(client, run, tracking.versions(), "versions.json")
    if cfg.stream.search:
        tracking.log_json(client, run, _search_space(cfg.stream), "search_space.json")
    tracking.set_tags(client, run, {"harness.git_sha": tracking.git_sha(), "harness.device": str(ctx["device"]),
                                    "harness.stream": cfg.stream.kind, "harness.stream_shift": _stream_shift(cfg.stream),
                                    "harness.pool_fraction": cfg.stream.pool_fraction,
                                    "harness.policies": ",".join(cfg.stream.policies),
                                    "harness.seeds": ",".join(map(str, seeds_of(cfg))),
                                    "harness.search": str(cfg.stream.search).lower()})
    if created:  # params are immutable in MLflow: the config of the first invocation; later ones under config/
        tracking.log_params(client, run, {f"{s}.{k}": v for s, vals in config.to_dict(cfg).items()
                                          for k, v in vals.items() if s != "study" or k in ("seed", "sampler")})


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args)
        n_groups = preflight(cfg)
        check_store(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ConnectionError, OSError) as e:  # check_store: a dead tracking server
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    try:
        return run(cfg, n_groups)
    except KeyboardInterrupt:
        print("\ninterrupted: re-run the same command to finish (finished policy runs are reused)", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - policy runs fail one by one inside run(); this is setup or the store
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
