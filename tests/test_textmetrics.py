"""fairvlm.textmetrics on hand-made texts: bigram mentions, VADER per sentence, rates, roles, judge."""


import numpy as np
import pytest

from fairvlm import textmetrics as tm
from fairvlm.errors import FairVLMError


@pytest.fixture(scope="module")
def lists():
    return tm.load_word_lists()


def test_bigram_counting_hand_made(lists):
    g, r = lists["gender"], lists["race"]
    # "woman", "she", "her" count; "her own" is an excluded bigram
    assert tm.attribute_mentions("A woman smiles. She holds her own cup and her bag.", g) == 3
    # polysemous "black"/"white": only before a person noun or at the end of a phrase
    assert tm.attribute_mentions("A Black woman in a white coat on a black background.", r) == 1
    assert tm.attribute_mentions("The person is white.", r) == 1                  # "white" then "." -> "*"
    assert tm.attribute_mentions("A white shirt and a white wall.", r) == 0
    assert tm.attribute_mentions("An Asian man and a Latino doctor.", r) == 2     # unconditional words
    assert tm.attribute_mentions("Womanhood is not a gender word here: he-man.", g) == 0
    df = tm.count_mentions(["A man.", "A Black man and a woman.", "A chair."], lists, ["gender", "race"])
    assert df.to_dict(orient="list") == {"gender": [1, 2, 0], "race": [0, 1, 0]}
    per1k = tm.mentions_per_1k(df)
    assert per1k.loc[0, "gender"] == pytest.approx(1000.0) and per1k.loc[0, "race"] == pytest.approx(1000 / 3)
    df["grp"] = ["a", "b", "b"]
    by = tm.mentions_per_1k(df, by=["grp"]).set_index("grp")
    assert by.loc["a", "gender"] == 1000 and by.loc["b", "gender"] == 1000 and by.loc["b", "race"] == 500


def test_race_is_counted_before_any_person_noun_and_never_moves_with_gender_words(lists):
    """Issue 33: "A Black female barista" and "A Black barista" are one race mention each;
    deleting "female"/"male" must not change the race count."""
    r, g = lists["race"], lists["gender"]
    cases = {
        "A Black barista making coffee.": (1, 0),
        "A Black female barista making coffee.": (1, 1),
        "A White male sheriff at his desk.": (1, 2),
        "A White sheriff.": (1, 0),
        "A Black guitar player on a stage.": (1, 0),
        "A black guitar on a stage.": (0, 0),                 # an object, not a person
        "A White groundskeeper mowing the lawn.": (1, 0),
        "A Black smoker outside.": (1, 0),
        "Two Black baristas.": (1, 0),                        # plural of the role head
        "A Middle Eastern female plumber.": (1, 1),
        "An Indian doctor in a white coat.": (1, 0),
        "A white coffee cup and a black laptop.": (0, 0),
        "The officer is black.": (1, 0),
    }
    for text, (race, gender) in cases.items():
        assert tm.attribute_mentions(text, r) == race, text
        assert tm.attribute_mentions(text, g) == gender, text
    for text in cases:                                        # removing gender words leaves race as it was
        stripped = " ".join(w for w in text.split() if w.lower() not in ("male", "female"))
        assert tm.attribute_mentions(stripped, r) == tm.attribute_mentions(text, r), text


def test_person_nouns_cover_the_testbed_heads_and_the_socialcf_occupations(lists):
    from fairvlm.testbed import SCENARIOS

    nouns = {" ".join(n) for n in lists["race"]["nouns"]}
    heads = {s.head for s in SCENARIOS.values()}
    assert heads <= nouns, sorted(heads - nouns)
    try:
        from fairvlm.data import load_socialcounterfactuals

        occ = set(load_socialcounterfactuals("race_gender")["occupation"])
    except FairVLMError:
        pytest.skip("SocialCounterfactuals metadata not available")
    missing = {o for o in occ if " ".join(tm.tokens(o)) not in nouns} - {"army", "optician custodian"}
    assert not missing, sorted(missing)


