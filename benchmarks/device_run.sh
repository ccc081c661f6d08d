#!/usr/bin/env bash
# One device session's checks, in one command (README, "Checking the library on a GPU"): the library's
# properties on the tiny models in bfloat16 on CUDA (benchmarks/device_check.py), then the
# steering and RES-FAIR benchmarks at the papers' shapes with random weights. Wheels of the
# versions the book pins may be carried in .whl/ (the device machine has no registry).
set -u
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 3
    export PYTHONPATH=/tmp/site:$PWD/lib
else
    export PYTHONPATH=$PWD/lib
fi
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
{
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())" || exit 3
echo "== device_check: tiny models, CUDA, bfloat16"
timeout 150 python3 benchmarks/device_check.py --device cuda --dtype bfloat16
echo "== bench_steering: LLaVA-1.5-7B shape, random weights, bfloat16, batch 8, 640 tokens"
timeout 240 python3 benchmarks/bench_steering.py --device cuda --shape llava-1.5-7b --batch 8 --tokens 640 --new-tokens 32 --try-fused
echo "== bench_resfair: LLaVA-1.5-7B language-model shape, random weights, bfloat16"
timeout 100 python3 benchmarks/bench_resfair.py --random --layers 32 --width 4096 --heads 32 --ffn 11008 --vocab 32064 \
    --device cuda --dtype bfloat16 --batch 8 --tokens 256 --new-tokens 32 --repeats 7
} 2>&1 | grep -v -i "warn" | tee "$OUT/device_run.txt"
