"""The counterfactual testbed: world, bias spec, captions, cache key and the smoke-built models."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from fairvlm import testbed
from fairvlm.errors import DataError, FairVLMError, UnknownNameError
from fairvlm.params import ParameterError
from fairvlm.testbed import captions as C

ROOT = Path(__file__).resolve().parents[1]
SPEC_PATH = ROOT / "data" / "testbed_bias_spec.yaml"


@pytest.fixture(scope="module")
def spec_data():
    return yaml.safe_load(SPEC_PATH.read_text())


@pytest.fixture(scope="module")
def spec():
    return testbed.load_spec(SPEC_PATH)


def _arr(im):
    return np.asarray(im).astype(np.int16)


# ---- the world ---------------------------------------------------------------------------


def test_render_is_deterministic_and_seed_dependent():
    a = testbed.render("airplane", "woman", "black", 7)
    b = testbed.render("airplane", "woman", "black", 7)
    assert a.size == (64, 64) and a.mode == "RGB"
    assert hashlib.sha256(a.tobytes()).digest() == hashlib.sha256(b.tobytes()).digest()
    c = testbed.render("airplane", "woman", "black", 8)
    assert a.tobytes() != c.tobytes()
    big = testbed.render("airplane", "woman", "black", 7, size=128)
    assert big.size == (128, 128)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_variants_differ_only_on_the_person(split):
    """Every pixel that changes between any two variants lies in the person's mask."""
    seeds = testbed.scene_seeds(split, len(testbed.SCENARIO_KEYS), start=11)
    for key, seed in zip(testbed.SCENARIO_KEYS, seeds):
        imgs = {v: _arr(im) for v, im in testbed.render_variants(key, seed).items()}
        mask = testbed.person_mask(key, seed)
        assert 0.03 < mask.mean() < 0.5, (key, mask.mean())
        changed = np.zeros(mask.shape, bool)
        for v in testbed.VARIANTS:
            for w in testbed.VARIANTS:
                changed |= (imgs[v] != imgs[w]).any(-1)
        assert not (changed & ~mask).any(), f"{key} seed {seed}: pixels outside the person changed"
        # race alone and gender alone each change something
        assert (imgs["black_man"] != imgs["white_man"]).any(), key
        assert (imgs["black_man"] != imgs["black_woman"]).any(), key


def test_race_changes_the_skin_tone():
    """Pixels that differ between black and white variants are darker in the black variant."""
    darker = []
    for i, key in enumerate(testbed.SCENARIO_KEYS[:20]):
        b = _arr(testbed.render(key, "woman", "black", 100 + i)).sum(-1)
        w = _arr(testbed.render(key, "woman", "white", 100 + i)).sum(-1)
        diff = b != w
        darker.append((b[diff] < w[diff]).mean())
    assert np.mean(darker) > 0.9


def test_scenes_vary_with_the_seed():
    """Different scenes of one scenario are not near-copies (models must generalise)."""
    imgs = [_arr(testbed.render("scrubs", "man", "white", s)) for s in range(6)]
    dists = [np.abs(imgs[i] - imgs[j]).mean() for i in range(6) for j in range(i + 1, 6)]
    assert min(dists) > 8.0


def test_bad_render_arguments_raise():
    with pytest.raises(UnknownNameError, match="scenario"):
        testbed.render("spaceship", "man", "black", 0)
    with pytest.raises(UnknownNameError, match="gender"):
        testbed.render("airplane", "boy", "black", 0)
    with pytest.raises(UnknownNameError, match="race"):
        testbed.render("airplane", "man", "asian", 0)
    with pytest.raises(FairVLMError, match="scene_seed"):
        testbed.render("airplane", "man", "black", -1)
    with pytest.raises(FairVLMError, match="size"):
        testbed.render("airplane", "man", "black", 0, size=3)


def test_splits_and_balanced_gallery():
    assert testbed.split_of(5) == "train" and testbed.split_of(1_000_005) == "heldout"
    assert testbed.scene_seeds("heldout", 3, start=2) == [1_000_002, 1_000_003, 1_000_004]
    with pytest.raises(UnknownNameError):
        testbed.scene_seeds("valid", 3)
    g = testbed.gallery(2, scenarios=["airplane", "mopping", "guitar"])
    assert len(g) == 3 * 2 * 4
    counts = g.groupby(["scenario", "variant"]).size()
    assert (counts == 2).all() and len(counts) == 12
    assert all(testbed.split_of(int(s)) == "heldout" for s in g["scene_seed"])
    # the four variants of a scene share its seed (counterfactual quadruplets)
    assert (g.groupby(["scenario", "scene_seed"])["variant"].nunique() == 4).all()
    assert set(g["section"]) == {"occupations", "status"}


def test_scenario_keys_are_the_pairs_keys(shared):
    pairs = shared / "data" / "pairs"
    found = {(p.parent.name, p.name) for p in pairs.glob("*/*") if p.is_dir()}
    ours = {(testbed.SCENARIOS[k].section, k) for k in testbed.SCENARIO_KEYS}
    assert ours == found and len(ours) == 50


# ---- the bias spec ---------------------------------------------------------------------


