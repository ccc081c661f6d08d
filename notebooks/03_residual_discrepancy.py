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
# # Residual discrepancy: which part of a layer pulls toward a group
#
# ## Overview
#
# The third RES-FAIR finding (Lan et al., 2025, abstract, finding 3) is that inside a
# single layer the residual streams disagree: some carry the model toward the fair
# answer, others toward a group. Appendix B.1 (eqs. 1-2, Figure 2) names two residuals per
# layer: $\Delta_1$, the stream entering the layer, and $\Delta_2 = \Delta_1 +$ the
# attention output, the stream entering the MLP; the layer's output is $\Delta_2 +$ the
# MLP output. RES-FAIR's mitigation (chapter 04) then takes a *biased* and a *fair*
# residual vector from the last tenth of the layers (appendix C.1), projects the hidden
# state away from the first and amplifies the second, with vectors fitted on one dataset
# and applied to the other.
#
# This chapter measures the discrepancy layer by layer, extracts biased and fair
# directions with a stated rule, checks that they carry over to a dataset they were not
# fitted on, and saves them for chapter 04.
#
# ## Prerequisites and time to run
#
# The same cached runs as chapters 01 and 02 (same parameters); about 2.5 minutes on 2 CPU
# cores with the forward passes cached, measured on 2026-12-07 on a machine shared with
# other jobs (load average about 4), since the transfer verdicts recompute every AUROC in
# 1000 resamples and fit a content-free control (71 seconds before that, in a whole
# `make book`; `benchmarks/TIMINGS.md`). `paper` needs what chapter 01 needs and loads each paper model
# once more for the lens check of the directions.
#
# ## Parameters
#
# `LAMBDA1` and `LAMBDA2` are the weights of the RES-FAIR update
# $v' = v - \lambda_1 P_\text{bias} v$, $v_\text{new} = v' + \lambda_2 P_\text{fair} v'$
# (0.2 and 0.2 in the paper's appendix C.1), used here only for a lens check.

# %% tags=["parameters"]
PROFILE = "embedded"
SEED = 0
DTYPE = "bfloat16"
TESTBED = True
LAMBDA1 = 0.2
LAMBDA2 = 0.2

# %%
from fairvlm import lens
from fairvlm.params import check_range

P = lens.check_chapter_params(PROFILE=PROFILE, SEED=SEED, DTYPE=DTYPE, TESTBED=TESTBED,
                              LAMBDA1=LAMBDA1, LAMBDA2=LAMBDA2)
_ = check_range("LAMBDA1", LAMBDA1, 0.0, 1.0)
_ = check_range("LAMBDA2", LAMBDA2, 0.0, 1.0)

# %% [markdown]
# ## Imports

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from IPython.display import Markdown, display
from matplotlib.patches import Rectangle
from myst_nb import glue

import fairvlm
from fairvlm import lens, mcq, models
from fairvlm.paths import display_path
from fairvlm.plotting import savefig, set_theme
from fairvlm.results import save_results
from fairvlm.verdicts import tally, verdict_table

fairvlm.seed_everything(SEED)
set_theme()
SLUG = "03_residual_discrepancy"

# %% [markdown]
# ## Two readings of "residual"
#
# The appendix's equations fix the *streams*: $\Delta_1$ of layer $l$ is `resid_pre.l`
# and $\Delta_2$ is `resid_mid.l`. But "which residual carries bias" can also be read as
# which *write* into the stream carries it: `attn_out.l` (what attention adds,
# $\Delta_2 - \Delta_1$) or `mlp_out.l` (what the MLP adds). We compute both:
#
# - **streams**: the lens fair margin $\ln p_\text{fair} - \ln(p_A + p_B)$ of
#   $\Delta_1$ and of $\Delta_2$ (positive: the fair option outweighs both groups);
# - **writes**: the *push* of each sublayer, i.e. how much adding its write changes the
#   lens fair margin of the stream (positive: toward fair). The pushes of all sublayers
#   add up to the change from the embedding to the output.
#
# The heatmaps show both. The directions use the writes as the primary reading, because
# the two streams of one layer differ by a single write and share everything else, so
# directions taken from them can come out nearly parallel or antiparallel (the cosines
# are reported below), while the two writes are produced by different modules and can
# point in different directions. Both readings get verdicts.

