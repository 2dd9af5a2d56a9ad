"""Threads: one model shared by several threads. Contexts of their own generate concurrently
and give the sequential results; one context is one generation at a time (a second one is
refused with ContextError); calls on one context from several threads are serialized; close()
from another thread during a generation is safe (the generating thread gets ClosedError).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from llama_webgpu import (
    ClosedError,
    ContextError,
    LlamaError,
    Model,
    generate,
    make_sampler,
    stream_generate,
)
from llama_webgpu.models import model_path

pytestmark = pytest.mark.model

TIMEOUT = 120  # seconds; a hang fails the test instead of blocking the run


def chat(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


JOBS = [
    (chat("Write a haiku about the sea."), {"temperature": 0}),
    (chat("Name three colours."), {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 3}),
    (chat("What is 2 + 2?"), {"temperature": 0.7, "seed": 11}),
    (chat("Say hello in French."), {"temperature": 0}),
]
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def model():
    with Model(model_path(), device="cpu") as m:
        yield m


def run_job(model, job) -> list[int]:
    prompt, config = job
    with model.context(n_ctx=128, n_threads=1) as ctx:
        return generate(ctx, prompt, max_tokens=MAX_TOKENS, **config).tokens


def test_threads_with_their_own_contexts_match_sequential_runs(model):
    sequential = [run_job(model, job) for job in JOBS]
    with ThreadPoolExecutor(len(JOBS)) as pool:
        futures = [pool.submit(run_job, model, job) for job in JOBS]
        concurrent = [f.result(timeout=TIMEOUT) for f in futures]
    assert concurrent == sequential


def test_shared_tokenizer_from_many_threads_matches_sequential(model):
    tok = model.tokenizer
    texts = [f"Thread text number {i}: ünïcödé ✓ 日本語 {'x' * i}" for i in range(32)]
    expected = [(tok.encode(t), t) for t in texts]

    def round_trip(t: str) -> tuple[list[int], str]:
        ids = tok.encode(t)
        return ids, tok.decode(ids, special=False).lstrip()

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(round_trip, texts * 4, timeout=TIMEOUT))
    assert got == expected * 4


def test_a_second_generation_on_a_busy_context_is_refused_and_the_first_is_unharmed(model):
    prompt, config = JOBS[1]
    with model.context(n_ctx=128, n_threads=1) as ctx:
        fresh = generate(ctx, prompt, max_tokens=MAX_TOKENS, **config).tokens
        ctx.reset()
        started, tried = threading.Event(), threading.Event()
        errors: list[BaseException] = []

        def intruder() -> None:
            started.wait(TIMEOUT)
            try:
                generate(ctx, JOBS[0][0], max_tokens=3, temperature=0)
            except BaseException as e:
                errors.append(e)
            try:
                ctx.eval([1])  # a direct change is serialized, and the stream notices it
            except BaseException as e:
                errors.append(e)
            tried.set()

        thread = threading.Thread(target=intruder)
        thread.start()
        tokens = []
        with pytest.raises(ContextError, match=r"changed .* while this generation was suspended"):
            for r in stream_generate(ctx, prompt, max_tokens=MAX_TOKENS, **config):
                tokens.append(r.token)
                if len(tokens) == 2:
                    started.set()
                    assert tried.wait(TIMEOUT)
        thread.join(TIMEOUT)
        assert len(errors) == 1 and isinstance(errors[0], ContextError), errors
        assert "in use by another generation" in str(errors[0])
        assert tokens == fresh[:2]
        # the context is free again and consistent
        assert generate(ctx, prompt, max_tokens=MAX_TOKENS, **config).tokens == fresh


def test_an_unfinished_stream_in_the_same_thread_also_holds_the_context(model):
    with model.context(n_ctx=128, n_threads=1) as ctx:
        stream = stream_generate(ctx, JOBS[0][0], max_tokens=MAX_TOKENS, temperature=0)
        next(stream)
        with pytest.raises(ContextError, match="in use by another generation"):
            generate(ctx, JOBS[0][0], max_tokens=2, temperature=0)
        stream.close()  # releases it
        assert generate(ctx, JOBS[0][0], max_tokens=2, temperature=0).tokens


def test_a_sampler_shared_by_two_generations_is_refused(model):
    sampler = make_sampler(model, temperature=0)
    with model.context(n_ctx=128, n_threads=1) as a, model.context(n_ctx=128, n_threads=1) as b:
        first = stream_generate(a, JOBS[0][0], max_tokens=5, sampler=sampler)
        next(first)
        with pytest.raises(LlamaError, match="sampler is in use"):
            next(stream_generate(b, JOBS[0][0], max_tokens=5, sampler=sampler))
        first.close()
    sampler.close()


def test_concurrent_evals_on_one_context_are_serialized(model):
    tok = model.tokenizer
    words = [tok.encode(f" word{i}", add_special=False)[0] for i in range(40)]
    with model.context(n_ctx=128, n_threads=1) as ctx:
        ctx.eval([tok.bos or 1])
        barrier = threading.Barrier(2)

        def feed(ids: list[int]) -> None:
            barrier.wait(TIMEOUT)
            for t in ids:
                ctx.eval([t])

        threads = [threading.Thread(target=feed, args=(words[i::2],)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        assert sorted(ctx.tokens[1:]) == sorted(words) and len(ctx.tokens) == 41
        # the KV cache holds exactly ctx.tokens, in that order
        last = ctx.logits()
        with model.context(n_ctx=128, n_threads=1) as check:
            check.eval(ctx.tokens)
            np.testing.assert_allclose(check.logits(), last, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("what", ["model", "context"])
def test_close_from_another_thread_during_generation_is_safe(what):
    model = Model(model_path(), device="cpu")
    ctx = model.context(n_ctx=512, n_threads=1)
    going = threading.Event()
    outcome: list[BaseException | str] = []

    def worker() -> None:
        try:
            for i, _ in enumerate(stream_generate(ctx, JOBS[0][0], max_tokens=400, temperature=1)):
                if i == 3:
                    going.set()
            outcome.append("finished")
        except BaseException as e:
            outcome.append(e)
        going.set()

    thread = threading.Thread(target=worker)
    thread.start()
    assert going.wait(TIMEOUT)
    (model if what == "model" else ctx).close()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], ClosedError), outcome
    assert ctx.closed
    model.close()


def test_close_from_another_thread_during_a_long_prompt_decode_aborts_it():
    model = Model(model_path(), device="cpu")
    ctx = model.context(n_ctx=2048, n_batch=2048, n_ubatch=2048, n_threads=1)
    tokens = model.tokenizer.encode("The sea is wide and deep. " * 250)[:2000]
    inside = threading.Event()
    outcome: list[BaseException | str] = []

    def worker() -> None:
        inside.set()
        try:
            ctx.eval(tokens)
            outcome.append("finished")
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=worker)
    thread.start()
    assert inside.wait(TIMEOUT)
    model.close()  # aborts the decode (or waits for it) and frees everything
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert outcome in (["finished"],) or isinstance(outcome[0], ClosedError), outcome
    assert model.closed and ctx.closed
