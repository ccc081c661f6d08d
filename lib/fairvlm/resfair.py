"""RES-FAIR: the post-hoc residual update, applied during generation, fitted and evaluated apart.

RES-FAIR (Lan et al., arXiv 2505.23798, appendix Figure 2 and C.1) edits the hidden state
``v`` at the layers its residual directions were taken from (the last tenth of the
layers):

    v'    = v  - lambda1 P_bias v'        with P_u v = (v . u) u  (u a unit vector)
    v_new = v' + lambda2 P_fair v'

(the figure prints ``v_new = lambda2 P v'``, which would collapse the state onto one
line; the abstract says the fair component is *amplified*, which is the reading here).
The paper sets ``lambda1 = lambda2 = 0.2``. This module is the book's one home for the
update: :func:`update` is the formula, :func:`edits` turns :class:`fairvlm.lens.Directions`
into :func:`fairvlm.hooks.edit` functions on ``resid_post.l`` (every position, every
forward pass of ``generate``), and :func:`posthoc` is the context manager a chapter uses.

Never fit and evaluate on the same items. The directions come from one dataset and are
applied to another (SocialCounterfactuals -> PAIRS and back, appendix C.1); a model with a
single dataset (the testbed) is fitted on half of its scenarios and evaluated on the
other half. :func:`fit_eval_splits` builds those pairs from chapter 01-03's cached
collections and :func:`check_disjoint` refuses any pair that shares a scenario or an item.

Fluency (appendix C.5 says small lambdas make answers non-fluent) is measured by
:func:`answer_perplexity`: the *unedited* model's per-token perplexity of an answer given
its prompt.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from fairvlm import validate as V
from fairvlm.errors import FairVLMError, unknown

__all__ = [
    "DEFAULT_LAMBDA", "DATASETS", "check_lambdas", "base_dataset", "check_dataset", "update", "edits", "check_width",
    "posthoc", "check_disjoint", "fit_eval_splits", "rows_for", "answer_perplexity",
]

#: lambda1 = lambda2 = 0.2 (appendix C.1, Figure 3).
DEFAULT_LAMBDA = 0.2
#: Datasets the chapter knows: the two real ones and the testbed.
DATASETS = ("pairs", "scf", "testbed")


def check_lambdas(lambda1, lambda2) -> tuple[float, float]:
    """Both weights as floats, or a :class:`FairVLMError` unless each lies in [0, 1]."""
    out = []
    for name, v in (("lambda1", lambda1), ("lambda2", lambda2)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise FairVLMError(f"{name}={v!r} must be a number in [0, 1]")
        f = float(v)
        if not math.isfinite(f) or not 0.0 <= f <= 1.0:
            raise FairVLMError(f"{name}={v!r} is out of range; RES-FAIR's weights lie in [0, 1] (paper: 0.2)")
        out.append(f)
    return out[0], out[1]


def base_dataset(name: str) -> str:
    """The dataset a split half belongs to: ``"testbed-odd"`` -> ``"testbed"``; other names as they are."""
    V.text("name", name)
    return name.rsplit("-", 1)[0] if isinstance(name, str) and name.endswith(("-even", "-odd")) else name


def check_dataset(name) -> str:
    """``name`` if it is one of :data:`DATASETS` (optionally with a ``-even``/``-odd`` half), else an error."""
    if not isinstance(name, str) or base_dataset(name) not in DATASETS:
        raise unknown("dataset", name, DATASETS)
    return name


def update(x: torch.Tensor, u_bias: torch.Tensor, u_fair: torch.Tensor, lambda1: float, lambda2: float) -> torch.Tensor:
    """The RES-FAIR update of ``x`` (``(..., d)``) with unit directions ``u_bias``, ``u_fair`` (``(d,)``).

    A weight of 0 skips its step, so ``lambda1 = lambda2 = 0`` returns ``x`` itself (bitwise).
    """
    lambda1, lambda2 = check_lambdas(lambda1, lambda2)
    if not isinstance(x, torch.Tensor):
        raise FairVLMError(f"x={V.show(x)} must be a tensor (..., d)")
    for name, u in (("u_bias", u_bias), ("u_fair", u_fair)):
        if not isinstance(u, torch.Tensor) or u.ndim != 1 or u.shape[0] != x.shape[-1]:
            raise FairVLMError(f"{name}={V.show(u)} must be a vector (d,) with d={x.shape[-1]}, the width of x")
        if not bool(torch.isfinite(u).all()):
            raise FairVLMError(f"{name} holds NaN or inf; refit the directions")
    if not bool(torch.isfinite(x).all()):
        raise FairVLMError(f"x ({V.show(x)}) holds NaN or inf; only finite activations can be updated")
    return _update(x, u_bias, u_fair, lambda1, lambda2)


def _update(x, u_bias, u_fair, lambda1: float, lambda2: float):
    """:func:`update` without its checks: what the hooks of :func:`edits` run at every layer of
    every decoding step (``edits`` checked the weights and directions once; ``hooks.edit``
    checks the edited stream is finite)."""
    if lambda1:
        x = x - lambda1 * (x @ u_bias)[..., None] * u_bias
    if lambda2:
        x = x + lambda2 * (x @ u_fair)[..., None] * u_fair
    return x


def _unit_check(v: np.ndarray, what: str) -> None:
    n = float(np.linalg.norm(v))
    if not math.isfinite(n) or abs(n - 1.0) > 1e-3:
        raise FairVLMError(f"{what} must be a unit vector (norm {n:.4g}); refit the directions")


def edits(dirs, *, lambda1: float = DEFAULT_LAMBDA, lambda2: float = DEFAULT_LAMBDA,
          layers: Sequence[int] | None = None) -> dict:
    """``{"resid_post.l": fn}`` for :func:`fairvlm.hooks.edit`, one per layer of ``dirs``
    (a :class:`fairvlm.lens.Directions`) or of ``layers``. Each ``fn`` applies :func:`update`
    at every position."""
    lambda1, lambda2 = check_lambdas(lambda1, lambda2)
    if not all(hasattr(dirs, a) for a in ("bias", "fair", "layers")):
        raise FairVLMError(f"dirs={V.show(dirs)} must be a fairvlm.lens.Directions (fit_directions or Directions.load)")
    layers = list(dirs.layers) if layers is None else V.integers("layers", layers, unique=True)
    if not layers:  # an empty edit would run the model unchanged and report it as RES-FAIR
        raise FairVLMError("the directions cover no layer; refit them")
    out = {}
    for l in layers:
        if l not in dirs.bias:
            raise FairVLMError(f"no direction for layer {l}; the directions cover {list(dirs.layers)}")
        _unit_check(dirs.bias[l], f"u_bias of layer {l}")
        _unit_check(dirs.fair[l], f"u_fair of layer {l}")
        ub_np, uf_np = np.asarray(dirs.bias[l]), np.asarray(dirs.fair[l])
        cache: dict = {}

        def fn(x, ub_np=ub_np, uf_np=uf_np, cache=cache):
            key = (x.dtype, x.device)
            if key not in cache:
                cache[key] = (torch.as_tensor(ub_np, dtype=x.dtype, device=x.device),
                              torch.as_tensor(uf_np, dtype=x.dtype, device=x.device))
            ub, uf = cache[key]
            return _update(x, ub, uf, lambda1, lambda2)

        out[f"resid_post.{l}"] = fn
    return out


def check_width(dirs, loaded) -> None:
    """Raise unless the directions have the model's width and fit inside its layers."""
    if not all(hasattr(dirs, a) for a in ("bias", "fair", "layers", "meta")):
        raise FairVLMError(f"dirs={V.show(dirs)} must be a fairvlm.lens.Directions (fit_directions or Directions.load)")
    V.loaded("loaded", loaded)
    d = int(np.asarray(dirs.bias[dirs.layers[0]]).shape[0])
    if d != loaded.d_model:
        raise FairVLMError(f"the directions have width {d} but {loaded.name} has d_model={loaded.d_model}; "
                           f"they were fitted on another model ({dirs.meta.get('model', '?')})")
    if max(dirs.layers) >= loaded.n_layers:
        raise FairVLMError(f"the directions use layer {max(dirs.layers)} but {loaded.name} has "
                           f"{loaded.n_layers} layers")
    fitted = dirs.meta.get("model")
    if fitted and fitted != loaded.name:
        raise FairVLMError(f"the directions were fitted on {fitted}, not {loaded.name}")


