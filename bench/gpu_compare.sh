#!/usr/bin/env bash
# The side-by-side benchmark on the GPU machine (NVIDIA H100, no registry, at most 64 MiB of files
# per call, files kept in /root/stash while the machine stays warm). Prepared on the CPU machine by
# `bash bench/gpu_prepare.sh`; then one device call per step, in quick succession:
#
#   bash bench/gpu_compare.sh part1     carry .devcarry/m1 .devcarry/src .devcarry/vk: first model
#                                       half, llama.cpp source, Vulkan build tools; starts the CUDA
#                                       and Vulkan builds of llama-bench and test-backend-ops in the background
#   bash bench/gpu_compare.sh stash1    (instead of part1, carry .devcarry/m1) no CUDA/Vulkan builds
#   bash bench/gpu_compare.sh part2     carry .devcarry/m2: second half + the Gemma-3-270M head; waits
#                                       for the builds (NOWAIT=1: does not; `wait-builds` does later)
#   bash bench/gpu_compare.sh setup     carry .gl .devcarry/wheels .devcarry/pkg .devcarry/tools.tar.xz
#                                       .devcarry/variants: installs, makes the 1B- and 8B-shape
#                                       models (random weights, llama-quantize)
#   bash bench/gpu_compare.sh ops       op tests (validation on; OPS="A B" picks ops), MUL_MAT n=1..8 perf, host time per
#                                       graph for each speed patch     (same carry as setup)
#   bash bench/gpu_compare.sh bench-ref     CUDA, Vulkan and CPU columns   (same carry as setup)
#   bash bench/gpu_compare.sh bench-webgpu  WebGPU: shipped library and each speed-patch cut (same carry)
#   bash bench/gpu_compare.sh bench-ours    our Python API against llama-bench, WebGPU and CPU (same carry)
#   bash bench/gpu_compare.sh bench-all     all columns in one run (CUDA, Vulkan, WebGPU, CPU, ours)
#   bash bench/gpu_compare.sh check     logits: WebGPU against the CPU (SmolLM2), and each speed-patch
#                                       cut against the shipped build (8B shape: identical) (same carry)
#   bash bench/gpu_compare.sh sweep     decode (tg64) with each build carried in .devcarry/variants
#                                       (webgpu_variants.sh --mat-vec/--defines; VARIANTS="a b"
#                                       picks, R reps, TESTS="-p 512 -n 0" measures prefill)
#                                       (same carry as setup)
#   bash bench/gpu_compare.sh mm-perf   test-backend-ops perf of MUL_MAT at n = 512 (prefill) per weight
#                                       type, with each carried build (TYPES="q4_0|q4_K" picks)
#   bash bench/gpu_compare.sh mm-shapes one MUL_MAT per matrix shape of the 8B- and 1B-shape layers at
#                                       n = 512 (bench/mm_shapes.cpp), with each carried build
#   bash bench/gpu_compare.sh mv-bw     the decode mat-vecs (n = 1) of each model's matrix shapes and
#                                       weight types, weights read from memory (MM_DISTINCT_MB), GB/s,
#                                       with each carried build
#   bash bench/gpu_compare.sh dispatch-cost  test-backend-ops perf of a small ADD on WebGPU, Vulkan and
#                                       CUDA: what one small dependent kernel costs on each
#   bash bench/gpu_compare.sh sections      where a decode step's host time goes (webgpu_variants.sh's
#                                       sections-all build), and GPU time per shader where a
#                                       variants/gpuprof build is carried  (same carry as setup)
#
# Results (raw JSON and logs) go to $OUT; they are committed under bench/results/<date>-h100/.
set -euo pipefail
S=/root/stash
M=$S/models
T=$S/tools
export XDG_RUNTIME_DIR=/tmp LLAMA_WEBGPU_CACHE=$S
mkdir -p "$M" "$S/vk" "${OUT:=/tmp/out}"

