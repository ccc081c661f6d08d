"""fairvlm.debiaslens: query sets, MaxSkew with the uniform prior, the random-ranking floor."""

import math

import numpy as np
import pytest

from fairvlm import debiaslens as DL
from fairvlm.errors import DataError, FairVLMError
from fairvlm.params import ParameterError


def test_queries_cover_the_four_sets_and_scenarios():
    q = DL.load_queries()
    assert set(q["set"]) == set(DL.QUERY_SETS)
    assert q.groupby("set").size().min() >= 10
    row = q[(q["set"] == "occupations") & (q["key"] == "airplane")].iloc[0]
    assert row["prompt"] == "a photo of a pilot"
    assert q[q["key"] == "independent"].iloc[0]["prompt"] == "a photo of an independent person"
    assert not q["prompt"].duplicated().any()


def test_queries_bad_file(tmp_path):
    p = tmp_path / "q.yaml"
    p.write_text("version: 1\nword_template: '{word}'\nrole_template: '{a_role}'\nactivity_template: '{activity}'\n"
                 "sets:\n  adjectives: {scenarios: {role: [not_a_scenario]}}\n")
    with pytest.raises(DataError, match="not a testbed scenario"):
        DL.load_queries(p)


def test_maxskew_per_query_hand_computed():
    groups = ["m", "m", "f", "f"]
    sim = np.array([[4.0, 3.0, 2.0, 1.0],    # top 2: m, m -> ln(1 / 0.5)
                    [4.0, 1.0, 3.0, 2.0]])   # top 2: m, f -> 0
    out = DL.maxskew_per_query(sim, groups, 2)
    assert out[0] == pytest.approx(math.log(2))
    assert out[1] == pytest.approx(0.0)
    with pytest.raises(ParameterError):
        DL.maxskew_per_query(sim, groups, 5)


def test_random_floor_is_small_but_positive():
    groups = ["a", "b"] * 500
    f = DL.random_floor(groups, 50, n_queries=200, seed=0)
    assert 0 < f.mean() < 0.2
    assert np.array_equal(f, DL.random_floor(groups, 50, n_queries=200, seed=0))


def test_last_layer_shortcut_equals_hooked_encoding():
    import torch

    from fairvlm import hooks, retrieval
    from fairvlm import sae as S
    from fairvlm.models import load

    lm = load("tiny-clip")
    pix = torch.randn(5, 3, 32, 32)
    cls = DL.last_layer_cls(lm, pix)
    assert torch.allclose(DL.embed_from_last_layer(lm, cls), retrieval.embed_images(lm, pix), atol=1e-5)
    sae = S.MatryoshkaSAE(S.SAEConfig(d_in=lm.d_vision, d_sae=32, k=4))
    sae.threshold.fill_(0.01)
    fns = S.control_edits(lm, "vision.resid_post.-1", sae, [1, 2], 3.0, 0.6)
    with hooks.edit(lm, fns):
        hooked = retrieval.embed_images(lm, pix)
    short = DL.embed_from_last_layer(lm, cls, fns["vision.resid_post.-1"])
    assert torch.allclose(short, hooked, atol=1e-5)
    assert not torch.allclose(short, DL.embed_from_last_layer(lm, cls), atol=1e-3)


def test_split_by_scenario_on_pairs_is_disjoint_and_complete(shared):
    import pandas as pd

    from fairvlm import retrieval

    meta = retrieval.pairs_gallery(shared / "data" / "pairs", mapped_only=True).meta
    fit, ev = DL.split_by_scenario(meta)
    assert len(fit) and len(ev) and len(fit) + len(ev) == len(meta)
    assert not set(fit) & set(ev)
    assert not set(meta["scenario"].iloc[fit]) & set(meta["scenario"].iloc[ev])
    # hand-made: sorted scenarios a, b, c, d -> a and c fit, b and d are evaluated
    toy = pd.DataFrame({"scenario": ["d", "a", "b", "c", "a", "d"]})
    f, e = DL.split_by_scenario(toy)
    assert list(f) == [1, 3, 4] and list(e) == [0, 2, 5]
    with pytest.raises(DataError, match="at least 4 scenarios"):
        DL.split_by_scenario(pd.DataFrame({"scenario": ["a", "b", "c"]}))
    with pytest.raises(ParameterError, match="'scenario' column"):
        DL.split_by_scenario(pd.DataFrame({"label": ["a"]}))


