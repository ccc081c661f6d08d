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
# # Expert attention heads in CLIP
#
# ## Overview
#
# Gomez-Grabowska, González and Gómez (ECIR 2026, "Debiasing CLIP with neural
# interventions") split the CLS token of CLIP's last vision layer into one vector per
# attention head, train a linear probe on each, and call the few heads whose probes
# predict gender (or ethnicity) best *experts*: heads 3, 11 and 12 of ViT-B/32 for gender
# (their Table 1). At inference they overwrite those heads' CLS vectors with a
# demographic *prototype* (the mean vector of all images, or of one group's) or with zero,
# and report that text-to-image retrieval becomes fairer: NDKL on SISPI drops by up to 42%
# with the "male" prototype on all three experts (Table 2), normalized entropy over So-B-IT
# words rises on FairFace (Table 4), while Recall@K on COCO and Flickr30K moves by about
# two points (Table 5). Neuron-level edits and damping do little (Table 3), and expert
# heads hold many neurons with high average precision (Figure 1).
#
# This chapter rebuilds the pipeline with `fairvlm.clip_heads` (decomposition and
# interventions), `fairvlm.probes`, `fairvlm.metrics` and `fairvlm.retrieval`, and runs it
# by default on **testbed-clip**, a small CLIP vision encoder trained on the book's
# synthetic world, where the bias is planted and therefore known. Every number below is
# about that testbed unless the `paper` profile is run; none is the paper's number.
#
# ## Prerequisites and time to run
#
# The chapter *The counterfactual testbed* introduces the world and testbed-clip; the
# metrics are defined in the `fairvlm.metrics` docstrings. Time on 2 CPU cores: about
# 1 minute with `PROFILE="smoke"`, about 1 minute on the `embedded` default (plus the
# one-off testbed build if it is not cached). The `paper` profile loads
# openai/clip-vit-base-patch32 (or `MODEL="openai/clip-vit-base-patch16"`) from the hub and
# wants a GPU; it probes on FairFace (`FAIRFACE_DIR`, 500 training images) or on PAIRS,
# audits PAIRS (and SISPI with `SISPI_DIR`), measures So-B-IT entropy on FairFace
# validation, and Recall@K on the COCO Karpathy test split (`COCO_JSON`, `COCO_IMAGES`).
#
# ## Parameters
#
# `MODEL=""` takes the profile's model. `PROBE_SCENES` and `GALLERY_SCENES` (testbed: scenes
# per scenario, each drawn in the four variants; 0 = profile default) size the probe set
# and the evaluation gallery. `EXPERT_RULE` / `EXPERT_K` choose the experts
# (`fairvlm.probes.select_experts`), `DAMP_ALPHA` the damping factor (paper: 0.1),
# `ENTROPY_K` the top-k of the entropy metric (0 = profile default: 100 as in the paper on
# the `paper` profile, the number of images per scenario on the testbed), `CLIPCLIP_KEEP` the fraction
# of embedding dimensions CLIP-clip keeps, `BIASED_PROMPTS_LAMBDA` the calibration weight
# of the biased-prompts projection (Chuang et al.: 1000). The `*_DIR` parameters point the
# `paper` profile at local copies of the datasets.

# %% tags=["parameters"]
PROFILE = "embedded"
SEED = 0
MODEL = ""
PROBE_SCENES = 0
GALLERY_SCENES = 0
EXPERT_RULE = "top_k"
EXPERT_K = 3
DAMP_ALPHA = 0.1
ENTROPY_K = 0
CLIPCLIP_KEEP = 0.78
BIASED_PROMPTS_LAMBDA = 1000.0
FAIRFACE_DIR = ""
FAIRFACE_LIMIT = 0
SISPI_DIR = ""
COCO_JSON = ""
COCO_IMAGES = ""
PAIRS_DIR = ""

# %%
from fairvlm.params import ParameterError, check_choice, check_params, check_range

P = check_params(
    PROFILE=PROFILE, SEED=SEED, MODEL=MODEL, PROBE_SCENES=PROBE_SCENES, GALLERY_SCENES=GALLERY_SCENES,
    EXPERT_RULE=EXPERT_RULE, EXPERT_K=EXPERT_K, DAMP_ALPHA=DAMP_ALPHA, ENTROPY_K=ENTROPY_K,
    CLIPCLIP_KEEP=CLIPCLIP_KEEP, BIASED_PROMPTS_LAMBDA=BIASED_PROMPTS_LAMBDA, FAIRFACE_DIR=FAIRFACE_DIR,
    FAIRFACE_LIMIT=FAIRFACE_LIMIT, SISPI_DIR=SISPI_DIR, COCO_JSON=COCO_JSON, COCO_IMAGES=COCO_IMAGES,
    PAIRS_DIR=PAIRS_DIR,
)
check_range("PROBE_SCENES", PROBE_SCENES, 0, 1000, kind=int)
check_range("GALLERY_SCENES", GALLERY_SCENES, 0, 1000, kind=int)
check_choice("EXPERT_RULE", EXPERT_RULE, ("top_k", "threshold"))
check_range("EXPERT_K", EXPERT_K, 1, 64, kind=int)
check_range("DAMP_ALPHA", DAMP_ALPHA, 0.0, 1.0)
check_range("ENTROPY_K", ENTROPY_K, 0, 10_000, kind=int)
check_range("CLIPCLIP_KEEP", CLIPCLIP_KEEP, 0.01, 1.0)
check_range("BIASED_PROMPTS_LAMBDA", BIASED_PROMPTS_LAMBDA, 0.0, 1e9)
check_range("FAIRFACE_LIMIT", FAIRFACE_LIMIT, 0, 10**7, kind=int)
for _name, _val in [("MODEL", MODEL), ("FAIRFACE_DIR", FAIRFACE_DIR), ("SISPI_DIR", SISPI_DIR),
                    ("COCO_JSON", COCO_JSON), ("COCO_IMAGES", COCO_IMAGES), ("PAIRS_DIR", PAIRS_DIR)]:
    if not isinstance(_val, str):
        raise ParameterError(f"{_name}={_val!r} must be a string ('' for the default)")
if bool(COCO_JSON) != bool(COCO_IMAGES):
    raise ParameterError("set both COCO_JSON (dataset_coco.json) and COCO_IMAGES (folder with val2014/), or neither")

ON_TESTBED = PROFILE != "paper"
MODEL_NAME = MODEL or ("openai/clip-vit-base-patch32" if PROFILE == "paper" else "testbed-clip")
TESTBED_SIZE = "smoke" if PROFILE == "smoke" else "full"
N_PROBE_SCENES = PROBE_SCENES or (1 if PROFILE == "smoke" else 10)     # x 50 scenarios x 4 variants
N_GALLERY_SCENES = GALLERY_SCENES or (2 if PROFILE == "smoke" else 10) # x 50 scenarios x 4 variants
N_WORDS_PER_CATEGORY = 4 if PROFILE == "smoke" else None                # So-B-IT words per category
# top-k of the entropy metric: the paper's 100 of FairFace's ~11k images; on the testbed the
# images of one scenario (the gallery is far smaller, so 100 would cover a twelfth of it)
K_ENTROPY = ENTROPY_K or (100 if PROFILE == "paper" else 4 * N_GALLERY_SCENES)

# %% [markdown]
# ## Imports

# %% tags=["hide-input"]
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from IPython.display import Markdown, display
from myst_nb import glue
from scipy.stats import spearmanr

