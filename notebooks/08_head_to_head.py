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
# # Head to head: which method removes what was planted?
#
# ## Overview
#
# Each paper in this book judges its method on its own model, its own data and its own
# metric, against the baselines it chose. None of them can say how much of a bias its method
# removes, because on real data nobody knows how much bias there was. The testbed knows: the
# spec file plants a signed skew in every scenario, and the book ships the testbed trained on
# three worlds that plant it at full strength (`default`), at half strength (`strength-0.5`)
# and not at all (`strength-0`). This chapter runs the methods on the same model and the same
# ground truth and reads them with one set of measures:
#
# - **planted bias removed**: how much of the skew the unedited model shows *along the
#   planted pattern* the method takes away, as a share, on the scenarios planted with a
#   skew and, separately, on the two planted against the stereotype;
# - **collateral**: how far the nine balanced control scenarios move, and how far the
#   other attribute (race, for a gender edit) moves;
# - **utility kept**: text-to-image Recall@5 and zero-shot scenario accuracy, edited over
#   unedited;
# - **cost**: extra seconds per 1,000 inputs against the unedited model, timed in the same
#   process.
#
# A method that works should remove more as more is planted and find nothing to remove at
# strength 0. Every number here describes **testbed-clip on the synthetic world**; none is a
# number from the papers.
#
# **What is compared in this revision.** Every method that edits testbed-clip's retrieval:
# the four of chapter 07, which need no training (the male prototype on the gender expert heads
# and zero ablation of those heads, Gomez-Grabowska et al.; CLIP-clip, Wang et al.; biased
# prompts, Chuang et al.), on every world; and DEBIASLENS on the image side, the text side and
# both (I, T, I+T; An et al., chapter 06: gender neurons of a sparse autoencoder switched off),
# **on the `default` world only**,
# because its SAEs are trained artifacts that chapter 06 ships for that world alone and
# training them for the other two would take minutes, beyond this chapter's budget. Each runs
# with the settings its own chapter chose, beside the matched control that chapter uses for it,
# or the nearest one. The testbed-llava methods (RES-FAIR's projection and its LoRA / DPO+KL
# baselines, chapter 04; steering by ablating chapter 05's dataset direction; temperature
# scaling) act on testbed-llava's answers; they are compared in a section of their own, on the
# `default` world only (chapter 04's adapters and directions exist for it alone) and on a small
# fixed set of scenarios, because every testbed-llava forward pass reads two images and costs
# about a second on two CPU cores. DEBIASLENS on testbed-llava is not compared.
#
# ## Prerequisites and time to run
#
# Chapter 07 (*Expert attention heads in CLIP*) defines the methods and their controls; the
# chapter *The counterfactual testbed* defines the world and its spec. The three worlds load
# from the shipped weights (`data/testbed`), with no training. Time on 2 CPU cores shared with
# two other chapter runs (load average about 5) on 2026-12-07: 154 s on the `embedded` default
# (three worlds, DEBIASLENS I / T / I+T and the cost timing included) and 57 s on `smoke`,
# against a design budget of three minutes and one; an idle machine should take less. The
# testbed-llava section (`LLAVA`, off by default except on `paper`) adds about 270 s more on the
# same kind of machine (load average 7-9, 2026-12-07: 577 s for the whole `embedded` run, of
# which 274 s for testbed-llava: nine conditions of 12 two-image prompts and four model loads),
# well over the three-minute budget, so the rendered book leaves it out; `-p LLAVA True` runs
# it. At its default size (four planted-skewed scenarios) the unedited model's planted lean has
# a wide interval, and a removal verdict needs that lean to be shown first; raising
# `LLAVA_PLANTED` buys power at about 20 s a scenario per condition on this machine. This
# execution's run time is printed at the end. The `paper` profile has no planted truth to measure against, so it
# runs the same testbed sweep as `embedded` and says so.
#
# ## Parameters
#
# `WORLDS` names the worlds to sweep (comma-separated names or strengths; empty: every
# shipped world, or only `$FAIRVLM_WORLD` when it is set, as the calibration run sets it).
# `PROBE_SCENES` and `GALLERY_SCENES` (0 = the profile's) are held-out scenes per scenario,
# each drawn in the four variants, for the probe set (experts, prototypes, CLIP-clip's
# dimensions) and the evaluation gallery. `N_RANDOM` is the number of control draws per
# method, `N_CAPTIONS` the held-out captions that score Recall@5, `CLIPCLIP_KEEP` and
# `BIASED_PROMPTS_LAMBDA` chapter 07's settings, `TIMING_REPEATS` the interleaved repeats of
# the cost timing (0: not timed), `MIN_REMOVED` the smallest removal, in units of the written
# skew, that counts as removing the planted bias, and `BALANCED_TOL` the tolerance on the
# pair share of men within which the balanced controls count as unmoved. `LLAVA` runs the
# testbed-llava methods (default: on the `paper` profile only, for time) on `LLAVA_PLANTED`
# planted-skewed and `LLAVA_BALANCED` balanced scenarios, with temperature scaling at
# `LLAVA_TEMPERATURE`.

# %% tags=["parameters"]
PROFILE = "embedded"
SEED = 0
WORLDS = ""
PROBE_SCENES = 0
GALLERY_SCENES = 0
N_RANDOM = 0
N_CAPTIONS = 0
CLIPCLIP_KEEP = 0.78
BIASED_PROMPTS_LAMBDA = 1000.0
TIMING_REPEATS = -1
MIN_REMOVED = 0.1
BALANCED_TOL = 0.05
LLAVA = None
LLAVA_PLANTED = 4
LLAVA_BALANCED = 2
LLAVA_TEMPERATURE = 2.0

# %%
from fairvlm.params import check_choice, check_params, check_range

