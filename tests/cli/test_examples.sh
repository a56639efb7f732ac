#!/usr/bin/env bash
# test_examples.sh MCANDLE SOURCE_DIR BINARY_DIR - runs the example programs of examples/:
# tokenize (round trip with the real tokenizer), generate (the tiny fixture model with the
# real tokenizer: its 512 ids are ordinary tokens) and train_lora (2 steps on the PEFT
# fixture data; the adapter it saves loads in `mcandle eval`). The tokenizer comes from
# $MC_TOKENIZER_DIR or the fetch script's cache; missing, the test fails unless
# MC_ALLOW_NO_TOKENIZER=1 (then only train_lora runs).
set -u
MC=$1; SRC=$2; BIN=$3
TMP=$BIN/tmp/cli_examples; rm -rf "$TMP"; mkdir -p "$TMP"
export OMP_NUM_THREADS=1
pass=0; fail=0
ok()  { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAILED: $*" >&2; }
run() { # run DESCRIPTION -- command...: must exit 0
  local desc=$1; shift 2
  "$@" >"$TMP/out" 2>"$TMP/err" && ok || bad "$desc: exit $?; stdout: $(cat "$TMP/out"); stderr: $(cat "$TMP/err")"
}
TINY=$SRC/tests/fixtures/tiny_tied_f32
TOK=${MC_TOKENIZER_DIR:-$HOME/.cache/metal-candle/tokenizer-qwen3-3.7.2}

for e in tokenize generate train_lora; do
  [ -x "$BIN/example_$e" ] && ok || bad "example_$e was not built"
done

if [ -f "$TOK/tokenizer.json" ]; then
  run "tokenize" -- "$BIN/example_tokenize" "$TOK" "int add(int a, int b) { return a + b; } // é ✓"
  grep -q "round trip: ok" "$TMP/out" && ok || bad "tokenize round trip: $(cat "$TMP/out")"
  grep -Eq "^18 tokens: 396 912 " "$TMP/out" && ok || bad "tokenize ids: $(head -n1 "$TMP/out")"
  "$BIN/example_tokenize" "$TOK" >/dev/null 2>&1; [ $? -eq 2 ] && ok || bad "tokenize without text should exit 2"
  "$BIN/example_tokenize" "$TMP/none" "x" >/dev/null 2>&1; [ $? -eq 1 ] && ok || bad "tokenize with a missing tokenizer should exit 1"

  run "generate" -- "$BIN/example_generate" "$TINY" "x = 1" "$TOK"
  head -c 5 "$TMP/out" | grep -q "^x = 1" && ok || bad "generate output should start with the prompt: $(cat "$TMP/out")"
  grep -q "generated (stopped: " "$TMP/err" && ok || bad "generate summary: $(cat "$TMP/err")"
  "$BIN/example_generate" "$TINY" "x = 1" >/dev/null 2>&1; [ $? -eq 1 ] && ok || bad "generate without a tokenizer should exit 1"
elif [ "${MC_ALLOW_NO_TOKENIZER:-0}" = 1 ]; then
  echo "no tokenizer at $TOK: tokenize and generate skipped (MC_ALLOW_NO_TOKENIZER=1)"
else
  bad "no tokenizer at $TOK (run scripts/fetch_tokenizer.sh or set MC_TOKENIZER_DIR; MC_ALLOW_NO_TOKENIZER=1 skips)"
fi

run "train_lora" -- "$BIN/example_train_lora" "$TINY" "$SRC/tests/fixtures/peft/train_data" "$TMP/lora" 2
grep -q "^step 2/2" "$TMP/out" && grep -q "adapter saved to" "$TMP/out" && ok || bad "train_lora output: $(cat "$TMP/out")"
for f in lora/adapter_config.json lora/adapter_model.safetensors lora/checkpoint/trainer_state.safetensors; do
  [ -s "$TMP/$f" ] && ok || bad "train_lora did not write $f"
done
cmp -s "$TMP/lora/adapter_model.safetensors" "$TMP/lora/checkpoint/adapter_model.safetensors" && ok || bad "saved adapter differs from the final checkpoint's"
run "eval with the example's adapter" -- "$MC" eval --model "$TINY" --adapter "$TMP/lora" --ids 1,2,3
"$BIN/example_train_lora" "$TINY" "$SRC/tests/fixtures/peft/train_data" "$TMP/lora2" 0 >/dev/null 2>&1; [ $? -eq 1 ] && ok || bad "train_lora with 0 iterations should exit 1"

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
