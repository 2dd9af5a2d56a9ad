#!/usr/bin/env bash
# Prepares, on the CPU machine, what bench/gpu_check.sh and bench/gpu_compare.sh need on the GPU
# machine, which reaches no registry and takes at most 64 MiB per call:
#   .devcarry/wheels     cp312 wheels its Python lacks (cffi, pycparser, wgpudawn)
#   .devcarry/pkg        our wheel (abi3)
#   .devcarry/tools.tar.xz   llama-bench, llama-quantize, test-backend-ops, bench/mm_shapes.cpp and
#                        their libraries
#   .devcarry/m1, m2     the default model in two halves (+ its sha256, + Gemma-3-270M's head:
#                        metadata and tensor table, completed with random weights there)
#   .devcarry/src        the vendored llama.cpp tree, for the CUDA and Vulkan builds there
#   .devcarry/vk         Debian's glslc, libshaderc1, libvulkan-dev, libvulkan1 (Vulkan build)
#   .devcarry/variants/NAME/libggml-webgpu.so   other builds of the WebGPU backend to compare
#                        (made by bench/webgpu_variants.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
D=.devcarry
mkdir -p $D/wheels $D/pkg $D/m1 $D/m2 $D/src $D/vk $D/variants
rm -f $D/wheels/*.whl $D/pkg/*.whl
pip download -q --only-binary :all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --no-deps -d $D/wheels cffi==2.0.0 pycparser wgpudawn==0.32.0.4
pip wheel -q --no-build-isolation --no-deps -w $D/pkg .
build=$(dirname "$(ls build/*/CMakeCache.txt | tail -1)")
cmake --build "$build" --target llama-bench llama-quantize test-backend-ops
g++ -O2 -std=c++17 -Ivendor/llama.cpp/ggml/include bench/mm_shapes.cpp -o "$build/bin/mm_shapes" \
    -L"$build/bin" -lggml -lggml-base -Wl,-rpath,'$ORIGIN'
dawn=$(python -c "import importlib.util as u, pathlib; print(pathlib.Path(u.find_spec('rillfacet').origin).parent / 'libwebgpu_dawn.so')")
cp "$build/libllama_webgpu_procs.so" "$build/bin/"  # the C tools' Dawn loader, beside them
tar -cJf $D/tools.tar.xz -C "$build" bin/llama-bench bin/llama-quantize bin/test-backend-ops bin/mm_shapes \
    $(cd "$build" && ls bin/*.so*) -C "$(dirname "$dawn")" libwebgpu_dawn.so
model=$(python -c "import llama_webgpu as lw; print(lw.model_path())")
if [ ! -f $D/m2/part01 ] || [ "$model" -nt $D/m2/part01 ]; then
    split -n 2 -d "$model" /tmp/lw-model-part
    mv /tmp/lw-model-part00 $D/m1/part00
    mv /tmp/lw-model-part01 $D/m2/part01
fi
cp "$model.sha256" $D/m2/
python bench/make_model.py head "$(dirname "$model")/gemma-3-270m-q4_k_m.gguf" $D/m2/gemma-3-270m.head
tar -cJf $D/src/llama.cpp-src.tar.xz -C vendor --exclude='*.stamp.json' \
    llama.cpp/CMakeLists.txt llama.cpp/cmake llama.cpp/ggml llama.cpp/src llama.cpp/include \
    llama.cpp/common llama.cpp/vendor llama.cpp/tools llama.cpp/licenses llama.cpp/tests
(cd $D/vk && rm -f ./*.deb && apt-get download -q glslc libshaderc1 libvulkan-dev libvulkan1 spirv-headers >/dev/null)
du -sh $D/* $D/variants/* 2>/dev/null
