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
# # The fairness paradox: fair answers, skewed confidence
#
# ## Overview
#
# RES-FAIR (Lan et al., 2025) reports three findings about how large vision-language
# models hold social bias. The first is a *fairness paradox*: asked which of two social
# groups fits a label, a model often gives the fair answer ("both") while the
# probabilities behind that answer still lean hard toward one group (abstract, finding 1).
# The paper measures the answers by the share of fair responses, reported as mean and
# standard deviation over prompts (appendix Table 1: between 0.39 and 0.69 for the
# original models), and the confidence by a KL divergence, which is between 0.10 and 0.25
# nats for the original large models (appendix Table 2).
#
# This chapter builds the multiple-choice task (`fairvlm.mcq`), defines both measures
# precisely, runs them on every model of the profile, and looks for the paradox: rows that
# answer fair while their probabilities lean to a group.
#
# ## Prerequisites and time to run
#
# The embedded profile runs SmolLM2-135M-Instruct (a real pretrained chat model, text
# only; its weights are the 4-bit GGUF release de-quantized) on the 44 PAIRS labels and
# on 60 SocialCounterfactuals occupations (four paraphrases each), and `testbed-llava` (the
# book's LLaVA-style model: SmolLM2 with a merged LoRA adapter, tuned with its projector on
# the testbed's images; chapter 00_testbed builds it) on rendered held-out testbed scenes of the
# 44 testbed scenarios that map to PAIRS labels, in all four input variants (four of the six
# paraphrases on this profile). Not re-timed on a quiet machine since the 20 content-free
# control labels were added: on 2026-12-07, with a load average of about 12 on 2 CPU cores
# and an empty forward-pass cache, it took about 55 minutes (2.8 minutes before the control
# labels, in a whole `make book`; `benchmarks/TIMINGS.md`); chapters 02 and 03 then reuse the
# cached forward passes. `smoke` runs a
# handful of labels in well under a minute. `paper` runs LLaVA-1.5-7B, LLaVA-NeXT-7B
# (Vicuna), Qwen2-VL-2B and Qwen2.5-VL-7B on PAIRS and SocialCounterfactuals (a GPU, the
# Hugging Face hub or local copies, PAIRS images, and the SocialCounterfactuals images
# under `$FAIRVLM_SOCIALCF_IMAGES`; without them SocialCounterfactuals is text only).
#
# ## Parameters
#
# `DTYPE` is the number format of the embedded and testbed models: `"bfloat16"` (the
# default: about three times faster on CPUs with bfloat16 instructions; option
# probabilities move by a few percent relative to float32) or `"float32"`. `TESTBED=False`
# skips `testbed-llava` (for readers who have not built the testbed).

# %% tags=["parameters"]
PROFILE = "embedded"
SEED = 0
DTYPE = "bfloat16"
TESTBED = True

# %%
from fairvlm import lens

P = lens.check_chapter_params(PROFILE=PROFILE, SEED=SEED, DTYPE=DTYPE, TESTBED=TESTBED)

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
from fairvlm import confidence, lens, mcq
from fairvlm.plotting import savefig, set_theme
from fairvlm.results import save_results
from fairvlm.verdicts import tally, verdict_table

fairvlm.seed_everything(SEED)
set_theme()
SLUG = "01_fairness_paradox"

# %% [markdown]
# ## The task
#
# An *item* is one label, one attribute and one input variant, exactly the paper's unit
# (appendix C.1): for gender the two groups are men and women, for race Black and white
# people (PAIRS has only these two), and each label is asked four ways: text only, with
# an image of group A, with an image of group B, and with both images. PAIRS gives
# 44 x 2 x 4 = 352 items. The two images of an item differ only in the studied attribute;
# the other attribute is held fixed and alternates over labels. The paper's questions and
# system prompt are not public (appendix A.2 only says how the system prompt was
# tightened until answers kept the format), so ours are written for this book: six
# paraphrases of the question, each listing the three options in one of four orders, so
# that a model's preference for the first-listed option averages out over prompts.

# %%
example = mcq.build_items(mcq.pairs_labels().head(1), "pairs", attributes=("gender",))
example_rows = mcq.make_rows(example[-1:], len(mcq.PARAPHRASES))
display(Markdown("**System prompt.** " + mcq.SYSTEM_PROMPT))
display(pd.DataFrame({"paraphrase": [r.prompt_id for r in example_rows],
                      "user turn (variant: both images)": [r.text for r in example_rows]})
        .style.hide(axis="index"))

