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
# # Test-time steering: ablate a bias direction at every layer
#
# ## Overview
#
# Ratzlaff et al. (arXiv 2411.12590) debias large multimodal models without training: find
# one direction $a$ in the language model's residual stream that carries a protected
# attribute, then remove it from every residual, $r \leftarrow r - a a^\top r$, while the
# model generates. They find $a$ two ways: a difference of mean activations between
# bias-eliciting and benign prompt-image pairs ("steered dataset"), and a single signed
# gradient step on the image tokens that makes the protected words likelier ("steered
# gradient", section 3.1). Their Table 1 reports fewer protected-attribute mentions per
# 1,000 generations, Table 2 a smaller spread of negative sentiment across race groups,
# Table 3 the change in occupation mentions, Figure 3 the tokens whose probability moves,
# and section 5.2 why the MSE loss was chosen over KL and cross-entropy.
#
# This chapter:
#
# 1. fits both directions **per attribute** (gender, race) on each model of the profile, with
#    the selection rule and every candidate shown;
# 2. generates open-ended answers unsteered, steered each way for each attribute, with 20
#    random directions ablated the same way (the null) and with a *generation-damage
#    control* (a fitted direction with no attribute in it), and counts mentions per
#    attribute (Table 1);
# 3. measures role retention (Table 3), which gates every mention verdict, and negative
#    sentiment per group (Table 2);
# 4. asks whether steering shrinks the gap between the testbed groups planted with different
#    mention rates;
# 5. shows which tokens move (Figure 3) and compares the three losses of section 5.2;
# 6. folds the ablation into the weights, so the steered model is served at no extra cost;
# 7. sets the paper's claims against the measurements.
#
# ## Prerequisites and time to run
#
# | | |
# |---|---|
# | Chapter 00 (testbed) | necessary: testbed-llava and the planted mention rates |
# | Chapter 01 | helpful: hooks and the residual stream |
# | Time | embedded: 3.8 minutes on 2 CPU cores for the previous revision (one joint direction, four generation passes; `benchmarks/TIMINGS.md`); this revision generates seven passes per model on fewer prompts and has not been timed on an idle machine yet (the run at the end of this page says how long it took); smoke: designed for about a minute; paper: a GPU and the hub |
#
# ## Parameters
#
# `N_SCENARIOS` held-out testbed scenarios (each with its four counterfactual variants),
# `N_PERSONAS` SocialCounterfactuals personas for the text model, `N_PROMPTS` of the five
# open-ended prompts (`None`: all five on the paper profile, three embedded), `N_SEEDS` sampling replicates per (input, prompt) (`None`: the paper's
# 3 on the paper profile, 1 on the embedded one, where generation is most of the chapter's
# time on 2 CPU cores), `MAX_NEW_TOKENS` per answer, `N_CANDIDATES` dataset-direction
# candidates per attribute (`None`: the paper's 32 on the paper profile, 8 embedded: each
# candidate costs two ablated forward passes over the held-out prompts), `N_FIT` inputs to
# fit them, `MAX_BENIGN_KL` the bound of the selection rule, `BATCH_SIZE` rows per forward or generation batch, `N_NULL_DRAWS` random directions
# for the null (row $r$ of the grid ablates draw $r \bmod$ `N_NULL_DRAWS`, so the draws share
# one evaluation set), `ROLE_TOL` the role-retention tolerance that gates a mention verdict,
# `N_LOSS_ITEMS` items for the loss comparison (its MSE directions and generations are the main grid's).

# %% tags=["parameters"]
PROFILE = "embedded"
SEED = 0
N_SCENARIOS = 8
N_PERSONAS = 12
N_PROMPTS = None
N_SEEDS = None
MAX_NEW_TOKENS = 24
N_CANDIDATES = None
N_FIT = 32
MAX_BENIGN_KL = 0.1
BATCH_SIZE = 128
N_NULL_DRAWS = 20
ROLE_TOL = 0.1
N_LOSS_ITEMS = 8

# %%
from fairvlm.params import check_params, check_range

