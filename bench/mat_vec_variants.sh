#!/usr/bin/env bash
# Builds libggml-webgpu.so with other mat-vec workgroup shapes, for `bash bench/gpu_compare.sh sweep`:
#
#   bash bench/mat_vec_variants.sh NAME:ROWS:THREADS ...     e.g. base:1:128 opw4wg256:4:256
#
# gives .devcarry/variants/NAME/libggml-webgpu.so, the vendored tree with ROWS rows of a quantized
# matrix per workgroup (WEBGPU_MUL_MAT_VEC_LEGACY_Q_OUTPUTS_PER_WG and _K_Q_) and THREADS threads
# (WEBGPU_MUL_MAT_VEC_WG_SIZE). Only ggml-webgpu is rebuilt, from copies, with the build tree's shaders.
set -euo pipefail
cd "$(dirname "$0")/.."
B=$(dirname "$(ls build/*/CMakeCache.txt | tail -1)")
B=$(cd "$B" && pwd)
V=$PWD/vendor/llama.cpp
W=ggml/src/ggml-webgpu
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for spec in "$@"; do
    IFS=: read -r name rows threads <<< "$spec"
    cp "$V/$W/ggml-webgpu.cpp" "$V/$W/ggml-webgpu-shader-lib.hpp" "$tmp/"
    sed -i -E "s/^#define WEBGPU_MUL_MAT_VEC_(LEGACY_Q|K_Q)_OUTPUTS_PER_WG +[0-9]+/#define WEBGPU_MUL_MAT_VEC_\1_OUTPUTS_PER_WG $rows/;
               s/^#define WEBGPU_MUL_MAT_VEC_WG_SIZE +[0-9]+/#define WEBGPU_MUL_MAT_VEC_WG_SIZE $threads/" \
        "$tmp/ggml-webgpu-shader-lib.hpp"
    out=.devcarry/variants/$name
    mkdir -p "$out"
    g++ -DGGML_BACKEND_BUILD -DGGML_BACKEND_DL -DGGML_BACKEND_SHARED -DGGML_SCHED_MAX_COPIES=4 -DGGML_SHARED \
        -D_GNU_SOURCE -D_XOPEN_SOURCE=600 -iquote "$tmp" -iquote "$V/$W" -I"$V/ggml/src" \
        -I"$B/llama.cpp/$W/generated" -I"$V/ggml/include" -I"$B/dawn/include" -O3 -DNDEBUG -fPIC -std=gnu++20 \
        -c "$tmp/ggml-webgpu.cpp" -o "$tmp/ggml-webgpu.o"
    g++ -shared -o "$out/libggml-webgpu.so" "$tmp/ggml-webgpu.o" "$B/bin/libggml-base.so" "$B/libllama_webgpu_procs.so"
    echo "built $out ($rows rows, $threads threads)"
done