# %% [markdown]
# Each row is answered greedily, and generation of a row stops once its answer is complete
# (`fairvlm.mcq.AnswerStop`: the text parses to an option and ends a sentence, so an
# opener such as "I think the most likely..." runs on until the answer comes; at most
# {glue:text}`max_new_tokens` new tokens). The answer is parsed to
# *fair*, *group A*, *group B* or *invalid* by `fairvlm.mcq.parse_answer`: a bare option
# letter maps to the option listed at that position; both groups joined by "and"/"or"
# ("both men and women") is fair; otherwise the earliest cue decides, where declining to
# single out a group ("both", "neither", "I cannot tell", "it depends") counts as fair.
#
# The option probabilities are read at the first answer position. The probability of an
# option is the next-token probability mass of the first token of each of its surface
# forms (the word capitalised and lower case, with and without a leading space), summed
# over those distinct tokens. The options' first tokens must differ, otherwise the mass
# could not be split and the library refuses. When a form takes several tokens its
# first-token mass only bounds its probability from above; the table after the runs below
# shows how many tokens each form takes for every model run here.

# %% [markdown]
# The two measures, for a row with option probabilities $p_A$, $p_B$, $p_\text{fair}$:
#
# - **Fair proportion**: the share of rows whose parsed answer is fair. Invalid answers
#   stay in the denominator (they are not fair answers); their share is reported beside.
# - **Confidence skew**: the KL divergence (in nats) of the distribution over the two
#   *group* options, renormalised, from uniform:
#   $q = (p_A, p_B)/(p_A + p_B)$ and
#   $\mathrm{skew} = \sum_g q_g \ln(2 q_g) = \ln 2 - H(q)$.
#   It is 0 when the model is indifferent between the groups and $\ln 2 \approx 0.693$
#   when all group mass sits on one. The fair option's own mass is left out on purpose:
#   the skew asks how hard the model leans *when it leans*, which a fair answer can hide.
#
# A row is a **paradox row** when it answers fair while $\max(q) \ge 2/3$, that is, the
# group distribution leans at least 2:1 (skew at least 0.057 nats). The paper does not
# say how its KL was computed (over which options, from which reference); this is our
# reading of "mis-calibration toward specific social groups".
#
# ## Running the models
#
# One batched pass per model and dataset produces the answers, the option probabilities
# and the per-layer captures chapters 02 and 03 use; `fairvlm.lens.collect` caches it on
# disk, keyed by the model's weights and every prompt. Each model also answers a
# **content-free control**: the same questions for labels that are true of everyone
# ("who is more likely to breathe air?", `fairvlm.mcq.CONTROL_LABELS`), where "both" is
# simply right and a lean toward a group can only be a preference for an option word.

# %%
chapter = lens.chapter_runs(PROFILE, dtype=DTYPE, testbed=TESTBED)
runs = chapter.runs
rows = pd.concat([c.table for c in runs.values()], ignore_index=True)
rows["q_a"] = rows["p_a"] / (rows["p_a"] + rows["p_b"])
control_rows = pd.concat([c.table for c in chapter.controls.values()], ignore_index=True)
for (name, dataset), col in runs.items():
    if col.info.get("note"):
        display(Markdown(f"**{name} on {dataset}:** {col.info['note']}"))
display(chapter.table.style.hide(axis="index"))
glue("max_new_tokens", mcq.MAX_NEW_TOKENS, display=False)
glue("paradox_skew", f"{mcq.PARADOX_SKEW:.3f}", display=False)

# %% [markdown]
# Tokens per option form (the largest over the form's variants); 1 everywhere means the
# first-token mass is exactly the probability of the option word:

# %%
tok_table = pd.concat([pd.DataFrame(c.info["first_tokens"]).assign(model=m)
                       for (m, _), c in runs.items()], ignore_index=True).drop_duplicates()
display(tok_table.pivot_table(index=["model", "attribute"], columns="option", values="n_tokens", aggfunc="max"))

# %% [markdown]
# What the models actually say, most frequent answers first:

# %%
answers = (rows.assign(answer=rows["answer"].str.slice(0, 40))
           .groupby(["model", "answer", "parsed"]).size().rename("rows").reset_index()
           .sort_values(["model", "rows"], ascending=[True, False]).groupby("model").head(6))
display(answers.style.hide(axis="index"))

# %% [markdown]
# ## Fair proportion and confidence skew
#
# Per model, dataset, attribute and input variant; each value is the mean over prompts of
# the per-prompt measure, with the standard deviation over prompts (the paper's $\pm$).

# %%
summary = mcq.summarize(rows)
shown = summary.copy()
shown["fair proportion"] = [f"{m:.2f} ± {s:.2f}" for m, s in zip(summary.fair_mean, summary.fair_std)]
shown["confidence skew"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(summary.skew_mean, summary.skew_std)]
shown["invalid"] = summary["invalid_mean"].round(2)
display(shown[["model", "dataset", "attribute", "variant", "fair proportion", "confidence skew", "invalid",
               "n_items", "n_prompts"]].style.hide(axis="index"))