import fairvlm
from fairvlm import clip_heads as ch
from fairvlm import metrics, probes, retrieval
from fairvlm.data import load_sobit
from fairvlm.errors import DataError
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
# On the testbed, the probe set and the evaluation gallery are both *counterfactual
# quadruplets*: held-out scenes (never seen in training) drawn once per group (Black man,
# Black woman, White man, White woman), so every group is equally frequent in every
# scenario and the probe cannot lean on the scene. The two sets use disjoint scene seeds.
# Prototypes are averaged over the probe set only; all fairness numbers come from the
# gallery. Gender labels are written `male`/`female` throughout (the testbed's `man`/`woman`).

# %% tags=["hide-input"]
lm = load(MODEL_NAME, **({"size": TESTBED_SIZE} if MODEL_NAME.startswith("testbed") else {}))
model = lm.model
N_LAYERS = len(ch.encoder_layers(model))
N_HEADS, HEAD_DIM, WIDTH = ch.attention_shape(model)
GENDER_NAMES = {"man": "male", "woman": "female", "male": "male", "female": "female"}


def _norm_meta(meta: pd.DataFrame) -> pd.DataFrame:
    out = meta.copy()
    out["gender"] = [GENDER_NAMES.get(str(g).lower(), str(g).lower()) for g in out["gender"]]
    out["race"] = [str(r).lower() for r in out["race"]]
    out["group"] = out["gender"] + "|" + out["race"]
    return out


galleries = {}           # name -> {"meta", "pixels", "image"}: what gets encoded per variant
scenario_suites = []     # ranking audits: each query ranks the images of its own scenario
planted_scen = None      # testbed ground truth per scenario (p_man, p_black)
planted_words = None     # testbed ground truth per word
recall_suite = None
zeroshot_suite = None

if ON_TESTBED:
    from fairvlm.testbed import captions as tb_captions
    from fairvlm.testbed import world
    from fairvlm.testbed.scenarios import SCENARIOS
    from fairvlm.testbed.spec import load_spec

    spec = load_spec()
    size = world.DEFAULT_SIZE
    probe_rows = world.gallery(N_PROBE_SCENES, split="heldout", start=500)
    probe_pixels = retrieval.pixel_values(lm, world.render_rows(probe_rows, size))
    probe_meta = _norm_meta(probe_rows)
    probe_sets = (probe_rows["scenario"] + "#" + probe_rows["scene_seed"].astype(str)).to_numpy()
    gal_rows = world.gallery(N_GALLERY_SCENES, split="heldout", start=0)
    gal_images = world.render_rows(gal_rows, size)
    gal_meta = _norm_meta(gal_rows)
    galleries["testbed"] = {"meta": gal_meta, "pixels": retrieval.pixel_values(lm, gal_images),
                            "image": gal_images.__getitem__}
    keys = list(dict.fromkeys(gal_meta["scenario"]))
    scen_queries = pd.DataFrame({"key": keys, "prompt": [
        f"a photo of {tb_captions.with_article(SCENARIOS[k].role)}" for k in keys]})
    scenario_suites.append({"name": "testbed scenarios", "gallery": "testbed", "key_col": "scenario",
                            "queries": scen_queries})
    planted_scen = spec.share_table()[["scenario", "p_man", "p_black", "gender_skew", "race_skew", "note"]]
    planted_words = spec.word_table()[["word", "category", "p_man", "p_black", "gender_skew", "race_skew", "note"]]
    word_gallery = "testbed"
    # utility: one held-out caption per gallery image, drawn by the testbed's caption model
    rng = np.random.default_rng(SEED)
    caps = [tb_captions.caption(spec, r.scenario, {"male": "man", "female": "woman"}[r.gender], r.race, rng)
            for r in gal_meta.itertuples()]
    named = [tb_captions.mentions(c) for c in caps]
    # a caption is satisfied by every image of its scenario that matches what it names
    rel = np.zeros((len(caps), len(gal_meta)), dtype=bool)
    scen = gal_meta["scenario"].to_numpy()
    gen = gal_meta["gender"].to_numpy()
    rac = gal_meta["race"].to_numpy()
    for i, (c, m) in enumerate(zip(caps, named)):
        ok = scen == scen[i]
        if m["gender"]:
            ok &= gen == gen[i]
        if m["race"]:
            ok &= rac == rac[i]
        rel[i] = ok
    recall_suite = {"gallery": "testbed", "captions": caps, "relevant": rel,
                    "relevance": "same scenario, and the same gender/race when the caption names them"}
    zeroshot_suite = {"gallery": "testbed", "key_col": "scenario", "classes": keys,
                      "prompts": tb_captions.zero_shot_prompts(keys)}
    data_desc = (f"testbed world (synthetic): probe set {len(probe_meta)} images, gallery {len(gal_meta)} "
                 f"images, held-out scenes, 4 variants each")
else:
    from fairvlm.data import label_table

    pairs = retrieval.pairs_gallery(PAIRS_DIR or None, mapped_only=True)
    pairs_meta = _norm_meta(pairs.meta)
    galleries["pairs"] = {"meta": pairs_meta, "pixels": retrieval.pixel_values(lm, pairs.images()),
                          "image": pairs.image}
    labels = list(dict.fromkeys(pairs_meta["label"]))
    scenario_suites.append({"name": "PAIRS labels", "gallery": "pairs", "key_col": "label",
                            "queries": pd.DataFrame({"key": labels, "prompt": [f"a photo of a {x}" for x in labels]})})
    zeroshot_suite = {"gallery": "pairs", "key_col": "label", "classes": labels,
                      "prompts": [f"a photo of a {x}" for x in labels]}
    if FAIRFACE_DIR:
        probe_g = retrieval.load_fairface(FAIRFACE_DIR, "train", limit=500, seed=SEED)
        ff_val = retrieval.load_fairface(FAIRFACE_DIR, "validation", limit=FAIRFACE_LIMIT or None, seed=SEED)
        galleries["fairface"] = {"meta": _norm_meta(ff_val.meta),
                                 "pixels": retrieval.pixel_values(lm, ff_val.images()), "image": ff_val.image}
        word_gallery = "fairface"
        probe_meta = _norm_meta(probe_g.meta)
        probe_pixels = retrieval.pixel_values(lm, probe_g.images())
        probe_sets = None  # FairFace photos are independent: a stratified split
    else:
        word_gallery = "pairs"
        probe_meta = pairs_meta
        probe_pixels = galleries["pairs"]["pixels"]
        probe_sets = pairs_meta["scenario"].to_numpy()  # the four PAIRS images of a scenario
    if SISPI_DIR:
        sispi = retrieval.load_sispi(SISPI_DIR)
        sm = sispi.meta.rename(columns={"ethnicity": "race"})
        galleries["sispi"] = {"meta": _norm_meta(sm), "pixels": retrieval.pixel_values(lm, sispi.images()),
                              "image": sispi.image}
        profs = list(dict.fromkeys(sm["profession"]))
        scenario_suites.append({"name": "SISPI professions", "gallery": "sispi", "key_col": "profession",
                                "queries": pd.DataFrame({"key": profs, "prompt": [
                                    f"a photo of {'an' if p[0] in 'aeiou' else 'a'} {p}" for p in profs]})})
    if COCO_JSON:
        coco = retrieval.load_karpathy(COCO_JSON, COCO_IMAGES, "test")
        galleries["coco"] = {"meta": coco.meta.assign(gender="na", race="na", group="na"),
                             "pixels": retrieval.pixel_values(lm, coco.images()), "image": coco.image}
        rel = np.zeros((len(coco.captions), len(coco)), dtype=bool)
        rel[np.arange(len(coco.captions)), coco.captions["image"].to_numpy()] = True
        recall_suite = {"gallery": "coco", "captions": coco.captions["caption"].tolist(), "relevant": rel,
                        "relevance": "the captioned image (Karpathy test split)"}
    data_desc = ("PAIRS (mapped labels)" + (", FairFace" if FAIRFACE_DIR else "") + (", SISPI" if SISPI_DIR else "")
                 + (", COCO Karpathy test" if COCO_JSON else ""))

