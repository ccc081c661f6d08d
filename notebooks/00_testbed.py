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
# # The counterfactual testbed
#
# ## Overview
#
# The four papers this book reproduces measure social bias in CLIP models and in large
# vision-language models (LVLMs) such as LLaVA. None of those weights can be had on a laptop
# without a network, and none of the papers could check its measurements against the truth:
# nobody knows how much bias a web-trained model *should* show. This chapter builds the
# book's answer to both problems, a *model organism of bias*:
#
# - a rendered world with the same 50 scenarios as PAIRS (Fraser and Kiritchenko, 2024), each
#   drawn in the four PAIRS variants (Black or White, man or woman), where a scene seed fixes
#   everything but the person's group;
# - a bias specification (`data/testbed_bias_spec.yaml`) that plants, for every scenario,
#   the share of each group in the training images, and associations between groups and a
#   few descriptive words from the So-B-IT taxonomy (Hamidieh et al., 2024);
# - **testbed-clip**, a CLIP vision tower trained from scratch on that world against the
#   real, frozen all-MiniLM-L6-v2 text tower (locked-text training, as in LiT; Zhai et al.,
#   2022), and **testbed-llava**, a LLaVA-style model (Liu et al., 2023) that joins this
#   vision tower through a trained projector to the real, frozen SmolLM2-135M-Instruct.
#
# Because the planted bias is known, every later chapter can ask whether a method recovers
# it. This chapter checks that the models are good enough for that: that they see the
# scenarios, that they see the person's group, and that the bias they carry follows the
# bias that was planted. There is no paper claim to reproduce here; the table near the end
# compares the testbed's design targets with what this run measured.
#
# ## Prerequisites and time to run
#
# No network and no GPU. The first run trains the models and caches them (see
# `fairvlm.testbed.build`; the cache folder is keyed by the spec, the code and the seed).
# On 2 CPU cores the `full` build (profile `embedded`) is designed to take at most 15
# minutes and the `smoke` build at most 3 minutes; the measured times of this run are in
# the training section. With the models cached, the chapter itself takes about two minutes
# (`embedded`) or under one (`smoke`).
#
# ## Parameters
#
# `PROFILE` picks the models' size: `embedded` uses the `full` testbed, `smoke` the small
# one (and fewer images); `paper` has no other models for this chapter and runs as
# `embedded`. `GALLERY_SCENES` is the number of held-out scenes per scenario in the
# balanced retrieval gallery and `DESCRIBE_SCENARIOS` the number of scenarios whose
# held-out scenes testbed-llava describes (0: the profile's default). `SEED` seeds the
# probes and the choice of example images; the testbed itself is built with seed 0, as in
# every other chapter.

# %% tags=["parameters"]
PROFILE = "embedded"
SEED = 0
GALLERY_SCENES = 0
DESCRIBE_SCENARIOS = 0

# %%
from fairvlm.params import check_params, check_range

P = check_params(PROFILE=PROFILE, SEED=SEED, GALLERY_SCENES=GALLERY_SCENES,
                 DESCRIBE_SCENARIOS=DESCRIBE_SCENARIOS)
check_range("GALLERY_SCENES", GALLERY_SCENES, 0, 50, kind=int)
check_range("DESCRIBE_SCENARIOS", DESCRIBE_SCENARIOS, 0, 50, kind=int)
SMOKE = PROFILE == "smoke"
SIZE = "smoke" if SMOKE else "full"
N_SCENES = GALLERY_SCENES or (2 if SMOKE else 8)
N_DESCRIBE = DESCRIBE_SCENARIOS or (10 if SMOKE else 50)

# %% [markdown]
# ## Imports

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from IPython.display import Markdown, display
from myst_nb import glue
from PIL import Image

import fairvlm
from fairvlm import models, testbed
from fairvlm.plotting import savefig, set_theme
from fairvlm.results import save_results
from fairvlm.testbed import measure

fairvlm.seed_everything(SEED)
set_theme()
spec = testbed.load_spec()

# %% [markdown]
# ## The world
#
# A scene is a scenario key and a seed. The seed fixes the camera (where the person
# stands, how large, mirrored or not), the pose, the clothing colours, the hair colour
# and style of each gender, the skin tone of each race, the background's colours and
# clutter, where the props go, and the pixel noise. `testbed.render(scenario, gender, race,
# scene_seed)` then draws the person of one group into that scene. The four variants of a
# scene differ only on the person: the skin tone (race) and the hair, lips, beard and
# torso outline (gender). The last column shows the union of the person's pixels over the
# four variants; the tests check, on a scene of every scenario in both splits, that no
# pixel outside it changes. The models see 64 x 64 pixels; the grid is drawn at 128.