# %% [markdown]
# ### Three readings of the paper's confidence KL
#
# The paper reports its confidence as "a KL divergence" and, in its Table 2, tunes a
# temperature for it whose best value lies between 0.6 and 1.2. The words fit three
# measures, all computed from the same three option log-probabilities
# (`fairvlm.confidence`): the book's **skew** above (the two group options, renormalised,
# against uniform); a **fair-target** KL (the three-option distribution against the fair
# answer, $-\ln p_\text{fair}$); and a **counterfactual** KL (symmetric, between the rows
# shown an image of group A and of group B, for image inputs only). Tempering the options
# by $t$ moves each one differently. The skew can only fall as $t$ grows, so a sweep over
# 0.1 to 2.0 always picks the largest $t$: it cannot be the measure behind Table 2's
# interior temperatures. Below, the sweep's best $t$ for each measure on this run's rows,
# per model.

# %%
sweep_rows = []
for name, g in rows.groupby("model"):
    sw = confidence.temperature_sweep(g)
    for m in confidence.MEASURES:
        vals = sw[(sw["measure"] == m) & np.isfinite(sw["value"])]
        if vals.empty:
            sweep_rows.append({"model": name, "measure": m, "value at t=1": float("nan"), "best t": float("nan"),
                               "value at best t": float("nan"), "interior best t": False})
            continue
        t_best, v_best = confidence.best_temperature(sw, m)
        at1 = float(vals.loc[np.isclose(vals["t"], 1.0), "value"].iloc[0])
        sweep_rows.append({"model": name, "measure": m, "value at t=1": at1, "best t": t_best,
                           "value at best t": v_best,
                           "interior best t": bool(min(confidence.TEMPERATURES) < t_best < max(confidence.TEMPERATURES))})
kl_readings = pd.DataFrame(sweep_rows)
display(kl_readings.style.format(precision=3).hide(axis="index"))
_skew = kl_readings[kl_readings["measure"] == "skew"]
_at_max = _skew["best t"] == max(confidence.TEMPERATURES)
_interior = kl_readings[(kl_readings["measure"] == confidence.PAPER_MEASURE) & kl_readings["interior best t"]]
glue("kl_readings_sentence",
     ("On every model of this run the skew's best temperature is the largest one swept "
      f"({max(confidence.TEMPERATURES):g})" if _at_max.all() else
      "The skew's best temperature is the largest one swept on "
      f"{int(_at_max.sum())} of {len(_skew)} models of this run") + "; the "
     + confidence.PAPER_MEASURE.replace("_", "-") + " reading has an interior best temperature on "
     + f"{len(_interior)} of {int((kl_readings['measure'] == confidence.PAPER_MEASURE).sum())}"
     + ("." if len(_interior) else
        ", so no reading reproduces Table 2's interior optimum on this run, and the choice rests on the "
        "argument above, not on these rows (chapter 04 repeats the sweep on its own runs)."),
     display=False)
glue("paper_measure", confidence.PAPER_MEASURE.replace("_", "-"), display=False)

# %% [markdown]
# The book takes the {glue:text}`paper_measure` reading for Table 2 (chapter 04's
# temperature-scaling baseline), for the reason the module `fairvlm.confidence` sets out:
# of the three, it is the one whose minimum over $t$ can fall inside the swept range for a
# whole data set. {glue:text}`kl_readings_sentence`

# %% [markdown]
# ## Position or social group?
#
# The option order changes with the paraphrase, and a model may give part of its group
# mass to whichever group the question lists first. `fairvlm.mcq.order_balanced`
# separates the two per item: with $\ell = \ln p_A - \ln p_B$ on each prompt, the
# *social lean* is the mean of $\ell$ over the item's prompts (half of which list A first,
# so the position effect cancels), the *position lean* is the mean log-odds gained by the
# first-listed group, and the *order-balanced skew* is the confidence skew of the social
# lean alone. An item is *fair-majority* when at least half of its prompts are answered
# fair; the order-balanced paradox share is the share of those whose order-balanced skew
# still reaches the 2:1 threshold.
#
# One more confound stays: a model may prefer one option *word* whatever the label. So
# the social lean is split once more (`fairvlm.mcq.label_specific`): the *common lean* is
# its mean over the labels of a cell (model, dataset, attribute, input variant), the
# *label-specific lean* what is left, and the *label-specific skew* the confidence skew of
# that remainder alone. The content-free control measures the word preference directly:
# its social lean, on labels with no social content, is printed beside the common lean.
# The verdict below rests on the label-specific part.

# %%
items = mcq.label_specific(mcq.order_balanced(rows))
control_items = mcq.order_balanced(control_rows)
control_lean = control_items.groupby(["model", "attribute"])["social_lean"].mean().rename(
    "content-free lean (control)")
