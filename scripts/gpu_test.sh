#!/usr/bin/env bash
# gpu_test.sh - builds the CUDA backend on a machine with an NVIDIA GPU and runs, in one go:
# the GPU tests (ctest -L gpu), a compute-sanitizer memcheck run of them, and the GPU
# benchmarks: bench_cuda next to its Hugging Face transformers + PEFT peer
# (bench/peft_bench.py) on the same checkpoint, bench_cuda_handoff and bench_gemm_floor.
# Logs go to $OUT (default ./out).
#
# Steps (all by default, in this order): build test bench peft profile memcheck
#   (profile: bench_cuda again with MC_CUDA_PROFILE=1, short runs, device time per kernel)
#   MC_GPU_STEPS="build test"   run only these
#   MC_JOBS=16                  build parallelism (default: all cores)
#   MC_BUILD_ROOT=build         build folder parent (build/gpu-cuda inside it)
#   MC_BENCH_ARGS="..."         extra arguments for bench_cuda
#   MC_TEST_TIMEOUT=400         seconds per GPU test
#   MC_MEMCHECK_TESTS="..."     GPU test programs run under compute-sanitizer (default all)
# When pkg-config cannot find openblas/libcjson/libpcre2-8/libutf8proc (a machine without
# a package registry), the Debian packages in .gpudeps/ (fetched elsewhere with
# `apt-get download`, see the list in the error message) are unpacked under /tmp and used.
# Exit status: 0 when every step passed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
OUT="${OUT:-$ROOT/out}"
mkdir -p "$OUT"
STEPS="${MC_GPU_STEPS:-build test bench peft profile memcheck}"
JOBS="${MC_JOBS:-$(nproc)}"
BUILD_ROOT="${MC_BUILD_ROOT:-$ROOT/build}"
B="$BUILD_ROOT/gpu-cuda"
want() { [[ " $STEPS " == *" $1 "* ]]; }
summary=()
overall=0
note() { summary+=("$(printf '  %-9s %s' "$1" "$2")"); }

export PATH="/usr/local/cuda/bin:$PATH"
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    nvcc --version | tail -n 2
    cmake --version | head -n 1
    gcc --version | head -n 1
    python3 -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)' 2>&1
} >"$OUT/env.log" 2>&1
cat "$OUT/env.log"

