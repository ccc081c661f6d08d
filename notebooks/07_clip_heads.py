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
# and report that text-to-image retrieval becomes fairer. On SISPI (Table 2) the "male"
# prototype on all three experts gives the lowest NDKL, 0.060 against the unedited 0.114
# (a 47% drop; the text speaks of drops of "up to 42%", which is the zero-ablation row,
# 0.066), followed by zero ablation, while single-head edits do less. On FairFace (Table 4)
# normalized entropy over So-B-IT words rises in every category for gender with the male
# prototype; a "Male+White" variant targets the gender and the ethnicity experts at once
# (the paper does not say which prototype goes on which head). On COCO (Table 5) Recall@K
# moves by at most two points; on Flickr30K the drops are larger, mainly in R@1 (text R@1
# 0.79 to 0.75). Neuron-level edits and damping do little (Table 3), and expert heads hold
# many neurons with high average precision (Figure 1).
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
# metrics are defined in the `fairvlm.metrics` docstrings. Time on 2 CPU cores: about 90
# CPU-seconds on the `embedded` default (about 1.5 minutes on a quiet machine; 4 minutes
# of wall time on 2026-12-07 at load average 9-10, shared with three other engineers'
# runs), about 40 CPU-seconds with `PROFILE="smoke"` (plus the one-off testbed build if it
# is not cached): every edit is scored from one cached pass of the encoder (below), and
# the chapter runs torch on one thread. Earlier runs: `benchmarks/TIMINGS.md`; this
# execution's run time is printed at the end. The `paper` profile loads
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
# (`fairvlm.probes.select_experts`; `EXPERT_K=0` takes a quarter of the heads,
# `fairvlm.probes.default_k`, the paper's 3 of 12), `NEURON_AP` the AP above which a neuron
# is an expert neuron (the paper's 0.42, Table 3) and `NEURON_MARGIN` how far above AP's
# chance level it must also lie, `N_RANDOM_HEAD_SETS` how many random sets of non-expert
# heads make the control of every head edit, `DAMP_ALPHA` the damping factor (paper:
# 0.1), `ENTROPY_K` the top-k of the entropy metric (0 = profile default: 100 as in the
# paper on the `paper` profile, the number of images per scenario on the testbed),
# `CLIPCLIP_KEEP` the fraction of embedding dimensions CLIP-clip keeps,
# `BIASED_PROMPTS_LAMBDA` the calibration weight of the biased-prompts projection (Chuang
# et al.: 1000), `TIMING_REPEATS` the interleaved repeats of the overhead timing. The
# `*_DIR` parameters point the `paper` profile at local copies of the datasets.

# %% tags=["parameters"]
PROFILE = "embedded"
SEED = 0
MODEL = ""
PROBE_SCENES = 0
GALLERY_SCENES = 0
EXPERT_RULE = "top_k"
EXPERT_K = 0
NEURON_AP = 0.42
NEURON_MARGIN = 0.05
N_RANDOM_HEAD_SETS = 5
DAMP_ALPHA = 0.1
ENTROPY_K = 0
CLIPCLIP_KEEP = 0.78
BIASED_PROMPTS_LAMBDA = 1000.0
TIMING_REPEATS = 7
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
    EXPERT_RULE=EXPERT_RULE, EXPERT_K=EXPERT_K, NEURON_AP=NEURON_AP, NEURON_MARGIN=NEURON_MARGIN,
    N_RANDOM_HEAD_SETS=N_RANDOM_HEAD_SETS, DAMP_ALPHA=DAMP_ALPHA, ENTROPY_K=ENTROPY_K,
    CLIPCLIP_KEEP=CLIPCLIP_KEEP, BIASED_PROMPTS_LAMBDA=BIASED_PROMPTS_LAMBDA, TIMING_REPEATS=TIMING_REPEATS,
    FAIRFACE_DIR=FAIRFACE_DIR, FAIRFACE_LIMIT=FAIRFACE_LIMIT, SISPI_DIR=SISPI_DIR, COCO_JSON=COCO_JSON,
    COCO_IMAGES=COCO_IMAGES, PAIRS_DIR=PAIRS_DIR,
)
check_choice("EXPERT_RULE", EXPERT_RULE, ("top_k", "threshold"))
for _name, _lo, _hi in [("PROBE_SCENES", 0, 1000), ("GALLERY_SCENES", 0, 1000), ("EXPERT_K", 0, 64),
                        ("N_RANDOM_HEAD_SETS", 1, 50),
                        ("ENTROPY_K", 0, 10_000), ("TIMING_REPEATS", 3, 100), ("FAIRFACE_LIMIT", 0, 10**7)]:
    check_range(_name, getattr(P, _name), _lo, _hi, kind=int)
for _name, _lo, _hi in [("NEURON_AP", 0.0, 1.0), ("NEURON_MARGIN", 0.0, 0.5), ("DAMP_ALPHA", 0.0, 1.0),
                        ("CLIPCLIP_KEEP", 0.01, 1.0),
                        ("BIASED_PROMPTS_LAMBDA", 0.0, 1e9)]:
    check_range(_name, getattr(P, _name), _lo, _hi)
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

import numpy as np
import torch
from IPython.display import Markdown, display
from myst_nb import glue