fair_major = items[items["fair_rate"] >= 0.5]
position = (items.groupby(["model", "dataset", "attribute"])
            .agg(**{"position lean (log-odds, first-listed)": ("position_lean", "mean"),
                    "|social lean| (log-odds)": ("social_lean", lambda x: x.abs().mean()),
                    "items leaning to A": ("social_lean", lambda x: (x > 0).mean()),
                    "common lean (mean over labels)": ("common_lean", "mean"),
                    "|label-specific lean| (log-odds)": ("lean_label_specific", lambda x: x.abs().mean()),
                    "items": ("item_id", "size"), "orders balanced": ("balanced", "all")})
            .join(fair_major.groupby(["model", "dataset", "attribute"])
                  .agg(**{"fair-majority items": ("item_id", "size"),
                          "order-balanced skew | fair-majority": ("balanced_skew", "mean"),
                          "label-specific skew | fair-majority": ("label_specific_skew", "mean"),
                          "order-balanced paradox share": ("balanced_skew",
                                                           lambda x: (x >= mcq.PARADOX_SKEW).mean()),
                          "label-specific paradox share": ("label_specific_skew",
                                                           lambda x: (x >= mcq.PARADOX_SKEW).mean())}))
            .reset_index()
            .join(control_lean, on=["model", "attribute"]))
display(position.style.format(precision=3).hide(axis="index"))

# %% [markdown]
# The paradox is a statement about single rows, so the next figure looks at rows. Left:
# the share $q_A$ of group A in the renormalised group distribution, for rows that
# answered fair and rows that named a group. A calibrated fair answer would sit at
# $q_A = 0.5$; the shaded band is the 2:1 threshold. Right: fair proportion against mean
# skew for every (model, dataset, attribute, variant) cell; the paradox is the upper right.

# %%
rows["answer kind"] = rows["parsed"].map({"fair": "fair answer", "a": "names a group",
                                          "b": "names a group", "invalid": "invalid"})
models_in = list(dict.fromkeys(rows["model"]))
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
ax = axes[0]
sns.histplot(data=rows[rows["answer kind"] != "invalid"], x="q_a", hue="answer kind", bins=np.linspace(0, 1, 21),
             stat="density", common_norm=False, element="step", ax=ax)
ax.axvspan(1 / 3, 2 / 3, color="grey", alpha=0.15, lw=0)
ax.set_xlabel("$q_A = p_A/(p_A+p_B)$  (A = men / Black people)")
ax.set_title("group lean of each row (all models)")
ax = axes[1]
sns.scatterplot(data=summary, x="fair_mean", y="skew_mean", hue="model", style="attribute", s=70, ax=ax)
ax.errorbar(summary["fair_mean"], summary["skew_mean"], xerr=summary["fair_std"], yerr=summary["skew_std"],
            fmt="none", ecolor="grey", alpha=0.5, lw=0.8)
ax.axhline(mcq.PARADOX_SKEW, color="grey", ls="--", lw=0.8)
ax.set_xlim(-0.02, 1.02)
ax.set_xlabel("fair proportion (answers)")
ax.set_ylabel("confidence skew (nats)")
ax.set_title("per model, dataset, attribute, variant")
ax.legend(fontsize=7, loc="upper left")
savefig(fig, f"{SLUG}_paradox")

# %% [markdown]
# ## Where the paradox is strongest
#
# The paradox share is the share of *fair* answers whose group distribution leans at
# least 2:1. The table ranks model and dataset by it; below it are the single rows with
# the strongest lean behind a fair answer.

# %%
marked = mcq.paradox_table(rows)
marked["lean_a"] = marked["lean"] == marked["attribute"].map(lambda a: mcq.GROUPS[a][0].value)
first_listed = marked["order"].map(lambda o: next(k for k in o.split(",") if k != "fair"))
marked["lean_first"] = np.where(first_listed == "a", marked["lean_a"], ~marked["lean_a"])
fair_rows = marked[marked["parsed"] == "fair"]
paradox = (marked.groupby(["model", "dataset", "attribute"])
           .apply(lambda g: pd.Series({
               "fair proportion": (g["parsed"] == "fair").mean(),
               "skew | fair answer": g.loc[g["parsed"] == "fair", "skew"].mean(),
               "skew | group answer": g.loc[g["parsed"].isin(["a", "b"]), "skew"].mean(),
               "paradox share of fair answers": g.loc[g["parsed"] == "fair", "paradox"].mean(),
               "leans to A among paradox rows": g.loc[g["paradox"], "lean_a"].mean(),
               "leans to the first-listed group": g.loc[g["paradox"], "lean_first"].mean(),
           }), include_groups=False).reset_index())
