#!/usr/bin/env bash
# Build the llama.cpp tools the benchmark runs, from the folder fetch_llamacpp.sh made.
#
#     bash bench/peers/build_llamacpp.sh [--cuda] [--quick] [--configure-only] [-jN] [SRC]
#
# SRC defaults to bench/peers/llama.cpp.
#
# Binaries land in bench/peers/build/bin (build-cuda/bin with --cuda, build-quick/bin with --quick), outside
# SRC so that copying SRC to another machine again does not replace a build there.
# --quick compiles with -O1: about half the time, for checking outputs on a small CPU, not for timing. --cuda builds the CUDA backend for
# sm_90 (H100/H200) only, with flash-attention kernels for F16 K/V only (the benchmark's cache type)
# and without NCCL, which cuts the CUDA compile time. A CUDA toolkit without cuBLAS (nvcc alone) is completed
# by the cuBLAS of the pip package nvidia-cublas, which PyTorch's CUDA wheels install (or $CUBLAS_DIR: a
# folder with include/cublas_v2.h and lib/libcublas.so*).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CUDA=0
QUICK=0
CONFIGURE_ONLY=0
JOBS=2
SRC="$HERE/llama.cpp"
for arg in "$@"; do
    case "$arg" in
        --cuda) CUDA=1 ;;
        --quick) QUICK=1 ;;
        --configure-only) CONFIGURE_ONLY=1 ;;
        -j*) JOBS="${arg#-j}" ;;
        -*) echo "error: unknown option $arg (use --cuda, --quick, --configure-only, -jN)" >&2; exit 2 ;;
        *) SRC="$arg" ;;
    esac
done
if [ ! -f "$SRC/CMakeLists.txt" ]; then
    echo "error: $SRC has no llama.cpp sources; run bench/peers/fetch_llamacpp.sh first" >&2
    exit 2
fi
TARGETS="llama-bench llama-speculative llama-speculative-simple llama-lookup llama-simple llama-completion llama-quantize"
FLAGS=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF
       -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=ON)
BUILD="$HERE/build"
if [ "$QUICK" = 1 ]; then
    BUILD="$HERE/build-quick"
    FLAGS+=("-DCMAKE_C_FLAGS_RELEASE=-O1 -DNDEBUG" "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -DNDEBUG")
fi
if [ "$CUDA" = 1 ]; then
    BUILD="$HERE/build-cuda${BUILD#"$HERE/build"}"
    FLAGS+=(-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_FA_ALL_QUANTS=OFF
            "-DGGML_CUDA_FA_QUANTS=f16-f16" -DGGML_CUDA_NCCL=OFF -DGGML_CUDA_COMPRESSION_MODE=none)
    NVCC="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
    if [ ! -f "$(dirname "$(readlink -f "$NVCC")")/../include/cublas_v2.h" ]; then
        CUBLAS_DIR="${CUBLAS_DIR:-$(python3 - <<'PY'
import glob, site
for base in site.getsitepackages():
    for d in sorted(glob.glob(base + "/nvidia/cu1*/")) + glob.glob(base + "/nvidia/cublas/"):
        if glob.glob(d + "include/cublas_v2.h") and glob.glob(d + "lib/libcublas.so*"):
            print(d.rstrip("/"))
            raise SystemExit
PY
)}"
        if [ -z "$CUBLAS_DIR" ]; then
            echo "error: the CUDA toolkit has no cuBLAS and no nvidia-cublas package was found; set CUBLAS_DIR" >&2
            exit 2
        fi
        echo "cuBLAS from $CUBLAS_DIR"
        FLAGS+=("-DCUDA_cublas_LIBRARY=$(ls "$CUBLAS_DIR"/lib/libcublas.so* | head -1)"
                "-DCUDA_cublasLt_LIBRARY=$(ls "$CUBLAS_DIR"/lib/libcublasLt.so* | head -1)"
                "-DCMAKE_CUDA_FLAGS=-I$CUBLAS_DIR/include" "-DCMAKE_CXX_FLAGS=-I$CUBLAS_DIR/include")
    fi
    # A toolkit without the driver stub lib64/stubs/libcuda.so: link against the driver's own library.
    if [ ! -e "$(dirname "$(readlink -f "$NVCC")")/../lib64/stubs/libcuda.so" ] && ! ldconfig -p 2>/dev/null | grep -q "libcuda.so "; then
        LIBCUDA="$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 /{print $NF; exit}' || true)"
        for lib in /usr/lib/x86_64-linux-gnu/libcuda.so.1 /usr/lib64/libcuda.so.1 /usr/local/nvidia/lib64/libcuda.so.1; do
            [ -z "$LIBCUDA" ] && [ -e "$lib" ] && LIBCUDA="$lib"
        done
        if [ -n "$LIBCUDA" ]; then
            echo "CUDA driver library $LIBCUDA"
            FLAGS+=("-DCUDA_cuda_driver_LIBRARY=$LIBCUDA")
        fi
    fi
fi
cmake -S "$SRC" -B "$BUILD" "${FLAGS[@]}"
[ "$CONFIGURE_ONLY" = 1 ] && exit 0
# shellcheck disable=SC2086
cmake --build "$BUILD" -j "$JOBS" --target $TARGETS
echo "built in $BUILD/bin: $(cd "$BUILD/bin" && ls | tr '\n' ' ')"
