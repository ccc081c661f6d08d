"""Layer-wise fairness through the logit lens, residual discrepancy, and residual directions.

The second and third findings of RES-FAIR (Lan et al., arXiv 2505.23798) are read off the
residual stream: fairness *per layer* (it peaks in intermediate layers and erodes at the
end) and fairness *per residual inside a layer* (one residual pushes toward fair answers,
another toward a group). This module computes both from one batched, cached pass over the
multiple-choice rows of :mod:`fairvlm.mcq`.

One pass: :func:`collect`
-------------------------
For every row the model generates its greedy answer while identity edits (see
:func:`fairvlm.hooks.edit`) record, at the **last prompt token** of the prefill step, what
enters each decoder layer (``resid_pre.L``), what attention writes (``attn_out.L``) and
what the MLP writes (``mlp_out.L``). The other streams follow exactly:
``resid_mid.L = resid_pre.L + attn_out.L`` and ``resid_post.L = resid_mid.L + mlp_out.L``.
The result (:class:`Collection`) is cached on disk under ``fairvlm.paths.cache_dir()/mcq``,
keyed by the model (name and a fingerprint of its weights), every row's prompt and
images, the generation length and :data:`CODE_VERSION`, so the three chapters that share
it pay for the forward passes once.

Depths
------
The lens is read at ``2L + 1`` *depths*: depth ``2l`` is ``resid_pre.l`` (the paper's
residual Delta1 of layer ``l``, appendix B.1 eq. 2), depth ``2l + 1`` is ``resid_mid.l``
(Delta2 = Delta1 + attention output), and depth ``2L`` is ``resid_post.(L-1)``, the final
stream, whose lens equals the model's own output (the final norm and the unembedding are
the model's; :func:`fairvlm.hooks.logit_lens`). At every depth the option log-probabilities
are computed as in :func:`fairvlm.mcq.option_logprobs` (softmax over the whole vocabulary).

Readings per depth, for one row (``p_a, p_b, p_fair`` the option probabilities):

``fair_margin``  ``ln p_fair - ln(p_a + p_b)``: log-odds of the fair option against the groups;
``fair_share``   ``p_fair / (p_a + p_b + p_fair) = sigmoid(fair_margin)``;
``skew``         :func:`fairvlm.mcq.confidence_skew` of ``(p_a, p_b)``;
``lens_fair``    1 if the fair option has the largest probability of the three (the lens's
                 answer is fair). Its mean over rows is the *lens fair proportion*, the
                 per-layer analogue of the fair proportion of generated answers.
``option_mass``  ``p_a + p_b + p_fair``: how much of the lens distribution the options get
                 (near 0 in early layers, where the lens reads little).

Residual discrepancy: two readings
----------------------------------
Appendix B.1 writes a layer as ``Delta2 = Delta1 + attn``, ``output = ffn + Delta2``. "Which
residual pushes toward fairness" can be read (1) as the *streams* Delta1 (``resid_pre``)
and Delta2 (``resid_mid``) decoded by the lens, or (2) as what each sublayer *writes*
(``attn_out``, ``mlp_out``), measured by how much it moves the lens reading of the stream
it is added to: ``push_attn = fair_margin(resid_mid.l) - fair_margin(resid_pre.l)`` and
``push_mlp = fair_margin(resid_post.l) - fair_margin(resid_mid.l)`` (the pushes of all
sublayers add up to the change from the embedding to the output). :func:`residual_frame`
gives both; the book's heatmaps show the two streams and the two writes side by side and
the directions below use the writes (reading 2), because the two streams of one layer
share almost all of their content (Delta2 = Delta1 + one write), so their differences are
nearly the same axis.

Directions: :func:`fit_directions`
----------------------------------
Rule (ours; the paper gives no formula): rows of the fitting dataset are split by the
final fair margin into the bottom third (*biased rows*) and the top third (*fair rows*),
within each (attribute, input variant, prompt) group so that the contrast is about the
label and not about the question's wording or inputs (:func:`split_rows`).
At each layer ``l`` in the chosen range (default: the last tenth of the layers, as the
paper's appendix C.1), the sublayer whose mean push over all fitting rows is lower is the
*biased* write and the other the *fair* write; then

    u_bias(l) = unit(mean_{biased rows} x_biased_write - mean_{fair rows} x_biased_write)
    u_fair(l) = unit(mean_{fair rows}  x_fair_write   - mean_{biased rows} x_fair_write)

with ``x`` the write at the last prompt token. (The streams reading gives the same
construction with ``resid_pre`` / ``resid_mid``; it is fitted too and stored under
``streams``.) :class:`Directions` saves them as safetensors with their metadata;
:func:`evaluate_directions` scores them on *another* dataset (cross-dataset, as the paper
does: fit on SocialCounterfactuals, apply to PAIRS, and vice versa); :mod:`fairvlm.resfair`
applies them during generation with the RES-FAIR update
``v' = v - lambda1 P_bias v``, ``v_new = v' + lambda2 P_fair v'`` on ``resid_post.l``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fairvlm import checksums, mcq, validate
from fairvlm.errors import DataError, FairVLMError, ParameterError
from fairvlm.paths import cache_dir

__all__ = [
    "CODE_VERSION", "Collection", "collect", "model_fingerprint", "depth_labels", "last_tenth",
    "layer_frame", "layer_summary", "peak_erosion", "residual_frame", "residual_summary",
    "Directions", "fit_directions", "evaluate_directions", "lens_proxy",
    "split_rows", "directions_path", "split_by_label", "cross_pairs", "item_curves", "peak_test", "streams_view", "unembedding_directions", "transfer_test", "weighted_auroc", "cluster_resample_weights", "RunSpec", "PROFILE_RUNS", "PAPER_RUN_MODELS", "run_rows", "profile_runs",
    "CONTROL", "ChapterRuns", "chapter_runs", "check_chapter_params",
]

#: Bump when anything that changes the cached numbers changes.
CODE_VERSION = "mcq-lens-3"
_SITES = ("resid_pre", "attn_out", "mlp_out")


# ---------------------------------------------------------------------------------------
# Collection
# ---------------------------------------------------------------------------------------


@dataclass
class Collection:
    """Everything one pass over the rows produced.

    ``table``: one line per row (:func:`fairvlm.mcq.row_frame` columns, ``answer``,
    ``parsed``, ``lp_a, lp_b, lp_fair`` of the model's output, ``p_*``, ``skew``,
    ``fair_share``, ``option_argmax``). ``info`` holds ``dtype``, ``max_new_tokens`` and
    ``first_tokens`` (:func:`fairvlm.mcq.first_token_table` of the model's tokenizer, as a
    dict of lists). ``lens``: float32 ``(n_rows, 2L+1, 3)`` option
    log-probabilities (``a``, ``b``, ``fair``) at each depth, or ``None``. ``vectors``:
    float16 ``(n_rows, L, 3, d)`` with ``resid_pre``, ``attn_out``, ``mlp_out`` of each
    layer at the last prompt token, or ``None``. ``key``: the cache key.
    """

    table: pd.DataFrame
    lens: np.ndarray | None
    vectors: np.ndarray | None
    model: str
    n_layers: int
    key: str = ""
    info: dict = field(default_factory=dict)

    def subset(self, mask) -> "Collection":
        """The rows where boolean ``mask`` (aligned with ``table``) is true."""
        m = np.asarray(mask, dtype=bool)
        if m.shape != (len(self.table),):
            raise FairVLMError(f"mask must have shape ({len(self.table)},), got {m.shape}")
        return Collection(self.table[m].reset_index(drop=True),
                          None if self.lens is None else self.lens[m],
                          None if self.vectors is None else self.vectors[m],
                          self.model, self.n_layers, self.key, dict(self.info))

    def stream(self, kind: str, layer: int) -> np.ndarray:
        """float32 ``(n_rows, d)`` vectors of ``resid_pre|attn_out|mlp_out|resid_mid|resid_post``
        at ``layer`` (last prompt token)."""
        if self.vectors is None:
            raise FairVLMError("this collection has no vectors (collect with layers=True)")
        if not 0 <= layer < self.n_layers:
            raise FairVLMError(f"layer {layer} is out of range (0..{self.n_layers - 1})")
        v = self.vectors[:, layer].astype(np.float32)
        if kind in _SITES:
            return v[:, _SITES.index(kind)]
        if kind == "resid_mid":
            return v[:, 0] + v[:, 1]
        if kind == "resid_post":
            return v[:, 0] + v[:, 1] + v[:, 2]
        raise FairVLMError(f"unknown stream {kind!r}; choose resid_pre, attn_out, resid_mid, mlp_out, resid_post")


def _collection(name: str, col) -> "Collection":
    if not isinstance(col, Collection):
        raise ParameterError(f"{name}={validate.show(col)} is not valid: it must be a fairvlm.lens.Collection "
                             "(from collect or profile_runs)")
    return col


def _directions(name: str, dirs) -> "Directions":
    if not isinstance(dirs, Directions):
        raise ParameterError(f"{name}={validate.show(dirs)} is not valid: it must be fairvlm.lens.Directions "
                             "(from fit_directions or Directions.load)")
    return dirs


def model_fingerprint(loaded) -> str:
    """A short hash of a model's parameters: names, shapes, and the sum and absolute sum of
    every 61st element of each (float64). Changes when the weights do (a retrained testbed,
    another dtype); computed once per :class:`~fairvlm.models.LoadedModel` and kept in its
    ``info``."""
    validate.loaded("loaded", loaded)
    cached = loaded.info.get("_fingerprint") if isinstance(loaded.info, dict) else None
    if cached:
        return cached
    h = hashlib.sha256(loaded.name.encode())
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            x = p.detach().reshape(-1)[::61].double()
            h.update(f"{name}{tuple(p.shape)}{p.dtype}{x.sum().item():.8e}{x.abs().sum().item():.8e}".encode())
    out = h.hexdigest()[:16]
    if isinstance(loaded.info, dict):
        loaded.info["_fingerprint"] = out
    return out


def _cache_key(loaded, rows, images, max_new_tokens, layers) -> str:
    import transformers

    payload = {
        "code": CODE_VERSION, "model": loaded.name, "weights": model_fingerprint(loaded),
        "dtype": str(loaded.dtype), "transformers": transformers.__version__,
        "images": getattr(images, "key", None) if images is not None else None,
        "max_new_tokens": max_new_tokens, "layers": bool(layers),
        "rows": [[r.row_id, r.system, r.text, list(map(list, r.item.images))] for r in rows],
    }
    if images is not None and getattr(images, "key", None) is None and any(r.item.images for r in rows):
        raise FairVLMError("an image source used with cache=True needs a 'key' attribute naming what it "
                           "renders (e.g. source.key = 'pairs:<...>'); pass cache=False otherwise")
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _cache_path(model: str, key: str) -> Path:
    safe = model.replace("/", "__")
    return cache_dir() / "mcq" / f"{safe}-{key}"


def _save(col: Collection, path: Path) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        col.table.to_csv(tmp / "table.csv", index=False)
        arrays = {}
        if col.lens is not None:
            arrays["lens"] = np.ascontiguousarray(col.lens)
        if col.vectors is not None:
            arrays["vectors"] = np.ascontiguousarray(col.vectors)
        if arrays:
            save_file(arrays, str(tmp / "arrays.safetensors"))
        (tmp / "meta.json").write_text(json.dumps({
            "model": col.model, "n_layers": col.n_layers, "key": col.key, "info": col.info,
            "code": CODE_VERSION, "arrays": sorted(arrays)}, indent=1))
        checksums.write_sums(tmp)  # last: it covers every file above
        if path.exists():
            shutil.rmtree(path)
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load(path: Path) -> Collection | None:
    """The cached collection in ``path``, or ``None`` when it must be rebuilt: a folder
    without ``SHA256SUMS`` (written before caches were checked) silently, one whose files
    differ from the sums written with them (an edited table, deleted or altered arrays)
    with a warning naming what differs."""
    from safetensors.numpy import load_file

    bad = checksums.problems(path)
    if bad:
        if (path / checksums.SUMS).is_file():
            warnings.warn(f"the cached collection {path} is damaged ({'; '.join(bad[:3])}); "
                          "recomputing it", stacklevel=3)
        return None
    try:
        meta = json.loads((path / "meta.json").read_text())
        table = pd.read_csv(path / "table.csv", keep_default_na=False,
                            dtype={"answer": str, "images": str})
        arrays = load_file(str(path / "arrays.safetensors")) if (path / "arrays.safetensors").exists() else {}
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"the cached collection {path} is unreadable ({exc}); delete that folder") from exc
    # metrics and parsed answers are recomputed from the raw answers and log-probabilities,
    # so a fix to the parser or a metric never leaves stale numbers in the cache
    table = mcq.add_metrics(table)
    missing = set(meta.get("arrays", [])) - set(arrays)
    if missing:  # cannot happen with matching sums; kept as a guard for hand-made folders
        raise DataError(f"the cached collection {path} lacks {sorted(missing)}; delete that folder")
    return Collection(table, arrays.get("lens"), arrays.get("vectors"), meta["model"],
                      int(meta["n_layers"]), meta["key"], meta.get("info", {}))


class _Recorder:
    """Identity edits that keep the last-position vector of each site on the first call."""

    def __init__(self, n_layers: int):
        self.n = n_layers
        self.store: dict = {}

    def fn(self, kind: str, layer: int) -> Callable:
        def record(x: torch.Tensor) -> torch.Tensor:
            if (kind, layer) not in self.store:   # prefill only: later generate steps are skipped
                self.store[(kind, layer)] = x[:, -1].detach().float().clone()
            return x
        return record

    def edits(self) -> dict:
        return {f"{kind}.{l}": self.fn(kind, l) for kind in _SITES for l in range(self.n)}

    def stacked(self) -> torch.Tensor:
        """``(batch, L, 3, d)`` float32."""
        missing = [k for k in ((kind, l) for kind in _SITES for l in range(self.n)) if k not in self.store]
        if missing:
            raise FairVLMError(f"the forward pass never reached {missing[0]}; the model's layers were not hooked")
        return torch.stack([torch.stack([self.store[(kind, l)] for kind in _SITES], dim=1)
                            for l in range(self.n)], dim=1)


def _streams(vec: torch.Tensor) -> torch.Tensor:
    """``(B, L, 3, d)`` -> ``(B, 2L+1, d)`` streams at every depth."""
    pre, attn, mlp = vec[:, :, 0], vec[:, :, 1], vec[:, :, 2]
    mid = pre + attn
    out = torch.stack([pre, mid], dim=2).reshape(vec.shape[0], -1, vec.shape[-1])
    return torch.cat([out, (mid[:, -1] + mlp[:, -1])[:, None]], dim=1)


def _gather_options(logits: torch.Tensor, ids: Mapping) -> torch.Tensor:
    """``(n, V)`` logits -> ``(n, 3)`` log-sum-exp of each option's token logits."""
    cols = [torch.logsumexp(logits[:, list(ids[k])], dim=-1) for k in mcq.OPTIONS]
    return torch.stack(cols, dim=-1)