# %%
show = ["airplane", "scrubs", "mopping", "ski_mask", "guitar", "stroller"]
seed_shown = testbed.scene_seeds("heldout", 1, start=SEED)[0]
fig, axes = plt.subplots(len(show), 5, figsize=(7.5, 1.6 * len(show)))
for i, key in enumerate(show):
    variants = testbed.render_variants(key, seed_shown, size=128)
    for j, (name, im) in enumerate(variants.items()):
        axes[i, j].imshow(im)
        axes[i, j].set_title(name.replace("_", " ") if i == 0 else "", fontsize=8)
    axes[i, 4].imshow(testbed.person_mask(key, seed_shown, size=128), cmap="gray")
    axes[i, 0].set_ylabel(key, fontsize=8)
axes[0, 4].set_title("person mask", fontsize=8)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
savefig(fig, "00_testbed_quadruplets")

# %% [markdown]
# Every other choice varies from scene to scene, so that a model has to generalise to
# held-out scenes rather than memorise layouts. Scenes are split by seed: training uses
# seeds below one million, every evaluation in the book uses seeds from one million up.

# %%
fig, axes = plt.subplots(2, 8, figsize=(9, 2.6))
for j in range(8):
    for i, split in enumerate(["train", "heldout"]):
        s = testbed.scene_seeds(split, 1, start=j)[0]
        axes[i, j].imshow(testbed.render("scrubs", *testbed.parse_variant(testbed.VARIANTS[j % 4]), s))
        axes[i, j].set_xticks([])
        axes[i, j].set_yticks([])
    axes[0, 0].set_ylabel("train", fontsize=8)
    axes[1, 0].set_ylabel("held-out", fontsize=8)
fig.suptitle("'scrubs': eight training and eight held-out scenes at the models' 64 x 64", fontsize=9)
fig.tight_layout()
savefig(fig, "00_testbed_scene_variation")

# %% [markdown]
# ## The planted bias
#
# The bias specification is the ground truth of the whole book. For each scenario it
# gives the share of each group among the scenario's training images; the table lists
# them with the implied share of men and of Black people. {glue:text}`n_balanced` scenarios
# are balanced controls; {glue:text}`n_counter` are planted against the common stereotype on
# purpose (`note`), so that a method that only echoes the language model's prior is caught
# out.

# %%
shares = spec.share_table()
display(shares.round(3).set_index("scenario"))
balanced = shares[list(testbed.GROUPS)].sub(0.25).abs().max(axis=1) < 1e-9
glue("n_balanced", int(balanced.sum()), display=False)
glue("n_counter", int((shares["note"] == "counter-stereotypical").sum()), display=False)
glue("strength", spec.strength, display=False)

# %%
fig, ax = plt.subplots(figsize=(9, 2.8))
heat = shares.set_index("scenario")[list(testbed.GROUPS)].T
sns.heatmap(heat, ax=ax, cmap="viridis", vmin=0, vmax=0.7, cbar_kws={"label": "planted share"})
ax.set_xlabel("")
ax.set_ylabel("")
ax.tick_params(axis="x", labelsize=6)
ax.set_title(f"Planted share of each group in each scenario's training images (strength {spec.strength:g})")
savefig(fig, "00_testbed_planted_shares")

# %% [markdown]
# Captions of the training images name the scenario (by its activity, its role or its
# props) and, at the rates below, the person's gender, race and a descriptive word.
# Atypical people are named more often ("a female pilot"), as in captions written by
# people; this marking, together with the group shares, is how a contrastive model picks
# up the planted skew. Each word is placed in captions with the planted shares below;
# `calm` is a balanced control and `ambitious` runs against the usual stereotype. The
# descriptions testbed-llava learns name women's gender and Black people's race more
# often (the last table): this is a planted reporting bias, not a property of the images.
# At strength {glue:text}`strength`, these are the values written in the file; strength 0
# would make every group equal in every row.

# %%
display(spec.word_table().round(3).set_index("word"))
display(pd.DataFrame([spec.captions]).rename(index={0: "captions"}))
display(spec.mention_table().round(3).set_index("group"))

