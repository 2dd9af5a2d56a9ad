"""Choosing the next token: sampling parameters, llama.cpp sampler chains, logits processors.

`make_sampler(model, params, **overrides)` is the one factory (as in mlx-lm): it turns a
`SamplingParams` into a `Sampler` that owns a llama.cpp sampler chain. The chain is built in
llama.cpp's usual order:

    logit bias -> repetition penalties -> DRY -> top-n-sigma -> top-k -> typical -> top-p
    -> min-p -> XTC -> temperature -> dist (or mirostat 1/2)

With temperature == 0 it is greedy: logit bias, penalties and DRY, then the most likely token
(the truncation samplers cannot change which token that is). Mirostat replaces the truncation
samplers: logit bias, penalties, DRY, temperature, mirostat. A grammar (GBNF text, or one made
from a JSON schema) is a separate sampler applied before the chain, so that only tokens it
allows are ever chosen; prompt tokens fed to the penalties never reach it.

Python logits processors are callables `fn(tokens, logits) -> logits` (tokens: every token in
the context so far; logits: a float32 numpy array of n_vocab), run before the chain.
"""

from __future__ import annotations

import functools
import math
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _native
from ._native import ffi, lib
from .errors import ClosedError, GrammarError, LlamaError
from .json_schema import json_schema_to_gbnf

if TYPE_CHECKING:
    from .context import Context
    from .model import Model

LogitsProcessor = Callable[[list[int], np.ndarray], np.ndarray]