def _lens_logprobs(loaded, streams: torch.Tensor, ids_rows: list, chunk: int = 256) -> torch.Tensor:
    """Option log-probs ``(B, D, 3)`` for streams ``(B, D, d)``; ``ids_rows[b]`` = token ids
    of row ``b``'s options. The batch goes through the lens in chunks of ``chunk`` vectors."""
    from fairvlm.hooks import logit_lens

    B, D, d = streams.shape
    flat = streams.reshape(B * D, d)
    owner = torch.arange(B).repeat_interleave(D)
    distinct = []
    for ids in ids_rows:
        if ids not in distinct:
            distinct.append(ids)
    which = torch.tensor([distinct.index(ids) for ids in ids_rows])[owner]
    out = torch.empty(B * D, 3, dtype=torch.float64)
    with torch.no_grad():
        for s in range(0, B * D, chunk):
            logits = logit_lens(loaded, flat[s:s + chunk].to(loaded.device)).float()
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            w = which[s:s + chunk].to(logits.device)
            res = torch.empty(logits.shape[0], 3, device=logits.device)
            for k, ids in enumerate(distinct):
                m = w == k
                if m.any():
                    res[m] = _gather_options(logits[m], ids) - lse[m]
            out[s:s + chunk] = res.double().cpu()
    return out.reshape(B, D, 3)


def collect(loaded, rows: Sequence, *, images: Callable | None = None, batch_size: int = 8,
            max_new_tokens: int = mcq.MAX_NEW_TOKENS, layers: bool = True, cache: bool = True,
            progress: bool = True) -> Collection:
    """Run every row once: greedy answer, option probabilities and (``layers=True``) the
    per-layer captures and lens readings. See the module docstring.

    ``rows``: :class:`fairvlm.mcq.Row` list. ``images``: image source
    ``(scenario, gender, race) -> PIL.Image`` (with a ``key`` attribute when caching).
    Answers come from :func:`fairvlm.mcq.generate_answers` (stopped once they parse, at
    most ``max_new_tokens`` tokens); the returned table keeps the input order. With
    ``cache=True`` the result is read from / written to ``cache_dir()/mcq/<model>-<key>``.
    """
    rows = mcq._check_run(loaded, rows, images, batch_size, max_new_tokens, progress)
    validate.flag("layers", layers)
    validate.flag("cache", cache)
    if not rows:
        raise FairVLMError("collect() got no rows")
    if batch_size < 1 or max_new_tokens < 1:
        raise FairVLMError("batch_size and max_new_tokens must be at least 1")
    if loaded.unembed() is None:
        raise FairVLMError(f"{loaded.name} is not a generative model (no unembedding)")
    if loaded.kind == "causal-lm" and any(r.item.images for r in rows):
        raise FairVLMError(f"{loaded.name} is text-only; build its items with variants=('text',)")
    key = ""
    if cache:
        key = _cache_key(loaded, rows, images, max_new_tokens, layers)
        path = _cache_path(loaded.name, key)
        if (path / "meta.json").exists():
            col = _load(path)
            if col is not None and len(col.table) == len(rows) and list(col.table["row_id"]) == [r.row_id for r in rows]:
                return col
    from fairvlm.hooks import edit

    tok = loaded.tokenizer
    ids = {a: mcq.option_token_ids(tok, a) for a in mcq.ATTRIBUTES}
    L = loaded.n_layers
    answers = [None] * len(rows)
    final = np.zeros((len(rows), 3))
    lens = np.zeros((len(rows), 2 * L + 1, 3), dtype=np.float32) if layers else None
    vectors = np.zeros((len(rows), L, 3, loaded.d_model), dtype=np.float16) if layers else None
    state: dict = {}

    def recording():
        state["rec"] = _Recorder(L)
        return edit(loaded, state["rec"].edits())

    for idx, texts, first in mcq.generate_answers(loaded, rows, images=images, batch_size=batch_size,
                                                  max_new_tokens=max_new_tokens, progress=progress,
                                                  context=recording if layers else None):
        rows_ids = [ids[rows[i].item.attribute] for i in idx]
        for j, i in enumerate(idx):
            answers[i] = texts[j]
            final[i] = mcq.option_logprobs(first[j], rows_ids[j]).cpu().numpy()
        if layers:
            vec = state["rec"].stacked()                            # (B, L, 3, d)
            lp = _lens_logprobs(loaded, _streams(vec), rows_ids)   # (B, 2L+1, 3)
            for j, i in enumerate(idx):
                lens[i] = lp[j].numpy()
                vectors[i] = vec[j].cpu().numpy().astype(np.float16)
    table = mcq.row_frame(rows, loaded.name)
    table["answer"] = answers
    table["lp_a"], table["lp_b"], table["lp_fair"] = final[:, 0], final[:, 1], final[:, 2]
    table = mcq.add_metrics(table)
    tokens = mcq.first_token_table(tok).to_dict(orient="list")
    col = Collection(table, lens, vectors, loaded.name, L, key,
                     {"max_new_tokens": max_new_tokens, "dtype": str(loaded.dtype), "first_tokens": tokens})
    if cache:
        _save(col, _cache_path(loaded.name, key))
    return col


# ---------------------------------------------------------------------------------------
# The runs of chapters 01-03, per profile
# ---------------------------------------------------------------------------------------

#: The paper's smaller models (RES-FAIR appendix Table 1), one per family.
PAPER_RUN_MODELS = ("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-v1.6-vicuna-7b-hf",
                    "Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct")


@dataclass(frozen=True)
class RunSpec:
    """One (model, dataset) run: which input variants, how many paraphrases and labels."""

    model: str
    dataset: str                 # "pairs", "scf" or "testbed"
    variants: tuple
    n_prompts: int
    n_labels: int | None = None  # None: every label of the dataset
    size: str | None = None      # testbed size
    batch_size: int = 32


