"""fairvlm.clip_heads (per-head CLS decomposition, interventions) and fairvlm.probes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

from fairvlm import clip_heads as ch
from fairvlm import probes, retrieval
from fairvlm.errors import DataError, FairVLMError, UnknownNameError
from fairvlm.params import ParameterError


def _clip(attn: str = "sdpa", seed: int = 0) -> CLIPModel:
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=99, max_position_embeddings=16, bos_token_id=0, eos_token_id=2, pad_token_id=1),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=6,
                           image_size=32, patch_size=8),
        projection_dim=24,
    )
    cfg._attn_implementation = attn
    model = CLIPModel(cfg).eval()
    # random init gives near-zero biases; make them visible so the identity test means something
    with torch.no_grad():
        for layer in model.vision_model.encoder.layers:
            layer.self_attn.out_proj.bias.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module")
def model():
    return _clip()


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------ decomposition
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("layer", [0, 1, -1])
def test_identity_heads_bias_skip_give_resid_mid(attn, layer, pixels):
    m = _clip(attn)
    d = ch.cls_decomposition(m, pixels, layer=layer)
    assert d.heads.shape == (7, 6, 48)
    torch.testing.assert_close(d.reconstruction(), d.resid_mid, atol=1e-5, rtol=1e-5)
    # the captured sites are the ones we claim: resid_pre is hidden_states[l] and
    # resid_mid + MLP(LN2(resid_mid)) is hidden_states[l + 1]
    hs = m.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
    li = layer % 3
    torch.testing.assert_close(d.resid_pre, hs[li][:, 0], atol=1e-6, rtol=1e-6)
    blk = m.vision_model.encoder.layers[li]
    with torch.no_grad():
        post = d.resid_mid + blk.mlp(blk.layer_norm2(d.resid_mid))
    torch.testing.assert_close(post, hs[li + 1][:, 0], atol=1e-5, rtol=1e-5)
    # the bias matters: dropping it breaks the identity
    assert (d.heads.sum(1) + d.resid_pre - d.resid_mid).abs().max() > 0.1


def test_each_head_matches_a_manual_attention_computation(model, pixels):
    li = 2
    hs = model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[li]
    attn = model.vision_model.encoder.layers[li].self_attn
    ln = model.vision_model.encoder.layers[li].layer_norm1
    contrib = ch.head_contributions(model, pixels, layer=li)
    with torch.no_grad():
        x = ln(hs)
        q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        for h in range(6):
            sl = slice(8 * h, 8 * (h + 1))
            w = torch.softmax(q[:, 0:1, sl] @ k[:, :, sl].transpose(1, 2) / math.sqrt(8), dim=-1)
            out_h = (w @ v[:, :, sl])[:, 0]  # (B, 8) head h's output at CLS
            expect = out_h @ attn.out_proj.weight[:, sl].T
            torch.testing.assert_close(contrib[:, h], expect, atol=1e-5, rtol=1e-5)


def test_contributions_do_not_depend_on_batch_size_or_order(model, pixels):
    full = ch.head_contributions(model, pixels, batch_size=64)
    ones = ch.head_contributions(model, pixels, batch_size=1)
    threes = ch.head_contributions(model, pixels, batch_size=3)
    torch.testing.assert_close(full, ones, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full, threes, atol=1e-5, rtol=1e-5)
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    torch.testing.assert_close(ch.head_contributions(model, pixels[perm]), full[perm], atol=1e-5, rtol=1e-5)
    # different images give different contributions (the capture is not stale)
    assert (full[0] - full[1]).abs().max() > 1e-3


def test_head_outputs_many_layers_at_once(model, pixels):
    z = ch.head_outputs(model, pixels, layers=(0, -1), batch_size=4)
    assert sorted(z) == [0, 2] and z[0].shape == (7, 6, 8)
    torch.testing.assert_close(ch.project_heads(model, 0, z[0]), ch.head_contributions(model, pixels, layer=0))
    assert ch.project_heads(model, -1, z[2], heads=[4, 1]).shape == (7, 2, 48)


def test_vision_only_model_and_loadedmodel_wrappers(pixels):
    torch.manual_seed(0)
    vm = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, image_size=32, patch_size=8)).eval()
    d = ch.cls_decomposition(vm, pixels)
    torch.testing.assert_close(d.reconstruction(), d.resid_mid, atol=1e-5, rtol=1e-5)
    assert ch.attention_shape(vm) == (4, 8, 32)
    with pytest.raises(FairVLMError, match="vision encoder"):
        ch.vision_tower(torch.nn.Linear(3, 3))
    with pytest.raises(ParameterError, match="out of range"):
        ch.resolve_layer(vm, 2)
    with pytest.raises(ParameterError):
        ch.cls_decomposition(vm, torch.zeros(3, 32, 32))


def test_identity_on_tiny_clip():
    from fairvlm.models import load

    lm = load("tiny-clip")
    from PIL import Image

    imgs = [Image.new("RGB", (40, 40), (30 * i, 200 - 20 * i, 90)) for i in range(5)]
    pv = retrieval.pixel_values(lm.processor, imgs)
    for layer in range(lm.n_vision_layers):
        d = ch.cls_decomposition(lm, pv, layer=layer)
        torch.testing.assert_close(d.reconstruction(), d.resid_mid, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_identity_on_testbed_clip():
    from fairvlm.models import load

    lm = load("testbed-clip", size="smoke")
    g = torch.Generator().manual_seed(0)
    size = lm.model.config.vision_config.image_size
    pv = torch.randn(4, 3, size, size, generator=g)
    d = ch.cls_decomposition(lm, pv)
    torch.testing.assert_close(d.reconstruction(), d.resid_mid, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------ interventions
def _no_hooks(model):
    return all(not l.self_attn.out_proj._forward_hooks for l in model.vision_model.encoder.layers)


def test_prototype_replacement_sets_the_head_contributions(model, pixels):
    base = ch.cls_decomposition(model, pixels)
    contrib = base.heads
    labels = ["a", "b", "a", "b", "a", "b", "a"]
    protos = ch.head_prototypes(contrib, labels, layer=-1)
    torch.testing.assert_close(protos["a"], contrib[[0, 2, 4, 6]].mean(0))
    torch.testing.assert_close(protos["all"], contrib.mean(0))
    assert protos.counts == {"all": 7, "a": 4, "b": 3}
    edit = ch.prototype_replacement(protos, "b", heads=[1, 4])
    with ch.intervene(model, edit):
        after = ch.cls_decomposition(model, pixels)
    kept = contrib.clone()
    kept[:, [1, 4]] = protos["b"][[1, 4]]
    expect = kept.sum(1) + base.out_bias + base.resid_pre
    torch.testing.assert_close(after.resid_mid, expect, atol=1e-5, rtol=1e-5)
    assert _no_hooks(model)
    # and the final embedding changes
    with ch.intervene(model, edit):
        e1 = retrieval.embed_images(model, pixels)
    assert (e1 - retrieval.embed_images(model, pixels)).abs().max() > 1e-4


def test_zero_damp_and_neuron_mask(model, pixels):
    base = ch.cls_decomposition(model, pixels)
    c = base.heads
    rest = base.out_bias + base.resid_pre
    with ch.intervene(model, ch.zero_ablation([0, 5])):
        z = ch.cls_decomposition(model, pixels).resid_mid
    torch.testing.assert_close(z, c.sum(1) - c[:, [0, 5]].sum(1) + rest, atol=1e-5, rtol=1e-5)
    with ch.intervene(model, ch.damping([0, 5], alpha=0.0)):
        d0 = ch.cls_decomposition(model, pixels).resid_mid
    torch.testing.assert_close(d0, z, atol=1e-5, rtol=1e-5)
    with ch.intervene(model, ch.damping([3], alpha=0.1)):
        d1 = ch.cls_decomposition(model, pixels).resid_mid
    torch.testing.assert_close(d1, c.sum(1) - 0.9 * c[:, 3] + rest, atol=1e-5, rtol=1e-5)
    with ch.intervene(model, ch.damping([0, 1, 2], alpha=1.0)):
        same = retrieval.embed_images(model, pixels)
    torch.testing.assert_close(same, retrieval.embed_images(model, pixels), atol=1e-6, rtol=1e-6)
    mask = torch.zeros(1, 48, dtype=torch.bool)
    mask[0, [2, 7]] = True
    with ch.intervene(model, ch.zero_ablation([3], neurons=mask)):
        n = ch.cls_decomposition(model, pixels).resid_mid
    delta = n - base.resid_mid
    torch.testing.assert_close(delta[:, [2, 7]], -c[:, 3, [2, 7]], atol=1e-5, rtol=1e-5)
    others = [i for i in range(48) if i not in (2, 7)]
    assert delta[:, others].abs().max() < 1e-5


def test_interventions_on_two_layers_and_hook_cleanup(model, pixels):
    ref = retrieval.embed_images(model, pixels)
    edits = [ch.zero_ablation([1], layer=0), ch.damping([2], 0.5, layer=-1)]
    with ch.intervene(model, *edits):
        hooked = [len(l.self_attn.out_proj._forward_hooks) for l in model.vision_model.encoder.layers]
        changed = retrieval.embed_images(model, pixels)
    assert hooked == [1, 0, 1]
    assert (changed - ref).abs().max() > 1e-4
    assert _no_hooks(model)
    with pytest.raises(RuntimeError):
        with ch.intervene(model, ch.zero_ablation([0])):
            raise RuntimeError("boom")
    assert _no_hooks(model)
    torch.testing.assert_close(retrieval.embed_images(model, pixels), ref)


def test_intervention_errors(model):
    with pytest.raises(ParameterError, match="edited by two"):
        with ch.intervene(model, ch.zero_ablation([1, 2]), ch.damping([2], 0.5)):
            pass
    with pytest.raises(ParameterError, match="0..5"):
        with ch.intervene(model, ch.zero_ablation([6])):
            pass
    assert _no_hooks(model)
    with pytest.raises(UnknownNameError):
        ch.HeadIntervention(heads=(0,), mode="scale")
    with pytest.raises(ParameterError):
        ch.damping([0], alpha=1.5)
    with pytest.raises(ParameterError):
        ch.HeadIntervention(heads=(0, 1), mode="replace", values=torch.zeros(1, 48))
    protos = ch.head_prototypes(torch.zeros(4, 6, 48), ["x", "y", "x", "y"])
    with pytest.raises(UnknownNameError):
        ch.prototype_replacement(protos, "z", [0])
    with pytest.raises(ParameterError, match="reserved"):
        ch.head_prototypes(torch.zeros(2, 6, 48), ["all", "x"])


# ------------------------------------------------------------------------------- probes
def _planted(n=200, h=5, d=16, head=2, neuron=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.array(["female", "male"])[rng.integers(0, 2, n)]
    x = rng.normal(size=(n, h, d)).astype(np.float32)
    x[:, head, :] += 1.0 * (y == "male")[:, None]          # a whole head carries gender
    x[:, 0, neuron] += 3.0 * (y == "male")                  # one strong neuron in head 0
    return torch.from_numpy(x), y


def test_batched_probes_equal_separately_trained_linear_layers():
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(3, 50, 4)).astype(np.float32))
    y = rng.integers(0, 3, 50)
    cfg = probes.ProbeConfig(epochs=7, lr=0.01)
    w, b = probes.train_probes(x, y, 3, cfg)
    for p in range(3):
        lin = torch.nn.Linear(4, 3)
        torch.nn.init.zeros_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
        opt = torch.optim.Adam(lin.parameters(), lr=0.01)
        for _ in range(7):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(lin(x[p]), torch.as_tensor(y)).backward()
            opt.step()
        torch.testing.assert_close(w[p], lin.weight.detach().T, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(b[p], lin.bias.detach(), atol=1e-6, rtol=1e-5)


def test_probe_heads_finds_the_planted_head_and_rules():
    x, y = _planted()
    res = probes.probe_heads(x, y, positive="male", layer=11)
    t = res.table
    assert list(t.columns) == ["layer", "head", "accuracy", "auroc", "ap"]
    assert len(t) == 5 and t["layer"].eq(11).all()
    assert int(t.loc[t["ap"].idxmax(), "head"]) == 2
    assert t.loc[t["head"] == 2, "accuracy"].item() > 0.85
    assert t.loc[t["head"] == 4, "auroc"].item() < 0.75
    assert len(res.test_idx) == 40 and len(np.intersect1d(res.train_idx, res.test_idx)) == 0
    assert probes.select_experts(t, k=1) == [2]
    assert 2 in probes.select_experts(t, k=2)
    top2 = np.sort(t["ap"].to_numpy())[::-1][:2]
    assert probes.select_experts(t, rule="threshold", threshold=float(top2.mean())) == [2]
    assert probes.select_experts(t, rule="threshold", threshold=1.0) == []
    prec, rec = probes.pr_curve(res, 2)
    assert prec.shape == rec.shape and rec[0] == 1.0
    again = probes.probe_heads(x, y, positive="male", layer=11)
    assert again.table.equals(t)  # deterministic
    with pytest.raises(UnknownNameError):
        probes.select_experts(t, rule="best")
    with pytest.raises(ParameterError):
        probes.select_experts(t, k=9)


def test_probe_neurons_finds_the_planted_neuron():
    x, y = _planted()
    res = probes.probe_neurons(x, y, heads=[0, 4], positive="male")
    t = res.table
    assert len(t) == 2 * 16
    best = t.loc[t["ap"].idxmax()]
    assert (int(best["head"]), int(best["neuron"])) == (0, 3)
    assert best["ap"] > 0.9
    noise = t[(t["head"] == 4)]["auroc"]  # pure-noise neurons sit around chance
    assert 0.35 < noise.median() < 0.65


def test_init_choice_and_multiclass():
    x, y = _planted()
    z = probes.probe_heads(x, y, positive="male").table
    r = probes.probe_heads(x, y, positive="male", config=probes.ProbeConfig(init="torch", standardize=False)).table
    assert not np.allclose(z["ap"], r["ap"])
    rng = np.random.default_rng(7)
    y3 = np.array(["a", "b", "c"])[rng.integers(0, 3, 200)]
    x3 = torch.from_numpy(rng.normal(size=(200, 5, 16)).astype(np.float32))
    x3[:, 1, :3] += torch.from_numpy(np.eye(3, dtype=np.float32)[np.searchsorted(["a", "b", "c"], y3)] * 2)
    res = probes.probe_heads(x3, y3)
    assert res.positive is None and res.classes == ["a", "b", "c"]
    assert int(res.table.loc[res.table["ap"].idxmax(), "head"]) == 1
    with pytest.raises(ParameterError):
        probes.pr_curve(res, 0)


def test_probe_errors():
    x, y = _planted(n=20)
    with pytest.raises(DataError, match="two classes"):
        probes.probe_heads(x, ["m"] * 20)
    with pytest.raises(DataError, match="at least 2"):
        probes.probe_heads(x, ["m"] * 19 + ["f"])
    with pytest.raises(ParameterError):
        probes.probe_heads(x[:, 0], y)
    with pytest.raises(ParameterError):
        probes.ProbeConfig(epochs=0)
    with pytest.raises(UnknownNameError):
        probes.ProbeConfig(init="xavier")
    with pytest.raises(UnknownNameError):
        probes.probe_heads(x, y, positive="other")


def test_embeddings_match_the_model_zoo_helpers():
    from PIL import Image

    from fairvlm.models import load

    lm = load("tiny-clip")
    imgs = [Image.new("RGB", (40, 40), (10 * i, 100, 200 - 10 * i)) for i in range(6)]
    pv = retrieval.pixel_values(lm, imgs, batch_size=4)
    mine = retrieval.embed_images(lm, pv, batch_size=4)
    torch.testing.assert_close(mine, lm.embed_images(imgs), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine.norm(dim=-1), torch.ones(6))
    words = ["a doctor", "a photo of a nurse", "x"]
    torch.testing.assert_close(retrieval.embed_texts(lm, words), lm.embed_text(words), atol=1e-5, rtol=1e-5)
    with pytest.raises(ParameterError):
        retrieval.embed_texts(lm.model, words)  # no tokenizer


def test_dual_encoder_with_clip_vision_tower(pixels):
    """The testbed's architecture: VisionTextDualEncoderModel = CLIP vision tower + BERT text tower."""
    from transformers import BertConfig, VisionTextDualEncoderConfig, VisionTextDualEncoderModel

    torch.manual_seed(0)
    vis = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8)
    txt = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    m = VisionTextDualEncoderModel(VisionTextDualEncoderConfig.from_vision_text_configs(vis, txt, projection_dim=12)).eval()
    assert ch.vision_tower(m) is m.vision_model  # a CLIPVisionModel (flat in transformers 5)
    d = ch.cls_decomposition(m, pixels)
    torch.testing.assert_close(d.reconstruction(), d.resid_mid, atol=1e-5, rtol=1e-5)
    base = retrieval.embed_images(m, pixels)
    assert base.shape == (7, 12)
    with ch.intervene(m, ch.zero_ablation([0, 3])):
        edited = retrieval.embed_images(m, pixels)
    assert (edited - base).abs().max() > 1e-4


