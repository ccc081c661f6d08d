"""fairvlm.steering_eval's tables and verdicts on hand-made generation tables (no model)."""

import numpy as np
import pandas as pd
import pytest

from fairvlm import steering_eval as se
from fairvlm.errors import FairVLMError


def _gen(n_clusters=8, *, drop=None, role=None, gap=None, seed=0):
    """Rows for every method: ``drop[m]`` the share of gender mentions method ``m`` removes,
    ``role[m]`` its role-retention share, ``gap`` the unsteered woman-minus-man gap."""
    rng = np.random.default_rng(seed)
    drop, role = drop or {}, role or {}
    rows = []
    for m in se.METHODS:
        r2 = np.random.default_rng(seed)          # the same draws for every method: paired rows
        r3 = np.random.default_rng(seed + 1)
        for c in range(n_clusters):
            for v, (g, race) in enumerate((("man", "black"), ("man", "white"), ("woman", "black"), ("woman", "white"))):
                for p in range(3):
                    base = 0.5 + (gap or 0.0) * (0.5 if g == "woman" else -0.5)
                    mg = int(r2.random() < base)
                    if mg and r2.random() < drop.get(m, 0.0):
                        mg = 0
                    rn = int(r3.random() < role.get(m, 0.6))
                    if m == "unsteered" and (c + v + p) % 5 == 0:
                        rn = 1 - rn                           # some rows change: a bootstrap needs spread
                    rows.append({"model": "tb", "method": m, "item": c * 4 + v, "prompt_id": p, "seed": 0,
                                 "group": f"{race}_{g}", "gender": g, "race": race, "role": "x",
                                 "cluster": f"s{c}", "m_gender": mg, "m_race": int(rng.random() < 0.3),
                                 "neg": 0, "role_named": rn, "text": ""})
    return pd.DataFrame(rows)


def _run(gen):
    setting = se.Setting("testbed-llava", "tb", pd.DataFrame({"id": ["a"]}), [], [])
    return {"generations": gen, "setting": setting, "n_null_draws": 20}


def _v(rows, start):
    return [r["verdict"] for r in rows if r["verdict"].claim.startswith(start)]


def test_attributes_are_never_summed():
    g = _gen()
    with pytest.raises(FairVLMError, match="never summed"):
        se.paired_drop(g, "random")
    d = se.paired_drop(g, "dataset:gender", "gender")
    assert d.shape == (8 * 4 * 3,)


def test_a_drop_with_the_role_kept_is_reproduced_and_one_without_is_not_testable():
    g = _gen(drop={"dataset:gender": 0.9}, role={})
    rows = se.verdict_rows(_run(g))
    v = _v(rows, "dataset gender direction reduces gender mentions (vs 20")[0]
    assert v.verdict == "reproduced" and v.asserts == "other"
    g = _gen(drop={"dataset:gender": 0.9}, role={"dataset:gender": 0.05})
    v = _v(se.verdict_rows(_run(g)), "dataset gender direction reduces gender mentions (vs 20")[0]
    assert v.verdict == "not testable here" and "role retention" in v.why
    assert not se.role_retention(g).set_index("method").loc["dataset:gender", "kept"]


def test_the_damage_control_catches_a_drop_it_matches():
    g = _gen(drop={"dataset:gender": 0.9, "damage": 0.9})
    v = _v(se.verdict_rows(_run(g)), "dataset gender direction reduces gender mentions (vs the generation")[0]
    assert v.verdict != "reproduced"


def test_sentiment_without_negatives_is_not_testable_and_says_the_minimum():
    rows = se.verdict_rows(_run(_gen()))
    for v in _v(rows, "dataset race direction lowers") + _v(rows, "gradient race direction lowers"):
        assert v.verdict == "not testable here" and f"at least {se.MIN_NEGATIVE}" in v.why


def test_planted_gap_rows_need_something_planted():
    def planted(pg):
        return pd.DataFrame({"group": ["black_man", "white_man", "black_woman", "white_woman"],
                             "gender": ["man", "man", "woman", "woman"], "race": ["black", "white"] * 2,
                             "p_mention_gender": [0.5 - pg, 0.5 - pg, 0.5 + pg, 0.5 + pg], "p_mention_race": [0.3] * 4})

    rows = se.verdict_rows(_run(_gen(drop={"dataset:gender": 0.9})), planted=planted(0.0))
    gap = _v(rows, "dataset gender direction shrinks the planted")
    assert gap and all(v.verdict == "not testable here" and "nothing planted" in v.why for v in gap)
    assert all(v.asserts == "debias" for v in _v(rows, "dataset gender direction shrinks"))
    rows = se.verdict_rows(_run(_gen(drop={"dataset:gender": 0.95}, gap=0.8, n_clusters=10)), planted=planted(0.3))
    v = _v(rows, "dataset gender direction shrinks the planted")[0]
    assert v.verdict in ("reproduced", "inconclusive"), v