_TEXT = ("text",)
PROFILE_RUNS: dict[str, tuple] = {
    "embedded": (
        RunSpec("smollm2-135m-instruct", "pairs", _TEXT, 4),
        RunSpec("smollm2-135m-instruct", "scf", _TEXT, 4, n_labels=60),
        RunSpec("smollm2-135m-instruct", "control", _TEXT, 4),
        RunSpec("testbed-llava", "testbed", mcq.VARIANTS, 4, size="full"),
        RunSpec("testbed-llava", "control", mcq.VARIANTS, 4, size="full"),
    ),
    "smoke": (
        RunSpec("smollm2-135m-instruct", "pairs", _TEXT, 2, n_labels=8),
        RunSpec("smollm2-135m-instruct", "scf", _TEXT, 2, n_labels=8),
        RunSpec("smollm2-135m-instruct", "control", _TEXT, 2, n_labels=4),
        RunSpec("testbed-llava", "testbed", mcq.VARIANTS, 2, n_labels=6, size="smoke"),
        RunSpec("testbed-llava", "control", mcq.VARIANTS, 2, n_labels=4, size="smoke"),
    ),
    "paper": tuple(RunSpec(m, d, mcq.VARIANTS, 4, batch_size=8)
                   for m in PAPER_RUN_MODELS for d in ("pairs", "scf"))
    + tuple(RunSpec(m, "control", _TEXT, 4, batch_size=8) for m in PAPER_RUN_MODELS),
}
#: The dataset name of the content-free control runs (:data:`fairvlm.mcq.CONTROL_LABELS`).
CONTROL = "control"


def _subset(labels: pd.DataFrame, n: int | None) -> pd.DataFrame:
    if n is None or n >= len(labels):
        return labels
    idx = np.unique(np.linspace(0, len(labels) - 1, n).round().astype(int))
    return labels.iloc[idx].reset_index(drop=True)


def run_rows(spec: RunSpec):
    """``(rows, image_source, note)`` for one run (``note`` says what had to be left out)."""
    if not isinstance(spec, RunSpec):
        raise ParameterError(f"spec={validate.show(spec)} is not valid: it must be a fairvlm.lens.RunSpec")
    validate.text("spec.model", spec.model)
    validate.strings("spec.variants", spec.variants)
    validate.integer("spec.n_prompts", spec.n_prompts, low=1)
    if spec.n_labels is not None:
        validate.integer("spec.n_labels", spec.n_labels, low=1)
    validate.integer("spec.batch_size", spec.batch_size, low=1)
    note = ""
    variants = tuple(spec.variants)
    images = None
    if spec.dataset == "pairs":
        if variants != _TEXT:
            from fairvlm.data import load_pairs

            pairs = load_pairs(mapped_only=True)
            labels, images = mcq.pairs_labels(pairs), mcq.pairs_image_source(pairs)
        else:
            labels = mcq.pairs_labels()
    elif spec.dataset == "scf":
        labels = mcq.scf_labels()
        if variants != _TEXT:
            from fairvlm.data import load_socialcounterfactuals

            scf = load_socialcounterfactuals("race_gender")
            if scf["image"].notna().any():
                images = mcq.scf_image_source(scf)
                labels = labels[labels["scenario"].isin(images.occupations)].reset_index(drop=True)
            else:
                variants, note = _TEXT, ("SocialCounterfactuals images not found (set "
                                         "$FAIRVLM_SOCIALCF_IMAGES); text-only items used")
    elif spec.dataset == "testbed":
        labels, images = mcq.pairs_labels(), mcq.testbed_image_source()
    elif spec.dataset == CONTROL:
        # content-free labels; with images they are shown testbed scenes of the first scenarios
        if variants != _TEXT:
            labels = mcq.control_labels(mcq.pairs_labels()["scenario"])
            images = mcq.testbed_image_source()
        else:
            labels = mcq.control_labels()
    else:
        raise FairVLMError(f"unknown dataset {spec.dataset!r}; choose pairs, scf, testbed or {CONTROL}")
    labels = _subset(labels, spec.n_labels)
    items = mcq.build_items(labels, spec.dataset, variants=variants)
    return mcq.make_rows(items, spec.n_prompts), images, note


def profile_runs(profile: str, *, dtype: str = "auto", progress: bool = True,
                 runs: Sequence[RunSpec] | None = None) -> dict:
    """Collect every run of ``profile`` (:data:`PROFILE_RUNS`); cached, so chapters 02 and 03
    reuse what chapter 01 computed. Returns ``{(model, dataset): Collection}`` in run order.

    ``dtype``: ``"auto"`` (the loader's default), ``"float32"`` or ``"bfloat16"``; applies
    to the embedded and testbed models (paper models keep the loader's GPU default).
    """
    from fairvlm import models
    from fairvlm.params import check_choice

    check_choice("DTYPE", dtype, ("auto", "float32", "bfloat16"))
    validate.flag("progress", progress)
    if runs is not None:
        for i, spec in enumerate(validate.sequence("runs", runs)):
            if not isinstance(spec, RunSpec):
                raise ParameterError(f"runs[{i}]={validate.show(spec)} is not valid: runs must be a list of "
                                     "fairvlm.lens.RunSpec")
    if runs is None:
        if not isinstance(profile, str) or profile not in PROFILE_RUNS:
            from fairvlm.errors import unknown

            raise unknown("profile", profile, PROFILE_RUNS)
        runs = PROFILE_RUNS[profile]
    out: dict = {}
    skipped: dict = {}
    by_model: dict = {}
    for spec in runs:
        by_model.setdefault((spec.model, spec.size), []).append(spec)
    for (name, size), specs in by_model.items():
        kwargs = {} if size is None else {"size": size}
        if dtype != "auto" and name not in models.PAPER_MODELS:
            kwargs["dtype"] = getattr(torch, dtype)
        lm = models.load(name, **kwargs)
        for spec in specs:
            try:
                rows, images, note = run_rows(spec)
            except DataError as exc:
                if profile == "paper":
                    raise
                # a laptop without the real data: the other runs still tell their story
                skipped[(spec.model, spec.dataset)] = str(exc)
                continue
            col = collect(lm, rows, images=images, batch_size=spec.batch_size, progress=progress)
            col.info.update({"note": note, "n_prompts": spec.n_prompts, "size": size,
                             "variants": sorted(set(col.table["variant"]))})
            out[(spec.model, spec.dataset)] = col
        del lm
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    for key, why in skipped.items():
        warnings.warn(f"{key[0]} on {key[1]} skipped: {why}", stacklevel=2)
    if not out:
        raise DataError("none of the runs could find its data: " + "; ".join(skipped.values()))
    return {k: out[k] for k in ((s.model, s.dataset) for s in runs) if k in out}


def check_chapter_params(**params) -> dict:
    """The parameter check shared by chapters 01-03: :func:`fairvlm.params.check_params` on
    every parameter, plus ``DTYPE`` in bfloat16 / float32 / auto and ``TESTBED`` a bool.
    Returns the checked :class:`fairvlm.params.Params` (for ``save_results``)."""
    from fairvlm.params import check_choice, check_params

    P = check_params(**params)
    if "DTYPE" in params:
        check_choice("DTYPE", params["DTYPE"], ("bfloat16", "float32", "auto"))
    if "TESTBED" in params:
        validate.flag("TESTBED", params["TESTBED"])
    return P


@dataclass
class ChapterRuns:
    """The cached runs of chapters 01-03 (:func:`chapter_runs`).

    ``runs``: ``{(model, dataset): Collection}`` of the social datasets; ``controls``:
    ``{model: Collection}`` of the content-free control labels; ``specs``: the run specs;
    ``table``: one line per run (rows, items, prompts, variants, lens depths, whether it
    is a control).
    """

    runs: dict
    controls: dict
    specs: list
    table: pd.DataFrame

    @property
    def provenance(self) -> dict:
        """Models (with dtype) and data of the social runs, for ``save_results``."""
        return {"models": [f"{m} ({c.info.get('dtype')})" for (m, _), c in self.runs.items()],
                "data": sorted({f"{d} ({'synthetic testbed' if d == 'testbed' else 'real labels'})"
                                for (_, d) in self.runs})
                + [f"{CONTROL} (content-free labels: {', '.join(mcq.CONTROL_LABELS)})"]}

    def caption(self) -> str:
        """One line naming models, datasets and sizes: the caption of a verdict table."""
        parts = [f"{m} on {d} ({len(c.table)} rows, {c.table['item_id'].nunique()} items)"
                 for (m, d), c in self.runs.items()]
        return "; ".join(parts)


def chapter_runs(profile: str, *, dtype: str = "auto", testbed: bool = True,
                 progress: bool = True) -> ChapterRuns:
    """The setup of chapters 01-03 in one call: the profile's runs (without the testbed
    model when ``testbed`` is False), collected or read from the cache, split into social
    runs and content-free controls, with a table describing each run."""
    validate.flag("testbed", testbed)
    validate.flag("progress", progress)
    if not isinstance(profile, str) or profile not in PROFILE_RUNS:
        from fairvlm.errors import unknown

        raise unknown("profile", profile, PROFILE_RUNS)
    specs = [s for s in PROFILE_RUNS[profile] if testbed or not s.model.startswith("testbed")]
    collected = profile_runs(profile, dtype=dtype, runs=specs, progress=progress)
    runs = {k: c for k, c in collected.items() if k[1] != CONTROL}
    controls = {k[0]: c for k, c in collected.items() if k[1] == CONTROL}
    table = pd.DataFrame([{
        "model": m, "dataset": d, "control": d == CONTROL, "rows": len(c.table),
        "items": c.table["item_id"].nunique(), "prompts": c.table["prompt_id"].nunique(),
        "variants": c.table["variant"].nunique(), "lens depths": 2 * c.n_layers + 1,
        "max new tokens": c.info.get("max_new_tokens")} for (m, d), c in collected.items()])
    return ChapterRuns(runs, controls, specs, table)


# ---------------------------------------------------------------------------------------
# Layer-wise readings
# ---------------------------------------------------------------------------------------


def depth_labels(n_layers: int) -> pd.DataFrame:
    """``depth, layer, site`` for the ``2L+1`` lens depths (see the module docstring)."""
    validate.integer("n_layers", n_layers, low=1)
    rows = []
    for l in range(n_layers):
        rows.append((2 * l, l, "resid_pre"))
        rows.append((2 * l + 1, l, "resid_mid"))
    rows.append((2 * n_layers, n_layers - 1, "resid_post"))
    return pd.DataFrame(rows, columns=["depth", "layer", "site"])


