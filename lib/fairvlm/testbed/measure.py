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

import copy
import functools
import inspect

import numpy as np
import pandas as pd
import torch

from fairvlm import validate
from fairvlm.errors import FairVLMError, ParameterError
from fairvlm.testbed.captions import mentions, names_scenario


def _model(name: str, model, method: str):
    if isinstance(model, str) or not callable(getattr(model, method, None)):
        raise ParameterError(f"{name}={validate.show(model)} is not valid: it must be a loaded testbed model "
                             f"(with {method}; fairvlm.testbed.load_hf), not its name")
    return model


def _images(name: str, images) -> list:
    out = validate.sequence(name, images)
    for i, im in enumerate(out):
        if not callable(getattr(im, "convert", None)):
            raise ParameterError(f"{name}[{i}]={validate.show(im)} is not valid: {name} must be a list of PIL images")
    return out


def _xy(prefix: str, x, y):
    x = validate.array(f"{prefix}_x", x, ndim=2)
    y = validate.labels(f"{prefix}_y", y, length=len(x))
    return x, y


@torch.no_grad()
def image_embeddings(model, processor, images, *, batch_size: int = 128) -> torch.Tensor:
    """``(n, d)`` L2-normalised image embeddings of a dual encoder (``get_image_features``)."""
    _model("model", model, "get_image_features")
    images = _images("images", images)
    validate.integer("batch_size", batch_size, low=1)
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
    _model("model", model, "get_text_features")
    texts = validate.strings("texts", texts)
    validate.integer("batch_size", batch_size, low=1)
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
    ie = validate.array("image_emb", image_emb, ndim=2)
    pe = validate.array("prompt_emb", prompt_emb, ndim=2)
    if ie.shape[1] != pe.shape[1]:
        raise ParameterError(f"image_emb and prompt_emb must have one width, got {ie.shape[1]} and {pe.shape[1]}")
    validate.labels("labels", labels, length=len(ie))
    validate.sequence("classes", classes)
    if len(prompt_emb) != len(classes):
        raise FairVLMError(f"{len(prompt_emb)} prompt embeddings for {len(classes)} classes")
    sims = np.asarray(image_emb @ prompt_emb.T)
    pred = np.asarray(classes)[sims.argmax(1)]
    labels = np.asarray(labels)
    return pd.DataFrame({"label": labels, "predicted": pred, "correct": pred == labels})


def linear_probe(train_x, train_y, test_x, test_y, *, seed: int = 0) -> float:
    """Held-out accuracy of a standardised logistic-regression probe (scikit-learn)."""
    _xy("train", train_x, train_y)
    _xy("test", test_x, test_y)
    validate.integer("seed", seed, low=0)
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
    validate.array("sims", sims, ndim=2)
    validate.frame("gallery", gallery, columns=("gender", "race", "scenario", "scene_seed", "variant"))
    validate.strings("queries", queries)
    validate.integer("k", k, low=1)
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
    validate.array("measured", measured, ndim=1, finite=False)  # NaN: rho is NaN, as before
    validate.array("planted", planted, ndim=1, finite=False)
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
    images = _images("images", images)
    validate.text("prompt", prompt)
    if system is not None:
        validate.text("system", system, empty=True)
    validate.integer("max_new_tokens", max_new_tokens, low=1)
    validate.integer("batch_size", batch_size, low=1)
    validate.flag("progress", progress)
    if not callable(getattr(model, "generate", None)) or getattr(processor, "tokenizer", None) is None:
        raise ParameterError("model and processor must be testbed-llava's (fairvlm.testbed.load_hf('testbed-llava'))")
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
    validate.strings("texts", texts, empty=True, blank=True)
    validate.frame("gallery", gallery, columns=("scenario",))
    if len(texts) != len(gallery):
        raise FairVLMError(f"{len(texts)} texts for {len(gallery)} gallery rows")
    g = gallery.reset_index(drop=True).copy()
    g["text"] = list(texts)
    m = [mentions(t) for t in texts]
    g["names_scenario"] = [names_scenario(t, k) for t, k in zip(texts, g["scenario"])]
    g["mentions_gender"] = [x["gender"] for x in m]
    g["mentions_race"] = [x["race"] for x in m]
    return g


# ---- visibility of the group cues, independent of where the person stands ------------------