def test_grouped_split_keeps_counterfactual_sets_together():
    # features depend on the scene only; each scene is drawn as a female and a male twin
    rng = np.random.default_rng(0)
    scenes = rng.normal(size=(100, 3, 16)).astype(np.float32)
    x = torch.from_numpy(np.repeat(scenes, 2, axis=0) + 0.05 * rng.normal(size=(200, 3, 16)).astype(np.float32))
    y = np.tile(["female", "male"], 100)
    scene_id = np.repeat(np.arange(100), 2)
    naive = probes.probe_heads(x, y, positive="female")
    assert naive.table["auroc"].max() < 0.35  # twins split apart: the probe learns the opposite label
    grouped = probes.probe_heads(x, y, positive="female", groups=scene_id)
    assert set(scene_id[grouped.train_idx]).isdisjoint(scene_id[grouped.test_idx])
    assert grouped.table["auroc"].between(0.35, 0.65).all()
    assert len(grouped.test_idx) == 40
    with pytest.raises(ParameterError):
        probes.split_indices(np.array([0, 1, 0, 1]), groups=[1, 2])


def test_fast_path_equals_full_encoding(model, pixels):
    from transformers import BertConfig, VisionTextDualEncoderConfig, VisionTextDualEncoderModel

    torch.manual_seed(0)
    vis = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                           image_size=32, patch_size=8)
    txt = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    dual = VisionTextDualEncoderModel(VisionTextDualEncoderConfig.from_vision_text_configs(vis, txt, projection_dim=12)).eval()
    bare = CLIPVisionModel(vis).eval()
    protos = ch.head_prototypes(ch.head_contributions(model, pixels), ["a", "b"] * 3 + ["a"])
    for m, edits in [(model, [ch.prototype_replacement(protos, "b", [1, 5])]),
                     (dual, [ch.zero_ablation([2]), ch.damping([0], 0.3, layer=1)]),
                     (bare, [ch.damping([1, 3], 0.5)])]:
        for layer in (-1, 1):
            cache = ch.layer_inputs(m, pixels, layer=layer, batch_size=3)
            assert cache.shape[:2] == (7, 17)
            usable = [e for e in edits if ch.resolve_layer(m, e.layer) >= ch.resolve_layer(m, layer)]
            fast = ch.embed_from_layer(m, cache, layer=layer, edits=usable, batch_size=4)
            if m is bare:
                with ch.intervene(m, *usable):
                    full = torch.nn.functional.normalize(m(pixel_values=pixels).pooler_output, dim=-1)
            else:
                full = retrieval.embed_images(m, pixels, edits=usable)
            torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ParameterError, match="cannot act"):
        ch.embed_from_layer(dual, ch.layer_inputs(dual, pixels), edits=[ch.damping([0], 0.3, layer=1)])
    assert _no_hooks(model)


def test_interventions_work_under_autograd(model, pixels):
    edit = ch.damping([1, 4], 0.2)
    with ch.intervene(model, edit):
        ref = model.get_image_features(pixel_values=pixels).pooler_output
        with torch.enable_grad():
            x = pixels.clone().requires_grad_(True)
            out = model.get_image_features(pixel_values=x).pooler_output
            out.square().sum().backward()
    torch.testing.assert_close(out.detach(), ref, atol=1e-6, rtol=1e-6)
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ------------------------------------------------------------------------ issue 14: experts, traps, variants, audit
def test_default_k_is_a_quarter_of_the_heads():
    assert [probes.default_k(h) for h in (1, 3, 4, 8, 12, 16)] == [1, 1, 1, 2, 3, 4]
    with pytest.raises(ParameterError):
        probes.default_k(0)


def test_warm_started_probe_gives_later_heads_more_steps():
    # two identical heads: the warm-started probe reads head 1 after 2 x 5 steps, exactly
    # what a fresh probe with the same start reaches after 10 steps on that head
    x, y = _planted(n=80, h=1, d=6, head=0)
    both = torch.cat([x, x], dim=1)
    yc, _ = probes.encode_labels(y)
    split = probes.split_indices(yc, 0.2, 0)
    cfg = probes.ProbeConfig(epochs=5, init="torch", standardize=False, seed=3)
    warm = probes.probe_heads_warm_start(both, y, split=split, config=cfg)
    fresh10 = probes.probe_heads(x, y, split=split, config=probes.ProbeConfig(epochs=10, init="torch",
                                                                             standardize=False, seed=3))
    fresh5 = probes.probe_heads(x, y, split=split, config=cfg)
    np.testing.assert_allclose(warm.scores[1], fresh10.scores[0], atol=1e-5)
    np.testing.assert_allclose(warm.scores[0], fresh5.scores[0], atol=1e-5)


def test_logreg_probe_and_expert_gap_test_on_a_planted_head():
    x, y = _planted(n=240, h=5, d=16, head=2)
    yc, _ = probes.encode_labels(y)
    split = probes.split_indices(yc, 0.25, 0)
    lr = probes.probe_heads_logreg(x, y, split=split, positive="male")
    assert int(lr.table.loc[lr.table["ap"].idxmax(), "head"]) in (0, 2)
    res = probes.probe_heads(x, y, positive="male", split=split)
    t = probes.expert_gap_test(res, x, y, k=1, positive="male", n_shuffles=20, n_boot=200)
    assert t["experts"] in ([0], [2])
    assert t["interval"][0] > t["null_interval"][1]           # a real expert beats the selection null
    # with every head pure noise the gap stays within what selection alone produces
    noise = torch.from_numpy(np.random.default_rng(5).normal(size=(240, 5, 16)).astype(np.float32))
    r0 = probes.probe_heads(noise, y, positive="male", split=split)
    t0 = probes.expert_gap_test(r0, noise, y, k=1, positive="male", n_shuffles=20, n_boot=200)
    assert t0["effect"] <= t0["null_interval"][1] + 0.05
    assert math.isnan(probes.expert_gap(res.table, list(range(5))))


