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
# # Layer-wise fluctuation: where fairness peaks and where it erodes
#
# ## Overview
#
# The second RES-FAIR finding (Lan et al., 2025, abstract, finding 2; main-text Figure 4
# and appendix Figure 6 for race on SocialCounterfactuals) is that fairness is not spread
# evenly over the depth of a model: read layer by layer, the model's preference for the
# fair option *peaks in intermediate layers* and is *eroded in the final layers*. The
# appendix gives the curves only as figures, so the claim we can check is its shape:
# an interior peak, and a drop from the peak to the output.
#
# The reading tool is the logit lens (nostalgebraist, 2020): take the residual stream at
# some depth, pass it through the model's own final norm and unembedding, and read the
# next-token distribution the model would produce if it stopped there. This chapter reads
# the three options of the multiple-choice task of chapter 01 at every depth of every row.
#
# ## Prerequisites and time to run
#
# The same runs as chapter 01 (same parameters), whose forward passes are cached: after
# chapter 01 this chapter took 16 seconds on 2 CPU cores in a whole `make book` on
# 2026-12-07 (earlier runs: `benchmarks/TIMINGS.md`); otherwise it pays for the passes
# itself (about 4 minutes embedded). `paper` needs what chapter 01 needs.
#
# ## Parameters
#
# `MIN_OPTION_MASS`: when locating the peak, only depths where the lens gives the three
# options at least this much probability mass in total (mean over rows) count: a tenth by
# default. Below that the lens reads little about the options, and a "fair share" that
# is the ratio of a few thousandths tells nothing about fairness. The other parameters
# are chapter 01's.

# %% tags=["parameters"]
PROFILE = "embedded"
SEED = 0
DTYPE = "bfloat16"
TESTBED = True
MIN_OPTION_MASS = 0.1

# %%
from fairvlm import lens
from fairvlm.params import check_range

P = lens.check_chapter_params(PROFILE=PROFILE, SEED=SEED, DTYPE=DTYPE, TESTBED=TESTBED,
                              MIN_OPTION_MASS=MIN_OPTION_MASS)
_ = check_range("MIN_OPTION_MASS", MIN_OPTION_MASS, 0.0, 1.0)

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

import fairvlm
from fairvlm import hooks, lens, mcq, models
from fairvlm.plotting import savefig, set_theme
from fairvlm.results import save_results
from fairvlm.verdicts import tally, verdict_table

fairvlm.seed_everything(SEED)
set_theme()
SLUG = "02_layer_fluctuation"

# %% [markdown]
# ## Depths and readings
#
# A decoder layer $l$ adds two writes to the residual stream: attention, then the MLP.
# We read the lens at $2L + 1$ depths: before each layer (`resid_pre.l`, the paper's
# residual $\Delta_1$ of that layer), between its attention and its MLP (`resid_mid.l`,
# $\Delta_2$), and after the last layer (`resid_post`), where the lens *is* the model's
# output. At each depth and for each row we read the option probabilities
# $p_A, p_B, p_\text{fair}$ from the lens distribution (same rule as chapter 01) and
# summarise them as:
#
# - **lens fair proportion**: the share of rows whose most probable option at that depth is
#   the fair one. It is the per-layer counterpart of the fair proportion of answers;
# - **fair share** $p_\text{fair}/(p_A + p_B + p_\text{fair})$, averaged over rows;
# - **confidence skew** of $(p_A, p_B)$, as in chapter 01;
# - **option mass** $p_A + p_B + p_\text{fair}$: how much the lens reads the options at all.
#
# Each curve is the mean over prompts of the per-prompt mean over rows, with the standard
# deviation over prompts as a band.
#
# **Control.** Chapter 01's content-free questions ("between men and women, who is more
# likely to breathe air?") offer the same three options with no social content: "both"
# is simply right. They are read the same way, so a rise and fall of the fair share that
# also happens on them is a property of the lens and the option word, not of fairness.

