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
# # RES-FAIR: the post-hoc residual projection against LoRA, DPO+KL and temperature scaling
#
# ## Overview
#
# Chapters 01-03 found the fairness paradox, the erosion of fairness in the last layers and
# the conflicting residuals, and fitted biased and fair residual directions. RES-FAIR
# (Lan et al., 2025, abstract; appendix Figure 2 and C.1) edits the hidden state at the last
# tenth of the layers without training,
# $v' = v - \lambda_1 P_\text{bias} v$, $v_\text{new} = v' + \lambda_2 P_\text{fair} v'$,
# $\lambda_1 = \lambda_2 = 0.2$, with directions fitted on one dataset and applied to another.
# The paper reports that it answers more fairly than LoRA and DPO + KL fine-tuning (appendix
# Table 1), that its confidence KL is at or below temperature scaling's (Table 2), and that
# general ability (Table 3) and answers to questions about documented group differences
# (Tables 4-5) are kept.
#
# The chapter compares like with like: **one set of fitting rows** per split (the directions
# are fitted on the rows the baselines train on); **baselines trained until a stated rule
# holds**, loaded from shipped adapters; **one evaluation pass** in which every method,
# the original included, answers the same rows under one answer limit; and, beside the
# paper's fair proportion, the **skew among the answers that name a group**, since a push
# toward "both" raises the first without lowering the second. Then confidence (Table 2)
# under two readings of the KL, the lambdas, retention (Tables 3-5), the planted truth,
# the departures from the paper and the verdicts.
#
# ## Prerequisites and time to run
#
# Chapter 01 (the task and its cached runs), chapter 03 (the rule that fits the directions)
# and, for `TESTBED=True`, the testbed (chapter 00). The baselines are built by `make models`
# (`python -m fairvlm.resfair_baselines build-artifacts`) and shipped under
# `data/artifacts/04_resfair/`; the chapter verifies and loads them and trains only when a
# build key no longer matches (another world, code or cache), saying why. Time: when every
# method generated up to 32 tokens for 160 rows of each of three splits, the embedded
# default took 45 minutes of wall time (32 CPU-minutes, 2026-12-07, two shared cores at
# load 5-9). Reading the answers from one forward pass with the prompts' shared prefix
# computed once, loading each model once, and generating only where text is the measure
# cut it to the time in `benchmarks/TIMINGS.md`; `smoke` is designed for about a minute.
# This execution's time is printed in the summary.
#
# ## Parameters
#
# `LAMBDA1`, `LAMBDA2`: RES-FAIR's weights (paper 0.2, 0.2). `MAX_NEW_TOKENS`: the answer
# limit wherever text is generated (chapter 01 used 32; generation stops earlier once an
# answer is complete). `ANSWERS`: `"logits"` reads each answer from the option logits of one
# forward pass, `"generate"` from a generated answer (see the evaluation pass).
# `AGREE_ROWS`: rows per split answered both ways to measure their agreement.
# `FLUENCY_ROWS`: generated answers per setting of the fluency check. `EVAL_PROMPTS`: paraphrases per item in the evaluation. `MAX_EVAL_ROWS`: evaluation rows per split, spread over its scenarios so
# each keeps rows (`None`: all; every method answers the same rows, so comparisons stay
# paired; the intervals below are clustered by scenario). `ABLATION_ROWS`: rows per
# setting of the lambda grid. `BOTH_WAYS`: fit and evaluate every split both ways (`None`:
# on the paper profile only). The baselines' schedule is `fairvlm.resfair_baselines.SETTINGS`.

# %% tags=["parameters"]
PROFILE = "embedded"
SEED = 0
DTYPE = "bfloat16"
TESTBED = True
LAMBDA1 = 0.2
LAMBDA2 = 0.2
EVAL_PROMPTS = 2
ABLATION_ROWS = 8
BOTH_WAYS = None
MAX_NEW_TOKENS = 32
MAX_EVAL_ROWS = 160
ANSWERS = "logits"
AGREE_ROWS = 8
FLUENCY_ROWS = 4

# %%
from fairvlm.params import check_choice, check_params, check_range

if BOTH_WAYS is None:
    BOTH_WAYS = PROFILE == "paper"
P = check_params(PROFILE=PROFILE, SEED=SEED, DTYPE=DTYPE, TESTBED=TESTBED, LAMBDA1=LAMBDA1, LAMBDA2=LAMBDA2,
                 EVAL_PROMPTS=EVAL_PROMPTS, ABLATION_ROWS=ABLATION_ROWS, BOTH_WAYS=BOTH_WAYS,
                 MAX_NEW_TOKENS=MAX_NEW_TOKENS, MAX_EVAL_ROWS=MAX_EVAL_ROWS, ANSWERS=ANSWERS, AGREE_ROWS=AGREE_ROWS,
                 FLUENCY_ROWS=FLUENCY_ROWS)
_ = check_choice("DTYPE", DTYPE, ("bfloat16", "float32", "auto")), check_choice("TESTBED", TESTBED, (True, False))
_ = check_choice("BOTH_WAYS", BOTH_WAYS, (True, False)), check_range("LAMBDA1", LAMBDA1, 0.0, 1.0)
_ = check_range("LAMBDA2", LAMBDA2, 0.0, 1.0), check_range("EVAL_PROMPTS", EVAL_PROMPTS, 1, 4, kind=int)
_ = check_range("ABLATION_ROWS", ABLATION_ROWS, 1, 100000, kind=int)
_ = check_range("MAX_NEW_TOKENS", MAX_NEW_TOKENS, 1, 64, kind=int), check_choice("ANSWERS", ANSWERS, ("logits", "generate"))
_ = check_range("AGREE_ROWS", AGREE_ROWS, 0, 10**6, kind=int), check_range("FLUENCY_ROWS", FLUENCY_ROWS, 1, 10**6, kind=int)
if MAX_EVAL_ROWS is not None:
    _ = check_range("MAX_EVAL_ROWS", MAX_EVAL_ROWS, 1, 10**7, kind=int)