def aligned_crops(rows: pd.DataFrame, *, side: int = 24, render_size: int = 128) -> np.ndarray:
    """``(n, side * side * 3)`` float pixels of each row's head-and-shoulders box
    (:func:`fairvlm.testbed.world.person_box`), rendered at ``render_size`` and resized to
    ``side`` x ``side``: the people aligned, so a linear probe on them measures how visible the
    group cues are, not how far the scene moved the person."""
    validate.frame("rows", rows, columns=("scenario", "gender", "race", "scene_seed"))
    validate.integer("side", side, low=1, high=1024)
    validate.integer("render_size", render_size, low=16, high=2048)
    from PIL import Image

    from fairvlm.testbed.world import person_box, render

    out = np.empty((len(rows), side * side * 3), dtype=np.float32)
    it = rows[["scenario", "gender", "race", "scene_seed"]].itertuples(index=False)
    for i, (k, g, r, s) in enumerate(it):
        im = render(k, g, r, int(s), render_size)
        x0, y0, x1, y1 = person_box(k, int(s))
        box = tuple(int(round(v * render_size)) for v in (x0, y0, x1, y1))
        crop = im.crop(box).resize((side, side), Image.Resampling.BOX)
        out[i] = np.asarray(crop, dtype=np.float32).ravel() / 255
    return out


def probe_correct(train_x, train_y, test_x, test_y, *, seed: int = 0) -> np.ndarray:
    """Per test item, whether a standardised logistic-regression probe fitted on the training
    items classifies it correctly (its mean is :func:`linear_probe`'s accuracy)."""
    _xy("train", train_x, train_y)
    _xy("test", test_x, test_y)
    validate.integer("seed", seed, low=0)
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(np.asarray(train_x), np.asarray(train_y))
    return clf.predict(np.asarray(test_x)) == np.asarray(test_y)


# ---- rank agreement with an interval ------------------------------------------------------


def _spearman_axis(a, b, axis=-1):
    from scipy.stats import rankdata

    ra = rankdata(a, axis=axis)
    rb = rankdata(b, axis=axis)
    ra = ra - ra.mean(axis=axis, keepdims=True)
    rb = rb - rb.mean(axis=axis, keepdims=True)
    den = np.sqrt((ra ** 2).sum(axis=axis) * (rb ** 2).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(axis=axis) / np.where(den > 0, den, 1), 0.0)


def spearman_ci(measured, planted, *, seed: int = 0, n_resamples: int = 2000) -> dict:
    """Spearman rho of ``measured`` against ``planted`` with its p-value and a seeded paired
    bootstrap 95% interval over the items (``fairvlm.verdicts.bootstrap_ci``)."""
    validate.array("measured", measured, ndim=1, finite=False)  # NaN: rho is NaN, as before
    validate.array("planted", planted, ndim=1, finite=False)
    validate.integer("seed", seed, low=0)
    validate.integer("n_resamples", n_resamples, low=1)
    from scipy.stats import spearmanr

    from fairvlm.verdicts import bootstrap_ci

    m, p = np.asarray(measured, float), np.asarray(planted, float)
    if len(m) != len(p) or len(m) < 3:
        raise FairVLMError("spearman_ci needs two sequences of the same length (at least 3)")
    test = spearmanr(m, p)
    lo, hi = bootstrap_ci(m, p, statistic=_spearman_axis, paired=True, n_resamples=n_resamples, seed=seed)
    return {"rho": float(test.statistic), "p_value": float(test.pvalue), "ci_low": lo, "ci_high": hi}


# ---- testbed-llava: perception and the planted "who is more likely" lean --------------------

_MALE = ("man", "men", "male", "he", "his", "him", "boy", "gentleman", "guy")
_FEMALE = ("woman", "women", "female", "she", "her", "girl", "lady")


def named_gender(text: str) -> str | None:
    """``"man"``, ``"woman"`` or ``None``: the gender a text names (``None`` if it names none or
    both)."""
    validate.text("text", text, empty=True)
    import re

    low = text.lower()
    m = any(re.search(rf"\b{w}\b", low) for w in _MALE)
    f = any(re.search(rf"\b{w}\b", low) for w in _FEMALE)
    if m == f:
        return None
    return "man" if m else "woman"