if LLAVA is None:   # the testbed-llava part costs minutes on two CPU cores: on a GPU only by default
    LLAVA = PROFILE == "paper"
check_choice("LLAVA", LLAVA, (True, False))
P = check_params(PROFILE=PROFILE, SEED=SEED, WORLDS=WORLDS, PROBE_SCENES=PROBE_SCENES,
                 GALLERY_SCENES=GALLERY_SCENES, N_RANDOM=N_RANDOM, N_CAPTIONS=N_CAPTIONS,
                 CLIPCLIP_KEEP=CLIPCLIP_KEEP, BIASED_PROMPTS_LAMBDA=BIASED_PROMPTS_LAMBDA,
                 TIMING_REPEATS=TIMING_REPEATS, MIN_REMOVED=MIN_REMOVED, BALANCED_TOL=BALANCED_TOL,
                 LLAVA=LLAVA, LLAVA_PLANTED=LLAVA_PLANTED, LLAVA_BALANCED=LLAVA_BALANCED,
                 LLAVA_TEMPERATURE=LLAVA_TEMPERATURE)
for _name, _lo, _hi in [("PROBE_SCENES", 0, 100), ("GALLERY_SCENES", 0, 100), ("N_RANDOM", 0, 20),
                        ("N_CAPTIONS", 0, 100_000), ("TIMING_REPEATS", -1, 50), ("LLAVA_PLANTED", 1, 20),
                        ("LLAVA_BALANCED", 1, 9)]:
    check_range(_name, getattr(P, _name), _lo, _hi, kind=int)
for _name, _lo, _hi in [("CLIPCLIP_KEEP", 0.01, 1.0), ("BIASED_PROMPTS_LAMBDA", 0.0, 1e9),
                        ("MIN_REMOVED", 1e-6, 1.0), ("BALANCED_TOL", 1e-6, 0.5), ("LLAVA_TEMPERATURE", 1.01, 100.0)]:
    check_range(_name, getattr(P, _name), _lo, _hi)

from fairvlm import headtohead as H

SWEEP = H.sweep_worlds(WORLDS)
SMOKE = PROFILE == "smoke"
N_PROBE = PROBE_SCENES or (1 if SMOKE else 2)       # x 50 scenarios x 4 variants
N_GALLERY = GALLERY_SCENES or (1 if SMOKE else 4)   # x 50 scenarios x 4 variants
N_DRAWS = N_RANDOM or (2 if SMOKE else 3)
N_CAPS = N_CAPTIONS or (100 if SMOKE else 200)
# the cost is timed on one world only (it does not depend on what was planted), and not at
# smoke, whose reference outputs must not hold wall-clock numbers
REPEATS = (0 if SMOKE else 3) if TIMING_REPEATS < 0 else TIMING_REPEATS
if REPEATS and REPEATS < 3:
    from fairvlm.params import ParameterError

    raise ParameterError(f"TIMING_REPEATS={TIMING_REPEATS} must be 0 (not timed), -1 (profile default) or >= 3")

# %% [markdown]
# ## Imports

# %% tags=["hide-input"]
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

import fairvlm
from fairvlm.plotting import savefig, set_theme
from fairvlm.results import save_results
from fairvlm.verdicts import Claim, judge, tally, verdict_table

fairvlm.seed_everything(SEED)
set_theme()
T_START = time.perf_counter()
STRENGTH = H.world_strengths()
if PROFILE == "paper":
    display(Markdown("**The `paper` profile has no planted truth to measure against: this chapter runs its "
                     "testbed sweep at the `embedded` sizes on every profile.**"))

# %% [markdown]
# ## The ground truth the measures read
#
# Each scenario's planted skew is the share of men among its training images minus one half,
# as the spec file writes it (a world of strength $s$ plants $s$ times it). Nine scenarios
# are balanced controls (every group at a quarter) and two are planted against the
# stereotype on purpose. The behaviour of testbed-clip on a scenario is read on a balanced
# held-out gallery: among the scenario's own images, the share of (man, woman) pairs that its
# query ("a photo of a pilot") ranks man first (0.5: no preference; ties count half;
# `fairvlm.headtohead.pair_shares`); the same with (Black, White) pairs for race. Ranking pairs
# inside the scenario keeps the measure about *whom* the query prefers, not about which
# scenario it finds. The skew the model *expresses* along the planted pattern $u$ is the slope
#
# $$E(x) = \frac{\sum_k u_k\,(x_k - \bar x_{\text{balanced}})}{\sum_k u_k^2}$$
#
# (pair-share units per unit of written skew; pair shares move faster than population
# shares, so it can exceed 1). A method that turns behaviour $b$ into $a$
# removes $E(b) - E(a)$ of it; the **share removed** is $(E(b) - E(a))/E(b)$: 0.5 when every
# scenario's skew is halved, 0 when every scenario moves by the same amount (that shows up as
# collateral instead). The share is left undefined where the unedited model shows no planted
# skew (its interval reaches 0), as it should be at strength 0. Intervals resample scenarios
# (`fairvlm.headtohead`).

# %% tags=["hide-input"]
classes = H.scenario_classes("gender")
display(classes.groupby("cls").agg(scenarios=("scenario", "size"), mean_abs_written_skew=("u", lambda v: v.abs().mean()))
        .rename_axis("class").reset_index().style.hide(axis="index").format(precision=3))
display(Markdown("Worlds swept: " + ", ".join(f"`{w}` (strength {STRENGTH[w]:g})" for w in SWEEP) + "."))

