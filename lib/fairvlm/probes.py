"""Linear probes on attention-head contributions and on single neurons.

The protocol of Gomez-Grabowska et al. (ECIR 2026, Sec. 3.1 and 4.2): for every head a
*fresh* linear classifier (one ``nn.Linear`` layer, cross-entropy, Adam with learning rate
1e-3, 10 full-batch epochs) is trained on 80% of the images and scored on the other 20%
with accuracy, AUROC, average precision (AP) and the precision-recall curve
(scikit-learn's metrics). A "neuron" is one coordinate of a head's contribution vector
(the paper's Figure 1); it gets the same kind of probe with one input feature.

All probes of one call are trained *together* as a batch of independent classifiers:
parameters of shape (P, F, C), the loss is the sum of the P probes' mean cross-entropies,
and Adam's update is element-wise, so each probe follows exactly the trajectory it would
follow alone (the test suite checks this against separately trained ``nn.Linear`` probes).
The authors' script warm-starts one probe across heads; here every probe starts fresh.

Three choices the paper leaves open, stated here:

- the 80/20 split is stratified by label, or, when ``groups`` are given, keeps every
  group (e.g. the four renderings of one counterfactual scene) on one side
  (:func:`split_indices` explains why splitting a counterfactual set apart drives held-out
  AUROC *below* chance);

- ``init="zeros"`` (default): probes start at zero. Ten Adam steps of size 1e-3 move each
  weight by at most about 0.01, less than PyTorch's default ``nn.Linear`` init
  (uniform in +-1/sqrt(F)); from a random start the held-out ranking (and so AP/AUROC)
  would mostly reflect the random draw, and for a one-feature neuron probe the sign of
  the draw would decide whether AP is high or low. ``init="torch"`` reproduces PyTorch's
  default initialisation for comparison.
- ``standardize=True`` (default): features are z-scored with the training split's mean
  and standard deviation, so heads whose contributions differ in scale are probed on
  equal terms (an affine map a linear probe could learn with enough steps, but not in 10).

Metrics: binary labels use the probability of ``positive`` (default: the second of the
sorted classes) for AUROC/AP; more than two classes use macro one-vs-rest AUROC and AP.

Expert rule (:func:`select_experts`): the ``k`` heads with the highest held-out AP (ties
broken by AUROC, then by head index); chapters take ``k = max(1, heads // 4)``
(:func:`default_k`: the paper's 3 of ViT-B/32's 12 heads), so that the experts can be
compared with the other heads at all. ``rule="threshold"`` takes every head with AP > 0.75
(the authors' code). :func:`expert_gap_test` compares the experts' AP gap with the gap the
same selection yields on shuffled labels; :func:`trap_table` shows how the expert list
moves with the probe recipe (including the authors' warm-started sequential probe,
:func:`probe_heads_warm_start`, and a converged logistic regression,
:func:`probe_heads_logreg`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
)
from sklearn.model_selection import GroupShuffleSplit, train_test_split

from fairvlm.errors import DataError, unknown
from fairvlm.params import ParameterError

__all__ = [
    "ProbeConfig",
    "ProbeResult",
    "ap_chance",
    "best_layer",
    "control_heads",
    "default_k",
    "encode_labels",
    "expert_gap",
    "expert_gap_test",
    "expert_other_ap",
    "head_table",
    "layer_head_grid",
    "pr_curve",
    "probe_heads",
    "probe_heads_logreg",
    "probe_heads_warm_start",
    "probe_layers",
    "probe_neurons",
    "select_experts",
    "split_indices",
    "split_neurons",
    "train_probes",
    "trap_summary",
    "trap_table",
    "wide_head_table",
]


@dataclass(frozen=True)
class ProbeConfig:
    """Training settings; the defaults are the paper's (plus the two stated choices)."""

    epochs: int = 10
    lr: float = 1e-3
    test_size: float = 0.2
    init: str = "zeros"
    standardize: bool = True
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ParameterError(f"epochs={self.epochs!r} must be a positive integer")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ParameterError(f"lr={self.lr!r} must be a positive number")
        if not isinstance(self.test_size, float) or not 0.0 < self.test_size < 1.0:
            raise ParameterError(f"test_size={self.test_size!r} must be a float in (0, 1)")
        if self.init not in ("zeros", "torch"):
            raise unknown("probe init", self.init, ("zeros", "torch"))


def encode_labels(labels: Sequence) -> tuple[np.ndarray, list]:
    """Map labels to 0..C-1 (classes sorted by their string form). Returns (codes, classes)."""
    lab = np.asarray([str(x) for x in labels])
    classes = sorted(set(lab.tolist()))
    if len(classes) < 2:
        raise DataError(f"probing needs at least two classes; the labels hold only {classes}")
    index = {c: i for i, c in enumerate(classes)}
    return np.asarray([index[x] for x in lab], dtype=np.int64), classes


