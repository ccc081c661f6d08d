"""Layer-wise logit lens, residual readings and residual directions (fairvlm.lens)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fairvlm import hooks, lens, mcq, models
from fairvlm.errors import DataError, FairVLMError

TINY_VLMS = ("tiny-llava", "tiny-llava-next", "tiny-qwen2-vl")


def _synthetic_source():
    """Plain-colour images keyed by group, for runs without the shared PAIRS tree."""
    colours = {("male", "black"): (60, 40, 30), ("female", "black"): (90, 60, 40),
               ("male", "white"): (230, 200, 180), ("female", "white"): (250, 220, 200)}

    def source(scenario, gender, race):
        return Image.new("RGB", (40, 40), colours[(gender, race)])

    source.key = "synthetic-colours-v1"
    return source


@pytest.fixture(scope="module")
def loaded_tiny():
    return {name: models.load(name) for name in TINY_VLMS}


def _rows(n_labels=2, n_prompts=1, variants=mcq.VARIANTS):
    items = mcq.build_items(mcq.pairs_labels().head(n_labels), "pairs", variants=variants)
    return mcq.make_rows(items, n_prompts)


# ---------------------------------------------------------------------------- the paper path


@pytest.mark.parametrize("name", TINY_VLMS)
def test_paper_path_end_to_end_on_tiny_vlms(name, loaded_tiny, tmp_path, monkeypatch, shared):
    """PAIRS images -> collect -> every analysis the three chapters run -> directions on disk."""
    from fairvlm.data import load_pairs

    monkeypatch.setenv("FAIRVLM_CACHE", str(tmp_path / "cache"))
    lm = loaded_tiny[name]
    src = mcq.pairs_image_source(load_pairs(mapped_only=True))
    rows = _rows(3, 1)
    col = lens.collect(lm, rows, images=src, batch_size=5, max_new_tokens=3, progress=False)
    L, n = lm.n_layers, len(rows)
    assert col.lens.shape == (n, 2 * L + 1, 3) and col.vectors.shape == (n, L, 3, lm.d_model)
    assert col.table["row_id"].tolist() == [r.row_id for r in rows]        # input order kept
    # the lens at the last depth is the model's own output distribution over the options
    out = col.table[["lp_a", "lp_b", "lp_fair"]].to_numpy()
    assert np.allclose(col.lens[:, -1], out, atol=1e-4)
    assert set(col.table["parsed"]) <= {"fair", "a", "b", "invalid"}
    assert np.all(col.table["skew"].between(0, math.log(2) + 1e-9))
    # second call: read from the cache, identical
    again = lens.collect(lm, rows, images=src, batch_size=3, max_new_tokens=3, progress=False)
    assert again.key == col.key
    pd.testing.assert_frame_equal(again.table, col.table, check_dtype=False)
    assert np.array_equal(again.vectors, col.vectors)
    # chapters 01-03 on top
    assert len(mcq.summarize(col.table)) == 2 * 4
    assert (mcq.summarize(col.table)["n_items"] == 3).all()
    lf = lens.layer_frame(col)
    assert len(lf) == n * (2 * L + 1)
    summ = lens.layer_summary(lf)
    pe = lens.peak_erosion(summ)
    assert len(pe) == 2 and (pe["erosion"] >= 0).all()
    rs = lens.residual_summary(lens.residual_frame(col))
    assert len(rs) == 2 * L
    dirs = lens.fit_directions(col)
    path = dirs.save(tmp_path / "dirs.safetensors")
    back = lens.Directions.load(path)
    assert back.layers == lens.last_tenth(L)
    ev = lens.evaluate_directions(back, col)
    assert ev["auroc_bias"].between(0, 1).all()
    proxy = lens.lens_proxy(lm, back, col)
    assert len(proxy) == len(back.layers)


def test_recorded_vectors_equal_a_plain_capture(loaded_tiny):
    """The last-token vectors collect() records inside generate equal hooks.capture in a
    plain forward pass, and resid_post.L = resid_pre.L + attn_out.L + mlp_out.L."""
    lm = loaded_tiny["tiny-llava"]
    src = _synthetic_source()
    rows = _rows(1, 1, variants=("text", "both"))
    col = lens.collect(lm, rows, images=src, batch_size=4, max_new_tokens=2, cache=False, progress=False)
    imgs = mcq.row_images(rows, src)
    for i, row in enumerate(rows):
        enc = lm.inputs([row.text], [imgs[i]] if imgs[i] else None, system=row.system)
        sites = [f"{k}.{l}" for k in ("resid_pre", "attn_out", "mlp_out", "resid_post") for l in range(lm.n_layers)]
        with torch.no_grad(), hooks.capture(lm, sites) as cache:
            lm.model(**enc)
        for l in range(lm.n_layers):
            for j, k in enumerate(("resid_pre", "attn_out", "mlp_out")):
                assert torch.allclose(torch.from_numpy(col.vectors[i, l, j].astype(np.float32)),
                                      cache[f"{k}.{l}"][0, -1], atol=2e-3, rtol=2e-3)
            assert torch.allclose(torch.from_numpy(col.stream("resid_post", l)[i]), cache[f"resid_post.{l}"][0, -1],
                                  atol=5e-3, rtol=5e-3)


def test_text_only_model_refuses_image_rows():
    lm = models.load("smollm2-135m-instruct")
    with pytest.raises(FairVLMError, match="text-only"):
        lens.collect(lm, _rows(1, 1, variants=("image_a",)), images=_synthetic_source(), cache=False)


def test_cache_key_changes_with_the_prompt(loaded_tiny):
    lm = loaded_tiny["tiny-qwen2-vl"]
    rows = _rows(1, 1, variants=("text",))
    k1 = lens._cache_key(lm, rows, None, 3, True)
    changed = [mcq.Row(rows[0].item, 0, rows[0].text + " Please.", rows[0].order)] + rows[1:]
    assert lens._cache_key(lm, changed, None, 3, True) != k1
    assert lens._cache_key(lm, rows, None, 4, True) != k1
    other = models.load("tiny-qwen2-vl", seed=1)
    assert lens._cache_key(other, rows, None, 3, True) != k1


def test_smollm2_leans_to_men_for_computer_scientist():
    """A real-model property (see REFERENCE.md): SmolLM2's option mass favours men."""
    lm = models.load("smollm2-135m-instruct")
    item = [i for i in mcq.build_items(pd.DataFrame({"scenario": ["computer"], "label": ["computer scientist"]}),
                                       "x", attributes=("gender",), variants=("text",))][0]
    rows = mcq.make_rows([item], 4)           # the four option orders: position bias averages out
    col = lens.collect(lm, rows, layers=False, cache=False, progress=False, max_new_tokens=2)
    assert col.table["p_a"].mean() > 1.2 * col.table["p_b"].mean()