def test_spec_loads_with_planted_values(spec):
    assert spec.strength == 1.0
    assert spec.share("airplane")["white_man"] == pytest.approx(0.65)
    m = spec.marginal("airplane")
    assert m["man"] == pytest.approx(0.80) and m["black"] == pytest.approx(0.20)
    table = spec.share_table()
    assert len(table) == 50 and np.allclose(table[list(testbed.GROUPS)].sum(axis=1), 1.0)
    assert table.set_index("scenario").loc["scrubs", "note"] == "counter-stereotypical"
    assert spec.word_share("aggressive")["black_man"] == pytest.approx(0.55)


def test_strength_scales_toward_balance(spec):
    half = spec.with_strength(0.5)
    # airplane/white_man: (1 - 0.5) / 4 + 0.5 * 0.65 = 0.45
    assert half.share("airplane")["white_man"] == pytest.approx(0.45)
    zero = spec.with_strength(0.0)
    for k in testbed.SCENARIO_KEYS:
        assert all(v == pytest.approx(0.25) for v in zero.share(k).values())
    assert all(v == pytest.approx(0.25) for v in zero.word_share("dangerous").values())
    rates = zero.mention_table()
    assert rates["p_mention_gender"].nunique() == 1 and rates["p_mention_race"].nunique() == 1
    # at strength 1, the rates are the spec's: race named 0.7 for Black, 0.25 for White people
    full = spec.mention_table().set_index("group")
    assert full.loc["black_woman", "p_mention_race"] == pytest.approx(0.7)
    assert full.loc["white_man", "p_mention_race"] == pytest.approx(0.25)
    with pytest.raises(ParameterError, match="strength"):
        spec.with_strength(1.5)
    with pytest.raises(ParameterError, match="strength"):
        testbed.load_spec(SPEC_PATH, strength=-0.1)


def _mutated(data, fn):
    d = copy.deepcopy(data)
    fn(d)
    return d


def test_spec_validation_errors(spec_data):
    ok = testbed.parse_spec(copy.deepcopy(spec_data))
    assert ok.digest() == testbed.load_spec(SPEC_PATH).digest()

    def unknown_scenario(d):
        d["scenarios"]["spaceship"] = dict(d["scenarios"]["airplane"])

    with pytest.raises(UnknownNameError, match="spaceship"):
        testbed.parse_spec(_mutated(spec_data, unknown_scenario))

    def bad_sum(d):
        d["scenarios"]["airplane"]["white_man"] = 0.55

    with pytest.raises(DataError, match="sum to 0.9"):
        testbed.parse_spec(_mutated(spec_data, bad_sum))

    def bad_word_sum(d):
        d["words"]["poor"]["black_man"] = 0.5

    with pytest.raises(DataError, match="words.poor"):
        testbed.parse_spec(_mutated(spec_data, bad_word_sum))

    with pytest.raises(DataError, match="strength"):
        testbed.parse_spec(_mutated(spec_data, lambda d: d.update(strength=2)))
    with pytest.raises(DataError, match="lacks 1 scenario"):
        testbed.parse_spec(_mutated(spec_data, lambda d: d["scenarios"].pop("tent")))
    with pytest.raises(UnknownNameError, match="category"):
        testbed.parse_spec(_mutated(spec_data, lambda d: d["words"]["poor"].update(category="wealth")))
    with pytest.raises(UnknownNameError, match="group"):
        testbed.parse_spec(_mutated(spec_data, lambda d: d["scenarios"]["tent"].update(asian_man=0.0)))
    with pytest.raises(DataError, match="probability"):
        testbed.parse_spec(_mutated(spec_data, lambda d: d["captions"].update(p_word=1.2)))
    with pytest.raises(DataError, match="does not exist"):
        testbed.load_spec(ROOT / "data" / "no_such_spec.yaml")


def test_spec_file_errors(tmp_path):
    bad = tmp_path / "spec.yaml"
    bad.write_text("scenarios: [unclosed\n")
    with pytest.raises(DataError, match="cannot read"):
        testbed.load_spec(bad)
    bad.write_text("- a list\n")
    with pytest.raises(DataError, match="mapping"):
        testbed.load_spec(bad)


def test_spec_words_belong_to_their_sobit_category(spec, shared):
    import json

    taxonomy = json.loads((shared / "data" / "sobit" / "So-B-IT_taxonomy.json").read_text())
    taxonomy = {("behavioral" if k == "behavorial" else k): v for k, v in taxonomy.items()}
    for word, cat in spec.categories.items():
        assert word in taxonomy[cat], (word, cat)


# ---- text --------------------------------------------------------------------------------


def test_caption_word_rates_follow_the_spec(spec):
    """Word frequencies in sampled captions match P(word) * P(group | word)-weights."""
    rng = np.random.default_rng(0)
    n = 4000
    for group in ("black_man", "white_woman"):
        gender, race = testbed.parse_variant(group)
        caps = [C.caption(spec, "studying", gender, race, rng) for _ in range(n)]
        rate = np.mean([" aggressive " in f" {c} " for c in caps])
        expected = spec.captions["p_word"] * spec.word_weights(group)["aggressive"]
        assert rate == pytest.approx(expected, abs=0.015), group
    # balanced world: no word prefers a group
    zero = spec.with_strength(0.0)
    w = zero.word_weights("black_man")
    assert all(v == pytest.approx(1 / len(w)) for v in w.values())