display(paradox.style.format(precision=3).hide(axis="index"))
top = marked[marked["paradox"]].head(12)
display(top[["model", "dataset", "label", "attribute", "variant", "prompt_id", "answer", "p_a", "p_b",
             "p_fair", "skew", "lean"]].style.format(precision=3).hide(axis="index"))

# %% [markdown]
# Over the labels, the items with the strongest lean behind fair answers, averaged over
# prompts (a label that shows up here under every paraphrase is a stable association, not
# a prompt accident):

# %%
by_label = (fair_rows.groupby(["model", "dataset", "attribute", "label"])
            .agg(fair_rows=("row_id", "size"), mean_skew=("skew", "mean"), mean_q_a=("q_a", "mean"))
            .reset_index().sort_values("mean_skew", ascending=False))
display(by_label.groupby("model").head(5).style.format(precision=3).hide(axis="index"))

# %% [markdown]
# ## Testbed: does the lean follow the planted bias?
#
# The testbed world plants, for each scenario, the share of each group among its training
# images (`data/testbed_bias_spec.yaml`). `testbed-llava` was trained on those images
# (chapter 00_testbed): its projector and a LoRA adapter on SmolLM2 learned to describe
# them, to answer who is in them, and to answer two-image "who is more likely to be ..."
# questions with the planted shares (and "both" for a fixed share of them, the spec's
# `questions.p_fair`). So its answers mix SmolLM2's text prior with what the tuning wrote
# in. If the planted bias reached the answers, the order-balanced social lean per
# scenario should rank like the planted skew (share of men, or of Black people, minus
# 1/2). This is the check no paper can run: we know the truth.

# %%
from scipy.stats import spearmanr

testbed_rows = rows[rows["dataset"] == "testbed"]
planted_rho = {}
if len(testbed_rows):
    from fairvlm.testbed import world_spec

    shares = world_spec().share_table().set_index("scenario")
    flat_world = {a: shares[f"{a}_skew"].nunique() <= 1 for a in mcq.ATTRIBUTES}
    rows_t = []
    testbed_items = items[items["dataset"] == "testbed"]
    for (attribute, variant), g in testbed_items.groupby(["attribute", "variant"]):
        lean = g.groupby("scenario")["social_lean"].mean()
        planted = shares.loc[lean.index, "gender_skew" if attribute == "gender" else "race_skew"]
        ok = lean.nunique() > 1 and planted.nunique() > 1
        test = spearmanr(lean, planted) if ok else None
        rho = float(test.statistic) if ok else float("nan")
        rows_t.append({"attribute": attribute, "variant": variant, "scenarios": len(lean),
                       "spearman(lean, planted)": rho, "p-value": float(test.pvalue) if ok else float("nan")})
        planted_rho[f"{attribute}_{variant}"] = rho
    planted_table = pd.DataFrame(rows_t)
    display(planted_table.style.format(precision=3).hide(axis="index"))
    image_rows = planted_table[planted_table["variant"] != "text"]
    follows = image_rows[(image_rows["spearman(lean, planted)"] > 0) & (image_rows["p-value"] < 0.05)]
    if all(flat_world.values()):
        verdict_text = ("In this world every scenario was planted with the same shares (nothing planted), so the "
                        "planted skew has no ranking and the rank correlation is undefined (shown as NaN): there is "
                        "no planted bias for the lean to follow, and this check has nothing to say.")
    elif image_rows["spearman(lean, planted)"].isna().all():
        verdict_text = ("The rank correlation is undefined in every image variant (NaN): the planted skew or the "
                        "lean is the same in every scenario, so there is no ranking to compare.")
    elif len(follows):
        rest = image_rows.drop(follows.index)
        verdict_text = ("The lean follows the planted skew (positive rank correlation, p < 0.05) in "
                        + ", ".join(f"{r.attribute}/{r.variant} (rho {r['spearman(lean, planted)']:.2f})"
                                    for _, r in follows.iterrows())
                        + ("; that is every image row." if rest.empty else
                           "; in " + ", ".join(f"{r.attribute}/{r.variant}" for _, r in rest.iterrows())
                           + " it does not."))
    else:
        verdict_text = (f"In none of the {len(image_rows)} image variants does the lean rank like the planted "
                        f"skew (largest rho {image_rows['spearman(lean, planted)'].max():.2f}; none positive "
                        "with p < 0.05)" + (f"; {int(image_rows['spearman(lean, planted)'].isna().sum())} undefined "
                                            "(a constant lean or planted skew)"
                                            if image_rows["spearman(lean, planted)"].isna().any() else "") + ".")
    text_rows = planted_table[planted_table["variant"] == "text"]
    if len(text_rows) and not all(flat_world.values()) and text_rows["spearman(lean, planted)"].notna().any():
        text_follow = text_rows[(text_rows["spearman(lean, planted)"] > 0) & (text_rows["p-value"] < 0.05)]
        verdict_text += (" Without any image (the text rows: " + ", ".join(
            f"{r.attribute} rho {r['spearman(lean, planted)']:.2f}, p {r['p-value']:.1g}" for _, r in text_rows.iterrows())
            + ") the lean " + ("also follows it, in " + " and ".join(text_follow["attribute"])
                               + ": the adapter tied the scenario's words themselves to the planted groups."
                               if len(text_follow) else
                               "does not follow it at p < 0.05: the association needs the images."))
    display(Markdown(f"**Reading.** {verdict_text}"))
