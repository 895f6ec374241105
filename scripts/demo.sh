#!/usr/bin/env bash
# scripts/demo.sh <path-to-joule> — the whole pipeline in about four minutes on 2 cores:
#   1. prepare the default corpus (GCIDE dictionary + fortunes) into data/default
#   2. train a small dense model for ~3 minutes into runs/demo/model.safetensors
#   3. evaluate it on the validation split (bits per byte)
#   4. sample 300 bytes from it
# Run from anywhere; data/ and runs/ are created in the repository root.
# DEMO_THREADS overrides the thread count (default: 2, or 1 on a one-core machine);
# DEMO_TOKENS the training budget the ~3 minutes were measured with.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: bash scripts/demo.sh <path-to-joule-binary>" >&2
  exit 2
fi
[ -x "$1" ] || { echo "demo.sh: $1: not an executable (build first: make build)" >&2; exit 2; }
JOULE=$(realpath "$1")
cd "$(dirname "$(realpath "${BASH_SOURCE[0]}")")/.."

CORES=$(nproc 2>/dev/null || echo 1)
THREADS=${DEMO_THREADS:-$(( CORES < 2 ? 1 : 2 ))}
# The model: 4 layers, width 128, context 128 — about 0.85M non-embedding parameters.
MODEL=(--layers 4 --d-model 128 --heads 4 --d-ff 384 --ctx 128)
# 4M tokens take about 3 minutes on 2 otherwise idle cores (~22k tok/s, Haswell kernels).
TOKENS=${DEMO_TOKENS:-4M}
OUT=runs/demo/model.safetensors

section() { printf '\n==== %s ====\n' "$*"; }
t_start=$SECONDS

section "1/4 corpus: data/default"
if "$JOULE" data info data/default > /dev/null 2>&1; then
  echo "data/default is already prepared:"
  "$JOULE" data info data/default
else
  "$JOULE" data prepare --preset default --out data/default
fi

section "2/4 training (budget $TOKENS tokens, $THREADS threads)"
rm -f "$OUT" "${OUT%.safetensors}.optim.safetensors" "${OUT%.safetensors}.log.jsonl"
t0=$SECONDS
"$JOULE" train "${MODEL[@]}" --batch 16 --lr 3e-3 --tokens "$TOKENS" --data data/default \
  --eval-every 250 --eval-windows 64 --out "$OUT" --threads "$THREADS"
echo "training took $((SECONDS - t0)) s"

section "3/4 evaluation on the validation split"
"$JOULE" eval --model "$OUT" --data data/default --threads "$THREADS"

section "4/4 a 300-byte sample (temperature 0.8)"
"$JOULE" generate --model "$OUT" --prompt "The meaning of " -n 300 --temperature 0.8 --threads "$THREADS"

section "done in $((SECONDS - t_start)) s"
echo "checkpoint: $OUT   log: ${OUT%.safetensors}.log.jsonl"
echo "more: $(basename "$JOULE") info --model $OUT"
