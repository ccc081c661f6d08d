"""Overhead of a head intervention during image encoding (a script, not a test).

Encodes the same batch of images with and without a three-head prototype replacement at
the CLS token of the last layer and prints the ratio of median wall times (target: at
most 1.05, i.e. the intervention costs under 5%), and the same ratio of process CPU
times, which other jobs on a shared machine disturb less. Conditions are interleaved and
each is timed ``--repeats`` times after a warm-up, so drift hits both alike.

    python benchmarks/bench_clip_heads.py                       # ViT-B/32-shaped encoder
    python benchmarks/bench_clip_heads.py --model testbed-clip  # the book's testbed encoder

``vit-b32-shape`` is a randomly initialised ``CLIPVisionModelWithProjection`` with the
geometry of openai/clip-vit-base-patch32 (12 layers, 12 heads, width 768, 224 px, patch
32): timing depends on the shapes, not on the weights, and no download is needed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fairvlm import clip_heads as ch
from fairvlm.retrieval import embed_images


def build(name: str, seed: int):
    torch.manual_seed(seed)
    if name == "vit-b32-shape":
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                               num_attention_heads=12, image_size=224, patch_size=32, projection_dim=512)
        return CLIPVisionModelWithProjection(cfg).eval(), 224
    from fairvlm.models import load

    lm = load(name, **({"size": "full"} if name == "testbed-clip" else {}))
    size = lm.model.config.vision_config.image_size
    return lm.model, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit-b32-shape", choices=["vit-b32-shape", "tiny-clip", "testbed-clip"])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    model, size = build(args.model, args.seed)
    pixels = torch.randn(args.images, 3, size, size, generator=torch.Generator().manual_seed(args.seed))
    n_heads, _, _ = ch.attention_shape(model)
    contrib = ch.head_contributions(model, pixels[:16])
    protos = ch.head_prototypes(contrib)
    # the paper's ViT-B/32 gender experts (heads 3, 11, 12, 1-based); the last three heads of a smaller model
    heads = [2, 10, 11] if n_heads >= 12 else list(range(n_heads))[-3:]
    edit = ch.prototype_replacement(protos, "all", heads)

    def run(edits):
        w0, c0 = time.perf_counter(), time.process_time()
        embed_images(model, pixels, edits=edits, batch_size=args.batch_size)
        return time.perf_counter() - w0, time.process_time() - c0

    run(()), run((edit,))  # warm-up
    plain, edited = [], []
    for _ in range(args.repeats):
        plain.append(run(()))
        edited.append(run((edit,)))
    print(f"model={args.model} images={args.images} batch={args.batch_size} heads={heads} "
          f"threads={torch.get_num_threads()} repeats={args.repeats}")
    for i, clock in enumerate(("wall", "cpu")):
        t_plain = statistics.median(p[i] for p in plain)
        t_edit = statistics.median(e[i] for e in edited)
        print(f"median {clock:4s} time: plain {t_plain * 1000:8.1f} ms, with 3-head prototype {t_edit * 1000:8.1f} ms")
    ratio = statistics.median(e[0] for e in edited) / statistics.median(p[0] for p in plain)
    cpu_ratio = statistics.median(e[1] for e in edited) / statistics.median(p[1] for p in plain)
    print(f"ratio (with / without), wall = {ratio:.3f}, cpu = {cpu_ratio:.3f}  "
          f"(target <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'})")


if __name__ == "__main__":
    main()
