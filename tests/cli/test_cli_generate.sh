#!/usr/bin/env bash
# test_cli_generate.sh MCANDLE SOURCE_DIR BINARY_DIR - `mcandle generate` and `mcandle init`:
# ids without a tokenizer, exact token counts, the statistics file, adapters, Ctrl-C during
# a long generation, presets and configs, and one-line errors with exit 2 (usage) or 1.
set -u
MC=$1; SRC=$2; BIN=$3
TMP=$BIN/tmp/cli_generate
. "$SRC/tests/cli/lib.sh"
# words FILE: number of whitespace-separated words
words() { wc -w <"$1" | tr -d ' '; }
TINY=$SRC/tests/fixtures/tiny_tied_f32   # no tokenizer in this folder
TOK=$SRC/tests/fixtures/tokenizer/synthetic/gpt2_like.json
ADAPTER=$SRC/tests/fixtures/peft/adapter

# ---- generate ----
expect 0 "generate --help" -- "$MC" generate --help
grep -q "usage: mcandle generate" "$TMP/out" && grep -q -- "--stats-json" "$TMP/out" && ok || bad "generate --help text"

expect 0 "ids without a tokenizer" -- "$MC" generate --model "$TINY" --prompt-ids 1,2,3 --print-ids --ignore-eos --max-tokens 7 --temp 0
[ "$(words "$TMP/out")" -eq 7 ] && ok || bad "--ignore-eos --max-tokens 7 printed: $(cat "$TMP/out")"
grep -Eqx '[0-9]+( [0-9]+)*' "$TMP/out" && ok || bad "ids line: $(cat "$TMP/out")"
grep -q "stop: max_tokens" "$TMP/err" && ok || bad "speed line: $(cat "$TMP/err")"
cp "$TMP/out" "$TMP/greedy"
# without --print-ids and without a tokenizer, ids are printed too; greedy repeats
expect 0 "ids fallback" -- "$MC" generate --model "$TINY" --prompt-ids 1,2,3 --ignore-eos --max-tokens 7 --temp 0 --threads 1
cmp -s "$TMP/out" "$TMP/greedy" && ok || bad "greedy runs differ: $(cat "$TMP/out") vs $(cat "$TMP/greedy")"
# sampling with a seed repeats; every id is in the vocabulary
expect 0 "seeded sampling" -- "$MC" generate --model "$TINY" --prompt-ids 5 --print-ids --ignore-eos --max-tokens 20 --temp 1.5 --top-k 0 --top-p 1 --min-p 0 --seed 9
cp "$TMP/out" "$TMP/seeded"
expect 0 "seeded sampling again" -- "$MC" generate --model "$TINY" --prompt-ids 5 --print-ids --ignore-eos --max-tokens 20 --temp 1.5 --top-k 0 --top-p 1 --min-p 0 --seed 9
cmp -s "$TMP/out" "$TMP/seeded" && ok || bad "same seed, other ids"
[ "$(words "$TMP/out")" -eq 20 ] && ok || bad "20 sampled ids: $(cat "$TMP/out")"
awk '{for (i = 1; i <= NF; i++) if ($i < 0 || $i >= 512) exit 1}' "$TMP/out" && ok || bad "ids outside the vocabulary: $(cat "$TMP/out")"

# statistics file
expect 0 "--stats-json" -- "$MC" generate --model "$TINY" --prompt-ids 4,5,6,7 --print-ids --ignore-eos --max-tokens 5 --temp 0 --stats-json "$TMP/stats.json"
python3 - "$TMP/stats.json" <<'EOF' && ok || bad "stats file: $(cat "$TMP/stats.json" 2>&1)"
import json, sys
d = json.load(open(sys.argv[1]))
want = {"prompt_tokens", "prefill_tokens_per_s", "generated_tokens", "decode_tokens_per_s",
        "peak_rss_bytes", "stop_reason"}
