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
# # The data
#
# ## Overview
#
# Three real datasets recur in this book, and this chapter looks at each before any model
# sees them:
#
# - **PAIRS** (Fraser and Kiritchenko, 2024): 50 everyday scenarios, each generated four
#   times with only the prompted race (Black, white) and gender (man, woman) changed.
#   RES-FAIR (Lan et al., 2025) asks its multiple-choice questions about these images,
#   after renaming 44 scenarios into labels of the person shown and dropping 6
#   (RES-FAIR appendix A.1, Figure 1; appendix C.1).
# - **SocialCounterfactuals** (Howard et al., 2024): about 171k synthetic images in
#   *counterfactual sets* that vary two social attributes over a fixed seed. RES-FAIR
#   fits its residual directions on it and evaluates on PAIRS (and the other way round);
#   the gradient-steering paper (Ratzlaff et al., 2024) builds its steering data from it.
# - **So-B-IT** (Hamidieh et al., 2024): a taxonomy of descriptive words in ten
#   categories, the queries of the CLIP head-intervention paper's entropy metric
#   (Gomez-Grabowska et al., 2026, Table 4).
#
# The only claims to check here are counts the RES-FAIR appendix states about its data;
# the *Paper vs this book* table at the end sets them beside ours.
#
# ## Prerequisites and time to run
#
# No model and no GPU. The SocialCounterfactuals metadata and the So-B-IT file are read
# from `data/` or from `../shared/data/` beside the checkout; the PAIRS images from
# `data/pairs`, `$FAIRVLM_PAIRS` or `../shared/data/pairs`. If PAIRS is absent the chapter
# still runs and says how to fetch it. 10 seconds on 2 CPU cores in a whole `make book` on
# 2026-12-07, and about as long for every profile (`smoke` only draws a smaller image grid);
# with `FETCH_PAIRS=True` add the download of 19 MB. Earlier measurements:
# `benchmarks/TIMINGS.md`.
#
# ## Parameters
#
# `FETCH_PAIRS=True` downloads PAIRS (pinned commit, every file checked by sha256) when no
# copy is found; the default never touches the network.

# %% tags=["parameters"]
PROFILE = "embedded"
SEED = 0
FETCH_PAIRS = False

# %%
from fairvlm.params import check_choice, check_params

P = check_params(PROFILE=PROFILE, SEED=SEED, FETCH_PAIRS=FETCH_PAIRS)
check_choice("FETCH_PAIRS", FETCH_PAIRS, (False, True))
GRID_PER_SECTION = 1 if PROFILE == "smoke" else 2  # scenarios per section in the image grid
TOP_OCCUPATIONS = 10 if PROFILE == "smoke" else 20

# %% [markdown]
# ## Imports

# %% tags=["hide-input"]
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from IPython.display import Markdown, display
from myst_nb import glue
from PIL import Image

import fairvlm
from fairvlm import data as D
from fairvlm.plotting import savefig, set_theme
from fairvlm.results import save_results

fairvlm.seed_everything(SEED)
set_theme()

# %% [markdown]
# ## PAIRS: one scenario, four parallel images
#
# PAIRS was made with an image generator: the authors prompted for one person in a
# scenario ("a photo of a Black woman wearing scrubs"), then asked for subtle variations
# that change only the race or gender in the prompt, until the four versions looked alike
# in everything else. The race and gender columns below are therefore the *prompts* the
# images were made from, not properties of real people (PAIRS datasheet). The images
# are under CC-BY 4.0 at `github.com/katiefraser/PAIRS`; the book never commits them.
# `fairvlm.data.fetch_pairs` downloads the tree at commit `507075a` into `data/pairs`
# and checks each file against the sha256 manifest `data/pairs.sha256` kept in this
# repository: a truncated or altered file stops it, naming the file, and leaves no
# partial copy behind. From a shell:
#
# ```bash
# python -m fairvlm.data fetch-pairs data/pairs              # from GitHub
# python -m fairvlm.data fetch-pairs data/pairs --source DIR  # from a local copy
# ```

