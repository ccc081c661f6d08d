"""fairvlm.verdicts: every outcome of the rule on constructed cases, and the bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from fairvlm.errors import FairVLMError
from fairvlm.verdicts import Verdict, bootstrap_ci, change_interval, decide, verdict_table


# ------------------------------------------------------------------ greater / less
def test_effect_interval_clear_of_null_is_reproduced():
    v = decide(0.30, (0.25, 0.35), null=0.10, null_interval=(0.08, 0.12))
    assert v.verdict == "reproduced"


def test_point_beyond_but_interval_overlapping_null_is_partly():
    v = decide(0.15, (0.10, 0.20), null=0.10, null_interval=(0.08, 0.12))
    assert v.verdict == "partly"


@pytest.mark.parametrize("effect,iv", [(0.11, (0.05, 0.30)), (0.12, (0.12, 0.12)), (0.09, (0.0, 0.5))])
def test_effect_inside_null_interval_is_never_reproduced(effect, iv):
    # even with a huge or degenerate effect interval, a point estimate inside the null's
    # interval is not the paper's effect
    v = decide(effect, iv, null=0.10, null_interval=(0.08, 0.12))
    assert v.verdict == "not reproduced"


def test_effect_on_wrong_side_is_not_reproduced():
    v = decide(-0.3, (-0.4, -0.2), null=0.0, null_interval=(-0.05, 0.05))
    assert v.verdict == "not reproduced"


def test_direction_less_mirrors_greater():
    assert decide(-0.3, (-0.4, -0.2), null=0.0, null_interval=(-0.05, 0.05), direction="less").verdict == "reproduced"
    assert decide(-0.07, (-0.1, -0.04), null=0.0, null_interval=(-0.05, 0.05), direction="less").verdict == "partly"
    assert decide(0.3, (0.2, 0.4), null=0.0, direction="less").verdict == "not reproduced"


def test_min_effect_demotes_a_small_separation_to_partly():
    v = decide(0.52, (0.515, 0.525), null=0.5, min_effect=0.05)
    assert v.verdict == "partly"
    assert decide(0.60, (0.58, 0.62), null=0.5, min_effect=0.05).verdict == "reproduced"


def test_point_null_without_interval():
    assert decide(0.6, (0.55, 0.65), null=0.5).verdict == "reproduced"
    assert decide(0.5, (0.45, 0.55), null=0.5).verdict == "not reproduced"


# ------------------------------------------------------------------ within
def test_within_band():
    assert decide(0.004, (-0.005, 0.009), null=0.0, direction="within", tol=0.01).verdict == "reproduced"
    assert decide(0.004, (-0.02, 0.03), null=0.0, direction="within", tol=0.01).verdict == "partly"
    assert decide(0.05, (0.04, 0.06), null=0.0, direction="within", tol=0.01).verdict == "not reproduced"


# ------------------------------------------------------------------ not testable
def test_not_testable_by_flag_and_by_nan():
    v = decide(0.3, (0.2, 0.4), null=0.0, testable=False, why="the model encodes no group")
    assert v.verdict == "not testable here" and "encodes no group" in v.why
    assert decide(float("nan"), (0.1, 0.2), null=0.0).verdict == "not testable here"
    assert decide(0.3, (float("nan"), float("nan")), null=0.0).verdict == "not testable here"
    assert decide(0.3, (0.2, 0.4), null=float("nan")).verdict == "not testable here"


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs,match", [
    ({"direction": "bigger"}, "direction"),
    ({"direction": "within"}, "tol"),
    ({"direction": "within", "tol": float("nan")}, "tol"),
    ({"min_effect": -1}, "min_effect"),
    ({"min_effect": float("nan")}, "min_effect"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(FairVLMError, match=match):
        decide(0.3, (0.2, 0.4), null=0.0, **kwargs)


def test_reversed_or_inconsistent_interval_raises():
    with pytest.raises(FairVLMError, match="reversed"):
        decide(0.3, (0.4, 0.2), null=0.0)
    with pytest.raises(FairVLMError, match="outside its own interval"):
        decide(0.9, (0.2, 0.4), null=0.0)
    with pytest.raises(FairVLMError, match="pair"):
        decide(0.3, 0.2, null=0.0)


# ------------------------------------------------------------------ bootstrap
def test_bootstrap_is_seeded_and_covers_the_mean():
    rng = np.random.default_rng(1)
    x = rng.normal(1.0, 1.0, size=400)
    a = bootstrap_ci(x, seed=3)
    b = bootstrap_ci(x, seed=3)
    assert a == b
    assert a[0] < x.mean() < a[1]
    # the percentile interval of the mean is about +-1.96 * sd / sqrt(n)
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert (a[1] - a[0]) / 2 == pytest.approx(half, rel=0.15)


def test_bootstrap_paired_difference_is_tighter_than_unpaired():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, size=300)
    after = base + 0.1 + rng.normal(0, 0.05, size=300)

    def diff(a, b, axis=-1):
        return b.mean(axis) - a.mean(axis)

    paired = bootstrap_ci(base, after, statistic=diff, paired=True)
    unpaired = bootstrap_ci(base, after, statistic=diff, paired=False)
    assert paired[0] > 0.05 and paired[1] < 0.15
    assert (paired[1] - paired[0]) < (unpaired[1] - unpaired[0]) / 3


def test_bootstrap_degenerate_and_small_samples():
    assert bootstrap_ci(np.ones(10)) == (1.0, 1.0)
    lo, hi = bootstrap_ci([0.5])
    assert np.isnan(lo) and np.isnan(hi)
    with pytest.raises(FairVLMError, match="NaN"):
        bootstrap_ci([0.1, float("nan"), 0.3])
    with pytest.raises(FairVLMError, match="equal length"):
        bootstrap_ci([1, 2, 3], [1, 2], statistic=lambda a, b, axis=-1: a.mean(axis) - b.mean(axis), paired=True)


def test_verdict_table_prints_null_beside_effect():
    v = decide(0.3, (0.25, 0.35), null=0.1, null_interval=(0.08, 0.12))
    t = verdict_table([{"claim": "c1", "paper": "Table 1", "verdict": v}])
    assert list(t.columns[:2]) == ["claim", "paper"]
    assert {"effect", "interval", "null", "null interval", "verdict", "rule"} <= set(t.columns)
    assert t.loc[0, "verdict"] == "reproduced" and t.loc[0, "null interval"] == "[0.080, 0.120]"
    with pytest.raises(FairVLMError, match="claim"):
        verdict_table([{"verdict": v}])
    assert isinstance(v, Verdict)


def test_change_interval_no_change_uses_rule_of_three():
    # 20 questions, none changed: the bootstrap would say (0, 0); the rule of three says +-3/20
    assert change_interval(np.zeros(20)) == (-0.15, 0.15)
    # ... so an "unchanged within one question in 20" claim cannot be reproduced from 20 items
    v = decide(0.0, change_interval(np.zeros(20)), 0.0, direction="within", tol=0.05)
    assert v.verdict == "partly"
    # with 300 unchanged items the bound is 0.01, inside a 0.05 band
    v = decide(0.0, change_interval(np.zeros(300)), 0.0, direction="within", tol=0.05)
    assert v.verdict == "reproduced"


def test_change_interval_with_changes_is_the_bootstrap():
    d = np.array([0, 0, 1, 0, -1, 0, 0, 1, 0, 0], float)
    assert change_interval(d, seed=1) == bootstrap_ci(d, seed=1)
    lo, hi = change_interval(d, seed=1)
    assert lo <= d.mean() <= hi


@pytest.mark.parametrize("bad", [[0, 2, 0], [0, np.nan, 0]])
def test_change_interval_refuses_bad_changes(bad):
    with pytest.raises(FairVLMError):
        change_interval(bad)


def test_change_interval_too_few_items():
    assert all(np.isnan(change_interval([0])))


def test_subset_mean_pvalue_hand_computed():
    from fairvlm.verdicts import subset_mean_pvalue

    # one of four values, the smallest: 1 of the 4 single-value subsets has a mean <= 1
    assert subset_mean_pvalue([1, 2, 3, 4], [1, 0, 0, 0]) == 0.25
    assert subset_mean_pvalue([1, 2, 3, 4], [1, 0, 0, 0], alternative="greater") == 1.0
    # two zeros among three fives: 1 of the C(5, 2) = 10 pairs has mean <= 0
    assert subset_mean_pvalue([0, 0, 5, 5, 5], [1, 1, 0, 0, 0]) == 0.1
    # pairs with mean >= 5: the C(3, 2) = 3 pairs of fives, of 10
    assert subset_mean_pvalue([0, 0, 5, 5, 5], [0, 0, 1, 1, 0], alternative="greater") == 0.3
    # ties count as hits: all equal values give p = 1
    assert subset_mean_pvalue([2.0] * 6, [1, 1, 0, 0, 0, 0]) == 1.0
    # Monte Carlo when the subsets are too many, close to the exact value and never 0
    rng = np.random.default_rng(1)
    v = rng.normal(size=12)
    mask = np.zeros(12, bool)
    mask[np.argsort(v)[:3]] = True                    # the three smallest: exact p = 1 / C(12, 3)
    exact = subset_mean_pvalue(v, mask)
    assert exact == pytest.approx(1 / 220)
    mc = subset_mean_pvalue(v, mask, max_exact=10, n_perm=4000)
    assert 0 < mc < 0.01
    assert np.isnan(subset_mean_pvalue([1, 2], [0, 0])) and np.isnan(subset_mean_pvalue([1, 2], [1, 1]))
    with pytest.raises(FairVLMError, match="mask"):
        subset_mean_pvalue([1, 2, 3], [1, 0])
    with pytest.raises(FairVLMError, match="NaN"):
        subset_mean_pvalue([1, float("nan")], [1, 0])
    with pytest.raises(FairVLMError, match="alternative"):
        subset_mean_pvalue([1, 2], [1, 0], alternative="two-sided")
