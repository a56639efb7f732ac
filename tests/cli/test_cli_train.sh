#!/usr/bin/env bash
# test_cli_train.sh MCANDLE SOURCE_DIR BINARY_DIR - `mcandle train`: the PEFT reference run
# through the exact documented invocation (losses within 1e-4 of PEFT's), --save-every then
# --resume after an interruption, --config FILE.json, --help, usage errors (exit 2, one
# line on stderr), runtime errors (exit 1), and SIGKILL at several points of a run that
# checkpoints every step: every file left parses, and --resume ends with the adapter of an
# uninterrupted run, bit for bit.
set -u
MC=$1; SRC=$2; BIN=$3
TMP=$BIN/tmp/cli_train; rm -rf "$TMP"; mkdir -p "$TMP"
# One OpenMP thread per run: the model is tiny and tests run side by side on few cores.
export OMP_NUM_THREADS=1
pass=0; fail=0
ok()  { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAILED: $*" >&2; }
# expect CODE DESCRIPTION -- command...: checks the exit code; a usage error (2) must be
# one line on stderr, a runtime error (1) must end with one "mcandle train:" line
expect() {
  local code=$1 desc=$2; shift 3
  "$@" >"$TMP/out" 2>"$TMP/err"; local rc=$?
  if [ $rc -ne "$code" ]; then bad "$desc: exit $rc, expected $code; stderr: $(cat "$TMP/err")"; return; fi
  if [ "$code" -eq 2 ] && [ "$(wc -l <"$TMP/err")" -ne 1 ]; then bad "$desc: stderr is not one line: $(cat "$TMP/err")"; return; fi
  if [ "$code" -eq 1 ] && ! tail -n1 "$TMP/err" | grep -q "^mcandle train: "; then bad "$desc: no error line: $(cat "$TMP/err")"; return; fi
  ok
}
M=$SRC/tests/fixtures/tiny_tied_f32
D=$SRC/tests/fixtures/peft/train_data
A=$SRC/tests/fixtures/peft/adapter

# "step loss" per step object of a jsonl log, in order
losses() { sed -n 's/^{"step":\([0-9]*\),"loss":\([^,}]*\).*/\1 \2/p' "$1"; }

# ---- the reference invocation ----
OUT=$TMP/ref_out; L=$TMP/L.jsonl
expect 0 "reference run" -- "$MC" train --model "$M" --data "$D" --adapter-path "$OUT" \
  --resume-adapter-file "$A" --batch-size 2 --iters 5 --learning-rate 1e-2 --weight-decay 0.01 \
  --lr-schedule constant --max-seq-length 16 --seed 0 --log-jsonl "$L"
[ "$(grep -c '"step":' "$L" 2>/dev/null)" -eq 5 ] && ok || bad "L.jsonl should hold 5 step objects: $(cat "$L" 2>/dev/null)"
[ "$(losses "$L" | awk '{print $1}' | tr '\n' ' ')" = "1 2 3 4 5 " ] && ok || bad "L.jsonl steps: $(losses "$L")"
# PEFT's losses from train_ref.json ("losses": [ ... ] one number per line)
awk '/"losses"/{f=1;next} f&&/\]/{f=0} f{gsub(/[ ,]/,"");print}' "$SRC/tests/fixtures/peft/train_ref.json" >"$TMP/ref"
[ "$(wc -l <"$TMP/ref")" -eq 5 ] && ok || bad "train_ref.json losses unreadable"
losses "$L" | awk '{print $2}' | paste -d' ' - "$TMP/ref" >"$TMP/pairs"
if awk '{r=$1/$2-1; if (r<0) r=-r; printf "step %d: loss %s, PEFT %s, rel %.2e\n", NR, $1, $2, r; if (!(r<=1e-4)) bad=1} END{exit bad}' "$TMP/pairs"; then ok; else bad "losses differ from PEFT's by more than 1e-4"; fi
for f in adapter_config.json adapter_model.safetensors trainer_state.safetensors; do
  [ -s "$OUT/$f" ] && ok || bad "reference run did not write $f"
done
expect 0 "eval with the trained adapter" -- "$MC" eval --model "$M" --adapter "$OUT" --ids 1,2,3,4
grep -q "^loss=" "$TMP/out" && ok || bad "eval --adapter output: $(cat "$TMP/out")"

# ---- --save-every, an interruption, --resume to the same --iters ----
# The interrupted run stops after its step-5 checkpoint: the same command with --iters 5
# (the data order and a constant schedule do not depend on --iters).
common=(--model "$M" --data "$D" --resume-adapter-file "$A" --batch-size 2 --learning-rate 1e-2
  --weight-decay 0.01 --lr-schedule constant --max-seq-length 16 --seed 0)
expect 0 "10 steps uninterrupted" -- "$MC" train "${common[@]}" --adapter-path "$TMP/full" --iters 10 --save-every 5 --log-jsonl "$TMP/full.jsonl"
expect 0 "first 5 steps" -- "$MC" train "${common[@]}" --adapter-path "$TMP/part" --iters 5 --save-every 5 --log-jsonl "$TMP/part.jsonl"
expect 0 "resume to 10" -- "$MC" train "${common[@]}" --adapter-path "$TMP/part" --iters 10 --save-every 5 --log-jsonl "$TMP/part.jsonl" --resume "$TMP/part"
grep -q "step 10/10" "$TMP/out" && ok || bad "resumed run progress: $(cat "$TMP/out")"
cmp -s "$TMP/full/adapter_model.safetensors" "$TMP/part/adapter_model.safetensors" && ok || bad "resumed adapter differs from the uninterrupted one"
cmp -s "$TMP/full/trainer_state.safetensors" "$TMP/part/trainer_state.safetensors" && ok || bad "resumed trainer state differs"
[ "$(losses "$TMP/full.jsonl")" = "$(losses "$TMP/part.jsonl")" ] && ok || bad "resumed log: $(losses "$TMP/part.jsonl") vs $(losses "$TMP/full.jsonl")"
# resuming a finished run does nothing more
expect 0 "resume a finished run" -- "$MC" train "${common[@]}" --adapter-path "$TMP/part" --iters 10 --resume "$TMP/part"
cmp -s "$TMP/full/adapter_model.safetensors" "$TMP/part/adapter_model.safetensors" && ok || bad "resuming a finished run changed the adapter"

# ---- --config FILE.json with the same keys ----
cat >"$TMP/config.json" <<EOF
{"model": "$M", "data": "$D", "adapter_path": "$TMP/cfg", "resume_adapter_file": "$A",
 "batch_size": 2, "iters": 5, "learning_rate": 1e-2, "weight_decay": 0.01,
 "lr_schedule": "constant", "max_seq_length": 16, "seed": 0, "log_jsonl": "$TMP/cfg.jsonl"}
EOF
expect 0 "--config" -- "$MC" train --config "$TMP/config.json"
cmp -s "$OUT/adapter_model.safetensors" "$TMP/cfg/adapter_model.safetensors" && ok || bad "--config run differs from the flags run"
[ "$(losses "$L")" = "$(losses "$TMP/cfg.jsonl")" ] && ok || bad "--config losses differ"
# flags on the command line win over the file; dashes work as keys too
printf '{"iters": 3, "grad-clip": 1.0, "no_shuffle": true, "pack": false}\n' >"$TMP/config2.json"
expect 0 "--config with flags" -- "$MC" train --config "$TMP/config2.json" "${common[@]}" --adapter-path "$TMP/cfg2" --iters 2 --log-jsonl "$TMP/cfg2.jsonl"
[ "$(grep -c '"loss"' "$TMP/cfg2.jsonl")" -eq 2 ] && ok || bad "command-line --iters should win over the config"
printf '[1, 2]\n' >"$TMP/notobj.json"
printf '{"bogus_key": 1}\n' >"$TMP/unknown.json"
printf '{"iters": {"a": 1}}\n' >"$TMP/nested.json"
printf '{"iters": "x"}\n' >"$TMP/badval.json"
expect 2 "--config missing file" -- "$MC" train --config "$TMP/nope.json"
expect 2 "--config not an object" -- "$MC" train --config "$TMP/notobj.json"
expect 2 "--config unknown key" -- "$MC" train --config "$TMP/unknown.json" --model "$M" --data "$D" --adapter-path "$TMP/x"
expect 2 "--config nested value" -- "$MC" train --config "$TMP/nested.json" --model "$M" --data "$D" --adapter-path "$TMP/x"
expect 2 "--config bad value" -- "$MC" train --config "$TMP/badval.json" --model "$M" --data "$D" --adapter-path "$TMP/x"
expect 2 "--config without a file" -- "$MC" train --model "$M" --config

# ---- help and usage errors ----
expect 0 "--help" -- "$MC" train --help
grep -q "usage: mcandle train" "$TMP/out" && grep -q -- "--resume" "$TMP/out" && ok || bad "--help text"
expect 0 "-h" -- "$MC" train -h
base=(--model "$M" --data "$D" --adapter-path "$TMP/u")
expect 2 "no arguments" -- "$MC" train
expect 2 "no --model" -- "$MC" train --data "$D" --adapter-path "$TMP/u"
expect 2 "no --data" -- "$MC" train --model "$M" --adapter-path "$TMP/u"
expect 2 "no --adapter-path" -- "$MC" train --model "$M" --data "$D"
expect 2 "unknown option" -- "$MC" train "${base[@]}" --frobnicate
expect 2 "missing value" -- "$MC" train "${base[@]}" --iters
expect 2 "missing string value" -- "$MC" train "${base[@]}" --log-jsonl
expect 2 "batch size 0" -- "$MC" train "${base[@]}" --batch-size 0
expect 2 "batch size not a number" -- "$MC" train "${base[@]}" --batch-size two
expect 2 "iters negative" -- "$MC" train "${base[@]}" --iters -1
expect 2 "max-seq-length 1" -- "$MC" train "${base[@]}" --max-seq-length 1
expect 2 "negative learning rate" -- "$MC" train "${base[@]}" --learning-rate -1
expect 2 "learning rate junk" -- "$MC" train "${base[@]}" --learning-rate 1e-2x
expect 2 "bad lora targets" -- "$MC" train "${base[@]}" --lora-targets q,zz
expect 2 "rank 0" -- "$MC" train "${base[@]}" --rank 0
expect 2 "val-batches -2" -- "$MC" train "${base[@]}" --val-batches -2

# ---- runtime errors: exit 1 with a message ----
expect 1 "missing data folder" -- "$MC" train --model "$M" --data "$TMP/nodata" --adapter-path "$TMP/r1"
grep -q "nodata" "$TMP/err" && ok || bad "missing data message: $(cat "$TMP/err")"
expect 1 "missing model" -- "$MC" train --model "$TMP/nomodel" --data "$D" --adapter-path "$TMP/r1"
mkdir -p "$TMP/baddata"; printf '{"input_ids": [1, 2, 3]}\n{"input_ids": [1,\n' >"$TMP/baddata/train.jsonl"
expect 1 "invalid line" -- "$MC" train --model "$M" --data "$TMP/baddata" --adapter-path "$TMP/r2" --iters 1
grep -q "train.jsonl:2" "$TMP/err" && ok || bad "invalid line message: $(cat "$TMP/err")"
expect 0 "--skip-invalid" -- "$MC" train --model "$M" --data "$TMP/baddata" --adapter-path "$TMP/r2" --iters 1 --skip-invalid
expect 1 "unknown schedule" -- "$MC" train "${base[@]}" --lr-schedule exponential --iters 1
grep -q "exponential" "$TMP/err" && ok || bad "schedule message: $(cat "$TMP/err")"
expect 1 "unknown optimizer" -- "$MC" train "${base[@]}" --optimizer adam --iters 1
expect 1 "resume without a checkpoint" -- "$MC" train "${base[@]}" --iters 1 --resume "$TMP/nockpt"
expect 1 "missing --resume-adapter-file" -- "$MC" train "${base[@]}" --iters 1 --resume-adapter-file "$TMP/noadapter"
expect 1 "resume with another seed" -- "$MC" train "${common[@]}" --adapter-path "$TMP/part" --iters 12 --resume "$TMP/part" --seed 3
grep -q "seed" "$TMP/err" && ok || bad "seed mismatch message: $(cat "$TMP/err")"
expect 0 "options: sgd, cosine, warmup, clip, accumulation, pack, checkpointing, dropout, targets" -- \
  "$MC" train "${base[@]}" --iters 2 --optimizer sgd --momentum 0.9 --lr-schedule cosine --warmup 1 \
  --grad-clip 1 --grad-accumulation-steps 2 --pack --grad-checkpoint --lora-dropout 0.1 \
  --lora-targets q_proj,v --rank 2 --alpha 4 --num-layers 1 --rslora --no-shuffle --steps-per-report 1 --threads 1

# ---- SIGKILL during a run that checkpoints every step ----
# An uninterrupted run gives the reference adapter and its duration T; runs killed at
# fractions of T must leave parseable files, and --resume (or a fresh start when no
# checkpoint was written yet) must end with the reference adapter, bit for bit.
N=25
kill_cmd=("${common[@]}" --iters $N --save-every 1)
now() { date +%s.%N; }
t0=$(now)
expect 0 "uninterrupted $N steps" -- "$MC" train "${kill_cmd[@]}" --adapter-path "$TMP/k_ref" --log-jsonl "$TMP/k_ref.jsonl"
T=$(awk -v a="$t0" -v b="$(now)" 'BEGIN{print b-a}')
echo "uninterrupted run: $T s"
for frac in 0.15 0.4 0.65 0.9; do
  K=$TMP/k_$frac; rm -rf "$K"
  "$MC" train "${kill_cmd[@]}" --adapter-path "$K" --log-jsonl "$K.jsonl" >/dev/null 2>&1 &
  pid=$!
  sleep "$(awk -v t="$T" -v f="$frac" 'BEGIN{print t*f}')"
  kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  step=$(losses "$K.jsonl" 2>/dev/null | tail -n1 | awk '{print $1}')
  echo "killed at ${frac} T after step ${step:-0}: $(ls "$K" 2>/dev/null | tr '\n' ' ')"
  if [ -f "$K/adapter_config.json" ] && [ -f "$K/adapter_model.safetensors" ]; then
    expect 0 "adapter left by a kill at $frac T parses" -- "$MC" eval --model "$M" --adapter "$K" --ids 1,2,3
  fi
  if [ -f "$K/trainer_state.safetensors" ]; then
    expect 0 "resume after a kill at $frac T" -- "$MC" train "${kill_cmd[@]}" --adapter-path "$K" --log-jsonl "$K.jsonl" --resume "$K"
  else
    expect 0 "restart after a kill at $frac T (no checkpoint yet)" -- "$MC" train "${kill_cmd[@]}" --adapter-path "$K" --log-jsonl "$K.jsonl"
  fi
  cmp -s "$TMP/k_ref/adapter_model.safetensors" "$K/adapter_model.safetensors" && ok || bad "kill at $frac T: final adapter differs from the uninterrupted run"
  cmp -s "$TMP/k_ref/trainer_state.safetensors" "$K/trainer_state.safetensors" && ok || bad "kill at $frac T: final trainer state differs"
  [ "$(losses "$TMP/k_ref.jsonl")" = "$(losses "$K.jsonl")" ] && ok || bad "kill at $frac T: the log's steps and losses differ from the uninterrupted run's"
  tmps=$(find "$K" -name '*.tmp' | wc -l)
  [ "$tmps" -eq 0 ] && ok || bad "kill at $frac T: temporary files left after the resumed run: $(find "$K" -name '*.tmp')"
done

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
