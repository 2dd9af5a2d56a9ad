"""One ggml op on a backend through the cffi binding: tests that check a kernel against the CPU."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from llama_webgpu._native import ffi, lib


def run_op(
    backend,
    inputs: Sequence[tuple[int, Sequence[int], np.ndarray]],
    build: Callable[..., object],
    *,
    graph_alloc: bool = False,
    buffers: Sequence[int] = (),
) -> np.ndarray | list[np.ndarray]:
    """build(ctx, *tensors) on backend, its f32 result flat.

    inputs: per tensor its ggml type, its sizes in ggml's order (ne0 first) and its bytes (any
    numpy array holding exactly them). build may return a tuple of tensors: they are added to the
    graph in that order and a list of their results comes back.

    graph_alloc: the graph's tensors are placed by ggml's graph allocator, as in a model (an op
    may write over a source it is the last reader of), rather than each in memory of its own.
    buffers: per input, 0 or the number of a backend buffer of its own that it is allocated in
    (weights kept apart from the activations, as a model's are).
    """
    groups = sorted({b for b in buffers if b})
    contexts = []
    allocated = []
    galloc = ffi.NULL
    try:
        for _ in range(1 + len(groups)):
            params = ffi.new("struct ggml_init_params *")
            params.mem_size = (
                len(inputs) + 16
            ) * lib.ggml_tensor_overhead() + lib.ggml_graph_overhead()
            params.no_alloc = True
            ctx = lib.ggml_init(params[0])
            assert ctx != ffi.NULL
            contexts.append(ctx)
        where = list(buffers) or [0] * len(inputs)
        tensors = [
            lib.ggml_new_tensor(
                contexts[groups.index(b) + 1 if b else 0],
                t,
                len(ne),
                ffi.new("int64_t[]", list(ne)),
            )
            for (t, ne, _), b in zip(inputs, where, strict=True)
        ]
        built = build(contexts[0], *tensors)
        outs = list(built) if isinstance(built, tuple) else [built]
        graph = lib.ggml_new_graph(contexts[0])
        for out in outs:
            lib.ggml_build_forward_expand(graph, out)
        for ctx in contexts[1:]:
            allocated.append(lib.ggml_backend_alloc_ctx_tensors(ctx, backend))
            assert allocated[-1] != ffi.NULL
        if graph_alloc:
            for tensor, b in zip(tensors, where, strict=True):
                if not b:
                    lib.ggml_set_input(tensor)
            for out in outs:
                lib.ggml_set_output(out)
            galloc = lib.ggml_gallocr_new(lib.ggml_backend_get_default_buffer_type(backend))
            assert lib.ggml_gallocr_alloc_graph(galloc, graph)
        else:
            allocated.append(lib.ggml_backend_alloc_ctx_tensors(contexts[0], backend))
            assert allocated[-1] != ffi.NULL
        for tensor, (_, _, data) in zip(tensors, inputs, strict=True):
            data = np.ascontiguousarray(data)
            assert data.nbytes == lib.ggml_nbytes(tensor)
            lib.ggml_backend_tensor_set(tensor, ffi.from_buffer(data), 0, data.nbytes)
        assert lib.ggml_backend_graph_compute(backend, graph) == lib.GGML_STATUS_SUCCESS
        results = []
        for out in outs:
            res = np.empty(lib.ggml_nelements(out), np.float32)
            lib.ggml_backend_tensor_get(out, ffi.from_buffer(res), 0, res.nbytes)
            results.append(res)
        return results if isinstance(built, tuple) else results[0]
    finally:
        if galloc != ffi.NULL:
            lib.ggml_gallocr_free(galloc)
        for buf in allocated:
            lib.ggml_backend_buffer_free(buf)
        for ctx in contexts:
            lib.ggml_free(ctx)
