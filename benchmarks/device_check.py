"""The book's library on a GPU: tiny models of the papers' architectures in bfloat16 on CUDA.

Run on a machine with a GPU (no hub needed: the tiny models are built from configs):

    python benchmarks/device_check.py --device cuda --dtype bfloat16

For each tiny VLM it checks, on the device and in the dtype given, the properties the CPU
tests check in float32, with tolerances for the dtype:

- an identity edit at every residual site leaves the logits bitwise unchanged;
- an edit that returns NaN is refused, naming its site, when the block ends;
- the every-layer ablation leaves nothing along the direction at any hooked site;
- the orthogonalised model's logits match the hook-ablated model's;
- the single-step gradient direction raises the protected logits;
- the RES-FAIR update with lambda1 = lambda2 = 0 is the identity, and with lambda1 = 1 removes the
  component along a unit direction;
- a Matryoshka SAE trains a few steps on device activations and keeps k latents per row.

It prints one line per check (PASS/FAIL with the measured number) and exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from PIL import Image

from fairvlm import hooks, models, steering
from fairvlm.errors import FairVLMError

VLMS = ("tiny-llava", "tiny-qwen2-vl", "tiny-mllama")
FAILED: list[str] = []


def report(name: str, ok: bool, value) -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {value}", flush=True)
    if not ok:
        FAILED.append(name)


def enc_for(lm):
    ims = [Image.new("RGB", (40, 40), (200, 30, 30)), Image.new("RGB", (40, 40), (20, 30, 230))]
    enc = lm.inputs(["Describe the person.", "Who is it?"], ims)
    return {k: (v.to(lm.device) if hasattr(v, "to") else v) for k, v in enc.items()}


def check_vlm(name: str, device: str, dtype: torch.dtype) -> None:
    lm = models.load(name, device=device, dtype=dtype)
    enc = enc_for(lm)
    tol = 5e-2 if dtype != torch.float32 else 1e-4
    with torch.no_grad():
        base = lm.model(**enc).logits
        with hooks.edit(lm, {f"{k}.*": (lambda x: x) for k in ("resid_pre", "attn_out", "mlp_out")}):
            same = lm.model(**enc).logits
    report(f"{name} identity edit bitwise", torch.equal(base, same), float((base - same).abs().max()))
    # the finite check is read once when the block ends on a GPU (no stall at every hook)
    try:
        with torch.no_grad(), hooks.edit(lm, {"attn_out.1": lambda x: x / torch.zeros((), device=x.device, dtype=x.dtype)}):
            lm.model(**enc)
        report(f"{name} NaN from an edit is refused (at the block's end)", False, "no error")
    except FairVLMError as exc:
        report(f"{name} NaN from an edit is refused (at the block's end)", "attn_out.1" in str(exc), str(exc)[:60])

    a = steering.random_direction(lm.d_model, 3)
    sites = [f"{k}.*" for k in steering.ABLATION_SITES]
    with torch.no_grad(), steering.ablate(lm, a), hooks.capture(lm, sites) as cache:
        hooked = lm.model(**enc).logits
    left = max(float((x.float() @ a.to(x.device)).abs().max() / x.float().abs().max().clamp_min(1e-6))
               for x in cache.values())
    report(f"{name} ablation leaves nothing along a (relative)", left < 2e-2, f"{left:.2e}")

    orth = steering.orthogonalize(lm, a)
    with torch.no_grad():
        served = orth.model(**enc).logits
    diff = float((hooked.float() - served.float()).abs().max())
    scale = float(hooked.float().abs().max())
    report(f"{name} orthogonalised = hooked (max |dlogit| / max |logit|)", diff / scale < tol, f"{diff / scale:.2e}")
    del orth

    ids = steering.target_ids_for(lm, ["man", "woman", "black", "white"])
    g = steering.gradient_direction(lm, enc, ids, layer=1, check_logits=True)
    report(f"{name} gradient step raises protected logits", g.target_logit_change > 0, f"{g.target_logit_change:.3g}")

    try:
        from fairvlm import resfair
    except ImportError as exc:  # pragma: no cover - depends on the checkout
        report("resfair import", False, exc)
        return
    x = torch.randn(2, 5, lm.d_model, device=device, dtype=dtype)
    u = torch.nn.functional.normalize(torch.randn(lm.d_model, device=device, dtype=torch.float32), dim=0).to(dtype)
    v = torch.nn.functional.normalize(torch.randn(lm.d_model, device=device, dtype=torch.float32), dim=0).to(dtype)
    report(f"{name} RES-FAIR update at lambda 0 is the identity",
           torch.equal(resfair.update(x, u, v, 0.0, 0.0), x), "bitwise")
    y = resfair.update(x, u, v, 1.0, 0.0)
    rel = float((y.float() @ u.float()).abs().max() / x.float().abs().max())
    report(f"{name} RES-FAIR update removes the bias component", rel < 2e-2, f"{rel:.2e}")


def check_sae(device: str, dtype: torch.dtype) -> None:
    try:
        from fairvlm import sae as saelib
    except ImportError as exc:  # pragma: no cover
        report("sae import", False, exc)
        return
    lm = models.load("tiny-clip", device=device, dtype=dtype)
    pixels = torch.rand(16, 3, lm.model.config.vision_config.image_size, lm.model.config.vision_config.image_size,
                        device=device, dtype=dtype)
    acts = saelib.collect_image_acts(lm, pixels, tokens=2, seed=0)
    cfg = saelib.SAEConfig(d_in=acts.shape[-1], d_sae=4 * acts.shape[-1], k=4)
    t0 = time.perf_counter()
    model, _ = saelib.train(acts.float().to(device), cfg, steps=20, batch_size=16)
    z = model.encode(acts.float().to(device), batch_topk=True)
    per_row = float((z != 0).sum(-1).float().mean())
    report("sae BatchTopK keeps k per row on average (device)", abs(per_row - cfg.k) < 1.0,
           f"{per_row:.2f} (k={cfg.k}, {time.perf_counter() - t0:.1f} s)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    ap.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    dev = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"device {dev}, dtype {args.dtype}, torch {torch.__version__}", flush=True)
    for name in VLMS:
        try:
            check_vlm(name, args.device, dtype)
        except Exception as exc:  # a crash is a failed check, reported with its reason
            report(f"{name} ran", False, f"{type(exc).__name__}: {exc}")
    try:
        check_sae(args.device, dtype)
    except Exception as exc:
        report("sae ran", False, f"{type(exc).__name__}: {exc}")
    print(f"{len(FAILED)} failed: {FAILED}" if FAILED else "all checks passed", flush=True)
    return 1 if FAILED else 0


if __name__ == "__main__":
    raise SystemExit(main())
