"""RES-FAIR's trained baselines: LoRA fine-tuning on fair answers, and DPO + KL.

Both are trained with the libraries made for it (trl and peft), on the rows of the
*fitting* data only (the same split that the post-hoc directions are fitted on), so no
method sees the items it is evaluated on.

LoRA (``train_lora``)
    peft ``LoraConfig`` on the language model's linear layers (a regex that leaves a VLM's
    vision tower alone) and trl ``SFTTrainer`` on prompt / completion pairs whose
    completion is a fair answer.
DPO + KL (``train_dpo_kl``)
    trl ``DPOTrainer`` (``beta = 0.1``) with a LoRA adapter; per row the *preferred*
    answer is a fair answer and the *rejected* one a group answer, each sampled from a
    candidate set (appendix B.2). :class:`DPOKLTrainer` overrides only ``compute_loss``:
    ``loss = DPO + kl_coef * KL`` (appendix eq. 3, ``kl_coef = 0.5``), where KL is the
    confidence measure of the evaluation (appendix B.2: "the same calculation method"),
    :data:`fairvlm.confidence.PAPER_MEASURE` by default, computed on the policy's
    three-option distribution at the answer position. ``kl_measure="reference"`` instead
    uses ``KL(policy || reference)`` over the three options (0 at step 0, since a new
    LoRA adapter starts as the identity). Both terms are logged by name
    (``loss/dpo``, ``loss/kl``).

The paper's settings (appendix Figure 3): lr 5e-5, batch 16, 10 epochs, fp16, DeepSpeed
ZeRO-3 with CPU parameter offload (``configs/ds_zero3.json``). On a GPU cluster::

    accelerate launch --config_file configs/accelerate_ds_zero3.yaml -m fairvlm.finetune \\
        --model llava-hf/llava-1.5-7b-hf --dataset scf --method dpo_kl --output_dir runs/llava-dpo \\
        --deepspeed configs/ds_zero3.json --fp16 true

The same entry point runs without DeepSpeed on CPU (tests use tiny-llava and tiny-qwen2-vl).
"""

from __future__ import annotations

import contextlib
import random
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from trl import DPOConfig, DPOTrainer

from fairvlm import mcq
from fairvlm import validate as V
from fairvlm.errors import FairVLMError, unknown

__all__ = [
    "FAIR_ANSWERS", "KL_MEASURES", "DPOKLConfig", "DPOKLTrainer", "cpu_training_kernels", "lora_config",
    "preference_records", "sft_records", "train_dpo_kl", "train_lora", "main",
]

#: Candidate fair answers (preferred / SFT targets); each starts with the fair option's word.
FAIR_ANSWERS = ("Both", "both", "Both.", "Both equally.")
KL_MEASURES = ("fair_target", "skew", "reference")
#: Regex on module names: the language model's attention and MLP projections only.
LM_TARGET = r"(?:.*\.language_model|model)\.layers\.\d+\.(?:self_attn|mlp)\.(?:q|k|v|o|gate|up|down)_proj"


@dataclass
class DPOKLConfig(DPOConfig):
    """:class:`trl.DPOConfig` plus the KL term of RES-FAIR's eq. 3."""

    kl_coef: float = field(default=0.5, metadata={"help": "Weight of the confidence KL added to the DPO loss "
                                                          "(RES-FAIR appendix eq. 3: 0.5). 0 gives plain DPO."})
    kl_measure: str = field(default="fair_target", metadata={
        "help": "Which KL: 'fair_target' (KL of the fair target from the three-option distribution, the "
                "book's reading of the paper's measure), 'skew' (KL of the two group options from uniform) or "
                "'reference' (KL of the policy's three-option distribution from the reference model's)."})

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.kl_coef, bool) or not isinstance(self.kl_coef, (int, float)) or not (
                np.isfinite(self.kl_coef) and self.kl_coef >= 0):
            raise FairVLMError(f"kl_coef={self.kl_coef!r} must be a finite number >= 0")
        if self.kl_measure not in KL_MEASURES:
            raise unknown("kl_measure", self.kl_measure, KL_MEASURES)
        V.learning_rate("learning_rate", self.learning_rate)
        V.number("beta", self.beta, low=0.0, low_open=True)


