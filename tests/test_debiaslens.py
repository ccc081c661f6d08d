"""fairvlm.debiaslens: query sets, MaxSkew with the uniform prior, the random-ranking floor."""

import math

import numpy as np
import pytest

from fairvlm import debiaslens as DL
from fairvlm.errors import DataError
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