# So-B-IT words (the real taxonomy), in both prompt styles. Without the taxonomy file
# (a laptop with no copy of the data) the testbed's planted words, which come from
# So-B-IT categories, stand in for it.
try:
    sobit = load_sobit()
except DataError as exc:
    if planted_words is None:
        raise
    display(Markdown(f"**So-B-IT taxonomy not found**, so only the testbed's planted words are "
                     f"used as word queries. {exc}"))
    sobit = planted_words[["category", "word"]].iloc[:0]
if N_WORDS_PER_CATEGORY:
    sobit = sobit.groupby("category", sort=False).head(N_WORDS_PER_CATEGORY)
if planted_words is not None:  # the testbed's planted words join their So-B-IT category
    extra = planted_words[~planted_words["word"].isin(sobit["word"])][["category", "word"]]
    sobit = pd.concat([sobit, extra], ignore_index=True)
sobit = sobit.drop_duplicates("word").reset_index(drop=True)
WORD_STYLES = {"word": "{w}", "template": "a photo of {a} {w} person"}


def word_prompt(style: str, w: str) -> str:
    a = "an" if w[:1].lower() in "aeiou" else "a"
    return WORD_STYLES[style].format(w=w, a=a)


display(Markdown(f"**Model** `{MODEL_NAME}`: {N_LAYERS} vision layers x {N_HEADS} heads of width {HEAD_DIM} "
                 f"(residual width {WIDTH}). **Data**: {data_desc}; {len(sobit)} So-B-IT words."))

# %% [markdown]
# ## The decomposition, checked
#
# `fairvlm.clip_heads.cls_decomposition` runs the encoder once and returns, for the CLS
# token of one layer, one vector per head (twelve in ViT-B), the out_proj bias and the
# skip connection. Their sum must equal the hidden state after the
# attention residual add (before the MLP). The authors' open_clip code slices heads along
# a `(batch x heads)` axis and is only right for one image at a time; the library slices
# the feature axis, so the check below uses a batch of 16 images.

# %% tags=["hide-input"]
dec = ch.cls_decomposition(model, probe_pixels[:16])
identity_err = float((dec.reconstruction() - dec.resid_mid).abs().max())
identity_scale = float(dec.resid_mid.abs().max())
c1 = torch.cat([ch.head_contributions(model, probe_pixels[i:i + 1]) for i in range(4)])
batch_err = float((c1 - ch.head_contributions(model, probe_pixels[:4])).abs().max())
glue("identity_err", f"{identity_err:.1e}", display=False)
glue("identity_scale", f"{identity_scale:.1f}", display=False)
glue("batch_err", f"{batch_err:.1e}", display=False)
assert identity_err <= 1e-4 * max(1.0, identity_scale), "the head decomposition does not add up"

# %% [markdown]
# The largest deviation between the reconstruction and the real hidden state is
# {glue:text}`identity_err` (entries reach {glue:text}`identity_scale` in size), and
# computing four images one by one or as a batch differs by at most
# {glue:text}`batch_err`: float rounding.
#
# ## Which heads know gender and race? (Table 1)
#
# One fresh linear probe per head of the last layer (one `nn.Linear`, Adam 1e-3, 10
# full-batch epochs, 80/20 split), on the head's CLS vector. Three choices the paper
# leaves open are stated in `fairvlm.probes`: the four renderings of a counterfactual
# scene stay on the same side of the split, probes start at zero, and features are
# standardized with the training split's statistics. Heads are numbered from 1 in the
# tables, as in the paper.

# %% tags=["hide-input"]
head_out = ch.head_outputs(model, probe_pixels, layers=range(N_LAYERS), batch_size=64)
LAST = N_LAYERS - 1
contrib = ch.project_heads(model, LAST, head_out[LAST])
cfg = probes.ProbeConfig(seed=SEED)
positive_gender = "female"
gender_res = probes.probe_heads(contrib, probe_meta["gender"], config=cfg, positive=positive_gender, layer=LAST,
                                groups=probe_sets)
race_res = probes.probe_heads(contrib, probe_meta["race"], config=cfg, layer=LAST, groups=probe_sets)
gender_experts = probes.select_experts(gender_res.table, EXPERT_RULE, k=EXPERT_K)
race_experts = probes.select_experts(race_res.table, EXPERT_RULE, k=EXPERT_K)
if not gender_experts or not race_experts:
    raise ParameterError(f"EXPERT_RULE={EXPERT_RULE!r} selected no head; lower the threshold or use 'top_k'")


def heads1(hs) -> str:
    return ",".join(str(h + 1) for h in hs)


probe_table = pd.concat([
    gender_res.table.assign(attribute="gender"), race_res.table.assign(attribute="race")
], ignore_index=True)
probe_table["head_1based"] = probe_table["head"] + 1
probe_table["expert"] = [
    h in (gender_experts if a == "gender" else race_experts) for h, a in zip(probe_table["head"], probe_table["attribute"])
]
wide = probe_table.pivot_table(index="attribute", columns="head_1based", values=["accuracy", "ap"])
wide = wide.swaplevel(axis=1).sort_index(axis=1)
wide.columns = [f"h:{h} {m.replace('accuracy', 'Acc').replace('ap', 'AP')}" for h, m in wide.columns]
display(wide.round(3))
display(Markdown(f"Expert heads (rule `{EXPERT_RULE}`, k={EXPERT_K}): gender **{heads1(gender_experts)}**, "
                 f"race **{heads1(race_experts)}** (1-based)."))

others_g = gender_res.table[~gender_res.table["head"].isin(gender_experts)]
experts_g = gender_res.table[gender_res.table["head"].isin(gender_experts)]
glue("gender_experts", heads1(gender_experts), display=False)
glue("race_experts", heads1(race_experts), display=False)
glue("expert_ap", f"{experts_g['ap'].mean():.3f}", display=False)
glue("other_ap", f"{others_g['ap'].median():.3f}", display=False)
glue("overlap", heads1(sorted(set(gender_experts) & set(race_experts))) or "none", display=False)

# %% [markdown]
# The gender experts are heads {glue:text}`gender_experts` with a mean held-out AP of
# {glue:text}`expert_ap` against a median of {glue:text}`other_ap` for the other heads;
# the race experts are heads {glue:text}`race_experts` (shared with gender:
# {glue:text}`overlap`). The paper found heads 3, 11 and 12 of ViT-B/32 for gender and
# 3, 10 and 11 for ethnicity, two of them shared.
#
# ### Precision-recall curves of the gender probes

# %% tags=["hide-input"]
fig, ax = plt.subplots(figsize=(5.2, 3.6))
for row in range(len(gender_res.table)):
    prec, rec = probes.pr_curve(gender_res, row)
    h = int(gender_res.table["head"].iloc[row])
    is_exp = h in gender_experts
    ax.plot(rec, prec, lw=1.6 if is_exp else 0.8, alpha=1.0 if is_exp else 0.45,
            label=f"h:{h + 1}" if is_exp else None)
ax.set_xlabel("recall")
ax.set_ylabel("precision")
ax.set_title(f"Gender probes, last layer (positive = {positive_gender}); experts labelled")
ax.legend(frameon=False, fontsize=8)
savefig(fig, "07_clip_heads_pr_curves")

# %% [markdown]
# ### Across layers
#
# The paper probes only the last layer, following Gandelsman et al. (2024), who found that
# the last layers write most of CLIP's image representation. Probing every layer shows
# where gender becomes linearly readable in this model.

