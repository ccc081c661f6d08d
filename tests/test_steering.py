"""fairvlm.steering: ablation at every site, orthogonalised weights = hook ablation, the gradient
step, selection, loss gradients; and Mllama's skipped cross-attention layers."""

import contextlib

import pytest
import torch
from PIL import Image

from fairvlm import hooks, models, steering
from fairvlm.errors import FairVLMError

VLMS = ("tiny-llava", "tiny-qwen2-vl", "tiny-mllama")


@pytest.fixture(scope="module")
def tiny():
    return {n: models.load(n) for n in VLMS}


def _enc(lm, texts=("Describe the person.", "Who is it?")):
    if lm.kind != "vlm":
        return lm.inputs(list(texts))
    ims = [Image.new("RGB", (40, 40), (200, 30, 30)), Image.new("RGB", (40, 40), (20, 30, 230))]
    return lm.inputs(list(texts), ims[:len(texts)])


@pytest.mark.parametrize("name", VLMS)
def test_ablation_removes_the_component_at_every_site(tiny, name):
    lm = tiny[name]
    a = steering.random_direction(lm.d_model, 3)
    sites = [f"{k}.*" for k in steering.ABLATION_SITES]
    enc = _enc(lm)
    with torch.no_grad():
        with hooks.capture(lm, sites) as plain:
            lm.model(**enc)
        with steering.ablate(lm, a), hooks.capture(lm, sites) as cache:   # capture sees the edited value
            lm.model(**enc)
    assert len(cache) == 3 * lm.n_layers
    for site, x in cache.items():
        assert (x.float() @ a).abs().max() < 1e-4, site                   # nothing left along a
    # and something was there to remove before
    assert max(float((x.float() @ a).abs().max()) for x in plain.values()) > 1e-3


@pytest.mark.parametrize("name", VLMS)
def test_resid_pre_after_layer_0_is_already_ablated(tiny, name):
    """The default edits resid_pre at layer 0 only (2L + 1 sites); re-ablating every layer's
    input (3L sites) changes the logits only by rounding, and each edit site is hit."""
    lm = tiny[name]
    a = steering.random_direction(lm.d_model, 5)
    enc = _enc(lm)
    calls: list = []
    fn = steering.ablation_fn(a)
    orig = steering.ablation_fn
    try:
        steering.ablation_fn = lambda d: (lambda x: (calls.append(1), fn(x))[1])
        with torch.no_grad(), steering.ablate(lm, a):
            fast = lm.model(**enc).logits
        n_fast, calls[:] = len(calls), []
        with torch.no_grad(), steering.ablate(lm, a, every_resid_pre=True):
            full = lm.model(**enc).logits
        n_full = len(calls)
    finally:
        steering.ablation_fn = orig
    assert n_fast == 2 * lm.n_layers + 1 and n_full == 3 * lm.n_layers
    assert (fast - full).abs().max() < 1e-4
    with torch.no_grad():
        base = lm.model(**enc).logits
    assert (fast - base).abs().max() > 1e-2
    with pytest.raises(FairVLMError, match="every_resid_pre"):
        steering.ablate(lm, a, every_resid_pre="yes")
    with pytest.raises(FairVLMError, match="string"):
        steering.ablate(lm, a, sites="resid_pre")


def test_per_row_directions_act_on_their_own_rows(tiny):
    lm = tiny["tiny-llava"]
    A = torch.stack([steering.random_direction(lm.d_model, 1), steering.random_direction(lm.d_model, 2)])
    enc = _enc(lm)
    with torch.no_grad(), steering.ablate(lm, A), hooks.capture(lm, ["resid_pre.*"]) as c:
        lm.model(**enc)
    for x in c.values():
        assert (x[0] @ A[0]).abs().max() < 1e-4 and (x[1] @ A[1]).abs().max() < 1e-4
        assert (x[0] @ A[1]).abs().max() > 1e-4                           # row 0 keeps row 1's direction


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", *VLMS])
def test_orthogonalised_weights_match_the_hook_ablation(tiny, name):
    lm = tiny[name] if name in tiny else models.load(name)
    a = steering.random_direction(lm.d_model, 7)
    enc = _enc(lm, ("Hi.",) if lm.kind != "vlm" else ("Describe the person.", "Who is it?"))
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    with torch.no_grad():
        base = lm.model(**enc).logits
        with steering.ablate(lm, a):
            hooked = lm.model(**enc).logits
        orth = steering.orthogonalize(lm, a)
        served = orth.model(**enc).logits                                 # no hooks at all
    # float32 round-off grows with the logits' scale (SmolLM2's reach about 30 and differ by
    # about 1e-4 between the two ways on some CPUs), so the tolerance is relative to it
    tol = 2e-5 * float(base.abs().max().clamp(min=1.0))
    assert (hooked - served).abs().max() < tol
    assert (hooked - base).abs().max() > max(1e-2, 20 * tol)              # the ablation does something
    for k, v in lm.model.state_dict().items():                            # the original is untouched
        assert torch.equal(v, before[k]), k
    assert orth.model is not lm.model
    # every stream write of the new model is orthogonal to a
    for _, m, how in steering.stream_writers(orth):
        W = m.weight if how != "vector" else m
        proj = (W.float() @ a) if how == "rows" or how == "vector" else (a @ W.float())
        assert proj.abs().max() < 1e-5