def _option_logits(logits: torch.Tensor, ids: dict) -> torch.Tensor:
    """``(n, V)`` -> ``(n, 3)`` log-masses of a, b, fair (log-softmax over the vocabulary)."""
    lsm = torch.log_softmax(logits.float(), dim=-1)
    return torch.stack([torch.logsumexp(lsm[:, ids[k]], dim=-1) for k in mcq.OPTIONS], dim=-1)


def confidence_kl(lp3: torch.Tensor, measure: str, ref_lp3: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row KL of option log-masses ``(n, 3)`` in torch (differentiable); same formulas as
    :mod:`fairvlm.confidence` at ``t = 1``."""
    lp3 = V.tensor("lp3", lp3, ndim=2, width=3, finite=False)
    if ref_lp3 is not None:
        V.tensor("ref_lp3", ref_lp3, ndim=2, width=3, finite=False)
    logp = lp3 - torch.logsumexp(lp3, dim=-1, keepdim=True)
    if measure == "fair_target":
        return -logp[:, 2]
    if measure == "skew":
        q = torch.log_softmax(lp3[:, :2], dim=-1)
        return (q.exp() * (q - np.log(0.5))).sum(-1)
    if measure == "reference":
        if ref_lp3 is None:
            raise FairVLMError("kl_measure='reference' needs the reference model's option log-probabilities")
        ref = ref_lp3 - torch.logsumexp(ref_lp3, dim=-1, keepdim=True)
        return (logp.exp() * (logp - ref)).sum(-1)
    raise unknown("kl_measure", measure, KL_MEASURES)


class DPOKLTrainer(DPOTrainer):
    """:class:`trl.DPOTrainer` whose loss adds ``kl_coef * KL`` (see the module docstring).

    The answer position of each pair is the last prompt token; which attribute a pair asks
    about is read off its rejected answer's first token (a group option word).
    """

    _option_table: dict | None = None

    def _options(self) -> tuple[dict, dict]:
        if self._option_table is None:
            tok = getattr(self.processing_class, "tokenizer", self.processing_class)
            ids = {a: mcq.option_token_ids(tok, a) for a in mcq.ATTRIBUTES}
            owner = {t: a for a, d in ids.items() for k in ("a", "b") for t in d[k]}
            self._option_table = (ids, owner)
        return self._option_table

    @staticmethod
    def _answer_positions(inputs) -> tuple[torch.Tensor, torch.Tensor, int]:
        """First completion position of every row ``(2B,)``, the answer position (the last
        prompt token) of each chosen row ``(B,)`` and ``B``."""
        cm = inputs["completion_mask"]
        first = cm.float().argmax(dim=1)
        B = cm.shape[0] // 2
        return first, (first[:B] - 1).clamp(min=0), B

    def _chosen_lp3(self, inputs, at: torch.Tensor, first: torch.Tensor, B: int) -> tuple[torch.Tensor, list[str]]:
        """Option log-masses ``(B, 3)`` from the chosen rows' answer-position logits ``at``
        ``(B, V)``; which attribute a pair asks about is read off its rejected answer (``first``:
        :meth:`_answer_positions`' first completion positions)."""
        ids, owner = self._options()
        rows = torch.arange(B, 2 * B, device=first.device)
        attrs = []
        for t in inputs["input_ids"][rows, first[B:]].tolist():
            if t not in owner:
                raise FairVLMError("a rejected answer does not start with a group option word; build the "
                                   "pairs with fairvlm.finetune.preference_records")
            attrs.append(owner[t])
        return torch.stack([_option_logits(at[i:i + 1], ids[a])[0] for i, a in enumerate(attrs)]), attrs

    def _answer_logits(self, model, inputs) -> tuple[torch.Tensor, list[str]]:
        """:meth:`_chosen_lp3` from a forward pass of its own through ``model``."""
        skip = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}
        kwargs = {k: v for k, v in inputs.items() if k not in skip}
        kwargs["use_cache"] = False
        logits = model(**kwargs).logits                                # (2B, T, V)
        first, pos, B = self._answer_positions(inputs)
        return self._chosen_lp3(inputs, logits[torch.arange(B, device=pos.device), pos], first, B)

    def _option_logprobs(self, base, inputs, hidden: torch.Tensor) -> torch.Tensor:
        """Option log-masses ``(B, 3)`` of the chosen rows from the decoder's final hidden
        states ``hidden`` ``(2B, T', d)`` of a forward pass on ``inputs``: the same numbers as
        :meth:`_answer_logits`, without another forward pass."""
        first, pos, B = self._answer_positions(inputs)
        hidden = hidden[:, -inputs["completion_mask"].shape[1]:]
        at = base.get_output_embeddings()(hidden[torch.arange(B, device=pos.device), pos])   # (B, V)
        return self._chosen_lp3(inputs, at, first, B)[0]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """DPO's loss plus ``kl_coef`` times the confidence KL. The KL is read off the DPO
        step's own policy forward pass (the decoder's output at the answer position, through
        the LM head), so it costs no second forward and backward pass; with ``kl_measure=
        'reference'`` the reference pass DPO already runs gives the reference model's side."""
        kl_coef, measure = self.args.kl_coef, self.args.kl_measure
        seen, handle, base = [], None, None
        if kl_coef:
            unwrapped = self.accelerator.unwrap_model(model)
            base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped

            def keep(module, args, output):
                h = output[0] if isinstance(output, tuple) else output.last_hidden_state
                seen.append((torch.is_grad_enabled(), h))

            handle = base.get_decoder().register_forward_hook(keep)
        try:
            out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                       num_items_in_batch=num_items_in_batch)
        finally:
            if handle is not None:
                handle.remove()
        loss = out[0] if return_outputs else out
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["loss/dpo"].append(float(loss.detach()))
        if kl_coef:
            # trl runs the policy pass first, then (unless precomputed) the reference pass
            if not seen:
                raise FairVLMError("the DPO step ran no forward pass through the decoder; the KL term "
                                   "cannot be read off it")
            lp3 = self._option_logprobs(base, inputs, seen[0][1])
            ref = None
            if measure == "reference":
                if len(seen) > 1:
                    with torch.no_grad():
                        ref = self._option_logprobs(base, inputs, seen[1][1])
                else:      # reference log-probs precomputed: one more pass, adapter off
                    if not hasattr(unwrapped, "disable_adapter"):
                        raise FairVLMError("kl_measure='reference' needs a LoRA adapter (pass peft_config)")
                    with torch.no_grad(), unwrapped.disable_adapter():
                        ref, _ = self._answer_logits(model, inputs)
            kl = confidence_kl(lp3, measure, ref).mean()
            self._metrics[mode]["loss/kl"].append(float(kl.detach()))
            loss = loss + kl_coef * kl
        return (loss, out[1]) if return_outputs else loss


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def _prompt(loaded, row) -> str:
    return loaded._prompt(row.text, len(row.item.images), True, row.system, "")


