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
# 1. fits both directions on each model of the profile, with the selection rule stated;
# 2. generates open-ended answers unsteered, steered both ways, and with a random direction
#    ablated the same way (the null), and counts mentions (Table 1);
# 3. measures negative sentiment per group (Table 2) and role mentions (Table 3);
# 4. shows which tokens move (Figure 3);
# 5. compares the three losses of section 5.2;
# 6. folds the ablation into the weights, so the steered model is served at no extra cost;
# 7. sets the paper's claims against the measurements.
#
# ## Prerequisites and time to run
#
# | | |
# |---|---|
# | Chapter 00 (testbed) | necessary: testbed-llava and the planted mention rates |
# | Chapter 01 | helpful: hooks and the residual stream |
# | Time | embedded: 3.8 minutes on 2 CPU cores in a whole `make book` from an empty cache on 2026-12-07 (earlier runs: `benchmarks/TIMINGS.md`); smoke: about a minute; paper: a GPU and the hub |
#
# ## Parameters
#
# `N_SCENARIOS` held-out testbed scenarios (each with its four counterfactual variants),
# `N_PERSONAS` SocialCounterfactuals personas for the text model, `N_PROMPTS` of the five
# open-ended prompts, `N_SEEDS` sampling replicates per (input, prompt) (`None`: the paper's
# 3 on the paper profile, 1 on the embedded one, where generation is most of the chapter's
# time on 2 CPU cores), `MAX_NEW_TOKENS` per answer, `N_CANDIDATES` dataset-direction
# candidates (`None`: the paper's 32 on the paper profile, 16 embedded: each candidate costs
# two ablated forward passes over the held-out prompts), `N_FIT` prompt pairs to fit them, `MAX_BENIGN_KL` the bound of the selection
# rule, `BATCH_SIZE` rows per forward or generation batch.

# %% tags=["parameters"]
PROFILE = "embedded"
SEED = 0
N_SCENARIOS = 8
N_PERSONAS = 12
N_PROMPTS = 5
N_SEEDS = None
MAX_NEW_TOKENS = 32
N_CANDIDATES = None
N_FIT = 32
MAX_BENIGN_KL = 0.1
BATCH_SIZE = 64

# %%
from fairvlm.params import check_params, check_range

if N_SEEDS is None:      # the profile's default
    N_SEEDS = 3 if PROFILE == "paper" else 1
if N_CANDIDATES is None:
    N_CANDIDATES = 32 if PROFILE == "paper" else 16
P = check_params(PROFILE=PROFILE, SEED=SEED, N_SCENARIOS=N_SCENARIOS, N_PERSONAS=N_PERSONAS, N_PROMPTS=N_PROMPTS,
                 N_SEEDS=N_SEEDS, MAX_NEW_TOKENS=MAX_NEW_TOKENS, N_CANDIDATES=N_CANDIDATES, N_FIT=N_FIT,
                 MAX_BENIGN_KL=MAX_BENIGN_KL, BATCH_SIZE=BATCH_SIZE)
_ = check_range("N_SCENARIOS", N_SCENARIOS, 1, 50, kind=int)
_ = check_range("N_PERSONAS", N_PERSONAS, 2, 1000, kind=int)
_ = check_range("N_PROMPTS", N_PROMPTS, 1, 5, kind=int)
_ = check_range("N_SEEDS", N_SEEDS, 1, 10, kind=int)
_ = check_range("MAX_NEW_TOKENS", MAX_NEW_TOKENS, 1, 512, kind=int)
_ = check_range("N_CANDIDATES", N_CANDIDATES, 1, 256, kind=int)
_ = check_range("N_FIT", N_FIT, 2, 10000, kind=int)
_ = check_range("MAX_BENIGN_KL", MAX_BENIGN_KL, 0.0, 100.0)
_ = check_range("BATCH_SIZE", BATCH_SIZE, 1, 1024, kind=int)
if PROFILE == "smoke":
    N_SCENARIOS, N_PERSONAS, N_PROMPTS, N_SEEDS, MAX_NEW_TOKENS, N_CANDIDATES, N_FIT = 1, 4, 2, 1, 6, 2, 4

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
from fairvlm.verdicts import bootstrap_ci, decide, verdict_table