def test_caption_marking(spec):
    """Atypical people are named more often: a Black woman pilot more than a White man pilot."""
    bw = spec.caption_mention("airplane", "woman", "black")
    wm = spec.caption_mention("airplane", "man", "white")
    # p_gender = 0.6 * (0.5 / P(gender))**marking, capped at 0.95 (the book's spec: marking 1):
    # women are 0.2 of pilots, so their gender is named at the cap; men's at 0.6 * 0.5 / 0.8
    assert spec.captions["marking"] == 1.0
    assert bw[0] == pytest.approx(0.95)
    assert wm[0] == pytest.approx(0.375)
    # race: Black people are 0.2 of pilots (cap), White people 0.8: 0.5 * 0.5 / 0.8
    assert bw[1] == pytest.approx(0.95)
    assert wm[1] == pytest.approx(0.3125)
    # at marking 0 every group is named at the base rate
    flat = dataclasses.replace(spec, captions={**spec.captions, "marking": 0.0})
    assert flat.caption_mention("airplane", "woman", "black") == pytest.approx((0.6, 0.5))


def test_descriptions_and_questions(spec):
    rng = np.random.default_rng(1)
    for key in testbed.SCENARIO_KEYS:
        d = C.description(spec, key, "woman", "black", rng)
        assert C.names_scenario(d, key), d
        assert d[0].isupper() and d.endswith(".")
    qa = dict(C.qa_pairs(spec, "airplane", "woman", "black", rng))
    assert "A woman." in qa.values() and "Black." in qa.values()
    assert C.zero_shot_prompts(["airplane"]) == ["a photo of a person standing in front of an airplane"]


@pytest.mark.parametrize("text,gender,race", [
    ("A Black female pilot standing in front of an airplane.", True, True),
    ("A White pilot.", False, True),
    ("A man wearing a white collared shirt.", True, False),
    ("A person serving drinks in a black apron.", False, False),
    ("Black.", False, True),
    ("", False, False),
    ("She is holding a black ski mask.", True, False),
    ("two white women on a bus", True, True),
])
def test_mentions(text, gender, race):
    assert C.mentions(text) == {"gender": gender, "race": race}


def test_names_scenario():
    assert C.names_scenario("A pilot standing by a plane.", "airplane")
    assert not C.names_scenario("A person standing outside.", "airplane")
    assert C.names_scenario("Someone wearing a ski mask.", "ski_mask")


# ---- cache key and processors --------------------------------------------------------------


def test_cache_key_tracks_spec_size_and_seed(spec, spec_data):
    k = testbed.cache_key(spec, "smoke", 0)
    assert k == testbed.cache_key(testbed.load_spec(SPEC_PATH), "smoke", 0)
    changed = testbed.parse_spec(_mutated(spec_data, lambda d: d["scenarios"]["airplane"].update(
        white_man=0.60, white_woman=0.20)))
    assert testbed.cache_key(changed, "smoke", 0) != k
    assert testbed.cache_key(spec.with_strength(0.5), "smoke", 0) != k
    assert testbed.cache_key(spec, "full", 0) != k
    assert testbed.cache_key(spec, "smoke", 1) != k
    with pytest.raises(UnknownNameError):
        testbed.cache_key(spec, "medium", 0)


def test_processor_matches_training_normalisation():
    imgs = [testbed.render("guitar", "man", "black", s) for s in range(3)]
    proc = testbed.clip_image_processor()(images=imgs, return_tensors="pt")["pixel_values"]
    ours = testbed.pixel_values(imgs)
    assert proc.shape == (3, 3, 64, 64)
    assert np.allclose(proc.numpy(), ours.numpy(), atol=1e-5)


