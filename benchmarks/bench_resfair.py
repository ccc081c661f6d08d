"""Generation time with / without RES-FAIR's post-hoc update (a script, not a test).

Greedy generation of ``--new-tokens`` tokens for a batch of ``--batch`` prompts of
``--tokens`` tokens, without hooks and inside ``fairvlm.resfair.posthoc`` (the update
``v' = v - l1 P_bias v; v_new = v' + l2 P_fair v'`` at every position of the last tenth of
the layers, in every forward pass of ``generate``). Each repeat times plain, edited and
plain again in a shuffled order, after a warm-up, in one process; the ratio is the median
over repeats of edited / mean(plain of the same repeat) (target: at most 1.05 on CPU), so
drift on a shared machine hits both alike. The two plain runs of a repeat give an A/A ratio,
printed as the noise floor: a ratio that differs from 1 by less than its spread is no
measured cost.

Shapes: ``--model`` is SmolLM2-135M-Instruct (the embedded model) by default, or a Llama-
shaped decoder with *random weights* built from ``--layers/--width/--heads/--ffn`` (e.g.
``--random --layers 32 --width 4096 --heads 32 --ffn 11008`` is the 7B language model of
LLaVA-1.5), so a reader with a GPU (``--device cuda``) reproduces paper-scale numbers
without downloading weights.

    python benchmarks/bench_resfair.py
    python benchmarks/bench_resfair.py --threads 1     # on a shared 2-core machine: less exposed to a busy core
    python benchmarks/bench_resfair.py --random --layers 32 --width 4096 --heads 32 --ffn 11008 --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from fairvlm import lens, resfair
from paired import paired_repeats


def _random_llama(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    from fairvlm.models import LoadedModel

    cfg = LlamaConfig(hidden_size=args.width, intermediate_size=args.ffn, num_hidden_layers=args.layers,
                      num_attention_heads=args.heads, num_key_value_heads=args.heads, vocab_size=args.vocab,
                      max_position_embeddings=4096)
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = LlamaForCausalLM(cfg).to(getattr(torch, args.dtype)).eval()
    return LoadedModel(model=model, processor=None, tokenizer=None, name="random-llama", family="llama",
                       kind="causal-lm")


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--random", action="store_true", help="a random-weight Llama of the shape below")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--width", type=int, default=576)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--ffn", type=int, default=1536)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--lambda1", type=float, default=0.2)
    ap.add_argument("--lambda2", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")

    if args.random:
        lm = _random_llama(args)
    else:
        from fairvlm.models import load

        lm = load("smollm2-135m-instruct", device=args.device, dtype=getattr(torch, args.dtype))
    rng = np.random.default_rng(args.seed)
    layers = lens.last_tenth(lm.n_layers)
    unit = lambda v: (v / np.linalg.norm(v)).astype(np.float32)  # noqa: E731
    dirs = lens.Directions({l: unit(rng.normal(size=lm.d_model)) for l in layers},
                           {l: unit(rng.normal(size=lm.d_model)) for l in layers},
                           {l: f"mlp_out.{l}" for l in layers}, {l: f"attn_out.{l}" for l in layers}, {},
                           {"model": lm.name})
    gen = torch.Generator().manual_seed(args.seed)
    vocab = lm.model.config.vocab_size
    ids = torch.randint(100, vocab, (args.batch, args.tokens), generator=gen).to(args.device)
    mask = torch.ones_like(ids)

    def run():
        with torch.inference_mode():
            lm.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                              min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0,
                              temperature=None, top_p=None, top_k=None)
        if args.device == "cuda":
            torch.cuda.synchronize()

    def timed(with_edit: bool) -> float:
        start = time.perf_counter()
        if with_edit:
            with resfair.posthoc(lm, dirs, lambda1=args.lambda1, lambda2=args.lambda2):
                run()
        else:
            run()
        return time.perf_counter() - start

    for _ in range(args.warmup):
        timed(False)
        timed(True)
    # paired design (benchmarks/paired.py): the two plain runs of a repeat give the noise floor
    plain, edited, pair, aa = paired_repeats(timed, args.repeats, args.seed)
    ratio = statistics.median(pair)
    spread = float(np.percentile(aa, 75) - np.percentile(aa, 25))
    print(f"model {lm.name} ({lm.n_layers} layers, d={lm.d_model}, {args.dtype}, {args.device}); "
          f"edit at layers {layers[0]}..{layers[-1]}; batch {args.batch} x {args.tokens} tokens, "
          f"{args.new_tokens} new tokens; {args.repeats} repeats")
    print(f"plain  {statistics.median(plain):.4f} s   with post-hoc {statistics.median(edited):.4f} s (medians)")
    print(f"noise floor, plain / plain within a repeat: median {statistics.median(aa):.3f}, "
          f"interquartile range {spread:.3f}")
    print(f"ratio with / without the post-hoc edit (median over repeats): {ratio:.3f} (target <= 1.05)")
    return ratio


if __name__ == "__main__":
    main()
