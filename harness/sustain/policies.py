"""Update policies and their drift monitors: when to re-fine-tune, what [stream] sets, and what Optuna searches."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import optuna
import torch

from harness import config, train

AUC_Z = 2.326  # one-sided 1% normal quantile: the embedding monitor also needs an AUC this many sds above 0.5


# ---------------------------------------------------------------------------------------------------- monitors

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


# ---------------------------------------------------------------------------------------------------- decisions

@dataclasses.dataclass
class Observation:
    """What a policy sees at period t, before it decides whether to update the model in service."""
    t: int
    spec: dict  # the policy and its settings (policy_spec)
    seed: int
    labelled: list[float]  # labelled accuracy of each period since the last update; the first is the reference
    ref_features: Callable[[], torch.Tensor]  # penultimate features of the reference inputs (cached), current model
    cur_features: Callable[[], torch.Tensor]  # ... of the period's evaluation inputs


def _never(o: Observation):
    return False, None, None


def _every(o: Observation):
    return (o.t + 1) % o.spec["k"] == 0, None, None


def _accuracy(o: Observation):
    accs = o.labelled
    if len(accs) < 2:
        return False, 0.0, o.spec["threshold"]
    recent = accs[1:][-o.spec["window"]:]
    drop = 100 * (accs[0] - sum(recent) / len(recent))
    return drop > o.spec["threshold"], drop, o.spec["threshold"]


def _embedding(o: Observation):
    ref, cur = o.ref_features(), o.cur_features()
    auc = domain_auc(ref, cur, seed=o.seed * 1000 + o.t)
    # the configured AUC or the no-drift noise floor of these sample sizes, whichever is higher (logged per period)
    used = max(o.spec["threshold"], auc_noise_floor(len(ref), len(cur)))
    return auc > used, auc, used


def _mmd(o: Observation):
    value = mmd2(o.ref_features(), o.cur_features())
    return value > o.spec["threshold"], value, o.spec["threshold"]


# ---------------------------------------------------------------------------------------------------- registry

@dataclasses.dataclass(frozen=True)
class Searched:
    """The setting of a policy that Optuna samples besides the update recipe (lr, freeze_layers)."""
    key: str  # the spec entry it sets: "k" or "threshold"
    param: str  # the Optuna parameter, named after the [stream] setting it replaces: "k", "drop", "auc", "mmd"
    bounds: str  # the [stream] key of its [low, high]
    scale: str = "float"  # int | float | log


@dataclasses.dataclass(frozen=True)
class Policy:
    """An update policy: when it updates, which [stream] settings it reads, what a search samples for it."""
    # fn(Observation) -> (update now?, monitor statistic or None, the threshold it was compared with or None)
    decide: Callable[[Observation], tuple[bool, float | None, float | None]]
    settings: dict = dataclasses.field(default_factory=dict)  # spec key -> the [stream] key holding its value
    searched: Searched | None = None
    updates: bool = True  # False: never updates, so a search samples no update recipe for it


# Adding a policy: a decide function and an entry here (and, for a new setting, its [stream] keys in harness/config/).
POLICIES = {
    "never": Policy(_never, updates=False),
    "every": Policy(_every, {"k": "k"}, Searched("k", "k", "search_k", "int")),
    "accuracy": Policy(_accuracy, {"threshold": "drop", "window": "window"},
                       Searched("threshold", "drop", "search_drop")),
    "embedding": Policy(_embedding, {"threshold": "auc"}, Searched("threshold", "auc", "search_auc")),
    "mmd": Policy(_mmd, {"threshold": "mmd"}, Searched("threshold", "mmd", "search_mmd", "log")),
}


def policy_spec(s: config.Stream, policy: str, **changes) -> dict:
    """A policy with its update recipe, from [stream]; `changes` override (Optuna's samples). k, threshold and window
    are None where the policy has no such setting."""
    spec = {"policy": policy, "k": None, "threshold": None, "window": None, "lr": s.lr,
            "freeze_layers": s.freeze_layers, "epochs": s.epochs, "replay": s.replay}
    spec.update({key: getattr(s, field) for key, field in POLICIES[policy].settings.items()})
    spec.update(changes)
    return spec


def label(spec: dict) -> str:
    return f"every{spec['k']}" if spec["policy"] == "every" else spec["policy"]


def sample(trial: optuna.Trial, s: config.Stream, policy: str) -> dict:
    """The policy's own searched setting, as spec changes ({} when it has none)."""
    q = POLICIES[policy].searched
    if q is None:
        return {}
    low, high = getattr(s, q.bounds)
    if q.scale == "int":
        return {q.key: trial.suggest_int(q.param, low, high)}
    return {q.key: trial.suggest_float(q.param, low, high, log=q.scale == "log")}
