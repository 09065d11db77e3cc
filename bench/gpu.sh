#!/usr/bin/env bash
# The benchmark on one GPU: the built-in llama-1b preset (Llama-3.2-1B's shape, seeded
# random weights) in bfloat16, every workload, every system with hf-cb, one request at a
# time and in batches of 8; then the cache's cost per request on the tiny and the default
# model. Every command is bounded by `timeout`; the bounds add up to under 8 minutes (one
# H100 should need about half of that: see the estimate below).
#
#     bash bench/gpu.sh OUTDIR            # PYTHON=... to pick the interpreter
#
# Needs a CUDA build of torch, transformers 5.23 and this package (pip install -e
# ".[plot]"), and nothing from the network: every model is a built-in config. Writes eight
# files in OUTDIR: gpu-device.txt, gpu-batch1.{txt,json,png}, gpu-batch8.{txt,json,png} and
# gpu-overhead.txt (the .txt files hold what each command printed).
#
# Estimate for one H100 (1.24B parameters, bfloat16): a 600-700-token prefill is about
# 1.6 TFLOP, some 10 ms; generate's own work per call or decoding step is some 10-20 ms.
# Batch 1: fewshot 100 requests x 5 systems x ~25 ms, chat 40 x 5 x 16 steps x ~15 ms,
# unique 40 x 5 x ~25 ms: about 1.5 minutes with loading the model (1.2B random weights
# drawn on the CPU, so that they are the same on any machine). Batch 8: less. Overhead
# script: 300 requests on a small model, well under a minute each.
#
# Greedy outputs in bfloat16 may differ from no-cache's by rounding (random weights give
# flat logits, where one rounding step can change the top token); the tables count such
# requests, and a command that finds any exits 1, which this script reports and goes on.
set -uo pipefail
cd "$(dirname "$0")/.."

out="${1:?usage: bash bench/gpu.sh OUTDIR}"
python="${PYTHON:-python3}"
mkdir -p "$out"
rm -f "$out"/gpu-*.txt

run() {  # run LOG SECONDS COMMAND...: print, and append to OUTDIR/LOG.txt; a failure does not stop the script
    local log="$out/$1.txt" limit="$2"
    shift 2
    echo "== $*" | tee -a "$log"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "== exit $rc after $((SECONDS - start)) s" | tee -a "$log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu-device.txt" 2>&1
"$python" -c "import torch, transformers; print(torch.__version__, torch.version.cuda, transformers.__version__)" \
    >> "$out/gpu-device.txt" 2>&1
cat "$out/gpu-device.txt"

common=(-m prefixcache bench --preset llama-1b --device cuda --dtype bfloat16 --workload all --no-progress)

run gpu-batch1 220 "$python" "${common[@]}" \
    --systems no-cache,hf-manual,prefixcache,ideal,hf-cb \
    --json "$out/gpu-batch1.json" --plot "$out/gpu-batch1.png"

run gpu-batch8 130 "$python" "${common[@]}" --batch 8 \
    --systems no-cache,prefixcache,ideal,hf-cb \
    --json "$out/gpu-batch8.json" --plot "$out/gpu-batch8.png"

run gpu-overhead 60 "$python" bench/overhead.py --device cuda --model tiny
run gpu-overhead 60 "$python" bench/overhead.py --device cuda --model default