set_theme()
torch.manual_seed(SEED)
T0 = time.perf_counter()

# %% [markdown]
# ## Directions
#
# **Dataset direction.** Bias-eliciting pairs ask for the person's gender or race (the
# question of the paper's Figure 2); benign pairs ask about objects or the background of the
# same inputs. The mean `resid_post` of each set is taken at `N_CANDIDATES` candidates
# (the paper's 32: 8 layers spread over 25-90% of the depth times the last 4 prompt
# positions; 16 on the embedded profile: 4 layers times the same positions; the table below
# names them). The rule that picks one, on 10
# held-out pairs of each kind: ablate the candidate at every layer, and among the candidates
# whose mean next-token KL on the benign prompts stays within `MAX_BENIGN_KL` nats, take the
# one with the largest drop of the protected tokens' next-token probability mass on the bias
# prompts. **Gradient direction** (per input, at test time): the MSE loss pulls the
# protected logits $z_t$ at the last position toward $M_t = z_t + \max_v z_v$ (the paper's
# target read literally; its exact $M$ and layer are not public); one step
# $u' = u - \epsilon\,\mathrm{sign}(\nabla_u L)$ with $\epsilon = \mathrm{std}(u)$ on the
# image tokens $u$ (the projector output; for the text model, the prompt's token
# embeddings), and $a = h_l(x, u') - h_l(x, u)$ at the selected layer $l$, normalised.
# The null is a random unit direction ablated the same way. **Ablation**
# (`fairvlm.steering.ablate`): $r \leftarrow r - a a^\top r$ on the stream entering the
# first layer and on every attention and MLP output, in every forward pass of the
# generation, so every layer reads a stream with nothing along $a$ (re-removing it from each
# layer's input as well changes the result only by rounding; the library tests this).

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
                                    max_benign_kl=MAX_BENIGN_KL)
dirs = pd.DataFrame([{"model": k, "selected layer": r["layer"], "selected position": r["selection"].key[1],
                      "cos(dataset, mean gradient)": r["cosine_dataset_gradient"],
                      "mean cos(dataset, per-input gradient)": r["cosine_dataset_gradient_per_item"],
                      "cos(dataset, random)": r["cosine_dataset_random"],
                      "protected-logit change of the step": r["gradient_logit_change"]}
                     for k, r in runs.items()])
PROV = "; ".join(f"{s.label} on {'SocialCounterfactuals personas' if s.text else ('held-out testbed scenes' if s.name.startswith('testbed') else 'SocialCounterfactuals images')}"
                 for s in settings)
display(Markdown(f"Directions per model ({PROV})."))
display(dirs.style.hide(axis="index").format(precision=3))
display(Markdown(f"Selection rule: {next(iter(runs.values()))['selection'].rule}."))
display(Markdown("Seconds spent per step (this run):"))
display(pd.DataFrame({k: r["timings"] for k, r in runs.items()}).T.rename_axis("model").reset_index()
        .style.hide(axis="index").format(precision=0))

# %% [markdown]
# ## Protected-attribute mentions (Table 1)
#
# Bigram counting with the word lists in `data/attribute_words.yaml` (polysemous words such
# as "black" count only before a person noun; annotated unrelated bigrams such as "white
# coat" never count). Generations are sampled at temperature 0.7, top-p 0.9.

# %% tags=["hide-input"]
gen = pd.concat([r["generations"] for r in runs.values()], ignore_index=True)
t1 = se.table1(gen)
display(Markdown(f"**Table 1 (this book).** Mentions per 1,000 generations; {PROV}; not the paper's numbers."))
display(t1.style.hide(axis="index").format(precision=0))
VLM = settings[0].label
bg = se.mentions_by_group(gen[gen["model"] == VLM])
if VLM == "testbed-llava":
    from fairvlm.testbed import world_spec

    planted = world_spec().mention_table().rename(columns={"p_mention_gender": "planted gender rate",
                                                           "p_mention_race": "planted race rate"})
    bg = bg.merge(planted[["group", "planted gender rate", "planted race rate"]], on="group")
    display(Markdown("testbed-llava by group: the planted description mention rates are the ground truth "
                     "(women's gender and Black people's race were planted high)."))