if N_SEEDS is None:      # the profile's default
    N_SEEDS = 3 if PROFILE == "paper" else 1
if N_PROMPTS is None:
    N_PROMPTS = 5 if PROFILE == "paper" else 3
if N_CANDIDATES is None:
    N_CANDIDATES = 32 if PROFILE == "paper" else 8
P = check_params(PROFILE=PROFILE, SEED=SEED, N_SCENARIOS=N_SCENARIOS, N_PERSONAS=N_PERSONAS, N_PROMPTS=N_PROMPTS,
                 N_SEEDS=N_SEEDS, MAX_NEW_TOKENS=MAX_NEW_TOKENS, N_CANDIDATES=N_CANDIDATES, N_FIT=N_FIT,
                 MAX_BENIGN_KL=MAX_BENIGN_KL, BATCH_SIZE=BATCH_SIZE, N_NULL_DRAWS=N_NULL_DRAWS,
                 ROLE_TOL=ROLE_TOL, N_LOSS_ITEMS=N_LOSS_ITEMS)
_ = check_range("N_SCENARIOS", N_SCENARIOS, 1, 50, kind=int)
_ = check_range("N_PERSONAS", N_PERSONAS, 2, 1000, kind=int)
_ = check_range("N_PROMPTS", N_PROMPTS, 1, 5, kind=int)
_ = check_range("N_SEEDS", N_SEEDS, 1, 10, kind=int)
_ = check_range("MAX_NEW_TOKENS", MAX_NEW_TOKENS, 1, 512, kind=int)
_ = check_range("N_CANDIDATES", N_CANDIDATES, 1, 256, kind=int)
_ = check_range("N_FIT", N_FIT, 2, 10000, kind=int)
_ = check_range("MAX_BENIGN_KL", MAX_BENIGN_KL, 0.0, 100.0)
_ = check_range("BATCH_SIZE", BATCH_SIZE, 1, 1024, kind=int)
_ = check_range("N_NULL_DRAWS", N_NULL_DRAWS, 1, 1000, kind=int)
_ = check_range("ROLE_TOL", ROLE_TOL, 0.0, 1.0)
_ = check_range("N_LOSS_ITEMS", N_LOSS_ITEMS, 1, 256, kind=int)
if PROFILE == "smoke":
    N_SCENARIOS, N_PERSONAS, N_PROMPTS, N_SEEDS, MAX_NEW_TOKENS, N_CANDIDATES, N_FIT, N_LOSS_ITEMS = 1, 4, 1, 1, 6, 2, 4, 2

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

from fairvlm import models, steering, steering_eval as se, textmetrics
from fairvlm.plotting import savefig, set_theme
from fairvlm.results import save_results
from fairvlm.verdicts import Claim, judge, tally, verdict_table

set_theme()
torch.manual_seed(SEED)
T0, C0 = time.perf_counter(), time.process_time()

# %% [markdown]
# ## Directions
#
# **Dataset direction, one per attribute.** Bias-eliciting inputs ask for the person's gender
# (or race: a separate direction), the question of the paper's Figure 2; benign inputs ask
# about objects or the background of the same inputs. The mean `resid_post` of each set is
# taken at `N_CANDIDATES` candidates (the paper's 32: 8 layers spread over 25-90% of the depth
# times the last 4 prompt positions; 16 on the embedded profile). The rule that picks one, on
# 10 held-out inputs: ablate the candidate at every layer, and among the candidates whose mean
# next-token KL on the benign prompts stays within `MAX_BENIGN_KL` nats, take the one with the
# largest drop of that attribute's token mass **at the answer token that names the attribute**
# (the unsteered greedy answer up to its first protected token is given as the start of the
# answer: in "A woman." the scored token is "woman", not "A"). **Gradient direction** (per
# input and attribute, at test time): the MSE loss pulls the attribute's logits $z_t$ at that
# same token toward $M_t = z_t + \max_v z_v$ (the paper's target read literally; its exact $M$
# and layer are not public); one step $u' = u - \epsilon\,\mathrm{sign}(\nabla_u L)$ with
# $\epsilon = \mathrm{std}(u)$ on the image tokens $u$ (for the text model, the prompt's token
# embeddings), and $a = h_l(x, u') - h_l(x, u)$ at the attribute's selected layer, normalised.
# **Controls.** The null: 20 random unit directions. The *generation-damage control*: the
# difference of means between the two benign question sets at the gender direction's layer and
# position, a direction fitted like the real ones but with no attribute in it. **Ablation**
# (`fairvlm.steering.ablate`): $r \leftarrow r - a a^\top r$ on the stream entering the first
# layer and on every attention and MLP output, in every forward pass of the generation.

