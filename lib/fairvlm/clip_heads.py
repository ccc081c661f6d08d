"""Attention heads of a CLIP vision encoder at the CLS token: decompose, then intervene.

Gomez-Grabowska et al. (ECIR 2026, "Debiasing CLIP with neural interventions") probe the
*per-head contributions* of the last vision layer to the CLS token and edit the heads that
encode gender or ethnicity. This module computes those contributions for any Hugging Face
CLIP-style vision encoder (``CLIPModel``, ``CLIPVisionModel``,
``CLIPVisionModelWithProjection``, a ``VisionTextDualEncoderModel`` with a CLIP vision
tower) and edits them during image encoding.

The decomposition, for encoder layer ``l`` with ``H`` heads of width ``d_h`` (``D = H d_h``)
and CLS position ``t = 0``::

    z        = concatenated head outputs entering self_attn.out_proj, at token t  (B, D)
    c_h      = z[:, h*d_h:(h+1)*d_h] @ W_out[:, h*d_h:(h+1)*d_h].T               (B, D)
    attn_out = sum_h c_h + b_out
    resid_mid = resid_pre + attn_out

``c_h`` is head ``h``'s contribution (the paper's ``x^{(l,h)}``), taken *before* the
out_proj bias; ``resid_pre`` is the hidden state entering the layer (the skip connection)
and ``resid_mid`` the hidden state right after the attention residual add, i.e. the input
of ``layer_norm2`` before the MLP (TransformerLens names). :func:`cls_decomposition`
returns all four so that the identity ``sum_h c_h + b_out + resid_pre == resid_mid`` can be
checked (the test suite does, on random and trained encoders).

Everything works for any batch size: head slices are taken along the feature axis of the
``(B, T, D)`` tensor, never along the batch axis (the authors' open_clip code indexes the
``(B*H, T, d_h)`` tensor by head and is only right for ``B = 1``).

Interventions (:func:`intervene`) are forward hooks on ``out_proj`` that change the CLS row
of its output by ``sum_{h in S} (target_h - c_h)``: replace by a prototype (the mean
contribution over all images or one group's images), zero ablation, or damping
``target_h = alpha * c_h``; optionally only on chosen coordinates ("neurons") of ``c_h``.
Hooks are always removed on exit, also when the body raises.

Heads are numbered from 0 here; the paper numbers them from 1 (its head 12 is our 11).

Fast path for many variants: every edit of the paper acts on the last layer, so the hidden
states entering that layer are the same under every variant. :func:`layer_inputs` caches
them once and :func:`embed_from_layer` runs only the remaining layers, the post-layernorm
and the projection, with the edits applied; the result equals a full forward pass (tested).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fairvlm.errors import FairVLMError
from fairvlm.params import ParameterError

__all__ = [
    "CLSDecomposition",
    "HeadIntervention",
    "HeadPrototypes",
    "attention_shape",
    "cls_decomposition",
    "damping",
    "decomposition_check",
    "embed_from_layer",
    "embed_variants",
    "encoder_layers",
    "head_contributions",
    "head_outputs",
    "head_prototypes",
    "heads_1based",
    "intervene",
    "layer_inputs",
    "neuron_mask",
    "project_heads",
    "prototype_replacement",
    "resolve_layer",
    "standard_variants",
    "vision_tower",
    "zero_ablation",
]

MODES = ("replace", "zero", "damp")


# --------------------------------------------------------------------------- structure
def vision_tower(model: nn.Module) -> nn.Module:
    """The module holding ``embeddings`` and ``encoder.layers`` of the vision encoder.

    Accepts a ``CLIPModel``, ``CLIPVisionModel(WithProjection)``, a
    ``VisionTextDualEncoderModel`` whose vision side is a CLIP vision model, a
    :class:`fairvlm.models.LoadedModel` (its ``.model`` is used), or the tower itself.
    """
    m = getattr(model, "model", None) if not isinstance(model, nn.Module) else model
    if m is None:
        raise FairVLMError(f"expected a torch model or a LoadedModel, got {type(model).__name__}")
    seen = 0
    while not (hasattr(m, "encoder") and hasattr(m, "embeddings")):
        nxt = getattr(m, "vision_model", None)
        if nxt is None or seen > 4:
            raise FairVLMError(
                f"{type(m).__name__} has no CLIP-style vision encoder (looked for "
                "vision_model.encoder.layers); pass a CLIPModel, CLIPVisionModel or a "
                "VisionTextDualEncoderModel with a CLIP vision tower"
            )
        m, seen = nxt, seen + 1
    layers = getattr(m.encoder, "layers", None)
    if not layers or not hasattr(layers[0], "self_attn") or not hasattr(layers[0].self_attn, "out_proj"):
        raise FairVLMError(
            f"{type(m).__name__}.encoder.layers does not hold CLIP attention layers "
            "(self_attn.out_proj missing)"
        )
    return m


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ``nn.ModuleList`` of vision encoder layers."""
    return vision_tower(model).encoder.layers


def resolve_layer(model: nn.Module, layer: int) -> int:
    """Turn ``layer`` (negative counts from the end, -1 = last) into a 0-based index."""
    n = len(encoder_layers(model))
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -n <= layer < n:
        raise ParameterError(f"layer={layer!r} is out of range for a {n}-layer encoder; use -{n}..{n - 1}")
    return int(layer) % n


def attention_shape(model: nn.Module, layer: int = -1) -> tuple[int, int, int]:
    """``(num_heads, head_dim, embed_dim)`` of the attention in encoder layer ``layer``."""
    attn = encoder_layers(model)[resolve_layer(model, layer)].self_attn
    n_heads, head_dim = int(attn.num_heads), int(attn.head_dim)
    embed = int(attn.out_proj.weight.shape[0])
    if n_heads * head_dim != attn.out_proj.weight.shape[1]:
        raise FairVLMError(
            f"out_proj takes {attn.out_proj.weight.shape[1]} features, not heads x head_dim "
            f"= {n_heads} x {head_dim}; this attention is not a standard multi-head layer"
        )
    return n_heads, head_dim, embed