# %%
pairs_dir = D.pairs_root(required=False)
if pairs_dir is None and FETCH_PAIRS:
    pairs_dir = D.fetch_pairs()
if pairs_dir is not None:
    n_verified = D.verify_pairs(pairs_dir)
    pairs = D.load_pairs(pairs_dir)
    display(Markdown(f"PAIRS found and all {n_verified} files match the manifest."))
else:
    n_verified = 0
    pairs = pd.DataFrame(columns=["section", "scenario", "label", "gender", "race", "path"])
    display(Markdown(
        "**PAIRS is not present on this machine**, so the image grid below is skipped. "
        "Fetch it with `python -m fairvlm.data fetch-pairs data/pairs`, or re-run this "
        "chapter with `-p FETCH_PAIRS True`, or set `FAIRVLM_PAIRS` to an existing copy."))
pairs_present = pairs_dir is not None
glue("pairs_n_images", len(pairs), display=False)
glue("pairs_n_scenarios", pairs.groupby(["section", "scenario"]).ngroups if pairs_present else 0,
     display=False)
pairs.drop(columns="path").head(8)

# %% [markdown]
# This run found {glue:text}`pairs_n_images` images in {glue:text}`pairs_n_scenarios`
# scenarios (0 means PAIRS was absent). Below, a few scenarios of each section (drawn with
# `SEED`), one row per scenario: the four images differ only in the prompted group.

# %%
if pairs_present:
    rng = np.random.default_rng(SEED)
    mapped = pairs.dropna(subset=["label"]).drop_duplicates(["section", "scenario"])
    picks = pd.concat([
        g.iloc[np.sort(rng.choice(len(g), size=GRID_PER_SECTION, replace=False))]
        for _, g in mapped.groupby("section", sort=False)
    ])
    rows = [pairs[(pairs.section == r.section) & (pairs.scenario == r.scenario)]
            for r in picks.itertuples()]
    fig, axes = plt.subplots(len(rows), 4, figsize=(7.2, 1.9 * len(rows)), squeeze=False)
    for i, quad in enumerate(rows):
        for j, r in enumerate(quad.itertuples()):
            ax = axes[i, j]
            with Image.open(r.path) as im:
                ax.imshow(im.convert("RGB"))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{r.race} {r.gender}", fontsize=9)
        first = quad.iloc[0]
        axes[i, 0].set_ylabel(f"{first.section}\n{first.scenario}\n→ {first.label}", fontsize=8)
    fig.suptitle("PAIRS quadruplets (RES-FAIR label after the arrow)", fontsize=10)
    fig.tight_layout()
    savefig(fig, "00_data_pairs_grid")
else:
    print("PAIRS absent: no image grid (see above for how to fetch it).")

# %% [markdown]
# ## The RES-FAIR label mapping
#
# A PAIRS scenario names what the picture shows ("airplane", "scrubs"), not who is in
# it. RES-FAIR's questions ask about a person, so its appendix renames each scenario into
# a label for the person ("airplane" becomes "pilot") and drops the scenarios for which
# its annotators found no fitting label. We transcribe that mapping as
# `fairvlm.data.PAIRS_LABELS`. Two slips in the printed appendix are corrected, and both
# spellings are kept in the table: "layer" for the law-office scenario is a typo for
# "lawyer", and "in the convenience_store" carries the folder name's underscore into a
# phrase that ends up in prompts.

# %%
labels = D.label_table()
n_mapped = int(labels["mapped"].sum())
n_dropped = int((~labels["mapped"]).sum())
glue("n_mapped", n_mapped, display=False)
glue("n_dropped", n_dropped, display=False)
glue("n_mapped_rows", 4 * n_mapped, display=False)
corrections = labels[labels["label"].notna() & (labels["label"] != labels["appendix_label"])]
display(corrections[["section", "scenario", "appendix_label", "label"]]
        .rename(columns={"appendix_label": "printed in the appendix", "label": "used here"}))
wide = labels.assign(label=labels["label"].fillna("(dropped)"))
wide[["section", "scenario", "label"]].style.hide(axis="index")

