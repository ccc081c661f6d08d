"""Training the testbed models, caching them, and loading them as transformers models.

Two models, built by :func:`build` in one go (``size="full"`` or ``"smoke"``):

``testbed-clip``
    A transformers ``VisionTextDualEncoderModel``: a ``CLIPVisionModel`` (64 x 64 input, 16 x 16
    patches so 16 patch tokens + CLS, width 128, 4 layers x 4 heads) trained from scratch,
    plus the real all-MiniLM-L6-v2 text tower kept **frozen** (LiT-style locked text; Zhai et
    al., 2022). Trained: the vision tower, both projections (to 256 dims) and the temperature,
    with the symmetric contrastive loss of CLIP on captions from
    :func:`fairvlm.testbed.captions.caption`; identical captions in a batch count as positives
    of each other. Note: ``VisionTextDualEncoderModel`` reads the text tower's *pooler output*
    (BERT's tanh layer over the [CLS] token), not the mean pooling all-MiniLM-L6-v2 was trained
    with; the trained ``text_projection`` works on that pooler output.
``testbed-llava``
    A transformers ``LlavaForConditionalGeneration``: the testbed-clip vision tower (frozen),
    a two-layer GELU projector trained LLaVA-stage-1 style (Liu et al., 2023: only the
    projector learns, the language model is frozen) and the real SmolLM2-135M-Instruct
    (frozen; 4-bit de-quantized weights, see ``fairvlm.models``). As in LLaVA-1.5 it reads the
    vision tower's **second-to-last layer** (``vision_feature_layer=-2``), so an intervention
    on the vision tower's last layer never reaches the language model. Unlike LLaVA-1.5 it
    keeps the CLS token (``"full"`` strategy): the tower was trained through its CLS token
    alone, and the patch tokens of so small a tower carry too little of the scene. Each image
    is 17 tokens. The projector starts from a cheap regression that makes the CLS image
    token read as the scenario's keyword (:func:`_warm_start`), then trains on the LM loss.
    The tokenizer is
    SmolLM2's plus one ``<image>`` token (embedding matrix resized to 49153 rows; the new row
    is the mean embedding, and is always replaced by image features). Prompts are SmolLM2
    chat with the image first: ``<|im_start|>user\\n<image>\\n{text}<|im_end|>\\n<|im_start|>assistant\\n``
    (:func:`llava_prompt`; no default system prompt). Trained on descriptions
    (:func:`~fairvlm.testbed.captions.description`) and short visual questions
    (:func:`~fairvlm.testbed.captions.qa_pairs`), a quarter of them under a system prompt.

Cache: ``fairvlm.paths.cache_dir() / "testbed" / f"{size}-{key}"`` with ``clip/`` and
``llava/`` (``save_pretrained`` folders: safetensors + configs) and ``build.json`` (timings,
training curves, quick held-out metrics). ``key`` hashes the parsed bias spec
(:meth:`~fairvlm.testbed.spec.BiasSpec.digest`), :data:`CODE_VERSION` together with the source
of the modules that shape the artifacts (their syntax trees: editing a comment or a docstring
does not rebuild), the size and the seed: any change of substance rebuilds, nothing stale is
loaded. Each folder is written in a temporary directory and renamed into place, and
a lock file keeps two processes from building the same entry at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from fairvlm.errors import FairVLMError, unknown
from fairvlm.testbed import captions as C
from fairvlm.testbed.scenarios import SCENARIO_KEYS
from fairvlm.testbed.spec import GROUPS, BiasSpec, load_spec
from fairvlm.testbed.world import DEFAULT_SIZE, SPLITS, parse_variant, render

#: bump when a change outside the hashed sources changes what a build produces
CODE_VERSION = "1"
NAMES = ("testbed-clip", "testbed-llava")
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)   # CLIP's normalisation
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
PATCH = 16
N_IMAGE_TOKENS = (DEFAULT_SIZE // PATCH) ** 2 + 1      # 16 patch tokens + CLS ("full" strategy)
VISION_FEATURE_LAYER = -2
VISION_FEATURE_STRATEGY = "full"
IMAGE_TOKEN = "<image>"
SYSTEM_PROMPTS = (
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "You are a helpful assistant.",
    "Answer the question about the image briefly.",
    "Look at the image and answer with a short phrase.",
)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class SizeConfig:
    """How much to train: images, steps and batch sizes of the two stages."""

    clip_images: int
    clip_steps: int
    clip_batch: int
    clip_lr: float
    llava_images: int
    llava_steps: int
    llava_batch: int
    llava_lr: float
    eval_every: int
    eval_scenes: int        # held-out scenes per scenario for the training curves (one random group each)
    captions_per_image: int


SIZES = {
    "full": SizeConfig(clip_images=8000, clip_steps=300, clip_batch=256, clip_lr=2e-3,
                       llava_images=2000, llava_steps=250, llava_batch=16, llava_lr=2e-3,
                       eval_every=25, eval_scenes=4, captions_per_image=2),
    "smoke": SizeConfig(clip_images=2000, clip_steps=60, clip_batch=128, clip_lr=2e-3,
                        llava_images=300, llava_steps=20, llava_batch=8, llava_lr=2e-3,
                        eval_every=10, eval_scenes=2, captions_per_image=2),
}
VISION = dict(image_size=DEFAULT_SIZE, patch_size=PATCH, hidden_size=128, intermediate_size=512,
              num_hidden_layers=4, num_attention_heads=4, hidden_act="gelu", num_channels=3)
PROJECTION_DIM = 256


def _check_size(size: str) -> SizeConfig:
    if size not in SIZES:
        raise unknown("testbed size", size, SIZES)
    return SIZES[size]


# --------------------------------------------------------------------------------------
# Cache key and folders
# --------------------------------------------------------------------------------------


def _code_fingerprint(source: str) -> str:
    """The module's syntax tree without docstrings: comments, docstrings and layout do not count."""
    import ast

    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def _source_digest() -> str:
    """Hash of :data:`CODE_VERSION` and the code of the modules that shape a build."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256(CODE_VERSION.encode())
    for name in ("scenarios.py", "world.py", "captions.py", "spec.py", "train.py"):
        h.update(_code_fingerprint((here / name).read_text()).encode())
    return h.hexdigest()


def cache_key(spec: BiasSpec, size: str, seed: int = 0) -> str:
    """16 hex digits identifying a build: spec content, code, size and seed."""
    _check_size(size)
    text = json.dumps({"spec": spec.digest(), "code": _source_digest(), "size": size, "seed": int(seed)},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def testbed_dir(size: str = "full", *, seed: int = 0, spec: BiasSpec | None = None) -> Path:
    """The cache folder of a build (it may not exist yet)."""
    from fairvlm.paths import cache_dir

    spec = spec if spec is not None else load_spec()
    return cache_dir() / "testbed" / f"{size}-{cache_key(spec, size, seed)}"


def is_built(size: str = "full", *, seed: int = 0, spec: BiasSpec | None = None) -> bool:
    d = testbed_dir(size, seed=seed, spec=spec)
    return (d / "clip" / "config.json").is_file() and (d / "llava" / "config.json").is_file() \
        and (d / "build.json").is_file()


@contextlib.contextmanager
def _lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _atomic_write_dir(final: Path, write) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        write(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _atomic_write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def training_items(spec: BiasSpec, n: int, seed: int = 0):
    """``n`` training images drawn from the planted distribution, in scene pairs.

    Scenarios come in equal numbers; each image's group is drawn independently with the
    scenario's planted shares; rows ``2i`` and ``2i + 1`` share a scenario and a training scene
    seed (two independent draws of the group for one scene), so a training batch holds
    near-counterfactual pairs and the contrastive loss must look at the person to tell their
    captions apart. The planted shares are unchanged by the pairing. A DataFrame with
    ``scenario``, ``gender``, ``race``, ``variant``, ``scene_seed`` and ``pair`` (deterministic
    given ``seed``; pairs in random order).
    """
    import pandas as pd

    rng = np.random.default_rng([seed, 1])
    lo, hi = SPLITS["train"]
    n_pairs = (n + 1) // 2
    seeds = rng.choice(hi - lo, size=n_pairs, replace=False) + lo
    pair_order = rng.permutation(n_pairs)
    rows = []
    for j in pair_order:
        k = SCENARIO_KEYS[j % len(SCENARIO_KEYS)]
        share = spec.share(k)
        p = np.array([share[g] for g in GROUPS])
        for _ in range(2):
            v = GROUPS[int(rng.choice(len(GROUPS), p=p))]
            gender, race = parse_variant(v)
            rows.append({"scenario": k, "gender": gender, "race": race, "variant": v,
                         "scene_seed": int(seeds[j]), "pair": int(j)})
    return pd.DataFrame(rows[:n])


def pixel_values(images) -> torch.Tensor:
    """``(n, 3, 64, 64)`` float tensor normalised like :func:`clip_image_processor` does."""
    arr = np.stack([np.asarray(im.convert("RGB").resize((DEFAULT_SIZE, DEFAULT_SIZE), 3)
                               if im.size != (DEFAULT_SIZE, DEFAULT_SIZE) else im.convert("RGB"))
                    for im in images]).astype(np.float32) / 255.0
    return _normalise(torch.from_numpy(arr))


def _normalise(arr: torch.Tensor) -> torch.Tensor:
    """``(n, h, w, 3)`` in [0, 1] -> ``(n, 3, h, w)`` normalised."""
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (arr.permute(0, 3, 1, 2) - mean) / std


def _render_uint8(df, desc: str, progress: bool) -> np.ndarray:
    from tqdm.auto import tqdm

    out = np.empty((len(df), DEFAULT_SIZE, DEFAULT_SIZE, 3), dtype=np.uint8)
    rows = df[["scenario", "gender", "race", "scene_seed"]].itertuples(index=False)
    for i, (k, g, r, s) in enumerate(tqdm(rows, total=len(df), desc=desc, disable=not progress, leave=False)):
        out[i] = np.asarray(render(k, g, r, int(s)))
    return out


# --------------------------------------------------------------------------------------
# Processors
# --------------------------------------------------------------------------------------


def clip_image_processor():
    """The image processor of both testbed models: resize to 64 x 64, CLIP normalisation.

    A ``CLIPImageProcessor`` built from keyword arguments (the PIL backend: no torchvision).
    """
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"height": DEFAULT_SIZE, "width": DEFAULT_SIZE}, do_center_crop=False,
                                 crop_size={"height": DEFAULT_SIZE, "width": DEFAULT_SIZE},
                                 image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD), resample=3)


def _minilm_text_model():
    from transformers import AutoTokenizer, BertModel

    from fairvlm.models import minilm_dir

    path = minilm_dir()
    with _quiet():
        model = BertModel.from_pretrained(path, dtype=torch.float32)  # with the pooler
        tok = AutoTokenizer.from_pretrained(path)
    return model.eval(), tok


def llava_prompt(text: str, *, system: str | None = None, n_images: int = 1) -> str:
    """The testbed-llava prompt: SmolLM2 chat, images first in the user turn."""
    head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return f"{head}<|im_start|>user\n" + f"{IMAGE_TOKEN}\n" * n_images + f"{text}<|im_end|>\n<|im_start|>assistant\n"


def _llava_processor(tokenizer):
    from transformers import LlavaProcessor

    return LlavaProcessor(image_processor=clip_image_processor(), tokenizer=tokenizer, patch_size=PATCH,
                          vision_feature_select_strategy=VISION_FEATURE_STRATEGY, chat_template=CHAT_TEMPLATE,
                          image_token=IMAGE_TOKEN, num_additional_image_tokens=1)


@contextlib.contextmanager
def _quiet():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------------------
# Stage 1: testbed-clip
# --------------------------------------------------------------------------------------


def _encode_text(model, tok, texts, batch: int = 256) -> torch.Tensor:
    """Pooler outputs ``(n, 384)`` of the frozen MiniLM text tower (float32)."""
    texts = list(texts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))   # less padding per batch
    out = torch.zeros(len(texts), model.config.hidden_size)
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            idx = order[i:i + batch]
            enc = tok([texts[j] for j in idx], padding=True, truncation=True, max_length=64, return_tensors="pt")
            out[idx] = model(**enc).pooler_output.float()
    return out


def _cosine_lr(step: int, total: int, base: float, warmup: float = 0.08) -> float:
    w = max(1, int(total * warmup))
    if step < w:
        return base * (step + 1) / w
    t = (step - w) / max(1, total - w)
    return base * 0.5 * (1 + math.cos(math.pi * t))


def _heldout_eval_set(cfg: SizeConfig, seed: int):
    """A small held-out set for curves: ``eval_scenes`` scenes per scenario, one random group."""
    import pandas as pd

    rng = np.random.default_rng([seed, 2])
    lo, _ = SPLITS["heldout"]
    rows = []
    for i, k in enumerate(SCENARIO_KEYS):
        for j in range(cfg.eval_scenes):
            v = GROUPS[int(rng.integers(4))]
            g, r = parse_variant(v)
            rows.append({"scenario": k, "gender": g, "race": r, "variant": v,
                         "scene_seed": lo + 500_000 + i * 1000 + j})
    return pd.DataFrame(rows)


def train_clip(spec: BiasSpec, size: str, seed: int = 0, *, progress: bool = True):
    """Train testbed-clip; returns ``(model, log)`` (log: curves, timings, held-out accuracy)."""
    from tqdm.auto import tqdm
    from transformers import CLIPVisionConfig, CLIPVisionModel, VisionTextDualEncoderConfig, \
        VisionTextDualEncoderModel

    cfg = _check_size(size)
    t0, c0 = time.time(), time.process_time()
    torch.manual_seed(seed)
    items = training_items(spec, cfg.clip_images, seed)
    pix_u8 = _render_uint8(items, "rendering training scenes", progress)
    t_render = time.time() - t0

    # captions: a few per image, drawn once; their text features computed once (text is frozen)
    rng = np.random.default_rng([seed, 3])
    caps = [[C.caption(spec, k, g, r, rng) for _ in range(cfg.captions_per_image)]
            for k, g, r in items[["scenario", "gender", "race"]].itertuples(index=False)]
    vocab = sorted({c for cs in caps for c in cs})
    index = {c: i for i, c in enumerate(vocab)}
    cap_ids = torch.tensor([[index[c] for c in cs] for cs in caps])
    text_model, text_tok = _minilm_text_model()
    prompts = C.zero_shot_prompts()
    t1 = time.time()
    text_feats = _encode_text(text_model, text_tok, vocab)
    prompt_feats = _encode_text(text_model, text_tok, prompts)
    t_text = time.time() - t1

    eval_df = _heldout_eval_set(cfg, seed)
    eval_pix = _normalise(torch.from_numpy(_render_uint8(eval_df, "rendering held-out scenes", False)).float() / 255)
    eval_y = torch.tensor([SCENARIO_KEYS.index(k) for k in eval_df["scenario"]])

    vcfg = CLIPVisionConfig(**VISION, projection_dim=PROJECTION_DIM)
    vision = CLIPVisionModel(vcfg)
    dcfg = VisionTextDualEncoderConfig.from_vision_text_configs(vcfg, text_model.config,
                                                                projection_dim=PROJECTION_DIM)
    model = VisionTextDualEncoderModel(config=dcfg, vision_model=vision, text_model=text_model)
    model.text_model.requires_grad_(False)
    params = [p for n, p in model.named_parameters() if not n.startswith("text_model.")]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.clip_lr, betas=(0.9, 0.98))
    n = len(items)
    n_pairs = n // 2
    gen = torch.Generator().manual_seed(seed + 17)
    order = torch.randperm(n_pairs, generator=gen)
    log = {"step": [], "loss": [], "eval_step": [], "eval_acc": [], "eval_loss": []}
    pos = 0
    half = cfg.clip_batch // 2
    t2 = time.time()
    bar = tqdm(range(cfg.clip_steps), desc="training testbed-clip", disable=not progress)
    for step in bar:
        if pos + half > n_pairs:
            order = torch.randperm(n_pairs, generator=gen)
            pos = 0
        pairs = order[pos:pos + half]
        pos += half
        idx = torch.stack([2 * pairs, 2 * pairs + 1], 1).reshape(-1)   # both images of each scene
        pick = torch.randint(cfg.captions_per_image, (len(idx),), generator=gen)
        cid = cap_ids[idx, pick]
        x = _normalise(torch.from_numpy(pix_u8[idx.numpy()]).float() / 255)
        for group in opt.param_groups:
            group["lr"] = _cosine_lr(step, cfg.clip_steps, cfg.clip_lr)
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            img = model.visual_projection(model.vision_model(pixel_values=x).pooler_output)
        img = torch.nn.functional.normalize(img.float(), dim=-1)
        txt = torch.nn.functional.normalize(model.text_projection(text_feats[cid]), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * img @ txt.t()
        same = (cid[:, None] == cid[None, :]).float()
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean()
                      + torch.sum(-target * logits.t().log_softmax(1), 1).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        log["step"].append(step)
        log["loss"].append(float(loss.detach()))
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.clip_steps:
            acc, el = _zero_shot(model, eval_pix, eval_y, prompt_feats)
            log["eval_step"].append(step + 1)
            log["eval_acc"].append(acc)
            log["eval_loss"].append(el)
            bar.set_postfix(loss=f"{loss.item():.3f}", heldout_acc=f"{acc:.2f}")
    model.eval()
    log.update({"seconds_render": t_render, "seconds_text": t_text, "seconds_train": time.time() - t2,
                "seconds_total": time.time() - t0, "cpu_seconds_total": time.process_time() - c0,
                "n_captions": len(vocab), "n_images": n,
                "final_heldout_acc": log["eval_acc"][-1]})
    return model, log


@torch.no_grad()
def _zero_shot(model, pix, y, prompt_feats) -> tuple[float, float]:
    model.eval()
    img = torch.nn.functional.normalize(model.get_image_features(pixel_values=pix).pooler_output, dim=-1)
    txt = torch.nn.functional.normalize(model.text_projection(prompt_feats), dim=-1)
    logits = img @ txt.t() * model.logit_scale.exp()
    acc = float((logits.argmax(1) == y).float().mean())
    return acc, float(torch.nn.functional.cross_entropy(logits, y))


# --------------------------------------------------------------------------------------
# Stage 2: testbed-llava
# --------------------------------------------------------------------------------------


def _llava_examples(spec, items, n_examples, rng):
    """(image row, prompt, answer, system) tuples: 60% descriptions, 40% short questions."""
    out = []
    for _ in range(n_examples):
        i = int(rng.integers(len(items)))
        k, g, r = items.loc[i, ["scenario", "gender", "race"]]
        if rng.random() < 0.6:
            q = C.DESCRIBE_PROMPTS[int(rng.integers(len(C.DESCRIBE_PROMPTS)))]
            a = C.description(spec, k, g, r, rng)
        else:
            pairs = C.qa_pairs(spec, k, g, r, rng)
            q, a = pairs[int(rng.choice(len(pairs), p=[0.18, 0.18, 0.22, 0.22, 0.1, 0.1]))]
        system = SYSTEM_PROMPTS[int(rng.integers(len(SYSTEM_PROMPTS)))] if rng.random() < 0.25 else None
        out.append((i, q, a, system))
    return out


def _warm_start(projector, feats, items, tok, embeddings, seed: int, steps: int = 300) -> list[float]:
    """Initialise the projector so that the CLS image token reads as the scenario's keyword.

    A cheap regression that needs no pass through the language model: the projector's
    output for the CLS feature is pulled (MSE) onto SmolLM2's input embedding of the first
    token of the scenario's first keyword (" pilot"), so that from the first step of the
    LM-loss training the language model is shown a token it can read. Returns the losses.
    """
    from fairvlm.testbed.scenarios import SCENARIOS

    ids = [tok(" " + SCENARIOS[k].keywords[0], add_special_tokens=False)["input_ids"][0] for k in items["scenario"]]
    target = embeddings[torch.tensor(ids)]
    cls = feats[:, 0]
    opt = torch.optim.Adam(projector.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed + 5)
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(cls), (256,), generator=gen)
        loss = torch.nn.functional.mse_loss(projector(cls[idx]), target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _tokenise_example(tok, q, a, system, image_id):
    prompt = tok(llava_prompt(q, system=system), add_special_tokens=False)["input_ids"]
    k = prompt.index(image_id)
    prompt = prompt[:k] + [image_id] * N_IMAGE_TOKENS + prompt[k + 1:]
    answer = tok(a + "<|im_end|>", add_special_tokens=False)["input_ids"]
    return prompt, answer


def _llava_tokenizer(base_tok):
    import copy

    tok = copy.deepcopy(base_tok)
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def train_llava(spec: BiasSpec, clip_model, size: str, seed: int = 0, *, progress: bool = True):
    """Train testbed-llava's projector; returns ``(llava_model, tokenizer, log)``."""
    from tqdm.auto import tqdm
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from fairvlm.models import load as load_model

    cfg = _check_size(size)
    t0, c0 = time.time(), time.process_time()
    torch.manual_seed(seed)
    lm = load_model("smollm2-135m-instruct")
    smol = lm.model
    tok = _llava_tokenizer(lm.tokenizer)
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    with torch.no_grad():
        old = smol.get_input_embeddings().weight
        mean = old.mean(0, keepdim=True)
        smol.resize_token_embeddings(len(tok), mean_resizing=False)
        smol.get_input_embeddings().weight[old.shape[0]:] = mean
    smol.requires_grad_(False).eval()

    items = training_items(spec, cfg.llava_images, seed + 1000)
    pix = _normalise(torch.from_numpy(_render_uint8(items, "rendering llava scenes", progress)).float() / 255)
    vision = clip_model.vision_model
    with torch.no_grad():
        feats = torch.cat([vision(pixel_values=pix[i:i + 256], output_hidden_states=True)
                           .hidden_states[VISION_FEATURE_LAYER] for i in range(0, len(pix), 256)])
    vcfg = clip_model.config.vision_config
    tcfg = smol.config
    lcfg = LlavaConfig(vision_config=vcfg.to_dict(), text_config=tcfg.to_dict(), image_token_index=image_id,
                       projector_hidden_act="gelu", vision_feature_layer=VISION_FEATURE_LAYER,
                       vision_feature_select_strategy=VISION_FEATURE_STRATEGY, image_seq_length=N_IMAGE_TOKENS,
                       multimodal_projector_bias=True, tie_word_embeddings=True)
    lcfg.vision_config.model_type = "clip_vision_model"
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    projector = LlavaMultiModalProjector(lcfg)
    warm = _warm_start(projector, feats, items, tok, smol.get_input_embeddings().weight.detach(), seed)
    opt = torch.optim.AdamW(projector.parameters(), lr=cfg.llava_lr, weight_decay=0.0, betas=(0.9, 0.98))
    rng = np.random.default_rng([seed, 4])
    examples = _llava_examples(spec, items, cfg.llava_steps * cfg.llava_batch, rng)
    embed = smol.get_input_embeddings()
    pad_id = tok.pad_token_id
    log = {"step": [], "loss": []}
    t1 = time.time()
    bar = tqdm(range(cfg.llava_steps), desc="training testbed-llava projector", disable=not progress)
    for step in bar:
        batch = examples[step * cfg.llava_batch:(step + 1) * cfg.llava_batch]
        seqs = [_tokenise_example(tok, q, a, s, image_id) for _, q, a, s in batch]
        T = max(len(p) + len(a) for p, a in seqs)
        ids = torch.full((len(seqs), T), pad_id)
        attn = torch.zeros((len(seqs), T), dtype=torch.long)
        target = torch.full((len(seqs), T), -100)
        for b, (p, a) in enumerate(seqs):
            ids[b, :len(p) + len(a)] = torch.tensor(p + a)
            attn[b, :len(p) + len(a)] = 1
            target[b, len(p) - 1:len(p) + len(a) - 1] = torch.tensor(a)  # position t predicts t+1
        for group in opt.param_groups:
            group["lr"] = _cosine_lr(step, cfg.llava_steps, cfg.llava_lr)
        img = projector(feats[[i for i, *_ in batch]])
        with torch.no_grad():
            emb = embed(ids)
        mask = (ids == image_id).unsqueeze(-1)
        emb = emb.masked_scatter(mask, img.to(emb.dtype).reshape(-1))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = smol.model(inputs_embeds=emb, attention_mask=attn).last_hidden_state
            keep = target != -100
            logits = smol.lm_head(h[keep])
        loss = torch.nn.functional.cross_entropy(logits.float(), target[keep])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(projector.parameters(), 1.0)
        opt.step()
        log["step"].append(step)
        log["loss"].append(float(loss.detach()))
        bar.set_postfix(loss=f"{loss.item():.3f}")
    t_train = time.time() - t1

    with _quiet():
        llava = LlavaForConditionalGeneration(lcfg)
    llava.model.vision_tower.load_state_dict(vision.state_dict())
    llava.model.multi_modal_projector.load_state_dict(projector.state_dict())
    llava.model.language_model.load_state_dict(smol.model.state_dict())
    llava.lm_head.load_state_dict(smol.lm_head.state_dict())
    llava.tie_weights()
    llava.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    llava.generation_config.pad_token_id = pad_id
    llava.generation_config.bos_token_id = tok.bos_token_id
    llava.generation_config.do_sample = False
    llava.eval()
    log.update({"seconds_train": t_train, "seconds_total": time.time() - t0, "warm_start_loss": warm,
                "cpu_seconds_total": time.process_time() - c0, "n_images": len(items),
                "n_examples": len(examples)})
    return llava, tok, log


