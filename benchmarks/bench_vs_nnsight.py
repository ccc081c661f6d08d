"""``fairvlm.hooks.edit`` against nnsight on the same edit (a script, not a test).

The edit: a rank-1 ablation ``r <- r - d d^T r`` of one random unit direction ``d`` at the
output of every decoder layer (``resid_post.*``), the shape of a refusal-direction or
bias-direction ablation. The same batch runs three ways, interleaved in one process after
a warm-up (so drift on a shared machine hits all three alike): plain, edited through
``fairvlm.hooks.edit``, and edited through nnsight's ``trace``. The script first checks
that the two edits give the same logits (and, for generation, the same tokens), then
prints each overhead as the ratio of median times against the plain run.

Two workloads:

- ``forward``: one forward pass, batch ``--batch`` x ``--tokens`` (default 8 x 64);
- ``generate``: greedy generation of ``--new-tokens`` tokens (default 32) from the same
  prompts with the KV cache, where the cost paid per forward call (per generated token)
  matters: nnsight's ``tracer.iter[:n]`` applies the edit at every step, as
  ``hooks.edit`` does inside ``generate``.

    pip install -e ".[bench]"                       # nnsight is not a core dependency
    python benchmarks/bench_vs_nnsight.py           # SmolLM2-135M-Instruct on CPU
    python benchmarks/bench_vs_nnsight.py --device cuda --random-shape 4096x32 --batch 8 --tokens 512

``--random-shape WIDTHxLAYERS`` replaces SmolLM2 by a randomly initialised Llama of that
width and depth (SmolLM2's head size and vocabulary), so a reader with a GPU can measure at
a paper model's scale (LLaVA-1.5-7B's language model is 4096x32) without downloading it.
Neither overhead should be much above 1: both add one small matrix-vector product per
layer. An edited run measured faster than the plain one beyond noise means a broken
measurement (e.g. an edit that was never applied).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch

from fairvlm import hooks
from fairvlm.errors import FairVLMError
from fairvlm.models import LoadedModel, load


def _model(args) -> LoadedModel:
    lm = load("smollm2-135m-instruct")
    if args.random_shape:
        from transformers import LlamaForCausalLM

        try:
            width, layers = (int(x) for x in args.random_shape.lower().split("x"))
        except ValueError:
            raise FairVLMError(f"--random-shape {args.random_shape!r} must read WIDTHxLAYERS, "
                               "e.g. 4096x32") from None
        cfg = lm.model.config.to_dict()
        head_dim = lm.model.config.hidden_size // lm.model.config.num_attention_heads
        cfg.update(hidden_size=width, num_hidden_layers=layers, intermediate_size=int(width * 8 / 3) // 64 * 64,
                   num_attention_heads=width // head_dim, num_key_value_heads=width // head_dim)
        torch.manual_seed(args.seed)
        model = LlamaForCausalLM(type(lm.model.config).from_dict(cfg)).eval()
        lm = LoadedModel(model=model, processor=lm.tokenizer, tokenizer=lm.tokenizer,
                         name=f"random Llama {width}x{layers}", family="llama", kind="causal-lm",
                         info={"weights": "random"})
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    lm.model.to(device=args.device, dtype=dtype)
    return lm


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64, help="prompt length")
    ap.add_argument("--new-tokens", type=int, default=32, help="generated tokens (0: skip generation)")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--random-shape", default="", help="WIDTHxLAYERS: a random Llama of that size")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        from nnsight import LanguageModel
    except ImportError:
        sys.exit("nnsight is not installed: pip install -e '.[bench]' (or pip install nnsight)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU is visible to torch here")
    if args.threads:
        torch.set_num_threads(args.threads)

    lm = _model(args)
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(100, lm.model.config.vocab_size, (args.batch, args.tokens), generator=gen).to(args.device)
    mask = torch.ones_like(ids)
    d = torch.nn.functional.normalize(torch.randn(lm.d_model, generator=gen), dim=0)
    d = d.to(device=args.device, dtype=lm.dtype)

    def project_out(r: torch.Tensor) -> torch.Tensor:
        return r - (r @ d).unsqueeze(-1) * d

    with warnings.catch_warnings():
        # nnsight 0.8 prefers TransformersModel(repo_id); wrapping the already loaded
        # model keeps both runs on the very same weights
        warnings.simplefilter("ignore")
        nn_model = LanguageModel(lm.model, tokenizer=lm.tokenizer)
    layers = nn_model.model.layers

    # ---- the three ways to run each workload -------------------------------------------
    def fwd_plain():
        return lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits

    def fwd_fairvlm():
        with hooks.edit(lm, {"resid_post.*": project_out}):
            return lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits

    def fwd_nnsight():
        with nn_model.trace(input_ids=ids, attention_mask=mask, use_cache=False):
            for layer in layers:
                layer.output = project_out(layer.output)
            logits = nn_model.output.logits.save()
        return logits

    gen_kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                  min_new_tokens=args.new_tokens, do_sample=False,
                  pad_token_id=lm.tokenizer.pad_token_id or 0)

    def gen_plain():
        return lm.model.generate(**gen_kw)

    def gen_fairvlm():
        with hooks.edit(lm, {"resid_post.*": project_out}):
            return lm.model.generate(**gen_kw)

    def gen_nnsight():
        with nn_model.generate(**gen_kw) as tracer:
            for _ in tracer.iter[:args.new_tokens]:  # one forward call per new token
                for layer in layers:
                    layer.output = project_out(layer.output)
            out = tracer.result.save()
        return out

    workloads = {"forward": (fwd_plain, fwd_fairvlm, fwd_nnsight)}
    if args.new_tokens:
        workloads["generate"] = (gen_plain, gen_fairvlm, gen_nnsight)

    print(f"{lm.name} on {args.device} ({args.dtype}), batch {args.batch} x {args.tokens} tokens, "
          f"{torch.get_num_threads()} threads, {args.repeats} interleaved repeats; rank-1 ablation "
          f"at the output of all {lm.n_layers} decoder layers")
    results = {}
    with torch.inference_mode():
        for name, (plain, ours, theirs) in workloads.items():
            a, b, ref = ours(), theirs(), plain()
            if name == "forward":
                diff = (a.float() - b.float()).abs().max().item()
                moved = (a.float() - ref.float()).abs().max().item()
                same = diff <= 1e-5 * max(1.0, a.float().abs().max().item())
                check = f"max |logit difference| fairvlm vs nnsight {diff:.2e} (edit moves logits by {moved:.2e})"
            else:
                same = torch.equal(a, b)
                check = (f"generated tokens identical: {same} (the edit changes "
                         f"{(a != ref).float().mean().item():.0%} of the tokens vs plain)")
            print(f"[{name}] {check}")
            if not same:
                sys.exit(f"[{name}] the two edits disagree: the comparison would be meaningless")
            runs = {"plain": plain, "fairvlm": ours, "nnsight": theirs}
            times = {k: [] for k in runs}
            order = list(runs)
            for i in range(args.warmup + args.repeats):
                for key in (order if i % 2 == 0 else order[::-1]):
                    _sync(args.device)
                    t0 = time.perf_counter()
                    runs[key]()
                    _sync(args.device)
                    if i >= args.warmup:
                        times[key].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            spread = {k: (max(v) - min(v)) / med[k] for k, v in times.items()}
            results[name] = {"fairvlm": med["fairvlm"] / med["plain"], "nnsight": med["nnsight"] / med["plain"]}
            per = f" ({args.new_tokens} tokens)" if name == "generate" else ""
            print(f"[{name}]{per} median plain {med['plain'] * 1e3:.1f} ms, fairvlm {med['fairvlm'] * 1e3:.1f} ms, "
                  f"nnsight {med['nnsight'] * 1e3:.1f} ms (max-min spread of plain {spread['plain']:.0%})")
            print(f"[{name}] overhead vs plain: fairvlm {results[name]['fairvlm']:.3f}x, "
                  f"nnsight {results[name]['nnsight']:.3f}x")
    return results


if __name__ == "__main__":
    main()