# ---------------------------------------------------------------------------- hand-made collections


def test_depths_and_last_tenth():
    d = lens.depth_labels(2)
    assert d.to_records(index=False).tolist() == [
        (0, 0, "resid_pre"), (1, 0, "resid_mid"), (2, 1, "resid_pre"), (3, 1, "resid_mid"), (4, 1, "resid_post")]
    assert lens.last_tenth(30) == [27, 28, 29]
    assert lens.last_tenth(32) == [28, 29, 30, 31]
    assert lens.last_tenth(4) == [3]
    assert lens.last_tenth(1) == [0]


def _collection(lp: np.ndarray, vectors=None, attribute="gender") -> lens.Collection:
    """A Collection from option log-probs (n, 2L+1, 3); the output is the last depth."""
    n, D, _ = lp.shape
    L = (D - 1) // 2
    t = pd.DataFrame({"row_id": [f"r{i}" for i in range(n)], "model": "m", "dataset": "d",
                      "scenario": [f"s{i}" for i in range(n)], "label": "x", "attribute": attribute,
                      "variant": "text", "prompt_id": [i % 2 for i in range(n)], "parsed": "fair",
                      "lp_a": lp[:, -1, 0], "lp_b": lp[:, -1, 1], "lp_fair": lp[:, -1, 2]})
    return lens.Collection(t, lp.astype(np.float32), vectors, "m", L)