def split_indices(
    y: np.ndarray, test_size: float = 0.2, seed: int = 0, groups: Sequence | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Train/test split of ``range(len(y))`` (sorted index arrays).

    Without ``groups``: stratified by ``y``. With ``groups`` (one id per example): every
    group goes wholly to one side (``GroupShuffleSplit``, about ``test_size`` of the groups
    in the test split). Use groups for counterfactual sets: if the male and female
    renderings of one scene land on different sides, a probe that only recognises the
    scene is rewarded for predicting the *opposite* label, and held-out AUROC falls below
    chance.
    """
    counts = np.bincount(y)
    if counts.min() < 2:
        raise DataError(
            f"every class needs at least 2 examples for a split; counts are {counts.tolist()}"
        )
    idx = np.arange(len(y))
    if groups is None:
        tr, te = train_test_split(idx, test_size=test_size, random_state=seed, stratify=y)
        return np.sort(tr), np.sort(te)
    g = np.asarray([str(x) for x in groups])
    if g.shape != (len(y),):
        raise ParameterError(f"groups has {g.shape[0]} entries for {len(y)} examples")
    if len(set(g.tolist())) < 2:
        raise DataError("a grouped split needs at least two groups")
    tr, te = next(GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed).split(idx, y, g))
    if len(set(y[tr].tolist())) < len(counts) or len(set(y[te].tolist())) < 2:
        raise DataError("the grouped split left a class out of one side; use more groups or another seed")
    return np.sort(tr), np.sort(te)


def train_probes(
    x_train: torch.Tensor, y_train: np.ndarray, n_classes: int, config: ProbeConfig = ProbeConfig()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train P independent linear probes at once, full batch.

    ``x_train``: (P, N, F) features (probe p sees ``x_train[p]``); ``y_train``: (N,) codes.
    Returns ``(weight (P, F, C), bias (P, C))``. ``init="torch"`` draws every probe like a
    fresh ``nn.Linear(F, C)`` (uniform +-1/sqrt(F)) from a generator seeded with
    ``config.seed``, probe after probe.
    """
    if x_train.ndim != 3:
        raise ParameterError(f"x_train must be (P, N, F); got {tuple(x_train.shape)}")
    p, n, f = x_train.shape
    y = torch.as_tensor(np.asarray(y_train), dtype=torch.long)
    if y.shape != (n,):
        raise ParameterError(f"y_train has shape {tuple(y.shape)}; expected ({n},)")
    x = x_train.float()
    if config.init == "zeros":
        w = torch.zeros(p, f, n_classes)
        b = torch.zeros(p, n_classes)
    else:
        gen = torch.Generator().manual_seed(config.seed)
        bound = 1.0 / np.sqrt(f)
        w = torch.empty(p, f, n_classes)
        b = torch.empty(p, n_classes)
        for i in range(p):  # the order nn.Linear uses: weight (C, F) first, then bias
            w[i] = torch.empty(n_classes, f).uniform_(-bound, bound, generator=gen).T
            b[i] = torch.empty(n_classes).uniform_(-bound, bound, generator=gen)
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.Adam([w, b], lr=config.lr)
    target = y.unsqueeze(0).expand(p, n).reshape(-1)
    with torch.enable_grad():
        for _ in range(config.epochs):
            opt.zero_grad()
            logits = torch.baddbmm(b.unsqueeze(1), x, w)  # (P, N, C)
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(p * n, n_classes), target, reduction="none"
            ).reshape(p, n).mean(dim=1).sum()
            loss.backward()
            opt.step()
    return w.detach(), b.detach()


@dataclass
class ProbeResult:
    """Held-out results of a set of probes.

    ``table``: one row per probe (columns ``probe`` plus ``accuracy``, ``auroc``, ``ap``
    and any id columns such as ``layer``/``head``/``neuron``); ``scores``: (P, N_test, C)
    predicted probabilities on the test split; ``y_test``: (N_test,) codes; ``classes``:
    class names; ``positive``: the positive class index for binary AP (None if C > 2);
    ``train_idx``/``test_idx``: the split.
    """

    table: pd.DataFrame
    scores: np.ndarray
    y_test: np.ndarray
    classes: list
    positive: int | None
    train_idx: np.ndarray
    test_idx: np.ndarray


def binary_ap(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision of every column of ``scores`` (N, P) against binary ``y`` (N,),
    in one vectorised pass: scikit-learn's ``average_precision_score`` (ties share one
    threshold, AP = sum over thresholds of the recall step times the precision there),
    without its per-call validation, which costs milliseconds a call inside bootstraps.
    A 1-D ``scores`` gives a scalar. Every column needs a positive in ``y``."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    one = s.ndim == 1
    if one:
        s = s[:, None]
    if s.ndim != 2 or s.shape[0] != y.shape[0]:
        raise ParameterError(f"scores must be (N, P) with N = {y.shape[0]}; got {s.shape}")
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ParameterError("average precision needs at least one positive")
    n = s.shape[0]
    order = np.argsort(-s, axis=0, kind="stable")
    ss = np.take_along_axis(s, order, axis=0)
    ys = y[order].astype(np.float64)
    tp = np.cumsum(ys, axis=0)
    # a threshold ends where the next score differs (or at the last row); each row takes the
    # precision at the end of its tie group
    last = np.ones_like(ss, dtype=bool)
    last[:-1] = ss[1:] != ss[:-1]
    idx = np.where(last, np.arange(n)[:, None], n)
    end = np.minimum.accumulate(idx[::-1], axis=0)[::-1]
    prec = tp / np.arange(1, n + 1)[:, None]
    ap = (ys * np.take_along_axis(prec, end, axis=0)).sum(axis=0) / n_pos
    return float(ap[0]) if one else ap


