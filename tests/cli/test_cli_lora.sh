#!/usr/bin/env bash
# test_cli_lora.sh MCANDLE SOURCE_DIR BINARY_DIR - `mcandle eval --adapter` and
# `mcandle fuse`: results, one-line errors with non-zero exits, --help.
set -u
MC=$1; SRC=$2; BIN=$3
TMP=$BIN/tmp/cli_lora
. "$SRC/tests/cli/lib.sh"
loss() { tail -n1 "$TMP/out" | sed 's/^loss=//'; }
# near A B TOL: |A - B| < TOL
near() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN{d=a-b; if (d<0) d=-d; exit !(d < t)}'; }
TINY=$SRC/tests/fixtures/tiny_tied_f32
AD=$SRC/tests/fixtures/peft/adapter
IDS=$(python3 -c "import json;print(','.join(map(str,json.load(open('$SRC/tests/fixtures/peft/adapter_ids.json'))['ids'])))")

expect 0 "eval base" -- "$MC" eval --model "$TINY" --ids "$IDS"
base=$(loss)
expect 0 "eval --adapter" -- "$MC" eval --model "$TINY" --ids "$IDS" --adapter "$AD" --logits-out "$TMP/a.npy"
with=$(loss)
near "$base" "$with" 1e-3 && bad "the adapter does not change the loss ($base vs $with)" || ok
size=$(stat -c %s "$TMP/a.npy"); [ "$size" -eq $((128 + 80*512*4)) ] && ok || bad "logits file size $size"
expect 0 "eval --adapter-scale 0" -- "$MC" eval --model "$TINY" --ids "$IDS" --adapter "$AD" --adapter-scale 0
[ "$(loss)" = "$base" ] && ok || bad "scale 0 loss $(loss) differs from the base's $base"
expect 0 "eval --adapter --reference" -- "$MC" eval --model "$TINY" --ids "$IDS" --adapter "$AD" --reference --threads 1
near "$(loss)" "$with" 1e-5 && ok || bad "reference kernels: loss $(loss) vs $with"

expect 0 "fuse" -- "$MC" fuse --model "$TINY" --adapter "$AD" --out "$TMP/fused"
grep -q "model.safetensors" "$TMP/out" && ok || bad "fuse output: $(cat "$TMP/out")"
for f in model.safetensors config.json generation_config.json; do
  [ -f "$TMP/fused/$f" ] && ok || bad "fused folder lacks $f"
done
cmp -s "$TINY/config.json" "$TMP/fused/config.json" && ok || bad "config.json not copied verbatim"
expect 0 "eval fused" -- "$MC" eval --model "$TMP/fused" --ids "$IDS"
near "$(loss)" "$with" 1e-5 && ok || bad "fused loss $(loss) vs unmerged $with"
expect 0 "info fused" -- "$MC" info --model "$TMP/fused"
grep -q "dtype: F32" "$TMP/out" && ok || bad "fused dtype: $(cat "$TMP/out")"

for c in fuse eval; do expect 0 "$c --help" -- "$MC" $c --help; grep -q -- "--adapter" "$TMP/out" && ok || bad "$c --help text"; done
expect 0 "--help lists fuse" -- "$MC" --help
grep -q "fuse" "$TMP/out" && ok || bad "fuse missing from the command list"
expect 2 "fuse without --model" -- "$MC" fuse --adapter "$AD" --out "$TMP/o"
expect 2 "fuse without --adapter" -- "$MC" fuse --model "$TINY" --out "$TMP/o"
expect 2 "fuse without --out" -- "$MC" fuse --model "$TINY" --adapter "$AD"
expect 2 "fuse unknown option" -- "$MC" fuse --model "$TINY" --adapter "$AD" --out "$TMP/o" --bogus
expect 2 "fuse missing value" -- "$MC" fuse --model "$TINY" --adapter "$AD" --out
expect 1 "fuse into the base folder" -- "$MC" fuse --model "$TINY" --adapter "$AD" --out "$TINY"
grep -q "base model's folder" "$TMP/err" && ok || bad "fuse into base message: $(cat "$TMP/err")"
expect 1 "fuse missing adapter" -- "$MC" fuse --model "$TINY" --adapter "$TMP/nope" --out "$TMP/o"
grep -q "nope" "$TMP/err" && ok || bad "missing adapter message"
expect 1 "fuse missing model" -- "$MC" fuse --model "$TMP/nope" --adapter "$AD" --out "$TMP/o"
expect 1 "fuse out is a file" -- "$MC" fuse --model "$TINY" --adapter "$AD" --out "$TINY/config.json"
expect 1 "fuse adapter of another model" -- "$MC" fuse --model "$SRC/tests/fixtures/llama_f16" --adapter "$AD" --out "$TMP/o"

expect 2 "eval --adapter-scale without --adapter" -- "$MC" eval --model "$TINY" --ids 1,2 --adapter-scale 2
expect 2 "eval bad --adapter-scale" -- "$MC" eval --model "$TINY" --ids 1,2 --adapter "$AD" --adapter-scale x
expect 2 "eval --adapter without value" -- "$MC" eval --model "$TINY" --ids 1,2 --adapter
expect 1 "eval missing adapter" -- "$MC" eval --model "$TINY" --ids 1,2 --adapter "$TMP/nope"
grep -q "nope" "$TMP/err" && ok || bad "missing adapter message: $(cat "$TMP/err")"
mkdir -p "$TMP/dora"; sed 's/"use_dora": false/"use_dora": true/' "$AD/adapter_config.json" >"$TMP/dora/adapter_config.json"
expect 1 "eval DoRA adapter" -- "$MC" eval --model "$TINY" --ids 1,2 --adapter "$TMP/dora"
grep -q "use_dora" "$TMP/err" && grep -q "MC_ERR_UNSUPPORTED" "$TMP/err" && ok || bad "DoRA message: $(cat "$TMP/err")"

summary