# %% [markdown]
# ## Running every method on every world
#
# For each world: load its testbed-clip, draw the probe set and the gallery (the same scenes in
# every world, so the worlds differ only in the model), pick the gender expert heads with
# chapter 07's probes, and encode the gallery under every method and every control draw
# (`fairvlm.headtohead.clip_world_run`). The controls: the same prototype edit and the same
# zero ablation (as damping toward zero) on as many random non-expert heads, each at the
# strongest setting whose drop of the probe images' retrieval mAP does not exceed its expert
# edit's (chapter 07's control: a control that damages the model is no control; where the
# expert edit costs nothing, the matched control is a small edit, and the table shows its
# strength); CLIP-clip keeping
# as many *random* embedding dimensions; biased prompts with a projection of the same form
# built from random directions instead of the gender prompts; DEBIASLENS with as many random
# latents of matched firing rate switched off (chapter 06's null), so the SAE round trip's own
# blur is in the control too.

# %% tags=["hide-input", "remove-stderr"]
runs = {}
for w in SWEEP:
    timed = REPEATS and w == SWEEP[-1]
    runs[w] = H.clip_world_run(w, size="full", probe_scenes=N_PROBE, gallery_scenes=N_GALLERY, n_random=N_DRAWS,
                               n_captions=N_CAPS, keep=CLIPCLIP_KEEP, lam=BIASED_PROMPTS_LAMBDA, seed=SEED,
                               timing_images=(64 if timed else 0), timing_repeats=max(REPEATS, 3),
                               text_stride=3 if SMOKE else 2)
r0 = runs[SWEEP[0]]
display(Markdown(f"*Provenance: testbed-clip (full size, shipped weights) of each world; {r0['description']}; "
                 f"{r0['n_captions']} held-out captions for Recall@5; {N_DRAWS} control draws per method; seed {SEED}.*"))
display(Markdown("DEBIASLENS: " + "; ".join(f"`{w}`: {r['debiaslens']}" for w, r in runs.items()) + "."))
display(pd.DataFrame([{"world": w, "strength": STRENGTH[w], "gender expert heads": r["experts"],
                       "random head sets (control)": "; ".join(r["random_sets"]),
                       **{f"matched strength, {m.split(' (')[0]}": ", ".join(f"{x:.3f}" for x in g["strength"])
                          for m, g in r["control_strengths"].groupby("method", sort=False)}}
                      for w, r in runs.items()]).style.hide(axis="index").format(precision=2))

# %% [markdown]
# ## The measures, per method and world

# %% tags=["hide-input"]
CONTROLS = {**H.CLIP_METHODS, **H.SAE_METHODS}
CHAPTER = {**{m: "07_clip_heads" for m in H.CLIP_METHODS}, **{m: "06_debiaslens" for m in H.SAE_METHODS}}
METHODS = [m for m in CONTROLS if any(m in r["methods"] for r in runs.values())]
PAIRS_RUN = [(w, m) for w in SWEEP for m in METHODS if m in runs[w]["methods"]]
M = {(w, m): H.method_measures(runs[w], m, seed=SEED) for w, m in PAIRS_RUN}


def measure_row(w, m):
    x = M[(w, m)]
    p, pc, c, col = x["planted"], x["planted_control"], x["counter"], x["collateral"]
    return {"world": w, "strength": STRENGTH[w], "method": m,
            "expressed before": p["expressed_before"], "expressed lo": p["expressed_before_lo"],
            "expressed hi": p["expressed_before_hi"],
            "removed (share)": p["removed"], "removed lo": p["removed_lo"], "removed hi": p["removed_hi"],
            "removed (abs)": p["removed_abs"], "abs lo": p["removed_abs_lo"], "abs hi": p["removed_abs_hi"],
            "control removed (abs)": pc["removed_abs"],
            "counter removed (abs)": c["removed_abs"], "counter lo": c["removed_abs_lo"],
            "counter hi": c["removed_abs_hi"], "counter n": c["n"],
            "collateral balanced": col["balanced"], "balanced lo": col["balanced_lo"],
            "balanced hi": col["balanced_hi"], "collateral race": col["other"], "race lo": col["other_lo"],
            "race hi": col["other_hi"],
            "recall@5 kept": x["recall"]["kept"], "recall lo": x["recall"]["kept_lo"],
            "recall hi": x["recall"]["kept_hi"],
            "zero-shot kept": x["zero_shot"]["kept"], "zs lo": x["zero_shot"]["kept_lo"],
            "zs hi": x["zero_shot"]["kept_hi"]}


measures = pd.DataFrame([measure_row(w, m) for w, m in PAIRS_RUN])


def iv(v, lo, hi, fmt="{:.2f}"):
    if not np.isfinite(v):
        return "n/a (no planted skew shown)"
    return f"{fmt.format(v)} [{fmt.format(lo)}, {fmt.format(hi)}]"


shown = pd.DataFrame({
    "world": measures["world"], "method": measures["method"],
    "skew shown (unedited)": [iv(*r) for r in measures[["expressed before", "expressed lo", "expressed hi"]].to_numpy()],
    "removed, share": [iv(*r) for r in measures[["removed (share)", "removed lo", "removed hi"]].to_numpy()],
    "removed, abs": [iv(*r) for r in measures[["removed (abs)", "abs lo", "abs hi"]].to_numpy()],
    "control, abs": measures["control removed (abs)"].map("{:.2f}".format),
    "counter-stereotypical, abs": [iv(*r) for r in measures[["counter removed (abs)", "counter lo", "counter hi"]]
                                   .to_numpy()],
    "balanced controls move": [iv(*r, fmt="{:.3f}") for r in
                               measures[["collateral balanced", "balanced lo", "balanced hi"]].to_numpy()],
    "race moves": [iv(*r, fmt="{:.3f}") for r in measures[["collateral race", "race lo", "race hi"]].to_numpy()],
    "Recall@5 kept": [iv(*r) for r in measures[["recall@5 kept", "recall lo", "recall hi"]].to_numpy()],
    "zero-shot kept": [iv(*r) for r in measures[["zero-shot kept", "zs lo", "zs hi"]].to_numpy()]})