def _check_heads(heads: Iterable[int], n_heads: int) -> tuple[int, ...]:
    out = []
    for h in heads:
        if isinstance(h, bool) or not isinstance(h, (int, np.integer)) or not 0 <= h < n_heads:
            raise ParameterError(
                f"head {h!r} is out of range; heads are numbered 0..{n_heads - 1} "
                "(the paper's head k is our k-1)"
            )
        out.append(int(h))
    if not out:
        raise ParameterError("choose at least one head")
    if len(set(out)) != len(out):
        raise ParameterError(f"heads {out} contain duplicates")
    return tuple(out)


@contextmanager
def _registered(handles: list):
    """Yield, then remove every hook handle in ``handles`` (also on exceptions)."""
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()
        handles.clear()


def _device_dtype(model: nn.Module):
    p = next(vision_tower(model).parameters())
    return p.device, p.dtype


def _check_pixels(pixel_values) -> torch.Tensor:
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
        shape = getattr(pixel_values, "shape", None)
        raise ParameterError(
            f"pixel_values must be a (batch, channels, height, width) tensor; got {shape}"
        )
    if pixel_values.shape[0] == 0:
        raise ParameterError("pixel_values holds no images")
    return pixel_values


# ------------------------------------------------------------------------ decomposition
@dataclass(frozen=True)
class CLSDecomposition:
    """The CLS token of one encoder layer, split into its additive parts.

    ``heads``: (B, H, D) per-head contributions (before the out_proj bias);
    ``out_bias``: (D,) the out_proj bias (zeros if the projection has none);
    ``resid_pre``: (B, D) the hidden state entering the layer (skip connection);
    ``resid_mid``: (B, D) the hidden state after the attention residual add (input of
    ``layer_norm2``, before the MLP). ``reconstruction()`` adds the first three.
    """

    layer: int
    heads: torch.Tensor
    out_bias: torch.Tensor
    resid_pre: torch.Tensor
    resid_mid: torch.Tensor

    def reconstruction(self) -> torch.Tensor:
        return self.heads.sum(dim=1) + self.out_bias + self.resid_pre


def _contrib(z: torch.Tensor, weight: torch.Tensor, n_heads: int, heads=None) -> torch.Tensor:
    """(B, H*d_h) head outputs and (D, H*d_h) out_proj weight -> (B, H', D) contributions."""
    b = z.shape[0]
    d_out = weight.shape[0]
    head_dim = weight.shape[1] // n_heads
    zh = z.reshape(b, n_heads, head_dim)
    wh = weight.reshape(d_out, n_heads, head_dim)
    if heads is not None:
        zh, wh = zh[:, list(heads)], wh[:, list(heads)]
    return torch.einsum("bhk,dhk->bhd", zh, wh)


@torch.no_grad()
def cls_decomposition(model: nn.Module, pixel_values: torch.Tensor, layer: int = -1, token: int = 0) -> CLSDecomposition:
    """Run the vision encoder once and split layer ``layer``'s ``token`` row additively.

    ``pixel_values``: (B, 3, S, S) preprocessed images. See :class:`CLSDecomposition`.
    """
    pixel_values = _check_pixels(pixel_values)
    tower = vision_tower(model)
    li = resolve_layer(model, layer)
    enc_layer = tower.encoder.layers[li]
    attn = enc_layer.self_attn
    n_heads, _, d = attention_shape(model, li)
    store: dict = {}

    def grab_pre(_m, args, kwargs):
        hs = args[0] if args else kwargs["hidden_states"]
        store["pre"] = hs[:, token].detach().clone()

    def grab_z(_m, args):
        store["z"] = args[0][:, token].detach().clone()

    def grab_mid(_m, args):
        store["mid"] = args[0][:, token].detach().clone()

    handles = [
        enc_layer.register_forward_pre_hook(grab_pre, with_kwargs=True),
        attn.out_proj.register_forward_pre_hook(grab_z),
        enc_layer.layer_norm2.register_forward_pre_hook(grab_mid),
    ]
    device, dtype = _device_dtype(model)
    with _registered(handles):
        tower(pixel_values=pixel_values.to(device=device, dtype=dtype))
    w = attn.out_proj.weight.detach()
    bias = attn.out_proj.bias.detach() if attn.out_proj.bias is not None else torch.zeros(d, dtype=w.dtype, device=w.device)
    return CLSDecomposition(
        layer=li, heads=_contrib(store["z"], w, n_heads), out_bias=bias.clone(),
        resid_pre=store["pre"], resid_mid=store["mid"],
    )


@torch.no_grad()
def head_outputs(
    model: nn.Module,
    pixel_values: torch.Tensor,
    layers: Sequence[int] = (-1,),
    *,
    batch_size: int = 64,
    token: int = 0,
    progress: bool = False,
) -> dict[int, torch.Tensor]:
    """Raw per-head attention outputs at ``token`` (before out_proj) for several layers.

    Returns ``{layer_index: (N, H, d_h) float32 CPU tensor}`` (layer indices 0-based). This is
    the compact form (``d_h`` instead of ``D`` numbers per head); :func:`project_heads`
    turns it into contributions. One forward pass per batch serves all layers.
    """
    pixel_values = _check_pixels(pixel_values)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ParameterError(f"batch_size={batch_size!r} must be a positive integer")
    tower = vision_tower(model)
    idx = sorted({resolve_layer(model, layer) for layer in layers})
    shapes = {li: attention_shape(model, li) for li in idx}
    chunks: dict[int, list] = {li: [] for li in idx}
    current: dict = {}
    handles = []
    for li in idx:
        def grab(_m, args, li=li):
            current[li] = args[0][:, token].detach().float().cpu()
        handles.append(tower.encoder.layers[li].self_attn.out_proj.register_forward_pre_hook(grab))
    device, dtype = _device_dtype(model)
    starts = range(0, pixel_values.shape[0], batch_size)
    if progress:
        from fairvlm.progress import bar

        starts = bar(starts, desc="head outputs", unit="batch")
    with _registered(handles):
        for s in starts:
            batch = pixel_values[s : s + batch_size].to(device=device, dtype=dtype)
            tower(pixel_values=batch)
            for li in idx:
                n_heads, head_dim, _ = shapes[li]
                chunks[li].append(current[li].reshape(-1, n_heads, head_dim))
    return {li: torch.cat(chunks[li]) for li in idx}