@pytest.mark.notebook
def test_chapter_paper_profile_on_tiny_models_never_fits_on_the_gallery(shared, tmp_path, monkeypatch):
    # the paper profile's code path, run on tiny random models of the paper's architectures
    # (CLIP, LLaVA) with the real PAIRS images: neurons are found on half of the scenarios
    # and every number is measured on the other half
    import json

    from fairvlm import bookbuild

    monkeypatch.setenv("FAIRVLM_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("FAIRVLM_FIGURES", str(tmp_path / "figures"))
    root = bookbuild.find_root()
    src = next(p for p in bookbuild.chapter_sources(root) if p.stem == "06_debiaslens")
    out = bookbuild.execute(root, src, {"PROFILE": "paper", "MODEL": "tiny-clip", "LVLM": "tiny-llava",
                                        "PAIRS_DIR": str(shared / "data" / "pairs")}, out_dir=tmp_path)
    text = json.dumps(json.loads(out.read_text())["cells"])
    assert "scenarios split: SAE and probing on 22, gallery and zero-shot on the other 22" in text
    assert (tmp_path / "results" / "06_debiaslens.json").exists()


# ------------------------------------------------------------------ the chapter's analysis
def test_matched_random_latents_follow_firing_rates_and_avoid_social():
    rates = np.linspace(0, 1, 101)
    draws = DL.matched_random_latents(rates, [50, 10], exclude=[49, 51], n_draws=30, pool=4, seed=0)
    assert len(draws) == 30 and all(len(d) == 2 and len(set(d)) == 2 for d in draws)
    flat0 = {d[0] for d in draws}
    assert flat0 <= {47, 48, 52, 53} and len(flat0) > 1          # nearest rates, never the social ones
    assert {d[1] for d in draws} <= {8, 9, 11, 12}
    assert draws == DL.matched_random_latents(rates, [50, 10], exclude=[49, 51], n_draws=30, pool=4, seed=0)
    with pytest.raises(DataError):
        DL.matched_random_latents(rates[:5], [0, 1], exclude=[2, 3], pool=4)


def test_gammas_zero_is_the_authors_and_group_mean_reads_own_group():
    import torch

    codes = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 5.0]])
    labels = ["a", "a", "b"]
    assert DL.gammas("zero", codes, labels, [0, 1], ["a", "b"]) == [0.0, 0.0]
    assert DL.gammas("group_mean", codes, labels, [0, 1], ["a", "b"]) == [2.0, 5.0]
    from fairvlm.errors import UnknownNameError

    with pytest.raises(UnknownNameError):
        DL.gammas("mean", codes, labels, [0], ["a"])


def test_specific_neurons_cap_the_other_attribute():
    import torch

    from fairvlm import sae as S

    g = ["f", "f", "m", "m"] * 10
    r = ["b", "w", "b", "w"] * 10
    z = torch.zeros(40, 4)
    z[[i for i in range(40) if g[i] == "f"], 0] = 1.0                       # gender only
    z[[i for i in range(40) if g[i] == "f" and r[i] == "b"], 1] = 2.0        # gender and race
    z[[i for i in range(40) if g[i] == "m"], 2] = 1.0
    t = DL.specific_neurons(S.social_neurons(z, g, threshold=0.4), z, r, cap=0.2)
    assert set(t[t["group"] == "f"]["latent"]) == {0, 1}
    assert t.set_index("latent").loc[1, "other_gap"] == pytest.approx(0.5)   # fires on half the Black rows, no White
    lat, grp = DL.pick_specific(t, ["f", "m"], 1)
    assert lat == [0, 2] and grp == ["f", "m"]


def test_firing_score_and_permutation_null():
    import torch

    rng = np.random.default_rng(0)
    g = np.array(["f", "m"] * 100)
    z = torch.from_numpy(rng.random((200, 30)).astype("float32")) * (torch.rand(200, 30) > 0.5)
    z[g == "f", 3] = 1.0
    z[g == "m", 3] = 0.0
    assert DL.firing_score(z, g, [3], ["f"]).mean() == pytest.approx(1.0)
    assert np.all(DL.firing_score(z, g, [], []) == 0)
    null = DL.permuted_selection_scores(z, g, z, g, ["f", "m"], threshold=0.5, per_group=1, n_perm=10)
    assert abs(null.mean()) < 0.5 < DL.firing_score(z, g, [3], ["f"]).mean()