# %% tags=["hide-input"]
size = "smoke" if PROFILE == "smoke" else "full"
if PROFILE == "paper":   # SocialCounterfactuals images ($FAIRVLM_SOCIALCF_IMAGES), a GPU and the hub
    settings = [se.socialcf_image_setting(m, n_sets=N_SCENARIOS, n_fit=N_FIT, seed=SEED)
                for m in ("llava-hf/llava-1.5-7b-hf", "meta-llama/Llama-3.2-11B-Vision-Instruct")]
else:
    settings = [se.testbed_setting(size, n_scenarios=N_SCENARIOS, n_fit=N_FIT, seed=SEED)]
settings.append(se.persona_setting("smollm2-135m-instruct", n_personas=N_PERSONAS, n_fit=N_FIT, seed=SEED,
                                   label="SmolLM2"))
runs, loaded = {}, {}
for st in settings:
    lm = models.load(st.name, size=st.extra["size"]) if st.name.startswith("testbed") else models.load(st.name)
    loaded[st.label] = lm
    runs[st.label] = se.run_setting(lm, st, n_seeds=N_SEEDS, n_prompts=N_PROMPTS, max_new_tokens=MAX_NEW_TOKENS,
                                    n_candidates=N_CANDIDATES, batch_size=BATCH_SIZE, seed=SEED,
                                    max_benign_kl=MAX_BENIGN_KL, n_null_draws=N_NULL_DRAWS,
                                    n_held=3 if PROFILE == "smoke" else None)
dirs = pd.concat([r["directions_table"] for r in runs.values()], ignore_index=True)
cands = se.candidate_table(runs)
PROV = "; ".join(f"{s.label} on {'SocialCounterfactuals personas' if s.text else ('held-out testbed scenes' if s.name.startswith('testbed') else 'SocialCounterfactuals images')}"
                 for s in settings)
display(Markdown(f"Directions per model and attribute ({PROV}). A cosine is at chance when it is near "
                 "1/sqrt(d), the last column."))
display(dirs.style.hide(axis="index").format(precision=3))
display(Markdown(f"Selection rule: {next(iter(runs.values()))['selection']['gender'].rule}. Every candidate "
                 "(saved as `results/05_steering/candidates.csv`):"))
display(cands.style.hide(axis="index").format(precision=3))
display(Markdown("Seconds spent per step (this run):"))
display(pd.DataFrame({k: r["timings"] for k, r in runs.items()}).T.rename_axis("model").reset_index()
        .style.hide(axis="index").format(precision=0))

# %% [markdown]
# ## Protected-attribute mentions (Table 1)
#
# Mentions are counted per attribute, never summed. Testbed text goes through the testbed's own
# detector (`fairvlm.testbed.captions.mentions`, the one its descriptions were planted for: a
# gender word; "black"/"white" before a person noun or role head): 0 or 1 per generation and
# attribute. Free text (SmolLM2) goes through the bigram word lists of
# `data/attribute_words.yaml`, as the paper counts (every occurrence; "black"/"white" only
# before a person noun, a testbed role head or a SocialCounterfactuals occupation, possibly
# after "male"/"female"; annotated unrelated bigrams such as "white coat" never count; the
# hand-made sentences of `tests/test_textmetrics.py` check it). Sampling: temperature 0.7,
# top-p 0.9.

