#!/usr/bin/env bash
# scripts/fuzz.sh — run the libFuzzer harnesses of tests/fuzz/ (one per reader).
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]   each target SECONDS (default 300), nice'd;
#                                                corpora kept in build-fuzz/corpus/
#   bash scripts/fuzz.sh --smoke [TARGET...]     each target a few seconds from its seeds
#                                                alone (make test runs this)
#
# 1. Builds build-fuzz/ with clang (-DJOULE_FUZZ=ON: the library instrumented for libFuzzer,
#    ASan and UBSan, and the harnesses). Without clang or its libFuzzer runtime it says so
#    and exits 0: a machine without them skips fuzzing (scripts/setup.sh installs them).
# 2. Writes seed corpora with joule itself (the Release build in build/, made if missing):
#    a small prepared corpus, a dense and an MoE checkpoint with their optimizer files, a
#    Flat and an IVF database, a neighbour file, runs for a fit. build-fuzz/prepared/ holds
#    what the harnesses pair their input with ($JOULE_FUZZ_DIR).
# 3. Runs each target (its seeds, and the inputs of past findings in tests/fuzz/regress/);
#    prints executions per target. Any finding (crash, leak, UB, a
#    refusal message spanning lines, a timeout, an allocation past the limit) fails the
#    run: exit 1, the input saved as build-fuzz/findings/<target>-crash-*.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${JOULE_FUZZ_BUILD:-$ROOT/build-fuzz}
SMOKE=0
SECONDS_EACH=300
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; SECONDS_EACH=${JOULE_FUZZ_SMOKE_SECONDS:-3}; shift; fi
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then SECONDS_EACH=$1; shift; fi
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(checkpoint optim config tokens db neighbours runs)

say() { echo "fuzz: $*"; }

# --- 1. the fuzz build -------------------------------------------------------------
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
echo 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { return 0; }' > "$probe/p.c"
if ! command -v clang > /dev/null || ! clang -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" 2> /dev/null; then
  say "clang with libFuzzer (libclang-rt-14-dev) not found: skipping the fuzz targets (run scripts/setup.sh as root to install them)"
  exit 0
fi
mkdir -p "$OUT"
cmake -S "$ROOT" -B "$OUT" -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DJOULE_FUZZ=ON \
      -DCMAKE_BUILD_TYPE=Debug -DJOULE_NATIVE=OFF > "$OUT/cmake.log" 2>&1 || { cat "$OUT/cmake.log"; exit 1; }
cmake --build "$OUT" -j "$(nproc)" > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }

# --- 2. seeds, written by joule ----------------------------------------------------
JOULE=${JOULE_BIN:-$ROOT/build/joule}
if [ ! -x "$JOULE" ]; then
  cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=Release > /dev/null
  cmake --build "$ROOT/build" -j "$(nproc)" --target joule_cli > /dev/null
fi
P=$OUT/prepared S=$OUT/seeds
rm -rf "$P" "$S"
mkdir -p "$P" "$S" "$OUT/findings" "$OUT/logs"
j() { "$JOULE" "$@" > /dev/null 2>> "$P/joule.log" || { cat "$P/joule.log"; say "seed step failed: joule $*"; exit 1; }; }
head -c 6000 "$ROOT/README.md" > "$P/text.txt"
j data prepare "$P/text.txt" --split blank-line --out "$P/data"
TINY=(--layers 1 --d-model 8 --heads 2 --d-ff 8 --ctx 8 --batch 2 --steps 2 --eval-every 0 --threads 1 --no-log)
j train --data "$P/data" "${TINY[@]}" --out "$P/model/m.safetensors"
j train --data "$P/data" "${TINY[@]}" --arch moe --experts 2 --moe-every 1 --out "$P/moe/m.safetensors"
j db build --data "$P/data/train.bin" --out "$P/db" --chunk 8 --embedder ngram:8 --max-chunks 64 --index Flat --threads 1
j db build --data "$P/data/train.bin" --out "$P/db-ivf" --chunk 8 --embedder ngram:8 --max-chunks 64 --index IVF2,Flat --threads 1
mkdir -p "$P/nbr"
j db neighbours "$P/db" --tokens "$P/data/train.bin" --out "$P/nbr/train.nbr" -k 2 --threads 1
"$JOULE" info --model "$P/model/m.safetensors" --json > "$P/info.json"
"$JOULE" info --model "$P/moe/m.safetensors" --json > "$P/info-moe.json"

