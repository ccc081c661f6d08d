"""Read and edit a model's insides at named sites: ``capture`` and ``edit`` context managers.

Sites (TransformerLens names; ``L`` is a layer index, negative counts from the end, ``*``
expands to every layer)::

    resid_pre.L   stream entering decoder layer L                      (batch, seq, d)
    attn_out.L    what attention writes into the stream (after any gate, before the add)
    resid_mid.L   stream between attention and MLP = resid_pre.L + attn_out.L
    mlp_out.L     what the MLP writes into the stream (after any gate / mask, before the add)
    resid_post.L  stream leaving layer L = resid_mid.L + mlp_out.L     (= resid_pre.L+1)
    attn_z.L      input of the attention output projection, split per head
                  (batch, seq, n_heads, head_dim); head h's contribution to attn_out is
                  z[..., h, :] @ W_O[:, h*hd:(h+1)*hd].T (bias excluded)
    vision.<site> the same sites on the vision encoder's layers (CLIP-style encoders: attn_out is
                  the self-attention output before the residual add). Qwen2(.5)-VL vision
                  tensors have no batch axis: (n_patches_total, d); Qwen2.5-VL's are in its
                  window order. Mllama: local-transformer layers, then the global ones.
    image_tokens  the projector output the language model receives (see
                  ``LoadedModel.projector``; LLaVA: (n_images, n_patches, d_text), Qwen2-VL:
                  (n_tokens_all_images, d_text); CLIP families: the image embedding before
                  normalisation).

"Language decoder" means the text encoder for CLIP models. Post-LN encoders (BERT, so
MiniLM and the testbed-clip text tower) have only ``resid_pre``, ``resid_post`` and ``attn_z``.

``with capture(lm, ["resid_post.*", "image_tokens"]) as cache: lm.model(**enc)`` fills
``cache`` (a dict: site -> tensor) with detached tensors from the most recent forward call.
Options: ``steps=True`` keeps every forward call instead (site -> list of tensors, in call
order): inside ``model.generate`` with a KV cache the first entry is the prefill, shape
(batch, prompt_len, d), then one (batch, 1, d) entry per generated token
(``torch.cat(cache[site], dim=1)`` gives the whole sequence's stream, without the last token,
whose stream is never computed). ``grad=True`` keeps the autograd graph: the stored tensors
are the ones the forward pass uses (a non-leaf with ``retain_grad``, or, when the weights are
frozen, a fresh leaf with ``requires_grad`` substituted into the pass), so
``loss.backward()`` fills ``cache[site].grad`` (a gradient step on ``image_tokens``).

``with edit(lm, {"resid_post.3": fn}): ...`` replaces the value at a site by ``fn(value)``
(same shape) in every forward call inside the block, including every step of ``generate``.
For ``resid_mid`` and for gated layers (Mllama's cross-attention layers and global vision
layers), the edit is realised by adding ``fn(value) - value`` to the stream (exact up to one
float rounding); elsewhere the value is replaced as is. An edit that returns its input leaves
the model bitwise unchanged.

At one site, hooks of nested contexts run in the order the contexts were entered (a capture
opened inside an edit sees the edited value). All hooks are plain PyTorch hooks, placed in
front of any transformers installs (so ``output_hidden_states`` sees edits), and removed when
the last context exits, also when the body raises.

``logit_lens(lm, resid)`` decodes any residual (..., d) through the final norm and
unembedding; ``logit_lens_top`` gives the top tokens as strings.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch

from fairvlm.errors import FairVLMError, UnknownNameError

__all__ = ["capture", "edit", "logit_lens", "logit_lens_top", "site_names", "LAYER_SITES"]

LAYER_SITES = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post", "attn_z")
_POST_LN_SITES = ("resid_pre", "resid_post", "attn_z")


# --------------------------------------------------------------------------------------
# Layer anatomy: where each site lives inside one layer class
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    attn: str | None          # submodule whose output[0] is the raw attention output
    mid_norm: str | None      # submodule whose input is resid_mid
    mlp: str | None           # submodule whose output is the raw MLP output
    o_proj: str | None        # attention output projection (attn_z is its input)
    attn_gate: Callable | None = None   # (layer, state, raw) -> contribution written to the stream
    mlp_gate: Callable | None = None
    post_ln: bool = False


def _mllama_vision_attn_gate(layer, state, raw):
    return layer.gate_attn.tanh() * raw if layer.is_gated else raw


def _mllama_vision_mlp_gate(layer, state, raw):
    return layer.gate_ffn.tanh() * raw if layer.is_gated else raw


def _mllama_cross_attn_gate(layer, state, raw):
    return layer.cross_attn_attn_gate.tanh() * raw


def _mllama_cross_mlp_gate(layer, state, raw):
    mask = state.get("full_text_row_masked_out_mask")
    if mask is not None:
        raw = mask[:, 0] * raw
    return layer.cross_attn_mlp_gate.tanh() * raw


_LLAMA_LIKE = _Spec("self_attn", "post_attention_layernorm", "mlp", "self_attn.o_proj")
_CLIP_LIKE = _Spec("self_attn", "layer_norm2", "mlp", "self_attn.out_proj")
_QWEN_VISION = _Spec("attn", "norm2", "mlp", "attn.proj")
_SPECS = {
    "LlamaDecoderLayer": _LLAMA_LIKE,
    "MistralDecoderLayer": _LLAMA_LIKE,
    "Qwen2DecoderLayer": _LLAMA_LIKE,
    "Qwen2VLDecoderLayer": _LLAMA_LIKE,
    "Qwen2_5_VLDecoderLayer": _LLAMA_LIKE,
    "MllamaSelfAttentionDecoderLayer": _LLAMA_LIKE,
    "MllamaCrossAttentionDecoderLayer": _Spec("cross_attn", "post_attention_layernorm", "mlp", "cross_attn.o_proj",
                                              _mllama_cross_attn_gate, _mllama_cross_mlp_gate),
    "MllamaVisionEncoderLayer": _Spec("self_attn", "post_attention_layernorm", "mlp", "self_attn.o_proj",
                                      _mllama_vision_attn_gate, _mllama_vision_mlp_gate),
    "CLIPEncoderLayer": _CLIP_LIKE,
    "SiglipEncoderLayer": _CLIP_LIKE,
    "Qwen2VLVisionBlock": _QWEN_VISION,
    "Qwen2_5_VLVisionBlock": _QWEN_VISION,
    "ViTLayer": _Spec("attention", "layernorm_after", "output.dense", "attention.output.dense"),
    "BertLayer": _Spec(None, None, None, "attention.output.dense", post_ln=True),
}


def _spec(layer) -> _Spec:
    name = type(layer).__name__
    if name not in _SPECS:
        raise FairVLMError(f"fairvlm.hooks does not know the layer type {name}; supported: "
                           + ", ".join(sorted(_SPECS)))
    return _SPECS[name]


def _sub(module, path: str):
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _head_dim(layer, spec: _Spec) -> int:
    attn = _sub(layer, spec.o_proj.rsplit(".", 1)[0]) if "." in spec.o_proj else layer
    for obj in (attn, getattr(attn, "self", None)):
        for key in ("head_dim", "attention_head_size"):
            val = getattr(obj, key, None) if obj is not None else None
            if isinstance(val, int):
                return val
    raise FairVLMError(f"cannot find the head size of {type(attn).__name__}")


# --------------------------------------------------------------------------------------
# Site names
# --------------------------------------------------------------------------------------

_SITE_RE = re.compile(r"^(vision\.)?(resid_pre|attn_out|resid_mid|mlp_out|resid_post|attn_z)\.(-?\d+|\*)$")


def site_names(lm, kind: str = "resid_post", *, vision: bool = False) -> list[str]:
    """All sites of one kind, layer by layer, e.g. ``site_names(lm, "resid_post")``."""
    if not isinstance(kind, str) or kind not in LAYER_SITES:
        raise UnknownNameError(f"unknown site kind {kind!r}; choose one of: {', '.join(LAYER_SITES)}")
    _check_lm(lm)
    vision = _flag("vision", vision)
    n = lm.n_vision_layers if vision else lm.n_layers
    prefix = "vision." if vision else ""
    return [f"{prefix}{kind}.{i}" for i in range(n)]


def _parse(lm, site: str):
    """-> list of (user_name, key) with key = ("image_tokens",) or (prefix, kind, layer_idx)."""
    if not isinstance(site, str):
        raise FairVLMError(f"a site name must be a string, not {type(site).__name__}")
    if site == "image_tokens":
        if lm.projector() is None:
            raise FairVLMError(f"{lm.name} has no projector, so no 'image_tokens' site")
        return [(site, ("image_tokens",))]
    m = _SITE_RE.match(site)
    if not m:
        raise UnknownNameError(
            f"unknown site {site!r}; sites are <kind>.<layer> or vision.<kind>.<layer> with kind one of "
            f"{', '.join(LAYER_SITES)} and layer an index or '*', or 'image_tokens'")
    prefix = "vision" if m.group(1) else "text"
    kind, idx = m.group(2), m.group(3)
    layers = lm.vision_layers() if prefix == "vision" else lm.decoder_layers()
    n = len(layers)
    if n == 0:
        raise FairVLMError(f"{lm.name} has no vision encoder, so no site {site!r}")
    if idx == "*":
        out = [(f"{m.group(1) or ''}{kind}.{i}", (prefix, kind, i)) for i in range(n)]
    else:
        i = int(idx)
        if not -n <= i < n:
            raise FairVLMError(f"site {site!r}: layer {i} is out of range; {lm.name} has {n} "
                               f"{'vision' if prefix == 'vision' else 'language'} layers (0..{n - 1})")
        out = [(site, (prefix, kind, i % n))]
    for name, key in out:
        spec = _spec(layers[key[2]])
        if spec.post_ln and kind not in _POST_LN_SITES:
            raise FairVLMError(
                f"site {name!r}: {type(layers[key[2]]).__name__} is a post-LN layer (the norm sits on the "
                f"stream), so attn_out / resid_mid / mlp_out are not residual-stream sites; use "
                f"{', '.join(_POST_LN_SITES)}")
    return out


# --------------------------------------------------------------------------------------
# Contexts and the per-model registry that owns the torch hooks
# --------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Context:
    edits: dict = field(default_factory=dict)     # key -> list of fns
    captures: dict = field(default_factory=dict)  # key -> list of user names
    out: dict = field(default_factory=dict)
    steps: bool = False
    grad: bool = False
    check_finite: bool = True
    pending: dict = field(default_factory=dict)   # key -> device flag: the finite check, deferred off the CPU

    def apply(self, key, value: torch.Tensor) -> torch.Tensor:
        for fn in self.edits.get(key, ()):
            new = fn(value)
            if not isinstance(new, torch.Tensor) or new.shape != value.shape:
                raise FairVLMError(
                    f"an edit at {_key_name(key)} must return a tensor of shape {tuple(value.shape)}, got "
                    f"{tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__}")
            if new.dtype != value.dtype or new.device != value.device:
                # a float64 result would fail deep inside the next matmul; an integer one
                # would silently truncate the activations
                raise FairVLMError(
                    f"an edit at {_key_name(key)} must return {value.dtype} on {value.device} (as "
                    f"its input), got {new.dtype} on {new.device}; end the function with "
                    f".to(x.dtype) or build new tensors with dtype=x.dtype, device=x.device")
            # an edit that hands back its input (a recorder, a no-op) cannot have made a finite
            # value non-finite: the check below compares a tensor with itself and is skipped
            if self.check_finite and new is not value:
                if new.device.type == "cpu" and not _DEFER_FINITE_CHECK:
                    if not bool(torch.isfinite(new).all()) and bool(torch.isfinite(value).all()):
                        raise FairVLMError(_not_finite_message([key]))
                else:
                    # on an accelerator, reading the flag here would stall the stream at every
                    # hooked site; keep it on the device and read it once, when the block ends
                    bad = torch.isfinite(value).all() & ~torch.isfinite(new).all()
                    prev = self.pending.get(key)
                    self.pending[key] = bad if prev is None else (prev | bad)
            value = new
        names = self.captures.get(key)
        if names:
            if self.grad and torch.is_grad_enabled():
                if not value.requires_grad:
                    value = value.detach().requires_grad_(True)
                else:
                    value.retain_grad()
                stored = value
            else:
                stored = value.detach()
            for name in names:
                if self.steps:
                    self.out.setdefault(name, []).append(stored)
                else:
                    self.out[name] = stored
        return value


# tests set this to exercise the deferred (accelerator) path of the finite check on the CPU
_DEFER_FINITE_CHECK = False


def _not_finite_message(keys, deferred: bool = False) -> str:
    where = ", ".join(_key_name(k) for k in keys)
    when = (" (found when the block ended: on an accelerator the check runs on the device and is "
            "read once, so the forward passes inside the block completed)") if deferred else ""
    return (f"the edit at {where} returned NaN or infinite values from a finite input (a division "
            f"by a zero norm?){when}; pass check_finite=False to edit() to allow it")


def _key_name(key) -> str:
    if key[0] == "image_tokens":
        return "image_tokens"
    prefix, kind, i = key
    return f"{'vision.' if prefix == 'vision' else ''}{kind}.{i}"


def _split(out):
    """(tensor, container) for a module output that is a tensor or a tuple/list led by one."""
    if isinstance(out, torch.Tensor):
        return out, None
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0], out
    raise FairVLMError(f"cannot hook a module output of type {type(out).__name__}")


def _join(new, container):
    if container is None:
        return new
    return type(container)((new, *container[1:])) if isinstance(container, tuple) else [new, *container[1:]]


class _Registry:
    """All live contexts of one model, dispatched by one set of torch hooks."""

    def __init__(self, lm):
        self.lm = lm
        self.contexts: list[_Context] = []
        self.handles: list = []
        self.state: dict = {}

    # which keys are wanted by any context
    def _wanted(self) -> set:
        keys = set()
        for ctx in self.contexts:
            keys.update(ctx.edits)
            keys.update(ctx.captures)
        return keys

    def _run(self, key, value):
        for ctx in self.contexts:
            if key in ctx.edits or key in ctx.captures:
                value = ctx.apply(key, value)
        return value

    def add(self, ctx):
        self.contexts.append(ctx)
        self._reinstall()

    def remove(self, ctx):
        if ctx in self.contexts:
            self.contexts.remove(ctx)
        self._reinstall()

    def _clear(self):
        for h in self.handles:
            h.remove()
        self.handles = []
        self.state = {}

    def _reinstall(self):
        self._clear()
        wanted = self._wanted()
        if not wanted:
            return
        try:
            self._install(wanted)
        except BaseException:
            self._clear()
            raise

    def _hook(self, module, kind, fn):
        if kind == "pre":
            h = module.register_forward_pre_hook(fn, with_kwargs=True, prepend=True)
        else:
            h = module.register_forward_hook(fn, with_kwargs=True, prepend=True)
        self.handles.append(h)

    def _install(self, wanted):
        if ("image_tokens",) in wanted:
            key = ("image_tokens",)

            def proj_hook(module, args, kwargs, output, key=key):
                value, container = _split(output)
                new = self._run(key, value)
                return None if new is value else _join(new, container)

            self._hook(self.lm.projector(), "post", proj_hook)
        by_layer: dict = {}
        for key in wanted:
            if key[0] != "image_tokens":
                by_layer.setdefault((key[0], key[2]), set()).add(key[1])
        # before the layers' own hooks: hooks are prepended, so these run after them
        self._install_skipped(by_layer)
        for (prefix, idx), kinds in sorted(by_layer.items()):
            layers = self.lm.vision_layers() if prefix == "vision" else self.lm.decoder_layers()
            self._install_layer(prefix, idx, layers[idx], kinds)

    def _install_skipped(self, by_layer):
        """Mllama's text model skips a cross-attention layer outright when there is no image
        (no cross-attention states and none cached), so that layer's hooks never fire. Such a
        layer is the identity on the stream: resid_pre = resid_mid = resid_post = the stream,
        attn_out = mlp_out = 0. A hook after the preceding self-attention layer runs the sites
        of every skipped layer that follows it, so captures and edits see the same sites with
        or without an image (an edit of a zero write adds ``fn(0)`` to the stream)."""
        layers = self.lm.decoder_layers()
        cross = [i for (prefix, i) in by_layer if prefix == "text"
                 and type(layers[i]).__name__ == "MllamaCrossAttentionDecoderLayer"]
        if not cross:
            return
        from transformers.models.mllama import modeling_mllama as mm

        flags: dict = {}

        def text_pre(module, args, kwargs):
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            no_states = kwargs.get("cross_attention_states") is None
            flags["skipped"] = {i for i in cross if no_states
                                and not mm._has_cached_cross_attention_states(cache, i)}
            return None

        self._hook(self.lm.language_model(), "pre", text_pre)
        by_prev: dict = {}
        for i in sorted(cross):
            j = i - 1
            while j >= 0 and type(layers[j]).__name__ == "MllamaCrossAttentionDecoderLayer":
                j -= 1
            if j < 0:
                raise FairVLMError(f"layer {i} is a cross-attention layer with no self-attention layer before it")
            by_prev.setdefault(j, []).append(i)
        for j, idxs in by_prev.items():
            def prev_post(module, args, kwargs, output, idxs=idxs):
                skipped = [i for i in idxs if i in flags.get("skipped", ())]
                if not skipped:
                    return None
                value, container = _split(output)
                new = value
                for i in skipped:
                    new = self._run_skipped(i, by_layer.get(("text", i), set()), new)
                return None if new is value else _join(new, container)

            self._hook(layers[j], "post", prev_post)

    def _run_skipped(self, idx, kinds, x):
        """The sites of a skipped (identity) layer ``idx`` on stream ``x``; returns the stream out."""
        k = lambda kind: ("text", kind, idx)  # noqa: E731
        if "resid_pre" in kinds:
            x = self._run(k("resid_pre"), x)
        for write, mid in (("attn_out", "resid_mid"), ("mlp_out", None)):
            if write in kinds:
                zero = torch.zeros_like(x)
                new = self._run(k(write), zero)
                if new is not zero:
                    x = x + new
            if mid is not None and mid in kinds:
                x = self._run(k(mid), x)
        if "resid_post" in kinds:
            x = self._run(k("resid_post"), x)
        return x

    def _install_layer(self, prefix, idx, layer, kinds):
        spec = _spec(layer)
        st: dict = {}
        self.state[(prefix, idx)] = st
        k = lambda kind: (prefix, kind, idx)  # noqa: E731
        gated = spec.attn_gate is not None or spec.mlp_gate is not None

        def layer_pre(module, args, kwargs):
            st.clear()
            st["full_text_row_masked_out_mask"] = kwargs.get("full_text_row_masked_out_mask")
            if "resid_pre" not in kinds:
                return None
            if args:
                value, rest = args[0], args[1:]
                new = self._run(k("resid_pre"), value)
                return None if new is value else ((new, *rest), kwargs)
            value = kwargs["hidden_states"]
            new = self._run(k("resid_pre"), value)
            if new is value:
                return None
            return args, {**kwargs, "hidden_states": new}

        if "resid_pre" in kinds or gated:  # (otherwise the state is cleared by layer_post)
            self._hook(layer, "pre", layer_pre)

        if "attn_out" in kinds:
            def attn_post(module, args, kwargs, output):
                raw, container = _split(output)
                if spec.attn_gate is None:
                    new = self._run(k("attn_out"), raw)
                    return None if new is raw else _join(new, container)
                contrib = spec.attn_gate(layer, st, raw)
                new = self._run(k("attn_out"), contrib)
                if new is not contrib:
                    st["delta_mid"] = new - contrib
                return None

            self._hook(_sub(layer, spec.attn), "post", attn_post)

        if "resid_mid" in kinds or ("attn_out" in kinds and spec.attn_gate is not None):
            def norm_pre(module, args, kwargs):
                x = args[0]
                m = x + st["delta_mid"] if "delta_mid" in st else x
                if "resid_mid" in kinds:
                    m = self._run(k("resid_mid"), m)
                if m is x:
                    return None
                st["delta_post"] = st.get("delta_post", 0) + (m - x)
                return (m, *args[1:]), kwargs

            self._hook(_sub(layer, spec.mid_norm), "pre", norm_pre)

        if "mlp_out" in kinds:
            def mlp_post(module, args, kwargs, output):
                raw, container = _split(output)
                if spec.mlp_gate is None:
                    new = self._run(k("mlp_out"), raw)
                    return None if new is raw else _join(new, container)
                contrib = spec.mlp_gate(layer, st, raw)
                new = self._run(k("mlp_out"), contrib)
                if new is not contrib:
                    st["delta_post"] = st.get("delta_post", 0) + (new - contrib)
                return None

            self._hook(_sub(layer, spec.mlp), "post", mlp_post)

        if "attn_z" in kinds:
            hd = _head_dim(layer, spec)

            def oproj_pre(module, args, kwargs):
                x = args[0] if args else kwargs["input"]
                z = x.reshape(*x.shape[:-1], x.shape[-1] // hd, hd)
                new = self._run(k("attn_z"), z)
                if new is z:
                    return None
                new = new.reshape(x.shape)
                return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "input": new})

            self._hook(_sub(layer, spec.o_proj), "pre", oproj_pre)

        needs_post = ("resid_post" in kinds or "resid_mid" in kinds
                      or (gated and ("attn_out" in kinds or "mlp_out" in kinds)))
        if needs_post:
            def layer_post(module, args, kwargs, output):
                value, container = _split(output)
                new = value
                if "delta_post" in st:
                    new = new + st["delta_post"]
                if "resid_post" in kinds:
                    new = self._run(k("resid_post"), new)
                st.clear()
                return None if new is value else _join(new, container)

            self._hook(layer, "post", layer_post)


_REGISTRIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _registry(lm) -> _Registry:
    reg = _REGISTRIES.get(lm.model)
    if reg is None or reg.lm is not lm and not reg.contexts:
        reg = _Registry(lm)
        _REGISTRIES[lm.model] = reg
    return reg


class _Session:
    """The context manager ``capture`` / ``edit`` return: used once, in one ``with``."""

    def __init__(self, lm, ctx: _Context, what: str, value):
        self.lm, self.ctx, self.what, self.value = lm, ctx, what, value
        self.state = "new"

    def __enter__(self):
        if self.state != "new":
            raise FairVLMError(
                f"this {self.what}(...) object was already used in a `with` block; call "
                f"fairvlm.hooks.{self.what}(lm, ...) again for each block (it is cheap)")
        _registry(self.lm).add(self.ctx)
        self.state = "open"
        return self.value

    def __exit__(self, *exc):
        _registry(self.lm).remove(self.ctx)
        self.state = "closed"
        pending, self.ctx.pending = self.ctx.pending, {}
        if pending and exc[0] is None:
            bad = [k for k, flag in pending.items() if bool(flag)]
            if bad:
                raise FairVLMError(_not_finite_message(bad, deferred=True))
        return False


def _activate(lm, ctx: _Context, what: str = "capture"):
    return _Session(lm, ctx, what, ctx.out if what == "capture" else None)


def _check_lm(lm):
    if not hasattr(lm, "decoder_layers") or not hasattr(lm, "model"):
        raise FairVLMError(f"lm={_show(lm)}: fairvlm.hooks needs a LoadedModel from fairvlm.models.load(...)")


def _show(value) -> str:
    from fairvlm.validate import show

    return show(value)


def _flag(name: str, value) -> bool:
    from fairvlm.validate import flag

    return flag(name, value)


def capture(lm, sites: Iterable[str] | str, *, steps: bool = False, grad: bool = False):
    """Context manager recording the values at ``sites``; yields a dict site -> tensor.

    ``sites``: a site name or a list of them (``"resid_post.*"`` expands to every layer).
    ``steps``: keep a list with one tensor per forward call (see module docstring; needed to
    read every step of ``generate``); otherwise each site holds its most recent call's tensor.
    ``grad``: keep the autograd graph (see module docstring); default stores detached tensors.
    """
    _check_lm(lm)
    if isinstance(sites, str):
        sites = [sites]
    from fairvlm.validate import sequence

    sites = sequence("sites", sites)
    ctx = _Context(steps=_flag("steps", steps), grad=_flag("grad", grad))
    for site in sites:
        for name, key in _parse(lm, site):
            ctx.captures.setdefault(key, []).append(name)
    return _activate(lm, ctx)


def edit(lm, edits: Mapping[str, Callable[[torch.Tensor], torch.Tensor]], *, check_finite: bool = True):
    """Context manager applying ``fn(value) -> value`` at each site of ``edits`` (see module doc).

    ``"resid_post.*": fn`` applies ``fn`` at every layer. Yields ``None``. Each result must
    keep its input's shape, dtype and device, and (unless ``check_finite=False``, which
    saves one reduction per site and call) be finite where the input was; otherwise a
    :class:`~fairvlm.errors.FairVLMError` names the site. On the CPU that error comes from
    the forward pass itself; on an accelerator the check stays on the device (reading it at
    every site would stall the stream at each hook) and the error comes when the block ends.
    """
    _check_lm(lm)
    if not isinstance(edits, Mapping):
        raise FairVLMError(f"edits={_show(edits)}: edit() takes a dict {{site: fn}}")
    ctx = _Context(check_finite=_flag("check_finite", check_finite))
    for site, fn in edits.items():
        if not callable(fn) or isinstance(fn, str):
            raise FairVLMError(f"edits[{site!r}]={_show(fn)}: the edit for {site!r} must be a function tensor -> tensor")
        for _, key in _parse(lm, site):
            ctx.edits.setdefault(key, []).append(fn)
    return _activate(lm, ctx, "edit")


# --------------------------------------------------------------------------------------
# Logit lens
# --------------------------------------------------------------------------------------


def logit_lens(lm, resid: torch.Tensor, *, apply_norm: bool = True) -> torch.Tensor:
    """Logits ``(..., vocab)`` of residual(s) ``resid`` ``(..., d)``: ``unembed(final_norm(resid))``.

    This is what the model would predict if the stream stopped at that point. ``apply_norm=False``
    skips the final norm (for a residual that is already normed, e.g. ``hidden_states[-1]``).
    Runs without gradient unless gradients are enabled and ``resid`` requires them.
    """
    _check_lm(lm)
    apply_norm = _flag("apply_norm", apply_norm)
    head = lm.unembed()
    if head is None:
        raise FairVLMError(f"{lm.name} has no unembedding (it is an encoder), so no logit lens")
    if not isinstance(resid, torch.Tensor) or resid.shape[-1] != lm.d_model:
        raise FairVLMError(f"resid: logit_lens needs a tensor (..., {lm.d_model}), got "
                           f"{tuple(resid.shape) if isinstance(resid, torch.Tensor) else type(resid).__name__}")
    x = resid.to(device=head.weight.device, dtype=head.weight.dtype)
    norm = lm.final_norm()
    if apply_norm and norm is not None:
        x = norm(x)
    return head(x)


@torch.no_grad()
def logit_lens_top(lm, resid: torch.Tensor, k: int = 5) -> list:
    """Top-``k`` next tokens (string, probability) for each vector in ``resid`` ``(n, d)`` or ``(d,)``."""
    from fairvlm.validate import integer

    k = integer("k", k, low=1)
    _check_lm(lm)
    if not isinstance(resid, torch.Tensor):
        raise FairVLMError(f"resid={_show(resid)}: logit_lens_top needs a tensor (n, {lm.d_model}) or ({lm.d_model},)")
    x = resid.reshape(-1, resid.shape[-1])
    probs = logit_lens(lm, x).float().softmax(-1)
    top = probs.topk(k, dim=-1)
    return [[(lm.tokenizer.decode([int(i)]), float(p)) for p, i in zip(ps, ids)]
            for ps, ids in zip(top.values, top.indices)]
