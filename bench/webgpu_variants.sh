#!/usr/bin/env bash
# Builds libggml-webgpu.so with the patch series cut before each speed patch, so one run on the GPU
# machine measures every patch against the one before (bench/gpu_compare.sh --webgpu-lib columns):
#
#   bash bench/webgpu_variants.sh [--timing] PATCH...     e.g. 0011 0012 0013 0014
#
# gives .devcarry/variants/before-PATCH/libggml-webgpu.so for each PATCH (the series without
# PATCH and everything after it). With --timing, also timing-before-PATCH and timing-all: the same
# builds with bench/webgpu_graph_timing.py's host-time measurement, and sections-all: the whole series
# with that measurement split into sections (--sections). Only ggml-webgpu is rebuilt
# (with the build tree's compile flags), from copies: the vendored tree is left as it is.
#
#   bash bench/webgpu_variants.sh --defines NAME:MACRO=VALUE[,MACRO=VALUE...] ...
#
# instead builds the whole series with other values of the shader library's #defines (kernel
# shapes), for `gpu_compare.sh sweep`, e.g. sgk64:WEBGPU_MUL_MAT_SUBGROUP_TILE_K_QUANT=64.
#
#   bash bench/webgpu_variants.sh --mat-vec NAME:ROWS:THREADS ...     e.g. opw4wg256:4:256
#
# is the same for the mat-vec workgroup shapes: ROWS rows of a quantized matrix per workgroup
# (WEBGPU_MUL_MAT_VEC_LEGACY_Q_OUTPUTS_PER_WG and _K_Q_) and THREADS threads
# (WEBGPU_MUL_MAT_VEC_WG_SIZE).
set -euo pipefail
cd "$(dirname "$0")/.."
timing=0 defines=0
if [ "${1:-}" = "--timing" ]; then timing=1; shift; fi
if [ "${1:-}" = "--defines" ]; then defines=1; shift; fi
if [ "${1:-}" = "--mat-vec" ]; then
    defines=1; shift
    specs=()
    for spec in "$@"; do
        IFS=: read -r name rows threads <<< "$spec"
        specs+=("$name:WEBGPU_MUL_MAT_VEC_LEGACY_Q_OUTPUTS_PER_WG=$rows,WEBGPU_MUL_MAT_VEC_K_Q_OUTPUTS_PER_WG=$rows,WEBGPU_MUL_MAT_VEC_WG_SIZE=$threads")
    done
    set -- "${specs[@]}"
fi
B=$(dirname "$(ls build/*/CMakeCache.txt | tail -1)")
B=$(cd "$B" && pwd)
V=$PWD/vendor/llama.cpp
W=ggml/src/ggml-webgpu
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

compile() {  # compile DIR NAME: DIR holds ggml-webgpu.cpp, ggml-webgpu-shader-lib.hpp and generated/
    local d=$1 out=.devcarry/variants/$2
    mkdir -p "$out"
    g++ -DGGML_BACKEND_BUILD -DGGML_BACKEND_DL -DGGML_BACKEND_SHARED -DGGML_SCHED_MAX_COPIES=4 -DGGML_SHARED \
        -D_GNU_SOURCE -D_XOPEN_SOURCE=600 -iquote "$V/$W" -I"$V/ggml/src" -I"$d/generated" \
        -I"$V/ggml/include" -I"$B/dawn/include" -O3 -DNDEBUG -fPIC -std=gnu++20 -c "$d/ggml-webgpu.cpp" -o "$d/ggml-webgpu.o"
    g++ -shared -o "$out/libggml-webgpu.so" "$d/ggml-webgpu.o" "$B/bin/libggml-base.so" "$B/libllama_webgpu_procs.so"
    echo "built $out"
}

shaders() {  # shaders DIR: DIR/generated/ggml-wgsl-shaders.hpp from DIR/wgsl-shaders
    mkdir -p "$1/generated"
    python "$1/wgsl-shaders/embed_wgsl.py" --input_dir "$1/wgsl-shaders" \
        --output_file "$1/generated/ggml-wgsl-shaders.hpp" > /dev/null
}

variant() {  # variant NAME DIR: the plain build, and with --timing the measured one
    shaders "$2"
    compile "$2" "$1"
    if [ $timing = 1 ]; then
        mkdir -p "$2/t" && cp -r "$2/ggml-webgpu-shader-lib.hpp" "$2/generated" "$2/t/"
        python bench/webgpu_graph_timing.py "$2/ggml-webgpu.cpp" "$2/t/ggml-webgpu.cpp"
        compile "$2/t" "timing-$1"
    fi
}

if [ $defines = 1 ]; then
    for spec in "$@"; do
        name=${spec%%:*}
        d=$tmp/$name/$W && mkdir -p "$d"
        cp -r "$V/$W/ggml-webgpu.cpp" "$V/$W/ggml-webgpu-shader-lib.hpp" "$V/$W/wgsl-shaders" "$d/"
        IFS=, read -r -a sets <<< "${spec#*:}"
        for set in "${sets[@]}"; do
            macro=${set%%=*} value=${set#*=}
            grep -qE "^#define $macro +" "$d/ggml-webgpu-shader-lib.hpp" || { echo "no #define $macro" >&2; exit 1; }
            sed -i -E "s/^#define $macro +.*/#define $macro $value/" "$d/ggml-webgpu-shader-lib.hpp"
        done
        shaders "$d"
        compile "$d" "$name"
    done
    exit 0
fi

mapfile -t series < <(grep -v '^#' patches/series | sed '/^$/d')
for cut in "$@"; do
    d=$tmp/before-$cut
    mkdir -p "$d/$W"
    cp -r "$V/$W/ggml-webgpu.cpp" "$V/$W/ggml-webgpu-shader-lib.hpp" "$V/$W/wgsl-shaders" "$d/$W/"
    # undo, last first, every patch from the end of the series back to (and including) $cut
    for ((i = ${#series[@]} - 1; i >= 0; i--)); do
        p=${series[$i]}
        if grep -q "^+++ b/$W/" "patches/$p"; then
            (cd "$d" && patch -s -R -p1 --no-backup-if-mismatch < "$OLDPWD/patches/$p")
        fi
        [[ $p == "$cut"* ]] && break
    done
    variant "before-$cut" "$d/$W"
done
if [ $timing = 1 ]; then
    d=$tmp/all/$W && mkdir -p "$d/t"
    cp -r "$V/$W/ggml-webgpu-shader-lib.hpp" "$V/$W/wgsl-shaders" "$d/t/"
    shaders "$d/t"
    python bench/webgpu_graph_timing.py "$V/$W/ggml-webgpu.cpp" "$d/t/ggml-webgpu.cpp"
    compile "$d/t" timing-all
    mkdir -p "$d/s" && cp -r "$d/t/ggml-webgpu-shader-lib.hpp" "$d/t/generated" "$d/s/"
    python bench/webgpu_graph_timing.py --sections "$V/$W/ggml-webgpu.cpp" "$d/s/ggml-webgpu.cpp"
    compile "$d/s" sections-all
fi