@contextlib.contextmanager
def posthoc(loaded, dirs, *, lambda1: float = DEFAULT_LAMBDA, lambda2: float = DEFAULT_LAMBDA,
            layers: Sequence[int] | None = None):
    """``with posthoc(lm, dirs): ...``: every forward pass inside (including each step of
    ``generate``) runs with the RES-FAIR update at the directions' layers."""
    from fairvlm.hooks import edit

    if not all(hasattr(dirs, a) for a in ("bias", "fair", "layers")):
        raise FairVLMError(f"dirs={V.show(dirs)} must be a fairvlm.lens.Directions (fit_directions or Directions.load)")
    check_width(dirs, loaded)
    check_lambdas(lambda1, lambda2)
    with edit(loaded, edits(dirs, lambda1=lambda1, lambda2=lambda2, layers=layers)):
        yield loaded


# ---------------------------------------------------------------------------------------
# Fit on one dataset, evaluate on another
# ---------------------------------------------------------------------------------------


def check_disjoint(fit_table: pd.DataFrame, eval_table: pd.DataFrame) -> None:
    """Raise when a fitting table and an evaluation table share a scenario or an item id."""
    for name, t in (("fit_table", fit_table), ("eval_table", eval_table)):
        if not isinstance(t, pd.DataFrame):
            raise FairVLMError(f"{name}={V.show(t)} must be a DataFrame (a collection's .table)")
    for col in ("scenario", "item_id"):
        if col in fit_table and col in eval_table:
            shared = set(fit_table[col]) & set(eval_table[col])
            if shared:
                raise FairVLMError(f"fitting and evaluation data share {len(shared)} {col}(s), e.g. "
                                   f"{sorted(map(str, shared))[:3]}; directions must be evaluated on other items")


