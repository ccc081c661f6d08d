"""Overhead of a rank-1 projection edit at every layer of SmolLM2 (a script, not a test).

Runs the same batch (8 prompts x 64 tokens) through SmolLM2-135M-Instruct without hooks and
with ``fairvlm.hooks.edit`` projecting one unit direction out of the stream,
``r <- r - d d^T r``, at every layer, and prints the ratio of median forward times
(target: at most 1.05). Conditions are interleaved and each is timed ``--repeats`` times
after a warm-up, all in one process, so drift on a shared machine hits both alike.

    python benchmarks/bench_hooks.py                      # resid_post at all 30 layers
    python benchmarks/bench_hooks.py --sites arditi       # resid_pre + attn_out + mlp_out, all layers

``--sites arditi`` is the gradient-steering ablation (block input, attention output, MLP
output at every layer: 90 edits per pass). ``--edit identity`` times edits that hand their
input back unchanged, as the logit-lens recorder of chapters 01-03 does
at the same 90 sites (``--sites arditi --edit identity``): the finite-value check
is skipped for them, so their cost is the hooks' own.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fairvlm import hooks
from fairvlm.models import load

SITE_SETS = {
    "resid_post": ("resid_post.*",),
    "arditi": ("resid_pre.*", "attn_out.*", "mlp_out.*"),
}


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--sites", choices=sorted(SITE_SETS), default="resid_post")
    ap.add_argument("--edit", choices=("project", "identity"), default="project",
                    help="project: r <- r - d d^T r; identity: return r (a recorder)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    lm = load("smollm2-135m-instruct")
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(100, lm.model.config.vocab_size, (args.batch, args.tokens), generator=gen)
    mask = torch.ones_like(ids)
    d = torch.nn.functional.normalize(torch.randn(lm.d_model, generator=gen), dim=0)

    def project_out(r: torch.Tensor) -> torch.Tensor:
        return r - (r @ d).unsqueeze(-1) * d

    def identity(r: torch.Tensor) -> torch.Tensor:
        return r

    fn = project_out if args.edit == "project" else identity
    edits = {site: fn for site in SITE_SETS[args.sites]}

    def forward():
        with torch.inference_mode():
            lm.model(input_ids=ids, attention_mask=mask, use_cache=False)

    def timed(with_edit: bool) -> float:
        start = time.perf_counter()
        if with_edit:
            with hooks.edit(lm, edits):
                forward()
        else:
            forward()
        return time.perf_counter() - start

    for _ in range(args.warmup):
        timed(False)
        timed(True)
    plain, edited = [], []
    for i in range(args.repeats):
        # alternate which condition goes first, so neither always follows the other
        order = (False, True) if i % 2 == 0 else (True, False)
        for with_edit in order:
            (edited if with_edit else plain).append(timed(with_edit))
    ratio = statistics.median(edited) / statistics.median(plain)
    n_edits = len(SITE_SETS[args.sites]) * lm.n_layers
    print(f"SmolLM2-135M-Instruct, batch {args.batch} x {args.tokens} tokens, {torch.get_num_threads()} threads, "
          f"{args.repeats} repeats")
    what = "rank-1 projection edit" if args.edit == "project" else "identity edit"
    print(f"{what} at {n_edits} sites ({', '.join(SITE_SETS[args.sites])})")
    print(f"median forward without hooks: {statistics.median(plain) * 1e3:.1f} ms")
    print(f"median forward with edit:     {statistics.median(edited) * 1e3:.1f} ms")
    print(f"ratio: {ratio:.3f} (target <= 1.05)")
    return ratio


if __name__ == "__main__":
    main()