mkdir -p "$S"/{checkpoint,optim,config,tokens,db,neighbours,runs}
cp "$P/model/m.safetensors" "$S/checkpoint/dense"
cp "$P/moe/m.safetensors" "$S/checkpoint/moe"
{ printf '\x00'; cat "$P/model/m.optim.safetensors"; } > "$S/optim/current"
{ printf '\x01'; cat "$P/model/m.optim.safetensors"; } > "$S/optim/next"
# the "config" object of joule info --json (braces matched; strings hold none)
for f in info info-moe; do
  awk '{ i = index($0, "\"config\":"); s = substr($0, i + 9); d = 0
         for (k = 1; k <= length(s); k++) { c = substr(s, k, 1); if (c == "{") d++; if (c == "}") d--
           if (d == 0) { print substr(s, 1, k); exit } } }' "$P/$f.json" > "$S/config/$f"
done
cp "$ROOT"/docs/hardware/*.json "$ROOT"/docs/presets/*.json "$S/config/"
le32() { printf "\\x$(printf %02x $(($1 & 255)))\\x$(printf %02x $(($1 >> 8 & 255)))\\x$(printf %02x $(($1 >> 16 & 255)))\\x$(printf %02x $(($1 >> 24 & 255)))"; }
for split in train val; do
  { le32 "$(stat -c %s "$P/data/$split.bin")"; cat "$P/data/$split.bin" "$P/data/$split.idx"; } > "$S/tokens/$split"
done
for f in manifest.json chunks.bin index.faiss; do
  n=$(case $f in manifest.json) echo 0 ;; chunks.bin) echo 1 ;; index.faiss) echo 2 ;; esac)
  { printf "\\x0$n"; cat "$P/db/$f"; } > "$S/db/flat-$f"
  { printf "\\x0$n"; cat "$P/db-ivf/$f"; } > "$S/db/ivf-$f"
done
cp "$P/nbr/train.nbr" "$S/neighbours/train"
cp "$ROOT/tests/data/chinchilla_fig4_epoch_extracted.csv" "$S/runs/published.csv"
printf 'N,D,loss\n1e6,2e7,3.1\n4e6,8e7,2.7\n1.6e7,3.2e8,2.4\n' > "$S/runs/nd.csv"
printf '{"params":1e6,"tokens":2e7,"loss":3.1}\n{"C":1e17,"loss":2.5}\n' > "$S/runs/runs.jsonl"

# --- 3. run ------------------------------------------------------------------------
dict_of() { case $1 in checkpoint|optim) echo safetensors ;; config) echo json ;; db) echo db ;; *) echo "$1" ;; esac; }
export JOULE_FUZZ_DIR=$P OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1
export LSAN_OPTIONS=suppressions=$ROOT/tests/lsan.supp:print_suppressions=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
NICE=(); [ $SMOKE -eq 1 ] || NICE=(nice -n 19)
failed=0
printf '%-12s %8s %12s %10s  %s\n' target seconds executions exec/s result
for t in "${TARGETS[@]}"; do
  bin=$OUT/fuzz_$t
  [ -x "$bin" ] || { say "no target fuzz_$t"; exit 2; }
  corpus=$OUT/corpus/$t
  if [ $SMOKE -eq 1 ]; then corpus=$(mktemp -d "$OUT/smoke-$t.XXXXXX"); fi
  mkdir -p "$corpus"
  log=$OUT/logs/$t.log
  set +e
  # past findings (tests/fuzz/regress/<target>/) are seeds too, so they stay fixed
  regress=(); [ -d "$ROOT/tests/fuzz/regress/$t" ] && regress=("$ROOT/tests/fuzz/regress/$t")
  (cd "$OUT/findings" && "${NICE[@]}" "$bin" -max_total_time="$SECONDS_EACH" -timeout=20 -rss_limit_mb=2048 \
     -malloc_limit_mb=1024 -dict="$ROOT/tests/fuzz/$(dict_of "$t").dict" -print_final_stats=1 \
     -artifact_prefix="$OUT/findings/$t-" "$corpus" "$S/$t" "${regress[@]}") > "$log" 2>&1
  rc=$?
  set -e
  [ $SMOKE -eq 1 ] && rm -rf "$corpus"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  if [ $rc -eq 0 ]; then result=ok; else result="FINDING (see $log)"; failed=1; fi
  printf '%-12s %8s %12s %10s  %s\n' "$t" "${secs:-?}" "${execs:-?}" "${rate:-?}" "$result"
  if [ $rc -ne 0 ]; then grep -E "ERROR|SUMMARY|runtime error|control byte|abort" "$log" | head -5 | sed 's/^/    /'; fi
done
if [ $failed -ne 0 ]; then say "findings: inputs in $OUT/findings/"; exit 1; fi