def last_tenth(n_layers: int) -> list[int]:
    """Layers of the last tenth of the network: ``floor(0.9 L) .. L-1`` (at least one)."""
    validate.integer("n_layers", n_layers, low=1)
    start = min(int(math.floor(0.9 * n_layers)), n_layers - 1)
    return list(range(start, n_layers))


def _readings(lp: np.ndarray) -> dict:
    """Readings of option log-probs ``(..., 3)``."""
    la, lb, lf = lp[..., 0].astype(float), lp[..., 1].astype(float), lp[..., 2].astype(float)
    group = np.logaddexp(la, lb)
    margin = lf - group
    return {
        "fair_margin": margin,
        "fair_share": 1.0 / (1.0 + np.exp(-margin)),
        "skew": mcq.skew_from_logprobs(la, lb),
        "lean": la - lb,
        "lens_fair": (lf > np.maximum(la, lb)).astype(float),
        "option_mass": np.exp(np.logaddexp(group, lf)),
    }


def layer_frame(col: Collection) -> pd.DataFrame:
    """One line per (row, depth): descriptive columns, ``depth, layer, site, lp_a, lp_b,
    lp_fair`` and the readings ``fair_margin, fair_share, skew, lean, lens_fair,
    option_mass``. Every per-layer aggregate of the book is a mean of these columns."""
    _collection("col", col)
    if col.lens is None:
        raise FairVLMError("this collection has no lens readings (collect with layers=True)")
    n, D, _ = col.lens.shape
    depths = depth_labels(col.n_layers)
    keep = ["row_id", "model", "dataset", "scenario", "label", "attribute", "variant", "prompt_id", "parsed"]
    base = col.table[keep].loc[np.repeat(np.arange(n), D)].reset_index(drop=True)
    base["depth"] = np.tile(depths["depth"].to_numpy(), n)
    base["layer"] = np.tile(depths["layer"].to_numpy(), n)
    base["site"] = np.tile(depths["site"].to_numpy(), n)
    lp = col.lens.reshape(n * D, 3)
    base["lp_a"], base["lp_b"], base["lp_fair"] = lp[:, 0], lp[:, 1], lp[:, 2]
    for k, v in _readings(lp).items():
        base[k] = v
    return base


def layer_summary(lf: pd.DataFrame, by: Sequence[str] = ("model", "dataset", "attribute")) -> pd.DataFrame:
    """Per depth: mean over rows of each reading, computed per prompt, then mean and sample
    std (ddof=1) over prompts. Columns ``<by>, depth, layer, site, <reading>_mean,
    <reading>_std`` for lens_fair, fair_share, skew, option_mass."""
    validate.frame("lf", lf, columns=(*validate.strings("by", by, empty=True), "depth", "layer", "site",
                                      "prompt_id", "lens_fair", "fair_share", "skew", "option_mass"))
    by = list(by)
    metrics = ["lens_fair", "fair_share", "skew", "option_mass"]
    per = lf.groupby([*by, "depth", "layer", "site", "prompt_id"], sort=False)[metrics].mean().reset_index()
    g = per.groupby([*by, "depth", "layer", "site"], sort=False)[metrics]
    out = g.mean().add_suffix("_mean").join(g.std().fillna(0.0).add_suffix("_std")).reset_index()
    return out.sort_values([*by, "depth"]).reset_index(drop=True)


def peak_erosion(summary: pd.DataFrame, by: Sequence[str] = ("model", "dataset", "attribute"), *,
                 metric: str = "lens_fair_mean", min_mass: float = 0.0) -> pd.DataFrame:
    """Where fairness peaks and how much is lost by the output, per group of ``by``.

    Among depths whose mean ``option_mass`` is at least ``min_mass`` (so the lens reads
    the options at all), the peak is the depth with the highest ``metric`` (the earliest on
    ties). Columns: ``peak_depth, peak_layer, peak_site, peak_rel`` (peak depth / last
    depth), ``peak``, ``final`` (the value at the output), ``erosion = peak - final`` and
    ``n_depths`` (depths considered).
    """
    validate.frame("summary", summary)
    validate.strings("by", by, empty=True)
    validate.text("metric", metric)
    validate.number("min_mass", min_mass, low=0.0, high=1.0)
    if metric not in summary:
        raise FairVLMError(f"summary has no column {metric!r}")
    rows = []
    for keys, g in summary.groupby(list(by), sort=False):
        g = g.sort_values("depth")
        final = g.iloc[-1]
        cand = g[g["option_mass_mean"] >= min_mass] if "option_mass_mean" in g else g
        if cand.empty:
            cand = g.iloc[[-1]]
        best = cand.loc[cand[metric].idxmax()]
        keys = keys if isinstance(keys, tuple) else (keys,)
        rows.append({**dict(zip(by, keys)), "peak_depth": int(best["depth"]),
                     "peak_layer": int(best["layer"]), "peak_site": best["site"],
                     "peak_rel": float(best["depth"]) / float(final["depth"]),
                     "peak": float(best[metric]), "final": float(final[metric]),
                     "erosion": float(best[metric] - final[metric]), "n_depths": len(cand)})
    return pd.DataFrame(rows)


def item_curves(lf: pd.DataFrame, metric: str = "fair_share") -> tuple[np.ndarray, np.ndarray]:
    """``(curves, depths)``: the mean of ``metric`` over each item's prompts at every depth,
    as an ``(n_items, n_depths)`` array, for one :func:`layer_frame` (or a slice of it)."""
    validate.frame("lf", lf, columns=("row_id", "depth"))
    validate.text("metric", metric)
    if metric not in lf:
        raise FairVLMError(f"the layer frame has no column {metric!r}")
    item = lf["row_id"].str.rsplit("|", n=1).str[0]
    wide = lf.assign(_item=item).pivot_table(index="_item", columns="depth", values=metric, aggfunc="mean")
    return wide.to_numpy(float), wide.columns.to_numpy()


def peak_test(lf: pd.DataFrame, control: pd.DataFrame | None, *, min_mass: float, n_boot: int = 1000,
              seed: int = 0, band: tuple[float, float] = (0.1, 0.8)) -> dict:
    """Peak location and erosion of the fair share for one (model, dataset, attribute)
    cell, with seeded bootstrap intervals over items and the content-free control.

    Readable depths: mean option mass over the cell's rows at least ``min_mass`` (the lens
    reads the options there). The peak is the readable depth of highest mean fair share;
    ``peak_rel`` its relative depth, with a bootstrap interval (items resampled, peak
    searched again). ``erosion``: per item, fair share at the peak minus at the output,
    averaged, with its interval; ``control_erosion``: the same difference at the same two
    depths on the control items (the content-free labels, whose right answer is "both").
    ``testable`` is False when fewer than two depths are readable (no interior to peak in);
    ``n_readable_in_band`` counts the readable depths inside ``band`` (none: the lens cannot
    see an intermediate peak at all).
    """
    from fairvlm.verdicts import bootstrap_ci

    validate.frame("lf", lf, columns=("row_id", "depth", "fair_share", "option_mass"))
    if control is not None:
        validate.frame("control", control, columns=("row_id", "depth", "fair_share", "option_mass"))
    validate.number("min_mass", min_mass, low=0.0, high=1.0)
    validate.integer("n_boot", n_boot, low=1)
    validate.integer("seed", seed, low=0)
    b = validate.numbers_list("band", band, low=0.0, high=1.0)
    if len(b) != 2 or b[0] > b[1]:
        raise ParameterError(f"band={validate.show(band)} is not valid: it must be (low, high) relative depths, "
                             "low <= high")
    curves, depths = item_curves(lf, "fair_share")
    mass, _ = item_curves(lf, "option_mass")
    last = int(depths.max())
    readable = mass.mean(axis=0) >= min_mass
    rel = depths / last
    out = {"n_items": len(curves), "n_readable": int(readable.sum()),
           "n_readable_in_band": int((readable & (rel >= band[0]) & (rel <= band[1])).sum()),
           "readable_from": float(depths[readable].min() / last) if readable.any() else float("nan"),
           "band": band}
    nan2 = (float("nan"), float("nan"))
    if readable.sum() < 2:
        return {**out, "testable": False, "peak_rel": float("nan"), "peak_interval": nan2,
                "peak_depth": -1, "peak_mass": float("nan"), "peak": float("nan"), "final": float("nan"),
                "erosion": float("nan"), "erosion_interval": nan2,
                "control_erosion": float("nan"), "control_interval": nan2}
    mean = curves.mean(axis=0)
    cand = np.flatnonzero(readable)
    pk = int(cand[np.argmax(mean[cand])])
    rng = np.random.default_rng(seed)
    rels = []
    for s in range(0, n_boot, 100):
        idx = rng.integers(0, len(curves), size=(min(100, n_boot - s), len(curves)))
        boot = curves[idx].mean(axis=1)[:, cand]               # (b, n_cand)
        rels.append(depths[cand[boot.argmax(axis=1)]] / last)
    rels = np.concatenate(rels)
    ero = curves[:, pk] - curves[:, -1]
    res = {**out, "testable": True, "peak_depth": int(depths[pk]), "peak_rel": float(depths[pk] / last),
           "peak_interval": (float(np.percentile(rels, 2.5)), float(np.percentile(rels, 97.5))),
           "peak_mass": float(mass[:, pk].mean()), "peak": float(mean[pk]), "final": float(mean[-1]),
           "erosion": float(ero.mean()), "erosion_interval": bootstrap_ci(ero, seed=seed)}
    if control is not None and len(control):
        ccurves, cdepths = item_curves(control, "fair_share")
        if not np.array_equal(cdepths, depths):
            raise FairVLMError("the control was read at other depths than the cell (another model?)")
        cero = ccurves[:, pk] - ccurves[:, -1]
        res.update(control_erosion=float(cero.mean()), control_interval=bootstrap_ci(cero, seed=seed))
    else:
        res.update(control_erosion=float("nan"), control_interval=nan2)
    return res


#: Finding 2 of RES-FAIR as the verdict table prints it.
FLUCTUATION_CLAIM = "fairness peaks in intermediate layers and erodes by the output (finding 2)"
#: Fewest content-free labels a fluctuation verdict accepts as its control.
MIN_CONTROL_LABELS = 20


def _item_labels(lf: pd.DataFrame) -> pd.Series:
    """The label (scenario) of every item of a layer frame, indexed like :func:`item_curves`."""
    item = lf["row_id"].str.rsplit("|", n=1).str[0]
    return lf.assign(_item=item).groupby("_item")["scenario"].first().sort_index()