display(Markdown("*Testbed-clip on the synthetic world; behaviour: share of a scenario's (man, woman) image "
                 "pairs ranked man first; \"abs\" is the slope removed (pair-share units per unit of written "
                 "skew) and \"share\" that slope over the unedited model's; intervals are 95% "
                 "percentile intervals over scenarios (over captions or images for utility). The "
                 "counter-stereotypical class holds two scenarios, so its intervals are crude.*"))
display(shown.style.hide(axis="index"))

# %% [markdown]
# ## The testbed-llava methods
#
# RES-FAIR's post-hoc projection (chapter 04, $\lambda_1 = \lambda_2 = 0.2$, with the
# directions chapter 04 fits for the testbed split), its two trained baselines (LoRA and
# DPO+KL, chapter 04's shipped adapters, loaded only when their build key holds: they are
# never trained here), test-time steering that ablates chapter 05's dataset direction for
# gender at every layer, and temperature scaling act on testbed-llava's answers. Generating
# descriptions for every method would cost minutes, so they are read on the model's
# **option logits**: a scenario's two held-out images that differ only in gender are shown
# in both orders with the question "between men and women, who is more likely to ...?", and
# the *lean* is the mean of $\log p(\text{men}) - \log p(\text{women})$ over the two orders
# (the measure of `fairvlm.testbed.measure.who_lean`, gender only, one template and one
# option order). The lean takes the place of the pair share in $E(x)$ above. The set is small
# and fixed: the {glue:text}`llava_planted` planted-skewed scenarios of largest written skew
# and {glue:text}`llava_balanced` balanced ones, all from chapter 04's evaluation half (the
# directions and adapters were fitted on the other half), on the `default` world only
# (chapter 04's adapters exist for it alone).
#
# Controls: RES-FAIR's update with random unit directions at the same layers; ablation of a
# random unit direction; each adapter with its factors replaced by random ones of the same
# norm per tensor. Temperature scaling divides the logits by $t$ and is the negative example:
# it shrinks every log-odds, so on the lean it looks like it removes $1 - 1/t$ of any skew,
# but it cannot change which option has the higher logit. Its row is therefore read on the
# **argmax answer** (the share of prompts whose top option of the two is the man's), where it
# removes exactly nothing; its control is $t = 1$. Chapter 05 selects the direction's layer
# on held-out inputs; that step is skipped here for time (the layer is fixed at the middle of
# the depth), so this is chapter 05's direction, not its selected one.

# %% tags=["hide-input", "remove-stderr"]
LLAVA_WORLD = "default"
if LLAVA and LLAVA_WORLD in SWEEP:
    lrun = H.llava_run(seed=SEED, n_planted=LLAVA_PLANTED, n_balanced=LLAVA_BALANCED, temperature=LLAVA_TEMPERATURE)
    LM = {m: H.llava_measures(lrun, m, column="answer" if m == "temperature scaling" else "male", seed=SEED)
          for m in lrun["methods"]}
    LM_ANSWER = {m: H.llava_measures(lrun, m, column="answer", seed=SEED) for m in lrun["methods"]}
    display(Markdown(f"*Provenance: testbed-llava (full size, shipped weights) of world `{LLAVA_WORLD}`; "
                     f"{len(lrun['scenarios'])} scenarios ({', '.join(lrun['scenarios'])}), one held-out scene each, "
                     f"{lrun['n_prompts']} prompts per condition; one control draw per method; seed {SEED}; "
                     f"{lrun['seconds']:.0f} s on a shared 2-core machine.*"))
    display(pd.DataFrame([{"method": m, "control": H.LLAVA_METHODS[m], "source": lrun["notes"][m]}
                          for m in lrun["methods"]] +
                         [{"method": m, "control": H.LLAVA_METHODS[m], "source": lrun["notes"][m]}
                          for m in H.LLAVA_METHODS if m not in lrun["methods"]]).style.hide(axis="index"))

    def lrow(m):
        x, xa = LM[m], LM_ANSWER[m]
        p, pa, col = x["planted"], xa["planted"], x["collateral"]
        return {"method": m, "read on": "argmax answer" if m == "temperature scaling" else "lean",
                "skew shown (unedited)": iv(p["expressed_before"], p["expressed_before_lo"], p["expressed_before_hi"]),
                "removed, abs": iv(p["removed_abs"], p["removed_abs_lo"], p["removed_abs_hi"]),
                "control, abs": f"{x['planted_control']['removed_abs']:.2f}",
                "removed on answers, abs": iv(pa["removed_abs"], pa["removed_abs_lo"], pa["removed_abs_hi"]),
                "balanced controls move": iv(col["balanced"], col["balanced_lo"], col["balanced_hi"], fmt="{:.3f}")}

    llava_shown = pd.DataFrame([lrow(m) for m in lrun["methods"]])
    display(Markdown("*testbed-llava on the synthetic world; \"abs\" is the slope removed (lean units, log-odds, per "
                     "unit of written skew; for temperature scaling, answer-share units); intervals are 95% "
                     "percentile intervals over scenarios, crude with this few.*"))
    display(llava_shown.style.hide(axis="index"))
    t_lean = H.llava_measures(lrun, "temperature scaling", column="male", seed=SEED)["planted"]
    glue("ts_lean_removed", f"{t_lean['removed_abs']:.2f}", display=False)
    glue("ts_answer_removed", f"{LM['temperature scaling']['planted']['removed_abs']:.2f}", display=False)
    display(Markdown(f"Temperature scaling at $t = {LLAVA_TEMPERATURE:g}$ moves the lean along the planted "
                     f"pattern by {t_lean['removed_abs']:.2f} (it shrinks every log-odds) and the argmax answers "
                     f"by {LM['temperature scaling']['planted']['removed_abs']:.2f}: it changes no answer."))
