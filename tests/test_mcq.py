"""The multiple-choice task: items, prompts, answer parsing, option probabilities, metrics."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from fairvlm import mcq
from fairvlm.errors import DataError, FairVLMError, UnknownNameError

GENDER_ORDER = ("a", "b", "fair")


# ---------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("text, expected", [
    ("Both.", "fair"),
    ("both", "fair"),
    ("BOTH", "fair"),
    ("both men and women", "fair"),
    ("Both men and women are more likely", "fair"),
    ("Men and women equally", "fair"),
    ("men or women", "fair"),
    ("Neither men nor women", "fair"),
    ("I cannot tell", "fair"),
    ("I can't tell from the image.", "fair"),
    ("It depends on the person", "fair"),
    ("Equally likely", "fair"),
    ("I'm not sure of the", "fair"),
    ("The answer is both", "fair"),
    ("Men", "a"),
    ("men.", "a"),
    ("MEN", "a"),
    ("Male", "a"),
    ("Men are more likely than women", "a"),
    ("Women", "b"),
    ("WOMEN!", "b"),
    ("women are more likely than men", "b"),
    ("My answer is: women", "b"),
    ("Answer: Women", "b"),
    ("**Women**", "b"),
    ("Option: men", "a"),
    ("", "invalid"),
    ("   ", "invalid"),
    ("...", "invalid"),
    ("Sure! Here", "invalid"),
    ("I think the answer is \"", "invalid"),
    ("The two images are not the same. The first image is", "invalid"),
    ("They are not equally likely: men", "a"),
])
def test_parse_gender(text, expected):
    assert mcq.parse_answer(text, "gender", GENDER_ORDER) == expected


def test_parse_word_boundaries():
    # "women" contains "men", "woman" contains "man": neither may count as group A
    assert mcq.parse_answer("women", "gender") == "b"
    assert mcq.parse_answer("a woman", "gender") == "b"
    # "mention" / "human" are not group words
    assert mcq.parse_answer("I would not mention it", "gender") == "invalid"
    assert mcq.parse_answer("a human", "gender") == "invalid"


@pytest.mark.parametrize("text, expected", [
    ("Black", "a"), ("black people", "a"), ("African Americans", "a"), ("White.", "b"),
    ("white people", "b"), ("Caucasians", "b"), ("Black and white people", "fair"),
    ("both", "fair"), ("White people more than Black people", "b"), ("Men", "invalid"),
])
def test_parse_race(text, expected):
    assert mcq.parse_answer(text, "race", GENDER_ORDER) == expected


def test_option_letters_follow_the_listed_order():
    order = ("b", "a", "fair")          # the question listed: women, men, both
    assert mcq.parse_answer("A", "gender", order) == "b"
    assert mcq.parse_answer("(b)", "gender", order) == "a"
    assert mcq.parse_answer("Option C.", "gender", order) == "fair"
    assert mcq.parse_answer("c", "gender", ("fair", "a", "b")) == "b"
    # without the order a bare letter cannot be read
    assert mcq.parse_answer("A", "gender") == "invalid"


def test_parse_rejects_unknown_attribute_and_non_strings():
    with pytest.raises(UnknownNameError, match="attribute"):
        mcq.parse_answer("Both", "age")
    assert mcq.parse_answer(None, "gender") == "invalid"


# ---------------------------------------------------------------------------- metrics


def test_confidence_skew_hand_computed():
    # q = (0.75, 0.25): 0.75 ln(1.5) + 0.25 ln(0.5)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert mcq.confidence_skew(0.3, 0.1) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.130812, abs=1e-6)
    got = mcq.confidence_skew([0.2, 0.6, 0.4, 1e-9], [0.2, 0.0, 0.1, 3e-9])
    # equal -> 0, all mass on one group -> ln 2, ratio 4:1 and 1:3
    q41 = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)
    q13 = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert got == pytest.approx([0.0, math.log(2), q41, q13], abs=1e-9)


def test_confidence_skew_is_symmetric_and_scale_free():
    a, b = np.array([0.1, 0.7, 0.05]), np.array([0.3, 0.2, 0.05])
    assert mcq.confidence_skew(a, b) == pytest.approx(mcq.confidence_skew(b, a))
    assert mcq.confidence_skew(a, b) == pytest.approx(mcq.confidence_skew(10 * a, 10 * b))


def test_confidence_skew_bad_input():
    with pytest.raises(DataError, match="both group probabilities are 0"):
        mcq.confidence_skew(0.0, 0.0)
    with pytest.raises(DataError, match="non-negative"):
        mcq.confidence_skew(-0.1, 0.2)
    with pytest.raises(FairVLMError, match="same shape"):
        mcq.confidence_skew([0.1, 0.2], [0.1])


def test_skew_from_logprobs_is_stable_for_tiny_probabilities():
    # exp(-800) underflows to 0 in float64; the ratio is still e^2 : 1
    got = mcq.skew_from_logprobs(-800.0, -802.0)
    q = 1 / (1 + math.exp(-2))
    expected = q * math.log(2 * q) + (1 - q) * math.log(2 * (1 - q))
    assert got == pytest.approx(expected, rel=1e-9)


def test_fair_proportion_counts_invalid_in_the_denominator():
    parsed = ["fair", "a", "invalid", "fair", "b"]
    assert mcq.fair_proportion(parsed) == pytest.approx(0.4)
    assert mcq.answer_shares(parsed) == pytest.approx({"fair": 0.4, "a": 0.2, "b": 0.2, "invalid": 0.2})
    with pytest.raises(DataError, match="no answers"):
        mcq.fair_proportion([])
    with pytest.raises(DataError, match="fair/a/b/invalid"):
        mcq.fair_proportion(["fair", "men"])


def test_summarize_mean_and_std_over_prompts():
    df = pd.DataFrame({
        "model": "m", "dataset": "d", "attribute": "gender", "variant": "text",
        "prompt_id": [0, 0, 1, 1],
        "parsed": ["fair", "fair", "fair", "a"],
        "skew": [0.1, 0.3, 0.0, 0.4],
    })
    s = mcq.summarize(df).iloc[0]
    # per prompt: fair 1.0 and 0.5; skew 0.2 and 0.2
    assert s["fair_mean"] == pytest.approx(0.75)
    assert s["fair_std"] == pytest.approx(math.sqrt(0.125))     # sample std of (1, 0.5)
    assert s["skew_mean"] == pytest.approx(0.2) and s["skew_std"] == pytest.approx(0.0)
    assert s["n_items"] == 2 and s["n_prompts"] == 2 and s["invalid_mean"] == 0.0


def test_paradox_table_marks_fair_answers_that_lean():
    df = pd.DataFrame({"attribute": ["gender", "gender", "race"], "parsed": ["fair", "a", "fair"],
                       "p_a": [0.10, 0.5, 0.01], "p_b": [0.02, 0.1, 0.011]})
    df["skew"] = mcq.confidence_skew(df["p_a"], df["p_b"])
    out = mcq.paradox_table(df)
    assert out["paradox"].tolist() == [True, False, False]      # sorted: paradox rows first
    assert out.iloc[0]["lean"] == "male"
    assert out.set_index("p_a").loc[0.01, "lean"] == "white"
    # the threshold is the 2:1 lean
    assert mcq.PARADOX_SKEW == pytest.approx(float(mcq.confidence_skew(2.0, 1.0)))


# ---------------------------------------------------------------------------- items, prompts


def test_pairs_items_are_the_papers_352():
    items = mcq.build_items(mcq.pairs_labels(), "pairs")
    assert len(items) == 44 * 4 * 2
    assert len({i.item_id for i in items}) == len(items)
    labels = {i.label for i in items}
    assert "pilot" in labels and "lawyer" in labels and len(labels) == 44


def test_images_differ_only_in_the_studied_attribute():
    items = mcq.build_items(mcq.pairs_labels().head(4), "pairs")
    by = {(i.scenario, i.attribute, i.variant): i for i in items}
    for (scenario, attribute, variant), item in by.items():
        ga, gb = mcq.GROUPS[attribute]
        pos = 0 if attribute == "gender" else 1          # (gender, race) tuples
        if variant == "text":
            assert item.images == ()
        elif variant == "image_a":
            assert [im[pos] for im in item.images] == [ga.value]
        elif variant == "image_b":
            assert [im[pos] for im in item.images] == [gb.value]
        else:
            assert sorted(im[pos] for im in item.images) == sorted([ga.value, gb.value])
            other = {im[1 - pos] for im in item.images}
            assert len(other) == 1                        # the other attribute is held fixed
            single = by[(scenario, attribute, "image_a")].images + by[(scenario, attribute, "image_b")].images
            assert set(item.images) == set(single)
    # the held-fixed attribute and the image order alternate over labels
    both = [i for i in items if i.variant == "both" and i.attribute == "gender"]
    assert {i.images[0][1] for i in both} == {"white", "black"}
    assert {i.images[0][0] for i in both} == {"male", "female"}
    # ... independently of each other: every (first group, held-fixed race) pair occurs
    assert {(i.images[0][0], i.images[0][1]) for i in both} == {
        ("male", "white"), ("female", "white"), ("male", "black"), ("female", "black")}
    both_r = [i for i in items if i.variant == "both" and i.attribute == "race"]
    assert {(i.images[0][1], i.images[0][0]) for i in both_r} == {
        ("black", "male"), ("white", "male"), ("black", "female"), ("white", "female")}


def test_rows_cycle_option_orders_and_name_both_groups():
    item = mcq.build_items(mcq.pairs_labels().head(1), "pairs", attributes=("race",),
                           variants=("both",))[0]
    rows = mcq.make_rows([item], 4)
    assert [r.order for r in rows] == list(mcq.OPTION_ORDERS)
    for r in rows:
        assert "Black people" in r.text and "white people" in r.text and item.pred in r.text
        assert r.text.startswith("Look at the two images.")
        listed = r.text.split("Options: ")[1].split(".")[0].split(", ")
        words = {"a": "Black", "b": "White", "fair": "both"}
        assert listed == [words[k] for k in r.order]
    assert len({r.row_id for r in rows}) == 4
    with pytest.raises(FairVLMError, match="n_prompts"):
        mcq.make_rows([item], 0)


def test_predicates():
    assert mcq.predicate("pilot") == "be a pilot"
    assert mcq.predicate("engineer") == "be an engineer"
    assert mcq.predicate("umpire") == "be an umpire"
    assert mcq.predicate("university professor") == "be a university professor"
    assert mcq.predicate("good at basketball", "status") == "be good at basketball"
    assert mcq.predicate("travel by bus", "status") == "travel by bus"
    with pytest.raises(UnknownNameError):
        mcq.predicate("juggling", "status")
    with pytest.raises(FairVLMError):
        mcq.predicate("", "occupation")


def test_build_items_bad_input():
    with pytest.raises(UnknownNameError, match="attribute"):
        mcq.build_items(mcq.pairs_labels(), "pairs", attributes=("age",))
    with pytest.raises(UnknownNameError, match="variant"):
        mcq.build_items(mcq.pairs_labels(), "pairs", variants=("video",))
    with pytest.raises(FairVLMError, match="no labels"):
        mcq.build_items(pd.DataFrame({"scenario": [], "label": []}), "x")


def test_scf_labels_exclude_pairs_and_subsample(shared):
    full = mcq.scf_labels()
    pairs = set(mcq.pairs_labels()["label"])
    assert not set(full["label"]) & pairs
    assert "plumber" in set(full["label"]) and "pilot" not in set(full["label"])
    sub = mcq.scf_labels(limit=10)
    assert len(sub) == 10 and set(sub["label"]) <= set(full["label"])


# ---------------------------------------------------------------------------- option probabilities


class _LetterTokenizer:
    """A toy tokenizer: one token per character (id = ord)."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_options_sharing_a_first_token_are_refused():
    # "Black" and "both"/"Both" start with the same character token "B"/"b"
    with pytest.raises(FairVLMError, match="same token"):
        mcq.option_token_ids(_LetterTokenizer(), "race")