def binary_auroc(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of every column of ``scores`` (N, P) against binary ``y``: the Mann-Whitney
    statistic with ties counted half (what scikit-learn's ``roc_auc_score`` computes by the
    trapezoid rule), vectorised. A 1-D ``scores`` gives a scalar."""
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    one = s.ndim == 1
    if one:
        s = s[:, None]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ParameterError("AUROC needs both classes")
    r = rankdata(s, axis=0, method="average")
    auc = (r[y].sum(axis=0) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return float(auc[0]) if one else auc


def _metrics_all(prob: np.ndarray, y: np.ndarray, n_classes: int, positive: int | None) -> list[tuple]:
    """``(accuracy, auroc, ap)`` of every probe in ``prob`` (P, N, C); binary probes in one
    vectorised pass (:func:`binary_ap`, :func:`binary_auroc`)."""
    if n_classes == 2 and 0 < int((y == positive).sum()) < len(y):
        acc = (prob.argmax(axis=2) == y[None, :]).mean(axis=1)
        s = prob[:, :, positive].T
        yt = y == positive
        return list(zip(acc.tolist(), binary_auroc(yt, s).tolist(), binary_ap(yt, s).tolist()))
    return [_metrics(prob[i], y, n_classes, positive) for i in range(prob.shape[0])]


def _metrics(prob: np.ndarray, y: np.ndarray, n_classes: int, positive: int | None) -> tuple[float, float, float]:
    acc = accuracy_score(y, prob.argmax(axis=1))
    if n_classes == 2:
        s = prob[:, positive]
        yt = (y == positive).astype(int)
        return acc, roc_auc_score(yt, s), average_precision_score(yt, s)
    onehot = np.eye(n_classes)[y]
    present = onehot.sum(axis=0) > 0
    auroc = roc_auc_score(onehot[:, present], prob[:, present], average="macro")
    ap = average_precision_score(onehot[:, present], prob[:, present], average="macro")
    return acc, auroc, ap


def _run(feats: torch.Tensor, labels: Sequence, ids: pd.DataFrame, config: ProbeConfig, positive, split,
         groups=None) -> ProbeResult:
    y, classes = encode_labels(labels)
    if feats.shape[1] != len(y):
        raise ParameterError(f"{feats.shape[1]} feature rows for {len(y)} labels")
    n_classes = len(classes)
    pos = None
    if n_classes == 2:
        if positive is None:
            pos = 1
        elif str(positive) in classes:
            pos = classes.index(str(positive))
        else:
            raise unknown("positive class", positive, classes)
    tr, te = split if split is not None else split_indices(y, config.test_size, config.seed, groups)
    x = feats.float()
    xtr, xte = x[:, tr], x[:, te]
    if config.standardize:
        mu = xtr.mean(dim=1, keepdim=True)
        sd = xtr.std(dim=1, keepdim=True).clamp_min(1e-8)
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    w, b = train_probes(xtr, y[tr], n_classes, config)
    prob = torch.softmax(torch.baddbmm(b.unsqueeze(1), xte, w), dim=-1).numpy()
    rows = _metrics_all(prob, y[te], n_classes, pos)
    table = ids.copy().reset_index(drop=True)
    table["accuracy"], table["auroc"], table["ap"] = (list(col) for col in zip(*rows))
    return ProbeResult(table=table, scores=prob, y_test=y[te], classes=classes, positive=pos,
                       train_idx=tr, test_idx=te)


def probe_heads(
    contributions: torch.Tensor,
    labels: Sequence,
    *,
    config: ProbeConfig = ProbeConfig(),
    positive=None,
    layer: int | None = None,
    split: tuple[np.ndarray, np.ndarray] | None = None,
    groups: Sequence | None = None,
) -> ProbeResult:
    """One fresh linear probe per head on its (D,) contribution vector.

    ``contributions``: (N, H, D) from :func:`fairvlm.clip_heads.head_contributions`;
    ``labels``: N group labels. ``split``: optional (train_idx, test_idx) to share one split
    across calls; otherwise :func:`split_indices` with ``groups`` (e.g. one id per
    counterfactual set, so a set never straddles the split). Returns a :class:`ProbeResult` whose table has one row per head
    (``head`` is 0-based; ``layer`` is added when given).
    """
    if contributions.ndim != 3:
        raise ParameterError(f"contributions must be (N, H, D); got {tuple(contributions.shape)}")
    n, h, _ = contributions.shape
    ids = pd.DataFrame({"head": np.arange(h)})
    if layer is not None:
        ids.insert(0, "layer", layer)
    return _run(contributions.permute(1, 0, 2), labels, ids, config, positive, split, groups)


def probe_neurons(
    contributions: torch.Tensor,
    labels: Sequence,
    heads: Sequence[int] | None = None,
    *,
    config: ProbeConfig = ProbeConfig(),
    positive=None,
    split: tuple[np.ndarray, np.ndarray] | None = None,
    groups: Sequence | None = None,
) -> ProbeResult:
    """One fresh one-feature probe per coordinate ("neuron") of the chosen heads' contributions.

    Returns a table with one row per (head, neuron).
    """
    if contributions.ndim != 3:
        raise ParameterError(f"contributions must be (N, H, D); got {tuple(contributions.shape)}")
    n, h, d = contributions.shape
    heads = list(range(h)) if heads is None else [int(x) for x in heads]
    for x in heads:
        if not 0 <= x < h:
            raise ParameterError(f"head {x} is out of range 0..{h - 1}")
    feats = contributions[:, heads, :].permute(1, 2, 0).reshape(len(heads) * d, n, 1)
    ids = pd.DataFrame({"head": np.repeat(heads, d), "neuron": np.tile(np.arange(d), len(heads))})
    return _run(feats, labels, ids, config, positive, split, groups)


def pr_curve(result: ProbeResult, row: int) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall arrays (scikit-learn) of probe ``row`` of a binary result."""
    if result.positive is None:
        raise ParameterError("pr_curve needs a binary probe (two classes)")
    if not 0 <= row < result.scores.shape[0]:
        raise ParameterError(f"row {row} is out of range 0..{result.scores.shape[0] - 1}")
    precision, recall, _ = precision_recall_curve(
        (result.y_test == result.positive).astype(int), result.scores[row][:, result.positive]
    )
    return precision, recall


def select_experts(table: pd.DataFrame, rule: str = "top_k", *, k: int = 3, threshold: float = 0.75) -> list[int]:
    """Expert heads from a probe table (columns ``head``, ``ap``, ``auroc``).

    ``rule="top_k"``: the ``k`` heads with the highest AP (ties: higher AUROC, then lower
    head index). ``rule="threshold"``: every head with AP > ``threshold``. Returns the
    0-based head indices in ascending order.
    """
    if not {"head", "ap", "auroc"} <= set(table.columns):
        raise ParameterError("the probe table needs the columns head, ap and auroc")
    if rule == "top_k":
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(table):
            raise ParameterError(f"k={k!r} must be an integer in [1, {len(table)}]")
        ranked = table.sort_values(["ap", "auroc", "head"], ascending=[False, False, True], kind="stable")
        return sorted(int(x) for x in ranked["head"].head(k))
    if rule == "threshold":
        return sorted(int(x) for x in table.loc[table["ap"] > threshold, "head"])
    raise unknown("expert rule", rule, ("top_k", "threshold"))


# ------------------------------------------------------------------------------ issue 14 additions
def default_k(n_heads: int) -> int:
    """The default number of experts: a quarter of the heads, at least one (the paper's 3
    of ViT-B/32's 12). With ``k`` close to the number of heads the comparison between
    experts and the other heads would be empty."""
    if isinstance(n_heads, bool) or not isinstance(n_heads, (int, np.integer)) or n_heads < 1:
        raise ParameterError(f"n_heads={n_heads!r} must be a positive integer")
    return max(1, int(n_heads) // 4)


def logreg_newton(x: np.ndarray, y: np.ndarray, *, c: float = 1.0, max_iter: int = 100,
                  tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """L2-regularised binary logistic regressions, one per leading slice of ``x`` (P, N, F),
    fitted together by Newton's method with step halving: the minimiser of
    ``0.5 |w|^2 + c * sum log-loss`` (intercept not penalised), which is what
    scikit-learn's ``LogisticRegression(C=c)`` approaches with lbfgs. ``y``: (N,) in {0, 1}.
    Returns ``(w (P, F), b (P,))``."""
    x = np.asarray(x, dtype=np.float64)
    t = np.asarray(y, dtype=np.float64)
    if x.ndim != 3 or t.shape != (x.shape[1],) or not np.isin(t, (0.0, 1.0)).all():
        raise ParameterError("logreg_newton needs x (P, N, F) and y (N,) in {0, 1}")
    p, n, f = x.shape
    xa = np.concatenate([x, np.ones((p, n, 1))], axis=2)
    reg = np.ones(f + 1)
    reg[-1] = 0.0
    theta = np.zeros((p, f + 1))

    def objective(th):
        z = np.einsum("pnf,pf->pn", xa, th)
        return 0.5 * (th[:, :-1] ** 2).sum(1) + c * (np.logaddexp(0.0, z) - t * z).sum(1)

    obj = objective(theta)
    for _ in range(max_iter):
        z = np.einsum("pnf,pf->pn", xa, theta)
        q = 1.0 / (1.0 + np.exp(-z))
        grad = c * np.matmul(xa.transpose(0, 2, 1), (q - t)[..., None])[..., 0] + reg * theta
        hess = c * np.matmul(xa.transpose(0, 2, 1) * (q * (1.0 - q))[:, None, :], xa) + np.diag(reg)[None]
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        lr = np.ones(p)
        for _ in range(30):                         # halve each probe's step until its objective falls
            new = theta - lr[:, None] * step
            nobj = objective(new)
            bad = nobj > obj + 1e-12 * np.abs(obj)
            if not bad.any():
                break
            lr = np.where(bad, lr / 2, lr)
        theta, obj = new, nobj
        if np.abs(lr[:, None] * step).max() < tol:
            break
    return theta[:, :-1], theta[:, -1]


def probe_heads_logreg(
    contributions: torch.Tensor, labels: Sequence, *, split: tuple[np.ndarray, np.ndarray],
    positive=None, seed: int = 0, max_iter: int = 2000,
) -> ProbeResult:
    """A converged probe per head: scikit-learn ``LogisticRegression`` (L2, C=1, lbfgs run
    to convergence) on the standardized contribution, same split and metrics as
    :func:`probe_heads`. The paper's ten Adam steps stop long before convergence; this is
    what a probe that has finished learning reads from each head."""
    from sklearn.linear_model import LogisticRegression

    if contributions.ndim != 3:
        raise ParameterError(f"contributions must be (N, H, D); got {tuple(contributions.shape)}")
    y, classes = encode_labels(labels)
    tr, te = split
    pos = None
    if len(classes) == 2:
        pos = 1 if positive is None else classes.index(str(positive))
    x = contributions.float().numpy()
    if len(classes) == 2:   # every head at once by Newton's method: the same optimum as lbfgs, without its loop
        xtr = x[tr].transpose(1, 0, 2).astype(np.float64)
        xte = x[te].transpose(1, 0, 2).astype(np.float64)
        mu, sd = xtr.mean(1, keepdims=True), np.clip(xtr.std(1, ddof=1, keepdims=True), 1e-8, None)
        w, b = logreg_newton((xtr - mu) / sd, y[tr], c=1.0, max_iter=min(max_iter, 100))
        p1 = 1.0 / (1.0 + np.exp(-(np.einsum("hnf,hf->hn", (xte - mu) / sd, w) + b[:, None])))
        prob = np.stack([1.0 - p1, p1], axis=-1)
    else:
        probs = []
        for h in range(x.shape[1]):
            xtr, xte = x[tr, h], x[te, h]
            mu, sd = xtr.mean(0), np.clip(xtr.std(0, ddof=1), 1e-8, None)
            clf = LogisticRegression(max_iter=max_iter, random_state=seed).fit((xtr - mu) / sd, y[tr])
            probs.append(clf.predict_proba((xte - mu) / sd))
        prob = np.stack(probs)
    rows = _metrics_all(prob, y[te], len(classes), pos)
    table = pd.DataFrame({"head": np.arange(x.shape[1])})
    table["accuracy"], table["auroc"], table["ap"] = (list(c) for c in zip(*rows))
    return ProbeResult(table=table, scores=prob, y_test=y[te], classes=classes, positive=pos,
                       train_idx=tr, test_idx=te)


def probe_heads_warm_start(
    contributions: torch.Tensor, labels: Sequence, *, split: tuple[np.ndarray, np.ndarray],
    config: ProbeConfig = ProbeConfig(init="torch", standardize=False), positive=None,
) -> ProbeResult:
    """The authors' script, as a trap: *one* ``nn.Linear`` probe and one Adam optimizer
    carried from head to head in index order, ``config.epochs`` full-batch steps on each
    head, scored on that head after its steps. Head ``h`` is then read by a probe that has
    had about ``epochs * (h + 1)`` steps, so later heads look better whatever they encode."""
    if contributions.ndim != 3:
        raise ParameterError(f"contributions must be (N, H, D); got {tuple(contributions.shape)}")
    y, classes = encode_labels(labels)
    tr, te = split
    c = len(classes)
    pos = None
    if c == 2:
        pos = 1 if positive is None else classes.index(str(positive))
    x = contributions.float()
    d = x.shape[2]
    gen = torch.Generator().manual_seed(config.seed)
    bound = 1.0 / np.sqrt(d)
    w = torch.empty(c, d).uniform_(-bound, bound, generator=gen).T.contiguous().requires_grad_(True)
    b = torch.empty(c).uniform_(-bound, bound, generator=gen).requires_grad_(True)
    opt = torch.optim.Adam([w, b], lr=config.lr)
    yt = torch.as_tensor(y[tr], dtype=torch.long)
    probs = []
    for h in range(x.shape[1]):
        xtr, xte = x[tr, h], x[te, h]
        if config.standardize:
            mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-8)
            xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
        with torch.enable_grad():
            for _ in range(config.epochs):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(xtr @ w + b, yt).backward()
                opt.step()
        with torch.no_grad():
            probs.append(torch.softmax(xte @ w + b, dim=-1).numpy())
    prob = np.stack(probs)
    rows = _metrics_all(prob, y[te], c, pos)
    table = pd.DataFrame({"head": np.arange(x.shape[1])})
    table["accuracy"], table["auroc"], table["ap"] = (list(v) for v in zip(*rows))
    return ProbeResult(table=table, scores=prob, y_test=y[te], classes=classes, positive=pos,
                       train_idx=tr, test_idx=te)


def expert_gap(table: pd.DataFrame, experts: Sequence[int]) -> float:
    """Mean AP of the ``experts`` minus mean AP of the other heads (NaN when either set is empty)."""
    e = table["head"].isin(list(experts))
    if not e.any() or e.all():
        return float("nan")
    return float(table.loc[e, "ap"].mean() - table.loc[~e, "ap"].mean())


def expert_gap_test(result: ProbeResult, contributions: torch.Tensor, labels: Sequence, *, k: int,
                    config: ProbeConfig = ProbeConfig(), positive=None, n_shuffles: int = 20,
                    n_boot: int = 500, seed: int = 0) -> dict:
    """The expert-vs-other AP gap with its interval and a shuffled-label null.

    Effect: :func:`expert_gap` of the top-``k`` heads of ``result``; interval: the test
    images resampled (seeded), every head's AP recomputed from its stored scores, experts
    kept fixed. Null: the same gap after training on *shuffled* labels (same split) and
    picking the top ``k`` again -- what selecting the best ``k`` of the heads yields when no
    head knows the label (median and 2.5 / 97.5 percentiles over ``n_shuffles``).
    """
    from sklearn.metrics import average_precision_score

    if result.positive is None:
        raise ParameterError("expert_gap_test needs a binary probe (two classes)")
    experts = select_experts(result.table, "top_k", k=k)
    effect = expert_gap(result.table, experts)
    rng = np.random.default_rng(seed)
    yt = (result.y_test == result.positive).astype(int)
    emask = result.table["head"].isin(experts).to_numpy()
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(yt), len(yt))
        if yt[i].min() == yt[i].max():
            continue
        ap = np.array([average_precision_score(yt[i], result.scores[h][i, result.positive])
                       for h in range(result.scores.shape[0])])
        boots.append(ap[emask].mean() - ap[~emask].mean())
    lab = np.asarray([str(x) for x in labels])
    nulls = []
    for s in range(n_shuffles):
        perm = lab.copy()
        perm[result.train_idx] = rng.permutation(lab[result.train_idx])
        perm[result.test_idx] = rng.permutation(lab[result.test_idx])
        t = probe_heads(contributions, perm, config=config, positive=positive,
                        split=(result.train_idx, result.test_idx)).table
        nulls.append(expert_gap(t, select_experts(t, "top_k", k=k)))
    nan = float("nan")
    return {"experts": experts, "effect": effect,
            "interval": (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))) if boots else (nan, nan),
            "null": float(np.median(nulls)), "null_interval": (float(np.percentile(nulls, 2.5)),
                                                                float(np.percentile(nulls, 97.5)))}