# %% tags=["hide-input"]
layer_rows = []
for li in range(N_LAYERS):
    c_l = ch.project_heads(model, li, head_out[li])
    t = probes.probe_heads(c_l, probe_meta["gender"], config=cfg, positive=positive_gender, layer=li,
                           split=(gender_res.train_idx, gender_res.test_idx)).table
    layer_rows.append(t)
layer_ap = pd.concat(layer_rows, ignore_index=True)
heat = layer_ap.pivot(index="layer", columns="head", values="ap")
heat.index = [f"L{i + 1}" for i in heat.index]
heat.columns = [f"h{h + 1}" for h in heat.columns]
fig, ax = plt.subplots(figsize=(0.55 * N_HEADS + 2, 0.4 * N_LAYERS + 1.2))
sns.heatmap(heat, annot=N_HEADS <= 12, fmt=".2f", cmap="viridis", ax=ax, cbar_kws={"label": "held-out AP (gender)"})
ax.set_xlabel("head")
ax.set_ylabel("layer")
savefig(fig, "07_clip_heads_layer_head_ap")
best_layer = int(layer_ap.groupby("layer")["ap"].max().idxmax())
glue("best_layer", best_layer + 1, display=False)
glue("n_layers", N_LAYERS, display=False)

# %% [markdown]
# The single best gender head sits in layer {glue:text}`best_layer` of
# {glue:text}`n_layers`.
#
# ### Two traps: ten Adam steps from a random start, and split counterfactual sets
#
# Ten full-batch epochs are ten optimizer steps; at learning rate 1e-3 each weight moves
# by about 0.01, less than PyTorch's default initialization (uniform in
# $\pm 1/\sqrt{d}$), so a random start can decide the ranking of heads. And when the
# male and female renderings of one scene fall on different sides of a random split, a
# probe that merely recognises the scene learns the *opposite* label for the held-out
# twin, which pushes AUROC below chance. The table compares, over five split seeds, the
# book's default (grouped split, zero start, standardized features) with the paper's
# literal recipe (`init="torch"`, raw features) and with a plain random split.

# %% tags=["hide-input"]
trap_rows = []
recipes = [("book default (grouped split, zero init, standardized)", {}, probe_sets),
           ("PyTorch init, raw features", {"init": "torch", "standardize": False}, probe_sets)]
if probe_sets is not None:
    recipes.append(("random split (counterfactual sets split apart)", {}, None))
for s in range(5):
    for label, kw, grp in recipes:
        t = probes.probe_heads(contrib, probe_meta["gender"], config=probes.ProbeConfig(seed=s, **kw),
                               positive=positive_gender, groups=grp).table
        top = set(probes.select_experts(t, "top_k", k=min(EXPERT_K, N_HEADS)))
        trap_rows.append({"probe": label, "seed": s, "mean_auroc": t["auroc"].mean(), "mean_ap": t["ap"].mean(),
                          "max_ap": t["ap"].max(), "same_experts_as_default": top == set(gender_experts)})
trap = pd.DataFrame(trap_rows)
trap_summary = trap.groupby("probe", sort=False).agg(
    mean_auroc=("mean_auroc", "mean"), mean_ap=("mean_ap", "mean"), max_ap=("max_ap", "mean"),
    expert_set_agreement=("same_experts_as_default", "mean"))
display(trap_summary.round(3))
glue("trap_agree_torch", f"{trap_summary.loc['PyTorch init, raw features', 'expert_set_agreement']:.0%}", display=False)
glue("trap_agree_zero", f"{trap_summary.iloc[0]['expert_set_agreement']:.0%}", display=False)
glue("trap_auroc_random", f"{trap_summary.iloc[-1]['mean_auroc']:.2f}" if probe_sets is not None else "n/a",
     display=False)
glue("trap_auroc_grouped", f"{trap_summary.iloc[0]['mean_auroc']:.2f}", display=False)

# %% [markdown]
# With the book's probes the same experts come out in {glue:text}`trap_agree_zero` of the
# five splits; with the literal recipe in {glue:text}`trap_agree_torch`. An expert list
# that changes with the probe's random start is a property of the probe, not of the model.
# Splitting counterfactual sets apart gives a mean AUROC of {glue:text}`trap_auroc_random`
# against {glue:text}`trap_auroc_grouped` with grouped splits.
#
# ## Neurons inside expert heads (Figure 1)
#
# A *neuron* is one coordinate of a head's CLS vector; each gets its own one-feature probe.
# Figure 1 of the paper shows many high-AP neurons in expert heads and few elsewhere. We
# compare the gender experts with the same number of lowest-AP heads.

# %% tags=["hide-input"]
low_heads = gender_res.table.sort_values("ap", kind="stable")["head"].head(len(gender_experts)).tolist()
neuron_res = probes.probe_neurons(contrib, probe_meta["gender"], heads=gender_experts + low_heads, config=cfg,
                                  positive=positive_gender, split=(gender_res.train_idx, gender_res.test_idx))
neurons = neuron_res.table.assign(kind=lambda d: np.where(d["head"].isin(gender_experts), "expert", "other"))
# threshold: the 95th percentile of neuron AP in the non-expert heads (the paper's 0.42 is an
# absolute AP on its data; AP's chance level depends on the class balance, so we use a relative one)
neuron_threshold = float(neurons.loc[neurons["kind"] == "other", "ap"].quantile(0.95))
frac_above = neurons.groupby("kind")["ap"].apply(lambda a: float((a > neuron_threshold).mean()))
fig, axes = plt.subplots(2, len(gender_experts), figsize=(2.6 * len(gender_experts), 4.2), sharex=True, sharey=True,
                         squeeze=False)
for row, hs in enumerate([gender_experts, low_heads]):
    for col, h in enumerate(hs):
        ax = axes[row, col]
        sns.histplot(neurons.loc[neurons["head"] == h, "ap"], bins=25, ax=ax,
                     color=sns.color_palette()[0 if row == 0 else 1])
        ax.axvline(neuron_threshold, color="k", lw=0.8, ls="--")
        ax.set_title(f"{'expert' if row == 0 else 'other'} h:{h + 1}", fontsize=9)
        ax.set_xlabel("neuron AP (gender)")
savefig(fig, "07_clip_heads_neuron_ap")
glue("neuron_threshold", f"{neuron_threshold:.3f}", display=False)
glue("frac_expert", f"{frac_above.get('expert', 0.0):.1%}", display=False)
glue("frac_other", f"{frac_above.get('other', 0.0):.1%}", display=False)
expert_neurons = neurons[(neurons["kind"] == "expert") & (neurons["ap"] > neuron_threshold)]

# %% [markdown]
# Above the dashed line (AP {glue:text}`neuron_threshold`, the 95th percentile of the
# other heads' neurons) lie {glue:text}`frac_expert` of the expert heads' neurons and
# {glue:text}`frac_other` of the other heads' (about 5% by construction). Those expert-head
# neurons are the targets of the neuron-level variants below.
#
# ## Interventions
#
# Every variant edits the CLS token of the last layer while the gallery is encoded
# (`fairvlm.clip_heads.intervene`; hooks are removed afterwards) and leaves the text side
# alone, except the biased-prompts baseline, which projects the text queries, and
# CLIP-clip, which drops the embedding dimensions that carry most mutual information with
# gender (estimated on the probe set). Prototypes are means over the probe set: `person`
# over all images, `male`/`female`/`white` over one group, `male+white` over the
# intersection (on the union of gender and race experts, the paper's intersectional
# variant).