def test_layer_readings_hand_computed():
    p = np.array([[0.2, 0.1, 0.1], [0.1, 0.1, 0.4], [0.05, 0.15, 0.6]])    # depths 0, 1, 2 (L = 1)
    col = _collection(np.log(p)[None])
    lf = lens.layer_frame(col)
    assert lf["site"].tolist() == ["resid_pre", "resid_mid", "resid_post"]
    assert lf["fair_share"].tolist() == pytest.approx([0.25, 4 / 6, 0.75])
    assert lf["fair_margin"].tolist() == pytest.approx([math.log(0.1 / 0.3), math.log(2.0), math.log(3.0)])
    assert lf["lens_fair"].tolist() == [0.0, 1.0, 1.0]
    assert lf["option_mass"].tolist() == pytest.approx([0.4, 0.6, 0.8])
    assert lf["skew"].tolist() == pytest.approx(
        [mcq.confidence_skew(0.2, 0.1), 0.0, mcq.confidence_skew(0.05, 0.15)])
    rf = lens.residual_frame(col)
    assert rf["push_attn"].item() == pytest.approx(math.log(2.0) - math.log(1 / 3))
    assert rf["push_mlp"].item() == pytest.approx(math.log(3.0) - math.log(2.0))
    # pushes of all sublayers add up to the change from the first depth to the output
    assert (rf["push_attn"] + rf["push_mlp"]).item() == pytest.approx(math.log(3.0) - math.log(1 / 3))


def test_peak_erosion_hand_computed():
    s = pd.DataFrame({"model": "m", "dataset": "d", "attribute": "gender", "depth": [0, 1, 2, 3, 4],
                      "layer": [0, 0, 1, 1, 1], "site": ["resid_pre", "resid_mid"] * 2 + ["resid_post"],
                      "lens_fair_mean": [0.9, 0.2, 0.7, 0.5, 0.3],
                      "option_mass_mean": [0.001, 0.1, 0.2, 0.3, 0.5]})
    pe = lens.peak_erosion(s).iloc[0]
    assert pe["peak_depth"] == 0 and pe["erosion"] == pytest.approx(0.6)
    pe = lens.peak_erosion(s, min_mass=0.01).iloc[0]       # depth 0 reads no option mass
    assert pe["peak_depth"] == 2 and pe["peak"] == pytest.approx(0.7)
    assert pe["final"] == pytest.approx(0.3) and pe["erosion"] == pytest.approx(0.4)
    assert pe["peak_rel"] == pytest.approx(0.5) and pe["n_depths"] == 4


def test_split_rows_thirds():
    lp = np.log(np.array([[0.1, 0.1, f] for f in (0.5, 0.1, 0.3, 0.05, 0.2, 0.4)]))[:, None, :]
    lp = np.repeat(lp, 3, axis=1)                                        # L = 1
    biased, fair = lens.split_rows(_collection(lp), within=())
    assert biased.tolist() == [False, True, False, True, False, False]   # fair 0.1, 0.05
    assert fair.tolist() == [True, False, False, False, False, True]     # fair 0.5, 0.4
    # within prompt groups (prompt_id alternates 0, 1): thirds of {0.5, 0.3, 0.2} and {0.1, 0.05, 0.4}
    biased, fair = lens.split_rows(_collection(lp))
    assert biased.tolist() == [False, False, False, True, True, False]
    assert fair.tolist() == [True, False, False, False, False, True]
    with pytest.raises(FairVLMError, match="at least 3"):
        lens.split_rows(_collection(lp[:2]))


def _planted(n=60, L=2, d=16, seed=0):
    """Rows whose MLP at layer 1 writes +3*e0 when biased; attention writes noise.

    Lens log-probs make layer 1's MLP push toward the groups (biased write) and attention
    push toward fair, and the output fair margin rank the rows."""
    rng = np.random.default_rng(seed)
    fair_level = np.linspace(-2, 2, n)                   # output fair margin, increasing
    vec = rng.normal(0, 0.1, (n, L, 3, d)).astype(np.float32)
    bias_axis, fair_axis = np.eye(d)[0], np.eye(d)[1]
    vec[:, 1, 2] += (fair_level < -0.67)[:, None] * 3 * bias_axis      # mlp_out of biased rows
    vec[:, 1, 1] += (fair_level > 0.67)[:, None] * 2 * fair_axis       # attn_out of fair rows
    lp = np.zeros((n, 2 * L + 1, 3))
    lp[:, :, 0] = lp[:, :, 1] = np.log(0.2)
    margins = np.stack([np.zeros(n), np.zeros(n), np.zeros(n), np.full(n, 1.0), fair_level - 1.0], axis=1)
    # fair log-prob chosen so that fair_margin = margin (group mass 0.4)
    lp[:, :, 2] = margins + np.log(0.4)
    lp[:, -1, 2] = fair_level + np.log(0.4)
    return _collection(lp, vec.astype(np.float16)), bias_axis, fair_axis


