"""Matrix-vector products (decode) on WebGPU give the CPU's results.

patches/0031 lets one workgroup of the mat-vec kernels take several rows of the matrix: 4 rows of
a Q6_K matrix, and, in the MMVQ kernel of Q4_0/Q4_1/Q8_0 (integer dot products with the vector
quantized to q8), up to 4 rows where a row has few blocks (18 blocks of 32 at k = 576, SmolLM2's
width). Each case here has a row count that is not a multiple of 4, so the last workgroup holds
rows past the matrix's end. lavapipe (vendor "mesa") is not given the MMVQ kernel;
GGML_WEBGPU_MMVQ=force (patches/0030) selects it, in a process of its own because the backend
reads the switch once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from ggml_graph import run_op

from llama_webgpu._native import ffi, lib

pytestmark = pytest.mark.webgpu

# test-backend-ops' bound for MUL_MAT (normalized mean squared error against the CPU)
MAX_NMSE = 5e-4

# (weight type, rows m, row length k, columns n): k = 576 gives the MMVQ kernel 4 rows a
# workgroup, k = 4096 one
MMVQ_CASES = [
    (t, m, k, n)
    for t in ("q4_0", "q4_1", "q8_0")
    for m, k in ((13, 576), (5, 4096))
    for n in (1, 3)
]


def mul_mat(backend, type_name: str, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """ggml_mul_mat of w (m x k, quantized to type_name) and x (n x k) on backend: n x m."""
    (m, k), (n, _) = w.shape, x.shape
    wtype = getattr(lib, f"GGML_TYPE_{type_name.upper()}")
    wf = np.ascontiguousarray(w, np.float32)
    quantized = np.zeros(lib.ggml_row_size(wtype, k) * m, np.uint8)
    src = ffi.cast("float *", ffi.from_buffer(wf))
    written = lib.ggml_quantize_chunk(wtype, src, ffi.from_buffer(quantized), 0, m, k, ffi.NULL)
    assert written == quantized.nbytes
    inputs = [(wtype, (k, m), quantized), (lib.GGML_TYPE_F32, (k, n), np.asarray(x, np.float32))]
    return run_op(backend, inputs, lib.ggml_mul_mat).reshape(n, m)


def nmse_against_cpu(cases) -> dict[str, float]:
    """Each case on WebGPU and on the CPU: the NMSE of WebGPU's products, by case name."""
    import llama_webgpu as lw

    assert any(d.is_webgpu for d in lw.devices())  # loads the backends
    cpu = lib.ggml_backend_init_by_type(lib.GGML_BACKEND_DEVICE_TYPE_CPU, ffi.NULL)
    webgpu = lib.ggml_backend_init_by_type(lib.GGML_BACKEND_DEVICE_TYPE_GPU, ffi.NULL)
    assert cpu != ffi.NULL and webgpu != ffi.NULL
    assert ffi.string(lib.ggml_backend_name(webgpu)).startswith(b"WebGPU")
    rng = np.random.default_rng(31)
    errors = {}
    try:
        for type_name, m, k, n in cases:
            w = rng.uniform(-1, 1, (m, k))
            x = rng.uniform(-1, 1, (n, k))
            want = mul_mat(cpu, type_name, w, x)
            got = mul_mat(webgpu, type_name, w, x)
            errors[f"{type_name} m={m} k={k} n={n}"] = float(
                np.sum((got - want) ** 2) / np.sum(want**2)
            )
    finally:
        lib.ggml_backend_free(webgpu)
        lib.ggml_backend_free(cpu)
    return errors


@pytest.mark.parametrize("n", [1, 3])
def test_q6_k_mat_vec_with_rows_past_the_last_workgroup_matches_the_cpu(webgpu_device, n):
    errors = nmse_against_cpu([("q6_K", 13, 512, n), ("q6_K", 6, 1024, n)])
    assert all(e < MAX_NMSE for e in errors.values()), errors


def test_mmvq_mat_vec_of_short_and_long_rows_matches_the_cpu(webgpu_device):
    env = {**os.environ, "GGML_WEBGPU_MMVQ": "force"}
    proc = subprocess.run(
        [sys.executable, __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(errors) == len(MMVQ_CASES)
    assert all(e < MAX_NMSE for e in errors.values()), errors


if __name__ == "__main__":  # the MMVQ cases, in the process the test above starts
    print(json.dumps(nmse_against_cpu(MMVQ_CASES)))
