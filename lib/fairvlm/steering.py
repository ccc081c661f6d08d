"""Test-time steering of LVLMs (Ratzlaff et al., arXiv 2411.12590): find a direction, ablate it.

Two ways to find a unit direction ``a`` in the language model's residual stream, one way to
remove it, and one way to make the removal free at serving time:

``dataset_direction(lm, bias, benign, layer=..., position=...)``
    Difference of mean activations (``resid_post`` of one layer at one prompt position)
    between bias-eliciting and benign prompts, accumulated in float64 (paper eq. in 3.1).
    :func:`candidate_directions` computes a grid of (layer, position) candidates in one pass
    per prompt set; :func:`select_direction` picks one on held-out pairs by the stated rule.
``gradient_direction(lm, enc, target_ids, layer=...)``
    One signed gradient step on the image tokens (the projector output ``u``): the MSE loss
    pulls the logits of the protected-attribute tokens ``T`` at the last position toward
    ``M_t = z_t + max_v z_v`` (the paper's target, read literally; detached), ``u' = u -
    eps * sign(grad_u L)`` with ``eps = std(u)`` (a descent step on the loss, which raises
    the protected logits: the paper's printed ``+`` would ascend it), then
    ``a = h_l(x, u') - h_l(x, u)`` normalised. ``h_l(x, u)`` is captured in the same forward
    pass that builds the graph, gradients reach only the image tokens (weights frozen), and
    the second pass stops after layer ``l``.
``ablate(lm, a)``
    Context manager: ``r <- r - a a^T r`` at ``resid_pre``, ``attn_out`` and ``mlp_out`` of
    every layer, through :func:`fairvlm.hooks.edit`, in every forward call (every step of
    ``generate``). ``resid_pre`` is edited at layer 0 only: every later layer's input is an
    ablated stream plus ablated writes, so the component is already gone there (to rounding;
    ``every_resid_pre=True`` re-removes it at every layer, 3L sites instead of 2L + 1).
``orthogonalize(lm, a)``
    A new :class:`~fairvlm.models.LoadedModel` whose weights that write to the stream
    (token embedding, every attention output and MLP down projection, the projector's last
    layer for image tokens, LLaVA-NeXT's image newline) are replaced by ``W - a a^T W``
    (biases ``b - (a.b) a``). Its logits equal the hook ablation's within float rounding and
    any runtime serves it without hooks; ``save_pretrained`` writes a checkpoint.
``loss_gradients(logits, target_ids)``
    Paper 5.2: gradients of KL, column CE and MSE with respect to the logits (norms and
    cosines between them); :func:`loss_direction` turns each loss into a steering direction.

The exact layer and ``M`` of the paper are not public; the choices above are ours and stated.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

from fairvlm import validate as V
from fairvlm.errors import FairVLMError
from fairvlm.hooks import capture, edit

__all__ = [
    "ABLATION_SITES", "LOSSES", "unit", "units", "random_direction", "ablation_fn", "ablate",
    "orthogonalize", "stream_writers", "mean_activations", "dataset_direction",
    "candidate_directions", "candidate_grid", "select_direction", "Selection", "GradientDirection",
    "gradient_direction", "loss_gradients", "target_logit_loss", "protected_mass", "target_ids_for", "attribute_prefixes",
    "loss_direction_effects",
]

ABLATION_SITES = ("resid_pre", "attn_out", "mlp_out")
LOSSES = ("mse", "kl", "ce")


# --------------------------------------------------------------------------------------
# Directions and the ablation
# --------------------------------------------------------------------------------------


def unit(a, d: int | None = None) -> torch.Tensor:
    """``a / ||a||`` as a float32 CPU tensor; checks shape (``(d,)``), finiteness and norm > 0."""
    t = V.tensor("direction", a, finite=False, nonempty=False).detach()
    if d is not None:
        d = V.integer("d", d, low=1)
    if t.ndim != 1:
        raise FairVLMError(f"a direction must be a vector (d,), got shape {tuple(t.shape)}")
    if d is not None and t.shape[0] != d:
        raise FairVLMError(f"the direction has {t.shape[0]} entries but the model's stream is {d} wide")
    t = t.double().cpu()
    if not torch.isfinite(t).all():
        raise FairVLMError("the direction holds NaN or inf")
    n = t.norm()
    if n <= 1e-12:
        raise FairVLMError("the direction is zero; nothing to ablate")
    return (t / n).float()


def random_direction(d: int, seed: int = 0) -> torch.Tensor:
    """A random unit vector in R^d (Gaussian, normalised): the null every steering result is
    compared with."""
    d = V.integer("d", d, low=1)
    g = torch.Generator().manual_seed(V.integer("seed", seed, low=0))
    return unit(torch.randn(d, generator=g, dtype=torch.float64))


def units(A) -> torch.Tensor:
    """Row-wise :func:`unit` of a ``(n, d)`` matrix (one direction per row)."""
    A = V.tensor("directions", A, finite=False, nonempty=False).detach()
    if A.ndim != 2:
        raise FairVLMError(f"expected directions (n, d), got shape {tuple(A.shape)}")
    return torch.stack([unit(r) for r in A])


def ablation_fn(a: torch.Tensor):
    """``x -> x - (x . a) a`` over the last axis, in ``x``'s dtype and device.

    ``a`` is one direction ``(d,)`` or one per batch row ``(batch, d)`` (the test-time gradient
    direction differs per image); rows then apply to ``x``'s first axis."""
    t = V.tensor("a", a, ndim=(1, 2), finite=False)
    a = unit(t) if t.ndim == 1 else units(t)
    cache: dict = {}

    def fn(x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.dtype)
        if key not in cache:
            cache[key] = a.to(device=x.device, dtype=x.dtype)
        u = cache[key]
        if u.ndim == 1:
            if x.is_contiguous():
                # x - (x u) u^T in two kernels (a matrix-vector product and a fused rank-1
                # update) instead of three: at every hooked site of every decoding step
                x2 = x.view(-1, x.shape[-1])
                return torch.addr(x2, x2 @ u, u, alpha=-1).view_as(x)
            return x - (x @ u).unsqueeze(-1) * u
        if x.shape[0] != u.shape[0]:
            raise FairVLMError(f"{u.shape[0]} per-row directions for a batch of {x.shape[0]}")
        u = u.reshape(u.shape[0], *([1] * (x.ndim - 2)), u.shape[-1])
        return x - (x * u).sum(-1, keepdim=True) * u

    return fn