def test_fit_directions_recovers_planted_axes(tmp_path):
    col, bias_axis, fair_axis = _planted()
    dirs = lens.fit_directions(col, layers=[1])
    assert dirs.bias_site[1] == "mlp_out.1" and dirs.fair_site[1] == "attn_out.1"
    assert float(dirs.bias[1] @ bias_axis) > 0.99
    assert float(dirs.fair[1] @ fair_axis) > 0.99
    assert dirs.meta["n_biased"] == 20 and dirs.meta["n_fair"] == 20
    # saved and read back bit for bit
    back = lens.Directions.load(dirs.save(tmp_path / "d.safetensors"))
    assert np.array_equal(back.bias[1], dirs.bias[1]) and back.fair_site == dirs.fair_site
    assert back.streams["bias_site"] == dirs.streams["bias_site"]
    # cross-dataset: a second sample of the same world separates its own rows
    other, _, _ = _planted(seed=1)
    ev = lens.evaluate_directions(dirs, other).iloc[0]
    assert ev["auroc_bias"] > 0.95 and ev["auroc_fair"] > 0.95


def test_directions_bad_files(tmp_path):
    with pytest.raises(DataError, match="no directions file"):
        lens.Directions.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="not a directions file"):
        lens.Directions.load(bad)
    col, _, _ = _planted()
    with pytest.raises(FairVLMError, match="out of range"):
        lens.fit_directions(col, layers=[5])


# ---------------------------------------------------------------------------- runs of the chapters


def test_run_rows_of_the_smoke_profile(shared):
    by = {s.dataset: s for s in lens.PROFILE_RUNS["smoke"]}
    rows, images, note = lens.run_rows(by["pairs"])
    assert len(rows) == 8 * 2 * 1 * 2 and images is None and note == ""
    rows, images, _ = lens.run_rows(by["testbed"])
    assert len(rows) == 6 * 2 * 4 * 2
    assert images.key.startswith("testbed:")
    im = images(rows[-1].item.scenario, *rows[-1].item.images[0])
    assert im.size == (64, 64)
    rows, _, _ = lens.run_rows(by["scf"])
    assert {r.item.dataset for r in rows} == {"scf"} and len({r.item.label for r in rows}) == 8
    with pytest.raises(FairVLMError, match="unknown dataset"):
        lens.run_rows(lens.RunSpec("smollm2-135m-instruct", "coco", ("text",), 1))


def test_profile_runs_rejects_unknown_profile_and_dtype():
    with pytest.raises(FairVLMError, match="profile"):
        lens.profile_runs("laptop")
    with pytest.raises(FairVLMError, match="DTYPE"):
        lens.profile_runs("smoke", dtype="int8")


def test_cross_pairs_and_label_halves():
    lp = np.zeros((12, 5, 3))
    a = _collection(lp)
    b = _collection(lp)
    runs = {("m1", "pairs"): a, ("m1", "scf"): b, ("m2", "testbed"): _collection(lp)}
    pairs_ = lens.cross_pairs(runs)
    assert [(p["model"], p["fit"], p["eval"]) for p in pairs_] == [
        ("m1", "pairs", "scf"), ("m1", "scf", "pairs"),
        ("m2", "testbed-even", "testbed-odd"), ("m2", "testbed-odd", "testbed-even")]
    half_a, half_b = pairs_[2]["fit_col"], pairs_[2]["eval_col"]
    assert not set(half_a.table["scenario"]) & set(half_b.table["scenario"])
    assert len(half_a.table) + len(half_b.table) == 12
    assert lens.directions_path("llava-hf/llava-1.5-7b-hf", "scf").name == "llava-hf__llava-1.5-7b-hf__fit-scf.safetensors"


