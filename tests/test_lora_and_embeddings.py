"""LoRA adapters (a real GGUF adapter written here with gguf-py) and embeddings."""

from __future__ import annotations

import numpy as np
import pytest

import llama_webgpu as lw
from llama_webgpu.model import Model
from llama_webgpu.models import model_path

gguf = pytest.importorskip("gguf")

N_EMBD = 576  # SmolLM2-135M


def write_lora(path, arch: str = "llama", layers: int = 4, rank: int = 8, seed: int = 0) -> None:
    """A LoRA adapter on attn_q of the first layers, random weights (numpy shapes are reversed
    from ggml's: A is (rank, n_in), B is (n_out, rank))."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(rank))
    for i in range(layers):
        a = rng.normal(0, 0.5, (rank, N_EMBD)).astype(np.float32)
        b = rng.normal(0, 0.5, (N_EMBD, rank)).astype(np.float32)
        w.add_tensor(f"blk.{i}.attn_q.weight.lora_a", a)
        w.add_tensor(f"blk.{i}.attn_q.weight.lora_b", b)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def smol() -> Model:
    with Model(model_path(), device="cpu") as m:
        yield m


@pytest.fixture()
def lora_file(tmp_path):
    path = tmp_path / "lora.gguf"
    write_lora(path)
    return path


def logits_of(ctx, tokens) -> np.ndarray:
    ctx.reset()
    ctx.eval(tokens)
    return ctx.logits()


def test_lora_scale_changes_the_output_and_zero_or_removal_restores_it(smol, lora_file):
    tokens = smol.tokenizer.encode("The capital of France is")
    with smol.context(n_ctx=128) as ctx, smol.load_lora(lora_file) as lora:
        assert lora.metadata["adapter.type"] == "lora"
        base = logits_of(ctx, tokens)
        ctx.set_loras({lora: 1.0})
        changed = logits_of(ctx, tokens)
        assert np.abs(changed - base).max() > 0.5
        ctx.set_loras({lora: 0.0})
        np.testing.assert_allclose(logits_of(ctx, tokens), base, atol=1e-3)
        ctx.set_loras({lora: 1.0})
        ctx.set_loras({})
        np.testing.assert_allclose(logits_of(ctx, tokens), base, atol=1e-3)
        ctx.set_loras({lora: 1.0})
        lora.close()  # detaches from the context
        assert ctx.loras == {}
        np.testing.assert_allclose(logits_of(ctx, tokens), base, atol=1e-3)
        lora.close()


def test_lora_for_another_architecture_or_a_missing_file_is_refused(smol, tmp_path):
    wrong = tmp_path / "gemma-lora.gguf"
    write_lora(wrong, arch="gemma3")
    with pytest.raises(lw.ModelLoadError, match="failed to load LoRA"):
        smol.load_lora(wrong)
    with pytest.raises(lw.ModelLoadError, match="not found"):
        smol.load_lora(tmp_path / "absent.gguf")


def test_closing_the_model_closes_its_adapters(lora_file):
    m = Model(model_path(), device="cpu")
    lora = m.load_lora(lora_file)
    m.close()
    assert lora.closed
    lora.close()  # nothing left to free, no crash
    with pytest.raises(lw.ClosedError):
        _ = lora.metadata


def test_embeddings_are_normalized_and_rank_similar_texts_closer(smol):
    texts = ["The cat sat on the mat.", "A cat was sitting on a mat.", "Stock prices fell."]
    vecs = smol.embed(texts)
    assert vecs.shape == (3, N_EMBD)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    sims = vecs @ vecs.T
    assert sims[0, 1] > sims[0, 2]
    single = smol.embed("The cat sat on the mat.")
    np.testing.assert_allclose(single, vecs[0], atol=1e-4)
    raw = smol.embed("The cat sat on the mat.", normalize=False)
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3
    per_token = smol.context(embeddings=True, pooling="none", n_ctx=128)
    tokens = smol.tokenizer.encode("The cat sat")
    assert per_token.embed_tokens(tokens).shape == (len(tokens), N_EMBD)
    per_token.close()


def test_embeddings_need_an_embedding_context(smol):
    with smol.context(n_ctx=64) as ctx, pytest.raises(lw.ContextError, match="embeddings=True"):
        ctx.embed_tokens([1, 2, 3])
