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
# inference switch those latents off, decode, and mix the result back into the encoder:
# `v' = alpha psi(z') + (1 - alpha) v` with alpha = 0.6. Their poster reports that MaxSkew of
# text-to-image retrieval drops (CLIP ViT-B/16, adjectives: 21.9 to 7.1 with the text side),
# that LLaVA-1.5's gender probability difference shrinks, that a few gender neurons change
# gender bias only, and that alpha trades zero-shot accuracy against MaxSkew.
#
# This chapter rebuilds the method with `fairvlm.sae` and `fairvlm.debiaslens` and runs it by
# default on **testbed-clip** and **testbed-llava**, small models trained on the book's synthetic
# world, where the planted bias is known. Every number is about the testbed unless the `paper`
# profile is run.
#
# 1. **What this book changes** against the authors' released code.
# 2. **The sparse autoencoders**: trained on the token they edit, until they plateau; held-out
#    explained variance; dead latents with AuxK on and off.
# 3. **Social neurons**, ranked by specificity among neurons blind to the other attribute.
# 4. **Debiasing retrieval** (I, T, I+T) against three controls: the SAE round trip with no
#    latent changed, random latents of matched firing rate, a label shuffle.
# 5. **The alpha ablation**, against the round trip at the same alpha.
# 6. **testbed-llava** at the vision layer the language model reads.
# 7. **Against the planted truth**, and **Paper vs this book**.
#
# ## Prerequisites and time to run
#
# | chapter | what it gives | |
# |---|---|---|
# | *The counterfactual testbed* | the world, testbed-clip and testbed-llava | necessary |
# | 07 *Expert attention heads in CLIP* | CLIP-clip, biased prompts, MaxSkew | helpful |
#
# The SAEs ship trained (`data/artifacts/06_debiaslens/`, checked by sha256 and a build key
# before use; `python -m fairvlm.debiaslens build-artifacts` rebuilds them); a changed recipe,
# world or testbed retrains them in the run, saying why. Measured times are in
# `benchmarks/TIMINGS.md`. The `paper` profile loads openai/clip-vit-base-patch16 and
# llava-hf/llava-1.5-7b-hf, trains the SAEs in the run on FairFace (`FAIRFACE_DIR`) or on half
# of the PAIRS scenarios, and measures on the other half (`fairvlm.debiaslens.split_by_scenario`).
#
# ## Parameters
#
# `PROBE_SCENES`, `GALLERY_SCENES`, `LLAVA_SCENES` (testbed scenes per scenario, each in four
# group variants; 0 = profile default); `PROBE_THRESHOLD` the firing rate that makes a latent
# consistent for a group; `NEURONS_PER_GROUP`; `OTHER_CAP` the largest firing-rate spread across
# the other attribute's groups a chosen neuron may have; `GAMMA_MODE` (`zero`: the authors'
# deactivation; `group_mean`: this book's variant); `ALPHA` (0.6); `NULL_DRAWS` random-latent
# draws per side; `LV_NULL_DRAWS` for the LVLM; `MAXSKEW_K`; `ATTRIBUTE`; `TESTBED` (empty:
# `smoke` for the smoke profile, else `full`). The SAE recipe is `fairvlm.debiaslens.RECIPES`.

# %% tags=["parameters"]
PROFILE = "embedded"
SEED = 0
MODEL = ""
LVLM = ""
PROBE_SCENES = 0
GALLERY_SCENES = 0
LLAVA_SCENES = 0
PROBE_THRESHOLD = 0.5
NEURONS_PER_GROUP = 2
OTHER_CAP = 0.25
GAMMA_MODE = "zero"
ALPHA = 0.6
NULL_DRAWS = 20
LV_NULL_DRAWS = 0
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
    PROFILE=PROFILE, SEED=SEED, MODEL=MODEL, LVLM=LVLM, PROBE_SCENES=PROBE_SCENES, GALLERY_SCENES=GALLERY_SCENES,
    LLAVA_SCENES=LLAVA_SCENES, PROBE_THRESHOLD=PROBE_THRESHOLD, NEURONS_PER_GROUP=NEURONS_PER_GROUP,
    OTHER_CAP=OTHER_CAP, GAMMA_MODE=GAMMA_MODE, ALPHA=ALPHA, NULL_DRAWS=NULL_DRAWS, LV_NULL_DRAWS=LV_NULL_DRAWS,
    MAXSKEW_K=MAXSKEW_K, ATTRIBUTE=ATTRIBUTE, CLIPCLIP_KEEP=CLIPCLIP_KEEP, BIASED_PROMPTS_LAMBDA=BIASED_PROMPTS_LAMBDA,
    FAIRFACE_DIR=FAIRFACE_DIR, FAIRFACE_LIMIT=FAIRFACE_LIMIT, PAIRS_DIR=PAIRS_DIR, TESTBED=TESTBED,
)
for _n, _c in [("TESTBED", ("", "full", "smoke")), ("GAMMA_MODE", ("zero", "group_mean")), ("ATTRIBUTE", ("gender", "race"))]:
    check_choice(_n, getattr(P, _n), _c)