# ---- C dependencies -------------------------------------------------------------------
deps_ok() { command -v pkg-config >/dev/null && pkg-config --exists openblas libcjson libpcre2-8 libutf8proc; }
if ! deps_ok; then
    D=/tmp/mcandle-deps
    if ! ls .gpudeps/*.deb >/dev/null 2>&1; then
        echo "gpu_test.sh: openblas, libcjson, libpcre2-8 or libutf8proc (or pkg-config) missing and no .gpudeps/*.deb" >&2
        echo "  (apt-get download libopenblas0-pthread libopenblas-pthread-dev libgfortran5 libquadmath0 libcjson1 libcjson-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libpcre2-dev libutf8proc2 libutf8proc-dev pkgconf-bin libpkgconf3)" >&2
        exit 1
    fi
    rm -rf "$D" && mkdir -p "$D"
    for f in .gpudeps/*.deb; do
        if command -v dpkg-deb >/dev/null; then
            dpkg-deb -x "$f" "$D"
        else
            (cd "$D" && ar p "$ROOT/$f" "$(ar t "$ROOT/$f" | grep '^data.tar')" | tar -x --auto-compress -f - 2>/dev/null ||
                ar p "$ROOT/$f" data.tar.xz | tar -xJ)
        fi
    done
    L="$D/usr/lib/x86_64-linux-gnu"
    export PKG_CONFIG_SYSROOT_DIR="$D"
    export PKG_CONFIG_LIBDIR="$L/pkgconfig:$L/openblas-pthread/pkgconfig"
    export LD_LIBRARY_PATH="$L:$L/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    if ! command -v pkg-config >/dev/null; then
        ln -sf pkgconf "$D/usr/bin/pkg-config"
        export PATH="$D/usr/bin:$PATH"
    fi
    echo "using the Debian packages of .gpudeps (unpacked in $D)"
fi

# ---- build ------------------------------------------------------------------------------
if want build; then
    t0=$SECONDS
    if cmake -S "$ROOT" -B "$B" -G Ninja -Wno-dev --log-level=WARNING -DCMAKE_BUILD_TYPE=Release \
        -DMC_CUDA=ON -DMC_WERROR=ON -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" >"$OUT/build.log" 2>&1 &&
        cmake --build "$B" -j "$JOBS" --target test_gpu_ops test_gpu_model test_gpu_train bench_cuda \
            bench_cuda_handoff bench_gemm_floor mcandle_cli >>"$OUT/build.log" 2>&1; then
        note build "passed $((SECONDS - t0))s"
    else
        tail -n 60 "$OUT/build.log"
        note build "FAILED $((SECONDS - t0))s (build.log)"
        overall=1
        STEPS=""
    fi
fi

# ---- tests ------------------------------------------------------------------------------
if want test; then
    t0=$SECONDS
    if ctest --test-dir "$B" -L gpu -V --timeout "${MC_TEST_TIMEOUT:-400}" >"$OUT/ctest_gpu.log" 2>&1; then
        note test "passed $((SECONDS - t0))s"
    else
        note test "FAILED $((SECONDS - t0))s (ctest_gpu.log)"
        overall=1
    fi
    grep -E "FAIL|tests passed|tests failed|Passed|Failed|passed, " "$OUT/ctest_gpu.log" | tail -n 30
fi

# ---- benchmark and its peer ---------------------------------------------------------------
PRESET_DIR="${TMPDIR:-/tmp}/mcandle-bench-qwen2.5-coder-0.5b"
if want bench; then
    t0=$SECONDS
    # shellcheck disable=SC2086
    if timeout 300 "$B/bench_cuda" ${MC_BENCH_ARGS:-} >"$OUT/bench_cuda.log" 2>&1; then
        note bench "passed $((SECONDS - t0))s"
    else
        note bench "FAILED $((SECONDS - t0))s (bench_cuda.log)"
        overall=1
    fi
    tail -n 12 "$OUT/bench_cuda.log"
    # the cost of a kernel's wait for the one before it (graphs of dependent launches)
    if timeout 60 "$B/bench_cuda_handoff" >"$OUT/bench_handoff.log" 2>&1; then
        note handoff "passed"
    else
        note handoff "FAILED (bench_handoff.log)"
        overall=1
    fi
    # the frozen-weight GEMMs of a training step alone in cuBLAS: the floor under a step
    if timeout 120 "$B/bench_gemm_floor" >"$OUT/bench_gemm_floor.log" 2>&1; then
        note gemm_floor "passed"
    else
        note gemm_floor "FAILED (bench_gemm_floor.log)"
        overall=1
    fi
    tail -n 2 "$OUT/bench_gemm_floor.log"
fi
if want peft; then
    t0=$SECONDS
    if [[ -d "$PRESET_DIR" ]] &&
        PYTHONUNBUFFERED=1 timeout 300 python3 bench/peft_bench.py --model "$PRESET_DIR" \
            >"$OUT/peft_bench.log" 2>&1; then
        note peft "passed $((SECONDS - t0))s"
    else
        note peft "FAILED $((SECONDS - t0))s (peft_bench.log)"
        overall=1
    fi
    tail -n 8 "$OUT/peft_bench.log"
fi

if want profile; then
    t0=$SECONDS
    if MC_CUDA_PROFILE=1 timeout 200 "$B/bench_cuda" --gen 16 --iters 5 >"$OUT/bench_profile.log" 2>&1; then
        note profile "passed $((SECONDS - t0))s"
    else
        note profile "FAILED $((SECONDS - t0))s (bench_profile.log)"
        overall=1
    fi
fi

# ---- compute-sanitizer ------------------------------------------------------------------
if want memcheck; then
    t0=$SECONDS
    rc=0
    : >"$OUT/memcheck.log"
    for t in ${MC_MEMCHECK_TESTS:-test_gpu_ops test_gpu_train test_gpu_model}; do
        echo "==== memcheck $t" >>"$OUT/memcheck.log"
        (cd "$B/tests" && MC_GPU_TEST_QUICK=1 timeout 200 compute-sanitizer --tool memcheck \
            --leak-check full --error-exitcode 99 "./$t") >>"$OUT/memcheck.log" 2>&1 || rc=1
        grep -E "ERROR SUMMARY|passed, " "$OUT/memcheck.log" | tail -n 2
    done
    if ((rc == 0)); then note memcheck "passed $((SECONDS - t0))s"; else
        note memcheck "FAILED $((SECONDS - t0))s (memcheck.log)"
        overall=1
    fi
fi

printf '\n==== summary\n'
printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
exit "$overall"
