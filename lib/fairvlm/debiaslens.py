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
    names = sorted(set(g.tolist()))
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.array([metrics.max_skew(g[t].tolist(), names, int(k)) for t in top])


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