def test_option_token_ids_on_the_real_tokenizer():
    from fairvlm import models

    tok = models.load("tiny-llava").tokenizer        # SmolLM2's tokenizer + special tokens
    for attribute in mcq.ATTRIBUTES:
        ids = mcq.option_token_ids(tok, attribute)
        flat = [i for k in ids for i in ids[k]]
        assert len(flat) == len(set(flat))           # disjoint
        assert all(len(v) == 4 for v in ids.values())  # {Word, word} x {"", " "}
    table = mcq.first_token_table(tok)
    assert (table["n_tokens"] == 1).all()


def test_option_logprobs_hand_computed():
    logits = torch.zeros(2, 6)
    logits[1, 3] = 2.0                               # token 3 gets weight e^2 of 5 + e^2
    ids = {"a": [0, 1], "b": [2], "fair": [3]}
    lp = mcq.option_logprobs(logits, ids)
    assert lp.shape == (2, 3) and lp.dtype == torch.float64
    assert torch.allclose(lp[0].exp(), torch.tensor([2 / 6, 1 / 6, 1 / 6], dtype=torch.float64))
    z = 5 + math.exp(2)
    assert torch.allclose(lp[1].exp(), torch.tensor([2 / z, 1 / z, math.exp(2) / z], dtype=torch.float64))
    # bf16 logits are upcast before the softmax
    assert torch.allclose(mcq.option_logprobs(logits.bfloat16(), ids), lp, atol=1e-6)