# %% tags=["hide-input"]
probe_groups = probe_meta["group"].tolist()
protos = {
    "gender": ch.head_prototypes(contrib, probe_meta["gender"], layer=LAST),
    "race": ch.head_prototypes(contrib, probe_meta["race"], layer=LAST),
    "group": ch.head_prototypes(contrib, probe_meta["group"], layer=LAST),
}
G, R = gender_experts, race_experts
union = sorted(set(G) | set(R))
neuron_mask = torch.zeros(len(G), WIDTH, dtype=torch.bool)
for i, h in enumerate(G):
    idx = np.array(expert_neurons.loc[expert_neurons["head"] == h, "neuron"], dtype=np.int64)
    neuron_mask[i, torch.from_numpy(idx)] = True
white_key = "white" if "white" in protos["race"].groups else None
mw_key = "male|white" if "male|white" in protos["group"].groups else None

variants = [{"variant": "none", "family": "baseline", "heads": "", "edits": []}]
for grp in ["all", "male", "female"]:
    name = {"all": "person"}.get(grp, grp)
    variants.append({"variant": f"{name} (experts)", "family": "prototype", "prototype": name, "heads": heads1(G),
                     "edits": [ch.prototype_replacement(protos["gender"], grp, G)]})
variants.append({"variant": "zero (experts)", "family": "zero", "heads": heads1(G), "edits": [ch.zero_ablation(G, layer=LAST)]})
variants.append({"variant": f"damp {DAMP_ALPHA:g} (experts)", "family": "damping", "heads": heads1(G),
                 "edits": [ch.damping(G, DAMP_ALPHA, layer=LAST)]})
for h in G:
    for grp in ["all", "male", "female"]:
        name = {"all": "person"}.get(grp, grp)
        variants.append({"variant": f"{name} (h:{h + 1})", "family": "single head", "prototype": name,
                         "heads": heads1([h]), "edits": [ch.prototype_replacement(protos["gender"], grp, [h])]})
    variants.append({"variant": f"damp {DAMP_ALPHA:g} (h:{h + 1})", "family": "single head", "heads": heads1([h]),
                     "edits": [ch.damping([h], DAMP_ALPHA, layer=LAST)]})
if bool(neuron_mask.any()):
    for grp in ["all", "male"]:
        name = {"all": "person"}.get(grp, grp)
        variants.append({"variant": f"{name} (expert neurons)", "family": "neurons", "prototype": name,
                         "heads": heads1(G), "edits": [ch.prototype_replacement(protos["gender"], grp, G, neurons=neuron_mask)]})
    variants.append({"variant": "zero (expert neurons)", "family": "neurons", "heads": heads1(G),
                     "edits": [ch.zero_ablation(G, layer=LAST, neurons=neuron_mask)]})
if white_key:
    variants.append({"variant": "white (race experts)", "family": "prototype", "prototype": "white",
                     "heads": heads1(R), "edits": [ch.prototype_replacement(protos["race"], "white", R)]})
if mw_key:
    variants.append({"variant": "male+white (union)", "family": "prototype", "prototype": "male+white",
                     "heads": heads1(union), "edits": [ch.prototype_replacement(protos["group"], mw_key, union)]})
variants.append({"variant": "CLIP-clip", "family": "baseline method", "heads": "", "edits": []})
variants.append({"variant": "biased prompts", "family": "baseline method", "heads": "", "edits": []})
display(Markdown(f"{len(variants)} variants, each encoding {sum(len(g['meta']) for g in galleries.values())} gallery images."))

# %% [markdown]
# ### Encoding the gallery under each variant

# %% tags=["hide-input", "remove-stderr"]
from tqdm.auto import tqdm

# every edit acts on the last layer: encode up to it once, then run only the last layer per
# variant (fairvlm.clip_heads.embed_from_layer; equal to a full forward pass, see the tests)
t0 = time.perf_counter()
last_inputs = {name: ch.layer_inputs(model, g["pixels"], layer=LAST) for name, g in galleries.items()}
image_emb, encode_time = {}, {"(shared layers)": time.perf_counter() - t0}
for v in tqdm(variants, desc="variants"):
    if v["family"] == "baseline method":
        continue
    t0 = time.perf_counter()
    image_emb[v["variant"]] = {name: ch.embed_from_layer(model, h, layer=LAST, edits=v["edits"])
                               for name, h in last_inputs.items()}
    encode_time[v["variant"]] = time.perf_counter() - t0
image_emb["CLIP-clip"] = image_emb["biased prompts"] = image_emb["none"]

# texts: everything any suite needs, embedded once
text_list = []
for s in scenario_suites:
    text_list += s["queries"]["prompt"].tolist()
text_list += [word_prompt(st, w) for st in WORD_STYLES for w in sobit["word"]]
if recall_suite:
    text_list += recall_suite["captions"]
if zeroshot_suite:
    text_list += zeroshot_suite["prompts"]
text_list = list(dict.fromkeys(text_list))
text_index = {t: i for i, t in enumerate(text_list)}
text_emb_base = retrieval.embed_texts(lm, text_list)


def texts(emb, items):
    return emb[[text_index[t] for t in items]]


# baselines, fitted on the probe set (CLIP-clip) or on text prompts only (biased prompts)
probe_emb = retrieval.embed_images(model, probe_pixels)
EMB_DIM = probe_emb.shape[1]
clip_m = max(1, int(round(CLIPCLIP_KEEP * EMB_DIM)))
clip_keep = retrieval.clip_clip_dims(probe_emb, probe_meta["gender"], clip_m, seed=SEED)
role_words = scenario_suites[0]["queries"]["key"].str.replace("_", " ").tolist()
spurious = retrieval.embed_texts(lm, ["a photo of a man", "a photo of a woman", "a photo of a male", "a photo of a female"])
pa = retrieval.embed_texts(lm, [f"a photo of a male {w}" for w in role_words])
pb = retrieval.embed_texts(lm, [f"a photo of a female {w}" for w in role_words])
bp_proj = retrieval.biased_prompts_projection(spurious, pa, pb, lam=BIASED_PROMPTS_LAMBDA)
text_emb = {v["variant"]: text_emb_base for v in variants}
text_emb["biased prompts"] = retrieval.project_texts(text_emb_base, bp_proj)
image_emb["CLIP-clip"] = {n: retrieval.keep_dims(e, clip_keep) for n, e in image_emb["none"].items()}
text_emb["CLIP-clip"] = retrieval.keep_dims(text_emb_base, clip_keep)
glue("clip_m", f"{clip_m} of {EMB_DIM}", display=False)
glue("t_variants", f"{sum(encode_time.values()):.0f}", display=False)

# %% [markdown]
# CLIP-clip keeps {glue:text}`clip_m` embedding dimensions. Encoding the gallery under all
# variants took {glue:text}`t_variants` s: the layers before the last one run once, and
# each variant reruns only the last layer from the cached hidden states.
#
# ### Fairness and utility per variant