def test_mcq_evaluate_matches_collect_and_sees_edits(loaded_tiny):
    lm = loaded_tiny["tiny-qwen2-vl"]
    rows = _rows(1, 1, variants=("text", "image_b"))
    src = _synthetic_source()
    table = mcq.evaluate(lm, rows, images=src, max_new_tokens=2, progress=False)
    col = lens.collect(lm, rows, images=src, max_new_tokens=2, cache=False, progress=False)
    assert np.allclose(table[["lp_a", "lp_b", "lp_fair"]], col.table[["lp_a", "lp_b", "lp_fair"]], atol=1e-5)
    # an edit at the last layer changes the option probabilities evaluate() reports
    with hooks.edit(lm, {f"resid_post.{lm.n_layers - 1}": lambda x: x * 0.5}):
        edited = mcq.evaluate(lm, rows, images=src, max_new_tokens=2, progress=False)
    assert not np.allclose(edited["lp_a"], table["lp_a"], atol=1e-4)


# ---------------------------------------------------------------------------- issue 14: controls and intervals


def _shaped(n, shares, masses, rng):
    """Option log-probs (n, D, 3) whose fair share and option mass follow the given curves."""
    D = len(shares)
    out = np.zeros((n, D, 3))
    for d, (f, m) in enumerate(zip(shares, masses)):
        f_i = np.clip(f + rng.normal(0, 0.02, n), 0.01, 0.99)
        out[:, d, 2] = np.log(m * f_i)
        out[:, d, 0] = out[:, d, 1] = np.log(m * (1 - f_i) / 2)
    return out


def test_peak_test_against_the_content_free_control():
    rng = np.random.default_rng(0)
    masses = [0.001, 0.3, 0.5, 0.6, 0.9]
    social = lens.layer_frame(_collection(_shaped(40, [0.2, 0.5, 0.9, 0.6, 0.4], masses, rng)))
    flat = lens.layer_frame(_collection(_shaped(20, [0.2, 0.5, 0.9, 0.9, 0.9], masses, rng)))
    t = lens.peak_test(social, flat, min_mass=0.1, seed=0)
    assert t["testable"] and t["peak_depth"] == 2 and t["peak_rel"] == pytest.approx(0.5)
    assert 0.1 <= t["peak_interval"][0] <= t["peak_interval"][1] <= 0.8
    assert t["erosion"] == pytest.approx(0.5, abs=0.02)
    assert t["erosion_interval"][0] > t["control_interval"][1]          # erodes beyond the control
    # the same shape in the control: the erosion is no longer beyond it
    same = lens.layer_frame(_collection(_shaped(20, [0.2, 0.5, 0.9, 0.6, 0.4], masses, rng)))
    t2 = lens.peak_test(social, same, min_mass=0.1, seed=0)
    assert t2["control_interval"][0] <= t2["erosion"] <= t2["control_interval"][1] + 0.02
    # the depth with little option mass (depth 0) is never the peak, even with the top share
    early = lens.layer_frame(_collection(_shaped(40, [0.99, 0.5, 0.6, 0.6, 0.4], masses, rng)))
    assert lens.peak_test(early, None, min_mass=0.1)["peak_depth"] != 0
    # too little mass everywhere: not testable
    assert not lens.peak_test(social, flat, min_mass=0.95)["testable"]


def test_transfer_test_beats_random_directions():
    rng = np.random.default_rng(1)
    n, L, d = 90, 2, 256
    z = rng.normal(size=n)
    lp = np.zeros((n, 2 * L + 1, 3))
    lp[:, :, 2] = np.log(0.5)
    lp[:, -1, 2] = np.log(1 / (1 + np.exp(-z)))
    lp[:, :, 0] = lp[:, :, 1] = np.log((1 - np.exp(lp[:, :, 2])) / 2)
    u = np.zeros(d, np.float32)
    u[3] = 1.0
    vec = rng.normal(0, 1.0, size=(n, L, 3, d)).astype(np.float32)
    vec[:, 1, 1] += -2 * z[:, None] * u      # attn_out.1 carries the biased rows along +u
    vec[:, 1, 2] += 2 * z[:, None] * u       # mlp_out.1 carries the fair rows along +u
    col = _collection(lp, vectors=vec.astype(np.float16))
    dirs = lens.Directions({1: u}, {1: u}, {1: "attn_out.1"}, {1: "mlp_out.1"}, {}, {})
    t = lens.transfer_test(dirs, col, n_random=50, n_boot=100, seed=0).set_index("kind")
    for kind in ("bias", "fair"):
        assert t.loc[kind, "effect"] > 0.9
        assert t.loc[kind, "lo"] > t.loc[kind, "null_hi"]
        assert 0.2 < t.loc[kind, "null"] < 0.8
    # the opposite direction separates the other way: below the null
    flipped = lens.Directions({1: -u}, {1: -u}, {1: "attn_out.1"}, {1: "mlp_out.1"}, {}, {})
    t2 = lens.transfer_test(flipped, col, n_random=50, n_boot=100, seed=0).set_index("kind")
    assert (t2["effect"] < t2["null_lo"]).all()
    with pytest.raises(FairVLMError, match="n_random"):
        lens.transfer_test(dirs, col, n_random=5)
    with pytest.raises(FairVLMError, match="streams"):
        lens.streams_view(dirs)


