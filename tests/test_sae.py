"""fairvlm.sae: the Matryoshka BatchTopK SAE, social-neuron probing and neuron control."""

import pytest
import torch

from fairvlm import hooks, sae as S
from fairvlm.errors import FairVLMError, UnknownNameError
from fairvlm.params import ParameterError


def _sparse_data(n=3000, d=32, n_atoms=64, k_true=4, seed=0):
    """Rows that are sparse sums of unit atoms; atoms used more often come first."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(n_atoms, d, generator=g), dim=-1)
    p = torch.linspace(3.0, 0.3, n_atoms)
    idx = torch.multinomial(p.expand(n, -1), k_true, generator=g)
    coef = torch.rand(n, k_true, generator=g) + 0.5
    return (coef.unsqueeze(-1) * atoms[idx]).sum(1)


@pytest.fixture(scope="module")
def trained():
    x = _sparse_data()
    cfg = S.SAEConfig(d_in=32, d_sae=128, k=8, dead_after=2000, threshold_decay=0.95)
    sae, log = S.train(x, cfg, steps=300, batch_size=128, lr=3e-3, log_every=100)
    return sae, log, x


def test_config_widths_and_validation():
    cfg = S.SAEConfig(d_in=16, d_sae=512)
    assert cfg.widths == (32, 96, 224, 512)
    with pytest.raises(ParameterError):
        S.SAEConfig(d_in=16, d_sae=8, k=20)
    with pytest.raises(ParameterError):
        S.SAEConfig(d_in=16, d_sae=64, group_fractions=(0.5, 0.6))
    with pytest.raises(ParameterError):
        S.SAEConfig(d_in=16, d_sae=3)  # four groups cannot be nested in three latents


def test_batch_topk_keeps_k_per_row_on_average():
    cfg = S.SAEConfig(d_in=8, d_sae=64, k=5)
    sae = S.MatryoshkaSAE(cfg, seed=1)
    with torch.no_grad():
        sae.b_enc.fill_(1.0)  # every pre-activation positive, so top-k decides alone
    x = torch.randn(37, 8)
    z = sae.encode(x, batch_topk=True).detach()
    per_row = (z != 0).sum(-1)
    assert int(per_row.sum()) == 5 * 37
    assert per_row.float().mean() == 5.0
    assert per_row.min() != per_row.max()  # batch-level, not row-level top-k
    # the kept values are the largest of the batch
    a = sae.pre_acts(x).detach()
    assert float(a[z == 0].max()) <= float(z[z != 0].min())


def test_training_step_keeps_unit_decoder_rows_and_prefixes(trained):
    sae, log, x = trained
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(sae.cfg.d_sae), atol=1e-5)
    evs = [log.iloc[-1][f"ev_level_{i}"] for i in range(len(sae.cfg.widths))]
    assert all(b > a for a, b in zip(evs, evs[1:])), evs  # nested prefixes reconstruct better as they grow
    assert evs[-1] > 0.6
    assert log.iloc[-1]["mse_level_0"] < log.iloc[0]["mse_level_0"]
    assert float(sae.threshold) > 0
    l0 = log.iloc[-1]["l0"]
    assert 3 <= l0 <= 16  # the threshold encoder keeps about k latents


def test_level_uses_only_its_prefix(trained):
    sae, _, x = trained
    z = sae.encode(x[:20])
    m = sae.cfg.widths[0]
    z2 = z.clone()
    z2[:, m:] = torch.randn_like(z2[:, m:])
    assert torch.equal(sae.decode(z, m), sae.decode(z2, m))
    assert not torch.equal(sae.decode(z), sae.decode(z2))


def test_dead_counter_and_threshold():
    since = torch.zeros(4, dtype=torch.long)
    z = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])
    S.update_dead(since, z)
    S.update_dead(since, z)
    assert since.tolist() == [4, 0, 0, 4]


def test_save_load_roundtrip(tmp_path, trained):
    sae, _, x = trained
    p = S.save_sae(sae, tmp_path / "sae")
    assert (p / "cfg.json").is_file() and (p / "sae_weights.safetensors").is_file()
    back = S.load_sae(p)
    assert torch.equal(back.encode(x[:10]), sae.encode(x[:10]))
    (p / "cfg.json").write_text((p / "cfg.json").read_text().replace('"d_sae": 128', '"d_sae": 64'))
    with pytest.raises(FairVLMError):
        S.load_sae(p)
    with pytest.raises(FairVLMError):
        S.load_sae(tmp_path / "missing")


def test_alpha_zero_is_identity_in_both_variants(trained):
    sae, _, x = trained
    h = x[:16]
    for variant in S.VARIANTS:
        out = S.control(sae, h, [0, 5, 9], 3.0, 0.0, variant=variant)
        assert torch.equal(out, h), variant
    # at alpha > 0 the authors' variant drops the SAE error even when no latent changes
    z = sae.encode(h)
    same = S.control(sae, h, [0, 5], z[:, [0, 5]], 1.0, variant="authors")
    assert torch.allclose(same, sae.decode(z))
    assert not torch.allclose(same, h, atol=1e-3)


def test_error_preserving_with_current_gamma_is_identity(trained):
    sae, _, x = trained
    h = x[:16]
    lat = [1, 7, 30]
    cur = sae.encode(h)[:, lat]
    out = S.control(sae, h, lat, cur, 0.6, variant="error_preserving")
    assert torch.equal(out, h)
    moved = S.control(sae, h, lat, cur + 2.0, 0.6, variant="error_preserving")
    expect = h + 0.6 * 2.0 * sae.W_dec[lat].sum(0) * sae.scale  # linear decoder: a shift per latent
    assert torch.allclose(moved, expect, atol=1e-4)


def test_control_bad_inputs(trained):
    sae, _, x = trained
    for bad in (-0.1, 1.5, float("nan"), "a"):
        with pytest.raises(ParameterError):
            S.control(sae, x[:2], [0], 1.0, bad)
    with pytest.raises(UnknownNameError):
        S.control(sae, x[:2], [0], 1.0, 0.5, variant="nope")
    with pytest.raises(FairVLMError, match="width 32"):
        S.control(sae, torch.randn(2, 31), [0], 1.0, 0.5)
    with pytest.raises(ParameterError):
        S.control(sae, x[:2], [500], 1.0, 0.5)


def test_social_neurons_find_planted_latents():
    g = torch.Generator().manual_seed(0)
    n, d = 400, 50
    groups = ["a"] * 200 + ["b"] * 200
    z = torch.rand(n, d, generator=g) * (torch.rand(n, d, generator=g) < 0.3)  # background: 30% firing
    z[:200, 7] = 2.0 + torch.rand(200, generator=g)          # group a: latent 7 strong, always
    z[:200, 3] = (1.0 + torch.rand(200, generator=g)) * (torch.rand(200, generator=g) < 0.8)  # a: 80%, weaker
    z[200:, 11] = 1.5 + torch.rand(200, generator=g)         # group b: latent 11
    z[:, 20] = 1.0                                            # fires on everyone: not social
    t = S.social_neurons(z, groups, threshold=0.6)
    a = t[t["group"] == "a"].sort_values("rank")
    b = t[t["group"] == "b"]
    assert a["latent"].tolist() == [7, 3]                     # ranked by mean activation
    assert b["latent"].tolist() == [11]
    assert 20 not in t["latent"].tolist()
    assert (t["specificity"] > 0.8).all()
    lat, gam = S.pick_neurons(t, ["a", "b"], per_group=1)
    assert lat == [7, 11] and gam[0] > 2.0
    with pytest.raises(UnknownNameError):
        S.pick_neurons(t, ["c"])
    with pytest.raises(ParameterError):
        S.social_neurons(z, groups, threshold=0.0)


@pytest.fixture(scope="module")
def tiny_llava():
    from fairvlm.models import load

    return load("tiny-llava")


def _llava_logits(lm, edits=None):
    from PIL import Image

    im = Image.new("RGB", (32, 32), (120, 40, 200))
    enc = lm.inputs(["Who is this?"], [im])
    if edits is None:
        return lm.next_token_logits(enc)
    with hooks.edit(lm, edits):
        return lm.next_token_logits(enc)


def test_llava_reads_vision_layer_minus_two(tiny_llava):
    lm = tiny_llava
    assert lm.model.config.vision_feature_layer == -2
    base = _llava_logits(lm)
    wreck = lambda h: h * 0 + 5.0  # noqa: E731  a large edit
    last = _llava_logits(lm, {"vision.resid_post.-1": wreck})
    assert torch.equal(last, base)  # the last vision layer never reaches the language model
    second = _llava_logits(lm, {"vision.resid_post.-2": wreck})
    assert not torch.allclose(second, base)


def test_control_edits_on_llava_layer_minus_two(tiny_llava):
    lm = tiny_llava
    pix = torch.randn(6, 3, 32, 32)
    site = "vision.resid_post.-2"
    acts = S.collect_image_acts(lm, pix, site=site, tokens=2)
    assert acts.shape == (12, lm.d_vision)
    acts_all = S.collect_image_acts(lm, pix, site=site, tokens="all")
    assert acts_all.shape[0] > 12
    cfg = S.SAEConfig(d_in=lm.d_vision, d_sae=64, k=4, site=site, model=lm.name)
    sae, _ = S.train(acts_all, cfg, steps=20, batch_size=32)
    base = _llava_logits(lm)
    same = _llava_logits(lm, S.control_edits(lm, site, sae, [0, 1], 5.0, 0.0))
    assert torch.equal(same, base)
    moved = _llava_logits(lm, S.control_edits(lm, site, sae, [0, 1], 5.0, 0.6))
    assert not torch.allclose(moved, base)
    wrong = S.SAEConfig(d_in=lm.d_vision + 1, d_sae=64, k=4)
    with pytest.raises(FairVLMError, match="does not match"):
        S.control_edits(lm, site, S.MatryoshkaSAE(wrong), [0], 1.0, 0.5)
    with pytest.raises(ParameterError):
        S.control_edits(lm, site, sae, [0], 1.0, 1.01)


def test_text_acts_exclude_padding():
    from fairvlm.models import load

    lm = load("tiny-clip")
    a = S.collect_text_acts(lm, ["a b", "a longer text with more tokens"], tokens="all")
    n_tok = lm.inputs(["a b", "a longer text with more tokens"])["attention_mask"].sum()
    assert a.shape == (int(n_tok), lm.d_model)


def test_train_works_under_no_grad_and_is_seeded():
    x = _sparse_data(n=400, d=16, n_atoms=32)
    cfg = S.SAEConfig(d_in=16, d_sae=64, k=4)
    with torch.no_grad():
        a, log_a = S.train(x, cfg, steps=15, batch_size=64, seed=3)
    b, _ = S.train(x, cfg, steps=15, batch_size=64, seed=3)
    assert torch.equal(a.W_dec, b.W_dec)
    assert log_a["total"].notna().all()
    with pytest.raises(ParameterError):
        S.train(x[:, :8], cfg, steps=5)
    with pytest.raises(FairVLMError):
        S.train(torch.full((10, 16), float("nan")), cfg, steps=5)


@pytest.mark.slow
def test_testbed_llava_reads_vision_layer_minus_two():
    from fairvlm import testbed
    from fairvlm.models import load

    if not testbed.is_built("smoke"):
        pytest.skip("the smoke testbed is not built (python -m fairvlm.testbed build --size smoke)")
    lm = load("testbed-llava", size="smoke")
    assert lm.model.config.vision_feature_layer == -2
    test_llava_reads_vision_layer_minus_two(lm)


def test_prefix_losses_are_averaged_and_training_stops_at_a_plateau():
    import torch

    from fairvlm import sae as S

    x = _sparse_data(n=600)
    cfg = S.SAEConfig(d_in=x.shape[1], d_sae=64, k=4)
    sae = S.MatryoshkaSAE(cfg)
    terms, _ = S.sae_loss(sae, x, torch.zeros(64, dtype=torch.bool))
    mse = [v for k, v in terms.items() if k.startswith("mse_level")]
    assert float(terms["total"].detach()) == pytest.approx(float(sum(mse).detach() / len(mse)))
    _, log = S.train(x, cfg, steps=5000, batch_size=64, log_every=20, plateau_tol=0.01, patience=3)
    assert log.attrs["plateaued"] and log.attrs["steps_run"] < 5000
    _, log2 = S.train(x, cfg, steps=30, batch_size=64, log_every=10)
    assert not log2.attrs["plateaued"] and log2.attrs["steps_run"] == 30