def _images(loaded, rows, images: Callable | None):
    if loaded.kind != "vlm":
        return None
    return [list(im) if im is not None else [] for im in mcq.row_images(rows, images)]


def _records(loaded, rows: Sequence, images: Callable | None, seed: int, caller: str, fields) -> list[dict]:
    """One training record per row: the model's own ``prompt`` (ending at the assistant
    turn), the answer fields ``fields(row, rng)`` gives, and ``images`` for a VLM."""
    V.loaded("loaded", loaded)
    rng = random.Random(V.integer("seed", seed, low=0))
    rows = V.sequence("rows", rows, empty=True)
    if not rows:
        raise FairVLMError(f"{caller}() got no rows")
    if not all(hasattr(r, "item") and hasattr(r, "text") for r in rows):
        raise FairVLMError(f"rows must be fairvlm.mcq rows (from lens.run_rows or mcq.build_rows); got {V.show(rows[0])}")
    if images is not None and not callable(images) and not isinstance(images, dict):
        raise FairVLMError(f"images={V.show(images)} must be None or the image lookup lens.run_rows gives")
    ims = _images(loaded, rows, images)
    out = []
    for i, r in enumerate(rows):
        rec = {"prompt": _prompt(loaded, r), **fields(r, rng)}
        if ims is not None:
            rec["images"] = ims[i]
        out.append(rec)
    return out