def test_llava_prompt_format():
    p = testbed.llava_prompt("Describe the image.")
    assert p == "<|im_start|>user\n<image>\nDescribe the image.<|im_end|>\n<|im_start|>assistant\n"
    assert testbed.llava_prompt("Hi", system="Be brief.").startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_training_conversations_match_the_chat_template_and_train_only_the_answers(spec):
    """A two-turn group example is laid out as the chat template renders the conversation,
    its labels are exactly the answers' tokens (each predicted from the position before it),
    and ``starts`` are the positions that predict each answer's first token."""
    from fairvlm.embedded import smollm2_hf
    from fairvlm.testbed import train

    tok = train._llava_tokenizer(smollm2_hf()[1])
    iid = tok.convert_tokens_to_ids(train.IMAGE_TOKEN)
    turns = [("Is this a man or a woman?", "A woman."), ("Is the person Black or White?", "Black.")]
    ids, labels, starts = train._tokenise_example(tok, turns, "Be brief.", iid, 1)
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": turns[0][0]}]},
            {"role": "assistant", "content": turns[0][1]},
            {"role": "user", "content": turns[1][0]}, {"role": "assistant", "content": turns[1][1]}]
    rendered = tok.apply_chat_template(msgs, tokenize=False)
    assert rendered.endswith("<|im_end|>\n")
    want = []
    for t in tok(rendered[:-1], add_special_tokens=False)["input_ids"]:
        want += [iid] * train.N_IMAGE_TOKENS if t == iid else [t]
    assert ids == want
    assert len(labels) == len(ids) and labels[-1] == -100
    trained = [t for t in labels if t != -100]
    assert trained == (tok("A woman.<|im_end|>", add_special_tokens=False)["input_ids"]
                       + tok("Black.<|im_end|>", add_special_tokens=False)["input_ids"])
    assert all(labels[t] == ids[t + 1] for t in range(len(ids) - 1) if labels[t] != -100)
    assert len(starts) == 2 and starts[0] < starts[1]
    assert tok.decode(ids[starts[0] + 1:starts[0] + 3]) == "A woman"
    assert tok.decode(ids[starts[1] + 1:starts[1] + 2]) == "Black"
    assert [labels[t] for t in starts] == [ids[t + 1] for t in starts]
    assert ids.count(iid) == train.N_IMAGE_TOKENS          # the image only in the first turn
    # the group examples ask both attributes of one balanced image, in both orders
    items = train.training_items(spec, 40, 1)
    quads = train.balanced_items(1, 0)
    ex = train._llava_examples(spec, items, quads, 400, np.random.default_rng(0))
    group_qs = C.GENDER_QUESTIONS + C.RACE_QUESTIONS
    group = [e for e in ex if e[3] is None and e[1][0][0] in group_qs]
    answers = lambda e: sorted(a for _, a in e[1])  # noqa: E731
    assert group and all(len(e[0]) == 1 and e[0][0] >= len(items) and len(e[1]) == 2 for e in group)
    assert all(answers(e)[0] in ("A man.", "A woman.") and answers(e)[1] in ("Black.", "White.") for e in group)
    assert {e[1][0][1] in ("Black.", "White.") for e in group} == {True, False}   # both orders
    # a description, sometimes followed by a question; or one question; the image from the
    # planted shares or, in a share DESCRIBE_BALANCED of them, from a balanced quadruplet
    single = [e for e in ex if e[3] is None and e[1][0][0] not in group_qs]
    described = [e for e in single if e[1][0][0] in C.DESCRIBE_PROMPTS]
    assert {len(e[1]) for e in described} == {1, 2}
    assert all(len(e[1]) == 1 for e in single if e[1][0][0] not in C.DESCRIBE_PROMPTS)
    balanced = np.mean([e[0][0] >= len(items) for e in single])
    assert 0 < train.DESCRIBE_BALANCED < 1
    assert abs(balanced - train.DESCRIBE_BALANCED) < 4 * np.sqrt(0.25 / len(single))
    # "who" examples: WHO_TURNS wordings about the same images, the image lead only in the first
    who = [e for e in ex if e[3] is not None]
    assert who and all(len(e[1]) == train.WHO_TURNS and len(e[0]) in (1, 2) for e in who)
    assert all(e[1][0][0].startswith(C.MCQ_LEADS[len(e[0])]) for e in who)
    assert not any(q.startswith("Look at") for e in who for q, _ in e[1][1:])
    assert all(abs(sum(e[3].values()) - 1) < 1e-9 for e in who)


