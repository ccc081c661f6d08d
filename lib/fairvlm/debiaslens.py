"""Evaluation pieces for chapter 06 (DEBIASLENS): query sets, MaxSkew tables, the random-ranking
floor and the LVLM's gender probability difference.

- :func:`load_queries` reads ``data/debiaslens_queries.yaml`` (adjectives, occupations,
  activities, stereotypes; So-B-IT words and testbed scenarios) into prompts.
- :func:`maxskew_per_query`: MaxSkew@k with the **uniform prior** ``q(g) = 1/|groups|`` (as the
  poster's table; Bend-VLM's dataset-prior variant is not comparable), natural log, the
  formula of :func:`fairvlm.metrics.max_skew`, for every query of a similarity matrix.
- :func:`random_floor`: the same metric on random rankings of the same gallery: what MaxSkew a
  ranking that ignores the images entirely still shows at this k (sampling noise).
- :func:`last_layer_cls` and :func:`embed_from_last_layer`: a CLIP image embedding reads only
  the class token of the last vision layer (``projector(final_norm(h_cls))``), so an edit of
  ``vision.resid_post.-1`` on every token changes the embedding exactly as the same edit on
  the class token alone. Capturing that token once and re-embedding it per condition gives the
  same numbers as re-encoding the images under :func:`fairvlm.hooks.edit` (the tests and the
  chapter check it) at a fraction of the cost.
- :func:`yes_probability`: ``P(yes) / (P(yes) + P(no))`` of a LLaVA-style model's next token,
  summed over the spellings ``Yes``/``yes`` with and without a leading space; the gender
  probability difference of the VLA benchmark (Girrbach et al., 2025) is the gap of this
  number between counterfactual images of men and women.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from fairvlm import metrics
from fairvlm import validate as V
from fairvlm.errors import DataError, FairVLMError
from fairvlm.params import ParameterError

__all__ = ["QUERY_SETS", "load_queries", "queries_path", "maxskew_per_query", "random_floor", "yes_probability",
           "last_layer_cls", "embed_from_last_layer", "split_by_scenario"]

QUERY_SETS = ("adjectives", "occupations", "activities", "stereotypes")
QUERIES_FILE = "debiaslens_queries.yaml"


def queries_path() -> Path:
    """``data/debiaslens_queries.yaml`` of the book's checkout (or of the current directory)."""
    from fairvlm.paths import repo_root

    for root in (repo_root(), Path.cwd()):
        if root is not None and (Path(root) / "data" / QUERIES_FILE).is_file():
            return Path(root) / "data" / QUERIES_FILE
    raise DataError(f"cannot find data/{QUERIES_FILE} in the book's checkout or the current directory; pass path=")


def _article(phrase: str) -> str:
    from fairvlm.testbed.captions import article

    return article(phrase)