# %%
chapter = lens.chapter_runs(PROFILE, dtype=DTYPE, testbed=TESTBED)
runs, runs_spec = chapter.runs, chapter.specs
res_rows = pd.concat([lens.residual_frame(c) for c in runs.values()], ignore_index=True)
res_summary = lens.residual_summary(res_rows)
n_layers = {m: c.n_layers for (m, _), c in runs.items()}
tenth = {m: lens.last_tenth(L) for m, L in n_layers.items()}
display(pd.DataFrame([{"model": m, "layers": L, "last tenth": f"{tenth[m][0]}..{tenth[m][-1]}"}
                      for m, L in n_layers.items()]).style.hide(axis="index"))

# %% [markdown]
# ## Which residual pushes where
#
# For every run, mean over rows per layer. Top two rows of each panel: the streams (lens
# fair margin of $\Delta_1$ and $\Delta_2$); bottom two: the writes (push of attention and
# of the MLP). Blue is toward fair, red toward a group. The black frame marks the last
# tenth of the layers. The colour scale is clipped at the 95th percentile of the layers
# after the first (the embedding's lens reading is extreme and would swamp it). Where the
# lens gives the options little mass (chapter 02's option-mass curve), the margins are
# ratios of tiny probabilities and say little.

# %%
for (name, dataset), _col in runs.items():
    fig, axes = plt.subplots(2, 2, figsize=(12, 4.2), squeeze=False,
                             gridspec_kw={"hspace": 0.55, "wspace": 0.15})
    for j, attribute in enumerate(mcq.ATTRIBUTES):
        g = res_summary[(res_summary.model == name) & (res_summary.dataset == dataset)
                        & (res_summary.attribute == attribute)].sort_values("layer")
        for i, (cols, labels, title) in enumerate([
                (["d1_margin", "d2_margin"], ["Δ1 resid_pre", "Δ2 resid_mid"], "streams: lens fair margin"),
                (["push_attn", "push_mlp"], ["attn_out", "mlp_out"], "writes: push toward fair")]):
            ax = axes[i, j]
            data = g[cols].T.to_numpy()
            lim = float(np.nanpercentile(np.abs(data[:, 1:]), 95)) or 1.0   # layer 0 would swamp the scale
            sns.heatmap(data, ax=ax, cmap="RdBu", center=0, vmin=-lim, vmax=lim,
                        yticklabels=labels, xticklabels=5, cbar_kws={"shrink": 0.8})
            start = tenth[name][0]
            ax.add_patch(Rectangle((start, 0), n_layers[name] - start, 2, fill=False, lw=1.5, ec="black"))
            ax.set_title(f"{attribute}: {title}", fontsize=9)
            ax.set_xlabel("layer" if i == 1 else "")
    fig.suptitle(f"{name} on {dataset}", fontsize=10)
    savefig(fig, f"{SLUG}_heatmap_{name.replace('/', '_')}_{dataset}")

# %% [markdown]
# ## Conflict inside a layer
#
# A layer is *in conflict* when its two writes push in opposite directions (one toward
# fair, one toward a group); for the streams, when $\Delta_1$ and $\Delta_2$ fall on
# opposite sides (one margin positive, the other negative). Per row and layer, then
# averaged: the share of (row, layer) pairs in conflict, over all layers and over the last
# tenth, and which sublayer is the fair one in the last tenth (layer means).