def test_quadruplet_label_shuffle_permutes_within_quads():
    labels = ["m", "f", "m", "f", "m", "f", "m", "f"]
    quads = [0, 0, 0, 0, 1, 1, 1, 1]
    perms = DL.quadruplet_label_shuffle(labels, quads, n_perm=5, seed=1)
    for p in perms:
        for q in (0, 1):
            assert sorted(p[np.array(quads) == q]) == ["f", "f", "m", "m"]
    assert any(list(p) != labels for p in perms)


def test_quad_gap_and_orient():
    import pandas as pd

    p = [0.9, 0.1, 0.8, 0.2]
    gap = DL.quad_gap(p, ["male", "female", "male", "female"], [0, 0, 1, 1], ["q"] * 4, ["female", "male"])
    assert gap.to_numpy() == pytest.approx([0.8, 0.6])
    o = DL.orient(-gap, pd.Series({"q": -1.0}))
    assert o.to_numpy() == pytest.approx([0.8, 0.6])


def test_top_share_and_planted_classes():
    import pandas as pd
    import torch

    I = torch.eye(4)
    T = torch.tensor([[1.0, 0.9, 0.0, 0.0]])
    assert DL.top_share(T, I, ["male", "male", "female", "female"], "male", 2)[0] == 1.0
    cls = DL.planted_classes(pd.DataFrame({"scenario": ["a", "b", "c"], "p_man": [0.5, 0.8, 0.55],
                                           "p_black": [0.5, 0.5, 0.5]}))
    assert list(cls) == ["balanced control", "skewed (gender)", "mild"]


def test_text_shortcut_refuses_models_it_does_not_fit():
    from fairvlm.errors import FairVLMError
    from fairvlm.models import load

    lm = load("tiny-clip")
    assert not DL.supports_text_shortcut(lm)
    with pytest.raises(FairVLMError, match="mean-pooled"):
        DL.last_layer_text(lm, ["a photo"])


def _claims_inputs(rng, *, bias: float, debias: float):
    n = 80
    base = {a: np.abs(rng.normal(0.05 + bias, 0.02, n)) for a in ("gender", "race")}
    after = {a: base[a] - (debias if a == "gender" else 0.0) + rng.normal(0, 0.002, n) for a in base}
    null = {a: base[a] + rng.normal(0, 0.002, n) for a in base}
    shuffle = np.abs(rng.normal(0.05, 0.02, n))
    zs = (rng.random(300) < 0.9).astype(float)
    return {"attribute": "gender", "other": "race", "neurons": True, "null_draws": 20, "content_free": shuffle[:12],
            "skew": {"base": base, "I": after, "T": after, "I+T": after, "recon": null},
            "null": {s: null for s in ("I", "T", "I+T")}, "zs": {"base": zs, "I+T": zs},
            "alpha": {s: {"edit": after["gender"], "recon": null["gender"], "zs1": zs, "zs0": zs} for s in ("image", "text")},
            "firing": (rng.normal(0.5, 0.1, 200), rng.normal(0, 0.1, 200)), "planted": None, "lvlm": None}


def test_paper_claims_need_a_bias_before_a_debias_and_set_asserts():
    from fairvlm import verdicts as VD

    rng = np.random.default_rng(0)
    none = VD.verdict_table(DL.paper_claims(_claims_inputs(rng, bias=0.0, debias=0.02)))
    assert set(none["asserts"]) <= set(VD.ASSERTS)
    assert not ((none["verdict"] == "reproduced") & none["bias_claim"]).any()   # nothing planted: nothing claimed
    real = VD.verdict_table(DL.paper_claims(_claims_inputs(rng, bias=0.2, debias=0.05)))
    v = dict(zip(real["claim"], real["verdict"]))
    assert v["CLIP's retrieval of neutral queries is skewed by gender"] == "reproduced"
    assert v["DEBIASLENS (I+T) lowers MaxSkew, beyond random latents"] == "reproduced"
    rising = _claims_inputs(rng, bias=0.2, debias=-0.05)                    # the edit raises the skew
    w = dict(zip(*(lambda t: (t["claim"], t["verdict"]))(VD.verdict_table(DL.paper_claims(rising)))))
    assert w["DEBIASLENS (I+T) lowers MaxSkew, beyond random latents"] == "not reproduced"