def preference_records(loaded, rows: Sequence, images: Callable | None = None, *, seed: int = 0) -> list[dict]:
    """One DPO pair per row: ``prompt`` (the model's own prompt format, ending at the
    assistant turn), ``chosen`` (a fair answer from :data:`FAIR_ANSWERS`), ``rejected`` (a
    group option word, either group, capitalised or not), sampled with ``seed``; plus
    ``images`` for a VLM."""
    def fields(r, rng):
        ga, gb = r.item.groups
        word = rng.choice((ga.option, gb.option))
        return {"chosen": rng.choice(FAIR_ANSWERS),
                "rejected": rng.choice((word, word.lower(), word[:1].upper() + word[1:]))}

    return _records(loaded, rows, images, seed, "preference_records", fields)


def sft_records(loaded, rows: Sequence, images: Callable | None = None, *, seed: int = 0) -> list[dict]:
    """One prompt / completion pair per row with a fair completion (LoRA baseline)."""
    return _records(loaded, rows, images, seed, "sft_records",
                    lambda r, rng: {"completion": rng.choice(FAIR_ANSWERS)})


def lora_config(r: int = 8, alpha: int = 16, dropout: float = 0.0):
    """peft ``LoraConfig`` on the language model's projections only (:data:`LM_TARGET`)."""
    from peft import LoraConfig

    V.integer("r", r, low=1)
    V.number("alpha", alpha, low=0.0, low_open=True)
    V.number("dropout", dropout, low=0.0, high=1.0, high_open=True)
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LM_TARGET,
                      bias="none", task_type="CAUSAL_LM")


def _processing(loaded):
    return loaded.processor if loaded.kind == "vlm" else loaded.tokenizer


def _micro(batch_size: int, micro_batch: int | None) -> tuple[int, int]:
    """``(per-device micro-batch, gradient accumulation steps)`` for an effective ``batch_size``.

    The paper's batch of 16 preference pairs is 32 sequences through the policy and as many
    through the reference, each with a full-vocabulary logit tensor: on a CPU that is
    several GB at once. Accumulating ``batch_size / micro_batch`` micro-batches gives the
    same update with a fraction of the memory."""
    from fairvlm.params import check_range

    batch_size = check_range("batch_size", batch_size, 1, 1_000_000, kind=int)
    if micro_batch is None:
        return batch_size, 1
    micro_batch = check_range("micro_batch", micro_batch, 1, batch_size, kind=int)
    if batch_size % micro_batch:
        raise FairVLMError(f"micro_batch={micro_batch} must divide batch_size={batch_size}")
    return micro_batch, batch_size // micro_batch


MIXED_PRECISION = (None, "bf16", "fp16")