#: Table 1 of the CLIP-heads paper as the verdict table prints it.
EXPERT_CLAIM = "Table 1: a few last-layer heads carry gender (ViT-B/32 heads 3, 11, 12)"


def expert_claim(model: str, k: int, n_heads: int) -> str:
    """Table 1's claim as tested on ``model``: ``k`` of its ``n_heads`` last-layer heads,
    with the paper's ViT-B/32 finding named as the paper's, not as this model's."""
    return (f"Table 1: a few last-layer heads carry gender (here the best {k} of {model}'s {n_heads}; "
            "paper: heads 3, 11, 12 of ViT-B/32's 12)")


def _head_aps(result: ProbeResult, idx: np.ndarray, y: np.ndarray) -> np.ndarray:
    return binary_ap(y[idx], result.scores[:, idx, result.positive].T)


def expert_gap_verdict(result: ProbeResult, contributions: torch.Tensor, labels: Sequence, *, k: int,
                       groups: Sequence | None = None, config: ProbeConfig = ProbeConfig(), positive=None,
                       n_shuffles: int = 10, n_boot: int = 500, min_effect: float = 0.05, seed: int = 0,
                       model: str | None = None):
    """Table 1 decided by the protocol (:mod:`fairvlm.verdicts`), with the experts chosen on
    images apart from those that score them. Returns ``(experts, details, verdict)``.

    The test split of ``result`` is cut in two by counterfactual set (``groups``, one id per
    image of the probe set; alternate sets in sorted order): on the *selection* half the
    top-``k`` heads by AP are the experts; on the *scoring* half the effect is their mean AP
    minus the other heads'. Control: the same procedure, probes included, on labels
    shuffled within the train and test splits (``n_shuffles`` times, gaps averaged), where
    picking the best ``k`` heads still yields a gap, but not from any knowledge. The
    difference is bootstrapped over the scoring half's sets (``n_boot`` percentile
    resamples, every AP recomputed from the stored scores), paired: the same images score
    the real and the shuffled probes. Precondition: the real probes read the attribute at
    all (their best head's AP on the scoring half is above the positive share, AP's chance).
    ``model``: the probed model's name; the claim then names what it has (``k`` of its
    heads) beside the paper's ViT-B/32 experts (:func:`expert_claim`).
    """
    from fairvlm.verdicts import Claim, judge_estimates

    if result.positive is None:
        raise ParameterError("expert_gap_verdict needs a binary probe (two classes)")
    n_heads = result.scores.shape[0]
    if not 1 <= int(k) < n_heads:
        raise ParameterError(f"k={k!r} must lie in [1, {n_heads - 1}] so that other heads remain")
    claim = Claim(EXPERT_CLAIM if model is None else expert_claim(model, int(k), n_heads), "other", "greater",
                  min_effect=min_effect, effect_ref=0.0)
    test_groups = (np.asarray(result.test_idx) if groups is None else np.asarray(groups)[result.test_idx])
    sets = np.array(sorted(set(test_groups.tolist())))
    sel = np.isin(test_groups, sets[0::2])
    sel_idx, score_idx = np.flatnonzero(sel), np.flatnonzero(~sel)
    rng = np.random.default_rng(seed)
    lab = np.asarray([str(x) for x in labels])

    def pick_and_gap(res: ProbeResult):
        y = (res.y_test == res.positive).astype(int)
        if len(set(y[sel_idx])) < 2 or len(set(y[score_idx])) < 2:
            return None, None, y
        experts = [int(h) for h in np.argsort(-_head_aps(res, sel_idx, y), kind="stable")[:k]]
        return experts, np.isin(np.arange(n_heads), experts), y

    experts, emask, y = pick_and_gap(result)
    details = {"experts": experts, "n_selection": int(len(sel_idx)), "n_scoring": int(len(score_idx)),
               "n_sets_scoring": int(len(set(test_groups[score_idx].tolist())))}
    if experts is None:
        from fairvlm.verdicts import judge
        return experts, details, judge(claim, [], [], testable=False,
                                       why="a half of the test split holds one class only")
    shuffled = []
    for _ in range(n_shuffles):
        perm = lab.copy()
        perm[result.train_idx] = rng.permutation(lab[result.train_idx])
        perm[result.test_idx] = rng.permutation(lab[result.test_idx])
        r = probe_heads(contributions, perm, config=config, positive=positive,
                        split=(result.train_idx, result.test_idx))
        se, sm, sy = pick_and_gap(r)
        if se is not None:
            shuffled.append((r, sm, sy))

    def gaps(idx):
        ap = _head_aps(result, idx, y)
        g = ap[emask].mean() - ap[~emask].mean()
        c = [(lambda a: a[m].mean() - a[~m].mean())(_head_aps(r, idx, yy)) for r, m, yy in shuffled]
        return g, float(np.mean(c)) if c else float("nan"), ap.max()

    eff, ctl, best = gaps(score_idx)
    chance = float(y[score_idx].mean())
    score_sets = test_groups[score_idx]
    uniq = np.array(sorted(set(score_sets.tolist())))
    members = {g: score_idx[score_sets == g] for g in uniq}
    boots = []
    for _ in range(n_boot):
        idx = np.concatenate([members[g] for g in rng.choice(uniq, size=len(uniq), replace=True)])
        if len(set(y[idx])) < 2 or any(len(set(yy[idx])) < 2 for _, _, yy in shuffled):
            continue
        g, c, _ = gaps(idx)
        boots.append((g, g - c))
    boots = np.array(boots) if boots else np.full((0, 2), np.nan)
    lo_hi = lambda j: (float(np.percentile(boots[:, j], 2.5)), float(np.percentile(boots[:, j], 97.5))) \
        if len(boots) else (float("nan"), float("nan"))
    details.update(effect=float(eff), control=float(ctl), best_ap=float(best), ap_chance=chance,
                   n_shuffles=len(shuffled), n_boot=int(len(boots)))
    testable = bool(best > chance) and len(shuffled) > 0
    why = "" if testable else (f"no head's AP ({best:.3f}) on the scoring images exceeds chance ({chance:.3f})"
                               if best <= chance else "no shuffled-label probe could be scored")
    v = judge_estimates(claim, float(eff), lo_hi(0), float(ctl), float(eff - ctl), lo_hi(1), n_units=len(uniq),
                        testable=testable, why=why)
    return experts, details, v


