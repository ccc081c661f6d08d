"""Hand-computed cases for fairvlm.resfair_report and the baselines' stopping rule."""

import math

import numpy as np
import pandas as pd
import pytest

from fairvlm import resfair_report as R
from fairvlm.errors import FairVLMError
from fairvlm.resfair_baselines import TrainSettings, convergence, plateau_decision, select_rows, spread_rows


def _rows(method, parsed, scen, attr="gender", argmax=None):
    n = len(parsed)
    return pd.DataFrame({"method": method, "row_id": [f"r{i}" for i in range(n)], "scenario": scen,
                         "attribute": attr, "parsed": parsed,
                         "option_argmax": argmax if argmax is not None else parsed,
                         "model": "m", "dataset": "d"})


def test_skew_per_scenario_by_hand():
    t = _rows("o", ["a", "a", "b", "fair", "fair", "invalid"], ["s1", "s1", "s1", "s2", "s2", "s2"])
    s = skew_per_scenario = R.skew_per_scenario(t).set_index("scenario")
    assert s.loc["s1", "n_a"] == 2 and s.loc["s1", "n_b"] == 1
    assert s.loc["s1", "skew"] == pytest.approx(1 / 3)          # |2 - 1| / 3
    assert math.isnan(s.loc["s2", "skew"])                      # no group named
    assert skew_per_scenario is s


def test_null_skew_by_hand():
    assert R.null_skew(1) == pytest.approx(1.0)
    assert R.null_skew(2) == pytest.approx(0.5)        # (1/4)*1 + (1/2)*0 + (1/4)*1
    assert R.null_skew(3) == pytest.approx(0.5)        # (1/8)*1 + (3/8)*(1/3) * 2 + (1/8)*1
    assert math.isnan(R.null_skew(0))


def test_cell_table_shares():
    t = _rows("o", ["a", "a", "b", "fair", "fair", "invalid"], ["s1", "s1", "s1", "s2", "s2", "s2"])
    c = R.cell_table(t).iloc[0]
    assert c["fair"] == pytest.approx(2 / 6) and c["group"] == pytest.approx(3 / 6)
    assert c["invalid"] == pytest.approx(1 / 6) and c["group_skew"] == pytest.approx(1 / 3)


def test_abstaining_is_not_debiasing():
    # original: every scenario leans fully to group a; the method answers "both" everywhere
    scen = [f"s{i // 4}" for i in range(24)]
    orig = _rows("original", ["a"] * 24, scen)
    both = _rows("m", ["fair"] * 24, scen)
    e, c, f = R.skew_units(pd.concat([orig, both]), "m", "original")
    assert np.allclose(e, 1.0 - R.null_skew(4)) and np.allclose(c, e) and f["abstained"].all()
    # the fair proportion rises by 1, but the skew verdict cannot read reproduced
    table = pd.concat([orig, both])
    v = R.compare(table, "m", "original", measure="skew")
    assert v.verdict != "reproduced" and v.asserts == "debias"


def test_balanced_method_lowers_skew():
    scen = [f"s{i // 4}" for i in range(40)]
    orig = _rows("original", ["a", "a", "a", "b"] * 10, scen)          # skew 0.5 per scenario
    even = _rows("m", ["a", "b", "a", "b"] * 10, scen)                 # skew 0
    e, c, _ = R.skew_units(pd.concat([orig, even]), "m", "original")
    assert np.allclose(c, 0.5 - 0.375) and np.allclose(e, 0.0 - 0.375)   # null_skew(4) = 6/16


def test_paired_rows_refuses_unpaired():
    a = _rows("x", ["a", "b"], ["s1", "s2"])
    b = _rows("y", ["a"], ["s1"])
    with pytest.raises(FairVLMError):
        R.paired_rows(pd.concat([a, b]), "x", "y", "row_id")


def test_top_option_agreement():
    t = _rows("o", ["a", "fair", "b", "invalid"], ["s"] * 4, argmax=["fair", "fair", "b", "a"])
    assert R.top_option_agreement(t) == pytest.approx(2 / 3)


def test_at_chance():
    assert R.at_chance([1] * 14 + [0] * 26, 1 / 3)                     # 0.35 on three options
    assert not R.at_chance([1] * 30 + [0] * 10, 1 / 3)


def test_planted_units():
    scen = ["p"] * 4 + ["c"] * 4
    o = _rows("original", ["a"] * 8, scen)
    m = _rows("m", ["fair", "fair", "a", "a", "a", "a", "a", "fair"], scen)
    share = pd.DataFrame({"scenario": ["p", "c"], "gender_skew": [0.4, 0.0], "race_skew": [0.0, 0.0]})
    d = R.planted_units(pd.concat([o, m]), "m", "original", share).set_index("scenario")
    assert d.loc["p", "d_fair"] == pytest.approx(0.5) and d.loc["p", "planted"]
    assert d.loc["c", "d_fair"] == pytest.approx(0.25) and not d.loc["c", "planted"]


def test_plateau_decision():
    assert plateau_decision([1.0, 0.5]) == (False, False)             # too early
    assert plateau_decision([1.0, 0.5, 0.3]) == (False, False)        # still falling by 40%
    assert plateau_decision([1.0, 0.5, 0.495]) == (True, True)        # 1% < 2%: plateau
    assert plateau_decision([0.69, 0.5, 0.499], [0.0, 0.05, 0.05]) == (True, False)   # margin not risen
    assert plateau_decision([0.69, 0.5, 0.499], [0.0, 0.5, 0.6]) == (True, True)


