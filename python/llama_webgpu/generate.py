"""Text generation in three layers, each usable on its own (as in mlx-lm):

- `generate_step(ctx, prompt_tokens, sampler, ...)` yields (token, logprob, top_logprobs) one
  token at a time: it prefills the prompt (reusing what the context already holds), then
  samples a token, yields it, evaluates it, and so on.
- `stream_generate(model_or_ctx, prompt, ...)` adds tokenization, detokenization, stop strings
  and tokens, timing, and yields one `GenerationResponse` per generated token.
- `generate(model_or_ctx, prompt, ...)` runs the stream to the end and returns a
  `GenerationResult`.

Given a Model instead of a Context, stream_generate and generate use the model's default
context: made on first use with the default ContextParams and kept on the model (attribute
`_default_context`); the next call reuses it, and with it the prompt cache.

Stopping a stream early (break, close(), an exception such as KeyboardInterrupt) leaves the
context consistent: the next generation prefills again, reusing the common prefix, and with the
same seed gives the same output as a fresh run.

One generation at a time per context (and per Sampler): a generation claims its context from
its first step until it ends, is closed or is garbage-collected; starting another on the same
context meanwhile (from another thread, or while an unfinished stream is kept) raises
ContextError. If the context is changed (eval, reset...) or closed while a stream is
suspended, the stream raises ContextError or ClosedError when resumed. Each thread should use
its own Context; several contexts over one model generate concurrently.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._native import ffi
from .errors import ClosedError, ContextError, ContextFullError
from .sampling import LogitsProcessor, Sampler, SamplingParams, make_sampler, token_logprobs

if TYPE_CHECKING:
    from .context import Context
    from .model import Model


@dataclass(frozen=True)
class GenerationResponse:
    """One step of stream_generate: the token generated and the new text it completed."""

    text: str
    """The new text segment (may be ""; text that could begin a stop string is held back)."""
    token: int
    logprob: float | None
    """log P(token) under the model's raw logits (when logprobs > 0 was asked for)."""
    top_logprobs: dict[int, float] | None
    """The `logprobs` most likely tokens and their log-probabilities, most likely first."""
    finish_reason: str | None
    """None, except on the last response: "stop" (end-of-generation token, stop token or stop
    string) or "length" (max_tokens reached, or the context is full)."""
    prompt_tokens: int
    prompt_tps: float
    """Prompt tokens per second (prompt tokens over the time to the first token)."""
    generation_tokens: int
    generation_tps: float
    """Tokens per second after the first token."""
    time_to_first_token: float
    """Seconds from the call to the first token (prompt evaluation included)."""
    peak_memory: int
    """Peak resident memory of the process so far, in bytes."""


@dataclass(frozen=True)
class GenerationResult:
    """What generate() returns."""

    text: str
    tokens: list[int]
    """Every token sampled, the final end-of-generation or stop token included."""
    finish_reason: str
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    time_to_first_token: float
    peak_memory: int
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None


def _check_count(value: Any, name: str, *, allow_none: bool = False, least: int = 0) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < least:
        raise ValueError(f"{name} must be at least {least}, not {value}")