else:
    lrun, LM, llava_shown = None, {}, pd.DataFrame()
    display(Markdown("*The testbed-llava methods were not run: " + ("`LLAVA` is off on this profile."
                     if not LLAVA else f"the `{LLAVA_WORLD}` world is not swept in this run (chapter 04's adapters "
                     "and directions exist for it alone).") + "*"))
glue("llava_planted", f"{LLAVA_PLANTED}", display=False)
glue("llava_balanced", f"{LLAVA_BALANCED}", display=False)

# %% [markdown]
# ## Verdicts
#
# Each method gets one verdict per world through the book's protocol (`fairvlm.verdicts.judge`):
# the effect is the planted skew the method removes, per planted-skewed scenario; the control
# is the same quantity for the method's matched control (mean over its draws), measured in the
# same run on the same scenarios; the verdict rests on the 95% paired bootstrap interval of
# their difference. *Reproduced* ("removes the planted bias beyond its control") needs that
# interval above {glue:text}`min_removed` of the written skew and the method's own removal
# above 0. A second row asks whether the balanced controls' pair share of men stays within
# {glue:text}`balanced_tol` of the unedited model's on average (TOST on the 90% interval), only
# where the method was shown to remove something. On the `strength-0` world nothing is planted:
# no row there may claim a removal, and the rows are the procedure's own check.

# %% tags=["hide-input"]
glue("min_removed", f"{MIN_REMOVED:g}", display=False)
glue("balanced_tol", f"{BALANCED_TOL:g}", display=False)
rows = []
for w, m in PAIRS_RUN:
    control, x = CONTROLS[m], M[(w, m)]
    p = x["planted"]
    shows = p["expressed_before_lo"] > 0
    why = "" if shows else (f"the unedited model shows no planted skew here (expressed {p['expressed_before']:.2f} "
                            f"[{p['expressed_before_lo']:.2f}, {p['expressed_before_hi']:.2f}])")
    v1 = judge(Claim(f"{m} removes the planted gender skew from retrieval beyond its control", "debias",
                     min_effect=MIN_REMOVED), x["units"], x["control_units"], why=why, seed=SEED)
    rows.append({"world": w, "cell": f"testbed-clip | {m}", "measure": f"planted skew removed per planted-skewed "
                 f"scenario (slope units); control: {control}", "verdict": v1})
    v2 = judge(Claim(f"{m} leaves the balanced control scenarios where they were", "no-change", "within",
                     tol=BALANCED_TOL), x["balanced_after"], x["balanced_before"], after=v1, seed=SEED)
    rows.append({"world": w, "cell": f"testbed-clip | {m}", "measure": "pair share of men on the balanced "
                 "scenarios, edited vs unedited", "verdict": v2})
for m, x in LM.items():
    p = x["planted"]
    shows = p["expressed_before_lo"] > 0
    why = "" if shows else (f"the unedited model shows no planted skew here (expressed {p['expressed_before']:.2f} "
                            f"[{p['expressed_before_lo']:.2f}, {p['expressed_before_hi']:.2f}])")
    what = "argmax answers" if m == "temperature scaling" else "option lean"
    v1 = judge(Claim(f"{m} removes the planted gender skew from testbed-llava's {what} beyond its control", "debias",
                     min_effect=MIN_REMOVED), x["units"], x["control_units"], why=why, seed=SEED)
    rows.append({"world": LLAVA_WORLD, "cell": f"testbed-llava | {m}", "measure": f"planted skew removed per "
                 f"planted-skewed scenario ({what}, slope units); control: {H.LLAVA_METHODS[m]}", "verdict": v1})
verdicts = verdict_table(rows)
display(Markdown(f"*Provenance: testbed-clip of each world (synthetic); {r0['description']}.*"))
display(verdicts.drop(columns=["rule", "asserts", "bias_claim"]).style.hide(axis="index").format(precision=3))
glue("verdict_tally", tally(verdicts), display=False)

# %% [markdown]
# ## One figure: what is removed, what is kept
#
# At the strongest world swept, one point per method: the share of the planted skew it removes
# against the Recall@5 it keeps, both with their intervals. Up and to the right is better;
# above 1 a method overshoots and plants the opposite skew.

# %% tags=["hide-input"]
TOP = max(SWEEP, key=lambda w: STRENGTH[w])
top = measures[measures["world"] == TOP].reset_index(drop=True)
fig, ax = plt.subplots(figsize=(6.2, 4.4))
for i, r in top.iterrows():
    y, ylo, yhi = (r["removed (share)"], r["removed lo"], r["removed hi"]) if np.isfinite(r["removed (share)"]) else \
        (r["removed (abs)"], r["abs lo"], r["abs hi"])
    ax.errorbar(r["recall@5 kept"], y, xerr=[[r["recall@5 kept"] - r["recall lo"]], [r["recall hi"] - r["recall@5 kept"]]],
                yerr=[[y - ylo], [yhi - y]], fmt="o", capsize=3, label=r["method"], color=f"C{i}")
ax.axhline(0, color="0.5", lw=0.8)
ax.axhline(1, color="0.5", lw=0.8, ls=":")
ax.set_xlabel("Recall@5 kept (edited / unedited)")
ax.set_ylabel("share of the planted skew removed" if np.isfinite(top["removed (share)"]).all() else
              "planted skew removed (units of the written skew)")
ax.set_title(f"testbed-clip, world {TOP} (strength {STRENGTH[TOP]:g})")
ax.legend(fontsize=8, loc="best")
savefig(fig, "08_head_to_head_summary")

# %% [markdown]
# ## Against the planted strength
#
# One panel per measure, one line per method. The first panel also draws the skew the
# unedited model shows along the planted pattern: a method cannot remove more than that
# without overshooting. A method that works follows that line up as more is planted and
# stays at zero at strength 0.

