#!/usr/bin/env bash
# test_tokenize.sh - `mcandle tokenize` and `mcandle detokenize`: outputs, JSON-lines mode,
# round trips, and one-line errors with non-zero exit codes.
# Usage: test_tokenize.sh MCANDLE SOURCE_DIR BINARY_DIR
set -u
M="$1"; SRC="$2"; BIN="$3"
TOK="$SRC/tests/fixtures/tokenizer/synthetic/gpt2_like.json"
TMP="$BIN/tmp/cli_tokenize"
rm -rf "$TMP" && mkdir -p "$TMP"
pass=0; fail=0
ok() { pass=$((pass + 1)); }
bad() { echo "FAIL: $*" >&2; fail=$((fail + 1)); }
expect_eq() { if [[ "$1" == "$2" ]]; then ok; else bad "$3: got [$1], expected [$2]"; fi; }

# --help on both commands: usage on stdout, exit 0.
"$M" tokenize --help | grep -q "usage: mcandle tokenize" && ok || bad "tokenize --help"
"$M" detokenize --help | grep -q "usage: mcandle detokenize" && ok || bad "detokenize --help"

# --text, then back with --ids.
ids=$("$M" tokenize --tokenizer "$TOK" --text "Hello world, it's 2024!")
[[ "$ids" =~ ^\[[0-9,]+\]$ ]] && ok || bad "tokenize --text printed [$ids]"
text=$("$M" detokenize --tokenizer "$TOK" --ids "${ids:1:${#ids}-2}")
expect_eq "$text" "Hello world, it's 2024!" "round trip through --ids"

# Special tokens are recognised in text; --skip-special drops them on the way back.
ids=$("$M" tokenize --tokenizer "$TOK" --text "a<|endoftext|>b")
[[ "$ids" == *471* ]] && ok || bad "special token id in [$ids]"
text=$("$M" detokenize --tokenizer "$TOK" --skip-special --ids "${ids:1:${#ids}-2}")
expect_eq "$text" "ab" "--skip-special"

# --file encodes the file's bytes exactly (trailing newline included).
printf 'int x;\n\tx++;\n' > "$TMP/in.c"
a=$("$M" tokenize --tokenizer "$TOK" --file "$TMP/in.c")
b=$("$M" tokenize --tokenizer "$TOK" --text "$(printf 'int x;\n\tx++;\n_')" )
[[ -n "$a" && "$a" != "$b" ]] && ok || bad "--file"
expect_eq "$("$M" detokenize --tokenizer "$TOK" --ids "${a:1:${#a}-2}")" "$(cat "$TMP/in.c")" "--file round trip"

# --jsonl: one array per line, in order; escapes, NUL and the empty string.
printf '"one"\n"two words"\n""\n"nul\\u0000byte \\ud83d\\ude00"\n' |
    "$M" tokenize --tokenizer "$TOK" --jsonl > "$TMP/ids.jsonl"
expect_eq "$(wc -l < "$TMP/ids.jsonl")" "4" "jsonl line count"
expect_eq "$(sed -n 3p "$TMP/ids.jsonl")" "[]" "empty string gives []"
"$M" detokenize --tokenizer "$TOK" --jsonl < "$TMP/ids.jsonl" > "$TMP/back.jsonl"
expect_eq "$(sed -n 1p "$TMP/back.jsonl")" '"one"' "jsonl detokenize line 1"
expect_eq "$(sed -n 2p "$TMP/back.jsonl")" '"two words"' "jsonl detokenize line 2"
expect_eq "$(sed -n 4p "$TMP/back.jsonl")" '"nul\u0000byte 😀"' "jsonl detokenize line 4"

# Errors: one line on stderr naming the problem, non-zero exit.
check_err() { # expected-exit pattern description -- command...
    local want="$1" pat="$2" what="$3"; shift 3
    "$@" > /dev/null 2> "$TMP/err"; local rc=$?
    if [[ $rc -ne $want ]]; then bad "$what: exit $rc, expected $want"; return; fi
    if [[ $(wc -l < "$TMP/err") -ne 1 ]] || ! grep -q -- "$pat" "$TMP/err"; then
        bad "$what: stderr [$(cat "$TMP/err")] lacks [$pat]"; return; fi
    ok
}
printf '"fine"\n[1,2]\n"never"\n' > "$TMP/badline.jsonl"
check_err 1 "stdin line 2" "bad jsonl line" "$M" tokenize --tokenizer "$TOK" --jsonl < "$TMP/badline.jsonl"
printf '[1]\n"x"\n' > "$TMP/badids.jsonl"
check_err 1 "stdin line 2" "bad ids line" "$M" detokenize --tokenizer "$TOK" --jsonl < "$TMP/badids.jsonl"
printf 'ok \xff\xfe\n' > "$TMP/bad_utf8.txt"
check_err 1 "byte offset 3" "invalid UTF-8" "$M" tokenize --tokenizer "$TOK" --file "$TMP/bad_utf8.txt"
check_err 1 "MC_ERR_TOKEN_ID" "unknown id" "$M" detokenize --tokenizer "$TOK" --ids 999999
check_err 2 "ids" "malformed --ids" "$M" detokenize --tokenizer "$TOK" --ids 1,,2
check_err 1 "MC_ERR_FILE_NOT_FOUND" "missing tokenizer" "$M" tokenize --tokenizer "$TMP/none.json" --text x
check_err 2 "exactly one input" "no input" "$M" tokenize --tokenizer "$TOK"
check_err 2 "exactly one input" "two inputs" "$M" tokenize --tokenizer "$TOK" --text a --jsonl
check_err 2 "--tokenizer is required" "no tokenizer" "$M" tokenize --text a
check_err 2 "unknown option" "unknown option" "$M" detokenize --tokenizer "$TOK" --text a
check_err 1 "cannot read" "missing file" "$M" tokenize --tokenizer "$TOK" --file "$TMP/none.txt"
check_err 2 "needs a value" "missing value" "$M" tokenize --tokenizer

# The real tokenizer, when present: a known encoding.
REAL="${MC_TOKENIZER_DIR:-${MC_CACHE_DIR:-$HOME/.cache/metal-candle}/tokenizer-qwen3-3.7.2}"
if [[ -f "$REAL/tokenizer.json" ]]; then
    expect_eq "$("$M" tokenize --tokenizer "$REAL" --text 'Hello, world! <|im_end|>')" \
        "[9707,11,1879,0,220,151645]" "real tokenizer"
fi

echo "$pass passed, $fail failed"
[[ $fail -eq 0 ]]