def random_heads(table: pd.DataFrame, experts: Sequence[int], *, n_draws: int = 5, seed: int = 0) -> list[list[int]]:
    """``n_draws`` random sets of non-expert heads, each as large as ``experts`` (as many as
    there are non-experts when those are fewer), drawn without regard to AP: the control
    an expert-head edit is measured against is an edit of heads picked like the experts,
    minus the knowledge. Distinct sets where the heads allow."""
    e = _expert_mask(table, experts)
    others = table.loc[~e, "head"].astype(int).to_numpy()
    size = min(int(e.sum()), len(others))
    if not isinstance(n_draws, (int, np.integer)) or isinstance(n_draws, bool) or n_draws < 1:
        raise ParameterError(f"n_draws={n_draws!r} must be an integer >= 1")
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    for _ in range(50 * n_draws):
        draw = tuple(sorted(int(h) for h in rng.choice(others, size=size, replace=False)))
        if draw not in seen:
            seen.add(draw)
            out.append(list(draw))
        if len(out) == n_draws:
            break
    return out


def trap_table(contributions: torch.Tensor, labels: Sequence, *, experts: Sequence[int], k: int,
               groups: Sequence | None = None, positive=None, seeds: Sequence[int] = range(5)) -> pd.DataFrame:
    """How the expert list depends on the probe recipe, over split ``seeds``.

    Recipes: the book's default (grouped split, zero start, standardized), the paper's
    literal recipe (PyTorch init, raw features), a converged logistic regression, the
    authors' warm-started sequential probe (:func:`probe_heads_warm_start`) and, with
    ``groups``, a plain random split that splits counterfactual sets apart. One row per
    (recipe, seed): mean AUROC / AP over heads, max AP, whether the top-``k`` heads equal
    ``experts``, and the heads it picks (1-based).
    """
    def run(recipe, s, split):
        if recipe == "logreg":
            return probe_heads_logreg(contributions, labels, split=split, positive=positive, seed=s)
        if recipe == "warm":
            return probe_heads_warm_start(contributions, labels, split=split, positive=positive,
                                          config=ProbeConfig(seed=s, init="torch", standardize=False))
        if recipe == "random split":
            return probe_heads(contributions, labels, config=ProbeConfig(seed=s), positive=positive)
        return probe_heads(contributions, labels, config=ProbeConfig(seed=s, **recipe), positive=positive,
                           split=split)

    y, _ = encode_labels(labels)
    out = []
    for s in seeds:
        split = split_indices(y, 0.2, s, groups)
        recipes = {
            "book default (grouped split, zero init, standardized)": {},
            "paper recipe (PyTorch init, raw features, 10 Adam steps)": {"init": "torch", "standardize": False},
            "converged logistic regression": "logreg",
            "authors' warm-started sequential probe": "warm",
        }
        if groups is not None:
            recipes["random split (counterfactual sets split apart)"] = "random split"
        for name, recipe in recipes.items():
            t = run(recipe, s, split).table
            top = select_experts(t, "top_k", k=k)
            out.append({"probe": name, "seed": s, "mean_auroc": t["auroc"].mean(), "mean_ap": t["ap"].mean(),
                        "max_ap": t["ap"].max(), "same_experts_as_default": set(top) == set(experts),
                        "experts_1based": ",".join(str(h + 1) for h in top)})
    return pd.DataFrame(out)