def test_trap_table_lists_every_recipe():
    x, y = _planted(n=120, h=4, d=8, head=2)
    groups = np.repeat(np.arange(60), 2)
    t = probes.trap_table(x, y, experts=[2], k=1, groups=groups, positive="male", seeds=[0, 1])
    assert set(t["probe"]) == {"book default (grouped split, zero init, standardized)",
                               "paper recipe (PyTorch init, raw features, 10 Adam steps)",
                               "converged logistic regression", "authors' warm-started sequential probe",
                               "random split (counterfactual sets split apart)"}
    assert len(t) == 10 and t["mean_ap"].between(0, 1).all()


def test_neuron_mask_and_standard_variants():
    import pandas as pd

    table = pd.DataFrame({"head": [1, 1, 3, 3], "neuron": [0, 2, 1, 2], "ap": [0.9, 0.3, 0.5, 0.42]})
    m = ch.neuron_mask(table, [1, 3], 4, min_ap=0.42)
    assert m.tolist() == [[True, False, False, False], [False, True, False, False]]
    contrib = torch.randn(8, 4, 6)
    g = ["male", "female"] * 4
    r = ["white", "black", "black", "white"] * 2
    protos = {"gender": ch.head_prototypes(contrib, g), "race": ch.head_prototypes(contrib, r),
              "group": ch.head_prototypes(contrib, [f"{a}|{b}" for a, b in zip(g, r)])}
    mask = torch.zeros(1, 6, dtype=torch.bool)
    mask[0, 2] = True
    v = ch.standard_variants(protos, [1], [2], layer=-1, damp_alpha=0.1, neurons=mask, control_heads=[3])
    names = [x["variant"] for x in v]
    assert len(names) == len(set(names))
    assert {"none", "male (experts)", "male (control heads)", "damp 0.1 (expert neurons)",
            "male+white (union)", "CLIP-clip"} <= set(names)
    ctrl = next(x for x in v if x["variant"] == "male (control heads)")
    assert ctrl["heads"] == "4" and ctrl["edits"][0].heads == (3,)
    damp_n = next(x for x in v if x["variant"] == "damp 0.1 (expert neurons)")["edits"][0]
    assert damp_n.mode == "damp" and bool(damp_n.neurons[0, 2]) and int(damp_n.neurons.sum()) == 1


def test_random_ranking_floor_hand_computed():
    import pandas as pd

    # two queries, each with one man and one woman of its own scenario: any ranking has the
    # top-1 all one gender (KL = ln 2) and the top-2 balanced (KL = 0)
    meta = pd.DataFrame({"scenario": ["a", "a", "b", "b"], "gender": ["male", "female", "female", "male"],
                         "race": ["black", "white", "black", "white"]})
    data = retrieval.AuditData(
        galleries={"g": {"meta": meta, "pixels": None, "image": None}}, probe_meta=meta, probe_pixels=None,
        probe_sets=None, scenario_suites=[{"name": "s", "gallery": "g", "key_col": "scenario",
                                           "queries": pd.DataFrame({"key": ["a", "b"], "prompt": ["p", "q"],
                                                                    "role": ["a", "b"]})}],
        recall_suite=None, zeroshot_suite=None, word_gallery="g")
    f = retrieval.random_ranking_floor(data, n=20, seed=0).set_index(["metric", "attribute"])
    expected = math.log(2) / (1 + 1 / math.log2(3))
    assert f.loc[("ndkl", "gender"), "floor"] == pytest.approx(expected)
    assert f.loc[("ndkl", "gender"), "lo"] == pytest.approx(expected)
    assert f.loc[("ndkl", "race"), "floor"] == pytest.approx(expected)


def test_time_edits_reports_a_ratio_and_an_aa_noise_band(model, pixels):
    edit = ch.zero_ablation([0], layer=-1)
    t = retrieval.time_edits(model, pixels, [edit], repeats=3, batch_size=4)
    assert t["interval"][0] <= t["ratio"] <= t["interval"][1]
    assert t["noise_interval"][0] <= t["noise"] <= t["noise_interval"][1]
    assert isinstance(t["valid"], bool) and t["median_plain_s"] > 0
    with pytest.raises(ParameterError):
        retrieval.time_edits(model, pixels, [edit], repeats=2)


