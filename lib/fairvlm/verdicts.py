"""One rule for every "Paper vs this book" verdict.

A verdict is a measurement, not an opinion. Each claim of a paper is checked by

1. an **effect** measured in the chapter's own run (a mean, a gap, a change, a ratio),
2. its **95% interval** (seeded bootstrap over items or scenes: :func:`bootstrap_ci`),
3. a **null** or **control** measured in the same run (chance level, a random ranking,
   shuffled labels, a random direction, a content-free label) with its own interval,

and the rule :func:`decide` turns the three into one of four words:

``reproduced``
    the whole interval of the effect lies beyond the null's interval, in the direction
    the paper claims (and clears ``min_effect`` beyond the null, when a claim names a size);
``partly``
    the point estimate lies beyond the null's interval in the paper's direction, but the
    effect's interval still overlaps it (or the effect is smaller than ``min_effect``);
``not reproduced``
    the point estimate lies inside the null's interval or on the other side of it;
``not testable here``
    the run cannot tell: the caller says so (``testable=False`` with a reason: the model
    encodes nothing for the method to remove, a timing is invalid, data are missing), or
    the effect, its interval or the null is not a finite number.

Claims of *no change* ("accuracy stays within a point", "the balanced controls stay put")
use ``direction="within"`` with a tolerance: reproduced when the effect's whole interval
lies inside ``null +- tol``, partly when only the point estimate does.

An effect whose point estimate sits inside the null's interval can never be called
reproduced; the unit tests check that on constructed cases.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fairvlm.errors import FairVLMError

VERDICTS = ("reproduced", "partly", "not reproduced", "not testable here")
DIRECTIONS = ("greater", "less", "within")


class VerdictError(FairVLMError, ValueError):
    """A verdict asked for with inputs the rule cannot use."""


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def bootstrap_ci(
    *samples,
    statistic: Callable = np.mean,
    paired: bool = False,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Seeded percentile bootstrap interval of ``statistic(*samples)``.

    ``samples`` are 1-D arrays (items or scenes); with ``paired=True`` they are resampled
    together (same indices), as for a per-item before/after difference. ``statistic``
    takes the samples and an ``axis`` keyword (``np.mean`` does; for a difference of means
    pass ``lambda a, b, axis=-1: a.mean(axis) - b.mean(axis)``). Uses
    :func:`scipy.stats.bootstrap` with the percentile method (BCa is undefined on the
    constant samples a saturated metric produces). Returns ``(nan, nan)`` for fewer than
    two items, so that :func:`decide` says "not testable here" instead of guessing.
    """
    from scipy import stats

    if not samples:
        raise VerdictError("bootstrap_ci needs at least one sample (an array of per-item values)")
    arrays = []
    for i, s in enumerate(samples):
        a = np.asarray(s, dtype=float).ravel()
        if a.size and not np.isfinite(a).all():
            raise VerdictError(f"bootstrap_ci: sample {i} holds NaN or inf; drop or fix those items first")
        arrays.append(a)
    if not 0 < level < 1:
        raise VerdictError(f"bootstrap_ci: level={level!r} must lie in (0, 1)")
    if any(a.size < 2 for a in arrays):
        return (float("nan"), float("nan"))
    if paired and len({a.size for a in arrays}) != 1:
        raise VerdictError("bootstrap_ci(paired=True) needs samples of equal length (one value per item)")
    if all(np.ptp(a) == 0 for a in arrays):  # constant samples: the bootstrap has no spread
        value = float(statistic(*arrays, axis=-1))
        return (value, value)
    res = stats.bootstrap(
        tuple(arrays), statistic, paired=paired, vectorized=True, n_resamples=n_resamples,
        confidence_level=level, method="percentile", random_state=np.random.default_rng(seed),
    )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def change_interval(change, *, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """95% interval of the mean per-item change of a 0/1 outcome (``after - before``, each
    in {-1, 0, 1}), for claims of *no change*.

    The bootstrap of :func:`bootstrap_ci` collapses to ``(0, 0)`` when no item changed, which
    would let 20 questions "prove" that nothing moves by less than one question in 20. Then
    the rule of three is used instead: with no change among ``n`` items, the share of items
    that change is below ``3 / n`` with 95% confidence, so the interval is ``(-3/n, 3/n)``.
    Otherwise the seeded percentile bootstrap over items. ``(nan, nan)`` below two items.
    """
    d = np.asarray(change, dtype=float).ravel()
    if d.size and not np.isfinite(d).all():
        raise VerdictError("change_interval: the changes hold NaN or inf")
    if d.size and (np.abs(d) > 1).any():
        raise VerdictError("change_interval: each change must lie in [-1, 1] (after - before of a 0/1 outcome)")
    if d.size < 2:
        return (float("nan"), float("nan"))
    if not d.any():
        if not math.isclose(level, 0.95):
            raise VerdictError("change_interval: the rule of three is a 95% bound; use level=0.95")
        b = min(1.0, 3.0 / d.size)
        return (-b, b)
    return bootstrap_ci(d, seed=seed, level=level)


def subset_mean_pvalue(values, mask, *, alternative: str = "less", max_exact: int = 50_000,
                       n_perm: int = 20_000, seed: int = 0) -> float:
    """Label-shuffle p-value of the mean of ``values[mask]`` against every other way of
    picking as many of ``values`` (e.g. "did the balanced control scenarios move less than a
    random set of as many evaluated scenarios?").

    ``alternative="less"``: the share of same-size subsets whose mean is at most the observed
    one (``"greater"``: at least). Exact over all subsets when there are at most
    ``max_exact`` of them, otherwise ``(hits + 1) / (n_perm + 1)`` over ``n_perm`` seeded
    random subsets. ``nan`` when the mask selects none or all of the values.
    """
    import itertools

    v = np.asarray(values, dtype=float).ravel()
    m = np.asarray(mask, dtype=bool).ravel()
    if v.shape != m.shape:
        raise VerdictError(f"subset_mean_pvalue: {v.size} values but a mask of {m.size}")
    if not np.isfinite(v).all():
        raise VerdictError("subset_mean_pvalue: the values hold NaN or inf")
    if alternative not in ("less", "greater"):
        raise VerdictError(f"subset_mean_pvalue: alternative must be 'less' or 'greater', got {alternative!r}")
    n, k = v.size, int(m.sum())
    if k == 0 or k == n:
        return float("nan")
    obs = v[m].mean()
    eps = 1e-12 * max(1.0, float(np.abs(v).max()))
    hit = (lambda x: x <= obs + eps) if alternative == "less" else (lambda x: x >= obs - eps)
    if math.comb(n, k) <= max_exact:
        subsets = np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(n), k)),
                              dtype=np.intp).reshape(-1, k)
        return float(hit(v[subsets].mean(axis=1)).mean())
    rng = np.random.default_rng(seed)
    means = np.array([v[rng.choice(n, size=k, replace=False)].mean() for _ in range(n_perm)])
    return float((hit(means).sum() + 1) / (n_perm + 1))


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`decide`, with everything needed to print it beside the claim."""

    verdict: str
    effect: float
    interval: tuple[float, float]
    null: float
    null_interval: tuple[float, float]
    direction: str
    rule: str
    why: str = ""
    extra: dict = field(default_factory=dict)

    def row(self) -> dict:
        """A flat dict for a verdict table (see :func:`verdict_table`)."""
        return {
            "effect": self.effect,
            "interval": format_interval(self.interval),
            "null": self.null,
            "null interval": format_interval(self.null_interval),
            "verdict": self.verdict,
            "rule": self.rule,
            "why": self.why,
        }


def format_interval(iv: Sequence[float], digits: int = 3) -> str:
    lo, hi = iv
    if not (_finite(lo) and _finite(hi)):
        return "n/a"
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def decide(
    effect: float,
    interval: Sequence[float],
    null: float,
    null_interval: Sequence[float] | None = None,
    *,
    direction: str = "greater",
    min_effect: float = 0.0,
    tol: float | None = None,
    testable: bool = True,
    why: str = "",
) -> Verdict:
    """Apply the book's verdict rule (module docstring) to one measured claim.

    Parameters
    ----------
    effect, interval:
        The measured effect and its 95% interval ``(low, high)``.
    null, null_interval:
        The null or control measured in the same run, and its interval (a point null such
        as chance level has none: its interval is the point itself).
    direction:
        ``"greater"`` (the paper claims effect > null), ``"less"``, or ``"within"`` (the
        paper claims no change: effect within ``null +- tol``).
    min_effect:
        For ``greater``/``less``: how far beyond the null's interval the effect must lie to
        count as the paper's effect (0: any separation).
    tol:
        For ``within``: the half-width of the equivalence band (required).
    testable, why:
        ``testable=False`` gives "not testable here" with ``why`` as the reason.
    """
    if direction not in DIRECTIONS:
        raise VerdictError(f"direction={direction!r} is not valid; choose one of: {', '.join(DIRECTIONS)}")
    if not _finite(min_effect) or min_effect < 0:
        raise VerdictError(f"min_effect={min_effect!r} must be a finite number >= 0")
    if direction == "within" and (tol is None or not _finite(tol) or tol < 0):
        raise VerdictError("direction='within' needs tol, a finite number >= 0 (the equivalence band)")
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError) as exc:
        raise VerdictError(f"interval={interval!r} must be a pair (low, high) of numbers") from exc
    if null_interval is None:
        null_interval = (null, null)
    try:
        nlo, nhi = (float(v) for v in null_interval)
    except (TypeError, ValueError) as exc:
        raise VerdictError(f"null_interval={null_interval!r} must be a pair (low, high) of numbers") from exc
    effect_f = float(effect) if _finite(effect) else float("nan")
    null_f = float(null) if _finite(null) else float("nan")
    rule = _rule_text(direction, min_effect, tol)
    base = dict(effect=effect_f, interval=(lo, hi), null=null_f, null_interval=(nlo, nhi),
                direction=direction, rule=rule)

    if not testable:
        return Verdict("not testable here", why=why or "the setup cannot tell", **base)
    if not all(_finite(v) for v in (effect_f, lo, hi, null_f, nlo, nhi)):
        return Verdict("not testable here", why=why or "the effect, its interval or the null is not a finite number", **base)
    if lo > hi or nlo > nhi:
        raise VerdictError(f"an interval is reversed: effect {(lo, hi)}, null {(nlo, nhi)}; pass (low, high)")
    if not (lo <= effect_f <= hi):
        raise VerdictError(f"effect {effect_f} lies outside its own interval {(lo, hi)}; check the bootstrap")

    if direction == "within":
        band = (null_f - tol, null_f + tol)
        if band[0] <= lo and hi <= band[1]:
            v = "reproduced"
        elif band[0] <= effect_f <= band[1]:
            v = "partly"
        else:
            v = "not reproduced"
        return Verdict(v, why=why, **base)

    sign = 1.0 if direction == "greater" else -1.0
    # distances beyond the null's interval in the paper's direction
    edge = nhi if sign > 0 else nlo
    point_beyond = sign * (effect_f - edge)
    whole_beyond = sign * ((lo if sign > 0 else hi) - edge)
    if point_beyond <= 0:
        v = "not reproduced"
    elif whole_beyond > 0 and point_beyond >= min_effect:
        v = "reproduced"
    else:
        v = "partly"
    return Verdict(v, why=why, **base)


def _rule_text(direction: str, min_effect: float, tol: float | None) -> str:
    if direction == "within":
        return f"no change: effect's 95% interval inside null +- {tol:g}"
    side = "above" if direction == "greater" else "below"
    size = f" by at least {min_effect:g}" if min_effect > 0 else ""
    return f"effect's 95% interval {side} the null's{size}"


def verdict_table(rows: Sequence[dict]) -> pd.DataFrame:
    """A "Paper vs this book" table: one row per claim, the null printed beside the effect.

    Each row is a dict with ``claim`` and ``verdict`` (a :class:`Verdict`), plus any other
    columns the chapter wants (``paper``, ``measure``...). Provenance belongs in the
    table's caption, once, not in every row.
    """
    out = []
    for r in rows:
        if "claim" not in r or not isinstance(r.get("verdict"), Verdict):
            raise VerdictError("each row needs 'claim' and 'verdict' (a fairvlm.verdicts.Verdict from decide())")
        extra = {k: v for k, v in r.items() if k not in ("claim", "verdict")}
        out.append({"claim": r["claim"], **extra, **r["verdict"].row()})
    return pd.DataFrame(out)