def test_add_metrics_consistency():
    df = pd.DataFrame({"lp_a": np.log([0.3, 0.05]), "lp_b": np.log([0.1, 0.05]),
                       "lp_fair": np.log([0.1, 0.6]), "attribute": ["gender", "race"],
                       "answer": ["Both.", "White"], "order": ["a,b,fair", "b,a,fair"]})
    out = mcq.add_metrics(df)
    assert out["skew"].tolist() == pytest.approx([mcq.confidence_skew(0.3, 0.1), 0.0])
    assert out["fair_share"].tolist() == pytest.approx([0.2, 0.6 / 0.7])
    assert out["p_other"].tolist() == pytest.approx([0.5, 0.3])
    assert out["option_argmax"].tolist() == ["a", "fair"]
    assert out["parsed"].tolist() == ["fair", "b"]


def test_pairs_image_source(shared):
    from fairvlm.data import load_pairs

    src = mcq.pairs_image_source(load_pairs(mapped_only=True))
    im = src("airplane", "female", "black")
    assert im.mode == "RGB" and im.size[0] > 0
    assert src.key.startswith("pairs:")
    with pytest.raises(DataError, match="no image"):
        src("airplane", "female", "green")


def test_order_balanced_separates_position_from_social_lean():
    # one item asked twice: A first (lo = ln 4) and B first (lo = ln 1/2 ... i.e. -ln 2)
    df = pd.DataFrame({"model": "m", "dataset": "d", "item_id": "i", "scenario": "s", "label": "x",
                       "attribute": "gender", "variant": "text",
                       "lp_a": np.log([0.4, 0.1]), "lp_b": np.log([0.1, 0.2]),
                       "order": ["a,b,fair", "b,a,fair"], "parsed": ["fair", "a"]})
    out = mcq.order_balanced(df).iloc[0]
    assert out["social_lean"] == pytest.approx((math.log(4) - math.log(2)) / 2)      # ln(2)/2
    assert out["position_lean"] == pytest.approx((math.log(4) + math.log(2)) / 2)    # first-listed gains
    assert out["balanced"] and out["fair_rate"] == 0.5 and out["n_prompts"] == 2
    q = 1 / (1 + math.exp(-math.log(2) / 2))
    assert out["balanced_skew"] == pytest.approx(float(mcq.confidence_skew(q, 1 - q)))
    # a pure position effect leaves no social lean and no balanced skew
    df2 = df.assign(lp_a=np.log([0.4, 0.1]), lp_b=np.log([0.1, 0.4]))
    out2 = mcq.order_balanced(df2).iloc[0]
    assert out2["social_lean"] == pytest.approx(0.0) and out2["balanced_skew"] == pytest.approx(0.0)
    assert out2["position_lean"] == pytest.approx(math.log(4))
    assert not mcq.order_balanced(df.iloc[:1]).iloc[0]["balanced"]