def _first_token_ids(tok, word: str) -> list[int]:
    forms = {word, word.lower(), word.capitalize(), " " + word, " " + word.lower(), " " + word.capitalize()}
    return sorted({tok(f, add_special_tokens=False)["input_ids"][0] for f in forms})


@torch.no_grad()
def who_lean(model, processor, spec, keys, *, scene_seeds, n_templates: int | None = None, batch_size: int = 8,
             progress: bool = False) -> pd.DataFrame:
    """testbed-llava's order-balanced lean in "who is more likely" questions, per scenario.

    For every scenario, attribute (gender, race) and held-out scene in ``scene_seeds``, two
    images of the scene that differ only in the attribute (the other attribute alternates over
    scenes) are shown in both orders, with the first ``n_templates`` (default: all) question
    templates of :data:`fairvlm.testbed.captions.MCQ_TEMPLATES` and both orders of the two group options
    (the fair option last and first). The lean is the mean, over these prompts, of
    ``log p(group A) - log p(group B)``, where ``p`` is the next-token mass of the first tokens
    of the option word's surface forms after the assistant header. Group A is men (Black
    people), so a positive lean goes the way of a positive planted skew. Returns one row per
    scenario and attribute: ``scenario``, ``attribute``, ``lean``, ``planted`` (the planted
    share of men or of Black people minus 1/2), ``n_prompts``.

    The two orders of the options share everything before ``" Options:"`` (system prompt,
    images, question): that prefix runs once and its key/value cache serves both. The leans
    agree with scoring each whole prompt on its own to float32 noise (a test checks it; 5e-6
    on the full build), in 0.68 of the time.
    """
    from fairvlm.testbed.spec import BiasSpec

    if not isinstance(spec, BiasSpec):
        raise ParameterError(f"spec={validate.show(spec)} is not valid: it must be a BiasSpec (fairvlm.testbed.world_spec())")
    validate.strings("keys", keys)
    validate.integers("scene_seeds", scene_seeds, low=0)
    if n_templates is not None:
        validate.integer("n_templates", n_templates, low=1)
    validate.integer("batch_size", batch_size, low=1)
    validate.flag("progress", progress)
    from tqdm.auto import tqdm

    from fairvlm.testbed import captions as C
    from fairvlm.testbed.train import llava_prompt
    from fairvlm.testbed.world import render

    tok = processor.tokenizer
    # one unit per scenario, attribute, scene, image order and template: a prefix (system,
    # images, question) shared by the two orders of the options, which follow it
    units = []
    for k in keys:
        preds = C.scenario_predicates(k)
        pred = preds[-1]
        for attribute in ("gender", "race"):
            (va, na, oa), (vb, nb, ob) = C.MCQ_GROUPS[attribute]
            for j, s in enumerate(scene_seeds):
                if attribute == "gender":
                    other = ("white", "black")[j % 2]
                    ims = [render(k, "man", other, s), render(k, "woman", other, s)]
                else:
                    other = ("man", "woman")[j % 2]
                    ims = [render(k, other, "black", s), render(k, other, "white", s)]
                for flip in (False, True):
                    pair = ims[::-1] if flip else ims
                    for t in C.MCQ_TEMPLATES[:n_templates]:
                        q = t.format(a=na, b=nb, pred=pred)
                        full = [llava_prompt(f"{C.MCQ_LEADS[2]}{q} Options: {', '.join(opts)}. "
                                             "Answer with one option only.", system=C.MCQ_SYSTEM, n_images=2)
                                for opts in ((oa, ob, C.MCQ_FAIR), (C.MCQ_FAIR, ob, oa))]
                        cut = full[0].index(" Options:")
                        units.append((k, attribute, full[0][:cut], [f[cut:] for f in full], pair))
    ids = {att: (_first_token_ids(tok, C.MCQ_GROUPS[att][0][2]), _first_token_ids(tok, C.MCQ_GROUPS[att][1][2]))
           for att in C.MCQ_GROUPS}
    encode = functools.lru_cache(maxsize=None)(lambda text: tuple(tok(text, add_special_tokens=False)["input_ids"]))
    for _, _, head, tails, _ in units:
        for tail in tails:     # the split must keep the tokens of the whole prompt
            if encode(head + tail) != encode(head) + encode(tail):
                raise FairVLMError(f"the who-lean prompt {head + tail!r} does not tokenise as its prefix and its "
                                   "options apart; the prefix cache needs a split at a token boundary")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    leans = [[0.0, 0.0] for _ in units]
    for i in tqdm(range(0, len(units), batch_size), desc="who-lean", disable=not progress, leave=False):
        chunk = units[i:i + batch_size]
        enc = processor(images=[im for *_, pair in chunk for im in pair], text=[u[2] for u in chunk],
                        return_tensors="pt", padding=True).to(model.device)
        # the prefixes once (their key/value cache kept), then each order of the options after them
        prefix_out = model(**enc, use_cache=True, logits_to_keep=1)
        prefix_cache = prefix_out.get("cache")       # transformers >= 5.2x names it "cache"
        prefix_cache = prefix_out.get("past_key_values") if prefix_cache is None else prefix_cache
        for o in range(2):
            cache = copy.deepcopy(prefix_cache) if o == 0 else prefix_cache   # a forward pass appends to it
            tails = [list(encode(u[3][o])) for u in chunk]
            width = max(len(x) for x in tails)
            tail_ids = torch.tensor([x + [pad_id] * (width - len(x)) for x in tails], device=model.device)
            tail_mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in tails], device=model.device)
            res = model(input_ids=tail_ids, attention_mask=torch.cat([enc["attention_mask"], tail_mask], 1),
                        use_cache=True, **{cache_kw: cache})
            last = torch.tensor([len(x) - 1 for x in tails], device=model.device)
            logp = res.logits[torch.arange(len(chunk), device=model.device), last].float().log_softmax(-1)
            for b, (row, u) in enumerate(zip(logp, chunk)):
                a, bb = ids[u[1]]
                leans[i + b][o] = float(torch.logsumexp(row[a], 0) - torch.logsumexp(row[bb], 0))
    prompts = [(u[0], u[1]) for u in units for _ in range(2)]
    leans = [x for pair in leans for x in pair]
    df = pd.DataFrame(prompts, columns=["scenario", "attribute"])
    df["lean"] = leans
    out = df.groupby(["scenario", "attribute"], sort=False)["lean"].agg(["mean", "size"]).reset_index()
    out = out.rename(columns={"mean": "lean", "size": "n_prompts"})
    out["planted"] = [spec.marginal(k)["man" if att == "gender" else "black"] - 0.5
                      for k, att in zip(out["scenario"], out["attribute"])]
    return out