GRID = (0.0, 0.2, 0.4)
N_SOCIAL = N_GENERAL = None
if PROFILE == "smoke":   # CI: every step, a handful of rows
    EVAL_PROMPTS, ABLATION_ROWS, GRID, N_SOCIAL, N_GENERAL, MAX_EVAL_ROWS = 1, 2, (0.0, 0.2), 4, 4, 8
    AGREE_ROWS, FLUENCY_ROWS = min(AGREE_ROWS, 2), min(FLUENCY_ROWS, 2)

# %% tags=["hide-input"]
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from IPython.display import Markdown, display
from myst_nb import glue

import fairvlm
from fairvlm import confidence, mcq, models, resfair, utility
from fairvlm import resfair_baselines as RB
from fairvlm import resfair_report as RR
from fairvlm import resfair_scoring as RS
from fairvlm.plotting import savefig, set_theme
from fairvlm.results import save_results
from fairvlm.verdicts import Claim, judge, min_detectable_effect, tally, verdict_table

fairvlm.seed_everything(SEED)
set_theme()
SLUG = "04_resfair"
T0 = time.time()
METHODS = ("original", "w/ LoRA", "w/ DPO+KL", "w/ post-hoc")
EVAL_DTYPE = None if DTYPE == "auto" else getattr(torch, DTYPE)
SETTINGS = RB.SETTINGS.get(PROFILE, RB.TrainSettings())

# %% [markdown]
# ## Fitting rows and splits
#
# A model with two datasets (SmolLM2: PAIRS and SocialCounterfactuals text items) is fitted
# on one and evaluated on the other; the testbed model is fitted on half of its scenarios and
# evaluated on the other half (`fairvlm.resfair.fit_eval_splits` refuses a split whose halves
# share a scenario or an item). From the fitting half, `fairvlm.resfair_baselines.select_rows`
# draws the training rows and, from other scenarios, a few validation rows. The directions
# are fitted by chapter 03's rule (`fairvlm.lens.fit_directions`, the last tenth of the
# layers) on the training rows, and the baselines are trained on the same rows.

# %%
splits = RB.chapter_splits(PROFILE, dtype=DTYPE, testbed=TESTBED, both_ways=BOTH_WAYS, settings=SETTINGS,
                           seed=SEED, eval_prompts=EVAL_PROMPTS, max_eval_rows=MAX_EVAL_ROWS)
split_table = pd.DataFrame([{
    "model": sp["model"], "fit on": sp["fit"], "evaluate on": sp["eval"],
    "training rows": len(sp["train_rows"]), "validation rows": len(sp["val_rows"]),
    "rows the directions were fitted on": sp["dirs_rows"],
    "direction layers": f"{sp['dirs'].layers[0]}..{sp['dirs'].layers[-1]}",
    "evaluation rows": len(sp["eval_rows"]),
    "evaluation scenarios": len({r.item.scenario for r in sp["eval_rows"]})} for sp in splits])
display(split_table.style.hide(axis="index"))

# %% [markdown]
# ## The baselines: trained until a stated rule holds
#
# Both baselines train a LoRA adapter on the language model's attention and MLP projections
# (`fairvlm.finetune`; the vision tower is left alone). **LoRA** is supervised fine-tuning
# toward a fair answer ("Both"); **DPO + KL** prefers a fair answer to a group answer with
# $\beta = 0.1$ and adds 0.5 times the fair-target KL (appendix B.2, eq. 3). The validation
# rows are scored before the first step and after every epoch. The rule
# (`fairvlm.resfair_baselines.plateau_decision`): stop when the validation loss improved by
# less than 2% over the previous epoch; DPO + KL counts as converged only if its validation
# reward margin has also risen by at least 0.1. A baseline that reaches its last epoch first
# is *not converged*, unless its curve is flat there in absolute terms (validation loss moved by
# less than {glue:text}`ceiling_min_abs` nats in the last epoch, `RB.convergence`: near zero a
# geometrically shrinking loss never improves by less than 2% of itself); every comparison
# with a baseline that is not converged is "not testable here".

# %%
trained, records, fp32 = {}, [], {}
for k, sp in enumerate(splits):
    for method in RB.METHODS:
        state, rec, source = RB.get(sp, method, PROFILE, SETTINGS, seed=SEED)
        if sp["model"] not in fp32:   # each base model is loaded once and copied under each adapter
            fp32[sp["model"]] = models.load(sp["model"], **({"size": sp["size"]} if sp["size"] else {}),
                                            dtype=torch.float32)
        trained[(k, method)] = RB.apply_adapter(sp, state, SETTINGS, EVAL_DTYPE, base=fp32[sp["model"]])
        conv, how = RB.convergence(rec, SETTINGS)
        records.append({**rec, "converged": conv, "stopped": how, "split": k, "source": source})
curves = pd.DataFrame([{"split": f"{r['model']}: fit {r['fit']}", "method": r["method"], **h}
                       for r in records for h in r["history"]])
converged = pd.DataFrame([{"model": r["model"], "fit on": r["fit"], "method": r["method"],
                           "converged": r["converged"], "how": r["stopped"], "epochs": max([h.get("epoch", 0) for h in r["history"]] or [0]),
                           "validation loss": " -> ".join(f"{x:.3f}" for x in r["val_loss"]),
                           "validation margin": " -> ".join(f"{x:.2f}" for x in (r["val_margin"] or [])),
                           "trained": r["source"], "train s": r["train_s"]} for r in records])