def generate_step(
    ctx: Context,
    prompt_tokens: Sequence[int],
    sampler: Sampler,
    *,
    max_tokens: int | None = 256,
    logits_processors: Sequence[LogitsProcessor] | None = None,
    logprobs: int = 0,
) -> Iterator[tuple[int, float | None, dict[int, float] | None]]:
    """Yield (token, logprob, top_logprobs) for up to max_tokens new tokens (None: until the
    context is full). logprob and top_logprobs are None unless logprobs (the number of top
    alternatives wanted) is > 0.

    The sampler is reset first and sees the prompt (for its repetition penalties). The
    arguments are checked now; the prompt is evaluated on the first next(), which also claims
    the context and the sampler (ContextError / LlamaError if another generation holds them).

    Raises TypeError/ValueError (bad counts, logits processors that are not callable, an
    empty prompt), TokenizeError (ids outside the vocabulary), ContextFullError (the prompt
    does not fit the context), ClosedError.
    """
    _check_count(max_tokens, "max_tokens", allow_none=True, least=1)
    _check_count(logprobs, "logprobs")
    processors = list(logits_processors or ())
    for fn in processors:
        if not callable(fn):
            raise TypeError(f"logits processors must be callables, not {type(fn).__name__}")
    if not isinstance(sampler, Sampler):
        raise TypeError(f"sampler must be a Sampler (make_sampler()), not {type(sampler).__name__}")
    ctx.ptr  # noqa: B018 - raises ClosedError if closed
    prompt = ctx.model.tokenizer.check_tokens(prompt_tokens)
    if not prompt:
        raise ValueError("the prompt is empty")
    if len(prompt) > ctx.n_ctx:
        raise ContextFullError(
            f"the prompt has {len(prompt)} tokens but the context holds {ctx.n_ctx}: shorten "
            f"the prompt or use a context with a larger n_ctx"
        )
    return _steps(ctx, prompt, sampler, max_tokens, processors, logprobs)


def _steps(
    ctx: Context,
    prompt: list[int],
    sampler: Sampler,
    max_tokens: int | None,
    processors: list[LogitsProcessor],
    logprobs: int,
) -> Iterator[tuple[int, float | None, dict[int, float] | None]]:
    owner = object()  # this generation's claim on the context and the sampler
    ctx._claim(owner)
    try:
        sampler._claim(owner)
        sampler.reset()
        sampler.feed_prompt(prompt)
        with ctx._lock:
            if not processors and not logprobs:  # they need the logits on the host
                ctx._attach_gpu_sampler(sampler)
            ctx.prefill(prompt)
            version = ctx._version
            # the sampler chain alone, on the host: each later step decodes and picks in one C
            # call (Context._step)
            fused = (
                not processors
                and not logprobs
                and sampler._grammar == ffi.NULL
                and ctx._gpu_chain == ffi.NULL
            )
        n = 0
        token = -1
        raw = None
        while True:
            with ctx._lock:
                _check_unchanged(ctx, version)
                if fused and n > 0:
                    token = ctx._step(token, sampler)
                    version = ctx._version
                else:
                    if n > 0:
                        ctx.eval([token])
                    raw = ctx.logits() if logprobs else None
                    token = sampler.sample(ctx, processors)
                    version = ctx._version  # reading back GPU-sampled logits evaluates again
            n += 1
            if not logprobs:
                yield token, None, None
            else:
                lp, top = token_logprobs(raw, token, logprobs)
                yield token, lp, top
            if (max_tokens is not None and n >= max_tokens) or len(ctx.tokens) >= ctx.n_ctx:
                return
    finally:
        with ctx._lock:
            ctx._detach_gpu_sampler(sampler)
        sampler._release(owner)
        ctx._release(owner)


def _check_unchanged(ctx: Context, version: int) -> None:
    """Raise if the context was closed or changed while the generation was suspended."""
    if ctx.closed or ctx.model.closed:
        raise ClosedError("the context was closed during the generation")
    if ctx._version != version:
        raise ContextError(
            "the context was changed (eval, reset, load_state...) while this generation was "
            "suspended; start a new generation"
        )


def _default_context(model: Model) -> Context:
    ctx = getattr(model, "_default_context", None)
    if ctx is None or ctx.closed:
        ctx = model.context()
        model._default_context = ctx  # type: ignore[attr-defined]
    return ctx


def _as_context(model_or_ctx: Model | Context) -> Context:
    from .context import Context
    from .model import Model

    if isinstance(model_or_ctx, Context):
        return model_or_ctx
    if isinstance(model_or_ctx, Model):
        return _default_context(model_or_ctx)
    raise TypeError(f"expected a Model or a Context, not {type(model_or_ctx).__name__}")


