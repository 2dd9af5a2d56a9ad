"""Greedy sampling on the GPU (ContextParams.gpu_sampling=True, off by default): a WebGPU context
attaches a llama.cpp sampler chain (logit bias, then greedy) for the length of a greedy generation,
so the GPU picks each token and only its id is read back. The tokens must be those the host picks
from the same logits, and everything that reads logits afterwards must still get the right
ones."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llama_webgpu._native import ffi
from llama_webgpu.generate import generate, stream_generate

PROMPT = "The capital of France is"

pytestmark = pytest.mark.webgpu


@pytest.fixture(scope="module")
def on_cpu_sampling(gpu) -> tuple[list[int], np.ndarray]:
    """Tokens of a greedy run sampled on the host, and the logits left in its context."""
    with gpu.context(n_ctx=64, gpu_sampling=False) as c:
        tokens = generate(c, PROMPT, max_tokens=5, temperature=0).tokens
        assert not c._sampled_on_gpu
        return tokens, c.logits()


def test_tokens_picked_on_the_gpu_are_those_picked_on_the_host(gpu, on_cpu_sampling):
    host_tokens, _ = on_cpu_sampling
    assert len(host_tokens) == 5
    with gpu.context(n_ctx=64, gpu_sampling=True) as c:
        assert generate(c, PROMPT, max_tokens=5, temperature=0).tokens == host_tokens
        assert c._sampled_on_gpu  # the last decode's token came from the GPU
        assert c._gpu_chain == ffi.NULL  # detached when the generation ended


def test_a_logit_bias_is_applied_on_the_gpu(gpu, on_cpu_sampling):
    host_tokens, _ = on_cpu_sampling
    ban = {host_tokens[0]: -math.inf}
    with gpu.context(n_ctx=64, gpu_sampling=False) as c:
        expected = generate(c, PROMPT, max_tokens=3, temperature=0, logit_bias=ban).tokens
    with gpu.context(n_ctx=64, gpu_sampling=True) as c:
        got = generate(c, PROMPT, max_tokens=3, temperature=0, logit_bias=ban).tokens
        assert c._sampled_on_gpu
    assert got == expected
    assert got[0] != host_tokens[0]


def test_logits_after_a_gpu_sampled_generation_are_read_back(gpu, on_cpu_sampling):
    # the last token's logits never left the GPU: logits() evaluates it again, which must give
    # exactly what a host-sampled run left, and keep the context's tokens as they were
    _, host_logits = on_cpu_sampling
    with gpu.context(n_ctx=64, gpu_sampling=True) as c:
        generate(c, PROMPT, max_tokens=5, temperature=0)
        n = len(c.tokens)
        logits = c.logits()
        assert len(c.tokens) == n and not c._sampled_on_gpu
        np.testing.assert_array_equal(logits, host_logits)
        state = c.save_state()
    with gpu.context(n_ctx=64) as restored:
        restored.load_state(state)
        np.testing.assert_array_equal(restored.logits(), host_logits)


def test_host_sampling_after_gpu_sampling_in_one_context(gpu, on_cpu_sampling):
    # a greedy run (GPU), then a run with logprobs (needs the logits on the host) reusing the
    # prompt, then a stream stopped early and resumed by hand: each sees the right logits
    host_tokens, _ = on_cpu_sampling
    with gpu.context(n_ctx=64, gpu_sampling=True) as c:
        assert generate(c, PROMPT, max_tokens=2, temperature=0).tokens == host_tokens[:2]
        result = generate(c, PROMPT, max_tokens=2, temperature=0, logprobs=2)
        assert result.tokens == host_tokens[:2]
        assert result.logprobs is not None and all(-20 < lp <= 0 for lp in result.logprobs)
        assert not c._sampled_on_gpu and c._gpu_chain == ffi.NULL
        stream = stream_generate(c, PROMPT, max_tokens=5, temperature=0)
        first = next(stream)
        stream.close()
        assert first.token == host_tokens[0]
        c.eval([host_tokens[0]])
        assert int(np.argmax(c.logits())) == host_tokens[1]


def test_greedy_picks_on_the_host_unless_asked(gpu, on_cpu_sampling):
    host_tokens, _ = on_cpu_sampling
    with gpu.context(n_ctx=64) as c:
        assert generate(c, PROMPT, max_tokens=2, temperature=0).tokens == host_tokens[:2]
        assert not c._sampled_on_gpu


def test_sampling_that_needs_the_host_does_not_attach(gpu):
    # temperature > 0 samples from a distribution on the host (its random generator is there)
    with gpu.context(n_ctx=64, gpu_sampling=True) as c:
        a = generate(c, PROMPT, max_tokens=3, temperature=0.8, seed=7).tokens
        assert not c._sampled_on_gpu
        b = generate(c, PROMPT, max_tokens=3, temperature=0.8, seed=7).tokens
    assert a == b