models() {  # MODELS="smollm2 llama-1b" picks some
    local all="smollm2=$M/SmolLM2-135M-Instruct.Q4_1.gguf gemma3-270m=$M/gemma-3-270m-random-Q4_K_M.gguf
        llama-1b=$M/llama-1b-random-Q4_K_M.gguf llama-8b=$M/llama-8b-random-Q4_0.gguf"
    for m in $all; do
        case " ${MODELS:-smollm2 gemma3-270m llama-1b llama-8b} " in *" ${m%%=*} "*) echo "--model $m" ;; esac
    done
}

sync_variants() {  # the libggml-webgpu.so builds carried by this call
    rm -rf $S/variants && cp -r .devcarry/variants $S/variants
}

variants_env() {  # the GPU, the carried builds, and the C tools' libraries and Dawn
    vulkan_env
    sync_variants
    export LD_LIBRARY_PATH=$T/bin LLAMA_WEBGPU_DAWN_LIB=$T/libwebgpu_dawn.so
}

with_variant() {  # with_variant NAME CMD...: CMD with that build and its env file's run-time switches
    (
        [ -f $S/variants/$1/env ] && set -a && . $S/variants/$1/env && set +a
        export GGML_BACKEND_PATH=$S/variants/$1/libggml-webgpu.so
        shift
        "$@"
    )
}

mm_shapes_set() {  # mm_shapes_set N "TYPE:M,K M,K ..." ...: bench/mm_shapes.cpp for each type
    local n=$1 set
    shift
    for set in "$@"; do
        # shellcheck disable=SC2086 # the shapes are words
        timeout 200 $T/bin/mm_shapes "${set%%:*}" "$n" ${set#*:} 2>&1 | grep -E "^ " | sed "s/^/${set%%:*} /" || true
    done
}

mv_sets() {  # the decode mat-vec shapes of the four models, by weight type (MV_TYPES picks types)
    local all=("q4_0:4096,4096 1024,4096 14336,4096 4096,14336" "q4_1:4096,4096 4096,14336"
        "q8_0:4096,4096 49152,576 262144,640" "q4_K:2048,2048 8192,2048 2048,8192"
        "q6_K:2048,8192 128256,2048 128256,4096" "q5_0:1024,640 2048,640 640,2048") sets=() set
    for set in "${all[@]}"; do
        case " ${MV_TYPES:-${set%%:*}} " in *" ${set%%:*} "*) sets+=("$set") ;; esac
    done
    mm_shapes_set 1 "${sets[@]}"
}