import fairvlm
from fairvlm import clip_heads as ch
from fairvlm import probes, retrieval
from fairvlm.models import load
from fairvlm.paths import display_path
from fairvlm.plotting import savefig, set_theme
from fairvlm.results import save_results
from fairvlm.verdicts import tally, verdict_table

fairvlm.seed_everything(SEED)
set_theme()
torch.set_grad_enabled(False)
if ON_TESTBED:
    # testbed-clip is tiny (4 layers of width 128): a second OpenMP thread gains little on its small
    # matrices and, on a shared 2-core machine, costs several times the CPU in spin-waits (measured
    # 2026-12-07 at load 7: a 512-image forward pass 0.3 CPU-s on one thread, 1.7-2.9 on two)
    torch.set_num_threads(1)
T_START = time.perf_counter()

# %% [markdown]
# ## Model and data
#
# On the testbed, the probe set and the evaluation gallery are both *counterfactual
# quadruplets*: held-out scenes (never seen in training) drawn once per group (Black man,
# Black woman, White man, White woman), so every group is equally frequent in every
# scenario and the probe cannot lean on the scene. The two sets use disjoint scene seeds.
# Probes, prototypes and CLIP-clip are fitted on the probe set only; all fairness numbers
# come from the gallery (`fairvlm.retrieval.testbed_audit_data`). On the `paper` profile
# without FairFace, the PAIRS scenarios are split in two halves, one to fit and one to
# audit (`fairvlm.retrieval.paper_audit_data`). Gender labels are written `male`/`female`.

# %% tags=["hide-input"]
lm = load(MODEL_NAME, **({"size": TESTBED_SIZE} if MODEL_NAME.startswith("testbed") else {}))
model = lm.model
N_LAYERS = len(ch.encoder_layers(model))
N_HEADS, HEAD_DIM, WIDTH = ch.attention_shape(model)
K_EXPERTS = EXPERT_K or probes.default_k(N_HEADS)
if K_EXPERTS >= N_HEADS:
    raise ParameterError(f"EXPERT_K={EXPERT_K} leaves no other head to compare with ({N_HEADS} heads); "
                         f"use at most {N_HEADS - 1}")
if ON_TESTBED:
    data = retrieval.testbed_audit_data(lm, N_PROBE_SCENES, N_GALLERY_SCENES, seed=SEED)
else:
    data = retrieval.paper_audit_data(lm, pairs_dir=PAIRS_DIR or None, fairface_dir=FAIRFACE_DIR,
                                      fairface_limit=FAIRFACE_LIMIT or None, sispi_dir=SISPI_DIR,
                                      coco_json=COCO_JSON, coco_images=COCO_IMAGES, seed=SEED)
words = retrieval.word_queries(data.planted_words, N_WORDS_PER_CATEGORY)
if words.attrs.get("note"):
    display(Markdown(f"**{words.attrs['note']}**"))
probe_meta, probe_pixels, probe_sets = data.probe_meta, data.probe_pixels, data.probe_sets
display(Markdown(f"**Model** `{MODEL_NAME}`: {N_LAYERS} vision layers x {N_HEADS} heads of width {HEAD_DIM} "
                 f"(residual width {WIDTH}). **Data**: {data.description}; {len(words)} So-B-IT words."))

# %% [markdown]
# ## The decomposition, checked
#
# `fairvlm.clip_heads.cls_decomposition` runs the encoder once and returns, for the CLS
# token of one layer, one vector per head (twelve in ViT-B), the out_proj bias and the
# skip connection. Their sum must equal the hidden state after the attention residual add
# (before the MLP). The authors' open_clip code slices heads along a `(batch x heads)` axis
# and is only right for one image at a time; the library slices the feature axis, so the
# check below uses a batch of 16 images.

# %% tags=["hide-input"]
check = ch.decomposition_check(model, probe_pixels[:16], n_single=4)
identity_err, batch_err = check["identity_err"], check["batch_err"]
glue("identity_err", f"{identity_err:.1e}", display=False)
glue("identity_scale", f"{check['identity_scale']:.1f}", display=False)
glue("batch_err", f"{batch_err:.1e}", display=False)
assert identity_err <= 1e-4 * max(1.0, check["identity_scale"]), "the head decomposition does not add up"

# %% [markdown]
# The largest deviation between the reconstruction and the real hidden state is
# {glue:text}`identity_err` (entries reach {glue:text}`identity_scale` in size), and
# computing four images one by one or as a batch differs by at most
# {glue:text}`batch_err`: float rounding.
#
# ## Which heads know gender and race? (Table 1)
#
# One fresh linear probe per head of the last layer (one `nn.Linear`, Adam 1e-3, 10
# full-batch epochs, 80/20 split: the paper's recipe), on the head's CLS vector. Three
# choices the paper leaves open are stated in `fairvlm.probes`: the four renderings of a
# counterfactual scene stay on the same side of the split, probes start at zero, and
# features are standardized with the training split's statistics. Heads are numbered from
# 1 in the tables, as in the paper. Beside each head: a converged logistic regression on
# the same split (`fairvlm.probes.probe_heads_logreg`), which shows what ten Adam steps
# leave unlearned.

# %% tags=["hide-input"]
head_out = ch.head_outputs(model, probe_pixels, layers=range(N_LAYERS), batch_size=64)
LAST = N_LAYERS - 1
contrib = ch.project_heads(model, LAST, head_out[LAST])
cfg = probes.ProbeConfig(seed=SEED)
positive_gender = "female"
gender_res = probes.probe_heads(contrib, probe_meta["gender"], config=cfg, positive=positive_gender, layer=LAST,
                                groups=probe_sets)