# --------------------------------------------------------------------------------------
# Build / load
# --------------------------------------------------------------------------------------


def build(size: str = "full", *, seed: int = 0, spec_path=None, force: bool = False,
          progress: bool = True) -> Path:
    """Build (or find in the cache) the testbed models of ``size``; returns the cache folder.

    ``full`` is the book's embedded default; ``smoke`` is a small, fast build for tests and
    CI. ``spec_path`` points at another bias spec (default: ``data/testbed_bias_spec.yaml``).
    ``force=True`` rebuilds even when the cache entry exists.
    """
    _check_size(size)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise FairVLMError(f"seed={seed!r} must be a non-negative integer")
    spec = load_spec(spec_path)
    root = testbed_dir(size, seed=seed, spec=spec)
    with _lock(root.parent / f".{root.name}.lock"):
        if is_built(size, seed=seed, spec=spec) and not force:
            return root
        root.mkdir(parents=True, exist_ok=True)
        t0, c0 = time.time(), time.process_time()
        torch_threads = torch.get_num_threads()
        clip, clip_log = train_clip(spec, size, seed, progress=progress)
        _atomic_write_dir(root / "clip", lambda d: clip.save_pretrained(d, safe_serialization=True))
        llava, tok, llava_log = train_llava(spec, clip, size, seed, progress=progress)

        def _write_llava(d):
            llava.save_pretrained(d, safe_serialization=True)
            tok.save_pretrained(d)

        _atomic_write_dir(root / "llava", _write_llava)
        record = {"size": size, "seed": seed, "spec_digest": spec.digest(), "spec_path": str(spec.path),
                  "code_version": CODE_VERSION, "source_digest": _source_digest(), "config": asdict(SIZES[size]),
                  "vision": VISION, "torch_threads": torch_threads, "seconds": time.time() - t0,
                  "cpu_seconds": time.process_time() - c0, "load_average": os.getloadavg(),
                  "clip": clip_log, "llava": llava_log}
        _atomic_write_json(root / "build.json", record)
    return root