def test_chapter_setup_checks_its_parameters():
    from fairvlm.params import ParameterError

    p = lens.check_chapter_params(PROFILE="smoke", SEED=0, DTYPE="float32", TESTBED=False)
    assert p.DTYPE == "float32"
    with pytest.raises(ParameterError, match="DTYPE"):
        lens.check_chapter_params(PROFILE="smoke", SEED=0, DTYPE="int8", TESTBED=True)
    with pytest.raises(ParameterError, match="TESTBED"):
        lens.check_chapter_params(PROFILE="smoke", SEED=0, DTYPE="float32", TESTBED="yes")
    with pytest.raises(FairVLMError, match="profile"):
        lens.chapter_runs("laptop")
    # every profile has a content-free control run per model
    for profile, specs in lens.PROFILE_RUNS.items():
        models_ = {s.model for s in specs}
        assert {s.model for s in specs if s.dataset == lens.CONTROL} == models_, profile


def test_control_rows_of_the_smoke_profile(shared):
    spec = next(s for s in lens.PROFILE_RUNS["smoke"] if s.dataset == lens.CONTROL and s.variants != ("text",))
    rows, images, _ = lens.run_rows(spec)
    assert {r.item.label for r in rows} <= set(mcq.CONTROL_LABELS)
    assert len({r.item.label for r in rows}) == spec.n_labels
    assert len(rows) == spec.n_labels * 2 * 4 * spec.n_prompts
    # the embedded profile asks every content-free label: enough for finding 2's control
    assert len(mcq.CONTROL_LABELS) >= lens.MIN_CONTROL_LABELS
    assert all(s.n_labels is None for s in lens.PROFILE_RUNS["embedded"] if s.dataset == lens.CONTROL)
    im = images(rows[-1].item.scenario, *rows[-1].item.images[0])   # rendered testbed scenes
    assert im.size[0] > 0


def test_collect_on_tiny_mllama_text_and_image_rows():
    """Mllama skips its cross-attention layers on text-only rows; collect still records every layer."""
    lm = models.load("tiny-mllama")
    rows = _rows(1, 1)
    # batch_size=1: a text row batched with image rows would run the cross-attention layers
    col = lens.collect(lm, rows, images=_synthetic_source(), batch_size=1, max_new_tokens=2, cache=False,
                       progress=False)
    assert col.vectors.shape == (len(rows), lm.n_layers, 3, lm.d_model)
    text = (col.table["variant"] == "text").to_numpy()
    cross = lm.model.config.text_config.cross_attention_layers
    assert np.all(col.vectors[text][:, cross, 1:] == 0)          # skipped layers write nothing


# ---------------------------------------------------------------------------- issue 31: finding 2 by the protocol