wait_builds() {  # at most 9 minutes, for the CUDA and Vulkan builds started by part1
    for _ in $(seq 100); do
        pgrep -f "gpu_compare.sh build" >/dev/null || break
        sleep 5
    done
    tail -n 2 $S/build-cuda.log $S/build-vk.log || true
    ls $S/*.ok || true
}

vulkan_env() {
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
}

build() {  # runs in the background from part1
    local common=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_APP=OFF
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF
        -DLLAMA_OPENSSL=OFF)
    [ "${1:-}" = vk ] || (cmake -S $S/llama.cpp -B $S/build-cuda "${common[@]}" -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
        && cmake --build $S/build-cuda --target llama-bench test-backend-ops -j 10 && touch $S/cuda.ok) \
        > $S/build-cuda.log 2>&1 &
    (export LD_LIBRARY_PATH=$S/vk/usr/lib/x86_64-linux-gnu
     cmake -S $S/llama.cpp-vk -B $S/build-vk "${common[@]}" -DGGML_VULKAN=ON -DCMAKE_PREFIX_PATH=$S/vk/usr \
        -DVulkan_INCLUDE_DIR=$S/vk/usr/include -DVulkan_LIBRARY=$S/vk/usr/lib/x86_64-linux-gnu/libvulkan.so.1 \
        -DVulkan_GLSLC_EXECUTABLE=$S/vk/usr/bin/glslc \
        && cmake --build $S/build-vk --target llama-bench test-backend-ops -j 6 && touch $S/vk.ok) > $S/build-vk.log 2>&1 &
    wait
}

case "${1:-}" in
part1)
    cp .devcarry/m1/part00 $M/smollm2.part00
    tar -C $S -xJf .devcarry/src/llama.cpp-src.tar.xz
    cp -r $S/llama.cpp $S/llama.cpp-vk
    (cd $S/llama.cpp-vk && patch -s -p1) < bench/vulkan-old-headers.patch
    for d in .devcarry/vk/*.deb; do dpkg -x "$d" $S/vk; done
    cp bench/gpu_compare.sh $S/
    setsid nohup bash $S/gpu_compare.sh build > $S/build.log 2>&1 < /dev/null &
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    nproc; ls $M
    ;;
stash1)  # part1 without the builds (for a run that needs no CUDA/Vulkan columns)
    cp .devcarry/m1/part00 $M/smollm2.part00
    ;;
build) build ;;
build-vk) build vk ;;
vk-retry)  # the Vulkan build again (e.g. after adding a missing build dependency to .devcarry/vk)
    for d in .devcarry/vk/*.deb; do dpkg -x "$d" $S/vk; done
    cp bench/gpu_compare.sh $S/
    rm -rf $S/build-vk
    setsid nohup bash $S/gpu_compare.sh build-vk > $S/build.log 2>&1 < /dev/null &
    ;;
part2)
    cp .devcarry/m2/part01 $M/smollm2.part01
    cat $M/smollm2.part00 $M/smollm2.part01 > $M/SmolLM2-135M-Instruct.Q4_1.gguf
    rm $M/smollm2.part0?
    [ "$(sha256sum < $M/SmolLM2-135M-Instruct.Q4_1.gguf | cut -c1-64)" = \
      "$(cut -c1-64 .devcarry/m2/SmolLM2-135M-Instruct.Q4_1.gguf.sha256)" ] && echo "SmolLM2: sha256 OK"
    python3 bench/make_model.py fill .devcarry/m2/gemma-3-270m.head $M/gemma-3-270m-random-Q4_K_M.gguf
    [ -n "${NOWAIT:-}" ] || wait_builds
    ;;
wait-builds)
    wait_builds
    ;;
setup)
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
    python3 -m pip install --no-index --no-deps --break-system-packages -q .devcarry/wheels/*.whl \
        .devcarry/pkg/*.whl 2>&1 | grep -v WARNING || true
    mkdir -p $T && tar -C $T -xJf .devcarry/tools.tar.xz
    python3 -c "import llama_webgpu as lw; print(lw.devices())"
    # the 1B and 8B shapes, random weights, quantized with llama-quantize
    for shape in llama-1b:Q4_K_M llama-8b:Q4_0; do
        name=${shape%%:*} q=${shape##*:}
        if [ ! -f $M/$name-random-$q.gguf ]; then
            python3 bench/make_model.py shape $name $S/$name-f16.gguf
            LD_LIBRARY_PATH=$T/bin $T/bin/llama-quantize $S/$name-f16.gguf $M/$name-random-$q.gguf $q 16 \
                > $S/quantize-$name.log 2>&1 && rm $S/$name-f16.gguf
            tail -n 2 $S/quantize-$name.log
        fi
    done
    ls -la $M
    vulkan_env
    tail -n 3 $S/build-cuda.log $S/build-vk.log || true
    ;;
ops)
    # llama.cpp's op tests on the GPU with the shipped libggml-webgpu.so, Dawn's validation on
    vulkan_env
    sync_variants
    export LD_LIBRARY_PATH=$T/bin LLAMA_WEBGPU_DAWN_LIB=$T/libwebgpu_dawn.so GGML_WEBGPU_VALIDATE=1
    for op in ${OPS:-MUL_MAT MUL_MAT_ID GET_ROWS SET_ROWS CPY ADD MUL RMS_NORM ROPE SOFT_MAX SWIGLU GEGLU FLASH_ATTN_EXT ARGMAX}; do
        printf "%s: " "$op"
        GGML_BACKEND_PATH=$T/bin/libggml-webgpu.so timeout 300 $T/bin/test-backend-ops test -b WebGPU -o "$op" 2>&1 \
            | grep -E "tests passed|FAIL" | head -3 | tr '\n' ' ' || true
        echo
    done 2>&1 | tee "$OUT/ops.txt"
    # the n = 1..8 matrix-vector cliff (patch 0013): MUL_MAT perf before and after
    for lib in $S/variants/before-0013/libggml-webgpu.so $T/bin/libggml-webgpu.so; do
        [ -f "$lib" ] || continue
        echo "== $lib"
        GGML_BACKEND_PATH=$lib timeout 200 $T/bin/test-backend-ops perf -b WebGPU -o MUL_MAT \
            -p "type_a=(q4_0|q4_K),type_b=f32,m=4096,n=[1-8],k=14336" 2>&1 | grep -E "MUL_MAT" || true
    done 2>&1 | tee "$OUT/mul_mat_perf.txt"
    # host time per decode graph (encode + submit), each speed patch against the one before
    for d in $S/variants/timing-*/; do
        printf "%s: " "$(basename $d)"
        GGML_BACKEND_PATH=$d/libggml-webgpu.so $T/bin/llama-bench -m $M/SmolLM2-135M-Instruct.Q4_1.gguf \
            -p 0 -n 128 -r 1 -fa 1 -ngl 99 -dev WebGPU 2>&1 | grep -E "LW_MEASURE" || echo
    done 2>&1 | tee "$OUT/graph_timing.txt"
    ;;
mm-perf)
    # the prefill mat-mul (n = 512) per weight type, with each carried build (TYPES picks types)
    variants_env
    for v in ${VARIANTS:-$(ls $S/variants)}; do
        echo "== $v"
        GGML_BACKEND_PATH=$S/variants/$v/libggml-webgpu.so timeout 200 $T/bin/test-backend-ops perf -b WebGPU \
            -o MUL_MAT -p "type_a=(${TYPES:-f16|q4_0|q4_K|q6_K|q8_0}),type_b=f32,m=4096,n=512,k=14336" 2>&1 \
            | grep -E "MUL_MAT" || true
    done 2>&1 | tee -a "$OUT/mm-perf.txt"
    ;;
