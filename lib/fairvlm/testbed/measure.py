"""Measuring the testbed models against the planted ground truth.

Small functions that chapter 00 (and any chapter that wants the same numbers) calls:

- :func:`image_embeddings` / :func:`text_embeddings`: L2-normalised testbed-clip embeddings.
- :func:`zero_shot`: scenario classification of images by their most similar prompt.
- :func:`linear_probe`: held-out accuracy of a logistic-regression probe.
- :func:`group_skew`: for each query, the group make-up of its top-``k`` images in a
  gallery and, over the gallery's counterfactual quadruplets, how much more similar the
  query is to the man (Black) variant than to the woman (White) variant of the same scene.
- :func:`rank_agreement`: Spearman correlation between measured and planted skews.
- :func:`describe` and :func:`mention_table`: testbed-llava generations and how often they
  name the scenario, a gender and a race, per group.

Conventions: a *gallery* is a DataFrame like :func:`fairvlm.testbed.gallery` returns (one row
per image, columns ``scenario``, ``scene_seed``, ``variant``, ``gender``, ``race``); ``sims`` is
a ``(n_queries, n_images)`` array of cosine similarities in the gallery's row order. Skews
are signed: ``gender_skew > 0`` leans to men, ``race_skew > 0`` to Black people.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from fairvlm.errors import FairVLMError
from fairvlm.testbed.captions import mentions, names_scenario


@torch.no_grad()
def image_embeddings(model, processor, images, *, batch_size: int = 128) -> torch.Tensor:
    """``(n, d)`` L2-normalised image embeddings of a dual encoder (``get_image_features``)."""
    ip = getattr(processor, "image_processor", processor)
    outs = []
    for i in range(0, len(images), batch_size):
        pix = ip(images=[im.convert("RGB") for im in images[i:i + batch_size]], return_tensors="pt")["pixel_values"]
        out = model.get_image_features(pixel_values=pix)
        out = getattr(out, "pooler_output", out)
        outs.append(torch.nn.functional.normalize(out.float(), dim=-1))
    return torch.cat(outs)


@torch.no_grad()
def text_embeddings(model, processor, texts, *, batch_size: int = 256) -> torch.Tensor:
    """``(m, d)`` L2-normalised text embeddings of a dual encoder (``get_text_features``)."""
    tok = getattr(processor, "tokenizer", processor)
    outs = []
    for i in range(0, len(texts), batch_size):
        enc = tok(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=64, return_tensors="pt")
        out = model.get_text_features(**enc)
        out = getattr(out, "pooler_output", out)
        outs.append(torch.nn.functional.normalize(out.float(), dim=-1))
    return torch.cat(outs)


def zero_shot(image_emb, prompt_emb, labels, classes) -> pd.DataFrame:
    """One row per image: ``label``, ``predicted`` (the class of the most similar prompt) and
    ``correct``. ``prompt_emb[j]`` is the prompt of ``classes[j]``."""
    if len(prompt_emb) != len(classes):
        raise FairVLMError(f"{len(prompt_emb)} prompt embeddings for {len(classes)} classes")
    sims = np.asarray(image_emb @ prompt_emb.T)
    pred = np.asarray(classes)[sims.argmax(1)]
    labels = np.asarray(labels)
    return pd.DataFrame({"label": labels, "predicted": pred, "correct": pred == labels})


def linear_probe(train_x, train_y, test_x, test_y, *, seed: int = 0) -> float:
    """Held-out accuracy of a standardised logistic-regression probe (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(np.asarray(train_x), np.asarray(train_y))
    return float(clf.score(np.asarray(test_x), np.asarray(test_y)))


def group_skew(sims, gallery: pd.DataFrame, queries, *, k: int) -> pd.DataFrame:
    """Per query: top-``k`` group shares and the paired counterfactual preference.

    Columns: ``query``, ``share_man`` / ``share_black`` (shares of men / Black people among the
    ``k`` most similar gallery images), ``gender_skew = share_man - 1/2``, ``race_skew =
    share_black - 1/2``, and ``cf_gender`` / ``cf_race``: the mean over the gallery's scenes of
    ``sim(man) - sim(woman)`` (``sim(Black) - sim(White)``) between the variants of one scene,
    in cosine units. The paired measure compares images that differ only in the person, so
    it is free of the scenario's own retrieval errors. The gallery must consist of complete
    quadruplets (every scene in all four variants).
    """
    sims = np.asarray(sims, dtype=np.float64)
    queries = list(queries)
    if sims.shape != (len(queries), len(gallery)):
        raise FairVLMError(f"sims has shape {sims.shape}; expected ({len(queries)}, {len(gallery)})")
    if not 1 <= k <= len(gallery):
        raise FairVLMError(f"k={k} must lie in [1, {len(gallery)}]")
    g = gallery.reset_index(drop=True)
    man = (g["gender"] == "man").to_numpy()
    black = (g["race"] == "black").to_numpy()
    scene = g["scenario"].astype(str) + "#" + g["scene_seed"].astype(str)
    counts = scene.value_counts()
    if (counts != 4).any() or g.groupby(scene)["variant"].nunique().min() != 4:
        raise FairVLMError("group_skew needs a gallery of complete quadruplets (all four variants of every scene)")
    codes, _ = pd.factorize(scene)
    n_scenes = codes.max() + 1

    def paired(mask):
        a = np.zeros((len(queries), n_scenes))
        b = np.zeros((len(queries), n_scenes))
        np.add.at(a.T, codes[mask], sims[:, mask].T)
        np.add.at(b.T, codes[~mask], sims[:, ~mask].T)
        return ((a - b) / 2).mean(1)   # two images on each side of every scene

    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    out = pd.DataFrame({"query": queries, "share_man": man[top].mean(1), "share_black": black[top].mean(1)})
    out["gender_skew"] = out["share_man"] - 0.5
    out["race_skew"] = out["share_black"] - 0.5
    out["cf_gender"] = paired(man)
    out["cf_race"] = paired(black)
    return out


def rank_agreement(measured, planted) -> float:
    """Spearman rank correlation between measured and planted skews (NaN if one is constant)."""
    from scipy.stats import spearmanr

    measured, planted = np.asarray(measured, float), np.asarray(planted, float)
    if len(measured) != len(planted) or len(measured) < 3:
        raise FairVLMError("rank_agreement needs two sequences of the same length (at least 3)")
    if np.ptp(measured) == 0 or np.ptp(planted) == 0:
        return float("nan")
    return float(spearmanr(measured, planted).statistic)


@torch.no_grad()
def describe(model, processor, images, prompt: str, *, system: str | None = None, max_new_tokens: int = 24,
             batch_size: int = 16, progress: bool = False) -> list[str]:
    """Greedy testbed-llava answers to ``prompt`` for each image (one image per prompt)."""
    from tqdm.auto import tqdm

    from fairvlm.testbed.train import llava_prompt

    tok = processor.tokenizer
    text = llava_prompt(prompt, system=system)
    out = []
    starts = range(0, len(images), batch_size)
    for i in tqdm(starts, desc="generating", disable=not progress, leave=False):
        chunk = [im.convert("RGB") for im in images[i:i + batch_size]]
        enc = processor(images=chunk, text=[text] * len(chunk), return_tensors="pt", padding=True)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        out += [s.strip() for s in tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]
    return out


def mention_table(texts, gallery: pd.DataFrame) -> pd.DataFrame:
    """Per generated text: its row of the gallery plus ``names_scenario``, ``mentions_gender``,
    ``mentions_race`` (see :func:`fairvlm.testbed.captions.mentions`)."""
    if len(texts) != len(gallery):
        raise FairVLMError(f"{len(texts)} texts for {len(gallery)} gallery rows")
    g = gallery.reset_index(drop=True).copy()
    g["text"] = list(texts)
    m = [mentions(t) for t in texts]
    g["names_scenario"] = [names_scenario(t, k) for t, k in zip(texts, g["scenario"])]
    g["mentions_gender"] = [x["gender"] for x in m]
    g["mentions_race"] = [x["race"] for x in m]
    return g
