#!/usr/bin/env bash
# test_cli_model.sh MCANDLE SOURCE_DIR BINARY_DIR - `mcandle info` and `mcandle eval`:
# output format, logits file, and one-line errors with non-zero exits.
set -u
MC=$1; SRC=$2; BIN=$3
TMP=$BIN/tmp/cli_model
. "$SRC/tests/cli/lib.sh"
TINY=$SRC/tests/fixtures/tiny_tied_f32
REF=$(python3 -c "import json;d=json.load(open('$TINY/ref/ids.json'));print(','.join(map(str,d['sequences'][2])), d['losses'][2])" 2>/dev/null)
IDS=${REF% *}; HFLOSS=${REF#* }

expect 0 "eval" -- "$MC" eval --model "$TINY" --ids "$IDS" --logits-out "$TMP/l.npy"
last=$(tail -n1 "$TMP/out")
case "$last" in loss=*) ok ;; *) bad "eval: last line is '$last'" ;; esac
awk -v a="${last#loss=}" -v b="$HFLOSS" 'BEGIN{d=a-b; if (d<0) d=-d; exit !(d < 1e-5)}' && ok || bad "eval loss ${last#loss=} vs HF $HFLOSS"
# .npy of [33, 512] float32: 128-byte header + 33*512*4 bytes
size=$(stat -c %s "$TMP/l.npy"); [ "$size" -eq $((128 + 33*512*4)) ] && ok || bad "logits file size $size"
head -c 128 "$TMP/l.npy" | grep -q "'shape': (33, 512)" && ok || bad "logits header"

expect 0 "info" -- "$MC" info --model "$SRC/tests/fixtures/qwen2_bf16_sharded"
grep -q "Qwen2ForCausalLM" "$TMP/out" && grep -q "dtype: BF16" "$TMP/out" && grep -q "key/value heads" "$TMP/out" && ok || bad "info output: $(cat "$TMP/out")"

for c in eval info; do expect 0 "$c --help" -- "$MC" $c --help; grep -q usage "$TMP/out" && ok || bad "$c --help text"; done
expect 0 "--help" -- "$MC" --help
expect 2 "no command" -- "$MC"
expect 2 "unknown command" -- "$MC" frobnicate
expect 2 "eval without --model" -- "$MC" eval --ids 1,2
expect 2 "eval without --ids" -- "$MC" eval --model "$TINY"
expect 2 "eval bad ids" -- "$MC" eval --model "$TINY" --ids 1,x,3
expect 2 "eval empty ids" -- "$MC" eval --model "$TINY" --ids ""
expect 2 "eval unknown option" -- "$MC" eval --model "$TINY" --ids 1 --bogus
expect 2 "eval missing value" -- "$MC" eval --model "$TINY" --ids
expect 2 "eval bad threads" -- "$MC" eval --model "$TINY" --ids 1 --threads 0
expect 1 "eval id out of range" -- "$MC" eval --model "$TINY" --ids 1,512
grep -q "512" "$TMP/err" && ok || bad "out-of-range id message: $(cat "$TMP/err")"
expect 1 "eval missing folder" -- "$MC" eval --model "$TMP/nope" --ids 1
grep -q "nope" "$TMP/err" && ok || bad "missing folder message"
expect 1 "eval file as model" -- "$MC" eval --model "$TINY/config.json" --ids 1
expect 1 "info missing folder" -- "$MC" info --model "$TMP/nope"
expect 1 "eval unwritable logits" -- "$MC" eval --model "$TINY" --ids 1,2 --logits-out "$TMP/no/such/dir/x.npy"
expect 1 "eval unknown device" -- "$MC" eval --model "$TINY" --ids 1,2 --device tpu
grep -q "tpu" "$TMP/err" && ok || bad "unknown device message: $(cat "$TMP/err")"
expect 0 "eval on the cpu device" -- "$MC" eval --model "$TINY" --ids 1,2 --device cpu
expect 0 "eval reference kernels" -- "$MC" eval --model "$TINY" --ids 1,2,3 --reference --threads 1

summary
