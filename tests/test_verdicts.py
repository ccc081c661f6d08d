"""fairvlm.verdicts: every branch of the protocol on constructed data (hand-computed where
the arithmetic allows), the bootstraps it rests on, and the legacy rule chapters 04-06 use."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fairvlm.errors import FairVLMError
from fairvlm.verdicts import (Claim, Estimate, Verdict, apply_rule, bootstrap_ci, change_interval, decide, judge,
                              judge_estimates, min_detectable_effect, paired_estimates, tally, unpaired_estimates,
                              verdict_table)

BIAS = Claim("the model leans to a group", "bias", direction="greater", min_effect=0.1)
DEBIAS = Claim("the method lowers the bias", "debias", direction="less", min_effect=0.05)
SAME = Claim("accuracy does not move", "no-change", direction="within", tol=0.05)


def E(v, lo, hi, n=50, spread=True):
    return Estimate(v, lo, hi, n, spread)


# ================================================================== apply_rule, hand-made estimates
def test_reproduced_needs_difference_beyond_size_and_effect_in_direction():
    v = apply_rule(BIAS, E(0.4, 0.3, 0.5), E(0.0, -0.05, 0.05), E(0.4, 0.3, 0.5))
    assert v.verdict == "reproduced" and v.bias_claim and v.asserts == "bias"
    assert v.difference == 0.4 and v.difference_interval == (0.3, 0.5)


def test_interval_below_the_size_is_not_reproduced():
    # the ch01 case: an effect of 3-13% of the named size can be ruled out
    v = apply_rule(BIAS, E(0.05, 0.03, 0.07), E(0.0, -0.01, 0.01), E(0.05, 0.02, 0.08))
    assert v.verdict == "not reproduced" and "below the claimed size" in v.why


def test_straddling_interval_is_inconclusive_with_hand_computed_mde():
    v = apply_rule(BIAS, E(0.2, 0.1, 0.3), E(0.0, -0.05, 0.05), E(0.15, 0.05, 0.30))
    assert v.verdict == "inconclusive"
    z = stats.norm.ppf(0.975)
    expected = (z + stats.norm.ppf(0.8)) * 0.25 / (2 * z)          # = 0.17856...
    assert v.mde == pytest.approx(expected) and v.mde == pytest.approx(0.1786, abs=1e-4)
    assert "minimum detectable effect" in v.why and "0.179" in v.why


def test_debiasing_must_lower_the_bias_itself():
    # the bias rose by 0.03 under the method but by 0.2 under a harmful null: the difference
    # clears the size, the effect is on the wrong side of 0 -> not reproduced
    v = apply_rule(DEBIAS, E(0.03, 0.01, 0.05), E(0.2, 0.18, 0.22), E(-0.17, -0.19, -0.15))
    assert v.verdict == "not reproduced" and "wrong side" in v.why
    # the effect's own interval includes 0: not shown, not ruled out
    v = apply_rule(DEBIAS, E(-0.003, -0.01, 0.009), E(0.2, 0.18, 0.22), E(-0.2, -0.22, -0.18))
    assert v.verdict == "inconclusive" and "includes 0" in v.why
    # both shown: reproduced
    v = apply_rule(DEBIAS, E(-0.2, -0.25, -0.15), E(0.0, -0.01, 0.01), E(-0.2, -0.26, -0.14))
    assert v.verdict == "reproduced" and v.bias_claim


def test_less_mirrors_greater():
    assert apply_rule(DEBIAS, E(-0.02, -0.03, -0.01), E(0, 0, 0), E(-0.02, -0.03, -0.01)).verdict == "not reproduced"
    assert apply_rule(DEBIAS, E(-0.06, -0.1, -0.02), E(0, 0, 0), E(-0.06, -0.1, -0.02)).verdict == "inconclusive"


def test_effect_ref_none_skips_the_own_direction_check():
    c = Claim("skew beyond null", "bias", min_effect=0.01, effect_ref=None)
    assert apply_rule(c, E(-1.0, -1.1, -0.9), E(-2, -2, -2), E(1.0, 0.9, 1.1)).verdict == "reproduced"
    c2 = Claim("skew beyond null", "bias", min_effect=0.01, effect_ref=-0.5)
    assert apply_rule(c2, E(-1.0, -1.1, -0.9), E(-2, -2, -2), E(1.0, 0.9, 1.1)).verdict == "not reproduced"


# ------------------------------------------------------------------ not testable
def test_not_testable_by_flag_units_nan_and_zero_width():
    ok = (E(0.4, 0.3, 0.5), E(0.0, -0.05, 0.05), E(0.4, 0.3, 0.5))
    v = apply_rule(BIAS, *ok, testable=False, why="the model shows no bias to remove")
    assert v.verdict == "not testable here" and "no bias" in v.why
    assert apply_rule(BIAS, ok[0], ok[1], E(0.4, 0.3, 0.5, n=1)).verdict == "not testable here"
    v = apply_rule(BIAS, ok[0], ok[1], E(0.4, 0.3, 0.5, n=4))          # 4 clusters: too few to resample
    assert v.verdict == "not testable here" and "at least 5" in v.why
    assert apply_rule(BIAS, ok[0], ok[1], E(0.4, 0.3, 0.5, n=5)).verdict == "reproduced"
    assert apply_rule(BIAS, E(math.nan, math.nan, math.nan), ok[1], ok[2]).verdict == "not testable here"
    # the ch02 case: a peak of [0.733, 0.733] is refused, not read as certainty
    v = apply_rule(BIAS, E(0.733, 0.733, 0.733, spread=False), ok[1], E(0.733, 0.733, 0.733, spread=False))
    assert v.verdict == "not testable here" and "zero" in v.why
    assert apply_rule(BIAS, ok[0], ok[1], E(0.4, 0.4, 0.4)).verdict == "not testable here"


# ------------------------------------------------------------------ within (TOST)
def test_within_inside_outside_straddling():
    assert apply_rule(SAME, E(0.01, -0.02, 0.03), E(0, 0, 0), E(0.01, -0.02, 0.03)).verdict == "reproduced"
    assert apply_rule(SAME, E(0.2, 0.1, 0.3), E(0, 0, 0), E(0.2, 0.1, 0.3)).verdict == "not reproduced"
    v = apply_rule(SAME, E(0.01, -0.1, 0.12), E(0, 0, 0), E(0.01, -0.1, 0.12))
    assert v.verdict == "inconclusive" and np.isfinite(v.mde)
    assert "90%" in v.rule


def test_within_tolerance_must_exceed_one_units_weight():
    # 10 items of 0/1 outcomes: one item moves the mean by 0.1 > tol 0.05
    v = apply_rule(SAME, E(0.0, -0.02, 0.02, n=10), E(0, 0, 0), E(0.0, -0.02, 0.02, n=10), resolution=0.1)
    assert v.verdict == "not testable here" and "one unit" in v.why


def test_judge_binary_no_change_uses_rule_of_three():
    before = np.zeros(100)
    v = judge(SAME, before, before, binary=True)
    b = 1 - 0.05 ** (1 / 100)                       # 0.0295: inside +-0.05
    assert v.difference_interval == pytest.approx((-b, b)) and v.verdict == "reproduced"
    tight = Claim("accuracy does not move", "no-change", direction="within", tol=0.02)
    assert judge(tight, before, before, binary=True).verdict == "inconclusive"      # 0.0295 > 0.02 > 1/100
    assert judge(tight, np.zeros(40), np.zeros(40), binary=True).verdict == "not testable here"  # 0.02 < 1/40
    # without binary=True a constant change is refused
    assert judge(SAME, before, before).verdict == "not testable here"


def test_no_change_needs_a_shown_effect_first():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    b = a + rng.normal(0, 0.01, 200)
    shown = apply_rule(BIAS, E(0.4, 0.3, 0.5), E(0, 0, 0), E(0.4, 0.3, 0.5))
    assert judge(SAME, a, b, after=shown).verdict == "reproduced"
    not_shown = apply_rule(BIAS, E(0.2, 0.1, 0.3), E(0, 0, 0), E(0.15, 0.05, 0.3))
    v = judge(SAME, a, b, after=not_shown)
    assert v.verdict == "not testable here" and "not shown" in v.why


# ================================================================== judge on constructed samples
def test_judge_paired_point_values_are_hand_computable():
    e = np.array([1.0, 2.0, 3.0, 4.0])
    c = np.array([0.5, 1.0, 1.0, 1.5])
    v = judge(Claim("x", "bias", min_effect=0.5), e, c)
    assert v.effect == 2.5 and v.null == 1.0 and v.difference == 1.5 and v.n_units == 4


def test_paired_interval_matches_scipy_bca_on_the_difference():
    rng = np.random.default_rng(3)
    e, c = rng.normal(1, 1, 60), rng.normal(0, 1, 60)
    _, _, d = paired_estimates(e, c, seed=5)
    ref = stats.bootstrap((e - c,), np.mean, method="BCa", n_resamples=2000, rng=np.random.default_rng(5))
    assert d.interval == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))


def test_paired_is_tighter_than_unpaired_with_a_shared_item_effect():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, 300)
    after = base + 0.1 + rng.normal(0, 0.05, 300)
    _, _, dp = paired_estimates(after, base)
    _, _, du = unpaired_estimates(after, base)
    assert 0.05 < dp.low and dp.high < 0.15
    assert (dp.high - dp.low) < (du.high - du.low) / 3


def test_cluster_bootstrap_resamples_clusters_not_rows():
    rng = np.random.default_rng(1)
    means = rng.normal(0, 1, 12)
    rows = np.repeat(means, 8)                      # 8 identical prompts per item
    ids = np.repeat(np.arange(12), 8)
    clustered, _, _ = unpaired_estimates(rows, 0.0, clusters=ids)
    per_item, _, _ = unpaired_estimates(means, 0.0)
    naive, _, _ = unpaired_estimates(rows, 0.0)
    # equal cluster sizes: resampling clusters is resampling the item means
    assert clustered.interval == pytest.approx(per_item.interval) and clustered.n_units == 12
    # treating the 96 rows as independent would claim about sqrt(8) times the precision
    assert (naive.high - naive.low) < 0.5 * (clustered.high - clustered.low)


def test_unpaired_with_point_control_is_a_shift():
    rng = np.random.default_rng(2)
    x = rng.normal(0.6, 0.1, 50)
    e, c, d = unpaired_estimates(x, 0.5)
    assert c.value == 0.5 and c.n_units == 0
    assert d.low == pytest.approx(e.low - 0.5) and d.high == pytest.approx(e.high - 0.5)


def test_judge_end_to_end_branches():
    rng = np.random.default_rng(4)
    ctrl = rng.normal(0.0, 0.1, 80)
    assert judge(BIAS, ctrl + 0.5 + rng.normal(0, 0.05, 80), ctrl).verdict == "reproduced"
    assert judge(BIAS, ctrl + rng.normal(0, 0.02, 80), ctrl).verdict == "not reproduced"
    assert judge(BIAS, ctrl + 0.1 + rng.normal(0, 0.3, 80), ctrl).verdict == "inconclusive"
    # a constant effect over 80 units: its order-statistic interval is [0.733, 0.733] (sign test), so it is read
    v = judge(BIAS, np.full(80, 0.733), ctrl)
    assert v.verdict == "reproduced" and v.interval == (0.733, 0.733) and "same effect" in v.why
    assert judge(BIAS, [0.3], [0.1]).verdict == "not testable here"                      # one unit


def test_judge_seeded():
    rng = np.random.default_rng(5)
    e, c = rng.normal(size=40), rng.normal(size=40)
    a, b = judge(BIAS, e, c, seed=7), judge(BIAS, e, c, seed=7)
    assert a.difference_interval == b.difference_interval and a.verdict == b.verdict
    assert judge(BIAS, e, c, seed=8).difference_interval != a.difference_interval


# ================================================================== bad input
@pytest.mark.parametrize("kwargs,match", [
    ({"asserts": "maybe"}, "asserts"),
    ({"direction": "bigger"}, "direction"),
    ({"min_effect": 0.0}, "min_effect"),
    ({"min_effect": float("nan")}, "min_effect"),
    ({"direction": "within", "asserts": "no-change"}, "tol"),
    ({"direction": "within", "asserts": "no-change", "tol": -0.1}, "tol"),
    ({"asserts": "no-change"}, "within"),
    ({"text": ""}, "text"),
    ({"effect_ref": float("inf")}, "effect_ref"),
])
def test_bad_claims_raise(kwargs, match):
    base = dict(text="c", asserts="bias", direction="greater", min_effect=0.1)
    with pytest.raises(FairVLMError, match=match):
        Claim(**{**base, **kwargs})


def test_bad_judge_inputs_name_the_parameter():
    with pytest.raises(FairVLMError, match="effect"):
        judge(BIAS, [0.1, float("nan"), 0.3], [0.0, 0.0, 0.1])
    with pytest.raises(FairVLMError, match="control"):
        judge(BIAS, [0.1, 0.2, 0.3], [0.0, float("inf"), 0.1])
    with pytest.raises(FairVLMError, match="one length"):
        judge(BIAS, [0.1, 0.2, 0.3], [0.0, 0.1])
    with pytest.raises(FairVLMError, match="clusters"):
        judge(BIAS, [0.1, 0.2, 0.3], [0.0, 0.1, 0.1], clusters=[0, 1])
    with pytest.raises(FairVLMError, match="1-D"):
        judge(BIAS, np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(FairVLMError, match="testable"):
        judge(BIAS, [0.1, 0.2, 0.9], [0.0, 0.1, 0.1], testable="no")
    with pytest.raises(FairVLMError, match="paired"):
        judge(BIAS, [0.1, 0.2, 0.9], [0.0, 0.1, 0.1], paired="yes")
    with pytest.raises(FairVLMError, match="claim"):
        judge("a claim", [0.1, 0.2], [0.0, 0.1])
    with pytest.raises(FairVLMError, match="after"):
        judge(SAME, [0.1, 0.2], [0.0, 0.1], after="reproduced")
    with pytest.raises(FairVLMError, match="control"):
        unpaired_estimates([0.1, 0.2], float("nan"))


def test_testable_no_never_returns_reproduced():
    ok = (E(0.4, 0.3, 0.5), E(0.0, -0.05, 0.05), E(0.4, 0.3, 0.5))
    for bad in ("no", "False", 0, None):
        with pytest.raises(FairVLMError, match="testable"):
            apply_rule(BIAS, *ok, testable=bad)


def test_unknown_verdict_word_raises():
    with pytest.raises(FairVLMError, match="verdict"):
        Verdict("probably", 0.1, (0, 0.2), 0.0, (0, 0), "greater", "r")


def test_judge_estimates_refuses_zero_width_and_bad_pairs():
    v = judge_estimates(BIAS, 0.733, (0.733, 0.733), 0.5, 0.233, (0.233, 0.233), n_units=20)
    assert v.verdict == "not testable here"
    v = judge_estimates(BIAS, 0.5, (0.4, 0.6), 0.1, 0.4, (0.3, 0.5), n_units=20, control_interval=(0.05, 0.15))
    assert v.verdict == "reproduced"
    with pytest.raises(FairVLMError, match="difference_interval"):
        judge_estimates(BIAS, 0.5, (0.4, 0.6), 0.1, 0.4, 0.3, n_units=20)
    with pytest.raises(FairVLMError, match="n_units"):
        judge_estimates(BIAS, 0.5, (0.4, 0.6), 0.1, 0.4, (0.3, 0.5), n_units=-1)
    with pytest.raises(FairVLMError, match="reversed"):
        judge_estimates(BIAS, 0.5, (0.4, 0.6), 0.1, 0.4, (0.5, 0.3), n_units=20)


def test_mde_of_bad_interval_is_nan():
    assert np.isnan(min_detectable_effect((float("nan"), 1.0)))
    assert np.isnan(min_detectable_effect((1.0, 0.0)))


# ================================================================== tables
def test_verdict_table_prints_effect_control_difference_rule_verdict():
    v = apply_rule(BIAS, E(0.4, 0.3, 0.5), E(0.0, -0.05, 0.05), E(0.4, 0.3, 0.5))
    t = verdict_table([{"cell": "m, d, gender", "verdict": v}])
    assert t.loc[0, "claim"] == BIAS.text
    for col in ("effect", "effect interval", "control", "difference", "difference interval", "rule", "verdict",
                "asserts", "bias_claim"):
        assert col in t.columns
    assert t.loc[0, "difference interval"] == "[0.300, 0.500]" and bool(t.loc[0, "bias_claim"])
    legacy = decide(0.3, (0.25, 0.35), null=0.1)
    assert "asserts" not in verdict_table([{"claim": "old", "verdict": legacy}]).columns   # 04-06 tables unchanged
    with pytest.raises(FairVLMError, match="claim"):
        verdict_table([{"verdict": legacy}])
    with pytest.raises(FairVLMError, match="verdict"):
        verdict_table([{"claim": "c", "verdict": "reproduced"}])


def test_tally_counts_every_word():
    t = verdict_table([{"verdict": apply_rule(BIAS, E(0.4, 0.3, 0.5), E(0, 0, 0), E(0.4, 0.3, 0.5))},
                       {"verdict": apply_rule(BIAS, E(0.4, 0.3, 0.5), E(0, 0, 0), E(0.4, 0.3, 0.5), testable=False)}])
    assert tally(t) == "1 reproduced, 0 not reproduced, 0 inconclusive, 1 not testable"


# ================================================================== legacy rule (chapters 04-06)
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


# ================================================================== constant units (sign test)
def test_constant_refuting_difference_reads_not_reproduced():
    # chapter 04's case: post-hoc answers 'fair' 0.0 and LoRA 1.0 in each of 22 scenarios; the claim is that
    # post-hoc is above LoRA by 0.05: every unit refutes it, so the sign test rules the size out
    above = Claim("post-hoc answers fair more often than LoRA", "debias", direction="greater", min_effect=0.05)
    v = judge(above, np.zeros(44), np.ones(44), clusters=np.repeat(np.arange(22), 2))
    assert v.verdict == "not reproduced" and v.difference == -1.0 and v.difference_interval == (-1.0, -1.0)
    assert "22 units" in v.why and "p = 4.8e-07" in v.why               # 2 * 0.5**22
    # the same in the 'less' direction
    assert judge(DEBIAS, np.ones(10), np.zeros(10)).verdict == "not reproduced"


def test_constant_zero_difference_is_not_beyond_the_size():
    # an edit that changes nothing in any of 8 units: the claimed lowering is absent in every unit
    x = np.linspace(0.2, 0.9, 8)
    v = judge(DEBIAS, x, x)
    assert v.verdict == "not reproduced" and v.difference == 0.0
    # a difference sitting exactly at the claimed size in every unit is not beyond it
    assert judge(BIAS, x + 0.1, x).verdict == "not reproduced"


def test_constant_supporting_difference_uses_the_usual_rule():
    rng = np.random.default_rng(3)
    ctrl = rng.uniform(0.0, 0.3, 12)
    v = judge(BIAS, ctrl + 0.4, ctrl)                                  # +0.4 in every unit, effect above 0
    assert v.verdict == "reproduced" and v.difference_interval == pytest.approx((0.4, 0.4))
    # the effect must still clear its own reference: a constant +0.4 over a control at -0.5 leaves it below 0
    assert judge(BIAS, np.full(12, -0.1), np.full(12, -0.5)).verdict == "not reproduced"


def test_constant_units_need_six_units_and_pairing():
    # 5 units: 1 - 2 * 0.5**5 = 0.9375 < 0.95, so the constant sample stays refused
    assert judge(BIAS, np.zeros(5), np.ones(5)).verdict == "not testable here"
    assert judge(BIAS, np.zeros(6), np.ones(6)).verdict == "not reproduced"
    # rows that vary inside clusters whose means are equal count as constant units
    rows = np.array([0.0, 2.0] * 6)
    v = judge(BIAS, np.zeros(12), rows, clusters=np.repeat(np.arange(6), 2))
    assert v.verdict == "not reproduced" and v.difference == -1.0
    # unpaired constant samples are not covered by the sign test
    assert judge(BIAS, np.zeros(10), np.ones(10), paired=False).verdict == "not testable here"
    # equivalence claims keep their own zero-variance rule
    assert judge(SAME, np.zeros(10), np.zeros(10)).verdict == "not testable here"