display(bg.style.hide(axis="index").format(precision=2))

# %% [markdown]
# ## Sentiment and roles (Tables 2 and 3)
#
# VADER compound per sentence; a sentence is negative at compound $\le -0.05$. Rates are
# negative sentences per 1,000 generations per race group; variance (ddof = 1) and range
# across groups. Table 3: how often the annotated role (testbed scenario role, or the
# persona's occupation) is named exactly, and the relative change against unsteered.

# %% tags=["hide-input"]
t2 = se.table2(gen)
display(Markdown("**Table 2 (this book).** Negative sentences per 1,000 generations across race groups."))
display(t2.style.hide(axis="index").format(precision=1))
t3 = se.table3(gen)
display(Markdown("**Table 3 (this book).** Role named (share of generations) and relative change vs unsteered."))
display(t3.style.hide(axis="index").format(precision=3))

# %% [markdown]
# ## Which tokens move (Figure 3)
#
# The unsteered generations (up to 100) are teacher-forced through the plain and the
# steered testbed-llava; the mean next-token probability of every token over the generated
# positions, steered minus plain.

# %% tags=["hide-input"]
lm_tb, r_tb = loaded[VLM], runs[VLM]
g_tb = gen[(gen["model"] == VLM) & (gen["method"] == "unsteered")].head(100)
ims = [r_tb["setting"].items["image"].iloc[i] for i in g_tb["item"]]
shifts = textmetrics.token_shifts(   # one plain pass, one steered pass per direction
    lm_tb, list(g_tb["prompt"]), list(g_tb["text"]),
    {m: (lambda a=a: steering.ablate(lm_tb, a))
     for m, a in (("dataset", r_tb["dataset_direction"]), ("gradient", r_tb["gradient_mean"]))},
    images=ims, top=8, batch_size=BATCH_SIZE)
fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
for ax, (m, df) in zip(axes, shifts.items()):
    df = df.sort_values("shift")
    ax.barh([repr(t) for t in df["token"]], df["shift"], color=["#b2182b" if s < 0 else "#2166ac" for s in df["shift"]])
    ax.set_title(f"steered {m}")
    ax.set_xlabel("mean probability, steered - plain")
fig.suptitle(f"Token-probability shifts, {VLM}")
fig.tight_layout()
savefig(fig, "05_steering_token_shifts")

# %% [markdown]
# ## Loss functions (paper section 5.2)
#
# On the bias question, the gradient of each loss with respect to the logits (its norm and
# the share of it on the protected tokens), the cosines between them, and what one signed
# step with each does to the protected logits. For comparison, a step of the same size with
# random signs.

# %% tags=["hide-input"]
loss_tabs = {}
for k, r in runs.items():
    la = se.loss_analysis(loaded[k], r["setting"], r["target_ids"], layer=r["layer"], n_items=min(8, len(r["setting"].items)))
    la["table"].insert(0, "model", k)
    la["cosines"].insert(0, "model", k)
    loss_tabs[k] = la
loss_table = pd.concat([v["table"] for v in loss_tabs.values()], ignore_index=True)
loss_cos = pd.concat([v["cosines"] for v in loss_tabs.values()], ignore_index=True)
display(loss_table.style.hide(axis="index").format(precision=3))
display(loss_cos.style.hide(axis="index").format(precision=3))
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
for ax, col, title in ((axes[0], "logit_grad_norm", "gradient norm w.r.t. logits"),
                       (axes[1], "protected_logit_change", "protected-logit change after one step")):
    piv = loss_table.pivot(index="loss", columns="model", values=col)
    piv.plot.bar(ax=ax, rot=0)
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
    orth = steering.orthogonalize(lm, r["dataset_direction"])
    with torch.no_grad():
        with steering.ablate(lm, r["dataset_direction"]):
            hooked = lm.model(**enc).logits
        served = orth.model(**enc).logits
    eq_rows.append({"model": k, "max |logit difference|": float((hooked - served).abs().max())})
    del orth