def _common_args(output_dir, epochs, batch_size, lr, seed, max_steps, micro_batch=None,
                 mixed_precision=None, evaluate: bool = False) -> dict:
    """TrainingArguments shared by both baselines. ``mixed_precision``: ``None`` (float32),
    ``"bf16"`` or ``"fp16"``: the weights and optimizer stay float32, the forward and backward
    run under autocast (the paper's DeepSpeed config trains in fp16; on a CPU with bfloat16
    units, ``"bf16"`` is the faster and safer choice)."""
    if mixed_precision not in MIXED_PRECISION:
        raise FairVLMError(f"mixed_precision must be one of {MIXED_PRECISION}, got {mixed_precision!r}")
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise FairVLMError("mixed_precision='fp16' needs a CUDA GPU; on a CPU use None (float32) or 'bf16'")
    V.path("output_dir", output_dir)
    V.number("epochs", epochs, low=0.0, low_open=True)
    V.learning_rate("lr", lr)
    V.integer("seed", seed, low=0)
    if V.integer("max_steps", max_steps) == 0 or max_steps < -1:
        raise FairVLMError(f"max_steps={max_steps!r} must be -1 (train for the epochs) or a positive integer")
    per_device, accum = _micro(batch_size, micro_batch)
    # with validation rows: evaluate before the first step and after every epoch (the
    # convergence rules of fairvlm.resfair_baselines read these evaluations)
    ev = dict(eval_strategy="epoch", eval_on_start=True, per_device_eval_batch_size=per_device) if evaluate else {}
    return dict(**ev, output_dir=str(output_dir), num_train_epochs=epochs, per_device_train_batch_size=per_device,
                gradient_accumulation_steps=accum,
                learning_rate=lr, seed=seed, data_seed=seed, report_to="none", logging_steps=1,
                save_strategy="no", remove_unused_columns=False, use_cpu=not torch.cuda.is_available(),
                max_steps=max_steps, disable_tqdm=True, dataloader_num_workers=0,
                bf16=mixed_precision == "bf16", fp16=mixed_precision == "fp16",
                **_no_checkpointing())   # small models on CPU: recomputing activations only costs time


def _no_checkpointing() -> dict:
    """Activation checkpointing off, under the name this transformers knows (``gradient_checkpointing``
    is a deprecated alias of ``activation_checkpointing`` since transformers 5.x and warns)."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {"activation_checkpointing": False} if "activation_checkpointing" in names else {"gradient_checkpointing": False}


@contextlib.contextmanager
def cpu_training_kernels(enabled: bool = True):
    """Score only the completion tokens through the LM head when training on a CPU; entered
    around ``trainer.train()``. The loss is the same and its gradient agrees to float32
    rounding (the backward sums in another order), so a run's later steps can differ in the
    last digits, as after any change of summation order.

    trl's fused LM head (both trainers use it) scores only the positions that carry a label
    on Triton devices, but every position of every sequence elsewhere (so that tile shapes
    stay fixed for graph compilers). On a CPU that sends the whole prompt through a 49k-word
    head in float32, forward and backward, for the few answer tokens the loss reads: about a
    third of a DPO step on SmolLM2. Inside this context trl takes its Triton-device path for
    CPU tensors too (``trl.trainer.utils._use_triton``; the kernels themselves still run in
    torch): the same log-probabilities for the labelled tokens, zeros elsewhere as before.
    With a trl that has no such switch nothing is patched, and training is only slower.
    ``benchmarks/bench_finetune.py`` prints the time ratio; ``tests/test_resfair.py`` checks
    the loss and the gradient.

    (PyTorch's math attention kernel would save another tenth on a CPU, its flash-attention
    backward being slow at these shapes, but in bfloat16 it rounds differently, so it is
    left out: this context changes speed only. ``fairvlm.testbed.train`` does use it, for a
    training whose results were being redrawn anyway.)
    """
    if not V.flag("enabled", enabled):
        yield
        return
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:  # pragma: no cover - trl is a dependency
        trl_utils = None
    original = getattr(trl_utils, "_use_triton", None)
    if not callable(original):
        yield
        return

    def compact(device, _original=original):
        return device.type == "cpu" or _original(device)

    from unittest import mock

    with mock.patch.object(trl_utils, "_use_triton", compact):
        yield


def _on_cpu(args) -> bool:
    return bool(getattr(args, "use_cpu", False)) or not torch.cuda.is_available()


def _dataset(records):
    from datasets import Dataset

    return Dataset.from_list(records)


def _cache_flags(model) -> list[tuple[object, bool]]:
    """``(config, use_cache)`` of the model's config and of its text config, if it has one."""
    configs = [model.config]
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    if text is not None and text is not model.config:
        configs.append(text)
    return [(c, getattr(c, "use_cache", None)) for c in configs]


