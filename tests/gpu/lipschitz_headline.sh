#!/usr/bin/env bash
# The Lipschitz headline on one GPU (H100/H200 class): a certified-bound <= 2 Lipschitz transformer
# on tinyshakespeare (the shakespeare-lipschitz recipe, soft cap w_max 1.0 and 1.1), and the
# unconstrained GPT of the same shape, each with bf16 autocast and run.compile; reports val
# accuracy, the certified bound, training time to 60% val accuracy, tokens/s and MFU.
#
#   bash tests/gpu/lipschitz_headline.sh [OUT_DIR]        # default OUT_DIR: runs/gpu-headline
#
# Time guard: every run is killed after RUN_LIMIT seconds (default 170) and the whole script stops
# starting runs after TOTAL_LIMIT seconds (default 540), so it fits a 10-minute device slot; the
# report reads whatever metrics the runs wrote. Exit 2 without a CUDA device.
set -u
OUT=${1:-runs/gpu-headline}
RUN_LIMIT=${RUN_LIMIT:-170}
TOTAL_LIMIT=${TOTAL_LIMIT:-540}
START=$(date +%s)

python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 2)" || {
  echo "lipschitz_headline: no CUDA device; run it on a GPU machine"; exit 2; }
python -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
mkdir -p "$OUT"

COMMON=(run.precision=bf16 run.compile=true run.device=cuda run.eval_interval=100 run.checkpoint_interval=0
        run.log_interval=25 --quiet)
run() {  # name, then hookmix train arguments
  local name=$1; shift
  local left=$(( TOTAL_LIMIT - ($(date +%s) - START) ))
  if (( left < 60 )); then echo "skip $name: time guard ($left s left)"; return; fi
  local limit=$(( left < RUN_LIMIT ? left : RUN_LIMIT ))
  echo "== $name (limit ${limit}s)"
  rm -rf "$OUT/$name"
  timeout --signal=INT "$limit" hookmix train "$@" "${COMMON[@]}" --out "$OUT/$name" \
    > "$OUT/$name.log" 2>&1; echo "   exit $? (124: stopped by the time guard)"
}

# bound <= 2: with every norm at its cap the 3-block shape certifies 0.876 at w_max 1 (docs/lipschitz.md)
run lip-w1.0 shakespeare-lipschitz plugins.spectral_soft_cap.w_max=1.0
run lip-w1.1 shakespeare-lipschitz plugins.spectral_soft_cap.w_max=1.1
# the unconstrained GPT of the same shape and data (AdamW as in shakespeare-gpt)
run gpt shakespeare-gpt plugins.gpt.n_layer=3 plugins.gpt.n_head=4 plugins.gpt.n_embd=256 \
    plugins.tinyshakespeare.block_size=256 plugins.tinyshakespeare.batch_size=512 \
    plugins.tinyshakespeare.eval_batches=20 run.steps=2000

SAMPLES_PER_STEP=512 python "$(dirname "$0")/headline_report.py" "$OUT" lip-w1.0 lip-w1.1 gpt