def _as_sampler(
    model: Model, sampler: Sampler | SamplingParams | Mapping[str, Any] | None, overrides: dict
) -> tuple[Sampler, bool]:
    """(sampler, whether we made it and must close it)."""
    if isinstance(sampler, Sampler):
        if overrides:
            raise TypeError(
                f"sampling options ({', '.join(overrides)}) cannot be combined with a Sampler"
            )
        return sampler, False
    if sampler is None or isinstance(sampler, SamplingParams):
        return make_sampler(model, sampler, **overrides), True
    if isinstance(sampler, Mapping):
        return make_sampler(model, None, **{**sampler, **overrides}), True
    raise TypeError(
        f"sampler must be a Sampler, SamplingParams, a dict or None, not {type(sampler).__name__}"
    )


def _stop_strings(stop: str | Iterable[str] | None) -> list[str]:
    if isinstance(stop, bytes | bytearray):
        raise TypeError("stop must be a str or a list of str, not bytes")
    stops = [stop] if isinstance(stop, str) else list(stop or ())
    for s in stops:
        if not isinstance(s, str) or not s:
            raise ValueError(f"stop strings must be non-empty strings, not {s!r}")
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"stop string {s!r} is not valid Unicode text: {e.reason}") from None
    return stops


def held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of text that is the start of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def _peak_memory() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def stream_generate(
    model_or_ctx: Model | Context,
    prompt: str | bytes | Sequence[int],
    *,
    max_tokens: int | None = 256,
    sampler: Sampler | SamplingParams | Mapping[str, Any] | None = None,
    stop: str | Sequence[str] | None = None,
    stop_tokens: Iterable[int] | None = None,
    logprobs: int = 0,
    logits_processors: Sequence[LogitsProcessor] | None = None,
    add_special: bool = True,
    parse_special: bool = True,
    **sampling: Any,
) -> Iterator[GenerationResponse]:
    """Generate from prompt (text, or token ids used as they are), one response per token.

    model_or_ctx: a Context, or a Model (whose default context is then used and kept; see the
    module's docstring).
    sampler: a Sampler (used as is, not closed), SamplingParams, a dict of SamplingParams
    fields, or None (the defaults); SamplingParams fields may also be given as keywords
    (`temperature=0`, `seed=1`...). Generation ends at an end-of-generation token or one of
    stop_tokens, at a stop string (which, with everything after it, is cut from the text), after
    max_tokens tokens (None: no limit) or when the context is full. A text prompt is tokenized
    with add_special (BOS) and parse_special (special-token text such as "<|im_start|>" becomes
    those tokens). Arguments are checked now, before any work; the generation itself runs as
    the iterator is consumed.

    A bytes prompt is UTF-8 text. Raises, before any work: TypeError (wrong types, unknown
    sampling options), ValueError (out-of-range values: max_tokens < 1, NaN or infinite
    sampling parameters, top_p outside [0, 1], empty stop strings...), TokenizeError (token
    ids outside the vocabulary, text that is not valid Unicode), ContextFullError (a prompt
    longer than the context), GrammarError, ClosedError. ContextError on the first next() if
    another generation is using the context (see the module's docstring).
    """
    ctx = _as_context(model_or_ctx)
    tokenizer = ctx.model.tokenizer
    _check_count(max_tokens, "max_tokens", allow_none=True, least=1)
    _check_count(logprobs, "logprobs")
    if isinstance(prompt, str | bytes | bytearray):
        prompt_tokens = tokenizer.encode(
            prompt, add_special=add_special, parse_special=parse_special
        )
    else:
        prompt_tokens = tokenizer.check_tokens(prompt)
    stops = _stop_strings(stop)
    stop_ids = frozenset(tokenizer.check_tokens(stop_tokens or ()))
    smp, owned = _as_sampler(ctx.model, sampler, sampling)
    try:
        # the last token that fits is sampled but never evaluated (a prompt that does not fit
        # at all is generate_step's to report)
        room = max(1, ctx.n_ctx - len(prompt_tokens) + 1)
        limit = room if max_tokens is None else min(max_tokens, room)
        steps = generate_step(
            ctx,
            prompt_tokens,
            smp,
            max_tokens=limit,
            logits_processors=logits_processors,
            logprobs=logprobs,
        )
    except BaseException:
        if owned:
            smp.close()
        raise
    return _stream(ctx, steps, smp if owned else None, len(prompt_tokens), limit, stops, stop_ids)