def test_convergence_reading_at_the_ceiling():
    st = TrainSettings(max_epochs=3)
    assert convergence({"converged": True, "val_loss": [1, 0.5, 0.499]}, st) == (True, "plateau rule")
    # a geometric tail near zero: 5% a step, but 0.0001 nats: flat
    tail = {"converged": False, "val_loss": [1.4, 0.3, 0.0020, 0.0019], "val_margin": [0.0, 2.0, 6.8, 6.9]}
    assert convergence(tail, st) == (True, "flat at the ceiling")
    # the same tail whose margin never rose: the preference was not learnt
    assert convergence({**tail, "val_margin": [0.0, 0.01, 0.02, 0.05]}, st) == (False, "margin did not rise")
    # still falling by more than the floor at the ceiling
    assert convergence({"converged": False, "val_loss": [3.0, 2.0, 1.0, 0.5], "val_margin": None}, st)[0] is False
    # stopped before the ceiling without a plateau (cut off): not converged
    assert convergence({"converged": False, "val_loss": [1.4, 0.3, 0.0020], "val_margin": None}, st)[0] is False
    assert convergence({"converged": False, "val_loss": [1.0, float("nan"), float("nan"), float("nan")]}, st)[0] is False


class _Item:
    def __init__(self, s):
        self.scenario = s


class _Row:
    def __init__(self, i, s):
        self.row_id, self.item = f"r{i:03d}", _Item(s)


def test_select_rows_disjoint_scenarios():
    rows = [_Row(i, f"s{i % 10}") for i in range(100)]
    tr, va = select_rows(rows, 20, 10, seed=0)
    assert len(tr) == 20 and len(va) == 10
    assert not {r.item.scenario for r in tr} & {r.item.scenario for r in va}
    assert [r.row_id for r in tr] == [r.row_id for r in select_rows(rows, 20, 10, seed=0)[0]]


def test_adapter_artifact_checks(tmp_path):
    import torch

    from fairvlm import resfair_baselines as RB

    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    RB._save_entry(tmp_path, "a", state, {"build_key": "k1", "converged": True})
    got, rec, why = RB._load_entry(tmp_path, "a", "k1")
    assert why == "" and rec["converged"] and torch.equal(got["w"].float(), state["w"])
    assert RB._load_entry(tmp_path, "a", "k2")[0] is None                   # another build key
    assert "no b" in RB._load_entry(tmp_path, "b", "k1")[2]
    f = tmp_path / "a.safetensors"
    f.write_bytes(f.read_bytes()[:-4] + b"\0\0\0\0")                        # damaged, same size
    got, _, why = RB._load_entry(tmp_path, "a", "k1")
    assert got is None and "damaged" in why


def test_load_valid_reads_shipped_then_cache_and_never_trains(tmp_path, monkeypatch):
    import torch

    from fairvlm import resfair_baselines as RB

    shipped, cache = tmp_path / "shipped", tmp_path / "cache"
    monkeypatch.setattr(RB, "shipped_dir", lambda: shipped)
    monkeypatch.setattr(RB, "_cache_folder", lambda: cache)
    monkeypatch.setattr(RB, "artifact_name", lambda sp, method, profile: "a")
    monkeypatch.setattr(RB, "build_key", lambda sp, method, settings, seed: "k1")
    monkeypatch.setattr(RB, "train_one", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    args = ({}, "w/ LoRA", "smoke", RB.TrainSettings())
    state, rec, why = RB.load_valid(*args)
    assert state is None and rec is None and "no a in" in why and str(shipped) in why
    w = {"w": torch.ones(2, 2)}
    RB._save_entry(cache, "a", w, {"build_key": "k1"})
    state, rec, where = RB.load_valid(*args)
    assert where == "cache" and torch.equal(state["w"].float(), w["w"])
    assert RB.load_valid(*args, cache=False)[0] is None                    # shipped only
    RB._save_entry(shipped, "a", {"w": torch.zeros(2, 2)}, {"build_key": "k1"})
    state, _, where = RB.load_valid(*args)
    assert where == "shipped" and not state["w"].any()
    assert RB.get(*args, log=lambda m: None)[2] == "shipped"              # get serves it, never trains


def test_spread_rows_keeps_every_scenario():
    rows = [_Row(i, f"s{i // 10}") for i in range(40)]          # 4 scenarios of 10 rows, in order
    kept = spread_rows(rows, 8)
    assert len(kept) == 8
    assert sorted({r.item.scenario for r in kept}) == ["s0", "s1", "s2", "s3"]
    assert [sum(r.item.scenario == s for r in kept) for s in ("s0", "s1", "s2", "s3")] == [2, 2, 2, 2]
    assert kept == sorted(kept, key=lambda r: r.row_id)            # original order kept
    assert spread_rows(rows, None) == rows and spread_rows(rows, 100) == rows
    assert len(spread_rows(rows, 3)) == 3                          # fewer than scenarios: the first of three
    with pytest.raises(FairVLMError, match="max_eval_rows"):
        spread_rows(rows, 0)