# %% tags=["hide-input"]
gen = pd.concat([r["generations"] for r in runs.values()], ignore_index=True)
t1 = se.table1(gen)
display(Markdown(f"**Table 1 (this book).** Mentions per 1,000 generations; {PROV}; not the paper's numbers."))
display(t1.style.hide(axis="index").format(precision=0))
VLM = settings[0].label
bg = se.mentions_by_group(gen[gen["model"] == VLM])
planted = None
if VLM == "testbed-llava":
    from fairvlm.testbed import world_spec

    planted = world_spec().mention_table()
    bg = bg.merge(planted[["group", "p_mention_gender", "p_mention_race"]]
                  .rename(columns={"p_mention_gender": "planted gender rate", "p_mention_race": "planted race rate"}),
                  on="group")
    display(Markdown("testbed-llava by group, with the planted description mention rates (the ground truth "
                     "of this world)."))
display(bg.style.hide(axis="index").format(precision=2))

# %% [markdown]
# ## Role retention and sentiment (Tables 3 and 2)
#
# Table 3: how often the annotated role (testbed scenario role, or the persona's occupation) is
# named exactly. A steering method that stops the model describing the person removes
# mentions for free, so a mention verdict counts only when the method's role retention stays
# within `ROLE_TOL` (absolute share) of the unsteered model's: the lower end of the 90%
# interval of the change, bootstrapped over item clusters, at or above $-$`ROLE_TOL` (column
# `kept`; a non-inferiority check, the lower half of a TOST: naming the role more often is
# no damage). Column `reach below` is how far that interval reaches below the change: where it
# is at least `ROLE_TOL`, the gate is underpowered (a direction that changes nothing would fail
# it too), and the verdict says so and how many item clusters would be needed, rather than
# blaming the method. Table 2: VADER compound per
# sentence, negative at $\le -0.05$; negative sentences per 1,000 generations per race group,
# their variance (ddof = 1) and range across groups, and the fewest negative sentences of any
# group (a spread verdict needs at least 5 in every group, and an unsteered variance above 0).

# %% tags=["hide-input"]
roles = se.role_retention(gen, tol=ROLE_TOL, seed=SEED)
display(Markdown(f"**Table 3 (this book).** Role named (share of generations), change against unsteered, "
                 f"its 90% interval, and whether the fall is shown to be under {ROLE_TOL:g} (kept)."))
display(roles.style.hide(axis="index").format(precision=3))
t2 = se.table2(gen)
display(Markdown("**Table 2 (this book).** Negative sentences per 1,000 generations across race groups."))
display(t2.style.hide(axis="index").format(precision=1))

# %% [markdown]
# ## Which tokens move (Figure 3)
#
# The unsteered generations (up to 100) are teacher-forced through the plain and the steered
# testbed-llava, with each attribute's dataset direction; the mean next-token probability of
# every token over the generated positions, steered minus plain. (The gradient directions
# differ per input; their effect on generation is in Table 1.)

# %% tags=["hide-input"]
lm_tb, r_tb = loaded[VLM], runs[VLM]
g_tb = gen[(gen["model"] == VLM) & (gen["method"] == "unsteered")].head(100)
ims = [r_tb["setting"].items["image"].iloc[i] for i in g_tb["item"]]
shifts = textmetrics.token_shifts(   # one plain pass, one steered pass per direction
    lm_tb, list(g_tb["prompt"]), list(g_tb["text"]),
    {a: (lambda d=d: steering.ablate(lm_tb, d)) for a, d in r_tb["dataset_direction"].items()},
    images=ims, top=8, batch_size=BATCH_SIZE)
fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
for ax, (a, df) in zip(axes, shifts.items()):
    df = df.sort_values("shift")
    ax.barh([repr(t) for t in df["token"]], df["shift"], color=["#b2182b" if s < 0 else "#2166ac" for s in df["shift"]])
    ax.set_title(f"{a} dataset direction ablated")
    ax.set_xlabel("mean probability, steered - plain")