# %%
res_rows["write_conflict"] = np.sign(res_rows["push_attn"]) != np.sign(res_rows["push_mlp"])
res_rows["stream_conflict"] = np.sign(res_rows["d1_margin"]) != np.sign(res_rows["d2_margin"])
res_rows["in_last_tenth"] = [l in tenth[m] for m, l in zip(res_rows["model"], res_rows["layer"])]
conf = []
for (name, dataset, attribute), g in res_rows.groupby(["model", "dataset", "attribute"], sort=False):
    last = g[g["in_last_tenth"]]
    means = last.groupby("layer")[["push_attn", "push_mlp"]].mean()
    conf.append({
        "model": name, "dataset": dataset, "attribute": attribute,
        "write conflict (all layers)": g["write_conflict"].mean(),
        "write conflict (last tenth)": last["write_conflict"].mean(),
        "stream conflict (last tenth)": last["stream_conflict"].mean(),
        "last-tenth layers with opposite mean pushes": float((np.sign(means.push_attn) != np.sign(means.push_mlp)).mean()),
        "fair write in last tenth": ", ".join(f"{l}:{'attn' if r.push_attn > r.push_mlp else 'mlp'}"
                                              for l, r in means.iterrows()),
        "mean push attn (last tenth)": means["push_attn"].mean(),
        "mean push mlp (last tenth)": means["push_mlp"].mean(),
    })
conflict = pd.DataFrame(conf)
display(conflict.style.format(precision=3).hide(axis="index"))

# %% [markdown]
# ## Biased and fair directions
#
# **Rule** (ours; the paper gives no formula). The rows of the fitting data are split by
# the output's fair margin into the bottom third (*biased rows*) and the top third
# (*fair rows*). At each layer of the last tenth, the sublayer whose mean push over all
# fitting rows is lower is the *biased write*, the other the *fair write*, and
#
# $$u_\text{bias} = \mathrm{unit}\big(\bar x^\text{biased rows}_\text{biased write} -
#   \bar x^\text{fair rows}_\text{biased write}\big), \qquad
#   u_\text{fair} = \mathrm{unit}\big(\bar x^\text{fair rows}_\text{fair write} -
#   \bar x^\text{biased rows}_\text{fair write}\big),$$
#
# with $x$ the write at the last prompt token. The streams reading is fitted the same way
# from $\Delta_1$ / $\Delta_2$ and saved beside it.
#
# **Cross-dataset.** As in the paper (appendix C.1), directions fitted on one dataset are
# evaluated on another: SocialCounterfactuals to PAIRS and back for a model with both. A
# model with a single dataset (the testbed) is fitted on half of its labels and evaluated
# on the other half. The evaluation asks whether a direction still separates the *other*
# dataset's own biased and fair rows: the AUROC of the projection of the biased write on
# $u_\text{bias}$ (biased rows should score higher) and of the fair write on
# $u_\text{fair}$ (fair rows should score higher); 0.5 is chance.

# %%
pairs_ = lens.cross_pairs(runs)
evals, saved, cos_rows, fitted = [], [], [], {}
for pr in pairs_:
    dirs = lens.fit_directions(pr["fit_col"])
    fitted[(pr["model"], pr["fit"])] = dirs
    dirs.meta.update({"fit": pr["fit"], "eval": pr["eval"], "profile": PROFILE, "dtype": DTYPE})
    path = dirs.save(lens.directions_path(pr["model"], pr["fit"]))
    saved.append(display_path(path))
    ev = lens.evaluate_directions(dirs, pr["eval_col"]).assign(model=pr["model"], fit=pr["fit"], eval=pr["eval"])
    evals.append(ev)
    for l in dirs.layers:
        cos_rows.append({"model": pr["model"], "fit": pr["fit"], "layer": l,
                         "cos(bias, fair) writes": float(dirs.bias[l] @ dirs.fair[l]),
                         "cos(bias, fair) streams": float(dirs.streams["bias"][l] @ dirs.streams["fair"][l]),
                         "cos(writes, streams) bias": float(dirs.bias[l] @ dirs.streams["bias"][l])})
direction_eval = pd.concat(evals, ignore_index=True)
cosines = pd.DataFrame(cos_rows)
display(direction_eval[["model", "fit", "eval", "layer", "bias_site", "fair_site", "auroc_bias", "auroc_fair",
                        "cos_bias_fair"]].style.format(precision=3).hide(axis="index"))
