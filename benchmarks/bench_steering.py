"""Cost of test-time steering, in one process, as ratios against the plain model (a script, not a test).

Prints, for a random-weight LLaVA of the chosen geometry (nothing is downloaded):

1. forward-time ratio with / without the every-layer ablation (``attn_out`` and ``mlp_out`` of
   every layer and ``resid_pre`` of layer 0, through ``fairvlm.hooks.edit``; target <= 1.05),
   and, for comparison, with ``resid_pre`` re-ablated at every layer (3L sites) and with
   identity hooks at the same sites (the cost of the hook machinery alone);
2. generation throughput plain / hooks / orthogonalised weights (target: orthogonalised
   >= 0.98 of plain), and of an unedited deep copy of the model as a control for the second
   copy's placement in memory;
3. the cost of one gradient direction (``fairvlm.steering.gradient_direction``) in
   forward-pass equivalents, at batch 1 and at ``--batch`` (target <= 3.5).

Conditions are interleaved in a shuffled order, each timed ``--repeats`` times after a
warm-up, medians reported (and, for generation, the best run too), so drift on a shared
machine hits all alike. The unedited copy is the noise floor: its ratio to plain should be
1 within noise, and a ratio of the orthogonalised model that differs from the copy's by no
more than the copy's from 1 is no measured difference. An edited run faster than plain beyond noise
means a broken measurement.

    python benchmarks/bench_steering.py                                   # tiny shape, CPU
    python benchmarks/bench_steering.py --device cuda --shape llava-1.5-7b --batch 8 --tokens 640
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time

import torch

SHAPES = {
    # text: hidden, layers, heads, kv heads, intermediate, vocab; vision: hidden, layers, heads, inter, image, patch
    "tiny": dict(text=(64, 4, 4, 2, 128, 49163), vision=(32, 3, 4, 64, 32, 8)),
    "small": dict(text=(512, 8, 8, 8, 1376, 32064), vision=(256, 6, 4, 1024, 224, 14)),
    "llava-1.5-7b": dict(text=(4096, 32, 32, 32, 11008, 32064), vision=(1024, 24, 16, 4096, 336, 14)),
}


def build(shape: str, device: str, dtype: torch.dtype):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from fairvlm.models import LoadedModel

    th, tl, tn, tkv, ti, tv = SHAPES[shape]["text"]
    vh, vl, vn, vi, im, pa = SHAPES[shape]["vision"]
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=vh, num_hidden_layers=vl, num_attention_heads=vn,
                                       intermediate_size=vi, image_size=im, patch_size=pa, projection_dim=vh),
        text_config=LlamaConfig(hidden_size=th, num_hidden_layers=tl, num_attention_heads=tn, num_key_value_heads=tkv,
                                intermediate_size=ti, vocab_size=tv, max_position_embeddings=4096),
        image_token_id=tv - 1, vision_feature_layer=-2, vision_feature_select_strategy="default")
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = LlavaForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(old)
    model.eval().requires_grad_(False)
    lm = LoadedModel(model=model, processor=None, tokenizer=None, name=f"random-{shape}", family="llava", kind="vlm")
    return lm, cfg, (im // pa) ** 2


def inputs(cfg, n_img_tokens: int, batch: int, tokens: int, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    n_text = max(1, tokens - n_img_tokens)
    vocab = cfg.text_config.vocab_size
    ids = torch.randint(10, vocab - 2, (batch, n_text), generator=g)
    img = torch.full((batch, n_img_tokens), cfg.image_token_id)
    ids = torch.cat([ids[:, :1], img, ids[:, 1:]], 1).to(device)
    size = cfg.vision_config.image_size
    pix = torch.randn(batch, 3, size, size, generator=g).to(device, dtype)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pix}


def timed(fn, device):
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def interleave(conds: dict, repeats: int, warmup: int, device, best: dict | None = None) -> dict:
    """Median time per condition. Each repeat runs every condition once, in a shuffled (seeded)
    order, so that drift and order effects hit all alike. ``best``, if given, receives each
    condition's minimum: on a GPU, short generations are bound by the host's kernel launches,
    and host jitter only ever adds time."""
    rng = random.Random(0)
    for _ in range(warmup):
        for f in conds.values():
            timed(f, device)
    times = {k: [] for k in conds}
    for _ in range(repeats):
        order = list(conds)
        rng.shuffle(order)
        for k in order:
            times[k].append(timed(conds[k], device))
    if best is not None:
        best.update({k: min(v) for k, v in times.items()})
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> dict:
    from fairvlm import hooks, steering

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=0, help="prompt length incl. image tokens (0: image tokens + 64)")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--try-fused", action="store_true",
                    help="also time the ablation compiled into one kernel per site (torch.compile; diagnostic)")
    ap.add_argument("--skip-orthogonalized", action="store_true", help="no second copy of the weights (memory)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    lm, cfg, n_img = build(args.shape, args.device, dtype)
    tokens = args.tokens or n_img + 64
    enc = inputs(cfg, n_img, args.batch, tokens, args.device, dtype)
    enc1 = {k: v[:1] for k, v in enc.items()}
    a = steering.random_direction(lm.d_model, 1)
    target = list(range(100, 116))
    layer = lm.n_layers // 2

    def fwd(e=enc):
        with torch.inference_mode():
            lm.model(**e, use_cache=False)

    def fwd_hooked():
        with steering.ablate(lm, a):
            fwd()

    def fwd_every():
        with steering.ablate(lm, a, every_resid_pre=True):
            fwd()

    def fwd_identity():
        # the same 2L + 1 hooks returning their input: the cost of the hook machinery alone
        sites = {"resid_pre.0": (lambda x: x), "attn_out.*": (lambda x: x), "mlp_out.*": (lambda x: x)}
        with hooks.edit(lm, sites, check_finite=False):
            fwd()

    conds = {"plain": fwd, "hooks": fwd_hooked, "every": fwd_every, "identity": fwd_identity}
    if args.try_fused:
        # diagnostic: the same 2L + 1 sites with the removal compiled into one kernel per site
        u = steering.unit(a).to(args.device, dtype)
        fused = torch.compile(lambda x: x - (x @ u).unsqueeze(-1) * u, dynamic=True)
        sites = {"resid_pre.0": fused, "attn_out.*": fused, "mlp_out.*": fused}

        def fwd_fused():
            with hooks.edit(lm, sites, check_finite=False):
                fwd()
        try:
            fwd_fused()
            conds["fused"] = fwd_fused
        except Exception as exc:  # noqa: BLE001 - a diagnostic: report and go on
            print(f"fused (torch.compile) not available: {type(exc).__name__}: {str(exc)[:200]}")
    res = {"shape": args.shape, "device": args.device, "batch": args.batch, "tokens": int(enc["input_ids"].shape[1])}
    t = interleave(conds, args.repeats, args.warmup, args.device)
    res["forward_ratio_hooks"] = t["hooks"] / t["plain"]
    res["forward_ratio_hooks_every_resid_pre (3L sites)"] = t["every"] / t["plain"]
    res["forward_ratio_identity_hooks (machinery)"] = t["identity"] / t["plain"]
    if "fused" in t:
        res["forward_ratio_fused_compiled (diagnostic)"] = t["fused"] / t["plain"]

    gen_kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

    def gen(model):
        def f():
            with torch.inference_mode():
                model.generate(**enc, **gen_kw)
        return f

    def gen_hooked():
        with steering.ablate(lm, a):
            gen(lm.model)()

    conds = {"plain": gen(lm.model), "hooks": gen_hooked}
    if not args.skip_orthogonalized:
        orth = steering.orthogonalize(lm, a)
        conds["orthogonalized"] = gen(orth.model)
        # control: an unedited deep copy, built the way orthogonalize builds its model. If the
        # copy is as slow as the orthogonalised model, the cost is the second copy's placement
        # (memory, caches, allocator), not the edit.
        twin = copy.deepcopy(lm.model)
        conds["copy"] = gen(twin)
    best = {}
    t = interleave(conds, max(3, args.repeats), 1, args.device, best=best)
    res["generation_throughput_hooks"] = t["plain"] / t["hooks"]
    if "orthogonalized" in t:
        res["generation_throughput_orthogonalized"] = t["plain"] / t["orthogonalized"]
        res["generation_throughput_copy (control)"] = t["plain"] / t["copy"]
        res["generation_throughput_orthogonalized (best of runs)"] = best["plain"] / best["orthogonalized"]
        res["generation_throughput_copy (control, best of runs)"] = best["plain"] / best["copy"]
        del orth, twin

    for b, e in (("1", enc1), (str(args.batch), enc)):
        def grad(e=e):
            steering.gradient_direction(lm, e, target, layer=layer)
        # as many repeats as the forward comparison: at batch 1 a 7B pass is short enough
        # for host jitter to move a median of three by a whole forward-equivalent
        t = interleave({"forward": lambda e=e: fwd(e), "gradient": grad}, args.repeats, 1, args.device)
        res[f"gradient_forward_equivalents_batch{b}"] = t["gradient"] / t["forward"]
    for k, v in res.items():
        print(f"{k:42s} {v:.3f}" if isinstance(v, float) else f"{k:42s} {v}")
    return res


if __name__ == "__main__":
    main()