def test_fluctuation_verdict_every_branch():
    rng = np.random.default_rng(0)
    masses = [0.001, 0.3, 0.5, 0.6, 0.9]
    social = lens.layer_frame(_collection(_shaped(40, [0.2, 0.5, 0.9, 0.6, 0.4], masses, rng)))
    flat = lens.layer_frame(_collection(_shaped(24, [0.2, 0.5, 0.9, 0.9, 0.9], masses, rng)))
    d, v = lens.fluctuation_verdict(social, flat, min_mass=0.1, seed=0)
    # peak chosen on the even labels, scored on the odd ones: depth 2, height 0.5 over the output
    assert d["peak_depth"] == 2 and d["peak"] - d["final"] == pytest.approx(0.5, abs=0.02)
    assert v.verdict == "reproduced" and v.bias_claim and v.n_units == 20
    # the control has the same shape: the height is the lens's, not the model's -> ruled out
    same = lens.layer_frame(_collection(_shaped(24, [0.2, 0.5, 0.9, 0.6, 0.4], masses, rng)))
    assert lens.fluctuation_verdict(social, same, min_mass=0.1)[1].verdict == "not reproduced"
    # four control labels are too few
    small = lens.layer_frame(_collection(_shaped(4, [0.2, 0.5, 0.9, 0.9, 0.9], masses, rng)))
    d, v = lens.fluctuation_verdict(social, small, min_mass=0.1)
    assert v.verdict == "not testable here" and "4 label" in v.why
    # the best in-band depth is the first one the lens reads: no peak can be seen
    edge = lens.layer_frame(_collection(_shaped(40, [0.2, 0.95, 0.6, 0.5, 0.4], masses, rng)))
    d, v = lens.fluctuation_verdict(edge, flat, min_mass=0.1)
    assert d["peak_depth"] == 1 and v.verdict == "not testable here" and "first depth" in v.why
    # nothing readable inside the band
    d, v = lens.fluctuation_verdict(social, flat, min_mass=0.7)
    assert v.verdict == "not testable here" and "band" in v.why


def test_placements_hand_computed_and_mean_is_auroc():
    from sklearn.metrics import roc_auc_score

    s, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([True, False, True, False])
    assert lens.placements(s, y).tolist() == [0.0, 0.5, 0.5, 0.0]          # AUROC 0.25 = every mean
    assert lens.placements(np.array([1.0, 1.0]), np.array([True, False])).tolist() == [0.5, 0.5]
    rng = np.random.default_rng(0)
    s, y = rng.normal(size=60), rng.random(60) < 0.4
    p = lens.placements(s, y)
    auc = roc_auc_score(y, s)
    assert p[y].mean() == pytest.approx(auc) and p[~y].mean() == pytest.approx(auc)
    with pytest.raises(FairVLMError, match="both"):
        lens.placements(s, np.ones(60, bool))


def _conflict_frame(n_labels, p_conflict, rng, layers=(5, 6)):
    recs = []
    for i in range(n_labels):
        for k in range(4):
            for l in layers:
                c = rng.random() < p_conflict
                recs.append({"row_id": f"s{i}|{k}", "scenario": f"s{i}", "layer": l, "push_attn": 1.0,
                             "push_mlp": -1.0 if c else 1.0, "d1_margin": 1.0, "d2_margin": 1.0})
    return pd.DataFrame(recs)


def test_conflict_verdict_against_the_content_free_rows():
    rng = np.random.default_rng(0)
    social = _conflict_frame(30, 0.8, rng)
    eff, ctl, v = lens.conflict_verdict(social, _conflict_frame(20, 0.2, rng), reading="writes", layers=(5, 6))
    assert v.verdict == "reproduced" and v.n_units == 20 and eff["conflict"].mean() == pytest.approx(v.effect)
    # the content-free rows conflict as often: the procedure measures itself
    _, _, v = lens.conflict_verdict(social, _conflict_frame(40, 0.8, rng), reading="writes", layers=(5, 6))
    assert v.verdict == "not reproduced"
    # the streams never conflict here (margins of one sign): the claim is ruled out... or refused
    _, _, v = lens.conflict_verdict(social, _conflict_frame(20, 0.2, rng), reading="streams", layers=(5, 6))
    assert v.verdict == "not testable here" and "zero" in v.why
    with pytest.raises(FairVLMError, match="reading"):
        lens.conflict_verdict(social, social, reading="both", layers=(5,))


def _transfer_collection(n, signal, seed):
    rng = np.random.default_rng(seed)
    L, d = 2, 64
    z = rng.normal(size=n)
    lp = np.zeros((n, 2 * L + 1, 3))
    lp[:, :, 2] = np.log(0.5)
    lp[:, -1, 2] = np.log(1 / (1 + np.exp(-z)))
    lp[:, :, 0] = lp[:, :, 1] = np.log((1 - np.exp(lp[:, :, 2])) / 2)
    u = np.zeros(d, np.float32)
    u[3] = 1.0
    vec = rng.normal(0, 1.0, size=(n, L, 3, d)).astype(np.float32)
    vec[:, 1, 1] += -signal * z[:, None] * u
    vec[:, 1, 2] += signal * z[:, None] * u
    return _collection(lp, vectors=vec.astype(np.float16))