# %% [markdown]
# {glue:text}`n_mapped` scenarios keep a label and {glue:text}`n_dropped` are dropped;
# `load_pairs(mapped_only=True)` returns the {glue:text}`n_mapped_rows` images of the
# mapped ones, which are the images every RES-FAIR chapter of this book uses.
#
# ## SocialCounterfactuals: counterfactual sets
#
# Each SocialCounterfactuals set comes from one prompt, for instance "A picture of a
# {race} {gender} plumber", rendered with one seed for every combination of two
# attributes, so that within a set only those attributes move. The metadata (from the
# authors' code; the images themselves are on the Hugging Face hub and are not needed
# here) lists one set per row and one caption per image. `load_socialcounterfactuals`
# parses each caption into template, attributes and occupation, and checks that every
# set is a complete grid of its two attributes.

# %%
scf_dir = D.socialcf_root(required=False)
if scf_dir is not None:
    scf = D.load_socialcounterfactuals("all", scf_dir)
    scf_stats = D.set_statistics(scf)
    display(scf_stats)
else:
    scf = pd.DataFrame(columns=list(D.socialcf.COLUMNS))
    scf_stats = pd.DataFrame(columns=["segment", "n_sets", "images_per_set", "n_occupations"])
    display(Markdown("**SocialCounterfactuals metadata not found**: download the CSVs from "
                     f"{D.socialcf.SCF_METADATA_URL} into `data/socialcounterfactuals/`."))
by_segment = scf_stats.set_index("segment")


def _stat(segment, column):
    return int(by_segment.loc[segment, column]) if segment in by_segment.index else 0


glue("scf_rg_sets", _stat("race_gender", "n_sets"), display=False)
glue("scf_rg_size", _stat("race_gender", "images_per_set"), display=False)
glue("scf_rg_occupations", _stat("race_gender", "n_occupations"), display=False)
glue("scf_n_images", int(scf_stats["n_images"].sum()) if len(scf_stats) else 0, display=False)
rg_per_occupation = (scf[scf["segment"] == "race_gender"].drop_duplicates("set_id")
                     .groupby("occupation").size())
glue("scf_rg_max_sets", int(rg_per_occupation.max()) if len(rg_per_occupation) else 0,
     display=False)
glue("scf_rg_few_sets", int((rg_per_occupation <= 2).sum()), display=False)

# %% [markdown]
# The race x gender segment holds {glue:text}`scf_rg_sets` sets of {glue:text}`scf_rg_size`
# images over {glue:text}`scf_rg_occupations` distinct occupations, and the three
# segments together list {glue:text}`scf_n_images` images. Occupations are far from
# balanced: the most frequent has {glue:text}`scf_rg_max_sets` race x gender sets while
# {glue:text}`scf_rg_few_sets` occupations have at most two, which matters whenever
# results are averaged over sets rather than over occupations. One set, drawn with `SEED`:

# %%
if len(scf):
    rg = scf[scf["segment"] == "race_gender"]
    set_ids = rg["set_id"].unique()
    example = rg[rg["set_id"] == set_ids[np.random.default_rng(SEED).integers(len(set_ids))]]
    display(example[["caption_index", "race", "gender", "occupation", "caption"]]
            .style.hide(axis="index"))

# %%
if len(scf):
    sets = D.counterfactual_sets(scf)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 0.22 * TOP_OCCUPATIONS + 1.4),
                                   gridspec_kw={"width_ratios": [1.1, 1]})
    top = (sets[sets.segment == "race_gender"].groupby("occupation").size()
           .sort_values(ascending=False).head(TOP_OCCUPATIONS))
    ax1.barh(top.index[::-1], top.to_numpy()[::-1], color="C0")
    ax1.set_xlabel("race x gender sets")
    ax1.set_title(f"(a) the {TOP_OCCUPATIONS} occupations with most sets", fontsize=9)
    ax1.tick_params(axis="y", labelsize=7)
    per_occ = sets.groupby(["segment", "occupation"]).size().rename("sets").reset_index()
    sns.ecdfplot(data=per_occ, x="sets", hue="segment", hue_order=list(D.SEGMENTS),
                 log_scale=True, ax=ax2)
    ax2.set_xlabel("sets per occupation (log scale)")
    ax2.set_ylabel("share of occupations with at most x sets")
    ax2.set_title("(b) how sets spread over occupations", fontsize=9)
    fig.tight_layout()
    savefig(fig, "00_data_socialcf_sets")
    occupation_table = per_occ.pivot(index="occupation", columns="segment", values="sets")
    occupation_table = occupation_table.fillna(0).astype(int).reset_index()