mm-shapes)
    # one MUL_MAT per shape at n = 512 (bench/mm_shapes.cpp) with each carried build: the matrices
    # of an 8B-shape layer (q4_0) and of a 1B-shape layer (q4_K, and q6_K as Q4_K_M has it)
    variants_env
    for v in ${VARIANTS:-$(ls $S/variants)}; do
        echo "== $v"
        # a variant's optional env file sets run-time switches (e.g. GGML_WEBGPU_MUL_MAT_SPLIT_K=0)
        with_variant "$v" mm_shapes_set "${N:-512}" "q4_0:4096,4096 1024,4096 14336,4096 4096,14336" \
            "q4_K:2048,2048 512,2048 8192,2048 2048,8192" "q6_K:512,2048 2048,8192"
    done 2>&1 | tee -a "$OUT/mm-shapes.txt"
    ;;
mv-bw)
    # decode: each model's mat-vec shapes (m,k) by weight type, weights from memory, not L2
    variants_env
    for v in ${VARIANTS:-$(ls $S/variants)}; do
        echo "== $v"
        # a variant's env file may name the types to measure (MV_TYPES="q4_0 q8_0")
        MM_DISTINCT_MB=${MB:-384} with_variant "$v" mv_sets
    done 2>&1 | tee -a "$OUT/mv-bw.txt"
    ;;
sections)
    variants_env
    for m in $(models | sed 's/^--model //'); do
        echo "== ${m%%=*}"
        GGML_BACKEND_PATH=$S/variants/sections-all/libggml-webgpu.so $T/bin/llama-bench -m "${m#*=}" \
            -p 0 -n 128 -r 1 -fa 1 -ngl 99 -dev WebGPU 2>&1 | grep -E "LW_|tg128" || true
        if [ -d $S/variants/gpuprof ]; then
            GGML_BACKEND_PATH=$S/variants/gpuprof/libggml-webgpu.so $T/bin/llama-bench -m "${m#*=}" \
                -p 0 -n 32 -r 1 -fa 1 -ngl 99 -dev WebGPU 2>&1 | grep -E "ggml_webgpu: |tg32" | sort -t: -k3 -g -r | head -40 || true
        fi
    done 2>&1 | tee "$OUT/sections.txt"
    ;;