def test_transfer_verdicts_against_shuffled_label_fits():
    col = _transfer_collection(240, 2.0, 0)
    fit, ev = lens.split_by_label(col)
    table, vs = lens.transfer_verdicts(fit, ev, n_shuffles=5, seed=0)
    assert [v.verdict for v in vs] == ["reproduced", "reproduced"] and (table["auroc"] > 0.9).all()
    assert (table["control_auroc"] < 0.7).all()
    assert all(v.bias_claim and "bias" in vs[0].claim for v in vs)
    # no signal in the writes: the fitted directions do no better than shuffled-label fits
    fit0, ev0 = lens.split_by_label(_transfer_collection(1200, 0.0, 1))   # the AUROC is recomputed per resample
    _, vs0 = lens.transfer_verdicts(fit0, ev0, n_shuffles=5, seed=0)
    assert [v.verdict for v in vs0] == ["not reproduced", "not reproduced"]
    assert all(v.difference_interval[1] < 0.05 for v in vs0)


def test_weighted_auroc_matches_sklearn_with_repeated_rows():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=40), 1)            # ties included
    y = rng.random(40) < 0.4
    assert lens.weighted_auroc(s, y) == pytest.approx(roc_auc_score(y, s))
    w = rng.integers(0, 3, size=40).astype(float)
    rep = np.repeat(np.arange(40), w.astype(int))
    assert lens.weighted_auroc(s, y, w) == pytest.approx(roc_auc_score(y[rep], s[rep]))
    many = lens.weighted_auroc(s, y, np.stack([np.ones(40), w]))
    assert many.shape == (2,) and many[1] == pytest.approx(roc_auc_score(y[rep], s[rep]))
    assert np.isnan(lens.weighted_auroc(s, y, np.where(y, 0.0, 1.0)))   # no positive row drawn
    with pytest.raises(FairVLMError, match="weights"):
        lens.weighted_auroc(s, y, np.ones(3))


def test_cluster_resample_weights_draw_whole_clusters():
    clusters = np.array(["a", "a", "b", "c", "c", "c"])
    W = lens.cluster_resample_weights(clusters, 200, seed=0)
    assert W.shape == (200, 6)
    assert (W[:, 0] == W[:, 1]).all() and (W[:, 3] == W[:, 5]).all()     # rows of a cluster move together
    assert np.allclose(W[:, [0, 2, 3]].sum(axis=1), 3)                     # as many clusters drawn as there are


def _margin_collection(n, seed, *, scenario_prefix="s"):
    """Rows whose writes carry the output's fair margin along one axis whatever the rows are
    about: the 'answer axis' a direction fitted on any rows picks up."""
    col = _transfer_collection(n, 2.0, seed)
    col.table["scenario"] = [f"{scenario_prefix}{i // 4}" for i in range(n)]   # 4 rows (prompts) per label
    return col


def test_transfer_verdicts_content_free_fit_is_the_control():
    col = _margin_collection(240, 0)
    fit, ev = lens.split_by_label(col)
    # against shuffled labels alone the answer axis looks like a transferable bias direction...
    table, vs = lens.transfer_verdicts(fit, ev, n_shuffles=5, seed=0, n_boot=300)
    assert [v.verdict for v in vs] == ["reproduced", "reproduced"]
    # ...but content-free rows carry the same axis: fitted there, it separates as well
    control = _margin_collection(160, 7, scenario_prefix="c")
    table, vs = lens.transfer_verdicts(fit, ev, n_shuffles=5, seed=0, n_boot=300, control_col=control)
    assert vs[0].verdict == "not reproduced" and "reproduced" not in [v.verdict for v in vs]
    assert all(abs(v.difference) < 0.05 for v in vs)
    assert (table["content_free_auroc"] > 0.9).all() and (table["control_auroc"] >= table["shuffled_auroc"]).all()
    assert (table["n_clusters"] == 30).all() and all(v.n_units == 30 for v in vs)
    with pytest.raises(FairVLMError, match="n_boot"):
        lens.transfer_verdicts(fit, ev, n_boot=10)