# %%
chapter = lens.chapter_runs(PROFILE, dtype=DTYPE, testbed=TESTBED)
runs, runs_spec = chapter.runs, chapter.specs
layer_rows = pd.concat([lens.layer_frame(c) for c in runs.values()], ignore_index=True)
control_layers = pd.concat([lens.layer_frame(c) for c in chapter.controls.values()], ignore_index=True)
n_depths = layer_rows.groupby("model")["depth"].max()
layer_rows["rel_depth"] = layer_rows["depth"] / layer_rows["model"].map(n_depths)
summary = lens.layer_summary(layer_rows)
summary["rel_depth"] = summary["depth"] / summary["model"].map(n_depths)
control_summary = lens.layer_summary(control_layers, by=("model", "attribute"))
control_summary["rel_depth"] = control_summary["depth"] / control_summary["model"].map(n_depths)
display(chapter.table.style.hide(axis="index"))

# %% [markdown]
# What the lens sees for one row, at a few depths: the top next tokens of the first row
# of the first run (the prompt is in chapter 01), to compare with the option mass in the
# figure below: where the option words are not among the top tokens, the lens reads
# little about the question.

# %%
first_key = next(iter(runs))
first = runs[first_key]
if first_key[0] not in models.PAPER_MODELS:
    kw = {"size": next(s.size for s in runs_spec if s.model == first_key[0])} if first_key[0].startswith("testbed") else {}
    if DTYPE != "auto":
        kw["dtype"] = getattr(torch, DTYPE)
    lm = models.load(first_key[0], **kw)
    L = first.n_layers
    picks = sorted({0, L // 2, (3 * L) // 4, L - 1})
    streams = np.stack([first.stream("resid_pre", l)[0] for l in picks] + [first.stream("resid_post", L - 1)[0]])
    tops = hooks.logit_lens_top(lm, torch.from_numpy(streams), k=4)
    display(Markdown(f"Row `{first.table['row_id'][0]}`, answer: *{first.table['answer'][0]}*"))
    display(pd.DataFrame({"depth": [f"resid_pre.{l}" for l in picks] + [f"resid_post.{L - 1} (output)"],
                          "top tokens (probability)": [", ".join(f"{t!r} {p:.2f}" for t, p in row) for row in tops]})
            .style.hide(axis="index"))
else:
    display(Markdown("(Skipped for paper models: it would load the model once more.)"))

# %% [markdown]
# ## Fairness across the layers
#
# One line per model and dataset; depth is relative (0 = embedding, 1 = output) so models
# of different depth share an axis. Solid where the options get at least
# `MIN_OPTION_MASS` of the lens distribution, dotted where the lens barely reads them
# (there the ranking of the options is noise); black dashed: the content-free control of
# the first model. The grey band marks the last tenth of the layers, the range the paper
# takes its residual vectors from (chapter 03).

# %%
metrics = [("fair_share", "fair share"), ("lens_fair", "lens fair proportion"),
           ("skew", "confidence skew (nats)"), ("option_mass", "option mass")]
attrs = list(mcq.ATTRIBUTES)
fig, axes = plt.subplots(len(metrics), len(attrs), figsize=(11, 10), sharex=True, squeeze=False)
for j, attribute in enumerate(attrs):
    for i, (m, label) in enumerate(metrics):
        ax = axes[i, j]
        for (name, dataset), g in summary[summary.attribute == attribute].groupby(["model", "dataset"], sort=False):
            g = g.sort_values("depth")
            if m == "option_mass":
                ax.plot(g["rel_depth"], g[f"{m}_mean"], label=f"{name} / {dataset}", lw=1.2)
                continue
            readable = g["option_mass_mean"] >= MIN_OPTION_MASS
            mean = g[f"{m}_mean"].where(readable)
            line, = ax.plot(g["rel_depth"], mean, label=f"{name} / {dataset}", lw=1.4)
            ax.plot(g["rel_depth"], g[f"{m}_mean"].where(~readable), color=line.get_color(), lw=0.6,
                    alpha=0.35, ls=":")
            ax.fill_between(g["rel_depth"], mean - g[f"{m}_std"], mean + g[f"{m}_std"],
                            color=line.get_color(), alpha=0.15, lw=0)
        cg = control_summary[(control_summary.attribute == attribute)
                             & (control_summary.model == next(iter(runs))[0])].sort_values("depth")
        if len(cg):
            ax.plot(cg["rel_depth"], cg[f"{m}_mean"], color="black", ls="--", lw=1.0,
                    label=f"{cg['model'].iloc[0]} / content-free control")
        ax.axvspan(0.9, 1.0, color="grey", alpha=0.12, lw=0)
        if m == "option_mass":
            ax.set_yscale("log")
            ax.set_ylim(1e-12, 2)
            ax.axhline(MIN_OPTION_MASS, color="grey", ls=":", lw=0.8)
        ax.set_ylabel(label)
        if i == 0:
            ax.set_title(attribute)
        if i == len(metrics) - 1:
            ax.set_xlabel("relative depth (0 = embedding, 1 = output)")
axes[0, 0].legend(fontsize=7)
savefig(fig, f"{SLUG}_curves")

# %% [markdown]
# ## Peak and erosion
#
# For each model, dataset and attribute: the depth where the mean fair share is highest
# (among depths with option mass at least `MIN_OPTION_MASS`), its value, the value at the
# output, and the *erosion* (peak minus output); `peak_rel` is the peak's relative depth
# and `readable_from` the first relative depth the lens reads the options at. The fair
# share is the primary measure because it is continuous; the lens fair proportion (which
# option wins) saturates when one option dominates, and its peak and erosion are in the
# `_won` columns. The `control_*` columns read the content-free questions at the same
# depth: their fair share there, at the output, and the drop between (`control_erosion`).

# %%
pe = lens.peak_erosion(summary, metric="fair_share_mean", min_mass=MIN_OPTION_MASS)
pe_won = lens.peak_erosion(summary, metric="lens_fair_mean", min_mass=MIN_OPTION_MASS)
readable_from = (summary[summary["option_mass_mean"] >= MIN_OPTION_MASS]
                 .groupby(["model", "dataset", "attribute"])["rel_depth"].min().rename("readable_from"))
pe = pe.merge(readable_from.reset_index(), on=["model", "dataset", "attribute"], how="left")


def _control_at(model, attribute, depth):
    """The content-free control's mean fair share at ``depth`` and at the output."""
    c = control_summary[(control_summary.model == model) & (control_summary.attribute == attribute)]
    if c.empty:
        return float("nan"), float("nan")
    c = c.sort_values("depth")
    at = c.loc[c["depth"] == depth, "fair_share_mean"]
    return (float(at.iloc[0]) if len(at) else float("nan")), float(c["fair_share_mean"].iloc[-1])


_ctl = [_control_at(r.model, r.attribute, r.peak_depth) for r in pe.itertuples()]
pe["control_at_peak"] = [c[0] for c in _ctl]
pe["control_final"] = [c[1] for c in _ctl]
pe["control_erosion"] = pe["control_at_peak"] - pe["control_final"]
pe_both = pe.merge(pe_won[["model", "dataset", "attribute", "peak_rel", "peak", "final", "erosion"]],
                   on=["model", "dataset", "attribute"], suffixes=("", "_won"))
display(pe_both.style.format(precision=3).hide(axis="index"))

# %% [markdown]
# Where the inputs have images (testbed and paper runs), the same per input variant: does
# an image move the peak or deepen the erosion?

# %%
variant_summary = lens.layer_summary(layer_rows, by=("model", "dataset", "attribute", "variant"))
pe_variant = lens.peak_erosion(variant_summary, by=("model", "dataset", "attribute", "variant"),
                               metric="fair_share_mean", min_mass=MIN_OPTION_MASS)
multi = pe_variant.groupby(["model", "dataset"])["variant"].transform("nunique") > 1
if multi.any():
    display(pe_variant[multi].style.format(precision=3).hide(axis="index"))
    vs = variant_summary.merge(pe_variant[multi][["model", "dataset"]].drop_duplicates(), on=["model", "dataset"])
    vs["rel_depth"] = vs["depth"] / vs["model"].map(n_depths)
    vs = vs[vs["option_mass_mean"] >= MIN_OPTION_MASS]
    grid = sns.relplot(data=vs, x="rel_depth", y="fair_share_mean", hue="variant", col="attribute",
                       row="model", kind="line", height=2.8, aspect=1.5)
    grid.set_axis_labels("relative depth", "fair share")
    savefig(grid.figure, f"{SLUG}_variants")
else:
    display(Markdown("Every run of this profile is text-only."))

# %% [markdown]
# ## Paper vs this book
#
# One claim per model, dataset and attribute, decided by the book's protocol
# (`fairvlm.verdicts.judge`, through `fairvlm.lens.fluctuation_verdict`): the effect is
# compared with a control measured the same way in the same run, and the verdict rests on
# the bootstrap interval of their difference.
#
# - **Effect: the peak's height.** The labels are split in two. On one half the peak
#   depth is chosen: the depth inside the band of relative depths 0.1-0.8 where the lens
#   reads the options (mass at least `MIN_OPTION_MASS`) and the fair share is highest. On
#   the other half, which took no part in the choice, each item's height is its fair share
#   at that depth minus its fair share at the output.
# - **Control: the same height on the content-free questions**, at the same depth. Their
#   right answer is "both"; a rise and fall they share is the lens's and the option
#   word's, not fairness.
# - **Rule:** *reproduced* when the 95% interval of (height - control height), resampled
#   over labels, lies above 0.05 (five points of fair share) and the height itself is
#   positive; *not reproduced* when that interval lies below 0.05; *inconclusive*
#   otherwise. *Not testable here* when no readable depth lies in the band, when the chosen
#   peak is the first depth the lens reads at all (nothing before it can be seen, so it
#   is no peak), or when the control has fewer than {glue:text}`min_control_labels`
#   labels.

# %%
BAND = (0.1, 0.8)
tests, verdict_rows = [], []
for (name, dataset, attribute), g in layer_rows.groupby(["model", "dataset", "attribute"], sort=False):
    ctrl = control_layers[(control_layers.model == name) & (control_layers.attribute == attribute)]
    details, v = lens.fluctuation_verdict(g, ctrl, min_mass=MIN_OPTION_MASS, band=BAND, seed=SEED)
    tests.append({"model": name, "dataset": dataset, "attribute": attribute, **details})
    verdict_rows.append({"cell": f"{name}, {dataset}, {attribute}", "paper": "shape only (Fig. 4, App. Fig. 6)",
                         "peak depth (rel.)": details["peak_rel"], "control labels": details["n_control_labels"],
                         "verdict": v})
peak_tests = pd.DataFrame(tests)
verdicts = verdict_table(verdict_rows)
glue("min_control_labels", lens.MIN_CONTROL_LABELS, display=False)
display(Markdown(f"*Provenance: {chapter.caption()}; control: the content-free labels of "
                 f"`fairvlm.mcq.CONTROL_LABELS`; peak chosen on alternate labels, scored on the others; BCa "
                 f"bootstrap over labels, seed {SEED}; rule: {verdicts['rule'].iloc[0]}.*"))
display(verdicts.drop(columns=["rule", "asserts", "bias_claim"]).style.format(precision=3).hide(axis="index"))

# %% [markdown]
# These are statements about the models named in the table, not measurements of the
# paper's models. Where the lens starts reading the options late (the `readable_from`
# column above), a logit lens cannot see an earlier peak, so a late peak there is as much
# a limit of the instrument as a property of the model.

# %%
main = pe.iloc[0]
glue("main_run", f"{main['model']} / {main['dataset']} / {main['attribute']}", display=False)
glue("main_peak", f"{main['peak']:.2f}", display=False)
glue("main_peak_rel", f"{main['peak_rel']:.2f}", display=False)
glue("main_final", f"{main['final']:.2f}", display=False)
_same = pe[np.isfinite(pe["control_erosion"]) & (pe["control_erosion"] >= pe["erosion"] - 0.05)]
glue("control_shape_sentence",
     f"The content-free questions, whose right answer is always \"both\", trace the same rise and fall: at that "
     f"depth their fair share is {main['control_at_peak']:.2f} and at the output {main['control_final']:.2f}, an "
     f"erosion of {main['control_erosion']:.2f} against the social labels' {main['erosion']:.2f}. Over all "
     f"{len(pe)} cells the control erodes at least as much (within 0.05) in {len(_same)}"
     + (", so the peak-and-erosion shape itself is a property of the lens and the option words, not of social "
        "knowledge; only a height beyond the control's could speak for the paper's finding, and that is what "
        "the verdicts test." if len(_same) * 2 > len(pe) else
        "; where it does not, the verdicts test whether the difference is beyond the claim's size."),
     display=False)
n_cells = len(peak_tests)
glue("n_cells", n_cells, display=False)
glue("fluctuation_tally", tally(verdicts), display=False)
why_counts = verdicts.loc[verdicts["verdict"] == "not testable here", "why"].str.split(":").str[0].value_counts()
glue("untestable_sentence",
     ("Where it is not testable the reason is: " + "; ".join(f"{why} ({n} cell{'s' if n > 1 else ''})"
                                                               for why, n in why_counts.items()) + "."
      if len(why_counts) else "Every cell could be tested."), display=False)

# %% [markdown]
# ## Summary and what's next
#
# For {glue:text}`main_run` the fair share peaks at {glue:text}`main_peak` at relative
# depth {glue:text}`main_peak_rel` (among depths where the options hold enough of the
# lens mass) and ends at {glue:text}`main_final` at the output.
# {glue:text}`control_shape_sentence` Over the
# {glue:text}`n_cells` model/dataset/attribute cells, a peak whose height over the output
# exceeds the content-free control's is {glue:text}`fluctuation_tally`.
# {glue:text}`untestable_sentence` The
# logit lens is a biased instrument in early layers (the unembedding was trained for the
# last layer), which is why the peak search ignores depths where the options barely
# register; a tuned lens (Belrose et al., 2023) would read the early layers better.
# Chapter 03 splits each layer into its two residual streams and the two writes between
# them, to see which part of a layer pulls toward a group.
#
# ## References
#
# - Lan et al. (2025). RES-FAIR (RESidual Flow Adjustment for Inference Recalibration).
#   arXiv:2505.23798 (abstract; appendix C.4, Figure 6).
# - nostalgebraist (2020). *interpreting GPT: the logit lens.* LessWrong.
# - Belrose et al. (2023). *Eliciting latent predictions from transformers with the tuned
#   lens.* arXiv:2303.08112.

# %%
save_results(
    SLUG, params=P,
    headline={
        "fair_share_peak": {f"{r.model}|{r.dataset}|{r.attribute}": {
            "peak": r.peak, "peak_rel": r.peak_rel, "final": r.final, "erosion": r.erosion,
            "readable_from": r.readable_from} for r in pe.itertuples()},
        "peak_tests": {f"{r.model}|{r.dataset}|{r.attribute}": {
            "peak_depth": int(r.peak_depth), "peak_rel": r.peak_rel, "peak": r.peak, "final": r.final,
            "control_peak": r.control_peak, "control_final": r.control_final,
            "n_control_labels": int(r.n_control_labels), "testable": bool(r.testable)}
            for r in peak_tests.itertuples(index=False)},
        "verdicts": {f"{r['claim']} | {r['cell']}": r["verdict"] for _, r in verdicts.iterrows()},
        "n_reproduced": int((verdicts["verdict"] == "reproduced").sum()), "n_verdicts": len(verdicts),
        "min_option_mass": MIN_OPTION_MASS,
    },
    provenance=chapter.provenance,
    tables={"layer_rows": layer_rows[["row_id", "model", "dataset", "attribute", "variant", "prompt_id",
                                      "depth", "layer", "site", "lp_a", "lp_b", "lp_fair", "lens_fair",
                                      "fair_share", "skew", "option_mass"]],
            "summary": summary, "peak_erosion": pe_both, "peak_erosion_by_variant": pe_variant,
            "verdicts": verdicts, "peak_tests": peak_tests, "control_summary": control_summary},
)