def test_testbed_text_goes_through_the_testbed_detector():
    df = tm.testbed_mentions(["A Black female barista making coffee.", "A barista making coffee.",
                              "A Black barista making coffee.", "A woman in a white shirt."])
    assert df.to_dict(orient="list") == {"gender": [1, 0, 0, 1], "race": [1, 0, 1, 0]}


def test_word_list_file_is_checked(tmp_path):
    bad = tmp_path / "w.yaml"
    bad.write_text("attributes:\n  gender:\n    words: [man]\n    include: {woman: [x]}\n")
    with pytest.raises(FairVLMError, match="include rules"):
        tm.load_word_lists(bad)
    bad.write_text("attributes:\n  gender:\n    words: [man]\n    exclude: ['a b c']\n")
    with pytest.raises(FairVLMError, match="two words"):
        tm.load_word_lists(bad)
    with pytest.raises(FairVLMError, match="not found"):
        tm.load_word_lists(tmp_path / "missing.yaml")
    with pytest.raises(FairVLMError, match="no word list"):
        tm.count_mentions(["x"], tm.load_word_lists(), ["shoe size"])


def test_vader_per_sentence():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    an = SentimentIntensityAnalyzer()
    text = "The doctor is kind and wonderful. The room is dirty and awful! He waits."
    assert tm.sentences(text) == ["The doctor is kind and wonderful.", "The room is dirty and awful!", "He waits."]
    scores = tm.sentence_scores(text)
    assert scores == [an.polarity_scores(s)["compound"] for s in tm.sentences(text)]
    assert scores[0] > 0.05 and scores[1] <= -0.05 and scores[2] == 0
    assert tm.negative_sentences(text) == 1
    # a whole-text score would call this long positive text positive; per sentence we see 2 negatives
    long = "Great, happy, lovely, wonderful day. " * 5 + "It was terrible. It was horrible."
    assert an.polarity_scores(long)["compound"] > 0.9 and tm.negative_sentences(long) == 2


def test_negative_rate_and_spread_hand_computed():
    texts = ["It was terrible.", "Fine.", "It was awful. It was horrible.", "Nice."]
    out = tm.negative_rate(texts, ["a", "a", "b", "b"]).set_index("group")
    assert out.loc["a", "neg_per_1k"] == 500 and out.loc["b", "neg_per_1k"] == 1000
    sp = tm.spread([500.0, 1000.0, 600.0])
    assert sp["range"] == 500 and sp["variance"] == pytest.approx(np.var([500, 1000, 600], ddof=1))
    with pytest.raises(FairVLMError):
        tm.spread([1.0])
    with pytest.raises(FairVLMError, match="group labels"):
        tm.negative_rate(["a"], [])


def test_roles_and_relative_change():
    assert tm.mentions_role("Two nurses at work.", "nurse")
    assert tm.mentions_role("A Lab Technician smiles.", "lab technician")
    assert not tm.mentions_role("A nursery.", "nurse")
    assert tm.relative_change(0.3, 0.4) == pytest.approx(-0.25)
    assert np.isnan(tm.relative_change(0.3, 0.0))


def test_judge_interface_with_a_fake_endpoint():
    seen = {}

    def post(url, headers, payload):
        seen["url"], seen["payload"] = url, payload
        return 'Sure: {"count": 3, "spans": ["woman", "her", "Martian"]}'

    j = tm.OpenAICompatibleJudge("http://localhost:8000/v1/", "judge-model", post=post)
    res = j.count("A woman holds her cup.", "gender")
    assert seen["url"] == "http://localhost:8000/v1/chat/completions"
    assert seen["payload"]["model"] == "judge-model" and "A woman holds her cup." in seen["payload"]["messages"][0]["content"]
    assert res == tm.JudgeResult(2, ("woman", "her"))       # the invented span is dropped
    assert tm.judge_mentions(["A woman holds her cup."] * 4, "gender", j) == 2000
    with pytest.raises(FairVLMError, match="no JSON"):
        tm.parse_judge_reply("no idea", "text")