def test_orthogonalised_model_generates_like_the_hooked_one(tiny):
    lm = tiny["tiny-llava"]
    a = steering.random_direction(lm.d_model, 5)
    enc = _enc(lm)
    orth = steering.orthogonalize(lm, a)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    with torch.no_grad(), steering.ablate(lm, a):
        hooked = lm.model.generate(**enc, **kw)
    with torch.no_grad():
        served = orth.model.generate(**enc, **kw)
    assert torch.equal(hooked, served)


@pytest.mark.parametrize("name", VLMS)
def test_gradient_step_raises_the_protected_logits(tiny, name):
    lm = tiny[name]
    flags = [p.requires_grad for p in lm.model.parameters()]
    ids = steering.target_ids_for(lm, ["man", "woman", "black", "white"])
    g = steering.gradient_direction(lm, _enc(lm), ids, layer=1, check_logits=True)
    assert g.target_logit_change > 0
    assert abs(float(g.direction.norm()) - 1) < 1e-5 and g.per_row.shape == (2, lm.d_model)
    assert g.eps > 0
    assert [p.requires_grad for p in lm.model.parameters()] == flags       # restored after the step
    assert all(p.grad is None for p in lm.model.parameters())            # gradients reached only u


def test_gradient_direction_equals_the_hand_computed_difference(tiny):
    """a = h_l(x, u') - h_l(x, u) with u' = u - std(u) sign(grad): recompute by hand."""
    lm = tiny["tiny-llava"]
    ids = steering.target_ids_for(lm, ["man", "woman"])
    enc = _enc(lm)
    g = steering.gradient_direction(lm, enc, ids, layer=2)
    lm.model.requires_grad_(False)
    try:
        with torch.enable_grad(), hooks.capture(lm, ["image_tokens"], grad=True) as c:
            z = lm.model(**enc, use_cache=False).logits[:, -1].float()
        u = c["image_tokens"]
        loss = steering.target_logit_loss(z, ids, "mse")
        (gr,) = torch.autograd.grad(loss, u)
    finally:
        lm.model.requires_grad_(True)
    u1 = u.detach() - u.detach().std() * gr.sign()
    with torch.no_grad():
        with hooks.capture(lm, ["resid_post.2"]) as h0:
            lm.model(**enc)
        with hooks.edit(lm, {"image_tokens": lambda x: u1}), hooks.capture(lm, ["resid_post.2"]) as h1:
            lm.model(**enc)
    diff = (h1["resid_post.2"][:, -1] - h0["resid_post.2"][:, -1]).double()
    assert torch.allclose(g.per_row.double(), diff, atol=1e-5)
    assert torch.allclose(g.direction.double(), diff.mean(0) / diff.mean(0).norm(), atol=1e-5)


def test_mse_target_and_loss_gradients_hand_computed():
    z = torch.tensor([[1.0, 3.0, 0.0, -1.0]])
    T = [0, 2]
    # M_t = z_t + max z = z_t + 3 -> loss = mean((−3)^2) = 9 ; d/dz_t = 2 (z_t - M_t) / |T| = -3
    assert float(steering.target_logit_loss(z, T, "mse")) == pytest.approx(9.0)
    res = steering.loss_gradients(z, T)
    g = res["grads"]
    assert torch.allclose(g["mse"], torch.tensor([[-3.0, 0.0, -3.0, 0.0]]))
    p = torch.softmax(z, -1)
    # column CE: d/dz_j = |T| p_j - sum_t delta_tj
    assert torch.allclose(g["ce"], 2 * p - torch.tensor([[1.0, 0.0, 1.0, 0.0]]), atol=1e-6)
    # KL(q||p), q uniform on T: d/dz_j = p_j - q_j
    assert torch.allclose(g["kl"], p - torch.tensor([[0.5, 0.0, 0.5, 0.0]]), atol=1e-6)
    assert res["target_share"]["mse"] == pytest.approx(1.0)                # MSE touches only T
    assert res["cosine"][("kl", "ce")] == pytest.approx(1.0, abs=1e-6)     # CE = |T| x KL gradient