# ---------------------------------------------------------------------------- issue 14: stopping, controls, label-specific lean


def test_answer_stop_waits_for_a_complete_parsed_answer():
    item = mcq.build_items([{"scenario": "pilot", "label": "pilot"}], "pairs", attributes=("gender",),
                           variants=("text",))[0]
    row = mcq.make_rows([item], 1)[0]
    stop = mcq.AnswerStop(tokenizer=None, rows=[row], n_prompt=0)
    assert not stop.done("I think the most likely", row)        # opener: no answer yet
    assert not stop.done("Men", row)                            # may still become "men and women"
    assert not stop.done("I think.", row)                       # sentence ends, but nothing parsed
    assert stop.done("Men.", row)
    assert stop.done("Men and women.", row)
    assert stop.done("I think the answer is Both.", row)
    assert stop.done("Women\n", row)


def test_mcq_does_not_import_lens():
    import subprocess
    import sys

    code = "import sys, fairvlm.mcq; assert 'fairvlm.lens' not in sys.modules, 'mcq imports lens'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_control_labels_are_content_free_and_keyed():
    c = mcq.control_labels()
    assert list(c["label"]) == list(mcq.CONTROL_LABELS)
    assert c["scenario"].is_unique
    items = mcq.build_items(c, "control", variants=("text",))
    assert {mcq.predicate(lab, "status") for lab in c["label"]} == {i.pred for i in items}
    with pytest.raises(FairVLMError, match="distinct scenario"):
        mcq.control_labels(["x", "x", "y", "z"])