def project_heads(model: nn.Module, layer: int, z: torch.Tensor, heads: Sequence[int] | None = None) -> torch.Tensor:
    """Per-head contributions ``(N, H', D)`` from raw head outputs ``z`` of shape (N, H, d_h).

    ``heads`` selects a subset (default: all). The out_proj bias is *not* included.
    """
    li = resolve_layer(model, layer)
    n_heads, head_dim, _ = attention_shape(model, li)
    if z.ndim != 3 or z.shape[1:] != (n_heads, head_dim):
        raise ParameterError(f"z must have shape (N, {n_heads}, {head_dim}); got {tuple(z.shape)}")
    if heads is not None:
        heads = _check_heads(heads, n_heads)
    w = encoder_layers(model)[li].self_attn.out_proj.weight.detach().float().cpu()
    return _contrib(z.reshape(z.shape[0], -1).float().cpu(), w, n_heads, heads)


def head_contributions(
    model: nn.Module, pixel_values: torch.Tensor, layer: int = -1, *, batch_size: int = 64, token: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """Per-head contributions to the CLS token of ``layer``: (N, H, D) float32 on CPU.

    Head ``h``'s slice of the attention output times its slice of out_proj, before the
    bias (the paper's Eq. 1). Batched; the result does not depend on ``batch_size``.
    """
    li = resolve_layer(model, layer)
    z = head_outputs(model, pixel_values, (li,), batch_size=batch_size, token=token, progress=progress)[li]
    return project_heads(model, li, z)


@torch.no_grad()
def decomposition_check(model: nn.Module, pixel_values: torch.Tensor, *, n_single: int = 4, layer: int = -1) -> dict:
    """The two checks of the decomposition as numbers, for a chapter to show and assert.

    ``identity_err``: the largest absolute deviation of ``sum_h c_h + b_out + resid_pre``
    from ``resid_mid`` over ``pixel_values`` (:func:`cls_decomposition`), with
    ``identity_scale``, the largest absolute entry of ``resid_mid``, to judge it by;
    ``batch_err``: the largest difference between the contributions of the first
    ``n_single`` images computed one image at a time and as one batch
    (:func:`head_contributions`). Both errors are float rounding when the decomposition is
    right.
    """
    pixel_values = _check_pixels(pixel_values)
    n = pixel_values.shape[0]
    if isinstance(n_single, bool) or not isinstance(n_single, int) or not 1 <= n_single <= n:
        raise ParameterError(f"n_single={n_single!r} must be an integer in [1, {n}] (at most the number of images)")
    dec = cls_decomposition(model, pixel_values, layer=layer)
    one_by_one = torch.cat([head_contributions(model, pixel_values[i:i + 1], layer) for i in range(n_single)])
    batched = head_contributions(model, pixel_values[:n_single], layer)
    return {"identity_err": float((dec.reconstruction() - dec.resid_mid).abs().max()),
            "identity_scale": float(dec.resid_mid.abs().max()),
            "batch_err": float((one_by_one - batched).abs().max())}


# --------------------------------------------------------------------------- prototypes
@dataclass(frozen=True)
class HeadPrototypes:
    """Mean head contributions of one layer: ``means[group]`` is (H, D).

    The key ``"all"`` holds the mean over every image (the paper's "person"/neutral
    prototype); the other keys are group labels. ``counts[group]`` = images averaged.
    """

    layer: int
    means: Mapping[str, torch.Tensor]
    counts: Mapping[str, int]

    def __getitem__(self, group: str) -> torch.Tensor:
        if group not in self.means:
            from fairvlm.errors import unknown

            raise unknown("prototype group", group, self.means)
        return self.means[group]

    @property
    def groups(self) -> list[str]:
        return list(self.means)


def head_prototypes(contributions: torch.Tensor, labels: Sequence | None = None, *, layer: int = -1) -> HeadPrototypes:
    """Prototypes (the paper's Eq. 2) from contributions (N, H, D) and optional group labels.

    ``labels[i]`` is image ``i``'s group (stringified); ``"all"`` is always added. ``layer``
    records which encoder layer the contributions came from (passed on to interventions).
    """
    if contributions.ndim != 3 or contributions.shape[0] == 0:
        raise ParameterError(f"contributions must be a non-empty (N, H, D) tensor; got {tuple(contributions.shape)}")
    c = contributions.float()
    means = {"all": c.mean(dim=0)}
    counts = {"all": int(c.shape[0])}
    if labels is not None:
        lab = np.asarray([str(x) for x in labels])
        if lab.shape[0] != c.shape[0]:
            raise ParameterError(f"{lab.shape[0]} labels for {c.shape[0]} images")
        if "all" in set(lab.tolist()):
            raise ParameterError("'all' is reserved for the mean over every image; rename that group")
        for g in sorted(set(lab.tolist())):
            mask = torch.from_numpy(lab == g)
            means[g] = c[mask].mean(dim=0)
            counts[g] = int(mask.sum())
    return HeadPrototypes(layer=layer, means=means, counts=counts)


# ------------------------------------------------------------------------ interventions
def _head_indices(heads) -> tuple[int, ...]:
    """``heads`` as a tuple of ints; 1.7 or True is an error, not head 1 (``int()`` would
    truncate it silently). A single index is accepted as a one-head list."""
    if isinstance(heads, (int, np.integer)) and not isinstance(heads, bool):
        heads = (heads,)
    if isinstance(heads, (str, bytes)) or not isinstance(heads, Iterable):
        raise ParameterError(f"heads={heads!r} must be a list of head indices (0-based integers)")
    out = []
    for h in heads:
        if isinstance(h, torch.Tensor) and h.ndim == 0 and not (h.is_floating_point() or h.dtype == torch.bool):
            h = int(h)
        if isinstance(h, (bool, np.bool_)) or not isinstance(h, (int, np.integer)):
            raise ParameterError(
                f"head {h!r} in heads={list(heads)!r} is not an integer index; heads are "
                "numbered 0, 1, 2, ... (the paper's head k is our k-1)")
        out.append(int(h))
    return tuple(out)


@dataclass(frozen=True)
class HeadIntervention:
    """An edit of chosen heads' contributions at one token of one encoder layer.

    ``mode``: ``"replace"`` (``values``: (len(heads), D) replacement contributions),
    ``"zero"`` (zero ablation) or ``"damp"`` (multiply by ``alpha`` in [0, 1]).
    ``neurons``: optional boolean mask (len(heads), D); only those coordinates of each
    head's contribution are edited (neuron-level interventions), the rest are kept.
    ``name`` labels tables. ``strength`` (replace only, in (0, 1]): move the contribution
    that far toward the replacement, ``c + strength * (value - c)``; 1 is the full
    replacement (a control edit can be weakened until it changes the embeddings as much as
    the edit it controls for, :func:`match_strength`).
    """

    heads: tuple[int, ...]
    mode: str
    layer: int = -1
    values: torch.Tensor | None = None
    alpha: float | None = None
    neurons: torch.Tensor | None = None
    token: int = 0
    name: str = field(default="")
    strength: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "heads", _head_indices(self.heads))
        if self.mode not in MODES:
            from fairvlm.errors import unknown

            raise unknown("intervention mode", self.mode, MODES)
        if self.mode == "replace" and self.values is None:
            raise ParameterError("a 'replace' intervention needs values (one row per head)")
        st = self.strength
        if isinstance(st, bool) or not isinstance(st, (int, float)) or not 0.0 < float(st) <= 1.0:
            raise ParameterError(f"strength={st!r} must be a number in (0, 1]")
        if self.mode != "replace" and float(st) != 1.0:
            raise ParameterError("strength applies to 'replace' interventions only")
        if self.mode == "damp":
            a = self.alpha
            if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0:
                raise ParameterError(f"alpha={a!r} must be a number in [0, 1]")
        if self.values is not None and (self.values.ndim != 2 or self.values.shape[0] != len(self.heads)):
            raise ParameterError(
                f"values must have one row per head ({len(self.heads)}); got {tuple(self.values.shape)}"
            )
        if self.neurons is not None and (
            self.neurons.dtype != torch.bool or self.neurons.ndim != 2 or self.neurons.shape[0] != len(self.heads)
        ):
            raise ParameterError("neurons must be a boolean (len(heads), D) mask")