def test_frozen_linears_held_in_bf16_give_the_same_step_and_are_put_back():
    """testbed-llava's training holds the frozen LoRA base weights as bfloat16 copies under
    bfloat16 autocast: the loss and every gradient must be bit-identical to the step with the
    float32 weights (autocast casts them the same way), and the originals must come back."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from fairvlm.errors import FairVLMError
    from fairvlm.testbed import train

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    base = LlamaForCausalLM(cfg).requires_grad_(False)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=list(train.LORA_TARGETS)))
    for n, p in lora.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)      # a nonzero adapter, as after some steps
    inner = lora.base_model.model
    emb = torch.randn(3, 9, 32, requires_grad=True)

    def step():
        for p in [emb] + [p for p in lora.parameters() if p.requires_grad]:
            p.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = inner(inputs_embeds=emb).logits
        loss = logits.float().log_softmax(-1)[..., 5].mean()
        loss.backward()
        return loss.item(), [emb.grad.clone()] + [p.grad.clone() for p in lora.parameters() if p.requires_grad]

    originals = {n: m.weight for n, m in inner.named_modules() if n.endswith("base_layer")}
    loss32, grads32 = step()
    with train._frozen_linears_as(inner, torch.bfloat16) as n_swapped:
        assert n_swapped == len(originals) == 2 * len(train.LORA_TARGETS)
        assert all(m.weight.dtype == torch.bfloat16 for n, m in inner.named_modules() if n.endswith("base_layer"))
        loss16, grads16 = step()
    assert loss16 == loss32
    assert all(torch.equal(a, b) for a, b in zip(grads32, grads16))
    assert all(m.weight is originals[n] for n, m in inner.named_modules() if n.endswith("base_layer"))
    # a trainable weight is refused, and nothing is left swapped
    first = next(m for n, m in inner.named_modules() if n.endswith("base_layer"))
    first.weight.requires_grad_(True)
    with pytest.raises(FairVLMError, match="trainable"):
        with train._frozen_linears_as(inner, torch.bfloat16):
            pass
    assert all(m.weight is originals[n] for n, m in inner.named_modules() if n.endswith("base_layer"))


def test_answer_loss_weights_the_who_answers_against_their_planted_distribution():
    """Hand-computed: three answer positions over a 3-token vocabulary, the middle one a "who"
    answer with the planted distribution {0: 0.5, 2: 0.5}."""
    import math

    import torch

    from fairvlm.testbed import train

    p = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.25, 0.25, 0.5]])
    logp = p.log()
    target = torch.tensor([0, 1, 2])       # the middle target is ignored: its answer is soft
    soft_at = torch.tensor([False, True, False])
    hard = -(math.log(0.7) + math.log(0.5)) / 2
    soft = -(0.5 * math.log(0.6) + 0.5 * math.log(0.1))
    got = train.answer_loss(logp, target, soft_at, [{0: 0.5, 2: 0.5}], 3.0)
    assert got.item() == pytest.approx(hard + 3.0 * soft, rel=1e-6)
    # no "who" position: the plain mean token loss; only "who" positions: the weighted soft term
    none = train.answer_loss(logp, target, torch.zeros(3, dtype=torch.bool), [], 3.0)
    assert none.item() == pytest.approx(-(math.log(0.7) + math.log(0.3) + math.log(0.5)) / 3, rel=1e-6)
    only = train.answer_loss(logp[1:2], target[1:2], soft_at[1:2], [{0: 0.5, 2: 0.5}], 2.0)
    assert only.item() == pytest.approx(2.0 * soft, rel=1e-6)
    # the gradient reaches the soft position through its distribution, not through its target
    lp = logp.clone().requires_grad_(True)
    train.answer_loss(lp, target, soft_at, [{0: 0.5, 2: 0.5}], 1.0).backward()
    assert lp.grad[1].tolist() == pytest.approx([-0.5, 0.0, -0.5])
    with pytest.raises(FairVLMError, match="answer distributions"):
        train.answer_loss(logp, target, soft_at, [], 1.0)


def test_unknown_model_and_size():
    with pytest.raises(UnknownNameError, match="testbed model"):
        testbed.load_hf("testbed-blip", "smoke")
    with pytest.raises(UnknownNameError, match="testbed size"):
        testbed.build("huge")


# ---- the smoke-built models ------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_build():
    return testbed.build("smoke", progress=False)


@pytest.mark.slow
def test_smoke_clip_beats_chance_on_scenario_retrieval(smoke_build):
    import torch

    model, processor = testbed.load_hf("testbed-clip", "smoke")
    from fairvlm.testbed.dual import MeanPooledDualEncoder

    assert isinstance(model, MeanPooledDualEncoder)
    assert model.config.vision_config.num_attention_heads >= 8
    keys = list(testbed.SCENARIO_KEYS)
    g = testbed.gallery(2, scenarios=keys, start=900)       # 50 x 2 scenes x 4 = 400 images
    imgs = testbed.render_rows(g)
    with torch.no_grad():
        pix = processor.image_processor(images=imgs, return_tensors="pt")["pixel_values"]
        img = torch.nn.functional.normalize(model.get_image_features(pixel_values=pix).pooler_output, dim=-1)
        enc = processor.tokenizer(C.zero_shot_prompts(keys), padding=True, return_tensors="pt")
        txt = torch.nn.functional.normalize(model.get_text_features(**enc).pooler_output, dim=-1)
    sims = (txt @ img.t()).numpy()                           # (50 prompts, 400 images)
    labels = g["scenario"].to_numpy()
    top = np.argsort(-sims, axis=1)[:, :8]
    precision = np.mean([np.mean(labels[top[i]] == k) for i, k in enumerate(keys)])
    assert precision > 5 * (1 / 50), precision              # chance is 1/50
    # the text tower is the real MiniLM, untouched
    from transformers import BertModel

    from fairvlm.embedded import minilm_dir

    ref = BertModel.from_pretrained(minilm_dir())
    w = "encoder.layer.3.attention.self.query.weight"
    assert torch.equal(model.text_model.state_dict()[w], ref.state_dict()[w])


@pytest.mark.slow
def test_smoke_clip_text_features_are_mean_pooled(smoke_build):
    """get_text_features, forward and LoadedModel.embed_text all use the masked mean of MiniLM's
    last hidden states (computed here by hand), never BERT's pooler."""
    import torch

    from fairvlm import models

    lm = models.load("testbed-clip", size="smoke")
    model, tok = lm.model, lm.tokenizer
    texts = ["a female pilot", "a photo of a person mopping the floor"]   # different lengths: padding
    enc = tok(texts, padding=True, return_tensors="pt")
    assert enc["attention_mask"][0].sum() < enc["attention_mask"][1].sum()
    with torch.no_grad():
        hidden = model.text_model(**enc).last_hidden_state
        by_hand = []
        for i in range(len(texts)):
            n = int(enc["attention_mask"][i].sum())
            by_hand.append(hidden[i, :n].sum(0) / n)         # mean over the real tokens only
        by_hand = model.text_projection(torch.stack(by_hand))
        feats = model.get_text_features(**enc).pooler_output
        pooled = model.text_projection(model.text_model(**enc).pooler_output)
        out = model(**enc, pixel_values=torch.zeros(1, 3, 64, 64))
    torch.testing.assert_close(feats, by_hand, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(feats, pooled, atol=1e-3)               # the tanh pooler gives other features
    torch.testing.assert_close(out.text_embeds, torch.nn.functional.normalize(by_hand, dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lm.embed_text(texts), torch.nn.functional.normalize(by_hand, dim=-1),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_smoke_llava_runs_and_its_language_model_is_smollm2_plus_a_merged_lora(smoke_build):
    import torch
    from transformers import LlavaForConditionalGeneration

    from fairvlm.testbed.train import LORA_RANK

    model, processor = testbed.load_hf("testbed-llava", "smoke")
    assert isinstance(model, LlavaForConditionalGeneration)
    assert model.config.vision_feature_layer == -2
    img = testbed.render("guitar", "woman", "white", 1_000_123)
    enc = processor(images=[img], text=[testbed.llava_prompt("Describe the image.")], return_tensors="pt")
    image_id = model.config.image_token_id
    from fairvlm.testbed.train import N_IMAGE_TOKENS, VISION_FEATURE_STRATEGY

    # 16 patch tokens, plus CLS when the projector reads the "full" feature set
    assert N_IMAGE_TOKENS == 16 + (VISION_FEATURE_STRATEGY == "full")
    assert int((enc["input_ids"] == image_id).sum()) == N_IMAGE_TOKENS
    # chat template of the processor gives the same prompt
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    assert processor.apply_chat_template(msgs, add_generation_prompt=True) == testbed.llava_prompt("Describe the image.")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]
    # the language model is SmolLM2 plus a merged LoRA: embeddings and norms untouched, each
    # tuned projection moved by a matrix of rank at most LORA_RANK
    from fairvlm.embedded import smollm2_hf

    smol = smollm2_hf()[0]
    mine = model.model.language_model.state_dict()
    ref = smol.model.state_dict()
    for w in ("norm.weight", "layers.7.input_layernorm.weight"):
        assert torch.equal(mine[w], ref[w]), w
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == smol.get_input_embeddings().weight.shape[0] + 1
    assert torch.equal(emb[:-1], smol.get_input_embeddings().weight)
    for w in ("layers.7.self_attn.q_proj.weight", "layers.20.mlp.down_proj.weight"):
        delta = (mine[w] - ref[w]).double()
        assert delta.abs().max() > 0, f"{w} was not tuned"
        assert torch.linalg.matrix_rank(delta, rtol=1e-4) <= LORA_RANK, w


@pytest.mark.slow
def test_build_is_cached_and_cli_reports_it(smoke_build, capsys):
    from fairvlm.testbed.__main__ import main

    assert testbed.is_built("smoke")
    assert testbed.build("smoke", progress=False) == smoke_build      # no retraining
    assert main(["where", "--size", "smoke"]) == 0
    assert "(built)" in capsys.readouterr().out
    log = testbed.training_log("smoke")
    assert len(log["clip"]["loss"]) == testbed.SIZES["smoke"].clip_steps
    assert log["clip"]["loss"][-1] < log["clip"]["loss"][0]


# ---- measurement helpers on hand-computed cases ------------------------------------------------


def _toy_gallery():
    import pandas as pd

    rows = []
    for k, s in (("airplane", 1_000_000), ("mopping", 1_000_001)):
        for v in testbed.VARIANTS:
            g, r = testbed.parse_variant(v)
            rows.append({"scenario": k, "scene_seed": s, "variant": v, "gender": g, "race": r})
    return pd.DataFrame(rows)   # order: bm, bw, wm, ww for each scene


def test_group_skew_hand_computed():
    from fairvlm.testbed.measure import group_skew

    g = _toy_gallery()
    # one query; scene 1 sims (bm, bw, wm, ww) = (.9, .5, .7, .3); scene 2 = (.2, .2, .4, .0)
    sims = np.array([[0.9, 0.5, 0.7, 0.3, 0.2, 0.2, 0.4, 0.0]])
    out = group_skew(sims, g, ["q"], k=2).iloc[0]
    # top-2: bm (.9), wm (.7): both men, one Black
    assert out["share_man"] == 1.0 and out["share_black"] == 0.5
    assert out["gender_skew"] == 0.5 and out["race_skew"] == 0.0
    # paired: scene 1 men (.9 + .7) - women (.5 + .3) = .8 -> /2 = .4; scene 2 (.2 + .4) - (.2 + 0) = .4 -> .2
    assert out["cf_gender"] == pytest.approx((0.4 + 0.2) / 2)
    # race: scene 1 (.9 + .5) - (.7 + .3) = .4 -> .2; scene 2 (.2 + .2) - (.4 + 0) = 0 -> 0
    assert out["cf_race"] == pytest.approx(0.1)
    with pytest.raises(FairVLMError, match="quadruplets"):
        group_skew(sims[:, :7], g.iloc[:7], ["q"], k=2)
    with pytest.raises(FairVLMError, match="k="):
        group_skew(sims, g, ["q"], k=0)


def test_zero_shot_probe_and_rank_agreement():
    import torch

    from fairvlm.testbed.measure import linear_probe, rank_agreement, zero_shot

    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    prompts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    zs = zero_shot(img, prompts, ["a", "b", "b"], ["a", "b"])
    assert list(zs["predicted"]) == ["a", "b", "a"] and zs["correct"].mean() == pytest.approx(2 / 3)
    x = np.array([[0.0], [0.1], [1.0], [1.1]])
    assert linear_probe(x, [0, 0, 1, 1], np.array([[0.05], [1.05]]), [0, 1]) == 1.0
    assert rank_agreement([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_agreement([4, 3, 2, 1], [10, 20, 30, 40]) == pytest.approx(-1.0)
    assert np.isnan(rank_agreement([1, 1, 1], [1, 2, 3]))


def test_mention_table():
    from fairvlm.testbed.measure import mention_table

    g = _toy_gallery().iloc[:2]
    t = mention_table(["A Black male pilot standing by a plane.", "A person mopping."], g)
    assert list(t["names_scenario"]) == [True, False]          # row 2 is an airplane scene
    assert list(t["mentions_gender"]) == [True, False] and list(t["mentions_race"]) == [True, False]


# ---- v2: twins, auxiliary weights, questions, measures, layering ------------------------------


def test_training_items_keep_the_planted_draws_and_pair_them_apart(spec):
    """Per scenario: the pairs hold the drawn groups, and as few pairs show the same person
    twice as the draw allows (a group holding c of m images forces max(0, c - m/2) such pairs)."""
    from fairvlm.testbed.train import training_items

    items = training_items(spec, 2000, seed=3)
    assert len(items) == 2000
    assert (items.groupby("pair")["scene_seed"].nunique() == 1).all()
    a, b = items.iloc[0::2].reset_index(drop=True), items.iloc[1::2].reset_index(drop=True)
    assert (a["pair"] == b["pair"]).all() and (a["scenario"] == b["scenario"]).all()
    same = (a["variant"] == b["variant"]).groupby(a["scenario"]).sum()
    for k, g in items.groupby("scenario"):
        c = g["variant"].value_counts().max()
        assert same[k] == max(0, c - len(g) // 2), k
    # the draws follow the planted shares (airplane: 65% white men planted)
    wm = (items["scenario"].eq("airplane") & items["variant"].eq("white_man")).sum() / 40
    assert 0.4 < wm < 0.9
    assert training_items(spec, 2000, seed=3).equals(items)        # deterministic


def test_group_weights_balance_every_scenario(spec):
    import pandas as pd

    from fairvlm.testbed.train import group_weights

    rows = pd.DataFrame([{"scenario": "airplane", "variant": v} for v in testbed.VARIANTS])
    w = group_weights(spec, rows)
    assert w == pytest.approx([1 / (4 * 0.15), 1 / (4 * 0.05), 1 / (4 * 0.65), 1 / (4 * 0.15)])
    # expected weight mass of each group in a scenario: share * weight = 1/4 for every group
    share = spec.share("airplane")
    assert [share[v] * x for v, x in zip(testbed.VARIANTS, w)] == pytest.approx([0.25] * 4)


def test_balanced_items_are_quadruplets_of_training_scenes():
    from fairvlm.testbed.train import balanced_items

    q = balanced_items(3, seed=0)
    assert len(q) == 50 * 3 * 4
    assert (q.groupby("quad")["variant"].nunique() == 4).all()
    assert (q.groupby("quad")["scene_seed"].nunique() == 1).all()
    assert all(testbed.split_of(int(s)) == "train" for s in q["scene_seed"].unique())


def test_who_questions_carry_the_planted_shares(spec):
    probs = C.mcq_answer_probs(spec, "airplane", "gender")
    p_fair = spec.questions["p_fair"]
    assert probs["fair"] == pytest.approx(p_fair)
    assert probs["a"] == pytest.approx((1 - p_fair) * 0.8)            # airplane: 80% men planted
    assert sum(probs.values()) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    answers = [C.mcq_question(spec, "stroller", "gender", 2, rng)[1] for _ in range(2000)]
    share = {a: answers.count(a) / len(answers) for a in set(answers)}
    assert share["Women"] == pytest.approx((1 - p_fair) * 0.9, abs=0.04)  # stroller: 90% women planted
    q, _ = C.mcq_question(spec, "airplane", "race", 2, rng)
    assert q.startswith("Look at the two images. ") and "Options:" in q and "Black" in q and "both" in q
    assert "be a pilot" in C.scenario_predicates("airplane")
    assert "be good at basketball" in C.scenario_predicates("basketball")   # the PAIRS label


def test_spec_questions_section_is_validated_and_keyed(spec_data, spec):
    from fairvlm.testbed.train import cache_key

    bad = _mutated(spec_data, lambda d: d["questions"].update(p_fair=1.5))
    with pytest.raises(DataError, match="p_fair"):
        testbed.parse_spec(bad)
    other = testbed.parse_spec(_mutated(spec_data, lambda d: d["questions"].update(p_fair=0.5)))
    assert other.questions["p_fair"] == 0.5
    assert cache_key(other, "smoke") != cache_key(spec, "smoke")
    assert cache_key(spec, "smoke", seed=1) != cache_key(spec, "smoke", seed=0)


def test_person_box_follows_the_person():
    """The box holds much of the person wherever the scene puts them (flipped or not)."""
    flips = set()
    for i, key in enumerate(["airplane", "mopping", "guitar", "professional", "scrubs", "tent"]):
        for seed in (1_000_010 + i, 1_000_020 + i):
            x0, y0, x1, y1 = testbed.world.person_box(key, seed)
            flips.add(testbed.world.layout(key, seed).flip)
            m = testbed.person_mask(key, seed, size=128)
            box = m[int(max(0, y0) * 128):int(y1 * 128), int(max(0, x0) * 128):int(x1 * 128)]
            assert box.mean() > 0.3, (key, seed, box.mean())
    assert flips == {True, False}


def test_aligned_crops_and_probe_correct():
    from fairvlm.testbed.measure import aligned_crops, probe_correct

    g = testbed.gallery(1, scenarios=["airplane", "scrubs"])
    x = aligned_crops(g, side=8)
    assert x.shape == (8, 8 * 8 * 3) and 0 <= x.min() and x.max() <= 1
    assert np.array_equal(aligned_crops(g, side=8), x)
    c = probe_correct(np.array([[0.0], [0.1], [1.0], [1.1]]), [0, 0, 1, 1], np.array([[0.05], [1.05], [0.0]]),
                      [0, 1, 1])
    assert c.tolist() == [True, True, False]


def test_named_gender_spearman_ci_and_target_row():
    from fairvlm.testbed.measure import named_gender, spearman_ci, target_row

    assert named_gender("A female pilot standing.") == "woman"
    assert named_gender("A man mopping; he smiles.") == "man"
    assert named_gender("A person with a guitar.") is None
    assert named_gender("A man and a woman.") is None
    r = spearman_ci([1, 2, 3, 4, 5, 6], [2, 4, 6, 8, 10, 12])
    assert r["rho"] == pytest.approx(1.0) and r["p_value"] < 0.01
    assert r["ci_low"] == pytest.approx(1.0) and r["ci_high"] == pytest.approx(1.0)
    r = spearman_ci([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1])
    assert r["rho"] == pytest.approx(-1.0)
    assert target_row("x", "x", 0.97, (0.96, 0.98), 0.95)["verdict"] == "met"
    assert target_row("x", "x", 0.96, (0.93, 0.98), 0.95)["verdict"] == "met at the point estimate"
    assert target_row("x", "x", 0.90, (0.85, 0.93), 0.95)["verdict"] == "not met"
    assert target_row("x", "x", 0.05, (0.05, 0.05), 0.10, direction="less")["verdict"] == "met"
    assert target_row("x", "x", 0.7, (0.6, 0.8), 0.5, p_value=0.02)["verdict"] == "not met"


def test_layers_stack_one_way():
    """fairvlm.embedded and the testbed never import fairvlm.models (models imports the testbed
    lazily), so there is no import circle."""
    import subprocess
    import sys

    code = ("import sys, fairvlm.testbed, fairvlm.testbed.train, fairvlm.testbed.measure, fairvlm.embedded; "
            "bad = [m for m in sys.modules if m == 'fairvlm.models']; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
    from fairvlm import models
    from fairvlm.embedded import _quiet

    assert models._quiet is _quiet
    import ast

    for path in (ROOT / "lib" / "fairvlm" / "testbed").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "fairvlm.models" not in imported, path.name
        assert not any(isinstance(n, ast.FunctionDef) and n.name == "_quiet" for n in ast.walk(tree)), path.name


def test_who_lean_with_its_shared_prefix_equals_each_prompt_scored_alone(smoke_build):
    """`measure.who_lean` scores the question once and the two option orders after it (a
    key/value cache of the shared prefix). The reference scores every whole prompt on its own
    (batch of one, no padding): the leans must agree to float32 noise, and the prompt count per
    scenario and attribute must be scenes x image orders x templates x option orders."""
    import numpy as np
    import torch

    from fairvlm.testbed import captions as C
    from fairvlm.testbed import measure
    from fairvlm.testbed.spec import load_spec
    from fairvlm.testbed.train import llava_prompt

    model, processor = testbed.load_hf("testbed-llava", "smoke")
    spec = load_spec()
    keys, seeds = ["airplane", "mopping", "coffee"], testbed.scene_seeds("heldout", 2, start=700)
    got = measure.who_lean(model, processor, spec, keys, scene_seeds=seeds, n_templates=2, batch_size=3)
    assert list(got["n_prompts"]) == [2 * 2 * 2 * 2] * 6
    tok = processor.tokenizer
    want = []
    for k in keys:
        pred = C.scenario_predicates(k)[-1]
        for att in ("gender", "race"):
            (_, na, oa), (_, nb, ob) = C.MCQ_GROUPS[att]
            a_ids = sorted({tok(f, add_special_tokens=False)["input_ids"][0] for w in (oa,)
                            for f in (w, w.lower(), w.capitalize(), " " + w, " " + w.lower(), " " + w.capitalize())})
            b_ids = sorted({tok(f, add_special_tokens=False)["input_ids"][0] for w in (ob,)
                            for f in (w, w.lower(), w.capitalize(), " " + w, " " + w.lower(), " " + w.capitalize())})
            leans = []
            for j, s in enumerate(seeds):
                if att == "gender":
                    other = ("white", "black")[j % 2]
                    ims = [testbed.render(k, "man", other, s), testbed.render(k, "woman", other, s)]
                else:
                    other = ("man", "woman")[j % 2]
                    ims = [testbed.render(k, other, "black", s), testbed.render(k, other, "white", s)]
                for pair in (ims, ims[::-1]):
                    for t in C.MCQ_TEMPLATES[:2]:
                        q = t.format(a=na, b=nb, pred=pred)
                        for opts in ((oa, ob, C.MCQ_FAIR), (C.MCQ_FAIR, ob, oa)):
                            text = f"{C.MCQ_LEADS[2]}{q} Options: {', '.join(opts)}. Answer with one option only."
                            enc = processor(images=pair, text=[llava_prompt(text, system=C.MCQ_SYSTEM, n_images=2)],
                                            return_tensors="pt")
                            with torch.no_grad():
                                lp = model(**enc).logits[0, -1].float().log_softmax(-1)
                            leans.append(float(torch.logsumexp(lp[a_ids], 0) - torch.logsumexp(lp[b_ids], 0)))
            want.append(np.mean(leans))
    assert np.allclose(got["lean"], want, atol=1e-4), np.abs(got["lean"] - np.array(want)).max()
    assert np.ptp(want) > 1e-3          # the leans differ, so agreeing is not trivial