display(Markdown("Saved: " + ", ".join(f"`{p}`" for p in saved)))

# %% [markdown]
# Cosines between the directions (a projection cannot tell $u$ from $-u$, so where the
# biased and fair directions are close to parallel or antiparallel, removing one and
# amplifying the other largely cancel):

# %%
display(cosines.groupby(["model", "fit"])[["cos(bias, fair) writes", "cos(bias, fair) streams",
                                            "cos(writes, streams) bias"]].mean()
        .style.format(precision=3))
cw, cs = cosines["cos(bias, fair) writes"].mean(), cosines["cos(bias, fair) streams"].mean()
glue("cosine_sentence",
     f"On average |cos(u_bias, u_fair)| is {abs(cw):.2f} for the writes and {abs(cs):.2f} for the streams"
     + ("; the streams directions are nearly collinear, so the update along them would largely cancel."
        if abs(cs) >= 0.8 else "."), display=False)

# %% [markdown]
# A lens check of the RES-FAIR update (not the real intervention, which chapter 04 runs):
# at each layer of the last tenth alone, apply
# $v' = v - \lambda_1 P_\text{bias} v$, $v_\text{new} = v' + \lambda_2 P_\text{fair} v'$
# to the stream leaving the layer of every evaluation row, and read the lens there before
# and after. Later layers are not re-run, so this shows only whether the directions point
# the way the rule says.

# %%
proxies = []
loaded_cache, unembed_dirs = {}, {}
for pr in pairs_:
    name = pr["model"]
    if name in models.PAPER_MODELS and name not in loaded_cache:
        loaded_cache.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if name not in loaded_cache:
        spec = next(s for s in runs_spec if s.model == name)
        kw = {"size": spec.size} if spec.size else {}
        if DTYPE != "auto" and name not in models.PAPER_MODELS:
            kw["dtype"] = getattr(torch, DTYPE)
        loaded_cache[name] = models.load(name, **kw)
        unembed_dirs[name] = lens.unembedding_directions(loaded_cache[name])
    dirs = lens.Directions.load(lens.directions_path(name, pr["fit"]))
    px = lens.lens_proxy(loaded_cache[name], dirs, pr["eval_col"], lambda1=LAMBDA1, lambda2=LAMBDA2)
    proxies.append(px.assign(model=name, fit=pr["fit"], eval=pr["eval"]))
loaded_cache.clear()
proxy = pd.concat(proxies, ignore_index=True)
proxy["Δ fair share"] = proxy["fair_share_after"] - proxy["fair_share_before"]
proxy["Δ skew"] = proxy["skew_after"] - proxy["skew_before"]
display(proxy[["model", "fit", "eval", "layer", "fair_share_before", "fair_share_after", "Δ fair share",
               "skew_before", "skew_after", "Δ skew"]].style.format(precision=4).hide(axis="index"))
lowered = proxy[proxy["Δ fair share"] < 0]
if len(lowered):
    proxy_sentence = (f"The update lowers the fair share in {len(lowered)} of the {len(proxy)} (pair, layer) "
                      "readings, against the rule's intent: "
                      + "; ".join(f"{r['model']} {r['fit']} → {r['eval']}, layer {r['layer']} "
                                  f"({r['Δ fair share']:+.4f})" for _, r in lowered.iterrows())
                      + ". A direction that points the wrong way there cannot debias by the rule's construction.")
else:
    proxy_sentence = (f"The update raises (or keeps) the fair share in all {len(proxy)} (pair, layer) readings, "
                      "as the rule intends.")
glue("proxy_sentence", proxy_sentence, display=False)

