#!/usr/bin/env bash
# scripts/serve_overhead.sh — J/request through `joule serve` against `joule bench energy`
# on the same queries, as alternated rounds (docs/BENCH.md, "Server overhead").
#
# A server (`joule serve --max-batch 1`: the gemv steps and sgemm prefills of `bench
# energy --batch 1`), restarted every K rounds and warmed by two requests each time. Each
# round runs `joule bench energy` on Q queries (after its 2 warm-up queries), `joule bench
# serve --url` with Q streamed requests of the same lengths at a low rate, and Q requests
# answered whole (no stream, one at a time, by curl), in an order rotated from round to
# round, and reads the server's J/request while busy for each
# (joule_energy_busy_joules_total). Shared machines drift by tens of percent over a minute;
# a round of one query each takes two seconds, so its three figures see the same machine,
# and the summary is over the rounds: the ratio of the means, the median of the per-round
# ratios, and their geometric mean with a 95% interval. With --cpu N the server and `bench
# energy` run on CPU N and the load generator on the others: on the 2-vCPU VM where this
# was written one vCPU decodes 30-50% slower than the other, so unpinned runs land on
# either and the rounds scatter.
set -euo pipefail

usage() {
  cat <<EOF
Usage: scripts/serve_overhead.sh --model PATH --data DIR [options]

  --model PATH     checkpoint (dense or MoE; required)
  --data DIR       prepared corpus: prompts from DIR/val.bin (required)
  --rounds N       alternated rounds (150)
  --queries Q      queries per figure per round (1)
  --prompt P       prompt tokens (16)
  --generate G     generated tokens per query (32)
  --rate R         requests per second sent to the server (2)
  --threads T      threads of both (1)
  --port N         the server's port (8399)
  --cpu N          pin the server and bench energy to CPU N, the load generator off it
  --restart K      a fresh server every K rounds (10)
  --serve-args S   more options for `joule serve`, e.g. "--stream-interval 4"
  --joule PATH     the joule binary (build/joule)
  -h, --help       this help

Prints one line per round and a summary; exit 2 on a bad option.
EOF
}

MODEL= DATA= ROUNDS=150 RESTART=10 Q=1 P=16 G=32 RATE=2 THREADS=1 PORT=8399 CPU= SERVE_ARGS=
JOULE=$(dirname "$(readlink -f "$0")")/../build/joule
bad() { echo "serve_overhead.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    --model) MODEL=${2:-}; shift 2 ;;
    --data) DATA=${2:-}; shift 2 ;;
    --rounds) ROUNDS=${2:-}; shift 2 ;;
    --restart) RESTART=${2:-}; shift 2 ;;
    --queries) Q=${2:-}; shift 2 ;;
    --prompt) P=${2:-}; shift 2 ;;
    --generate) G=${2:-}; shift 2 ;;
    --rate) RATE=${2:-}; shift 2 ;;
    --threads) THREADS=${2:-}; shift 2 ;;
    --port) PORT=${2:-}; shift 2 ;;
    --joule) JOULE=${2:-}; shift 2 ;;
    --cpu) CPU=${2:-}; shift 2 ;;
    --serve-args) SERVE_ARGS=${2:-}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) bad "unknown option '$1' (try --help)" ;;
  esac
done
[ -n "$MODEL" ] || bad "--model is required"
[ -n "$DATA" ] || bad "--data is required"
for v in ROUNDS RESTART Q P G THREADS PORT; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || bad "--$(echo "$v" | tr 'A-Z' 'a-z'): '${!v}' is not a positive integer"
done
[ -x "$JOULE" ] || bad "no joule binary at $JOULE (build first, or --joule PATH)"
PIN=() LOADPIN=()
if [ -n "$CPU" ]; then
  [[ $CPU =~ ^[0-9]+$ ]] && [ "$CPU" -lt "$(nproc)" ] || bad "--cpu: '$CPU' is not a CPU of this machine (0..$(( $(nproc) - 1 )))"
  OTHERS=$(seq 0 $(( $(nproc) - 1 )) | grep -vx "$CPU" | paste -sd, -)
  PIN=(taskset -c "$CPU")
  [ -n "$OTHERS" ] && LOADPIN=(taskset -c "$OTHERS")
fi

