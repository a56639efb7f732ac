# lib.sh - shared by the CLI test scripts (sourced, not run): counters, the one-line-error
# check, and the closing summary line. Before sourcing, set TMP (a scratch folder, emptied
# here). After it, call `summary` last.
rm -rf "$TMP"; mkdir -p "$TMP"
pass=0; fail=0
ok()  { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAILED: $*" >&2; }
# expect CODE DESCRIPTION -- command...: checks the exit code and that a failure leaves
# exactly one line on stderr
expect() {
  local code=$1 desc=$2; shift 3
  "$@" >"$TMP/out" 2>"$TMP/err"; local rc=$?
  if [ $rc -ne "$code" ]; then bad "$desc: exit $rc, expected $code; stderr: $(cat "$TMP/err")"; return; fi
  if [ "$code" -ne 0 ] && [ "$(wc -l <"$TMP/err")" -ne 1 ]; then bad "$desc: stderr is not one line: $(cat "$TMP/err")"; return; fi
  ok
}
# summary: the closing line and the exit status
summary() {
  echo "$pass passed, $fail failed"
  [ $fail -eq 0 ]
}