# %% tags=["hide-input"]
scen_rows, word_rows, summary_rows = [], [], []
for v in variants:
    name = v["variant"]
    T = text_emb[name]
    row = {"variant": name, "family": v["family"], "heads": v["heads"]}
    # scenario queries: NDKL over each scenario's own images, MaxSkew@k over the whole gallery
    for suite in scenario_suites:
        meta = galleries[suite["gallery"]]["meta"]
        I = image_emb[name][suite["gallery"]]
        sim = (texts(T, suite["queries"]["prompt"]) @ I.T).numpy()
        keys_arr = meta[suite["key_col"]].to_numpy()
        cand = np.stack([keys_arr == k for k in suite["queries"]["key"]])
        k_skew = int(cand.sum(axis=1).min())
        per_attr = {}
        for attr in ("gender", "race"):
            t_nd = retrieval.query_fairness(sim, meta[attr], k=min(k_skew, 4), candidates=cand,
                                            queries=suite["queries"]["key"])
            t_sk = retrieval.query_fairness(sim, meta[attr], k=k_skew, queries=suite["queries"]["key"])
            per_attr[attr] = (t_nd["ndkl"].to_numpy(), t_sk["max_skew"].to_numpy())
        top = np.argsort(-sim, axis=1, kind="stable")[:, :k_skew]
        male_share = (meta["gender"].to_numpy()[top] == "male").mean(axis=1)
        black_share = (meta["race"].to_numpy()[top] == "black").mean(axis=1)
        scen_rows.append(pd.DataFrame({
            "variant": name, "suite": suite["name"], "query": suite["queries"]["key"],
            "ndkl_gender": per_attr["gender"][0], "ndkl_race": per_attr["race"][0],
            "maxskew_gender": per_attr["gender"][1], "maxskew_race": per_attr["race"][1],
            "topk_male_share": male_share, "topk_black_share": black_share, "k": k_skew,
        }))
    # So-B-IT words: normalized entropy of gender and race in the top-k
    wmeta = galleries[word_gallery]["meta"]
    Iw = image_emb[name][word_gallery]
    k_ent = min(K_ENTROPY, len(wmeta))
    for style in WORD_STYLES:
        prompts = [word_prompt(style, w) for w in sobit["word"]]
        sim = (texts(T, prompts) @ Iw.T).numpy()
        ent = retrieval.word_entropy(sim, {"gender": wmeta["gender"], "race": wmeta["race"]}, k=k_ent,
                                     queries=sobit["word"])
        top = np.argsort(-sim, axis=1, kind="stable")[:, :k_ent]
        ent = ent.pivot(index="query", columns="attribute", values="entropy").reindex(sobit["word"])
        word_rows.append(pd.DataFrame({
            "variant": name, "style": style, "word": sobit["word"].to_numpy(), "category": sobit["category"].to_numpy(),
            "entropy_gender": ent["gender"].to_numpy(), "entropy_race": ent["race"].to_numpy(),
            "topk_male_share": (wmeta["gender"].to_numpy()[top] == "male").mean(axis=1),
            "topk_black_share": (wmeta["race"].to_numpy()[top] == "black").mean(axis=1),
        }))
    # utility
    if recall_suite:
        I = image_emb[name][recall_suite["gallery"]]
        sim = (texts(T, recall_suite["captions"]) @ I.T).numpy()
        r_t2i = metrics.recall_at_k(sim, recall_suite["relevant"], (1, 5, 10))
        r_i2t = metrics.recall_at_k(sim.T, recall_suite["relevant"].T, (1, 5, 10))
        row.update({f"t2i_R@{k}": r_t2i[k] for k in (1, 5, 10)})
        row.update({f"i2t_R@{k}": r_i2t[k] for k in (1, 5, 10)})
    if zeroshot_suite:
        zmeta = galleries[zeroshot_suite["gallery"]]["meta"]
        cls_index = {c: i for i, c in enumerate(zeroshot_suite["classes"])}
        y = [cls_index[c] for c in zmeta[zeroshot_suite["key_col"]]]
        row["zero_shot_acc"] = metrics.zero_shot_accuracy(image_emb[name][zeroshot_suite["gallery"]],
                                                          texts(T, zeroshot_suite["prompts"]), y)
    summary_rows.append(row)

scen_table = pd.concat(scen_rows, ignore_index=True)
word_table = pd.concat(word_rows, ignore_index=True)
if planted_scen is not None:  # the planted ground truth beside every measured row
    scen_table = scen_table.merge(planted_scen[["scenario", "p_man", "p_black"]].rename(
        columns={"scenario": "query", "p_man": "planted_p_man", "p_black": "planted_p_black"}), on="query", how="left")
    word_table = word_table.merge(planted_words[["word", "p_man", "p_black"]].rename(
        columns={"p_man": "planted_p_man", "p_black": "planted_p_black"}), on="word", how="left")
util = pd.DataFrame(summary_rows)
main_suite = scenario_suites[0]["name"]
fair = (scen_table[scen_table["suite"] == main_suite].groupby("variant", sort=False)
        [["ndkl_gender", "ndkl_race", "maxskew_gender", "maxskew_race"]].mean())
ent_mean = word_table.groupby(["variant", "style"], sort=False)[["entropy_gender", "entropy_race"]].mean().unstack("style")
ent_mean.columns = [f"H_{a.split('_')[1]} ({s})" for a, s in ent_mean.columns]
summary = util.set_index("variant").join(fair).join(ent_mean).reset_index()
base = summary.set_index("variant").loc["none"]
summary["ndkl_gender_change"] = summary["ndkl_gender"] / base["ndkl_gender"] - 1.0

# %% [markdown]
# The main table: one row per variant. NDKL (lower is fairer) ranks each scenario's own
# images for the scenario query, as on SISPI (Table 2); MaxSkew@k looks at the top k of
# the whole gallery (k = images per scenario); H is the normalized entropy of gender or
# race in the top {glue:text}`k_ent` for every So-B-IT word, as a bare word and in the
# template "a photo of a/an {word} person" (Table 4; higher is fairer). Utility:
# Recall@K in both directions and zero-shot scenario accuracy.

# %% tags=["hide-input"]
glue("k_ent", k_ent, display=False)
show_cols = ["variant", "heads", "ndkl_gender", "ndkl_gender_change", "ndkl_race", "maxskew_gender", "maxskew_race"]
show_cols += [c for c in ent_mean.columns]
show_cols += [c for c in ["t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1", "i2t_R@5", "i2t_R@10", "zero_shot_acc"] if c in summary]
display(summary[show_cols].round(3).style.hide(axis="index").format(precision=3)
        .format("{:+.1%}", subset=["ndkl_gender_change"]))

# %% [markdown]
# ### Against the planted ground truth
#
# The testbed knows how skewed each scenario was in training. If testbed-clip learned
# that bias, the share of men among a scenario query's top-k should rise with the
# planted share of men (positive rank correlation, with the balanced control scenarios
# near 0.5); a debiasing intervention should flatten that relation.

# %% tags=["hide-input"]
if planted_scen is not None:
    gt_rows = []
    for name, d in scen_table[scen_table["suite"] == main_suite].groupby("variant", sort=False):
        m = d.merge(planted_scen, left_on="query", right_on="scenario")
        gt_rows.append({
            "variant": name,
            "spearman_gender": spearmanr(m["p_man"], m["topk_male_share"]).statistic,
            "spearman_race": spearmanr(m["p_black"], m["topk_black_share"]).statistic,
            "mean_abs_gender_skew": float(np.abs(m["topk_male_share"] - 0.5).mean()),
        })
    gt = pd.DataFrame(gt_rows)
    wt = word_table.dropna(subset=["planted_p_man"])
    wgt = (wt.groupby(["variant", "style"], sort=False)
           .apply(lambda d: spearmanr(d["planted_p_man"], d["topk_male_share"]).statistic, include_groups=False)
           .unstack("style").add_prefix("words_spearman_gender (").add_suffix(")"))
    gt = gt.set_index("variant").join(wgt).reset_index()
    display(gt.round(3).style.hide(axis="index").format(precision=3))
    g0 = gt.set_index("variant")
    glue("gt_base_rho", f"{g0.loc['none', 'spearman_gender']:.2f}", display=False)
    glue("gt_base_race_rho", f"{g0.loc['none', 'spearman_race']:.2f}", display=False)
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    m0 = scen_table[(scen_table["variant"] == "none") & (scen_table["suite"] == main_suite)].merge(
        planted_scen, left_on="query", right_on="scenario")
    ax.scatter(m0["p_man"], m0["topk_male_share"], s=18, label="no intervention")
    gender_protos = summary[(summary["family"] == "prototype") & summary["variant"].str.endswith("(experts)")]
    best_proto = gender_protos.sort_values("ndkl_gender", kind="stable")["variant"].iloc[0]
    m1 = scen_table[(scen_table["variant"] == best_proto) & (scen_table["suite"] == main_suite)].merge(
        planted_scen, left_on="query", right_on="scenario")
    ax.scatter(m1["p_man"], m1["topk_male_share"], s=18, marker="x", label=best_proto)
    ax.axhline(0.5, color="k", lw=0.6, ls=":")
    ax.set_xlabel("planted share of men in training")
    ax.set_ylabel("share of men in top-k")
    ax.legend(frameon=False, fontsize=8)
    savefig(fig, "07_clip_heads_planted_vs_retrieved")