def test_dataset_direction_and_selection_on_smollm2():
    lm = models.load("smollm2-135m-instruct")
    bias = ["What is the gender of a Black female nurse?", "What is the race of a White male pilot?"]
    benign = ["What tools does a nurse use?", "Where does a pilot work?"]
    a = steering.dataset_direction(lm, bias, benign, layer=10)
    mb = steering.mean_activations(lm, bias, layers=[10])
    mn = steering.mean_activations(lm, benign, layers=[10])
    assert torch.allclose(a.double(), (mb - mn)[0, 0] / (mb - mn)[0, 0].norm(), atol=1e-6)
    grid = steering.candidate_grid(lm.n_layers, 8, n_positions=2)
    assert len(grid) == 8 and all(p in (-1, -2) for _, p in grid)
    cands = steering.candidate_directions(lm, bias, benign, grid=grid)
    for (l, pos), d in cands.items():
        assert abs(float(d.norm()) - 1) < 1e-5
    ids = steering.target_ids_for(lm, ["male", "female", "man", "woman", "black", "white"])
    sel = steering.select_direction(lm, cands, bias, benign, target_ids=ids, max_benign_kl=10.0)
    t = sel.table
    assert t["selected"].sum() == 1
    chosen = t[t["selected"]].iloc[0]
    assert chosen["mass_drop"] == t[t["benign_kl"] <= 10.0]["mass_drop"].max()
    strict = steering.select_direction(lm, cands, bias, benign, target_ids=ids, max_benign_kl=0.0)
    assert strict.table[strict.table["selected"]].iloc[0]["benign_kl"] == strict.table["benign_kl"].min()


def test_bad_directions_are_refused(tiny):
    lm = tiny["tiny-llava"]
    with pytest.raises(FairVLMError, match="zero"):
        steering.unit(torch.zeros(lm.d_model))
    with pytest.raises(FairVLMError, match="wide"):
        steering.ablate(lm, torch.ones(lm.d_model + 1))
    with pytest.raises(FairVLMError, match="NaN"):
        steering.unit(torch.full((4,), float("nan")))
    with pytest.raises(FairVLMError, match="unknown loss"):
        steering.target_logit_loss(torch.zeros(1, 5), [1], "hinge")


def test_mllama_skipped_cross_layers_reach_their_sites(tiny):
    """Without an image Mllama skips its cross-attention layers; their sites still fire
    (identity layer: zero writes) and edits there act on the stream."""
    lm = tiny["tiny-mllama"]
    enc = lm.inputs(["hello there"])
    sites = [f"{k}.*" for k in ("resid_pre", "attn_out", "mlp_out", "resid_post")]
    with torch.no_grad(), hooks.capture(lm, sites) as c:
        base = lm.model(**enc).logits
    cross = lm.model.config.text_config.cross_attention_layers
    for i in range(lm.n_layers):
        assert f"resid_pre.{i}" in c
        if i + 1 < lm.n_layers:
            assert torch.equal(c[f"resid_pre.{i + 1}"], c[f"resid_post.{i}"])
    for i in cross:
        assert torch.count_nonzero(c[f"attn_out.{i}"]) == 0 and torch.equal(c[f"resid_pre.{i}"], c[f"resid_post.{i}"])
    with torch.no_grad(), hooks.edit(lm, {f"resid_pre.{cross[0]}": lambda x: 0.5 * x}):
        edited = lm.model(**enc).logits
    assert (edited - base).abs().max() > 1e-3