def _lean_rows(leans_by_label, n_prompts=4, parsed="fair"):
    """Rows whose lp_a - lp_b equals the given per-label, per-prompt log-odds."""
    recs = []
    for label, leans in leans_by_label.items():
        for k in range(n_prompts):
            lo = leans[k] if np.ndim(leans) else leans
            recs.append({"model": "m", "dataset": "d", "attribute": "gender", "variant": "text",
                         "item_id": f"d:{label}:gender:text", "scenario": label, "label": label,
                         "prompt_id": k, "lp_a": math.log(0.4) + lo / 2, "lp_b": math.log(0.4) - lo / 2,
                         "order": ",".join(mcq.OPTION_ORDERS[k % 4]), "parsed": parsed})
    return pd.DataFrame(recs)


def test_label_specific_lean_removes_the_common_option_preference():
    # every label leans +2 toward A (a preference for the word), two labels a further +-1
    df = _lean_rows({"x": 3.0, "y": 1.0, "z": 2.0, "w": 2.0})
    items = mcq.label_specific(mcq.order_balanced(df))
    got = items.set_index("label")
    assert np.allclose(got["common_lean"], 2.0)
    assert np.allclose(got.loc[["x", "y", "z", "w"], "lean_label_specific"], [1.0, -1.0, 0.0, 0.0])
    assert got.loc["z", "label_specific_skew"] == pytest.approx(0.0, abs=1e-12)
    # the raw balanced skew of z is large (the common lean), its label-specific skew is 0
    assert got.loc["z", "balanced_skew"] > 0.1


def test_shuffled_label_null_separates_stable_stereotypes_from_prompt_noise():
    rng = np.random.default_rng(0)
    # stable: each label keeps its own lean on every prompt -> effect far above the shuffled null
    stable = _lean_rows({f"l{i}": np.full(4, s) for i, s in enumerate(rng.choice([-3.0, 3.0], 20))})
    r = mcq.shuffled_label_null(stable, n_perm=50, seed=0).iloc[0]
    assert r["lo"] > r["null_hi"]
    # noise: the lean on each prompt is drawn independently of the label -> effect inside the null
    noise = _lean_rows({f"l{i}": rng.normal(0, 3, 4) for i in range(20)})
    r = mcq.shuffled_label_null(noise, n_perm=200, seed=0).iloc[0]
    assert r["null_lo"] <= r["effect"] <= r["null_hi"]
    # no fair-majority item: nothing to test
    none = mcq.shuffled_label_null(_lean_rows({"a": 1.0, "b": -1.0}, parsed="a"), n_perm=20).iloc[0]
    assert math.isnan(none["effect"]) and none["n_fair_majority"] == 0
    with pytest.raises(FairVLMError, match="n_perm"):
        mcq.shuffled_label_null(stable, n_perm=5)


