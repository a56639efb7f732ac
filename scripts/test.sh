#!/usr/bin/env bash
# test.sh - the one command that builds and tests metal-candle and enforces its quality
# gates. CI runs it (through .ci/run); run it before sending a change.
#
# Stages (all by default, in this order; each is timed and reported at the end):
#   setup     scripts/setup.sh: Debian packages and the test tokenizer
#   gcc       gcc Debug build, warnings as errors, gcov instrumentation; every target
#             (library, CLI, tests, benchmarks, examples); ctest; gcovr line coverage of
#             src/ must be >= MC_COVERAGE_MIN (85)
#   asan      clang Debug -O1 build with AddressSanitizer + UndefinedBehaviorSanitizer and
#             clang's warnings as errors; every target; ctest (leaks are errors)
#   tidy      clang-tidy (.clang-tidy) on every first-party .c file in src/ and tools/;
#             zero findings
#   cppcheck  cppcheck on src/ and tools/ (suppressions: .cppcheck-suppressions); zero
#             findings
#   fuzz      libFuzzer builds of tests/fuzz/fuzz_*.c (clang, ASan + UBSan); each runs
#             MC_FUZZ_SECONDS (10) from its corpus, new inputs kept under build/
#   cuda      when nvcc is found: Release build with MC_CUDA=ON of the library, the CLI,
#             the GPU tests, bench_cuda, bench_cuda_handoff and bench_gemm_floor, compiled
#             only (running them needs a GPU: scripts/gpu_test.sh); skipped with a note when
#             there is no nvcc
#
# Environment:
#   MC_TEST_STAGES="gcc tidy"   run only these stages (names above)
#   MC_JOBS=2                   parallel jobs for builds, ctest, clang-tidy, cppcheck
#   MC_FUZZ_SECONDS=10          time per fuzz target
#   MC_COVERAGE_MIN=85          minimum library line coverage (percent)
#   MC_BUILD_ROOT=build         where the build folders go (reused when present)
# Exit status: 0 when every stage passed, 1 otherwise (all requested stages still run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