def load_queries(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The query sets as one frame: ``set, key, prompt, kind, source``.

    ``key`` is the word or the testbed scenario key (join it with the planted truth);
    ``kind`` is ``word`` or ``scenario``; ``source`` the So-B-IT category or the template used.
    """
    import yaml

    from fairvlm.testbed.scenarios import SCENARIOS

    p = V.existing_file("path", path) if path is not None else queries_path()
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        sets = raw["sets"]
        templates = {"word": raw["word_template"], "role": raw["role_template"], "activity": raw["activity_template"]}
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise DataError(f"{p}: not a query-set file ({exc})") from None
    rows = []
    for name in QUERY_SETS:
        spec = sets.get(name) if isinstance(sets, dict) else None
        if not isinstance(spec, dict):
            raise DataError(f"{p}: query set {name!r} is missing")
        word_lists = spec.get("words") or {}
        if not isinstance(word_lists, dict):
            raise DataError(f"{p}: set {name!r}: 'words' must map a category to a list of words")
        for category, words in word_lists.items():
            if not isinstance(words, list):
                raise DataError(f"{p}: set {name!r}, category {category!r}: words must be a list "
                                f"(- {words}), not {type(words).__name__}; a lone string would be read letter by letter")
            for w in words:
                rows.append({"set": name, "key": str(w), "kind": "word", "source": f"So-B-IT {category}",
                             "prompt": templates["word"].format(a=_article(str(w)), word=w)})
        scen_lists = spec.get("scenarios") or {}
        if not isinstance(scen_lists, dict):
            raise DataError(f"{p}: set {name!r}: 'scenarios' must map 'role'/'activity' to a list of scenario keys")
        for field, keys in scen_lists.items():
            if field not in ("role", "activity"):
                raise DataError(f"{p}: set {name!r}: scenario field {field!r} must be 'role' or 'activity'")
            if not isinstance(keys, list):
                raise DataError(f"{p}: set {name!r}, scenarios.{field}: must be a list of scenario keys, "
                                f"not {type(keys).__name__}")
            for k in keys:
                if k not in SCENARIOS:
                    raise DataError(f"{p}: set {name!r}: {k!r} is not a testbed scenario key")
                sc = SCENARIOS[k]
                prompt = templates[field].format(a_role=f"{_article(sc.role)} {sc.role}", activity=sc.activity)
                rows.append({"set": name, "key": k, "kind": "scenario", "source": f"testbed {field}", "prompt": prompt})
    out = pd.DataFrame(rows, columns=["set", "key", "prompt", "kind", "source"])
    if out.empty:
        raise DataError(f"{p}: no queries")
    return out


def maxskew_per_query(sim, groups: Sequence, k: int) -> np.ndarray:
    """MaxSkew@k (uniform prior over the gallery's groups) for each row of ``sim`` (Q, N)."""
    s = V.array("sim", sim, ndim=2)
    g = np.asarray([str(x) for x in V.labels("groups", groups)], dtype=object)
    if s.shape[1] != len(g):
        raise ParameterError(f"sim must be (Q, {len(g)}); got {s.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(g):
        raise ParameterError(f"k={k!r} must be an integer in [1, {len(g)}]")
    names, codes = np.unique(g, return_inverse=True)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    # vectorised metrics.max_skew with the uniform prior: max over present groups of
    # ln(p_g / (1/G)) = ln(G * max_g p_g) (the tests check the two agree)
    counts = np.stack([(codes[top] == c).sum(1) for c in range(len(names))], axis=1)
    return np.log(len(names) * counts.max(1) / float(k))


def random_floor(groups: Sequence, k: int, *, n_queries: int, seed: int = 0) -> np.ndarray:
    """MaxSkew@k of ``n_queries`` random rankings of the same gallery (seeded)."""
    V.integer("n_queries", n_queries, low=1)
    rng = np.random.default_rng(V.integer("seed", seed, low=0))
    groups = V.labels("groups", groups)
    return maxskew_per_query(rng.random((n_queries, len(groups))), groups, k)


def _answer_ids(tok, word: str) -> list[int]:
    ids = set()
    for piece in (word, " " + word, word.lower(), " " + word.lower()):
        t = tok(piece, add_special_tokens=False)["input_ids"]
        if len(t) == 1:
            ids.add(int(t[0]))
    if not ids:
        raise FairVLMError(f"the tokenizer has no single token for {word!r}")
    return sorted(ids)


@torch.no_grad()
def yes_probability(lm, images: Sequence, prompts: Sequence[str], *, batch_size: int = 16) -> np.ndarray:
    """``P(yes) / (P(yes) + P(no))`` for each (image, prompt) row of a generative VLM.

    ``images`` and ``prompts`` have one entry per row. Runs inside any active
    :func:`fairvlm.hooks.edit` context (that is how an intervention is measured).
    """
    if V.loaded("lm", lm).kind != "vlm":
        raise FairVLMError(f"lm={lm.name!r} is not a generative VLM")
    prompts = V.strings("prompts", prompts)
    images = V.sequence("images", images)
    V.integer("batch_size", batch_size, low=1)
    if len(images) != len(prompts) or not len(prompts):
        raise ParameterError(f"give one image per prompt; got {len(images)} images and {len(prompts)} prompts")
    yes, no = _answer_ids(lm.tokenizer, "Yes"), _answer_ids(lm.tokenizer, "No")
    out = []
    for s in range(0, len(prompts), batch_size):
        enc = lm.inputs(list(prompts[s:s + batch_size]), list(images[s:s + batch_size]))
        p = lm.next_token_logits(enc).softmax(-1)
        py, pn = p[:, yes].sum(-1), p[:, no].sum(-1)
        out.append((py / (py + pn).clamp_min(1e-12)).cpu().numpy())
    return np.concatenate(out)


@torch.no_grad()
def last_layer_cls(lm, pixels: torch.Tensor, *, batch_size: int = 128) -> torch.Tensor:
    """The class token of ``vision.resid_post.-1`` for each image, (N, d_vision), float32 on CPU."""
    from fairvlm import hooks

    if V.loaded("lm", lm).kind != "dual-encoder":
        raise FairVLMError(f"lm={lm.name!r} is not a CLIP-style dual encoder")
    from fairvlm.sae import check_pixels

    check_pixels(lm, pixels)
    V.integer("batch_size", batch_size, low=1)
    out = []
    with hooks.capture(lm, "vision.resid_post.-1") as cache:
        for s in range(0, len(pixels), batch_size):
            lm.vision_model()(pixel_values=pixels[s:s + batch_size].to(lm.device, lm.dtype))
            out.append(cache["vision.resid_post.-1"][:, 0].float().cpu())
    return torch.cat(out)


@torch.no_grad()
def embed_from_last_layer(lm, cls_resid: torch.Tensor, edit=None) -> torch.Tensor:
    """L2-normalized image embeddings from last-layer class tokens, after ``edit(h)`` if given."""
    V.loaded("lm", lm)
    V.tensor("cls_resid", cls_resid, ndim=2, width=lm.d_vision)
    if edit is not None and not callable(edit):
        raise ParameterError(f"edit={V.show(edit)} must be None or a function h -> h (e.g. from control_edits)")
    h = cls_resid if edit is None else edit(cls_resid)
    norm, proj = lm.vision_final_norm(), lm.projector()
    if norm is None or proj is None:
        raise FairVLMError(f"{lm.name} exposes no vision final norm or projection")
    p = next(proj.parameters())
    emb = proj(norm(h.to(p.device, p.dtype)))
    return torch.nn.functional.normalize(emb.float(), dim=-1).cpu()


def split_by_scenario(meta: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Row positions ``(fit, evaluate)`` of ``meta`` split by its ``scenario`` column: the
    scenarios at even positions in sorted order fit (SAE training, neuron probing), the others
    are evaluated (MaxSkew gallery, zero-shot accuracy, the LVLM gap), so that no neuron is
    found on an image it is then judged on. Chapter 07's paper profile splits PAIRS the same
    way (:func:`fairvlm.retrieval.paper_audit_data`)."""
    if not isinstance(meta, pd.DataFrame) or "scenario" not in meta.columns:
        raise ParameterError("meta must be a DataFrame with a 'scenario' column (one row per image)")
    V.labels("meta['scenario']", meta["scenario"].tolist())
    scen = sorted(set(meta["scenario"]))
    if len(scen) < 4:
        raise DataError(f"splitting by scenario needs at least 4 scenarios, found {len(scen)}; "
                        "set FAIRFACE_DIR to fit on FairFace instead")
    fit = meta["scenario"].isin(set(scen[0::2])).to_numpy()
    return np.flatnonzero(fit), np.flatnonzero(~fit)


# =====================================================================================
# The chapter's analysis: nulls, evaluation, the LVLM gap, the planted truth, the claims
# =====================================================================================

#: The departures of this book from the authors' released code (namin-an/DeBiasLens).
DEPARTURES = [
    {"choice": "intervention (gamma)", "authors' code": "chosen neurons deactivated (set to 0)",
     "this book": "0 by default (GAMMA_MODE='zero'); 'group_mean' (each neuron set to its own group's "
                  "mean activation) is this book's variant, not the authors'"},
    {"choice": "SAE expansion factor", "authors' code": "8 (README recipe: 1 on ViT-L/14)",
     "this book": "8 on the image and LLaVA-vision SAEs; 2 on the text SAE (a 384-wide stream and "
                  "about 12k caption tokens; keeps the shipped artifact small)"},
    {"choice": "training tokens", "authors' code": "2 random tokens per image",
     "this book": "the class token (the only token CLIP's image embedding reads, and the one the "
                  "control edits) for CLIP; every token for text and for LLaVA's layer -2"},
    {"choice": "prefix losses", "authors' code": "averaged over the Matryoshka prefixes",
     "this book": "averaged (as the authors' code)"},
    {"choice": "steps", "authors' code": "110k steps, batch 4096",
     "this book": "until the held-out explained variance plateaus (ceiling in the recipe), batch 256"},
    {"choice": "CLIP layer", "authors' code": "last layer, post-MLP residual",
     "this book": "the same (vision.resid_post.-1, resid_post.-1)"},
    {"choice": "LLaVA layer", "authors' code": "last vision layer",
     "this book": "layer -2 (vision_feature_layer): the last layer is never read by the LLM, so an edit "
                  "there changes nothing"},
    {"choice": "neuron ranking", "authors' code": "mean activation on the group",
     "this book": "specificity on the group, among neurons whose firing rate differs by at most "
                  "OTHER_CAP between the other attribute's groups (gender-only neurons)"},
]


def firing_rates(codes) -> np.ndarray:
    """Fraction of rows on which each latent fires (> 0): ``(d_sae,)``."""
    z = V.tensor("codes", codes, ndim=2, dtype=torch.float32)
    return (z > 0).float().mean(0).numpy()


def matched_random_latents(rates, chosen: Sequence[int], exclude: Sequence[int] = (), *, n_draws: int = 20,
                           pool: int = 8, seed: int = 0) -> list[list[int]]:
    """``n_draws`` sets of random latents, one per chosen latent, each drawn from the ``pool``
    latents (not chosen, not in ``exclude``) whose firing rate is nearest the chosen one's:
    a null that touches latents as active as the social ones, not dead or always-on ones."""
    r = np.asarray(V.array("rates", rates, ndim=1), dtype=float)
    chosen = V.integers("chosen", chosen, empty=True, low=0, high=len(r) - 1)
    exclude = V.integers("exclude", exclude, empty=True, low=0, high=len(r) - 1)
    V.integer("n_draws", n_draws, low=1)
    V.integer("pool", pool, low=1)
    cand = np.setdiff1d(np.arange(len(r)), np.asarray(list(chosen) + list(exclude), dtype=int))
    if len(cand) < len(chosen) + pool:
        raise DataError(f"only {len(cand)} latents are neither chosen nor social: too few to draw a matched null")
    pools = [cand[np.argsort(np.abs(r[cand] - r[j]), kind="stable")[:pool]] for j in chosen]
    rng = np.random.default_rng(V.integer("seed", seed, low=0))
    draws = []
    for _ in range(n_draws):
        pick: list[int] = []
        for p in pools:
            avail = [int(x) for x in p if int(x) not in pick]
            pick.append(int(rng.choice(avail)))
        draws.append(pick)
    return draws


def gammas(mode: str, codes, labels: Sequence, latents: Sequence[int], latent_groups: Sequence[str]) -> list[float]:
    """The value each latent is set to: 0 (``"zero"``, the authors') or its mean activation on
    its group's rows (``"group_mean"``, this book's variant)."""
    V.choice("mode", mode, ("zero", "group_mean"))
    if mode == "zero":
        return [0.0] * len(latents)
    z = V.tensor("codes", codes, ndim=2, dtype=torch.float32)
    lab = np.asarray([str(x) for x in labels], dtype=object)
    return [float(z[torch.from_numpy(lab == g), j].mean()) for j, g in zip(latents, latent_groups)]


def specific_neurons(table: pd.DataFrame, codes, other_labels: Sequence, *, cap: float = 0.2) -> pd.DataFrame:
    """``table`` (from :func:`fairvlm.sae.social_neurons`) with ``other_gap``: the spread of each
    latent's firing rate between the groups of the *other* attribute (0: blind to it), and
    ``eligible = other_gap <= cap``; re-ranked within each group by specificity (eligible
    first). :func:`pick_specific` picks from it."""
    z = V.tensor("codes", codes, ndim=2, dtype=torch.float32)
    lab = np.asarray([str(x) for x in V.labels("other_labels", other_labels)], dtype=object)
    if len(lab) != z.shape[0]:
        raise ParameterError(f"codes has {z.shape[0]} rows but other_labels {len(lab)}")
    V.number("cap", cap, low=0.0, high=1.0)
    rates = np.stack([(z[torch.from_numpy(lab == g)] > 0).float().mean(0).numpy() for g in sorted(set(lab))])
    out = table.copy()
    lat = out["latent"].to_numpy(dtype=int)
    out["other_gap"] = (rates.max(0) - rates.min(0))[lat] if len(lat) else np.array([], dtype=float)
    out["eligible"] = out["other_gap"] <= cap
    out = out.sort_values(["group", "eligible", "specificity", "mean_act"], ascending=[True, False, False, False],
                          kind="stable")
    out["rank"] = out.groupby("group").cumcount()
    return out.reset_index(drop=True)


def union_gap(codes, other_labels: Sequence, latents: Sequence[int]) -> float:
    """Spread, between the other attribute's groups, of the rate at which *any* of ``latents``
    fires: 0 when the set as a whole is blind to the other attribute."""
    z = V.tensor("codes", codes, ndim=2, dtype=torch.float32)
    lab = np.asarray([str(x) for x in other_labels], dtype=object)
    if not len(latents):
        return float("nan")
    fires = (z[:, list(latents)] > 0).any(1).numpy()
    rates = [fires[lab == g].mean() for g in sorted(set(lab.tolist()))]
    return float(max(rates) - min(rates))


def pick_specific(table: pd.DataFrame, groups: Sequence[str], per_group: int, *, codes=None,
                  other_labels: Sequence | None = None, cap: float | None = None) -> tuple[list[int], list[str]]:
    """The top ``per_group`` latents of each group of :func:`specific_neurons` (eligible ones first).

    Without ``codes``, only eligible latents are taken. With ``codes``, ``other_labels`` and
    ``cap``, a group's set is accepted when the set *as a whole* fires at rates within ``cap``
    across the other attribute's groups (:func:`union_gap`): two neurons, one for Black and
    one for White women, make a gender-only set although neither is one alone; otherwise the
    group's eligible latents alone, or none."""
    V.integer("per_group", per_group, low=1)
    lat, grp = [], []
    for g in groups:
        sub = table[table["group"] == g]
        take = sub[sub["eligible"]].head(per_group)["latent"].astype(int).tolist()
        if codes is not None:
            cand = sub.head(per_group)["latent"].astype(int).tolist()
            if cand and union_gap(codes, other_labels, cand) <= cap:
                take = cand
        lat += take
        grp += [g] * len(take)
    return lat, grp


def select_neurons(sides: dict, groups: Sequence[str], *, threshold: float, per_group: int, cap: float,
                   gamma_mode: str) -> dict:
    """Chapter 06's choice of social neurons on each side.

    ``sides[side] = (codes, labels, other_codes, other_labels)``: the SAE codes of the
    probing rows with their labels of the attribute, and the codes and labels on which the
    other attribute's spread is read (the same rows for images; sentences naming the other
    attribute for text). Per side: :func:`specific_neurons` of
    :func:`fairvlm.sae.social_neurons`, :func:`pick_specific` with the set-level cap,
    :func:`gammas`, the firing rates the random-latent null matches, and the set's
    :func:`union_gap`. Returns a dict with ``tables``, ``chosen`` (side -> (latents, groups,
    gammas)), ``rates``, ``social`` (every social latent of a side), ``set_gap``,
    ``n_social`` ("side/group" -> count), ``n_chosen`` and ``neurons_ok`` (every group has a
    neuron on every side)."""
    from fairvlm import sae as S

    if not isinstance(sides, dict) or not sides:
        raise ParameterError(f"sides={V.show(sides)} must map a side name to (codes, labels, other_codes, other_labels)")
    out = {"tables": {}, "chosen": {}, "rates": {}, "social": {}, "set_gap": {}}
    for side, parts in sides.items():
        if not isinstance(parts, (tuple, list)) or len(parts) != 4:
            raise ParameterError(f"sides[{side!r}] must be (codes, labels, other_codes, other_labels)")
        codes, labels, other_codes, other_labels = parts
        table = specific_neurons(S.social_neurons(codes, labels, threshold=threshold), other_codes, other_labels, cap=cap)
        lat, grp = pick_specific(table, groups, per_group, codes=other_codes, other_labels=other_labels, cap=cap)
        out["tables"][side] = table
        out["chosen"][side] = (lat, grp, gammas(gamma_mode, codes, labels, lat, grp))
        out["rates"][side] = firing_rates(codes)
        out["social"][side] = table["latent"].astype(int).tolist()
        out["set_gap"][side] = union_gap(other_codes, other_labels, lat)
    out["n_social"] = {f"{s}/{g}": int((t["group"] == g).sum()) for s, t in out["tables"].items() for g in groups}
    out["n_chosen"] = {s: len(v[0]) for s, v in out["chosen"].items()}
    out["neurons_ok"] = all(set(v[1]) == set(groups) for v in out["chosen"].values())
    return out


# ----------------------------------------------------------------------------- text shortcut
class TextStates:
    """Last-layer hidden states of a set of texts (padded) and their attention masks."""

    def __init__(self, texts: list[str], hidden: torch.Tensor, mask: torch.Tensor):
        self.texts, self.hidden, self.mask = texts, hidden, mask
        self.index = {t: i for i, t in enumerate(texts)}


def supports_text_shortcut(lm) -> bool:
    """True for a mean-pooled dual encoder (testbed-clip): its text embedding is
    ``text_projection(mean_pool(resid_post.-1))``, so an edit there can be applied to cached states."""
    return hasattr(getattr(lm, "model", None), "text_pooled")


@torch.no_grad()
def last_layer_text(lm, texts: Sequence[str], *, batch_size: int = 128) -> TextStates:
    """Capture ``resid_post.-1`` (every token) for ``texts`` once (see :func:`embed_text_from_last_layer`)."""
    from fairvlm import hooks

    if not supports_text_shortcut(V.loaded("lm", lm)):
        raise FairVLMError(f"{lm.name}: the text shortcut needs a mean-pooled dual encoder; use hooks.edit and "
                           "retrieval.embed_texts")
    texts = list(dict.fromkeys(V.strings("texts", texts)))
    hs, ms = [], []
    with hooks.capture(lm, "resid_post.-1") as cache:
        for s in range(0, len(texts), batch_size):
            enc = lm.inputs(texts[s:s + batch_size])
            enc = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            lm.model.get_text_features(**enc)
            hs.append(cache["resid_post.-1"].float().cpu())
            ms.append(enc["attention_mask"].bool().cpu())
    t = max(h.shape[1] for h in hs)
    hidden = torch.cat([torch.nn.functional.pad(h, (0, 0, 0, t - h.shape[1])) for h in hs])
    mask = torch.cat([torch.nn.functional.pad(m, (0, t - m.shape[1])) for m in ms])
    return TextStates(texts, hidden, mask)


@torch.no_grad()
def embed_text_from_last_layer(lm, states: TextStates, edit=None) -> torch.Tensor:
    """L2-normalized text embeddings from cached last-layer states, after ``edit(h)`` on every token."""
    from fairvlm.testbed.dual import mean_pool

    if edit is not None and not callable(edit):
        raise ParameterError(f"edit={V.show(edit)} must be None or a function h -> h")
    h = states.hidden if edit is None else edit(states.hidden)
    p = next(lm.model.text_projection.parameters())
    emb = lm.model.text_projection(mean_pool(h, states.mask).to(p.device, p.dtype))
    return torch.nn.functional.normalize(emb.float(), dim=-1).cpu()


# ------------------------------------------------------------------------------ evaluation
class Bench:
    """Per-query MaxSkew, zero-shot correctness and Recall@K for embeddings of one gallery.

    ``texts``: every text any condition embeds, in order: query prompts, zero-shot prompts,
    retrieval captions (``T`` passed to :meth:`evaluate` has one row per entry of ``texts``)."""

    def __init__(self, queries: Sequence[str], zs_prompts: Sequence[str], zs_labels, attr_labels: dict, k: int,
                 rec_caps: Sequence[str] = (), rec_rel=None):
        self.queries, self.zs_prompts, self.rec_caps = list(queries), list(zs_prompts), list(rec_caps)
        self.texts = list(dict.fromkeys(self.queries + self.zs_prompts + self.rec_caps))
        idx = {t: i for i, t in enumerate(self.texts)}
        self.qi = [idx[t] for t in self.queries]
        self.zi = [idx[t] for t in self.zs_prompts]
        self.ri = [idx[t] for t in self.rec_caps]
        self.zs_labels, self.attr_labels, self.k, self.rec_rel = np.asarray(zs_labels), attr_labels, int(k), rec_rel

    def skew(self, I, T) -> dict:
        sim = (T[self.qi] @ I.T).numpy()
        return {a: maxskew_per_query(sim, lab, self.k) for a, lab in self.attr_labels.items()}

    def evaluate(self, I, T, I_zs=None) -> dict:
        out = {"skew": self.skew(I, T)}
        pred = ((I if I_zs is None else I_zs) @ T[self.zi].T).argmax(-1).numpy()
        out["zs_correct"] = (pred == self.zs_labels).astype(float)
        out["zero_shot"] = float(out["zs_correct"].mean())
        if self.ri:
            out.update({f"t2i_R@{k}": v for k, v in
                        metrics.recall_at_k((T[self.ri] @ I.T).numpy(), self.rec_rel, (1, 5, 10)).items()})
        return out


def quadruplet_label_shuffle(labels: Sequence, quads: Sequence, *, n_perm: int = 20, seed: int = 0) -> list[np.ndarray]:
    """``n_perm`` copies of ``labels`` permuted *within* each quadruplet (counterfactual set):
    the null of "the model treats the groups differently" that keeps each scene's content."""
    lab = np.asarray(labels, dtype=object)
    q = np.asarray(quads)
    if lab.shape != q.shape:
        raise ParameterError(f"labels ({lab.shape}) and quads ({q.shape}) must be one per row")
    rng = np.random.default_rng(V.integer("seed", seed, low=0))
    groups = [np.flatnonzero(q == u) for u in pd.unique(q)]
    out = []
    for _ in range(V.integer("n_perm", n_perm, low=1)):
        p = lab.copy()
        for g in groups:
            p[g] = lab[rng.permutation(g)]
        out.append(p)
    return out


# --------------------------------------------------------------------------------- LVLM gap
def quad_gap(p, group, quad, question, groups: Sequence[str]) -> pd.Series:
    """Signed gap per (question, quadruplet): mean ``p`` on ``groups[1]`` minus on ``groups[0]``."""
    df = pd.DataFrame({"q": list(question), "quad": list(quad), "g": list(group), "p": np.asarray(p, float)})
    m = df.pivot_table(index=["q", "quad"], columns="g", values="p", aggfunc="mean")
    return (m[groups[1]] - m[groups[0]]).rename("gap")


def orient(gap: pd.Series, sign: pd.Series) -> pd.Series:
    """``gap`` times the sign of each question's gap (``sign`` indexed by question): its
    mean over quadruplets is the VLA metric |mean gap| for the reference condition."""
    return gap * gap.index.get_level_values("q").map(sign).to_numpy()


# --------------------------------------------------------------------------- planted truth
def top_share(T, I, labels, value: str, k: int) -> np.ndarray:
    """Per text row: the share of ``value`` among the top ``k`` images by cosine."""
    top = np.argsort(-(T @ I.T).numpy(), axis=1, kind="stable")[:, :k]
    return (np.asarray(labels)[top] == value).mean(1)


def planted_classes(planted: pd.DataFrame, *, skewed_at: float = 0.15) -> pd.Series:
    """Per scenario: ``"skewed (gender)"`` where the planted share of men is at least
    ``skewed_at`` from one half, ``"balanced control"`` where gender and race are both 0.5,
    else ``"mild"``."""
    pm, pb = planted["p_man"].to_numpy(float), planted["p_black"].to_numpy(float)
    cls = np.where((pm == 0.5) & (pb == 0.5), "balanced control",
                   np.where(np.abs(pm - 0.5) >= skewed_at, "skewed (gender)", "mild"))
    return pd.Series(cls, index=planted["scenario"].to_numpy(), name="planted")


# ------------------------------------------------------------------ neurons against labels
def firing_score(codes, labels: Sequence, latents: Sequence[int], latent_groups: Sequence[str]) -> np.ndarray:
    """Per row: over the chosen latents, +fires where the row's group is the latent's group and
    -fires elsewhere, times 2 (for two balanced groups the mean over rows is then the mean of
    own-group minus other-group firing rates). Zeros when no latent is chosen."""
    z = V.tensor("codes", codes, ndim=2, dtype=torch.float32)
    lab = np.asarray([str(x) for x in labels], dtype=object)
    if not len(latents):
        return np.zeros(z.shape[0])
    fires = (z[:, list(latents)] > 0).numpy().astype(float)
    own = (lab[:, None] == np.asarray(latent_groups, dtype=object)[None, :])
    return 2.0 * (fires * np.where(own, 1.0, -1.0)).mean(1)


def permuted_selection_scores(probe_codes, probe_labels, eval_codes, eval_labels, groups: Sequence[str], *,
                              threshold: float, per_group: int, n_perm: int = 20, seed: int = 0,
                              other_labels: Sequence | None = None, cap: float = 1.0) -> np.ndarray:
    """The label-permutation null of social-neuron selection: shuffle the probing labels,
    select neurons as the method does, score them on the evaluation rows with their true
    labels (:func:`firing_score`); the mean over ``n_perm`` shuffles, per evaluation row."""
    from fairvlm import sae as S

    rng = np.random.default_rng(V.integer("seed", seed, low=0))
    lab = np.asarray([str(x) for x in probe_labels], dtype=object)
    acc = np.zeros(len(eval_labels))
    for _ in range(V.integer("n_perm", n_perm, low=1)):
        t = S.social_neurons(probe_codes, rng.permutation(lab).tolist(), threshold=threshold)
        if other_labels is not None:  # the same selection rule as the real neurons
            t = specific_neurons(t, probe_codes, other_labels, cap=cap)
            lat, grp = pick_specific(t, groups, per_group, codes=probe_codes, other_labels=other_labels, cap=cap)
        else:
            lat, grp = pick_specific(t.assign(eligible=True), groups, per_group)
        acc += firing_score(eval_codes, eval_labels, lat, grp)
    return acc / n_perm


# =====================================================================================
# The chapter's SAEs: trained once, shipped as artifacts, verified before use
# =====================================================================================

IMG_SITE, TXT_SITE = "vision.resid_post.-1", "resid_post.-1"
ARTIFACT_DIR = Path("data") / "artifacts" / "06_debiaslens"
SAE_NAMES = ("image", "text", "llava")
#: Per profile: images (scenes x 50 scenarios x 4 variants) and captions, widths, the step
#: ceiling and the plateau rule.
RECIPES = {
    "embedded": {"sae_scenes": 16, "captions": 2000, "llava_scenes": 8, "expansion": {"image": 8, "text": 2, "llava": 8},
                 "k": 20, "steps": 4000, "batch": 256, "lr": 1e-3, "log_every": 100, "plateau_tol": 0.002,
                 "patience": 5, "dead_after_epochs": 4, "threshold_decay": 0.99},
    "smoke": {"sae_scenes": 2, "captions": 200, "llava_scenes": 1, "expansion": {"image": 8, "text": 1, "llava": 8},
              "k": 20, "steps": 400, "batch": 128, "lr": 1e-3, "log_every": 20, "plateau_tol": 0.004,
              "patience": 5, "dead_after_epochs": 4, "threshold_decay": 0.99},
}
RECIPES["paper"] = {**RECIPES["embedded"], "expansion": {"image": 8, "text": 8, "llava": 8}}


def _source_digest() -> str:
    import hashlib
    import inspect

    from fairvlm import sae as S

    src = inspect.getsource(S) + "".join(inspect.getsource(f) for f in (sae_training_data, train_saes))
    return hashlib.sha256(src.encode()).hexdigest()[:16]


def build_key(clip_name: str, llava_name: str, *, profile: str, world: str, seed: int, size: str | None) -> tuple[str, dict]:
    """The key of the chapter's SAEs and what it hashes: the SAE code, the recipe, the world,
    the seed, and the testbed build (its own key hashes the spec, its code and the bases)."""
    import hashlib
    import json

    inputs = {"code": _source_digest(), "recipe": RECIPES[profile], "profile": profile, "world": world,
              "seed": int(seed), "clip": clip_name, "llava": llava_name}
    if clip_name.startswith("testbed"):
        from fairvlm import testbed

        inputs["testbed_build"] = testbed.testbed_dir(size or "full", world=world).name
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return key, inputs


def sae_training_data(clip, llava, recipe: dict, *, seed: int = 0) -> dict:
    """Activations the SAEs train on (testbed): class tokens of held-out scenes (start 2000,
    disjoint from the chapter's probing and gallery scenes), every token of testbed captions,
    every token of LLaVA's vision layer -2. Each split 90/10 by image or caption for the plateau rule."""
    from fairvlm import retrieval
    from fairvlm import sae as S
    from fairvlm import testbed
    from fairvlm.testbed import captions, world

    spec = testbed.world_spec()
    rng = np.random.default_rng(seed)
    rows = world.gallery(recipe["sae_scenes"], split="heldout", start=2000)
    images = world.render_rows(rows, world.DEFAULT_SIZE)
    n = len(images)
    perm = rng.permutation(n)
    tr, ev = perm[: int(0.9 * n)], perm[int(0.9 * n):]
    cls = last_layer_cls(clip, retrieval.pixel_values(clip, images))
    keys = rng.choice(list(testbed.SCENARIO_KEYS), recipe["captions"])
    grp = rng.integers(0, 4, recipe["captions"])
    caps = [captions.caption(spec, k, ("man", "woman")[g % 2], ("black", "white")[g // 2], rng) for k, g in zip(keys, grp)]
    m = int(0.9 * len(caps))
    out = {"image": (cls[torch.from_numpy(tr)], cls[torch.from_numpy(ev)]),
           "text": (S.collect_text_acts(clip, caps[:m], site=TXT_SITE, tokens="all"),
                    S.collect_text_acts(clip, caps[m:], site=TXT_SITE, tokens="all"))}
    layer = int(getattr(llava.model.config, "vision_feature_layer", -2))
    lv_n = min(n, recipe["llava_scenes"] * 200)
    lv_pix = retrieval.pixel_values(llava, [images[i] for i in perm[:lv_n]])
    cut = int(0.9 * lv_n)
    site = f"vision.resid_post.{layer}"
    out["llava"] = (S.collect_image_acts(llava, lv_pix[:cut], site=site, tokens="all"),
                    S.collect_image_acts(llava, lv_pix[cut:], site=site, tokens="all"))
    out["sites"] = {"image": IMG_SITE, "text": TXT_SITE, "llava": site}
    return out


def train_saes(data: dict, recipe: dict, *, clip_name: str, llava_name: str, seed: int = 0,
               progress: bool = False) -> tuple[dict, dict]:
    """Train the image, text and LLaVA SAEs until they plateau, and the image SAE once more
    with AuxK off (``image_noauxk``: the dead-latent comparison). Returns (saes, logs)."""
    from fairvlm import sae as S

    saes, logs = {}, {}
    for name in ("image", "image_noauxk", "text", "llava"):
        base = name.split("_")[0]
        train_x, eval_x = data[base]
        d = train_x.shape[1]
        d_sae = recipe["expansion"][base] * d
        cfg = S.SAEConfig(d_in=d, d_sae=d_sae, k=min(recipe["k"], d_sae), site=data["sites"][base],
                          model=llava_name if base == "llava" else clip_name,
                          auxk_alpha=0.0 if name.endswith("noauxk") else 0.03,
                          dead_after=max(1, recipe["dead_after_epochs"] * len(train_x)),
                          threshold_decay=recipe["threshold_decay"])
        saes[name], logs[name] = S.train(train_x, cfg, steps=recipe["steps"], batch_size=recipe["batch"],
                                         lr=recipe["lr"], seed=seed, eval_acts=eval_x, log_every=recipe["log_every"],
                                         plateau_tol=recipe["plateau_tol"], patience=recipe["patience"],
                                         progress=progress)
    return saes, logs


def _write_folder(folder: Path, saes: dict, logs: dict, key: str, inputs: dict) -> None:
    import datetime
    import json

    from fairvlm import sae as S
    from fairvlm.checksums import sha256_file

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, sae in saes.items():
        if name.endswith("noauxk"):
            continue  # only its log ships
        S.save_sae(sae, folder / name)
    for name, lg in logs.items():
        lg.to_csv(folder / f"{name}_log.csv", index=False)
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != "manifest.json":
            files[str(p.relative_to(folder))] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest = {"build_key": key, "inputs": inputs, "files": files,
                "plateaued": {n: bool(lg.attrs.get("plateaued")) for n, lg in logs.items()},
                "steps_run": {n: int(lg.attrs.get("steps_run", 0)) for n, lg in logs.items()},
                "built": datetime.date.today().isoformat(),
                "rebuild": "python -m fairvlm.debiaslens build-artifacts"}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))


def _check_folder(folder: Path, key: str) -> str:
    """'' when ``folder`` holds this key's SAEs with intact files, else why not (one line)."""
    import json

    from fairvlm.checksums import sha256_file

    mf = folder / "manifest.json"
    if not mf.is_file():
        return f"no SAEs in {folder}"
    try:
        man = json.loads(mf.read_text())
    except (OSError, ValueError) as exc:
        return f"{mf} is unreadable ({exc})"
    if man.get("build_key") != key:
        return f"{folder} holds SAEs of build key {man.get('build_key')}, not {key} (code, recipe, world or testbed changed)"
    for rel, f in man.get("files", {}).items():
        p = folder / rel
        if not p.is_file() or p.stat().st_size != f["bytes"] or sha256_file(p) != f["sha256"]:
            return f"{p} is missing or damaged (sha256 mismatch)"
    return ""


def _read_folder(folder: Path) -> tuple[dict, dict, dict]:
    import json

    from fairvlm import sae as S

    man = json.loads((folder / "manifest.json").read_text())
    saes = {n: S.load_sae(folder / n) for n in SAE_NAMES}
    logs = {}
    for n in ("image", "image_noauxk", "text", "llava"):
        logs[n] = pd.read_csv(folder / f"{n}_log.csv")
        logs[n].attrs.update(plateaued=man["plateaued"][n], steps_run=man["steps_run"][n])
    return saes, logs, man


#: profile -> testbed size of the shipped SAEs (default world, seed 0)
SHIPPED = {"embedded": "full", "smoke": "smoke"}


def shipped_folder(world: str, profile: str = "embedded") -> Path | None:
    from fairvlm.paths import repo_root

    root = repo_root()
    return None if root is None else Path(root) / ARTIFACT_DIR / f"{profile}-{world}"


def load_valid_saes(clip_name: str, llava_name: str, *, profile: str, world: str, seed: int = 0,
                    size: str | None = None, cache: bool = True, key: str | None = None) -> tuple[dict | None, dict | None, str]:
    """The chapter's SAEs when a folder holds them with the current build key and intact
    files: the shipped artifact first, then (``cache=True``) the user's cache. Never trains.
    Returns ``(saes, logs, where)``, or ``(None, None, why)`` naming the first folder's
    reason. ``key``: a build key already computed (a data-specific one), else the
    testbed key of these arguments."""
    from fairvlm.paths import cache_dir

    V.choice("profile", profile, tuple(RECIPES))
    if key is None:
        key, _ = build_key(clip_name, llava_name, profile=profile, world=world, seed=seed, size=size)
    shipped = shipped_folder(world, profile) if profile in SHIPPED else None
    folders = ([shipped] if shipped is not None else []) + ([cache_dir() / "sae" / "06_debiaslens" / key] if cache else [])
    reasons = []
    for folder in folders:
        why = _check_folder(folder, key)
        if not why:
            saes, logs, _ = _read_folder(folder)
            return saes, logs, f"loaded from {folder} (build key {key})"
        reasons.append(why)
    return None, None, reasons[0] if reasons else f"no folder to look in for SAEs of build key {key}"


def load_or_train_saes(clip, llava, *, profile: str, seed: int = 0, size: str | None = None,
                       data_fn=None, data_desc: str = "testbed", progress: bool = False) -> tuple[dict, dict, str]:
    """The chapter's SAEs: the shipped artifact when its build key is the current one and its
    files verify, else the cache's, else trained now (saying why in one line) and cached.
    Returns (saes, logs, where they came from)."""
    from fairvlm.paths import cache_dir
    from fairvlm.testbed import current_world

    V.choice("profile", profile, tuple(RECIPES))
    world = current_world() if clip.name.startswith("testbed") else "none"
    key, inputs = build_key(clip.name, llava.name, profile=profile, world=world, seed=seed, size=size)
    if data_desc != "testbed":
        import hashlib

        inputs["data"] = data_desc
        key = hashlib.sha256((key + data_desc).encode()).hexdigest()[:16]
    cached = cache_dir() / "sae" / "06_debiaslens" / key
    saes, logs, where = load_valid_saes(clip.name, llava.name, profile=profile, world=world, seed=seed, size=size,
                                        key=key)
    if saes is not None:
        return saes, logs, where
    print(f"training the chapter's SAEs: {where}")
    data = data_fn() if data_fn is not None else sae_training_data(clip, llava, RECIPES[profile], seed=seed)
    saes, logs = train_saes(data, RECIPES[profile], clip_name=clip.name, llava_name=llava.name, seed=seed,
                            progress=progress)
    import shutil

    shutil.rmtree(cached, ignore_errors=True)
    _write_folder(cached, saes, logs, key, inputs)
    return {n: saes[n] for n in SAE_NAMES}, logs, f"trained now ({where}); cached in {cached}"


def build_artifacts(worlds: Sequence[str] = ("default",), profiles: Sequence[str] = tuple(SHIPPED), *,
                    seed: int = 0) -> list[Path]:
    """Train the SAEs of each profile in :data:`SHIPPED` on its testbed size for each world and
    write them to ``data/artifacts/06_debiaslens/<profile>-<world>/`` with a manifest (sha256,
    bytes, build key)."""
    import os
    import shutil

    from fairvlm.models import load
    from fairvlm.testbed import WORLD_ENV

    out = []
    for w in worlds:
        for profile in profiles:
            size = SHIPPED[V.choice("profile", profile, tuple(SHIPPED))]
            old = os.environ.get(WORLD_ENV)
            os.environ[WORLD_ENV] = w
            try:
                clip, llava = load("testbed-clip", size=size), load("testbed-llava", size=size)
                key, inputs = build_key(clip.name, llava.name, profile=profile, world=w, seed=seed, size=size)
                data = sae_training_data(clip, llava, RECIPES[profile], seed=seed)
                saes, logs = train_saes(data, RECIPES[profile], clip_name=clip.name, llava_name=llava.name,
                                        seed=seed, progress=True)
                folder = shipped_folder(w, profile)
                if folder is None:
                    raise FairVLMError("build-artifacts runs in the book's checkout (data/artifacts)")
                shutil.rmtree(folder, ignore_errors=True)
                _write_folder(folder, saes, logs, key, inputs)
                out.append(folder)
                print(f"wrote {folder} (build key {key}; steps {[lg.attrs['steps_run'] for lg in logs.values()]})")
            finally:
                if old is None:
                    os.environ.pop(WORLD_ENV, None)
                else:
                    os.environ[WORLD_ENV] = old
    return out


def _main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m fairvlm.debiaslens",
                                 description="Build the SAEs chapter 06 ships (data/artifacts/06_debiaslens).")
    ap.add_argument("command", choices=["build-artifacts"])
    ap.add_argument("--worlds", default="default", help="comma-separated testbed worlds (default: default)")
    ap.add_argument("--profiles", default=",".join(SHIPPED), help="comma-separated profiles (default: embedded,smoke)")
    a = ap.parse_args(argv)
    build_artifacts([w.strip() for w in a.worlds.split(",") if w.strip()],
                    [p.strip() for p in a.profiles.split(",") if p.strip()])
    return 0


if __name__ == "__main__":
    from fairvlm.errors import cli_main

    import sys

    sys.exit(cli_main(_main))


# =====================================================================================
# Paper vs this book: the claims, each judged by fairvlm.verdicts.judge
# =====================================================================================

#: Smallest MaxSkew change (natural-log units; x100 on the poster) that counts as an effect.
MIN_SKEW = 0.005
#: Prompts that name no attribute, occupation or activity: the content-free control of "the
#: queries are skewed" (a model may rank one group first for *every* text; on the testbed world
#: with nothing planted they reach MaxSkew 0.08-0.59 while the queries average 0.19).
CONTENT_FREE = ("a photo of a person", "a picture of someone", "an image of a person", "a photo", "a person", "someone",
                "a photo of someone", "a picture of a person", "an image", "a photo of a human",
                "a person in a picture", "a snapshot of a person")


def _lvlm_bias_claim():
    from fairvlm.verdicts import Claim

    return Claim("the LVLM's P(yes) differs by gender on ambiguous questions", "bias", "greater", MIN_SKEW,
                 effect_ref=None)


LVLM_BIAS_CLAIM = _lvlm_bias_claim()


def paper_claims(M: dict, *, seed: int = 0) -> list[dict]:
    """Verdict rows (for :func:`fairvlm.verdicts.verdict_table`) from the chapter's measurements ``M``.

    ``M`` keys: ``attribute``, ``other``; ``skew[cond][attr]`` per-query MaxSkew for ``base``,
    ``I``, ``T``, ``I+T``, ``recon`` (SAE round trip, I+T, no latent changed); ``null[side][attr]``
    (mean over the matched random-latent draws); ``content_free`` (MaxSkew of the
    :data:`CONTENT_FREE` prompts, the control of the bias row); ``zs`` (per-image correctness, ``base`` and ``I+T``);
    ``alpha[side]`` with ``edit``, ``recon`` skews and ``zs1``, ``zs0`` at alpha 1 and 0;
    ``firing`` = (per-image score, its label-permutation null); ``lvlm`` (None or oriented
    per (question, quadruplet) gaps ``before``, ``shuffle``, ``after``, ``null`` and ``quads``);
    ``planted`` (None or ``before``, ``shuffle``, ``after``, ``null`` oriented deviations on the
    skewed scenarios and ``ctrl_before``, ``ctrl_after`` deviations on the controls, ``k``);
    ``neurons`` (True when every side found social neurons).
    """
    from fairvlm import verdicts as VD

    a, o, sk, rows = M["attribute"], M["other"], M["skew"], []

    def add(claim, effect, control, paper, measure, **kw):
        v = VD.judge(claim, effect, control, seed=seed, **kw)
        rows.append({"claim": claim.text, "paper": paper, "measure": measure, "verdict": v})
        return v

    nn_why = "" if M["neurons"] else "no social neuron passed the probing threshold on some side"
    bias = add(VD.Claim(f"CLIP's retrieval of neutral queries is skewed by {a}", "bias", "greater", MIN_SKEW,
                        effect_ref=None), sk["base"][a], M["content_free"], "CLIP rows of the VLM debiasing table (B/16: 21.9)",
               f"MaxSkew per query; control: {len(M['content_free'])} content-free prompts ('a photo of a person', ...)",
               paired=False)
    P = M.get("planted")
    planted_claim = VD.Claim("(testbed) retrieval follows the planted skew", "bias", "greater", 0.02, effect_ref=None)
    planted_ok = P is not None and len(P["before"]) >= 2 and VD.judge(
        planted_claim, P["before"], P["shuffle"], seed=seed).verdict == "reproduced"
    # the model must show a bias to remove: a query skew beyond content-free prompts, or (on the
    # testbed) retrieval that follows the planted skew; a world with nothing planted has neither
    shown = bias.verdict == "reproduced" or planted_ok
    gate = shown and M["neurons"]
    gate_why = nn_why or ("" if shown else f"the model shows no {a} skew beyond its controls: nothing to remove")
    side_v = {}
    for side, paper in [("I", "B/16: 21.9/33.5/19.8/32.5 -> 14.2/21.5/20.0/18.3"),
                        ("T", "B/16: -> 7.1/16.2/14.2/8.1"), ("I+T", "B/16: -> 11.1/19.4/18.0/10.3")]:
        side_v[side] = add(VD.Claim(f"DEBIASLENS ({side}) lowers MaxSkew, beyond random latents", "debias", "less",
                                    MIN_SKEW), sk[side][a] - sk["base"][a], M["null"][side][a] - sk["base"][a], paper,
                           f"MaxSkew change per query; control: {M['null_draws']} draws of firing-rate-matched "
                           "random latents set the same way", testable=gate, why=gate_why)
    add(VD.Claim("DEBIASLENS (I+T) lowers MaxSkew beyond the SAE round trip alone", "debias", "less", MIN_SKEW),
        sk["I+T"][a] - sk["base"][a], sk["recon"][a] - sk["base"][a], "(implicit in the method)",
        "MaxSkew change per query; control: reconstruction only (encode, decode, mix, no latent changed)",
        testable=gate, why=gate_why)
    add(VD.Claim(f"few {a} neurons leave {o} bias unchanged", "no-change", "within", tol=0.02),
        sk["I+T"][o], sk["base"][o], "poster, social neurons",
        f"{o} MaxSkew per query, I+T vs none; equivalence margin 0.02", after=side_v["I+T"])
    add(VD.Claim("alpha = 0.6 keeps zero-shot accuracy", "no-change", "within", tol=0.03), M["zs"]["I+T"],
        M["zs"]["base"], "ablation table: ImageNette 99.5 -> 97.5 (I), 99.1 -> 98.5 (T)",
        "zero-shot correctness per image, I+T vs none; margin 0.03", after=side_v["I+T"], binary=True)
    for side, paper in [("image", "FairFace 18.8 -> 10.6"), ("text", "FairFace 16.7 -> 13.2")]:
        A = M["alpha"][side]
        add(VD.Claim(f"alpha 1 vs 0 lowers MaxSkew ({side} side), beyond the SAE round trip", "debias", "less",
                     MIN_SKEW), A["edit"] - sk["base"][a], A["recon"] - sk["base"][a], f"ablation table: {paper}",
            "MaxSkew change per query at alpha 1; control: reconstruction only at alpha 1", testable=gate, why=gate_why)
        add(VD.Claim(f"alpha 1 costs zero-shot accuracy ({side} side)", "other", "less", 0.01, effect_ref=None),
            A["zs1"], A["zs0"], "ablation table: ImageNette 99.5 -> 59.1 (I), 99.1 -> 87.8 (T)",
            "zero-shot correctness per image, alpha 1 vs 0")
    eff, null = M["firing"]
    add(VD.Claim(f"SAE neurons capture {a} (firing on held-out images)", "other", "greater", 0.05), eff, null,
        "poster: neurons capture social attributes without labels",
        "own-minus-other firing per gallery image; control: neurons selected on permuted probing labels",
        why="on the testbed by construction: testbed-clip was trained with a supervised gender/race read-out, "
            "so 'without labels' cannot be tested here")
    L = M.get("lvlm")
    if L is not None:
        lb = add(LVLM_BIAS_CLAIM, L["before"], L["shuffle"], "LLaVA-1.5-7B, VLA 0.62",
                 f"oriented gender gap per question x quadruplet ({L['n_quads']} quadruplets); control: labels "
                 "shuffled within quadruplets", clusters=L["quads"])
        ok = lb.verdict == "reproduced" and L["neurons"]
        add(VD.Claim("LVLM: DEBIASLENS shrinks the gender gap, beyond random latents", "debias", "less", MIN_SKEW),
            L["after"] - L["before"], L["null"] - L["before"], "LLaVA-1.5-7B, VLA 0.62 -> 0.50",
            f"change of the oriented gap; control: {L['null_draws']} random-latent draws", clusters=L["quads"],
            testable=ok, why="" if ok else ("no social neuron at the LVLM's layer" if not L["neurons"] else
                                            "the before-gap does not exceed the label-shuffle null: not testable here"))
    if P is None or len(P["before"]) < 2:
        return rows
    pb = add(planted_claim, P["before"], P["shuffle"], "-", f"top-{P['k']} share of men minus 0.5, oriented by the planted skew, "
             "per skewed scenario; control: labels shuffled within quadruplets")
    ok = pb.verdict == "reproduced" and M["neurons"]
    pf = add(VD.Claim("(testbed) DEBIASLENS (I+T) moves the planted-skewed scenarios toward parity", "debias", "less",
                      0.02), P["after"] - P["before"], P["null"] - P["before"], "-",
             "change of the oriented deviation per skewed scenario; control: random latents",
             testable=ok, why="" if ok else "retrieval does not follow the planted skew: nothing to move")
    tol = max(0.5 * float(np.mean(P["ctrl_before"])), 1.0 / P["k"])
    add(VD.Claim("(testbed) ... and leaves the balanced controls alone", "no-change", "within", tol=tol),
        P["ctrl_after"], P["ctrl_before"], "-", f"|share of men - 0.5| per control scenario; margin {tol:.3f} "
        "(half the controls' own baseline, at least one image in k)", after=pf)
    return rows


def recall_captions(rows: pd.DataFrame, spec, idx: Sequence[int], rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """One testbed caption per gallery row in ``idx`` and its relevance mask over the gallery:
    the same scenario, and the same gender / race where the caption names them (as in chapter 07)."""
    from fairvlm.testbed import captions as tbc

    caps, rel = [], []
    for i in idx:
        r = rows.iloc[int(i)]
        c = tbc.caption(spec, r.scenario, {"male": "man", "female": "woman"}[r.gender], r.race, rng)
        m = tbc.mentions(c)
        ok = np.array(rows["scenario"] == r.scenario)
        for a in ("gender", "race"):
            if m[a]:
                ok = ok & np.array(rows[a] == r[a])
        caps.append(c)
        rel.append(ok)
    return caps, np.stack(rel)


# ------------------------------------------------------------------------ chapter studies
def random_latent_nulls(I_emb, T_emb, bench: "Bench", draws: dict, edit_for, *, base_I, base_T) -> tuple[dict, list]:
    """Per-query MaxSkew under each draw of random latents, averaged over draws, one null per
    side (``I``, ``T``, ``I+T``): ``{side: {attr: per-query mean}}``, and the (I, T) embeddings of
    every draw (for other measures). ``edit_for(side, latents)`` builds a draw's edit;
    ``draws[side]`` is a list of latent lists (:func:`matched_random_latents`)."""
    n = len(draws["image"])
    acc = {s: {a: [] for a in bench.attr_labels} for s in ("I", "T", "I+T")}
    embs = []
    for d in range(n):
        Id, Td = I_emb(edit_for("image", draws["image"][d])), T_emb(edit_for("text", draws["text"][d]))
        for side, (I, T) in {"I": (Id, base_T), "T": (base_I, Td), "I+T": (Id, Td)}.items():
            for a, v in bench.skew(I, T).items():
                acc[side][a].append(v)
        embs.append((Id, Td))
    return {s: {a: np.mean(v, axis=0) for a, v in d_.items()} for s, d_ in acc.items()}, embs


def layer_read_check(lm, image, layer: int) -> tuple[bool, float]:
    """Zero the last vision layer, then layer ``layer``: (last-layer edit leaves the logits
    bitwise unchanged, largest logit change from zeroing ``layer``)."""
    from fairvlm import hooks

    enc = lm.inputs(["Describe the image."], [image])
    base = lm.next_token_logits(enc)
    out = {}
    for site in ("vision.resid_post.-1", f"vision.resid_post.{layer}"):
        with hooks.edit(lm, {site: torch.zeros_like}):
            out[site] = lm.next_token_logits(enc)
    return bool(torch.equal(out["vision.resid_post.-1"], base)), float((out[f"vision.resid_post.{layer}"] - base).abs().max())


def lvlm_study(lm, sae, site: str, images: Sequence, rows: pd.DataFrame, probe_pixels, probe_rows: pd.DataFrame, *,
               attribute: str, other: str, groups: Sequence[str], questions: Sequence[str], threshold: float,
               per_group: int, cap: float, gamma_mode: str, alpha: float, n_shuffle: int, n_draws: int,
               seed: int = 0) -> dict:
    """The VLA gap of a LLaVA-style model before and after neuron control at ``site``.

    Neurons are probed on ``probe_pixels`` (largest code over the image tokens) and chosen as in
    the chapter; the gap per (question, quadruplet) is signed by the unedited model's direction
    (:func:`orient`). The control is a within-quadruplet label shuffle; only when the unedited
    gap exceeds it (and at least :data:`fairvlm.verdicts.MIN_UNITS` quadruplets) are the edit and
    ``n_draws`` matched random-latent draws run (each a full pass of the language model)."""
    from fairvlm import hooks
    from fairvlm import sae as S
    from fairvlm.verdicts import MIN_UNITS

    codes = S.collect_image_acts(lm, probe_pixels, site=site, tokens="max", sae=sae)
    table = specific_neurons(S.social_neurons(codes, probe_rows[attribute], threshold=threshold), codes,
                             probe_rows[other], cap=cap)
    lat, grp = pick_specific(table, groups, per_group, codes=codes, other_labels=probe_rows[other], cap=cap)
    rq = [(i, q) for q in questions for i in range(len(rows))]
    imgs, txts = [images[i] for i, _ in rq], [q for _, q in rq]
    quad = rows["quad"].to_numpy()[[i for i, _ in rq]]
    grp_q = rows[attribute].to_numpy()[[i for i, _ in rq]]

    def pyes(latents=None, gam=None):
        edits = {} if latents is None else {site: lambda h: S.control(sae, h, latents, gam, alpha)}
        with hooks.edit(lm, edits):
            return yes_probability(lm, imgs, txts, batch_size=32)

    p0 = pyes()
    sign = np.sign(quad_gap(p0, grp_q, quad, txts, groups).groupby(level="q").mean()).replace(0, 1.0)

    def oriented(p, labels=grp_q):
        return orient(quad_gap(p, labels, quad, txts, groups), sign)

    before = oriented(p0)
    shuffle = np.mean([oriented(p0, lab).to_numpy() for lab in
                       quadruplet_label_shuffle(grp_q, quad, n_perm=n_shuffle, seed=seed)], axis=0)
    out = {"before": before.to_numpy(), "shuffle": shuffle, "after": before.to_numpy(), "null": before.to_numpy(),
           "quads": before.index.get_level_values("quad").to_numpy(), "n_quads": int(rows["quad"].nunique()),
           "null_draws": n_draws, "neurons": bool(lat), "latents": lat, "table": table}
    from fairvlm import verdicts as VD

    gate = VD.judge(LVLM_BIAS_CLAIM, out["before"], shuffle, clusters=out["quads"], seed=seed)
    out["ran"] = bool(gate.verdict == "reproduced" and lat)   # the same verdict paper_claims gives
    if out["ran"]:   # the language model runs once per condition: only when there is a gap to remove
        out["after"] = oriented(pyes(lat, gammas(gamma_mode, codes, probe_rows[attribute], lat, grp))).to_numpy()
        draws = matched_random_latents(firing_rates(codes), lat, table["latent"].astype(int), n_draws=n_draws,
                                       seed=seed + 2)
        out["null"] = np.mean([oriented(pyes(d, gammas(gamma_mode, codes, probe_rows[attribute], d, grp))).to_numpy()
                               for d in draws], axis=0)
    out["summary"] = pd.DataFrame({"condition": ["before", "labels shuffled within quadruplets (before)"]
                                   + (["DEBIASLENS", f"random latents, mean of {n_draws}"] if out["ran"] else []),
                                   "oriented gender gap in P(yes)": [out["before"].mean(), shuffle.mean()]
                                   + ([out["after"].mean(), out["null"].mean()] if out["ran"] else [])})
    return out


def planted_study(shares: dict, share_tbl: pd.DataFrame, k: int) -> tuple[dict | None, pd.DataFrame, pd.DataFrame]:
    """The planted-truth measures from top-k shares of men per scenario prompt.

    ``shares``: condition -> per-scenario share (``none``, ``DEBIASLENS (I+T)``,
    ``random latents (I+T)``, ``labels shuffled``), scenarios in ``share_tbl``'s order (columns
    ``scenario``, ``p_man``, ``p_black``). Returns (the ``planted`` input of
    :func:`paper_claims`, the per-scenario frame, the per-class summary)."""
    cls = planted_classes(share_tbl)
    direction = np.sign(share_tbl["p_man"].to_numpy(float) - 0.5)
    flat = pd.DataFrame({"scenario": share_tbl["scenario"].to_numpy(), "planted": cls.to_numpy(),
                         "p_man": share_tbl["p_man"].to_numpy(), **{f"male share: {n}": v for n, v in shares.items()}})
    sk, ct = (cls == "skewed (gender)").to_numpy(), (cls == "balanced control").to_numpy()
    o = {n: (v - 0.5) * direction for n, v in shares.items()}
    planted = {"k": int(k), "before": o["none"][sk], "shuffle": o["labels shuffled"][sk],
               "after": o["DEBIASLENS (I+T)"][sk], "null": o["random latents (I+T)"][sk],
               "ctrl_before": np.abs(shares["none"][ct] - 0.5), "ctrl_after": np.abs(shares["DEBIASLENS (I+T)"][ct] - 0.5)}
    summary = flat.groupby("planted").agg(scenarios=("scenario", "size"), **{
        f"|share - 0.5| {n}": (f"male share: {n}", lambda x: float(np.mean(np.abs(x - 0.5)))) for n in shares})
    return planted, flat, summary


def skew_controls(clip, bench: "Bench", base: tuple, probe_cls, probe_labels, gal_labels, quads, all_texts: Sequence[str],
                  *, attribute: str, k: int, n_perm: int, keep_frac: float, lam: float, seed: int = 0) -> dict:
    """The MaxSkew rows that are not SAE edits, by name: chapter 07's baselines (CLIP-clip,
    biased prompts; :func:`baselines`) evaluated on ``bench``; the unedited model with the
    gallery's labels shuffled inside each quadruplet (mean of ``n_perm`` shuffles); content-free
    prompts (:data:`CONTENT_FREE`, rows of ``all_texts``); and a random ranking."""
    base_I, base_T = base[0], base[1]
    out = {name: bench.evaluate(I, T) for name, (I, T) in baselines(
        clip, embed_from_last_layer(clip, probe_cls), probe_labels, base_I, base_T, attribute,
        keep_frac=keep_frac, lam=lam, seed=seed).items()}
    sim = (base_T[bench.qi] @ base_I.T).numpy()
    shuffled = [maxskew_per_query(sim, lab, k) for lab in quadruplet_label_shuffle(gal_labels, quads, n_perm=n_perm,
                                                                                    seed=seed)]
    out["labels shuffled within quadruplets"] = {"skew": {attribute: np.mean(shuffled, axis=0)}}
    cf = (base_T[[list(all_texts).index(t) for t in CONTENT_FREE]] @ base_I.T).numpy()
    out["content-free prompts"] = {"skew": {attribute: maxskew_per_query(cf, gal_labels, k)}}
    out["random ranking"] = {"skew": {a: random_floor(lab, k, n_queries=len(bench.qi), seed=seed)
                                      for a, lab in bench.attr_labels.items()}}
    return out


def planted_shares(base: tuple, edited: tuple, null_embs: Sequence[tuple], scen_rows: Sequence[int], gender,
                   quads, k: int, *, n_perm: int, seed: int = 0) -> dict:
    """Per scenario prompt (rows ``scen_rows`` of the text embeddings), the share of men among
    the top ``k`` gallery images under each condition of :func:`planted_study`: the unedited
    model ``base = (I, T)``, the edit ``edited = (I, T)``, the mean over the random-latent
    draws ``null_embs``, and the unedited model with the gallery's gender labels shuffled
    inside each counterfactual quadruplet (``n_perm`` shuffles)."""
    gender = np.asarray(gender, dtype=object)

    def shares(I, T, labels=gender):
        return top_share(T[list(scen_rows)], I, labels, "male", k)

    if not len(null_embs):
        raise ParameterError("null_embs is empty: the random-latent null needs at least one draw")
    return {"none": shares(*base), "DEBIASLENS (I+T)": shares(*edited),
            "random latents (I+T)": np.mean([shares(I, T) for I, T in null_embs], axis=0),
            "labels shuffled": np.mean([shares(*base, lab) for lab in quadruplet_label_shuffle(
                gender, quads, n_perm=n_perm, seed=seed)], axis=0)}


def plot_planted(flat: pd.DataFrame, k: int):
    """Top-k share of men per scenario against its planted share, before and after I+T."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for n, m in (("none", "o"), ("DEBIASLENS (I+T)", "x")):
        ax.scatter(flat["p_man"], flat[f"male share: {n}"], s=16, marker=m, label=n)
    ax.axhline(0.5, color="k", lw=0.6, ls=":")
    ax.set(xlabel="planted share of men in training", ylabel=f"share of men in top {k}")
    ax.legend(frameon=False, fontsize=8)
    return fig


def plot_alpha_ablation(ablation: pd.DataFrame, attribute: str):
    """MaxSkew x 100 against alpha per side, the social neurons beside the round trip alone."""
    import matplotlib.pyplot as plt

    col = f"MaxSkew x100 ({attribute})"
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.3), sharey=True)
    for ax, side in zip(axes, ("image", "text")):
        for what, m in (("social neurons", "o"), ("reconstruction only", "s")):
            d = ablation[(ablation["side"] == side) & (ablation["edit"] == what)]
            ax.plot(d["alpha"], d[col], marker=m, label=what)
        ax.set(title=f"{side} side", xlabel="alpha")
    axes[0].set_ylabel(col)
    axes[0].legend(fontsize=7, frameon=False)
    return fig


def sae_summary(saes: dict, logs: dict) -> pd.DataFrame:
    """One row per trained SAE (``image_noauxk`` shares ``image``'s site and width): steps,
    whether it plateaued, held-out explained variance (all latents, first 1/16), dead fraction, L0."""
    rows = []
    for n, lg in logs.items():
        sae = saes[n.split("_")[0]]
        ev = [c for c in lg.columns if c.startswith("ev_level_")]
        last = lg.iloc[-1]
        rows.append({"SAE": n, "site": sae.cfg.site, "latents": sae.cfg.d_sae, "AuxK": "off" if n.endswith("noauxk") else "on",
                     "steps": lg.attrs.get("steps_run"), "plateaued": bool(lg.attrs.get("plateaued")),
                     "EV held-out rows": last[ev[-1]], "EV first 1/16": last[ev[0]], "dead": last["dead_frac"],
                     "L0": last["l0"]})
    return pd.DataFrame(rows)


def drift_table(embed, base, sae, chosen_latents, chosen_gamma, alpha: float) -> pd.DataFrame:
    """Mean 1 - cosine of ``embed(edit)`` to ``base`` for both control variants, with no latent
    changed and with the chosen latents set: how much of the move is the SAE round trip."""
    from fairvlm import sae as S

    rows = []
    for variant in S.VARIANTS:
        for what, (lat, gam) in (("no latent changed", ([], 0.0)), ("chosen neurons set", (chosen_latents, chosen_gamma))):
            e = embed(lambda h, lat=lat, gam=gam, variant=variant: S.control(sae, h, lat, gam, alpha, variant=variant))
            rows.append({"variant": variant, "edit": what, "alpha": alpha,
                         "mean 1 - cos to unedited": float((1 - (e * base).sum(-1)).mean())})
    return pd.DataFrame(rows)


def alpha_ablation(run, edits: dict, alphas: Sequence[float], attribute: str) -> tuple[pd.DataFrame, dict]:
    """``run(img_edit, txt_edit) -> evaluation`` for each side, edit kind and alpha.
    ``edits[(side, kind)](alpha)`` builds the edit. Returns (table, {(side, kind, alpha): evaluation})."""
    rows, res = [], {}
    for (side, kind), make in edits.items():
        for a in alphas:
            r = run(make(a), None) if side == "image" else run(None, make(a))
            res[(side, kind, a)] = r
            rows.append({"side": side, "edit": kind, "alpha": a, f"MaxSkew x100 ({attribute})":
                         100 * r["skew"][attribute].mean(), "zero-shot acc": r["zero_shot"], "t2i R@5": r.get("t2i_R@5")})
    return pd.DataFrame(rows), res


# ------------------------------------------------------------------------- the chapter's data
ATTR_GROUPS = {"gender": ["female", "male"], "race": ["black", "white"]}
_GENDER = {"man": "male", "woman": "female", "male": "male", "female": "female"}


def norm_meta(m: pd.DataFrame) -> pd.DataFrame:
    """Gender as male/female and race in lower case, whatever the gallery wrote."""
    return m.assign(gender=[_GENDER.get(str(g).lower(), str(g).lower()) for g in m["gender"]],
                    race=[str(r).lower() for r in m["race"]])


def group_texts(attr: str) -> tuple[list[str], list[str]]:
    """Sentences naming one group of ``attr`` for every testbed scenario: (texts, labels)."""
    from fairvlm.testbed.captions import with_article
    from fairvlm.testbed.scenarios import SCENARIOS

    texts, labels = [], []
    for sc in SCENARIOS.values():
        for grp in ATTR_GROUPS[attr]:
            noun = {"male": "man", "female": "woman"}.get(grp, f"{grp.capitalize()} person")
            adj = grp if attr == "gender" else grp.capitalize()
            for t in (f"a photo of a {noun} {sc.activity}", with_article(f"{adj} {sc.role}"),
                      f"a picture of a {noun} with {sc.props}"):
                texts.append(t)
                labels.append(grp)
    return texts, labels


def testbed_data(clip, *, probe_scenes: int, gallery_scenes: int, n_recall: int, seed: int = 0) -> dict:
    """Probing and gallery sets of held-out testbed scenes (each scene in the four group
    variants), zero-shot prompts and labels, and Recall@K captions for a sample of the gallery."""
    from fairvlm import retrieval
    from fairvlm.testbed import SCENARIO_KEYS, world, world_spec
    from fairvlm.testbed.captions import zero_shot_prompts

    rng = np.random.default_rng(seed)
    spec = world_spec()
    raw_p = world.gallery(probe_scenes, split="heldout", start=1000)
    raw_g = world.gallery(gallery_scenes, split="heldout", start=0)
    probe_images, gal_images = world.render_rows(raw_p, world.DEFAULT_SIZE), world.render_rows(raw_g, world.DEFAULT_SIZE)
    gal = norm_meta(raw_g)
    gal["quad"] = gal.groupby(["scenario", "scene_seed"], sort=False).ngroup()
    keys = list(SCENARIO_KEYS)
    caps, rel = recall_captions(gal, spec, np.sort(rng.choice(len(gal), min(len(gal), n_recall), replace=False)), rng)
    return {"spec": spec, "probe_rows": norm_meta(raw_p), "probe_images": probe_images,
            "probe_pixels": retrieval.pixel_values(clip, probe_images), "gal_rows": gal,
            "gal_pixels": retrieval.pixel_values(clip, gal_images), "gallery_image": gal_images.__getitem__,
            "zs_prompts": zero_shot_prompts(keys), "zs_labels": [keys.index(x) for x in gal["scenario"]],
            "rec_caps": caps, "rec_rel": rel, "zs_pixels": None,
            "desc": f"testbed world (synthetic, held-out scenes): probing {len(raw_p)} images, gallery {len(gal)}"}


def lvlm_data(llava, data: dict, *, n_quads: int, seed: int = 0) -> tuple[pd.DataFrame, list, torch.Tensor, pd.DataFrame]:
    """The LVLM test's images and probing rows: ``(rows, images, probe_pixels, probe_rows)``.

    Testbed (``data`` from :func:`testbed_data`): ``n_quads`` counterfactual quadruplets of
    held-out scenes from 3000 on (never in the SAE, probing or gallery sets), probed on the
    chapter's probing images. Paper (:func:`paper_data`): PAIRS split by scenario, neurons
    probed on one half and the gap measured on the other. ``rows["quad"]`` numbers the
    quadruplets."""
    from fairvlm import retrieval

    V.integer("n_quads", n_quads, low=1)
    if "pairs_meta" not in data:
        from fairvlm.testbed import world
        from fairvlm.testbed.scenarios import SCENARIO_KEYS

        raw = world.gallery(int(np.ceil(n_quads / len(SCENARIO_KEYS))), split="heldout", start=3000)
        pick = raw[["scenario", "scene_seed"]].drop_duplicates().sample(n_quads, random_state=seed)
        raw = raw.merge(pick, on=["scenario", "scene_seed"]).reset_index(drop=True)
        rows, images = norm_meta(raw), world.render_rows(raw, world.DEFAULT_SIZE)
        probe_pixels, probe = retrieval.pixel_values(llava, data["probe_images"]), data["probe_rows"]
        by = ["scenario", "scene_seed"]
    else:
        pairs, meta = data["pairs"], data["pairs_meta"]
        fit, ev = split_by_scenario(meta)
        rows, images = meta.iloc[ev].reset_index(drop=True), [pairs.image(int(i)) for i in ev]
        probe_pixels = retrieval.pixel_values(llava, [pairs.image(int(i)) for i in fit])
        probe, by = meta.iloc[fit].reset_index(drop=True), ["scenario"]
    rows = rows.assign(quad=rows.groupby(by, sort=False).ngroup())
    return rows, images, probe_pixels, probe


def paper_data(clip, llava, queries: pd.DataFrame, *, pairs_dir: str = "", fairface_dir: str = "", fairface_limit: int = 0,
               seed: int = 0) -> dict:
    """The paper profile's sets: FairFace (fit and gallery) + PAIRS (zero-shot) when
    ``fairface_dir`` is given, else PAIRS split by scenario (fit on one half, measure on the
    other, :func:`split_by_scenario`); ``sae_data_fn`` builds the SAEs' training activations."""
    from fairvlm import retrieval
    from fairvlm import sae as S

    pairs = retrieval.pairs_gallery(pairs_dir or None, mapped_only=True)
    pairs_meta = norm_meta(pairs.meta)
    out = {"pairs": pairs, "pairs_meta": pairs_meta, "rec_caps": [], "rec_rel": None, "spec": None}
    if fairface_dir:
        ff_train = retrieval.load_fairface(fairface_dir, "train", limit=fairface_limit or 5000, seed=seed)
        ff_val = retrieval.load_fairface(fairface_dir, "validation", limit=fairface_limit or None, seed=seed)
        out.update(probe_images=ff_train.images(), probe_rows=norm_meta(ff_train.meta), gal_rows=norm_meta(ff_val.meta),
                   gal_pixels=retrieval.pixel_values(clip, ff_val.images()), gallery_image=ff_val.image,
                   zs_pixels=retrieval.pixel_values(clip, pairs.images()), desc="FairFace (SAE, probing, gallery) + PAIRS (zero-shot)")
        zs_meta = pairs_meta
    else:
        fit, ev = split_by_scenario(pairs_meta)
        allp = retrieval.pixel_values(clip, pairs.images())
        out.update(probe_images=[pairs.image(int(i)) for i in fit], probe_rows=pairs_meta.iloc[fit].reset_index(drop=True),
                   gal_rows=pairs_meta.iloc[ev].reset_index(drop=True), gal_pixels=allp[torch.from_numpy(ev)],
                   gallery_image=lambda i: pairs.image(int(ev[i])), zs_pixels=None)
        out["desc"] = (f"PAIRS (mapped labels), scenarios split: SAE and probing on {out['probe_rows']['scenario'].nunique()}, "
                       f"gallery and zero-shot on the other {out['gal_rows']['scenario'].nunique()}")
        zs_meta = out["gal_rows"]
    out["probe_pixels"] = retrieval.pixel_values(clip, out["probe_images"])
    out["gal_rows"]["quad"] = out["gal_rows"].groupby(["scenario"], sort=False).ngroup()
    classes = list(dict.fromkeys(zs_meta["label"]))
    out["zs_prompts"] = [f"a photo of a {x}" for x in classes]
    out["zs_labels"] = [classes.index(x) for x in zs_meta["label"]]

    def sae_data_fn():
        """Class tokens of the fitting images, every token of the query and group texts, every
        token of the LVLM's layer -2 on the fitting images (90/10 by row for the plateau rule)."""
        cls = last_layer_cls(clip, out["probe_pixels"])
        texts = queries["prompt"].tolist() + group_texts("gender")[0] + group_texts("race")[0]
        tx = S.collect_text_acts(clip, texts, site=TXT_SITE, tokens="all")
        site = f"vision.resid_post.{int(getattr(llava.model.config, 'vision_feature_layer', -2))}"
        lv = S.collect_image_acts(llava, retrieval.pixel_values(llava, out["probe_images"]), site=site, tokens="all")

        def cut(x):
            return x[: int(0.9 * len(x))], x[int(0.9 * len(x)):]

        return {"image": cut(cls), "text": cut(tx), "llava": cut(lv),
                "sites": {"image": IMG_SITE, "text": TXT_SITE, "llava": site}}

    out["sae_data_fn"] = sae_data_fn
    return out


def baselines(clip, probe_emb, probe_labels, base_I, base_T, attribute: str, *, keep_frac: float, lam: float,
              seed: int = 0) -> dict:
    """Chapter 07's baselines as (image, text) embeddings: CLIP-clip (the embedding dimensions
    with the least mutual information with the attribute, fitted on the probing images) and
    biased prompts (Chuang et al.'s calibrated projection of the text embeddings)."""
    from fairvlm import retrieval
    from fairvlm.testbed.scenarios import SCENARIOS

    keep = retrieval.clip_clip_dims(probe_emb, probe_labels, max(1, int(round(keep_frac * probe_emb.shape[1]))), seed=seed)
    roles = [sc.role for sc in SCENARIOS.values()]
    a, b = {"gender": ("male", "female"), "race": ("Black", "White")}[attribute]
    spurious = [f"a photo of a {w}" for w in (("man", "woman", "male", "female") if attribute == "gender" else
                                              ("Black person", "White person"))]
    bp = retrieval.biased_prompts_projection(*(retrieval.embed_texts(clip, t) for t in (
        spurious, [f"a photo of a {a} {w}" for w in roles], [f"a photo of a {b} {w}" for w in roles])), lam=lam)
    return {"CLIP-clip": (retrieval.keep_dims(base_I, keep), retrieval.keep_dims(base_T, keep)),
            "biased prompts": (base_I, retrieval.project_texts(base_T, bp))}


def skew_table(results: dict, sets, attribute: str, other: str) -> pd.DataFrame:
    """MaxSkew x 100 per query set and overall, the other attribute's, zero-shot and R@5, one row per condition."""
    sets = np.asarray(sets)
    def by_set(v):  # rows that are not the queries (content-free prompts) have no sets
        return {s: 100 * v[sets == s].mean() if len(v) == len(sets) else np.nan for s in QUERY_SETS}

    return pd.DataFrame([{"method": n, **by_set(r["skew"][attribute]),
                          "all queries": 100 * r["skew"][attribute].mean(),
                          f"{other} (all)": 100 * r["skew"][other].mean() if other in r["skew"] else np.nan,
                          "zero-shot acc": r.get("zero_shot", np.nan), "t2i R@5": r.get("t2i_R@5", np.nan)}
                         for n, r in results.items()])


# ------------------------------------------------------------------------------- figures
def plot_sae_logs(logs: dict):
    """Held-out explained variance, dead fraction and L0 against the step, one line per SAE."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for name, lg in logs.items():
        ev = [c for c in lg.columns if c.startswith("ev_level_")][-1]
        for ax, col in zip(axes, (ev, "dead_frac", "l0")):
            ax.plot(lg["step"], lg[col], label=name)
    for ax, t in zip(axes, ("explained variance (held-out rows)", "fraction of dead latents", "active latents per row (L0)")):
        ax.set(title=t, xlabel="step")
    axes[0].legend(fontsize=7, frameon=False)
    return fig


def neuron_grid(codes, rows: pd.DataFrame, attribute: str, latents: Sequence[int], groups: Sequence[str], image, n: int = 8):
    """For each latent, the ``n`` rows on which it fires most (``image(i)`` draws row i), labelled
    with their group (``*``: another group than the latent's)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(latents), n, figsize=(11, 1.55 * len(latents) + 0.4), squeeze=False)
    for r, (j, g) in enumerate(zip(latents, groups)):
        for c, i in enumerate(torch.argsort(codes[:, j], descending=True, stable=True)[:n].tolist()):
            ax = axes[r, c]
            ax.imshow(image(int(i)))
            ax.set(xticks=[], yticks=[])
            lab = rows.iloc[i][attribute]
            ax.set_xlabel(lab + ("" if lab == g else " *"), fontsize=7)
        axes[r, 0].set_ylabel(f"#{j}\n{g}", fontsize=8)
    fig.suptitle(f"top-activating held-out images of the chosen {attribute} neurons (* = other group)", fontsize=9)
    return fig


class Editor:
    """Neuron control on CLIP from states captured once: the gallery's last-layer class tokens
    and (for a mean-pooled text tower) every text's last-layer tokens; hooked re-encoding
    otherwise. ``chosen[side] = (latents, groups, gammas)`` for ``side`` in image / text."""

    def __init__(self, clip, saes: dict, chosen: dict, gal_cls, bench: Bench, texts: Sequence[str], *, alpha: float,
                 zs_cls=None):
        self.clip, self.saes, self.chosen, self.gal_cls, self.bench = clip, saes, chosen, gal_cls, bench
        self.texts, self.alpha, self.zs_cls = list(texts), alpha, zs_cls
        self.shortcut = supports_text_shortcut(clip)
        self.states = last_layer_text(clip, self.texts) if self.shortcut else None

    def edit(self, side, latents, gam, alpha=None, variant="authors"):
        from fairvlm import sae as S

        a = self.alpha if alpha is None else alpha
        return lambda h: S.control(self.saes[side], h, latents, gam, a, variant=variant)

    def social(self, side, alpha=None, variant="authors"):
        lat, _, gam = self.chosen[side]
        return self.edit(side, lat, gam, alpha, variant)

    def recon(self, side, alpha=None):
        return self.edit(side, [], 0.0, alpha)

    def I(self, edit=None, cls=None):
        return embed_from_last_layer(self.clip, self.gal_cls if cls is None else cls, edit)

    def T(self, edit=None):
        from fairvlm import hooks, retrieval

        if self.shortcut:
            return embed_text_from_last_layer(self.clip, self.states, edit)
        with hooks.edit(self.clip, {} if edit is None else {TXT_SITE: edit}):
            return retrieval.embed_texts(self.clip, self.texts)

    def run(self, img=None, txt=None):
        """(image embeddings, text embeddings, :meth:`Bench.evaluate`) under the two edits."""
        I, T = self.I(img), self.T(txt)
        return I, T, self.bench.evaluate(I, T, None if self.zs_cls is None else self.I(img, self.zs_cls))

    #: the edited conditions of the chapter's MaxSkew table: (name, image edit, text edit)
    CONDITIONS = (("DEBIASLENS (I)", "social", None), ("DEBIASLENS (T)", None, "social"),
                  ("DEBIASLENS (I+T)", "social", "social"), ("reconstruction only (I+T)", "recon", "recon"),
                  ("DEBIASLENS (I+T), error-preserving", "social_ep", "social_ep"))

    def conditions(self, base: tuple, rates: dict, social: dict, probe: dict, *, gamma_mode: str, n_draws: int,
                   seed: int = 0) -> tuple[dict, dict, dict, list]:
        """Every edited condition of :data:`CONDITIONS` and the random-latent null.

        ``base``: :meth:`run` of the unedited model. ``rates`` / ``social``: per side, the
        firing rates and the social latents (:func:`select_neurons`), from which
        :func:`matched_random_latents` draws ``n_draws`` sets like the chosen ones; each draw
        is set by ``gamma_mode`` on ``probe[side] = (codes, labels)``. Returns (evaluations by
        condition name, the unedited one included; (I, T) by condition; the null of
        :func:`random_latent_nulls`; the (I, T) of every draw)."""
        make = {"social": lambda s: self.social(s), "recon": lambda s: self.recon(s),
                "social_ep": lambda s: self.social(s, variant="error_preserving"), None: lambda s: None}
        base_I, base_T, base_eval = base
        results, emb = {"CLIP (no intervention)": base_eval}, {}
        for name, img, txt in self.CONDITIONS:
            *emb[name], results[name] = self.run(make[img]("image"), make[txt]("text"))
        draws = {s: matched_random_latents(rates[s], self.chosen[s][0], social[s], n_draws=n_draws, seed=seed + i)
                 for i, s in enumerate(("image", "text"))}
        null, null_embs = random_latent_nulls(
            self.I, self.T, self.bench, draws,
            lambda s, d: self.edit(s, d, gammas(gamma_mode, *probe[s], d, self.chosen[s][1])), base_I=base_I, base_T=base_T)
        return results, emb, null, null_embs

    def shortcut_error(self, gal_pixels, n: int = 64) -> float:
        """Largest difference between the cached-state embeddings and re-encoding with the
        social edit hooked on every token (images, and texts when the shortcut is used)."""
        from fairvlm import hooks, retrieval
        from fairvlm import sae as S

        lat, _, gam = self.chosen["image"]
        with hooks.edit(self.clip, S.control_edits(self.clip, IMG_SITE, self.saes["image"], lat, gam, self.alpha)):
            err = float((retrieval.embed_images(self.clip, gal_pixels[:n]) - self.I(self.social("image"))[:n]).abs().max())
        lat, _, gam = self.chosen["text"]
        with hooks.edit(self.clip, S.control_edits(self.clip, TXT_SITE, self.saes["text"], lat, gam, self.alpha)):
            hooked = retrieval.embed_texts(self.clip, self.texts[:32])
        return max(err, float((hooked - self.T(self.social("text"))[:32]).abs().max()))