def _scores(ndkl_by_variant, n_q=30, seed=0, entropy_up=("male (experts)",)):
    """Constructed score_variants output: per-query NDKL around the given means."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    fam = {"none": "baseline", "male (experts)": "prototype", "person (experts)": "prototype",
           "female (experts)": "prototype", "zero (experts)": "zero", "male (random 1)": "random control",
           "male (random 2)": "random control", "male (h:1)": "single head", "male (h:2)": "single head",
           "CLIP-clip": "baseline method", "biased prompts": "baseline method"}
    q = pd.concat([pd.DataFrame({"suite": "s", "query": [f"q{i}" for i in range(n_q)], "variant": v,
                                 "ndkl_gender": m + rng.normal(0, 0.01, n_q)}) for v, m in ndkl_by_variant.items()])
    words = pd.concat([pd.DataFrame({"style": "word", "word": [f"w{i}" for i in range(20)], "variant": v,
                                     "entropy_gender": 0.5 + (0.2 if v in entropy_up else 0.0)
                                     + rng.normal(0, 0.01, 20)}) for v in ndkl_by_variant])
    summ = q.groupby("variant")["ndkl_gender"].mean().rename("ndkl_gender").reset_index()
    summ["family"] = summ["variant"].map(fam)
    summ["ndkl_gender_change"] = summ["ndkl_gender"] / float(summ.set_index("variant").loc["none", "ndkl_gender"]) - 1
    summ["H_gender (word)"] = summ["variant"].map(words.groupby("variant")["entropy_gender"].mean())
    return {"queries": q, "words": words, "summary": summ, "hits": {}}


def test_head_audit_claims_come_out_as_constructed():
    import pandas as pd

    from fairvlm.verdicts import Claim, judge_estimates

    means = {"none": 0.30, "male (experts)": 0.15, "person (experts)": 0.25, "female (experts)": 0.28,
             "zero (experts)": 0.26, "male (random 1)": 0.30, "male (random 2)": 0.31, "male (h:1)": 0.22,
             "male (h:2)": 0.24, "CLIP-clip": 0.30, "biased prompts": 0.30}
    floor = pd.DataFrame([{"suite": "s", "attribute": a, "metric": m, "floor": 0.10, "lo": 0.09, "hi": 0.11,
                           "n_draws": 100} for a in ("gender", "race") for m in ("ndkl", "maxskew")])
    gap = judge_estimates(Claim(probes.EXPERT_CLAIM, "other", min_effect=0.05), 0.3, (0.25, 0.35), 0.05, 0.25,
                          (0.2, 0.3), n_units=20)
    rng = np.random.default_rng(0)
    neurons = pd.DataFrame({"head": np.repeat(np.arange(12), 16),
                            "ap": np.r_[rng.normal(0.8, 0.03, 96), rng.normal(0.5, 0.03, 96)],
                            "kind": ["expert"] * 96 + ["other"] * 96})
    timing = {"ratio": 1.01, "interval": (0.99, 1.03), "noise": 1.0, "noise_interval": (0.98, 1.02),
              "valid": True, "repeats": 7}
    kw = dict(main_suite="s", gap_verdict=gap, neurons=neurons, neuron_testable=(False, "the mask covers all"),
              experts=[0, 1], random_variants=["male (random 1)", "male (random 2)"], damp_alpha=0.1, timing=timing)
    rows, info = retrieval.head_audit_claims(_scores(means), floor, **kw)
    assert info["has_bias"]
    by = {r["verdict"].claim: r["verdict"] for r in rows}

    def find(by, prefix):
        hit = [v for c, v in by.items() if c.startswith(prefix)]
        assert len(hit) == 1, (prefix, list(by))
        return hit[0]

    T2, ONE, ZERO = ("Table 2: the male prototype on the experts cuts NDKL", "Table 2: editing all experts beats",
                     "Table 2: the male prototype beats zero ablation")
    for c in (probes.EXPERT_CLAIM, "Figure 1: expert heads hold many high-AP neurons, other heads few", T2, ONE, ZERO,
              "Table 4: the male prototype raises gender entropy over So-B-IT words",
              "Sec. 3.2: the intervention adds negligible inference cost"):
        assert find(by, c).verdict == "reproduced", c
    assert find(by, T2).asserts == "debias" and "47%" in find(by, T2).claim
    # the comparator of "all against one" is fixed in advance, not the best single head afterwards
    rows2, _ = retrieval.head_audit_claims(_scores(dict(means, **{"male (h:2)": 0.15})), floor,
                                           **dict(kw, single_head=0))
    assert find({r["verdict"].claim: r["verdict"] for r in rows2}, ONE).verdict == "reproduced"
    rows2, _ = retrieval.head_audit_claims(_scores(dict(means, **{"male (h:2)": 0.15})), floor,
                                           **dict(kw, single_head=1))
    assert find({r["verdict"].claim: r["verdict"] for r in rows2}, ONE).verdict == "not reproduced"
    left = next(v for c, v in by.items() if c.startswith("Table 3 (left)"))
    assert left.verdict == "not testable here" and "covers all" in left.why
    # three expert heads against three others: too few clusters for the neuron comparison
    few = neurons[neurons["head"].isin([0, 1, 2, 6, 7, 8])]
    rows, _ = retrieval.head_audit_claims(_scores(means), floor, **dict(kw, neurons=few))
    fig1 = next(r["verdict"] for r in rows if r["verdict"].claim.startswith("Figure 1"))
    assert fig1.verdict == "not testable here" and "at least 5" in fig1.why
    # the male edit no better than random non-expert heads: ruled out, and what needs its effect is not testable
    same = dict(means, **{"male (random 1)": 0.15, "male (random 2)": 0.15})
    rows, _ = retrieval.head_audit_claims(_scores(same, entropy_up=("male (experts)", "male (random 1)",
                                                                     "male (random 2)")), floor, **kw)
    by = {r["verdict"].claim: r["verdict"] for r in rows}
    assert find(by, T2).verdict == "not reproduced"
    assert by["Table 4: the male prototype raises gender entropy over So-B-IT words"].verdict == "not reproduced"
    # comparisons that build on the head edit wait for its effect (after=)
    for c in (ONE, ZERO):
        assert find(by, c).verdict == "not testable here" and "not shown" in find(by, c).why
    # a neuron mask that selects: the neuron claims wait for the head effect
    sc = _scores(dict(same, **{"male (expert neurons)": 0.2, "damp 0.1 (expert neurons)": 0.3}))
    sc["summary"].loc[sc["summary"]["variant"].str.contains("neurons"), "family"] = "neurons"
    rows, _ = retrieval.head_audit_claims(sc, floor, **dict(kw, neuron_testable=(True, "")))
    left = next(r["verdict"] for r in rows if r["verdict"].claim.startswith("Table 3 (left)"))
    assert left.verdict == "not testable here" and "not shown" in left.why
    # a baseline already at the random floor: the NDKL claims are not testable
    at_floor = floor.assign(hi=0.5)
    rows, info = retrieval.head_audit_claims(_scores(means), at_floor, **kw)
    assert not info["has_bias"]
    assert find({r["verdict"].claim: r["verdict"] for r in rows}, T2).verdict == "not testable here"
    assert rows[0]["verdict"].verdict == "reproduced"          # the probe claim does not need NDKL bias
    # an edited run faster than plain beyond the A/A band: the timing is invalid
    rows, _ = retrieval.head_audit_claims(_scores(means), floor, **dict(kw, timing=dict(timing, valid=False)))
    assert rows[-1]["verdict"].verdict == "not testable here"
    # two identical runs differing by 30%: too noisy to resolve a 5% cost
    noisy = dict(timing, noise_interval=(0.8, 1.3))
    rows, _ = retrieval.head_audit_claims(_scores(means), floor, **dict(kw, timing=noisy))
    assert rows[-1]["verdict"].verdict == "not testable here" and "noisy" in rows[-1]["verdict"].why
    with pytest.raises(FairVLMError, match="random_variants"):
        retrieval.head_audit_claims(_scores(means), floor, **dict(kw, random_variants=["male (nowhere)"]))


def test_expert_gap_verdict_on_a_planted_head():
    rng = np.random.default_rng(0)
    n, h, d = 480, 4, 6
    y = np.array(["male", "female"] * (n // 2))
    x = torch.tensor(rng.normal(size=(n, h, d)), dtype=torch.float32)
    x[:, 2, :] += torch.tensor(np.where(y == "male", 3.0, -3.0)[:, None], dtype=torch.float32)  # head 2 knows gender
    groups = np.repeat(np.arange(n // 4), 4)
    res = probes.probe_heads(x, y, positive="male", groups=groups)
    experts, det, v = probes.expert_gap_verdict(res, x, y, k=1, groups=groups, positive="male", n_shuffles=4,
                                                n_boot=100, seed=0)
    assert experts == [2] and v.verdict == "reproduced" and det["n_scoring"] + det["n_selection"] == len(res.test_idx)
    assert not v.bias_claim
    # no head knows anything: the picked head's gap is what shuffled labels give
    noise = torch.tensor(rng.normal(size=(n, h, d)), dtype=torch.float32)
    r0 = probes.probe_heads(noise, y, positive="male", groups=groups)
    _, _, v0 = probes.expert_gap_verdict(r0, noise, y, k=1, groups=groups, positive="male", n_shuffles=4,
                                         n_boot=100, seed=0)
    # with 12 scoring sets the sample cannot resolve the 0.05 size: inconclusive, and says how much it could
    assert v0.verdict == "inconclusive" and v0.difference_interval[0] < 0 < v0.difference_interval[1]
    assert v0.mde > 0.05 and "minimum detectable effect" in v0.why
    with pytest.raises(ParameterError, match="k="):
        probes.expert_gap_verdict(res, x, y, k=4, groups=groups, positive="male")


def test_random_heads_are_non_experts_of_the_experts_size():
    import pandas as pd

    t = pd.DataFrame({"head": range(8), "ap": np.linspace(0.5, 0.9, 8)})
    draws = probes.random_heads(t, [6, 7], n_draws=5, seed=1)
    assert len(draws) == 5 and len({tuple(d) for d in draws}) == 5
    assert all(len(d) == 2 and not set(d) & {6, 7} for d in draws)
    assert probes.random_heads(t, [6, 7], n_draws=5, seed=1) == draws
    with pytest.raises(ParameterError, match="n_draws"):
        probes.random_heads(t, [6, 7], n_draws=0)


# ------------------------------------------------------------------------ chapter 07's tables, moved into the library
def _result(table, y_test=(0, 1), positive=1):
    """A ProbeResult holding only a table (and a test split for ap_chance)."""
    y = np.asarray(y_test)
    return probes.ProbeResult(table=table, scores=np.zeros((len(table), len(y), 2)), y_test=y,
                              classes=["female", "male"], positive=positive, train_idx=np.arange(0),
                              test_idx=np.arange(len(y)))


def test_decomposition_check_measures_the_identity_and_the_batch_difference(model, pixels, monkeypatch):
    check = ch.decomposition_check(model, pixels, n_single=3)
    dec = ch.cls_decomposition(model, pixels)
    assert check["identity_err"] <= 1e-5 and check["batch_err"] <= 1e-5
    assert check["identity_scale"] == pytest.approx(float(dec.resid_mid.abs().max()))
    # a decomposition that does not add up: heads 1 + 1 + 0 = 2 per entry, resid_mid [2, 2.5, -1]
    fake = ch.CLSDecomposition(layer=2, heads=torch.tensor([[[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]]),
                               out_bias=torch.zeros(3), resid_pre=torch.zeros(1, 3),
                               resid_mid=torch.tensor([[2.0, 2.5, -1.0]]))
    monkeypatch.setattr(ch, "cls_decomposition", lambda *a, **k: fake)
    bad = ch.decomposition_check(model, pixels, n_single=2)
    assert bad["identity_err"] == pytest.approx(3.0) and bad["identity_scale"] == pytest.approx(2.5)
    for n_single in (0, 8, 2.0):
        with pytest.raises(FairVLMError, match="n_single"):
            ch.decomposition_check(model, pixels, n_single=n_single)


def test_embed_variants_equal_encoding_under_the_edits(model, pixels):
    zero = ch.zero_ablation([1], layer=-1)
    variants = [{"variant": "none", "family": "baseline", "edits": []},
                {"variant": "zero", "family": "zero", "edits": [zero]},
                {"variant": "CLIP-clip", "family": "baseline method", "edits": []}]
    emb = ch.embed_variants(model, {"a": pixels, "b": pixels[:3]}, variants, layer=-1)
    assert list(emb) == ["none", "zero"] and list(emb["zero"]) == ["a", "b"]
    torch.testing.assert_close(emb["zero"]["a"], retrieval.embed_images(model, pixels, edits=[zero]),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(emb["none"]["b"], retrieval.embed_images(model, pixels[:3]), atol=1e-5, rtol=1e-5)
    assert (emb["zero"]["a"] - emb["none"]["a"]).abs().max() > 1e-4
    with pytest.raises(FairVLMError, match="galleries"):
        ch.embed_variants(model, {}, variants)
    with pytest.raises(FairVLMError, match="variant, family and edits"):
        ch.embed_variants(model, {"a": pixels}, [{"variant": "none"}])


def test_heads_1based():
    assert ch.heads_1based([2, 10, 11]) == "3,11,12"
    assert ch.heads_1based(np.array([0])) == "1" and ch.heads_1based([]) == ""


def test_head_table_marks_experts_and_pivots_by_head_number():
    import pandas as pd

    g = pd.DataFrame({"layer": 5, "head": [0, 1, 9], "accuracy": [0.5, 0.6, 0.7], "auroc": [0.5, 0.9, 0.6],
                      "ap": [0.4, 0.9, 0.6]})
    r = g.assign(ap=[0.8, 0.1, 0.7], accuracy=[0.9, 0.2, 0.3])
    t = probes.head_table({"gender": _result(g), "race": _result(r)}, {"gender": [1], "race": [0, 9]})
    assert t["attribute"].tolist() == ["gender"] * 3 + ["race"] * 3
    assert t["head_1based"].tolist() == [1, 2, 10] * 2
    assert t["expert"].tolist() == [False, True, False, True, False, True]
    logreg = pd.DataFrame({"head": [0, 1, 9], "accuracy": [0.1, 0.2, 0.3], "ap": [0.7, 0.8, 0.95]})
    wide = probes.wide_head_table(t, {"gender (converged logreg)": logreg})
    # numeric head order (h:10 after h:2), accuracy before AP
    assert list(wide.columns) == ["h:1 Acc", "h:1 AP", "h:2 Acc", "h:2 AP", "h:10 Acc", "h:10 AP"]
    assert list(wide.index) == ["gender", "race", "gender (converged logreg)"]
    assert wide.loc["race", "h:1 AP"] == pytest.approx(0.8)
    assert wide.loc["gender", "h:2 Acc"] == pytest.approx(0.6)
    assert wide.loc["gender (converged logreg)", "h:10 AP"] == pytest.approx(0.95)
    with pytest.raises(FairVLMError, match="race"):
        probes.head_table({"gender": _result(g), "race": _result(r)}, {"gender": [1]})
    with pytest.raises(FairVLMError, match="head_1based"):
        probes.wide_head_table(g)


def test_expert_other_ap_and_control_heads_hand_computed():
    import pandas as pd

    t = pd.DataFrame({"head": [0, 1, 2, 3, 4], "ap": [0.9, 0.2, 0.8, 0.2, 0.5]})
    assert probes.expert_other_ap(t, [0, 2]) == pytest.approx((0.85, 0.3))
    assert probes.control_heads(t, [0, 2]) == [1, 3]            # lowest AP first; the tie keeps table order
    assert probes.control_heads(t, [0, 2], k=1) == [1]
    assert probes.control_heads(t, [0, 2], k=3) == [1, 3, 4]
    assert probes.control_heads(t, [0, 1, 2, 3]) == [4]          # more experts than other heads: all others
    with pytest.raises(FairVLMError, match="k=4"):
        probes.control_heads(t, [0, 2], k=4)
    for experts in ([], [0, 1, 2, 3, 4]):
        with pytest.raises(FairVLMError, match="some but not all"):
            probes.expert_other_ap(t, experts)


def test_probe_layers_finds_the_layer_that_carries_the_label():
    import pandas as pd

    x, y = _planted(n=200, h=4, d=8, head=2)
    noise = torch.from_numpy(np.random.default_rng(7).normal(size=(200, 4, 8)).astype(np.float32))
    yc, _ = probes.encode_labels(y)
    split = probes.split_indices(yc, 0.2, 0)
    t = probes.probe_layers(((li, c) for li, c in ((0, noise), (1, x))), y, positive="male", split=split)
    assert t["layer"].tolist() == [0] * 4 + [1] * 4 and t["head"].tolist() == [0, 1, 2, 3] * 2
    single = probes.probe_heads(x, y, positive="male", layer=1, split=split).table
    np.testing.assert_allclose(t.loc[t["layer"] == 1, "ap"], single["ap"])
    assert probes.best_layer(t) == 1
    with pytest.raises(FairVLMError, match="empty"):
        probes.probe_layers(iter(()), y)
    hand = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "ap": [0.1, 0.95, 0.9, 0.3]})
    grid = probes.layer_head_grid(hand)
    assert list(grid.index) == ["L1", "L2"] and list(grid.columns) == ["h1", "h2"]
    assert grid.loc["L1", "h2"] == pytest.approx(0.95) and grid.loc["L2", "h1"] == pytest.approx(0.9)
    assert probes.best_layer(hand) == 0
    with pytest.raises(FairVLMError, match="layer"):
        probes.layer_head_grid(hand.drop(columns="layer"))


def test_trap_summary_averages_over_seeds_in_recipe_order():
    import pandas as pd

    trap = pd.DataFrame({"probe": ["z recipe", "z recipe", "a recipe", "a recipe"], "seed": [0, 1, 0, 1],
                         "mean_auroc": [0.6, 0.8, 0.5, 0.5], "mean_ap": [0.5, 0.7, 0.4, 0.6],
                         "max_ap": [0.9, 0.7, 0.6, 0.6], "same_experts_as_default": [True, False, True, True],
                         "experts_1based": ["3", "3,4", "3", "3"]})
    s = probes.trap_summary(trap)
    assert list(s.index) == ["z recipe", "a recipe"]
    assert s.loc["z recipe", ["mean_auroc", "mean_ap", "max_ap", "expert_set_agreement"]].tolist() == \
        pytest.approx([0.7, 0.6, 0.8, 0.5])
    assert s.loc["z recipe", "experts_picked"] == "3; 3,4" and s.loc["a recipe", "experts_picked"] == "3"
    assert s.loc["a recipe", "expert_set_agreement"] == 1.0
    with pytest.raises(FairVLMError, match="max_ap"):
        probes.trap_summary(trap.drop(columns="max_ap"))


def test_split_neurons_and_ap_chance():
    import pandas as pd

    table = pd.DataFrame({"head": [1, 1, 3, 3], "neuron": [0, 1, 0, 1], "ap": [0.9, 0.3, 0.5, 0.42]})
    marked, aps = probes.split_neurons(table, [1])
    assert marked["kind"].tolist() == ["expert", "expert", "other", "other"]
    np.testing.assert_allclose(aps["expert"], [0.9, 0.3])
    np.testing.assert_allclose(aps["other"], [0.5, 0.42])
    assert "kind" not in table                                    # the input is not changed
    assert probes.ap_chance(_result(table, y_test=[0, 1, 1, 0, 1])) == pytest.approx(0.6)
    assert probes.ap_chance(_result(table, y_test=[0, 1, 1, 0, 1], positive=0)) == pytest.approx(0.4)
    with pytest.raises(FairVLMError, match="binary"):
        probes.ap_chance(_result(table, positive=None))


def test_fit_baselines_matches_the_parts():
    from PIL import Image

    from fairvlm.models import load

    lm = load("tiny-clip")
    imgs = [Image.new("RGB", (40, 40), (20 * i, 90 + 10 * i, 200 - 15 * i)) for i in range(8)]
    pv = retrieval.pixel_values(lm, imgs)
    labels = ["male", "female"] * 4
    roles = ["doctor", "nurse"]
    fit = retrieval.fit_baselines(lm, pv, labels, roles, keep=0.5, lam=10.0, seed=0)
    emb = retrieval.embed_images(lm, pv)
    assert fit["dim"] == emb.shape[1] and fit["clip_m"] == round(0.5 * emb.shape[1])
    np.testing.assert_array_equal(fit["clip_dims"], retrieval.clip_clip_dims(emb, labels, fit["clip_m"], seed=0))
    expect = retrieval.biased_prompts_projection(
        retrieval.embed_texts(lm, list(retrieval.SPURIOUS_PROMPTS)),
        retrieval.embed_texts(lm, ["a photo of a male doctor", "a photo of a male nurse"]),
        retrieval.embed_texts(lm, ["a photo of a female doctor", "a photo of a female nurse"]), lam=10.0)
    torch.testing.assert_close(fit["projection"], expect)
    assert retrieval.fit_baselines(lm, pv, labels, roles, keep=0.001, lam=10.0)["clip_m"] == 1
    for keep in (0.0, 1.5, True):
        with pytest.raises(FairVLMError, match="keep"):
            retrieval.fit_baselines(lm, pv, labels, roles, keep=keep)
    with pytest.raises(FairVLMError, match="roles"):
        retrieval.fit_baselines(lm, pv, labels, [], keep=0.5)


def test_add_baselines_hand_computed():
    i_none = torch.tensor([[0.6, 0.0, 0.8, 0.0]])
    t_base = torch.tensor([[3.0, 0.0, 4.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    image_emb = {"none": {"g": i_none}, "zero": {"g": torch.tensor([[0.0, 1.0, 0.0, 0.0]])}}
    variants = [{"variant": v} for v in ("none", "zero", "CLIP-clip", "biased prompts")]
    fitted = {"clip_dims": np.array([0, 2]), "projection": torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0]))}
    images, texts = retrieval.add_baselines(image_emb, t_base, variants, fitted)
    assert set(image_emb) == {"none", "zero"}                     # the input dict is not changed
    assert texts["none"] is t_base and texts["zero"] is t_base
    assert images["biased prompts"] is image_emb["none"]
    # projection keeps dims 0 and 1: (3, 0, 0, 0) -> (1, 0, 0, 0); (0, 1, 0, 0) stays
    torch.testing.assert_close(texts["biased prompts"], torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]))
    # CLIP-clip keeps dims 0 and 2 and renormalizes: (3, 4) -> (0.6, 0.8); (0, 0) stays 0
    torch.testing.assert_close(texts["CLIP-clip"], torch.tensor([[0.6, 0.8], [0.0, 0.0]]))
    torch.testing.assert_close(images["CLIP-clip"]["g"], torch.tensor([[0.6, 0.8]]))
    with pytest.raises(FairVLMError, match="'none'"):
        retrieval.add_baselines({"zero": image_emb["zero"]}, t_base, variants, fitted)


def _floor(suite="s"):
    import pandas as pd

    vals = {("ndkl", "gender"): 0.1, ("ndkl", "race"): 0.2, ("maxskew", "gender"): 0.3, ("maxskew", "race"): 0.4}
    return pd.DataFrame([{"suite": suite, "metric": m, "attribute": a, "floor": v, "lo": v - 0.05, "hi": v + 0.05,
                          "n_draws": 10} for (m, a), v in vals.items()])


def test_floor_summary_and_variant_table():
    import pandas as pd

    floor = pd.concat([_floor("s"), _floor("other").assign(floor=9.0)], ignore_index=True)
    fl = retrieval.floor_summary(floor, "s")
    assert set(fl) == {"ndkl|gender", "ndkl|race", "maxskew|gender", "maxskew|race"}
    assert fl["maxskew|race"] == pytest.approx({"floor": 0.4, "lo": 0.35, "hi": 0.45})
    with pytest.raises(FairVLMError, match="'missing'"):
        retrieval.floor_summary(floor, "missing")
    summary = pd.DataFrame({"variant": ["none", "male (experts)"], "family": ["baseline", "prototype"],
                            "heads": ["", "1,2"], "t2i_R@5": [0.5, 0.4], "ndkl_gender": [0.3, 0.2],
                            "ndkl_race": [0.3, 0.3], "maxskew_gender": [0.5, 0.4], "maxskew_race": [0.5, 0.5],
                            "NDCG@k": [0.9, 0.8], "mAP": [0.7, 0.6], "H_gender (word)": [0.8, 0.9],
                            "ndkl_gender_change": [0.0, -1 / 3]})
    t = retrieval.variant_table(summary, floor, "s")
    assert list(t.columns) == ["variant", "heads", "ndkl_gender", "ndkl_gender_change", "ndkl_race",
                               "maxskew_gender", "maxskew_race", "NDCG@k", "mAP", "H_gender (word)", "t2i_R@5"]
    assert t["variant"].tolist() == ["random ranking (floor)", "none", "male (experts)"]
    assert t.iloc[0][["ndkl_gender", "ndkl_race", "maxskew_gender", "maxskew_race"]].tolist() == \
        pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert math.isnan(t.iloc[0]["mAP"]) and t.iloc[2]["ndkl_gender"] == pytest.approx(0.2)


def test_planted_vs_retrieved_hand_computed():
    import pandas as pd

    q = pd.DataFrame({"variant": ["edit"] * 3 + ["none"] * 3, "planted_p_man": [0.1, 0.5, 0.9] * 2,
                      "planted_p_black": [0.1, 0.2, 0.3] * 2,
                      "topk_male_share": [0.5, 0.75, 0.25, 0.2, 0.5, 1.0],
                      "topk_black_share": [0.5, 0.5, 0.6, 0.3, 0.2, 0.1]})
    gt = retrieval.planted_vs_retrieved(q).set_index("variant")
    assert list(gt.index) == ["edit", "none"]
    assert gt.loc["none", "spearman_gender"] == pytest.approx(1.0)
    assert gt.loc["none", "spearman_race"] == pytest.approx(-1.0)
    assert gt.loc["edit", "spearman_gender"] == pytest.approx(-0.5)     # ranks (2, 3, 1) against (1, 2, 3)
    assert gt.loc["none", "mean_abs_gender_skew"] == pytest.approx((0.3 + 0.0 + 0.5) / 3)
    assert gt.loc["edit", "mean_abs_gender_skew"] == pytest.approx((0.0 + 0.25 + 0.25) / 3)
    with pytest.raises(FairVLMError, match="planted_p_man"):
        retrieval.planted_vs_retrieved(q.drop(columns="planted_p_man"))


def test_category_entropy_hand_computed():
    import pandas as pd

    w = pd.DataFrame({"variant": ["a"] * 4 + ["b"] * 4 + ["a"], "style": ["word"] * 8 + ["template"],
                      "category": ["c2", "c2", "c1", "c1"] * 2 + ["c1"],
                      "entropy_race": [0.2, 0.4, 0.6, 0.8, 0.1, 0.1, 0.3, 0.5, 9.0],
                      "entropy_gender": [1.0, 0.0, 0.5, 0.5, 0.2, 0.4, 0.6, 0.6, 9.0]})
    cat = retrieval.category_entropy(w, ["b", "a"])
    assert list(cat.index) == ["b", "a"]
    assert list(cat.columns) == [("c1", "R"), ("c1", "G"), ("c2", "R"), ("c2", "G")]
    assert cat.loc["a"].tolist() == pytest.approx([0.7, 0.5, 0.3, 0.5])     # the template row is left out
    assert cat.loc["b"].tolist() == pytest.approx([0.4, 0.6, 0.1, 0.3])
    with pytest.raises(UnknownNameError):
        retrieval.category_entropy(w, ["a"], style="caption")


def test_most_skewed_query_and_top_images():
    import pandas as pd

    queries = pd.DataFrame({"key": ["a", "b", "c"], "prompt": ["pa", "pb", "pc"], "role": ["a", "b", "c"]})
    data = retrieval.AuditData(
        galleries={}, probe_meta=None, probe_pixels=None, probe_sets=None,
        scenario_suites=[{"name": "s", "gallery": "g", "key_col": "scenario", "queries": queries}],
        recall_suite=None, zeroshot_suite=None, word_gallery="g",
        planted_scen=pd.DataFrame({"scenario": ["a", "b", "c"], "gender_skew": [0.1, -0.4, 0.3]}))
    assert retrieval.most_skewed_query(data) == ("b", "pb")
    data.planted_scen = None
    assert retrieval.most_skewed_query(data) == ("a", "pa")
    images = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8], [1.0, 0.0]])
    assert retrieval.top_images(torch.tensor([1.0, 0.0]), images, k=4).tolist() == [1, 3, 2, 0]
    assert retrieval.top_images(torch.tensor([[0.0, 1.0]]), images, k=2).tolist() == [0, 2]
    with pytest.raises(FairVLMError, match="image_emb"):
        retrieval.top_images(torch.ones(3), images)
    with pytest.raises(FairVLMError, match="k=0"):
        retrieval.top_images(torch.ones(2), images, k=0)


def test_variant_headline_keeps_the_utility_columns_that_exist():
    import pandas as pd

    s = pd.DataFrame({"variant": ["none", "x"], "ndkl_gender": [0.3, 0.2], "NDCG@k": [0.9, 0.8], "mAP": [0.7, 0.6],
                      "H_gender (word)": [0.5, 0.6], "t2i_R@5": [0.4, 0.3]})
    h = retrieval.variant_headline(s)
    assert h["ndkl_gender_by_variant"] == {"none": 0.3, "x": 0.2} and h["map_by_variant"]["x"] == 0.6
    assert h["utility_by_variant"] == {"t2i_R@5": {"none": 0.4, "x": 0.3}}


# ------------------------------------------------------------------------ chapter 07's figures and results file
def _pr_result():
    """Three binary probes on five test images (positive class 1), heads 4, 0, 2 in that order."""
    import pandas as pd

    y = np.array([0, 1, 1, 0, 1])
    p1 = np.array([[0.1, 0.9, 0.8, 0.3, 0.7], [0.6, 0.4, 0.5, 0.2, 0.9], [0.5, 0.5, 0.1, 0.9, 0.3]])
    scores = np.stack([1 - p1, p1], axis=-1)                       # (3 probes, 5 images, 2 classes)
    table = pd.DataFrame({"head": [4, 0, 2], "ap": [0.9, 0.6, 0.4]})
    return probes.ProbeResult(table=table, scores=scores, y_test=y, classes=["female", "male"], positive=1,
                              train_idx=np.arange(0), test_idx=np.arange(5))


def test_plot_pr_curves_draws_one_curve_per_head_and_marks_the_experts():
    import matplotlib.pyplot as plt

    res = _pr_result()
    fig = probes.plot_pr_curves(res, [2, 4])
    ax = fig.axes[0]
    assert len(ax.lines) == 3
    for row, line in enumerate(ax.lines):                          # table order, recall on x
        prec, rec = probes.pr_curve(res, row)
        np.testing.assert_allclose(line.get_xdata(), rec)
        np.testing.assert_allclose(line.get_ydata(), prec)
    assert [line.get_linewidth() for line in ax.lines] == [1.6, 0.8, 1.6]
    assert [line.get_alpha() for line in ax.lines] == [1.0, 0.45, 1.0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["h:5", "h:3"]
    assert ax.get_title() == "Gender probes, last layer (positive = male); experts labelled"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("recall", "precision")
    plt.close(fig)
    fig, ax = plt.subplots()
    assert probes.plot_pr_curves(res, [0], attribute="race", where="layer 3", ax=ax) is fig
    assert ax.get_title().startswith("Race probes, layer 3 (positive = male)")
    plt.close(fig)
    with pytest.raises(FairVLMError, match=r"experts \[7\]"):
        probes.plot_pr_curves(res, [4, 7])
    res.positive = None
    with pytest.raises(FairVLMError, match="binary"):
        probes.plot_pr_curves(res, [4])


def test_plot_layer_head_ap_heatmap_holds_the_grid():
    import matplotlib.pyplot as plt
    import pandas as pd

    t = pd.DataFrame({"layer": [1, 1, 1, 0, 0, 0], "head": [2, 0, 1, 0, 1, 2],
                      "ap": [0.25, 0.5, 0.75, 0.1, 0.2, 0.3]})
    fig = probes.plot_layer_head_ap(t)
    ax = fig.axes[0]
    # cells row by row: layer 1 (L1) then layer 2 (L2), heads in order
    np.testing.assert_allclose(np.asarray(ax.collections[0].get_array()).ravel(), [0.1, 0.2, 0.3, 0.5, 0.75, 0.25])
    assert [t.get_text() for t in ax.texts] == ["0.10", "0.20", "0.30", "0.50", "0.75", "0.25"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["L1", "L2"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["h1", "h2", "h3"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("head", "layer")
    assert fig.axes[1].get_ylabel() == "held-out AP (gender)"       # the colour bar
    assert tuple(fig.get_size_inches()) == pytest.approx((0.55 * 3 + 2, 0.4 * 2 + 1.2))
    plt.close(fig)
    wide = pd.DataFrame({"layer": 0, "head": range(13), "ap": 0.5})
    fig = probes.plot_layer_head_ap(wide, label="AP")
    assert not fig.axes[0].texts and fig.axes[1].get_ylabel() == "AP"   # no annotations beyond 12 heads
    plt.close(fig)
    with pytest.raises(FairVLMError, match="layer"):
        probes.plot_layer_head_ap(t.drop(columns="layer"))


def test_plot_neuron_aps_puts_experts_on_top_and_others_below():
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    aps = {1: [0.9, 0.8, 0.85, 0.3], 5: [0.5, 0.6, 0.55, 0.52], 3: [0.1, 0.2, 0.15, 0.12]}
    neurons = pd.DataFrame([{"head": h, "neuron": i, "ap": a} for h, v in aps.items() for i, a in enumerate(v)])
    fig = probes.plot_neuron_aps(neurons, [1, 5], [3], threshold=0.42)
    axes = np.array(fig.axes).reshape(2, 2)
    assert [ax.get_title() for ax in axes.ravel()] == ["expert h:2", "expert h:6", "other h:4", ""]
    assert [ax.get_xlabel() for ax in axes.ravel()] == ["neuron AP (gender)"] * 3 + [""]
    for ax, h, colour in ((axes[0, 0], 1, 0), (axes[0, 1], 5, 0), (axes[1, 0], 3, 1)):
        assert len(ax.patches) == 25 and sum(p.get_height() for p in ax.patches) == 4
        lo = min(p.get_x() for p in ax.patches)
        hi = max(p.get_x() + p.get_width() for p in ax.patches)
        assert (lo, hi) == pytest.approx((min(aps[h]), max(aps[h])))
        assert ax.patches[0].get_facecolor()[:3] == pytest.approx(sns.color_palette()[colour])
        assert [tuple(line.get_xdata()) for line in ax.lines] == [(0.42, 0.42)]
    assert not axes[1, 1].patches                                 # fewer other heads than experts: empty panel
    plt.close(fig)
    with pytest.raises(FairVLMError, match="at most as long"):
        probes.plot_neuron_aps(neurons, [1], [3, 5], threshold=0.42)
    with pytest.raises(FairVLMError, match=r"heads \[7\]"):
        probes.plot_neuron_aps(neurons, [1, 7], [3], threshold=0.42)


def test_plot_planted_vs_retrieved_scatters_each_variant():
    import matplotlib.pyplot as plt
    import pandas as pd

    q = pd.DataFrame({"variant": ["none", "edit", "none", "other", "edit", "none"],
                      "planted_p_man": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                      "topk_male_share": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]})
    fig = retrieval.plot_planted_vs_retrieved(q, ["edit", "none"])
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), [[0.2, 0.8], [0.5, 0.5]])
    np.testing.assert_allclose(ax.collections[1].get_offsets(), [[0.1, 0.9], [0.3, 0.7], [0.6, 0.4]])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["edit", "none"]
    assert tuple(ax.lines[0].get_ydata()) == (0.5, 0.5)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("planted share of men in training", "share of men in top-k")
    plt.close(fig)
    with pytest.raises(FairVLMError, match="'missing'"):
        retrieval.plot_planted_vs_retrieved(q, ["none", "missing"])
    with pytest.raises(FairVLMError, match="planted_p_man"):
        retrieval.plot_planted_vs_retrieved(q.drop(columns="planted_p_man"))


def test_plot_top_retrievals_shows_the_ranked_images_before_and_after():
    import matplotlib.pyplot as plt
    import pandas as pd

    images = [np.full((4, 4, 3), 40 * i, dtype=np.uint8) for i in range(4)]
    meta = pd.DataFrame({"gender": ["male", "female", "male", "female"], "race": ["white", "black", "black", "white"],
                         "scenario": ["a", "b", "b", "a"]})
    queries = pd.DataFrame({"key": ["a", "b"], "prompt": ["pa", "pb"], "role": ["a", "b"]})
    data = retrieval.AuditData(
        galleries={"g": {"meta": meta, "pixels": None, "image": images.__getitem__}}, probe_meta=None,
        probe_pixels=None, probe_sets=None,
        scenario_suites=[{"name": "s", "gallery": "g", "key_col": "scenario", "queries": queries}],
        recall_suite=None, zeroshot_suite=None, word_gallery="g",
        planted_scen=pd.DataFrame({"scenario": ["a", "b"], "gender_skew": [0.1, -0.4]}))   # shows "pb"
    gal = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])                  # rows: "pa", "pb"
    image_emb = {"none": {"g": gal}, "edit": {"g": gal.flip(1)}}
    fig = retrieval.plot_top_retrievals(data, image_emb, {"none": text, "edit": text}, {"pa": 0, "pb": 1},
                                        after="edit", k=3)
    axes = np.array(fig.axes).reshape(2, 3)
    # "pb" = (0, 1): before, images 1, 2, 3; after (flipped gallery), images 0, 3, 2
    shown = [[int(ax.images[0].get_array()[0, 0, 0]) // 40 for ax in row] for row in axes]
    assert shown == [[1, 2, 3], [0, 3, 2]]
    assert [ax.get_xlabel() for ax in axes[1]] == ["male, white *", "female, white *", "male, black"]
    assert (axes[0, 0].get_ylabel(), axes[1, 0].get_ylabel()) == ("before", "after")
    assert fig.get_suptitle() == '"pb": no intervention (top) vs edit (bottom); * = other scenario'
    assert tuple(fig.get_size_inches()) == pytest.approx((11 * 3 / 8, 3.3))
    plt.close(fig)
    with pytest.raises(FairVLMError, match="'male \\(experts\\)'"):
        retrieval.plot_top_retrievals(data, image_emb, {"none": text, "edit": text}, {"pa": 0, "pb": 1})
    with pytest.raises(FairVLMError, match="'pb'"):
        retrieval.plot_top_retrievals(data, image_emb, {"none": text, "edit": text}, {"pa": 0}, after="edit")


def _results_inputs(**over):
    import pandas as pd

    summary = pd.DataFrame({"variant": ["none", "x"], "ndkl_gender": [0.3, 0.2], "NDCG@k": [0.9, 0.8],
                            "mAP": [0.7, 0.6], "H_gender (word)": [0.5, 0.6], "t2i_R@5": [0.4, 0.3]})
    scores = {"queries": pd.DataFrame({"q": [1]}), "words": pd.DataFrame({"w": [2]}), "summary": summary}
    probe_table = pd.DataFrame({"attribute": ["gender"], "layer": [2], "head": [1], "head_1based": [2],
                                "accuracy": [0.8], "auroc": [0.9], "ap": [0.85], "expert": [True], "extra": [0]})
    kw = dict(model="testbed-clip", size="smoke", on_testbed=True,
              data=retrieval.AuditData(galleries={}, probe_meta=None, probe_pixels=None, probe_sets=None,
                                       scenario_suites=[], recall_suite=None, zeroshot_suite=None, word_gallery="g",
                                       description="tiny world"),
              check={"identity_err": 1e-7, "batch_err": 2e-7, "identity_scale": 3.0},
              gender_experts=[2, 10, 11], race_experts=[0], expert_ap=0.9, other_ap=0.6,
              gap={"effect": 0.3, "interval": [0.2, 0.4], "null": 0.05, "null_interval": [0.0, 0.1], "other": 1},
              audit={"base_ndkl": 0.3, "floor_hi": 0.2}, scores=scores, floor=_floor("s"), main_suite="s",
              planted=pd.DataFrame({"variant": ["x", "none"], "spearman_gender": [0.1, 0.7]}),
              timing={"ratio": 1.01}, verdicts=pd.DataFrame({"claim": ["c1", "c2"], "verdict": ["reproduced", "partly"],
                                                            "rule": ["r", "r"]}),
              runtime_s=12.5, probe_table=probe_table, logreg_table=pd.DataFrame({"l": [1]}),
              layer_table=pd.DataFrame({"y": [1]}), trap_table=pd.DataFrame({"t": [1]}),
              neuron_table=pd.DataFrame({"n": [1]}))
    kw.update(over)
    return kw


def test_head_audit_results_assembles_the_results_file():
    kw = _results_inputs()
    out = retrieval.head_audit_results(**kw)
    assert set(out) == {"headline", "provenance", "tables"}
    h = out["headline"]
    assert list(h) == ["model", "identity_max_abs_error", "batch_vs_single_max_abs_error", "gender_experts_1based",
                       "race_experts_1based", "k_experts", "gender_expert_mean_ap", "gender_other_mean_ap",
                       "expert_gap", "ndkl_gender_baseline", "ndkl_random_floor", "ndkl_gender_by_variant",
                       "ndcg_by_variant", "map_by_variant", "entropy_gender_word_by_variant", "utility_by_variant",
                       "planted_spearman_gender_baseline", "timing", "verdicts", "runtime_s"]
    assert h["model"] == "testbed-clip" and h["identity_max_abs_error"] == 1e-7
    assert h["batch_vs_single_max_abs_error"] == 2e-7
    assert h["gender_experts_1based"] == [3, 11, 12] and h["race_experts_1based"] == [1] and h["k_experts"] == 3
    assert (h["gender_expert_mean_ap"], h["gender_other_mean_ap"]) == (0.9, 0.6)
    assert h["expert_gap"] == {"effect": 0.3, "interval": [0.2, 0.4], "null": 0.05, "null_interval": [0.0, 0.1]}
    assert h["ndkl_gender_baseline"] == 0.3
    assert h["ndkl_random_floor"] == retrieval.floor_summary(kw["floor"], "s")
    assert h["ndkl_gender_by_variant"] == {"none": 0.3, "x": 0.2}
    assert h["utility_by_variant"] == {"t2i_R@5": {"none": 0.4, "x": 0.3}}
    assert h["planted_spearman_gender_baseline"] == 0.7              # the "none" row, not the first
    assert h["timing"] == {"ratio": 1.01} and h["runtime_s"] == 12.5
    assert h["verdicts"] == {"c1": "reproduced", "c2": "partly"}
    assert out["provenance"] == {
        "models": ["testbed-clip (size=smoke)"],
        "data": ["tiny world", "So-B-IT taxonomy (ameliagmz/Debiasing_CLIP_Neural_Interventions)"],
        "note": "testbed numbers describe the synthetic world, not the paper's models or data"}
    t = out["tables"]
    assert list(t) == ["probe_heads", "probe_heads_logreg", "probe_layers", "probe_init_trap", "neurons", "variants",
                       "random_floor", "scenario_queries", "words", "planted_vs_retrieved", "paper_vs_book"]
    assert list(t["probe_heads"].columns) == ["attribute", "layer", "head", "head_1based", "accuracy", "auroc",
                                              "ap", "expert"]        # the extra column is dropped
    for name, key in (("probe_heads_logreg", "logreg_table"), ("probe_layers", "layer_table"),
                      ("probe_init_trap", "trap_table"), ("neurons", "neuron_table"), ("random_floor", "floor"),
                      ("planted_vs_retrieved", "planted"), ("paper_vs_book", "verdicts")):
        assert t[name] is kw[key]
    assert t["variants"] is kw["scores"]["summary"] and t["scenario_queries"] is kw["scores"]["queries"]
    assert t["words"] is kw["scores"]["words"]
    # the paper profile: no planted truth, a hub model named without a size
    paper = retrieval.head_audit_results(**_results_inputs(model="openai/clip-vit-base-patch32", on_testbed=False,
                                                           planted=None))
    assert paper["provenance"]["models"] == ["openai/clip-vit-base-patch32"]
    assert paper["provenance"]["note"] == "paper profile"
    assert paper["headline"]["planted_spearman_gender_baseline"] is None
    assert paper["tables"]["planted_vs_retrieved"].empty


def test_head_audit_results_names_what_is_missing():
    kw = _results_inputs()
    with pytest.raises(FairVLMError, match="gap"):
        retrieval.head_audit_results(**{**kw, "gap": {"effect": 0.3}})
    with pytest.raises(FairVLMError, match="scores"):
        retrieval.head_audit_results(**{**kw, "scores": {"summary": kw["scores"]["summary"]}})
    with pytest.raises(FairVLMError, match="probe_table"):
        retrieval.head_audit_results(**{**kw, "probe_table": kw["probe_table"].drop(columns="expert")})
    with pytest.raises(FairVLMError, match="verdicts"):
        retrieval.head_audit_results(**{**kw, "verdicts": kw["verdicts"].drop(columns="claim")})
    with pytest.raises(FairVLMError, match="'missing'"):
        retrieval.head_audit_results(**{**kw, "main_suite": "missing"})


def test_strength_moves_part_of_the_way_to_the_prototype(model, pixels):
    protos = ch.head_prototypes(ch.head_contributions(model, pixels, layer=-1), ["a", "b"] * 3 + ["a"], layer=-1)
    hidden = ch.layer_inputs(model, pixels, layer=-1)
    base = ch.embed_from_layer(model, hidden, layer=-1)
    full = ch.embed_from_layer(model, hidden, layer=-1, edits=[ch.prototype_replacement(protos, "a", [0, 1])])
    half = ch.embed_from_layer(model, hidden, layer=-1,
                               edits=[ch.prototype_replacement(protos, "a", [0, 1], strength=0.5)])
    d_full = ch.edit_displacement(model, hidden, [ch.prototype_replacement(protos, "a", [0, 1])], layer=-1, base=base)
    d_half = ch.edit_displacement(model, hidden, [ch.prototype_replacement(protos, "a", [0, 1], strength=0.5)],
                                  layer=-1, base=base)
    assert 0 < d_half < d_full
    assert not torch.allclose(half, full) and not torch.allclose(half, base)
    same = ch.embed_from_layer(model, hidden, layer=-1,
                               edits=[ch.prototype_replacement(protos, "a", [0, 1], strength=1.0)])
    torch.testing.assert_close(same, full)
    # neuron-masked replacement honours the strength too
    mask = torch.zeros(2, 48, dtype=torch.bool)
    mask[:, :10] = True
    m_half = ch.embed_from_layer(model, hidden, layer=-1, edits=[ch.prototype_replacement(
        protos, "a", [0, 1], neurons=mask, strength=0.5)])
    assert not torch.allclose(m_half, base)
    # matching: a weaker control found by bisection reaches the target displacement
    m = ch.match_strength(model, hidden, protos, "a", [2, 3], d_half, layer=-1, base=base)
    assert m["matched"] and 0 < m["strength"] <= 1 and abs(m["displacement"] - d_half) <= 0.05 * d_half
    # matched on a readout instead (the KL of a zero-shot distribution over K texts)
    readout = torch.nn.functional.normalize(torch.randn(5, base.shape[1], generator=torch.Generator().manual_seed(3)),
                                            dim=-1)
    k_half = ch.edit_displacement(model, hidden, [ch.prototype_replacement(protos, "a", [0, 1], strength=0.5)],
                                  layer=-1, base=base, readout=readout)
    assert k_half > 0
    mk = ch.match_strength(model, hidden, protos, "a", [2, 3], k_half, layer=-1, base=base, readout=readout)
    assert mk["matched"] and abs(mk["displacement"] - k_half) <= 0.05 * k_half
    with pytest.raises(ParameterError, match="readout"):
        ch.edit_displacement(model, hidden, [], layer=-1, readout=torch.ones(3, 7))
    big = ch.match_strength(model, hidden, protos, "a", [2], 10.0, layer=-1, base=base)
    assert big["strength"] == 1.0 and not big["matched"]
    for bad in (0.0, 1.5, True):
        with pytest.raises(ParameterError, match="strength"):
            ch.prototype_replacement(protos, "a", [0], strength=bad)
    with pytest.raises(ParameterError, match="strength"):
        ch.HeadIntervention(heads=(0,), mode="zero", strength=0.5)


def test_control_check_flags_a_damaging_control():
    import pandas as pd

    summ = pd.DataFrame({"variant": ["none", "male (experts)", "c1", "c2"], "heads": ["", "1,2", "3,4", "5,6"],
                         "t2i_R@1": [0.9, 0.9, 0.89, 0.9], "i2t_R@1": [0.97, 0.97, 0.96, 0.97],
                         "zero_shot_acc": [0.94, 0.94, 0.93, 0.94], "maxskew_gender": [0.14, 0.14, 0.16, 0.15]})
    rng = np.random.default_rng(0)
    base = (rng.random(400) < 0.9).astype(float)
    intact = {"none": base, "male (experts)": base, "c1": base.copy(), "c2": base.copy()}
    intact["c1"][:4] = 1 - intact["c1"][:4]
    table, rows = retrieval.control_check({"summary": summ, "hits": intact}, ["c1", "c2"],
                                          matches=[{"strength": 0.4, "displacement": 0.01, "matched": True,
                                                    "target": 0.01},
                                                   {"strength": 0.5, "displacement": 0.01, "matched": True,
                                                    "target": 0.01}])
    assert len(rows) == 1
    v = rows[0]["verdict"]
    assert v.verdict == "reproduced" and v.asserts == "no-change"
    t = table.set_index("variant")
    assert t.loc["c1", "Δ zero_shot_acc"] == pytest.approx(-0.01) and t.loc["c2", "strength"] == 0.5
    damaged = dict(intact, c1=np.where(rng.random(400) < 0.3, 0.0, base), c2=np.where(rng.random(400) < 0.3, 0.0, base))
    _, rows = retrieval.control_check({"summary": summ, "hits": damaged}, ["c1", "c2"])
    assert rows[0]["verdict"].verdict == "not reproduced"
    with pytest.raises(FairVLMError, match="not scored"):
        retrieval.control_check({"summary": summ, "hits": intact}, ["c3"])


def test_expert_claim_names_the_tested_model():
    text = probes.expert_claim("testbed-clip", 2, 8)
    assert "testbed-clip" in text and "2" in text and "8" in text and "ViT-B/32" in text


# ------------------------------------------------------------------ the CLS cache of the last layer
def _cache_edits(protos, d):
    mask = torch.zeros(2, d, dtype=torch.bool)
    mask[:, ::3] = True
    return [[], [ch.prototype_replacement(protos, "b", [1, 5])],
            [ch.prototype_replacement(protos, "a", [0, 2], strength=0.37)],
            [ch.zero_ablation([3]), ch.damping([4], 0.2)],
            [ch.prototype_replacement(protos, "a", [1, 4], neurons=mask, strength=0.6)]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cls_cache_equals_the_hooked_forward_pass(attn, pixels):
    # per-head contributions add up at the CLS token and nothing mixes tokens after the last
    # layer's attention, so an edit scored from the cache equals the hooked forward pass
    m = _clip(attn)
    cache = ch.cls_cache(m, pixels, batch_size=3)
    assert len(cache) == 7 and cache.heads.shape == (7, 6, 48) and cache.resid_mid.shape == (7, 48)
    protos = ch.head_prototypes(cache.heads, ["a", "b"] * 3 + ["a"])
    for edits in _cache_edits(protos, 48):
        fast = ch.embed_from_cache(m, cache, edits)
        full = retrieval.embed_images(m, pixels, edits=edits)
        torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    sub = cache.subset([0, 3])
    torch.testing.assert_close(ch.embed_from_cache(m, sub), retrieval.embed_images(m, pixels[[0, 3]]),
                               atol=1e-5, rtol=1e-5)
    assert _no_hooks(m)


def test_cls_cache_refuses_edits_it_cannot_score(model, pixels):
    cache = ch.cls_cache(model, pixels)
    with pytest.raises(ParameterError, match="hooked forward"):
        ch.embed_from_cache(model, cache, [ch.zero_ablation([0], layer=1)])
    with pytest.raises(ParameterError, match="hooked forward"):
        ch.edit_delta(cache, [ch.HeadIntervention(heads=(0,), mode="zero", layer=-1, token=3)])
    with pytest.raises(ParameterError, match="two interventions"):
        ch.edit_delta(cache, [ch.zero_ablation([0]), ch.damping([0, 1], 0.5)])
    with pytest.raises(ParameterError, match="CLSCache"):
        ch.embed_from_cache(model, torch.zeros(3, 48))
    assert ch.cache_applies(model, [{"edits": [ch.zero_ablation([1])]}])
    assert not ch.cache_applies(model, [{"edits": [ch.zero_ablation([1], layer=0)]}])


def test_embed_variants_uses_the_cache_only_where_it_applies(model, pixels, monkeypatch):
    protos = ch.head_prototypes(ch.head_contributions(model, pixels), ["a", "b"] * 3 + ["a"])
    last = [{"variant": "none", "family": "baseline", "edits": []},
            {"variant": "p", "family": "prototype", "edits": [ch.prototype_replacement(protos, "a", [1, 2])]}]
    calls = []
    monkeypatch.setattr(ch, "layer_inputs", lambda *a, **k: calls.append(1) or (_ for _ in ()).throw(AssertionError))
    out = ch.embed_variants(model, {"g": pixels}, last)
    assert not calls
    torch.testing.assert_close(out["p"]["g"], retrieval.embed_images(model, pixels, edits=last[1]["edits"]),
                               atol=1e-5, rtol=1e-5)
    monkeypatch.undo()
    early = last + [{"variant": "z0", "family": "zero", "edits": [ch.zero_ablation([0], layer=0)]}]
    out = ch.embed_variants(model, {"g": pixels}, early, layer=0)
    torch.testing.assert_close(out["z0"]["g"], retrieval.embed_images(model, pixels, edits=early[2]["edits"]),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_cls_cache_on_testbed_clip():
    from fairvlm.models import load

    lm = load("testbed-clip", size="smoke")
    g = torch.Generator().manual_seed(0)
    size = lm.model.config.vision_config.image_size
    pv = torch.randn(6, 3, size, size, generator=g)
    cache = ch.cls_cache(lm.model, pv)
    protos = ch.head_prototypes(cache.heads, ["a", "b"] * 3)
    for edits in _cache_edits(protos, cache.heads.shape[2]):
        torch.testing.assert_close(ch.embed_from_cache(lm.model, cache, edits),
                                   retrieval.embed_images(lm, pv, edits=edits), atol=1e-5, rtol=1e-5)


def test_binary_ap_and_auroc_equal_scikit_learn():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(0)
    for t in range(60):
        n = int(rng.integers(3, 50))
        y = rng.integers(0, 2, n)
        if y.sum() in (0, n):
            continue
        s = rng.integers(0, 4, (n, 3)).astype(float) if t % 2 else rng.normal(size=(n, 3))
        ap, auc = probes.binary_ap(y, s), probes.binary_auroc(y, s)
        for j in range(3):
            assert ap[j] == pytest.approx(average_precision_score(y, s[:, j]), abs=1e-12)
            assert auc[j] == pytest.approx(roc_auc_score(y, s[:, j]), abs=1e-12)
    assert probes.binary_ap([0, 1, 1], [0.1, 0.9, 0.4]) == pytest.approx(1.0)
    with pytest.raises(ParameterError, match="positive"):
        probes.binary_ap([0, 0], [0.1, 0.2])
    with pytest.raises(ParameterError, match="both classes"):
        probes.binary_auroc([1, 1], [0.1, 0.2])


def test_logreg_newton_reaches_scikit_learns_optimum():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 300, 6))
    y = (x[0] @ rng.normal(size=6) + rng.normal(size=300) > 0).astype(int)
    w, b = probes.logreg_newton(x, y)
    for h in range(2):
        clf = LogisticRegression(tol=1e-10, max_iter=10_000).fit(x[h], y)
        np.testing.assert_allclose(w[h], clf.coef_[0], atol=1e-5)
        assert b[h] == pytest.approx(clf.intercept_[0], abs=1e-5)
    with pytest.raises(ParameterError):
        probes.logreg_newton(x, y + 1)


def test_first_hit_rank_equals_a_stable_sort():
    from fairvlm import metrics

    rng = np.random.default_rng(2)
    for t in range(40):
        q, n = int(rng.integers(1, 12)), int(rng.integers(2, 30))
        s = rng.integers(0, 3, (q, n)).astype(float) if t % 2 else rng.normal(size=(q, n))
        rel = rng.random((q, n)) < 0.2
        rel[np.arange(q), rng.integers(0, n, q)] = True
        f = retrieval.first_hit_rank(s, rel)
        order = np.argsort(-s, axis=1, kind="stable")
        assert (np.argmax(np.take_along_axis(rel, order, axis=1), axis=1) == f).all()
        r = metrics.recall_at_k(s, rel, (1, 5))
        assert np.mean(f < 1) == pytest.approx(r[1]) and np.mean(f < 5) == pytest.approx(r[5])
    with pytest.raises(DataError, match="no relevant"):
        retrieval.first_hit_rank(np.zeros((2, 3)), np.array([[True, False, False], [False] * 3]))


def test_control_check_compares_the_controls_with_the_edit_per_query():
    import pandas as pd

    rng = np.random.default_rng(1)
    n = 200
    ap_edit = rng.uniform(0.8, 1.0, n)
    sk_edit = rng.uniform(0.1, 0.2, n)
    rows = []
    for v, dap, dsk in (("none", 0.0, 0.0), ("male (experts)", 0.0, 0.0), ("c1", -0.001, 0.001),
                        ("c2", 0.0005, -0.0005), ("bad", -0.05, 0.05)):
        jitter = rng.normal(0, 0.002, n) if v in ("c1", "c2", "bad") else 0.0
        rows.append(pd.DataFrame({"suite": "s", "query": np.arange(n), "variant": v, "ap": ap_edit + dap + jitter,
                                  "maxskew_gender": sk_edit + dsk + jitter}))
    q = pd.concat(rows, ignore_index=True)
    summ = pd.DataFrame({"variant": ["none", "male (experts)", "c1", "c2", "bad"], "heads": [""] * 5,
                         "mAP": [0.9, 0.9, 0.899, 0.901, 0.85]})
    hits = {v: np.ones(50) for v in summ["variant"]}
    table, out = retrieval.control_check({"summary": summ, "hits": hits, "queries": q}, ["c1", "c2"],
                                         main_suite="s", others=["bad"],
                                         other_matches=[{"strength": 1.0, "displacement": 0.1, "matched": False}])
    assert [r["verdict"].verdict for r in out[1:]] == ["reproduced", "reproduced"]
    assert table.set_index("variant").loc["bad", "Δ mAP"] == pytest.approx(-0.05)
    _, out = retrieval.control_check({"summary": summ, "hits": hits, "queries": q}, ["bad"], main_suite="s")
    assert [r["verdict"].verdict for r in out[1:]] == ["not reproduced", "not reproduced"]
    with pytest.raises(FairVLMError, match="no column"):
        retrieval.control_check({"summary": summ, "hits": hits, "queries": q}, ["c1"], main_suite="s",
                                margins={"ndcg": 0.01})


def test_match_utility_finds_the_strongest_edit_within_the_edits_cost(model, pixels):
    cache = ch.cls_cache(model, pixels)
    protos = ch.head_prototypes(cache.heads, ["a", "b"] * 3 + ["a"])
    emb = ch.embed_from_cache(model, cache)
    queries = emb[[0, 1, 2]] + 0.05 * torch.randn(3, emb.shape[1], generator=torch.Generator().manual_seed(0))
    queries = torch.nn.functional.normalize(queries, dim=-1)
    relevant = np.zeros((3, 7), dtype=bool)
    relevant[0, [0, 3]] = relevant[1, [1, 4]] = relevant[2, [2, 5, 6]] = True
    m0 = ch.retrieval_map(emb, queries, relevant)
    assert 0 < m0 <= 1
    full = m0 - ch.retrieval_map(ch.embed_from_cache(model, cache, [ch.prototype_replacement(protos, "a", [0, 1, 2])]),
                                 queries, relevant)
    m = ch.match_utility(model, cache, protos, "a", [0, 1, 2], 10.0, queries=queries, relevant=relevant)
    assert m["strength"] == 1.0 and m["matched"] and m["displacement"] == pytest.approx(full)
    if full > 1e-3:   # a target below the full edit's cost gives a weaker edit that stays within it
        m = ch.match_utility(model, cache, protos, "a", [0, 1, 2], full / 2, queries=queries, relevant=relevant)
        assert m["strength"] < 1.0 and m["displacement"] <= full / 2 + 1e-4
    with pytest.raises(ParameterError, match="CLSCache"):
        ch.match_utility(model, torch.zeros(7, 48), protos, "a", [0], 0.0, queries=queries, relevant=relevant)
    with pytest.raises(ParameterError, match="relevant"):
        ch.retrieval_map(emb, queries, relevant[:, :3])
    # another edit family through make=: zero ablation as damping toward zero (strength 1 = zero ablation)
    zero_full = m0 - ch.retrieval_map(ch.embed_from_cache(model, cache, [ch.zero_ablation([0, 1, 2])]), queries, relevant)
    calls = []

    def make(st):
        calls.append(st)
        return ch.damping([0, 1, 2], 1.0 - st)

    z = ch.match_utility(model, cache, None, None, [0, 1, 2], 10.0, queries=queries, relevant=relevant, make=make)
    assert z["strength"] == 1.0 and z["displacement"] == pytest.approx(zero_full) and calls == [1.0]
    if zero_full > 1e-3:
        z = ch.match_utility(model, cache, None, None, [0, 1, 2], zero_full / 2, queries=queries, relevant=relevant,
                             make=make)
        assert z["strength"] < 1.0 and z["displacement"] <= zero_full / 2 + 1e-4
    with pytest.raises(ParameterError, match="make"):
        ch.match_utility(model, cache, None, None, [0], 0.0, queries=queries, relevant=relevant, make="zero")
