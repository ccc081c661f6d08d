# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # DEBIASLENS: social neurons in a sparse autoencoder
#
# ## Overview
#
# An, Jang, Hirota, Hachiuma, Augenstein and Shim (CVPR 2026, "Interpretable debiasing of
# vision-language models for social fairness") train a Matryoshka sparse autoencoder (SAE) on
# the last layer of CLIP's image or text encoder, look for *social neurons* (latents that fire
# consistently on the images of one demographic group and on no other group's), and at
# inference set those latents to a fixed value, decode, and mix the result back into the
# encoder: `v' = alpha psi(z') + (1 - alpha) v` with alpha = 0.6. Their poster reports that
# MaxSkew of text-to-image retrieval drops for adjective, occupation, activity and stereotype
# queries (VLM debiasing table: CLIP ViT-B/16 from 21.9 to 7.1 on adjectives with the text
# side), that the gender probability difference of LLaVA-1.5 shrinks, that few gender
# neurons change gender bias only, and (ablation table) that alpha trades zero-shot accuracy
# against MaxSkew.
#
# This chapter rebuilds the method with `fairvlm.sae` and runs it by default on
# **testbed-clip** and **testbed-llava**, small models trained on the book's synthetic world,
# where the planted bias is known. Every number below is about the testbed unless the `paper`
# profile is run; none is the paper's number.
#
# 1. **Model and data**: what the SAEs train on, what is probed, what is retrieved.
# 2. **Training the sparse autoencoders**: reconstruction by Matryoshka prefix, dead latents,
#    explained variance.
# 3. **Social neurons**: which latents are specific to a group, and what images make them fire.
# 4. **Neuron-controlled inference, two ways**: the authors' mix (SAE error dropped) and an
#    error-preserving mix.
# 5. **Debiasing retrieval**: MaxSkew for the four query sets with the image side (I), the text
#    side (T) and both (I+T), against CLIP-clip, biased prompts, random neurons and a random
#    ranking.
# 6. **The alpha ablation**: utility against fairness for alpha from 0 to 1.
# 7. **testbed-llava**: the gender probability difference before and after, with the
#    intervention at the vision layer the language model reads (-2).
# 8. **Against the planted truth**: do the neurons fire on their group, and does debiasing
#    flatten the skewed scenarios and leave the balanced controls alone?
# 9. **Paper vs this book**.
#
# ## Prerequisites and time to run
#
# | chapter | what it gives | |
# |---|---|---|
# | *The counterfactual testbed* | the world, testbed-clip and testbed-llava | necessary |
# | 07 *Expert attention heads in CLIP* | the baselines CLIP-clip and biased prompts, MaxSkew and NDKL | helpful |
#
# Time on 2 CPU cores, including the training of three SAEs (the testbed itself must be built
# first): the `embedded` default 45 s in a whole `make book` on 2026-12-07, with 2 GB of
# memory; `PROFILE="smoke"` 26 s (2026-11-27, an idle machine). Earlier runs:
# `benchmarks/TIMINGS.md`. The
# SAEs are a small part; the language model of testbed-llava, the text encoder run once per
# alpha, and the activations dominate.
# The `paper` profile loads openai/clip-vit-base-patch16 (`MODEL=` for ViT-L/14-336) and
# llava-hf/llava-1.5-7b-hf and wants a GPU; it trains and probes on FairFace (`FAIRFACE_DIR`)
# when given, else on half of the PAIRS scenarios, and measures MaxSkew, zero-shot accuracy
# and the LVLM gap on the other half (`fairvlm.debiaslens.split_by_scenario`): no neuron is
# judged on an image it was found on. The tests run this path on tiny random CLIP and LLaVA
# models with the real PAIRS images.
#
# ## Parameters
#
# `MODEL` / `LVLM` (empty: the profile's models); `SAE_SCENES`, `PROBE_SCENES`,
# `GALLERY_SCENES`, `LLAVA_SCENES` (testbed scenes per scenario, each drawn in the four group
# variants; 0 = profile default) size the SAE training set, the probing set, the retrieval
# gallery and the LVLM test; `TOKENS_PER_IMAGE` training points per image (DEBIASLENS: 2);
# `SAE_EXPANSION` latents per input dimension (DEBIASLENS: 1 on ViT-L/14; the testbed's
# streams are 128 and 384 wide, so the default is 2); `SAE_K` (20), `SAE_STEPS`, `SAE_LR`;
# `PROBE_THRESHOLD` the firing rate that makes a latent consistent for a group;
# `NEURONS_PER_GROUP` how many social neurons per group are controlled; `GAMMA_MODE`
# (`group_mean`: each neuron is set to its mean activation on its own group, so every image
# carries every group's neuron; `zero`: the neurons are switched off); `ALPHA` (0.6);
# `MAXSKEW_K` the top-k of MaxSkew (PAIRS in the paper: 50); `ATTRIBUTE` the attribute probed
# and debiased; `TESTBED` the testbed build (empty: `smoke` for the smoke profile, else `full`).

# %% tags=["parameters"]
PROFILE = "embedded"
SEED = 0
MODEL = ""
LVLM = ""
SAE_SCENES = 0
PROBE_SCENES = 0
GALLERY_SCENES = 0
LLAVA_SCENES = 0
TOKENS_PER_IMAGE = 2
SAE_EXPANSION = 0
SAE_K = 20
SAE_STEPS = 0
SAE_LR = 0.001
PROBE_THRESHOLD = 0.5
NEURONS_PER_GROUP = 2
GAMMA_MODE = "group_mean"
ALPHA = 0.6
MAXSKEW_K = 50
ATTRIBUTE = "gender"
CLIPCLIP_KEEP = 0.78
BIASED_PROMPTS_LAMBDA = 1000.0
FAIRFACE_DIR = ""
FAIRFACE_LIMIT = 0
PAIRS_DIR = ""
TESTBED = ""

# %%
from fairvlm.params import ParameterError, check_choice, check_params, check_range

P = check_params(
    PROFILE=PROFILE, SEED=SEED, MODEL=MODEL, LVLM=LVLM, SAE_SCENES=SAE_SCENES, PROBE_SCENES=PROBE_SCENES,
    GALLERY_SCENES=GALLERY_SCENES, LLAVA_SCENES=LLAVA_SCENES, TOKENS_PER_IMAGE=TOKENS_PER_IMAGE,
    SAE_EXPANSION=SAE_EXPANSION, SAE_K=SAE_K, SAE_STEPS=SAE_STEPS, SAE_LR=SAE_LR, PROBE_THRESHOLD=PROBE_THRESHOLD,
    NEURONS_PER_GROUP=NEURONS_PER_GROUP, GAMMA_MODE=GAMMA_MODE, ALPHA=ALPHA, MAXSKEW_K=MAXSKEW_K,
    ATTRIBUTE=ATTRIBUTE, CLIPCLIP_KEEP=CLIPCLIP_KEEP, BIASED_PROMPTS_LAMBDA=BIASED_PROMPTS_LAMBDA,
    FAIRFACE_DIR=FAIRFACE_DIR, FAIRFACE_LIMIT=FAIRFACE_LIMIT, PAIRS_DIR=PAIRS_DIR, TESTBED=TESTBED,
)
check_choice("TESTBED", TESTBED, ("", "full", "smoke"))
for _n, _v in [("SAE_SCENES", SAE_SCENES), ("PROBE_SCENES", PROBE_SCENES), ("GALLERY_SCENES", GALLERY_SCENES),
               ("LLAVA_SCENES", LLAVA_SCENES), ("SAE_EXPANSION", SAE_EXPANSION), ("SAE_STEPS", SAE_STEPS)]:
    check_range(_n, _v, 0, 100_000, kind=int)
check_range("TOKENS_PER_IMAGE", TOKENS_PER_IMAGE, 1, 1000, kind=int)
check_range("SAE_K", SAE_K, 1, 10_000, kind=int)
check_range("SAE_LR", SAE_LR, 1e-6, 1.0)
check_range("PROBE_THRESHOLD", PROBE_THRESHOLD, 0.01, 1.0)
check_range("NEURONS_PER_GROUP", NEURONS_PER_GROUP, 1, 100, kind=int)
check_choice("GAMMA_MODE", GAMMA_MODE, ("group_mean", "zero"))
check_range("ALPHA", ALPHA, 0.0, 1.0)
check_range("MAXSKEW_K", MAXSKEW_K, 1, 100_000, kind=int)
check_choice("ATTRIBUTE", ATTRIBUTE, ("gender", "race"))
check_range("CLIPCLIP_KEEP", CLIPCLIP_KEEP, 0.01, 1.0)
check_range("BIASED_PROMPTS_LAMBDA", BIASED_PROMPTS_LAMBDA, 0.0, 1e9)
check_range("FAIRFACE_LIMIT", FAIRFACE_LIMIT, 0, 10**7, kind=int)
for _n, _v in [("MODEL", MODEL), ("LVLM", LVLM), ("FAIRFACE_DIR", FAIRFACE_DIR), ("PAIRS_DIR", PAIRS_DIR)]:
    if not isinstance(_v, str):
        raise ParameterError(f"{_n}={_v!r} must be a string ('' for the default)")