else:
    occupation_table = pd.DataFrame(columns=["occupation"])

# %% [markdown]
# ## So-B-IT: descriptive words by category
#
# So-B-IT lists words that often carry stereotypes, grouped into categories; the CLIP
# head paper retrieves the 100 faces closest to each word and measures how evenly their
# demographic labels spread. The upstream file spells one category "behavorial": the
# loader calls it "behavioral" and still accepts the old spelling, so
# `sobit_words("behavorial")` and `sobit_words("behavioral")` give the same list. A word
# can sit in two categories ("lazy" is both behavioral and about education and wealth).

# %%
sobit_file = D.sobit_path(required=False)
if sobit_file is not None:
    sobit = D.load_sobit(sobit_file)
    sobit_table = D.sobit_categories(sobit_file)
    display(sobit_table.style.hide(axis="index"))
else:
    sobit = pd.DataFrame(columns=["category", "word"])
    sobit_table = pd.DataFrame(columns=["category", "n_words", "examples"])
    display(Markdown("**So-B-IT not found**: put `So-B-IT_taxonomy.json` into `data/sobit/`."))
glue("sobit_n_categories", len(sobit_table), display=False)
glue("sobit_n_words", len(sobit), display=False)
glue("sobit_n_unique", sobit["word"].nunique(), display=False)
largest = sobit_table.sort_values("n_words", ascending=False).head(1)
glue("sobit_largest", Markdown(f'"{largest["category"].item()}"' if len(largest) else "none"),
     display=False)
glue("sobit_largest_pct", round(100 * largest["n_words"].item() / len(sobit)) if len(largest)
     else 0, display=False)

# %% [markdown]
# The taxonomy has {glue:text}`sobit_n_categories` categories and
# {glue:text}`sobit_n_words` (category, word) pairs, {glue:text}`sobit_n_unique` distinct
# words. The largest category, {glue:md}`sobit_largest`, holds
# {glue:text}`sobit_largest_pct` % of the pairs, so a plain average over all words leans
# towards it; per-category results (as the CLIP head paper reports them) avoid that.
#
# ## Paper vs this book
#
# The numbers are computed above; the verdict compares them with the RES-FAIR appendix.

# %%
mapped_images = int(pairs["label"].notna().sum()) if pairs_present else None
rg_occupations = _stat("race_gender", "n_occupations")
paper_vs_book = pd.DataFrame([
    {
        "claim (RES-FAIR appendix)": "PAIRS scenarios mapped to labels (A.1 Fig. 1, C.1)",
        "paper": 44, "this book": n_mapped,
        "produced by": "transcribed mapping" + (", matched to the PAIRS tree" if pairs_present
                                                else " (PAIRS absent)"),
        "verdict": "reproduced" if n_mapped == 44 else "not reproduced",
    },
    {
        "claim (RES-FAIR appendix)": "PAIRS scenarios dropped (C.1)",
        "paper": 6, "this book": n_dropped,
        "produced by": "transcribed mapping",
        "verdict": "reproduced" if n_dropped == 6 else "not reproduced",
    },
    {
        "claim (RES-FAIR appendix)": "PAIRS inputs: 44 labels x 4 input kinds x 2 categories (C.1)",
        "paper": 352, "this book": n_mapped * 4 * 2,
        "produced by": "mapping x input kinds x {gender, race}; images: "
                       + (f"{mapped_images} mapped images on disk" if pairs_present
                          else "PAIRS absent"),
        "verdict": ("reproduced" if n_mapped * 8 == 352 and mapped_images == 4 * n_mapped
                    else "partly (images absent)" if not pairs_present else "not reproduced"),
    },
    {
        "claim (RES-FAIR appendix)": "SocialCounterfactuals classes after filtering (C.1)",
        "paper": 126, "this book": rg_occupations,
        "produced by": "occupations in the race x gender metadata, before any filter",
        "verdict": "not testable here: the filter is not specified precisely enough",
    },
])
paper_vs_book.style.hide(axis="index")