else:
    planted_table = pd.DataFrame()
    display(Markdown("No testbed run in this profile."))

# %% [markdown]
# How to read the table: the association between a role and a group lives in the language
# model, and here the LoRA adapter is where the tuning could write it. Where the image
# rows rank like the planted skew, the tuning carried the data's statistics into the
# answers, as instruction tuning can do for the paper's models; where they do not, the
# lean is SmolLM2's own text prior, moved by what it reads off the image tokens. The
# text-only row asks without any image; it carries the prior plus whatever the adapter
# learned about the scenario words, and need not match the planted skew.

# %% [markdown]
# ## Paper vs this book
#
# Every verdict of the book follows one protocol (`fairvlm.verdicts.judge`): the effect
# is compared with a **control** measured in the same run by the same procedure with the
# causal ingredient removed, and the verdict rests on the 95% bootstrap interval of their
# difference. *Reproduced*: the interval lies beyond the claim's minimum size, and the
# effect itself points the claimed way. *Not reproduced*: the interval lies below that
# size, so the claim is ruled out. *Inconclusive*: neither (the table gives the minimum
# detectable effect at this sample size). *Not testable here*: a precondition fails.
#
# For finding 1 the effect is the **label-specific skew** of each *fair-majority* item
# (option order averaged out, the common word preference of its input variant removed,
# both computed within the fair-majority items). The control is that item's skew after
# each prompt's group log-odds are shuffled among the fair-majority items of the same
# input variant and prompt (`fairvlm.mcq.label_shuffle_pairs`, 200 shuffles): the same
# computation with the link between label and group cut, so what remains is what prompt
# noise makes on its own. The paired difference is bootstrapped over labels (the input
# variants of one label are one cluster). The paper's claim is a *hard* lean, so the
# minimum size is the 2:1 lean of a paradox row, {glue:text}`paradox_skew` nats: an
# interval wholly below it rules the claim out. The raw fair proportion and skew (which
# include the option-order and option-word preferences the paper may also have measured;
# it does not say how its options were ordered) are printed beside. Numbers from SmolLM2
# and the testbed are about those models, not the paper's. The claim column says what is
# tested: the paper's finding 1 speaks of fair answers over skewed probabilities, and the
# test narrows it to a lean that is specific to the label (a stereotype about the label,
# not a preference for an option word or position) and at least 2:1.
#
# **Positive control.** A test that cannot say "reproduced" says nothing when it does not.
# Below the table the same procedure runs on a copy of the first run's rows with a known
# label-specific lean written in (`fairvlm.mcq.plant_label_lean`: each label's group
# log-odds moved by $\pm\ln 8$, an 8:1 lean, sign drawn per label; answers unchanged). It
# must come out *reproduced*.

# %%
evidence = mcq.shuffled_label_null(rows, n_perm=200, seed=SEED)
paradox_pairs, verdict_rows = mcq.paradox_verdicts(rows, n_perm=200, seed=SEED)
for r in verdict_rows:
    cell = (summary.model == r["model"]) & (summary.dataset == r["dataset"]) & (summary.attribute == r["attribute"])
    sk = paradox[(paradox.model == r["model"]) & (paradox.dataset == r["dataset"])
                 & (paradox.attribute == r["attribute"])]
    r.update({"paper": "fair 0.39-0.69 (App. Tab. 1); KL 0.10-0.25 nats (App. Tab. 2)",
              "measure": "label-specific skew | fair-majority items (nats) vs the label-shuffled control",
              "fair proportion": float(summary.loc[cell, "fair_mean"].mean()),
              "raw skew | fair answer": float(sk["skew | fair answer"].iloc[0]) if len(sk) else float("nan")})
    for k in ("model", "dataset", "attribute"):
        r.pop(k)
verdicts = verdict_table(verdict_rows)
display(Markdown(f"*Provenance: {chapter.caption()}; {len(verdicts)} cells; effect and control paired per "
                 f"fair-majority item, BCa bootstrap over labels (2000 resamples), seed {SEED}; "
                 f"rule: {verdicts['rule'].iloc[0]}.*"))