# ------------------------------------------------------------------------------ tables of chapter 07
def head_table(results: Mapping[str, ProbeResult], experts: Mapping[str, Sequence[int]]) -> pd.DataFrame:
    """The head probes of several attributes in one long table.

    ``results``: ``{attribute: ProbeResult}`` from :func:`probe_heads`; ``experts``:
    ``{attribute: 0-based expert heads}``. Returns the rows of every result's table, in the
    order of ``results``, with ``attribute``, ``head_1based`` and ``expert`` (whether the
    head is one of that attribute's experts) added.
    """
    missing = [a for a in results if a not in experts]
    if missing:
        raise ParameterError(f"experts has no entry for {missing}; give the expert heads of every attribute "
                             f"in results ({list(results)})")
    table = pd.concat([r.table.assign(attribute=a) for a, r in results.items()], ignore_index=True)
    table["head_1based"] = table["head"] + 1
    table["expert"] = [int(h) in set(experts[a]) for h, a in zip(table["head"], table["attribute"])]
    return table


def wide_head_table(table: pd.DataFrame, extra: Mapping[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """:func:`head_table` pivoted for reading: one row per attribute (sorted), then one per
    ``extra`` table (``{row name: table with head, accuracy, ap}``, e.g. a converged
    logistic regression), and the columns ``h:<head> Acc`` and ``h:<head> AP`` by 1-based
    head, in head order."""
    need = {"attribute", "head_1based", "accuracy", "ap"}
    if not need <= set(table.columns):
        raise ParameterError(f"the table needs the columns {sorted(need)} (head_table() output); "
                             f"missing {sorted(need - set(table.columns))}")
    wide = table.pivot_table(index="attribute", columns="head_1based", values=["accuracy", "ap"])
    for name, t in (extra or {}).items():
        wide.loc[name] = t.assign(head_1based=t["head"] + 1).set_index("head_1based")[["accuracy", "ap"]].unstack()
    wide = wide.swaplevel(axis=1).sort_index(axis=1)
    wide.columns = [f"h:{h} {m.replace('accuracy', 'Acc').replace('ap', 'AP')}" for h, m in wide.columns]
    return wide


def _expert_mask(table: pd.DataFrame, experts: Sequence[int]) -> pd.Series:
    if "head" not in table.columns or "ap" not in table.columns:
        raise ParameterError("the probe table needs the columns head and ap")
    e = table["head"].isin([int(h) for h in experts])
    if not e.any() or e.all():
        raise ParameterError(f"experts={list(experts)} must name some but not all of the {len(table)} heads "
                             "of the table, so there are experts and other heads to compare")
    return e


def expert_other_ap(table: pd.DataFrame, experts: Sequence[int]) -> tuple[float, float]:
    """Mean held-out AP of the ``experts`` and of the other heads of a probe table
    (their difference is :func:`expert_gap`)."""
    e = _expert_mask(table, experts)
    return float(table.loc[e, "ap"].mean()), float(table.loc[~e, "ap"].mean())


def control_heads(table: pd.DataFrame, experts: Sequence[int], k: int | None = None) -> list[int]:
    """The ``k`` heads with the lowest AP among the non-experts (default ``k``: as many as
    there are experts; ties keep table order), lowest AP first: the control heads an
    expert-head effect is measured against. With more experts than other heads the default
    takes every other head."""
    e = _expert_mask(table, experts)
    k = min(int(e.sum()), int((~e).sum())) if k is None else k
    n_other = int((~e).sum())
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_other:
        raise ParameterError(f"k={k!r} must be an integer in [1, {n_other}] (the number of non-expert heads)")
    return table.loc[~e].sort_values("ap", kind="stable")["head"].head(int(k)).astype(int).tolist()


def probe_layers(contributions: Iterable[tuple[int, torch.Tensor]], labels: Sequence, *,
                 config: ProbeConfig = ProbeConfig(), positive=None,
                 split: tuple[np.ndarray, np.ndarray] | None = None) -> pd.DataFrame:
    """:func:`probe_heads` on several layers, one table (columns ``layer``, ``head``,
    ``accuracy``, ``auroc``, ``ap``). ``contributions``: ``(layer, (N, H, D) tensor)`` pairs,
    consumed one at a time (a generator keeps only one layer's contributions in memory);
    ``split`` shares one split across the layers."""
    tables = [probe_heads(c, labels, config=config, positive=positive, layer=int(li), split=split).table
              for li, c in contributions]
    if not tables:
        raise ParameterError("contributions is empty; pass (layer, contributions) pairs for at least one layer")
    return pd.concat(tables, ignore_index=True)


def layer_head_grid(table: pd.DataFrame, value: str = "ap") -> pd.DataFrame:
    """A :func:`probe_layers` table as a layers x heads grid of ``value``, labelled 1-based
    (``L1``.. rows, ``h1``.. columns) for a heatmap."""
    if not {"layer", "head", value} <= set(table.columns):
        raise ParameterError(f"the table needs the columns layer, head and {value} (probe_layers() output)")
    grid = table.pivot(index="layer", columns="head", values=value)
    grid.index = [f"L{i + 1}" for i in grid.index]
    grid.columns = [f"h{h + 1}" for h in grid.columns]
    return grid


def best_layer(table: pd.DataFrame) -> int:
    """The (0-based) layer of a :func:`probe_layers` table that holds the head with the highest AP."""
    if not {"layer", "ap"} <= set(table.columns) or table.empty:
        raise ParameterError("the table needs rows with the columns layer and ap (probe_layers() output)")
    return int(table.groupby("layer")["ap"].max().idxmax())


def trap_summary(trap: pd.DataFrame) -> pd.DataFrame:
    """A :func:`trap_table` averaged over split seeds, one row per recipe (in table order):
    mean AUROC, mean AP and max AP, ``expert_set_agreement`` (the share of seeds whose top
    heads equal the book's experts) and the distinct expert lists picked, in order of
    appearance."""
    need = {"probe", "mean_auroc", "mean_ap", "max_ap", "same_experts_as_default", "experts_1based"}
    if not need <= set(trap.columns):
        raise ParameterError(f"the table needs the columns of trap_table(); missing {sorted(need - set(trap.columns))}")
    return trap.groupby("probe", sort=False).agg(
        mean_auroc=("mean_auroc", "mean"), mean_ap=("mean_ap", "mean"), max_ap=("max_ap", "mean"),
        expert_set_agreement=("same_experts_as_default", "mean"),
        experts_picked=("experts_1based", lambda x: "; ".join(dict.fromkeys(x))))


def split_neurons(neuron_table: pd.DataFrame, experts: Sequence[int]) -> tuple[pd.DataFrame, dict]:
    """Mark the neurons of a :func:`probe_neurons` table as ``expert`` (a neuron of one of
    the ``experts``) or ``other`` in a ``kind`` column, and return the held-out APs of each
    kind: ``(table, {"expert": array, "other": array})``."""
    if not {"head", "ap"} <= set(neuron_table.columns):
        raise ParameterError("the neuron table needs the columns head and ap (probe_neurons() output)")
    table = neuron_table.assign(kind=np.where(neuron_table["head"].isin([int(h) for h in experts]), "expert", "other"))
    return table, {k: table.loc[table["kind"] == k, "ap"].to_numpy(float) for k in ("expert", "other")}


def ap_chance(result: ProbeResult) -> float:
    """AP's chance level for a binary probe: the share of the positive class in the test
    split (the expected AP of a random ranking)."""
    if result.positive is None:
        raise ParameterError("ap_chance needs a binary probe (two classes)")
    return float((result.y_test == result.positive).mean())


# ------------------------------------------------------------------------------ chapter 07's probe figures
# matplotlib and seaborn are imported inside the plot functions, as fairvlm.plotting does,
# so that importing the probes does not load a plotting backend.
def plot_pr_curves(result: ProbeResult, experts: Sequence[int], *, attribute: str = "gender",
                   where: str = "last layer", ax=None):
    """Precision-recall curves of every probe of a binary :func:`probe_heads` result, one
    line per head in table order: the ``experts`` (0-based heads) drawn bold and labelled
    ``h:<1-based head>``, the other heads thin and faded. The title names the
    ``attribute``, ``where`` the probes read and the positive class. Draws on ``ax`` (or a
    new 5.2 x 3.6 in figure) and returns the figure."""
    import matplotlib.pyplot as plt

    if result.positive is None:
        raise ParameterError("plot_pr_curves needs a binary probe result (two classes)")
    heads = [int(h) for h in result.table["head"]]
    missing = sorted(set(int(h) for h in experts) - set(heads))
    if missing:
        raise ParameterError(f"experts {missing} are not heads of the probe table (heads {heads})")
    experts = {int(h) for h in experts}
    if ax is None:
        _, ax = plt.subplots(figsize=(5.2, 3.6))
    for row, h in enumerate(heads):
        prec, rec = pr_curve(result, row)
        ax.plot(rec, prec, lw=1.6 if h in experts else 0.8, alpha=1.0 if h in experts else 0.45,
                label=f"h:{h + 1}" if h in experts else None)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"{attribute.capitalize()} probes, {where} (positive = {result.classes[result.positive]}); "
                 "experts labelled")
    ax.legend(frameon=False, fontsize=8)
    return ax.figure


def plot_layer_head_ap(table: pd.DataFrame, *, value: str = "ap", label: str = "held-out AP (gender)", ax=None):
    """A :func:`probe_layers` table as a layers x heads heatmap of ``value``
    (:func:`layer_head_grid`, viridis, cells annotated when there are at most 12 heads,
    colour bar titled ``label``). Draws on ``ax`` (or a new figure sized to the grid) and
    returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    grid = layer_head_grid(table, value)
    n_layers, n_heads = grid.shape
    if ax is None:
        _, ax = plt.subplots(figsize=(0.55 * n_heads + 2, 0.4 * n_layers + 1.2))
    sns.heatmap(grid, annot=n_heads <= 12, fmt=".2f", cmap="viridis", ax=ax, cbar_kws={"label": label})
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    return ax.figure


def plot_neuron_aps(neurons: pd.DataFrame, experts: Sequence[int], others: Sequence[int], *, threshold: float,
                    attribute: str = "gender"):
    """Histograms of the held-out AP of every neuron of each head: the ``experts`` in the
    top row (first palette colour), the ``others`` (e.g. :func:`control_heads`, at most as
    many) in the bottom row (second colour), 25 bins, shared axes, a dashed line at
    ``threshold``. ``neurons``: a :func:`probe_neurons` table (``head``, ``ap``). Returns
    the new figure (2 x ``len(experts)`` panels)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    experts, others = [int(h) for h in experts], [int(h) for h in others]
    if not {"head", "ap"} <= set(neurons.columns):
        raise ParameterError("neurons needs the columns head and ap (probe_neurons() output)")
    if not experts or len(others) > len(experts):
        raise ParameterError(f"experts={experts} must be non-empty and others={others} at most as long "
                             "(one row of panels each)")
    missing = sorted(set(experts + others) - set(neurons["head"].astype(int)))
    if missing:
        raise ParameterError(f"heads {missing} have no neurons in the table")
    fig, axes = plt.subplots(2, len(experts), figsize=(2.6 * len(experts) + 1, 4.2), sharex=True, sharey=True,
                             squeeze=False)
    for row, hs in enumerate([experts, others]):
        for col, h in enumerate(hs):
            ax = axes[row, col]
            sns.histplot(neurons.loc[neurons["head"] == h, "ap"], bins=25, ax=ax, color=sns.color_palette()[row])
            ax.axvline(threshold, color="k", lw=0.8, ls="--")
            ax.set_title(f"{'expert' if row == 0 else 'other'} h:{h + 1}", fontsize=9)
            ax.set_xlabel(f"neuron AP ({attribute})")
    return fig