# %% [markdown]
# ## Building and training the models
#
# `testbed.build(size)` trains both models and caches them; `fairvlm.models.load` then
# loads them like any other model. testbed-clip: a CLIP vision transformer
# ({glue:text}`vision_arch`) trained from scratch with CLIP's
# contrastive loss against the frozen MiniLM text tower; only the vision tower, the two
# projections and the temperature learn. testbed-llava: that vision tower, read at its
# second-to-last layer as LLaVA-1.5 does, a two-layer projector, and SmolLM2-135M-Instruct;
# only the projector learns (LLaVA's first stage), on descriptions and short questions.

# %%
root = testbed.build(SIZE)
log = testbed.training_log(SIZE)
timing = pd.DataFrame([
    {"stage": "testbed-clip", "wall seconds": log["clip"]["seconds_total"],
     "CPU seconds": log["clip"].get("cpu_seconds_total"), "images": log["clip"]["n_images"],
     "steps": len(log["clip"]["loss"])},
    {"stage": "testbed-llava", "wall seconds": log["llava"]["seconds_total"],
     "CPU seconds": log["llava"].get("cpu_seconds_total"), "images": log["llava"]["n_images"],
     "steps": len(log["llava"]["loss"])},
    {"stage": "total", "wall seconds": log["seconds"], "CPU seconds": log.get("cpu_seconds"),
     "images": None, "steps": None},
]).round(1)
display(timing.set_index("stage"))
glue("build_minutes", round(log["seconds"] / 60, 1), display=False)
glue("build_load", round(float(log.get("load_average", [float("nan")])[0]), 1), display=False)
glue("size", SIZE, display=False)
V = log["vision"]
glue("vision_arch", f"{V['num_hidden_layers']} layers of width {V['hidden_size']} with {V['num_attention_heads']} "
     f"heads, {V['patch_size']} x {V['patch_size']} patches of a {V['image_size']} x {V['image_size']} image",
     display=False)

# %% [markdown]
# The {glue:text}`size` build took {glue:text}`build_minutes` minutes of wall time on the
# machine that built it (its load average at the end was {glue:text}`build_load`: on a
# shared machine the wall time overstates what 2 free cores need). The curves below are
# the training loss of each stage and, for testbed-clip, zero-shot scenario accuracy on a
# small held-out set measured during training.

# %%
fig, axes = plt.subplots(1, 3, figsize=(10, 2.8))
clip_log, llava_log = log["clip"], log["llava"]
axes[0].plot(clip_log["step"], clip_log["loss"], lw=0.8)
axes[0].set(title="testbed-clip: contrastive loss", xlabel="step", ylabel="loss")
axes[1].plot(clip_log["eval_step"], clip_log["eval_acc"], marker="o", ms=3)
axes[1].set(title="testbed-clip: held-out zero-shot accuracy", xlabel="step", ylim=(0, 1))
axes[2].plot(llava_log["step"], llava_log["loss"], lw=0.8, color="C2")
axes[2].set(title="testbed-llava: projector LM loss", xlabel="step", ylabel="loss")
fig.tight_layout()
savefig(fig, "00_testbed_training_curves")

# %% [markdown]
# ## testbed-clip
#
# ### Does it see the scenario?
#
# The gallery holds {glue:text}`gallery_scenes` held-out scenes of every scenario, each in
# all four variants ({glue:text}`gallery_images` images, every group equally often in every
# scenario). Zero-shot classification compares each image with one neutral prompt per
# scenario, `"a photo of a person {activity}"`, and picks the most similar.

# %%
clip = models.load("testbed-clip", size=SIZE)
gallery = testbed.gallery(N_SCENES)
images = testbed.render_rows(gallery, progress=True)
img_emb = measure.image_embeddings(clip.model, clip.processor, images)
keys = list(testbed.SCENARIO_KEYS)
prompt_emb = measure.text_embeddings(clip.model, clip.processor, testbed.zero_shot_prompts(keys))
zs = measure.zero_shot(img_emb, prompt_emb, gallery["scenario"], keys)
zs = pd.concat([gallery.reset_index(drop=True), zs[["predicted", "correct"]]], axis=1)
role_emb = measure.text_embeddings(clip.model, clip.processor, testbed.zero_shot_prompts(keys, "a photo of {a_role}"))
zs_role = measure.zero_shot(img_emb, role_emb, gallery["scenario"], keys)
zero_shot_acc = float(zs["correct"].mean())
glue("gallery_scenes", N_SCENES, display=False)
glue("gallery_images", len(gallery), display=False)
glue("zero_shot_acc", round(zero_shot_acc, 3), display=False)
glue("zero_shot_role_acc", round(float(zs_role["correct"].mean()), 3), display=False)
by = zs.groupby("section")["correct"].mean().rename("accuracy").to_frame()
by.loc["all"] = zero_shot_acc
display(by.round(3))