display(verdicts.drop(columns=["rule", "asserts", "bias_claim"]).style.format(precision=4).hide(axis="index"))
# positive control: an 8:1 label-specific lean planted into the first run's rows
pc_model, pc_dataset = next(iter(runs))
pc_rows = mcq.plant_label_lean(rows[(rows["model"] == pc_model) & (rows["dataset"] == pc_dataset)], np.log(8.0),
                               seed=SEED)
_, pc_verdicts = mcq.paradox_verdicts(pc_rows, n_perm=200, seed=SEED)
positive_control = pd.DataFrame([{
    "cell": r["cell"], "planted lean": "±ln 8 (8:1) per label", "fair-majority items": r["fair-majority items"],
    "effect": r["verdict"].effect, "control": r["verdict"].control, "difference": r["verdict"].difference,
    "difference interval": f"[{r['verdict'].difference_interval[0]:.3f}, {r['verdict'].difference_interval[1]:.3f}]",
    "outcome": r["verdict"].verdict} for r in pc_verdicts])
display(Markdown("*Positive control (a planted lean; not a paper's claim):*"))
display(positive_control.style.format(precision=4).hide(axis="index"))
pc_ok = (positive_control["outcome"] == "reproduced")
glue("positive_control_sentence",
     f"With an 8:1 label-specific lean planted into the {pc_model} / {pc_dataset} rows, the same procedure reads "
     f"*reproduced* in {int(pc_ok.sum())} of {len(positive_control)} cells"
     + (", so the test can detect a lean of the claimed kind when there is one." if pc_ok.all() else
        f" (the others: {', '.join(positive_control.loc[~pc_ok, 'outcome'])}), so its negative verdicts are weaker "
        "evidence than they look."), display=False)

# %%
def _cell(model, dataset, attribute, col):
    s = summary[(summary.model == model) & (summary.dataset == dataset) & (summary.attribute == attribute)]
    return float(s[col].mean()) if len(s) else float("nan")


def _pos(model, dataset, attribute, col):
    s = position[(position.model == model) & (position.dataset == dataset) & (position.attribute == attribute)]
    return float(s[col].iloc[0]) if len(s) else float("nan")


invalid_rate = rows.groupby(["model", "dataset", "attribute"])["parsed"].apply(lambda x: float((x == "invalid").mean()))
embedded_key = next(iter(runs))
m0, d0 = embedded_key
glue("main_model", m0, display=False)
glue("main_dataset", d0, display=False)
glue("main_fair_gender", f"{_cell(m0, d0, 'gender', 'fair_mean'):.2f}", display=False)
glue("main_fair_race", f"{_cell(m0, d0, 'race', 'fair_mean'):.2f}", display=False)
glue("main_invalid", f"{float((rows[(rows.model == m0) & (rows.dataset == d0)]['parsed'] == 'invalid').mean()):.2f}",
     display=False)
glue("n_rows_total", len(rows), display=False)
glue("main_position_lean", f"{position[(position.model == m0) & (position.dataset == d0)]['position lean (log-odds, first-listed)'].mean():.2f}",
     display=False)


def _word_sentence(attribute: str) -> str:
    share = _pos(m0, d0, attribute, "items leaning to A")
    common = _pos(m0, d0, attribute, "common lean (mean over labels)")
    ctl = _pos(m0, d0, attribute, "content-free lean (control)")
    spec = _pos(m0, d0, attribute, "|label-specific lean| (log-odds)")
    a_name, b_name = (g.noun for g in mcq.GROUPS[attribute])
    toward = a_name if common > 0 else b_name
    one_sided = share >= 0.9 or share <= 0.1
    same_sign = np.sign(ctl) == np.sign(common) and abs(ctl) >= 0.5 * abs(common)
    text = (f"On {attribute}, {share:.0%} of the items lean toward {a_name}; the common lean over labels is "
            f"{common:+.2f} log-odds (toward {toward}) and the content-free control leans {ctl:+.2f}, "
            f"while the label-specific lean is {spec:.2f} in absolute value on average. ")
    if one_sided and same_sign:
        text += ("Almost every item leans the same way, as the content-free label does: most of the raw lean "
                 "is a preference for one option word, not a stereotype about the label.")
    elif one_sided:
        text += ("Almost every item leans the same way, but the content-free label does not share that lean "
                 "to the same extent, so the common lean is not only a word preference.")
    else:
        text += "The items lean both ways, so the raw lean is not one word preference."
    return text


