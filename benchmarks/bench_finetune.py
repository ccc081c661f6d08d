"""Time of a DPO + KL (or LoRA SFT) training step with / without ``fairvlm.finetune.cpu_training_kernels``
(a script, not a test).

The context makes trl's fused LM head score only the completion tokens on a CPU (trl scores
every prompt position there). One trainer is built on ``--rows`` fairness questions of PAIRS
for SmolLM2-135M-Instruct (bfloat16 autocast, as chapter 04 trains); each repeat times one
``training_step`` (forward and backward of a micro-batch of ``--batch`` pairs, the DPO
reference pass included) plain, inside the context, and plain again, in a shuffled order, in
one process. The ratio is the median over repeats of context / mean(plain of the same
repeat); the two plain runs of a repeat give an A/A ratio, printed as the noise floor. The
context leaves the loss as it is and its gradient to rounding (``tests/test_resfair.py``),
so the ratio is speed alone: below 1 is the saving.

With ``--method generate`` it times instead what a trained model's weights being frozen
costs at generation: greedy answers to ``--rows`` questions from SmolLM2 in bfloat16, as
loaded and with ``requires_grad_(False)`` (the state peft leaves merged weights in, which
``fairvlm.finetune`` now undoes), in the same shuffled design; the ratio is frozen / as
loaded.

    python benchmarks/bench_finetune.py
    python benchmarks/bench_finetune.py --method lora --repeats 7
    python benchmarks/bench_finetune.py --method generate --rows 16 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from fairvlm import finetune, mcq, models
from paired import paired_repeats


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="dpo_kl", choices=("dpo_kl", "lora", "generate"))
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4, help="pairs (DPO) or examples (LoRA) per step")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch < 1 or args.rows < args.batch or args.repeats < 1:
        raise SystemExit("need 1 <= --batch <= --rows and --repeats >= 1")

    items = mcq.build_items(mcq.pairs_labels(), "pairs", variants=("text",))
    rows = mcq.make_rows(items[:args.rows], 1)[:args.rows]
    if args.method == "generate":
        return _generation(args, rows)
    lm = models.load(args.model, dtype=torch.float32)
    if lm.kind != "causal-lm":
        raise SystemExit(f"--model {args.model}: this benchmark asks text-only questions; name a language model")
    with tempfile.TemporaryDirectory() as tmp:
        kw = finetune._common_args(tmp, 1, args.batch, 5e-5, args.seed, -1, None, "bf16")
        if args.method == "dpo_kl":
            cfg = finetune.DPOKLConfig(beta=0.1, kl_coef=0.5, max_length=None, **kw)
            trainer = finetune.DPOKLTrainer(model=lm.model, args=cfg, processing_class=lm.tokenizer,
                                            peft_config=finetune.lora_config(), train_dataset=finetune._dataset(
                                                finetune.preference_records(lm, rows, None, seed=args.seed)))
        else:
            from trl import SFTConfig, SFTTrainer

            cfg = SFTConfig(max_length=None, completion_only_loss=True, **kw)
            trainer = SFTTrainer(model=lm.model, args=cfg, processing_class=lm.tokenizer,
                                 peft_config=finetune.lora_config(),
                                 train_dataset=finetune._dataset(finetune.sft_records(lm, rows, None, seed=args.seed)))
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1     # set by Trainer.train() otherwise
        inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        n_tokens = int(inputs["input_ids"].numel())

        def timed(fast: bool) -> float:
            trainer.model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            with finetune.cpu_training_kernels(fast):
                trainer.training_step(trainer.model, inputs)
            return time.perf_counter() - start

        for _ in range(args.warmup):
            timed(False)
            timed(True)
        plain, fast, pair, aa = paired_repeats(timed, args.repeats, args.seed)
    ratio = statistics.median(pair)
    spread = float(np.percentile(aa, 75) - np.percentile(aa, 25))
    print(f"{args.method} training step, {lm.name}, bfloat16 autocast on CPU, {torch.get_num_threads()} threads; "
          f"micro-batch of {args.batch} ({n_tokens} token positions); {args.repeats} repeats")
    print(f"plain {statistics.median(plain):.3f} s   completion-only LM head {statistics.median(fast):.3f} s (medians)")
    print(f"noise floor, plain / plain within a repeat: median {statistics.median(aa):.3f}, "
          f"interquartile range {spread:.3f}")
    print(f"ratio with / without cpu_training_kernels (median over repeats): {ratio:.3f}")
    return ratio


def _generation(args, rows) -> float:
    lm = models.load(args.model, dtype=torch.bfloat16)
    if lm.kind != "causal-lm":
        raise SystemExit(f"--model {args.model}: this benchmark asks text-only questions; name a language model")

    def timed(frozen: bool) -> float:
        lm.model.requires_grad_(not frozen)
        start = time.perf_counter()
        mcq.evaluate(lm, rows, max_new_tokens=8, batch_size=len(rows), progress=False)
        return time.perf_counter() - start

    timed(False)
    plain, frozen, pair, aa = paired_repeats(timed, args.repeats, args.seed)
    ratio = statistics.median(pair)
    print(f"greedy answers to {len(rows)} questions in one batch, {lm.name} in bfloat16 on CPU, "
          f"{torch.get_num_threads()} threads; {args.repeats} repeats")
    print(f"as loaded {statistics.median(plain):.3f} s   frozen {statistics.median(frozen):.3f} s (medians)")
    print(f"noise floor, as loaded / as loaded within a repeat: median {statistics.median(aa):.3f}")
    print(f"ratio frozen / as loaded (median over repeats): {ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()