race_res = probes.probe_heads(contrib, probe_meta["race"], config=cfg, layer=LAST, groups=probe_sets)
G = probes.select_experts(gender_res.table, EXPERT_RULE, k=K_EXPERTS)
R = probes.select_experts(race_res.table, EXPERT_RULE, k=K_EXPERTS)
if not G or not R or len(G) == N_HEADS:
    raise ParameterError(f"EXPERT_RULE={EXPERT_RULE!r} selected {len(G)} of {N_HEADS} heads; "
                         "the comparison with the other heads needs at least one of each")
split = (gender_res.train_idx, gender_res.test_idx)
logreg = probes.probe_heads_logreg(contrib, probe_meta["gender"], split=split, positive=positive_gender, seed=SEED)
probe_table = probes.head_table({"gender": gender_res, "race": race_res}, {"gender": G, "race": R})
display(probes.wide_head_table(probe_table, {"gender (converged logreg)": logreg.table}).round(3))
# Table 1 by the protocol: experts picked on half of the test sets, their AP gap scored on the other half,
# against the same procedure on shuffled labels (fairvlm.probes.expert_gap_verdict)
gap_experts, gap_details, gap_verdict = probes.expert_gap_verdict(
    gender_res, contrib, probe_meta["gender"], k=len(G), groups=probe_sets, config=cfg, positive=positive_gender,
    n_shuffles=4 if PROFILE == "smoke" else 10, n_boot=200 if PROFILE == "smoke" else 500, seed=SEED,
    model=MODEL_NAME)
gap = {"effect": gap_verdict.effect, "interval": gap_verdict.interval, "null": gap_verdict.null,
       "null_interval": (float("nan"), float("nan")), "difference": gap_verdict.difference,
       "difference_interval": gap_verdict.difference_interval, "experts_selection_half": gap_experts}
expert_ap, other_ap = probes.expert_other_ap(gender_res.table, G)
glue("gender_experts", ch.heads_1based(G), display=False)
glue("race_experts", ch.heads_1based(R), display=False)
glue("k_experts", f"{len(G)} of {N_HEADS}", display=False)
glue("expert_ap", f"{expert_ap:.3f}", display=False)
glue("other_ap", f"{other_ap:.3f}", display=False)
glue("gap_effect", f"{gap_verdict.effect:.3f}", display=False)
glue("gap_null", f"{gap_verdict.null:.3f}", display=False)
glue("gap_experts", ch.heads_1based(gap_experts or []) or "none", display=False)
glue("overlap", ch.heads_1based(sorted(set(G) & set(R))) or "none", display=False)

# %% [markdown]
# The gender experts ({glue:text}`k_experts` heads) are heads {glue:text}`gender_experts`,
# with a mean held-out AP of {glue:text}`expert_ap` against {glue:text}`other_ap` for the
# other heads; the race experts are heads {glue:text}`race_experts` (shared with gender:
# {glue:text}`overlap`). Picking the best heads favours them even when no head knows
# anything, and scoring them on the images that picked them favours them twice. So the
# verdict picks experts on half of the test split's counterfactual sets (heads
# {glue:text}`gap_experts` there) and scores their AP gap over the other heads on the
# other half ({glue:text}`gap_effect`), against the same procedure run on shuffled labels
# ({glue:text}`gap_null`); the verdict table has the intervals, resampled over the scoring
# sets. The paper found heads 3, 11 and 12 of ViT-B/32 for gender and 3, 10 and 11 for
# ethnicity, two of them shared.
#
# ### Precision-recall curves of the gender probes

# %% tags=["hide-input"]
fig = probes.plot_pr_curves(gender_res, G, attribute="gender", where="last layer")
savefig(fig, "07_clip_heads_pr_curves")

# %% [markdown]
# ### Across layers
#
# The paper probes only the last layer, following Gandelsman et al. (2024), who found that
# the last layers write most of CLIP's image representation. Probing every layer shows
# where gender becomes linearly readable in this model.

# %% tags=["hide-input"]
layer_ap = probes.probe_layers(((li, ch.project_heads(model, li, head_out[li])) for li in range(N_LAYERS)),
                               probe_meta["gender"], config=cfg, positive=positive_gender, split=split)
fig = probes.plot_layer_head_ap(layer_ap, value="ap", label="held-out AP (gender)")
savefig(fig, "07_clip_heads_layer_head_ap")
glue("best_layer", probes.best_layer(layer_ap) + 1, display=False)
glue("n_layers", N_LAYERS, display=False)

# %% [markdown]
# The single best gender head sits in layer {glue:text}`best_layer` of
# {glue:text}`n_layers`.
#
# ### Traps: probe recipes and split counterfactual sets
#
# Ten full-batch epochs are ten optimizer steps; at learning rate 1e-3 each weight moves
# by about 0.01, less than PyTorch's default initialization (uniform in
# $\pm 1/\sqrt{d}$), so a random start can decide the ranking of heads. The authors'
# script goes further: it carries *one* probe and its optimizer from head to head, so head
# $h$ is read by a probe that has had about $10h$ steps and later heads look better
# whatever they encode (their experts 11 and 12 are late heads). And when the male and
# female renderings of one scene fall on different sides of a random split, a probe that
# merely recognises the scene learns the *opposite* label for the held-out twin, which
# can push AUROC below chance. `fairvlm.probes.trap_table` compares the recipes over five
# split seeds.