def fit_eval_splits(runs: Mapping) -> list[dict]:
    """The fit / evaluation pairs for ``{(model, dataset): Collection}`` (chapters 01-03's runs):
    every ordered pair of datasets for a model with several; the two halves of the
    scenarios (even / odd, :func:`fairvlm.lens.split_by_label`) for a model with one.
    Each entry: ``model, fit, eval, fit_col, eval_col``; checked with :func:`check_disjoint`."""
    from fairvlm.lens import cross_pairs

    if not isinstance(runs, Mapping) or not runs:
        raise FairVLMError(f"runs={V.show(runs)} must be a non-empty mapping {{(model, dataset): Collection}}")
    for key in runs:
        if not isinstance(key, tuple) or len(key) != 2:
            raise FairVLMError(f"runs key {key!r} must be a (model, dataset) pair")
    for (_, dataset) in runs:
        check_dataset(dataset)
    out = cross_pairs(runs)
    for pr in out:
        check_disjoint(pr["fit_col"].table, pr["eval_col"].table)
    return out


def rows_for(rows: Sequence, scenarios) -> list:
    """The rows (:class:`fairvlm.mcq.Row`) whose item scenario is in ``scenarios``."""
    keep = set(V.strings("scenarios", scenarios))
    out = [r for r in V.sequence("rows", rows) if r.item.scenario in keep]
    if not out:
        raise FairVLMError("no row has one of the given scenarios")
    return out


# ---------------------------------------------------------------------------------------
# Fluency
# ---------------------------------------------------------------------------------------


def answer_perplexity(loaded, rows: Sequence, answers: Sequence[str], *, images=None,
                      batch_size: int = 16) -> np.ndarray:
    """Per row, ``exp(mean NLL)`` of the answer's tokens given the row's prompt under the
    model as loaded (call it outside any edit: the unedited model judges fluency).
    Empty answers give NaN."""
    from fairvlm import mcq

    V.loaded("loaded", loaded)
    rows, answers = V.sequence("rows", rows), V.sequence("answers", answers, empty=True)
    V.integer("batch_size", batch_size, low=1)
    if len(rows) != len(answers):
        raise FairVLMError(f"{len(rows)} rows but {len(answers)} answers")
    tok = loaded.tokenizer
    out = np.full(len(rows), np.nan)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for s in range(0, len(rows), batch_size):
        idx = [i for i in range(s, min(s + batch_size, len(rows))) if isinstance(answers[i], str) and answers[i].strip()]
        if not idx:
            continue
        batch = [rows[i] for i in idx]
        imgs = mcq.row_images(batch, images)
        enc = loaded.inputs([r.text for r in batch], imgs if any(im is not None for im in imgs) else None,
                            system=batch[0].system)
        ans = [tok(answers[i].strip(), add_special_tokens=False)["input_ids"] for i in idx]
        width = max(len(a) for a in ans)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for j, a in enumerate(ans):
            ids[j, :len(a)] = torch.tensor(a)
            mask[j, :len(a)] = 1
        ids, mask = ids.to(loaded.device), mask.to(loaded.device)
        kw = dict(enc)
        kw["input_ids"] = torch.cat([enc["input_ids"], ids], dim=1)
        kw["attention_mask"] = torch.cat([enc["attention_mask"], mask], dim=1)
        with torch.no_grad():
            logits = loaded.model(**kw).logits.float()
        n = enc["input_ids"].shape[1]
        lp = torch.log_softmax(logits[:, n - 1:-1], dim=-1).gather(-1, ids[..., None])[..., 0]
        nll = -(lp * mask).sum(1) / mask.sum(1)
        out[idx] = torch.exp(nll).cpu().numpy()
    return out