def target_row(key: str, what: str, effect: float, interval, target: float, *, direction: str = "greater",
               p_value: float | None = None) -> dict:
    """One row of chapter 00's targets table: the effect, its 95% interval, the target and the
    verdict of :func:`fairvlm.verdicts.decide` with the target as the null (``met``: the whole
    interval clears the target; ``met at the point estimate``: only the estimate does; ``not
    met``). ``p_value`` (for rank correlations) must also be below 0.01 for a target to count."""
    validate.text("key", key)
    validate.text("what", what, empty=True)
    validate.number("target", target)
    validate.choice("direction", direction, ("greater", "less"))
    if p_value is not None:
        validate.number("p_value", p_value, low=0.0, high=1.0)
    if isinstance(effect, (str, bytes, bool)) or effect is None:
        raise ParameterError(f"effect={validate.show(effect)} is not valid: it must be a number")
    if isinstance(interval, (str, bytes)) or interval is None or len(list(interval)) != 2:
        raise ParameterError(f"interval={validate.show(interval)} is not valid: it must be a pair (low, high)")
    from fairvlm.verdicts import decide, format_interval

    lo, hi = (float(v) for v in interval)
    v = decide(effect, (min(lo, effect), max(hi, effect)), target, direction=direction)
    word = {"reproduced": "met", "partly": "met at the point estimate", "not reproduced": "not met",
            "not testable here": "not testable here"}[v.verdict]
    if p_value is not None and not (p_value < 0.01) and word != "not testable here":
        word = "not met"
    return {"key": key, "target": f"{'>=' if direction == 'greater' else '<='} {target:g}"
            + (", p < 0.01" if p_value is not None else ""), "what": what, "this book": float(effect),
            "95% interval": format_interval((lo, hi)), "p-value": p_value, "verdict": word}