# %% tags=["hide-input"]
trap = probes.trap_table(contrib, probe_meta["gender"], experts=G, k=len(G), groups=probe_sets,
                         positive=positive_gender)
trap_summary = probes.trap_summary(trap)
display(trap_summary.round(3))
glue("trap_sentence", "; ".join(f"{name}: {v:.0%}" for name, v in trap_summary["expert_set_agreement"].items()),
     display=False)

# %% [markdown]
# Share of the five splits on which each recipe picks the book's experts:
# {glue:text}`trap_sentence`. An expert list that changes with the probe's recipe or
# random start is a property of the probe, not of the model.
#
# ## Neurons inside expert heads (Figure 1)
#
# A *neuron* is one coordinate of a head's CLS vector; each gets its own one-feature probe.
# Figure 1 of the paper shows many high-AP neurons in expert heads and few elsewhere. We
# compare the gender experts with as many non-expert heads drawn at random (not the
# lowest-AP ones, which would make any head look good beside them). AP's chance level is
# the share of the positive class in the test split, {glue:text}`ap_chance` here; the
# paper's threshold of 0.42 lies below it and would select nearly every neuron of any
# head. So the *expert neurons* are those whose AP exceeds both `NEURON_AP` and chance by
# `NEURON_MARGIN`: the threshold used here is {glue:text}`neuron_threshold`. When that
# selects no coordinate, or every coordinate of the experts (a neuron edit would then be
# the head edit), the neuron-level claims are not testable here.

# %% tags=["hide-input"]
random_sets = probes.random_heads(gender_res.table, G, n_draws=N_RANDOM_HEAD_SETS, seed=SEED)
low_heads = random_sets[0]          # the random non-expert heads whose neurons are probed beside the experts'
neuron_res = probes.probe_neurons(contrib, probe_meta["gender"], heads=G + low_heads, config=cfg,
                                  positive=positive_gender, split=split)
neurons, neuron_aps = probes.split_neurons(neuron_res.table, G)
neuron_threshold = max(NEURON_AP, probes.ap_chance(gender_res) + NEURON_MARGIN)
fig = probes.plot_neuron_aps(neurons, G, low_heads, threshold=neuron_threshold, attribute="gender")
savefig(fig, "07_clip_heads_neuron_ap")
neuron_mask = ch.neuron_mask(neurons[neurons["kind"] == "expert"], G, WIDTH, min_ap=neuron_threshold)
n_sel, n_all = int(neuron_mask.sum()), int(neuron_mask.numel())
neuron_testable = (0 < n_sel < n_all, "" if 0 < n_sel < n_all else
                   (f"no expert neuron reaches AP {neuron_threshold:.3f} (chance {probes.ap_chance(gender_res):.3f} "
                    f"+ {NEURON_MARGIN:g})" if n_sel == 0 else
                    f"all {n_all} coordinates of the experts pass AP {neuron_threshold:.3f}: a neuron edit would be "
                    "the head edit"))
glue("frac_expert", f"{(neuron_aps['expert'] > neuron_threshold).mean():.1%}", display=False)
glue("frac_other", f"{(neuron_aps['other'] > neuron_threshold).mean():.1%}", display=False)
glue("neuron_threshold", f"{neuron_threshold:.3f}", display=False)
glue("ap_means", f"{neuron_aps['expert'].mean():.3f} against {neuron_aps['other'].mean():.3f}", display=False)
glue("ap_chance", f"{probes.ap_chance(gender_res):.2f}", display=False)
glue("neuron_sentence",
     (f"The {n_sel} expert neurons (of {n_all} coordinates of the experts) are the targets of the neuron-level "
      "variants below (replacement, zeroing and damping, Table 3)." if neuron_testable[0] else
      f"No neuron-level variant is run, and Table 3's claims are not testable here: {neuron_testable[1]}."),
     display=False)
glue("neuron_ap", f"{neuron_threshold:.3f}", display=False)