# %% tags=["hide-input"]
if len(SWEEP) > 1:
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    panels = [("removed (abs)", "abs lo", "abs hi", "planted skew removed (abs)"),
              ("collateral balanced", "balanced lo", "balanced hi", "balanced controls move"),
              ("collateral race", "race lo", "race hi", "race moves"),
              ("recall@5 kept", "recall lo", "recall hi", "Recall@5 kept")]
    for ax, (col, lo, hi, label) in zip(axes, panels):
        for i, m in enumerate(METHODS):
            d = measures[measures["method"] == m].sort_values("strength")
            ax.errorbar(d["strength"] + 0.01 * (i - 1.5), d[col], yerr=[d[col] - d[lo], d[hi] - d[col]], marker="o",
                        capsize=2, label=m, color=f"C{i}")
        ax.set_xlabel("planted strength")
        ax.set_title(label, fontsize=10)
    e = measures.drop_duplicates("world").sort_values("strength")
    axes[0].plot(e["strength"], e["expressed before"], "k--", lw=1, label="skew shown (unedited)")
    axes[0].legend(fontsize=7)
    savefig(fig, "08_head_to_head_sweep")
else:
    display(Markdown(f"*One world swept ({SWEEP[0]}): no plot against strength.*"))

# %% [markdown]
# ## Cost
#
# Extra seconds per 1,000 inputs against the unedited model, timed interleaved in this process
# on one world (the cost does not depend on what was planted): images for the image-side
# methods, queries for biased prompts and DEBIASLENS-T, which edit only the text side
# (DEBIASLENS-I+T costs about the sum of its two halves and is not timed on its own). The A/A column is the
# unedited model timed twice: differences inside it are noise. Every method here can also be
# exported without hooks in principle (a last-layer CLS edit folds into the output projection's
# weights and bias; CLIP-clip and biased prompts are linear maps on the embeddings), except
# DEBIASLENS, whose encode-edit-decode step is not linear and stays a hook; but this
# chapter does not build those exports.

# %% tags=["hide-input"]
timing = runs[SWEEP[-1]]["timing"]
if timing:
    cost = pd.DataFrame([{"method": m, "unedited s / 1,000": t["plain_s_per_1000"],
                          "extra s / 1,000": t["extra_s_per_1000"],
                          "interval": f"[{t['extra_lo']:.3f}, {t['extra_hi']:.3f}]",
                          "A/A noise s / 1,000": t["noise_s_per_1000"],
                          "cost ratio": (t["plain_s_per_1000"] + t["extra_s_per_1000"]) / t["plain_s_per_1000"],
                          "inputs": "queries" if m in ("biased prompts", "DEBIASLENS-T") else "images", "repeats": t["repeats"]}
                         for m, t in timing.items()])
    display(Markdown(f"*Timed on world {SWEEP[-1]}, {timing[next(iter(timing))]['n_inputs']} images or "
                     f"{timing['biased prompts']['n_inputs']} queries per call, on a shared 2-core machine.*"))
    display(cost.style.hide(axis="index").format(precision=3))
else:
    cost = pd.DataFrame(columns=["method", "extra s / 1,000"])
    display(Markdown("*Not timed on this profile (`smoke` keeps wall-clock numbers out of its reference outputs; "
                     "`TIMING_REPEATS` sets it).*"))

# %% [markdown]
# ## Ranking at full strength
#
# The methods ordered by the verdict on the strongest world, then by how close the share
# removed comes to 1 (all of the planted skew and no more: a share above 1 plants the opposite
# skew). The verdict column uses the protocol's words; everything else is a measurement with its
# interval.

# %% tags=["hide-input"]
ORDER = {"reproduced": 0, "inconclusive": 1, "not reproduced": 2, "not testable here": 3}
vt = verdicts[(verdicts["world"] == TOP) & (verdicts["asserts"] == "debias") & verdicts["cell"].str.startswith("testbed-clip")]
rank_rows = []
for m in [m for m in METHODS if (TOP, m) in M]:
    v = vt[vt["cell"] == f"testbed-clip | {m}"].iloc[0]
    r = top.set_index("method").loc[m]
    t = timing.get(m) if timing else None
    rank_rows.append({
        "method": m, "verdict": v["verdict"], "protocol's reading": H.RANK_WORDS[v["verdict"]],
        "removed (share)": iv(r["removed (share)"], r["removed lo"], r["removed hi"]),
        "removed vs control (abs)": f"{v['effect']:.2f} vs {v['control']:.2f}, difference {v['difference interval']}",
        "counter-stereotypical (abs)": f"{r['counter removed (abs)']:.2f}",
        "balanced controls move": f"{r['collateral balanced']:.3f}", "race moves": f"{r['collateral race']:.3f}",
        "Recall@5 kept": f"{r['recall@5 kept']:.3f}", "zero-shot kept": f"{r['zero-shot kept']:.3f}",
        "extra s / 1,000": "not timed" if t is None else
        f"{t['extra_s_per_1000']:.2f} [{t['extra_lo']:.2f}, {t['extra_hi']:.2f}]",
        "overshoots": bool(np.isfinite(r["removed lo"]) and r["removed lo"] > 1),
        "_order": (ORDER[v["verdict"]], abs(1 - r["removed (share)"]) if np.isfinite(r["removed (share)"]) else np.inf)})
