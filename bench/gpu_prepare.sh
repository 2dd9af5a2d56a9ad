#!/usr/bin/env bash
# Prepares, on the CPU machine, what bench/gpu_check.sh needs on the GPU machine, which reaches
# no registry and takes at most 64 MiB per call: wheels for its Python (3.12), our wheel, the
# C tools, and the default model split in two halves (.devcarry/m1, .devcarry/m2).
set -euo pipefail
cd "$(dirname "$0")/.."
D=.devcarry
mkdir -p $D/wheels $D/pkg $D/m1 $D/m2
pip download -q --only-binary :all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --no-deps -d $D/wheels cffi==2.0.0 pycparser numpy jinja2 markupsafe pytest pluggy iniconfig \
    packaging wgpudawn==0.32.0.4
rm -f $D/pkg/*.whl
pip wheel -q --no-build-isolation --no-deps -w $D/pkg .
build=$(dirname "$(ls build/*/CMakeCache.txt | tail -1)")
cmake --build "$build" --target llama-bench test-backend-ops
dawn=$(python -c "import importlib.util as u, pathlib; print(pathlib.Path(u.find_spec('rillfacet').origin).parent / 'libwebgpu_dawn.so')")
tar -cJf $D/tools.tar.xz -C "$build" bin/llama-bench bin/test-backend-ops $(cd "$build" && ls bin/*.so*) \
    -C "$(dirname "$dawn")" libwebgpu_dawn.so
model=$(python -c "import llama_webgpu as lw; print(lw.model_path())")
split -n 2 -d "$model" /tmp/lw-model-part
mv /tmp/lw-model-part00 $D/m1/part00
mv /tmp/lw-model-part01 $D/m2/part01
du -sh $D/*