_MAX_INT = 2**31 - 1
_MAX_FLOAT = float(np.finfo(np.float32).max)
_MAX_SEED = 0xFFFFFFFE  # 0xFFFFFFFF is LLAMA_DEFAULT_SEED: "pick one at random" in llama.cpp
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. The defaults here are the package's defaults (llama.cpp's)."""

    temperature: float = 0.8
    """0 means greedy: always the most likely token."""
    top_k: int = 40
    """Keep the k most likely tokens (0: off)."""
    top_p: float = 0.95
    """Nucleus sampling: keep the most likely tokens whose probabilities sum to p (1: off)."""
    min_p: float = 0.05
    """Drop tokens less likely than min_p times the most likely one (0: off)."""
    typical_p: float = 1.0
    """Locally typical sampling (1: off)."""
    repeat_penalty: float = 1.0
    """Divide the logits of recently seen tokens by this (1: off)."""
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    """How many recent tokens (prompt included) the penalties look at (0: off; -1: the
    model's training context length)."""
    dry_multiplier: float = 0.0
    """DRY ("don't repeat yourself") strength (0: off)."""
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1
    """Tokens DRY looks back over (0: off; -1: the model's training context length)."""
    dry_sequence_breakers: tuple[str, ...] = ("\n", ":", '"', "*")
    xtc_probability: float = 0.0
    """Exclude-top-choices: chance per token of removing the top choices (0: off)."""
    xtc_threshold: float = 0.1
    top_n_sigma: float = -1.0
    """Keep tokens within n standard deviations of the top logit (<= 0: off)."""
    mirostat: int = 0
    """0: off; 1 or 2: Mirostat 1.0 / 2.0 instead of the truncation samplers."""
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    logit_bias: Mapping[int, float] | None = None
    """token id -> value added to its logit (-inf bans the token)."""
    grammar: str | None = None
    """GBNF grammar text (root rule `root`) that the output must match."""
    json_schema: Mapping[str, Any] | str | None = None
    """A JSON schema (dict or JSON text); the output is JSON valid under it."""
    seed: int | None = None
    """Random seed (0..2**32-2); None picks one at random (see Sampler.seed)."""
    min_keep: int = 0
    """The least number of tokens top-p, min-p, typical and XTC keep."""

    def __post_init__(self) -> None:
        if isinstance(self.dry_sequence_breakers, list):
            object.__setattr__(self, "dry_sequence_breakers", tuple(self.dry_sequence_breakers))

    def validate(self) -> None:
        """Raise TypeError or ValueError (naming the field) if a parameter is invalid."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "float":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise TypeError(f"{f.name} must be a number, not {type(value).__name__}")
                if not math.isfinite(value):
                    raise ValueError(f"{f.name} must be finite, not {value!r}")
                if abs(value) > _MAX_FLOAT:  # would become inf as a C float
                    raise ValueError(f"{f.name} is out of range: {value!r}")
            elif f.type == "int":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise TypeError(f"{f.name} must be an int, not {type(value).__name__}")
                if abs(value) > _MAX_INT:  # passed to llama.cpp as int32
                    raise ValueError(f"{f.name} is out of range: {value!r}")

        def check(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"{name} must be {rule}, not {getattr(self, name)!r}")

        check(self.temperature >= 0, "temperature", ">= 0")
        check(self.top_k >= 0, "top_k", ">= 0 (0: off)")
        for name in ("top_p", "min_p", "typical_p", "xtc_probability", "xtc_threshold"):
            check(0 <= getattr(self, name) <= 1, name, "between 0 and 1")
        check(self.repeat_penalty > 0, "repeat_penalty", "> 0 (1: off)")
        check(self.penalty_last_n >= -1, "penalty_last_n", ">= -1")
        check(self.dry_multiplier >= 0, "dry_multiplier", ">= 0 (0: off)")
        check(self.dry_base >= 1, "dry_base", ">= 1")
        check(self.dry_allowed_length >= 0, "dry_allowed_length", ">= 0")
        check(self.dry_penalty_last_n >= -1, "dry_penalty_last_n", ">= -1")
        if not isinstance(self.dry_sequence_breakers, tuple) or not all(
            isinstance(s, str) and s for s in self.dry_sequence_breakers
        ):
            raise TypeError("dry_sequence_breakers must be a sequence of non-empty strings")
        for s in self.dry_sequence_breakers:
            _check_unicode(s, "dry_sequence_breakers")
        check(self.mirostat in (0, 1, 2), "mirostat", "0, 1 or 2")
        check(self.mirostat_tau >= 0, "mirostat_tau", ">= 0")
        check(self.mirostat_eta >= 0, "mirostat_eta", ">= 0")
        check(self.min_keep >= 0, "min_keep", ">= 0")
        if self.seed is not None:
            if isinstance(self.seed, bool) or not isinstance(self.seed, int):
                raise TypeError(f"seed must be an int or None, not {type(self.seed).__name__}")
            check(0 <= self.seed <= _MAX_SEED, "seed", f"between 0 and {_MAX_SEED}")
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, Mapping):
                raise TypeError("logit_bias must be a mapping of token id -> bias")
            for token, bias in self.logit_bias.items():
                if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                    raise ValueError(f"logit_bias: {token!r} is not a token id")
                if isinstance(bias, bool) or not isinstance(bias, int | float):
                    raise TypeError(f"logit_bias[{token}] must be a number")
                if math.isnan(bias) or bias == math.inf:
                    raise ValueError(f"logit_bias[{token}] must be finite or -inf, not {bias}")
        if self.grammar is not None and (not isinstance(self.grammar, str) or not self.grammar):
            raise TypeError("grammar must be non-empty GBNF text or None")
        if self.grammar is not None:
            _check_unicode(self.grammar, "grammar")
        if self.json_schema is not None:
            if not isinstance(self.json_schema, Mapping | str | bool):
                raise TypeError("json_schema must be a dict, JSON text or None")
            if self.grammar is not None:
                raise ValueError("give either grammar or json_schema, not both")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _check_unicode(text: str, name: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} is not valid Unicode text: {e.reason}") from None


def make_sampler(model: Model, params: SamplingParams | None = None, **overrides: Any) -> Sampler:
    """A Sampler for model from params (default: SamplingParams()) with fields overridden by
    keyword, e.g. `make_sampler(model, temperature=0.7, top_p=0.9, seed=1)`.

    Raises TypeError (an unknown option, or a value of the wrong type), ValueError (a value
    out of range: NaN or infinite numbers, top_p outside [0, 1], logit_bias ids outside the
    vocabulary...), GrammarError (a grammar or JSON schema that does not compile).
    """
    if params is not None and not isinstance(params, SamplingParams):
        raise TypeError(f"params must be SamplingParams or None, not {type(params).__name__}")
    known = {f.name for f in fields(SamplingParams)}
    unknown = [k for k in overrides if k not in known]
    if unknown:
        raise TypeError(
            f"unknown sampling option {unknown[0]!r} (the options are SamplingParams' fields)"
        )
    params = replace(params or SamplingParams(), **overrides)
    params.validate()
    if params.logit_bias:
        n_vocab = model.n_vocab
        for token in params.logit_bias:
            if token >= n_vocab:
                raise ValueError(
                    f"logit_bias: token id {token} is outside the vocabulary (0..{n_vocab - 1})"
                )
    return Sampler(model, params)


def _check_ptr(ptr: Any, what: str) -> Any:
    if ptr == ffi.NULL:
        raise _native.fail(LlamaError, f"llama.cpp could not create the {what} sampler")
    return ptr


def _biased_argmax(logits: np.ndarray, best: int, ids: np.ndarray, biases: np.ndarray) -> int:
    """argmax(logits with biases added at ids), first maximum, given best = argmax(logits).
    logits: contiguous float32; ids: distinct ascending int32; biases: float32 like ids. The
    C helper reads only the biased entries unless best is one of them (no 262k-float copy)."""
    return int(
        lib.lw_biased_best(
            ffi.from_buffer("float[]", logits),
            len(logits),
            best,
            ffi.from_buffer("int32_t[]", ids),
            ffi.from_buffer("float[]", biases),
            len(ids),
        )
    )


class Sampler:
    """A llama.cpp sampler chain (plus an optional grammar) built from SamplingParams.

    Make one with make_sampler(). It holds state (penalty history, grammar position, random
    generator): reset() returns it to the start. close() frees it (safe twice); it is also a
    context manager. It keeps its model alive; once it or its model is closed, its methods
    raise ClosedError.

    Threads: its native calls are serialized by a lock. One generation at a time may use it
    (generate_step claims it as it claims the context; a second one raises LlamaError).
    """

    def __init__(self, model: Model, params: SamplingParams):
        self.model = model
        self.params = params
        self.seed: int = params.seed if params.seed is not None else secrets.randbelow(_MAX_SEED)
        """The seed in use (the random one when params.seed is None)."""
        self.grammar: str | None = None
        """The GBNF text constraining the output, if any."""
        self._chain: Any = ffi.NULL
        self._grammar: Any = ffi.NULL
        self._lock = threading.RLock()
        self._owner: object | None = None  # the generation using it (see generate._steps)
        self._has_history = False  # has penalties or DRY, which want to see the prompt
        self._bias: dict[int, float] = {}  # logit bias, suppressed tokens included
        # greedy with at most a logit bias: (ids ascending, biases, and the C views of both)
        # for lw_greedy
        self._fast_greedy: tuple[np.ndarray, np.ndarray, Any, Any] | None = None
        self.n_vocab = model.n_vocab
        self._ids = np.arange(self.n_vocab, dtype=np.int32)
        # the destructors hold the model's pointer object: the samplers (the grammar refers
        # to the vocabulary) are freed before the model even when a reference cycle goes
        free = functools.partial(_free, model._ptr)
        self._chain = self._new_chain()
        with model._lock:
            for ptr in self._stages():
                lib.llama_sampler_chain_add(self._chain, ptr)  # the chain owns it from here
        if params.grammar is not None or params.json_schema is not None:
            text = params.grammar
            if text is None:
                schema = params.json_schema
                text = json_schema_to_gbnf(
                    schema if isinstance(schema, str | bool) else dict(schema)
                )
            self.grammar = text
            try:
                data = text.encode()
            except UnicodeEncodeError as e:
                raise GrammarError(f"the grammar is not valid Unicode text: {e.reason}") from None
            with model._lock:
                _native.take_native_errors()
                ptr = lib.llama_sampler_init_grammar(model.vocab, data, b"root")
                if ptr == ffi.NULL:
                    raise _native.fail(GrammarError, "the grammar could not be parsed")
                self._grammar = ffi.gc(ptr, free)
        if params.greedy and not self._has_history and self._grammar == ffi.NULL:
            order = sorted(self._bias)
            ids = np.array(order, dtype=np.int32)
            biases = np.array([self._bias[t] for t in order], dtype=np.float32)
            self._fast_greedy = (
                ids,
                biases,
                ffi.from_buffer("int32_t[]", ids),
                ffi.from_buffer("float[]", biases),
            )

    def _stages(self) -> list[Any]:
        """The chain's samplers in order, created one by one (freed if a later one fails)."""
        p, model = self.params, self.model
        out: list[Any] = []
        try:
            self._add_bias(out)
            n_train = model.n_ctx_train or 4096
            last_n = n_train if p.penalty_last_n == -1 else p.penalty_last_n
            penalties = (p.repeat_penalty, p.frequency_penalty, p.presence_penalty) != (1, 0, 0)
            if last_n > 0 and penalties:
                out.append(
                    lib.llama_sampler_init_penalties(
                        self.n_vocab,
                        last_n,
                        p.repeat_penalty,
                        p.frequency_penalty,
                        p.presence_penalty,
                    )
                )
                self._has_history = True
            dry_n = n_train if p.dry_penalty_last_n == -1 else p.dry_penalty_last_n
            if p.dry_multiplier > 0 and dry_n > 0:
                keep = [ffi.new("char[]", s.encode()) for s in p.dry_sequence_breakers]
                breakers = ffi.new("const char *[]", keep)
                out.append(
                    lib.llama_sampler_init_dry(
                        model.vocab,
                        p.dry_multiplier,
                        p.dry_base,
                        p.dry_allowed_length,
                        dry_n,
                        breakers,
                        len(keep),
                    )
                )
                self._has_history = True
            if p.greedy:
                out.append(lib.llama_sampler_init_greedy())
            elif p.mirostat:
                out.append(lib.llama_sampler_init_temp(p.temperature))
                if p.mirostat == 1:
                    miro = lib.llama_sampler_init_mirostat(
                        self.n_vocab, self.seed, p.mirostat_tau, p.mirostat_eta, 100
                    )
                else:
                    miro = lib.llama_sampler_init_mirostat_v2(
                        self.seed, p.mirostat_tau, p.mirostat_eta
                    )
                out.append(miro)
            else:
                if p.top_n_sigma > 0:
                    out.append(lib.llama_sampler_init_top_n_sigma(p.top_n_sigma))
                if p.top_k > 0:
                    out.append(lib.llama_sampler_init_top_k(p.top_k))
                if p.typical_p < 1:
                    out.append(lib.llama_sampler_init_typical(p.typical_p, p.min_keep))
                if p.top_p < 1:
                    out.append(lib.llama_sampler_init_top_p(p.top_p, p.min_keep))
                if p.min_p > 0:
                    out.append(lib.llama_sampler_init_min_p(p.min_p, p.min_keep))
                if p.xtc_probability > 0:
                    out.append(
                        lib.llama_sampler_init_xtc(
                            p.xtc_probability, p.xtc_threshold, p.min_keep, self.seed
                        )
                    )
                out.append(lib.llama_sampler_init_temp(p.temperature))
                out.append(lib.llama_sampler_init_dist(self.seed))
            for ptr in out:
                _check_ptr(ptr, "chain stage")
        except BaseException:
            for ptr in out:
                if ptr != ffi.NULL:
                    lib.llama_sampler_free(ptr)
            raise
        return out

    def _add_bias(self, out: list[Any]) -> None:
        bias = dict(self.params.logit_bias or {})
        n = ffi.new("int32_t *")
        suppress = lib.llama_vocab_get_suppress_tokens(self.model.vocab, n)
        for i in range(n[0] if suppress != ffi.NULL else 0):
            bias[int(suppress[i])] = -math.inf  # model-specific suppressed tokens
        self._bias = bias
        if bias:
            out.append(self._logit_bias_sampler(bias))

    def _new_chain(self) -> Any:
        """An empty llama.cpp sampler chain, freed (before the model) when collected."""
        cp = lib.llama_sampler_chain_default_params()
        cp.no_perf = True
        chain = _check_ptr(lib.llama_sampler_chain_init(cp), "chain")
        return ffi.gc(chain, functools.partial(_free, self.model._ptr))

    def _logit_bias_sampler(self, bias: Mapping[int, float]) -> Any:
        """A new llama.cpp logit-bias sampler adding bias[token] to each token's logit."""
        arr = ffi.new("llama_logit_bias[]", len(bias))
        for i, (token, value) in enumerate(bias.items()):
            arr[i].token = token
            arr[i].bias = value
        return lib.llama_sampler_init_logit_bias(self.n_vocab, len(bias), arr)

    # -- lifetime -------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._chain == ffi.NULL

    def close(self) -> None:
        """Free the native samplers. Safe to call twice, and from any thread."""
        with self._lock:
            for attr in ("_grammar", "_chain"):
                ptr = getattr(self, attr)
                if ptr != ffi.NULL:
                    setattr(self, attr, ffi.NULL)
                    ffi.release(ptr)

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " (closed)" if self.closed else ""
        return f"<Sampler temperature={self.params.temperature} seed={self.seed}{state}>"

    def _check_open(self) -> None:
        if self.closed:
            raise ClosedError("the sampler is closed")
        if self.model.closed:
            raise ClosedError("the sampler's model is closed")

    def _claim(self, owner: object) -> None:
        with self._lock:
            self._check_open()
            if self._owner is not None and self._owner is not owner:
                raise LlamaError(
                    "the sampler is in use by another generation (in another thread, or a "
                    "stream that was neither finished nor closed): finish or close that one "
                    "first, or give each generation its own sampler"
                )
            self._owner = owner

    def _release(self, owner: object) -> None:
        if self._owner is owner:
            self._owner = None

    # -- sampling -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the start: clear the penalty history, restart the grammar, re-seed."""
        with self._lock, self.model._lock:
            self._check_open()
            lib.llama_sampler_reset(self._chain)
            if self._grammar != ffi.NULL:
                lib.llama_sampler_reset(self._grammar)

    def feed_prompt(self, tokens: Sequence[int]) -> None:
        """Let the repetition penalties and DRY see prompt tokens (the grammar does not)."""
        tokens = self.model.tokenizer.check_tokens(tokens)
        with self._lock:
            self._check_open()
            if self._has_history:
                for token in tokens:
                    lib.llama_sampler_accept(self._chain, token)

    def accept(self, token: int) -> None:
        """Record a token chosen elsewhere (penalty history, grammar position)."""
        token = self.model.tokenizer.check_token(token)
        with self._lock, self.model._lock:
            self._check_open()
            if self._grammar != ffi.NULL:
                if not self._grammar_allows(token):
                    raise GrammarError(f"the grammar does not allow token {token} here")
                lib.llama_sampler_accept(self._grammar, token)
            lib.llama_sampler_accept(self._chain, token)

    def sample(
        self, ctx: Context, logits_processors: Sequence[LogitsProcessor] | None = None
    ) -> int:
        """Choose (and accept) the next token from the context's last logits.

        With logits processors, they run in order over a copy of the logits first; what they
        return must be n_vocab numbers, none NaN or +inf (ValueError otherwise).
        """
        self._check_open()
        if ctx.n_vocab != self.n_vocab:
            raise ValueError("the context's model has another vocabulary than the sampler's")
        with ctx._lock:
            if not ctx.tokens:
                raise LlamaError("no logits yet: evaluate some tokens first")
            if not logits_processors and self._grammar == ffi.NULL:
                token = ctx._gpu_token(self)  # chosen on the GPU (Context._attach_gpu_sampler)
                if token is not None:
                    with self._lock:
                        self._check_open()
                        lib.llama_sampler_accept(self._chain, token)  # as llama_sampler_sample
                    return token
            ctx._read_back_logits()  # the logits the paths below read must have left the GPU
            # ctx.logits() also covers logits restored by Context.load_state (none in llama.cpp)
            if logits_processors or self._grammar != ffi.NULL or ctx._restored_logits is not None:
                logits = ctx.logits()
                for fn in logits_processors or ():
                    logits = fn(list(ctx.tokens), logits)
                return self.sample_logits(logits)
            with self._lock:
                self._check_open()
                token = (
                    self._sample_greedy(ctx)
                    if self._fast_greedy is not None
                    else lib.llama_sampler_sample(self._chain, ctx.ptr, -1)
                )
        if token < 0:
            raise _native.fail(LlamaError, "the sampler chain chose no token")
        return int(token)

    def _new_gpu_chain(self) -> Any | None:
        """A new chain that does on the GPU what this sampler does (logit bias, then greedy),
        or None unless this sampler is greedy with at most a logit bias. llama.cpp prepares a
        chain for one context's backend once, so each attachment takes a new one."""
        if self._fast_greedy is None:
            return None
        self._check_open()
        chain = self._new_chain()
        if self._bias:
            bias = self._logit_bias_sampler(self._bias)
            lib.llama_sampler_chain_add(chain, _check_ptr(bias, "logit bias"))
        lib.llama_sampler_chain_add(chain, _check_ptr(lib.llama_sampler_init_greedy(), "greedy"))
        return chain

    def _sample_greedy(self, ctx: Context) -> int:
        """What the chain (logit bias, then greedy) would choose, without its O(n_vocab) array of
        candidates: lw_greedy over the logits in place (first maximum, as llama.cpp's greedy;
        the same C function as each later step of a generation, lw_decode_greedy). For a
        128k-262k vocabulary that array cost about 0.5 ms per token."""
        ptr = lib.llama_get_logits_ith(ctx.ptr, -1)
        if ptr == ffi.NULL:
            return -1
        ids, _, ids_c, biases_c = self._fast_greedy
        token = int(lib.lw_greedy(ptr, self.n_vocab, ids_c, biases_c, len(ids)))
        lib.llama_sampler_accept(self._chain, token)  # as llama_sampler_sample does
        return token

    def sample_logits(self, logits: np.ndarray) -> int:
        """Choose (and accept) a token from logits (n_vocab floats) through grammar and chain.

        ValueError for logits of another shape, not numbers, or holding NaN or +inf (-inf
        bans a token)."""
        try:
            logits = np.asarray(logits, np.float32)
        except (TypeError, ValueError):
            raise ValueError("logits must be an array of numbers") from None
        if logits.shape != (self.n_vocab,):
            raise ValueError(f"logits must have shape ({self.n_vocab},), not {logits.shape}")
        if np.isnan(logits).any() or np.isposinf(logits).any():
            raise ValueError("logits must not be NaN or +inf (-inf bans a token)")
        with self._lock, self.model._lock:
            self._check_open()
            return self._sample_logits(logits)

    def _sample_logits(self, logits: np.ndarray) -> int:
        arr = np.empty(self.n_vocab, _TOKEN_DATA)
        if self._grammar != ffi.NULL:
            # Fast path (as llama.cpp's common sampler does): choose without the grammar and keep
            # the choice if the grammar allows it; checking one token is far cheaper than
            # masking the whole vocabulary. Otherwise choose again with the grammar applied.
            arr["id"], arr["logit"], arr["p"] = self._ids, logits, 0.0
            cur = _candidates(arr)
            lib.llama_sampler_apply(self._chain, cur)
            if 0 <= cur.selected < cur.size:
                token = int(cur.data[cur.selected].id)
                if self._grammar_allows(token):
                    lib.llama_sampler_accept(self._grammar, token)
                    lib.llama_sampler_accept(self._chain, token)
                    return token
        arr["id"] = self._ids
        arr["logit"] = logits
        arr["p"] = 0.0
        cur = _candidates(arr)
        if self._grammar != ffi.NULL:
            lib.llama_sampler_apply(self._grammar, cur)
            if not (arr["logit"] > -np.inf).any():
                raise GrammarError("the grammar allows no token at this point")
        lib.llama_sampler_apply(self._chain, cur)
        if not 0 <= cur.selected < cur.size:
            raise LlamaError("the sampler chain chose no token")
        token = int(cur.data[cur.selected].id)
        if self._grammar != ffi.NULL:
            lib.llama_sampler_accept(self._grammar, token)
        lib.llama_sampler_accept(self._chain, token)
        return token

    def _grammar_allows(self, token: int) -> bool:
        one = np.array([(token, 1.0, 0.0)], _TOKEN_DATA)
        lib.llama_sampler_apply(self._grammar, _candidates(one))
        return bool(one["logit"][0] > -np.inf)


def _candidates(arr: np.ndarray) -> Any:
    """A llama_token_data_array over a _TOKEN_DATA numpy array (which must outlive it)."""
    cur = ffi.new("llama_token_data_array *")
    cur.data = ffi.from_buffer("llama_token_data[]", arr)
    cur.size = len(arr)
    cur.selected = -1
    cur.sorted = False
    return cur


def _free(model_ptr: Any, ptr: Any) -> None:
    lib.llama_sampler_free(ptr)


def token_logprobs(
    logits: np.ndarray, token: int, top_n: int = 0
) -> tuple[float, dict[int, float]]:
    """Log-probability of token under softmax(logits), and the top_n most likely tokens with
    theirs ({token: logprob}, most likely first)."""
    x = np.asarray(logits, np.float64)
    m = x.max()
    lp = x - (m + np.log(np.exp(x - m).sum()))
    top: dict[int, float] = {}
    if top_n > 0:
        n = min(top_n, len(lp))
        idx = np.argpartition(-lp, n - 1)[:n]
        idx = idx[np.argsort(-lp[idx], kind="stable")]
        top = {int(i): float(lp[i]) for i in idx}
    return float(lp[token]), top


__all__ = [
    "LogitsProcessor",
    "Sampler",
    "SamplingParams",
    "make_sampler",
    "token_logprobs",
]