# %% [markdown]
# {glue:text}`proxy_sentence`
#
# **Controls for the transfer AUROC.** An AUROC above 0.5 only means something against
# directions that were not fitted: for each fit/evaluation pair and reading, 200 random
# unit directions at the same sites (their mean AUROC over the last tenth gives the null
# and its 95% range), and the unembedding difference between the fair option and the two
# group options (`fairvlm.lens.unembedding_directions`: the direction a stream would move
# along to raise the fair option's logit, with no fitting at all). The fitted direction's
# interval is a cluster bootstrap over the evaluation rows' labels, with the AUROC
# recomputed on every resample (`fairvlm.lens.transfer_test`).

# %%
transfer_rows = []
for pr in pairs_:
    dirs = lens.Directions.load(lens.directions_path(pr["model"], pr["fit"]))
    for reading, d in (("writes", dirs), ("streams", lens.streams_view(dirs))):
        t = lens.transfer_test(d, pr["eval_col"], seed=SEED, unembed=unembed_dirs[pr["model"]])
        transfer_rows.append(t.assign(model=pr["model"], fit=pr["fit"], eval=pr["eval"], reading=reading))
transfer = pd.concat(transfer_rows, ignore_index=True)
display(transfer[["model", "fit", "eval", "reading", "kind", "effect", "lo", "hi", "null", "null_lo", "null_hi",
                  "unembed_auroc"]].style.format(precision=3).hide(axis="index"))

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
for ax, col, title in ((axes[0], "auroc_bias", "u_bias: biased rows above fair rows"),
                       (axes[1], "auroc_fair", "u_fair: fair rows above biased rows")):
    sns.lineplot(data=direction_eval.assign(run=direction_eval["model"] + ": " + direction_eval["fit"]
                                            + " → " + direction_eval["eval"]),
                 x="layer", y=col, hue="run", marker="o", ax=ax)
    ax.axhline(0.5, color="grey", ls="--", lw=0.8)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("AUROC on the evaluation data")
    ax.legend(fontsize=6)
savefig(fig, f"{SLUG}_transfer")

# %% [markdown]
# ## Paper vs this book
#
# Every verdict follows the book's protocol (`fairvlm.verdicts.judge`): the effect is
# compared with a control measured the same way in the same run with the causal
# ingredient removed, and the verdict rests on the 95% bootstrap interval of their
# difference (*reproduced* when it lies above the claim's minimum size and the effect
# itself points the claimed way, *not reproduced* when it lies below that size,
# *inconclusive* otherwise, with the minimum detectable effect printed).
#
# - **Conflict** (`fairvlm.lens.conflict_verdict`), for both readings: the effect is, per
#   row, the share of the last tenth's layers in conflict (the two writes push opposite
#   ways, or $\Delta_1$ and $\Delta_2$ fall on opposite sides). The control is the same
#   share on the content-free questions of chapter 01, read by the same lens at the same
#   layers: they carry no social knowledge, so a conflict they show as often is a property
#   of the lens and the option words. Minimum size: 0.05 (five points of conflict rate).
#   Both sides are resampled over labels, so the prompts and input variants of one label
#   stay together.
# - **Transfer** (`fairvlm.lens.transfer_verdicts`), for both readings and both
#   directions: the effect is the mean AUROC over the last tenth on the evaluation data.
#   Two controls are fitted by the same rule at the same layers, and the verdict is taken
#   against the higher of the two: (a) the same fitting rows with their biased/fair labels
#   shuffled (10 fits), which catches whatever a fitted direction picks up besides the
#   labels; (b) the **content-free questions** of chapter 01 for the same model, split into
#   thirds by their own output margin. Rows split by the output's fair margin differ in how
#   the answer is written into the stream whether or not the question is about people, so
#   a direction fitted that way finds the model's answer axis; the content-free fit finds
#   that axis too, without any social content. A bias direction must beat it. Minimum
#   size: 0.05 of AUROC, and the AUROC itself must exceed chance (0.5). The intervals
#   resample the evaluation labels (every prompt and input variant of a label together),
#   and in every resample each AUROC, the effect's and both controls', is computed again
#   on the drawn rows; the fitted directions are held fixed. The random-direction and
#   unembedding controls of the table above are printed beside.
#
# The transfer test is weaker than the paper's use of the vectors (chapter 04 measures the
# debiasing itself).

