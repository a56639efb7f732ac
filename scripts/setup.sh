#!/usr/bin/env bash
# setup.sh - installs what building and testing metal-candle needs on Debian 12, then
# fetches the test tokenizer. Safe to run again: it installs only what is missing and
# runs `apt-get update` at most once, only when something is missing.
#
# Usage: scripts/setup.sh        (as root, or as a user with sudo)
# Env:   MC_SETUP_SKIP_APT=1     skip the package check (e.g. a non-Debian machine that
#                                already has the tools)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Debian packages and why each is here.
packages=(
    build-essential     # gcc, make, libc headers
    cmake ninja-build pkg-config
    clang               # sanitizer and fuzzer builds, clang warnings
    libclang-rt-14-dev  # ASan/UBSan/libFuzzer runtimes for clang 14
    libomp-dev          # OpenMP for clang (gcc brings its own libgomp)
    clang-tidy cppcheck gcovr
    libopenblas-dev     # GEMM
    libcjson-dev        # JSON (config.json, safetensors headers, tokenizer.json)
    libpcre2-dev        # pre-tokenizer regex
    libutf8proc-dev     # NFC normalisation
    python3
    ca-certificates     # https for npm
)

is_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

if [[ "${MC_SETUP_SKIP_APT:-0}" != 1 ]]; then
    if ! command -v dpkg-query >/dev/null; then
        echo "setup.sh: not a Debian system; install the packages listed in scripts/setup.sh" \
             "yourself and run with MC_SETUP_SKIP_APT=1" >&2
        exit 1
    fi
    missing=()
    for p in "${packages[@]}"; do
        is_installed "$p" || missing+=("$p")
    done
    # node and npm may come from another distribution of Node.js (whose nodejs package
    # bundles npm and conflicts with Debian's npm): check the commands, not the packages.
    command -v node >/dev/null || missing+=(nodejs)
    command -v npm >/dev/null || missing+=(npm)

    if ((${#missing[@]})); then
        sudo=()
        if [[ "$(id -u)" != 0 ]]; then
            command -v sudo >/dev/null || {
                echo "setup.sh: missing packages (${missing[*]}) and not root; no sudo" >&2
                exit 1
            }
            sudo=(sudo)
        fi
        echo "setup.sh: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        "${sudo[@]}" apt-get update -qq >/dev/null
        "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi

# The tokenizer the tests, benchmarks and demo use (kept in a cache folder outside git).
if [[ -f scripts/fetch_tokenizer.sh ]]; then
    bash scripts/fetch_tokenizer.sh >/dev/null
fi
echo "setup.sh: ok" >&2
