"""WebGPU results stay right when the backend reuses what it cached across graph computations.

patches/0011-0012 keep kernel parameters in a host copy and bind groups in a cache keyed by the
bound buffers; patches/0013 sends 5-8 column products to the matrix-vector kernels; patches/0015
reuses helper results within a graph and 0017 fuses each residual ADD into the next RMS_NORM+MUL;
0019 computes mat-vecs of one vector (attention K and V, feed-forward gate and up with their GLU)
in one dispatch, 0021 a layer's two cache writes (SET_ROWS), and 0032 a ROPE with the SCALE of its
result (Gemma 3's Q).
These tests free and reallocate tensor buffers (new contexts of other sizes, interleaved
contexts), evaluate small batches and decode steps, and compare token ids and logits with a run
that had nothing cached, or with the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
from ggml_graph import run_op

from llama_webgpu._native import ffi, lib
from llama_webgpu.generate import generate
from llama_webgpu.model import Model
from llama_webgpu.models import model_path

PROMPT = "The capital of France is"

pytestmark = pytest.mark.webgpu


@pytest.fixture(scope="module")
def reference(gpu) -> list[int]:
    with gpu.context(n_ctx=64) as c:
        return generate(c, PROMPT, max_tokens=4, temperature=0).tokens


def test_greedy_tokens_survive_contexts_freed_and_reallocated(gpu, reference):
    assert len(reference) == 4
    for n_ctx in (96, 160):  # other sizes: other buffers, possibly at reused addresses
        with gpu.context(n_ctx=n_ctx) as c:
            assert generate(c, PROMPT, max_tokens=4, temperature=0).tokens == reference


def test_two_live_contexts_interleaved_keep_their_own_state(gpu, reference):
    prompt = gpu.tokenizer.encode(PROMPT)
    with gpu.context(n_ctx=64) as a, gpu.context(n_ctx=64) as b:
        a.eval(prompt)
        b.eval(prompt[:2])  # b's buffers and bind groups in between
        b.eval(prompt[2:])
        assert int(np.argmax(a.logits())) == reference[0]
        assert int(np.argmax(b.logits())) == reference[0]


def test_small_batches_of_five_to_eight_tokens_match_one_at_a_time(gpu):
    # prompts of 5..8 tokens take the matrix-vector kernels for n <= 8 (patches/0013); their
    # logits must match evaluating the same tokens one by one (n = 1)
    tokens = gpu.tokenizer.encode("One two three four five six seven eight")[:8]
    assert len(tokens) == 8
    with gpu.context(n_ctx=64) as batched, gpu.context(n_ctx=64) as single:
        for n in (5, 8):
            batched.reset()
            single.reset()
            batched.eval(tokens[:n])
            for t in tokens[:n]:
                single.eval([t])
            x, y = batched.logits(), single.logits()
            cos = float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)))
            assert int(np.argmax(x)) == int(np.argmax(y))
            assert cos > 0.99, f"n={n}: cosine {cos:.4f}"


def _decode_step_logits(model, prompt: list[int], follow: list[int]) -> np.ndarray:
    """The logits after each of `follow`, fed one at a time after `prompt` in a fresh context."""
    rows = []
    with model.context(n_ctx=64) as c:
        c.eval(prompt)
        for t in follow:
            c.eval([t])
            rows.append(c.logits().copy())
    return np.stack(rows)


def test_decode_step_logits_match_the_cpu(gpu):
    # the same fixed tokens fed one at a time on both devices (no sampling, so a near tie broken
    # differently cannot change what follows); the decode graph has every fusion and reuse
    prompt = gpu.tokenizer.encode(PROMPT)
    follow = gpu.tokenizer.encode(" Paris, a city on the Seine", add_special=False)[:6]
    with Model(model_path(), device="cpu") as cpu_model:
        webgpu, cpu = (_decode_step_logits(m, prompt, follow) for m in (gpu, cpu_model))
    assert webgpu.shape == (len(follow), gpu.n_vocab)
    assert list(webgpu.argmax(axis=1)) == list(cpu.argmax(axis=1))
    assert float(np.abs(webgpu - cpu).max()) < 2.0


def test_replayed_steps_follow_their_inputs(gpu):
    # patches/0018 replays a graph computed again unchanged; only the inputs' contents differ
    # between these decode steps, so the second and third are replayed and must still see them
    prompt = gpu.tokenizer.encode(PROMPT)
    paris = gpu.tokenizer.encode(" Paris", add_special=False)[0]
    london = gpu.tokenizer.encode(" London", add_special=False)[0]
    seen = []
    with gpu.context(n_ctx=64) as c:
        for t in (paris, london, paris):
            c.reset()
            c.eval(prompt)
            c.eval([t])
            seen.append(c.logits().copy())
    with gpu.context(n_ctx=64) as fresh:  # nothing recorded yet
        fresh.eval(prompt)
        fresh.eval([london])
        london_fresh = fresh.logits().copy()
    np.testing.assert_array_equal(seen[0], seen[2])
    np.testing.assert_array_equal(seen[1], london_fresh)
    assert float(np.abs(seen[0] - seen[1]).max()) > 1.0


def test_lora_scale_changes_take_effect_between_replayed_steps(gpu, tmp_path):
    # a LoRA scale is an op parameter of the graph: a changed scale must not replay a record made
    # with the old one (patches/0018), and the same scale again must give the same logits
    from test_lora_and_embeddings import write_lora

    path = tmp_path / "lora.gguf"
    write_lora(path)
    tokens = gpu.tokenizer.encode(PROMPT)
    with gpu.context(n_ctx=64) as c, gpu.load_lora(path) as lora:

        def step(scale: float) -> np.ndarray:
            c.set_loras({lora: scale} if scale else {})
            c.reset()
            c.eval(tokens)
            c.eval([tokens[-1]])
            return c.logits().copy()

        base, full, half, full_again, base_again = (step(s) for s in (0, 1.0, 0.5, 1.0, 0))
    assert float(np.abs(full - base).max()) > 0.5
    assert float(np.abs(half - full).max()) > 0.1
    np.testing.assert_array_equal(full, full_again)
    np.testing.assert_array_equal(base, base_again)


def test_fused_dispatches_give_the_logits_of_separate_ones(gpu, monkeypatch):
    # patches/0019 and 0021: with a fusion turned off (read when a context is created) those ops are
    # dispatches of their own again. The fused mat-vec adds the same products in the same order and
    # the paired SET_ROWS copies the same rows, so decode-step logits must be identical, not merely
    # close; each step reads the K and V cache rows the steps before it wrote.
    prompt = gpu.tokenizer.encode(PROMPT)
    follow = gpu.tokenizer.encode(" Paris, a city on the Seine", add_special=False)[:4]

    fused = _decode_step_logits(gpu, prompt, follow)
    assert fused.shape == (len(follow), gpu.n_vocab)
    assert np.isfinite(fused).all() and float(np.abs(fused).max()) > 1.0
    for switch in ("GGML_WEBGPU_FUSE_MAT_VEC", "GGML_WEBGPU_FUSE_SET_ROWS"):
        with monkeypatch.context() as env:
            env.setenv(switch, "0")
            separate = _decode_step_logits(gpu, prompt, follow)
        np.testing.assert_array_equal(fused, separate, err_msg=f"{switch}=0")


def test_rope_and_scale_fused_give_the_logits_of_separate_dispatches(webgpu_device, monkeypatch):
    # patches/0032: Gemma 3 scales Q right after its ROPE; the fused dispatch multiplies each
    # rotated value by the same scale, so the logits must be identical, not merely close
    with Model(model_path("gemma-3-270m"), device="webgpu") as gemma:
        prompt = gemma.tokenizer.encode(PROMPT)
        follow = gemma.tokenizer.encode(" Paris, a city on the Seine", add_special=False)[:3]
        fused = _decode_step_logits(gemma, prompt, follow)
        with monkeypatch.context() as env:
            env.setenv("GGML_WEBGPU_FUSE_ROPE_SCALE", "0")
            separate = _decode_step_logits(gemma, prompt, follow)
    assert np.isfinite(fused).all() and float(np.abs(fused).max()) > 1.0
    np.testing.assert_array_equal(fused, separate)


@pytest.mark.parametrize(
    ("mode", "n_dims", "bias"),
    [
        (0, 64, 0.0),
        (lib.GGML_ROPE_TYPE_NEOX, 64, 0.0),
        (lib.GGML_ROPE_TYPE_NEOX, 32, 0.0),
        (0, 64, 0.5),
    ],
    ids=["normal", "neox", "neox-partial-rotation", "with-bias-not-fused"],
)
def test_rope_then_scale_matches_the_cpu(webgpu_device, mode, n_dims, bias):
    # the op pair through ggml (the scale's input read by nothing else, so it is fused unless the
    # SCALE has a bias); with n_dims < ne0 the unrotated values are scaled too
    rng = np.random.default_rng(32)
    head, heads, tokens = 64, 4, 5
    x = rng.uniform(-1, 1, (tokens, heads, head)).astype(np.float32)
    pos = np.array([3, 17, 40, 41, 200], np.int32)
    inputs = [(lib.GGML_TYPE_F32, (head, heads, tokens), x), (lib.GGML_TYPE_I32, (tokens,), pos)]

    def build(ctx, a, p):
        roped = lib.ggml_rope_ext(
            ctx, a, p, ffi.NULL, n_dims, mode, 0, 10000.0, 1.0, 0.0, 1.0, 32.0, 1.0
        )
        return lib.ggml_scale_bias(ctx, roped, 0.125, bias)

    cpu = lib.ggml_backend_init_by_type(lib.GGML_BACKEND_DEVICE_TYPE_CPU, ffi.NULL)
    webgpu = lib.ggml_backend_init_by_type(lib.GGML_BACKEND_DEVICE_TYPE_GPU, ffi.NULL)
    assert cpu != ffi.NULL and webgpu != ffi.NULL
    try:
        want = run_op(cpu, inputs, build)
        got = run_op(webgpu, inputs, build)
    finally:
        lib.ggml_backend_free(webgpu)
        lib.ggml_backend_free(cpu)
    assert float(np.abs(want).max()) > 0.05
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def _norm_add_norm(ctx, x, w1, r, w2, *, residual_first=False, graph_nodes=False):
    # Gemma 3's post-norm, residual ADD and next pre-norm; the ADD's result and the last MUL's are
    # both read back (the ADD's is the residual stream a model reads again later)
    if graph_nodes:  # results of earlier nodes, which the allocator may write over in place
        x, r = lib.ggml_scale(ctx, x, 1.0), lib.ggml_scale(ctx, r, 1.0)
    post = lib.ggml_mul(ctx, lib.ggml_rms_norm(ctx, x, 1e-6), w1)
    s = lib.ggml_add(ctx, r, post) if residual_first else lib.ggml_add(ctx, post, r)
    return s, lib.ggml_mul(ctx, lib.ggml_rms_norm(ctx, s, 0.1), w2)


@pytest.mark.parametrize(
    ("graph_alloc", "buffers", "ne0", "rows"),
    [
        (False, (), 640, 3),
        (True, (), 1000, 2),
        (False, (0, 1, 0, 1), 640, 1),
        (True, (0, 1, 0, 2), 1000, 1),
    ],
    ids=["weights-with-activations", "in-place", "weights-in-one-buffer", "weights-in-two-buffers"],
)
def test_norm_add_norm_chain_matches_the_cpu(webgpu_device, graph_alloc, buffers, ne0, rows):
    # patches/0033 fuses RMS_NORM -> MUL -> ADD -> RMS_NORM -> MUL into one dispatch, binding the
    # weights with the activations or on their own; the small first source makes eps matter
    rng = np.random.default_rng(33)
    x = rng.uniform(-0.05, 0.05, (rows, ne0)).astype(np.float32)
    r = rng.uniform(-1, 1, (rows, ne0)).astype(np.float32)
    w1, w2 = (rng.uniform(0.5, 1.5, ne0).astype(np.float32) for _ in range(2))
    f32 = lib.GGML_TYPE_F32
    inputs = [(f32, (ne0, rows), x), (f32, (ne0,), w1), (f32, (ne0, rows), r), (f32, (ne0,), w2)]

    def build(ctx, *t):
        return _norm_add_norm(ctx, *t, residual_first=graph_alloc, graph_nodes=graph_alloc)

    cpu = lib.ggml_backend_init_by_type(lib.GGML_BACKEND_DEVICE_TYPE_CPU, ffi.NULL)
    webgpu = lib.ggml_backend_init_by_type(lib.GGML_BACKEND_DEVICE_TYPE_GPU, ffi.NULL)
    assert cpu != ffi.NULL and webgpu != ffi.NULL
    try:
        want = run_op(cpu, inputs, build, graph_alloc=graph_alloc, buffers=buffers)
        got = run_op(webgpu, inputs, build, graph_alloc=graph_alloc, buffers=buffers)
    finally:
        lib.ggml_backend_free(webgpu)
        lib.ggml_backend_free(cpu)
    norm = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + 1e-6)
    s = norm * w1 + r
    out = s / np.sqrt((s * s).mean(axis=1, keepdims=True) + 0.1) * w2
    np.testing.assert_allclose(want[0], s.ravel(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(want[1], out.ravel(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got[0], want[0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got[1], want[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("switch", ["GGML_WEBGPU_FUSE_NORM_ADD_NORM", "GGML_WEBGPU_FUSE_NORM_ROPE"])
def test_gemma_norm_fusions_give_the_logits_of_separate_dispatches(
    webgpu_device, monkeypatch, switch
):
    # patches/0033 (two such chains a layer) and 0034 (Q's and K's head norms with their ROPE) in
    # Gemma 3; the fused kernels sum the squares in another order, so the logits are close rather
    # than identical
    with Model(model_path("gemma-3-270m"), device="webgpu") as gemma:
        prompt = gemma.tokenizer.encode(PROMPT)
        follow = gemma.tokenizer.encode(" Paris, a city on the Seine", add_special=False)[:3]
        fused = _decode_step_logits(gemma, prompt, follow)
        with monkeypatch.context() as env:
            env.setenv(switch, "0")
            separate = _decode_step_logits(gemma, prompt, follow)
    assert np.isfinite(fused).all() and float(np.abs(fused).max()) > 1.0
    np.testing.assert_allclose(fused, separate, atol=0.2)
    np.testing.assert_array_equal(fused.argmax(axis=1), separate.argmax(axis=1))


@pytest.mark.parametrize(
    ("mode", "scale", "graph_alloc"),
    [
        (0, 1.0, False),
        (lib.GGML_ROPE_TYPE_NEOX, 1.0, True),
        (lib.GGML_ROPE_TYPE_NEOX, 0.0625, True),
        (0, 0.0625, False),
    ],
    ids=["normal", "neox-in-place", "neox-scaled-in-place", "normal-scaled"],
)
def test_head_norm_then_rope_matches_the_cpu(webgpu_device, mode, scale, graph_alloc):
    # patches/0034: RMS_NORM of each head, MUL by the norm's weight row and ROPE (and the SCALE
    # after it, as Gemma 3's Q has) in one dispatch, a workgroup per head; in place when the graph
    # allocator lets each op write over its source. The weight row is in a buffer of its own, as a
    # model's is.
    rng = np.random.default_rng(34)
    head, heads, tokens = 256, 4, 3
    x = rng.uniform(-0.05, 0.05, (tokens, heads, head)).astype(np.float32)
    w = rng.uniform(0.5, 1.5, head).astype(np.float32)
    pos = np.array([5, 6, 300], np.int32)
    f32 = lib.GGML_TYPE_F32
    inputs = [
        (f32, (head, heads, tokens), x),
        (f32, (head,), w),
        (lib.GGML_TYPE_I32, (tokens,), pos),
    ]

    def build(ctx, a, weight, p):
        if graph_alloc:  # the result of an earlier node, as the Q and K mat-vecs' are
            a = lib.ggml_scale(ctx, a, 1.0)
        normed = lib.ggml_mul(ctx, lib.ggml_rms_norm(ctx, a, 1e-3), weight)
        roped = lib.ggml_rope_ext(
            ctx, normed, p, ffi.NULL, head, mode, 0, 10000.0, 1.0, 0.0, 1.0, 32.0, 1.0
        )
        return roped if scale == 1.0 else lib.ggml_scale(ctx, roped, scale)

    cpu = lib.ggml_backend_init_by_type(lib.GGML_BACKEND_DEVICE_TYPE_CPU, ffi.NULL)
    webgpu = lib.ggml_backend_init_by_type(lib.GGML_BACKEND_DEVICE_TYPE_GPU, ffi.NULL)
    assert cpu != ffi.NULL and webgpu != ffi.NULL
    kw = {"graph_alloc": graph_alloc, "buffers": (0, 1, 0)}
    try:
        want = run_op(cpu, inputs, build, **kw)
        got = run_op(webgpu, inputs, build, **kw)
    finally:
        lib.ggml_backend_free(webgpu)
        lib.ggml_backend_free(cpu)
    # position 0 does not rotate: there the result is the scaled norm itself
    normed = x / np.sqrt((x * x).mean(axis=2, keepdims=True) + 1e-3) * w
    assert float(np.abs(want).max()) > 0.05
    np.testing.assert_allclose(
        np.linalg.norm(want.reshape(tokens, heads, head), axis=2),
        scale * np.linalg.norm(normed, axis=2),
        rtol=1e-4,
    )
    # (the GPU's sine and cosine at position 300 differ from the CPU's by up to 5e-5, fused or not)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
