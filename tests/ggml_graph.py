"""One ggml op on a backend through the cffi binding: tests that check a kernel against the CPU."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from llama_webgpu._native import ffi, lib


def run_op(
    backend,
    inputs: Sequence[tuple[int, Sequence[int], np.ndarray]],
    build: Callable[..., object],
) -> np.ndarray:
    """build(ctx, *tensors) on backend, its f32 result flat.

    inputs: per tensor its ggml type, its sizes in ggml's order (ne0 first) and its bytes (any
    numpy array holding exactly them).
    """
    params = ffi.new("struct ggml_init_params *")
    params.mem_size = (len(inputs) + 8) * lib.ggml_tensor_overhead() + lib.ggml_graph_overhead()
    params.no_alloc = True
    ctx = lib.ggml_init(params[0])
    assert ctx != ffi.NULL
    buf = ffi.NULL
    try:
        tensors = [
            lib.ggml_new_tensor(ctx, t, len(ne), ffi.new("int64_t[]", list(ne)))
            for t, ne, _ in inputs
        ]
        out = build(ctx, *tensors)
        graph = lib.ggml_new_graph(ctx)
        lib.ggml_build_forward_expand(graph, out)
        buf = lib.ggml_backend_alloc_ctx_tensors(ctx, backend)
        assert buf != ffi.NULL
        for tensor, (_, _, data) in zip(tensors, inputs, strict=True):
            data = np.ascontiguousarray(data)
            assert data.nbytes == lib.ggml_nbytes(tensor)
            lib.ggml_backend_tensor_set(tensor, ffi.from_buffer(data), 0, data.nbytes)
        assert lib.ggml_backend_graph_compute(backend, graph) == lib.GGML_STATUS_SUCCESS
        res = np.empty(lib.ggml_nelements(out), np.float32)
        lib.ggml_backend_tensor_get(out, ffi.from_buffer(res), 0, res.nbytes)
        return res
    finally:
        if buf != ffi.NULL:
            lib.ggml_backend_buffer_free(buf)
        lib.ggml_free(ctx)