def _stream(
    ctx: Context,
    steps: Iterator[tuple[int, float | None, dict[int, float] | None]],
    owned: Sampler | None,
    n_prompt: int,
    limit: int,
    stops: list[str],
    stop_ids: frozenset[int],
) -> Iterator[GenerationResponse]:
    tokenizer = ctx.model.tokenizer
    detok = tokenizer.detokenizer()
    pending = ""  # decoded text not given out yet (it may be the start of a stop string)
    start = time.perf_counter()
    first = start
    ttft = prompt_tps = 0.0
    try:
        for n, (token, lp, top) in enumerate(steps):
            now = time.perf_counter()
            if n == 0:
                first = now
                ttft = now - start
                prompt_tps = n_prompt / ttft if ttft > 0 else 0.0
            finish = None
            if token in stop_ids or tokenizer.is_eog(token):
                finish = "stop"
                pending += detok.finalize()
            else:
                pending += detok.add_token(token)
                if n + 1 >= limit:
                    finish = "length"
                    pending += detok.finalize()
            cut = -1
            if stops:
                cut = min((i for i in (pending.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                text, pending, finish = pending[:cut], "", "stop"
            elif finish is not None or not stops:
                text, pending = pending, ""
            else:
                keep = held_back(pending, stops)
                text, pending = pending[: len(pending) - keep], pending[len(pending) - keep :]
            yield GenerationResponse(
                text=text,
                token=token,
                logprob=lp,
                top_logprobs=top,
                finish_reason=finish,
                prompt_tokens=n_prompt,
                prompt_tps=prompt_tps,
                generation_tokens=n + 1,
                generation_tps=n / (now - first) if now > first else 0.0,
                time_to_first_token=ttft,
                peak_memory=_peak_memory(),
            )
            if finish is not None:
                return
    finally:
        close = getattr(steps, "close", None)
        if close is not None:
            close()
        if owned is not None:
            owned.close()


def generate(
    model_or_ctx: Model | Context,
    prompt: str | bytes | Sequence[int],
    *,
    max_tokens: int | None = 256,
    sampler: Sampler | SamplingParams | Mapping[str, Any] | None = None,
    stop: str | Sequence[str] | None = None,
    stop_tokens: Iterable[int] | None = None,
    logprobs: int = 0,
    logits_processors: Sequence[LogitsProcessor] | None = None,
    add_special: bool = True,
    parse_special: bool = True,
    **sampling: Any,
) -> GenerationResult:
    """Generate to the end and return the whole text; the arguments are stream_generate's."""
    texts: list[str] = []
    tokens: list[int] = []
    lps: list[float] = []
    tops: list[dict[int, float]] = []
    last: GenerationResponse | None = None
    for last in stream_generate(
        model_or_ctx,
        prompt,
        max_tokens=max_tokens,
        sampler=sampler,
        stop=stop,
        stop_tokens=stop_tokens,
        logprobs=logprobs,
        logits_processors=logits_processors,
        add_special=add_special,
        parse_special=parse_special,
        **sampling,
    ):
        texts.append(last.text)
        tokens.append(last.token)
        if last.logprob is not None:
            lps.append(last.logprob)
            tops.append(last.top_logprobs or {})
    assert last is not None and last.finish_reason is not None  # max_tokens >= 1
    return GenerationResult(
        text="".join(texts),
        tokens=tokens,
        finish_reason=last.finish_reason,
        prompt_tokens=last.prompt_tokens,
        prompt_tps=last.prompt_tps,
        generation_tokens=last.generation_tokens,
        generation_tps=last.generation_tps,
        time_to_first_token=last.time_to_first_token,
        peak_memory=last.peak_memory,
        logprobs=lps if logprobs else None,
        top_logprobs=tops if logprobs else None,
    )


__all__ = [
    "GenerationResponse",
    "GenerationResult",
    "generate",
    "generate_step",
    "stream_generate",
]
