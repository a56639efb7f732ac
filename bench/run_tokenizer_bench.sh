#!/usr/bin/env bash
# run_tokenizer_bench.sh - tokenizer encoding throughput of metal-candle and of Hugging Face
# `tokenizers` on the same machine, in one run, single-threaded, on the same chunks of the
# same code corpus; checks that both produce the same ids (digest) and prints the ratio.
#
# Usage: bench/run_tokenizer_bench.sh [--bin build/release/bench_tokenize]
#            [--tokenizer DIR] [--corpus FILE] [--repeat 3] [--hf-repeat 2] [--out DIR]
# Defaults: the tokenizer from scripts/fetch_tokenizer.sh, the corpus from
# bench/make_code_corpus.sh (made under the build folder when missing). Needs python3 with
# `tokenizers` for the comparison; without it only metal-candle is measured.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
bin="$root/build/release/bench_tokenize"
tok=""
corpus=""
repeat=3
hf_repeat=2
out=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --tokenizer) tok="$2"; shift 2 ;;
    --corpus) corpus="$2"; shift 2 ;;
    --repeat) repeat="$2"; shift 2 ;;
    --hf-repeat) hf_repeat="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "run_tokenizer_bench.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[[ -n "$tok" ]] || tok="${MC_TOKENIZER_DIR:-$("$root/scripts/fetch_tokenizer.sh")}"
if [[ -z "$corpus" ]]; then
    corpus="$(dirname "$bin")/code_corpus.txt"
    [[ -f "$corpus" ]] || "$here/make_code_corpus.sh" "$corpus" >&2
fi
[[ -x "$bin" ]] || { echo "run_tokenizer_bench.sh: build bench_tokenize first ($bin)" >&2; exit 1; }
out="${out:-$(mktemp -d)}"
mkdir -p "$out"

echo "machine: $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
echo "corpus: $corpus ($(stat -c %s "$corpus") bytes, sha256 $(sha256sum "$corpus" | cut -c1-16)...)"
ours=$("$bin" --tokenizer "$tok" --corpus "$corpus" --repeat "$repeat" --digests "$out/ours.txt")
echo "$ours"
mb_ours=$(echo "$ours" | sed -n 's/.* \([0-9.]*\) MB\/s.*/\1/p')
if ! python3 -c "import tokenizers" 2>/dev/null; then
    echo "python3 has no 'tokenizers': Hugging Face side skipped"
    exit 0
fi
theirs=$(TOKENIZERS_PARALLELISM=false RAYON_NUM_THREADS=1 python3 "$here/hf_tokenize_bench.py" \
    "$tok/tokenizer.json" "$corpus" --repeat "$hf_repeat" --digests "$out/hf.txt")
echo "$theirs"
mb_hf=$(echo "$theirs" | sed -n 's/.* \([0-9.]*\) MB\/s.*/\1/p')
if cmp -s "$out/ours.txt" "$out/hf.txt"; then
    echo "ids: identical on every chunk"
else
    echo "ids: DIFFER on $(diff "$out/ours.txt" "$out/hf.txt" | grep -c '^<') chunks (first: $(diff "$out/ours.txt" "$out/hf.txt" | sed -n 2p))"
    status=1
fi
awk -v a="$mb_ours" -v b="$mb_hf" 'BEGIN { printf "ratio: %.1fx (metal-candle %.2f MB/s vs tokenizers %.2f MB/s)\n", a / b, a, b }'
exit "${status:-0}"
