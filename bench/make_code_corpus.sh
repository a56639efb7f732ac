#!/usr/bin/env bash
# make_code_corpus.sh - assembles the tokenizer benchmark corpus: real source code from
# installed Debian packages (C headers of libc6-dev and linux-libc-dev, the Python 3.11
# standard library), concatenated in a fixed order. Files that are not valid UTF-8 are
# left out. The corpus is not committed; the same package versions give the same bytes.
#
# Usage: bench/make_code_corpus.sh OUT_FILE      (prints size, sha256 and package versions)
set -euo pipefail
out="${1:?usage: make_code_corpus.sh OUT_FILE}"
pkgs=(libc6-dev linux-libc-dev libpython3.11-stdlib)
tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
: >"$tmp"
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || { echo "make_code_corpus.sh: package $p is not installed" >&2; exit 1; }
    dpkg -L "$p" | LC_ALL=C sort | while IFS= read -r f; do
        [[ -f "$f" && ! -L "$f" ]] || continue
        case "$f" in *.h|*.py) ;; *) continue ;; esac
        if iconv -f UTF-8 -t UTF-8 "$f" >/dev/null 2>&1; then cat "$f" >>"$tmp"; fi
    done
done
mv "$tmp" "$out"
trap - EXIT
size=$(stat -c %s "$out")
echo "corpus: $out"
echo "bytes: $size"
echo "sha256: $(sha256sum "$out" | cut -d' ' -f1)"
for p in "${pkgs[@]}"; do echo "package: $p $(dpkg-query -W -f='${Version}' "$p")"; done