def fluctuation_verdict(lf: pd.DataFrame, control: pd.DataFrame | None, *, min_mass: float,
                        band: tuple[float, float] = (0.1, 0.8), min_effect: float = 0.05, seed: int = 0,
                        min_control_labels: int = MIN_CONTROL_LABELS):
    """Finding 2 for one (model, dataset, attribute) cell, decided by
    :func:`fairvlm.verdicts.judge`. Returns ``(details, verdict)``.

    The labels are split in two (alternately in sorted order). On the *selection* half the
    peak depth ``d*`` is the readable depth (mean option mass at least ``min_mass``) inside
    ``band`` (relative depth) with the highest mean fair share. On the other, *scoring*
    half, the effect per item is its **peak height**: fair share at ``d*`` minus fair share
    at the output. The control is the same height, at the same ``d*``, on the content-free
    items. Both are bootstrapped over labels (clusters), independently. Not testable when
    no readable depth lies in the band, when ``d*`` is the first readable depth (no rise
    before it can be seen: a tie-break at the edge of what the lens reads is no peak), or
    when the control has fewer than ``min_control_labels`` labels.
    """
    from fairvlm.verdicts import Claim, judge

    claim = Claim(FLUCTUATION_CLAIM, "bias", "greater", min_effect=min_effect)
    curves, depths = item_curves(lf, "fair_share")
    mass, _ = item_curves(lf, "option_mass")
    labels = _item_labels(lf).to_numpy()
    last = int(depths.max())
    rel = depths / last
    readable = mass.mean(axis=0) >= min_mass
    in_band = readable & (rel >= band[0]) & (rel <= band[1]) & (depths < last)
    uniq = np.array(sorted(set(labels)))
    select = np.isin(labels, uniq[0::2])
    first_readable = int(np.flatnonzero(readable)[0]) if readable.any() else -1
    details = {"n_items": len(curves), "n_labels": len(uniq), "n_readable": int(readable.sum()),
               "n_readable_in_band": int(in_band.sum()),
               "readable_from": float(rel[readable].min()) if readable.any() else float("nan"),
               "peak_depth": -1, "peak_rel": float("nan"), "peak": float("nan"), "final": float("nan"),
               "control_peak": float("nan"), "control_final": float("nan"), "n_control_labels": 0}
    why = ""
    if control is not None and len(control):
        ccurves, cdepths = item_curves(control, "fair_share")
        if not np.array_equal(cdepths, depths):
            raise FairVLMError("the control was read at other depths than the cell (another model?)")
        clabels = _item_labels(control).to_numpy()
        details["n_control_labels"] = len(set(clabels))
    else:
        ccurves, clabels = np.zeros((0, len(depths))), np.array([])
    if not in_band.any():
        why = (f"the lens reads the options (mass >= {min_mass:g}) at no depth inside the band {band}: "
               "it cannot see an intermediate peak")
    elif select.sum() == 0 or (~select).sum() == 0:
        why = "fewer than two labels: no held-out half to score the peak on"
    else:
        cand = np.flatnonzero(in_band)
        pk = int(cand[np.argmax(curves[select][:, cand].mean(axis=0))])
        details.update(peak_depth=int(depths[pk]), peak_rel=float(rel[pk]),
                       peak=float(curves[~select, pk].mean()), final=float(curves[~select, -1].mean()))
        if len(ccurves):
            details.update(control_peak=float(ccurves[:, pk].mean()), control_final=float(ccurves[:, -1].mean()))
        if pk == first_readable:
            why = ("the peak chosen on the selection labels is the first depth the lens reads the options at: "
                   "no rise before it can be seen")
        elif details["n_control_labels"] < min_control_labels:
            why = (f"the content-free control has {details['n_control_labels']} label(s); at least "
                   f"{min_control_labels} are needed")
    if why:
        v = judge(claim, [], [], paired=False, testable=False, why=why)
        return {**details, "testable": False}, v
    eff = curves[~select, pk] - curves[~select, -1]
    ctl = ccurves[:, pk] - ccurves[:, -1]
    v = judge(claim, eff, ctl, paired=False, clusters=labels[~select], control_clusters=clabels, seed=seed)
    return {**details, "testable": v.verdict != "not testable here"}, v


# ---------------------------------------------------------------------------------------
# Residual discrepancy
# ---------------------------------------------------------------------------------------


def residual_frame(col: Collection) -> pd.DataFrame:
    """One line per (row, layer): the two readings of the residual discrepancy.

    Streams: ``d1_margin`` / ``d2_margin`` (fair margin of the lens at ``resid_pre.l`` =
    Delta1 and ``resid_mid.l`` = Delta2) and ``d1_skew`` / ``d2_skew``. Writes:
    ``push_attn`` / ``push_mlp`` (change of the fair margin that adding ``attn_out.l`` /
    ``mlp_out.l`` causes) and ``skew_push_attn`` / ``skew_push_mlp`` (change of the skew).
    Positive pushes move toward the fair option; positive skew pushes toward a group.
    """
    _collection("col", col)
    if col.lens is None:
        raise FairVLMError("this collection has no lens readings (collect with layers=True)")
    n, L = len(col.table), col.n_layers
    r = _readings(col.lens)
    m, s = r["fair_margin"], r["skew"]          # (n, 2L+1)
    keep = ["row_id", "model", "dataset", "scenario", "label", "attribute", "variant", "prompt_id", "parsed"]
    base = col.table[keep].loc[np.repeat(np.arange(n), L)].reset_index(drop=True)
    base["layer"] = np.tile(np.arange(L), n)
    pre, mid, post = m[:, 0:2 * L:2], m[:, 1:2 * L:2], m[:, 2:2 * L + 1:2]
    spre, smid, spost = s[:, 0:2 * L:2], s[:, 1:2 * L:2], s[:, 2:2 * L + 1:2]
    base["d1_margin"], base["d2_margin"] = pre.ravel(), mid.ravel()
    base["d1_skew"], base["d2_skew"] = spre.ravel(), smid.ravel()
    base["push_attn"], base["push_mlp"] = (mid - pre).ravel(), (post - mid).ravel()
    base["skew_push_attn"], base["skew_push_mlp"] = (smid - spre).ravel(), (spost - smid).ravel()
    return base


def residual_summary(rf: pd.DataFrame, by: Sequence[str] = ("model", "dataset", "attribute")) -> pd.DataFrame:
    """Mean over rows of every :func:`residual_frame` reading per ``by`` and layer, plus
    ``attn_vs_mlp`` = +1 where attention pushes more toward fair than the MLP, else -1."""
    validate.frame("rf", rf, columns=(*validate.strings("by", by, empty=True), "layer", "d1_margin", "d2_margin",
                                      "push_attn", "push_mlp", "d1_skew", "d2_skew", "skew_push_attn", "skew_push_mlp"))
    cols = ["d1_margin", "d2_margin", "push_attn", "push_mlp", "d1_skew", "d2_skew",
            "skew_push_attn", "skew_push_mlp"]
    out = rf.groupby([*by, "layer"], sort=False)[cols].mean().reset_index()
    out["attn_vs_mlp"] = np.where(out["push_attn"] >= out["push_mlp"], 1, -1)
    out["conflict"] = np.sign(out["push_attn"]) != np.sign(out["push_mlp"])
    return out


