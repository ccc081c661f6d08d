#!/usr/bin/env bash
# Chapter 04's device check: the post-hoc generation-time ratio on 2 unloaded CPU cores
# (SmolLM2-shaped random weights) and on the GPU (LLaVA-1.5-7B-shaped random weights).
set -u
export PYTHONPATH=$PWD/lib
python -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)" || exit 3
mkdir -p "${OUT:-/tmp/out}"
{
echo "== CPU, 2 cores (taskset 0,1), SmolLM2 shape, random weights"
taskset -c 0,1 python benchmarks/bench_resfair.py --random --layers 30 --width 576 --heads 9 --ffn 1536 --vocab 49152 \
    --threads 2 --batch 8 --tokens 64 --new-tokens 16 --repeats 7
echo "== GPU, LLaVA-1.5-7B language-model shape, random weights, bfloat16"
python benchmarks/bench_resfair.py --random --layers 32 --width 4096 --heads 32 --ffn 11008 --vocab 32064 \
    --device cuda --dtype bfloat16 --batch 8 --tokens 256 --new-tokens 32 --repeats 7
} 2>&1 | grep -v -i warn | tee "${OUT:-/tmp/out}/bench_resfair.txt"