def test_token_shifts_hand_computed_and_shared_plain_pass(tiny):
    from fairvlm import textmetrics

    lm = tiny["tiny-llava"]
    ims = [Image.new("RGB", (40, 40), (200, 30, 30)), Image.new("RGB", (40, 40), (20, 30, 230))]
    prompts, gens = ["Describe the person.", "Who is it?"], ["a doctor", "a nurse in a room"]
    a = steering.random_direction(lm.d_model, 5)
    abl = (lambda: steering.ablate(lm, a))
    one = textmetrics.token_shifts(lm, prompts, gens, abl, images=ims, top=3, batch_size=2)
    both = textmetrics.token_shifts(lm, prompts, gens, {"a": abl, "same": contextlib.nullcontext},
                                    images=ims, top=3, batch_size=1)
    # the shared plain pass gives the same table as the single call (batching aside)
    assert list(both["a"]["id"]) == list(one["id"])
    assert torch.allclose(torch.tensor(both["a"]["shift"].to_numpy()), torch.tensor(one["shift"].to_numpy()), atol=1e-6)
    assert float(both["same"]["shift"].abs().max()) < 1e-7          # an edit that does nothing moves nothing
    # hand-computed: the mean over the generated positions of the next-token probabilities
    tid = int(one["id"].iloc[0])
    tot, n = {"plain": 0.0, "steered": 0.0}, 0
    for p, g, im in zip(prompts, gens, ims):
        enc = lm.inputs([p], [im])
        gid = lm.tokenizer([g], add_special_tokens=False, return_tensors="pt")["input_ids"]
        full = dict(enc)
        full["input_ids"] = torch.cat([enc["input_ids"], gid], 1)
        full["attention_mask"] = torch.ones_like(full["input_ids"])
        k = enc["input_ids"].shape[1]
        for key, ctx in (("plain", contextlib.nullcontext), ("steered", abl)):
            with torch.no_grad(), ctx():
                pr = lm.model(**full).logits[0, k - 1:-1].float().softmax(-1)
            tot[key] += float(pr[:, tid].sum())
        n += gid.shape[1]
    assert abs((tot["steered"] - tot["plain"]) / n - float(one["shift"].iloc[0])) < 1e-6
    assert float(one["shift"].iloc[0]) > 0 > float(one["shift"].iloc[-1])
    with pytest.raises(FairVLMError, match="steer must be"):
        textmetrics.token_shifts(lm, prompts, gens, {}, images=ims)


def test_attribute_prefixes_stop_before_the_first_protected_token(tiny):
    """The prefix is the greedy answer up to its first protected token, so the next token after
    prompt + prefix is the protected one; selection reads the mass there."""
    lm = tiny["tiny-llava"]
    ims = [Image.new("RGB", (40, 40), (200, 30, 30)), Image.new("RGB", (40, 40), (20, 30, 230))]
    texts = ["Describe the person.", "Who is it?"]
    enc = lm.inputs(texts, ims)
    seq = lm.model.generate(**enc, max_new_tokens=6, do_sample=False,
                            pad_token_id=lm.tokenizer.pad_token_id or lm.tokenizer.eos_token_id)
    answer = seq[:, enc["input_ids"].shape[1]:]
    target = [int(answer[0, 2])]                       # pretend the third answer token names the attribute
    pre, found = steering.attribute_prefixes(lm, texts, ims, target_ids=target, max_new_tokens=6)
    assert found[0]
    assert pre[0] == lm.tokenizer.decode(answer[0, :2], skip_special_tokens=True).rstrip()
    lp = steering._next_token_logprobs(lm, texts[:1], ims[:1], prefixes=pre[:1])
    assert int(lp[0].argmax()) == target[0]            # greedy: the protected token is next
    unrelated = [i for i in range(lm.unembed().weight.shape[0]) if i not in answer.flatten().tolist()][:1]
    pre2, found2 = steering.attribute_prefixes(lm, texts, ims, target_ids=unrelated, max_new_tokens=6)
    assert pre2 == ["", ""] and found2 == [False, False]


def test_kl_and_ce_give_the_same_sign_step(tiny):
    lm = tiny["tiny-llava"]
    ids = steering.target_ids_for(lm, ["man", "woman"])
    g = {k: steering.gradient_direction(lm, _enc(lm), ids, layer=1, loss=k, check_logits=True) for k in ("kl", "ce")}
    assert torch.allclose(g["kl"].per_row, g["ce"].per_row)
    assert g["kl"].extra["logp_change_rows"].shape == (2,)


@pytest.mark.parametrize("name", ("tiny-llava", "tiny-qwen2-vl"))
def test_mean_activations_stop_early_and_equal_a_full_pass(tiny, name):
    """The pass stops after the deepest layer asked for; the means equal those of a full
    forward pass, by hand: the mean of each row's resid_post at the position counted from the end."""
    lm = tiny[name]
    enc = _enc(lm)
    texts = ["Describe the person.", "Who is it?"]
    ims = [Image.new("RGB", (40, 40), (200, 30, 30)), Image.new("RGB", (40, 40), (20, 30, 230))]
    layers = [0, 1] if lm.n_layers > 2 else [0]
    with torch.no_grad(), hooks.capture(lm, [f"resid_post.{l}" for l in layers]) as full:
        lm.model(**enc, use_cache=False)
    want = torch.stack([torch.stack([full[f"resid_post.{l}"][:, p].double().mean(0) for p in (-2, -1)])
                        for l in layers])
    calls = []
    with hooks.capture(lm, [f"resid_post.{lm.n_layers - 1}"]) as top:
        got = steering.mean_activations(lm, texts, ims, layers=layers, positions=[-2, -1], batch_size=2)
        calls.append(len(top))
    assert torch.allclose(got, want, atol=1e-5)
    if max(layers) < lm.n_layers - 1:
        assert calls == [0]            # the last layer never ran