def split_rows(col: Collection, within: Sequence[str] = ("attribute", "variant", "prompt_id")
               ) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (biased rows, fair rows): within each group of ``within``, the bottom
    and the top third of the rows by the final fair margin ``lp_fair - ln(p_a + p_b)`` of
    the model's output (ties broken by row order; groups of fewer than 3 rows are left out).

    Splitting inside (attribute, variant, prompt) groups keeps the contrast about the
    *label*: otherwise a direction could learn "race question vs gender question", "image
    vs no image" or "option order" instead of bias.
    """
    _collection("col", col)
    within = validate.strings("within", within, empty=True)
    missing = [c for c in within if c not in col.table.columns]
    if missing:
        raise ParameterError(f"within names columns the collection's table lacks: {missing}")
    t = col.table
    margin = t["lp_fair"].to_numpy(float) - np.logaddexp(t["lp_a"].to_numpy(float), t["lp_b"].to_numpy(float))
    n = len(margin)
    if n < 3:
        raise FairVLMError(f"splitting rows into thirds needs at least 3 rows, got {n}")
    biased, fair = np.zeros(n, bool), np.zeros(n, bool)
    keys = [c for c in within if c in t.columns]
    groups = t.groupby(keys, sort=False).indices.values() if keys else [np.arange(n)]
    for idx in groups:
        idx = np.asarray(idx)
        k = len(idx) // 3
        if k == 0:
            continue
        order = idx[np.argsort(margin[idx], kind="stable")]
        biased[order[:k]] = True
        fair[order[-k:]] = True
    if not biased.any():
        raise FairVLMError(f"no ({', '.join(keys)}) group has the 3 rows needed to split into thirds; "
                           "use at least 3 labels per attribute, variant and prompt")
    return biased, fair


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0.0:
        raise DataError("a direction came out as the zero vector (the two row groups have equal means)")
    return (v / norm).astype(np.float32)


@dataclass
class Directions:
    """Biased and fair residual directions per layer (unit vectors, float32 ``(d,)``).

    ``bias[l]`` / ``fair[l]``: the directions of the primary reading; ``bias_site[l]`` /
    ``fair_site[l]``: which site each was taken from; ``streams``: the same for the streams
    reading (``{"bias": {l: v}, "fair": {...}, "bias_site": ..., "fair_site": ...}``);
    ``meta``: model, fitting dataset, rule, counts. Save / load with safetensors.
    """

    bias: dict
    fair: dict
    bias_site: dict
    fair_site: dict
    streams: dict
    meta: dict

    @property
    def layers(self) -> list[int]:
        return sorted(self.bias)

    def save(self, path) -> Path:
        """Write ``path`` (a ``.safetensors`` file) atomically; metadata as JSON strings."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for l in self.layers:
            tensors[f"writes.bias.{l}"] = torch.from_numpy(np.array(self.bias[l], copy=True))
            tensors[f"writes.fair.{l}"] = torch.from_numpy(np.array(self.fair[l], copy=True))
            if self.streams:
                tensors[f"streams.bias.{l}"] = torch.from_numpy(np.array(self.streams["bias"][l], copy=True))
                tensors[f"streams.fair.{l}"] = torch.from_numpy(np.array(self.streams["fair"][l], copy=True))
        meta = {"meta": json.dumps(self.meta, sort_keys=True),
                "bias_site": json.dumps({str(k): v for k, v in self.bias_site.items()}),
                "fair_site": json.dumps({str(k): v for k, v in self.fair_site.items()}),
                "streams_bias_site": json.dumps({str(k): v for k, v in self.streams.get("bias_site", {}).items()}),
                "streams_fair_site": json.dumps({str(k): v for k, v in self.streams.get("fair_site", {}).items()})}
        meta["sha256"] = _tensors_sha256(tensors)  # checked by load: flipped bytes in the data
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path

    @classmethod
    def load(cls, path) -> "Directions":
        """Read a file written by :meth:`save`; raises :class:`DataError` when it is not one."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise DataError(f"no directions file at {path}; fit them with fairvlm.lens.fit_directions")
        try:
            with safe_open(str(path), framework="pt") as f:
                md = f.metadata() or {}
                names = list(f.keys())
                tensors = {k: f.get_tensor(k).numpy() for k in names}
            meta = json.loads(md["meta"])
            bsite = {int(k): v for k, v in json.loads(md["bias_site"]).items()}
            fsite = {int(k): v for k, v in json.loads(md["fair_site"]).items()}
            sb = {int(k): v for k, v in json.loads(md.get("streams_bias_site", "{}")).items()}
            sf = {int(k): v for k, v in json.loads(md.get("streams_fair_site", "{}")).items()}
        except Exception as exc:  # safetensors raises several types for a corrupt file
            raise DataError(f"{path} is not a directions file written by fairvlm.lens ({exc})") from exc
        want = md.get("sha256")
        if want is None:   # written before saves carried a checksum: nothing to check it against
            raise DataError(f"{path} carries no sha256 of its directions (written by an older fairvlm), so it "
                            "cannot be checked; fit the directions again and save them (Directions.save)")
        if want != _tensors_sha256({k: torch.from_numpy(v) for k, v in tensors.items()}):
            raise DataError(f"{path}: the directions' bytes differ from the sha256 written with them (altered or "
                            "damaged after saving); fit and save them again")
        bias = {int(k.split(".")[-1]): v for k, v in tensors.items() if k.startswith("writes.bias.")}
        fair = {int(k.split(".")[-1]): v for k, v in tensors.items() if k.startswith("writes.fair.")}
        if not bias or set(bias) != set(fair) or set(bias) != set(bsite):
            raise DataError(f"{path} is incomplete: bias and fair directions must cover the same layers")
        streams = {}
        if sb:
            streams = {"bias": {int(k.split(".")[-1]): v for k, v in tensors.items() if k.startswith("streams.bias.")},
                       "fair": {int(k.split(".")[-1]): v for k, v in tensors.items() if k.startswith("streams.fair.")},
                       "bias_site": sb, "fair_site": sf}
        return cls(bias, fair, bsite, fsite, streams, meta)


def _tensors_sha256(tensors: dict) -> str:
    """sha256 over the named tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def fit_directions(col: Collection, layers: Sequence[int] | None = None, *,
                   shuffle_seed: int | None = None) -> Directions:
    """Fit biased / fair directions on ``col`` by the rule in the module docstring.

    ``layers`` defaults to :func:`last_tenth`. Needs a collection with vectors and lens.
    ``shuffle_seed``: fit the *control* instead: the biased / fair labels of
    :func:`split_rows` are permuted among the rows of each (attribute, variant, prompt)
    group, so the fit runs the same procedure on labels that carry no information.
    """
    _collection("col", col)
    if layers is not None:
        validate.integers("layers", layers, unique=True)
    if shuffle_seed is not None:
        validate.integer("shuffle_seed", shuffle_seed, low=0)
    if col.vectors is None or col.lens is None:
        raise FairVLMError("fit_directions needs a collection made with layers=True")
    layers = last_tenth(col.n_layers) if layers is None else [int(l) for l in layers]
    for l in layers:
        if not 0 <= l < col.n_layers:
            raise FairVLMError(f"layer {l} is out of range (0..{col.n_layers - 1})")
    biased, fair = split_rows(col)
    if shuffle_seed is not None:
        biased, fair = _shuffle_split(col, biased, fair, shuffle_seed)
    rf = residual_frame(col)
    means = rf.groupby("layer")[["push_attn", "push_mlp", "d1_margin", "d2_margin"]].mean()
    out = {"bias": {}, "fair": {}, "bias_site": {}, "fair_site": {}}
    streams = {"bias": {}, "fair": {}, "bias_site": {}, "fair_site": {}}
    for l in layers:
        pa, pm = means.loc[l, "push_attn"], means.loc[l, "push_mlp"]
        bw, fw = ("attn_out", "mlp_out") if pa < pm else ("mlp_out", "attn_out")
        xb, xf = col.stream(bw, l), col.stream(fw, l)
        out["bias"][l] = _unit(xb[biased].mean(0) - xb[fair].mean(0))
        out["fair"][l] = _unit(xf[fair].mean(0) - xf[biased].mean(0))
        out["bias_site"][l], out["fair_site"][l] = f"{bw}.{l}", f"{fw}.{l}"
        d1, d2 = means.loc[l, "d1_margin"], means.loc[l, "d2_margin"]
        bs, fs = ("resid_pre", "resid_mid") if d1 < d2 else ("resid_mid", "resid_pre")
        sb, sf = col.stream(bs, l), col.stream(fs, l)
        streams["bias"][l] = _unit(sb[biased].mean(0) - sb[fair].mean(0))
        streams["fair"][l] = _unit(sf[fair].mean(0) - sf[biased].mean(0))
        streams["bias_site"][l], streams["fair_site"][l] = f"{bs}.{l}", f"{fs}.{l}"
    t = col.table
    meta = {"model": col.model, "fit_datasets": sorted(set(t["dataset"])), "shuffle_seed": shuffle_seed,
            "n_rows": int(len(t)), "n_biased": int(biased.sum()), "n_fair": int(fair.sum()),
            "n_layers": col.n_layers, "layers": layers, "reading": "writes",
            "rule": "bottom/top third by final fair margin within (attribute, variant, prompt); "
                    "biased write = sublayer with lower mean lens push toward fair; "
                    "u = unit(mean difference of that write between the thirds)",
            "code": CODE_VERSION, "collection": col.key}
    return Directions(out["bias"], out["fair"], out["bias_site"], out["fair_site"], streams, meta)


def _shuffle_split(col: Collection, biased: np.ndarray, fair: np.ndarray, seed: int,
                   within: Sequence[str] = ("attribute", "variant", "prompt_id")) -> tuple[np.ndarray, np.ndarray]:
    """The masks of :func:`split_rows` permuted among the rows of each ``within`` group."""
    rng = np.random.default_rng(seed)
    t = col.table
    keys = [c for c in within if c in t.columns]
    b, f = biased.copy(), fair.copy()
    for idx in (t.groupby(keys, sort=False).indices.values() if keys else [np.arange(len(t))]):
        idx = np.asarray(idx)
        perm = rng.permutation(idx)
        b[idx], f[idx] = biased[perm], fair[perm]
    return b, f