def prototype_replacement(prototypes: HeadPrototypes, group: str, heads: Sequence[int], *, neurons=None, name: str | None = None,
                          strength: float = 1.0) -> HeadIntervention:
    """Replace ``heads``' CLS contributions with ``group``'s prototype (``"all"``: the mean);
    ``strength`` < 1 moves them only that far toward it (:class:`HeadIntervention`)."""
    means = prototypes[group]
    heads = _head_indices(heads)
    for h in heads:
        if not 0 <= h < means.shape[0]:
            raise ParameterError(f"head {h} is out of range; the prototypes have {means.shape[0]} heads (0-based)")
    return HeadIntervention(
        heads=heads, mode="replace", layer=prototypes.layer, values=means[list(heads)].clone(),
        neurons=neurons, name=name or f"{group} h{','.join(map(str, heads))}", strength=strength,
    )


def zero_ablation(heads: Sequence[int], *, layer: int = -1, neurons=None, name: str | None = None) -> HeadIntervention:
    """Set ``heads``' CLS contributions to zero."""
    heads = _head_indices(heads)
    return HeadIntervention(heads=heads, mode="zero", layer=layer, neurons=neurons,
                            name=name or f"zero h{','.join(map(str, heads))}")


def damping(heads: Sequence[int], alpha: float, *, layer: int = -1, neurons=None, name: str | None = None) -> HeadIntervention:
    """Scale ``heads``' CLS contributions by ``alpha`` (0: zero ablation, 1: no change)."""
    heads = _head_indices(heads)
    return HeadIntervention(heads=heads, mode="damp", layer=layer, alpha=alpha, neurons=neurons,
                            name=name or f"damp{alpha:g} h{','.join(map(str, heads))}")


def _make_hook(edit: HeadIntervention, out_proj: nn.Linear, n_heads: int):
    w = out_proj.weight.detach()
    d_out = w.shape[0]
    head_dim = w.shape[1] // n_heads
    heads = list(edit.heads)
    values = edit.values.to(device=w.device, dtype=w.dtype) if edit.values is not None else None
    if values is not None and values.shape[1] != d_out:
        raise ParameterError(f"replacement values have width {values.shape[1]}; the layer writes {d_out}")
    mask = edit.neurons.to(w.device) if edit.neurons is not None else None
    if mask is not None and mask.shape[1] != d_out:
        raise ParameterError(f"neuron mask has width {mask.shape[1]}; the layer writes {d_out}")
    tok = edit.token
    # the chosen heads' input columns of out_proj, concatenated: z_S @ W_S^T = sum_{h in S} c_h
    cols = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads]).to(w.device)
    w_s = w.index_select(1, cols)                                        # (D, S*d_h)
    wh = w_s.reshape(d_out, len(heads), head_dim)                        # (D, S, d_h)
    total = values.sum(dim=0) if values is not None else None            # (D,)
    alpha = float(edit.alpha) if edit.alpha is not None else None
    strength = float(edit.strength)

    def hook(_m, args, output):
        zs = args[0][:, tok].index_select(-1, cols)                      # (B, S*d_h)
        if mask is None:  # whole heads: one matmul gives the sum of their contributions
            c_sum = zs @ w_s.T                                           # (B, D)
            if edit.mode == "replace":
                delta = strength * (total - c_sum)
            elif edit.mode == "zero":
                delta = -c_sum
            else:
                delta = (alpha - 1.0) * c_sum
        else:  # chosen coordinates of each head's contribution
            c = torch.einsum("bsk,dsk->bsd", zs.reshape(zs.shape[0], len(heads), head_dim), wh)
            if edit.mode == "replace":
                target = c + strength * (values.unsqueeze(0).expand_as(c) - c)
            elif edit.mode == "zero":
                target = torch.zeros_like(c)
            else:
                target = c * alpha
            delta = torch.where(mask.unsqueeze(0), target - c, torch.zeros_like(c)).sum(dim=1)
        # out_proj's output is a fresh tensor that nothing else holds: edit it in place when no
        # graph is being recorded, on a copy otherwise
        out = output if not torch.is_grad_enabled() else output.clone()
        out[:, tok] += delta.to(out.dtype)
        return out

    return hook