STAGES="${MC_TEST_STAGES:-setup gcc asan tidy cppcheck fuzz cuda}"
JOBS="${MC_JOBS:-2}"
FUZZ_SECONDS="${MC_FUZZ_SECONDS:-10}"
COVERAGE_MIN="${MC_COVERAGE_MIN:-85}"
BUILD_ROOT="${MC_BUILD_ROOT:-$ROOT/build}"
[[ "$BUILD_ROOT" = /* ]] || BUILD_ROOT="$ROOT/$BUILD_ROOT"

B_GCC="$BUILD_ROOT/gcc-coverage"
B_ASAN="$BUILD_ROOT/clang-asan"
B_FUZZ="$BUILD_ROOT/clang-fuzz"
B_CUDA="$BUILD_ROOT/gcc-cuda"

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export CTEST_OUTPUT_ON_FAILURE=1

for s in $STAGES; do
    case "$s" in
    setup | gcc | asan | tidy | cppcheck | fuzz | cuda) ;;
    *) echo "test.sh: unknown stage '$s' (stages: setup gcc asan tidy cppcheck fuzz cuda)" >&2; exit 2 ;;
    esac
done
want() { [[ " $STAGES " == *" $1 "* ]]; }

banner() { printf '\n==== %s ====\n' "$*"; }

# Configures a build folder with Ninja (again only when the options changed).
configure() {
    local dir="$1"; shift
    cmake -S "$ROOT" -B "$dir" -G Ninja -Wno-dev --log-level=WARNING "$@"
}

# ---------------------------------------------------------------------------------------
stage_setup() {
    bash scripts/setup.sh
}

# The test tokenizer's folder, for tests that read it (when the fetch script exists).
export_tokenizer_dir() {
    if [[ -z "${MC_TOKENIZER_DIR:-}" && -f scripts/fetch_tokenizer.sh ]]; then
        MC_TOKENIZER_DIR="$(bash scripts/fetch_tokenizer.sh 2>/dev/null)" || MC_TOKENIZER_DIR=""
        export MC_TOKENIZER_DIR
    fi
}

# Checks that every examples/*.c became a program in build folder $1.
check_examples() {
    local dir="$1" src name n=0
    for src in examples/*.c; do
        [[ -e "$src" ]] || continue
        name="$(basename "$src" .c)"
        if [[ ! -x "$dir/example_$name" ]]; then
            echo "example $src was not built ($dir/example_$name missing)" >&2
            return 1
        fi
        n=$((n + 1))
    done
    echo "examples built: $n"
}

run_ctest() {
    ctest --test-dir "$1" --output-on-failure --no-tests=error -j "$JOBS"
}

stage_gcc() {
    configure "$B_GCC" -DCMAKE_C_COMPILER=gcc -DCMAKE_CXX_COMPILER=g++ \
        -DCMAKE_BUILD_TYPE=Debug -DMC_WERROR=ON -DMC_COVERAGE=ON -DMC_SANITIZE=OFF -DMC_FUZZ=OFF
    # -k 0: report every compile error at once, not only the first
    cmake --build "$B_GCC" -j "$JOBS" -- -k 0
    check_examples "$B_GCC"
    # Counters from earlier runs would inflate the coverage of this one.
    find "$B_GCC" -name '*.gcda' -delete
    local rc=0
    run_ctest "$B_GCC" || rc=1
    # Coverage is reported even when a test failed (it then fails the stage anyway).
    echo "library line coverage (src/ only; minimum $COVERAGE_MIN%):"
    gcovr --root "$ROOT" --object-directory "$B_GCC" --filter 'src/' -j "$JOBS" \
        --print-summary --fail-under-line "$COVERAGE_MIN" "$B_GCC" || rc=1
    return "$rc"
}

asan_args=(-DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Debug
    "-DCMAKE_C_FLAGS_DEBUG=-g -O1" "-DCMAKE_CXX_FLAGS_DEBUG=-g -O1"
    -DMC_WERROR=ON -DMC_COVERAGE=OFF -DMC_SANITIZE=ON -DMC_FUZZ=OFF)

stage_asan() {
    configure "$B_ASAN" "${asan_args[@]}"
    cmake --build "$B_ASAN" -j "$JOBS" -- -k 0
    check_examples "$B_ASAN"
    echo "ASAN_OPTIONS=$ASAN_OPTIONS UBSAN_OPTIONS=$UBSAN_OPTIONS"
    run_ctest "$B_ASAN"
}

# First-party .c files of src/ and tools/ that the build compiles (from its
# compile_commands.json), one per line, relative to the repository root.
compiled_sources() {
    python3 - "$1/compile_commands.json" "$ROOT" <<'EOF'
import json, os, sys
root = os.path.realpath(sys.argv[2])
seen = set()
for e in json.load(open(sys.argv[1])):
    f = os.path.realpath(os.path.join(e["directory"], e["file"]))
    rel = os.path.relpath(f, root)
    if rel.endswith(".c") and rel.split(os.sep)[0] in ("src", "tools") and rel not in seen:
        seen.add(rel)
        print(rel)
EOF
}

stage_tidy() {
    # clang-tidy reads the clang build's compile commands (gcc-only warning flags would
    # be unknown to it). Configuring is enough; nothing needs to be built.
    [[ -f "$B_ASAN/compile_commands.json" ]] || configure "$B_ASAN" "${asan_args[@]}"
    local files log rc=0
    mapfile -t files < <(compiled_sources "$B_ASAN")
    echo "clang-tidy: ${#files[@]} files, $(clang-tidy --version | grep -o 'version [0-9.]*')"
    ((${#files[@]})) || return 0
    log="$BUILD_ROOT/clang-tidy.log"
    printf '%s\n' "${files[@]}" |
        xargs -P "$JOBS" -n 1 sh -c 'out=$(clang-tidy -p "$1" --quiet "$2" 2>&1) || { printf "%s\n" "$out"; echo "clang-tidy: FAILED $2"; exit 1; }; printf "%s\n" "$out"' sh "$B_ASAN" \
        >"$log" 2>&1 || rc=1
    # Drop clang-tidy's "N warnings generated." chatter; keep findings and their context.
    grep -Ev '^[0-9]+ (warning|error)s?( and [0-9]+ (warning|error)s?)? generated\.$' "$log" || true
    local n
    n="$(grep -cE '^[^ ].*:[0-9]+:[0-9]+: (warning|error):' "$log" || true)"
    echo "clang-tidy findings: $n (full output: $log)"
    grep -E '^[^ ].*:[0-9]+:[0-9]+: (warning|error):' "$log" |
        sed -E "s|^$ROOT/||; s|: (warning\|error): .*\[([^]]*)\]\$| [\\2]|" | sort -u || true
    ((rc == 0 && n == 0))
}

stage_cppcheck() {
    local extra=()
    # Project-wide suppressions, each with its reason, if any are ever needed.
    [[ -f .cppcheck-suppressions ]] && extra+=(--suppressions-list=.cppcheck-suppressions)
    mkdir -p "$BUILD_ROOT/cppcheck"
    cppcheck --version
    cppcheck "${extra[@]}" --std=c11 --language=c --library=posix -I include -I src \
        --enable=warning,style,performance,portability --inline-suppr \
        --error-exitcode=1 --quiet -j "$JOBS" --cppcheck-build-dir="$BUILD_ROOT/cppcheck" \
        --template='{file}:{line}:{column}: {severity}: {message} [{id}]\n{code}' \
        -D__GNUC__=12 -D__x86_64__=1 -D__linux__=1 -D__CPPCHECK__=1 \
        src tools
    echo "cppcheck: no findings"
}

stage_fuzz() {
    local targets=() src name
    for src in tests/fuzz/fuzz_*.c; do
        [[ -e "$src" ]] && targets+=("$(basename "$src" .c)")
    done
    if ((${#targets[@]} == 0)); then
        echo "no fuzz targets (tests/fuzz/fuzz_*.c) yet"
        return 0
    fi
    configure "$B_FUZZ" -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
        -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_C_FLAGS_DEBUG=-g -O1" "-DCMAKE_CXX_FLAGS_DEBUG=-g -O1" \
        -DMC_WERROR=ON -DMC_COVERAGE=OFF -DMC_SANITIZE=ON -DMC_FUZZ=ON
    cmake --build "$B_FUZZ" -j "$JOBS" --target "${targets[@]}"
    local failed=0 corpus work dict log exe
    for name in "${targets[@]}"; do
        corpus="$ROOT/tests/fuzz/corpus/${name#fuzz_}"
        work="$B_FUZZ/fuzz-work/$name"
        log="$work/fuzz.log"
        rm -rf "$work" && mkdir -p "$work/corpus" "$work/artifacts"
        local args=(-max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048
            -print_final_stats=1 -artifact_prefix="$work/artifacts/")
        dict="tests/fuzz/$name.dict"
        [[ -f "$dict" ]] && args+=(-dict="$ROOT/$dict")
        [[ -d "$corpus" ]] || { echo "$name: no corpus folder $corpus" >&2; failed=1; }
        exe="$(find "$B_FUZZ" -type f -name "$name" -perm -u+x | head -n 1)"
        [[ -n "$exe" ]] || { echo "$name: program not found under $B_FUZZ" >&2; failed=1; continue; }
        if "$exe" "${args[@]}" "$work/corpus" "$corpus" >"$log" 2>&1; then
            echo "$name: ok, $(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$') runs in ${FUZZ_SECONDS}s, corpus $(ls "$corpus" 2>/dev/null | wc -l) -> $(ls "$work/corpus" | wc -l) new"
        else
            echo "$name: FAILED; the input is in $work/artifacts/ (add it to $corpus once fixed):"
            tail -n 60 "$log"
            failed=1
        fi
    done
    return "$failed"
}

stage_cuda() {
    local nvcc
    nvcc="$(command -v nvcc || true)"
    if [[ -z "$nvcc" && -x /usr/local/cuda/bin/nvcc ]]; then nvcc=/usr/local/cuda/bin/nvcc; fi
    if [[ -z "$nvcc" ]]; then
        echo "nvcc not found: the CUDA backend was not compiled"
        return 0
    fi
    configure "$B_CUDA" -DCMAKE_C_COMPILER=gcc -DCMAKE_CXX_COMPILER=g++ -DCMAKE_BUILD_TYPE=Release \
        -DMC_WERROR=ON -DMC_COVERAGE=OFF -DMC_SANITIZE=OFF -DMC_FUZZ=OFF -DMC_CUDA=ON \
        -DCMAKE_CUDA_COMPILER="$nvcc"
    cmake --build "$B_CUDA" -j "$JOBS" --target mcandle mcandle_static mcandle_cli test_gpu_ops \
        test_gpu_model test_gpu_train bench_cuda bench_cuda_handoff bench_gemm_floor
    echo "CUDA backend, GPU tests and benchmarks compiled with $("$nvcc" --version | tail -n 1)"
    echo "(not run here: scripts/gpu_test.sh runs them on a GPU machine)"
}

# ---------------------------------------------------------------------------------------
results=()
overall=0
start_all=$SECONDS
for s in setup gcc asan tidy cppcheck fuzz cuda; do
    want "$s" || continue
    banner "stage $s"
    [[ "$s" == setup ]] || export_tokenizer_dir
    t0=$SECONDS
    set +e
    (set -e; "stage_$s")
    rc=$?
    set -e
    dt=$((SECONDS - t0))
    if ((rc == 0)); then
        results+=("$(printf '  %-9s passed  %4ds' "$s" "$dt")")
    else
        results+=("$(printf '  %-9s FAILED  %4ds' "$s" "$dt")")
        overall=1
    fi
done

banner "summary"
printf '%s\n' "${results[@]}"
if ((overall == 0)); then
    echo "test.sh: all stages passed in $((SECONDS - start_all))s"
else
    echo "test.sh: FAILED (see the stages above) after $((SECONDS - start_all))s"
fi
exit "$overall"