# %% [markdown]
# ## Summary and what's next
#
# PAIRS is small (four images per scenario), balanced by construction, and reaches this
# book as a pinned, checksummed download; with the RES-FAIR mapping it gives
# {glue:text}`n_mapped_rows` labelled images. SocialCounterfactuals is large and uneven
# across occupations, and every set in its metadata is a complete attribute grid. So-B-IT
# gives word queries by category. The next chapter, *the counterfactual testbed*, builds
# the synthetic world with a planted bias that the embedded profile runs on; the RES-FAIR
# chapters then ask their questions about the PAIRS labels tabulated here.
#
# ## References
#
# - Fraser, K. C. and Kiritchenko, S. (2024). Examining gender and racial bias in large
#   vision-language models using a novel dataset of parallel images. EACL 2024.
# - Lan et al. (2025). RES-FAIR (RESidual Flow Adjustment for Inference Recalibration).
#   arXiv:2505.23798; appendix A.1 (label mapping) and C.1 (data and split).
# - Howard, P. et al. (2024). SocialCounterfactuals: probing and mitigating intersectional
#   social biases in vision-language models with counterfactual examples. CVPR 2024.
# - Howard, P., Fraser, K. C., Bhiwandiwalla, A. and Kiritchenko, S. (2025). Uncovering
#   bias in large vision-language models at scale with counterfactuals. NAACL 2025.
# - Hamidieh, K. et al. (2024). Identifying implicit social biases in vision-language
#   models. AIES 2024.
# - Ratzlaff, N. et al. (2024). Test-time debiasing of large multimodal models by
#   steering (Intel Labs). arXiv:2411.12590.
# - Gomez-Grabowska, A. et al. (2026). Debiasing CLIP with neural interventions. ECIR 2026.

# %% tags=["hide-input"]
pairs_index = pairs.assign(
    file=[str(Path(p).resolve().relative_to(Path(pairs_dir).resolve())) for p in pairs["path"]] if pairs_present else []
).drop(columns="path")
saved = save_results(
    "00_data",
    params=P,
    headline={
        "pairs_present": pairs_present,
        "pairs_n_images": len(pairs),
        "pairs_n_verified": n_verified,
        "pairs_n_mapped_images": mapped_images,
        "mapping_n_mapped": n_mapped,
        "mapping_n_dropped": n_dropped,
        "socialcf_n_sets": {r.segment: int(r.n_sets) for r in scf_stats.itertuples()},
        "socialcf_race_gender_occupations": rg_occupations,
        "sobit_n_categories": len(sobit_table),
        "sobit_n_words": len(sobit),
    },
    provenance={
        "models": [],
        "data": [
            f"PAIRS {D.PAIRS_URL} @ {D.PAIRS_COMMIT}" + ("" if pairs_present else " (absent)"),
            "RES-FAIR appendix A.1 Figure 1 (label mapping, transcribed)",
            f"SocialCounterfactuals metadata {D.socialcf.SCF_REPO} @ {D.socialcf.SCF_COMMIT}",
            f"So-B-IT {D.sobit.SOBIT_REPO} @ {D.sobit.SOBIT_COMMIT}",
        ],
    },
    tables={
        "pairs_labels": labels,
        "pairs_images": pairs_index,
        "socialcf_segments": scf_stats,
        "socialcf_occupations": occupation_table,
        "sobit_categories": sobit_table,
        "paper_vs_book": paper_vs_book,
    },
)