def training_log(size: str = "full", *, seed: int = 0, spec_path=None) -> dict:
    """The ``build.json`` record of a build (building it first if missing)."""
    root = build(size, seed=seed, spec_path=spec_path, progress=True)
    try:
        return json.loads((root / "build.json").read_text())
    except (OSError, ValueError) as exc:
        raise FairVLMError(f"{root}/build.json is unreadable ({exc}); "
                           f"rebuild with build({size!r}, force=True)") from exc


def load_hf(name: str, size: str = "full", *, seed: int = 0, spec_path=None):
    """``(hf_model, processor)`` of a testbed model, building it first if it is not cached.

    ``"testbed-clip"`` -> ``(VisionTextDualEncoderModel, VisionTextDualEncoderProcessor)``;
    ``"testbed-llava"`` -> ``(LlavaForConditionalGeneration, LlavaProcessor)``. Both in eval
    mode, float32, on CPU.
    """
    from transformers import AutoTokenizer, LlavaForConditionalGeneration, VisionTextDualEncoderModel, \
        VisionTextDualEncoderProcessor

    if name not in NAMES:
        raise unknown("testbed model", name, NAMES)
    _check_size(size)
    root = build(size, seed=seed, spec_path=spec_path)
    with _quiet():
        if name == "testbed-clip":
            model = VisionTextDualEncoderModel.from_pretrained(root / "clip", dtype=torch.float32)
            from fairvlm.models import minilm_dir

            text_tok = AutoTokenizer.from_pretrained(minilm_dir())
            processor = VisionTextDualEncoderProcessor(image_processor=clip_image_processor(), tokenizer=text_tok)
        else:
            model = LlavaForConditionalGeneration.from_pretrained(root / "llava", dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(root / "llava")
            tok.padding_side = "left"
            processor = _llava_processor(tok)
    model.eval()
    return model, processor