fig.suptitle(f"Token-probability shifts, {VLM}")
fig.tight_layout()
savefig(fig, "05_steering_token_shifts")

# %% [markdown]
# ## Loss functions (paper section 5.2)
#
# On the gender question, read at the answer token that names the gender, for the first
# `N_LOSS_ITEMS` items: each loss's one signed step is scored by the change of
# $\log p(T) = \log \sum_{t \in T} p_t$ (a raw logit moves when every logit shifts, a
# log-probability does not), and each loss's per-item directions are ablated in generation and
# scored by the gender-mention drop on the first prompt. A random-sign step of the same size is
# the control for the step. KL against a target uniform on $T$ equals the column cross-entropy
# divided by $|T|$ plus a constant, so their gradients are proportional and a sign step makes
# them one and the same direction (generated once).

# %% tags=["hide-input"]
loss_tabs, loss_rows = {}, []
for k, r in runs.items():
    pre = r["item_prefixes"]["gender"][0]
    n_l = min(N_LOSS_ITEMS, len(r["setting"].items))
    # the MSE directions, their log p(T) changes and the unsteered and MSE-steered first-prompt
    # generations are the main grid's (same items, layer, prefixes): reused, not recomputed
    la = se.loss_analysis(loaded[k], r["setting"], r["target_ids"]["gender"], layer=r["layer"]["gender"],
                          n_items=n_l, attribute="gender", prefixes=pre,
                          given={"mse": (r["gradient_directions"]["gender"], r["gradient_logp_change"]["gender"])})
    md = se.loss_mention_drop(loaded[k], r["setting"], la["directions"], attribute="gender",
                              max_new_tokens=MAX_NEW_TOKENS, batch_size=BATCH_SIZE, seed=SEED,
                              given_texts={"unsteered": se.first_prompt_texts(r, "unsteered", n_l),
                                           "mse": se.first_prompt_texts(r, "gradient:gender", n_l)})
    tab = la["table"].merge(md, on="loss")
    tab.insert(0, "model", k)
    la["cosines"].insert(0, "model", k)
    loss_tabs[k] = (tab, la["cosines"])
    rnd = se.random_step_change(loaded[k], r["setting"], r["target_ids"]["gender"], n_items=N_LOSS_ITEMS, seed=SEED,
                                attribute="gender", prefixes=pre)
    loss_rows.append({"model": k, "paper": "section 5.2: MSE chosen for a strong push on T", "verdict": judge(
        Claim("the MSE signed step raises log p(T) more than a random-sign step of the same size", "other",
              "greater", min_effect=0.1), la["logp_change"]["mse"], rnd, seed=SEED)})
loss_table = pd.concat([v[0] for v in loss_tabs.values()], ignore_index=True)
loss_cos = pd.concat([v[1] for v in loss_tabs.values()], ignore_index=True)
display(loss_table.style.hide(axis="index").format(precision=3))
display(loss_cos.style.hide(axis="index").format(precision=3))
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
for ax, col, title in ((axes[0], "delta_log_p_T", "change of log p(T) after one step"),
                       (axes[1], "mention drop", "gender mentions per generation, drop")):
    loss_table.pivot(index="loss", columns="model", values=col).plot.bar(ax=ax, rot=0)
    ax.set_title(title)
fig.tight_layout()
savefig(fig, "05_steering_losses")

# %% [markdown]
# ## Serving at zero cost
#
# Removing $a$ from every write to the stream is the same as replacing every matrix that
# writes to it (token embedding, attention output and MLP down projections, the projector's
# last layer) by $W - a a^\top W$. The orthogonalised model needs no hooks.

# %% tags=["hide-input"]
eq_rows = []
for k, r in runs.items():
    lm = loaded[k]
    st = r["setting"]
    if st.text:
        enc = lm.inputs([se.TEXT_PROMPTS[0].format(p=p) for p in st.items["persona"].iloc[:2]])
    else:
        enc = lm.inputs([se.PROMPTS[0]] * 2, list(st.items["image"].iloc[:2]))
    d = r["dataset_direction"]["gender"]
    orth = steering.orthogonalize(lm, d)
    with torch.no_grad():
        with steering.ablate(lm, d):
            hooked = lm.model(**enc).logits
        served = orth.model(**enc).logits
    eq_rows.append({"model": k, "max |logit difference|": float((hooked - served).abs().max())})
    del orth