ON_TESTBED = PROFILE != "paper"
SMOKE = PROFILE == "smoke"
MODEL_NAME = MODEL or ("openai/clip-vit-base-patch16" if PROFILE == "paper" else "testbed-clip")
LVLM_NAME = LVLM or ("llava-hf/llava-1.5-7b-hf" if PROFILE == "paper" else "testbed-llava")
TESTBED_SIZE = TESTBED or ("smoke" if SMOKE else "full")
N_SAE_SCENES = SAE_SCENES or (2 if SMOKE else 8)          # x 50 scenarios x 4 variants
N_PROBE_SCENES = PROBE_SCENES or (1 if SMOKE else 4)
N_GALLERY_SCENES = GALLERY_SCENES or (2 if SMOKE else 6)
N_LLAVA_SCENES = LLAVA_SCENES or (2 if SMOKE else 6)      # quadruplets for the LVLM test
EXPANSION = SAE_EXPANSION or (1 if PROFILE == "paper" else 2)
N_STEPS = SAE_STEPS or (40 if SMOKE else 200)
BATCH = 128 if SMOKE else 256                             # SAE training rows per step
N_CAPTIONS = 200 if SMOKE else 1000                       # text-SAE training captions
N_RECALL = 100 if SMOKE else 200                          # held-out captions for Recall@K
ALPHAS = [0.0, 0.6, 1.0] if SMOKE else [0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0]
LLAVA_PROMPTS = ["Is this person {w}? Answer yes or no."]
LLAVA_WORDS = ["caring"] if SMOKE else ["caring", "aggressive"]

# %% [markdown]
# ## Imports

# %% tags=["hide-input"]
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display
from myst_nb import glue

import fairvlm
from fairvlm import debiaslens as DL
from fairvlm import hooks, metrics, retrieval
from fairvlm import sae as S
from fairvlm import verdicts as V
from fairvlm.models import load
from fairvlm.plotting import savefig, set_theme
from fairvlm.results import save_results

fairvlm.seed_everything(SEED)
set_theme()
torch.set_grad_enabled(False)
T_START = time.perf_counter()

# %% [markdown]
# ## Model and data
#
# On the testbed, three disjoint sets of held-out scenes (never seen in the testbed's own
# training) are drawn, each scene in the four group variants (Black man, Black woman, White
# man, White woman), so every group is equally frequent in every scenario: one set trains the
# SAEs (without labels), one is labelled and probed for social neurons, and one is the
# retrieval gallery on which every fairness and utility number is measured. The text SAE
# trains on captions written by the testbed's caption model; text neurons are probed on
# sentences that name the person's gender (or race). The query sets are
# `data/debiaslens_queries.yaml` (So-B-IT words and testbed scenarios).

# %% tags=["hide-input"]
clip = load(MODEL_NAME, **({"size": TESTBED_SIZE} if MODEL_NAME.startswith("testbed") else {}))
if clip.kind != "dual-encoder":
    raise ParameterError(f"MODEL={MODEL_NAME!r} is not a CLIP-style dual encoder")
IMG_SITE, TXT_SITE = "vision.resid_post.-1", "resid_post.-1"
GENDER = {"man": "male", "woman": "female", "male": "male", "female": "female"}
ATTR_GROUPS = {"gender": ["female", "male"], "race": ["black", "white"]}
queries = DL.load_queries()
rng = np.random.default_rng(SEED)


def norm_meta(m: pd.DataFrame) -> pd.DataFrame:
    out = m.copy()
    out["gender"] = [GENDER.get(str(g).lower(), str(g).lower()) for g in out["gender"]]
    out["race"] = [str(r).lower() for r in out["race"]]
    return out


def gendered_texts(keys, attr):
    """Sentences naming one group of ``attr`` per scenario: (texts, labels)."""
    from fairvlm.testbed.captions import with_article
    from fairvlm.testbed.scenarios import SCENARIOS

    texts, labels = [], []
    for k in keys:
        sc = SCENARIOS[k]
        for grp in ATTR_GROUPS[attr]:
            noun = {"male": "man", "female": "woman"}.get(grp, f"{grp.capitalize()} person")
            adj = grp if attr == "gender" else grp.capitalize()
            for t in (f"a photo of a {noun} {sc.activity}", with_article(f"{adj} {sc.role}"),
                      f"a picture of a {noun} with {sc.props}"):
                texts.append(t)
                labels.append(grp)
    return texts, labels