assert set(d) == want, sorted(d)
assert d["prompt_tokens"] == 4 and d["generated_tokens"] == 5, d
assert d["stop_reason"] == "max_tokens", d
assert d["prefill_tokens_per_s"] > 0 and d["decode_tokens_per_s"] > 0 and d["peak_rss_bytes"] > 0, d
EOF

# text through a tokenizer given with --tokenizer; a stop string ends it
expect 0 "text with --tokenizer" -- "$MC" generate --model "$TINY" --tokenizer "$TOK" --prompt "hello world" --ignore-eos --max-tokens 8 --temp 0
[ -s "$TMP/out" ] && ok || bad "no text printed"
head -c 3 "$TMP/out" >"$TMP/first3"
expect 0 "stop string" -- "$MC" generate --model "$TINY" --tokenizer "$TOK" --prompt "hello world" --ignore-eos --max-tokens 8 --temp 0 --stop "$(cat "$TMP/first3")"
grep -q "stop: stop_string" "$TMP/err" && ok || bad "stop string: $(cat "$TMP/err")"

# adapters: scale 0 is the base model
expect 0 "adapter" -- "$MC" generate --model "$TINY" --prompt-ids 1,2,3 --print-ids --ignore-eos --max-tokens 7 --temp 0 --adapter "$ADAPTER"
expect 0 "adapter scale 0" -- "$MC" generate --model "$TINY" --prompt-ids 1,2,3 --print-ids --ignore-eos --max-tokens 7 --temp 0 --adapter "$ADAPTER" --adapter-scale 0
cmp -s "$TMP/out" "$TMP/greedy" && ok || bad "adapter at scale 0 differs from the base model"

# usage errors: exit 2, one line
expect 2 "no model" -- "$MC" generate --prompt-ids 1
expect 2 "no prompt" -- "$MC" generate --model "$TINY"
expect 2 "two prompts" -- "$MC" generate --model "$TINY" --prompt hi --prompt-ids 1
expect 2 "--chat with ids" -- "$MC" generate --model "$TINY" --prompt-ids 1 --chat
expect 2 "--system without --chat" -- "$MC" generate --model "$TINY" --prompt hi --system sys
expect 2 "unknown option" -- "$MC" generate --model "$TINY" --prompt-ids 1 --bogus
expect 2 "missing value" -- "$MC" generate --model "$TINY" --prompt-ids
expect 2 "max-tokens 0" -- "$MC" generate --model "$TINY" --prompt-ids 1 --max-tokens 0
expect 2 "max-tokens not a number" -- "$MC" generate --model "$TINY" --prompt-ids 1 --max-tokens 5x
expect 2 "temp not a number" -- "$MC" generate --model "$TINY" --prompt-ids 1 --temp warm
expect 2 "empty stop" -- "$MC" generate --model "$TINY" --prompt-ids 1 --stop ""
stops=(); for i in $(seq 17); do stops+=(--stop "s$i"); done
expect 2 "17 stop strings" -- "$MC" generate --model "$TINY" --prompt-ids 1 "${stops[@]}"
expect 2 "bad prompt ids" -- "$MC" generate --model "$TINY" --prompt-ids 1,x
# runtime errors: exit 1, one line
expect 1 "missing model" -- "$MC" generate --model "$TMP/nope" --prompt-ids 1
grep -q "nope" "$TMP/err" && ok || bad "missing model message: $(cat "$TMP/err")"
expect 1 "text without a tokenizer" -- "$MC" generate --model "$TINY" --prompt hello
expect 1 "stop without a tokenizer" -- "$MC" generate --model "$TINY" --prompt-ids 1 --stop x
expect 1 "chat without a template" -- "$MC" generate --model "$TINY" --tokenizer "$TOK" --prompt hi --chat
expect 1 "id outside the vocabulary" -- "$MC" generate --model "$TINY" --prompt-ids 1,512
expect 1 "prompt fills the context" -- "$MC" generate --model "$TINY" --prompt-ids 1,2,3 --ctx 3
expect 1 "missing adapter" -- "$MC" generate --model "$TINY" --prompt-ids 1 --adapter "$TMP/nope"