sweep)
    variants_env
    for m in $(models | sed 's/^--model //'); do
        for v in ${VARIANTS:-$(ls $S/variants)}; do
            printf "%-12s %-14s " "$v" "${m%%=*}"
            # shellcheck disable=SC2086 # TESTS is words
            with_variant "$v" $T/bin/llama-bench -m "${m#*=}" ${TESTS:--p 0 -n 64} \
                -r "${R:-3}" -fa 1 -ngl 99 -dev WebGPU -o csv 2>/dev/null | tail -n 1 | awk -F, '{print $(NF-1)}'
        done
    done 2>&1 | tee -a "$OUT/sweep.txt"
    ;;
check)
    vulkan_env
    sync_variants
    lib=$(python3 -c "import llama_webgpu._native as n; print(n.LIB_DIR)")/libggml-webgpu.so
    cp "$lib" $S/shipped-libggml-webgpu.so
    smol=$M/SmolLM2-135M-Instruct.Q4_1.gguf
    {
        echo "== smollm2: WebGPU against the CPU"
        python3 bench/same_logits.py $smol --device cpu --save $S/smol-cpu.npy
        python3 bench/same_logits.py $smol --compare $S/smol-cpu.npy --atol 3 --min-agree 14 || echo "CHECK FAILED"
        # SmolLM2's small matrices leave the MMVQ kernel with patch 0016: close logits; the 8B shape
        # keeps its kernels, but patches 0020 and 0022 sum each row in another order: nearly the same
        # logits. "prefill" cases evaluate a 512-token prompt first (the subgroup-matrix mat-mul)
        for case in "smollm2:--atol 3 --min-agree 14" "llama-8b:--atol 0.25 --min-agree 15" \
            "llama-8b:--atol 0.25 --min-agree 15 --prompt-tokens 512" \
            "llama-1b:--atol 0.25 --min-agree 15 --prompt-tokens 512"; do
            name=${case%%:*} opts=${case#*:}
            m=$(models | sed 's/^--model //' | grep "^$name=" | cut -d= -f2)
            long=$(echo "$opts" | grep -o -- "--prompt-tokens [0-9]*" || true)
            echo "== $name $long: each speed-patch cut against the shipped build"
            # shellcheck disable=SC2086 # the options are words
            python3 bench/same_logits.py "$m" --save $S/$name-shipped.npy $long
            for d in $S/variants/before-*/; do
                cp "$d/libggml-webgpu.so" "$lib"
                printf "%s: " "$(basename $d)"
                # shellcheck disable=SC2086
                python3 bench/same_logits.py "$m" --compare $S/$name-shipped.npy $opts || echo "CHECK FAILED"
            done
            cp $S/shipped-libggml-webgpu.so "$lib"
        done
    } 2>&1 | grep -vE "^Warning: max" | tee "$OUT/check.txt"
    ;;
bench-ref)
    vulkan_env
    ls $S/cuda.ok $S/vk.ok || { tail -n 20 $S/build-cuda.log $S/build-vk.log; }
    args=()
    [ -f $S/cuda.ok ] && args+=(--bench cuda=$S/build-cuda/bin/llama-bench)
    [ -f $S/vk.ok ] && args+=(--bench vulkan=$S/build-vk/bin/llama-bench)
    PYTHONUNBUFFERED=1 python3 bench/compare.py $(models) "${args[@]}" --bench cpu=$T/bin/llama-bench \
        --cpu-models smollm2,gemma3-270m -r "${REPS:-3}" --json "$OUT/compare-ref.json" 2>&1 | tee "$OUT/compare-ref.txt"
    ;;
