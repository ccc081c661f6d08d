"""Answers from option logits (fairvlm.resfair_scoring): the choice rule on hand-made logits, the
shared-prefix pass against the full pass, and the agreement of two readings."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from fairvlm import mcq, models, resfair
from fairvlm import resfair_scoring as RS
from fairvlm.errors import FairVLMError
from fairvlm.lens import Directions

IDS = {"a": [1, 2], "b": [3], "fair": [4, 5]}


@pytest.fixture(scope="module")
def tiny():
    lm = models.load("tiny-llava")
    lm.model.float()
    return lm


def _rows(n_labels=3, variants=("text", "image_a", "both"), prompts=2):
    labels = pd.DataFrame({"scenario": [f"s{i}" for i in range(n_labels)], "label": ["pilot", "chef", "nurse"][:n_labels]})
    return mcq.make_rows(mcq.build_items(labels, "pairs", variants=variants), prompts)


def _images():
    from PIL import Image

    def source(scenario, gender, race):
        v = (hash((scenario, gender, race)) % 200) + 20
        return Image.new("RGB", (32, 32), (v, 255 - v, (v * 7) % 255))

    return source


# ---------------------------------------------------------------- the choice rule, by hand


def test_choice_is_the_option_of_the_top_option_token():
    # token 2 (option a) is the single most probable option token, although b's one token and
    # fair's two tokens carry more summed mass than a's best: the rule follows the top token
    logits = torch.tensor([0.0, 1.0, 3.0, 2.9, 2.5, 2.5, 9.0])
    lp, choice = RS.choice_from_logits(logits, IDS)
    assert choice == "a"
    lse = math.log(sum(math.exp(x) for x in logits.tolist()))
    want = [math.log(math.exp(1.0) + math.exp(3.0)) - lse, 2.9 - lse, math.log(2 * math.exp(2.5)) - lse]
    np.testing.assert_allclose(lp, want, atol=1e-6)
    # the summed mass ranks the options differently here (fair: 2 e^2.5 > e^1 + e^3)
    assert int(np.argmax(lp)) == 2


def test_choice_follows_a_changed_table():
    logits = torch.zeros(7)
    logits[5] = 4.0                              # a fair token on top
    assert RS.choice_from_logits(logits, IDS)[1] == "fair"
    logits[3] = 4.5                              # now b's token
    assert RS.choice_from_logits(logits, IDS)[1] == "b"
    logits[1] = 4.5                              # a tie with b goes to a (the first of a, b, fair)
    assert RS.choice_from_logits(logits, IDS)[1] == "a"


def test_choice_ignores_non_option_tokens_and_refuses_bad_input():
    logits = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.0, 0.0, 50.0])   # token 6 ("The") is no option
    assert RS.choice_from_logits(logits, IDS)[1] == "b"
    with pytest.raises(FairVLMError, match="one row"):
        RS.choice_from_logits(torch.zeros(2, 7), IDS)
    with pytest.raises(FairVLMError, match="NaN"):
        RS.choice_from_logits(torch.tensor([float("nan")] * 7), IDS)
    with pytest.raises(FairVLMError, match="vocabulary"):
        RS.choice_from_logits(torch.zeros(7), {"a": [9], "b": [3], "fair": [4]})


def test_common_prefix_by_hand():
    assert RS.common_prefix([[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 7]]) == 2
    assert RS.common_prefix([[1, 2, 3], [1, 2, 3]]) == 2          # one token left to read logits at
    assert RS.common_prefix([[1, 2, 9, 3], [1, 2, 9, 4]], stop=[9]) == 2   # cut before an image token
    assert RS.common_prefix([[5, 1], [6, 1]]) == 0
    with pytest.raises(FairVLMError):
        RS.common_prefix([])


def test_answer_agreement_by_hand():
    gen = pd.DataFrame({"row_id": ["r1", "r2", "r3", "r4"], "parsed": ["fair", "a", "invalid", "b"]})
    used = pd.DataFrame({"row_id": ["r4", "r3", "r2", "r1", "r9"], "parsed": ["a", "fair", "a", "fair", "b"]})
    got = RS.answer_agreement(gen, used)
    assert got == {"n": 4, "agree": 0.5, "n_valid": 3, "agree_valid": pytest.approx(2 / 3)}
    with pytest.raises(FairVLMError, match="no row_id"):
        RS.answer_agreement(gen, used.assign(row_id=["x"] * 5))


def test_choice_token_ids_refuses_shared_first_tokens(tiny):
    ids = RS.choice_token_ids(tiny.tokenizer, ["Paris", "Rome", "Madrid"])
    assert len(ids) == 3 and not set(ids[0]) & set(ids[1])
    with pytest.raises(FairVLMError, match="same token"):
        RS.choice_token_ids(tiny.tokenizer, ["lung", "Liver", "heart"])


# ---------------------------------------------------------------- the shared prefix is exact


@pytest.mark.parametrize("variants", [("text",), ("text", "image_a", "both")])
def test_prefix_reuse_matches_the_full_pass(tiny, variants):
    rows = _rows(variants=variants)
    full = RS.option_scores(tiny, rows, images=_images(), batch_size=4, reuse_prefix=False)
    fast = RS.option_scores(tiny, rows, images=_images(), batch_size=4, reuse_prefix=True)
    # float32: the two passes differ only by the order of floating-point sums
    np.testing.assert_allclose(fast[["lp_a", "lp_b", "lp_fair"]], full[["lp_a", "lp_b", "lp_fair"]], atol=1e-4)
    assert list(fast["parsed"]) == list(full["parsed"])
    assert set(fast["answer_mode"]) == {"logits"}
    assert set(fast["parsed"]) <= {"a", "b", "fair"}


def test_prefix_reuse_is_exact_under_the_posthoc_edit(tiny):
    rows = _rows(variants=("text", "image_b"))
    d = tiny.d_model
    g = torch.Generator().manual_seed(1)
    ub, uf = torch.randn(d, generator=g), torch.randn(d, generator=g)
    ub, uf = (ub / ub.norm()).numpy(), (uf / uf.norm()).numpy()
    layers = list(range(tiny.n_layers))
    dirs = Directions({l: ub for l in layers}, {l: uf for l in layers}, {l: "mlp_out" for l in layers},
                      {l: "attn_out" for l in layers}, {}, {"model": tiny.name})
    plain = RS.option_scores(tiny, rows, images=_images(), batch_size=3)
    with resfair.posthoc(tiny, dirs, lambda1=0.9, lambda2=0.9):
        full = RS.option_scores(tiny, rows, images=_images(), batch_size=3, reuse_prefix=False)
        fast = RS.option_scores(tiny, rows, images=_images(), batch_size=3, reuse_prefix=True)
    np.testing.assert_allclose(fast[["lp_a", "lp_b", "lp_fair"]], full[["lp_a", "lp_b", "lp_fair"]], atol=1e-4)
    # the edit did something, so the check above is not comparing two unedited passes
    assert np.abs(full[["lp_a", "lp_b", "lp_fair"]].to_numpy() - plain[["lp_a", "lp_b", "lp_fair"]].to_numpy()).max() > 1e-3


def test_option_scores_match_evaluate_first_position(tiny):
    rows = _rows(n_labels=2, variants=("text", "image_a"), prompts=1)
    gen = mcq.evaluate(tiny, rows, images=_images(), max_new_tokens=2, batch_size=4, progress=False)
    fast = RS.option_scores(tiny, rows, images=_images(), batch_size=4)
    np.testing.assert_allclose(fast[["lp_a", "lp_b", "lp_fair"]], gen[["lp_a", "lp_b", "lp_fair"]], atol=1e-4)


def test_score_choices_picks_the_top_first_token(tiny):
    prompts = ["What is the capital of France? Options: Paris, Rome, Madrid.", "Two plus two? Options: four, five, three."]
    options = [["Paris", "Rome", "Madrid"], ["four", "five", "three"]]
    logits = RS.next_logits(tiny, prompts, batch_size=2, reuse_prefix=False)
    got = RS.score_choices(tiny, prompts, options)
    for lg, opts, pick in zip(logits, options, got):
        best = [float(lg[ids].max()) for ids in RS.choice_token_ids(tiny.tokenizer, opts)]
        assert pick == int(np.argmax(best))
    with pytest.raises(FairVLMError, match="option lists"):
        RS.score_choices(tiny, prompts, options[:1])



def test_apply_adapter_refuses_a_base_of_another_model_or_dtype(tiny):
    from fairvlm import resfair_baselines as RB

    with pytest.raises(FairVLMError, match="float32"):
        RB.apply_adapter({"model": "testbed-llava", "size": None}, {}, RB.TrainSettings(), base=tiny)
    half = models.load("tiny-llava", dtype=torch.bfloat16)
    with pytest.raises(FairVLMError, match="float32"):
        RB.apply_adapter({"model": "tiny-llava", "size": None}, {}, RB.TrainSettings(), base=half)