@contextmanager
def intervene(model: nn.Module, *edits: HeadIntervention):
    """Apply head interventions during every forward pass inside the ``with`` block.

    ``edits`` may target different layers or disjoint head sets of one layer; editing the
    same head twice raises (build one intervention, e.g. from an intersectional group's
    prototype). Hooks are removed on exit, also when the body raises. With no edits this
    is a no-op context.
    """
    layers = encoder_layers(model)
    handles: list = []
    used: dict[int, set] = {}
    plan = []
    for e in edits:
        if not isinstance(e, HeadIntervention):
            raise ParameterError(f"expected HeadIntervention objects, got {type(e).__name__}")
        li = resolve_layer(model, e.layer)
        n_heads, _, _ = attention_shape(model, li)
        _check_heads(e.heads, n_heads)
        clash = used.setdefault(li, set()) & set(e.heads)
        if clash:
            raise ParameterError(
                f"heads {sorted(clash)} of layer {li} are edited by two interventions; merge them "
                "into one (e.g. the prototype of the intersectional group)"
            )
        used[li] |= set(e.heads)
        plan.append((li, _make_hook(e, layers[li].self_attn.out_proj, n_heads)))
    for li, hook in plan:
        handles.append(layers[li].self_attn.out_proj.register_forward_hook(hook))
    with _registered(handles):
        yield model


# ------------------------------------------------------------------------------ fast path
@torch.no_grad()
def layer_inputs(
    model: nn.Module, pixel_values: torch.Tensor, layer: int = -1, *, batch_size: int = 64, progress: bool = False
) -> torch.Tensor:
    """Hidden states entering encoder layer ``layer`` (all tokens): (N, T, D) float32 on CPU.

    Feed them to :func:`embed_from_layer` to encode the same images under many edits of
    ``layer`` and later layers without recomputing the earlier ones.
    """
    pixel_values = _check_pixels(pixel_values)
    tower = vision_tower(model)
    li = resolve_layer(model, layer)
    out: list = []

    class _Stop(Exception):
        pass

    def grab(_m, args, kwargs):
        hs = args[0] if args else kwargs["hidden_states"]
        out.append(hs.detach().float().cpu())
        raise _Stop

    device, dtype = _device_dtype(model)
    starts = range(0, pixel_values.shape[0], batch_size)
    if progress:
        from fairvlm.progress import bar

        starts = bar(starts, desc="layer inputs", unit="batch")
    with _registered([tower.encoder.layers[li].register_forward_pre_hook(grab, with_kwargs=True)]):
        for s in starts:
            try:
                tower(pixel_values=pixel_values[s : s + batch_size].to(device=device, dtype=dtype))
            except _Stop:
                pass
    return torch.cat(out)


def _projection(model: nn.Module):
    m = model if isinstance(model, nn.Module) else getattr(model, "model", None)
    return getattr(m, "visual_projection", None)


@torch.no_grad()
def embed_from_layer(
    model: nn.Module, hidden: torch.Tensor, layer: int = -1, *, edits: Sequence[HeadIntervention] = (),
    batch_size: int = 256, normalize: bool = True,
) -> torch.Tensor:
    """Image embeddings from cached :func:`layer_inputs` of ``layer``: (N, d) float32 on CPU.

    Runs encoder layers ``layer..last`` with ``edits`` applied, the post-layernorm of the
    CLS token and the model's ``visual_projection`` (when it has one; a bare vision model
    returns its pooled output), then L2-normalizes (``normalize=True``). Equal to encoding
    the images from scratch under the same edits. Edits of layers before ``layer`` raise,
    since the cache already holds their unedited output.
    """
    tower = vision_tower(model)
    li = resolve_layer(model, layer)
    if hidden.ndim != 3 or hidden.shape[-1] != tower.encoder.layers[li].self_attn.out_proj.weight.shape[0]:
        raise ParameterError(f"hidden must be (N, T, D) layer inputs from layer_inputs(); got {tuple(hidden.shape)}")
    for e in edits:
        if resolve_layer(model, e.layer) < li:
            raise ParameterError(
                f"an edit of layer {resolve_layer(model, e.layer)} cannot act on inputs cached at layer {li}; "
                "cache an earlier layer"
            )
    device, dtype = _device_dtype(model)
    proj = _projection(model)
    outs = []
    with intervene(model, *edits):
        for s in range(0, hidden.shape[0], batch_size):
            h = hidden[s : s + batch_size].to(device=device, dtype=dtype)
            for blk in tower.encoder.layers[li:]:
                h = blk(h, None)
                h = h[0] if isinstance(h, tuple) else h
            pooled = tower.post_layernorm(h[:, 0])
            emb = proj(pooled) if proj is not None else pooled
            emb = emb.float()
            outs.append((torch.nn.functional.normalize(emb, dim=-1) if normalize else emb).cpu())
    return torch.cat(outs)


def embed_variants(model: nn.Module, galleries: Mapping[str, torch.Tensor], variants: Sequence[Mapping], *,
                   layer: int = -1, skip_families: Iterable[str] = ("baseline method",)) -> dict:
    """Image embeddings of every gallery under every variant: ``{variant: {gallery: (N, d)}}``.

    ``galleries``: ``{name: (N, 3, S, S) pixel values}``; ``variants``: dicts with
    ``variant``, ``family`` and ``edits`` (:func:`standard_variants`). The inputs of
    ``layer`` are computed once per gallery (:func:`layer_inputs`) and each variant reruns
    only ``layer`` onwards (:func:`embed_from_layer`, equal to a full forward pass), so every
    edit must act on ``layer`` or later. Variants of a family in ``skip_families`` (methods
    that change embeddings or queries, not the encoder: CLIP-clip, biased prompts) are
    left out.
    """
    if not galleries:
        raise ParameterError("galleries is empty; pass {name: pixel values} for at least one gallery")
    skip = set(skip_families)
    for v in variants:
        if not isinstance(v, Mapping) or not {"variant", "family", "edits"} <= set(v):
            raise ParameterError("each variant must be a dict with the keys variant, family and edits "
                                 "(as standard_variants() returns)")
    todo = [v for v in variants if v["family"] not in skip]
    if resolve_layer(model, layer) == resolve_layer(model, -1) and cache_applies(model, todo):
        caches = {name: cls_cache(model, px) for name, px in galleries.items()}
        return {v["variant"]: {name: embed_from_cache(model, c, v["edits"]) for name, c in caches.items()}
                for v in todo}
    cached = {name: layer_inputs(model, px, layer=layer) for name, px in galleries.items()}
    return {v["variant"]: {name: embed_from_layer(model, h, layer=layer, edits=v["edits"]) for name, h in cached.items()}
            for v in todo}