def _merged(loaded, trainer, cache_flags=()):
    """A :class:`~fairvlm.models.LoadedModel` view on the trained model, adapter merged, and
    the trainer's log history. The trainer's optimizer, reference model and accelerator
    state are released here: a chapter that trains several baselines in one process must
    not keep every trainer alive.

    The merged model is handed back in the state :func:`fairvlm.models.load` gives, so that it
    generates as fast as the original:

    - ``cache_flags`` (:func:`_cache_flags` before training) are put back: the trainers switch
      ``use_cache`` off for training, and a model left so would generate without a key-value
      cache;
    - its weights require gradients again, as transformers loads them: peft leaves the base
      weights frozen, and with PyTorch 2.13 on a CPU a frozen bfloat16 ``Linear`` fed a
      non-contiguous slice (``generate`` slices the last position before the LM head) takes a
      path that copies the weight once per row: seconds per new token instead of
      milliseconds. Inference runs under ``torch.no_grad`` either way."""
    import copy
    import gc
    from dataclasses import replace

    model = trainer.model
    adapter = None
    if hasattr(model, "merge_and_unload"):
        from peft import get_peft_model_state_dict

        # the trained LoRA factors, before merging, so that they can be saved and re-applied
        adapter = {k: v.detach().to("cpu").clone() for k, v in get_peft_model_state_dict(model).items()}
        model = model.merge_and_unload()
    model.eval()
    for config, flag in cache_flags:
        if flag is not None:
            config.use_cache = flag
        elif getattr(config, "use_cache", None) is not None:     # the trainer added it
            try:
                delattr(config, "use_cache")
            except AttributeError:
                config.use_cache = None
    model.requires_grad_(True)
    history = copy.deepcopy(trainer.state.log_history)
    trainer.accelerator.free_memory()
    for attr in ("model", "model_wrapped", "ref_model", "optimizer", "lr_scheduler"):
        if hasattr(trainer, attr):
            setattr(trainer, attr, None)
    gc.collect()
    info = {**loaded.info, "_fingerprint": None, "adapter_state": adapter}
    return replace(loaded, model=model, name=loaded.name, info=info), history


def train_dpo_kl(loaded, rows: Sequence, images: Callable | None = None, *, output_dir, epochs: float = 10,
                 batch_size: int = 16, lr: float = 5e-5, beta: float = 0.1, kl_coef: float = 0.5,
                 kl_measure: str = "fair_target", seed: int = 0, max_steps: int = -1, lora_r: int = 8,
                 micro_batch: int | None = None, mixed_precision: str | None = None,
                 args: DPOKLConfig | None = None, eval_rows: Sequence | None = None, callbacks: list | None = None):
    """Train DPO + KL with a LoRA adapter on ``rows``; returns ``(LoadedModel, log_history)``.

    The adapter is merged into a copy-free view of the model: ``loaded`` itself is changed
    (reload it for the original). Paper settings are the defaults (appendix Figure 3).
    ``args`` (a full :class:`DPOKLConfig`, e.g. with ``deepspeed=``) replaces the keyword
    settings. ``micro_batch`` splits each batch into accumulated micro-batches (same update,
    less memory); ``mixed_precision`` as in :func:`_common_args`. ``eval_rows``: validation
    rows (pairs built like the training ones), evaluated before training and after every
    epoch; ``callbacks``: transformers ``TrainerCallback`` objects (e.g. a stopping rule)."""
    V.integer("lora_r", lora_r, low=1)
    if args is not None and not isinstance(args, DPOKLConfig):
        raise FairVLMError(f"args={V.show(args)} must be None or a fairvlm.finetune.DPOKLConfig")
    if args is None:
        args = DPOKLConfig(beta=beta, kl_coef=kl_coef, kl_measure=kl_measure, max_length=None,
                           **_common_args(output_dir, epochs, batch_size, lr, seed, max_steps, micro_batch,
                                          mixed_precision, evaluate=bool(eval_rows)))
    cache_flags = _cache_flags(loaded.model)
    ev = _dataset(preference_records(loaded, eval_rows, images, seed=seed + 1)) if eval_rows else None
    trainer = DPOKLTrainer(model=loaded.model, args=args, train_dataset=_dataset(preference_records(
        loaded, rows, images, seed=seed)), eval_dataset=ev, processing_class=_processing(loaded),
        peft_config=lora_config(lora_r), callbacks=callbacks)
    with cpu_training_kernels(_on_cpu(args)):
        trainer.train()
    return _merged(loaded, trainer, cache_flags)