eq = pd.DataFrame(eq_rows)
display(eq.style.hide(axis="index").format({"max |logit difference|": "{:.2e}"}))

# %% [markdown]
# ## Paper vs this book
#
# Every row goes through `fairvlm.verdicts.judge`: the effect per (input, prompt, seed) row,
# the same quantity under a control, and the difference with a bootstrap interval over item
# clusters (testbed scenes, each with its four group variants; personas). **Mentions**, per
# attribute: the drop against the random null (row $r$ ablates draw $r \bmod 20$) and,
# separately, against the generation-damage control, at least 50 per 1,000 generations; a
# drop is only judged when role retention is kept (Table 3; else "not testable here").
# These rows assert "other": fewer mentions of an attribute is the paper's measure, but it is
# not a gap between groups, and it is real even in a world where nothing is planted.
# **Sentiment**: the fall of the cross-group variance under each race direction against the
# random null (groups resampled by item). **Planted truth** (testbed only): the gap in mention
# rate between the group planted high and the other, per scene; does steering shrink it more
# than the null does, by at least 0.05? Only judged where the unsteered model shows the gap.

# %% tags=["hide-input"]
rows = []
for k, r in runs.items():
    rows += se.verdict_rows(r, planted=planted if k == VLM else None, role_table=roles, tol=ROLE_TOL, seed=SEED)
rows += loss_rows
vt = verdict_table(rows)
display(Markdown(f"Measured in this run: {PROV}. Testbed rows are results about the counterfactual testbed and "
                 "SmolLM2 rows about a 135M text model, not about the paper's LLaVA-1.5 / Llama-3.2."))
display(vt.drop(columns=["rule"]).style.hide(axis="index").format(precision=3))
display(Markdown(f"Verdicts: {tally(vt)}."))

# %% tags=["remove-input"]
t1i = t1.set_index(["model", "method"])
rl = roles.set_index(["model", "method"])
glue("tb_model", VLM, display=False)
for k, tag in ((VLM, "tb"), ("SmolLM2", "sm")):
    for m in se.METHODS:
        for a in se.ATTRIBUTES:
            glue(f"{tag}_{m.replace(':', '_')}_{a}", f"{t1i.loc[(k, m), a]:.0f}", display=False)
        glue(f"{tag}_{m.replace(':', '_')}_role", f"{rl.loc[(k, m), 'role named']:.2f}", display=False)
    glue(f"{tag}_tally", tally(vt, vt["model"] == k), display=False)
    glue(f"{tag}_eq", f"{eq.set_index('model').loc[k, 'max |logit difference|']:.1e}", display=False)
glue("planted_sentence", "; ".join(f"{r['claim']}: {r['verdict']}" for _, r in vt.iterrows()
                                   if "planted" in r["claim"]) or "not run (no testbed model)", display=False)
glue("minutes", f"{(time.perf_counter() - T0) / 60:.1f}", display=False)
glue("cpu_minutes", f"{(time.process_time() - C0) / 60:.1f}", display=False)