# ------------------------------------------------------------------ the CLS cache of the last layer
@dataclass(frozen=True)
class CLSCache:
    """What an edit of the *last* encoder layer's heads at the CLS token needs, computed once.

    The head contributions enter the CLS row additively (``resid_mid = resid_pre + b_out +
    sum_h c_h``), and after the last layer's attention nothing mixes tokens any more: the
    MLP acts on each token alone and the embedding reads only the CLS row. So an edit of
    some heads' CLS contributions changes the embedding only through ``resid_mid`` at the
    CLS token, ``resid_mid + sum_{h edited} (c_h' - c_h)``, and every edit can be scored
    from this cache without rerunning the encoder (:func:`embed_from_cache`; equal to the
    hooked forward pass within float32 rounding, tested).

    ``heads``: (N, H, D) per-head contributions; ``resid_mid``: (N, D) unedited hidden
    state after the attention residual add; ``layer``: the (last) layer's index.
    """

    layer: int
    heads: torch.Tensor
    resid_mid: torch.Tensor

    def __len__(self) -> int:
        return int(self.heads.shape[0])

    def subset(self, idx) -> "CLSCache":
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return CLSCache(layer=self.layer, heads=self.heads[idx], resid_mid=self.resid_mid[idx])


@torch.no_grad()
def cls_cache(model: nn.Module, pixel_values: torch.Tensor, *, batch_size: int = 64,
              progress: bool = False) -> CLSCache:
    """One encoder pass over ``pixel_values`` that records the last layer's CLS head
    contributions and ``resid_mid`` (:class:`CLSCache`), float32 on CPU."""
    pixel_values = _check_pixels(pixel_values)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ParameterError(f"batch_size={batch_size!r} must be a positive integer")
    li = resolve_layer(model, -1)
    starts = range(0, pixel_values.shape[0], batch_size)
    if progress:
        from fairvlm.progress import bar

        starts = bar(starts, desc="CLS cache", unit="batch")
    heads, mids = [], []
    for s in starts:
        dec = cls_decomposition(model, pixel_values[s : s + batch_size], layer=li)
        heads.append(dec.heads.float().cpu())
        mids.append(dec.resid_mid.float().cpu())
    return CLSCache(layer=li, heads=torch.cat(heads), resid_mid=torch.cat(mids))


def edit_delta(cache: CLSCache, edits: Sequence[HeadIntervention]) -> torch.Tensor:
    """The change ``edits`` make to the CLS row of ``resid_mid``: (N, D). The same algebra
    as the forward hook of :func:`intervene` (replacement with ``strength``, zero
    ablation, damping; whole heads or the coordinates in ``neurons``)."""
    n, n_heads, d = cache.heads.shape
    delta = torch.zeros(n, d, dtype=cache.heads.dtype)
    used: set = set()
    for e in edits:
        if not isinstance(e, HeadIntervention):
            raise ParameterError(f"expected HeadIntervention objects, got {type(e).__name__}")
        li = e.layer if e.layer >= 0 else e.layer + cache.layer + 1
        if li != cache.layer or e.token != 0:
            raise ParameterError(f"the CLS cache holds layer {cache.layer}, token 0; an edit of layer {e.layer}, "
                                 f"token {e.token} needs the hooked forward pass (embed_from_layer)")
        _check_heads(e.heads, n_heads)
        if used & set(e.heads):
            raise ParameterError(f"heads {sorted(used & set(e.heads))} are edited by two interventions; merge them")
        used |= set(e.heads)
        c = cache.heads[:, list(e.heads)]                                   # (N, S, D)
        if e.mode == "replace":
            v = e.values.to(c.dtype)
            if v.shape[1] != d:
                raise ParameterError(f"replacement values have width {v.shape[1]}; the layer writes {d}")
            target = c + float(e.strength) * (v.unsqueeze(0) - c)
        elif e.mode == "zero":
            target = torch.zeros_like(c)
        else:
            target = c * float(e.alpha)
        change = target - c
        if e.neurons is not None:
            if e.neurons.shape[1] != d:
                raise ParameterError(f"neuron mask has width {e.neurons.shape[1]}; the layer writes {d}")
            change = torch.where(e.neurons.unsqueeze(0), change, torch.zeros_like(change))
        delta += change.sum(dim=1)
    return delta


