#!/bin/bash
# ctest serve_openai: the npm `openai` package (pinned, installed under BUILD/npm on first
# run, never committed) completes and streams against `joule serve` with a tiny model
# trained here. Exit 77 (skipped) only when npm cannot reach its registry.
# Usage: serve_openai.sh JOULE BUILD_DIR SOURCE_DIR
set -u
J=$1 B=$2 SRC=$3
OPENAI_VERSION=4.95.0
NPM_DIR="$B/npm"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "SKIP: node and npm are not installed (Node 20 with npm; scripts/setup.sh does not install them)"
  exit 77
fi
if [ ! -f "$NPM_DIR/node_modules/openai/package.json" ]; then
  mkdir -p "$NPM_DIR"
  if ! npm install --prefix "$NPM_DIR" --no-audit --no-fund --no-save "openai@$OPENAI_VERSION" >"$NPM_DIR/install.log" 2>&1; then
    if ! timeout 20 npm ping >/dev/null 2>&1; then
      echo "SKIP: npm cannot reach its registry, so the openai client cannot be installed (see $NPM_DIR/install.log)"
      exit 77
    fi
    cat "$NPM_DIR/install.log"
    exit 1
  fi
fi
cp "$SRC/tests/serve_openai.mjs" "$NPM_DIR/"
T=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
cd "$T" || exit 1
for p in $(seq 1 60); do
  for s in 1 2 3 4; do printf 'the rain in spain stays mainly on the plain, said the %s man %s. ' "$s" "$p"; done
  printf '\n\n'
done >corpus.txt
"$J" data prepare corpus.txt --out d --split blank-line --val-fraction 0.2 >/dev/null 2>&1 || { echo "data prepare failed"; exit 1; }
"$J" train --data d --layers 1 --d-model 32 --heads 2 --d-ff 64 --ctx 64 --batch 4 --steps 200 --lr 3e-3 --out tiny.safetensors \
  --threads 1 >train.log 2>&1 || { cat train.log; exit 1; }
"$J" generate --model tiny.safetensors --prompt "the rain" -n 24 --temperature 0 --no-echo --threads 1 >expected.txt 2>/dev/null
"$J" serve --model tiny.safetensors --port 0 --threads 1 --name tiny >serve.out 2>serve.err &
PID=$!
for i in $(seq 1 100); do grep -q listening serve.out && break; sleep 0.1; done
URL=$(grep -o 'http://[0-9.]*:[0-9]*' serve.out) || { echo "the server did not start"; cat serve.err; exit 1; }
node "$NPM_DIR/serve_openai.mjs" "$URL" tiny expected.txt || { cat serve.err; exit 1; }
kill -TERM "$PID"
wait "$PID"
rc=$?
PID=
[ "$rc" -eq 0 ] || { echo "joule serve exited with $rc"; cat serve.err; exit 1; }
echo "joule serve stopped cleanly"