# %% [markdown]
# Above the dashed line (AP {glue:text}`neuron_ap`) lie {glue:text}`frac_expert` of the
# expert heads' neurons and {glue:text}`frac_other` of the other heads'; their mean AP is
# {glue:text}`ap_means`. {glue:text}`neuron_sentence`
#
# ## Interventions
#
# Every variant edits the CLS token of the last layer while the gallery is encoded
# (`fairvlm.clip_heads.standard_variants`; hooks are removed afterwards) and leaves the
# text side alone, except the biased-prompts baseline, which projects the text queries,
# and CLIP-clip, which drops the embedding dimensions that carry most mutual information
# with gender (estimated on the probe set). Prototypes are means over the probe set:
# `person` over all images, `male`/`female`/`white` over one group, `male+white` over the
# intersection, put on the union of gender and race experts (our reading of the paper's
# intersectional variant, which it describes only as targeting both kinds of experts at
# once). The **control** puts the male prototype on as many non-expert heads of the same
# layer, drawn at random ({glue:text}`n_random_sets` draws, `fairvlm.probes.random_heads`):
# the same edit on heads picked like the experts but without their knowledge. Replacing
# heads that carry the scene damages the model, and a control that damages the model is no
# control, so each control is weakened (`strength` < 1: each head moves only part of the
# way to the prototype) to the strongest edit that costs **no more retrieval utility than
# the expert edit**: the drop of the scenario queries' mAP over the *probe* images (Table
# 2's utility measure, blind to gender; the gallery that scores the verdicts is not used)
# may not exceed the expert edit's (`fairvlm.clip_heads.match_utility`). Two other ways to
# build the control were tried on this model and are shown beside it below: matching the
# *size* of the edit instead (how far it moves the zero-shot reading of the scene, a KL
# divergence; the book's control until 2026-12-07), and a content-free prototype (the mean
# over all probe images instead of the male one) at that size. Both damage retrieval and
# raise the gender skew of the whole gallery's top lists, the content-free one as much as
# the male one: the damage comes from taking away what a non-expert head carries about
# the scene, not from the prototype it is replaced with. A head-level effect of the experts
# must beat the harmless control. Every edit here acts on the last layer's CLS token,
# where the heads' contributions add up and nothing mixes tokens afterwards, so each is
# scored from one cached pass (`fairvlm.clip_heads.cls_cache`; equal to the hooked forward
# pass within float32 rounding, tested).

# %% tags=["hide-input", "remove-stderr"]
protos = {attr: ch.head_prototypes(contrib, probe_meta[attr], layer=LAST) for attr in ("gender", "race", "group")}
variants = ch.standard_variants(protos, G, R, layer=LAST, damp_alpha=DAMP_ALPHA,
                                neurons=neuron_mask if neuron_testable[0] else None)
expert_edit = [ch.prototype_replacement(protos["gender"], "male", G)]
# the last layer's CLS cache of the probe set: every candidate edit is scored from it without an encoder pass
probe_cache = ch.cls_cache(model, probe_pixels)
suite0 = data.scenario_suites[0]
text_emb_base, text_index = retrieval.embed_audit_texts(lm, data, words)   # every text of the audit, once
probe_q = text_emb_base[[text_index[t] for t in suite0["queries"]["prompt"]]]
probe_rel = (np.stack([probe_meta[suite0["key_col"]].astype(str).to_numpy() == str(k) for k in suite0["queries"]["key"]])
             if suite0["key_col"] in probe_meta else None)
UTILITY_MATCH = probe_rel is not None and bool(probe_rel.any(axis=1).all())
# (1) the control of every head-level verdict: as harmless as the expert edit on the probe images' retrieval mAP
map0 = ch.retrieval_map(ch.embed_from_cache(model, probe_cache), probe_q, probe_rel) if UTILITY_MATCH else float("nan")
target_drop = (map0 - ch.retrieval_map(ch.embed_from_cache(model, probe_cache, expert_edit), probe_q, probe_rel)
               if UTILITY_MATCH else float("nan"))
