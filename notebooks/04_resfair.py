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
# the conflicting residuals, and fitted biased and fair residual directions. RES-FAIR's
# proposal (Lan et al., 2025, abstract; appendix Figure 2 and C.1) is a training-free edit
# of the hidden state at the last tenth of the layers,
# $v' = v - \lambda_1 P_\text{bias} v$, $v_\text{new} = v' + \lambda_2 P_\text{fair} v'$,
# with $\lambda_1 = \lambda_2 = 0.2$ and directions fitted on one dataset and applied to
# the other. The paper reports that it answers more fairly than LoRA fine-tuning and a
# DPO + KL fine-tune (appendix Table 1), that its confidence KL is as low as or lower than
# temperature scaling's (Table 2), and that general ability (VQA, Table 3) and the ability
# to tell documented group differences (Tables 4 and 5) are kept.
#
# This chapter runs all four methods for real on every model of the profile:
#
# 1. **Directions and splits**: fit on one dataset, evaluate on another, never the same items.
# 2. **Training the baselines**: LoRA (peft + trl `SFTTrainer`) and DPO + KL (a trl `DPOTrainer`
#    subclass), with their loss curves.
# 3. **Fairness (Table 1)**: fair proportion per model, dataset and attribute.
# 4. **Confidence (Table 2)**: which KL the paper most plausibly measured, and temperature scaling.
# 5. **The lambda ablation (Figure 7)**: a grid of $\lambda_1, \lambda_2$ with fairness, KL,
#    valid answers and fluency, and sample answers.
# 6. **General ability (Table 3)**.
# 7. **Social-difference questions (Tables 4 and 5)**.
# 8. **The planted truth**: which testbed scenarios each method moved.
# 9. **Paper vs this book**.
#
# ## Prerequisites and time to run
#
# | chapter | why | |
# |---|---|---|
# | 01 The fairness paradox | the multiple-choice task and its cached runs | necessary |
# | 03 Residual discrepancy | the rule that fits the directions | necessary |
# | 00 The testbed | builds `testbed-llava` | necessary for `TESTBED=True` |
#
# The chapter reuses chapter 01's cached forward passes (it recomputes them when the cache
# is cold) and then evaluates, trains and evaluates again. `embedded` trains each baseline
# for `EPOCHS` epochs on `TRAIN_ROWS` rows of each fitting split (the paper trains 10
# epochs; on 2 CPU cores that would take hours, so the loss curves below show how far
# the short runs get) and evaluates the methods on `EVAL_PROMPTS` of the four paraphrases.
# `embedded` took 6.3 minutes on 2 CPU cores in a whole `make book` from an empty cache on
# 2026-12-07 (designed for 6; peak memory about 8 GB); this execution's training and total
# times are printed in the summary. `smoke` runs a few labels in 52 seconds (2026-12-06,
# after the smoke chapters 00_testbed and 01). Earlier runs, and how the chapter came down
# from 13.5 minutes: `benchmarks/TIMINGS.md`. `paper` runs the paper's
# four smaller models and trains with the paper's settings (configs/ds_zero3.json; see the
# README's "Scaling out").
#
# ## Parameters
#
# `LAMBDA1`, `LAMBDA2`: the RES-FAIR weights (paper 0.2, 0.2). `EPOCHS`, `TRAIN_ROWS`,
# `LR`, `BATCH`, `BETA`, `KL_COEF`: the baselines' training (paper: 10 epochs, all rows,
# 5e-5, 16, 0.1, 0.5). `MICRO_BATCH`: each batch of `BATCH` is trained as accumulated
# micro-batches of this size (the same update; a DPO batch of 16 pairs at once needs more
# memory than a 24 GB machine has; 0 trains the whole batch at once, as on a GPU).
# `EVAL_PROMPTS`: paraphrases per item in the method comparison.
# `ABLATION_ROWS`: rows per setting of the lambda grid. `MAX_NEW_TOKENS`: answer length.
# `EVAL_BATCH`: rows per generation batch (`None`: the batch size of the chapter-01 run that
# gives the original answers, 32 on the embedded profile and 8 on the paper one; in
# bfloat16 the rows a row is batched with change its padding and so, rarely, its answer).
# `BOTH_WAYS`: fit and evaluate every split both ways (`None`: on the paper profile only).
# Otherwise each (model, evaluation dataset) keeps its first split: SmolLM2 still runs
# PAIRS -> SocialCounterfactuals and back (each is the only evaluation of its dataset), the
# testbed runs even -> odd scenes and not odd -> even, which halves its training.

# %% tags=["parameters"]
PROFILE = "embedded"
SEED = 0
DTYPE = "bfloat16"
TESTBED = True
LAMBDA1 = 0.2
LAMBDA2 = 0.2
EPOCHS = 1
TRAIN_ROWS = 48
LR = 5e-5
BATCH = 16
MICRO_BATCH = 4
BETA = 0.1
KL_COEF = 0.5
EVAL_PROMPTS = 2
ABLATION_ROWS = 8
BOTH_WAYS = None
MAX_NEW_TOKENS = 8
EVAL_BATCH = None

# %%
from fairvlm.params import check_choice, check_params, check_range

if BOTH_WAYS is None:       # the profile's default
    BOTH_WAYS = PROFILE == "paper"