@torch.no_grad()
def embed_cls(model: nn.Module, resid_mid: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
    """Image embeddings from the last layer's CLS ``resid_mid`` (N, D): the layer's MLP
    with its residual add, the post-layernorm and the visual projection (when the model
    has one), L2-normalized with ``normalize``; float32 on CPU."""
    tower = vision_tower(model)
    blk = tower.encoder.layers[-1]
    device, dtype = _device_dtype(model)
    h = resid_mid.to(device=device, dtype=dtype)
    h = h + blk.mlp(blk.layer_norm2(h))
    pooled = tower.post_layernorm(h)
    proj = _projection(model)
    emb = (proj(pooled) if proj is not None else pooled).float()
    return (torch.nn.functional.normalize(emb, dim=-1) if normalize else emb).cpu()


def embed_from_cache(model: nn.Module, cache: CLSCache, edits: Sequence[HeadIntervention] = (), *,
                     normalize: bool = True) -> torch.Tensor:
    """Image embeddings under ``edits`` of the last layer's CLS head contributions, from a
    :class:`CLSCache` (no encoder pass): ``embed_cls(resid_mid + edit_delta)``."""
    if not isinstance(cache, CLSCache):
        raise ParameterError(f"cache must be a CLSCache (cls_cache()), got {type(cache).__name__}")
    if cache.layer != resolve_layer(model, -1):
        raise ParameterError(f"the cache holds layer {cache.layer}, not the model's last layer")
    mid = cache.resid_mid + edit_delta(cache, edits) if edits else cache.resid_mid
    return embed_cls(model, mid, normalize=normalize)


def cache_applies(model: nn.Module, variants: Sequence[Mapping]) -> bool:
    """Whether every edit of ``variants`` acts on the last layer's CLS token (then
    :func:`embed_from_cache` scores them without an encoder pass)."""
    last = resolve_layer(model, -1)
    return all(resolve_layer(model, e.layer) == last and e.token == 0
               for v in variants for e in v.get("edits", ()))


def edit_displacement(model: nn.Module, hidden: torch.Tensor, edits: Sequence[HeadIntervention], *, layer: int = -1,
                      base: torch.Tensor | None = None, readout: torch.Tensor | None = None,
                      scale: float = 100.0) -> float:
    """How much ``edits`` change the images whose :func:`layer_inputs` (or :class:`CLSCache`,
    for last-layer edits: no encoder pass) are ``hidden``, whatever the images show
    (``base``: their unedited embeddings, when already computed).

    Without ``readout``: the mean of ``1 - cos(edited, unedited)`` embedding. With
    ``readout`` (``(K, d)`` normalized text embeddings, e.g. the zero-shot prompts of the
    scenes): the mean KL divergence of the zero-shot distribution over those K texts
    (softmax of ``scale`` times the cosine), unedited against edited: how much the edit
    changes what the model reads off the image, on a task blind to the protected attribute.
    A content-free measure of an edit's size, for matching a control edit to the edit it
    controls for (:func:`match_strength`)."""
    if isinstance(hidden, CLSCache):
        if base is None:
            base = embed_from_cache(model, hidden)
        edited = embed_from_cache(model, hidden, edits)
    else:
        if base is None:
            base = embed_from_layer(model, hidden, layer=layer)
        edited = embed_from_layer(model, hidden, layer=layer, edits=edits)
    if readout is None:
        return float((1.0 - (edited * base).sum(-1)).mean())
    r = readout.to(base.dtype)
    if r.ndim != 2 or r.shape[1] != base.shape[1]:
        raise ParameterError(f"readout must be (K, {base.shape[1]}) text embeddings, got {tuple(r.shape)}")
    lp = torch.log_softmax(scale * base @ r.T, dim=-1)
    lq = torch.log_softmax(scale * edited @ r.T, dim=-1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


def match_strength(model: nn.Module, hidden: torch.Tensor, prototypes: HeadPrototypes, group: str,
                   heads: Sequence[int], target: float, *, layer: int = -1, base: torch.Tensor | None = None,
                   rel_tol: float = 0.05, max_iter: int = 14, readout: torch.Tensor | None = None,
                   scale: float = 100.0) -> dict:
    """The strength at which ``group``'s prototype on ``heads`` moves the embeddings as far
    as ``target`` (:func:`edit_displacement`, with the same ``readout`` and ``scale``),
    found by bisection on (0, 1].

    Returns ``{"strength", "displacement", "target", "matched"}``; ``matched`` is False
    when even the full replacement moves them less than ``target`` (within ``rel_tol``):
    then strength 1 is returned and the control is weaker than the edit, which the caller
    must say. Used to build a random-head control that changes the model as much as the
    expert edit does, so that a difference between them is about *which* heads, not how
    hard the model was hit."""
    if not np.isfinite(target) or target < 0:
        raise ParameterError(f"target={target!r} must be a finite displacement >= 0")
    if base is None:
        base = embed_from_cache(model, hidden) if isinstance(hidden, CLSCache) else \
            embed_from_layer(model, hidden, layer=layer)

    def disp(st):
        return edit_displacement(model, hidden, [prototype_replacement(prototypes, group, heads, strength=st)],
                                 layer=layer, base=base, readout=readout, scale=scale)

    full = disp(1.0)
    if full <= target * (1 + rel_tol):
        return {"strength": 1.0, "displacement": full, "target": float(target),
                "matched": bool(full >= target * (1 - rel_tol))}
    lo, hi, best = 0.0, 1.0, (1.0, full)
    for _ in range(max_iter):
        mid = (lo + hi) / 2
        d = disp(mid)
        if abs(d - target) < abs(best[1] - target):
            best = (mid, d)
        if abs(d - target) <= rel_tol * target:
            break
        lo, hi = (mid, hi) if d < target else (lo, mid)
    return {"strength": float(best[0]), "displacement": float(best[1]), "target": float(target),
            "matched": bool(abs(best[1] - target) <= rel_tol * max(target, 1e-12))}


def retrieval_map(emb: torch.Tensor, queries: torch.Tensor, relevant: np.ndarray) -> float:
    """Mean average precision of text queries ranking images: ``emb`` (N, d) and
    ``queries`` (Q, d) normalized embeddings, ``relevant`` boolean (Q, N) (e.g. the
    images of the query's scenario). The utility measure of Table 2 (mAP)."""
    from fairvlm.probes import binary_ap

    rel = np.asarray(relevant, dtype=bool)
    sim = (queries.to(emb.dtype) @ emb.T).numpy()
    if rel.shape != sim.shape:
        raise ParameterError(f"relevant must be (Q, N) = {sim.shape}; got {rel.shape}")
    return float(np.mean([binary_ap(rel[i], sim[i]) for i in range(sim.shape[0])]))


def match_utility(model: nn.Module, cache: CLSCache, prototypes: HeadPrototypes | None, group: str | None,
                  heads: Sequence[int], target: float, *, queries: torch.Tensor, relevant: np.ndarray, tol: float = 1e-4,
                  max_iter: int = 12, make=None) -> dict:
    """The strongest replacement of ``heads`` by ``group``'s prototype that costs no more
    utility than ``target``: the drop of retrieval mAP (:func:`retrieval_map` of
    ``queries`` over the cached images, against the unedited model) at most ``target +
    tol``, found by bisection on (0, 1] from the :class:`CLSCache` (no encoder pass).

    A random-head control matched this way leaves the model as intact as the edit it
    controls for (a control that damages the model is no control); where every
    non-expert head carries content the task needs, the matched strength is small, and the
    caller must say so. Returns ``{"strength", "displacement"`` (the mAP drop reached),
    ``"target", "matched"}``; ``matched`` is False only when no strength in (0, 1] reaches
    the target band (then the smallest strength tried is returned).

    ``make(strength) -> HeadIntervention`` replaces the prototype replacement by another
    edit of ``heads`` that is the full edit at strength 1 and none at 0 (e.g. zero ablation
    as ``damping(heads, 1 - strength)``); ``prototypes`` and ``group`` are then unused."""
    if make is None:
        def make(st):
            return prototype_replacement(prototypes, group, heads, strength=st)
    elif not callable(make):
        raise ParameterError(f"make={make!r} must be a function strength -> HeadIntervention")
    if not np.isfinite(target):
        raise ParameterError(f"target={target!r} must be a finite mAP drop")
    if not isinstance(cache, CLSCache):
        raise ParameterError("match_utility scores edits from a CLSCache (cls_cache())")
    m0 = retrieval_map(embed_from_cache(model, cache), queries, relevant)

    def drop(st):
        return m0 - retrieval_map(embed_from_cache(model, cache, [make(st)]), queries, relevant)

    limit = float(target) + tol
    full = drop(1.0)
    if full <= limit:
        return {"strength": 1.0, "displacement": full, "target": float(target), "matched": True}
    lo, hi, best = 0.0, 1.0, None
    for _ in range(max_iter):
        mid = (lo + hi) / 2
        d = drop(mid)
        if d <= limit:
            lo, best = mid, (mid, d)
        else:
            hi = mid
    if best is None:
        return {"strength": hi, "displacement": drop(hi), "target": float(target), "matched": False}
    return {"strength": float(best[0]), "displacement": float(best[1]), "target": float(target), "matched": True}


# ------------------------------------------------------------------------------ the variants of chapter 07
def heads_1based(heads: Iterable[int]) -> str:
    """Heads as the paper writes them, 1-based and comma-separated: ``[2, 10, 11]`` gives
    ``"3,11,12"`` (empty for no heads)."""
    return ",".join(str(int(h) + 1) for h in heads)


def neuron_mask(neuron_table, heads: Sequence[int], width: int, *, min_ap: float) -> torch.Tensor:
    """Boolean (len(heads), width) mask of the *expert neurons*: coordinates of ``heads``
    whose one-feature probe reaches AP above ``min_ap`` (the paper's 0.42, Table 3).
    ``neuron_table``: :func:`fairvlm.probes.probe_neurons` table (``head, neuron, ap``)."""
    if not 0.0 <= float(min_ap) <= 1.0:
        raise ParameterError(f"min_ap={min_ap!r} must lie in [0, 1]")
    mask = torch.zeros(len(heads), int(width), dtype=torch.bool)
    sel = neuron_table[neuron_table["ap"] > float(min_ap)]
    for i, h in enumerate(heads):
        idx = np.array(sel.loc[sel["head"] == h, "neuron"], dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= width):
            raise ParameterError(f"neuron index out of range 0..{width - 1} for head {h}")
        mask[i, torch.from_numpy(idx)] = True
    return mask


def standard_variants(protos: Mapping[str, HeadPrototypes], gender_experts: Sequence[int],
                      race_experts: Sequence[int], *, layer: int, damp_alpha: float,
                      neurons: torch.Tensor | None = None, control_heads: Sequence[int] = ()) -> list[dict]:
    """The interventions of the CLIP-heads chapter, one dict per variant (``variant``,
    ``family``, ``heads`` 1-based string, ``edits``; ``prototype`` where one is used).

    ``protos``: ``{"gender", "race", "group"}`` prototypes (:func:`head_prototypes` with
    gender, race and gender|race labels). Families: baseline; prototype / zero / damping on
    all gender experts (Table 2); the same per single expert head; the male prototype on
    ``control_heads`` (as many non-expert heads: the control a head-level effect is
    measured against); neuron-level replacement, zeroing and damping on the expert neurons
    ``neurons`` (Table 3); race and intersectional prototypes; two embedding baselines
    (CLIP-clip, biased prompts) with no head edit.
    """
    G, R = list(gender_experts), list(race_experts)
    union = sorted(set(G) | set(R))
    h1 = heads_1based

    def name_of(grp):
        return {"all": "person"}.get(grp, grp)

    pg = protos["gender"]
    out = [{"variant": "none", "family": "baseline", "heads": "", "edits": []}]
    for grp in ("all", "male", "female"):
        out.append({"variant": f"{name_of(grp)} (experts)", "family": "prototype", "prototype": name_of(grp),
                    "heads": h1(G), "edits": [prototype_replacement(pg, grp, G)]})
    out.append({"variant": "zero (experts)", "family": "zero", "heads": h1(G), "edits": [zero_ablation(G, layer=layer)]})
    out.append({"variant": f"damp {damp_alpha:g} (experts)", "family": "damping", "heads": h1(G),
                "edits": [damping(G, damp_alpha, layer=layer)]})
    for h in G:
        for grp in ("all", "male", "female"):
            out.append({"variant": f"{name_of(grp)} (h:{h + 1})", "family": "single head", "prototype": name_of(grp),
                        "heads": h1([h]), "edits": [prototype_replacement(pg, grp, [h])]})
    if control_heads:
        out.append({"variant": "male (control heads)", "family": "control", "prototype": "male",
                    "heads": h1(control_heads), "edits": [prototype_replacement(pg, "male", list(control_heads))]})
    if neurons is not None and bool(neurons.any()):
        for grp in ("all", "male"):
            out.append({"variant": f"{name_of(grp)} (expert neurons)", "family": "neurons", "prototype": name_of(grp),
                        "heads": h1(G), "edits": [prototype_replacement(pg, grp, G, neurons=neurons)]})
        out.append({"variant": "zero (expert neurons)", "family": "neurons", "heads": h1(G),
                    "edits": [zero_ablation(G, layer=layer, neurons=neurons)]})
        out.append({"variant": f"damp {damp_alpha:g} (expert neurons)", "family": "neuron damping", "heads": h1(G),
                    "edits": [damping(G, damp_alpha, layer=layer, neurons=neurons)]})
    if "white" in protos["race"].groups:
        out.append({"variant": "white (race experts)", "family": "prototype", "prototype": "white",
                    "heads": h1(R), "edits": [prototype_replacement(protos["race"], "white", R)]})
    if "male|white" in protos["group"].groups:
        out.append({"variant": "male+white (union)", "family": "prototype", "prototype": "male+white",
                    "heads": h1(union), "edits": [prototype_replacement(protos["group"], "male|white", union)]})
    out.append({"variant": "CLIP-clip", "family": "baseline method", "heads": "", "edits": []})
    out.append({"variant": "biased prompts", "family": "baseline method", "heads": "", "edits": []})
    return out