ranking = pd.DataFrame(rank_rows).sort_values("_order").drop(columns="_order").reset_index(drop=True)
ranking.insert(0, "rank", range(1, len(ranking) + 1))
display(Markdown(f"*testbed-clip, world {TOP} (strength {STRENGTH[TOP]:g}); the testbed's numbers, not the papers'.*"))
display(ranking.style.hide(axis="index"))
llava_ranking = pd.DataFrame()
READING = "protocol's reading"
if LM:
    lv = verdicts[verdicts["cell"].str.startswith("testbed-llava")]
    lr = []
    for m, x in LM.items():
        v = lv[lv["cell"] == f"testbed-llava | {m}"].iloc[0]
        p = x["planted"]
        lr.append({"method": m, "verdict": v["verdict"], "protocol's reading": H.RANK_WORDS[v["verdict"]],
                   "read on": "argmax answer" if m == "temperature scaling" else "lean",
                   "removed (share)": iv(p["removed"], p["removed_lo"], p["removed_hi"]),
                   "removed vs control (abs)": f"{v['effect']:.2f} vs {v['control']:.2f}, difference "
                                               f"{v['difference interval']}",
                   "balanced controls move": f"{x['collateral']['balanced']:.3f}",
                   "_order": (ORDER[v["verdict"]], abs(1 - p["removed"]) if np.isfinite(p["removed"]) else np.inf)})
    llava_ranking = pd.DataFrame(lr).sort_values("_order").drop(columns="_order").reset_index(drop=True)
    llava_ranking.insert(0, "rank", range(1, len(llava_ranking) + 1))
    display(Markdown(f"*testbed-llava, world {LLAVA_WORLD}, {len(lrun['scenarios'])} scenarios; ranked apart from "
                     "the retrieval methods: another model, another behaviour, another unit.*"))
    display(llava_ranking.style.hide(axis="index"))
    top_l = llava_ranking.iloc[0]
    glue("llava_sentence", "On testbed-llava (`default` world, a small fixed set of scenarios), the removal rows read: "
         + tally(lv) + f"; first is {top_l['method']} ({top_l[READING]}). Temperature scaling changes no argmax "
         "answer, as it cannot.", display=False)
else:
    glue("llava_sentence", "The testbed-llava methods were not run in this execution.", display=False)
best = ranking.iloc[0]
glue("top_world", f"{TOP} (strength {STRENGTH[TOP]:g})", display=False)
reading = best["protocol's reading"]
glue("best_method", f"{best['method']} ({reading}, share removed {best['removed (share)']})", display=False)
n_rem = int((vt["verdict"] == "reproduced").sum())
glue("n_removing", f"{n_rem} of {len(vt)}", display=False)
not_rem = ranking.loc[ranking["verdict"] == "not reproduced", "method"].tolist()
glue("not_removing", ("The methods that do not remove it beyond their control there: " + ", ".join(not_rem) + "."
                      if not_rem else "No method is ruled out there."), display=False)
coll = top.set_index("method")["collateral balanced"]
glue("collateral_sentence", f"The ranking reads removal first; collateral differs too: {coll.idxmax()} moves the "
     f"balanced controls most ({coll.max():.3f} in pair share, race by "
     f"{top.set_index('method').loc[coll.idxmax(), 'collateral race']:.3f}), {coll.idxmin()} least "
     f"({coll.min():.3f}).", display=False)
zero = verdicts[(verdicts["world"] == "strength-0") & (verdicts["asserts"] == "debias")]
glue("zero_sentence", ("On the strength-0 world, where nothing was planted, the removal rows read: "
                       + tally(zero) + "." if len(zero) else "The strength-0 world was not swept in this run."),
     display=False)

# %% [markdown]
# ## Summary
#
# At {glue:text}`top_world`, {glue:text}`n_removing` methods remove the planted gender skew
# from testbed-clip's retrieval beyond their matched control; first in the ranking is
# {glue:text}`best_method`. {glue:text}`not_removing` {glue:text}`collateral_sentence`
# {glue:text}`zero_sentence` {glue:text}`llava_sentence` Over all worlds and both models the
# verdicts come out {glue:text}`verdict_tally`.
#
# ## What this comparison cannot say
#
# - **It is one small model on a synthetic world.** testbed-clip has about a million vision
#   parameters trained for minutes on cartoon scenes where gender and race are drawn cues;
#   the ranking says which method removes *this* planted skew from *this* model's retrieval,
#   not which one works on CLIP ViT-B on photographs. The `paper` profile cannot settle that
#   either: real data has no planted truth, so there the book can only repeat each paper's own
#   metric (chapters 04-07).
# - **The testbed-llava methods are read thinly.** RES-FAIR, its LoRA and DPO+KL baselines,
#   steering and temperature scaling run on the `default` world only, on a handful of
#   scenarios, one scene each, one control draw, read on option logits rather than on
#   generated answers, with no utility or cost measure: their verdicts can tell a large
#   removal from none, little more, and they are ranked apart from the retrieval methods.
#   The steering direction's layer is fixed rather than selected as chapter 05 selects it;
#   DEBIASLENS on testbed-llava is not run here. DEBIASLENS runs on the `default` world only (its SAEs exist there alone): it has no
#   strength sweep and no strength-0 check of its own beyond its matched-latent control.
# - **The expert heads are picked per world by probes**, as chapter 07 picks them; a method
#   whose selection step fails on a world (picks heads that carry no gender) fails there, which
#   is part of what is measured, not a flaw in the measure.
# - **One attribute, one behaviour.** Every method here targets gender; "race moves" is its
#   collateral. The counter-stereotypical class holds two scenarios: its numbers are
#   anecdotes.
# - **The measure is linear in the planted pattern.** A method that scrambled the ranking
#   (moving scenarios at random) would show as collateral, not as removal; one that flips the
#   skew reads above 1.
# - **Cost is wall-clock time on a shared two-core machine**, timed once per run; the A/A
#   column says how far two identical runs differ.
#
# ## References
#
# - Gomez-Grabowska, A., González, J. and Gómez, L. (2026). Debiasing CLIP with neural
#   interventions. ECIR 2026.
# - An, N. M., Jang, Y., Hirota, Y., Hachiuma, R., Augenstein, I. and Shim, H. (2026).
#   Interpretable debiasing of vision-language models for social fairness. CVPR 2026.
# - Lan et al. (2025). RES-FAIR (RESidual Flow Adjustment for Inference Recalibration).
#   arXiv:2505.23798.
# - Ratzlaff, P., Howard, P., et al. (2024). Debiasing Large Multimodal Models via Test-Time
#   Steering. arXiv 2411.12590.
# - Wang, J., Liu, Y. and Wang, X. E. (2021). Are gender-neutral queries really
#   gender-neutral? Mitigating gender bias in image search. EMNLP 2021.
# - Chuang, C.-Y., Jampani, V., Li, Y., Torralba, A. and Jegelka, S. (2023). Debiasing
#   vision-language models via biased prompts. arXiv:2302.00070.
# - Lipsitch, M., Tchetgen Tchetgen, E. and Cohen, T. (2010). Negative controls: a tool for
#   detecting confounding and bias in observational studies. Epidemiology 21(3).