display(converged.style.hide(axis="index"))
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
for ax, method in zip(axes, RB.METHODS):
    c = curves[curves["method"] == method] if not curves.empty else curves
    for j, (name, g) in enumerate(c.groupby("split", sort=False)):
        col = f"C{j}"
        tr, ev = g.dropna(subset=["loss"]) if "loss" in g else g.iloc[:0], g.dropna(subset=["eval_loss"])
        ax.plot(tr["step"], tr["loss"], color=col, alpha=0.5, label=f"{name} (training)")
        ax.plot(ev["step"], ev["eval_loss"], "o--", color=col, label=f"{name} (validation)")
    ax.set_title(f"{method}: loss per step", fontsize=9)
    ax.set_xlabel("optimizer step")
    ax.legend(fontsize=6)
savefig(fig, f"{SLUG}_loss_curves")
CONVERGED = {(r["split"], r["method"]): r["converged"] for r in records}
del fp32
glue("ceiling_min_abs", RB.CEILING_MIN_ABS, display=False)

# %% [markdown]
# ## One evaluation pass
#
# Every evaluation row is asked under each method in the same loop and read the same way:
# the original model, the original with the RES-FAIR update at every position
# (`fairvlm.resfair.posthoc`, the split's directions), and the two trained models. Each base
# model is loaded once and serves all three sections below.
#
# **How an answer is read.** The paper's fair proportion is a choice among the options the
# question lists, and its system prompt is tightened until every answer *is* an option word
# (appendix A.2). With `ANSWERS = "logits"` (this run: {glue:text}`answers_mode`) the
# answer is read from one forward pass: the option owning the most probable option token at
# the answer position (`fairvlm.resfair_scoring.option_scores`), i.e. greedy decoding held to
# the options' words. That is the model's greedy answer wherever the answer starts with an
# option word, and the answer the paper's format would have forced where the model opens
# with other words; it never yields an invalid answer. The prompts' shared prefix (chat
# template and system prompt) is run once per model and method and its key/value cache
# reused; under the post-hoc update the prefix is computed with the update on, which is exact
# because the update acts position by position. `ANSWERS = "generate"` answers with up to
# `MAX_NEW_TOKENS` generated tokens as before (45 minutes at this profile). The agreement
# of the two readings on a sample is measured below the table.
#
# Per cell: the paper's **fair proportion** (answers "both"); beside it the share naming a
# group, the share that is no answer (invalid), and the **group skew**: among the answers
# that name a group, how one-sided they are per scenario, minus what naming either group at
# random would give (`fairvlm.resfair_report`; 0: no lean beyond chance).

# %%
BASES = {}


def _base(sp):
    """The unedited model of a split, in the evaluation dtype, loaded once per model."""
    if sp["model"] not in BASES:
        BASES[sp["model"]] = models.load(sp["model"], **({"size": sp["size"]} if sp["size"] else {}),
                                         **({"dtype": EVAL_DTYPE} if EVAL_DTYPE is not None else {}))
    return BASES[sp["model"]]


def answer(lm, rows, images, batch, mode=None):
    """The rows' answers under the active method: from option logits or generated (`ANSWERS`)."""
    if (mode or ANSWERS) == "logits":
        return RS.option_scores(lm, rows, images=images, batch_size=batch)
    return mcq.evaluate(lm, rows, images=images, max_new_tokens=MAX_NEW_TOKENS, batch_size=batch,
                        progress=False).assign(answer_mode="generate")


def each_method(k, sp):
    """Per method of the chapter: its name, the model that answers, and the context it answers
    in (the post-hoc update is a hook on the unedited model, live only inside the context)."""
    base = _base(sp)
    for method in METHODS:
        lm = trained[(k, method)] if method in RB.METHODS else base
        ctx = resfair.posthoc(base, sp["dirs"], lambda1=LAMBDA1, lambda2=LAMBDA2) if method == "w/ post-hoc" \
            else torch.no_grad()
        yield method, lm, ctx


tables = []
for k, sp in enumerate(splits):
    for method, lm, ctx in each_method(k, sp):
        with ctx:
            t = answer(lm, sp["eval_rows"], sp["images"], sp["batch"])
        tables.append(t.assign(method=method, split=k))
rows_all = pd.concat(tables, ignore_index=True)
lp = rows_all[["lp_a", "lp_b", "lp_fair"]].to_numpy(float)
rows_all["kl_fair_target"], rows_all["kl_skew"] = confidence.fair_target_kl(lp), confidence.skew(lp)
cells = RR.cell_table(rows_all)
cells["method"] = pd.Categorical(cells["method"], METHODS, ordered=True)
cells = cells.sort_values(["model", "dataset", "attribute", "method"]).reset_index(drop=True)
show = cells.assign(cell=[f"{f:.2f} / {g:.2f} / {i:.2f} / {s:+.2f}" for f, g, i, s in
                          zip(cells.fair, cells.group, cells.invalid, cells.excess_skew)])
display(Markdown("**Table 1 (this book).** Per cell: fair proportion (answers 'both') / share naming a "
                 "group / invalid / group skew beyond chance. Testbed rows describe the synthetic testbed."))
display(show.pivot_table(index=["model", "method"], columns=["dataset", "attribute"], values="cell",
                         aggfunc="first", observed=True))
glue("max_new_tokens", MAX_NEW_TOKENS, display=False)
glue("answers_mode", "answers from option logits" if ANSWERS == "logits" else
     f"generated answers, up to {MAX_NEW_TOKENS} new tokens", display=False)

