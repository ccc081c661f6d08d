"""One protocol for every "Paper vs this book" verdict.

A verdict is an experiment, not an opinion. Each claim of a paper is checked by

1. an **effect** measured in the chapter's own run (a skew, a drop, a change of entropy);
2. a **control**: the same quantity measured *in the same run, by the same procedure, with
   the causal ingredient removed* (a content-free label, shuffled labels, random heads or
   latents drawn like the real ones, a direction fitted on shuffled labels, the unedited
   model). Epidemiology calls this a negative control (Lipsitch et al., 2010): if the
   control shows the effect, the procedure measures itself;
3. the **difference** effect - control, with a bootstrap interval: paired when the same
   units (items, images) were measured under both conditions, over *clusters* when rows
   are not independent (prompts of one item, images of one scenario), in the manner of
   Agarwal et al. (2021). Intervals are :func:`scipy.stats.bootstrap` BCa intervals over
   the independent units (percentile where BCa is undefined).

:func:`judge` computes the three from per-unit values and :func:`apply_rule` turns them
into one of four words. For a claim that the effect is *greater* than the control (the
``less`` case mirrors it), with the claim's minimum size ``m > 0``:

``reproduced``
    the difference's 95% interval lies wholly above ``m`` **and** the effect's own 95%
    interval lies wholly above the claim's reference (``effect_ref``, 0 by default): a
    debiasing method must itself lower the bias, not only lower it less than a harmful
    null would;
``not reproduced``
    the difference's interval lies wholly below ``m`` (the claimed size is ruled out), or
    the effect's own interval lies wholly on the wrong side of its reference;
``inconclusive``
    neither: the interval straddles ``m``. The row carries the *minimum detectable
    effect* at this sample size, ``(z_{0.975} + z_{0.8}) * se`` with ``se`` read off the
    interval's width: the smallest difference this run would have separated from zero
    with 80% power;
``not testable here``
    a precondition fails: the caller says so (``testable=False`` and a reason: the model
    does not show the bias a method should remove, a baseline at chance, an invalid
    timing); fewer than :data:`MIN_UNITS` independent units (clusters); zero variance (a constant sample gives a zero-width
    bootstrap interval, which is refused, not read as certainty; but see *constant units* below); a no-change claim
    asked ``after=`` an intervention whose own effect was not shown.

*Constant units.* When every independent unit of a paired directional claim shows the same
value (of the difference, of the effect, or both), :func:`judge` reads that value with the
distribution-free order-statistic interval of the median, ``[min, max]`` over the units,
which here has zero width and covers the median with probability ``1 - 2 * 0.5**n``: at
least 95% from :data:`SIGN_MIN_UNITS` = 6 units (the sign test). So a method that leaves the
bias exactly where it was, or moves it the wrong way by the same amount, in each of 22
scenarios reads "not reproduced" (a difference that sits exactly at the claimed size in
every unit counts as not beyond it), and one that moves it the claimed way in each reads by
the usual rule; with fewer units, or unpaired rows, a constant sample stays "not testable
here".

Claims that *nothing else changes* (``direction="within"``) are equivalence tests (TOST,
Lakens 2017): reproduced when the **90%** interval of the difference lies inside
``+-tol``, not reproduced when it lies wholly outside, inconclusive otherwise. ``tol`` must
be wider than one unit's weight in the mean (``max |difference| / n``, which is ``1/n``
for 0/1 outcomes), otherwise the check cannot resolve it and says "not testable here".
For 0/1 outcomes where no unit changed at all, ``binary=True`` replaces the refused
zero-width interval by the rule of three (no change among ``n`` units: the rate of change
is below ``1 - alpha^(1/n)``, about ``3/n``).

Every :class:`Verdict` says what its claim asserts (:data:`ASSERTS`): ``bias`` (a bias
exists), ``debias`` (a method removes or lowers one), ``no-change`` or ``other``.
``bias_claim`` is True for the first two: a ``reproduced`` on such a row in a world
where nothing was planted is a false positive, which ``python -m fairvlm.calibrate``
counts.

:func:`decide` is the older rule (effect interval against the null's interval, with the
word "partly"), kept only until chapters 04-06 move to :func:`judge`; its rows say
``asserts="unclassified"``, and calibration counts a "reproduced" on such a row as a
possible false positive.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fairvlm import validate as _v
from fairvlm.errors import FairVLMError, ParameterError

#: The four words of :func:`apply_rule`.
VERDICTS = ("reproduced", "not reproduced", "inconclusive", "not testable here")
#: Every word a verdict table may hold (``partly`` only from the legacy :func:`decide`).
ALL_VERDICTS = VERDICTS + ("partly",)
DIRECTIONS = ("greater", "less", "within")
#: What a claim asserts: a bias exists; a method removes (lowers) one; nothing else changes; other.
ASSERTS = ("bias", "debias", "no-change", "other")
#: The kinds whose "reproduced" on a world with nothing planted is a false positive.
BIAS_KINDS = ("bias", "debias")
#: Confidence levels: directional claims; equivalence (TOST at alpha = 0.05 each side).
LEVEL = 0.95
TOST_LEVEL = 0.90
#: Power used for the minimum detectable effect.
MDE_POWER = 0.80
#: Fewest independent units (items, labels, clusters) a bootstrap interval is trusted on:
#: with 4 clusters a resample can take only 35 distinct forms.
MIN_UNITS = 5
#: Units a constant paired sample needs before its [min, max] order-statistic interval
#: covers the median at 95% (``1 - 2 * 0.5**n >= 0.95``: the two-sided sign test).
SIGN_MIN_UNITS = 6


class VerdictError(FairVLMError, ValueError):
    """A verdict asked for with inputs the rule cannot use."""


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _check_bool(name: str, value) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise VerdictError(f"{name}={value!r} must be True or False")


def _checked(check, name: str, value, **kw):
    """A :mod:`fairvlm.validate` check whose refusal is a :class:`VerdictError` (a FairVLMError)."""
    try:
        return check(name, value, **kw)
    except ParameterError as exc:
        raise VerdictError(str(exc)) from None


def _real(name: str, value, *, nan: bool = True) -> float:
    """A real number (not bool, not a string); NaN allowed when ``nan`` (a missing estimate)."""
    if hasattr(value, "ndim") and getattr(value, "ndim") == 0 and hasattr(value, "item"):
        value = value.item()
    if nan and isinstance(value, float) and math.isnan(value):
        return value
    return _checked(_v.number, name, value) if not nan else _real_any(name, value)


def _real_any(name: str, value) -> float:
    import numbers

    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        raise VerdictError(f"{name}={_v.show(value)} is not valid: it must be a number (NaN for a missing value)")
    return float(value)


def _pair(name: str, value) -> tuple[float, float]:
    """``(low, high)``: two real numbers (NaN allowed), not a string, not None."""
    if isinstance(value, (str, bytes)) or value is None or not hasattr(value, "__iter__"):
        raise VerdictError(f"{name}={_v.show(value)} is not valid: it must be a pair (low, high) of numbers")
    vals = list(value)
    if len(vals) != 2:
        raise VerdictError(f"{name}={_v.show(value)} is not valid: it must be a pair (low, high) of numbers")
    return _real(f"{name}[0]", vals[0]), _real(f"{name}[1]", vals[1])


def _level(value, name: str = "level") -> float:
    return _checked(_v.number, name, value, low=0.0, high=1.0, low_open=True, high_open=True)


def _resamples(value, name: str = "n_resamples") -> int:
    return _checked(_v.integer, name, value, low=1)


def _seed(value) -> int:
    return _checked(_v.integer, "seed", value, low=0)


# ---------------------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """One claim of a paper, in the terms the rule needs.

    ``text``: the claim as the table prints it. ``asserts``: one of :data:`ASSERTS`.
    ``direction``: ``"greater"`` (effect above control), ``"less"`` or ``"within"``
    (no change: the difference inside ``+-tol``). ``min_effect``: the smallest difference
    that counts as the paper's effect (> 0 for directional claims: a claim with no size
    can never be ruled out). ``effect_ref``: the value the effect itself must clear in the
    claimed direction (0 for a change; ``None`` skips that check, only for effects whose
    sign carries no meaning, such as a non-negative skew). ``tol``: the equivalence margin
    of a ``within`` claim.
    """

    text: str
    asserts: str
    direction: str = "greater"
    min_effect: float = 0.0
    effect_ref: float | None = 0.0
    tol: float | None = None

    def __post_init__(self):
        for name in ("min_effect", "effect_ref", "tol"):
            v = getattr(self, name)
            if not (v is None and name != "min_effect"):
                _real(f"Claim {name}", v)
        if not isinstance(self.text, str) or not self.text.strip():
            raise VerdictError(f"Claim text={self.text!r} must be a non-empty string")
        if not isinstance(self.asserts, str) or self.asserts not in ASSERTS:
            raise VerdictError(f"Claim asserts={self.asserts!r} is not one of {', '.join(ASSERTS)}")
        if not isinstance(self.direction, str) or self.direction not in DIRECTIONS:
            raise VerdictError(f"Claim direction={self.direction!r} is not one of {', '.join(DIRECTIONS)}")
        if self.direction == "within":
            if self.tol is None or not _finite(self.tol) or self.tol <= 0:
                raise VerdictError(f"Claim tol={self.tol!r}: a 'within' claim needs a finite tolerance > 0")
        else:
            if not _finite(self.min_effect) or self.min_effect <= 0:
                raise VerdictError(f"Claim min_effect={self.min_effect!r} must be a finite number > 0: a claim "
                                   "with no minimum size can never be ruled out")
            if self.effect_ref is not None and not _finite(self.effect_ref):
                raise VerdictError(f"Claim effect_ref={self.effect_ref!r} must be a finite number or None")
        if self.asserts == "no-change" and self.direction != "within":
            raise VerdictError("Claim asserts='no-change' needs direction='within'")

    @property
    def bias_claim(self) -> bool:
        return self.asserts in BIAS_KINDS

    def rule_text(self, level: float = LEVEL) -> str:
        if self.direction == "within":
            return (f"{TOST_LEVEL:.0%} interval of (effect - control) inside +-{self.tol:g} (TOST); "
                    "wholly outside: not reproduced")
        op, other = (">", "<") if self.direction == "greater" else ("<", ">")
        m = self.min_effect if self.direction == "greater" else -self.min_effect
        own = "" if self.effect_ref is None else f" and effect's interval {op} {self.effect_ref:g}"
        return (f"reproduced: {level:.0%} interval of (effect - control) {op} {m:g}{own}; "
                f"not reproduced: it is {other} {m:g}")


# ---------------------------------------------------------------------------------------
# Estimates with bootstrap intervals
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its interval, the number of independent units behind it and
    whether the units' values had any spread."""

    value: float
    low: float
    high: float
    n_units: int
    spread: bool = True

    def __post_init__(self):
        for name in ("value", "low", "high"):
            _real(f"Estimate {name}", getattr(self, name))
        _checked(_v.integer, "Estimate n_units", self.n_units, low=0)
        _check_bool("Estimate spread", self.spread)

    @property
    def interval(self) -> tuple[float, float]:
        return (self.low, self.high)

    @property
    def finite(self) -> bool:
        return all(_finite(v) for v in (self.value, self.low, self.high))