TMP=$(mktemp -d)
SERVER=
stop_server() { [ -z "$SERVER" ] || { kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true; }; SERVER=; }
trap 'stop_server; rm -rf "$TMP"' EXIT
start_server() {
  # shellcheck disable=SC2086 # SERVE_ARGS is a list of options
  "${PIN[@]}" "$JOULE" serve --model "$MODEL" --port "$PORT" --threads "$THREADS" --max-batch 1 $SERVE_ARGS > "$TMP/serve.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && return 0
    kill -0 "$SERVER" 2>/dev/null || { cat "$TMP/serve.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "serve_overhead.sh: the server did not answer /health in 10 s" >&2
  exit 1
}

busy_joules() { curl -sf "http://127.0.0.1:$PORT/metrics" | awk '/^joule_energy_busy_joules_total/ {print $2}'; }
# The non-streamed requests: P letters of the validation text, one request at a time.
LETTERS=$(head -c 65536 "$DATA/val.bin" | tr -cd 'a-zA-Z ')
PROMPT=${LETTERS:0:$P} # (not `| head -c`: under pipefail its early exit kills the script)
[ ${#PROMPT} -eq "$P" ] || bad "--data: $DATA/val.bin has fewer than $P letters to make a prompt of"
BODY="{\"prompt\":\"$PROMPT\",\"max_tokens\":$G,\"temperature\":0,\"ignore_eos\":true}"
GAP=$(awk -v r="$RATE" 'BEGIN {print 1 / r}')

echo "cpu: ${CPU:-any}; serve options: ${SERVE_ARGS:-none}; uptime: $(uptime | sed 's/.*average: //')"
echo "round  bench-energy-J/query  serve-streamed-J/request  serve-whole-J/request  ratios (streamed, whole)"
# Each figure as a function, so a round can run them in a rotated order (a drift within
# a round then favours none of them).
energy_fig() {
  "${PIN[@]}" "$JOULE" bench energy --model "$MODEL" --data "$DATA" --queries "$Q" --prompt "$P" --generate "$G" \
    --batch 1 --warmup 2 --threads "$THREADS" --out "$TMP/energy" 2>&1 | awk '/energy J\/query/ {print $3}'
}
streamed_fig() {
  "${LOADPIN[@]}" "$JOULE" bench serve --url "http://127.0.0.1:$PORT" --data "$DATA" --requests "$Q" --prompt "$P" \
    --generate "$G" --rate "$RATE" --threads "$THREADS" --idle 0 --seed "$1" --out "$TMP/serve" 2>&1 |
    awk '/while busy/ {print $(NF-1)}'
}
whole_request() {
  "${LOADPIN[@]}" curl -sf "http://127.0.0.1:$PORT/v1/completions" -d "$BODY" > /dev/null || bad "a request failed"
}
whole_fig() {
  local b0
  b0=$(busy_joules)
  for _ in $(seq "$Q"); do
    whole_request
    sleep "$GAP"
  done
  awk -v a="$b0" -v b="$(busy_joules)" -v q="$Q" 'BEGIN {print (b - a) / q}'
}

for r in $(seq "$ROUNDS"); do
  # A fresh server every RESTART rounds, warmed like bench energy: its figures then come
  # from many processes, as bench energy's do (one per round), not from one.
  if [ $(( (r - 1) % RESTART )) -eq 0 ]; then
    stop_server
    start_server
    whole_request
    whole_request
  fi
  case $(( r % 3 )) in
    1) e=$(energy_fig); s=$(streamed_fig "$r"); w=$(whole_fig) ;;
    2) s=$(streamed_fig "$r"); w=$(whole_fig); e=$(energy_fig) ;;
    0) w=$(whole_fig); e=$(energy_fig); s=$(streamed_fig "$r") ;;
  esac
  [ -n "$e" ] && [ -n "$s" ] && [ -n "$w" ] || { echo "round $r: a run printed no figure" >&2; exit 1; }
  echo "$r $e $s $w" | awk '{printf "%5d  %20.4f  %24.4f  %21.4f  %.3f %.3f\n", $1, $2, $3, $4, $3 / $2, $4 / $2}'
  echo "$e $s $w" >> "$TMP/rounds"
done
awk '{ e += $1; s += $2; w += $3 }
  END { printf "mean   %20.4f  %24.4f  %21.4f  ratio of means %.3f %.3f, rounds %d\n", e / NR, s / NR, w / NR, s / e, w / e, NR }' "$TMP/rounds"
# Per figure: the median of the per-round ratios, and their geometric mean with a 95%
# interval (mean of the log ratios +- 1.96 standard errors; rounds are taken as independent).
for c in 2 3; do
  awk -v c=$c '{print $c / $1}' "$TMP/rounds" | sort -g | awk -v c=$c '{r[NR] = $1; l = log($1); m += l; q += l * l}
    END { med = NR % 2 ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2; m /= NR
          se = NR > 1 ? sqrt((q - NR * m * m) / (NR - 1) / NR) : 0
          printf "%-8s median ratio %.3f, geometric mean %.3f (95%% interval %.3f-%.3f)\n", c == 2 ? "streamed" : "whole",
                 med, exp(m), exp(m - 1.96 * se), exp(m + 1.96 * se) }'
done
echo "(uptime at the end: $(uptime | sed 's/.*average: //'))"