def placements(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Per-row placement values of a ranking (DeLong et al., 1988): for a positive row the
    share of negative rows it outranks, for a negative row the share of positive rows that
    outrank it (ties count one half). Their mean over the positives, over the negatives and
    over all rows is the AUROC, so a bootstrap over rows can treat the AUROC as a mean."""
    s = np.asarray(scores, float)
    y = np.asarray(positive, bool)
    if s.shape != y.shape or s.ndim != 1:
        raise FairVLMError(f"placements needs 1-D scores and labels of one length, got {s.shape} and {y.shape}")
    if y.all() or not y.any():
        raise FairVLMError("placements needs both positive and negative rows")
    neg, pos = np.sort(s[~y]), np.sort(s[y])
    out = np.empty_like(s)
    below_neg = np.searchsorted(neg, s[y], "left") + 0.5 * (np.searchsorted(neg, s[y], "right")
                                                             - np.searchsorted(neg, s[y], "left"))
    out[y] = below_neg / neg.size
    above_pos = (pos.size - np.searchsorted(pos, s[~y], "right")) + 0.5 * (
        np.searchsorted(pos, s[~y], "right") - np.searchsorted(pos, s[~y], "left"))
    out[~y] = above_pos / pos.size
    return out


def _auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive.astype(int), scores))


def weighted_auroc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray | None = None):
    """AUROC of ``scores`` ranking the ``positive`` rows above the others, with row weights.

    ``weights``: ``None`` (every row once), ``(n,)`` or ``(B, n)`` (one weighting per
    bootstrap resample: how often each row was drawn). Ties count one half. Returns a float
    for 1-D weights, ``(B,)`` otherwise; NaN where a weighting leaves no positive or no
    negative row. One sort serves every weighting, so a cluster bootstrap recomputes the
    AUROC of each resample exactly (:func:`cluster_resample_weights`) instead of averaging
    placement values that were fixed on the whole sample.
    """
    s = validate.array("scores", scores, nonempty=False)
    if positive is None or isinstance(positive, (str, bytes, dict)):
        raise ParameterError(f"positive={validate.show(positive)} is not valid: it must be one True/False per score")
    y = np.asarray(positive)
    if not (y.dtype == bool or (y.dtype.kind in "iu" and np.isin(y, (0, 1)).all())):
        raise ParameterError(f"positive={validate.show(positive)} is not valid: it must be one True/False per score")
    y = y.astype(bool)
    if weights is not None:
        validate.array("weights", weights, nonempty=False)
        if (np.asarray(weights, float) < 0).any():
            raise ParameterError("weights holds negative values; row weights count draws (>= 0)")
    if s.ndim != 1 or s.shape != y.shape:
        raise FairVLMError(f"weighted_auroc needs 1-D scores and labels of one length, got {s.shape} and {y.shape}")
    w = np.ones_like(s) if weights is None else np.asarray(weights, float)
    single = w.ndim == 1
    W = np.atleast_2d(w)
    if W.ndim != 2 or W.shape[1] != s.size:
        raise FairVLMError(f"weights must have shape (n,) or (B, n) with n = {s.size}, got {w.shape}")
    if s.size == 0:
        return float("nan") if single else np.full(W.shape[0], np.nan)
    order = np.argsort(s, kind="stable")
    ss, ys, Ws = s[order], y[order], W[:, order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    P = np.add.reduceat(Ws * ys, starts, axis=1)
    N = np.add.reduceat(Ws * ~ys, starts, axis=1)
    below = np.cumsum(N, axis=1) - N
    num = (P * (below + 0.5 * N)).sum(axis=1)
    den = P.sum(axis=1) * N.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return float(out[0]) if single else out


def cluster_resample_weights(clusters, n_boot: int, seed: int = 0) -> np.ndarray:
    """``(n_boot, n)`` row weights of a cluster bootstrap: each resample draws as many
    clusters as there are, with replacement, and a row weighs as often as its cluster was
    drawn. ``clusters``: one id per row (items, scenarios, images)."""
    validate.labels("clusters", clusters)
    n_boot = validate.integer("n_boot", n_boot, low=1)
    seed = validate.integer("seed", seed, low=0)
    codes = pd.factorize(pd.Series(np.asarray(clusters)), sort=False)[0]
    k = int(codes.max()) + 1 if codes.size else 0
    if k < 1 or n_boot < 1:
        raise FairVLMError(f"a cluster bootstrap needs at least one cluster and one resample (got {k}, {n_boot})")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, k, size=(int(n_boot), k))
    counts = np.zeros((int(n_boot), k))
    np.add.at(counts, (np.repeat(np.arange(int(n_boot)), k), draws.ravel()), 1.0)
    return counts[:, codes]


def _project_edit(v: np.ndarray, ub: np.ndarray, uf: np.ndarray, lam1: float, lam2: float) -> np.ndarray:
    v1 = v - lam1 * (v @ ub)[:, None] * ub[None]
    return v1 + lam2 * (v1 @ uf)[:, None] * uf[None]


def evaluate_directions(dirs: Directions, col: Collection) -> pd.DataFrame:
    """Score directions on a collection (normally another dataset than the fitting one).

    Per layer: ``auroc_bias`` (how well the projection of the biased write onto
    ``u_bias`` ranks the collection's own biased rows above its fair rows, rows split by
    :func:`split_rows`; 0.5 = chance), ``auroc_fair`` (projection of the fair write onto
    ``u_fair``, fair rows above biased rows) and ``cos_bias_fair``. The lens effect of the
    edit itself is :func:`lens_proxy`; chapter 04 runs the real edit.
    """
    _directions("dirs", dirs)
    _collection("col", col)
    if col.vectors is None:
        raise FairVLMError("evaluate_directions needs a collection made with layers=True")
    if col.vectors.shape[-1] != dirs.bias[dirs.layers[0]].shape[0]:
        raise FairVLMError("the directions and the collection come from models of different width")
    biased, fair = split_rows(col)
    keep = biased | fair
    rows = []
    for l in dirs.layers:
        kb, lb_ = dirs.bias_site[l].split(".")
        kf, lf_ = dirs.fair_site[l].split(".")
        ub, uf = dirs.bias[l], dirs.fair[l]
        sb = col.stream(kb, int(lb_)) @ ub
        sf = col.stream(kf, int(lf_)) @ uf
        rows.append({"layer": l, "bias_site": dirs.bias_site[l], "fair_site": dirs.fair_site[l],
                     "auroc_bias": _auroc(sb[keep], biased[keep]),
                     "auroc_fair": _auroc(sf[keep], fair[keep]),
                     "cos_bias_fair": float(ub @ uf), "n_rows": int(len(col.table))})
    return pd.DataFrame(rows)


def streams_view(dirs: Directions) -> Directions:
    """The streams reading of ``dirs`` (directions from ``resid_pre`` / ``resid_mid``) as
    the primary directions, so :func:`evaluate_directions` and :func:`transfer_test` score it."""
    _directions("dirs", dirs)
    if not dirs.streams:
        raise FairVLMError("these directions carry no streams reading")
    st = dirs.streams
    return Directions(dict(st["bias"]), dict(st["fair"]), dict(st["bias_site"]), dict(st["fair_site"]), {},
                      {**dirs.meta, "reading": "streams"})


def unembedding_directions(loaded) -> dict:
    """Control directions from the unembedding, per attribute: ``{"bias": {attr: u},
    "fair": {attr: u}}`` with ``u_fair = unit(w_fair - (w_a + w_b) / 2)`` and ``u_bias =
    -u_fair``, where ``w_k`` is the mean unembedding row of option ``k``'s first tokens. A
    stream that moves along ``u_fair`` raises the fair option's logit against the groups'."""
    validate.loaded("loaded", loaded)
    head = loaded.unembed()
    if head is None:
        raise FairVLMError(f"{loaded.name} has no unembedding")
    W = head.weight.detach().float().cpu().numpy()
    out: dict = {"bias": {}, "fair": {}}
    for a in mcq.ATTRIBUTES:
        ids = mcq.option_token_ids(loaded.tokenizer, a)
        w = {k: W[list(ids[k])].mean(axis=0) for k in mcq.OPTIONS}
        u = _unit(w["fair"] - (w["a"] + w["b"]) / 2)
        out["fair"][a], out["bias"][a] = u, -u
    return out


def transfer_test(dirs: Directions, col: Collection, *, n_random: int = 200, n_boot: int = 500,
                  seed: int = 0, unembed: dict | None = None) -> pd.DataFrame:
    """Transfer AUROC of ``dirs`` on ``col`` with controls measured in the same run.

    For ``kind`` in bias / fair: ``effect`` = the AUROC of :func:`evaluate_directions`
    averaged over the directions' layers, with a seeded cluster-bootstrap interval over the
    evaluation rows' labels (``lo``, ``hi``; every AUROC recomputed per resample); ``null`` / ``null_lo`` / ``null_hi`` = the median and
    2.5 / 97.5 percentiles of the same mean AUROC for ``n_random`` random unit directions
    at the same sites; ``unembed_auroc`` = the mean AUROC of the unembedding control
    (:func:`unembedding_directions`, per row's attribute) when ``unembed`` is given.
    """
    _directions("dirs", dirs)
    _collection("col", col)
    validate.integer("n_random", n_random, low=20)
    validate.integer("n_boot", n_boot, low=1)
    validate.integer("seed", seed, low=0)
    if unembed is not None:
        validate.mapping("unembed", unembed)
    if col.vectors is None:
        raise FairVLMError("transfer_test needs a collection made with layers=True")
    if n_random < 20:
        raise FairVLMError(f"n_random={n_random} is too small for a 95% null interval; use at least 20")
    from sklearn.metrics import roc_auc_score

    biased, fair = split_rows(col)
    keep = biased | fair
    rng = np.random.default_rng(seed)
    attrs = col.table["attribute"].to_numpy()[keep]
    out = []
    for kind, positive in (("bias", biased[keep]), ("fair", fair[keep])):
        if positive.all() or not positive.any():
            out.append({"kind": kind, "effect": float("nan"), "lo": float("nan"), "hi": float("nan"),
                        "null": float("nan"), "null_lo": float("nan"), "null_hi": float("nan"),
                        "unembed_auroc": float("nan"), "n_rows": int(keep.sum())})
            continue
        sites = dirs.bias_site if kind == "bias" else dirs.fair_site
        vecs = dirs.bias if kind == "bias" else dirs.fair
        X = {l: col.stream(sites[l].split(".")[0], int(sites[l].split(".")[1]))[keep] for l in dirs.layers}
        scores = np.stack([X[l] @ vecs[l] for l in dirs.layers])               # (n_layers, n)
        y = positive.astype(int)
        effect = float(np.mean([roc_auc_score(y, sc) for sc in scores]))
        # cluster bootstrap over labels, every AUROC recomputed on the drawn rows
        W = cluster_resample_weights(col.table["scenario"].to_numpy()[keep], n_boot, seed=seed)
        boots = np.mean([weighted_auroc(sc, positive, W) for sc in scores], axis=0)
        boots = boots[np.isfinite(boots)]
        d = next(iter(X.values())).shape[1]
        nulls = []
        for _ in range(n_random):
            r = []
            for l in dirs.layers:
                u = rng.standard_normal(d)
                r.append(roc_auc_score(y, X[l] @ (u / np.linalg.norm(u))))
            nulls.append(np.mean(r))
        ue = float("nan")
        if unembed is not None:
            ue = float(np.mean([roc_auc_score(y, np.einsum("nd,nd->n", X[l], np.stack(
                [unembed[kind][a] for a in attrs]))) for l in dirs.layers]))
        out.append({"kind": kind, "effect": effect,
                    "lo": float(np.percentile(boots, 2.5)), "hi": float(np.percentile(boots, 97.5)),
                    "null": float(np.median(nulls)), "null_lo": float(np.percentile(nulls, 2.5)),
                    "null_hi": float(np.percentile(nulls, 97.5)), "unembed_auroc": ue, "n_rows": int(keep.sum())})
    return pd.DataFrame(out)


#: Finding 3 and the transfer claim of RES-FAIR as the verdict tables print them.
CONFLICT_CLAIM = "residuals of one layer carry conflicting knowledge (finding 3)"
TRANSFER_CLAIM = "{kind} residual vectors fitted on one dataset apply to another (App. C.1)"


def conflict_verdict(rows: pd.DataFrame, control_rows: pd.DataFrame, *, reading: str, layers: Sequence[int],
                     min_effect: float = 0.05, seed: int = 0):
    """Finding 3 for one cell by :func:`fairvlm.verdicts.judge`. Returns ``(effect rows,
    control rows, verdict)``.

    ``rows`` / ``control_rows``: :func:`residual_frame` lines of the cell and of the
    content-free control (same model and attribute). Per row, the share of ``layers`` in
    conflict: the two writes push opposite ways (``reading="writes"``) or the two streams
    fall on opposite sides (``"streams"``). Effect: that share on the cell's rows; control:
    on the content-free rows, where there is no social knowledge to conflict. Both are
    bootstrapped over labels (every prompt and input variant of a label is one cluster).
    """
    from fairvlm.verdicts import Claim, judge

    if reading not in ("writes", "streams"):
        raise FairVLMError(f"reading={reading!r}: choose 'writes' or 'streams'")
    claim = Claim(CONFLICT_CLAIM, "bias", "greater", min_effect=min_effect)

    def per_row(rf):
        rf = rf[rf["layer"].isin(list(layers))]
        if reading == "writes":
            c = np.sign(rf["push_attn"]) != np.sign(rf["push_mlp"])
        else:
            c = np.sign(rf["d1_margin"]) != np.sign(rf["d2_margin"])
        return (rf.assign(conflict=c.astype(float)).groupby("row_id", sort=False)
                .agg(scenario=("scenario", "first"), conflict=("conflict", "mean")).reset_index())

    eff, ctl = per_row(rows), per_row(control_rows)
    testable = ctl["scenario"].nunique() >= 2 and eff["scenario"].nunique() >= 2
    v = judge(claim, eff["conflict"].to_numpy(), ctl["conflict"].to_numpy(), paired=False,
              clusters=eff["scenario"].to_numpy(), control_clusters=ctl["scenario"].to_numpy(), testable=testable,
              why="" if testable else "fewer than two labels in the cell or in its content-free control", seed=seed)
    return eff, ctl, v


def transfer_verdicts(fit_col: Collection, eval_col: Collection, *, reading: str = "writes", n_shuffles: int = 10,
                      min_effect: float = 0.05, seed: int = 0, dirs: Directions | None = None,
                      control_col: Collection | None = None, n_boot: int = 1000):
    """The transfer claim for one fit / evaluation pair, by the protocol of
    :mod:`fairvlm.verdicts`. Returns ``(table, verdicts)``: one line and one verdict per
    kind (bias, fair).

    Effect: the AUROC with which the directions fitted on ``fit_col`` rank ``eval_col``'s
    own biased rows above its fair rows (``u_bias``, on the biased write) or the reverse
    (``u_fair``), averaged over the directions' layers. Controls, both fitted by the same
    procedure (:func:`fit_directions`) at the same layers:

    - **shuffled-label fits** on ``fit_col`` (``n_shuffles`` fits, their AUROCs averaged):
      the fit's rows with their biased / fair labels permuted;
    - a **content-free fit** on ``control_col`` (when given: the content-free questions of
      the same model, :data:`CONTROL`), split into thirds by their own output margin like
      the social rows. It learns whatever separates rows with a low fair margin from rows
      with a high one when the question carries no social content (the lens, the option
      words, how the output margin is written into the stream). A direction that "transfers"
      only that far has found the model's answer axis, not a bias.

    The control is the higher of the two null AUROCs. The intervals are a cluster
    bootstrap over the evaluation rows' labels (``scenario``: every prompt and input
    variant of a label is one cluster; ``n_boot`` percentile resamples), and in every
    resample **every AUROC is recomputed** on the drawn rows (:func:`weighted_auroc`), the
    effect's and the controls' alike, so the difference carries the ranking's own
    variance. The directions themselves are held fixed (the claim is about these fitted
    vectors). ``dirs``: the fitted (writes) directions when already at hand.
    """
    from fairvlm.verdicts import Claim, judge, judge_estimates

    if reading not in ("writes", "streams"):
        raise FairVLMError(f"reading={reading!r}: choose 'writes' or 'streams'")
    if not isinstance(n_boot, (int, np.integer)) or isinstance(n_boot, bool) or n_boot < 100:
        raise FairVLMError(f"n_boot={n_boot!r} must be an integer >= 100")
    view = (lambda d: d) if reading == "writes" else streams_view
    real = view(dirs if dirs is not None else fit_directions(fit_col))
    controls = [view(fit_directions(fit_col, real.layers, shuffle_seed=seed + 1 + k)) for k in range(n_shuffles)]
    content_free, cf_note = None, ""
    if control_col is not None:
        try:
            content_free = view(fit_directions(control_col, real.layers))
        except (FairVLMError, DataError) as exc:
            cf_note = f"content-free fit impossible: {exc}"
    biased, fair = split_rows(eval_col)
    keep = biased | fair
    scen = eval_col.table["scenario"].to_numpy()[keep]
    n_clusters = int(pd.Series(scen).nunique())
    W = cluster_resample_weights(scen, int(n_boot), seed=seed) if keep.any() else None
    table, verdicts = [], []
    for kind, positive in (("bias", biased[keep]), ("fair", fair[keep])):
        claim = Claim(TRANSFER_CLAIM.format(kind=kind), "bias", "greater", min_effect=min_effect, effect_ref=0.5)
        nan = float("nan")
        if positive.all() or not positive.any():
            v = judge(claim, [], [], testable=False, why="the evaluation data have no biased or no fair rows")
            table.append({"kind": kind, "auroc": nan, "control_auroc": nan, "shuffled_auroc": nan,
                          "content_free_auroc": nan, "n_rows": int(keep.sum()), "n_clusters": n_clusters})
            verdicts.append(v)
            continue

        def aurocs(d: Directions, weights=None):
            sites, vecs = (d.bias_site, d.bias) if kind == "bias" else (d.fair_site, d.fair)
            per_layer = []
            for l in d.layers:
                site, layer = sites[l].split(".")
                per_layer.append(weighted_auroc(eval_col.stream(site, int(layer))[keep] @ vecs[l], positive, weights))
            return np.mean(per_layer, axis=0)

        eff, eff_b = aurocs(real), aurocs(real, W)
        shuf = float(np.mean([aurocs(c) for c in controls])) if controls else nan
        shuf_b = np.mean([aurocs(c, W) for c in controls], axis=0) if controls else np.full(len(W), -np.inf)
        cf = aurocs(content_free) if content_free is not None else nan
        cf_b = aurocs(content_free, W) if content_free is not None else np.full(len(W), -np.inf)
        ctl = float(np.nanmax([shuf, cf])) if controls or content_free is not None else nan
        ctl_b = np.maximum(shuf_b, cf_b)
        ok = np.isfinite(eff_b) & np.isfinite(ctl_b)
        pct = (lambda a: (float(np.percentile(a[ok], 2.5)), float(np.percentile(a[ok], 97.5)))
               if ok.sum() >= 20 else (nan, nan))
        why = "" if np.isfinite(ctl) else "no control could be fitted"
        v = judge_estimates(claim, float(eff), pct(eff_b), ctl, float(eff - ctl), pct(eff_b - ctl_b),
                            n_units=n_clusters, control_interval=pct(ctl_b), testable=bool(np.isfinite(ctl)),
                            why=why if not cf_note or why else cf_note)
        table.append({"kind": kind, "auroc": float(eff), "control_auroc": ctl, "shuffled_auroc": shuf,
                      "content_free_auroc": cf, "n_rows": int(keep.sum()), "n_clusters": n_clusters})
        verdicts.append(v)
    return pd.DataFrame(table), verdicts


def lens_proxy(loaded, dirs: Directions, col: Collection, *, lambda1: float = 0.2,
               lambda2: float = 0.2) -> pd.DataFrame:
    """The lens proxy of :func:`evaluate_directions` (needs the model for its final norm and
    unembedding): per layer, mean lens ``fair_share`` / ``skew`` / ``lens_fair`` of
    ``resid_post.l`` before and after the edit at that layer alone."""
    from fairvlm.hooks import logit_lens

    validate.loaded("loaded", loaded, kinds=("vlm", "causal-lm"))
    _directions("dirs", dirs)
    _collection("col", col)
    validate.number("lambda1", lambda1, low=0.0, high=1.0)
    validate.number("lambda2", lambda2, low=0.0, high=1.0)
    ids = {a: mcq.option_token_ids(loaded.tokenizer, a) for a in mcq.ATTRIBUTES}
    attrs = col.table["attribute"].tolist()
    out = []
    for l in dirs.layers:
        v = col.stream("resid_post", l)
        after = _project_edit(v, dirs.bias[l], dirs.fair[l], lambda1, lambda2)
        res = {}
        for name, x in (("before", v), ("after", after)):
            with torch.no_grad():
                logits = logit_lens(loaded, torch.from_numpy(x).to(loaded.device))
            lp = np.stack([mcq.option_logprobs(logits[i], ids[a]).cpu().numpy() for i, a in enumerate(attrs)])
            r = _readings(lp)
            res.update({f"{k}_{name}": float(np.mean(r[k])) for k in ("fair_share", "skew", "lens_fair")})
        out.append({"layer": l, **res})
    return pd.DataFrame(out)


def directions_path(model: str, fit: str) -> Path:
    """Where chapter 03 saves the directions of ``model`` fitted on ``fit``:
    ``<results>/directions/<model>__fit-<fit>.safetensors`` (``/`` in hub ids -> ``__``)."""
    from fairvlm.paths import results_dir

    for name, v in (("model", model), ("fit", fit)):
        validate.text(name, v)
    if "/" in fit or "\\" in fit or fit.strip(".") == "" or ".." in model:
        raise ParameterError(f"fit={fit!r} / model={model!r} is not valid: a dataset name and a model id, not a path")
    return results_dir() / "directions" / f"{model.replace('/', '__')}__fit-{fit}.safetensors"


def split_by_label(col: Collection) -> tuple[Collection, Collection]:
    """Two collections over disjoint halves of the labels (even / odd position in sorted
    scenario order): the held-out evaluation for a model that has a single dataset."""
    _collection("col", col)
    scen = sorted(set(col.table["scenario"]))
    if len(scen) < 2:
        raise FairVLMError("splitting by label needs at least two labels")
    even = set(scen[0::2])
    mask = col.table["scenario"].isin(even).to_numpy()
    return col.subset(mask), col.subset(~mask)


def cross_pairs(runs: Mapping) -> list[dict]:
    """The fit / evaluation pairs of chapter 03 for ``{(model, dataset): Collection}``.

    A model with several datasets gets every ordered pair of them (fit on one, evaluate on
    another: the paper's cross-dataset setting). A model with one dataset is fitted on half
    of its labels and evaluated on the other half (``split_by_label``), and the reverse.
    Each entry: ``model, fit, eval, fit_col, eval_col``.
    """
    for k, c in validate.mapping("runs", runs).items():
        if not (isinstance(k, tuple) and len(k) == 2):
            raise ParameterError(f"runs has the key {k!r}: keys must be (model, dataset) pairs")
        _collection(f"runs[{k!r}]", c)
    by_model: dict = {}
    for (model, dataset), col in runs.items():
        by_model.setdefault(model, {})[dataset] = col
    out = []
    for model, cols in by_model.items():
        if len(cols) >= 2:
            for fit, fcol in cols.items():
                for ev, ecol in cols.items():
                    if fit != ev:
                        out.append({"model": model, "fit": fit, "eval": ev, "fit_col": fcol, "eval_col": ecol})
        else:
            (dataset, col), = cols.items()
            a, b = split_by_label(col)
            out.append({"model": model, "fit": f"{dataset}-even", "eval": f"{dataset}-odd",
                        "fit_col": a, "eval_col": b})
            out.append({"model": model, "fit": f"{dataset}-odd", "eval": f"{dataset}-even",
                        "fit_col": b, "eval_col": a})
    return out