bench-webgpu)
    # WebGPU with the shipped library and with the series cut before each speed patch
    vulkan_env
    sync_variants
    variants=()
    for d in $S/variants/before-*/; do variants+=(--webgpu-lib "$(basename $d)=$d/libggml-webgpu.so"); done
    PYTHONUNBUFFERED=1 python3 bench/compare.py $(models) --bench webgpu=$T/bin/llama-bench \
        --dawn-lib $T/libwebgpu_dawn.so "${variants[@]}" -r "${REPS:-3}" \
        --json "$OUT/compare-webgpu.json" 2>&1 | tee "$OUT/compare-webgpu.txt"
    ;;
bench-all)
    # every column in one run: CUDA, Vulkan, WebGPU (shipped library), CPU, our Python API
    vulkan_env
    ls $S/cuda.ok $S/vk.ok
    PYTHONUNBUFFERED=1 python3 bench/compare.py $(models) --bench cuda=$S/build-cuda/bin/llama-bench \
        --bench vulkan=$S/build-vk/bin/llama-bench --bench webgpu=$T/bin/llama-bench \
        --bench cpu=$T/bin/llama-bench --cpu-models smollm2,gemma3-270m --dawn-lib $T/libwebgpu_dawn.so \
        --ours --ours-gpu -r "${REPS:-3}" --json "$OUT/compare-all.json" 2>&1 | tee "$OUT/compare-all.txt"
    PYTHONUNBUFFERED=1 python3 bench/decode.py --model $M/SmolLM2-135M-Instruct.Q4_1.gguf --device cpu \
        -n 128 -r 5 --llama-bench $T/bin/llama-bench --json "$OUT/decode-cpu.json" 2>&1 | tee "$OUT/decode-cpu.txt"
    ;;
dispatch-cost)
    # what one small dependent kernel costs on each backend: test-backend-ops perf of an ADD of 4096
    # floats (the op repeated through one graph, as decode's small kernels follow each other)
    vulkan_env
    export LD_LIBRARY_PATH=$T/bin LLAMA_WEBGPU_DAWN_LIB=$T/libwebgpu_dawn.so
    for run in "WebGPU:$T/bin/test-backend-ops" "Vulkan0:$S/build-vk/bin/test-backend-ops" \
        "CUDA0:$S/build-cuda/bin/test-backend-ops"; do
        [ -x "${run#*:}" ] || continue
        echo "== ${run%%:*}"
        pre=(env GGML_BACKEND_PATH=$T/bin/libggml-webgpu.so)
        [ "${run%%:*}" = WebGPU ] || pre=(env -u GGML_BACKEND_PATH)  # the CUDA and Vulkan builds are static
        "${pre[@]}" timeout 120 "${run#*:}" perf -b "${run%%:*}" -o ADD \
            -p 'type=f32,ne=\[4096,1,1,1\],nr=\[1,1,1,1\]' 2>&1 | grep -E "ADD\(" || true
    done 2>&1 | tee "$OUT/dispatch-cost.txt"
    ;;
bench-ours)
    # our Python API against llama-bench: WebGPU (all tests, same library), then CPU decode
    vulkan_env
    PYTHONUNBUFFERED=1 python3 bench/compare.py $(models) --bench webgpu=$T/bin/llama-bench \
        --dawn-lib $T/libwebgpu_dawn.so --ours --ours-gpu -r "${REPS:-3}" \
        --json "$OUT/compare-ours.json" 2>&1 | tee "$OUT/compare-ours.txt"
    PYTHONUNBUFFERED=1 python3 bench/decode.py --model $M/SmolLM2-135M-Instruct.Q4_1.gguf --device cpu \
        -n 128 -r 5 --llama-bench $T/bin/llama-bench --json "$OUT/decode-cpu.json" 2>&1 | tee "$OUT/decode-cpu.txt"
    ;;
*)
    sed -n '2,20p' "$0"
    exit 2
    ;;
esac