def ablate(lm, a, *, sites: Sequence[str] = ABLATION_SITES, every_resid_pre: bool = False):
    """Context manager removing direction ``a`` (``(d,)``, or ``(batch, d)``: one per row) at
    ``sites`` of every language layer, in every forward call inside the block.

    When ``sites`` holds ``resid_pre``, ``attn_out`` and ``mlp_out`` (the default), the stream
    entering layer ``l > 0`` is ``resid_pre(l-1) + attn_out(l-1) + mlp_out(l-1)``, three
    vectors already orthogonal to ``a``; removing ``a`` from it again changes it only by
    rounding. So ``resid_pre`` is edited at layer 0 alone (2L + 1 sites, not 3L) unless
    ``every_resid_pre=True``. Every layer still reads a stream without ``a`` (tested at every
    site, and on a GPU in bfloat16 by ``benchmarks/device_check.py``)."""
    V.loaded("lm", lm)
    t = V.tensor("a", a, ndim=(1, 2), finite=False)
    if t.ndim == 1:
        a = unit(t, lm.d_model)
    else:
        if t.ndim != 2 or t.shape[-1] != lm.d_model:
            raise FairVLMError(f"directions must be (d,) or (batch, d) with d={lm.d_model}, got {tuple(t.shape)}")
        a = units(t)
    if isinstance(sites, str):
        raise FairVLMError(f"sites must be a list of site kinds, got the string {sites!r}")
    bad = [s for s in sites if s not in ("resid_pre", "attn_out", "mlp_out", "resid_mid", "resid_post")]
    if bad or not sites:
        raise FairVLMError(f"ablation sites must be residual-stream kinds (resid_pre, attn_out, mlp_out, ...), got {list(sites)}")
    if not isinstance(every_resid_pre, bool):
        raise FairVLMError(f"every_resid_pre must be True or False, got {every_resid_pre!r}")
    fn = ablation_fn(a)
    edits = {f"{s}.*": fn for s in sites}
    if not every_resid_pre and {"resid_pre", "attn_out", "mlp_out"} <= set(sites):
        del edits["resid_pre.*"]
        edits["resid_pre.0"] = fn
    # no finite check: removing a unit direction from a finite vector leaves it finite, and
    # the check's reductions would add kernels at every site of every decoding step
    return edit(lm, edits, check_finite=False)