# (2) for comparison: matched in size (the change of the zero-shot reading of the scene, a gender-blind KL),
# with the male and with a content-free prototype (the mean of all probe images)
calib = probe_cache.subset(np.arange(0, len(probe_cache), max(1, len(probe_cache) // 512)))
calib_base = ch.embed_from_cache(model, calib)
readout = text_emb_base[[text_index[t] for t in (data.zeroshot_suite["prompts"] if data.zeroshot_suite
                                                   else suite0["queries"]["prompt"])]]
logit_scale = float(model.logit_scale.exp()) if hasattr(model, "logit_scale") else 100.0
target_disp = ch.edit_displacement(model, calib, expert_edit, base=calib_base, readout=readout, scale=logit_scale)
size_matches = {grp: [ch.match_strength(model, calib, protos["gender"], grp, hs, target_disp, base=calib_base,
                                        readout=readout, scale=logit_scale) for hs in random_sets]
                for grp in ("male", "all")}
if UTILITY_MATCH:
    matches = [ch.match_utility(model, probe_cache, protos["gender"], "male", hs, max(target_drop, 0.0),
                                queries=probe_q, relevant=probe_rel) for hs in random_sets]
    control_kind = "utility-matched"
else:   # no scenario labels on the probe set (paper profile without them): match the size instead
    matches = size_matches["male"]
    control_kind = "size-matched"
random_variants = [f"male ({control_kind} random heads {ch.heads_1based(hs)})" for hs in random_sets]
variants[1:1] = [{"variant": name, "family": "random control", "prototype": "male", "heads": ch.heads_1based(hs),
                  "edits": [ch.prototype_replacement(protos["gender"], "male", hs, strength=m["strength"])]}
                 for name, hs, m in zip(random_variants, random_sets, matches)]
other_controls, other_matches = [], []
if UTILITY_MATCH:
    for grp, label in (("male", "male"), ("all", "content-free")):
        for hs, m in zip(random_sets, size_matches[grp]):
            name = f"{label} (size-matched random heads {ch.heads_1based(hs)})"
            other_controls.append(name)
            other_matches.append(m)
            variants.append({"variant": name, "family": "size-matched control", "prototype": label,
                             "heads": ch.heads_1based(hs),
                             "edits": [ch.prototype_replacement(protos["gender"], grp, hs, strength=m["strength"])]})
glue("n_random_sets", len(random_sets), display=False)
# every edit acts on the last layer's CLS token: one encoder pass per gallery, then each variant from the cache
# (fairvlm.clip_heads.embed_variants; equal to the hooked forward pass, see the tests)
t0 = time.perf_counter()
image_emb = ch.embed_variants(model, {name: g["pixels"] for name, g in data.galleries.items()}, variants, layer=LAST)
t_variants = time.perf_counter() - t0
# baselines, fitted on the probe set (CLIP-clip) or on text prompts only (biased prompts,
# whose pairs name the role: "a photo of a male pilot" / "... female pilot")
baselines = retrieval.fit_baselines(lm, probe_pixels, probe_meta["gender"], data.scenario_suites[0]["queries"]["role"],
                                    keep=CLIPCLIP_KEEP, lam=BIASED_PROMPTS_LAMBDA, seed=SEED,
                                    probe_emb=ch.embed_from_cache(model, probe_cache))
image_emb, text_emb = retrieval.add_baselines(image_emb, text_emb_base, variants, baselines)
glue("n_variants", len(variants), display=False)
glue("clip_m", f"{baselines['clip_m']} of {baselines['dim']}", display=False)
glue("t_variants", f"{t_variants:.0f}", display=False)

# %% [markdown]
# {glue:text}`n_variants` variants; CLIP-clip keeps {glue:text}`clip_m` embedding
# dimensions. Encoding the gallery under all variants took {glue:text}`t_variants` s: the
# encoder runs once, and each variant only adds its change to the cached CLS row and runs
# the last MLP and the projection.
#
# ### Fairness and utility per variant
#
# `fairvlm.retrieval.score_variant` ranks the gallery for every query of every variant.
# NDKL (lower is fairer) ranks each scenario's own images for the scenario query, as on
# SISPI (Table 2); MaxSkew@k looks at the top k of the whole gallery (k = images per
# scenario); NDCG@k and mAP (Table 2's utility columns) count a scenario's own images as
# relevant; H is the normalized entropy of gender or race in the top {glue:text}`k_ent`
# for every So-B-IT word, as a bare word and in the template "a photo of a/an {word}
# person" (Table 4; higher is fairer). Utility: Recall@K both ways and zero-shot scenario
# accuracy. The first row is the **random-ranking floor**: the same lists ranked at random
# (100 draws, 20 on `smoke`; `fairvlm.retrieval.random_ranking_floor`); a finite list is never perfectly
# balanced at every prefix, so no intervention can meaningfully go below it.

# %% tags=["hide-input"]
scores = retrieval.score_variants(data, words, variants, image_emb, text_emb, text_index, k_entropy=K_ENTROPY)
scen_table, word_table, summary = scores["queries"], scores["words"], scores["summary"]
main_suite = data.scenario_suites[0]["name"]
main_q = scen_table[scen_table["suite"] == main_suite]
floor = retrieval.random_ranking_floor(data, n=20 if PROFILE == "smoke" else 100, seed=SEED)
fl = retrieval.floor_summary(floor, main_suite)
glue("k_ent", min(K_ENTROPY, len(data.galleries[data.word_gallery]["meta"])), display=False)
display(Markdown(f"*Provenance: {MODEL_NAME}; {data.description}; {len(main_q['query'].unique())} scenario "
                 f"queries, {len(words)} words. Random floor (95% range): NDKL gender "
                 f"[{fl['ndkl|gender']['lo']:.3f}, {fl['ndkl|gender']['hi']:.3f}], MaxSkew gender "
                 f"[{fl['maxskew|gender']['lo']:.3f}, {fl['maxskew|gender']['hi']:.3f}].*"))
display(retrieval.variant_table(summary, floor, main_suite).style.hide(axis="index")
        .format(precision=3, na_rep="").format("{:+.1%}", subset=["ndkl_gender_change"], na_rep=""))

# %% [markdown]
# ### The control, checked
#
# Each control's strength and the measure it was matched on (`matched measure`: for the
# utility-matched controls the drop of the probe images' retrieval mAP, whose target is the
# expert edit's; for the size-matched ones the KL divergence of the scene reading), and
# what it does to utility and to the gender skew of the whole gallery's top lists
# (MaxSkew), beside the unedited model and the expert edit, all on the gallery. Below the
# table, equivalence checks (TOST on the 90% interval): the utility-matched controls'
# text-to-image hit@5 per caption against the unedited model's (±0.02), and their mAP and
# MaxSkew per scenario query against the *expert edit's* (±0.005 each,
# `fairvlm.retrieval.CONTROL_MARGINS`): a control must leave the model as intact as the
# edit it controls for.

# %% tags=["hide-input"]
control_table, control_rows = retrieval.control_check(scores, random_variants, matches=matches, seed=SEED,
                                                      main_suite=main_suite, others=other_controls,
                                                      other_matches=other_matches)
display(control_table[[c for c in control_table.columns if c in ("variant", "strength", "matched measure", "matched")
                       or c.startswith("Δ ")]].style.hide(axis="index").format(precision=4))
control_checks = verdict_table(control_rows)
display(control_checks.drop(columns=["rule", "asserts", "bias_claim"], errors="ignore").style.hide(axis="index")
        .format(precision=4))
_ct = control_table.set_index("variant")
_c = _ct.loc[random_variants]
_e = _ct.loc["male (experts)"]
_unmatched = [v for v, m in zip(random_variants, matches) if not m["matched"]]
_eq = [r["verdict"].verdict for r in control_rows]
_size = [v for v in other_controls if v.startswith("male (size")]
_S = summary.set_index("variant")
_free = [v for v in other_controls if v.startswith("content-free")]
_cmp = ""
if _size:
    _s, _f = _ct.loc[_size], _ct.loc[_free]
    _cmp = (f" Matched in size instead (strengths {_s['strength'].min():.2f}-{_s['strength'].max():.2f}), the same "
            f"random heads change mAP by {_s['Δ mAP'].mean():+.4f} and MaxSkew by {_s['Δ maxskew_gender'].mean():+.4f} "
            f"on average, and with the content-free prototype by {_f['Δ mAP'].mean():+.4f} and "
            f"{_f['Δ maxskew_gender'].mean():+.4f}: damage, whichever prototype replaces the heads; their NDKL changes "
            f"by {_S.loc[_size, 'ndkl_gender'].mean() - _S.loc['none', 'ndkl_gender']:+.4f} (the expert edit: "
            f"{_S.loc['male (experts)', 'ndkl_gender'] - _S.loc['none', 'ndkl_gender']:+.4f}).")
glue("control_sentence",
     f"The {control_kind} controls run at strengths {_c['strength'].min():.3f}-{_c['strength'].max():.3f} and change "
     f"mAP by {_c['Δ mAP'].mean():+.4f}, MaxSkew by {_c['Δ maxskew_gender'].mean():+.4f}, zero-shot accuracy by "
     f"{_c['Δ zero_shot_acc'].mean():+.4f} and image-to-text R@1 by {_c['Δ i2t_R@1'].mean():+.4f} on average, "
     f"against {_e['Δ mAP']:+.4f}, {_e['Δ maxskew_gender']:+.4f}, {_e['Δ zero_shot_acc']:+.4f} and "
     f"{_e['Δ i2t_R@1']:+.4f} for the expert edit; the equivalence checks read *{', '.join(_eq)}* "
     f"(hit@5 against the unedited model; mAP and MaxSkew against the edit)"
     + "".join(f"; the {r['measure'].split(' per ')[0]} check cannot resolve its margin with "
               f"{r['verdict'].n_units} units (minimum detectable "
               f"difference {r['verdict'].mde:.3f})" for r in control_rows
               if r["verdict"].verdict == "inconclusive" and np.isfinite(r["verdict"].mde)) + "."
     + (f" {len(_unmatched)} control(s) could not be brought inside the edit's utility cost: {', '.join(_unmatched)}."
        if _unmatched else "") + _cmp
     + (" So on this model no random-head edit is at once as large as the expert edit and as harmless: the "
        "non-expert heads carry the scene, which retrieval needs, and only a weak edit of them leaves retrieval "
        "alone. The book takes the harmless control, as the protocol asks (a control matches the method's side "
        "effects). At these strengths the controls are close to no edit at all, so the head-level verdicts below "
        "in practice measure the expert edit against the unedited model; the size-matched controls above show "
        "what a larger random-head edit adds." if
        UTILITY_MATCH and _c['strength'].max() < 0.5 else ""), display=False)

# %% [markdown]
# {glue:text}`control_sentence`
#
# ### Against the planted ground truth
#
# The testbed knows how skewed each scenario was in training. If testbed-clip learned
# that bias, the share of men among a scenario query's top-k should rise with the
# planted share of men (positive rank correlation); a debiasing intervention should
# flatten that relation.

# %% tags=["hide-input"]
if data.planted_scen is not None:
    gt = retrieval.planted_vs_retrieved(main_q)
    display(gt.style.hide(axis="index").format(precision=3))
    g0 = gt.set_index("variant")
    if np.isnan(g0.loc["none", "spearman_gender"]):
        glue("gt_sentence", "The rank correlation between planted and retrieved share of men is undefined in this "
                            "world: every scenario was planted with the same share, so there is no ranking to follow.",
             display=False)
    else:
        glue("gt_sentence", f"Without intervention the rank correlation between planted and retrieved share of men is "
                            f"{g0.loc['none', 'spearman_gender']:.2f} (race: {g0.loc['none', 'spearman_race']:.2f}); "
                            f"with the male prototype on the experts it is "
                            f"{g0.loc['male (experts)', 'spearman_gender']:.2f}.", display=False)
    fig = retrieval.plot_planted_vs_retrieved(main_q, ["none", "male (experts)"])
    savefig(fig, "07_clip_heads_planted_vs_retrieved")
else:
    gt = None
    glue("gt_sentence", "The paper profile has no planted ground truth.", display=False)

# %% [markdown]
# {glue:text}`gt_sentence`
#
# ### So-B-IT categories
#
# Normalized entropy per category (the layout of the paper's Table 4), word-as-query style.

# %% tags=["hide-input"]
focus = [v for v in ("none", "person (experts)", "male (experts)", "female (experts)", "zero (experts)",
                     random_variants[0], "white (race experts)", "male+white (union)", "CLIP-clip",
                     "biased prompts") if v in image_emb]
display(retrieval.category_entropy(word_table, focus, style="word").round(2))

# %% [markdown]
# ## Top-8 retrievals before and after (Figure 2)

# %% tags=["hide-input"]
fig = retrieval.plot_top_retrievals(data, image_emb, text_emb, text_index, after="male (experts)", k=8)
savefig(fig, "07_clip_heads_top8")

# %% [markdown]
# ## Paper vs this book
#
# Every verdict follows the book's protocol (`fairvlm.verdicts.judge`): the effect is
# compared with a control measured in this run by the same procedure with the causal
# ingredient removed, and the verdict rests on the 95% bootstrap interval of their
# difference, paired per query, word or caption (per scoring image set for Table 1):
# *reproduced* when it lies beyond the claim's minimum size and the effect itself points
# the claimed way, *not reproduced* when it lies below that size, *inconclusive* otherwise
# (with the minimum detectable effect). The controls: Table 1, the same expert selection
# on shuffled labels, scored on images apart from those that picked the experts; Figure 1,
# the neurons of random non-expert heads; the head edits, the same prototype on random
# non-expert heads of the same layer, each weakened until it costs no more retrieval
# utility than the expert edit (above); a comparison between two
# edits, the other edit, fixed before any NDKL is read: all experts against the male
# prototype on the single expert with the highest probe AP (head {glue:text}`single_head`),
# and the male prototype against zero ablation, the paper's runner-up. The NDKL minimum
# size is 5% of the baseline NDKL. When the baseline NDKL is already inside the
# random-ranking floor there is no bias for an intervention to remove: *not testable
# here*. Every claim that builds on the head edit (all against one, male against zero,
# something else stays put, the neuron edits do less) is judged only once the head edit's
# own effect is shown (an edit that does nothing leaves everything unchanged and beats
# nothing).
# No-change claims are equivalence tests on the 90% interval (TOST). On the default
# profile the verdicts describe testbed-clip on the synthetic world, not CLIP on real
# photographs.

# %% tags=["hide-input"]
gallery = data.galleries[data.scenario_suites[0]["gallery"]]
_gt = gender_res.table[gender_res.table["head"].isin(G)]
single_head = int(_gt.sort_values(["ap", "auroc", "head"], ascending=[False, False, True])["head"].iloc[0])
glue("single_head", single_head + 1, display=False)
timing = retrieval.time_edits(model, gallery["pixels"][:64 if PROFILE == "smoke" else 256],
                              [ch.prototype_replacement(protos["gender"], "all", G)], repeats=TIMING_REPEATS)
if PROFILE == "smoke":   # a wall-clock verdict on a shared CI machine would change from run to run
    timing = {**timing, "why_not": "the smoke profile times 64 images on whatever machine runs CI: its wall-clock "
                                   "verdict would change from run to run"}
rows, audit = retrieval.head_audit_claims(scores, floor, main_suite=main_suite, gap_verdict=gap_verdict,
                                          neurons=neurons, neuron_testable=neuron_testable, experts=G,
                                          random_variants=random_variants, damp_alpha=DAMP_ALPHA, timing=timing,
                                          seed=SEED, single_head=single_head)
paper_vs_book = verdict_table(rows)
display(Markdown(f"*Provenance: {MODEL_NAME}; {data.description}; seed {SEED}.*"))
display(paper_vs_book.drop(columns=["rule", "asserts", "bias_claim"]).style.hide(axis="index").format(precision=3))
glue("verdict_sentence", f"the {len(paper_vs_book)} claims come out {tally(paper_vs_book)}", display=False)
glue("male_change", f"{summary.set_index('variant').loc['male (experts)', 'ndkl_gender_change']:+.1%}",
     display=False)
glue("floor_sentence",
     f"The baseline NDKL for gender is {audit['base_ndkl']:.3f}, against a random-ranking floor of "
     f"{fl['ndkl|gender']['floor']:.3f} (95% range up to {audit['floor_hi']:.3f}): "
     + ("there is bias above the floor for an intervention to remove." if audit["has_bias"] else
        "the lists are already as balanced as random ones, so the NDKL claims cannot be tested here."),
     display=False)

# %% [markdown]
# ## Summary and what's next
#
# The per-head decomposition adds up exactly and works in batches. On this run
# {glue:text}`verdict_sentence`. {glue:text}`floor_sentence` The male prototype on the
# experts changes NDKL by {glue:text}`male_change`. {glue:text}`gt_sentence` Two cautions
# travel with every number: which heads count as experts depends on how the probes are
# trained (the trap table), and on the testbed the planted bias is known, so a method can
# be checked against it, which real CLIP on FairFace does not allow. The `paper` profile
# runs the same cells on openai CLIP with PAIRS, FairFace, SISPI and COCO. Chapter 06
# (DEBIASLENS) edits the same last layer through sparse-autoencoder features instead of
# heads; the reference page *Paper vs this book* gathers the verdicts of all chapters.
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
saved = save_results("07_clip_heads", params=P, **retrieval.head_audit_results(
    model=MODEL_NAME, size=TESTBED_SIZE, on_testbed=ON_TESTBED, data=data, check=check, gender_experts=G,
    race_experts=R, expert_ap=expert_ap, other_ap=other_ap, gap=gap, audit=audit, scores=scores, floor=floor,
    main_suite=main_suite, planted=gt, timing=timing, verdicts=paper_vs_book, runtime_s=runtime_s,
    probe_table=probe_table, logreg_table=logreg.table, layer_table=layer_ap, trap_table=trap, neuron_table=neurons,
    control_table=control_table, control_verdict=control_rows))
display(Markdown(f"Results written to `{display_path(saved)}`; run time {runtime_s:.0f} s."))