# %% [markdown]
# ## Summary and what's next
#
# {glue:text}`tb_model` mentioned gender {glue:text}`tb_unsteered_gender` and race
# {glue:text}`tb_unsteered_race` times per 1,000 generations unsteered. With the gender
# dataset direction ablated gender fell to {glue:text}`tb_dataset_gender_gender`, with the
# race dataset direction race fell to {glue:text}`tb_dataset_race_race`; the gradient
# directions gave {glue:text}`tb_gradient_gender_gender` and {glue:text}`tb_gradient_race_race`,
# the random null {glue:text}`tb_random_gender` and {glue:text}`tb_random_race`, the
# damage control {glue:text}`tb_damage_gender` and {glue:text}`tb_damage_race`. The share of
# generations naming the role was {glue:text}`tb_unsteered_role` unsteered and
# {glue:text}`tb_dataset_gender_role`, {glue:text}`tb_dataset_race_role`,
# {glue:text}`tb_gradient_gender_role`, {glue:text}`tb_gradient_race_role` under the four
# steered models ({glue:text}`tb_damage_role` under the damage control). Verdicts on
# {glue:text}`tb_model`: {glue:text}`tb_tally`. For SmolLM2 on personas, gender mentions went
# {glue:text}`sm_unsteered_gender` to {glue:text}`sm_dataset_gender_gender` (dataset) and
# {glue:text}`sm_gradient_gender_gender` (gradient), race {glue:text}`sm_unsteered_race` to
# {glue:text}`sm_dataset_race_race` and {glue:text}`sm_gradient_race_race`, role retention
# {glue:text}`sm_unsteered_role` unsteered; verdicts: {glue:text}`sm_tally`. The planted truth:
# {glue:text}`planted_sentence`. The orthogonalised weights reproduce the hook ablation to
# {glue:text}`tb_eq` and {glue:text}`sm_eq` in the logits, so a steered model can be served by
# any runtime at the cost of the plain one (see `benchmarks/bench_steering.py`). This run took
# {glue:text}`minutes` minutes ({glue:text}`cpu_minutes` CPU-minutes over all threads). To generate at the paper's scale, shard the grid with
# `accelerate launch -m fairvlm.shardgen` (README, "Scaling out"); its fingerprint covers the
# direction file's bytes, the model's weights, the images and the library version, and a run
# that would resume or merge across a changed input stops with one error. Chapter 06 turns
# from directions to sparse features.
#
# ## References
#
# - Ratzlaff, P., Howard, P., et al. (2024). Debiasing Large Multimodal Models via Test-Time
#   Steering. arXiv 2411.12590.
# - Arditi, A., et al. (2024). Refusal in language models is mediated by a single direction.
# - Howard, P., et al. (2024). SocialCounterfactuals. CVPR.
# - Hutto, C. and Gilbert, E. (2014). VADER. ICWSM.
# - Lakens, D. (2017). Equivalence tests. Social Psychological and Personality Science.

# %% tags=["remove-input"]
headline = {
    "mentions_per_1k": {m: {k: {a: float(t1i.loc[(k, m), a]) for a in se.ATTRIBUTES} for k in runs}
                        for m in se.METHODS},
    "role_retention": {m: {k: float(rl.loc[(k, m), "role named"]) for k in runs} for m in se.METHODS},
    "null_draws": int(min(r["n_null_draws"] for r in runs.values())),
    "mention_counter": {k: r["counter"] for k, r in runs.items()},
    "neg_sentiment_variance": {f"{r.model}/{r.method}": float(r.variance) for r in t2.itertuples()},
    "any_candidate_passed_kl": {f"{m}/{a}": bool(v) for m, a, v in zip(dirs["model"], dirs["attribute"],
                                                                       dirs["any candidate passed KL"])},
    "direction_cosine_dataset_gradient": {f"{m}/{a}": float(v) for m, a, v in zip(
        dirs["model"], dirs["attribute"], dirs["cos(dataset, mean gradient)"])},
    "orthogonalized_max_logit_diff": {r.model: r._2 for r in eq.itertuples()},
    "verdicts": {f"{r['model']}: {r['claim']}": r["verdict"] for _, r in vt.iterrows()},
}
save_results("05_steering", params=P, headline=headline,
             provenance={"models": [s.name for s in settings],
                         "data": f"counterfactual testbed ({size}) held-out scenes; SocialCounterfactuals race x gender captions as personas"},
             tables={"table1": t1, "table2": t2, "role_retention": roles, "mentions_by_group": bg,
                     "candidates": cands, "loss_analysis": loss_table, "loss_cosines": loss_cos, "verdicts": vt,
                     "directions": dirs})