# %%
control_res = pd.concat([lens.residual_frame(c) for c in chapter.controls.values()], ignore_index=True)
verdict_rows = []
for (name, dataset, attribute), g in res_rows.groupby(["model", "dataset", "attribute"], sort=False):
    ctrl = control_res[(control_res["model"] == name) & (control_res["attribute"] == attribute)]
    for reading in ("writes", "streams"):
        _, _, v = lens.conflict_verdict(g, ctrl, reading=reading, layers=tenth[name], seed=SEED)
        verdict_rows.append({"paper": "qualitative (abstract; App. B.1, Fig. 2)", "reading": reading,
                             "cell": f"{name}, {dataset}, {attribute}",
                             "measure": "share of last-tenth layers in conflict per row; control: content-free rows",
                             "verdict": v})
transfer_verdict_rows = []
for pr in pairs_:
    for reading in ("writes", "streams"):
        tv, vs = lens.transfer_verdicts(pr["fit_col"], pr["eval_col"], reading=reading, n_shuffles=10, seed=SEED,
                                        dirs=fitted[(pr["model"], pr["fit"])],
                                        control_col=chapter.controls.get(pr["model"]))
        for (_, t), v in zip(tv.iterrows(), vs):
            rnd = transfer[(transfer["model"] == pr["model"]) & (transfer["fit"] == pr["fit"])
                           & (transfer["reading"] == reading) & (transfer["kind"] == t["kind"])]
            transfer_verdict_rows.append({"model": pr["model"], "fit": pr["fit"], "eval": pr["eval"],
                                          "reading": reading, **t.to_dict()})
            verdict_rows.append({
                "paper": "no separation number; only the downstream debiasing (chapter 04)", "reading": reading,
                "cell": f"{pr['model']}, fit {pr['fit']} → eval {pr['eval']}",
                "measure": ("mean AUROC over the last tenth; control: the higher of the shuffled-label fits "
                            f"({t['shuffled_auroc']:.3f}) and the content-free fit ({t['content_free_auroc']:.3f}); "
                            f"random directions {rnd['null'].iloc[0]:.2f}, unembedding "
                            f"{rnd['unembed_auroc'].iloc[0]:.2f}"),
                "verdict": v})
transfer_shuffled = pd.DataFrame(transfer_verdict_rows)
verdicts = verdict_table(verdict_rows)
display(Markdown(f"*Provenance: {chapter.caption()}; last tenth of the layers; controls: the content-free "
                 f"labels (conflict) and, for transfer, the higher of 10 shuffled-label fits and a fit on the "
                 f"content-free questions; bootstrap over labels (conflict: BCa; transfer: 1000 percentile "
                 f"resamples with every AUROC recomputed), seed {SEED}.*"))
display(verdicts.drop(columns=["asserts", "bias_claim"]).style.format(precision=3).hide(axis="index"))

# %%
first = conflict.iloc[0]
glue("main_run", f"{first['model']} / {first['dataset']} / {first['attribute']}", display=False)
glue("main_conflict", f"{first['write conflict (last tenth)']:.0%}", display=False)
glue("main_conflict_all", f"{first['write conflict (all layers)']:.0%}", display=False)
glue("main_stream_conflict", f"{first['stream conflict (last tenth)']:.0%}", display=False)


def _tally(mask) -> str:
    return f"{tally(verdicts, mask)} (of {int(mask.sum())})"


is_conf = verdicts["claim"].str.startswith("residuals")
glue("conflict_writes_tally", _tally(is_conf & (verdicts["reading"] == "writes")), display=False)
glue("conflict_streams_tally", _tally(is_conf & (verdicts["reading"] == "streams")), display=False)
glue("transfer_writes_tally", _tally(~is_conf & (verdicts["reading"] == "writes")), display=False)
glue("transfer_streams_tally", _tally(~is_conf & (verdicts["reading"] == "streams")), display=False)
tw = transfer[transfer["reading"] == "writes"]
beats_unembed = int((tw["effect"] > tw["unembed_auroc"]).sum())
glue("unembed_sentence", f"The fitted write directions beat the unembedding control in {beats_unembed} of "
                         f"{len(tw)} (pair, direction) cases.", display=False)
