#!/usr/bin/env bash
# scripts/demo.sh <path-to-joule> — the main job in about 8 minutes on 2 cores (measured from a
# fresh clone with no data/ or runs/ on a quiet machine: 7 min 45 s wall; 12 min 24 s while
# other jobs kept the load at 4-6; docs/COMPARE.md section 7. RETRO searches each chunk its runs read, on demand; a rerun reuses the
# finished runs):
#   1. prepare the default corpus (GCIDE dictionary + fortunes) into data/default
#   2. joule compare: dense, MoE, RETRO and RETRO-fit models at 4 training budgets (equal
#      counted FLOPs), val bits-per-byte and, on 128 prompts, 8-byte exact match beside the
#      smooth metrics and pass rates of 8 samples (greedy and samples share one prefill per
#      prompt), the dense scaling law, effective compute multipliers, backtests, the
#      capability prediction per difficulty bucket, the emergence panel, energy per query
#      -> runs/demo/compare/
#   3. joule bench energy on the dense and MoE models of the largest budget, side by side
#   4. the summary table, and a 200-byte sample from the largest dense model
# Run from anywhere; data/ and runs/ are created in the repository root. The comparison is
# resumable: running the demo again reuses the finished runs.
# DEMO_THREADS overrides the thread count (default 1: these models are small, and on a busy
# machine one thread is far faster: measured here, a 2 x 48 model trained at 128k tok/s on
# one thread and 5.5k tok/s on two while other jobs ran); DEMO_BUDGETS the training budgets
# (FLOPs; the nine minutes are 2.5e11,5e11,1e12,2e12, and doubling every budget about
# doubles them; the capability prediction needs 4 or more); DEMO_SAMPLES the samples per
# prompt (default 8; 0 = none, no capability prediction) and DEMO_TEMPERATURE theirs
# (default 1).
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: bash scripts/demo.sh <path-to-joule-binary>" >&2
  exit 2
fi
[ -x "$1" ] || { echo "demo.sh: $1: not an executable (build first: make build)" >&2; exit 2; }
JOULE=$(realpath "$1")
cd "$(dirname "$(realpath "${BASH_SOURCE[0]}")")/.."

THREADS=${DEMO_THREADS:-1}
# The preset: budgets doubling from 2.5e11 FLOPs (three smaller ones for the capability
# prediction, and the largest it predicts); models of the fixed-aspect family sized for
# D = 20 N; context 256, batch 8; RETRO with 32-byte chunks, a narrow one-layer encoder and the
# whole train split as its database; RETRO-fit on each dense run.
BUDGETS=${DEMO_BUDGETS:-2.5e11,5e11,1e12,2e12}
OUT=runs/demo/compare
SAMPLES=${DEMO_SAMPLES:-8}
TEMPERATURE=${DEMO_TEMPERATURE:-1}
PRESET=(--budgets "$BUDGETS" --archs dense,moe,retro,retro-fit --ctx 256 --batch 8 --retro-chunk 32
        --queries 16 --em-windows 128 --match-bytes 8 --samples "$SAMPLES" --temperature "$TEMPERATURE"
        --bootstrap 200 --data data/default --out "$OUT")

section() { printf '\n==== %s ====\n' "$*"; }
t_start=$SECONDS

section "1/4 corpus: data/default"
if "$JOULE" data info data/default > /dev/null 2>&1; then
  echo "data/default is already prepared:"
  "$JOULE" data info data/default
else
  "$JOULE" data prepare --preset default --out data/default
fi

section "2/4 joule compare: dense, moe, retro, retro-fit at $BUDGETS FLOPs ($THREADS threads)"
t0=$SECONDS
mkdir -p "$OUT"
# exit 1 means a run failed: it is in the report; carry on and show it
"$JOULE" compare "${PRESET[@]}" --threads "$THREADS" > "$OUT.log" 2>&1 || rc=$?
grep -E '^(run |  |energy:|retro set-up|[0-9]+ runs? done)' "$OUT.log" || true
[ "${rc:-0}" -le 1 ] || { tail -5 "$OUT.log"; exit "$rc"; }
echo "comparison took $((SECONDS - t0)) s (log: $OUT.log)"

largest=${BUDGETS##*,}
stem=$(printf '%.4g' "$largest" | tr -d '+')
section "3/4 joule bench energy: dense and moe at $largest FLOPs"
"$JOULE" bench energy --model "$OUT/runs/dense-$stem.safetensors" --model "$OUT/runs/moe-$stem.safetensors" \
  --data data/default --prompt 32 --generate 32 --queries 32 --compare --out "$OUT/energy" --threads "$THREADS"

section "4/4 summary"
("$JOULE" compare --out "$OUT" --report-only || true) | sed -n '/^| arch/,/^$/p'
sed -n '/^## At /,/^## Runs/p' "$OUT/report.md" | grep '^|' || true
sed -n '/## Predictable scaling: loss/,/## Capability prediction/p' "$OUT/report.md" | grep '^|' || true
sed -n '/^## Capability prediction/,/^## Emergence panel/p' "$OUT/report.md" | grep -v '^## Emergence' || true
sed -n '/^## Emergence panel/,/^## Retrieval/p' "$OUT/report.md" | grep -v '^## Retrieval' || true
sed -n '/^## Leakage/,/^## Plots/p' "$OUT/report.md" | grep -v '^## Plots' || true
echo
"$JOULE" generate --model "$OUT/runs/dense-$stem.safetensors" --prompt "The meaning of " -n 200 \
  --temperature 0.8 --threads "$THREADS"

section "done in $((SECONDS - t_start)) s"
echo "report: $OUT/report.md (plots loss_vs_compute.svg, energy_vs_bpb.svg, emergence.svg; fit.json, results.csv)"