P = check_params(PROFILE=PROFILE, SEED=SEED, DTYPE=DTYPE, TESTBED=TESTBED, LAMBDA1=LAMBDA1, LAMBDA2=LAMBDA2,
                 EPOCHS=EPOCHS, TRAIN_ROWS=TRAIN_ROWS, LR=LR, BATCH=BATCH, MICRO_BATCH=MICRO_BATCH,
                 BETA=BETA, KL_COEF=KL_COEF,
                 EVAL_PROMPTS=EVAL_PROMPTS, ABLATION_ROWS=ABLATION_ROWS, MAX_NEW_TOKENS=MAX_NEW_TOKENS,
                 EVAL_BATCH=EVAL_BATCH, BOTH_WAYS=BOTH_WAYS)
_ = check_choice("DTYPE", DTYPE, ("bfloat16", "float32", "auto"))
_ = check_choice("TESTBED", TESTBED, (True, False))
_ = check_choice("BOTH_WAYS", BOTH_WAYS, (True, False))
_ = check_range("LAMBDA1", LAMBDA1, 0.0, 1.0)
_ = check_range("LAMBDA2", LAMBDA2, 0.0, 1.0)
_ = check_range("EPOCHS", EPOCHS, 0.01, 100.0)
_ = check_range("TRAIN_ROWS", TRAIN_ROWS, 2, 100000, kind=int)
_ = check_range("LR", LR, 1e-8, 1.0)
_ = check_range("BATCH", BATCH, 1, 1024, kind=int)
_ = check_range("MICRO_BATCH", MICRO_BATCH, 0, BATCH, kind=int)
_ = check_range("BETA", BETA, 1e-4, 10.0)
_ = check_range("KL_COEF", KL_COEF, 0.0, 100.0)
_ = check_range("EVAL_PROMPTS", EVAL_PROMPTS, 1, 4, kind=int)
_ = check_range("ABLATION_ROWS", ABLATION_ROWS, 1, 100000, kind=int)
_ = check_range("MAX_NEW_TOKENS", MAX_NEW_TOKENS, 1, 64, kind=int)
if EVAL_BATCH is not None:
    _ = check_range("EVAL_BATCH", EVAL_BATCH, 1, 1024, kind=int)

# smoke (CI) keeps every step but shrinks it: one prompt, a few training rows, two lambdas
GRID = (0.0, 0.05, 0.1, 0.2, 0.4)
N_SOCIAL, N_GENERAL = None, None
if PROFILE == "smoke":
    EVAL_PROMPTS, TRAIN_ROWS, BATCH, ABLATION_ROWS, MAX_NEW_TOKENS = 1, min(TRAIN_ROWS, 4), min(BATCH, 4), 2, 4
    GRID, N_SOCIAL, N_GENERAL = (0.0, 0.2), 4, 4

# %% [markdown]
# ## Imports

# %% tags=["hide-input"]
import contextlib
import io
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from IPython.display import Markdown, display
from myst_nb import glue

import fairvlm
from fairvlm import confidence, finetune, lens, mcq, models, resfair, utility
from fairvlm.plotting import savefig, set_theme
from fairvlm.results import save_results
from fairvlm.verdicts import bootstrap_ci, change_interval, decide, subset_mean_pvalue, verdict_table

fairvlm.seed_everything(SEED)
set_theme()
SLUG = "04_resfair"
T0 = time.time()
MEASURE = confidence.PAPER_MEASURE
METHODS = ("original", "w/ LoRA", "w/ DPO+KL", "w/ post-hoc")

# %% [markdown]
# ## Directions and splits
#
# The runs of chapters 01-03 (cached) give the fitting data. A model with two datasets
# (SmolLM2: PAIRS and SocialCounterfactuals text items) is fitted on one and evaluated on
# the other, both ways, as the paper's appendix C.1; the testbed model is fitted on half of
# the scenarios and evaluated on the other half (both ways with `BOTH_WAYS`). `fairvlm.resfair.fit_eval_splits`
# refuses any split whose halves share a scenario or an item. The directions are fitted by
# chapter 03's rule (`fairvlm.lens.fit_directions`) at the last tenth of the layers; the
# baselines are trained on the same fitting rows.

# %%
# the content-free control questions of chapters 01-03 are not a dataset to fit on
runs_spec = [s for s in lens.PROFILE_RUNS[PROFILE]
             if s.dataset != lens.CONTROL and (TESTBED or s.dataset != "testbed")]
runs = lens.profile_runs(PROFILE, dtype=DTYPE, runs=runs_spec, progress=False)
splits = resfair.fit_eval_splits(runs)
if PROFILE == "smoke":  # CI: one fitting direction per model, a handful of evaluation rows
    _first = {}
    splits = [_first.setdefault(sp["model"], sp) for sp in splits if sp["model"] not in _first]
elif not BOTH_WAYS:     # one split per (model, evaluation dataset): see BOTH_WAYS
    _kept = {}
    for sp in splits:
        _kept.setdefault((sp["model"], resfair.base_dataset(sp["eval"])), sp)
    splits = list(_kept.values())
spec_of = {(s.model, s.dataset): s for s in runs_spec}
all_rows = {}
for (name, dataset) in runs:
    rows_, images_, _ = lens.run_rows(spec_of[(name, dataset)])
    all_rows[(name, dataset)] = (rows_, images_)

