#!/usr/bin/env bash
# End-to-end checks of the hipserve binary: bad input gives one clear error line and a non-zero exit; the
# happy paths work. Usage: cli_test.sh path/to/hipserve. Cases needing the model are skipped without it.
set -u
bin="$1"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="${HIPSERVE_MODEL:-$root/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0 skip=0

# expect_error NAME PATTERN CMD...: exit code 1, stderr one line matching "error: .*PATTERN", no crash.
expect_error() {
  local name="$1" pattern="$2"; shift 2
  "$@" >"$tmp/out" 2>"$tmp/err" </dev/null
  local rc=$?
  local lines; lines=$(grep -c . "$tmp/err")
  local last; last=$(grep . "$tmp/err" | tail -n1)
  if [ $rc -eq 1 ] && echo "$last" | grep -Eq "error: .*$pattern" && [ "$(grep -c 'error:' "$tmp/err")" -eq 1 ]; then
    pass=$((pass + 1)); echo "ok   $name: $last"
  else
    fail=$((fail + 1)); echo "FAIL $name (exit $rc, $lines stderr lines, wanted /$pattern/):"; sed 's/^/     /' "$tmp/err" | tail -n 5
  fi
}
expect_ok() {
  local name="$1"; shift
  if "$@" >"$tmp/out" 2>"$tmp/err" </dev/null; then
    pass=$((pass + 1)); echo "ok   $name"
  else
    fail=$((fail + 1)); echo "FAIL $name (exit $?):"; tail -n 5 "$tmp/err" | sed 's/^/     /'
  fi
}

expect_error "unknown command" "" "$bin" frobnicate
expect_error "unknown option" "unknown option '--frob'" "$bin" run --frob -p hi
expect_error "missing file" "not found" "$bin" run -m "$tmp/nope.gguf" -p hi
printf 'XXXXgarbage that is not a gguf file at all......' >"$tmp/bad_magic.gguf"
expect_error "wrong magic" "magic|GGUF" "$bin" run -m "$tmp/bad_magic.gguf" -p hi
expect_error "empty file" "" "$bin" inspect "$tmp/nope-empty.gguf"
: >"$tmp/empty.gguf"
expect_error "zero-byte file" "" "$bin" run -m "$tmp/empty.gguf" -p hi
expect_error "bad -n value" "--n-predict" "$bin" run -n abc -p hi
expect_error "bad temperature" "--temp" "$bin" run --temp -1 -p hi
expect_error "serve: bad port" "--port" "$bin" serve --port 70000
expect_error "serve: bad page size" "multiple of 64" "$bin" serve --kv-page 100
expect_error "serve: missing model" "loading failed.*not found" "$bin" serve --port 0 -m "$tmp/nope.gguf"
expect_ok "serve --help" "$bin" serve --help

if [ -f "$model" ]; then
  head -c 3000000 "$model" >"$tmp/truncated.gguf"
  expect_error "truncated tensor data" "truncated|beyond the end" "$bin" run -m "$tmp/truncated.gguf" -p hi
  head -c 200000 "$model" >"$tmp/truncated_meta.gguf"
  expect_error "truncated metadata" "" "$bin" run -m "$tmp/truncated_meta.gguf" -p hi
  printf 'caf\xc3 \xff\xfe ok' >"$tmp/bad_utf8.txt"
  expect_error "invalid UTF-8 prompt file" "UTF-8" "$bin" run -m "$model" -f "$tmp/bad_utf8.txt" -n 4
  expect_error "missing prompt file" "prompt file" "$bin" run -m "$model" -f "$tmp/none.txt" -n 4
  expect_error "prompt longer than -c" "does not fit the context" "$bin" run -m "$model" -c 16 -n 4 \
    -p "$(printf 'word %.0s' $(seq 1 40))"
  expect_error "unknown chat template" "chat template" "$bin" run -m "$model" --chat-template nope -p hi
  expect_ok "greedy run" "$bin" run -m "$model" -p "The capital of France is" -n 8 --temp 0 -t 2
  if grep -q "Paris" "$tmp/out"; then pass=$((pass + 1)); echo "ok   greedy run mentions Paris";
  else fail=$((fail + 1)); echo "FAIL greedy run output: $(cat "$tmp/out")"; fi
  grep -q "prompt eval time" "$tmp/err" && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "FAIL no timing line"; }
  expect_ok "chat run" "$bin" run -m "$model" --chat -p "Hi" -n 8 --temp 0
  expect_ok "inspect" "$bin" inspect "$model"
  grep -q "token_embd.weight" "$tmp/out" && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "FAIL inspect lacks tensor table"; }
  expect_ok "bench json" "$bin" bench -m "$model" -p 16 -n 4 -r 1 --json
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert [x["test"] for x in r]==["pp16","tg4"], r' "$tmp/out" \
    && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "FAIL bench json content"; }
  # hipserve shrink: a reduced model that still loads, runs, and says what it kept; bad arguments fail cleanly.
  expect_ok "shrink" "$bin" shrink -m "$model" -o "$tmp/small.gguf" --layers 2
  grep -q "2 of 30 layers" "$tmp/err" && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "FAIL shrink summary: $(cat "$tmp/err")"; }
  expect_ok "run reduced model" "$bin" run --device cpu -m "$tmp/small.gguf" -p "Hello" -n 4 --temp 0
  expect_error "shrink too many layers" "exceeds" "$bin" shrink -m "$model" -o "$tmp/x.gguf" --layers 31
  expect_error "shrink onto itself" "overwrite" "$bin" shrink -m "$model" -o "$model" --layers 2
  expect_error "eval recall on the GPU" "CPU only" "$bin" eval recall -m "$model" -f "$tmp/none.txt" --device cuda
  expect_error "eval passkey --needle on the GPU" "CPU only" "$bin" eval passkey -m "$model" --needle --device cuda
  expect_error "--needle without passkey" "goes with eval passkey" "$bin" eval ppl -m "$model" -f "$tmp/none.txt" --needle
  printf 'Hello\n/reset\nWhat is 2+2?\n' >"$tmp/chat_in.txt"
  if "$bin" chat -m "$model" -n 8 --temp 0 <"$tmp/chat_in.txt" >"$tmp/out" 2>"$tmp/err"; then
    pass=$((pass + 1)); echo "ok   chat from stdin"
  else fail=$((fail + 1)); echo "FAIL chat from stdin"; tail -n 3 "$tmp/err"; fi
else
  skip=$((skip + 1)); echo "skip model cases: $model not found (run scripts/fetch_model.sh)"
fi
for cmd in run chat inspect bench eval shrink; do expect_ok "$cmd --help" "$bin" "$cmd" --help; done
expect_error "bad --device" "--device must be" "$bin" bench --device tpu
expect_error "shrink without arguments" "needs -m" "$bin" shrink
if ! command -v nvidia-smi >/dev/null 2>&1; then  # machines without a GPU (CI): the GPU flags fail clearly
  expect_error "--device cuda without a GPU" "device cuda" "$bin" bench --device cuda -p 8 -n 0
  expect_error "--random-weights without a GPU" "random-weights" "$bin" bench --random-weights llama3.1-8b
  expect_error "eval on the GPU without a GPU" "device cuda" "$bin" eval passkey --device cuda
  expect_error "serve on the GPU without a GPU" "device cuda" "$bin" serve --device cuda --port 0
fi
expect_error "serve with random weights" "no tokenizer" "$bin" serve --random-weights llama3.1-8b --port 0
expect_error "--random-weights on the CPU" "random-weights" "$bin" bench --device cpu --random-weights llama3.1-8b

echo "$pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