def test_role_retention_table():
    t = se.role_retention(_gen(role={"gradient:race": 0.0}))
    t = t.set_index("method")
    assert not t.loc["gradient:race", "kept"] and t.loc["dataset:race", "kept"]
    assert t.loc["gradient:race", "change"] < -0.4
    assert set(t.index) == set(se.METHODS)


def test_gate_why_tells_an_underpowered_gate_from_damage():
    """Hand-computed: a change of -0.083 whose 90% interval starts at -0.222 reaches 0.139 below
    it, more than tol = 0.1: underpowered; 12 clusters x (0.139 / 0.05)^2 = 92.7 -> 93 clusters."""
    keep = pd.DataFrame({"role named": [0.86, 0.78, 0.14, 0.70],
                         "90% interval": ["", "[-0.222, 0.028]", "[-0.861, -0.500]", "[-0.200, -0.120]"],
                         "reach below": [np.nan, 0.139, 0.139, 0.04]},
                        index=["unsteered", "dataset:gender", "gradient:race", "damage"])
    why = se._gate_why(keep, "dataset:gender", 0.1, 12)
    assert "underpowered at 12 item clusters" in why and "about 93 clusters" in why
    # a change of -0.72 is a lost role however wide the interval; a narrow interval at -0.16 too
    for m in ("gradient:race", "damage"):
        why = se._gate_why(keep, m, 0.1, 12)
        assert why.endswith("a drop could be generation damage") and "underpowered" not in why


def test_negatives_needed_hand_computed():
    g = _gen(n_clusters=4)                     # 4 scenes x 2 variants x 3 prompts = 24 rows per race group
    g["neg"] = 0
    u = g.index[(g["method"] == "unsteered") & (g["race"] == "black")][:2]
    w = g.index[(g["method"] == "unsteered") & (g["race"] == "white")][:1]
    g.loc[u, "neg"] = 1
    g.loc[w, "neg"] = 1
    assert se._negatives_needed(g) == "at the unsteered rates about 120 generations per group would be needed (here 24)"
    g.loc[w, "neg"] = 0                        # white: none in 24 -> more than 5 x 24
    assert se._negatives_needed(g).endswith("at least 121 generations per group would be needed")
    rows = se.verdict_rows(_run(g))
    v = _v(rows, "dataset race direction lowers")[0]
    assert v.verdict == "not testable here" and "at least 121" in v.why


def test_first_prompt_texts_picks_the_grid_rows_in_item_order():
    g = pd.DataFrame({"method": ["unsteered"] * 6 + ["gradient:gender"] * 2, "prompt_id": [1, 0, 0, 0, 0, 1, 0, 0],
                      "seed": [0, 0, 0, 0, 1, 0, 0, 0], "item": [0, 1, 0, 2, 0, 1, 0, 1],
                      "text": ["p1", "b", "a", "c", "seed1", "p1b", "ga", "gb"]})
    run = {"generations": g}
    assert se.first_prompt_texts(run, "unsteered", 3) == ["a", "b", "c"]
    assert se.first_prompt_texts(run, "gradient:gender", 2) == ["ga", "gb"]
    with pytest.raises(FairVLMError, match="lacks first-prompt rows"):
        se.first_prompt_texts(run, "gradient:gender", 3)


def test_given_loss_directions_are_checked():
    D = np.zeros((4, 6))
    D[:, 0] = 1.0
    out = se._check_given({"mse": (D, np.arange(4.0))}, 3, 6)
    assert out["mse"][0].shape == (3, 6) and list(out["mse"][1]) == [0.0, 1.0, 2.0]
    with pytest.raises(FairVLMError, match="need at least"):
        se._check_given({"mse": (D, np.arange(4.0))}, 5, 6)
    with pytest.raises(FairVLMError, match="must map losses"):
        se._check_given({"hinge": (D, np.arange(4.0))}, 3, 6)