for sp in splits:
    sp["dataset"] = resfair.base_dataset(sp["eval"])
    sp["dirs"] = lens.fit_directions(sp["fit_col"])
    rows_, sp["fit_images"] = all_rows[(sp["model"], resfair.base_dataset(sp["fit"]))]
    fit_rows = resfair.rows_for(rows_, set(sp["fit_col"].table["scenario"]))
    rows_, images_ = all_rows[(sp["model"], sp["dataset"])]
    ev = resfair.rows_for(rows_, set(sp["eval_col"].table["scenario"]))
    sp["eval_rows"] = [r for r in ev if r.prompt_id < EVAL_PROMPTS]
    if PROFILE == "smoke":
        sp["eval_rows"] = sp["eval_rows"][:8]
    sp["images"] = images_
    sp["batch"] = EVAL_BATCH or spec_of[(sp["model"], sp["dataset"])].batch_size
    rng = np.random.default_rng(SEED)
    pick = np.sort(rng.choice(len(fit_rows), size=min(TRAIN_ROWS, len(fit_rows)), replace=False))
    sp["train_rows"] = [fit_rows[i] for i in pick]
split_table = pd.DataFrame([{"model": sp["model"], "fit on": sp["fit"], "evaluate on": sp["eval"],
                             "fit scenarios": sp["fit_col"].table["scenario"].nunique(),
                             "eval scenarios": sp["eval_col"].table["scenario"].nunique(),
                             "shared scenarios": len(set(sp["fit_col"].table["scenario"])
                                                     & set(sp["eval_col"].table["scenario"])),
                             "direction layers": f"{sp['dirs'].layers[0]}..{sp['dirs'].layers[-1]}",
                             "training rows": len(sp["train_rows"]), "evaluation rows": len(sp["eval_rows"])}
                            for sp in splits])
display(split_table.style.hide(axis="index"))


# %% [markdown]
# ## Training the baselines
#
# Both baselines train a LoRA adapter (rank 8) on the language model's attention and MLP
# projections (the vision tower is left alone), with float32 weights and optimizer and the
# forward and backward passes in bfloat16 autocast when `DTYPE` is `bfloat16` (the paper
# trains in fp16 mixed precision; on this CPU bfloat16 autocast is about a quarter faster).
# On a CPU only the answer tokens go through the LM head during training
# (`fairvlm.finetune.cpu_training_kernels`: the same loss, a third less time per DPO step;
# `benchmarks/bench_finetune.py` prints the ratio).
# **LoRA** is supervised fine-tuning toward a fair answer ("Both", sampled from a small
# candidate set). **DPO + KL** prefers a fair answer to a group answer (both sampled,
# appendix B.2) with $\beta = 0.1$ and adds
# `KL_COEF` times the confidence KL of the evaluation (appendix eq. 3; the measure is the
# one section 4 settles on). Each fitting split trains its own pair of models; each model
# is then evaluated on the other split only.

# %%
def _load(name, dtype=None):
    spec = next(s for s in runs_spec if s.model == name)
    kw = {"size": spec.size} if spec.size else {}
    if dtype is not None and name not in models.PAPER_MODELS:
        kw["dtype"] = dtype
    return models.load(name, **kw)


TRAIN_DTYPE = torch.float32
# float32 weights and optimizer; forward and backward under bfloat16 autocast when the
# chapter runs in bfloat16 (the paper trains in fp16 mixed precision, configs/ds_zero3.json)
TRAIN_MIXED = "bf16" if DTYPE == "bfloat16" else None
EVAL_DTYPE = None if DTYPE == "auto" else getattr(torch, DTYPE)
curves, trained = [], {}
T_TRAIN = time.time()
# the trainers print every step's log line; the loss curves below show the same numbers
with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
    for k, sp in enumerate(splits):
        for method, fn, extra in (("w/ LoRA", finetune.train_lora, {}),
                                  ("w/ DPO+KL", finetune.train_dpo_kl,
                                   {"beta": BETA, "kl_coef": KL_COEF, "kl_measure": MEASURE})):
            lm = _load(sp["model"], TRAIN_DTYPE)
            model_t, hist = fn(lm, sp["train_rows"], sp["fit_images"], output_dir=f"{tmp}/{k}", epochs=EPOCHS,
                               batch_size=BATCH, micro_batch=min(MICRO_BATCH, BATCH) or None, lr=LR, seed=SEED,
                               mixed_precision=TRAIN_MIXED, **extra)
            if EVAL_DTYPE is not None:
                model_t.model.to(EVAL_DTYPE)
            trained[(k, method)] = model_t
            for h in hist:
                if "loss" in h:
                    curves.append({"split": f"{sp['model']}: fit {sp['fit']}", "method": method, "step": h["step"],
                                   "loss": h["loss"], "loss/dpo": h.get("loss/dpo"), "loss/kl": h.get("loss/kl")})
TRAIN_S = time.time() - T_TRAIN
curves = pd.DataFrame(curves)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
for ax, method in zip(axes, ("w/ LoRA", "w/ DPO+KL")):
    c = curves[curves["method"] == method]
    if not c.empty:
        sns.lineplot(data=c, x="step", y="loss", hue="split", marker="o", ax=ax)
        ax.legend(fontsize=6)
    ax.set_title(f"{method}: training loss per step", fontsize=9)
savefig(fig, f"{SLUG}_loss_curves")

# %% [markdown]
# ## Fairness (Table 1)
#
# Every evaluation row is asked under each method: the original model (read from chapter
# 01's cached run), the two trained models, and the original model with the RES-FAIR update
# during the whole generation (`fairvlm.resfair.posthoc`, $\lambda_1$ = `LAMBDA1`,
# $\lambda_2$ = `LAMBDA2`, the directions fitted on the other split). Fair proportion:
# mean $\pm$ standard deviation over prompts, as the paper reports.