def _as_values(name: str, x, *, ravel: bool = False) -> np.ndarray:
    if x is None or isinstance(x, (str, bytes, dict)):
        raise VerdictError(f"{name}={_v.show(x)} is not valid: it must be a 1-D array of per-row values")
    try:
        a = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise VerdictError(f"{name}={_v.show(x)} is not valid: it must be a 1-D array of numbers") from None
    if ravel:
        a = a.ravel()
    if a.ndim != 1:
        raise VerdictError(f"{name} must be a 1-D array of per-row values, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise VerdictError(f"{name} holds NaN or inf; drop or fix those rows first")
    return a


def _as_clusters(name: str, clusters, n: int) -> np.ndarray:
    if clusters is None:
        return np.arange(n)
    c = np.asarray(clusters)
    if c.ndim != 1 or c.size != n:
        raise VerdictError(f"{name} must give one cluster id per row ({n}), got shape {c.shape}")
    if pd.isna(pd.Series(c)).any():
        raise VerdictError(f"{name} holds missing cluster ids")
    return pd.factorize(pd.Series(c), sort=False)[0]


def _unit_sums(values: np.ndarray, codes: np.ndarray, n_units: int) -> np.ndarray:
    return np.bincount(codes, weights=values, minlength=n_units)


def _bootstrap(samples: tuple, statistic: Callable, *, paired: bool, level: float, n_resamples: int,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """BCa interval(s) of ``statistic`` over unit-index samples; percentile where BCa is NaN."""
    import warnings

    from scipy import stats

    kw = dict(paired=paired, vectorized=True, n_resamples=n_resamples, confidence_level=level)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa warns on degenerate jackknife; we fall back below
        res = stats.bootstrap(samples, statistic, method="BCa", rng=np.random.default_rng(seed), **kw)
        lo, hi = np.atleast_1d(res.confidence_interval.low), np.atleast_1d(res.confidence_interval.high)
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            res = stats.bootstrap(samples, statistic, method="percentile", rng=np.random.default_rng(seed), **kw)
            lo2, hi2 = np.atleast_1d(res.confidence_interval.low), np.atleast_1d(res.confidence_interval.high)
            bad = ~(np.isfinite(lo) & np.isfinite(hi))
            lo, hi = np.where(bad, lo2, lo), np.where(bad, hi2, hi)
    return lo.astype(float), hi.astype(float)


def paired_estimates(effect, control, *, clusters=None, level: float = LEVEL, n_resamples: int = 2000,
                     seed: int = 0) -> tuple[Estimate, Estimate, Estimate]:
    """Effect, control and difference estimates for rows measured under both conditions.

    ``effect[i]`` and ``control[i]`` are row ``i`` under the two conditions; ``clusters``
    (one id per row, optional) groups rows that are not independent: clusters are
    resampled, and each statistic is the mean over the rows of the drawn clusters.
    """
    level, n_resamples, seed = _level(level), _resamples(n_resamples), _seed(seed)
    e = _as_values("effect", effect)
    c = _as_values("control", control)
    if e.shape != c.shape:
        raise VerdictError(f"paired rows need effect and control of one length, got {e.size} and {c.size}")
    codes = _as_clusters("clusters", clusters, e.size)
    k = int(codes.max()) + 1 if e.size else 0
    d = e - c
    spread = tuple(bool(a.size and np.ptp(a) > 0) for a in (e, c, d))
    point = [float(e.mean()), float(c.mean()), float(d.mean())] if e.size else [math.nan] * 3
    if k < 2:
        return tuple(Estimate(p, math.nan, math.nan, k, s) for p, s in zip(point, spread))
    se_, sc_, n_ = _unit_sums(e, codes, k), _unit_sums(c, codes, k), np.bincount(codes, minlength=k).astype(float)

    def stat(idx, axis=-1):
        n = n_[idx].sum(axis)
        me, mc = se_[idx].sum(axis) / n, sc_[idx].sum(axis) / n
        return np.stack([me, mc, me - mc])

    lo, hi = _bootstrap((np.arange(k),), stat, paired=True, level=level, n_resamples=n_resamples, seed=seed)
    return tuple(Estimate(p, float(lo[j]), float(hi[j]), k, s) for j, (p, s) in enumerate(zip(point, spread)))


def unpaired_estimates(effect, control, *, clusters=None, control_clusters=None, level: float = LEVEL,
                       n_resamples: int = 2000, seed: int = 0) -> tuple[Estimate, Estimate, Estimate]:
    """Effect, control and difference estimates for two independent sets of rows, each
    resampled on its own (over its clusters when given). ``control`` may be a number: a
    known constant such as a chance level, with no interval of its own."""
    level, n_resamples, seed = _level(level), _resamples(n_resamples), _seed(seed)
    e = _as_values("effect", effect)
    ce = _as_clusters("clusters", clusters, e.size)
    ke = int(ce.max()) + 1 if e.size else 0
    se_, ne_ = _unit_sums(e, ce, ke), np.bincount(ce, minlength=ke).astype(float)
    e_spread = bool(e.size and np.ptp(e) > 0)
    if control is None or isinstance(control, (str, bytes, dict)):
        raise VerdictError(f"control={_v.show(control)} is not valid: it must be a number or an array of per-row values")
    if np.ndim(control) == 0:
        if isinstance(control, (bool, np.bool_)) or not _finite(control):
            raise VerdictError(f"control={control!r} must be a finite number or an array of per-row values")
        c0 = float(control)
        if ke < 2:
            return (Estimate(float(e.mean()) if e.size else math.nan, math.nan, math.nan, ke, e_spread),
                    Estimate(c0, c0, c0, 0, False),
                    Estimate(float(e.mean()) - c0 if e.size else math.nan, math.nan, math.nan, ke, e_spread))

        def stat1(idx, axis=-1):
            m = se_[idx].sum(axis) / ne_[idx].sum(axis)
            return np.stack([m, m - c0])

        lo, hi = _bootstrap((np.arange(ke),), stat1, paired=True, level=level, n_resamples=n_resamples, seed=seed)
        em = float(e.mean())
        return (Estimate(em, float(lo[0]), float(hi[0]), ke, e_spread), Estimate(c0, c0, c0, 0, False),
                Estimate(em - c0, float(lo[1]), float(hi[1]), ke, e_spread))
    c = _as_values("control", control)
    cc = _as_clusters("control_clusters", control_clusters, c.size)
    kc = int(cc.max()) + 1 if c.size else 0
    sc_, nc_ = _unit_sums(c, cc, kc), np.bincount(cc, minlength=kc).astype(float)
    c_spread = bool(c.size and np.ptp(c) > 0)
    em = float(e.mean()) if e.size else math.nan
    cm = float(c.mean()) if c.size else math.nan
    if ke < 2 or kc < 2:
        return (Estimate(em, math.nan, math.nan, ke, e_spread), Estimate(cm, math.nan, math.nan, kc, c_spread),
                Estimate(em - cm, math.nan, math.nan, min(ke, kc), e_spread or c_spread))

    def stat2(i, j, axis=-1):
        me = se_[i].sum(axis) / ne_[i].sum(axis)
        mc = sc_[j].sum(axis) / nc_[j].sum(axis)
        me, mc = np.broadcast_arrays(me, mc)  # the jackknife of one sample meets the other whole
        return np.stack([me, mc, me - mc])

    lo, hi = _bootstrap((np.arange(ke), np.arange(kc)), stat2, paired=False, level=level,
                        n_resamples=n_resamples, seed=seed)
    return (Estimate(em, float(lo[0]), float(hi[0]), ke, e_spread),
            Estimate(cm, float(lo[1]), float(hi[1]), kc, c_spread),
            Estimate(em - cm, float(lo[2]), float(hi[2]), min(ke, kc), e_spread or c_spread))


# ---------------------------------------------------------------------------------------
# The rule
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`judge` / :func:`apply_rule` (or the legacy :func:`decide`),
    with everything needed to print it beside the claim."""

    verdict: str
    effect: float
    interval: tuple[float, float]
    null: float
    null_interval: tuple[float, float]
    direction: str
    rule: str
    why: str = ""
    extra: dict = field(default_factory=dict)
    claim: str = ""
    asserts: str = "unclassified"
    difference: float = float("nan")
    difference_interval: tuple[float, float] = (float("nan"), float("nan"))
    min_effect: float = float("nan")
    mde: float = float("nan")
    n_units: int = 0

    def __post_init__(self):
        if not isinstance(self.verdict, str) or self.verdict not in ALL_VERDICTS:
            raise VerdictError(f"verdict={self.verdict!r} is not one of {', '.join(ALL_VERDICTS)}")

    @property
    def bias_claim(self) -> bool:
        """True when the claim asserts a bias or its removal (:data:`BIAS_KINDS`)."""
        return self.asserts in BIAS_KINDS

    @property
    def control(self) -> float:
        return self.null

    def row(self) -> dict:
        """A flat dict for a verdict table (see :func:`verdict_table`)."""
        if self.asserts == "unclassified":  # legacy decide(): its old layout, unchanged
            return {"effect": self.effect, "interval": format_interval(self.interval), "null": self.null,
                    "null interval": format_interval(self.null_interval), "verdict": self.verdict,
                    "rule": self.rule, "why": self.why}
        return {
            "effect": self.effect,
            "effect interval": format_interval(self.interval),
            "control": self.null,
            "difference": self.difference,
            "difference interval": format_interval(self.difference_interval),
            "rule": self.rule,
            "verdict": self.verdict,
            "why": self.why,
            "MDE": self.mde,
            "units": self.n_units,
            "asserts": self.asserts,
            "bias_claim": self.bias_claim,
        }


def format_interval(iv: Sequence[float], digits: int = 3) -> str:
    lo, hi = _pair("iv", iv)
    digits = _checked(_v.integer, "digits", digits, low=0, high=12)
    if not (_finite(lo) and _finite(hi)):
        return "n/a"
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def min_detectable_effect(interval: Sequence[float], level: float = LEVEL, power: float = MDE_POWER) -> float:
    """The smallest true difference a run with this interval would separate from zero with
    ``power``: ``(z_{1-alpha/2} + z_power) * se``, ``se = width / (2 z_{1-alpha/2})``."""
    from scipy.stats import norm

    lo, hi = _pair("interval", interval)
    level, power = _level(level), _level(power, "power")
    if not (_finite(lo) and _finite(hi)) or hi < lo:
        return float("nan")
    z = norm.ppf(0.5 + level / 2)
    return float((z + norm.ppf(power)) * (hi - lo) / (2 * z))


def apply_rule(claim: Claim, effect: Estimate, control: Estimate, difference: Estimate, *,
               testable: bool = True, why: str = "", level: float = LEVEL, resolution: float | None = None,
               constant_units: bool = False) -> Verdict:
    """The book's rule (module docstring) on estimates already computed.

    ``effect``, ``control``, ``difference``: :class:`Estimate` (the difference's interval at
    ``level``; for a ``within`` claim at :data:`TOST_LEVEL`). ``testable=False`` with
    ``why`` gives "not testable here". ``resolution``: for ``within`` claims, the weight of
    one unit in the mean (the tolerance must exceed it). ``constant_units``: the difference's
    (and, where it has zero width, the effect's) interval is the order-statistic interval of
    constant units (module docstring, *constant units*), so a zero width is read, not refused.
    """
    if not isinstance(claim, Claim):
        raise VerdictError(f"claim must be a fairvlm.verdicts.Claim, got {type(claim).__name__}")
    for name, est in (("effect", effect), ("control", control), ("difference", difference)):
        if not isinstance(est, Estimate):
            raise VerdictError(f"{name} must be a fairvlm.verdicts.Estimate, got {type(est).__name__}")
    testable = _check_bool("testable", testable)
    constant_units = _check_bool("constant_units", constant_units)
    if not isinstance(why, str):
        raise VerdictError(f"why={why!r} must be a string")
    level = _level(level)
    if resolution is not None:
        resolution = _checked(_v.number, "resolution", resolution, low=0.0)
    for name, est in (("effect", effect), ("difference", difference)):
        if est.finite and est.low > est.high:
            raise VerdictError(f"{name} interval {est.interval} is reversed; pass (low, high)")
    lvl = TOST_LEVEL if claim.direction == "within" else level
    base = dict(effect=effect.value, interval=effect.interval, null=control.value, null_interval=control.interval,
                direction=claim.direction, rule=claim.rule_text(level), claim=claim.text, asserts=claim.asserts,
                difference=difference.value, difference_interval=difference.interval,
                min_effect=claim.tol if claim.direction == "within" else claim.min_effect,
                n_units=difference.n_units)

    def out(word, reason=""):
        mde = min_detectable_effect(difference.interval, lvl) if word == "inconclusive" else float("nan")
        if word == "inconclusive" and _finite(mde):
            reason = (reason + "; " if reason else "") + f"minimum detectable effect at n={difference.n_units}: {mde:.3g}"
        return Verdict(word, why=reason, mde=mde, **base)

    if not testable:
        return out("not testable here", why or "a precondition of the claim fails")
    if difference.n_units < MIN_UNITS:
        return out("not testable here", why or f"{difference.n_units} independent unit(s): a bootstrap interval "
                   f"needs at least {MIN_UNITS}")
    if not (effect.finite and difference.finite and _finite(control.value)):
        return out("not testable here", why or "the effect, the control or the difference is not a finite number")
    if claim.direction == "within":
        if not difference.spread:
            return out("not testable here", why or "zero variance: every unit changed by the same amount, "
                       "so the bootstrap interval has zero width")
        if resolution is not None and claim.tol <= resolution:
            return out("not testable here", (why + "; " if why else "") + f"tolerance {claim.tol:g} is not wider "
                       f"than one unit's weight ({resolution:.3g} at n={difference.n_units}): the check cannot resolve it")
        lo, hi = difference.interval
        if -claim.tol <= lo and hi <= claim.tol:
            return out("reproduced", why)
        if lo > claim.tol or hi < -claim.tol:
            return out("not reproduced", why)
        return out("inconclusive", why)
    if constant_units:
        why = (why + "; " if why else "") + (
            f"every one of the {difference.n_units} units gave the same "
            f"{'difference' if difference.low == difference.high else 'effect'}; its order-statistic interval stands in "
            f"for the zero-width bootstrap one (two-sided sign test p = {2 * 0.5 ** difference.n_units:.2g})")
    elif not effect.spread or not difference.spread or difference.low == difference.high:
        return out("not testable here", why or "zero variance: a constant sample gives a zero-width interval, "
                   "which says nothing about the claim")
    s = 1.0 if claim.direction == "greater" else -1.0
    m = claim.min_effect
    lo, hi = (difference.low, difference.high) if s > 0 else (-difference.high, -difference.low)
    if claim.effect_ref is not None:
        elo, ehi = (effect.low - claim.effect_ref, effect.high - claim.effect_ref) if s > 0 else \
                   (claim.effect_ref - effect.high, claim.effect_ref - effect.low)
    else:
        elo, ehi = math.inf, math.inf
    if hi < m or (constant_units and lo == hi and hi <= m):
        return out("not reproduced", (why + "; " if why else "") + "the difference's interval lies below the claimed size")
    if ehi < 0:
        return out("not reproduced", (why + "; " if why else "") + "the effect itself lies on the wrong side of "
                   f"{claim.effect_ref:g}")
    if lo > m and elo > 0:
        return out("reproduced", why)
    if lo > m:
        return out("inconclusive", (why + "; " if why else "") + "beyond the control, but the effect's own interval "
                   f"includes {claim.effect_ref:g}")
    return out("inconclusive", why)


def judge(claim: Claim, effect, control, *, paired: bool = True, clusters=None, control_clusters=None,
          testable: bool = True, why: str = "", after: Verdict | None = None, binary: bool = False,
          n_resamples: int = 2000, seed: int = 0) -> Verdict:
    """Decide ``claim`` from per-row values of the effect and of its control.

    ``paired=True``: ``effect[i]`` and ``control[i]`` are the same row under the two
    conditions (a paired bootstrap of the difference; ``clusters`` groups rows). With
    ``paired=False`` the two are independent sets of rows, each resampled over its own
    clusters (``clusters``, ``control_clusters``); ``control`` may then be a number (a
    chance level). ``after``: for a no-change claim, the verdict of the intervention's
    own effect; unless that was reproduced, the claim is "not testable here".
    ``binary``: the rows are 0/1 outcomes (changes in {-1, 0, 1}), which allows the rule
    of three when no row changed.
    """
    if not isinstance(claim, Claim):
        raise VerdictError(f"claim must be a fairvlm.verdicts.Claim, got {type(claim).__name__}")
    paired = _check_bool("paired", paired)
    testable = _check_bool("testable", testable)
    binary = _check_bool("binary", binary)
    if after is not None and not isinstance(after, Verdict):
        raise VerdictError(f"after must be a Verdict (the intervention's own), got {type(after).__name__}")
    n_resamples, seed = _resamples(n_resamples), _seed(seed)
    if not isinstance(why, str):
        raise VerdictError(f"why={why!r} must be a string")
    level = TOST_LEVEL if claim.direction == "within" else LEVEL
    if paired:
        est = paired_estimates(effect, control, clusters=clusters, level=level, n_resamples=n_resamples, seed=seed)
        rows = _as_values("effect", effect)
        diffs = rows - _as_values("control", control)
    else:
        est = unpaired_estimates(effect, control, clusters=clusters, control_clusters=control_clusters, level=level,
                                 n_resamples=n_resamples, seed=seed)
        diffs = rows = _as_values("effect", effect)
    e, c, d = est
    resolution = float(np.abs(diffs).max() / d.n_units) if d.n_units and diffs.size else None
    if binary and claim.direction == "within" and d.n_units >= 2 and not d.spread:
        if np.any(np.abs(diffs) > 1):
            raise VerdictError("binary=True needs per-row changes in [-1, 1] (after - before of a 0/1 outcome)")
        if np.all(diffs == 0):
            b = 1.0 - ((1.0 - TOST_LEVEL) / 2) ** (1.0 / d.n_units)  # rule of three, one-sided at alpha/2
            d = Estimate(0.0, -b, b, d.n_units, True)
            resolution = 1.0 / d.n_units
    constant_units = False
    if paired and claim.direction != "within" and d.n_units >= SIGN_MIN_UNITS:
        codes = _as_clusters("clusters", clusters, diffs.size)
        counts = np.bincount(codes, minlength=d.n_units).astype(float)

        def exact(estimate, values):
            means = _unit_sums(values, codes, d.n_units) / counts
            if np.ptp(means) > 1e-12 * max(1.0, float(np.abs(means).max())):
                return estimate, False
            v = float(np.median(means))
            return Estimate(v, v, v, estimate.n_units, True), True

        d, const_d = exact(d, diffs)
        e, const_e = exact(e, rows)
        constant_units = const_d or const_e
    if after is not None and after.verdict != "reproduced":
        testable, why = False, (why + "; " if why else "") + (
            f"the intervention's own effect ({after.claim or 'its claim'}) is '{after.verdict}', not shown: "
            "an edit that changes nothing trivially leaves everything else unchanged")
    return apply_rule(claim, e, c, d, testable=testable, why=why, level=LEVEL, resolution=resolution,
                      constant_units=constant_units)


def judge_estimates(claim: Claim, effect: float, effect_interval: Sequence[float], control: float,
                    difference: float, difference_interval: Sequence[float], *, n_units: int,
                    testable: bool = True, why: str = "", control_interval: Sequence[float] | None = None) -> Verdict:
    """:func:`apply_rule` for intervals computed elsewhere (a permutation null, a nested
    bootstrap). The intervals must come from the run's own units; zero-width ones are refused."""
    def est(name, v, iv, n, allow_point=False):
        lo, hi = _pair(name, iv)
        return Estimate(float(v), lo, hi, n, bool(allow_point or hi > lo))

    if not isinstance(claim, Claim):
        raise VerdictError(f"claim must be a fairvlm.verdicts.Claim, got {type(claim).__name__}")
    if isinstance(n_units, (bool, np.bool_)) or not isinstance(n_units, (int, np.integer)) or n_units < 0:
        raise VerdictError(f"n_units={n_units!r} must be a count >= 0")
    effect, control, difference = (_real(n, v) for n, v in (("effect", effect), ("control", control),
                                                              ("difference", difference)))
    e = est("effect_interval", effect, effect_interval, int(n_units))
    civ = control_interval if control_interval is not None else (control, control)
    c = est("control_interval", control, civ, int(n_units), allow_point=True)
    d = est("difference_interval", difference, difference_interval, int(n_units))
    return apply_rule(claim, e, c, d, testable=testable, why=why)


# ---------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------


def verdict_table(rows: Sequence[dict]) -> pd.DataFrame:
    """A "Paper vs this book" table: one row per claim, effect, control and the difference
    with its interval beside the rule and the verdict.

    Each row is a dict with ``verdict`` (a :class:`Verdict`) and, unless the verdict names
    its claim, ``claim``; plus any other columns the chapter wants (``cell``, ``paper``).
    Provenance belongs in the table's caption, once, not in every row.
    """
    if rows is None or isinstance(rows, (str, bytes, dict, pd.DataFrame)) or not hasattr(rows, "__iter__"):
        raise VerdictError(f"rows={_v.show(rows)} is not valid: it must be a list of dicts, one per claim")
    out = []
    for r in rows:
        if not isinstance(r, dict) or not isinstance(r.get("verdict"), Verdict):
            raise VerdictError("each row needs 'verdict' (a fairvlm.verdicts.Verdict from judge() or decide())")
        claim = r.get("claim") or r["verdict"].claim
        if not claim:
            raise VerdictError("each row needs 'claim' (or a verdict from judge(), which names its claim)")
        extra = {k: v for k, v in r.items() if k not in ("claim", "verdict")}
        out.append({"claim": claim, **extra, **r["verdict"].row()})
    return pd.DataFrame(out)


def tally(table: pd.DataFrame, mask=None) -> str:
    """``"2 reproduced, 1 not reproduced, 3 inconclusive, 0 not testable"`` for prose."""
    _checked(_v.frame, "table", table, columns=("verdict",))
    if mask is not None and (isinstance(mask, (str, bytes, dict)) or np.ndim(mask) != 1 or len(mask) != len(table)):
        raise VerdictError(f"mask={_v.show(mask)} is not valid: it must be one True/False per row of table "
                           f"({len(table)})")
    v = table["verdict"] if mask is None else table.loc[mask, "verdict"]
    c = v.value_counts()
    parts = [f"{int(c.get(w, 0))} {w if w != 'not testable here' else 'not testable'}" for w in VERDICTS]
    if c.get("partly", 0):
        parts.insert(1, f"{int(c['partly'])} partly")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------
# Helpers kept for chapters 00, 04-06 (and library callers)
# ---------------------------------------------------------------------------------------


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
    :func:`scipy.stats.bootstrap` with the percentile method. Returns ``(nan, nan)`` for
    fewer than two items. Constant samples return the zero-width interval of their value:
    :func:`judge` refuses such intervals.
    """
    from scipy import stats

    if not samples:
        raise VerdictError("bootstrap_ci needs at least one sample (an array of per-item values)")
    level, n_resamples, seed = _level(level), _resamples(n_resamples), _seed(seed)
    paired = _check_bool("paired", paired)
    _checked(_v.function, "statistic", statistic)
    arrays = []
    for i, s in enumerate(samples):
        a = _as_values(f"samples[{i}]", s, ravel=True)
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
        confidence_level=level, method="percentile", rng=np.random.default_rng(seed),
    )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def change_interval(change, *, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """95% interval of the mean per-item change of a 0/1 outcome (``after - before``, each
    in {-1, 0, 1}), for claims of *no change*: the rule of three when no item changed
    (``(-3/n, 3/n)``), otherwise the seeded percentile bootstrap. ``(nan, nan)`` below two
    items. (:func:`judge` with ``binary=True`` does the same inside the protocol.)
    """
    seed, level = _seed(seed), _level(level)
    if change is None or isinstance(change, (str, bytes, dict)):
        raise VerdictError(f"change={_v.show(change)} is not valid: it must be an array of per-item changes")
    try:
        d = np.asarray(change, dtype=float).ravel()
    except (TypeError, ValueError):
        raise VerdictError(f"change={_v.show(change)} is not valid: it must be an array of numbers") from None
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
    picking as many of ``values``. ``alternative="less"``: the share of same-size subsets
    whose mean is at most the observed one (``"greater"``: at least). Exact over all
    subsets when there are at most ``max_exact`` of them, otherwise
    ``(hits + 1) / (n_perm + 1)`` over ``n_perm`` seeded random subsets. ``nan`` when the
    mask selects none or all of the values.
    """
    import itertools

    max_exact, n_perm, seed = (_checked(_v.integer, "max_exact", max_exact, low=0), _resamples(n_perm, "n_perm"),
                               _seed(seed))
    v = _as_values("values", values, ravel=True)
    if mask is None or isinstance(mask, (str, bytes, dict)):
        raise VerdictError(f"mask={_v.show(mask)} is not valid: it must be one True/False per value")
    m = np.asarray(mask).ravel()
    if m.dtype != bool and not (m.dtype.kind in "iu" and np.isin(m, (0, 1)).all()):
        raise VerdictError(f"mask={_v.show(mask)} is not valid: it must be one True/False per value")
    m = m.astype(bool)
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
    """The older rule, kept for chapters 04-06 until their own issues move them to
    :func:`judge`: *reproduced* when the effect's interval lies beyond the null's interval
    (by ``min_effect``), *partly* when only the point estimate does, *not reproduced*
    otherwise; ``within`` claims against ``null +- tol``. Its rows say
    ``asserts="unclassified"``. Do not use it in new code.
    """
    effect, null = _real("effect", effect), _real("null", null)
    if not isinstance(why, str):
        raise VerdictError(f"why={why!r} must be a string")
    if not isinstance(direction, str) or direction not in DIRECTIONS:
        raise VerdictError(f"direction={direction!r} is not valid; choose one of: {', '.join(DIRECTIONS)}")
    if not _finite(min_effect) or isinstance(min_effect, (str, bool)) or min_effect < 0:
        raise VerdictError(f"min_effect={min_effect!r} must be a finite number >= 0")
    if tol is not None:
        _real("tol", tol)
    if direction == "within" and (tol is None or not _finite(tol) or tol < 0):
        raise VerdictError("direction='within' needs tol, a finite number >= 0 (the equivalence band)")
    testable = _check_bool("testable", testable)
    lo, hi = _pair("interval", interval)
    if null_interval is None:
        null_interval = (null, null)
    nlo, nhi = _pair("null_interval", null_interval)
    effect_f = float(effect) if _finite(effect) else float("nan")
    null_f = float(null) if _finite(null) else float("nan")
    if direction == "within":
        rule = f"no change: effect's 95% interval inside null +- {tol:g}"
    else:
        side = "above" if direction == "greater" else "below"
        rule = f"effect's 95% interval {side} the null's" + (f" by at least {min_effect:g}" if min_effect > 0 else "")
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