def train_lora(loaded, rows: Sequence, images: Callable | None = None, *, output_dir, epochs: float = 10,
               batch_size: int = 16, lr: float = 5e-5, seed: int = 0, max_steps: int = -1, lora_r: int = 8,
               micro_batch: int | None = None, mixed_precision: str | None = None, extra: dict | None = None,
               eval_rows: Sequence | None = None, callbacks: list | None = None):
    """LoRA fine-tuning (trl ``SFTTrainer``, loss on the completion only) toward fair answers;
    returns ``(LoadedModel, log_history)``. ``loaded`` is changed in place, as for DPO;
    ``micro_batch`` and ``mixed_precision`` as for :func:`train_dpo_kl`."""
    from trl import SFTConfig, SFTTrainer

    V.integer("lora_r", lora_r, low=1)
    if extra is not None and not isinstance(extra, dict):
        raise FairVLMError(f"extra={V.show(extra)} must be None or a dict of SFTConfig settings")
    kw = _common_args(output_dir, epochs, batch_size, lr, seed, max_steps, micro_batch, mixed_precision,
                      evaluate=bool(eval_rows))
    kw.update(extra or {})
    args = SFTConfig(max_length=None, completion_only_loss=True, **kw)
    cache_flags = _cache_flags(loaded.model)
    ev = _dataset(sft_records(loaded, eval_rows, images, seed=seed + 1)) if eval_rows else None
    trainer = SFTTrainer(model=loaded.model, args=args, train_dataset=_dataset(sft_records(
        loaded, rows, images, seed=seed)), eval_dataset=ev, processing_class=_processing(loaded),
        peft_config=lora_config(lora_r), callbacks=callbacks)
    with cpu_training_kernels(_on_cpu(args)):
        trainer.train()
    return _merged(loaded, trainer, cache_flags)


# ---------------------------------------------------------------------------------------
# Command line (accelerate launch ... -m fairvlm.finetune)
# ---------------------------------------------------------------------------------------


@dataclass
class ScriptArguments:
    model: str = field(default="tiny-llava", metadata={"help": "fairvlm.models name or hub id"})
    dataset: str = field(default="pairs", metadata={"help": "training data: pairs, scf or testbed"})
    method: str = field(default="dpo_kl", metadata={"help": "dpo_kl or lora"})
    n_labels: int = field(default=0, metadata={"help": "labels to use (0: all)"})
    n_prompts: int = field(default=4, metadata={"help": "question paraphrases per item"})
    text_only: bool = field(default=False, metadata={"help": "text items only (no images)"})


def _given(argv: Sequence[str], name: str) -> str | None:
    """The value of ``--name`` on the command line (``--name v`` or ``--name=v``), or None."""
    for i, a in enumerate(argv):
        if a == f"--{name}":
            return argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else "true"
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def _cpu_argv(argv: list[str]) -> list[str]:
    """On a machine without CUDA: train on the CPU in float32 unless told otherwise.

    trl's configs turn ``bf16`` on by default, and transformers then refuses to start on a
    machine without a bf16 GPU unless ``use_cpu`` is set, before any of fairvlm's checks
    run. Without CUDA this adds ``--use_cpu true`` and, where neither ``--bf16`` nor
    ``--fp16`` is given, ``--bf16 false`` (float32: exact, and as fast as autocast on most
    CPUs for the small models that train there). ``--fp16 true`` needs a GPU: refused."""
    if torch.cuda.is_available():
        return argv
    truthy = ("true", "1", "yes", "y", "t")
    if (_given(argv, "fp16") or "false").lower() in truthy:
        raise FairVLMError("--fp16 true needs a CUDA GPU and none is available; leave it out (float32 on the CPU) "
                           "or use --bf16 true")
    out = list(argv)
    if _given(argv, "use_cpu") is None and _given(argv, "no_cuda") is None:
        out += ["--use_cpu", "true"]
    if _given(argv, "bf16") is None and _given(argv, "fp16") is None:
        out += ["--bf16", "false"]
    return out