def test_sae_artifact_folder_is_verified(tmp_path):
    import torch

    from fairvlm import sae as S

    cfg = S.SAEConfig(d_in=8, d_sae=32, k=2)
    x = torch.randn(300, 8)
    saes, logs = {}, {}
    for n in ("image", "image_noauxk", "text", "llava"):
        saes[n], logs[n] = S.train(x, cfg, steps=20, batch_size=64, log_every=5, plateau_tol=1e-6, patience=2)
    DL._write_folder(tmp_path / "a", saes, logs, "key1", {"x": 1})
    assert DL._check_folder(tmp_path / "a", "key1") == ""
    assert "not key2" in DL._check_folder(tmp_path / "a", "key2")
    loaded, lg, _ = DL._read_folder(tmp_path / "a")
    assert torch.equal(loaded["image"].W_dec, saes["image"].W_dec) and "image_noauxk" in lg
    w = tmp_path / "a" / "text" / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:-4] + b"\0\0\0\0")
    assert "damaged" in DL._check_folder(tmp_path / "a", "key1")


def test_load_valid_saes_checks_shipped_then_cache_and_never_trains(tmp_path, monkeypatch):
    import torch

    from fairvlm import sae as S

    monkeypatch.setenv("FAIRVLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(DL, "shipped_folder", lambda world, profile="embedded": tmp_path / "shipped")
    kw = dict(profile="smoke", world="default", seed=0, size="smoke")
    key, _ = DL.build_key("testbed-clip", "testbed-llava", **kw)
    saes, logs, why = DL.load_valid_saes("testbed-clip", "testbed-llava", **kw)
    assert saes is None and logs is None and "no SAEs" in why and str(tmp_path / "shipped") in why
    cfg = S.SAEConfig(d_in=8, d_sae=32, k=2)
    x = torch.randn(300, 8)
    trained, tlogs = {}, {}
    for n in ("image", "image_noauxk", "text", "llava"):
        trained[n], tlogs[n] = S.train(x, cfg, steps=10, batch_size=64, log_every=5, plateau_tol=1e-6, patience=2)
    cached = tmp_path / "cache" / "sae" / "06_debiaslens" / key
    DL._write_folder(cached, trained, tlogs, key, {"x": 1})
    saes, logs, where = DL.load_valid_saes("testbed-clip", "testbed-llava", **kw)
    assert torch.equal(saes["text"].W_dec, trained["text"].W_dec) and str(cached) in where
    assert DL.load_valid_saes("testbed-clip", "testbed-llava", cache=False, **kw)[0] is None   # shipped only
    DL._write_folder(tmp_path / "shipped", trained, tlogs, "another-key", {"x": 1})           # stale shipped
    saes, _, where = DL.load_valid_saes("testbed-clip", "testbed-llava", **kw)
    assert saes is not None and str(cached) in where                                        # falls to the cache
    w = cached / "image" / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:-4] + b"\0\0\0\0")
    saes, _, why = DL.load_valid_saes("testbed-clip", "testbed-llava", **kw)
    assert saes is None and "not " + key in why                                             # first folder's reason
    with pytest.raises(FairVLMError, match="profile"):
        DL.load_valid_saes("testbed-clip", "testbed-llava", profile="huge", world="default")


def test_vectorised_maxskew_equals_metrics_max_skew():
    from fairvlm import metrics

    rng = np.random.default_rng(0)
    groups = rng.choice(["a", "b", "c"], 60).tolist()
    sim = rng.random((7, 60))
    got = DL.maxskew_per_query(sim, groups, 10)
    top = np.argsort(-sim, axis=1, kind="stable")[:, :10]
    want = [metrics.max_skew([groups[i] for i in t], sorted(set(groups)), 10) for t in top]
    assert got == pytest.approx(want)


