"""Evaluation metrics on logits: accuracy, calibration (ECE, NLL, Brier), balanced accuracy, BBSE label-shift estimation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Logits are (N, K), labels (N,) int; both on any device. Everything is computed in float64: with 10k examples a
# float32 ECE or Brier sum carries ~1e-4 of rounding, as large as differences worth reporting at severity 1.


def _probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.detach().double(), dim=1)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy."""
    return (logits.argmax(1) == labels).double().mean().item()


def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy of the true label, nats."""
    return F.cross_entropy(logits.detach().double(), labels.long()).item()


def brier(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Multi-class Brier score as in Ovadia et al. 2019: sum over classes of (p_k - 1[y = k])^2, mean over examples
    (0 is perfect, 2 the worst)."""
    p = _probs(logits)
    onehot = F.one_hot(labels.long(), p.shape[1]).double()
    return ((p - onehot) ** 2).sum(1).mean().item()


def ece(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017): top-1 softmax confidences in n_bins equal-width bins
    (lower, upper], ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)| = sum_b |sum_{i in b} (correct_i - conf_i)| / N."""
    conf, pred = _probs(logits).max(1)
    return binned_ece(conf, (pred == labels.to(pred.device)).double(), n_bins).item()


def _bins(conf: torch.Tensor, n_bins: int):
    """(bin of each confidence, the bin's sum over a last axis) for equal-width bins (lower, upper]."""
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64, device=conf.device)
    bins = torch.bucketize(conf, edges[1:-1])  # edges[b] < conf <= edges[b + 1] -> b

    def total(x):  # sum of x (..., N) over each bin's examples -> (..., n_bins)
        out = torch.zeros(*x.shape[:-1], n_bins, dtype=torch.float64, device=x.device)
        return out.index_add_(-1, bins, x.double())
    return bins, total


def binned_ece(conf: torch.Tensor, correct: torch.Tensor, n_bins: int = 15) -> torch.Tensor:
    """The plug-in ECE of top-1 confidences conf (N,) against correctness correct (..., N) (0/1), one value per
    leading index: many simulated outcomes of the same predictions at once (stats.calibrated_ece_reference)."""
    conf = conf.double()
    _, total = _bins(conf, n_bins)
    return total(correct.double() - conf).abs().sum(-1) / conf.shape[-1]


def debiased_ece(conf: torch.Tensor, correct: torch.Tensor, n_bins: int = 15) -> float:
    """The debiased ECE of Kumar et al. 2019 (Verified Uncertainty Calibration, sec. 5, their normal_debiased_ce for
    the L1 error), in closed form: the plug-in ECE sum_b p_b |d_b| (d_b = acc_b - conf_b) overestimates at small n, as
    E|d_b + noise| > |d_b|; with the noise of acc_b taken as N(0, s_b^2), s_b^2 = acc_b (1 - acc_b) / n_b, the bias is
    sum_b p_b (E|N(d_b, s_b^2)| - |d_b|) and the estimate 2 ECE - sum_b p_b E|N(d_b, s_b^2)|, where
    E|N(m, s^2)| = s sqrt(2 / pi) exp(-m^2 / 2 s^2) + m (1 - 2 Phi(-m / s)) (their 1000 normal draws replaced by the
    expectation, so the value is deterministic). A one-image bin has s_b = 0 and keeps its plug-in term (Kumar et al.
    refuse such bins). Can be slightly negative for a calibrated model: it is unbiased, not non-negative."""
    conf, correct = conf.double().flatten(), correct.double().flatten().to(conf.device)
    bins, total = _bins(conf, n_bins)
    count = total(torch.ones_like(conf))
    used = count > 0
    n_b, acc, mean_conf = count[used], total(correct)[used] / count[used], total(conf)[used] / count[used]
    p, d = n_b / len(conf), acc - mean_conf
    s = (acc * (1 - acc) / n_b).sqrt()
    safe = s.clamp_min(1e-300)
    folded = torch.where(s > 0, s * math.sqrt(2 / math.pi) * torch.exp(-d * d / (2 * safe * safe))
                         + d * torch.erf(d / (safe * math.sqrt(2))), d.abs())  # 1 - 2 Phi(-x) = erf(x / sqrt 2)
    return (2 * (p * d.abs()).sum() - (p * folded).sum()).item()


def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean per-class recall over the classes present in labels: under label shift it does not move with the prior."""
    y = labels.long()
    support = torch.bincount(y, minlength=num_classes)
    hits = torch.bincount(y[logits.argmax(1) == y], minlength=num_classes)
    present = support > 0
    return (hits[present].double() / support[present]).mean().item()


def confusion(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Joint frequencies C[i, j] = P(pred = i, y = j), float64 (K, K) summing to 1 (Lipton et al.'s C_hat)."""
    preds, labels = preds.long().flatten(), labels.long().flatten().to(preds.device)
    if preds.shape != labels.shape or len(preds) == 0:
        raise ValueError(f"need equal, non-empty preds and labels, got {len(preds)} and {len(labels)}")
    if min(preds.min(), labels.min()) < 0 or max(preds.max(), labels.max()) >= num_classes:
        raise ValueError(f"preds and labels must lie in [0, {num_classes})")
    joint = torch.bincount(preds * num_classes + labels, minlength=num_classes**2)
    return joint.reshape(num_classes, num_classes).double() / len(preds)


def bbse_weights(source_confusion: torch.Tensor, target_preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Black-box shift estimation (Lipton et al. 2018): w = C^-1 mu ~ q(y) / p(y), with C the source confusion and
    mu the target's predicted-label frequencies. A singular C (a class never predicted, or never seen) gets the
    minimum-norm least-squares solution instead; negative weights, which no prior ratio can be, are clipped to 0.
    Float64 on the CPU."""
    c = source_confusion.detach().double().cpu()
    mu = torch.bincount(target_preds.long().flatten().cpu(), minlength=num_classes).double() / target_preds.numel()
    if c.shape != (num_classes, num_classes) or len(mu) != num_classes:
        raise ValueError(f"need a ({num_classes}, {num_classes}) confusion and target preds in [0, {num_classes})")
    if torch.linalg.matrix_rank(c) == num_classes:
        w = torch.linalg.solve(c, mu)
    else:
        w = torch.linalg.lstsq(c, mu[:, None], driver="gelsd").solution[:, 0]
    return w.clamp_min(0)


def bbse_prior(source_confusion: torch.Tensor, target_preds: torch.Tensor, source_prior: torch.Tensor) -> torch.Tensor:
    """Estimated target prior q(y) = w * p(y), renormalised (float64, CPU)."""
    p = source_prior.detach().double().cpu()
    q = bbse_weights(source_confusion, target_preds, len(p)) * p
    if q.sum() <= 0:
        raise ValueError("BBSE weights are all zero on the source prior's support; the confusion matrix is degenerate")
    return q / q.sum()


def summarize(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The per-shift metrics every trial logs (Ovadia et al.'s set): acc, nll, ece (15 bins), brier."""
    return {"acc": accuracy(logits, labels), "nll": nll(logits, labels), "ece": ece(logits, labels),
            "brier": brier(logits, labels)}
