"""Cancellation: leaving a stream at a random point (break, close(), an exception in the
consumer) leaves the context consistent; the next generation equals a fresh run's output for
the same seed, greedy or sampled, same prompt or another one (compared token by token).

The CI run does 40 cancellations; the 200 of the reliability check are the slow-marked test
(`pytest -m slow tests/test_cancellation.py`); docs/reliability.md has the figures.
"""

from __future__ import annotations

import random
import time

import pytest

from llama_webgpu import Model, generate, stream_generate
from llama_webgpu.models import model_path

pytestmark = pytest.mark.model

MAX_TOKENS = 12


def chat(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


PROMPTS = [
    chat("Write a haiku about the sea."),
    chat("Name three colours."),
    chat("What is 2 + 2?"),
]
CONFIGS = [
    {"temperature": 0},
    {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": 7},
    {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "seed": 12345},
    {"temperature": 1.2, "seed": 99, "repeat_penalty": 1.3},
]


@pytest.fixture(scope="module")
def model():
    with Model(model_path(), device="cpu") as m:
        yield m


@pytest.fixture(scope="module")
def ctx(model):
    with model.context(n_ctx=256, n_threads=1) as c:
        yield c


@pytest.fixture(scope="module")
def fresh(ctx):
    """Reference tokens of every (prompt, config), each from an empty context."""
    out = {}
    for p, prompt in enumerate(PROMPTS):
        for c, config in enumerate(CONFIGS):
            ctx.reset()
            out[p, c] = generate(ctx, prompt, max_tokens=MAX_TOKENS, **config).tokens
    return out


def cancel(ctx, rng: random.Random) -> str:
    """Start a random stream and leave it at a random point, in one of three ways."""
    prompt = rng.choice(PROMPTS)
    config = rng.choice(CONFIGS)
    stop_at = rng.randrange(MAX_TOKENS)
    how = rng.choice(("break", "close", "raise"))
    stream = stream_generate(ctx, prompt, max_tokens=MAX_TOKENS, **config)
    try:
        for i, _ in enumerate(stream):
            if i == stop_at:
                if how == "raise":
                    raise KeyboardInterrupt
                if how == "close":
                    stream.close()
                break
    except KeyboardInterrupt:
        pass
    finally:
        del stream  # a broken-out stream is closed when it is dropped
    return how


def run_cancellations(ctx, fresh, n: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    counts = {"break": 0, "close": 0, "raise": 0, "mismatches": 0}
    for _ in range(n):
        counts[cancel(ctx, rng)] += 1
        p = rng.randrange(len(PROMPTS))
        c = rng.randrange(len(CONFIGS))
        got = generate(ctx, PROMPTS[p], max_tokens=MAX_TOKENS, **CONFIGS[c]).tokens
        if got != fresh[p, c]:
            counts["mismatches"] += 1
    return counts


def test_fresh_runs_differ_between_configs(fresh):
    # the sampled configs really sample: otherwise the check below would be weaker
    assert len({tuple(fresh[0, c]) for c in range(len(CONFIGS))}) >= 3


def test_40_random_cancellations_leave_the_next_generation_equal_to_a_fresh_run(ctx, fresh):
    counts = run_cancellations(ctx, fresh, 40, seed=2024)
    assert counts["mismatches"] == 0, counts
    assert min(counts["break"], counts["close"], counts["raise"]) > 0, counts


@pytest.mark.slow
def test_200_random_cancellations_leave_the_next_generation_equal_to_a_fresh_run(ctx, fresh):
    t0 = time.perf_counter()
    counts = run_cancellations(ctx, fresh, 200, seed=1)
    print(f"200 cancellations in {time.perf_counter() - t0:.1f} s: {counts}")
    assert counts["mismatches"] == 0, counts
