#!/usr/bin/env bash
# Runs on the GPU machine (an NVIDIA H100, no registry access): installs the carried wheels and
# tools, then checks that the WebGPU backend runs on the real GPU (Dawn on Vulkan) and measures
# decode speed of our Python API against llama-bench, both on WebGPU and on the CPU.
#
# What it expects beside the checkout (prepared on the CPU machine by bench/gpu_prepare.sh):
#   .gl/libvulkan1_*.deb                   the Vulkan loader (Debian), unpacked here
#   .devcarry/wheels/*.whl                 cp312 wheels: cffi, pycparser, numpy, pytest..., wgpudawn
#   .devcarry/pkg/llama_webgpu-*.whl       our wheel (abi3)
#   .devcarry/tools.tar.xz                 bin/llama-bench, bin/test-backend-ops, libggml*, libllama,
#                                          libwebgpu_dawn.so (for the C tools)
#   $LLAMA_WEBGPU_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf   (sent in two halves earlier)
# Results go to $OUT.
set -euo pipefail
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export XDG_RUNTIME_DIR=/tmp
export LLAMA_WEBGPU_CACHE=${LLAMA_WEBGPU_CACHE:-/root/stash}
python3 -m pip install --no-index --no-deps --break-system-packages -q .devcarry/wheels/*.whl .devcarry/pkg/*.whl 2>&1 | grep -v WARNING || true
T=/tmp/lwtools
mkdir -p $T && tar -C $T -xJf .devcarry/tools.tar.xz
MODEL=$LLAMA_WEBGPU_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf

nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import llama_webgpu as lw; d = lw.devices(); print(d)" 2>&1 | tee "$OUT/devices.txt"
# the same WebGPU checks the CI runs on lavapipe, here on the GPU
python3 -m pytest -q -p no:cacheprovider tests/test_devices.py \
    "tests/test_model.py::test_webgpu_logits_agree_with_the_cpu_backend[smollm2-135m-instruct]" \
    tests/test_generate.py -k "webgpu or WebGPU or devices" 2>&1 | tail -15 | tee "$OUT/pytest.txt"
# llama.cpp's op tests on the GPU
for op in MUL_MAT MUL_MAT_ID GET_ROWS SET_ROWS CPY ADD MUL SCALE RMS_NORM NORM ROPE SOFT_MAX GLU FLASH_ATTN_EXT ARGMAX; do
    printf "%s: " "$op"
    LD_LIBRARY_PATH=$T/bin LLAMA_WEBGPU_DAWN_LIB=$T/libwebgpu_dawn.so GGML_BACKEND_PATH=$T/bin/libggml-webgpu.so \
        timeout 300 $T/bin/test-backend-ops test -b WebGPU -o "$op" 2>&1 | grep -E "tests passed|FAIL" | head -3 | tr '\n' ' ' || true
    echo
done 2>&1 | tee "$OUT/ops.txt"
# decode: ours vs llama-bench, same run
for dev in webgpu cpu; do
    python3 bench/decode.py --model "$MODEL" --device $dev -n 128 -r 5 --llama-bench $T/bin/llama-bench \
        --dawn-lib $T/libwebgpu_dawn.so --json "$OUT/decode-$dev.json" 2>&1 | tee "$OUT/decode-$dev.txt"
done
# llama-bench's own pp512 / tg128 on WebGPU, flash attention on and off
for fa in 0 1; do
    LD_LIBRARY_PATH=$T/bin LLAMA_WEBGPU_DAWN_LIB=$T/libwebgpu_dawn.so GGML_BACKEND_PATH=$T/bin/libggml-webgpu.so \
        $T/bin/llama-bench -m "$MODEL" -p 512 -n 128 -r 3 -fa $fa -ngl 99 -dev WebGPU -o json \
        > "$OUT/llama-bench-webgpu-fa$fa.json" 2> "$OUT/llama-bench-webgpu-fa$fa.err" || true
done
echo done
