"""Lifetimes: load/free cycles keep resident memory flat, use after close() raises ClosedError
(every public method), and closing a model under a live context or a suspended stream is safe.

The long runs (1,000 cycles per case) are bench/lifetimes.py; docs/reliability.md has figures.
"""

from __future__ import annotations

import gc
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import llama_webgpu as lw
from llama_webgpu import ClosedError, Model, generate, make_sampler, stream_generate
from llama_webgpu.models import model_path

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parent.parent
MAX_GROWTH_PCT = 5.0
PROMPT = "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n"


def _bench():
    spec = importlib.util.spec_from_file_location("lifetimes", ROOT / "bench" / "lifetimes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["lifetimes"] = module
    spec.loader.exec_module(module)
    return module


lifetimes = _bench()


@pytest.mark.parametrize(
    ("kind", "drop", "warmup", "cycles"),
    [("vocab", False, 10, 40), ("full", False, 10, 30), ("full", True, 5, 15)],
    ids=["vocab-only", "full", "full-dropped-without-close"],
)
def test_cpu_load_free_cycles_keep_memory_flat(kind, drop, warmup, cycles):
    r = lifetimes.run(kind, "cpu", cycles, warmup, drop=drop)
    assert r.growth_pct < MAX_GROWTH_PCT, r


@pytest.mark.webgpu
def test_webgpu_load_free_cycles_keep_memory_flat(webgpu_device):
    # a full load on lavapipe takes about 12 s (shader pipelines): a few cycles only
    r = lifetimes.run("full", "webgpu", 2, 1)
    assert r.growth_pct < MAX_GROWTH_PCT, r


# -- use after close ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def closed():
    """A model, its context, tokenizer, sampler and detokenizer, all used once, then the model
    closed (which closes the context)."""
    model = Model(model_path(), device="cpu")
    ctx = model.context(n_ctx=64, n_threads=1)
    tok = model.tokenizer
    sampler = make_sampler(model, temperature=0)
    detok = tok.detokenizer()
    ctx.eval(tok.encode("Hello"))
    detok.add_token(tok.encode("Hello", add_special=False)[0])
    state = ctx.save_state()
    model.close()
    return model, ctx, tok, sampler, detok, state


MODEL_USES = {
    "n_vocab": lambda m: m.n_vocab,
    "n_ctx_train": lambda m: m.n_ctx_train,
    "n_embd": lambda m: m.n_embd,
    "n_layer": lambda m: m.n_layer,
    "n_params": lambda m: m.n_params,
    "size": lambda m: m.size,
    "description": lambda m: m.description,
    "metadata": lambda m: m.metadata,
    "meta": lambda m: m.meta("general.architecture"),
    "architecture": lambda m: m.architecture,
    "chat_template": lambda m: m.chat_template,
    "has_encoder": lambda m: m.has_encoder,
    "n_cls_out": lambda m: m.n_cls_out,
    "vocab": lambda m: m.vocab,
    "context": lambda m: m.context(n_ctx=64),
    "embed": lambda m: m.embed("hi"),
    "generate": lambda m: generate(m, "hi", max_tokens=1),
    "make_sampler": lambda m: make_sampler(m),
}
CONTEXT_USES = {
    "eval": lambda c, s: c.eval([1]),
    "logits": lambda c, s: c.logits(),
    "reset": lambda c, s: c.reset(),
    "truncate": lambda c, s: c.truncate(0),
    "prefill": lambda c, s: c.prefill([1, 2]),
    "logits_for": lambda c, s: c.logits_for([1, 2]),
    "memory": lambda c, s: c.memory,
    "pooling": lambda c, s: c.pooling,
    "set_loras": lambda c, s: c.set_loras({}),
    "save_state": lambda c, s: c.save_state(),
    "load_state": lambda c, s: c.load_state(s),
    "generate": lambda c, s: generate(c, "hi", max_tokens=1),
    "stream_generate": lambda c, s: next(stream_generate(c, "hi", max_tokens=1)),
}
TOKENIZER_USES = {
    "encode": lambda t: t.encode("hi"),
    "decode": lambda t: t.decode([1, 2]),
    "decode_bytes": lambda t: t.decode_bytes([1]),
    "token_to_piece": lambda t: t.token_to_piece(1),
    "is_eog": lambda t: t.is_eog(1),
    "is_control": lambda t: t.is_control(1),
    "bos": lambda t: t.bos,
    "eos": lambda t: t.eos,
    "eot": lambda t: t.eot,
    "add_bos": lambda t: t.add_bos,
    "has_vocab": lambda t: t.has_vocab,
}
SAMPLER_USES = {
    "reset": lambda s: s.reset(),
    "accept": lambda s: s.accept(1),
    "feed_prompt": lambda s: s.feed_prompt([1]),
    "sample_logits": lambda s: s.sample_logits(np.zeros(s.n_vocab, np.float32)),
}


@pytest.mark.parametrize("use", MODEL_USES.values(), ids=MODEL_USES.keys())
def test_every_model_method_raises_closed_error_after_close(closed, use):
    with pytest.raises(ClosedError):
        use(closed[0])


@pytest.mark.parametrize("use", CONTEXT_USES.values(), ids=CONTEXT_USES.keys())
def test_every_context_method_raises_closed_error_after_its_model_closed(closed, use):
    _, ctx, *_, state = closed
    assert ctx.closed
    with pytest.raises(ClosedError):
        use(ctx, state)


@pytest.mark.parametrize("use", TOKENIZER_USES.values(), ids=TOKENIZER_USES.keys())
def test_every_tokenizer_method_raises_closed_error_after_close(closed, use):
    with pytest.raises(ClosedError):
        use(closed[2])


@pytest.mark.parametrize("use", SAMPLER_USES.values(), ids=SAMPLER_USES.keys())
def test_every_sampler_method_raises_closed_error_after_its_model_closed(closed, use):
    with pytest.raises(ClosedError):
        use(closed[3])


def test_detokenizer_raises_closed_error_and_closes_are_idempotent(closed):
    model, ctx, _, sampler, detok, _ = closed
    with pytest.raises(ClosedError):
        detok.add_token(1)
    for obj in (model, ctx, sampler):
        obj.close()
        obj.close()


def test_a_context_closed_on_its_own_raises_and_the_model_works_on():
    with Model(model_path(), device="cpu") as model:
        ctx = model.context(n_ctx=64, n_threads=1)
        ctx.close()
        with pytest.raises(ClosedError, match="context is closed"):
            ctx.eval([1])
        with model.context(n_ctx=64, n_threads=1) as again:
            assert generate(again, "Hi", max_tokens=2, temperature=0).tokens


# -- closing under live users ------------------------------------------------------------------


def test_closing_the_model_under_a_suspended_stream_makes_it_raise_closed_error():
    model = Model(model_path(), device="cpu")
    ctx = model.context(n_ctx=128, n_threads=1)
    stream = stream_generate(ctx, PROMPT, max_tokens=20, temperature=0)
    first = next(stream)
    assert first.finish_reason is None
    model.close()
    with pytest.raises(ClosedError):
        next(stream)
    with pytest.raises(StopIteration):  # and then it is finished, not stuck
        next(stream)
    assert ctx.closed and ctx._owner is None


def test_closing_the_context_under_a_suspended_stream_makes_it_raise_closed_error():
    with Model(model_path(), device="cpu") as model:
        ctx = model.context(n_ctx=128, n_threads=1)
        stream = stream_generate(ctx, PROMPT, max_tokens=20, temperature=0)
        next(stream)
        ctx.close()
        with pytest.raises(ClosedError):
            next(stream)
        # the model is fine: a new context generates
        with model.context(n_ctx=128, n_threads=1) as fresh:
            assert generate(fresh, PROMPT, max_tokens=3, temperature=0).tokens


def test_closing_the_sampler_under_a_suspended_stream_makes_it_raise_closed_error():
    with Model(model_path(), device="cpu") as model, model.context(n_ctx=128, n_threads=1) as ctx:
        sampler = make_sampler(model, temperature=0)
        stream = stream_generate(ctx, PROMPT, max_tokens=20, sampler=sampler)
        next(stream)
        sampler.close()
        with pytest.raises(ClosedError, match="sampler is closed"):
            next(stream)


def test_dropping_a_model_with_its_default_context_frees_without_close():
    # model -> default context -> model is a reference cycle: the collector frees it, and the
    # context is freed before the model (its destructor holds the model's pointer)
    for _ in range(3):
        model = Model(model_path(), device="cpu")
        # what generate(model, ...) makes on first use, with one thread (a busy machine)
        model._default_context = model.context(n_ctx=64, n_threads=1)
        generate(model, "Hi", max_tokens=1, temperature=0)
        del model
        gc.collect()
    with Model(model_path(), device="cpu") as model:  # the process is sound
        model._default_context = model.context(n_ctx=64, n_threads=1)
        assert generate(model, "Hi", max_tokens=1, temperature=0).tokens


def test_a_dropped_model_is_freed_at_once_even_after_tokenizing():
    # the model caches its tokenizer weakly: no cycle, so no wait for the cyclic collector
    gc.collect()
    gc.disable()
    try:
        start = lifetimes.rss_kib()
        for _ in range(5):
            model = Model(model_path(), device="cpu", use_mmap=False)  # weights in RSS
            assert model.tokenizer.encode("Hello world") == [19556, 905]
            del model
        grown_mib = (lifetimes.rss_kib() - start) / 1024
    finally:
        gc.enable()
    assert grown_mib < 150, grown_mib  # five unfreed models would be about 500 MiB


def test_a_vocab_only_model_closes_with_its_tokenizer_in_use():
    model = Model(model_path(), vocab_only=True)
    tok = model.tokenizer
    ids = tok.encode("Hello world")
    model.close()
    assert ids == [19556, 905]
    with pytest.raises(lw.ClosedError):
        tok.decode(ids)