# %% [markdown]
# **Do the two readings agree?** On `AGREE_ROWS` rows per split (spread over scenarios) the
# original model also generates its answer (up to `MAX_NEW_TOKENS` tokens) and the parsed
# answer is set beside the reading the table uses: {glue:text}`agreement_text` (per split
# below, with the share of generated answers that name no option). A generated answer
# that names no option cannot agree; those rows are where the paper's format and this small
# model part ways. This is why Table 1's numbers differ from the chapter's earlier,
# generated run (whose invalid answers counted against every method): the fair proportions
# above are the choice among the three options on every row. The price is large for
# SmolLM2: at the answer position its option mass sits on "both" on almost every row, so
# the group answers that its generated sentences name on some rows (and that the de-biasing
# rows need) nearly vanish from Table 1, and those rows become "not testable here". A
# sample of a few rows per split is too small to show this; `ANSWERS = "generate"` keeps
# the generated reading, at the old cost. The testbed model answers with an option word,
# so there the two readings coincide wherever its answer is valid.

# %%
agreement = []
for k, sp in enumerate(splits):
    if not AGREE_ROWS:
        break
    sample = RB.spread_rows(sp["eval_rows"], AGREE_ROWS)
    gen = answer(_base(sp), sample, sp["images"], sp["batch"], mode="generate")
    used = rows_all[(rows_all["split"] == k) & (rows_all["method"] == "original")]
    same = used.set_index("row_id").loc[gen["row_id"]]
    agreement.append({"model": sp["model"], "dataset": sp["dataset"], **RS.answer_agreement(gen, used),
                      "invalid (generated)": float((gen["parsed"] == "invalid").mean()),
                      "fair (generated)": float((gen["parsed"] == "fair").mean()),
                      "fair (table's reading)": float((same["parsed"] == "fair").mean())})
agreement = pd.DataFrame(agreement)
if len(agreement):
    display(agreement.style.format(precision=2).hide(axis="index"))
n_ag = int(agreement["n"].sum()) if len(agreement) else 0
n_same = int(round((agreement["agree"] * agreement["n"]).sum())) if len(agreement) else 0
n_val = int(agreement["n_valid"].sum()) if len(agreement) else 0
n_same_val = int(round((agreement["agree_valid"].fillna(0) * agreement["n_valid"]).sum())) if len(agreement) else 0
fair_g = float((agreement["fair (generated)"] * agreement["n"]).sum() / max(n_ag, 1)) if n_ag else np.nan
fair_l = float((agreement["fair (table's reading)"] * agreement["n"]).sum() / max(n_ag, 1)) if n_ag else np.nan
glue("agreement_text", f"the two name the same option on {n_same} of {n_ag} sampled rows, {n_same_val} of the "
     f"{n_val} whose generated answer names an option; on these rows the original answers 'both' on "
     f"{fair_g:.2f} of them when it generates and {fair_l:.2f} in the table's reading" if n_ag
     else "not measured in this run", display=False)

# %% [markdown]
# ## Confidence (Table 2): two readings of the paper's KL
#
# The paper's Table 2 reports a "KL divergence (confidence level)" and the best temperature
# of a sweep over $t = 0.1 \dots 2.0$. `fairvlm.confidence` implements two readings on the
# three option probabilities at the first answer position: the **fair-target KL**
# ($-\ln p_\text{fair}$ of the three-option distribution, the book's reading of the paper)
# and the **skew** (KL of the two group options, renormalised, from uniform; chapters
# 01-03). Temperature scaling (TS) divides the option log-probabilities by $t$ on the
# original rows; each reading picks its own best $t$. Both readings describe the *first
# token's* option probabilities, so they say something about the answers only where the top
# option there is the option the answer names; where it is not on most rows of a column,
# that column's Table 2 verdicts are "not testable here". With answers read from the option
# logits the answer comes from that same distribution, so the check passes by construction
# (the top option by summed mass and the top option token can still differ); the agreement
# sample above says how far that reading is from the freely generated answer.

# %%
orig_rows = rows_all[rows_all["method"] == "original"]
best_t, ts_rows = [], []
for (name, dataset), g in orig_rows.groupby(["model", "dataset"], sort=False):
    sw = confidence.temperature_sweep(g, measures=("fair_target", "skew"))
    tt = {m: confidence.best_temperature(sw, m)[0] for m in ("fair_target", "skew")}
    best_t.append({"model": name, "dataset": dataset, "best t (fair-target)": tt["fair_target"],
                   "best t (skew)": tt["skew"],
                   "top option = parsed answer": RR.top_option_agreement(g)})
    glp = g[["lp_a", "lp_b", "lp_fair"]].to_numpy(float)
    ts_rows.append(g.assign(method="TS (best t)", kl_fair_target=confidence.fair_target_kl(glp, tt["fair_target"]),
                            kl_skew=confidence.skew(glp, tt["skew"])))
best_t = pd.DataFrame(best_t)
display(best_t.style.format(precision=3).hide(axis="index"))
kl_frame = pd.concat([rows_all, *ts_rows], ignore_index=True)
table2 = kl_frame.groupby(["model", "method", "dataset", "attribute"], sort=False)[["kl_fair_target", "kl_skew"]]\
    .mean().unstack(["dataset", "attribute"])
display(Markdown("**Table 2 (this book).** Mean fair-target KL and skew per cell; TS at each reading's best t on "
                 "the original rows."))
display(table2.style.format(precision=3))

# %% [markdown]
# ## The lambdas (appendix C.5, Figure 7)
#
# For each model, its first split's directions on `ABLATION_ROWS` evaluation rows and a
# grid of $\lambda_1, \lambda_2$: fair proportion and fair-target KL (read as in the
# evaluation pass). Fluency needs generated text, so it is measured where the paper says it
# breaks (small $\lambda_1$, appendix C.5): along $\lambda_1$ at the chapter's
# $\lambda_2$, on `FLUENCY_ROWS` generated answers per setting: the share of answers that
# name an option (valid) and the *unedited* model's perplexity of the edited answer given
# its prompt (lower is more fluent). The other cells of those two panels are blank.