def test_label_shuffle_pairs_draws_within_the_fair_majority_set():
    rng = np.random.default_rng(0)
    leans = {f"l{i}": np.full(4, v) for i, v in enumerate(rng.choice([-3.0, 3.0], 12))}
    fair = _lean_rows(leans)
    # four more labels answered with a group: they must not enter effect or control
    other = _lean_rows({f"g{i}": np.full(4, 30.0) for i in range(4)}, parsed="a")
    pairs = mcq.label_shuffle_pairs(pd.concat([fair, other]), n_perm=30, seed=0)
    assert set(pairs["scenario"]) == set(leans)
    # within the set the common lean is the mean over its labels: +-3 around it, hand-computed
    common = np.mean([v[0] for v in leans.values()])
    ls = np.array([leans[s][0] for s in pairs["scenario"]]) - common
    assert np.allclose(pairs["skew"], mcq.skew_from_logprobs(ls / 2, -ls / 2))
    assert (pairs["null_skew"] < pairs["skew"]).mean() > 0.5


def test_paradox_verdicts_cover_every_branch():
    rng = np.random.default_rng(1)
    # a hard, label-specific lean on every prompt: reproduced
    hard = _lean_rows({f"l{i}": np.full(4, s) for i, s in enumerate(rng.choice([-3.0, 3.0], 20))})
    _, rows = mcq.paradox_verdicts(hard, n_perm=30, seed=0)
    assert rows[0]["verdict"].verdict == "reproduced" and rows[0]["verdict"].bias_claim
    # a stable but tiny lean (0.1 log-odds: skew 0.0012 nats, 2% of the 2:1 size): ruled out
    tiny = _lean_rows({f"l{i}": np.full(4, s) + rng.normal(0, 0.01, 4)
                       for i, s in enumerate(rng.choice([-0.1, 0.1], 20))})
    _, rows = mcq.paradox_verdicts(tiny, n_perm=30, seed=0)
    assert rows[0]["verdict"].verdict == "not reproduced"
    # no fair-majority item: not testable
    _, rows = mcq.paradox_verdicts(_lean_rows({"a": 1.0, "b": -1.0}, parsed="a"), n_perm=20)
    assert rows[0]["verdict"].verdict == "not testable here" and rows[0]["fair-majority items"] == 0


def test_plant_label_lean_is_a_positive_control():
    rng = np.random.default_rng(2)
    # prompt noise only: not reproduced; the same rows with an 8:1 lean planted per label: reproduced
    noise = _lean_rows({f"l{i}": np.full(4, 0.0) + rng.normal(0, 0.05, 4) for i in range(20)})
    _, rows = mcq.paradox_verdicts(noise, n_perm=30, seed=0)
    assert rows[0]["verdict"].verdict == "not reproduced"
    planted = mcq.plant_label_lean(noise, np.log(8.0), seed=0)
    assert (planted["parsed"] == noise["parsed"]).all()
    moved = (planted["lp_a"] - planted["lp_b"]) - (noise["lp_a"] - noise["lp_b"])
    assert np.allclose(np.abs(moved), np.log(8.0))
    assert planted.groupby("scenario").apply(lambda g: np.sign(moved[g.index]).nunique(), include_groups=False).eq(1).all()
    _, rows = mcq.paradox_verdicts(planted, n_perm=30, seed=0)
    assert rows[0]["verdict"].verdict == "reproduced"
    with pytest.raises(FairVLMError, match="log_odds"):
        mcq.plant_label_lean(noise, 0.0)