else:
    gt = pd.DataFrame()
    glue("gt_base_rho", "n/a", display=False)
    glue("gt_base_race_rho", "n/a", display=False)
    display(Markdown("The `paper` profile has no planted ground truth."))

# %% [markdown]
# Without intervention the rank correlation between planted and retrieved share of men is
# {glue:text}`gt_base_rho` (race: {glue:text}`gt_base_race_rho`).
#
# ### So-B-IT categories
#
# Normalized entropy per category (the layout of the paper's Table 4), for the baseline,
# the prototype variants and the two baselines, word-as-query style.

# %% tags=["hide-input"]
focus = ["none", "person (experts)", "male (experts)", "female (experts)", "zero (experts)"]
focus += [v for v in ("white (race experts)", "male+white (union)", "CLIP-clip", "biased prompts") if v in image_emb]
cat = (word_table[(word_table["style"] == "word") & word_table["variant"].isin(focus)]
       .groupby(["variant", "category"], sort=False)[["entropy_race", "entropy_gender"]].mean()
       .rename(columns={"entropy_race": "R", "entropy_gender": "G"}).unstack("category"))
cat = cat.swaplevel(axis=1).sort_index(axis=1, level=0, sort_remaining=False).reindex(focus)
display(cat.round(2))

# %% [markdown]
# ## Top-8 retrievals before and after (Figure 2)

# %% tags=["hide-input"]
main = scenario_suites[0]
if planted_scen is not None:
    pick = planted_scen.loc[planted_scen["gender_skew"].abs().idxmax(), "scenario"]
else:
    pick = main["queries"]["key"].iloc[0]
prompt = main["queries"].set_index("key").loc[pick, "prompt"]
after_name = best_proto if planted_scen is not None else "male (experts)"
gmeta = galleries[main["gallery"]]["meta"]
fig, axes = plt.subplots(2, 8, figsize=(11, 3.3))
for row, name in enumerate(["none", after_name]):
    sim = (texts(text_emb[name], [prompt]) @ image_emb[name][main["gallery"]].T).numpy()[0]
    top8 = np.argsort(-sim, kind="stable")[:8]
    for col, idx in enumerate(top8):
        ax = axes[row, col]
        ax.imshow(galleries[main["gallery"]]["image"](int(idx)))
        ax.set_xticks([])
        ax.set_yticks([])
        r = gmeta.iloc[int(idx)]
        ok = "" if r[main["key_col"]] == pick else " *"
        ax.set_xlabel(f"{r['gender']}, {r['race']}{ok}", fontsize=7)
    axes[row, 0].set_ylabel("before" if row == 0 else "after", fontsize=9)
fig.suptitle(f'"{prompt}": no intervention (top) vs {after_name} (bottom); * = other scenario', fontsize=9)
savefig(fig, "07_clip_heads_top8")
glue("top8_query", prompt, display=False)

# %% [markdown]
# ## Paper vs this book
#
# Verdicts are computed from the numbers above by fixed rules (written in the cell); on
# the default profile they describe testbed-clip on the synthetic world, not CLIP on real
# photographs.

# %% tags=["hide-input"]
S = summary.set_index("variant")
b = S.loc["none"]
joint = S[S["family"].isin(["prototype", "zero"]) & S.index.str.endswith("(experts)")]
single = S[S["family"] == "single head"]
best_joint = joint["ndkl_gender"].idxmin()
best_joint_change = float(S.loc[best_joint, "ndkl_gender_change"])
best_single = single["ndkl_gender"].idxmin() if len(single) else None
proto_rank = joint[joint["family"] == "prototype"]["ndkl_gender"].sort_values()
util_cols = [c for c in ["t2i_R@5", "i2t_R@5", "zero_shot_acc"] if c in S]
util_drop = {c: float(b[c] - S.loc[best_joint, c]) for c in util_cols}
neuron_rows = S[S["family"] == "neurons"]
head_gain = -best_joint_change


def verdict(ok: bool, partly: bool = False) -> str:
    return "reproduced" if ok else ("partly" if partly else "not reproduced")


gap = float(experts_g["ap"].mean() - others_g["ap"].median())
claims = [
    ("Table 1: a few last-layer heads carry gender (ViT-B/32 heads 3, 11, 12; AP up to 0.98 vs about 0.75)",
     f"experts {heads1(G)}: mean AP {experts_g['ap'].mean():.3f} vs median {others_g['ap'].median():.3f} elsewhere",
     verdict(experts_g["ap"].min() > others_g["ap"].max() and gap >= 0.05 and experts_g["ap"].mean() >= 0.75,
             gap >= 0.02 and experts_g["ap"].mean() >= 0.6)),
    ("Figure 1: expert heads hold many high-AP neurons, other heads few",
     f"{frac_above.get('expert', 0):.1%} of expert-head neurons above the 95th percentile of the others",
     verdict(frac_above.get("expert", 0) >= 0.2, frac_above.get("expert", 0) > 0.1)),
    ("Table 2: editing all expert heads cuts NDKL (up to 42%)",
     f"best joint variant {best_joint}: NDKL {best_joint_change:+.1%}",
     verdict(best_joint_change <= -0.2, best_joint_change < -0.05)),
    ("Table 2: joint edits beat single-head edits",
     f"best joint NDKL {S.loc[best_joint, 'ndkl_gender']:.3f} ({best_joint_change:+.1%}) vs best single "
     f"{S.loc[best_single, 'ndkl_gender']:.3f}" if best_single else "no single-head variant",
     verdict(best_single is not None and best_joint_change < 0
             and S.loc[best_joint, "ndkl_gender"] < S.loc[best_single, "ndkl_gender"])),
    ("Table 2: the 'male' prototype is the best prototype",
     "order: " + " < ".join(proto_rank.index.str.replace(" (experts)", "", regex=False))
     + ("" if (joint.loc[proto_rank.index, "ndkl_gender_change"] < 0).any() else " (none lowers NDKL)"),
     verdict(len(proto_rank) > 0 and proto_rank.index[0].startswith("male")
             and S.loc[proto_rank.index[0], "ndkl_gender_change"] < 0)),
    ("Tables 2 and 5: utility barely moves (about 2 points of Recall@K)",
     ", ".join(f"{c} {-d:+.3f}" for c, d in util_drop.items()),
     verdict(all(d <= 0.02 for d in util_drop.values()), all(d <= 0.05 for d in util_drop.values()))),
    # "little" = less than 5% of the baseline NDKL, and less than half the head-level gain
    ("Table 3 (left): neuron-level edits do little",
     (f"best neuron variant NDKL {neuron_rows['ndkl_gender_change'].min():+.1%} vs head-level {best_joint_change:+.1%}"
      if len(neuron_rows) else "no expert neurons selected"),
     verdict(-neuron_rows["ndkl_gender_change"].min() < max(0.05, 0.5 * head_gain))
     if len(neuron_rows) else "not testable here"),
    (f"Table 3 (right): damping (alpha = 0.1) changes NDKL little",
     f"damp {DAMP_ALPHA:g} on experts: NDKL {S.loc[f'damp {DAMP_ALPHA:g} (experts)', 'ndkl_gender_change']:+.1%}",
     verdict(abs(S.loc[f"damp {DAMP_ALPHA:g} (experts)", "ndkl_gender_change"]) < 0.05)),
    ("Table 4: the male prototype raises gender entropy, comparably to CLIP-clip / biased prompts",
     f"H_gender (word): none {b['H_gender (word)']:.3f}, male {S.loc['male (experts)', 'H_gender (word)']:.3f}, "
     f"CLIP-clip {S.loc['CLIP-clip', 'H_gender (word)']:.3f}, biased prompts {S.loc['biased prompts', 'H_gender (word)']:.3f}",
     verdict(S.loc["male (experts)", "H_gender (word)"] > b["H_gender (word)"]
             and S.loc["male (experts)", "H_gender (word)"] >= min(S.loc["CLIP-clip", "H_gender (word)"],
                                                               S.loc["biased prompts", "H_gender (word)"]),
             S.loc["male (experts)", "H_gender (word)"] > b["H_gender (word)"])),
]
if util_cols:
    c0 = util_cols[0]
    clip_drop = float(b[c0] - S.loc["CLIP-clip", c0])
    male_drop = float(b[c0] - S.loc["male (experts)", c0])
    claims.append(("Table 5: CLIP-clip costs more utility than the intervention",
                   f"{c0} drop: CLIP-clip {clip_drop:+.3f}, male (experts) {male_drop:+.3f}",
                   verdict(clip_drop > male_drop)))