# %%
abl, first_split = [], {}
for k, sp in enumerate(splits):
    first_split.setdefault(sp["model"], k)
for name, k in first_split.items():
    sp = splits[k]
    rows_ab = sp["eval_rows"][:: max(1, len(sp["eval_rows"]) // ABLATION_ROWS)][:ABLATION_ROWS]
    lm, flu_rows = _base(sp), rows_ab[:FLUENCY_ROWS]
    l2_flu = min(GRID, key=lambda v: abs(v - LAMBDA2))
    for l1 in GRID:
        for l2 in GRID:
            with resfair.posthoc(lm, sp["dirs"], lambda1=l1, lambda2=l2):
                t = answer(lm, rows_ab, sp["images"], sp["batch"])
                gen = answer(lm, flu_rows, sp["images"], sp["batch"], mode="generate") if l2 == l2_flu else None
            flu = {"valid": np.nan, "perplexity": np.nan}
            if gen is not None:
                ppl = resfair.answer_perplexity(lm, flu_rows, gen["answer"].tolist(), images=sp["images"])
                flu = {"valid": float((gen.parsed != "invalid").mean()), "perplexity": float(np.nanmedian(ppl))}
            abl.append({"model": name, "lambda1": l1, "lambda2": l2, "fair": float((t.parsed == "fair").mean()),
                        "kl": float(confidence.fair_target_kl(t[["lp_a", "lp_b", "lp_fair"]].to_numpy(float)).mean()),
                        **flu})
abl = pd.DataFrame(abl)
fig, axes = plt.subplots(len(first_split), 4, figsize=(14, 3.0 * len(first_split)), squeeze=False)
for i, name in enumerate(first_split):
    a = abl[abl.model == name]
    for j, (col, cmap) in enumerate((("fair", "viridis"), ("kl", "magma_r"), ("valid", "viridis"),
                                     ("perplexity", "magma_r"))):
        sns.heatmap(a.pivot(index="lambda1", columns="lambda2", values=col), annot=True, fmt=".2f",
                    cmap=cmap, ax=axes[i, j], cbar=False, annot_kws={"fontsize": 6})
        axes[i, j].set_title(f"{name}: {col}", fontsize=8)
savefig(fig, f"{SLUG}_lambda_grid")
l1_ref = min(GRID, key=lambda v: abs(v - LAMBDA1))
lam2 = abl[abl["lambda1"] == l1_ref].sort_values("lambda2").groupby("model", sort=False)
lam2_text = "; ".join(f"{m}: fair proportion {g['fair'].iloc[0]:.2f} -> {g['fair'].iloc[-1]:.2f}, fair-target KL "
                      f"{g['kl'].iloc[0]:.2f} -> {g['kl'].iloc[-1]:.2f}" for m, g in lam2)
glue("lambda2_effect", f"raising lambda2 from {GRID[0]:g} to {GRID[-1]:g} at lambda1 = {l1_ref:g} ({len(rows_ab)} "
     f"rows per setting) moves {lam2_text}", display=False)

# %% [markdown]
# What $\lambda_2$ does on these runs: {glue:text}`lambda2_effect`. The paper sets both
# weights to 0.2 and does not isolate $\lambda_2$; the book reads its update as amplifying
# the fair component of the already-projected state (see the departures below).

# %% [markdown]
# ## Retention: general ability (Table 3) and social-difference questions (Tables 4-5)
#
# Before and after every method, on each model's first split, with the same models as the
# evaluation pass. SmolLM2: the 40 general-knowledge three-option questions of
# `fairvlm.utility.GENERAL_QUESTIONS` (chance 1/3), answered as the option whose first token
# is most probable (`fairvlm.resfair_scoring.score_choices`; two wrong options were
# reworded so that no two options of a question share a first token). testbed-llava: "What
# is this person's job or activity?" on held-out testbed scenes of the evaluation
# scenarios, four group variants each; an open question, so its answers are generated. The
# social-difference questions (`data/social_differences.yaml`) are asked as the fairness
# task's three options and read like the evaluation pass, so "both" is wrong on every one of
# them. The size of each check and the smallest change it can detect are stated below the
# tables: {glue:text}`retention_power`. A check on a model that is at chance before any edit
# (one-sided binomial test against chance) is **uninformative**: there is no ability to lose.
# "Unchanged" is an equivalence test (the 90% interval of the change inside
# $\pm$ `RET_TOL`), tested only where the post-hoc edit changed the answers at all.

# %%
RET_TOL, SOCIAL_TOL = 0.05, 0.10
qs = utility.load_social_differences()
if N_SOCIAL:
    qs = qs.groupby("attribute", sort=False).head(N_SOCIAL // 2).reset_index(drop=True)
s_rows = utility.social_rows(qs)
g_questions = utility.GENERAL_QUESTIONS[:N_GENERAL] if N_GENERAL else utility.GENERAL_QUESTIONS
g_prompts, g_options = utility.general_rows(g_questions)
util, social = [], []
for name, k in first_split.items():
    sp = splits[k]
    for method, lm, ctx in each_method(k, sp):
        with ctx:
            if lm.kind == "vlm":
                vqa = utility.testbed_vqa(lm, sorted(set(sp["eval_col"].table["scenario"]))[:N_GENERAL])
                scores, task, chance = vqa["correct"].to_numpy(), "testbed VQA: job or activity named", 0.05
            elif ANSWERS == "logits":
                picks = RS.score_choices(lm, g_prompts, g_options)
                scores = np.array([float(o[i] == q[1]) for i, o, q in zip(picks, g_options, g_questions)])
                task, chance = f"general knowledge ({len(g_questions)} questions)", 1 / 3
            else:
                answers = utility.generate(lm, g_prompts, max_new_tokens=MAX_NEW_TOKENS)
                scores = utility.score_general(answers, g_questions)
                task, chance = f"general knowledge ({len(g_questions)} questions)", 1 / 3
            st = answer(lm, s_rows, None, sp["batch"])
        util.append({"model": name, "task": task, "method": method, "accuracy": float(scores.mean()),
                     "n": len(scores), "chance": chance, "_scores": scores})
        social.append(utility.score_social(st, qs).assign(model=name, method=method))
util, social = pd.DataFrame(util), pd.concat(social, ignore_index=True)
display(Markdown("**Table 3 (this book).** Accuracy before and after each method."))
display(util.pivot(index=["model", "task", "n"], columns="method", values="accuracy")[list(METHODS)]
        .style.format(precision=3))
t45 = social.groupby(["model", "attribute", "method"], observed=True).agg(
    correct=("correct", "sum"), both=("said", lambda s: int((s == "both").sum())), n=("correct", "size")).reset_index()
display(Markdown("**Tables 4-5 (this book).** Correct social-difference answers; in brackets, answers 'both'."))
display(t45.assign(cell=[f"{c}/{n} ({b})" for c, n, b in zip(t45.correct, t45.n, t45.both)])
        .pivot(index=["model", "attribute"], columns="method", values="cell")[list(METHODS)])

# %% [markdown]
# ## Departures from the paper
#
# | what | the paper | this book | why |
# |---|---|---|---|
# | models, data | LLaVA-1.5/1.6, Qwen2(.5)-VL, Llama-3.2-Vision on PAIRS and SocialCounterfactuals | SmolLM2-135M (text items) and the synthetic testbed-llava | no larger model ships offline; `paper` profile runs the paper's |
# | which residual | residual streams $\delta_1$, $\delta_2$ (appendix B.1) | what attention and MLP write (`attn_out`, `mlp_out`) | chapter 03's reading; the stream reading is stored beside it (`Directions.streams`) but not run here |
# | where the update acts | the hidden state | `resid_post` of each direction layer, at every position and decoding step | the paper does not say which positions |
# | "the last tenth" of the layers | unspecified count | `fairvlm.lens.last_tenth`: 3 of SmolLM2's 30 layers | a tenth, rounded |
# | the update | $v_\text{new} = \lambda_2 P v'$ (Figure 2) | $v' + \lambda_2 P_\text{fair} v'$ | the printed form collapses the state onto one line; the abstract says "amplifying" |
# | fitting rows | every row of the other dataset | the baselines' training rows; where they are too few for chapter 03's rule to split every group into thirds, every fitting row (the split table says which) | one set of rows for all three methods where the rule allows |
# | baselines' schedule | lr 5e-5, batch 16, 10 epochs, LoRA rank unstated | 32 rows, lr 1e-3, batch 16, at most 10 epochs with a validation stopping rule, rank 2 (smoke: 8 rows, lr 5e-4, 1 epoch, rank 1) | two shared CPU cores; adapters small enough to ship |
# | DPO's KL term | "the same calculation" as the evaluation's KL | the fair-target KL, $-\ln p_\text{fair}$ | the book's reading of Table 2; it is supervised training toward "both" |
# | how an answer is read | generated; the system prompt makes it the option word | the option owning the most probable option token in one forward pass (`ANSWERS`); generated answers on a sample, for their agreement | the paper's format makes the answer that choice; generating 32 tokens for every row took 45 minutes |
# | answer limit | unstated | one `MAX_NEW_TOKENS` for every method wherever text is generated | like with like |
# | fairness measure | fair proportion | fair proportion *and* group skew beyond chance | a push toward "both" raises the first without lowering the second |
# | retention data | VQA 2.0; 20 + 30 social-difference questions | 40 general-knowledge questions (first-token choice) / testbed VQA (generated); the book's 50 questions | nothing else ships offline |

# %% [markdown]
# ## Paper vs this book
#
# Every claim goes through `fairvlm.verdicts.judge`: the effect (post-hoc), a control
# measured on the same rows in the same run (the original, a baseline or TS), and the
# difference with a paired BCa bootstrap interval resampled over **scenarios** (the rows of
# one scenario share its label and images). The fair-proportion rows test the paper's measure
# (asserts "other": it also rewards abstaining); the **de-biasing** rows test the group skew
# beyond chance (lower; a scenario where a method names no group counts as unchanged) and
# are testable only where the original shows a skew beyond chance. Comparisons with a
# baseline that did not converge are "not testable here". Smallest effect counted: 0.02.
# Provenance: every effect is measured in this run on the models named; testbed rows describe
# the synthetic world; the paper column quotes its appendix.

# %%
claims = []
PAPER = {"original": "post-hoc above the original in every column", "w/ LoRA": "post-hoc above LoRA in every column",
         "w/ DPO+KL": "post-hoc above DPO+KL in 15 of 16 columns (one tie)"}
fair_vs_orig = {}
for k, sp in enumerate(splits):
    t_k, kl_k = rows_all[rows_all["split"] == k], kl_frame[kl_frame["split"] == k]
    for col in (*sorted(set(t_k["attribute"])), "pooled"):
        sub = t_k if col == "pooled" else t_k[t_k["attribute"] == col]
        cell = f"{sp['model']} | {sp['dataset']} | {col}"
        e, _, _ = RR.skew_units(sub, "original", "original")
        shown = judge(Claim("the original names one group beyond chance", "bias", "greater",
                            min_effect=RR.PROPORTION_MIN), e, 0.0, paired=False, seed=SEED)
        claims.append({"cell": cell, "paper": "a skew to remove", "verdict": shown})
        for other in ("original", "w/ LoRA", "w/ DPO+KL"):
            ok = other == "original" or CONVERGED[(k, other)]
            why = "" if ok else f"{other} did not converge by its stated rule"
            o = other.replace("w/ ", "")
            v = RR.compare(sub, "w/ post-hoc", other, measure="fair", testable=ok, why=why, seed=SEED,
                           text=f"post-hoc answers 'both' more often than {o} (Table 1's measure)")
            claims.append({"cell": cell, "paper": PAPER[other], "verdict": v})
            if other == "original" and col == "pooled":
                fair_vs_orig[k] = v
            why_s = why or ("" if shown.verdict == "reproduced" else "the original shows no skew beyond chance here")
            v = RR.compare(sub, "w/ post-hoc", other, measure="skew", testable=ok and not why_s, why=why_s, seed=SEED,
                           text=f"post-hoc names the groups more evenly than {o} (de-biasing)")
            claims.append({"cell": cell, "paper": PAPER[other], "verdict": v})
        ksub = kl_k if col == "pooled" else kl_k[kl_k["attribute"] == col]
        agree = RR.top_option_agreement(sub[sub["method"] == "original"])
        why_t = "" if agree >= 0.5 else (f"the top option at the first answer position is the parsed answer on only "
                                         f"{agree:.0%} of the original's rows")
        for reading in ("fair_target", "skew"):
            text = f"post-hoc {reading.replace('_', '-')} KL below temperature scaling's (Table 2)"
            v = RR.compare(ksub, "w/ post-hoc", "TS (best t)", measure=f"kl_{reading}", testable=not why_t, why=why_t,
                           seed=SEED, text=text)
            claims.append({"cell": cell, "paper": "post-hoc below TS in 16 of 16 cells", "verdict": v})
retention_n, retention_mde = {}, {}
for name, k in first_split.items():
    u = util[util.model == name].set_index("method")
    before, after = u.loc["original", "_scores"], u.loc["w/ post-hoc", "_scores"]
    flat = RR.at_chance(before, u.loc["original", "chance"])
    v = judge(Claim("general ability unchanged after post-hoc (Table 3)", "no-change", "within", tol=RET_TOL),
              after, before, binary=True, testable=not flat, after=fair_vs_orig[k], seed=SEED,
              why="uninformative: the unedited model is at chance" if flat else "")
    claims.append({"cell": f"{name} | {u['task'].iloc[0]}", "paper": "VQA drops 0.06-0.29 points", "verdict": v})
    retention_n[name] = int(len(before))
    mde = min_detectable_effect(v.difference_interval, level=0.90)
    retention_mde[name] = round(mde, 4) if np.isfinite(mde) else None
    for attribute, g in social[social.model == name].groupby("attribute", sort=False):
        b = g[g.method == "original"]["correct"].to_numpy(float)
        a = g[g.method == "w/ post-hoc"]["correct"].to_numpy(float)
        flat = RR.at_chance(b, 1 / 3)
        v = judge(Claim("social-difference answers unchanged after post-hoc (Tables 4-5)", "no-change", "within",
                        tol=SOCIAL_TOL), a, b, binary=True, testable=not flat, after=fair_vs_orig[k], seed=SEED,
                  why="uninformative: the unedited model is not above chance" if flat else "")
        claims.append({"cell": f"{name} | {attribute}: {len(b)} questions", "paper": "at most 1 of 20 / 30 changes",
                       "verdict": v})
glue("retention_power", "; ".join(
    f"{m}: n = {n}, smallest change the paired 90% interval would detect with 80% power "
    f"{f'{retention_mde[m]:.3f}' if retention_mde[m] else 'not estimable (no answer changed)'}, "
    f"tolerance {RET_TOL}" for m, n in retention_n.items()), display=False)

# %% [markdown]
# **The planted truth (testbed).** The testbed's bias is planted
# (`data/testbed_bias_spec.yaml`): a method that removes it should move the scenarios
# planted to lean on an attribute more than the balanced ones. Units: (attribute, scenario)
# of the evaluation half; effect: the change of the fair proportion on planted units; control:
# the same on balanced units (unpaired, resampled separately).

# %%
for k, sp in enumerate(splits):
    if sp["dataset"] != "testbed":
        continue
    from fairvlm.testbed import world_spec

    share = world_spec().share_table()
    t_k = rows_all[rows_all["split"] == k]
    for method in ("w/ post-hoc", "w/ LoRA", "w/ DPO+KL"):
        d = RR.planted_units(t_k, method, "original", share)
        pl, ct = d.loc[d.planted, "d_fair"].to_numpy(), d.loc[~d.planted, "d_fair"].to_numpy()
        ok = len(pl) >= 2 and len(ct) >= 2 and (method == "w/ post-hoc" or CONVERGED[(k, method)])
        few = min(len(pl), len(ct)) < 2
        why = "" if ok else ("fewer than two planted or balanced units in the evaluation half" if few
                             else f"{method} did not converge by its stated rule")
        v = judge(Claim(f"{method.replace('w/ ', '')} moves planted scenarios toward 'both' more than balanced ones",
                        "debias", "greater", min_effect=RR.PROPORTION_MIN), pl if len(pl) else [0.0],
                  ct if len(ct) else 0.0, paired=False, testable=ok, why=why, seed=SEED)
        claims.append({"cell": f"{sp['model']} | {len(pl)} planted, {len(ct)} balanced units",
                       "paper": "(the book's check)", "verdict": v})
verdicts = verdict_table(claims)
pooled = verdicts["cell"].str.endswith("pooled") | ~verdicts["cell"].str.contains(r"\| (?:gender|race)$")
display(Markdown("**Summary**: pooled over attributes, retention and the planted truth."))
display(verdicts[pooled].drop(columns=["rule", "bias_claim"]).style.format(precision=3).hide(axis="index"))
display(Markdown("**Per column**, as the paper claims:"))
display(verdicts[~pooled].drop(columns=["rule", "bias_claim"]).style.format(precision=3).hide(axis="index"))

# %%
def _cells(method, col):
    s = cells[cells.method == method]
    return {f"{r.model}|{r.dataset}|{r.attribute}": round(float(getattr(r, col)), 4) for r in s.itertuples()}


def _kl(method, col):
    s = kl_frame[kl_frame.method == method].groupby(["model", "dataset", "attribute"])[col].mean()
    return {"|".join(k): round(float(v), 4) for k, v in s.items()}


headline = {
    "max_new_tokens": MAX_NEW_TOKENS, "answer_mode": ANSWERS,
    "answer_agreement": {f"{r.model}|{r.dataset}": round(float(r.agree), 4) for r in agreement.itertuples()},
    "baselines_converged": {m: {f"{r['model']}|fit {r['fit']}": bool(r["converged"]) for r in records
                                if r["method"] == m} for m in RB.METHODS},
    "retention_n": retention_n, "retention_mde": retention_mde,
    "fair_original": _cells("original", "fair"), "fair_posthoc": _cells("w/ post-hoc", "fair"),
    "fair_dpo_kl": _cells("w/ DPO+KL", "fair"), "fair_lora": _cells("w/ LoRA", "fair"),
    "group_share_original": _cells("original", "group"), "group_share_posthoc": _cells("w/ post-hoc", "group"),
    "excess_skew_original": _cells("original", "excess_skew"),
    "excess_skew_posthoc": _cells("w/ post-hoc", "excess_skew"),
    "kl_original": _kl("original", "kl_fair_target"), "kl_posthoc": _kl("w/ post-hoc", "kl_fair_target"),
    "kl_ts_best": _kl("TS (best t)", "kl_fair_target"), "skew_posthoc": _kl("w/ post-hoc", "kl_skew"),
    "skew_ts_best": _kl("TS (best t)", "kl_skew"),
    "ts_best_t": {f"{m}|{d}": float(t) for m, d, t in
                  zip(best_t.model, best_t.dataset, best_t["best t (fair-target)"])},
    "kl_measure": "fair_target and skew",
    "utility_original": {r.model: r.accuracy for r in util[util.method == "original"].itertuples()},
    "utility_posthoc": {r.model: r.accuracy for r in util[util.method == "w/ post-hoc"].itertuples()},
    "verdicts": {f"{r['claim']} | {r['cell']}": r["verdict"] for _, r in verdicts.iterrows()},
    "runtime_s": round(time.time() - T0, 1),
}
debias = verdicts["asserts"] == "debias"
glue("tally_all", tally(verdicts), display=False)
glue("tally_debias", tally(verdicts, debias), display=False)
glue("n_claims", len(verdicts), display=False)
glue("n_converged", f"{sum(r['converged'] for r in records)} of {len(records)}", display=False)
glue("runtime", f"{time.time() - T0:.0f}", display=False)

# %% [markdown]
# ## Summary and what's next
#
# Every method answered the same rows, read the same way ({glue:text}`answers_mode`); {glue:text}`n_converged` baselines met their
# stopping rule. Of the {glue:text}`n_claims` claims: {glue:text}`tally_all`; of the
# de-biasing claims alone (group skew beyond chance, and the planted truth):
# {glue:text}`tally_debias`. The tables above say which and why. These are statements about
# SmolLM2-135M and the synthetic testbed, far smaller than the paper's models; the `paper`
# profile runs the same code on them. This execution took {glue:text}`runtime` seconds on a
# shared two-core machine. Chapter 05 turns to steering directions computed from gradients.
#
# Results are in `results/04_resfair.json` (headline dicts keyed `model|dataset|attribute`)
# and the per-row tables under `results/04_resfair/`.
#
# ## References
#
# - Lan et al. (2025). RES-FAIR (RESidual Flow Adjustment for Inference Recalibration).
#   arXiv:2505.23798 (abstract; appendix B.1-B.2, C.1, C.3 Tables 1-2, C.5 Figure 7, C.6 Tables 3-5).
# - Rafailov et al. (2023). DPO. NeurIPS. Hu et al. (2022). LoRA. ICLR. Guo et al. (2017). Temperature scaling. ICML.
# - Lakens (2017). Equivalence tests. Social Psychological and Personality Science (TOST).
# - Agarwal et al. (2021). Deep RL at the edge of the statistical precipice. NeurIPS (paired, clustered bootstrap).
# - Sources of the social-difference questions: `data/social_differences.yaml`.

# %%
save_results(
    SLUG, params=P, headline=headline,
    provenance={"models": sorted(set(rows_all["model"])),
                "data": sorted({f"{d} ({'synthetic testbed' if d == 'testbed' else 'real labels'})"
                                for d in rows_all["dataset"].unique()}),
                "note": "testbed results describe the synthetic world, never a paper's number"},
    tables={"rows": rows_all.drop(columns=[c for c in ("images",) if c in rows_all]), "cells": cells,
            "table2": kl_frame.groupby(["model", "method", "dataset", "attribute"])[["kl_fair_target", "kl_skew"]]
            .mean().reset_index(), "splits": split_table, "baselines": converged, "loss_curves": curves,
            "best_t": best_t, "lambda_grid": abl, "utility": util.drop(columns=["_scores"]), "social": social,
            "verdicts": verdicts},
)
