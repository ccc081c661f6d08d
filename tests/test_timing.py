"""fairvlm.timing: the one A/B timer with its A/A noise check (chapters 07 and 08)."""

from __future__ import annotations

import itertools

import pytest

from fairvlm.params import ParameterError
from fairvlm.timing import time_ab


def _fake_clock(durations):
    """A clock whose successive (start, stop) pairs are ``durations`` apart."""
    ticks = itertools.accumulate(itertools.chain.from_iterable((0.0, d) for d in durations))
    return lambda: next(ticks)


def test_ratio_extra_and_aa_noise_on_a_fake_clock():
    # interleaved plain, method, plain again: 1.0 s, 1.5 s, 1.0 s on every repeat
    clock = _fake_clock([1.0, 1.5, 1.0] * 5)
    t = time_ab(lambda: None, lambda: None, repeats=5, n_inputs=500, warmup=False, clock=clock)
    assert t["ratio"] == pytest.approx(1.5) and t["interval"] == pytest.approx((1.5, 1.5))
    assert t["noise"] == pytest.approx(1.0) and t["valid"]
    assert t["extra_s_per_1000"] == pytest.approx(1.0) and t["plain_s_per_1000"] == pytest.approx(2.0)
    assert t["noise_s_per_1000"] == pytest.approx(0.0)
    assert t["times"]["method"] == [1.5] * 5 and t["repeats"] == 5 and t["n_inputs"] == 500


def test_a_method_faster_than_plain_beyond_the_aa_band_is_invalid():
    clock = _fake_clock([1.0, 0.5, 1.0] * 4)
    t = time_ab(lambda: None, lambda: None, repeats=4, warmup=False, clock=clock)
    assert not t["valid"] and "extra_s_per_1000" not in t


def test_calls_and_order():
    calls = []
    time_ab(lambda: calls.append("p"), lambda: calls.append("m"), repeats=3)
    assert calls == ["p"] + ["p", "m", "p"] * 3


@pytest.mark.parametrize("kw", [{"repeats": 2}, {"repeats": True}, {"n_inputs": 0}, {"n_inputs": 1.5}])
def test_bad_arguments(kw):
    with pytest.raises(ParameterError):
        time_ab(lambda: None, lambda: None, **kw)
    with pytest.raises(ParameterError, match="callables"):
        time_ab(None, lambda: None)