# overhead: interleaved repeats on the same images, median per condition (as the benchmark
# does); CPU time of this process, which other jobs on a shared machine disturb less than wall time
bench_pixels = galleries[main["gallery"]]["pixels"][:256]
bench_edit = [ch.prototype_replacement(protos["gender"], "all", G)]
t_plain, t_proto = [], []
for _ in range(7):
    for edits, store in (((), t_plain), (bench_edit, t_proto)):
        t0 = time.process_time()
        retrieval.embed_images(model, bench_pixels, edits=edits, batch_size=64)
        store.append(time.process_time() - t0)
t_plain, t_proto = float(np.median(t_plain)), float(np.median(t_proto))
overhead = t_proto / t_plain
claims.append(("Sec. 3.2: the intervention adds negligible inference cost",
               f"median CPU-time ratio {overhead:.3f} with a {len(G)}-head prototype ({len(bench_pixels)} images, "
               "7 interleaved repeats; benchmarks/bench_clip_heads.py times a ViT-B/32-sized encoder)",
               verdict(overhead <= 1.05, overhead <= 1.2)))
model_data = f"{MODEL_NAME}; {data_desc}"
paper_vs_book = pd.DataFrame([{"claim": c, "this book": o, "model and data": model_data, "verdict": v}
                              for c, o, v in claims])
display(paper_vs_book.style.hide(axis="index"))
glue("n_reproduced", int((paper_vs_book["verdict"] == "reproduced").sum()), display=False)
glue("n_claims", len(paper_vs_book), display=False)
glue("best_joint", best_joint, display=False)
glue("best_joint_change", f"{best_joint_change:+.1%}", display=False)

# %% [markdown]
# ## Summary and what's next
#
# The per-head decomposition adds up exactly and works in batches. On this run
# {glue:text}`n_reproduced` of {glue:text}`n_claims` claims are reproduced; the strongest joint
# variant is {glue:text}`best_joint` with an NDKL change of {glue:text}`best_joint_change`,
# and the retrieved share of men follows the planted share with a rank correlation of
# {glue:text}`gt_base_rho` before any intervention. Two cautions travel with every
# number: which heads count as experts depends on how the probes are trained (the trap
# table), and on the testbed the planted bias is known, so a method can be checked
# against it, which real CLIP on FairFace does not allow. The `paper` profile runs the
# same cells on openai CLIP with PAIRS, FairFace, SISPI and COCO. Chapter 06 (DEBIASLENS)
# edits the same last layer through sparse-autoencoder features instead of heads; the
# reference page *Paper vs this book* gathers the verdicts of all chapters.
#
# ## References
#
# - Gomez-Grabowska, A., González, J. and Gómez, L. (2026). Debiasing CLIP with neural
#   interventions. ECIR 2026. Code: github.com/ameliagmz/Debiasing_CLIP_Neural_Interventions.
# - Gandelsman, Y., Efros, A. A. and Steinhardt, J. (2024). Interpreting CLIP's image
#   representation via text-based decomposition. ICLR 2024.
# - Geyik, S. C., Ambler, S. and Kenthapadi, K. (2019). Fairness-aware ranking in search and
#   recommendation systems with application to LinkedIn talent search. KDD 2019.
# - Hamidieh, K. et al. (2024). Identifying implicit social biases in vision-language models.
#   AIES 2024.
# - Wang, J., Liu, Y. and Wang, X. E. (2021). Are gender-neutral queries really
#   gender-neutral? Mitigating gender bias in image search. EMNLP 2021.
# - Chuang, C.-Y., Jampani, V., Li, Y., Torralba, A. and Jegelka, S. (2023). Debiasing
#   vision-language models via biased prompts. arXiv:2302.00070.
# - Gomez, L. (2025). Measuring text-image retrieval fairness with synthetic data. SIGIR 2025.
# - Kärkkäinen, K. and Joo, J. (2021). FairFace. WACV 2021.
# - Fraser, K. C. and Kiritchenko, S. (2024). Examining gender and racial bias in large
#   vision-language models using a novel dataset of parallel images. EACL 2024.

# %% tags=["hide-input"]
runtime_s = time.perf_counter() - T_START
head_tables = probe_table[["attribute", "layer", "head", "head_1based", "accuracy", "auroc", "ap", "expert"]]
saved = save_results(
    "07_clip_heads",
    params=P,
    headline={
        "model": MODEL_NAME,
        "identity_max_abs_error": identity_err,
        "batch_vs_single_max_abs_error": batch_err,
        "gender_experts_1based": [h + 1 for h in G],
        "race_experts_1based": [h + 1 for h in R],
        "gender_expert_mean_ap": float(experts_g["ap"].mean()),
        "gender_other_median_ap": float(others_g["ap"].median()),
        "ndkl_gender_baseline": float(b["ndkl_gender"]),
        "best_joint_variant": best_joint,
        "best_joint_ndkl_change": best_joint_change,
        "ndkl_gender_by_variant": S["ndkl_gender"].to_dict(),
        "entropy_gender_word_by_variant": S["H_gender (word)"].to_dict(),
        "utility_by_variant": {c: S[c].to_dict() for c in util_cols},
        "planted_spearman_gender_baseline": (float(gt.set_index("variant").loc["none", "spearman_gender"])
                                             if len(gt) else None),
        "encode_time_ratio_prototype": overhead,
        "verdicts": dict(zip(paper_vs_book["claim"], paper_vs_book["verdict"])),
        "runtime_s": runtime_s,
    },
    provenance={
        "models": [MODEL_NAME + (f" (size={TESTBED_SIZE})" if MODEL_NAME.startswith("testbed") else "")],
        "data": [data_desc, "So-B-IT taxonomy (ameliagmz/Debiasing_CLIP_Neural_Interventions)"],
        "note": "testbed numbers describe the synthetic world, not the paper's models or data"
        if ON_TESTBED else "paper profile",
    },
    tables={
        "probe_heads": head_tables,
        "probe_layers": layer_ap,
        "probe_init_trap": trap,
        "neurons": neurons,
        "variants": summary,
        "scenario_queries": scen_table,
        "words": word_table,
        "planted_vs_retrieved": gt,
        "paper_vs_book": paper_vs_book,
    },
)
display(Markdown(f"Results written to `{saved}`; run time {runtime_s:.0f} s."))