def stream_writers(lm) -> list[tuple[str, torch.nn.Module, str]]:
    """``(name, module, how)`` for every module whose output is added to the language stream.

    ``how`` is ``"rows"`` for an embedding (weight ``(vocab, d)``), ``"linear"`` for an
    ``nn.Linear`` with output ``d`` (weight ``(d, d_in)``, bias ``(d,)``) and ``"vector"``
    for a parameter of shape ``(d,)`` added as is (LLaVA-NeXT's image newline).
    """
    V.loaded("lm", lm)
    if lm.kind not in ("causal-lm", "vlm"):
        raise FairVLMError(f"lm={lm.name!r}: orthogonalize supports decoder LMs and LVLMs, not a {lm.kind}")
    out: list = [("embed_tokens", lm.embed_tokens(), "rows")]
    for i, layer in enumerate(lm.decoder_layers()):
        name = type(layer).__name__
        if name in ("BertLayer", "CLIPEncoderLayer"):
            raise FairVLMError(f"orthogonalize supports decoder LMs and LVLMs, not {name}")
        attn = getattr(layer, "self_attn", None) or getattr(layer, "cross_attn", None)
        out.append((f"layers.{i}.o_proj", attn.o_proj, "linear"))
        out.append((f"layers.{i}.down_proj", layer.mlp.down_proj, "linear"))
    proj = lm.projector()
    if proj is not None and lm.family in ("llava", "llava-next", "qwen2-vl", "qwen2.5-vl"):
        last = [m for m in proj.modules() if isinstance(m, torch.nn.Linear)][-1]
        out.append(("projector.last", last, "linear"))
        newline = getattr(lm.model.model, "image_newline", None)
        if newline is not None:
            out.append(("image_newline", newline, "vector"))
    # mllama: the projector feeds cross-attention keys/values, not the stream
    return out


@torch.no_grad()
def orthogonalize(lm, a):
    """A new LoadedModel with direction ``a`` projected out of every weight that writes to the
    language stream (see the module docstring). ``lm`` is left unchanged. Tied input/output
    embeddings are untied first (the unembedding reads the stream; it must not change)."""
    from fairvlm.models import LoadedModel

    V.loaded("lm", lm)
    a = unit(a, lm.d_model)
    model = copy.deepcopy(lm.model)
    new = LoadedModel(model=model, processor=lm.processor, tokenizer=lm.tokenizer, name=lm.name,
                      family=lm.family, kind=lm.kind,
                      info={**lm.info, "orthogonalized": "direction projected out of every stream write"})
    head, emb = new.unembed(), new.embed_tokens()
    if head is not None and head.weight is emb.weight or (
            head is not None and head.weight.data_ptr() == emb.weight.data_ptr()):
        head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
        for cfg in (model.config, getattr(model.config, "text_config", None)):
            if cfg is not None and hasattr(cfg, "tie_word_embeddings"):
                cfg.tie_word_embeddings = False
        if hasattr(model, "_tied_weights_keys"):
            model._tied_weights_keys = None
    for _, module, how in stream_writers(new):
        if how == "rows":
            W = module.weight.data
            u = a.to(W.device, torch.float64)
            W.copy_((W.double() - torch.outer(W.double() @ u, u)).to(W.dtype))
        elif how == "linear":
            W = module.weight.data
            u = a.to(W.device, torch.float64)
            W.copy_((W.double() - torch.outer(u, u @ W.double())).to(W.dtype))
            if module.bias is not None:
                b = module.bias.data
                b.copy_((b.double() - (b.double() @ u) * u).to(b.dtype))
        else:
            v = module.data
            u = a.to(v.device, torch.float64)
            v.copy_((v.double() - (v.double() @ u) * u).to(v.dtype))
    return new


# --------------------------------------------------------------------------------------
# Dataset (difference-in-means) directions
# --------------------------------------------------------------------------------------