for _n, _lo, _hi, _kind in [("PROBE_SCENES", 0, 10**5, int), ("GALLERY_SCENES", 0, 10**5, int), ("LLAVA_SCENES", 0, 10**5, int),
                            ("LV_NULL_DRAWS", 0, 10**4, int), ("NULL_DRAWS", 1, 10**4, int), ("NEURONS_PER_GROUP", 1, 100, int),
                            ("MAXSKEW_K", 1, 10**5, int), ("FAIRFACE_LIMIT", 0, 10**7, int), ("PROBE_THRESHOLD", 0.01, 1.0, float),
                            ("OTHER_CAP", 0.0, 1.0, float), ("ALPHA", 0.0, 1.0, float), ("CLIPCLIP_KEEP", 0.01, 1.0, float),
                            ("BIASED_PROMPTS_LAMBDA", 0.0, 1e9, float)]:
    check_range(_n, getattr(P, _n), _lo, _hi, kind=_kind if _kind is int else (int, float))
for _n in ("MODEL", "LVLM", "FAIRFACE_DIR", "PAIRS_DIR"):
    if not isinstance(getattr(P, _n), str):
        raise ParameterError(f"{_n}={getattr(P, _n)!r} must be a string ('' for the default)")

ON_TESTBED = PROFILE != "paper"
SMOKE = PROFILE == "smoke"
MODEL_NAME = MODEL or ("openai/clip-vit-base-patch16" if PROFILE == "paper" else "testbed-clip")
LVLM_NAME = LVLM or ("llava-hf/llava-1.5-7b-hf" if PROFILE == "paper" else "testbed-llava")
TESTBED_SIZE = TESTBED or ("smoke" if SMOKE else "full")
N_PROBE_SCENES = PROBE_SCENES or (1 if SMOKE else 4)      # x 50 scenarios x 4 variants
N_GALLERY_SCENES = GALLERY_SCENES or (2 if SMOKE else 6)
N_LLAVA_QUADS = LLAVA_SCENES or (4 if SMOKE else 16)      # quadruplets for the LVLM test (smoke: below 5, not testable)
N_LV_DRAWS = LV_NULL_DRAWS or 2
N_RECALL = 100 if SMOKE else 200
ALPHAS = [0.0, 0.6, 1.0] if SMOKE else [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
LLAVA_QUESTIONS = ["Is this person caring? Answer yes or no."]

# %% tags=["hide-input"]
import time

import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display
from myst_nb import glue

import fairvlm
from fairvlm import debiaslens as DL
from fairvlm import sae as S
from fairvlm import verdicts as V
from fairvlm.models import load
from fairvlm.plotting import savefig, set_theme
from fairvlm.results import save_results

fairvlm.seed_everything(SEED)
set_theme()
torch.set_grad_enabled(False)
T_START = time.perf_counter()
display(pd.DataFrame(DL.DEPARTURES).style.hide(axis="index").set_caption(
    "This book against the authors' released code (namin-an/DeBiasLens)"))

# %% [markdown]
# ## Model and data
#
# On the testbed, disjoint sets of held-out scenes are drawn, each scene in the four group
# variants (Black man, Black woman, White man, White woman): one trains the SAEs (without
# labels; inside `fairvlm.debiaslens.sae_training_data`), one is labelled and probed, and one is
# the retrieval gallery on which every fairness and utility number is measured. Text neurons
# are probed on sentences that name the person's group. The queries are
# `data/debiaslens_queries.yaml` (So-B-IT words and testbed scenarios).

# %% tags=["hide-input"]
clip = load(MODEL_NAME, **({"size": TESTBED_SIZE} if MODEL_NAME.startswith("testbed") else {}))
llava = load(LVLM_NAME, **({"size": TESTBED_SIZE} if LVLM_NAME.startswith("testbed") else {}))
if clip.kind != "dual-encoder":
    raise ParameterError(f"MODEL={MODEL_NAME!r} is not a CLIP-style dual encoder")
ATTR_GROUPS, OTHER = DL.ATTR_GROUPS, "race" if ATTRIBUTE == "gender" else "gender"
queries = DL.load_queries()
from fairvlm.testbed.captions import with_article
from fairvlm.testbed.scenarios import SCENARIO_KEYS, SCENARIOS

if ON_TESTBED:
    DATA = DL.testbed_data(clip, probe_scenes=N_PROBE_SCENES, gallery_scenes=N_GALLERY_SCENES, n_recall=N_RECALL, seed=SEED)
else:
    DATA = DL.paper_data(clip, llava, queries, pairs_dir=PAIRS_DIR, fairface_dir=FAIRFACE_DIR,
                         fairface_limit=FAIRFACE_LIMIT, seed=SEED)
    pairs, pairs_meta = DATA["pairs"], DATA["pairs_meta"]
spec, probe_rows, probe_pixels, gal_rows, gal_pixels, gallery_image, zs_prompts, zs_labels, rec_caps, rec_rel = (
    DATA[k] for k in ("spec", "probe_rows", "probe_pixels", "gal_rows", "gal_pixels", "gallery_image", "zs_prompts",
                      "zs_labels", "rec_caps", "rec_rel"))
data_desc, group_texts = DATA["desc"], DL.group_texts
text_probe, text_probe_labels = group_texts(ATTRIBUTE)
K_SKEW = min(MAXSKEW_K, len(gal_rows))
display(Markdown(f"**Model** `{MODEL_NAME}` (vision width {clip.d_vision}, text width {clip.d_model}); "
                 f"**data**: {data_desc}; {len(queries)} queries; MaxSkew@{K_SKEW}."))

# %% [markdown]
# ## The sparse autoencoders
#
# Three SAEs with the paper's recipe (k = 20 by BatchTopK, Matryoshka groups of 1/16, 1/8, 1/4
# and 9/16 of the latents with their reconstruction losses averaged, AuxK weight 0.03): one on
# the **class token** of the last vision layer, the only token CLIP's image embedding reads and
# so the one the control edits; one on every token of the last text layer (the text embedding
# mean-pools them all); one on every token of testbed-llava's vision layer -2. Each trains until
# the explained variance on its held-out rows stops rising. The image SAE is trained a second
# time with AuxK off, to show what the auxiliary loss does for dead latents (a latent is dead
# when it has not fired for four passes over the training rows).

# %% tags=["hide-input"]
t0 = time.perf_counter()
saes, logs, sae_source = DL.load_or_train_saes(clip, llava, profile=PROFILE, seed=SEED, size=TESTBED_SIZE,
                                               data_fn=DATA.get("sae_data_fn"), data_desc="testbed" if ON_TESTBED else data_desc)
t_sae = time.perf_counter() - t0
probe_cls, gal_cls = DL.last_layer_cls(clip, probe_pixels), DL.last_layer_cls(clip, gal_pixels)
ev_heldout = S.explained_variance(gal_cls, saes["image"](gal_cls))
fig = DL.plot_sae_logs(logs)
savefig(fig, "06_debiaslens_sae_training")
sae_table = DL.sae_summary(saes, logs)
display(sae_table.style.hide(axis="index").format(precision=3))
dead_on, dead_off = (float(logs[n].iloc[-1]["dead_frac"]) for n in ("image", "image_noauxk"))
l0_gal = float((saes["image"].encode(gal_cls) > 0).float().sum(-1).mean())
for k_, v_ in {"ev_heldout": f"{ev_heldout:.3f}", "dead_on": f"{dead_on:.1%}", "dead_off": f"{dead_off:.1%}",
               "l0_gal": f"{l0_gal:.1f}", "sae_source": sae_source.split(" (")[0], "t_sae": f"{t_sae:.0f}",
               "all_plateaued": "all" if sae_table["plateaued"].all() else "not all"}.items():
    glue(k_, v_, display=False)

# %% [markdown]
# The SAEs were {glue:text}`sae_source` ({glue:text}`t_sae` s); {glue:text}`all_plateaued` of
# them stopped because the held-out explained variance had plateaued (the table's `plateaued`).
# On the gallery's class tokens, images the SAE never saw and the token the control edits, the
# image SAE explains {glue:text}`ev_heldout` of the variance and keeps {glue:text}`l0_gal`
# latents per image (k = 20 during training; inference uses the learned threshold). With AuxK
# the image SAE ends with {glue:text}`dead_on` dead latents, without it {glue:text}`dead_off`.
# A peer check outside the book's environment: `make bench-saelens` trains SAELens's Matryoshka
# BatchTopK SAE, an independent implementation of the same recipe, on these class tokens and
# prints both SAEs' held-out explained variance, L0 and dead fraction side by side (last
# recorded output: `benchmarks/sae_vs_saelens.txt`).
#
# ## Social neurons
#
# A latent is a social neuron of group g when it fires on at least `PROBE_THRESHOLD` of g's
# probing images and below that rate on the other group (the poster's `N_g`). Among those, the
# chapter ranks neurons by specificity (mean activation on g over the sum of its means on both
# groups; 1: silent on the other), preferring those whose firing rate differs by at most
# `OTHER_CAP` between the groups of the other attribute (gender neurons that are not race neurons).

# %% tags=["hide-input"]
probe_codes = saes["image"].encode(probe_cls)
gal_codes = saes["image"].encode(gal_cls)
txt_probe_codes = S.collect_text_acts(clip, text_probe, site=DL.TXT_SITE, tokens="max", sae=saes["text"])
groups_a = ATTR_GROUPS[ATTRIBUTE]
txt_other, txt_other_labels = group_texts(OTHER)   # the other attribute's spread, from sentences naming it
txt_other_codes = S.collect_text_acts(clip, txt_other, site=DL.TXT_SITE, tokens="max", sae=saes["text"])
NS = DL.select_neurons({"image": (probe_codes, probe_rows[ATTRIBUTE], probe_codes, probe_rows[OTHER]),
                        "text": (txt_probe_codes, text_probe_labels, txt_other_codes, txt_other_labels)},
                       groups_a, threshold=PROBE_THRESHOLD, per_group=NEURONS_PER_GROUP, cap=OTHER_CAP,
                       gamma_mode=GAMMA_MODE)
tables, chosen, rates, social = NS["tables"], NS["chosen"], NS["rates"], NS["social"]
shown = pd.concat([t[t["rank"] < 4].assign(side=s) for s, t in tables.items()])
display(shown[["side", "group", "rank", "latent", "frac_active", "frac_active_other", "specificity", "other_gap",
               "eligible"]].style.hide(axis="index").format(precision=3))
for name, value in (("n_img_neurons", NS["n_chosen"]["image"]), ("n_txt_neurons", NS["n_chosen"]["text"]),
                    ("n_ineligible", int((~tables["image"]["eligible"]).sum())),
                    ("set_gap_img", f"{NS['set_gap']['image']:.2f}")):
    glue(name, value, display=False)

# %% [markdown]
# The chapter controls {glue:text}`n_img_neurons` image and {glue:text}`n_txt_neurons` text
# neurons. {glue:text}`n_ineligible` image neurons of the attribute separate the other
# attribute's groups on their own (a neuron for women of one race); a group's set is kept when
# the set as a whole fires at rates within `OTHER_CAP` across the other attribute's groups (the
# chosen image set: {glue:text}`set_gap_img`). Below, for the chosen image neurons, the
# eight gallery images (never used in probing) on which each fires most, with their group.

# %% tags=["hide-input"]
lat_i, grp_i, gam_i = chosen["image"]
if lat_i:
    fig = DL.neuron_grid(gal_codes, gal_rows, ATTRIBUTE, lat_i, grp_i, gallery_image)
    savefig(fig, "06_debiaslens_neuron_grid")
else:
    display(Markdown(f"No {ATTRIBUTE} neuron passed the threshold {PROBE_THRESHOLD}: lower `PROBE_THRESHOLD`."))

# %% [markdown]
# ## Neuron-controlled inference and its controls
#
# `fairvlm.sae.control` encodes the stream, sets the chosen latents to gamma (0: the authors'
# deactivation), decodes, and mixes: `(1 - alpha) h + alpha decode(z')`. Because decode(z) is
# not h, this mix moves the stream even when no latent is changed: the SAE's reconstruction
# error. Three controls are measured in the same run, each by the same procedure with one
# ingredient removed:
#
# - **reconstruction only**: the same encode, decode and mix with no latent changed (what the
#   SAE's blur alone does);
# - **random latents**: `NULL_DRAWS` draws of as many latents, each drawn among the 8
#   non-social latents whose firing rate is nearest a chosen neuron's, set the same way; one
#   null per side (I, T, I+T);
# - **labels shuffled within quadruplets**: the unedited model's MaxSkew with the gallery's
#   group labels permuted inside each counterfactual set, the skew a model blind to the
#   attribute would show; and **content-free prompts**, which name nothing a bias could attach to.
#
# The error-preserving variant `h + alpha (decode(z') - decode(z))` keeps the reconstruction
# error and moves the stream only along the changed latents' decoder rows. An image embedding
# reads only the class token of the last layer, and testbed-clip's text embedding is the mean
# of the last layer's tokens, so every condition is computed from states captured once (checked
# below against re-encoding with the edit hooked on every token).

# %% tags=["hide-input"]
scen_prompts = [f"a photo of {with_article(SCENARIOS[k].role)}" for k in SCENARIO_KEYS] if ON_TESTBED else []
bench = DL.Bench(queries["prompt"].tolist(), zs_prompts, zs_labels, {a: gal_rows[a].to_numpy() for a in ATTR_GROUPS},
                 K_SKEW, rec_caps, rec_rel)
all_texts = list(dict.fromkeys(bench.texts + scen_prompts + list(DL.CONTENT_FREE)))
scen_rows = [all_texts.index(t) for t in scen_prompts]
ed = DL.Editor(clip, saes, chosen, gal_cls, bench, all_texts, alpha=ALPHA,
               zs_cls=None if DATA["zs_pixels"] is None else DL.last_layer_cls(clip, DATA["zs_pixels"]))
shortcut_err = ed.shortcut_error(gal_pixels)
assert shortcut_err < 1e-4, shortcut_err
glue("shortcut_err", f"{shortcut_err:.1e}", display=False)
base_I, base_T, base = ed.run()
variants_tbl = DL.drift_table(ed.I, base_I, saes["image"], *chosen["image"][::2], ALPHA)
display(variants_tbl.style.hide(axis="index").format(precision=4))
drift_recon, drift_social = (float(variants_tbl.iloc[i]["mean 1 - cos to unedited"]) for i in (0, 1))
glue("drift_recon", f"{drift_recon:.4f}", display=False)
glue("drift_social", f"{drift_social:.4f}", display=False)
glue("recon_share", f"{drift_recon / max(drift_social, 1e-12):.0%}", display=False)

# %% [markdown]
# In the authors' mix at alpha = 0.6 the round trip alone moves the image embeddings by
# {glue:text}`drift_recon` (1 - cosine); switching the neurons off as well moves them by
# {glue:text}`drift_social`: the round trip is {glue:text}`recon_share` of that. This is why
# every MaxSkew claim below is judged against a control that includes the same round trip.
# (Shortcut against hooked re-encoding: largest difference {glue:text}`shortcut_err`.)
#
# ## Debiasing retrieval
#
# MaxSkew@k with the uniform prior (`fairvlm.debiaslens.maxskew_per_query`): for each query
# the top k gallery images by cosine, `max_g ln(share_g / (1/|groups|))`, averaged over the
# queries of a set (0: groups equally represented; the poster prints it times 100). I, T and
# I+T control the image encoder, the text encoder or both at alpha = `ALPHA`. Baselines from
# chapter 07: CLIP-clip and biased prompts.

# %% tags=["hide-input"]
# the edited conditions, and random latents of matched firing rate set like the social ones (one null per side)
results, emb, null, null_scen = ed.conditions(
    (base_I, base_T, base), rates, social, {"image": (probe_codes, probe_rows[ATTRIBUTE]),
                                            "text": (txt_probe_codes, text_probe_labels)},
    gamma_mode=GAMMA_MODE, n_draws=NULL_DRAWS, seed=SEED)
controls = DL.skew_controls(clip, bench, (base_I, base_T), probe_cls, probe_rows[ATTRIBUTE], gal_rows[ATTRIBUTE],
                            gal_rows["quad"], all_texts, attribute=ATTRIBUTE, k=K_SKEW, n_perm=NULL_DRAWS,
                            keep_frac=CLIPCLIP_KEEP, lam=BIASED_PROMPTS_LAMBDA, seed=SEED)
results.update({n: controls[n] for n in ("CLIP-clip", "biased prompts")})
results[f"random latents (I+T), mean of {NULL_DRAWS}"] = {"skew": null["I+T"]}
results.update({n: v for n, v in controls.items() if n not in results})
cf_skew = controls["content-free prompts"]["skew"][ATTRIBUTE]
debias_table = DL.skew_table(results, queries["set"], ATTRIBUTE, OTHER)
display(Markdown(f"MaxSkew@{K_SKEW} x 100 for {ATTRIBUTE} (uniform prior), lower is fairer; {MODEL_NAME}, {data_desc}. "
                 "Not the paper's numbers."))
display(debias_table.style.hide(axis="index").format(precision=2))
D = debias_table.set_index("method")["all queries"] / 100
for key, name in [("before", "CLIP (no intervention)"), ("I", "DEBIASLENS (I)"), ("T", "DEBIASLENS (T)"),
                  ("IT", "DEBIASLENS (I+T)"), ("recon", "reconstruction only (I+T)"),
                  ("rand", f"random latents (I+T), mean of {NULL_DRAWS}"), ("shuffle", "labels shuffled within quadruplets"),
                  ("floor", "random ranking"), ("clipclip", "CLIP-clip"), ("bp", "biased prompts"),
                  ("cf", "content-free prompts")]:
    glue(f"ms_{key}", f"{100 * D[name]:.1f}", display=False)

# %% [markdown]
# Over all queries, MaxSkew x 100 is {glue:text}`ms_before` without intervention and
# {glue:text}`ms_IT` with I+T ({glue:text}`ms_I` image side, {glue:text}`ms_T` text side).
# The SAE round trip alone gives {glue:text}`ms_recon`, random latents of matched firing rate
# {glue:text}`ms_rand`, and the unedited model with the labels shuffled inside each
# counterfactual quadruplet {glue:text}`ms_shuffle`; prompts that name nothing ("a photo of a
# person", ...) {glue:text}`ms_cf`, the control for "the queries are skewed": a model can rank
# one group first for every text, and that is not a skew the query words carry (a random ranking: {glue:text}`ms_floor`;
# CLIP-clip {glue:text}`ms_clipclip`, biased prompts {glue:text}`ms_bp`). A random ranking is
# not the floor here: the gallery is made of counterfactual quadruplets, so a model that
# retrieves whole scenes returns every group equally often and sits below it; the label
# shuffle keeps that structure.
#
# ## The alpha ablation
#
# Alpha from 0 (no change) to 1 (the decoded vector alone), for the image side and the text
# side, each against the round trip at the same alpha: the poster's ablation reads the whole
# drop of MaxSkew at alpha = 1 as the method's, but part of it is the SAE's blur.

# %% tags=["hide-input"]
ablation, abl_r = DL.alpha_ablation(lambda i, t: ed.run(i, t)[2], {(s, k): (lambda a, s=s, f=f: f(s, a)) for s in ("image", "text")
                                           for k, f in (("social neurons", ed.social), ("reconstruction only", ed.recon))},
                                     ALPHAS, ATTRIBUTE)
display(ablation.pivot_table(index="alpha", columns=["side", "edit"], values=[f"MaxSkew x100 ({ATTRIBUTE})",
                                                                              "zero-shot acc"]).round(3))
savefig(DL.plot_alpha_ablation(ablation, ATTRIBUTE), "06_debiaslens_alpha_ablation")
for side in ("image", "text"):
    for what, tag in (("social neurons", "edit"), ("reconstruction only", "recon")):
        glue(f"abl1_{side}_{tag}", f"{100 * abl_r[(side, what, 1.0)]['skew'][ATTRIBUTE].mean():.1f}", display=False)
    glue(f"zs1_{side}", f"{abl_r[(side, 'social neurons', 1.0)]['zero_shot']:.3f}", display=False)
glue("zs_before", f"{base['zero_shot']:.3f}", display=False)

# %% [markdown]
# At alpha = 1 MaxSkew x 100 is {glue:text}`abl1_image_edit` on the image side with the
# neurons switched off and {glue:text}`abl1_image_recon` with the round trip alone (text side:
# {glue:text}`abl1_text_edit` and {glue:text}`abl1_text_recon`); zero-shot accuracy goes from
# {glue:text}`zs_before` to {glue:text}`zs1_image` (image side) and {glue:text}`zs1_text` (text).

# %% [markdown]
# ## testbed-llava: the vision layer the language model reads
#
# LLaVA-1.5 feeds its language model the second-to-last layer of the CLIP tower
# (`vision_feature_layer = -2`); the authors edit the last layer, which the language model
# never reads. The cell checks that on the model (zeroing the last layer leaves the logits
# bitwise unchanged; zeroing layer -2 changes them) and uses the third SAE, at layer -2, with
# neurons probed on the largest code over the image tokens. The measure is the VLA benchmark's
# gender probability difference: for counterfactual quadruplets, the gap between men's and
# women's images in `P(yes) / (P(yes) + P(no))` for a question the image cannot answer, signed
# by the direction of the unedited model's gap (its mean is then the unedited |gap|). Before
# any debiasing claim, the gap must exceed its label-shuffle null; the edit is then compared
# with `LV_NULL_DRAWS` draws of matched random latents (the language model makes each draw
# cost a full pass).

# %% tags=["hide-input"]
layer = int(getattr(llava.model.config, "vision_feature_layer", -1))
LV_SITE = f"vision.resid_post.{layer}"
lv_rows, lv_images, lv_probe_pixels, lv_probe = DL.lvlm_data(llava, DATA, n_quads=N_LLAVA_QUADS, seed=SEED)
last_unchanged, read_change = DL.layer_read_check(llava, lv_images[0], layer)
display(Markdown(f"`vision_feature_layer` = {layer}. Zeroing the last vision layer: logits "
                 f"{'bitwise unchanged' if last_unchanged else 'CHANGED'}; zeroing layer {layer}: largest logit change "
                 f"{read_change:.3g}."))
LV = DL.lvlm_study(llava, saes["llava"], LV_SITE, lv_images, lv_rows, lv_probe_pixels, lv_probe, attribute=ATTRIBUTE,
                   other=OTHER, groups=groups_a, questions=LLAVA_QUESTIONS, threshold=PROBE_THRESHOLD,
                   per_group=NEURONS_PER_GROUP, cap=OTHER_CAP, gamma_mode=GAMMA_MODE, alpha=ALPHA,
                   n_shuffle=NULL_DRAWS, n_draws=N_LV_DRAWS, seed=SEED)
tables["llava"] = LV["table"]
display(LV["summary"].style.hide(axis="index").format(precision=4))
glue("lv_before", f"{LV['before'].mean():.4f}", display=False)
glue("lv_shuffle", f"{LV['shuffle'].mean():.4f}", display=False)
glue("lv_quads", LV["n_quads"], display=False)
glue("lv_ran", "was therefore run" if LV["ran"] else "was not run (nothing to remove)", display=False)

# %% [markdown]
# Over {glue:text}`lv_quads` quadruplets the unedited gap is {glue:text}`lv_before`, against
# {glue:text}`lv_shuffle` with the gender labels shuffled inside each quadruplet; the
# intervention {glue:text}`lv_ran`.
#
# ## Against the planted truth
#
# Two checks only the testbed allows. (1) Do the chosen image neurons fire on their own
# group's gallery images (never used in probing) more than neurons selected the same way on
# *shuffled* probing labels? (2) For the scenario prompts (`a photo of a pilot`, ...), the
# share of men among the top k, with k half a scenario's gallery images, signed by the planted
# skew (positive: retrieval follows the planted direction). Debiasing should move the
# scenarios planted skewed toward parity, by more than random latents do, and leave the
# balanced controls within half their own baseline deviation.

# %% tags=["hide-input"]
fire_eff = DL.firing_score(gal_codes, gal_rows[ATTRIBUTE], lat_i, grp_i)
fire_null = DL.permuted_selection_scores(probe_codes, probe_rows[ATTRIBUTE], gal_codes, gal_rows[ATTRIBUTE], groups_a,
                                         threshold=PROBE_THRESHOLD, per_group=NEURONS_PER_GROUP, n_perm=NULL_DRAWS,
                                         seed=SEED, other_labels=probe_rows[OTHER], cap=OTHER_CAP)
glue("fire_eff", f"{fire_eff.mean():.2f}", display=False)
glue("fire_null", f"{fire_null.mean():.2f}", display=False)
planted, flat = None, pd.DataFrame()
if ON_TESTBED:
    k_scen = 2 * N_GALLERY_SCENES
    sh = DL.planted_shares((base_I, base_T), emb["DEBIASLENS (I+T)"], null_scen, scen_rows, gal_rows["gender"],
                           gal_rows["quad"], k_scen, n_perm=NULL_DRAWS, seed=SEED)
    share_tbl = spec.share_table().set_index("scenario").loc[list(SCENARIO_KEYS)].reset_index()
    planted, flat, summary_gt = DL.planted_study(sh, share_tbl, k_scen)
    display(Markdown(f"Share of men in the top {k_scen} for each scenario prompt, mean |share - 0.5| per planted class:"))
    display(summary_gt.round(3))
    savefig(DL.plot_planted(flat, k_scen), "06_debiaslens_planted")
for n in ("before", "after", "null", "ctrl_before", "ctrl_after"):
    v = [] if planted is None else planted[n]
    glue(f"gt_{n}", f"{np.mean(v):.3f}" if len(v) else "n/a", display=False)
if not ON_TESTBED:
    display(Markdown("The `paper` profile has no planted ground truth."))

# %% [markdown]
# The chosen neurons' own-minus-other firing on held-out images is {glue:text}`fire_eff`,
# against {glue:text}`fire_null` for neurons selected on shuffled labels. On the scenarios
# planted skewed by gender, the signed deviation of the top-k share of men from one half is
# {glue:text}`gt_before` before, {glue:text}`gt_after` after I+T and
# {glue:text}`gt_null` with random latents; the balanced controls sit
# {glue:text}`gt_ctrl_before` from one half before and {glue:text}`gt_ctrl_after` after.
#
# ## Paper vs this book
#
# Every row comes from `fairvlm.verdicts.judge` (the book's protocol, *Verdicts as
# experiments*): the effect and the control are measured per unit (query, image, scenario or
# quadruplet) in this run, and the verdict reads the 95% interval of their difference (a
# debiasing row also needs the effect's own interval below 0: the skew must itself fall).
# Debiasing rows are testable only when the model shows the bias first; "nothing else
# changes" rows are equivalence tests, testable only after the intervention's own effect was
# shown. `asserts` says what each row claims.

# %% tags=["hide-input"]
M = {"attribute": ATTRIBUTE, "other": OTHER, "neurons": NS["neurons_ok"], "null_draws": NULL_DRAWS, "content_free": cf_skew,
     "skew": {"base": base["skew"], "I": results["DEBIASLENS (I)"]["skew"], "T": results["DEBIASLENS (T)"]["skew"],
              "I+T": results["DEBIASLENS (I+T)"]["skew"], "recon": results["reconstruction only (I+T)"]["skew"]},
     "null": null, "zs": {"base": base["zs_correct"], "I+T": results["DEBIASLENS (I+T)"]["zs_correct"]},
     "alpha": {s: {"edit": abl_r[(s, "social neurons", 1.0)]["skew"][ATTRIBUTE],
                   "recon": abl_r[(s, "reconstruction only", 1.0)]["skew"][ATTRIBUTE],
                   "zs1": abl_r[(s, "social neurons", 1.0)]["zs_correct"],
                   "zs0": abl_r[(s, "social neurons", 0.0)]["zs_correct"]} for s in ("image", "text")},
     "firing": (fire_eff, fire_null), "planted": planted,
     "lvlm": LV if ATTRIBUTE == "gender" else None}
paper_vs_book = V.verdict_table(DL.paper_claims(M, seed=SEED))
display(Markdown(f"Model and data: {MODEL_NAME} and {LVLM_NAME}; {data_desc}; gamma = {GAMMA_MODE}, alpha = {ALPHA}."
                 + (" Testbed results, not the paper's models or data." if ON_TESTBED else "")))
display(paper_vs_book.style.hide(axis="index").format(precision=4, subset=["effect", "control", "difference"]))
verdict_of = dict(zip(paper_vs_book["claim"], paper_vs_book["verdict"]))
glue("tally", V.tally(paper_vs_book), display=False)
glue("n_claims", len(paper_vs_book), display=False)
glue("v_bias", verdict_of[f"CLIP's retrieval of neutral queries is skewed by {ATTRIBUTE}"], display=False)
glue("v_IT", verdict_of["DEBIASLENS (I+T) lowers MaxSkew, beyond random latents"], display=False)
glue("v_recon", verdict_of["DEBIASLENS (I+T) lowers MaxSkew beyond the SAE round trip alone"], display=False)

# %% [markdown]
# ## Summary and what's next
#
# Of {glue:text}`n_claims` claims: {glue:text}`tally`. Whether the model is skewed to begin
# with reads {glue:text}`v_bias`; switching the social neurons off on both sides against
# random latents of matched firing rate reads {glue:text}`v_IT`, and against the SAE round trip
# alone {glue:text}`v_recon`. Three lessons travel with these numbers. The authors' mix changes
# the stream even when no latent is touched (the SAE's reconstruction error), so a debiasing
# claim must beat a control that includes the same round trip, and the skew must itself fall.
# A random-latent control must touch latents like the social ones (similar firing rate, the
# same setting), not force values they never take. And a LLaVA-style model must be edited at
# the vision layer it reads. The SAE parts are tested one by one (`tests/test_sae.py`), the
# analysis in `tests/test_debiaslens.py`. Chapter 07 edits the same last CLIP layer through
# attention heads; *Paper vs this book* gathers every chapter's verdicts.
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
        "model": MODEL_NAME, "lvlm": LVLM_NAME, "attribute": ATTRIBUTE, "gamma_mode": GAMMA_MODE, "alpha": ALPHA,
        "null_draws": NULL_DRAWS, "maxskew_k": K_SKEW, "maxskew_prior": "uniform",
        **{f"maxskew_{k}": float(D[n]) for k, n in [
            ("before", "CLIP (no intervention)"), ("after_I", "DEBIASLENS (I)"), ("after_T", "DEBIASLENS (T)"),
            ("after_IT", "DEBIASLENS (I+T)"), ("reconstruction_only", "reconstruction only (I+T)"),
            ("random_latents_IT", f"random latents (I+T), mean of {NULL_DRAWS}"),
            ("label_shuffle", "labels shuffled within quadruplets"), ("random_ranking", "random ranking"),
            ("content_free", "content-free prompts")]},
        "maxskew_by_set": {m: {s: float(debias_table.set_index("method").loc[m, s]) / 100 for s in DL.QUERY_SETS}
                           for m in debias_table["method"] if m != "content-free prompts"},
        "zero_shot_before": base["zero_shot"], "zero_shot_after": results["DEBIASLENS (I+T)"]["zero_shot"],
        "n_social_neurons": NS["n_social"], "chosen_neurons": {s: v[0] for s, v in chosen.items()} | {"llava": LV["latents"]},
        "sae_source": sae_source, "sae_explained_variance_heldout": ev_heldout,
        "sae_explained_variance": {n: float(lg.iloc[-1][[c for c in lg.columns if c.startswith("ev_level_")][-1]])
                                   for n, lg in logs.items()},
        "sae_plateaued": {n: bool(lg.attrs["plateaued"]) for n, lg in logs.items()},
        "sae_dead_fraction": {"auxk_on": dead_on, "auxk_off": dead_off}, "sae_l0_heldout": l0_gal,
        "llava_vision_feature_layer": layer, "llava_last_layer_edit_reaches_lm": not last_unchanged,
        "llava_gender_gap_before": float(LV["before"].mean()), "llava_gender_gap_shuffle": float(LV["shuffle"].mean()),
        "llava_quadruplets": LV["n_quads"],
        "identity_drift_reconstruction": drift_recon, "identity_drift_social": drift_social,
        "verdicts": verdict_of, "runtime_s": runtime_s,
    },
    provenance={
        "models": [MODEL_NAME + (f" (size={TESTBED_SIZE})" if ON_TESTBED else ""),
                   LVLM_NAME + (f" (size={TESTBED_SIZE})" if ON_TESTBED else "")],
        "data": [data_desc, "data/debiaslens_queries.yaml (So-B-IT words, testbed scenarios)"],
        "note": "testbed numbers describe the synthetic world, not the paper's models or data"
        if ON_TESTBED else "paper profile",
    },
    tables={"departures": pd.DataFrame(DL.DEPARTURES), "sae_training": pd.concat([lg.assign(sae=n) for n, lg in logs.items()]),
            "sae_summary": sae_table, "social_neurons": pd.concat([t.assign(side=s) for s, t in tables.items()]),
            "control_variants": variants_tbl, "debiasing": debias_table, "alpha_ablation": ablation,
            "llava_gap": LV["summary"], "planted": flat, "paper_vs_book": paper_vs_book},
)
display(Markdown(f"Results written to `{saved}`; run time {runtime_s:.0f} s."))