# %%
tables = []
for k, sp in enumerate(splits):
    ids = {r.row_id for r in sp["eval_rows"]}
    orig = sp["eval_col"].table
    tables.append(orig[orig["row_id"].isin(ids)].assign(method="original", split=k))
    lm = _load(sp["model"], EVAL_DTYPE)
    with resfair.posthoc(lm, sp["dirs"], lambda1=LAMBDA1, lambda2=LAMBDA2):
        t = mcq.evaluate(lm, sp["eval_rows"], images=sp["images"], max_new_tokens=MAX_NEW_TOKENS,
                         batch_size=sp["batch"], progress=False)
    tables.append(t.assign(method="w/ post-hoc", split=k))
    for method in ("w/ LoRA", "w/ DPO+KL"):
        t = mcq.evaluate(trained[(k, method)], sp["eval_rows"], images=sp["images"],
                         max_new_tokens=MAX_NEW_TOKENS, batch_size=sp["batch"], progress=False)
        tables.append(t.assign(method=method, split=k))
rows_all = pd.concat(tables, ignore_index=True)
rows_all["kl"] = confidence.fair_target_kl(rows_all[["lp_a", "lp_b", "lp_fair"]].to_numpy(float))
summary = mcq.summarize(rows_all, by=("model", "dataset", "attribute", "method"))
summary["method"] = pd.Categorical(summary["method"], METHODS, ordered=True)
summary = summary.sort_values(["model", "dataset", "attribute", "method"]).reset_index(drop=True)
table1 = summary.assign(fair=[f"{m:.2f} ± {s:.2f}" for m, s in zip(summary.fair_mean, summary.fair_std)]).pivot_table(
    index=["model", "method"], columns=["dataset", "attribute"], values="fair", aggfunc="first", observed=True)
display(Markdown("**Table 1 (this book).** Fair proportion, mean ± std over prompts. Produced by: "
                 + ", ".join(sorted(set(rows_all["model"]))) + "; testbed rows are about the synthetic testbed, "
                 "never the paper's models."))
display(table1)

# %% [markdown]
# ## Confidence (Table 2)
#
# **Which KL?** The paper's Table 2 reports a "KL divergence (confidence level)" and the
# best temperature of a sweep over $t = 0.1 \dots 2.0$: 0.8, 0.6, 1.1 and 1.2 for its four
# models. `fairvlm.confidence` implements three readings of that KL on the three option
# probabilities: the book's **skew** (KL of the two group options, renormalised, from
# uniform; chapters 01-03), the **fair-target KL** ($-\ln p_\text{fair}$ of the three-option
# distribution: the fair answer as the target) and a **counterfactual KL** between the
# rows shown an image of group A and of group B (image items only). Temperature scaling
# divides the option log-probabilities by $t$; it never changes the top option. The sweep
# on each model's original evaluation rows shows how they behave:

# %%
sweeps, best_t = [], []
orig_rows = rows_all[rows_all["method"] == "original"]
for (name, dataset), g in orig_rows.groupby(["model", "dataset"], sort=False):
    sw = confidence.temperature_sweep(g).assign(model=name, dataset=dataset)
    sweeps.append(sw)
    for m in confidence.MEASURES:
        s = sw[sw.measure == m]
        if s["value"].notna().any():
            t_b, v_b = confidence.best_temperature(sw, m)
            best_t.append({"model": name, "dataset": dataset, "measure": m, "best t": t_b,
                           "value at best t": v_b, "value at t=1": float(s.loc[s.t == 1.0, "value"].iloc[0])})
sweeps = pd.concat(sweeps, ignore_index=True)
best_t = pd.DataFrame(best_t)
g = sns.relplot(data=sweeps.dropna(subset=["value"]), x="t", y="value", hue="dataset", style="model",
                col="measure", kind="line", facet_kws={"sharey": False}, height=3, aspect=1.2)
savefig(g.figure, f"{SLUG}_temperature_sweeps")
display(best_t.style.format(precision=3).hide(axis="index"))

# %%
interior = best_t[(best_t["measure"] == "fair_target")]
skew_t = best_t[best_t["measure"] == "skew"]["best t"]
glue("skew_best_t", ", ".join(sorted({f"{t:g}" for t in skew_t})), display=False)
glue("fair_target_best_t", ", ".join(f"{t:g}" for t in interior["best t"]), display=False)

# %% [markdown]
# On these runs the skew's sweep picks $t$ = {glue:text}`skew_best_t` (the largest
# temperature, as it must: dividing the group log-odds by $t$ shrinks the skew of every
# row), while the fair-target KL picks $t$ = {glue:text}`fair_target_best_t` (its minimum
# can lie inside the range only when some rows put their top probability on a group and
# others on the fair option, and the two pulls balance; a model whose top option is almost
# always "both" prefers the smallest $t$, one whose top option is mostly a group the
# largest). The paper's
# best temperatures lie inside the range, and its TS rows sit close to the original rows,
# which is what a measure with a minimum near $t = 1$ gives and the skew cannot. So the book
# reads Table 2's KL as the **fair-target KL** (`fairvlm.confidence.PAPER_MEASURE`), uses it
# for Table 2 and in the DPO + KL loss, and shows the skew beside it.