# ---- init ----
expect 0 "init --help" -- "$MC" init --help
grep -q "usage: mcandle init" "$TMP/out" && ok || bad "init --help text"
expect 0 "init tiny" -- "$MC" init --preset tiny --out "$TMP/tiny" --seed 3
grep -q "wrote" "$TMP/out" && ok || bad "init output: $(cat "$TMP/out")"
expect 0 "info on tiny" -- "$MC" info --model "$TMP/tiny"
grep -q "vocab_size: 151936" "$TMP/out" && grep -q "dtype: BF16" "$TMP/out" && ok || bad "tiny info: $(cat "$TMP/out")"
cat >"$TMP/small.json" <<'EOF'
{"model_type": "qwen2", "hidden_act": "silu", "vocab_size": 64, "hidden_size": 16,
 "intermediate_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2,
 "num_key_value_heads": 1, "tie_word_embeddings": true, "eos_token_id": 3}
EOF
for dt in f32 f16 bf16; do
  expect 0 "init --config --dtype $dt" -- "$MC" init --config "$TMP/small.json" --dtype "$dt" --out "$TMP/small_$dt"
  expect 0 "info $dt" -- "$MC" info --model "$TMP/small_$dt"
  grep -qi "dtype: $dt" "$TMP/out" && ok || bad "dtype $dt: $(cat "$TMP/out")"
done
expect 2 "init without --out" -- "$MC" init --preset tiny
expect 2 "init preset and config" -- "$MC" init --preset tiny --config "$TMP/small.json" --out "$TMP/x"
expect 2 "init neither preset nor config" -- "$MC" init --out "$TMP/x"
expect 2 "init bad dtype" -- "$MC" init --preset tiny --dtype f64 --out "$TMP/x"
expect 2 "init bad seed" -- "$MC" init --preset tiny --seed -1 --out "$TMP/x"
expect 2 "init unknown option" -- "$MC" init --preset tiny --out "$TMP/x" --bogus
expect 2 "init missing value" -- "$MC" init --preset tiny --out
expect 1 "init unknown preset" -- "$MC" init --preset qwen9 --out "$TMP/x"
grep -q "qwen2.5-coder-0.5b" "$TMP/err" && ok || bad "unknown preset message lists the presets: $(cat "$TMP/err")"
expect 1 "init missing config" -- "$MC" init --config "$TMP/none.json" --out "$TMP/x"
expect 1 "init out is a file" -- "$MC" init --config "$TMP/small.json" --out "$TMP/small.json"

# ---- Ctrl-C: a long generation stops cleanly, keeping what was printed ----
"$MC" generate --model "$TMP/tiny" --prompt-ids 1,2,3 --print-ids --ignore-eos --max-tokens 1000000 \
    --ctx 32768 --temp 0 >"$TMP/long" 2>"$TMP/long_err" &
pid=$!
for _ in $(seq 200); do [ -s "$TMP/long" ] && break; sleep 0.1; done
if [ -s "$TMP/long" ]; then
  kill -INT "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid"; wait "$pid"; bad "generate did not stop on SIGINT"
  else
    wait "$pid"; rc=$?
    [ $rc -eq 0 ] && ok || bad "SIGINT: exit $rc; stderr: $(cat "$TMP/long_err")"
    grep -q "stop: callback" "$TMP/long_err" && ok || bad "SIGINT stop reason: $(cat "$TMP/long_err")"
    n=$(words "$TMP/long")
    [ "$n" -ge 1 ] && [ "$n" -lt 1000000 ] && ok || bad "SIGINT: $n ids printed"
    [ "$(tail -c 1 "$TMP/long" | od -An -c | tr -d ' ')" = '\n' ] && ok || bad "SIGINT: output not ended by a newline"
  fi
else
  kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  bad "long generation printed nothing in 20 s: $(cat "$TMP/long_err")"
fi

summary