# %% tags=["hide-input"]
runtime_s = time.perf_counter() - T_START


def per_method(m):
    ps = pd.concat([r["per_scenario"] for r in runs.values()], ignore_index=True)
    d = ps[(ps["method"] == m) | (ps["condition"] == "none")]
    return d.merge(classes.rename(columns={"u": "written_skew", "u_other": "written_race_skew", "cls": "class"}),
                   on="scenario", how="left")


def slug(m):
    return "".join(c if c.isalnum() else "_" for c in m.lower()).strip("_")


headline = {
    "methods": {m: {"model": "testbed-clip", "task": "text-to-image retrieval (share of a scenario's man-woman image pairs ranked man first)",
                    "control": CONTROLS[m], "chapter": CHAPTER[m],
                    "worlds": [w for w in SWEEP if (w, m) in M]} for m in METHODS},
    "worlds": {w: STRENGTH[w] for w in SWEEP},
    "removed": {m: {w: {k: M[(w, m)]["planted"][k] for k in ("removed", "removed_lo", "removed_hi", "removed_abs",
                                                             "removed_abs_lo", "removed_abs_hi", "expressed_before")}
                    | {"counter_abs": M[(w, m)]["counter"]["removed_abs"],
                       "control_abs": M[(w, m)]["planted_control"]["removed_abs"],
                       "verdict": verdicts[(verdicts["world"] == w) & (verdicts["cell"] == f"testbed-clip | {m}")
                                           & (verdicts["asserts"] == "debias")]["verdict"].iloc[0]}
                    for w in SWEEP if (w, m) in M} for m in METHODS},
    "collateral": {m: {w: M[(w, m)]["collateral"] for w in SWEEP if (w, m) in M} for m in METHODS},
    "utility_kept": {m: {w: {"recall@5": M[(w, m)]["recall"], "zero_shot": M[(w, m)]["zero_shot"]} for w in SWEEP
                         if (w, m) in M} for m in METHODS},
    "cost_ratio": ({m: {**t, "ratio": (t["plain_s_per_1000"] + t["extra_s_per_1000"]) / t["plain_s_per_1000"],
                        "world": SWEEP[-1]} for m, t in timing.items()} if timing else
                   {"not_timed": "smoke profile or TIMING_REPEATS=0"}),
    "not_compared": "DEBIASLENS on testbed-llava; the testbed-llava methods on worlds other than default",
    "debiaslens": {w: r["debiaslens"] for w, r in runs.items()},
    "verdict_counts": verdicts["verdict"].value_counts().to_dict(),
    "runtime_s": runtime_s,
}
for m, x in LM.items():
    pm, lv_ = x["planted"], verdicts[verdicts["cell"] == f"testbed-llava | {m}"]["verdict"].iloc[0]
    headline["methods"][m] = {"model": "testbed-llava", "task": ("argmax answer between the two gender options"
                              if m == "temperature scaling" else "option lean log p(men) - log p(women)")
                              + " in the 'who is more likely' question", "control": H.LLAVA_METHODS[m],
                              "chapter": "05_steering" if m.startswith("steering") else "04_resfair",
                              "worlds": [LLAVA_WORLD], "source": lrun["notes"][m]}
    headline["removed"][m] = {LLAVA_WORLD: {k: pm[k] for k in ("removed", "removed_lo", "removed_hi", "removed_abs",
                                                              "removed_abs_lo", "removed_abs_hi", "expressed_before")}
                              | {"control_abs": x["planted_control"]["removed_abs"], "verdict": lv_,
                                 "answer_removed_abs": LM_ANSWER[m]["planted"]["removed_abs"]}}
    headline["collateral"][m] = {LLAVA_WORLD: x["collateral"]}
    headline["utility_kept"][m] = {LLAVA_WORLD: "not measured (testbed-llava forward passes cost about a second each)"}
if lrun is not None:
    headline["llava"] = {"scenarios": lrun["scenarios"], "n_prompts": lrun["n_prompts"], "seconds": lrun["seconds"],
                         "not_compared": [m for m in H.LLAVA_METHODS if m not in lrun["methods"]]}
tables = {"measures": measures, "verdicts": verdicts, "ranking": ranking}
if LM:
    tables.update({"llava_measures": llava_shown, "llava_ranking": llava_ranking,
                   "method_llava": lrun["per_scenario"].merge(classes.rename(columns={"u": "written_skew", "cls": "class"})
                                                              [["scenario", "written_skew", "class"]], on="scenario")})
if timing:
    tables["cost"] = cost
tables.update({f"method_{slug(m)}": per_method(m) for m in METHODS})
saved = save_results("08_head_to_head", params=P, headline=headline,
                     provenance={"models": ["testbed-clip"] + (["testbed-llava"] if LM else []), "data": ["testbed (synthetic), worlds " + ", ".join(SWEEP)]},
                     tables=tables)
glue("runtime", f"{runtime_s:.0f}", display=False)
display(Markdown(f"Results written to `{saved}`; run time {runtime_s:.0f} s."))