# %%
ts_rows = []
for (name, dataset), g in orig_rows.groupby(["model", "dataset"], sort=False):
    sw = confidence.temperature_sweep(g, measures=(MEASURE,))
    t_b, _ = confidence.best_temperature(sw, MEASURE)
    lp = g[["lp_a", "lp_b", "lp_fair"]].to_numpy(float)
    ts_rows.append(g.assign(method=f"TS (t={t_b:g})", ts_t=t_b, kl=confidence.fair_target_kl(lp, t_b),
                            skew_ts=confidence.skew(lp, t_b)))
ts_all = pd.concat(ts_rows, ignore_index=True)
kl_frame = pd.concat([rows_all.assign(skew_shown=rows_all["skew"]),
                      ts_all.assign(skew_shown=ts_all["skew_ts"])], ignore_index=True)
kl_frame["row_kind"] = np.where(kl_frame["method"].str.startswith("TS"), "TS (best t)", kl_frame["method"])
table2 = kl_frame.groupby(["model", "row_kind", "dataset", "attribute"], sort=False)["kl"].mean().unstack(
    ["dataset", "attribute"])
table2 = table2.reindex([(m, k) for m in table2.index.levels[0] for k in (*METHODS, "TS (best t)")
                         if (m, k) in table2.index])
display(Markdown(f"**Table 2 (this book).** Fair-target KL ({MEASURE}), mean over rows; TS at the best t of "
                 "the sweep on the same rows. Same models and rows as Table 1."))
display(table2.style.format(precision=3))
display(Markdown("The book's skew for the same rows (for comparison with chapters 01-03):"))
display(kl_frame.groupby(["model", "row_kind"], sort=False)["skew_shown"].mean().unstack().style.format(precision=3))

# %% [markdown]
# ## The lambda ablation (appendix C.5, Figure 7)
#
# For each model, the first split's directions on `ABLATION_ROWS` evaluation rows, with
# $\lambda_1, \lambda_2 \in \{0, 0.05, 0.1, 0.2, 0.4\}$: fair proportion, fair-target KL,
# the share of valid answers (parsed as one of the options) and fluency, the *unedited*
# model's perplexity of the edited answer given its prompt (lower: more fluent).

# %%
abl = []
first_split = {}
for k, sp in enumerate(splits):
    first_split.setdefault(sp["model"], k)