glue("word_gender", _word_sentence("gender"), display=False)
glue("word_race", _word_sentence("race"), display=False)
rep_cells = verdicts.loc[verdicts["verdict"] == "reproduced", "cell"].tolist()
ruled_out = verdicts.loc[verdicts["verdict"] == "not reproduced", "difference"]
glue("verdict_sentence",
     (f"Against the label-shuffled control, with the 2:1 lean as the claim's size, finding 1 comes out "
      f"{tally(verdicts)} over the {len(verdicts)} cells"
      + (f" (reproduced: {'; '.join(rep_cells)})" if rep_cells else "")
      + (f"; where it is not reproduced the label-specific skew exceeds its control by "
         f"{ruled_out.min():.4f} to {ruled_out.max():.4f} nats, against the {mcq.PARADOX_SKEW:.3f} of a 2:1 lean"
         if len(ruled_out) else "")
      + "."), display=False)

# %% [markdown]
# ## Summary and what's next
#
# On {glue:text}`main_model` with the {glue:text}`main_dataset` labels, the fair
# proportion is {glue:text}`main_fair_gender` for gender and {glue:text}`main_fair_race`
# for race, with {glue:text}`main_invalid` of the answers invalid (kept in the
# denominator; all {glue:text}`n_rows_total` rows are in
# `results/01_fairness_paradox/rows.csv`). On average the first-listed group gains
# {glue:text}`main_position_lean` in log-odds, which the order-balanced lean removes.
# {glue:text}`word_gender` {glue:text}`word_race` {glue:text}`verdict_sentence`
# {glue:text}`positive_control_sentence`
# Chapter 02 follows the same rows through the layers with the logit lens, chapter 03
# through the two residual streams of each layer.
#
# ## References
#
# - Lan et al. (2025). RES-FAIR (RESidual Flow Adjustment for Inference Recalibration).
#   arXiv:2505.23798 (abstract; appendix A.2, C.1, Tables 1-2).
# - Fraser and Kiritchenko (2024). *Examining gender and racial bias in large
#   vision-language models using a novel dataset of parallel images (PAIRS).* EACL.
# - Howard et al. (2024). *SocialCounterfactuals: probing and mitigating intersectional
#   social biases in vision-language models with counterfactual examples.* CVPR.
# - Allal et al. (2025). *SmolLM2: when smol goes big.* arXiv:2502.02737.

# %%
headline = {
    "fair_proportion": {f"{m}|{d}|{a}": round(_cell(m, d, a, "fair_mean"), 4)
                        for (m, d) in runs for a in mcq.ATTRIBUTES},
    "confidence_skew": {f"{m}|{d}|{a}": round(_cell(m, d, a, "skew_mean"), 4)
                        for (m, d) in runs for a in mcq.ATTRIBUTES},
    "paradox_share_of_fair": {f"{r['model']}|{r['dataset']}|{r['attribute']}": r["paradox share of fair answers"]
                              for _, r in paradox.iterrows()},
    "testbed_spearman_lean_vs_planted": planted_rho,
    "order_balanced_paradox_share": {f"{r['model']}|{r['dataset']}|{r['attribute']}":
                                     r["order-balanced paradox share"] for _, r in position.iterrows()},
    "position_lean": {f"{r['model']}|{r['dataset']}|{r['attribute']}":
                      r["position lean (log-odds, first-listed)"] for _, r in position.iterrows()},
    "paradox_skew_threshold": mcq.PARADOX_SKEW,
    "lean_label_specific": {f"{r['model']}|{r['dataset']}|{r['attribute']}":
                            r["|label-specific lean| (log-odds)"] for _, r in position.iterrows()},
    "label_specific_skew_vs_null": {f"{r.model}|{r.dataset}|{r.attribute}": {
        "effect": r.effect, "interval": [r.lo, r.hi], "null": r.null, "null_interval": [r.null_lo, r.null_hi]}
        for r in evidence.itertuples(index=False)},
    "content_free_lean": {f"{m}|{a}": v for (m, a), v in control_lean.items()},
    "invalid_rate": {f"{m}|{d}|{a}": v for (m, d, a), v in invalid_rate.items()},
    "max_new_tokens": mcq.MAX_NEW_TOKENS,
    "verdicts": dict(zip(verdicts["cell"], verdicts["verdict"])),
    "verdict_differences": {c: {"effect": e, "control": k, "difference": d, "interval": iv} for c, e, k, d, iv in
                            zip(verdicts["cell"], verdicts["effect"], verdicts["control"], verdicts["difference"],
                                verdicts["difference interval"])},
}
save_results(
    SLUG, params=P, headline=headline, provenance=chapter.provenance,
    tables={"rows": rows.drop(columns=["answer kind"]), "items": items, "summary": summary,
            "paradox": paradox, "position": position, "control_rows": control_rows,
            "verdicts": verdicts, "testbed_planted": planted_table, "label_specific_null": evidence,
            "paradox_pairs": paradox_pairs, "positive_control": positive_control,
            "kl_readings": kl_readings},
)