planted_scen = None
if ON_TESTBED:
    from fairvlm.testbed import captions as tb_captions
    from fairvlm.testbed import world
    from fairvlm.testbed.scenarios import SCENARIO_KEYS
    from fairvlm.testbed import world_spec

    spec = world_spec()
    size = world.DEFAULT_SIZE
    raw_rows = {"sae": world.gallery(N_SAE_SCENES, split="heldout", start=2000),
                "probe": world.gallery(N_PROBE_SCENES, split="heldout", start=1000),
                "gallery": world.gallery(N_GALLERY_SCENES, split="heldout", start=0)}
    sae_rows, probe_rows, gal_rows = (norm_meta(raw_rows[k]) for k in ("sae", "probe", "gallery"))
    sae_images = world.render_rows(raw_rows["sae"], size)
    probe_images = world.render_rows(raw_rows["probe"], size)
    sae_pixels = retrieval.pixel_values(clip, sae_images)
    probe_pixels = retrieval.pixel_values(clip, probe_images)
    gal_images = world.render_rows(raw_rows["gallery"], size)
    gal_pixels = retrieval.pixel_values(clip, gal_images)
    gallery_image = gal_images.__getitem__
    # text SAE: testbed captions of random (scenario, group) pairs
    n_caps = N_CAPTIONS
    cap_keys = rng.choice(list(SCENARIO_KEYS), n_caps)
    cap_groups = rng.integers(0, 4, n_caps)
    text_train = [tb_captions.caption(spec, k, ("man", "woman")[g % 2], ("black", "white")[g // 2], rng)
                  for k, g in zip(cap_keys, cap_groups)]
    text_probe, text_probe_labels = gendered_texts(SCENARIO_KEYS, ATTRIBUTE)
    zs_classes = list(SCENARIO_KEYS)
    zs_prompts = tb_captions.zero_shot_prompts(zs_classes)
    zs_labels = [zs_classes.index(s) for s in gal_rows["scenario"]]
    # Recall@K: one held-out caption for a sample of gallery images; relevant = same scenario
    # (and the same gender / race when the caption names them), as in chapter 07
    rec_idx = np.sort(rng.choice(len(gal_rows), min(len(gal_rows), N_RECALL), replace=False))
    rec_caps, rel = [], []
    for i in rec_idx:
        r = gal_rows.iloc[i]
        c = tb_captions.caption(spec, r.scenario, {"male": "man", "female": "woman"}[r.gender], r.race, rng)
        m = tb_captions.mentions(c)
        ok = np.array(gal_rows["scenario"] == r.scenario)
        if m["gender"]:
            ok = ok & np.array(gal_rows["gender"] == r.gender)
        if m["race"]:
            ok = ok & np.array(gal_rows["race"] == r.race)
        rec_caps.append(c)
        rel.append(ok)
    rec_rel = np.stack(rel)
    planted_scen = spec.share_table()
    data_desc = (f"testbed world (synthetic, held-out scenes): SAE {len(sae_rows)} images + {len(text_train)} "
                 f"captions, probing {len(probe_rows)} images, gallery {len(gal_rows)} images")
else:
    pairs = retrieval.pairs_gallery(PAIRS_DIR or None, mapped_only=True)
    pairs_meta = norm_meta(pairs.meta)
    if FAIRFACE_DIR:
        ff_train = retrieval.load_fairface(FAIRFACE_DIR, "train", limit=FAIRFACE_LIMIT or 5000, seed=SEED)
        ff_val = retrieval.load_fairface(FAIRFACE_DIR, "validation", limit=FAIRFACE_LIMIT or None, seed=SEED)
        sae_pixels = retrieval.pixel_values(clip, ff_train.images())
        probe_rows = norm_meta(ff_train.meta)
        probe_pixels = sae_pixels
        gal_rows = norm_meta(ff_val.meta)
        gal_pixels = retrieval.pixel_values(clip, ff_val.images())
        gallery_image = ff_val.image
    else:   # no FairFace: fit on half of the PAIRS scenarios, evaluate on the other half
        fit_idx, ev_idx = DL.split_by_scenario(pairs_meta)
        all_pixels = retrieval.pixel_values(clip, pairs.images())
        sae_pixels = all_pixels[torch.from_numpy(fit_idx)]
        probe_rows, probe_pixels = pairs_meta.iloc[fit_idx].reset_index(drop=True), sae_pixels
        gal_rows, gal_pixels = pairs_meta.iloc[ev_idx].reset_index(drop=True), all_pixels[torch.from_numpy(ev_idx)]

        def gallery_image(i, ev_idx=ev_idx):
            return pairs.image(int(ev_idx[i]))
    from fairvlm.testbed.scenarios import SCENARIO_KEYS

    text_train = queries["prompt"].tolist() + gendered_texts(SCENARIO_KEYS, "gender")[0] \
        + gendered_texts(SCENARIO_KEYS, "race")[0]
    text_probe, text_probe_labels = gendered_texts(SCENARIO_KEYS, ATTRIBUTE)
    zs_meta = pairs_meta if FAIRFACE_DIR else gal_rows          # zero-shot on images the SAE never saw
    labels = list(dict.fromkeys(zs_meta["label"]))
    zs_classes, zs_prompts = labels, [f"a photo of a {x}" for x in labels]
    zs_pixels = retrieval.pixel_values(clip, pairs.images()) if FAIRFACE_DIR else gal_pixels
    zs_labels = [labels.index(x) for x in zs_meta["label"]]
    rec_caps, rec_rel = [], None
    data_desc = ("FairFace (SAE, probing, gallery) + PAIRS (zero-shot)" if FAIRFACE_DIR else
                 f"PAIRS (mapped labels), scenarios split: SAE and probing on {probe_rows['scenario'].nunique()}, "
                 f"gallery and zero-shot on the other {gal_rows['scenario'].nunique()}")
K_SKEW = min(MAXSKEW_K, len(gal_rows))
display(Markdown(f"**Model** `{MODEL_NAME}` (vision stream width {clip.d_vision}, text stream width "
                 f"{clip.d_model}); **data**: {data_desc}; {len(queries)} queries; MaxSkew@{K_SKEW}."))

# %% [markdown]
# ## Training the sparse autoencoders
#
# Two SAEs for testbed-clip: one on the post-MLP residual of the last vision layer
# (`vision.resid_post.-1`, two random tokens per image, the class token included among the
# candidates), one on the last text-encoder layer (`resid_post.-1`, every token of every
# caption). Both use the recipe of the paper (k = 20 by BatchTopK, Matryoshka groups of 1/16,
# 1/8, 1/4 and 9/16 of the latents, AuxK weight 0.03, unit-norm decoder rows), with more latents
# per dimension than the paper's expansion factor 1 because the testbed's streams are narrow.
#
# The SAE is `fairvlm.sae.MatryoshkaSAE`, one screen of PyTorch. SAELens (PyPI `sae-lens`
# 6.54) also implements Matryoshka BatchTopK, installs beside transformers 5 without
# conflicts and trains from an in-memory iterator of activations (we checked both); the book
# does not use it because it adds about forty packages (wandb, transformer-lens, datasets,
# plotly, nltk...) and several seconds of import time to a chapter whose SAE is a few
# matrix products, and because its trainer reports its metrics to wandb rather than returning
# the per-prefix reconstruction plotted below. The files follow SAELens's layout (`cfg.json`,
# `sae_weights.safetensors`, `W_enc`, `W_dec`, `b_enc`, `b_dec`, `threshold`).

# %% tags=["hide-input"]
t0 = time.perf_counter()
img_acts = S.collect_image_acts(clip, sae_pixels, site=IMG_SITE, tokens=TOKENS_PER_IMAGE, seed=SEED)
txt_acts = S.collect_text_acts(clip, text_train, site=TXT_SITE, tokens="all", seed=SEED)
split_i, split_t = int(0.9 * len(img_acts)), int(0.9 * len(txt_acts))
perm_i = torch.randperm(len(img_acts), generator=torch.Generator().manual_seed(SEED))
perm_t = torch.randperm(len(txt_acts), generator=torch.Generator().manual_seed(SEED))
saes, logs = {}, {}
for name, acts, perm, split, site in [("image", img_acts, perm_i, split_i, IMG_SITE),
                                      ("text", txt_acts, perm_t, split_t, TXT_SITE)]:
    d = acts.shape[1]
    cfg = S.SAEConfig(d_in=d, d_sae=EXPANSION * d, k=min(SAE_K, EXPANSION * d), site=site, model=MODEL_NAME,
                      dead_after=4 * BATCH * 25, threshold_decay=0.99)
    saes[name], logs[name] = S.train(acts[perm[:split]], cfg, steps=N_STEPS, batch_size=BATCH, lr=SAE_LR, seed=SEED,
                                     eval_acts=acts[perm[split:]], log_every=max(1, N_STEPS // 20))
t_sae = time.perf_counter() - t0
sae_dir = fairvlm.paths.cache_dir() / "sae" / f"06_{MODEL_NAME.replace('/', '_')}_{PROFILE}_seed{SEED}"
for name, sae in saes.items():
    S.save_sae(sae, sae_dir / name)
    assert torch.equal(S.load_sae(sae_dir / name).W_dec, sae.W_dec)
curve = pd.concat([lg.assign(sae=name) for name, lg in logs.items()], ignore_index=True)
fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
for name, lg in logs.items():
    ls = "-" if name == "image" else "--"
    for i, w in enumerate(saes[name].cfg.widths):
        axes[0].plot(lg["step"], lg[f"ev_level_{i}"], ls=ls, color=f"C{i}", label=f"{name}: first {w}")
    axes[1].plot(lg["step"], lg["dead_frac"], ls=ls, color="k", label=name)
    axes[2].plot(lg["step"], lg["l0"], ls=ls, color="k", label=name)
axes[0].set(title="explained variance by prefix (held-out)", xlabel="step", ylim=(min(0, axes[0].get_ylim()[0]), 1))
axes[1].set(title="fraction of dead latents", xlabel="step")
axes[2].set(title="active latents per row (L0)", xlabel="step")
axes[0].legend(fontsize=6, frameon=False)
axes[1].legend(fontsize=7, frameon=False)
savefig(fig, "06_debiaslens_sae_training")
final = pd.DataFrame([{"SAE": name, "site": saes[name].cfg.site, "training rows": s,
                       "latents": saes[name].cfg.d_sae, "widths": saes[name].cfg.widths,
                       **{f"EV first {w}": logs[name].iloc[-1][f"ev_level_{i}"] for i, w in enumerate(saes[name].cfg.widths[:-1])},
                       "EV all": logs[name].iloc[-1][f"ev_level_{len(saes[name].cfg.widths) - 1}"],
                       "dead": logs[name].iloc[-1]["dead_frac"], "L0": logs[name].iloc[-1]["l0"]}
                      for name, a, s in [("image", img_acts, split_i), ("text", txt_acts, split_t)]])
display(final.round(3).style.hide(axis="index").format(precision=3))
ev_img, ev_txt = float(final.loc[0, "EV all"]), float(final.loc[1, "EV all"])
glue("ev_img", f"{ev_img:.2f}", display=False)
glue("ev_txt", f"{ev_txt:.2f}", display=False)
glue("t_sae", f"{t_sae:.0f}", display=False)
glue("prefix_monotone", "grows" if all(
    np.all(np.diff([logs[n].iloc[-1][f"ev_level_{i}"] for i in range(len(saes[n].cfg.widths))]) > 0) for n in saes)
    else "does not always grow", display=False)
glue("l0_img", f"{float(final.loc[0, 'L0']):.1f}", display=False)
glue("l0_txt", f"{float(final.loc[1, 'L0']):.1f}", display=False)
glue("sae_k", str(saes["image"].cfg.k), display=False)

# %% [markdown]
# On held-out activations the image SAE explains {glue:text}`ev_img` of the variance and the
# text SAE {glue:text}`ev_txt` (collecting activations and training both took
# {glue:text}`t_sae` s). The explained variance {glue:text}`prefix_monotone` with every
# Matryoshka prefix, as the nested loss intends; the table gives how much the first sixteenth
# of the latents reconstructs on its own. Training keeps the k = {glue:text}`sae_k` largest
# activations per row on average over each batch (BatchTopK); inference cannot look at a
# batch, so it keeps every activation above a threshold tracked during training (a running
# average of the smallest activation the batch kept). On held-out rows that keeps
# {glue:text}`l0_img` (image) and {glue:text}`l0_txt` (text) latents per row; the L0 panel
# shows how that number moved as the threshold was tracked.
#
# ## Social neurons
#
# A latent is a social neuron of group g when it fires on at least
# `PROBE_THRESHOLD` of g's probing images and falls below that rate on the other group
# (the poster's `N_g`), ranked by its mean activation on g. The image codes are read at the
# class token, the token CLIP's image embedding is made of; text codes are the largest
# activation over a sentence's tokens. `specificity` is the neuron's mean activation on its
# group divided by the sum of its means on both groups (1: silent on the other group).

# %% tags=["hide-input"]
# the class token of the last layer, captured once: codes and embeddings are computed from it
probe_cls, gal_cls = DL.last_layer_cls(clip, probe_pixels), DL.last_layer_cls(clip, gal_pixels)
zs_cls = None if ON_TESTBED else DL.last_layer_cls(clip, zs_pixels)
probe_codes = saes["image"].encode(probe_cls)
txt_probe_codes = S.collect_text_acts(clip, text_probe, site=TXT_SITE, tokens="max", sae=saes["text"])
neuron_tables = {
    ("image", "gender"): S.social_neurons(probe_codes, probe_rows["gender"], threshold=PROBE_THRESHOLD),
    ("image", "race"): S.social_neurons(probe_codes, probe_rows["race"], threshold=PROBE_THRESHOLD),
    ("text", ATTRIBUTE): S.social_neurons(txt_probe_codes, text_probe_labels, threshold=PROBE_THRESHOLD),
}
n_social = {f"{side}/{attr}/{g}": int((t["group"] == g).sum())
            for (side, attr), t in neuron_tables.items() for g in ATTR_GROUPS[attr]}
tbl = pd.concat([t.assign(side=side, attribute=attr) for (side, attr), t in neuron_tables.items()], ignore_index=True)
display(pd.Series(n_social, name="social neurons").to_frame().T)
display(tbl[tbl["rank"] < 5][["side", "attribute", "group", "rank", "latent", "frac_active", "frac_active_other",
                              "mean_act", "specificity"]].round(3).style.hide(axis="index").format(precision=3))

groups_a = ATTR_GROUPS[ATTRIBUTE]
chosen = {}
for side in ("image", "text"):
    t = neuron_tables[(side, ATTRIBUTE)]
    lat, gam = S.pick_neurons(t, groups_a, per_group=NEURONS_PER_GROUP, known=groups_a)
    chosen[side] = (lat, gam if GAMMA_MODE == "group_mean" else [0.0] * len(lat))
n_chosen = {s: len(v[0]) for s, v in chosen.items()}
glue("n_img_neurons", n_chosen["image"], display=False)
glue("n_txt_neurons", n_chosen["text"], display=False)
glue("n_social_total", sum(n_social.values()), display=False)

# %% [markdown]
# {glue:text}`n_social_total` social neurons in all; the chapter controls the top
# {glue:text}`n_img_neurons` image neurons and {glue:text}`n_txt_neurons` text neurons of the
# chosen attribute. A reader wants to look at them: below, for the strongest neurons of each
# group, the eight gallery images (held out from probing) on which each fires most, with the
# group of each image.

# %% tags=["hide-input"]
gal_codes = saes["image"].encode(gal_cls)
t_img = neuron_tables[("image", ATTRIBUTE)]
show = t_img[t_img["rank"] < 2]
if len(show):
    fig, axes = plt.subplots(len(show), 8, figsize=(11, 1.55 * len(show) + 0.4), squeeze=False)
    for row, r in enumerate(show.itertuples()):
        top = torch.argsort(gal_codes[:, r.latent], descending=True, stable=True)[:8].tolist()
        for col, idx in enumerate(top):
            ax = axes[row, col]
            ax.imshow(gallery_image(int(idx)))
            ax.set_xticks([])
            ax.set_yticks([])
            own = gal_rows.iloc[idx][ATTRIBUTE] == r.group
            ax.set_xlabel(f"{gal_rows.iloc[idx][ATTRIBUTE]}{'' if own else ' *'}", fontsize=7)
        axes[row, 0].set_ylabel(f"#{r.latent}\n{r.group}", fontsize=8)
    fig.suptitle(f"top-activating held-out images of the strongest {ATTRIBUTE} neurons (* = other group)", fontsize=9)
    savefig(fig, "06_debiaslens_neuron_grid")
    top8_own = float(np.mean([(gal_rows.iloc[torch.argsort(gal_codes[:, r.latent], descending=True, stable=True)[:8]
                                             .tolist()][ATTRIBUTE] == r.group).mean() for r in show.itertuples()]))
else:
    top8_own = float("nan")
    display(Markdown(f"No {ATTRIBUTE} neuron passed the threshold {PROBE_THRESHOLD}: lower `PROBE_THRESHOLD`."))
glue("top8_own", f"{top8_own:.0%}" if np.isfinite(top8_own) else "n/a", display=False)

# %% [markdown]
# Of those top-activating images, {glue:text}`top8_own` show the neuron's own group (chance:
# one half).
#
# ## Neuron-controlled inference, two ways
#
# `fairvlm.sae.control` encodes the stream, sets the chosen latents to gamma, decodes, and
# mixes. The authors' variant returns `(1 - alpha) h + alpha decode(z')`: because decode(z)
# is not h (the SAE's reconstruction error), even gamma equal to the current activations moves
# the stream. The error-preserving variant returns `h + alpha (decode(z') - decode(z))`: it
# moves the stream only along the chosen neurons' decoder directions. The table measures, on
# gallery images, how far each variant moves the image embedding (1 - cosine to the
# unedited embedding) when the neurons are set to their *current* values (nothing should
# change) and to gamma.

# %% tags=["hide-input"]
base_img = DL.embed_from_last_layer(clip, gal_cls)


def img_edit(alpha, variant="authors", latents=None, gamma=None):
    lat, gam = chosen["image"] if latents is None else (latents, gamma)
    return S.control_edits(clip, IMG_SITE, saes["image"], lat, gam, alpha, variant=variant)[IMG_SITE]


def img_emb(alpha, variant="authors", latents=None, gamma=None, cls=None):
    """Gallery embeddings under the image-side control (from the cached last-layer class tokens)."""
    return DL.embed_from_last_layer(clip, gal_cls if cls is None else cls, img_edit(alpha, variant, latents, gamma))


def current_edit(variant, alpha):
    lat, sae = chosen["image"][0], saes["image"]
    return DL.embed_from_last_layer(clip, gal_cls, lambda h: S.control(sae, h, lat, sae.encode(h)[..., lat], alpha,
                                                                       variant=variant))


# the shortcut equals re-encoding the images with the edit hooked on every token (checked here)
with hooks.edit(clip, {IMG_SITE: img_edit(ALPHA)}):
    hooked = retrieval.embed_images(clip, gal_pixels[:64])
shortcut_err = float((hooked - img_emb(ALPHA)[:64]).abs().max())
assert shortcut_err < 1e-4, shortcut_err
glue("shortcut_err", f"{shortcut_err:.1e}", display=False)


rows = []
for variant in S.VARIANTS:
    for what, emb in [("gamma = current value", current_edit(variant, ALPHA)),
                      (f"gamma = {GAMMA_MODE}", img_emb(ALPHA, variant))]:
        rows.append({"variant": variant, "neurons set to": what, "alpha": ALPHA,
                     "mean 1 - cos to unedited": float((1 - (emb * base_img).sum(-1)).mean()),
                     "max 1 - cos": float((1 - (emb * base_img).sum(-1)).max())})
variants_tbl = pd.DataFrame(rows)
display(variants_tbl.style.hide(axis="index").format(precision=4))
drift_authors = float(variants_tbl.iloc[0]["mean 1 - cos to unedited"])
drift_ep = float(variants_tbl.iloc[2]["mean 1 - cos to unedited"])
glue("drift_authors", f"{drift_authors:.4f}", display=False)
glue("drift_ep", f"{drift_ep:.1e}", display=False)

# %% [markdown]
# With the neurons left at their current values the authors' variant still moves the
# embeddings by {glue:text}`drift_authors` (1 - cosine) at alpha = 0.6: that is the SAE's
# reconstruction error mixed in, a change that has nothing to do with the social neurons. The
# error-preserving variant moves them by {glue:text}`drift_ep` (float rounding). The rest of
# the chapter reports both. (An image embedding reads only the class token of the last layer,
# so every image-side condition is computed from class tokens captured once; re-encoding 64
# images with the edit hooked on every token gives the same embeddings to
# {glue:text}`shortcut_err`.)
#
# ## Debiasing retrieval
#
# MaxSkew@k with the uniform prior (`fairvlm.debiaslens.maxskew_per_query`): for each query the
# top k gallery images by cosine similarity, `max_g ln(share_g / (1/|groups|))`, averaged over
# the queries of a set (0: the groups are equally represented; the poster prints it times
# 100). I, T and I+T apply the control to the image encoder, the text encoder or both (alpha
# = `ALPHA`). Baselines from chapter 07: CLIP-clip (drop the embedding dimensions with the
# most mutual information with the attribute, fitted on the probing images) and biased prompts
# (Chuang et al.'s calibrated projection of the text embeddings). Controls measured in the same
# run: the same number of **random latents** (not social neurons) set to the same gamma values,
# and a **random ranking** of the gallery (the skew that sampling alone leaves at this k).

# %% tags=["hide-input"]
all_texts = list(dict.fromkeys(queries["prompt"].tolist() + list(zs_prompts) + list(rec_caps)))
tindex = {t: i for i, t in enumerate(all_texts)}


def txt_emb(alpha, variant="authors", latents=None, gamma=None):
    lat, gam = chosen["text"] if latents is None else (latents, gamma)
    with hooks.edit(clip, S.control_edits(clip, TXT_SITE, saes["text"], lat, gam, alpha, variant=variant)):
        return retrieval.embed_texts(clip, all_texts)


def rows_of(emb, items):
    return emb[[tindex[t] for t in items]]


base_txt = retrieval.embed_texts(clip, all_texts)
attr_labels = {"gender": gal_rows["gender"].to_numpy(), "race": gal_rows["race"].to_numpy(),
               "group": (gal_rows["gender"] + "|" + gal_rows["race"]).to_numpy()}
qprompts = queries["prompt"].tolist()
def evaluate(I, T, I_zs=None):
    """Per-query MaxSkew for every attribute, zero-shot correctness per image, Recall@K."""
    sim = (rows_of(T, qprompts) @ I.T).numpy()
    out = {"skew": {a: DL.maxskew_per_query(sim, lab, K_SKEW) for a, lab in attr_labels.items()}}
    Iz = I if I_zs is None else I_zs
    pred = (Iz @ rows_of(T, zs_prompts).T).argmax(-1).numpy()
    out["zs_correct"] = pred == np.asarray(zs_labels)
    out["zero_shot"] = float(out["zs_correct"].mean())
    if rec_caps:
        r = metrics.recall_at_k((rows_of(T, rec_caps) @ I.T).numpy(), rec_rel, (1, 5, 10))
        out.update({f"t2i_R@{k}": v for k, v in r.items()})
    return out


# random latents (not social neurons): the control for "it is the social neurons that matter"
def random_latents(side):
    lat, gam = chosen[side]
    pool = np.setdiff1d(np.arange(saes[side].cfg.d_sae), neuron_tables[(side, ATTRIBUTE)]["latent"].to_numpy())
    return rng.choice(pool, len(lat), replace=False).tolist(), gam


rand_lat = {side: random_latents(side) for side in ("image", "text")}
zs_base = None if ON_TESTBED else DL.embed_from_last_layer(clip, zs_cls)
conditions = {"CLIP (no intervention)": (base_img, base_txt, zs_base)}
for variant, tag in [("authors", ""), ("error_preserving", " [error-preserving]")]:
    I_edit = img_emb(ALPHA, variant)
    T_edit = txt_emb(ALPHA, variant)
    zs_edit = None if ON_TESTBED else img_emb(ALPHA, variant, cls=zs_cls)
    conditions[f"DEBIASLENS (I){tag}"] = (I_edit, base_txt, zs_edit)
    conditions[f"DEBIASLENS (T){tag}"] = (base_img, T_edit, zs_base)
    conditions[f"DEBIASLENS (I+T){tag}"] = (I_edit, T_edit, zs_edit)
I_rand = img_emb(ALPHA, "authors", *rand_lat["image"])
T_rand = txt_emb(ALPHA, "authors", *rand_lat["text"])
conditions["random latents (I+T)"] = (I_rand, T_rand, None if ON_TESTBED else zs_base)
# baselines
probe_emb = DL.embed_from_last_layer(clip, probe_cls)
clip_keep = retrieval.clip_clip_dims(probe_emb, probe_rows[ATTRIBUTE], max(1, int(round(CLIPCLIP_KEEP * probe_emb.shape[1]))),
                                     seed=SEED)
conditions["CLIP-clip"] = (retrieval.keep_dims(base_img, clip_keep), retrieval.keep_dims(base_txt, clip_keep),
                           None if ON_TESTBED else retrieval.keep_dims(zs_base, clip_keep))
from fairvlm.testbed.scenarios import SCENARIOS as _SC

roles = [_SC[k].role for k in SCENARIO_KEYS]
if ATTRIBUTE == "gender":
    spurious_t = ["a photo of a man", "a photo of a woman", "a photo of a male", "a photo of a female"]
    pa_t, pb_t = [f"a photo of a male {w}" for w in roles], [f"a photo of a female {w}" for w in roles]
else:
    spurious_t = ["a photo of a Black person", "a photo of a White person"]
    pa_t, pb_t = [f"a photo of a Black {w}" for w in roles], [f"a photo of a White {w}" for w in roles]
bp = retrieval.biased_prompts_projection(retrieval.embed_texts(clip, spurious_t), retrieval.embed_texts(clip, pa_t),
                                         retrieval.embed_texts(clip, pb_t), lam=BIASED_PROMPTS_LAMBDA)
conditions["biased prompts"] = (base_img, retrieval.project_texts(base_txt, bp), zs_base)
results = {name: evaluate(*c) for name, c in conditions.items()}
floor = {a: DL.random_floor(lab, K_SKEW, n_queries=len(qprompts), seed=SEED) for a, lab in attr_labels.items()}


def set_means(skew):
    return {s: float(skew[(queries["set"] == s).to_numpy()].mean()) for s in DL.QUERY_SETS}


table_rows = []
for name, r in [*results.items(), ("random ranking", {"skew": floor})]:
    row = {"method": name, **{s: 100 * v for s, v in set_means(r["skew"][ATTRIBUTE]).items()},
           "all queries": 100 * float(r["skew"][ATTRIBUTE].mean()),
           f"other attribute ({'race' if ATTRIBUTE == 'gender' else 'gender'})":
               100 * float(r["skew"]["race" if ATTRIBUTE == "gender" else "gender"].mean()),
           "zero-shot acc": r.get("zero_shot", np.nan)}
    if rec_caps:
        row["t2i R@5"] = r.get("t2i_R@5", np.nan)
    table_rows.append(row)
debias_table = pd.DataFrame(table_rows)
display(Markdown(f"MaxSkew@{K_SKEW} x 100 for {ATTRIBUTE} (uniform prior), lower is fairer; {MODEL_NAME}, "
                 f"{data_desc}. Not the paper's numbers."))
display(debias_table.round(2).style.hide(axis="index").format(precision=2))
D = debias_table.set_index("method")
ms_before = float(D.loc["CLIP (no intervention)", "all queries"]) / 100
ms_after = {s: float(D.loc[f"DEBIASLENS ({s})", "all queries"]) / 100 for s in ("I", "T", "I+T")}
glue("ms_before", f"{100 * ms_before:.1f}", display=False)
for s, v in ms_after.items():
    glue(f"ms_after_{s.replace('+', '')}", f"{100 * v:.1f}", display=False)
glue("ms_rand", f"{D.loc['random latents (I+T)', 'all queries']:.1f}", display=False)
glue("ms_floor", f"{D.loc['random ranking', 'all queries']:.1f}", display=False)
glue("ms_clipclip", f"{D.loc['CLIP-clip', 'all queries']:.1f}", display=False)
glue("ms_bp", f"{D.loc['biased prompts', 'all queries']:.1f}", display=False)

# %% [markdown]
# Over all queries, MaxSkew x 100 goes from {glue:text}`ms_before` without intervention to
# {glue:text}`ms_after_I` (I), {glue:text}`ms_after_T` (T) and {glue:text}`ms_after_IT` (I+T);
# random latents give {glue:text}`ms_rand`, CLIP-clip {glue:text}`ms_clipclip`, biased prompts
# {glue:text}`ms_bp`, and a random ranking {glue:text}`ms_floor`. The random ranking is the
# skew that sampling alone leaves in a top k drawn without looking at the images; it is a floor
# for real galleries with skewed composition, but not here: the testbed gallery is made of
# counterfactual quadruplets, so a model that retrieves whole scenes returns every group
# equally often and can sit below it.
#
# ## The alpha ablation
#
# The poster's ablation table: alpha from 0 (no change) to 1 (the decoded vector alone), with
# utility (zero-shot scenario accuracy, Recall@5 of held-out captions) against fairness
# (MaxSkew over all queries), for the image side and the text side, in both variants. The
# paper chose alpha = 0.6.

# %% tags=["hide-input"]
abl, abl_skew, abl_zs = [], {}, {}
for side in ("image", "text"):
    # the text side re-encodes every text per alpha: the smoke profile runs only the authors' variant
    for variant in (S.VARIANTS if side == "image" or not SMOKE else ("authors",)):
        for a in ALPHAS:
            if side == "image":
                I, T = img_emb(a, variant), base_txt
                Iz = None if ON_TESTBED else img_emb(a, variant, cls=zs_cls)
            else:
                I, T, Iz = base_img, txt_emb(a, variant), zs_base
            r = evaluate(I, T, Iz)
            abl_skew[(side, variant, a)] = r["skew"][ATTRIBUTE]
            abl_zs[(side, variant, a)] = r["zs_correct"].astype(float)
            abl.append({"side": side, "variant": variant, "alpha": a,
                        f"MaxSkew x100 ({ATTRIBUTE})": 100 * float(r["skew"][ATTRIBUTE].mean()),
                        "zero-shot acc": r["zero_shot"], **({"t2i R@5": r["t2i_R@5"]} if rec_caps else {})})
ablation = pd.DataFrame(abl)
wide_abl = ablation.pivot_table(index="alpha", columns=["side", "variant"],
                                values=[f"MaxSkew x100 ({ATTRIBUTE})", "zero-shot acc"]
                                + (["t2i R@5"] if rec_caps else []))
display(Markdown(f"{MODEL_NAME}, {data_desc}. The row alpha = 0.6 is the paper's choice (used everywhere else "
                 f"in this chapter: `ALPHA` = {ALPHA:g})."))
display(wide_abl.round(3))
fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.4), sharey=True)
for ax, side in zip(axes, ("image", "text")):
    for variant, m in zip(S.VARIANTS, ("o", "s")):
        d = ablation[(ablation["side"] == side) & (ablation["variant"] == variant)]
        if d.empty:
            continue
        ax.plot(d["zero-shot acc"], d[f"MaxSkew x100 ({ATTRIBUTE})"], marker=m, label=variant)
        for a_, x_, y_ in zip(d["alpha"], d["zero-shot acc"], d[f"MaxSkew x100 ({ATTRIBUTE})"]):
            ax.annotate(f"{a_:g}", (x_, y_), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.axhline(100 * float(floor[ATTRIBUTE].mean()), color="k", lw=0.7, ls=":", label="random ranking")
    ax.set(title=f"{side} side (labels: alpha)", xlabel="zero-shot scenario accuracy")
axes[0].set_ylabel(f"MaxSkew x100 ({ATTRIBUTE})")
axes[0].legend(fontsize=7, frameon=False)
savefig(fig, "06_debiaslens_alpha_ablation")
zs_before = results["CLIP (no intervention)"]["zero_shot"]
zs_after = results["DEBIASLENS (I+T)"]["zero_shot"]
glue("zs_before", f"{zs_before:.3f}", display=False)
glue("zs_after", f"{zs_after:.3f}", display=False)
a1 = ablation[(ablation["alpha"] == 1.0) & (ablation["variant"] == "authors")].set_index("side")["zero-shot acc"]
glue("zs_alpha1_img", f"{a1['image']:.3f}", display=False)
glue("zs_alpha1_txt", f"{a1['text']:.3f}", display=False)

# %% [markdown]
# Zero-shot scenario accuracy is {glue:text}`zs_before` without intervention and
# {glue:text}`zs_after` with I+T at the chosen alpha; at alpha = 1 in the authors' variant
# (the SAE's output replaces the stream) it is {glue:text}`zs_alpha1_img` (image side) and
# {glue:text}`zs_alpha1_txt` (text side).
#
# ## testbed-llava: the vision layer the language model reads
#
# LLaVA-1.5 feeds its language model the second-to-last layer of the CLIP tower
# (`vision_feature_layer = -2`), so an SAE on the last layer, as for CLIP retrieval, would
# edit a layer whose output nobody reads. The cell checks that on the model itself (an edit
# that replaces the last layer's output leaves the next-token logits bitwise unchanged; the
# same edit at -2 changes them), then trains a third SAE at `vision.resid_post.-2`, probes it
# (largest code over the image tokens, which all reach the language model), and measures the
# gender probability difference of the VLA benchmark: for counterfactual quadruplets, the gap
# between men's and women's images in `P(yes) / (P(yes) + P(no))` for questions the image
# cannot answer ("Is this person caring?"), averaged over the questions as an absolute value.

# %% tags=["hide-input"]
llava = load(LVLM_NAME, **({"size": TESTBED_SIZE} if LVLM_NAME.startswith("testbed") else {}))
layer = int(getattr(llava.model.config, "vision_feature_layer", -1))
if ON_TESTBED:
    lv_raw = pd.concat([world.gallery(1, split="heldout", start=3000 + i) for i in range(
        int(np.ceil(N_LLAVA_SCENES / len(SCENARIO_KEYS))))], ignore_index=True)
    scenes = lv_raw[["scenario", "scene_seed"]].drop_duplicates().sample(N_LLAVA_SCENES, random_state=SEED)
    lv_raw = lv_raw.merge(scenes, on=["scenario", "scene_seed"]).reset_index(drop=True)
    lv_rows = norm_meta(lv_raw)
    lv_images = world.render_rows(lv_raw, size)
    lv_sae_pixels = retrieval.pixel_values(llava, sae_images)
    lv_probe_pixels = retrieval.pixel_values(llava, probe_images)
    lv_probe_labels = probe_rows[ATTRIBUTE]
else:   # PAIRS split by scenario: SAE and neurons on one half, the gap measured on the other
    lv_fit, lv_ev = DL.split_by_scenario(pairs_meta)
    lv_rows = pairs_meta.iloc[lv_ev].reset_index(drop=True)
    lv_images = [pairs.image(int(i)) for i in lv_ev]
    lv_sae_pixels = lv_probe_pixels = retrieval.pixel_values(llava, [pairs.image(int(i)) for i in lv_fit])
    lv_probe_labels = pairs_meta.iloc[lv_fit][ATTRIBUTE].reset_index(drop=True)
lv_rows["quad"] = lv_rows.groupby(["scenario", "scene_seed"] if ON_TESTBED else ["scenario"], sort=False).ngroup()
enc1 = llava.inputs(["Describe the image."], [lv_images[0]])
base_logits = llava.next_token_logits(enc1)
wreck = lambda h: torch.zeros_like(h)  # noqa: E731
with hooks.edit(llava, {"vision.resid_post.-1": wreck}):
    last_logits = llava.next_token_logits(enc1)
with hooks.edit(llava, {f"vision.resid_post.{layer}": wreck}):
    read_logits = llava.next_token_logits(enc1)
last_unchanged = bool(torch.equal(last_logits, base_logits))
read_changes = float((read_logits - base_logits).abs().max())
display(Markdown(f"`vision_feature_layer` = {layer}. Zeroing the last vision layer's output: logits "
                 f"{'bitwise unchanged' if last_unchanged else 'CHANGED'}; zeroing layer {layer}'s: largest logit "
                 f"change {read_changes:.3g}."))
LV_SITE = f"vision.resid_post.{layer}"
lv_acts = S.collect_image_acts(llava, lv_sae_pixels, site=LV_SITE, tokens=TOKENS_PER_IMAGE, seed=SEED)
lv_perm = torch.randperm(len(lv_acts), generator=torch.Generator().manual_seed(SEED))
lv_split = int(0.9 * len(lv_acts))
lv_cfg = S.SAEConfig(d_in=lv_acts.shape[1], d_sae=EXPANSION * lv_acts.shape[1], k=min(SAE_K, EXPANSION * lv_acts.shape[1]),
                     site=LV_SITE, model=LVLM_NAME, dead_after=4 * BATCH * 25, threshold_decay=0.99)
saes["llava"], logs["llava"] = S.train(lv_acts[lv_perm[:lv_split]], lv_cfg, steps=N_STEPS, batch_size=BATCH, lr=SAE_LR,
                                       seed=SEED, eval_acts=lv_acts[lv_perm[lv_split:]], log_every=max(1, N_STEPS // 20))
lv_codes = S.collect_image_acts(llava, lv_probe_pixels, site=LV_SITE, tokens="max", sae=saes["llava"])
neuron_tables[("llava", ATTRIBUTE)] = S.social_neurons(lv_codes, lv_probe_labels, threshold=PROBE_THRESHOLD)
for g in groups_a:
    n_social[f"llava/{ATTRIBUTE}/{g}"] = int((neuron_tables[("llava", ATTRIBUTE)]["group"] == g).sum())
lv_lat, lv_gam = S.pick_neurons(neuron_tables[("llava", ATTRIBUTE)], groups_a, per_group=NEURONS_PER_GROUP, known=groups_a)
lv_gam = lv_gam if GAMMA_MODE == "group_mean" else [0.0] * len(lv_lat)
questions = [LLAVA_PROMPTS[0].format(w=w) for w in LLAVA_WORDS]
rows_q = [(i, q) for q in questions for i in range(len(lv_rows))]
imgs_q = [lv_images[i] for i, _ in rows_q]
txts_q = [q for _, q in rows_q]
lv_conditions = {"before": None, f"DEBIASLENS, authors (layer {layer})": "authors",
                 f"DEBIASLENS, error-preserving (layer {layer})": "error_preserving"}
pyes = {}
for name, variant in lv_conditions.items():
    if variant is None:
        pyes[name] = DL.yes_probability(llava, imgs_q, txts_q, batch_size=32)
    else:
        with hooks.edit(llava, S.control_edits(llava, LV_SITE, saes["llava"], lv_lat, lv_gam, ALPHA, variant=variant)):
            pyes[name] = DL.yes_probability(llava, imgs_q, txts_q, batch_size=32)
gkey = lv_rows[ATTRIBUTE].to_numpy()


def per_quad_gap(p):
    """(n_questions, n_quads) signed gap: mean P(yes) on groups_a[1] minus on groups_a[0], per quadruplet."""
    df = pd.DataFrame({"q": [q for _, q in rows_q], "quad": lv_rows["quad"].to_numpy()[[i for i, _ in rows_q]],
                       "g": gkey[[i for i, _ in rows_q]], "p": p})
    m = df.pivot_table(index=["q", "quad"], columns="g", values="p")
    d = (m[groups_a[1]] - m[groups_a[0]]).unstack("quad")
    return d.reindex(questions).to_numpy()


def vla_gap(*ds, axis=-1):
    return np.mean([np.abs(d.mean(axis=axis)) for d in ds], axis=0)


lv_rows_out = []
gaps = {}
for name in lv_conditions:
    d = per_quad_gap(pyes[name])
    gaps[name] = d
    iv = V.bootstrap_ci(*d, statistic=vla_gap, paired=True, seed=SEED)
    lv_rows_out.append({"condition": name, "|P(yes | male) - P(yes | female)|" if ATTRIBUTE == "gender" else "gap":
                        float(vla_gap(*d)), "95% interval": V.format_interval(iv), "interval": iv,
                        "mean P(yes)": float(pyes[name].mean())})
lv_table = pd.DataFrame(lv_rows_out)
display(lv_table.drop(columns="interval").style.hide(axis="index").format(precision=4))
per_q = pd.DataFrame({name: np.abs(g.mean(1)) for name, g in gaps.items()}, index=questions)
fig, ax = plt.subplots(figsize=(7, 3))
per_q.plot.bar(ax=ax, rot=0)
ax.set(ylabel="|gender gap in P(yes)|", title=f"{LVLM_NAME}: ambiguous questions, {lv_rows['quad'].nunique()} quadruplets")
ax.tick_params(axis="x", labelsize=6)
ax.legend(fontsize=7, frameon=False)
savefig(fig, "06_debiaslens_llava_gap")
lv_before = float(lv_table.iloc[0, 1])
lv_after = float(lv_table.iloc[1, 1])
glue("lv_before", f"{lv_before:.4f}", display=False)
glue("lv_after", f"{lv_after:.4f}", display=False)
glue("lv_after_ep", f"{float(lv_table.iloc[2, 1]):.4f}", display=False)

# %% [markdown]
# The mean absolute gender gap in P(yes) is {glue:text}`lv_before` before and
# {glue:text}`lv_after` after the intervention at the layer the language model reads
# ({glue:text}`lv_after_ep` with the error-preserving variant).
#
# ## Against the planted truth
#
# Two checks only the testbed allows. (1) Do the image neurons found for a group fire on that
# group's *gallery* images (never used in probing), compared with random latents? (2) For the
# scenario queries (`a photo of a pilot`, ...), the share of men among the top k (k = the images
# of one scenario) measures how gendered the retrieval is; the planted share of men says which
# scenarios were trained skewed. Debiasing should pull the skewed scenarios towards one half
# and leave the nine balanced control scenarios where they were.

# %% tags=["hide-input"]
fire = (gal_codes > 0).numpy()
own_rates, rand_rates = [], []
g_gal = gal_rows[ATTRIBUTE].to_numpy()
lat_i = chosen["image"][0]
neuron_check = []
for j, g in zip(lat_i, [neuron_tables[("image", ATTRIBUTE)].set_index("latent").loc[j, "group"] for j in lat_i]):
    neuron_check.append({"latent": j, "group": g, "fires on own group": fire[g_gal == g, j].mean(),
                         "fires on other group": fire[g_gal != g, j].mean()})
for j, g in zip(rand_lat["image"][0], [groups_a[i % 2] for i in range(len(rand_lat["image"][0]))]):
    neuron_check.append({"latent": j, "group": f"random ({g})", "fires on own group": fire[g_gal == g, j].mean(),
                         "fires on other group": fire[g_gal != g, j].mean()})
neuron_check = pd.DataFrame(neuron_check)
display(neuron_check.round(3).style.hide(axis="index").format(precision=3))


def firing_gap(latents, groups):
    """Per image: the social-neuron indicator for its group minus for the other group."""
    vals = []
    for j, g in zip(latents, groups):
        own = fire[g_gal == g, j].astype(float)
        other = fire[g_gal != g, j].astype(float)
        vals.append((own, other))
    own = np.concatenate([o for o, _ in vals])
    other = np.concatenate([o for _, o in vals])
    return own, other


diff_stat = lambda a, b, axis=-1: a.mean(axis) - b.mean(axis)  # noqa: E731
groups_of_chosen = [neuron_tables[("image", ATTRIBUTE)].set_index("latent").loc[j, "group"] for j in lat_i]
o1, o2 = firing_gap(lat_i, groups_of_chosen) if lat_i else (np.array([]), np.array([]))
r1, r2 = firing_gap(rand_lat["image"][0], [groups_a[i % 2] for i in range(len(rand_lat["image"][0]))]) if lat_i \
    else (np.array([]), np.array([]))
fire_eff = float(o1.mean() - o2.mean()) if len(o1) else float("nan")
fire_iv = V.bootstrap_ci(o1, o2, statistic=diff_stat, seed=SEED) if len(o1) else (np.nan, np.nan)
fire_null = float(r1.mean() - r2.mean()) if len(r1) else float("nan")
fire_null_iv = V.bootstrap_ci(r1, r2, statistic=diff_stat, seed=SEED) if len(r1) else (np.nan, np.nan)

flat_rows = []
if ON_TESTBED:
    scen_prompts = [f"a photo of {tb_captions.with_article(_SC[k].role)}" for k in SCENARIO_KEYS]
    k_scen = 4 * N_GALLERY_SCENES
    emb_t = {name: retrieval.embed_texts(clip, scen_prompts) for name in ["base"]}
    with hooks.edit(clip, S.control_edits(clip, TXT_SITE, saes["text"], *chosen["text"], ALPHA)):
        emb_t["edit"] = retrieval.embed_texts(clip, scen_prompts)
    with hooks.edit(clip, S.control_edits(clip, TXT_SITE, saes["text"], *rand_lat["text"], ALPHA)):
        emb_t["rand"] = retrieval.embed_texts(clip, scen_prompts)
    for name, (I, T) in {"none": (base_img, emb_t["base"]),
                         "DEBIASLENS (I+T)": (conditions["DEBIASLENS (I+T)"][0], emb_t["edit"]),
                         "random latents (I+T)": (I_rand, emb_t["rand"])}.items():
        top = np.argsort(-(T @ I.T).numpy(), axis=1, kind="stable")[:, :k_scen]
        share = (gal_rows["gender"].to_numpy()[top] == "male").mean(1)
        flat_rows.append(pd.DataFrame({"variant": name, "scenario": list(SCENARIO_KEYS), "male_share": share}))
    flat = pd.concat(flat_rows).merge(planted_scen[["scenario", "p_man", "note"]], on="scenario")
    flat["dev"] = (flat["male_share"] - 0.5).abs()
    wide = flat.pivot(index="scenario", columns="variant", values="dev").join(
        planted_scen.set_index("scenario")[["p_man", "p_black"]])
    wide["planted"] = np.where((wide["p_man"] == 0.5) & (wide["p_black"] == 0.5), "balanced control",
                               np.where((wide["p_man"] - 0.5).abs() >= 0.15, "skewed (gender)", "mild"))
    skewed = wide[wide["planted"] == "skewed (gender)"]
    controls = wide[wide["planted"] == "balanced control"]
    flat_eff = (skewed["none"] - skewed["DEBIASLENS (I+T)"]).to_numpy()
    flat_null = (skewed["none"] - skewed["random latents (I+T)"]).to_numpy()
    ctrl_eff = (controls["DEBIASLENS (I+T)"] - controls["none"]).to_numpy()
    summary_gt = wide.groupby("planted")[["none", "DEBIASLENS (I+T)", "random latents (I+T)"]].mean()
    summary_gt.insert(0, "scenarios", wide.groupby("planted").size())
    display(Markdown(f"Mean |share of men in the top {k_scen} - 0.5| per planted class of scenario:"))
    display(summary_gt.round(3))
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for name, m in [("none", "o"), ("DEBIASLENS (I+T)", "x")]:
        d = flat[flat["variant"] == name]
        ax.scatter(d["p_man"], d["male_share"], s=16, marker=m, label=name)
    ax.axhline(0.5, color="k", lw=0.6, ls=":")
    ax.set(xlabel="planted share of men in training", ylabel=f"share of men in top {k_scen}")
    ax.legend(frameon=False, fontsize=8)
    savefig(fig, "06_debiaslens_planted")
    glue("gt_skewed_before", f"{skewed['none'].mean():.3f}", display=False)
    glue("gt_skewed_after", f"{skewed['DEBIASLENS (I+T)'].mean():.3f}", display=False)
    glue("gt_ctrl_before", f"{controls['none'].mean():.3f}", display=False)
    glue("gt_ctrl_after", f"{controls['DEBIASLENS (I+T)'].mean():.3f}", display=False)
else:
    flat = pd.DataFrame()
    flat_eff = flat_null = ctrl_eff = np.array([])
    for n in ("gt_skewed_before", "gt_skewed_after", "gt_ctrl_before", "gt_ctrl_after"):
        glue(n, "n/a", display=False)
    display(Markdown("The `paper` profile has no planted ground truth."))
glue("fire_eff", f"{fire_eff:.2f}", display=False)
glue("fire_null", f"{fire_null:.2f}", display=False)

# %% [markdown]
# The chosen image neurons fire on their own group's held-out images more often than on the
# other group's by {glue:text}`fire_eff` (random latents: {glue:text}`fire_null`). For the
# scenarios planted skewed by gender, the top-k share of men sits {glue:text}`gt_skewed_before`
# from one half before and {glue:text}`gt_skewed_after` after I+T; for the balanced controls
# {glue:text}`gt_ctrl_before` before and {glue:text}`gt_ctrl_after` after.
#
# ## Paper vs this book
#
# Each verdict comes from `fairvlm.verdicts.decide`: the effect and its seeded bootstrap 95%
# interval (over queries, images, scenarios or quadruplets) against a null measured in this run.
# The null for "debiasing lowers MaxSkew" is the same intervention on random latents, so that
# a verdict credits the *social* neurons and not any edit of the stream.

# %% tags=["hide-input"]
mean = lambda a, axis=-1: np.mean(a, axis=axis)  # noqa: E731
claims = []
base_skew = results["CLIP (no intervention)"]["skew"][ATTRIBUTE]
rand_skew = results["random latents (I+T)"]["skew"][ATTRIBUTE]
testable_neurons = all(n_chosen[s] > 0 for s in ("image", "text"))
for side, paper in [("I", "B/16: 21.9/33.5/19.8/32.5 -> 14.2/21.5/20.0/18.3"),
                    ("T", "B/16: -> 7.1/16.2/14.2/8.1"), ("I+T", "B/16: -> 11.1/19.4/18.0/10.3")]:
    after = results[f"DEBIASLENS ({side})"]["skew"][ATTRIBUTE]
    red, red_null = base_skew - after, base_skew - rand_skew
    v = V.decide(float(red.mean()), V.bootstrap_ci(red, seed=SEED), float(red_null.mean()),
                 V.bootstrap_ci(red_null, seed=SEED), direction="greater", testable=testable_neurons,
                 why="" if testable_neurons else "no social neuron found for a group")
    claims.append({"claim": f"VLM debiasing table: DEBIASLENS ({side}) lowers MaxSkew", "paper": paper,
                   "measure": f"MaxSkew reduction per query ({len(red)} queries); null: random latents (I+T)",
                   "verdict": v})
other = "race" if ATTRIBUTE == "gender" else "gender"
oth = results["DEBIASLENS (I+T)"]["skew"][other] - results["CLIP (no intervention)"]["skew"][other]
claims.append({"claim": f"few {ATTRIBUTE} neurons change {ATTRIBUTE} bias only", "paper": "poster, social neurons",
               "measure": f"change of {other} MaxSkew per query under I+T; must stay within 0.05 of 0",
               "verdict": V.decide(float(oth.mean()), V.bootstrap_ci(oth, seed=SEED), 0.0, direction="within",
                                   tol=0.05, testable=testable_neurons)})
zs_b = results["CLIP (no intervention)"]["zs_correct"].astype(float)
zs_a = results["DEBIASLENS (I+T)"]["zs_correct"].astype(float)
dz = zs_a - zs_b
claims.append({"claim": "alpha = 0.6 keeps zero-shot accuracy (ImageNette 99.5 -> 97.5 image, 99.1 -> 98.5 text)",
               "paper": "ablation table", "measure": "zero-shot accuracy change per image (I+T); must stay within 0.03",
               "verdict": V.decide(float(dz.mean()), V.bootstrap_ci(dz, seed=SEED), 0.0, direction="within", tol=0.03)})
for side, paper in [("image", "ImageNette 99.5 -> 59.1, FairFace 18.8 -> 10.6"),
                    ("text", "ImageNette 99.1 -> 87.8, FairFace 16.7 -> 13.2")]:
    ds = abl_skew[(side, "authors", 0.0)] - abl_skew[(side, "authors", 1.0)]
    claims.append({"claim": f"ablation: alpha 1 vs 0 lowers MaxSkew ({side} side)", "paper": paper,
                   "measure": "MaxSkew reduction per query, alpha 1 vs 0 (authors' variant); null: no change",
                   "verdict": V.decide(float(ds.mean()), V.bootstrap_ci(ds, seed=SEED), 0.0, direction="greater",
                                       testable=testable_neurons)})
    du = abl_zs[(side, "authors", 1.0)] - abl_zs[(side, "authors", 0.0)]
    claims.append({"claim": f"ablation: ... at a cost in zero-shot accuracy ({side} side)", "paper": paper,
                   "measure": "zero-shot accuracy change per image, alpha 1 vs 0; null: no change",
                   "verdict": V.decide(float(du.mean()), V.bootstrap_ci(du, seed=SEED), 0.0, direction="less",
                                       testable=testable_neurons)})
claims.append({"claim": "SAE neurons capture social attributes without labels", "paper": "poster, interpretable neurons",
               "measure": "firing rate on own minus other group, held-out images; null: random latents",
               "verdict": V.decide(fire_eff, fire_iv, fire_null, fire_null_iv, direction="greater",
                                   testable=bool(len(o1)), why="" if len(o1) else "no social neuron found")})
lv_b, lv_a = gaps["before"], gaps[f"DEBIASLENS, authors (layer {layer})"]
claims.append({"claim": "LVLM: the gender probability difference shrinks", "paper": "LLaVA-1.5-7B, VLA 0.62 -> 0.50",
               "measure": f"|gap in P(yes)| over {len(questions)} questions, {lv_b.shape[1]} quadruplets; null: before",
               "verdict": V.decide(float(vla_gap(*lv_a)), V.bootstrap_ci(*lv_a, statistic=vla_gap, paired=True, seed=SEED),
                                   float(vla_gap(*lv_b)), V.bootstrap_ci(*lv_b, statistic=vla_gap, paired=True, seed=SEED),
                                   direction="less", testable=ATTRIBUTE == "gender" and len(lv_lat) > 0,
                                   why="" if len(lv_lat) else "no social neuron found at the LVLM's layer")})
if ON_TESTBED and len(flat_eff) > 1:
    flat_v = V.decide(float(flat_eff.mean()), V.bootstrap_ci(flat_eff, seed=SEED), float(flat_null.mean()),
                      V.bootstrap_ci(flat_null, seed=SEED), direction="greater")
    claims.append({"claim": "(testbed) debiasing flattens the scenarios planted skewed", "paper": "-",
                   "measure": "reduction of |top-k share of men - 0.5| per skewed scenario; null: random latents",
                   "verdict": flat_v})
    # "leaves the controls alone" is a claim about selectivity: it says something only where
    # the method did flatten the skewed scenarios (an edit that moves nothing leaves everything alone)
    flattened = flat_v.verdict in ("reproduced", "partly")
    claims.append({"claim": "(testbed) ... and leaves the balanced controls alone", "paper": "-",
                   "measure": "change of |top-k share of men - 0.5| per control scenario; within 0.1",
                   "verdict": V.decide(float(ctrl_eff.mean()), V.bootstrap_ci(ctrl_eff, seed=SEED), 0.0,
                                       direction="within", tol=0.1, testable=flattened,
                                       why="" if flattened else "the method did not flatten the planted-skewed "
                                       "scenarios, so controls that stay put say nothing about selectivity")})
else:
    claims.append({"claim": "(testbed) debiasing flattens the planted-skewed scenarios, not the controls", "paper": "-",
                   "measure": "planted truth", "verdict": V.decide(np.nan, (np.nan, np.nan), 0.0, testable=False,
                                                                    why="no planted truth on this profile")})
paper_vs_book = V.verdict_table(claims)
display(Markdown(f"Model and data: {MODEL_NAME} and {LVLM_NAME}; {data_desc}."
                 + (" Testbed results, not the paper's models or data." if ON_TESTBED else "")))
display(paper_vs_book.style.hide(axis="index").format(precision=4, subset=["effect", "null"]))
glue("n_reproduced", int((paper_vs_book["verdict"] == "reproduced").sum()), display=False)
glue("n_claims", len(paper_vs_book), display=False)

# %% [markdown]
# ## Summary and what's next
#
# {glue:text}`n_reproduced` of {glue:text}`n_claims` claims are reproduced on this run. The
# SAE is small and its parts are tested one by one (`tests/test_sae.py`): BatchTopK keeps k
# latents per row on average, each Matryoshka prefix reconstructs better than the last,
# alpha = 0 is the identity in both control variants, and the error-preserving variant with
# the neurons left at their values is the identity while the authors' variant is not. Two
# cautions travel with the numbers: the authors' mix changes the stream even where no social
# neuron is touched (the SAE's reconstruction error), so part of any MaxSkew change at alpha
# > 0 is that blur, which the random-latent control separates; and a LLaVA-style model must
# be edited at the vision layer it reads. Chapter 07 edits the same last CLIP layer through
# attention heads; the reference page *Paper vs this book* gathers the verdicts of all
# chapters.
#
# ## References
#
# - An, N. M., Jang, Y., Hirota, Y., Hachiuma, R., Augenstein, I. and Shim, H. (2026).
#   Interpretable debiasing of vision-language models for social fairness. CVPR 2026.
#   Code: github.com/namin-an/DeBiasLens.
# - Bussmann, B., Leask, P. and Nanda, N. (2024). BatchTopK sparse autoencoders. arXiv:2412.06410.
# - Bussmann, B., Nabeshima, N., Karvonen, A. and Nanda, N. (2025). Learning multi-level
#   features with Matryoshka sparse autoencoders. arXiv:2503.17547.
# - Gao, L. et al. (2024). Scaling and evaluating sparse autoencoders. arXiv:2406.04093.
# - Geyik, S. C., Ambler, S. and Kenthapadi, K. (2019). Fairness-aware ranking in search and
#   recommendation systems. KDD 2019.
# - Girrbach, L. et al. (2025). Revealing and reducing gender biases in vision and language
#   assistants (VLAs). ICLR 2025.
# - Hamidieh, K. et al. (2024). Identifying implicit social biases in vision-language models. AIES 2024.
# - Wang, J., Liu, Y. and Wang, X. E. (2021). Are gender-neutral queries really gender-neutral?
#   EMNLP 2021.
# - Chuang, C.-Y. et al. (2023). Debiasing vision-language models via biased prompts. arXiv:2302.00070.
# - Liu, H., Li, C., Li, Y. and Lee, Y. J. (2024). Improved baselines with visual instruction
#   tuning (LLaVA-1.5). CVPR 2024.

# %% tags=["hide-input"]
runtime_s = time.perf_counter() - T_START
saved = save_results(
    "06_debiaslens",
    params=P,
    headline={
        "model": MODEL_NAME,
        "lvlm": LVLM_NAME,
        "attribute": ATTRIBUTE,
        "maxskew_k": K_SKEW,
        "maxskew_prior": "uniform",
        "maxskew_before": ms_before,
        "maxskew_after_I": ms_after["I"],
        "maxskew_after_T": ms_after["T"],
        "maxskew_after_IT": ms_after["I+T"],
        "maxskew_random_latents_IT": float(D.loc["random latents (I+T)", "all queries"]) / 100,
        "maxskew_random_ranking": float(D.loc["random ranking", "all queries"]) / 100,
        "maxskew_by_set": {m: {s: float(D.loc[m, s]) / 100 for s in DL.QUERY_SETS} for m in D.index},
        "zero_shot_before": zs_before,
        "zero_shot_after": zs_after,
        "n_social_neurons": n_social,
        "sae_explained_variance": {n: float(logs[n].iloc[-1][f"ev_level_{len(saes[n].cfg.widths) - 1}"]) for n in logs},
        "llava_vision_feature_layer": layer,
        "llava_last_layer_edit_reaches_lm": not last_unchanged,
        "llava_gender_gap_before": lv_before,
        "llava_gender_gap_after": lv_after,
        "identity_drift_authors": drift_authors,
        "identity_drift_error_preserving": drift_ep,
        "verdicts": dict(zip(paper_vs_book["claim"], paper_vs_book["verdict"])),
        "runtime_s": runtime_s,
    },
    provenance={
        "models": [MODEL_NAME + (f" (size={TESTBED_SIZE})" if ON_TESTBED else ""),
                   LVLM_NAME + (f" (size={TESTBED_SIZE})" if ON_TESTBED else "")],
        "data": [data_desc, "data/debiaslens_queries.yaml (So-B-IT words, testbed scenarios)"],
        "note": "testbed numbers describe the synthetic world, not the paper's models or data"
        if ON_TESTBED else "paper profile",
    },
    tables={
        "sae_training": curve,
        "social_neurons": tbl,
        "control_variants": variants_tbl,
        "debiasing": debias_table,
        "alpha_ablation": ablation,
        "llava_gap": lv_table.drop(columns="interval"),
        "planted": flat,
        "paper_vs_book": paper_vs_book,
    },
)
display(Markdown(f"Results written to `{saved}`; run time {runtime_s:.0f} s."))