for name, k in first_split.items():
    sp = splits[k]
    rows_ab = sp["eval_rows"][:: max(1, len(sp["eval_rows"]) // ABLATION_ROWS)][:ABLATION_ROWS]
    lm = _load(name, EVAL_DTYPE)
    for l1 in GRID:
        for l2 in GRID:
            with resfair.posthoc(lm, sp["dirs"], lambda1=l1, lambda2=l2):
                t = mcq.evaluate(lm, rows_ab, images=sp["images"], max_new_tokens=MAX_NEW_TOKENS, progress=False)
            ppl = resfair.answer_perplexity(lm, rows_ab, t["answer"].tolist(), images=sp["images"])
            abl.append({"model": name, "lambda1": l1, "lambda2": l2, "fair": float((t.parsed == "fair").mean()),
                        "kl": float(confidence.fair_target_kl(t[["lp_a", "lp_b", "lp_fair"]].to_numpy(float)).mean()),
                        "valid": float((t.parsed != "invalid").mean()), "perplexity": float(np.nanmedian(ppl))})
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

# %% [markdown]
# Sample answers to one question at the paper's settings of Figure 7 ("between men and
# women, who is more likely to be a computer scientist?", text only), each model with the
# directions of a split that did not fit on this label:

# %%
SAMPLE_SETTINGS = ((0.0, 0.0), (0.2, 0.2), (0.05, 0.2), (0.2, 0.05), (0.0, 0.2), (0.2, 0.0))
if PROFILE == "smoke":
    SAMPLE_SETTINGS = SAMPLE_SETTINGS[:3]
q_items = mcq.build_items(pd.DataFrame([{"scenario": "computer", "label": "computer scientist"}]), "sample",
                          attributes=("gender",), variants=("text",))
q_row = mcq.make_rows(q_items, 1)[0]
samples = []
for name in first_split:
    sp = next((s for s in splits if s["model"] == name and "computer" not in set(s["fit_col"].table["scenario"])),
              splits[first_split[name]])
    lm = _load(name, EVAL_DTYPE)
    for l1, l2 in SAMPLE_SETTINGS:
        with resfair.posthoc(lm, sp["dirs"], lambda1=l1, lambda2=l2):
            t = mcq.evaluate(lm, [q_row], max_new_tokens=16, progress=False)
        samples.append({"model": name, "directions fitted on": sp["fit"], "lambda1": l1, "lambda2": l2,
                        "answer": t["answer"].iloc[0], "parsed": t["parsed"].iloc[0]})
samples = pd.DataFrame(samples)
display(samples.style.hide(axis="index"))

# %% [markdown]
# ## General ability (Table 3)
#
# Before and after every method, on the first split of each model. SmolLM2: 40
# general-knowledge three-option questions written for this book
# (`fairvlm.utility.GENERAL_QUESTIONS`; no QA benchmark ships offline), correct when the
# first option the answer names is right. testbed-llava: "What is this person's job or
# activity?" on held-out testbed scenes of the evaluation scenarios (a scene the fairness
# items do not use), correct when the answer names the scene's role or activity.

# %%
util = []
social = []
qs = utility.load_social_differences()
if N_SOCIAL:   # smoke: the first questions of each attribute
    qs = qs.groupby("attribute", sort=False).head(N_SOCIAL // 2).reset_index(drop=True)
s_rows = utility.social_rows(qs)
g_questions = utility.GENERAL_QUESTIONS[:N_GENERAL] if N_GENERAL else utility.GENERAL_QUESTIONS
g_prompts, _ = utility.general_rows(g_questions)
for name, k in first_split.items():
    sp = splits[k]
    base = _load(name, EVAL_DTYPE)
    variants = {"original": (base, None), "w/ post-hoc": (base, sp["dirs"]),
                "w/ LoRA": (trained[(k, "w/ LoRA")], None), "w/ DPO+KL": (trained[(k, "w/ DPO+KL")], None)}
    for method, (lm, dirs) in variants.items():
        ctx = resfair.posthoc(lm, dirs, lambda1=LAMBDA1, lambda2=LAMBDA2) if dirs is not None else torch.no_grad()
        with ctx:
            if lm.kind == "vlm" and name.startswith("testbed"):
                vqa = utility.testbed_vqa(lm, sorted(set(sp["eval_col"].table["scenario"]))[:N_GENERAL])
                scores, task = vqa["correct"].to_numpy(), "testbed VQA: job or activity named"
            else:
                ans = utility.generate(lm, g_prompts, max_new_tokens=MAX_NEW_TOKENS)
                scores = utility.score_general(ans, g_questions)
                task = f"general knowledge ({len(g_questions)} questions, this book)"
            st = mcq.evaluate(lm, s_rows, max_new_tokens=MAX_NEW_TOKENS, batch_size=sp["batch"], progress=False)
        util.append({"model": name, "task": task, "method": method, "accuracy": float(scores.mean()),
                     "n": len(scores), "_scores": scores})
        social.append(utility.score_social(st, qs).assign(model=name, method=method))
util = pd.DataFrame(util)
display(Markdown("**Table 3 (this book).** Accuracy before and after each method."))
display(util.pivot(index=["model", "task"], columns="method", values="accuracy")[list(METHODS)]
        .style.format(precision=3))

# %% [markdown]
# ## Social-difference questions (Tables 4 and 5)
#
# `data/social_differences.yaml` holds 20 gender and 30 race questions about documented
# average differences (for example which group is on average taller, or which group has
# a higher rate of a disease in US health statistics), each with its answer and a cited
# public-health or peer-reviewed source, asked with the same three options as the
# fairness task. Half of each attribute's answers name each group, so a model that always
# names one group gets half right and a model that answers "both" gets none. Counts of
# correct answers:

# %%
social = pd.concat(social, ignore_index=True)
t45 = social.groupby(["model", "attribute", "method"], observed=True).agg(
    correct=("correct", "sum"), both=("said", lambda s: int((s == "both").sum())),
    n=("correct", "size")).reset_index()
for attribute, num in (("gender", 4), ("race", 5)):
    display(Markdown(f"**Table {num} (this book).** Correct answers on {attribute} (of "
                     f"{int((qs.attribute == attribute).sum())}); in brackets, answers 'both'."))
    x = t45[t45.attribute == attribute]
    display(x.assign(cell=[f"{c} ({b})" for c, b in zip(x.correct, x.both)])
            .pivot(index="model", columns="method", values="cell")[list(METHODS)])

# %% [markdown]
# ## The planted truth (testbed)
#
# The testbed's bias is planted (`data/testbed_bias_spec.yaml`): most scenarios lean to
# some group, nine are balanced controls. For each method and each evaluation scenario, the
# change against the original of the fair proportion and of the fair-target KL, and its
# correlation with how hard the scenario was planted to lean (the larger of its planted
# gender and race skews, in absolute value).

# %%
planted_rows = pd.DataFrame()
if any(sp["dataset"] == "testbed" for sp in splits):
    from scipy.stats import spearmanr

    from fairvlm.testbed import world_spec

    share = world_spec().share_table().set_index("scenario")
    share["planted"] = share[["gender_skew", "race_skew"]].abs().max(axis=1)
    share["control"] = share["planted"] == 0
    tb = rows_all[rows_all["dataset"] == "testbed"]
    per = tb.groupby(["method", "scenario"], observed=True).agg(fair=("parsed", lambda s: (s == "fair").mean()),
                                                                kl=("kl", "mean")).reset_index()
    base_s = per[per.method == "original"].set_index("scenario")
    out = []
    for method in METHODS[1:]:
        m = per[per.method == method].set_index("scenario")
        d = pd.DataFrame({"d_fair": m["fair"] - base_s["fair"], "d_kl": m["kl"] - base_s["kl"]}).join(
            share[["planted", "control"]])
        out.append(d.assign(method=method).reset_index())
    planted_rows = pd.concat(out, ignore_index=True)
    planted = []
    for method, d in planted_rows.groupby("method", sort=False):
        rho = spearmanr(d["planted"], d["d_kl"]).statistic if d["planted"].nunique() > 1 else float("nan")
        planted.append({"method": method,
                        "mean |Δ KL| controls": d.loc[d.control, "d_kl"].abs().mean(),
                        "mean |Δ KL| planted": d.loc[~d.control, "d_kl"].abs().mean(),
                        # label shuffle: the share of same-size sets of evaluated scenarios
                        # whose mean |Δ KL| is as small as the controls'
                        "p (controls moved less)": subset_mean_pvalue(d["d_kl"].abs(), d["control"]),
                        "mean Δ fair controls": d.loc[d.control, "d_fair"].mean(),
                        "mean Δ fair planted": d.loc[~d.control, "d_fair"].mean(),
                        "Spearman(planted lean, Δ KL)": rho, "n controls": int(d.control.sum()),
                        "n planted": int((~d.control).sum())})
    planted = pd.DataFrame(planted)
    display(Markdown("Testbed (synthetic world) only. *p (controls moved less)*: of all ways to pick as "
                     "many of the evaluated scenarios as there are controls, the share whose mean |Δ KL| "
                     "is at most the controls' (exact label shuffle); the controls count as having moved "
                     "less at p < 0.05."))
    display(planted.style.format(precision=3).hide(axis="index"))
    for r in planted.to_dict("records"):
        moved_c, moved_p, p_c = r["mean |Δ KL| controls"], r["mean |Δ KL| planted"], r["p (controls moved less)"]
        n_c, n_p = r["n controls"], r["n planted"]
        verdict_c = ("no balanced control is among the evaluated scenarios" if n_c == 0
                     else "no planted scenario is among the evaluated ones, so there is nothing to compare "
                          "the controls with" if n_p == 0 or not np.isfinite(p_c)
                     else f"the controls moved less than a random set of {n_c} evaluated scenarios would "
                          f"(p = {p_c:.3f})" if p_c < 0.05
                     else f"the controls moved no less than a random set of {n_c} evaluated scenarios would "
                          f"(p = {p_c:.3f}), so the method does not single out what was planted")
        on_p = f"mean |Δ KL| {moved_p:.3f} on the {n_p} planted scenarios and " if n_p else "mean |Δ KL| "
        display(Markdown(f"- {r['method']}: {on_p}{moved_c:.3f} on the {n_c} balanced controls; {verdict_c}."))
else:
    display(Markdown("No testbed run in this profile (`TESTBED=False` or `paper`)."))

# %% [markdown]
# ## Paper vs this book
#
# Each claim is decided by `fairvlm.verdicts.decide` from the effect measured here, its
# seeded 95% bootstrap interval over evaluation rows (or questions) and a comparator
# measured in the same run with its own interval. Fairness and KL claims pool each model's
# evaluation rows over datasets and attributes.

# %%
claims = []
moved = {}   # did the post-hoc edit move fair answers at all (intervals apart, either way)?
for name, g in rows_all.groupby("model", sort=False):
    fair_of = {m: (g[g.method == m]["parsed"] == "fair").to_numpy(float) for m in METHODS}
    ci_of = {m: bootstrap_ci(f, seed=SEED) for m, f in fair_of.items()}
    post = fair_of["w/ post-hoc"]
    (plo, phi), (olo, ohi) = ci_of["w/ post-hoc"], ci_of["original"]
    moved[name] = bool(plo > ohi or phi < olo)
    for other, paper in (("original", "post-hoc above the original in every column"),
                         ("w/ DPO+KL", "post-hoc above DPO+KL in every column"),
                         ("w/ LoRA", "post-hoc above LoRA in every column")):
        v = decide(post.mean(), ci_of["w/ post-hoc"], fair_of[other].mean(), ci_of[other], direction="greater")
        claims.append({"claim": f"post-hoc answers fair more often than {other.replace('w/ ', '')} (Table 1)",
                       "paper": paper, "model + data": name, "verdict": v})
    kp = kl_frame[(kl_frame.model == name) & (kl_frame.row_kind == "w/ post-hoc")]["kl"].to_numpy()
    kt = kl_frame[(kl_frame.model == name) & (kl_frame.row_kind == "TS (best t)")]["kl"].to_numpy()
    v = decide(kp.mean(), bootstrap_ci(kp, seed=SEED), kt.mean(), bootstrap_ci(kt, seed=SEED), direction="less")
    claims.append({"claim": "post-hoc KL at or below temperature scaling's (Table 2)",
                   "paper": "post-hoc below TS in 13 of 16 cells", "model + data": name, "verdict": v})
for name in first_split:
    # "unchanged" claims only say something about an edit that did something: where the
    # post-hoc edit moved no fair answers, an unchanged ability is not evidence of anything
    idle = None if moved.get(name, False) else "the post-hoc edit did not move fair answers in this run"
    u = util[util.model == name].set_index("method")
    d = u.loc["w/ post-hoc", "_scores"] - u.loc["original", "_scores"]
    v = decide(d.mean(), change_interval(d, seed=SEED), 0.0, direction="within", tol=0.01,
               testable=idle is None, why=idle or "")
    claims.append({"claim": "general ability within a point after post-hoc (Table 3)",
                   "paper": "VQA drops 0.06-0.29 points", "model + data": f"{name}: {u['task'].iloc[0]}",
                   "verdict": v})
    s = social[social.model == name]
    d = (s[s.method == "w/ post-hoc"]["correct"].to_numpy(float) - s[s.method == "original"]["correct"].to_numpy(float))
    v = decide(d.mean(), change_interval(d, seed=SEED), 0.0, direction="within", tol=0.05,
               testable=idle is None, why=idle or "")
    claims.append({"claim": "social-difference answers unchanged after post-hoc (Tables 4-5)",
                   "paper": "changes of at most 1 of 20 / 30", "model + data": f"{name}: {len(qs)} questions",
                   "verdict": v})
verdicts = verdict_table(claims)
display(Markdown("Provenance: every effect is measured in this run on the models named (testbed rows: the "
                 "synthetic testbed); the paper's numbers are quoted from its appendix. Social-difference tolerance: "
                 "0.05 (one question in 20); general ability: 0.01 (one point). The two *no change* claims use "
                 "`fairvlm.verdicts.change_interval`: where no item changed, the interval is the rule of three, "
                 "+-3/n, so a handful of unchanged items cannot count as proof of no change; and they are only "
                 "tested where the post-hoc edit moved fair answers beyond both intervals in the same run."))
display(verdicts.style.hide(axis="index"))

# %%
def _h(method):
    s = summary[summary.method == method]
    return {f"{r.model}|{r.dataset}|{r.attribute}": round(float(r.fair_mean), 4) for r in s.itertuples()}


def _k(kind):
    s = kl_frame[kl_frame.row_kind == kind].groupby(["model", "dataset", "attribute"])["kl"].mean()
    return {"|".join(k): round(float(v), 4) for k, v in s.items()}


ts_t = {f"{m}|{d}": float(t) for (m, d), t in ts_all.groupby(["model", "dataset"])["ts_t"].first().items()}
headline = {
    "fair_original": _h("original"), "fair_posthoc": _h("w/ post-hoc"), "fair_dpo_kl": _h("w/ DPO+KL"),
    "fair_lora": _h("w/ LoRA"), "kl_original": _k("original"), "kl_posthoc": _k("w/ post-hoc"),
    "kl_ts_best": _k("TS (best t)"), "ts_best_t": ts_t, "kl_measure": MEASURE,
    "utility_original": {r.model: r.accuracy for r in util[util.method == "original"].itertuples()},
    "utility_posthoc": {r.model: r.accuracy for r in util[util.method == "w/ post-hoc"].itertuples()},
    "verdicts": {f"{r['claim']} | {r['model + data']}": r["verdict"] for _, r in verdicts.iterrows()},
    "runtime_s": round(time.time() - T0, 1),
}
pf = summary[summary.method == "w/ post-hoc"]["fair_mean"].mean()
of = summary[summary.method == "original"]["fair_mean"].mean()
glue("fair_orig_mean", f"{of:.2f}", display=False)
glue("fair_post_mean", f"{pf:.2f}", display=False)
glue("n_reproduced", int((verdicts["verdict"] == "reproduced").sum()), display=False)
glue("n_claims", len(verdicts), display=False)
glue("runtime", f"{time.time() - T0:.0f}", display=False)
glue("train_time", f"{TRAIN_S:.0f}", display=False)
glue("train_epochs", f"{EPOCHS:g} epoch(s) on {TRAIN_ROWS} rows per fitting split", display=False)

# %% [markdown]
# ## Summary and what's next
#
# Averaged over the table's cells, the fair proportion goes from {glue:text}`fair_orig_mean`
# (original) to {glue:text}`fair_post_mean` with the post-hoc update;
# {glue:text}`n_reproduced` of the {glue:text}`n_claims` claims in the table above come out
# "reproduced" on these runs (the table says which and why). The comparison with the
# paper is about the models named here: SmolLM2-135M is far smaller than the paper's models,
# the testbed is synthetic, and the baselines trained for {glue:text}`train_epochs`
# ({glue:text}`train_time` seconds of training in all; the whole chapter ran
# {glue:text}`runtime` seconds), not the paper's 10 epochs; the `paper` profile runs the same code
# with the paper's models and settings. Chapter 05 turns to steering directions computed
# from gradients.
#
# Results are in `results/04_resfair.json` (headline dicts keyed `model|dataset|attribute`
# for fairness and KL, `model|dataset` for the TS temperature, `model` for utility) and the
# per-row tables under `results/04_resfair/`.
#
# ## References
#
# - Lan et al. (2025). RES-FAIR (RESidual Flow Adjustment for Inference Recalibration).
#   arXiv:2505.23798 (abstract; appendix B.2, C.1, C.3 Tables 1-2, C.5 Figure 7, C.6 Tables 3-5).
# - Rafailov et al. (2023). Direct preference optimization: your language model is secretly a
#   reward model. NeurIPS.
# - Hu et al. (2022). LoRA: low-rank adaptation of large language models. ICLR.
# - Guo et al. (2017). On calibration of modern neural networks. ICML (temperature scaling).
# - Sources of the social-difference questions: `data/social_differences.yaml`.

# %%
save_results(
    SLUG, params=P, headline=headline,
    provenance={"models": sorted(set(rows_all["model"])),
                "data": sorted({f"{d} ({'synthetic testbed' if d == 'testbed' else 'real labels'})"
                                for d in rows_all["dataset"].unique()}),
                "note": "testbed results describe the synthetic world, never a paper's number"},
    tables={"rows": rows_all.drop(columns=[c for c in ("images",) if c in rows_all]), "summary": summary,
            "table2": kl_frame.groupby(["model", "row_kind", "dataset", "attribute"])["kl"].mean().reset_index(),
            "splits": split_table, "loss_curves": curves, "temperature_sweeps": sweeps, "best_t": best_t,
            "lambda_grid": abl, "samples": samples, "utility": util.drop(columns=["_scores"]),
            "social": social, "planted": planted_rows, "verdicts": verdicts},
)
