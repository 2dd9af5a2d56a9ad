"""Prompt processing and generation speed, in llama-bench's terms, through the Python API.

- ppN: N random valid tokens (BOS first when the model adds one) evaluated in one `eval`
  (n_batch tokens per llama_decode call) into an empty context.
- tgN: after a BOS, N single-token evals, no sampling (the same token is fed each time).

Each test runs once untimed as a warm-up (as llama-bench does), then `repetitions` times on a
cleared context; the result is the mean and sample standard deviation of tokens/s.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ._native import lib

if TYPE_CHECKING:
    from .context import Context
    from .model import Model


@dataclass(frozen=True)
class BenchResult:
    test: str
    """"pp512", "tg128"..."""
    n_prompt: int
    n_gen: int
    samples_ts: list[float]
    """Tokens per second of each repetition."""
    avg_ts: float
    stddev_ts: float
    model: str
    """llama.cpp's description, e.g. "llama 135M Q4_1"."""
    model_size: int
    model_n_params: int
    backend: str
    """"WebGPU" or "CPU"."""
    device: str
    """The device's description (the adapter or processor name)."""
    n_threads: int
    n_batch: int


def _prompt_tokens(model: Model, n: int, rng: np.random.Generator) -> list[int]:
    tokens = rng.integers(0, model.n_vocab, size=n).tolist()
    bos = model.tokenizer.bos
    if model.tokenizer.add_bos and bos is not None:
        tokens[0] = bos
    return tokens


def _first_token(model: Model, rng: np.random.Generator) -> int:
    bos = model.tokenizer.bos
    if model.tokenizer.add_bos and bos is not None:
        return bos
    return int(rng.integers(0, model.n_vocab))


def _time_prompt(ctx: Context, tokens: list[int]) -> float:
    ctx.reset()
    start = time.perf_counter()
    ctx.eval(tokens)
    lib.llama_synchronize(ctx.ptr)
    return time.perf_counter() - start


def _time_gen(ctx: Context, token: int, n: int) -> float:
    ctx.reset()
    start = time.perf_counter()
    for _ in range(n):
        ctx.eval([token])
        lib.llama_synchronize(ctx.ptr)
    return time.perf_counter() - start


def bench(
    model: Model,
    n_prompt: int = 512,
    n_gen: int = 128,
    repetitions: int = 3,
    *,
    n_threads: int | None = None,
    n_batch: int = 512,
    seed: int = 0,
) -> list[BenchResult]:
    """Measure pp{n_prompt} and tg{n_gen} (either may be 0 to skip it) on model's device."""
    for name, value, least in (
        ("n_prompt", n_prompt, 0),
        ("n_gen", n_gen, 0),
        ("repetitions", repetitions, 1),
        ("n_batch", n_batch, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, not {value!r}")
    rng = np.random.default_rng(seed)
    results = []
    with model.context(
        n_ctx=max(n_prompt + n_gen, 16),
        n_batch=n_batch,
        n_ubatch=n_batch,
        n_threads=n_threads,
    ) as ctx:
        threads = int(lib.llama_n_threads(ctx.ptr))
        tests = []
        if n_prompt:
            tokens = _prompt_tokens(model, n_prompt, rng)
            _time_prompt(ctx, tokens[: min(n_batch, n_prompt)])  # warm-up
            tests.append((f"pp{n_prompt}", n_prompt, 0, lambda: _time_prompt(ctx, tokens)))
        if n_gen:
            token = _first_token(model, rng)
            _time_gen(ctx, token, 1)  # warm-up
            tests.append((f"tg{n_gen}", 0, n_gen, lambda: _time_gen(ctx, token, n_gen)))
        device = model.device
        for test, p, g, run in tests:
            samples = [(p + g) / run() for _ in range(repetitions)]
            results.append(
                BenchResult(
                    test=test,
                    n_prompt=p,
                    n_gen=g,
                    samples_ts=samples,
                    avg_ts=statistics.fmean(samples),
                    stddev_ts=statistics.stdev(samples) if len(samples) > 1 else 0.0,
                    model=model.description,
                    model_size=model.size,
                    model_n_params=model.n_params,
                    backend=device.backend if device else "CPU",
                    device=device.description if device else _cpu_description(),
                    n_threads=threads,
                    n_batch=n_batch,
                )
            )
    return results


def _cpu_description() -> str:
    from .devices import devices

    return next((d.description for d in devices() if d.type == "cpu"), "CPU")


__all__ = ["BenchResult", "bench"]