ts = transfer_shuffled.dropna(subset=["auroc"])
cf_wins = int((ts["content_free_auroc"] >= ts["shuffled_auroc"]).sum())
cf_close = int((ts["auroc"] - ts["content_free_auroc"] < 0.05).sum())
glue("content_free_sentence",
     f"The content-free fit is the stronger control in {cf_wins} of the {len(ts)} transfer rows, and the fitted "
     f"directions beat it by less than the minimum size (0.05 of AUROC) in {cf_close} of them: "
     + ("most of what the directions separate is the model's answer axis, which questions without social content "
        "show as well." if cf_close * 2 > len(ts) else
        "the directions separate more than the answer axis that questions without social content show."),
     display=False)

# %% [markdown]
# ## Summary and what's next
#
# For {glue:text}`main_run`, the two writes of a layer push in opposite directions for
# {glue:text}`main_conflict` of the (row, layer) pairs in the last tenth of the layers
# ({glue:text}`main_conflict_all` over all layers), and the two streams fall on opposite
# sides for {glue:text}`main_stream_conflict`. Against the conflict rate of the
# content-free questions, the conflict claim is {glue:text}`conflict_writes_tally` under the
# writes reading and {glue:text}`conflict_streams_tally` under the streams reading. Transfer
# beyond both controls (shuffled-label fits and the content-free fit):
# {glue:text}`transfer_writes_tally` (writes), {glue:text}`transfer_streams_tally` (streams).
# {glue:text}`content_free_sentence` {glue:text}`unembed_sentence` {glue:text}`cosine_sentence`
# {glue:text}`proxy_sentence` The directions are saved as safetensors under
# `results/directions/` (`fairvlm.lens.Directions.load`; chapter 04 refits them from the
# cached runs with `fairvlm.lens.fit_directions`, which gives the same vectors, and applies
# them with `fairvlm.resfair.posthoc`).
#
# ## References
#
# - Lan et al. (2025). RES-FAIR (RESidual Flow Adjustment for Inference Recalibration).
#   arXiv:2505.23798 (abstract; appendix B.1, Figure 2; C.1).
# - Elhage et al. (2021). *A mathematical framework for transformer circuits.*
#   Transformer Circuits Thread (the residual stream as a sum of writes).
# - nostalgebraist (2020). *interpreting GPT: the logit lens.* LessWrong.

# %%
save_results(
    SLUG, params=P,
    headline={
        "write_conflict_last_tenth": {f"{r['model']}|{r['dataset']}|{r['attribute']}": r["write conflict (last tenth)"]
                                      for _, r in conflict.iterrows()},
        "stream_conflict_last_tenth": {f"{r['model']}|{r['dataset']}|{r['attribute']}":
                                       r["stream conflict (last tenth)"] for _, r in conflict.iterrows()},
        "transfer_auroc": {f"{r.model}|{r.fit}->{r.eval}|{r.reading}|{r.kind}": {
            "effect": r.effect, "interval": [r.lo, r.hi], "null": r.null, "null_interval": [r.null_lo, r.null_hi],
            "unembed_control": r.unembed_auroc} for r in transfer.itertuples(index=False)},
        "verdicts": {f"{r['claim']} | {r['reading']} | {r['cell']}": r["verdict"] for _, r in verdicts.iterrows()},
        "directions_files": saved, "lambda1": LAMBDA1, "lambda2": LAMBDA2,
    },
    provenance=chapter.provenance,
    tables={"residual_rows": res_rows, "residual_summary": res_summary, "conflict": conflict,
            "direction_eval": direction_eval, "direction_cosines": cosines, "lens_proxy": proxy,
            "verdicts": verdicts, "transfer_test": transfer, "transfer_shuffled": transfer_shuffled},
)