# %% [markdown]
# Zero-shot scenario accuracy on held-out scenes is {glue:text}`zero_shot_acc` (design
# target: at least 0.9 for the `full` build); with role prompts instead (`"a photo of a
# pilot"`) it is {glue:text}`zero_shot_role_acc`. The scenarios it confuses most:

# %%
worst = zs.groupby("scenario")["correct"].mean().sort_values().head(6)
confusions = (zs[~zs["correct"]].groupby(["scenario", "predicted"]).size().rename("n")
              .reset_index().sort_values("n", ascending=False).head(8))
display(pd.concat([worst.rename("accuracy").round(3).reset_index(), confusions.reset_index(drop=True)], axis=1))

# %% [markdown]
# ### Does it see the person's group?
#
# A linear probe (logistic regression) is fitted on the image embeddings of training-split
# scenes and tested on the held-out gallery. Chance is 0.5. High accuracy means gender and
# race are linearly readable from the embedding, which is what lets a bias flow from the
# images into retrieval.

# %%
probe_gallery = testbed.gallery(max(1, N_SCENES // 2), split="train", start=900_000)
probe_emb = measure.image_embeddings(clip.model, clip.processor, testbed.render_rows(probe_gallery))
probe = {attr: measure.linear_probe(probe_emb, probe_gallery[attr], img_emb, gallery[attr], seed=SEED)
         for attr in ("gender", "race", "scenario")}
glue("probe_gender", round(probe["gender"], 3), display=False)
glue("probe_race", round(probe["race"], 3), display=False)
display(pd.Series(probe, name="probe accuracy").round(3).to_frame())

# %% [markdown]
# Gender is decoded with accuracy {glue:text}`probe_gender` and race with
# {glue:text}`probe_race`. How much of that is the encoder's doing? The same probe on the
# raw pixels (the 64 x 64 images the encoder sees, flattened) gives the baseline: what a
# linear reader gets from the drawing alone.

# %%
def _flat_pixels(rows):
    return np.stack([np.asarray(im, dtype=np.float32).ravel() / 255 for im in testbed.render_rows(rows)])


train_pix, test_pix = _flat_pixels(probe_gallery), _flat_pixels(gallery)
pixel_probe = {attr: measure.linear_probe(train_pix, probe_gallery[attr], test_pix, gallery[attr], seed=SEED)
               for attr in ("gender", "race")}
probe_vs_pixels = pd.DataFrame({"image embedding": {a: probe[a] for a in pixel_probe},
                                "raw pixels": pixel_probe})
display(probe_vs_pixels.round(3))
glue("pixel_probe_gender", round(pixel_probe["gender"], 3), display=False)
glue("pixel_probe_race", round(pixel_probe["race"], 3), display=False)

# %% [markdown]
# On raw pixels the probe reaches {glue:text}`pixel_probe_gender` for gender and
# {glue:text}`pixel_probe_race` for race. Where the embedding is not clearly above the
# pixels, the encoder has not made the group more readable than the drawing already is:
# at 64 x 64 pixels the gender cues (hair, lips, beard, torso outline) cover a few
# pixels, and the contrastive objective rewards them only in the captions that name
# gender and only against the other image of a scene pair.
#
# ### Does its retrieval follow the planted skew?
#
# For each scenario prompt we rank the whole balanced gallery. Two measures per query:
# the share of men (of Black people) among the top *k* images, with *k* half the number of
# the scenario's own images, and the paired counterfactual gap: over every held-out scene
# of the gallery, the query's cosine similarity to the man variants minus that to the
# woman variants (Black minus White), averaged. The paired gap compares images that differ
# only in the person, so it is not blurred by retrieval errors. Each is set against the
# planted skew of that scenario (share of men minus one half; share of Black people minus
# one half) with Spearman's rank correlation over the 50 scenarios.

# %%
k_scn = 2 * N_SCENES
sims = (prompt_emb @ img_emb.T).numpy()
skew = measure.group_skew(sims, gallery, keys, k=k_scn).rename(columns={"query": "scenario"})
skew = skew.merge(shares[["scenario", "section", "gender_skew", "race_skew", "note"]]
                  .rename(columns={"gender_skew": "planted_gender", "race_skew": "planted_race"}), on="scenario")
rho = {
    "gender, top-k": measure.rank_agreement(skew["gender_skew"], skew["planted_gender"]),
    "gender, paired": measure.rank_agreement(skew["cf_gender"], skew["planted_gender"]),
    "race, top-k": measure.rank_agreement(skew["race_skew"], skew["planted_race"]),
    "race, paired": measure.rank_agreement(skew["cf_race"], skew["planted_race"]),
}
display(pd.Series(rho, name="Spearman rho vs planted").round(3).to_frame())
for name, value in rho.items():
    glue("rho_" + name.replace(", ", "_").replace("-", ""), round(value, 3), display=False)

# %%
fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
for ax, attr in zip(axes, ["gender", "race"]):
    sns.scatterplot(data=skew, x=f"planted_{attr}", y=f"cf_{attr}", hue="section", ax=ax, s=25)
    for _, r in skew[skew["note"] != ""].iterrows():
        ax.annotate(r["scenario"], (r[f"planted_{attr}"], r[f"cf_{attr}"]), fontsize=7)
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    side = "men" if attr == "gender" else "Black people"
    ax.set(xlabel=f"planted skew to {side}", ylabel=f"paired similarity gap to {side}")
    ax.legend(fontsize=7)
fig.suptitle("Scenario queries: measured against planted skew (held-out gallery)", fontsize=9)
fig.tight_layout()
savefig(fig, "00_testbed_scenario_skew")

# %% [markdown]
# Rank correlation of the paired gap with the planted skew: {glue:text}`rho_gender_paired`
# for gender and {glue:text}`rho_race_paired` for race (top-*k* shares:
# {glue:text}`rho_gender_topk` and {glue:text}`rho_race_topk`; they move in steps of
# 1/*k* and are noisier).
#
# ### Descriptive words
#
# The same for the planted words, queried as `"a photo of a {word} person"` over the whole
# gallery with *k* a tenth of it. The last column is the text tower's own prior, measured
# without any image: the cosine similarity of the query to "a photo of a man" minus that to
# "a photo of a woman" in plain all-MiniLM-L6-v2 (mean pooling). It shows which
# associations the real text tower brings along before any training.

# %%
words = list(spec.words)
word_queries = [f"a photo of {testbed.captions.with_article(w + ' person')}" for w in words]
word_emb = measure.text_embeddings(clip.model, clip.processor, word_queries)
k_words = max(4, len(gallery) // 10)
wskew = measure.group_skew((word_emb @ img_emb.T).numpy(), gallery, words, k=k_words).rename(columns={"query": "word"})
wplanted = spec.word_table()[["word", "category", "gender_skew", "race_skew", "note"]].rename(
    columns={"gender_skew": "planted_gender", "race_skew": "planted_race"})
wskew = wplanted.merge(wskew, on="word")
minilm = models.load("minilm-l6")
anchors = minilm.embed_text(["a photo of a man", "a photo of a woman", "a photo of a Black person",
                             "a photo of a White person"])
wq = minilm.embed_text(word_queries)
wskew["text_prior_gender"] = ((wq @ anchors[0]) - (wq @ anchors[1])).numpy()
wskew["text_prior_race"] = ((wq @ anchors[2]) - (wq @ anchors[3])).numpy()
rho_words = {
    "gender, paired": measure.rank_agreement(wskew["cf_gender"], wskew["planted_gender"]),
    "race, paired": measure.rank_agreement(wskew["cf_race"], wskew["planted_race"]),
    "gender, top-k": measure.rank_agreement(wskew["gender_skew"], wskew["planted_gender"]),
    "race, top-k": measure.rank_agreement(wskew["race_skew"], wskew["planted_race"]),
}
glue("rho_words_gender", round(rho_words["gender, paired"], 3), display=False)
glue("rho_words_race", round(rho_words["race, paired"], 3), display=False)
display(wskew.drop(columns=["share_man", "share_black"]).round(3).set_index("word"))
display(pd.Series(rho_words, name="Spearman rho vs planted (9 words)").round(3).to_frame())

# %% [markdown]
# Over the nine words the paired gap ranks like the planted skew with
# rho = {glue:text}`rho_words_gender` (gender) and {glue:text}`rho_words_race` (race).
# Nine points make a rough estimate; the per-word rows say more, in particular for the
# control (`calm`) and the counter-stereotypical word (`ambitious`).
#
# ## testbed-llava
#
# testbed-llava describes the held-out scenes of {glue:text}`n_describe` scenarios, every
# scene in all four variants ({glue:text}`n_described` images), prompted with
# `"Describe the image."` in SmolLM2's chat format, greedy decoding. A description
# *names the scenario* if it contains one of the scenario's keywords (its role, its
# activity or its main prop: "pilot", "airplane"; see `testbed.SCENARIOS`). Gender
# mentions are words such as *man*, *woman*, *she*; race mentions are *Black* or *White*
# followed by a person noun (so "a white shirt" does not count).

# %%
llava = models.load("testbed-llava", size=SIZE)
dkeys = keys[:: max(1, len(keys) // N_DESCRIBE)][:N_DESCRIBE]
dgal = testbed.gallery(1, scenarios=dkeys, start=500 + SEED)
dimages = testbed.render_rows(dgal)
texts = measure.describe(llava.model, llava.processor, dimages, "Describe the image.", progress=True)
desc = measure.mention_table(texts, dgal)
gender_answers = measure.describe(llava.model, llava.processor, dimages, "Is this a man or a woman?",
                                  max_new_tokens=6)
race_answers = measure.describe(llava.model, llava.processor, dimages, "Is the person Black or White?",
                                max_new_tokens=6)
desc["gender_answer_correct"] = [g in a.lower().replace(".", " ").split() for a, g in
                                 zip(gender_answers, desc["gender"])]
desc["race_answer_correct"] = [r in a.lower().replace(".", " ").split() for a, r in
                               zip(race_answers, desc["race"])]
naming = float(desc["names_scenario"].mean())
glue("n_describe", len(dkeys), display=False)
glue("n_described", len(desc), display=False)
glue("naming_rate", round(naming, 3), display=False)
glue("llava_gender_acc", round(float(desc["gender_answer_correct"].mean()), 3), display=False)
glue("llava_race_acc", round(float(desc["race_answer_correct"].mean()), 3), display=False)
display(desc.sample(min(10, len(desc)), random_state=SEED)[["scenario", "variant", "text", "names_scenario"]])

# %% [markdown]
# {glue:text}`naming_rate` of the descriptions name the scenario's role or activity
# (design target: at least 0.8 for the `full` build). Asked directly, testbed-llava answers
# the gender question correctly for {glue:text}`llava_gender_acc` of the images and the
# race question for {glue:text}`llava_race_acc` (chance: 0.5; the four variants of each
# scene are all asked, so a model that always gives the same answer scores exactly 0.5).

# %%
answers = pd.DataFrame({"gender question": pd.Series(gender_answers).str.strip().value_counts().head(4),
                        "race question": pd.Series(race_answers).str.strip().value_counts().head(4)})
display(answers.fillna(0).astype(int))
sees_group = min(desc["gender_answer_correct"].mean(), desc["race_answer_correct"].mean()) >= 0.75
display(Markdown(
    "**Reading.** " + ("testbed-llava tells the groups apart when asked." if sees_group else
                       "testbed-llava does not reliably tell the groups apart when asked: its answers above "
                       "lean on one reply, the language model's prior, more than on the image. Its "
                       "projector was trained with the language model frozen (LLaVA stage 1) on a few "
                       "thousand examples, and group cues are small in these images (see the pixel probe "
                       "above). A larger share of gender and race questions in training did not change "
                       "this in our trials. Chapters 01 to 03 therefore use testbed-llava for what the "
                       "image adds to the prompt, not as a model that perceives the group well; the "
                       "SmolLM2 text runs carry the real pretraining bias.")))

# %% [markdown]
# How often its descriptions mention gender and race, per group, against the rates planted
# in its training descriptions:

# %%
rates = desc.groupby("variant")[["names_scenario", "mentions_gender", "mentions_race"]].mean()
planted_rates = spec.mention_table().set_index("group")[["p_mention_gender", "p_mention_race"]]
rates = rates.join(planted_rates.rename(columns={"p_mention_gender": "planted_gender",
                                                 "p_mention_race": "planted_race"}))
display(rates.round(3))
fig, axes = plt.subplots(1, 2, figsize=(8, 2.8), sharey=True)
for ax, attr in zip(axes, ["gender", "race"]):
    plot = rates[[f"mentions_{attr}", f"planted_{attr}"]].rename(
        columns={f"mentions_{attr}": "generated", f"planted_{attr}": "planted"}).reset_index().melt(
        id_vars="variant", var_name="", value_name="rate")
    sns.barplot(data=plot, x="variant", y="rate", hue="", ax=ax)
    ax.set(title=f"descriptions mentioning {attr}", xlabel="", ylim=(0, 1))
    ax.tick_params(axis="x", labelsize=7)
fig.tight_layout()
savefig(fig, "00_testbed_llava_mentions")
gap_race = float(rates.loc[["black_man", "black_woman"], "mentions_race"].mean()
                 - rates.loc[["white_man", "white_woman"], "mentions_race"].mean())
gap_gender = float(rates.loc[["black_woman", "white_woman"], "mentions_gender"].mean()
                   - rates.loc[["black_man", "white_man"], "mentions_gender"].mean())
planted_m = spec.mention_table().set_index("group")
planted_gap_race = float(planted_m.loc[["black_man", "black_woman"], "p_mention_race"].mean()
                         - planted_m.loc[["white_man", "white_woman"], "p_mention_race"].mean())
planted_gap_gender = float(planted_m.loc[["black_woman", "white_woman"], "p_mention_gender"].mean()
                           - planted_m.loc[["black_man", "white_man"], "p_mention_gender"].mean())
glue("gap_race", round(gap_race, 3), display=False)
glue("gap_gender", round(gap_gender, 3), display=False)
glue("planted_gap_race", round(planted_gap_race, 3), display=False)
glue("planted_gap_gender", round(planted_gap_gender, 3), display=False)

# %% [markdown]
# The rate at which descriptions name the person's race is higher for Black than for White
# people by {glue:text}`gap_race` (planted difference: {glue:text}`planted_gap_race`), and
# the rate for gender is higher for women than for men by {glue:text}`gap_gender` (planted:
# {glue:text}`planted_gap_gender`). The language model is SmolLM2 itself, untouched; what the projector
# hands it, and SmolLM2's own habits, decide what it says.
#
# ## What the world does not model
#
# The testbed is a controlled instrument, not a sample of the world. Read every number in
# this book that comes from it with these limits in mind:
#
# - **Binary, fixed categories.** Gender is man or woman and race is Black or White, as in
#   PAIRS. No other genders, races, ages, body types, disabilities or cultures exist in it.
# - **Cartoon cues.** Race is a skin tone, gender is hair length, lip colour, a beard and
#   a torso outline. Real appearance is far more varied, and real models pick up cues the
#   testbed does not draw; a probe accuracy here says nothing about a real encoder.
# - **Planted, not observed, bias.** The shares, word associations and mention rates are
#   numbers the book's authors wrote into a file. They echo stereotypes that the papers
#   measure in real models so that the methods face familiar patterns, but they are not
#   estimates of any real distribution.
# - **Tiny vision models, short training.** A vision tower of under a million parameters
#   trained for minutes on one synthetic world, and a projector trained on a few thousand
#   examples. The language side is real (MiniLM, SmolLM2-135M-Instruct, both far smaller
#   than the papers' models) and brings its own associations, which is partly the point.
# - **A language model that barely sees the group.** testbed-llava's answers to direct
#   gender and race questions are reported above against chance; its descriptions name
#   groups at rates that follow the planted ones, but that is a habit learned per
#   description, not evidence that it perceives who is in the picture.
# - **One world, one seed.** The numbers are for seed 0; other seeds give other models.
#
# ## Paper vs this book
#
# No paper stands behind this chapter. The table sets the testbed's design targets beside
# what this run measured, on held-out scenes, with the verdict *met* or *not met*.

# %%
def _verdict(ok):
    return "met" if ok else "not met"


model_note = f"testbed-clip / testbed-llava ({SIZE}), seed 0"
target_rows = [
    {"target": "zero-shot scenario accuracy on held-out scenes >= 0.9 (full build)",
     "this book": round(zero_shot_acc, 3), "model and data": f"testbed-clip ({SIZE}), {len(gallery)} held-out images",
     "verdict": _verdict(zero_shot_acc >= 0.9)},
    {"target": "gender and race linearly decodable from the image embedding (probe well above 0.5)",
     "this book": f"gender {probe['gender']:.3f}, race {probe['race']:.3f}",
     "model and data": f"testbed-clip ({SIZE}), probe fit on {len(probe_gallery)} training-split images",
     "verdict": _verdict(min(probe["gender"], probe["race"]) >= 0.75)},
    {"target": "scenario retrieval skew ranks like the planted skew (Spearman rho > 0)",
     "this book": f"gender {rho['gender, paired']:.3f}, race {rho['race, paired']:.3f} (paired gap)",
     "model and data": f"testbed-clip ({SIZE}), balanced held-out gallery",
     "verdict": _verdict(min(rho["gender, paired"], rho["race, paired"]) > 0)},
    {"target": "word retrieval skew ranks like the planted word associations (rho > 0)",
     "this book": f"gender {rho_words['gender, paired']:.3f}, race {rho_words['race, paired']:.3f} (9 words)",
     "model and data": f"testbed-clip ({SIZE}), balanced held-out gallery",
     "verdict": _verdict(min(rho_words["gender, paired"], rho_words["race, paired"]) > 0)},
    {"target": "descriptions name the role or activity >= 0.8 (full build)",
     "this book": round(naming, 3), "model and data": f"testbed-llava ({SIZE}), {len(desc)} held-out images",
     "verdict": _verdict(naming >= 0.8)},
    {"target": "answers direct gender and race questions well above chance (>= 0.75)",
     "this book": f"gender {desc['gender_answer_correct'].mean():.3f}, race {desc['race_answer_correct'].mean():.3f}",
     "model and data": f"testbed-llava ({SIZE}), {len(desc)} held-out images",
     "verdict": _verdict(sees_group)},
    {"target": "race named more often for Black people, gender more often for women (as planted)",
     "this book": f"race gap {gap_race:.3f}, gender gap {gap_gender:.3f}",
     "model and data": f"testbed-llava ({SIZE}), {len(desc)} held-out images",
     "verdict": _verdict(gap_race > 0 and gap_gender > 0)},
]
targets = pd.DataFrame(target_rows)
display(targets.set_index("target"))

# %% [markdown]
# ## Summary and what's next
#
# The testbed gives every later chapter a CLIP model and an LVLM whose training data carry
# a bias of known size and direction, joined to real pretrained language models. This
# chapter measured how well the models see the scenarios and the people in them and how
# far their biases follow the planted ones; the table above says which design targets
# this run met. Chapters 01 to 03 ask testbed-llava and SmolLM2 the RES-FAIR questions
# about the testbed scenarios; chapter 07 looks for the attention heads of testbed-clip
# that carry gender and race, and can compare what an intervention removes with the
# planted ground truth.
#
# ## References
#
# - Fraser, K. C. and Kiritchenko, S. (2024). Examining gender and racial bias in large
#   vision-language models using a novel dataset of parallel images (PAIRS). EACL.
# - Hamidieh, K. et al. (2024). Identifying implicit social biases in vision-language
#   models (So-B-IT). AIES.
# - Liu, H., Li, C., Wu, Q. and Lee, Y. J. (2023). Visual instruction tuning (LLaVA).
#   NeurIPS.
# - Radford, A. et al. (2021). Learning transferable visual models from natural language
#   supervision (CLIP). ICML.
# - Zhai, X. et al. (2022). LiT: zero-shot transfer with locked-image text tuning. CVPR.
# - Allal, L. B. et al. (2025). SmolLM2: when smol goes big. Hugging Face.
# - Reimers, N. and Gurevych, I. (2019). Sentence-BERT (all-MiniLM-L6-v2 is a
#   sentence-transformers model). EMNLP.

# %% tags=["remove-input"]
saved = save_results(
    "00_testbed",
    params=P,
    headline={
        "zero_shot_accuracy": zero_shot_acc,
        "zero_shot_accuracy_role_prompts": float(zs_role["correct"].mean()),
        "probe_gender": probe["gender"],
        "probe_race": probe["race"],
        "probe_scenario": probe["scenario"],
        "rho_scenario_gender_paired": rho["gender, paired"],
        "rho_scenario_race_paired": rho["race, paired"],
        "rho_scenario_gender_topk": rho["gender, top-k"],
        "rho_scenario_race_topk": rho["race, top-k"],
        "rho_words_gender_paired": rho_words["gender, paired"],
        "rho_words_race_paired": rho_words["race, paired"],
        "llava_naming_rate": naming,
        "llava_gender_answer_accuracy": float(desc["gender_answer_correct"].mean()),
        "llava_race_answer_accuracy": float(desc["race_answer_correct"].mean()),
        "pixel_probe_gender": pixel_probe["gender"],
        "pixel_probe_race": pixel_probe["race"],
        "llava_race_mention_gap": gap_race,
        "llava_gender_mention_gap": gap_gender,
        "build_seconds": log["seconds"],
        "testbed_size": SIZE,
        "testbed_dir": str(root),
    },
    provenance={"models": [f"testbed-clip ({SIZE})", f"testbed-llava ({SIZE})", "minilm-l6"],
                "data": ["counterfactual testbed (synthetic), held-out scenes",
                         f"bias spec data/testbed_bias_spec.yaml (sha256 of content {spec.digest()[:12]})"],
                "note": "testbed results describe the synthetic world, never a paper's number"},
    tables={"zero_shot": zs, "scenario_skew": skew, "word_skew": wskew, "llava_descriptions": desc,
            "planted_shares": shares, "targets": targets},
)
print(f"saved {saved}")
