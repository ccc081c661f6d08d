"""fairvlm.metrics on hand-computed cases, and fairvlm.retrieval (loaders on small fixtures
in the public formats, per-query tables, the two embedding-space baselines)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fairvlm import metrics, retrieval
from fairvlm.errors import DataError, UnknownNameError
from fairvlm.params import ParameterError

FIX = Path(__file__).resolve().parent / "fixtures"
LOG2 = math.log2
LN = math.log


# ------------------------------------------------------------------------------- NDKL
def test_ndkl_hand_computed_two_groups():
    # prefixes of [a, a, b, b]: (1,0) (1,0) (2/3,1/3) (1/2,1/2) against (1/2, 1/2)
    kl1 = LN(2.0)  # 1 * ln(1 / 0.5)
    kl3 = (2 / 3) * LN((2 / 3) / 0.5) + (1 / 3) * LN((1 / 3) / 0.5)
    num = kl1 / LOG2(2) + kl1 / LOG2(3) + kl3 / LOG2(4) + 0.0 / LOG2(5)
    z = 1 / LOG2(2) + 1 / LOG2(3) + 1 / LOG2(4) + 1 / LOG2(5)
    got = metrics.ndkl(["a", "a", "b", "b"], {"a": 0.5, "b": 0.5})
    assert got == pytest.approx(num / z, abs=1e-9)
    assert got == pytest.approx(0.4523688, abs=1e-6)


def test_ndkl_order_matters_and_alternation_is_fairer():
    target = metrics.uniform(["a", "b"])
    alternating = metrics.ndkl(["a", "b", "a", "b"], target)
    kl3 = (2 / 3) * LN(4 / 3) + (1 / 3) * LN(2 / 3)
    z = 1 + 1 / LOG2(3) + 0.5 + 1 / LOG2(5)
    assert alternating == pytest.approx((LN(2) + kl3 / 2) / z, abs=1e-9)
    assert alternating < metrics.ndkl(["a", "a", "b", "b"], target)


def test_ndkl_single_item_and_three_groups():
    assert metrics.ndkl(["x"], metrics.uniform(["x", "y"])) == pytest.approx(LN(2))
    t = {"a": 0.5, "b": 0.3, "c": 0.2}
    # [c, a]: prefix 1 -> (0,0,1); prefix 2 -> (1/2, 0, 1/2)
    k1 = LN(1 / 0.2)
    k2 = 0.5 * LN(0.5 / 0.5) + 0.5 * LN(0.5 / 0.2)
    expect = (k1 + k2 / LOG2(3)) / (1 + 1 / LOG2(3))
    assert metrics.ndkl(["c", "a"], t) == pytest.approx(expect, abs=1e-9)


def test_ndkl_epsilon_convention_for_zero_target():
    # a group with target 0 that appears: the 1e-12 smoothing of reranking.ndkl makes it finite
    eps = 1e-12
    k2 = 0.5 * LN((0.5 + eps) / (1 + eps)) + 0.5 * LN((0.5 + eps) / (0 + eps))
    expect = (0.0 + k2 / LOG2(3)) / (1 + 1 / LOG2(3))
    got = metrics.ndkl(["a", "b"], {"a": 1.0, "b": 0.0})
    assert math.isfinite(got)
    assert got == pytest.approx(expect, rel=1e-9)


def test_ndkl_bad_input():
    with pytest.raises(ParameterError):
        metrics.ndkl([], {"a": 1.0})
    with pytest.raises(ParameterError):
        metrics.ndkl(["a"], {"a": 0.7, "b": 0.7})
    with pytest.raises(DataError, match="rank 1"):
        metrics.ndkl(["a", "z"], metrics.uniform(["a", "b"]))


# ---------------------------------------------------------------- MaxSkew and entropy
def test_max_skew_hand_computed():
    ranking = ["a", "a", "b", "c", "c", "c"]
    assert metrics.max_skew(ranking, list("abc"), 4) == pytest.approx(LN(0.5 / (1 / 3)))
    assert metrics.max_skew(ranking, list("abc"), 1) == pytest.approx(LN(3))
    assert metrics.max_skew(["a", "b"], list("ab"), 2) == pytest.approx(0.0)
    # non-uniform target
    assert metrics.max_skew(["a", "b", "b", "b"], list("ab"), 4, {"a": 0.5, "b": 0.5}) == pytest.approx(LN(1.5))
    assert metrics.max_skew(["a", "b", "b", "b"], list("ab"), 4, {"a": 0.25, "b": 0.75}) == pytest.approx(0.0)


def test_max_skew_bad_input():
    with pytest.raises(ParameterError, match="k="):
        metrics.max_skew(["a", "b"], list("ab"), 3)
    with pytest.raises(ParameterError):
        metrics.max_skew(["a", "b"], list("ab"), 0)
    with pytest.raises(DataError):
        metrics.max_skew(["a", "q"], list("ab"), 2)


def test_normalized_entropy_hand_computed():
    assert metrics.normalized_entropy(["m", "f", "f", "m"], 2) == pytest.approx(1.0)
    h = -(0.75 * LN(0.75) + 0.25 * LN(0.25)) / LN(2)
    assert metrics.normalized_entropy(["m", "m", "m", "f"], 2) == pytest.approx(h)
    assert h == pytest.approx(0.8112781, abs=1e-6)
    assert metrics.normalized_entropy(["a", "b"], 4) == pytest.approx(0.5)
    assert metrics.normalized_entropy(["a"] * 5, 7) == pytest.approx(0.0)
    with pytest.raises(DataError):
        metrics.normalized_entropy(["a", "b", "c"], 2)
    with pytest.raises(ParameterError):
        metrics.normalized_entropy(["a"], 1)


# ------------------------------------------------------------------------------ recall
def test_recall_at_k_hand_computed_and_ties():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    r = metrics.recall_at_k(scores, [2, 0], ks=(1, 2, 3))
    assert r == {1: 0.0, 2: 1.0, 3: 1.0}
    r = metrics.recall_at_k(np.array([[0.5, 0.5]]), [1], ks=(1, 2))
    assert r == {1: 0.0, 2: 1.0}  # ties go to the lower index
    rel = np.array([[False, True, True], [True, False, False]])
    assert metrics.recall_at_k(scores, rel, ks=(1,)) == {1: 0.0}
    with pytest.raises(DataError):
        metrics.recall_at_k(scores, np.zeros((2, 3), dtype=bool))
    with pytest.raises(ParameterError):
        metrics.recall_at_k(scores, [5, 0])


def test_text_image_recall_both_directions():
    images = torch.eye(3)
    # captions 0,1 describe image 0; caption 2 image 1; caption 3 image 2 but looks like image 1
    texts = torch.tensor([[1.0, 0, 0], [0.6, 0.8, 0], [0, 1.0, 0], [0, 0.8, 0.6]])
    r = metrics.text_image_recall(texts, images, [0, 0, 1, 2], ks=(1, 2))
    # t2i: caption 1 ranks image 1 first (0.8 > 0.6), caption 3 ranks image 1 first
    assert r["t2i"] == {1: 0.5, 2: 1.0}
    # i2t: image 0's best caption is 0 (hit); image 1's is caption 2 (hit); image 2's best is 3 (hit)
    assert r["i2t"] == {1: 1.0, 2: 1.0}
    with pytest.raises(ParameterError):
        metrics.text_image_recall(texts, images, [0, 0, 1])


def test_zero_shot_accuracy():
    imgs = torch.tensor([[1.0, 0], [0, 1.0], [0.8, 0.6]])
    classes = torch.tensor([[1.0, 0], [0, 1.0]])
    assert metrics.zero_shot_accuracy(imgs, classes, [0, 1, 1]) == pytest.approx(2 / 3)
    with pytest.raises(ParameterError):
        metrics.zero_shot_accuracy(imgs, classes, [0, 2, 1])


# ---------------------------------------------------------------- per-query tables
def test_query_fairness_and_candidates():
    groups = ["m", "m", "f", "f"]
    sim = np.array([[4.0, 3.0, 2.0, 1.0], [1.0, 4.0, 3.0, 2.0]])
    t = retrieval.query_fairness(sim, groups, k=2, queries=["q0", "q1"])
    assert t["ndkl"].iloc[0] == pytest.approx(metrics.ndkl(["m", "m", "f", "f"], metrics.uniform(["f", "m"])))
    assert t["ndkl"].iloc[1] == pytest.approx(metrics.ndkl(["m", "f", "f", "m"], metrics.uniform(["f", "m"])))
    assert t["max_skew"].tolist() == pytest.approx([LN(2), 0.0])
    cand = np.array([[True, False, True, False], [True, True, True, True]])
    t2 = retrieval.query_fairness(sim, groups, k=2, candidates=cand)
    assert t2["n_ranked"].tolist() == [2, 4]
    assert t2["max_skew"].iloc[0] == pytest.approx(0.0)
    with pytest.raises(DataError):
        retrieval.query_fairness(sim, groups, k=3, candidates=cand)


def test_word_entropy():
    sim = np.array([[4.0, 3.0, 2.0, 1.0]])
    t = retrieval.word_entropy(sim, {"gender": ["m", "m", "f", "f"], "race": ["a", "b", "a", "b"]}, k=2)
    assert t.set_index("attribute")["entropy"].to_dict() == pytest.approx({"gender": 0.0, "race": 1.0})
    with pytest.raises(ParameterError):
        retrieval.word_entropy(sim, {"gender": ["m", "f"]}, k=2)


# ------------------------------------------------------------------------- baselines
def test_clip_clip_drops_the_informative_dimension():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    x = rng.normal(size=(200, 6))
    x[:, 2] += 4.0 * y  # dimension 2 carries the attribute
    keep = retrieval.clip_clip_dims(x, y, m=5, seed=0)
    assert 2 not in keep and len(keep) == 5
    assert list(keep) == sorted(keep)
    clipped = retrieval.keep_dims(torch.tensor(x), keep)
    assert clipped.shape == (200, 5)
    assert torch.allclose(clipped.norm(dim=-1), torch.ones(200), atol=1e-5)
    with pytest.raises(ParameterError):
        retrieval.clip_clip_dims(x, y, m=0)


def test_biased_prompts_projection_hand_case():
    # spurious direction e0; pairs differ along e1; lambda large -> e1 nearly removed too
    spurious = torch.tensor([[1.0, 0, 0]])
    a = torch.tensor([[0.0, 1, 1]])
    b = torch.tensor([[0.0, -1, 1]])
    p = retrieval.biased_prompts_projection(spurious, a, b, lam=1000.0)
    # P0 = diag(0,1,1); M = (a-b)(a-b)^T = diag(0,4,0); P = P0 diag(1, 1/4001, 1)
    assert torch.allclose(p, torch.diag(torch.tensor([0.0, 1 / 4001, 1.0])), atol=1e-7)
    q = retrieval.project_texts(torch.tensor([[0.6, 0.0, 0.8]]), p)
    assert torch.allclose(q, torch.tensor([[0.0, 0.0, 1.0]]), atol=1e-6)
    p0 = retrieval.biased_prompts_projection(spurious, a, b, lam=0.0)
    assert torch.allclose(p0, torch.diag(torch.tensor([0.0, 1.0, 1.0])), atol=1e-7)
    with pytest.raises(ParameterError):
        retrieval.biased_prompts_projection(spurious, a, torch.zeros(2, 3))


# --------------------------------------------------------------------------- loaders
def _colour(i):  # the colour make_fixtures.py paints row i with
    return (20 * i % 256, 255 - 20 * i % 256, 100)


def _close(px, rgb, tol=6):
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(px, rgb))


@pytest.mark.parametrize("folder", ["fairface_csv", "fairface_hf"])
def test_load_fairface_both_formats(folder):
    g = retrieval.load_fairface(FIX / folder)
    assert len(g) == 6
    assert g.meta["gender"].tolist() == ["male", "female", "male", "female", "male", "female"]
    assert g.meta["race"].tolist()[:4] == ["East Asian", "East Asian", "White", "Latino_Hispanic"]
    assert g.meta["age"].iloc[5] == "more than 70"
    for i in (0, 3, 5):
        assert _close(g.image(i).getpixel((4, 4)), _colour(i))
    sub = retrieval.load_fairface(FIX / folder, limit=3, seed=1)
    assert len(sub) == 3 and set(sub.meta["race"]) <= set(g.meta["race"])


def test_load_fairface_errors(tmp_path):
    with pytest.raises(DataError, match="neither"):
        retrieval.load_fairface(tmp_path)
    with pytest.raises(UnknownNameError):
        retrieval.load_fairface(FIX / "fairface_csv", split="test")
    (tmp_path / "fairface_label_val.csv").write_text("file,age,gender,race\nval/1.jpg,3-9,Male,White\n")
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "1.jpg").write_bytes(b"not a jpeg")
    g = retrieval.load_fairface(tmp_path)
    with pytest.raises(DataError, match="cannot decode"):
        g.image(0)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "validation-0.parquet").write_bytes(b"PAR1garbage")
    with pytest.raises(DataError, match="parquet"):
        retrieval.load_fairface(bad)


@pytest.mark.parametrize("folder", ["sispi", "sispi_parquet"])
def test_load_sispi_both_formats(folder):
    g = retrieval.load_sispi(FIX / folder)
    assert g.meta["profession"].tolist() == ["doctor", "doctor", "fire fighter", "fire fighter"]
    assert g.meta["gender"].tolist() == ["female", "male", "female", "male"]
    assert g.meta["ethnicity"].tolist() == ["black", "white", "east_asian", "latino_hispanic"]
    assert _close(g.image(2).getpixel((4, 4)), _colour(2))


def test_load_sispi_rejects_bad_names(tmp_path):
    (tmp_path / "doctor_female_black.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="profession_index_gender_ethnicity"):
        retrieval.load_sispi(tmp_path)


def test_load_karpathy_coco():
    g = retrieval.load_karpathy(FIX / "coco_karpathy" / "dataset_coco.json", FIX / "coco_karpathy", "test")
    assert g.name == "COCO" and len(g) == 3
    assert g.meta["id"].tolist() == [42, 73, 133]
    assert g.captions["image"].tolist() == [0, 0, 1, 1, 2, 2]
    assert g.captions["caption"].iloc[1] == "Another caption of image 42"
    assert _close(g.image(2).getpixel((4, 4)), _colour(3))  # row 2 of the test split is file 3
    val = retrieval.load_karpathy(FIX / "coco_karpathy" / "dataset_coco.json", FIX / "coco_karpathy", "val")
    assert len(val) == 1
    sub = g.subset([2, 0])
    assert sub.captions["image"].tolist() == [1, 1, 0, 0]
    assert sub.captions["caption"].iloc[2] == "A photo number 133."
    assert sub.meta["id"].tolist() == [133, 42]
    with pytest.raises(UnknownNameError):
        retrieval.load_karpathy(FIX / "coco_karpathy" / "dataset_coco.json", FIX / "coco_karpathy", "dev")
    with pytest.raises(DataError):
        retrieval.load_karpathy(FIX / "nope.json", FIX)


def test_pairs_gallery(shared):
    g = retrieval.pairs_gallery(shared / "data" / "pairs")
    assert len(g) == 200
    assert set(g.meta["gender"]) == {"male", "female"}
    assert g.image(0).mode == "RGB"


# ---------------------------------------------------------------------------- NDCG and mAP (hand-computed)


def test_ndcg_hand_computed():
    # scores rank items 2, 0, 1, 3; relevance 3, 0, 2, 1 at items 0..3 -> ranked relevance 2, 3, 0, 1
    scores = np.array([[0.8, 0.1, 0.9, 0.05]])
    rel = np.array([[3.0, 0.0, 2.0, 1.0]])
    dcg = 2 / math.log2(2) + 3 / math.log2(3) + 0 + 1 / math.log2(5)
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert metrics.ndcg_at_k(scores, rel) == pytest.approx(dcg / idcg)
    # @2: only the first two positions
    assert metrics.ndcg_at_k(scores, rel, k=2) == pytest.approx((2 + 3 / math.log2(3)) / (3 + 2 / math.log2(3)))
    # the ideal ranking scores 1, a reversed binary ranking less
    assert metrics.ndcg_at_k(np.array([[3.0, 2.0, 1.0]]), np.array([[1, 1, 0]], bool)) == pytest.approx(1.0)
    assert metrics.ndcg_at_k(np.array([[1.0, 2.0, 3.0]]), np.array([[1, 0, 0]], bool)) == pytest.approx(0.5)
    with pytest.raises(DataError, match="no relevant item"):
        metrics.ndcg_at_k(np.ones((1, 3)), np.zeros((1, 3)))
    with pytest.raises(ParameterError, match="k="):
        metrics.ndcg_at_k(scores, rel, k=5)


def test_mean_average_precision_hand_computed():
    # query 0: relevant at ranks 1 and 3 -> AP = (1/1 + 2/3) / 2; query 1: relevant at rank 2 -> AP = 1/2
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.6]])
    rel = np.array([[1, 0, 1, 0], [0, 1, 0, 0]], bool)
    assert metrics.mean_average_precision(scores, rel) == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2)
    # AP@2: query 0 finds one of min(2, 2) -> 1/2; query 1: (1/2) / min(2, 1) = 1/2
    assert metrics.mean_average_precision(scores, rel, k=2) == pytest.approx(0.5)
    # ties are broken by item index (stable): equal scores rank item 0 first
    assert metrics.mean_average_precision(np.zeros((1, 2)), np.array([[0, 1]], bool)) == pytest.approx(0.5)
    with pytest.raises(ParameterError, match="boolean"):
        metrics.mean_average_precision(scores, rel.astype(float))
    with pytest.raises(DataError, match="no relevant item"):
        metrics.mean_average_precision(scores, np.zeros((2, 4), bool))


def test_paper_audit_without_fairface_splits_pairs_by_scenario(shared):
    """Probes, prototypes and CLIP-clip are fitted on half of the PAIRS scenarios and the
    audit runs on the other half: nothing is fitted on the gallery it is evaluated on."""
    from fairvlm.models import load

    lm = load("tiny-clip")
    data = retrieval.paper_audit_data(lm, pairs_dir=shared / "data" / "pairs")
    fit = set(data.probe_meta["scenario"])
    audit = set(data.galleries["pairs"]["meta"]["scenario"])
    assert fit and audit and not fit & audit
    assert len(data.probe_meta) == data.probe_pixels.shape[0]
    assert len(data.galleries["pairs"]["meta"]) == data.galleries["pairs"]["pixels"].shape[0]
    assert set(data.scenario_suites[0]["queries"]["key"]) == set(data.galleries["pairs"]["meta"]["label"])
    assert data.galleries["pairs"]["image"](0).mode == "RGB"
    assert "split" in data.description