eq = pd.DataFrame(eq_rows)
display(eq.style.hide(axis="index").format({"max |logit difference|": "{:.2e}"}))

# %% [markdown]
# ## Paper vs this book
#
# Each claim is an effect measured here with a seeded bootstrap 95% interval, against the
# same measurement for a random unit direction ablated the same way (or a random-sign step
# for the loss claim). Mentions: per (input, prompt, seed) row, unsteered mentions minus
# steered mentions (gender and race summed). Sentiment: the reduction of the cross-group
# variance of negative-sentence rates.

# %% tags=["hide-input"]
rows = []
for k in runs:
    g = gen[gen["model"] == k]
    null = se.paired_drop(g, "random")
    null_ci = bootstrap_ci(null, seed=SEED)
    for m, paper in (("dataset", "Table 1: steered dataset reduces mentions (LLaVA-1.5 gender 358 -> 483 is the exception)"),
                     ("gradient", "Table 1: steered gradient reduces mentions (small effect on LLaVA-1.5)")):
        eff = se.paired_drop(g, m)
        rows.append({"claim": f"{m} direction reduces protected-attribute mentions", "model": k, "paper": paper,
                     "verdict": decide(float(eff.mean()), bootstrap_ci(eff, seed=SEED), float(null.mean()), null_ci,
                                       direction="greater")})
    v_u, _ = se.spread_bootstrap(g, "unsteered", seed=SEED)
    for m in ("dataset", "gradient"):
        v_m, ci_m = se.spread_bootstrap(g, m, seed=SEED)
        v_r, ci_r = se.spread_bootstrap(g, "random", seed=SEED)
        testable = np.isfinite(v_u) and g[g["method"] == "unsteered"]["neg"].sum() > 0
        rows.append({"claim": f"{m} direction lowers the cross-group variance of negative sentiment", "model": k,
                     "paper": "Table 2: LLaVA-1.5 57.6 -> 41.6 (dataset), 16.4 (gradient)",
                     "verdict": decide(v_u - v_m, (v_u - ci_m[1], v_u - ci_m[0]), v_u - v_r, (v_u - ci_r[1], v_u - ci_r[0]),
                                       direction="greater", testable=bool(testable),
                                       why="" if testable else "no negative sentence in the unsteered generations")})
    r = runs[k]
    st = r["setting"]
    n_it = min(8, len(st.items))
    step = se.gradient_step_change(loaded[k], st, r["target_ids"], layer=r["layer"], n_items=n_it)
    rnd = se.random_step_change(loaded[k], st, r["target_ids"], n_items=n_it, seed=SEED)
    rows.append({"claim": "the MSE signed step raises the protected logits", "model": k,
                 "paper": "section 5.2: MSE chosen for a strong push on T",
                 "verdict": decide(float(step.mean()), bootstrap_ci(step, seed=SEED), float(rnd.mean()),
                                   bootstrap_ci(rnd, seed=SEED), direction="greater")})
vt = verdict_table(rows)
display(Markdown(f"Measured in this run: {PROV}. Testbed rows are results about the counterfactual testbed and "
                 "SmolLM2 rows about a 135M text model, not about the paper's LLaVA-1.5 / Llama-3.2."))
display(vt.style.hide(axis="index").format(precision=3))

# %% tags=["remove-input"]
def _v(claim_start, model):
    r = vt[(vt["claim"].str.startswith(claim_start)) & (vt["model"] == model)].iloc[0]
    return r["verdict"]


t1i = t1.set_index(["model", "method"])
glue("tb_model", VLM, display=False)
for k, tag in ((VLM, "tb"), ("SmolLM2", "sm")):
    for m in ("unsteered", "dataset", "gradient", "random"):
        glue(f"{tag}_{m}_gender", f"{t1i.loc[(k, m), 'gender']:.0f}", display=False)
        glue(f"{tag}_{m}_race", f"{t1i.loc[(k, m), 'race']:.0f}", display=False)
    glue(f"{tag}_v_dataset", _v("dataset direction reduces", k), display=False)
    glue(f"{tag}_v_gradient", _v("gradient direction reduces", k), display=False)
    glue(f"{tag}_cos", f"{runs[k]['cosine_dataset_gradient']:.2f}", display=False)
    glue(f"{tag}_eq", f"{eq.set_index('model').loc[k, 'max |logit difference|']:.1e}", display=False)
