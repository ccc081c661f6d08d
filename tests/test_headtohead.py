"""The head-to-head measures (chapter 08) on constructed cases, and its world loader."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fairvlm import headtohead as H
from fairvlm.errors import FairVLMError
from fairvlm.params import ParameterError


def _case(seed=0):
    """40 skewed scenarios, 9 balanced controls; behaviour = 0.5 + the planted skew + a little noise."""
    rng = np.random.default_rng(seed)
    u = np.concatenate([rng.uniform(-0.35, 0.35, 40), np.zeros(9)])
    bal = np.r_[np.zeros(40, bool), np.ones(9, bool)]
    before = 0.5 + u + rng.normal(0, 0.01, u.size)
    return u, bal, ~bal, before


def test_removing_half_the_skew_reads_half():
    u, bal, sub, before = _case()
    ref = before[bal].mean()
    after = ref + 0.5 * (before - ref)        # every scenario's skew halved
    r = H.removed(u, before, after, balanced=bal, subset=sub)
    assert r["removed"] == pytest.approx(0.5, abs=1e-9)
    assert r["removed_lo"] <= 0.5 <= r["removed_hi"]
    assert r["removed_abs"] == pytest.approx(0.5 * r["expressed_before"], abs=1e-9)
    assert r["expressed_before"] == pytest.approx(1.0, abs=0.05)    # the model shows the written skew
    # the per-scenario units average to the same number
    units = H.removed_units(u, before, after, balanced=bal, subset=sub)
    assert units.size == sub.sum() and units.mean() == pytest.approx(r["removed_abs"], abs=1e-9)


def test_removing_half_of_an_exact_skew_without_controls():
    u = np.array([0.3, -0.2, 0.1, 0.25, -0.15])
    none = np.zeros(5, bool)
    r = H.removed(u, u, 0.5 * u, balanced=none, subset=np.ones(5, bool))
    assert r["removed"] == pytest.approx(0.5)


def test_a_uniform_shift_removes_nothing_and_is_collateral():
    u, bal, sub, before = _case(1)
    after = before - 0.2                     # every scenario moved alike
    r = H.removed(u, before, after, balanced=bal, subset=sub)
    assert abs(r["removed"]) < 1e-9 and abs(r["removed_abs"]) < 1e-9
    c = H.collateral(before, after, balanced=bal, other_before=before, other_after=after)
    assert c["balanced"] == pytest.approx(0.2) and c["other"] == pytest.approx(0.2)
    # against a method that removes the skew and leaves the controls alone
    ref = before[bal].mean()
    good = np.where(bal, before, ref)
    assert H.collateral(before, good, balanced=bal)["balanced"] == pytest.approx(0.0)
    assert H.removed(u, before, good, balanced=bal, subset=sub)["removed"] == pytest.approx(1.0, abs=0.02)


def test_no_planted_skew_gives_no_share():
    rng = np.random.default_rng(2)
    u, bal, sub, _ = _case(2)
    before = 0.5 + rng.normal(0, 0.02, u.size)          # a model that learned nothing
    r = H.removed(u, before, before - 0.01 * u, balanced=bal, subset=sub)
    assert np.isnan(r["removed"]) and np.isfinite(r["removed_abs"])


def test_utility_kept_and_timing():
    before = np.r_[np.ones(80), np.zeros(20)]
    after = np.r_[np.ones(60), np.zeros(40)]
    k = H.utility_kept(before, after)
    assert k["kept"] == pytest.approx(0.75) and k["kept_lo"] < 0.75 < k["kept_hi"]
    with pytest.raises(FairVLMError):
        H.utility_kept(np.zeros(5), np.zeros(5))
    t = H.time_per_1000(lambda: sum(range(1000)), lambda: sum(range(1000)), 10, repeats=3)
    assert {"extra_s_per_1000", "extra_lo", "extra_hi", "plain_s_per_1000"} <= set(t)


def test_bad_inputs_are_one_clear_error():
    u, bal, sub, before = _case()
    with pytest.raises(FairVLMError, match="1-D array of 49"):
        H.removed(u, before[:10], before[:10], balanced=bal, subset=sub)
    with pytest.raises(FairVLMError, match="no scenario with a planted skew"):
        H.removed(u, before, before, balanced=bal, subset=bal)
    with pytest.raises(FairVLMError, match="NaN"):
        H.removed(u, np.full(u.size, np.nan), before, balanced=bal, subset=sub)


def test_world_loader():
    assert H.resolve_world("strength-0") == "strength-0"
    assert H.resolve_world(0.5) == "strength-0.5"
    assert H.resolve_world("0") == "strength-0"
    assert H.resolve_world(1) == "default"
    for bad in (0.7, "strength-2", "", None, True, float("nan")):
        with pytest.raises(FairVLMError, match="unknown testbed world or strength") as e:
            H.resolve_world(bad)
        assert "strength-0.5 (strength 0.5)" in str(e.value)


def test_sweep_worlds(monkeypatch):
    monkeypatch.delenv("FAIRVLM_WORLD", raising=False)
    assert H.sweep_worlds("") == ["strength-0", "strength-0.5", "default"]
    assert H.sweep_worlds("1, 0") == ["default", "strength-0"]
    monkeypatch.setenv("FAIRVLM_WORLD", "strength-0")
    assert H.sweep_worlds("") == ["strength-0"]
    with pytest.raises(FairVLMError, match="twice"):
        H.sweep_worlds("default,1")
    with pytest.raises(FairVLMError, match="unknown testbed world"):
        H.sweep_worlds("strength-0.25")
    import os

    with H.in_world("strength-0.5"):
        assert os.environ["FAIRVLM_WORLD"] == "strength-0.5"
    assert os.environ["FAIRVLM_WORLD"] == "strength-0"


def test_scenario_classes():
    c = H.scenario_classes("gender")
    assert len(c) == 50
    assert (c["cls"] == "balanced").sum() == 9 and (c["cls"] == "counter").sum() == 2
    assert (c.loc[c["cls"] == "balanced", "u"] == 0).all()
    with pytest.raises(FairVLMError):
        H.scenario_classes("age")


def test_pair_shares_on_a_constructed_gallery():
    import pandas as pd
    import torch

    # one scenario, two men and two women; the query is closest to the men
    meta = pd.DataFrame({"scenario": ["a"] * 4 + ["b"] * 4, "gender": ["male", "male", "female", "female"] * 2,
                         "race": ["black", "white"] * 4})
    img = torch.eye(8)
    q = torch.zeros(2, 8)
    q[0, [0, 1]] = 1.0          # scenario a: both men first
    q[1, [4, 6]] = 1.0          # scenario b: one man, one woman: no preference on gender; Black first on race
    male, black = H.pair_shares(q, img, meta, ["a", "b"])
    assert male.tolist() == [1.0, 0.5]
    assert black[1] == 1.0 and black[0] == 0.5
    with pytest.raises(FairVLMError, match="no male"):
        H.pair_shares(q[:1], img, meta.assign(gender="female"), ["a"])


def test_debiaslens_is_never_trained_for_a_world_without_its_saes(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRVLM_CACHE", str(tmp_path))
    saes, why = H.debiaslens_saes("strength-0")
    assert saes is None and "default world only" in why
    assert not any(tmp_path.rglob("*.safetensors"))          # nothing trained into the cache


def test_debiaslens_ignores_saes_trained_into_the_cache(tmp_path, monkeypatch):
    """A cached SAE folder (chapter 06 run on another world) must not change chapter 08's
    tables: only the shipped SAEs count, even where a cached folder would pass its checks."""
    from fairvlm import debiaslens as DL

    monkeypatch.setenv("FAIRVLM_CACHE", str(tmp_path))
    key, _ = DL.build_key("testbed-clip", "testbed-llava", profile="embedded", world="strength-0", seed=0,
                          size="full")
    (tmp_path / "sae" / "06_debiaslens" / key).mkdir(parents=True)
    # every folder that exists passes its checks (the cached one would be served)
    monkeypatch.setattr(DL, "_check_folder", lambda folder, key: "" if Path(folder).is_dir() else "absent")
    monkeypatch.setattr(DL, "_read_folder", lambda folder: ({"image": folder}, None, None))
    assert not Path(DL.shipped_folder("strength-0", "embedded")).is_dir()      # not shipped for that world
    saes, why = H.debiaslens_saes("strength-0")
    assert saes is None and "default world only" in why


def test_llava_temperature_changes_no_answer_but_shrinks_the_lean():
    logits = pd.DataFrame({"scenario": ["a", "a", "b", "b"], "order": [0, 1, 0, 1],
                           "za": [[2.0, 1.0], [0.5, 0.1], [1.0, 1.0], [-1.0, -2.0]],
                           "zb": [[1.0, 0.0], [1.5, 0.2], [1.0, 0.5], [0.0, -3.0]]})
    b1, b2 = H.llava_behaviour(logits), H.llava_behaviour(logits, temperature=2.0)
    assert np.array_equal(b1["answer"], b2["answer"])
    assert b1["answer"].tolist() == [0.5, 0.25]
    assert not np.allclose(b1["lean"], b2["lean"])
    with pytest.raises(ParameterError):
        H.llava_behaviour(logits, temperature=0)


def test_llava_scenarios_fixed_set_with_balanced_controls():
    keys = H.llava_scenarios(n_planted=4, n_balanced=2)
    cls = H.scenario_classes().set_index("scenario").loc[keys, "cls"]
    assert (cls == "planted").sum() == 4 and (cls == "balanced").sum() == 2
    assert keys == H.llava_scenarios(n_planted=4, n_balanced=2)