def _check_script(script: "ScriptArguments", cfg: DPOKLConfig) -> None:
    V.integer("n_labels", script.n_labels, low=0)
    V.integer("n_prompts", script.n_prompts, low=1)
    V.number("num_train_epochs", cfg.num_train_epochs, low=0.0, low_open=True)
    V.integer("per_device_train_batch_size", cfg.per_device_train_batch_size, low=1)
    if cfg.max_steps == 0 or cfg.max_steps < -1:
        raise FairVLMError(f"--max_steps {cfg.max_steps} must be -1 (train for the epochs) or a positive integer")
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise FairVLMError(f"--output_dir {out} is a file; give a folder for the trained model")
    V.replaceable("--output_dir", out, overwrite=True)  # a folder of other files is never written over


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``ScriptArguments`` and :class:`DPOKLConfig` (``--deepspeed``, ``--fp16`` ...),
    train, save the adapter-merged model to ``output_dir`` (safetensors, with a
    ``SHA256SUMS`` manifest). Input the user can fix ends in one ``error:`` line and exit
    status 2."""
    from fairvlm.errors import cli_main

    return cli_main(_main, argv)


def _main(argv: Sequence[str] | None = None) -> int:
    from transformers import HfArgumentParser

    from fairvlm import lens, models
    from fairvlm.resfair import check_dataset

    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a.startswith("--save_strategy") for a in argv):
        argv += ["--save_strategy", "no"]      # the final model is saved below, once, as safetensors
    argv = _cpu_argv(argv)
    parser = HfArgumentParser((ScriptArguments, DPOKLConfig))
    try:
        with warnings.catch_warnings():
            # trl's configs set transformers' deprecated `gradient_checkpointing` alias: a
            # FutureWarning about their code on every parse, not about the reader's flags
            warnings.simplefilter("ignore", FutureWarning)
            script, cfg = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as exc:  # transformers' and trl's own checks of the training arguments
        raise FairVLMError(f"bad training arguments: {str(exc).splitlines()[0]}") from None
    _check_script(script, cfg)
    if script.method not in ("dpo_kl", "lora"):
        raise unknown("method", script.method, ("dpo_kl", "lora"))
    check_dataset(script.dataset)
    lm = models.load(script.model)
    variants = ("text",) if (script.text_only or lm.kind != "vlm") else mcq.VARIANTS
    spec = lens.RunSpec(script.model, script.dataset, variants, script.n_prompts, script.n_labels or None)
    rows, images, _ = lens.run_rows(spec)
    kw = dict(output_dir=cfg.output_dir, epochs=cfg.num_train_epochs, batch_size=cfg.per_device_train_batch_size,
              lr=cfg.learning_rate, seed=cfg.seed, max_steps=cfg.max_steps)
    if script.method == "dpo_kl":
        cfg.remove_unused_columns = False
        trained, _ = train_dpo_kl(lm, rows, images, args=cfg, **kw)
    else:
        trained, _ = train_lora(lm, rows, images, extra={"deepspeed": cfg.deepspeed, "fp16": cfg.fp16,
                                                         "bf16": cfg.bf16, "use_cpu": cfg.use_cpu}, **kw)
    bad = [n for n, p in trained.model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise FairVLMError(f"training diverged: {len(bad)} weights hold NaN or inf (first {bad[0]}); lower "
                           f"--learning_rate (was {cfg.learning_rate:g}); nothing was saved")
    with V.staged_folder("--output_dir", cfg.output_dir, overwrite=True) as staging:
        trained.model.save_pretrained(staging, safe_serialization=True)
    print(f"saved {script.method} model to {cfg.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
