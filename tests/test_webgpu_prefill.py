"""Flash attention over many queries on WebGPU gives the CPU's results.

The tile kernel (GPUs without subgroup matrices, lavapipe among them) goes KV tile by KV tile;
patches/0029 skips the tiles whose mask is -inf for every row of the query tile (the upper
triangle of a causal mask). A prompt longer than two KV tiles (64 positions there, 4 query rows a
workgroup) has such tiles; but in a causal mask a tile's first row and first column decide whether
it is hidden, so the op itself is also run through ggml with masks where single cells anywhere in
a tile keep it, against the CPU backend.
"""

from __future__ import annotations

import numpy as np
import pytest
from ggml_graph import run_op

from llama_webgpu._native import ffi, lib
from llama_webgpu.model import Model
from llama_webgpu.models import model_path

pytestmark = pytest.mark.webgpu

TEXT = (
    "The history of the river begins in the mountains, where snow melts each spring and feeds "
    "a hundred small streams. They join in the valley below, turn the wheels of old mills, and "
    "pass the town with its market, its bridge of grey stone and its church. Farther on the "
    "river widens, boats carry grain and timber to the coast, and the water slows as it nears "
    "the sea, where gulls follow the ferries and the tide comes in twice a day. In winter the "
    "streams freeze, the mills stand still and the boats wait in the harbour until the ice "
    "breaks; then the whole valley hears the river again, louder each week, until the first "
    "warm days of spring bring the snow down from the peaks once more."
)


def _prompt_logits(model: Model, tokens: list[int]) -> np.ndarray:
    with model.context(n_ctx=256, n_batch=256, n_ubatch=256, flash_attn=True) as c:
        return c.eval(tokens, all_logits=True)


def test_prompt_logits_at_every_position_match_the_cpu(gpu):
    tokens = gpu.tokenizer.encode(TEXT)
    assert 130 <= len(tokens) <= 256, len(tokens)  # three KV tiles of 64, the last one partial
    with Model(model_path(), device="cpu") as cpu_model:
        cpu = _prompt_logits(cpu_model, tokens)
    webgpu = _prompt_logits(gpu, tokens)
    assert webgpu.shape == cpu.shape == (len(tokens), gpu.n_vocab)
    agree = float(np.mean(webgpu.argmax(axis=1) == cpu.argmax(axis=1)))
    assert agree >= 0.97, agree
    assert float(np.abs(webgpu - cpu).max()) < 2.0


def _flash_attn(backend, q, k, v, mask) -> np.ndarray:
    """ggml_flash_attn_ext(q, k, v, mask) on backend; arrays in ggml's order (ne0 last)."""
    typed = ((q, np.float32, lib.GGML_TYPE_F32), (k, np.float16, lib.GGML_TYPE_F16))
    typed += ((v, np.float16, lib.GGML_TYPE_F16), (mask, np.float16, lib.GGML_TYPE_F16))
    inputs = [(t, tuple(reversed(a.shape)), np.asarray(a, dtype)) for a, dtype, t in typed]
    scale = 1.0 / np.sqrt(q.shape[-1])

    def build(ctx, *tensors):
        return lib.ggml_flash_attn_ext(ctx, *tensors, scale, 0.0, 0.0)

    return run_op(backend, inputs, build)


def test_flash_attention_skips_only_kv_tiles_hidden_from_every_row(gpu):
    rng = np.random.default_rng(29)
    heads, n_q, n_kv, dim = 2, 64, 256, 64
    q = rng.uniform(-1, 1, (1, heads, n_q, dim))
    k = rng.uniform(-1, 1, (1, heads, n_kv, dim))
    v = rng.uniform(-1, 1, (1, heads, n_kv, dim))
    # each query row sees 3 cells anywhere (so most KV tiles are kept for one row and one column
    # of theirs only), rows 8-11 see none past the first tile, and 4 rows see everything
    mask = np.full((1, 1, n_q, n_kv), -np.inf)
    for row in range(n_q):
        mask[0, 0, row, rng.choice(n_kv if not 8 <= row < 12 else 64, 3, replace=False)] = 0.0
    mask[0, 0, 40:44] = rng.uniform(-1, 0, (4, n_kv))
    assert np.isinf(mask).mean() > 0.9
    cpu = lib.ggml_backend_init_by_type(lib.GGML_BACKEND_DEVICE_TYPE_CPU, ffi.NULL)
    webgpu = lib.ggml_backend_init_by_type(lib.GGML_BACKEND_DEVICE_TYPE_GPU, ffi.NULL)
    assert cpu != ffi.NULL and webgpu != ffi.NULL
    try:
        assert ffi.string(lib.ggml_backend_name(webgpu)).startswith(b"WebGPU")
        want = _flash_attn(cpu, q, k, v, mask)
        got = _flash_attn(webgpu, q, k, v, mask)
    finally:
        lib.ggml_backend_free(webgpu)
        lib.ggml_backend_free(cpu)
    assert np.isfinite(want).all()
    assert float(np.abs(got - want).max()) < 1e-2