glue("minutes", f"{(time.perf_counter() - T0) / 60:.1f}", display=False)

# %% [markdown]
# ## Summary and what's next
#
# {glue:text}`tb_model` mentioned gender {glue:text}`tb_unsteered_gender` and race
# {glue:text}`tb_unsteered_race` times per 1,000 generations unsteered; with the dataset
# direction ablated {glue:text}`tb_dataset_gender` and {glue:text}`tb_dataset_race`, with
# the gradient direction {glue:text}`tb_gradient_gender` and {glue:text}`tb_gradient_race`,
# and with a random direction {glue:text}`tb_random_gender` and {glue:text}`tb_random_race`
# (verdicts: dataset {glue:text}`tb_v_dataset`, gradient {glue:text}`tb_v_gradient`). For
# SmolLM2 on personas the same four rows read {glue:text}`sm_unsteered_gender` /
# {glue:text}`sm_unsteered_race`, {glue:text}`sm_dataset_gender` / {glue:text}`sm_dataset_race`,
# {glue:text}`sm_gradient_gender` / {glue:text}`sm_gradient_race` and
# {glue:text}`sm_random_gender` / {glue:text}`sm_random_race` (verdicts: dataset
# {glue:text}`sm_v_dataset`, gradient {glue:text}`sm_v_gradient`). The dataset and mean
# gradient directions have cosine {glue:text}`tb_cos` on {glue:text}`tb_model` and
# {glue:text}`sm_cos` on SmolLM2. The orthogonalised weights reproduce the hook ablation
# to {glue:text}`tb_eq` and {glue:text}`sm_eq` in the logits, so a steered model can be
# served by any runtime at the cost of the plain one (see `benchmarks/bench_steering.py`).
# This run took {glue:text}`minutes` minutes. To generate at the paper's scale, shard the
# grid with `accelerate launch -m fairvlm.shardgen` (README, "Scaling out"). Chapter 06 turns
# from directions to sparse features.
#
# ## References
#
# - Ratzlaff, P., Howard, P., et al. (2024). Debiasing Large Multimodal Models via Test-Time
#   Steering. arXiv 2411.12590.
# - Arditi, A., et al. (2024). Refusal in language models is mediated by a single direction.
# - Howard, P., et al. (2024). SocialCounterfactuals. CVPR.
# - Hutto, C. and Gilbert, E. (2014). VADER. ICWSM.

# %% tags=["remove-input"]
headline = {
    "mentions_per_1k": {m: {k: {a: float(t1i.loc[(k, m), a]) for a in se.ATTRIBUTES} for k in runs}
                        for m in se.METHODS},
    "neg_sentiment_variance": {f"{r.model}/{r.method}": float(r.variance) for r in t2.itertuples()},
    "neg_sentiment_range": {f"{r.model}/{r.method}": float(r.range) for r in t2.itertuples()},
    "occupation_mentions_change": {f"{r.model}/{r.method}": (None if not np.isfinite(r.relative_change)
                                                             else float(r.relative_change))
                                   for r in t3.itertuples() if r.method != "unsteered"},
    "direction_cosine_dataset_gradient": {k: r["cosine_dataset_gradient"] for k, r in runs.items()},
    "orthogonalized_max_logit_diff": {r.model: r._2 for r in eq.itertuples()},
    "verdicts": {f"{r['model']}: {r['claim']}": r["verdict"] for _, r in vt.iterrows()},
}
save_results("05_steering", params=P, headline=headline,
             provenance={"models": [s.name for s in settings],
                         "data": f"counterfactual testbed ({size}) held-out scenes; SocialCounterfactuals race x gender captions as personas"},
             tables={"table1": t1, "table2": t2, "table3": t3, "mentions_by_group": bg,
                     "loss_analysis": loss_table, "loss_cosines": loss_cos, "verdicts": vt, "directions": dirs})