def _batches(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


@torch.no_grad()
def mean_activations(lm, texts: Sequence[str], images=None, *, layers: Sequence[int],
                     positions: Sequence[int] = (-1,), batch_size: int = 8, system=None) -> torch.Tensor:
    """Mean ``resid_post`` over prompts at each (layer, position): ``(len(layers), len(positions), d)``
    float64. Positions count from the end of the prompt (left padding: ``-1`` is every row's
    last prompt token). Each forward pass stops after the deepest layer asked for."""
    V.loaded("lm", lm)
    texts = V.strings("texts", texts)
    layers = V.integers("layers", layers, low=-lm.n_layers, high=lm.n_layers - 1)
    positions = V.integers("positions", positions, high=-1)
    V.integer("batch_size", batch_size, low=1)
    if images is not None:
        images = V.sequence("images", images, length=len(texts))
    if any(p >= 0 for p in positions):
        raise FairVLMError(f"positions count from the end of the prompt (negative), got {list(positions)}")
    total = torch.zeros(len(layers), len(positions), lm.d_model, dtype=torch.float64)
    sites = [f"resid_post.{l}" for l in layers]
    # the pass stops once the deepest requested layer is captured: the layers above it and the
    # unembedding of every prompt position would be computed for nothing
    last = f"resid_post.{max(l % lm.n_layers for l in layers)}"

    def stop(x):
        raise _Stop

    for sl in _batches(len(texts), batch_size):
        ims = None if images is None else list(images[sl])
        enc = lm.inputs(texts[sl], ims, system=system)
        with capture(lm, sites) as cache, edit(lm, {last: stop}, check_finite=False):
            try:
                lm.model(**enc, use_cache=False)
            except _Stop:
                pass
        for i, s in enumerate(sites):
            x = cache[s][:, list(positions)].double().cpu()     # (B, P, d)
            total[i] += x.sum(0)
    out = total / len(texts)
    if not torch.isfinite(out).all():
        raise FairVLMError("mean activations hold NaN or inf")
    return out


def dataset_direction(lm, bias: Sequence[str], benign: Sequence[str], *, layer: int, position: int = -1,
                      bias_images=None, benign_images=None, batch_size: int = 8) -> torch.Tensor:
    """Unit difference of means ``mean(bias) - mean(benign)`` at ``resid_post.layer``, ``position``."""
    V.integer("layer", layer)
    V.integer("position", position, high=-1)
    bias, benign = V.strings("bias", bias), V.strings("benign", benign)
    mb = mean_activations(lm, bias, bias_images, layers=[layer], positions=[position], batch_size=batch_size)
    mn = mean_activations(lm, benign, benign_images, layers=[layer], positions=[position], batch_size=batch_size)
    return unit(mb[0, 0] - mn[0, 0])


def candidate_grid(n_layers: int, n_candidates: int = 32, n_positions: int = 4) -> list[tuple[int, int]]:
    """(layer, position) candidates: ``n_candidates // n_positions`` layers spread evenly over
    the middle of the network (from 25% to 90% of its depth) times the last ``n_positions``
    prompt positions. With 32 candidates and 4 positions: 8 layers x positions -1..-4."""
    V.integer("n_layers", n_layers, low=1)
    V.integer("n_candidates", n_candidates, low=1)
    V.integer("n_positions", n_positions, low=1)
    n_l = max(1, n_candidates // n_positions)
    lo, hi = int(round(0.25 * (n_layers - 1))), int(round(0.9 * (n_layers - 1)))
    layers = sorted({int(round(x)) for x in np.linspace(lo, hi, n_l)})
    return [(l, -p) for l in layers for p in range(1, n_positions + 1)]


def candidate_directions(lm, bias, benign, *, grid: Sequence[tuple[int, int]], bias_images=None,
                         benign_images=None, batch_size: int = 8) -> dict:
    """``{(layer, position): unit direction}`` for every candidate, from one pass per prompt set."""
    grid = V.sequence("grid", grid)
    for g in grid:
        if not isinstance(g, (tuple, list)) or len(g) != 2:
            raise FairVLMError(f"grid entry {g!r} must be a (layer, position) pair (see candidate_grid)")
        V.integer("grid layer", g[0])
        V.integer("grid position", g[1], high=-1)
    bias, benign = V.strings("bias", bias), V.strings("benign", benign)
    layers = sorted({l for l, _ in grid})
    positions = sorted({p for _, p in grid})
    mb = mean_activations(lm, bias, bias_images, layers=layers, positions=positions, batch_size=batch_size)
    mn = mean_activations(lm, benign, benign_images, layers=layers, positions=positions, batch_size=batch_size)
    return {(l, p): unit(mb[layers.index(l), positions.index(p)] - mn[layers.index(l), positions.index(p)])
            for l, p in grid}


def _last_only(lm) -> dict:
    """``{"logits_to_keep": 1}`` where the model's forward takes it (the unembedding then runs at
    the last position only: about a fifth of a small model's forward), else ``{}``."""
    import inspect

    try:
        params = inspect.signature(lm.model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


@torch.no_grad()
def _next_token_logprobs(lm, texts, images, batch_size: int = 16, prefixes=None) -> torch.Tensor:
    """Next-token log-probabilities after each prompt (and its assistant ``prefixes[i]``, the
    answer so far: rows that share a prefix are batched together)."""
    kw = _last_only(lm)
    prefixes = [""] * len(texts) if prefixes is None else list(prefixes)
    out = [None] * len(texts)
    for pre in dict.fromkeys(prefixes):
        idx = [i for i, p in enumerate(prefixes) if p == pre]
        for s in range(0, len(idx), batch_size):
            rows = idx[s:s + batch_size]
            enc = lm.inputs([texts[i] for i in rows], None if images is None else [images[i] for i in rows],
                            assistant_prefix=pre)
            lp = torch.log_softmax(lm.model(**enc, use_cache=False, **kw).logits[:, -1].float(), -1).cpu()
            for j, i in enumerate(rows):
                out[i] = lp[j]
    return torch.stack(out)


@torch.no_grad()
def attribute_prefixes(lm, texts: Sequence[str], images=None, *, target_ids: Sequence[int], max_new_tokens: int = 8,
                       batch_size: int = 16) -> tuple[list[str], list[bool]]:
    """Where each prompt's answer carries the attribute: greedy-decode up to ``max_new_tokens``
    and return the answer text *before* the first protected token (``target_ids``), so that
    the next token after ``prompt + prefix`` is the one that names the attribute ("A" in
    "A woman." is not). Rows whose answer names no protected token keep ``""`` (the first
    answer token) and ``False`` in the second list."""
    V.loaded("lm", lm)
    texts = V.strings("texts", texts)
    ids = set(V.integers("target_ids", target_ids, low=0))
    V.integer("max_new_tokens", max_new_tokens, low=1)
    V.integer("batch_size", batch_size, low=1)
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    prefixes, found = [], []
    for sl in _batches(len(texts), batch_size):
        enc = lm.inputs(list(texts[sl]), None if images is None else list(images[sl]))
        seq = lm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        for row in seq[:, enc["input_ids"].shape[1]:].tolist():
            j = next((k for k, t in enumerate(row) if t in ids), None)
            found.append(j is not None)
            prefixes.append(tok.decode(row[:j], skip_special_tokens=True).rstrip() if j else "")
    return prefixes, found


def protected_mass(logprobs: torch.Tensor, target_ids: Sequence[int]) -> torch.Tensor:
    """Per row, the probability mass of the protected tokens: ``sum_t p_t``."""
    logprobs = V.tensor("logprobs", logprobs, ndim=2, finite=False)
    target_ids = V.integers("target_ids", target_ids, low=0, high=logprobs.shape[1] - 1)
    return logprobs[:, list(target_ids)].exp().sum(-1)


@dataclass
class Selection:
    """Result of :func:`select_direction`: the chosen candidate and every candidate's scores."""

    key: tuple
    direction: torch.Tensor
    table: "object"           # pandas DataFrame, one row per candidate
    rule: str


def select_direction(lm, candidates: dict, heldout_bias: Sequence[str], heldout_benign: Sequence[str], *,
                     target_ids: Sequence[int], heldout_bias_images=None, heldout_benign_images=None,
                     max_benign_kl: float = 0.1, heldout_bias_prefixes=None) -> Selection:
    """Choose a candidate on held-out prompts by the rule stated in ``Selection.rule``:

    for each candidate, ablate it (every layer, :func:`ablate`) and measure (1) the drop in the
    next-token probability mass of the protected tokens on the held-out bias-eliciting
    prompts (relative to no ablation, mean over prompts) and (2) the mean KL(unsteered ||
    steered) of the next-token distribution on the held-out benign prompts. Keep candidates
    whose benign KL is at most ``max_benign_kl`` nats; pick the largest drop among them (if
    none qualifies, the smallest KL; the table's ``passed_kl`` column says which passed).
    ``heldout_bias_prefixes``: the answer so far on each bias prompt (see
    :func:`attribute_prefixes`), so the mass is read at the token that carries the attribute."""
    import pandas as pd

    if not isinstance(candidates, dict) or not candidates:
        raise FairVLMError(f"candidates={V.show(candidates)} must be a non-empty dict {{(layer, position): direction}}")
    V.number("max_benign_kl", max_benign_kl, low=0.0)
    heldout_bias, heldout_benign = V.strings("heldout_bias", heldout_bias), V.strings("heldout_benign", heldout_benign)
    target_ids = V.integers("target_ids", target_ids, low=0)
    if heldout_bias_prefixes is not None:
        heldout_bias_prefixes = V.strings("heldout_bias_prefixes", heldout_bias_prefixes, blank=True)
        if len(heldout_bias_prefixes) != len(heldout_bias):
            raise FairVLMError(f"{len(heldout_bias_prefixes)} prefixes for {len(heldout_bias)} held-out bias prompts")
    pre = heldout_bias_prefixes
    base_bias = _next_token_logprobs(lm, heldout_bias, heldout_bias_images, prefixes=pre)
    base_benign = _next_token_logprobs(lm, heldout_benign, heldout_benign_images)
    m0 = protected_mass(base_bias, target_ids)
    rows = []
    for key, a in candidates.items():
        with ablate(lm, a):
            lb = _next_token_logprobs(lm, heldout_bias, heldout_bias_images, prefixes=pre)
            ln = _next_token_logprobs(lm, heldout_benign, heldout_benign_images)
        drop = float((m0 - protected_mass(lb, target_ids)).mean())
        rel = float(((m0 - protected_mass(lb, target_ids)) / m0.clamp_min(1e-12)).mean())
        kl = float((base_benign.exp() * (base_benign - ln)).sum(-1).mean())
        rows.append({"layer": key[0], "position": key[1], "mass_before": float(m0.mean()),
                     "mass_drop": drop, "relative_drop": rel, "benign_kl": kl})
    table = pd.DataFrame(rows)
    table["passed_kl"] = table["benign_kl"] <= max_benign_kl
    ok = table[table["passed_kl"]]
    best = ok["mass_drop"].idxmax() if len(ok) else table["benign_kl"].idxmin()
    table["selected"] = False
    table.loc[best, "selected"] = True
    key = (int(table.loc[best, "layer"]), int(table.loc[best, "position"]))
    where = "at the answer token that names the attribute" if pre is not None else "at the first answer token"
    rule = (f"largest drop of the protected tokens' mass {where} on {len(heldout_bias)} held-out bias prompts "
            f"among candidates whose mean next-token KL on {len(heldout_benign)} held-out benign prompts is "
            f"<= {max_benign_kl:g} nats" + ("" if len(ok) else "; no candidate passed, so the smallest KL"))
    return Selection(key=key, direction=candidates[key], table=table, rule=rule)


# --------------------------------------------------------------------------------------
# Single-step gradient direction
# --------------------------------------------------------------------------------------


def target_logit_loss(z: torch.Tensor, target_ids: Sequence[int], kind: str = "mse") -> torch.Tensor:
    """The loss on last-position logits ``z`` (batch, vocab) that pulls the protected tokens up.

    ``mse``: mean over T of ``(z_t - M_t)^2`` with ``M_t = z_t + max_v z_v`` (detached; the
    paper's target). ``kl``: KL(q || softmax z) with q uniform on T. ``ce``: column
    cross-entropy ``-sum_t log p_t``. Averaged over the batch."""
    if not isinstance(kind, str) or kind not in LOSSES:
        raise FairVLMError(f"unknown loss {kind!r}; choose one of {', '.join(LOSSES)}")
    z = V.tensor("z", z, ndim=2, finite=False)
    if not z.is_floating_point():
        raise FairVLMError(f"z={V.show(z)} must be float logits (batch, vocab)")
    if z.shape[1] == 0:
        raise FairVLMError("z has no vocabulary axis: give logits (batch, vocab)")
    if isinstance(target_ids, (list, tuple)) and not target_ids:
        raise FairVLMError("target_ids is empty: give the protected-attribute token ids")
    ids = torch.as_tensor(V.integers("target_ids", target_ids, low=0, high=z.shape[1] - 1), device=z.device)
    zt = z[:, ids]
    if kind == "mse":
        M = (zt + z.max(-1, keepdim=True).values).detach()
        return ((zt - M) ** 2).mean(-1).mean()
    logp = torch.log_softmax(z, -1)[:, ids]
    if kind == "ce":
        return (-logp.sum(-1)).mean()
    n = ids.numel()
    return ((1.0 / n) * (np.log(1.0 / n) - logp)).sum(-1).mean()


def loss_gradients(logits: torch.Tensor, target_ids: Sequence[int]) -> dict:
    """Paper 5.2: the gradient of each loss with respect to the logits ``(batch, vocab)``.

    Returns ``{"grads": {loss: (batch, vocab)}, "norm": {loss: mean L2 norm}, "cosine":
    {(l1, l2): mean cosine}, "target_share": {loss: share of |grad| on T}}``."""
    z0 = V.tensor("logits", logits, ndim=2).detach().float()
    target_ids = V.integers("target_ids", target_ids, low=0, high=z0.shape[1] - 1)
    grads = {}
    for kind in LOSSES:
        z = z0.clone().requires_grad_(True)
        target_logit_loss(z, target_ids, kind).backward()
        grads[kind] = z.grad.detach() * z.shape[0]          # undo the batch mean: per-row gradient
    ids = list(target_ids)
    norm = {k: float(g.norm(dim=-1).mean()) for k, g in grads.items()}
    share = {k: float((g[:, ids].abs().sum(-1) / g.abs().sum(-1).clamp_min(1e-30)).mean()) for k, g in grads.items()}
    cos = {}
    for a, b in itertools.combinations(LOSSES, 2):
        cos[(a, b)] = float(torch.nn.functional.cosine_similarity(grads[a], grads[b], dim=-1).mean())
    return {"grads": grads, "norm": norm, "cosine": cos, "target_share": share}


class _Stop(Exception):
    pass


@contextlib.contextmanager
def _frozen(model):
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


@dataclass
class GradientDirection:
    """Result of :func:`gradient_direction`."""

    direction: torch.Tensor          # (d,) unit, mean over the batch of h(x,u') - h(x,u)
    per_row: torch.Tensor            # (batch, d) unnormalised differences
    layer: int
    position: int
    eps: float
    loss: float
    target_logit_change: float       # mean change of the protected logits after the step (>0: up)
    grad_norm: float
    extra: dict = field(default_factory=dict)


def gradient_direction(lm, enc, target_ids: Sequence[int], *, layer: int, position: int = -1,
                       loss: str = "mse", eps: float | None = None, input_site: str = "image_tokens",
                       check_logits: bool = False) -> GradientDirection:
    """The single-step gradient direction (module docstring) for the prompt-image batch ``enc``.

    Cost: one forward that builds the graph (capturing ``h_l(x, u)`` on the way), one
    backward to the image tokens only, one forward up to layer ``l`` with ``u'``. With
    ``check_logits=True`` a full third forward measures how the protected logits moved
    (``target_logit_change``; otherwise NaN) and ``extra["logp_change_rows"]``, each row's change of
    ``log p(T)``. ``input_site`` is what the step perturbs: the image
    tokens (default), or for a text-only model the token embeddings ``resid_pre.0`` (every
    prompt position; our analogue, the paper has no text-only variant)."""
    V.loaded("lm", lm)
    if not isinstance(enc, dict) and not hasattr(enc, "keys"):
        raise FairVLMError(f"enc={V.show(enc)} must be a batch from lm.inputs(texts, images)")
    if not isinstance(loss, str) or loss not in LOSSES:
        raise FairVLMError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    target_ids = V.integers("target_ids", target_ids, low=0)
    V.integer("layer", layer)
    V.integer("position", position)
    V.flag("check_logits", check_logits)
    if eps is not None:
        V.number("eps", eps, low=0.0, low_open=True)
    if lm.kind == "vlm":
        if "pixel_values" not in enc:
            raise FairVLMError("the batch has no image: build it with lm.inputs(texts, images)")
    elif lm.kind == "causal-lm":
        if input_site == "image_tokens":
            input_site = "resid_pre.0"    # a text model: step on the prompt's token embeddings
    else:
        raise FairVLMError(f"{lm.name} is not a generative model")
    L = lm.n_layers
    if not -L <= layer < L:
        raise FairVLMError(f"layer={layer} is out of range; {lm.name} has {L} language layers")
    layer %= L
    site = f"resid_post.{layer}"
    with _frozen(lm.model), torch.enable_grad():
        with capture(lm, [input_site], grad=True) as gcache, capture(lm, [site]) as hcache:
            # logits at the last position only: the unembedding of the others would be computed
            # and back-propagated through for a loss that never reads them
            z = lm.model(**enc, use_cache=False, **_last_only(lm)).logits[:, -1].float()
        u = gcache[input_site]
        h0 = hcache[site][:, position].double()
        L_val = target_logit_loss(z, target_ids, loss)
        (grad,) = torch.autograd.grad(L_val, u)
    u0 = u.detach()
    step = float(u0.float().std()) if eps is None else float(eps)
    if not np.isfinite(step) or step <= 0:
        raise FairVLMError(f"eps={step!r} must be a positive finite number")
    u1 = (u0 - step * torch.sign(grad)).to(u0.dtype)
    out: dict = {}

    def stop(x):
        out["h1"] = x[:, position].detach().double()
        raise _Stop

    with torch.no_grad(), edit(lm, {input_site: lambda x: u1, site: stop}):
        try:
            lm.model(**enc, use_cache=False)
        except _Stop:
            pass
    if "h1" not in out:
        raise FairVLMError(f"the forward pass never reached {site}")
    diff = (out["h1"] - h0).cpu()
    change = float("nan")
    if check_logits:
        with torch.no_grad(), edit(lm, {input_site: lambda x: u1}):
            z1 = lm.model(**enc, use_cache=False, **_last_only(lm)).logits[:, -1].float()
        ids = list(target_ids)
        change = float((z1[:, ids] - z.detach()[:, ids]).mean())
        # the log-probability of the protected set, log p(T) = logsumexp_t log p_t: unlike a raw
        # logit it does not move when every logit shifts together
        lp = lambda x: torch.logsumexp(torch.log_softmax(x, -1)[:, ids], -1)  # noqa: E731
        out["logp_change_rows"] = (lp(z1) - lp(z.detach())).cpu().numpy()
    return GradientDirection(direction=unit(diff.mean(0)), per_row=diff.float(), layer=layer, position=position,
                             eps=step, loss=float(L_val.detach()), target_logit_change=change,
                             grad_norm=float(grad.float().norm()),
                             extra={k: v for k, v in out.items() if k == "logp_change_rows"})


def loss_direction_effects(lm, enc, target_ids: Sequence[int], *, layer: int) -> dict:
    """For each loss of :data:`LOSSES`: the gradient direction it yields (unit), the protected
    logits' change after its step, and the cosine between the directions."""
    V.loaded("lm", lm)
    V.integer("layer", layer)
    dirs = {k: gradient_direction(lm, enc, target_ids, layer=layer, loss=k, check_logits=True) for k in LOSSES}
    cos = {(a, b): float(dirs[a].direction @ dirs[b].direction) for a, b in itertools.combinations(LOSSES, 2)}
    return {"directions": dirs, "cosine": cos}


def target_ids_for(lm, words: Iterable[str]) -> list[int]:
    """Token ids of the protected words: each word as " word", " Word" and "Word" (start of a
    sentence), kept only where that form is a single token (a multi-token word's first piece
    is often a generic fragment)."""
    V.loaded("lm", lm)
    ids: list[int] = []
    for w in V.strings("words", words):
        for form in (" " + w, " " + w.capitalize(), w.capitalize()):
            toks = lm.tokenizer(form, add_special_tokens=False)["input_ids"]
            if len(toks) == 1 and int(toks[0]) not in ids:
                ids.append(int(toks[0]))
    if not ids:
        raise FairVLMError("none of the protected words is a single token for this tokenizer")
    return ids