def test_a_set_of_neurons_can_be_blind_to_the_other_attribute_when_none_is_alone():
    import torch

    from fairvlm import sae as S

    g = ["f", "f", "m", "m"] * 10
    r = ["b", "w", "b", "w"] * 10
    z = torch.zeros(40, 4)
    z[[i for i in range(40) if g[i] == "f" and r[i] == "b"], 0] = 2.0   # Black women
    z[[i for i in range(40) if g[i] == "f" and r[i] == "w"], 1] = 1.5   # White women
    t = DL.specific_neurons(S.social_neurons(z, g, threshold=0.4), z, r, cap=0.2)
    assert not t["eligible"].any()
    assert DL.pick_specific(t, ["f"], 2) == ([], [])
    lat, grp = DL.pick_specific(t, ["f"], 2, codes=z, other_labels=r, cap=0.2)
    assert sorted(lat) == [0, 1] and grp == ["f", "f"]
    assert DL.union_gap(z, r, [0, 1]) == pytest.approx(0.0) and DL.union_gap(z, r, [0]) == pytest.approx(0.5)


def test_select_neurons_on_constructed_codes():
    """8 rows: gender F/M x race b/w, two of each. Latent 0 fires on every woman, latent 1 on
    every man, latent 2 on Black women only (a gender neuron that is also a race neuron),
    latent 3 on everyone. With the cap 0.25 the set-level race gap decides."""
    import torch

    gender = ["female", "female", "female", "female", "male", "male", "male", "male"]
    race = ["black", "black", "white", "white"] * 2
    z = torch.zeros(8, 5)
    z[:4, 0] = 2.0
    z[4:, 1] = 3.0
    z[:2, 2] = 5.0
    z[:, 3] = 1.0
    ns = DL.select_neurons({"image": (z, gender, z, race)}, ["female", "male"], threshold=0.5, per_group=1, cap=0.25,
                           gamma_mode="group_mean")
    t = ns["tables"]["image"]
    # latent 2 fires on half of the women (>= 0.5) and no man: a social neuron, but race gap 1.0 > cap
    assert set(t["latent"]) == {0, 1, 2} and not t.set_index("latent").loc[2, "eligible"]
    lat, grp, gam = ns["chosen"]["image"]
    assert lat == [0, 1] and grp == ["female", "male"] and gam == [2.0, 3.0]        # group means
    assert ns["n_social"] == {"image/female": 2, "image/male": 1} and ns["n_chosen"] == {"image": 2}
    assert ns["neurons_ok"] and ns["set_gap"]["image"] == 0.0
    assert ns["rates"]["image"].tolist() == [0.5, 0.5, 0.25, 1.0, 0.0]
    assert ns["social"]["image"] == t["latent"].astype(int).tolist()
    zero = DL.select_neurons({"image": (z, gender, z, race)}, ["female", "male"], threshold=0.5, per_group=1,
                             cap=0.25, gamma_mode="zero")
    assert zero["chosen"]["image"][2] == [0.0, 0.0]
    with pytest.raises(ParameterError, match="sides"):
        DL.select_neurons({"image": (z, gender)}, ["female", "male"], threshold=0.5, per_group=1, cap=0.25,
                          gamma_mode="zero")


def test_planted_shares_on_constructed_embeddings():
    """Two gallery images (a man, a woman) in one quadruplet; the text row sits on the man."""
    import torch

    I = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    T = torch.tensor([[0.9, 0.1], [0.0, 0.0]])
    T_edit = torch.tensor([[0.1, 0.9], [0.0, 0.0]])
    sh = DL.planted_shares((I, T), (I, T_edit), [(I, T), (I, T_edit)], [0], ["male", "female"], [0, 0], 1,
                           n_perm=4, seed=0)
    assert sh["none"].tolist() == [1.0] and sh["DEBIASLENS (I+T)"].tolist() == [0.0]
    assert sh["random latents (I+T)"].tolist() == [0.5]                  # mean over the two draws
    assert 0.0 <= float(sh["labels shuffled"][0]) <= 1.0
    with pytest.raises(ParameterError, match="null_embs"):
        DL.planted_shares((I, T), (I, T_edit), [], [0], ["male", "female"], [0, 0], 1, n_perm=4)


@pytest.mark.parametrize("profile", sorted(DL.SHIPPED))
def test_the_book_ships_chapter_06s_saes_with_the_current_build_key(profile):
    """Stale SAEs cannot ship silently: a change to the SAE code, the recipe or the testbed
    changes the key, and this fails until `python -m fairvlm.debiaslens build-artifacts`
    rebuilds them (the chapter itself would retrain them in the run, saying why)."""
    key, _ = DL.build_key("testbed-clip", "testbed-llava", profile=profile, world="default", seed=0,
                          size=DL.SHIPPED[profile])
    assert DL._check_folder(DL.shipped_folder("default", profile), key) == ""
