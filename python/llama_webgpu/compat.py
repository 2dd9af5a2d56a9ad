"""`Llama`: the commonly used surface of llama-cpp-python 0.3.x's `llama_cpp.Llama`, over this
package's Model, Context, Sampler and ChatFormatter, so that code written for llama-cpp-python
runs unchanged: `from llama_webgpu import Llama` instead of `from llama_cpp import Llama`.

Same names, keyword arguments and return shapes for: the constructor, `from_pretrained`,
`__call__`/`create_completion` (OpenAI "text_completion" dicts, or chunks with stream=True),
`create_chat_completion` ("chat.completion" dicts or "chat.completion.chunk" streams, JSON
mode, tools), `tokenize`/`detokenize`, `token_bos/eos/nl`, `n_ctx/n_vocab/n_embd`, `eval`,
`sample`, `generate`, `reset`, `input_ids`/`n_tokens`/`scores`, `embed`/`create_embedding`,
`save_state`/`load_state` (`LlamaState`), `set_seed`, `metadata`, `chat_format`, `close()`, and
`LlamaGrammar.from_string/from_file/from_json_schema`, `LogitsProcessorList`,
`StoppingCriteriaList`.

Where it differs from llama-cpp-python:

- `device=` ("auto", "webgpu", "cpu") is ours. When it is None, `n_gpu_layers=0` (the default,
  as in llama-cpp-python) means "cpu" and any other value "auto" (a hardware WebGPU adapter if
  there is one, else the CPU). With an explicit non-CPU device, `n_gpu_layers=0` means all layers.
- Constructor options we do not implement (split_mode, main_gpu, tensor_split, rpc_servers,
  kv_overrides, rope_* and yarn_*, attention_type, op_offload, swa_full, no_perf, numa,
  lora_base, draft_model, tokenizer, spm_infill) are accepted and ignored, with a
  `LlamaCompatWarning` when given a value other than llama-cpp-python's default. Any other
  unknown keyword raises TypeError. A missing model file raises ValueError, as there.
- `n_threads=None` uses every CPU this process may use (llama-cpp-python: half of them).
- `verbose` routes llama.cpp's log (the `llama_webgpu.native` logger) to stderr at INFO; the
  switch is process-wide (the last Llama made decides), as llama-cpp-python's is. Nothing else
  is printed (no system info, metadata or timings).
- `chat_format`: None uses the GGUF's own chat template (`chat_format` then reads
  "chat_template.default"), or ChatML when the GGUF has none (llama-cpp-python falls back to
  "llama-2"); "chatml" forces ChatML. The other named formats ("llama-2", "llama-3",
  "mistral-instruct", "functionary", the llava handlers...) are not provided: ValueError.
  A `chat_handler` callable is called as llama-cpp-python calls one.
- Chat with `tools`: a forced `tool_choice` (or legacy `function_call`) constrains the reply
  to the function's arguments with a grammar (generic JSON when the schema uses keywords our
  converter lacks), as llama-cpp-python does; "required" forces a call to any of the tools;
  "none" renders the prompt without them; "auto"/None parses Hermes, Mistral and bare-JSON
  calls out of the reply (llama-cpp-python returns the raw text). Streamed, an auto-tools reply
  arrives in one piece at the end; forced calls stream their arguments. `function_call` is set
  on the message only when legacy `functions` were given. `response_format` "json_schema" is
  honoured too.
- `logprobs` needs no `logits_all=True`, and echoed prompt logprobs are aligned with their
  tokens. Token strings are raw token pieces; `top_logprobs` holds the `logprobs` most likely
  tokens plus the chosen one (as in llama-cpp-python). Streamed with logprobs, there is one chunk
  per token.
- `echo=True` with stream=True sends the prompt as the first chunk; token-list prompts echo
  their decoded text (llama-cpp-python fails there). An empty prompt is [BOS].
- Stop strings cut at the earliest match in the text. Incomplete UTF-8 at the end of a
  completion is dropped. Chunks carry no `usage`.
- `suffix` (fill-in-the-middle) is not supported: NotImplementedError. `tfs_z` and
  `penalize_nl` are accepted and ignored (llama.cpp removed them; llama-cpp-python ignores them
  too). A negative temperature samples from the unmodified distribution, as there.
- `scores` holds the `n_tokens` evaluated rows (llama-cpp-python's has n_ctx or n_batch rows).
  With `logits_all=False` it is a read-only view in which every row shows the last logits (only
  the last row is meaningful, as there); `LlamaState.scores` then keeps only that row. `n_tokens`
  can be set lower to drop tokens from the cache; `sample()` feeds the context to repetition
  penalties; `generate()` checks its arguments when called, not at the first next().
- `embed()` works without `embedding=True` (it uses a separate embedding context either way);
  normalize defaults to False, as in llama-cpp-python 0.3.x. `pooling_type` takes
  llama-cpp-python's integers (or our names: "mean", "cls", "last", "none", "rank").
- Not provided: `set_cache`/`LlamaCache` (prompt caches; the context still reuses the longest
  common prefix), speculative decoding, `tokenizer()`, `ctx`/`model` pointers, the low-level
  `llama_cpp.*` functions. `n_ctx` is capped at the model's training length.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import random
import sys
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._compat_openai import (
    ChatCompletion,
    ChatReply,
    Completion,
    Logprobs,
    Run,
    collect,
    completion_chunks,
    empty_logprobs,
    logprob_entry,
    stop_list,
    tool_plan,
)
from ._native import lib
from .chat import CHATML_TEMPLATE, ChatFormatter, response_format_kwargs
from .context import Context
from .errors import DecodeError, LlamaError
from .json_schema import json_schema_to_gbnf
from .model import Model
from .sampling import Sampler, make_sampler

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

LLAMA_DEFAULT_SEED = 0xFFFFFFFF
LLAMA_POOLING_TYPE_UNSPECIFIED = -1
LLAMA_POOLING_TYPE_NONE = 0
LLAMA_POOLING_TYPE_MEAN = 1
LLAMA_POOLING_TYPE_CLS = 2
LLAMA_POOLING_TYPE_LAST = 3
LLAMA_POOLING_TYPE_RANK = 4
_POOLING = {-1: None, 0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
_KV_TYPES = {0: "f32", 1: "f16", 8: "q8_0"}  # GGML_TYPE_* values llama-cpp-python users pass
_CHAT_FORMATS = (None, "chatml", "chat_template.default")
_CHAT_ARGS = ("self", "messages", "functions", "function_call", "tools", "tool_choice")

# llama-cpp-python constructor options we accept and ignore, with its defaults
_IGNORED: dict[str, Any] = {
    "split_mode": 1,
    "main_gpu": 0,
    "tensor_split": None,
    "rpc_servers": None,
    "kv_overrides": None,
    "rope_scaling_type": -1,
    "attention_type": -1,
    "rope_freq_base": 0.0,
    "rope_freq_scale": 0.0,
    "yarn_ext_factor": -1.0,
    "yarn_attn_factor": 1.0,
    "yarn_beta_fast": 32.0,
    "yarn_beta_slow": 1.0,
    "yarn_orig_ctx": 0,
    "op_offload": None,
    "swa_full": None,
    "no_perf": False,
    "numa": False,
    "lora_base": None,
    "draft_model": None,
    "tokenizer": None,
    "spm_infill": False,
}

Processor = Callable[[np.ndarray, np.ndarray], np.ndarray]
Criterion = Callable[[np.ndarray, np.ndarray], bool]


class LlamaCompatWarning(UserWarning):
    """A llama-cpp-python option was given that this package ignores."""


class LogitsProcessorList(list):
    """Logits processors `fn(input_ids, scores) -> scores`, applied in order."""

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        for processor in self:
            scores = processor(input_ids, scores)
        return scores


class StoppingCriteriaList(list):
    """Stopping criteria `fn(input_ids, logits) -> bool`; generation stops if any is true."""

    def __call__(self, input_ids: np.ndarray, logits: np.ndarray) -> bool:
        return any([criterion(input_ids, logits) for criterion in self])


class LlamaGrammar:
    """A GBNF grammar for constrained sampling (checked against the vocabulary when used)."""

    def __init__(self, *, _grammar: str, _root: str = "root"):
        if not isinstance(_grammar, str) or not _grammar.strip():
            raise ValueError("a grammar must be non-empty GBNF text")
        if _root != "root":
            raise ValueError("only grammars whose start rule is `root` are supported")
        self._grammar = _grammar
        self._root = _root

    @property
    def grammar(self) -> str:
        return self._grammar

    @classmethod
    def from_string(cls, grammar: str, verbose: bool = True) -> LlamaGrammar:
        return cls(_grammar=grammar)

    @classmethod
    def from_file(cls, file: str | os.PathLike[str], verbose: bool = True) -> LlamaGrammar:
        return cls(_grammar=Path(file).read_text(encoding="utf-8"))

    @classmethod
    def from_json_schema(cls, json_schema: str, verbose: bool = True) -> LlamaGrammar:
        """A grammar for JSON valid under a JSON schema (given as JSON text)."""
        return cls(_grammar=json_schema_to_gbnf(json_schema))

    def __repr__(self) -> str:
        return f"<LlamaGrammar {len(self._grammar)} chars>"


@dataclass(eq=False)
class LlamaState:
    """What Llama.save_state() returns (picklable)."""

    input_ids: np.ndarray
    scores: np.ndarray
    n_tokens: int
    llama_state: bytes
    llama_state_size: int
    seed: int


class _StderrHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


_VERBOSE_HANDLER = _StderrHandler(logging.INFO)


def _set_verbose(verbose: bool) -> None:
    log = logging.getLogger("llama_webgpu.native")
    if verbose and _VERBOSE_HANDLER not in log.handlers:
        log.addHandler(_VERBOSE_HANDLER)
        log.setLevel(logging.INFO)
    elif not verbose and _VERBOSE_HANDLER in log.handlers:
        log.removeHandler(_VERBOSE_HANDLER)
        log.setLevel(logging.NOTSET)


def _check_int(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < least:
        raise ValueError(f"{name} must be at least {least}, not {value}")
    return value


def _ids(tokens: Any) -> list[int]:
    """Token ids as ints (numpy integers included; floats refused)."""
    return [operator.index(t) for t in tokens]


def _sampler_seed(seed: int) -> int | None:
    """llama-cpp-python's seed as our sampler's (None: random, as LLAMA_DEFAULT_SEED is)."""
    s = seed & 0xFFFFFFFF
    return None if s == LLAMA_DEFAULT_SEED else s


def _processors(logits_processor: Any) -> list[Processor]:
    if logits_processor is None:
        return []
    if callable(logits_processor):
        return [logits_processor]
    return list(logits_processor)


def _criterion(stopping_criteria: Any) -> Criterion | None:
    if stopping_criteria is None or callable(stopping_criteria):
        return stopping_criteria
    return StoppingCriteriaList(stopping_criteria)


class Llama:
    """A GGUF model, a context and a sampler behind llama-cpp-python's `Llama` API."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        n_gpu_layers: int = 0,
        n_ctx: int = 512,
        n_batch: int = 512,
        n_ubatch: int = 512,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        seed: int = LLAMA_DEFAULT_SEED,
        embedding: bool = False,
        logits_all: bool = False,
        vocab_only: bool = False,
        use_mmap: bool = True,
        use_mlock: bool = False,
        offload_kqv: bool = True,
        flash_attn: bool = False,
        type_k: int | str | None = None,
        type_v: int | str | None = None,
        pooling_type: int | str | None = LLAMA_POOLING_TYPE_UNSPECIFIED,
        last_n_tokens_size: int = 64,
        lora_path: str | os.PathLike[str] | None = None,
        lora_scale: float = 1.0,
        chat_format: str | None = None,
        chat_handler: Callable[..., Any] | None = None,
        verbose: bool = True,
        device: str | None = None,
        **kwargs: Any,
    ):
        self._ctx: Context | None = None
        self._embed_ctx: Context | None = None
        self._model: Model | None = None
        self._init_kwargs = {k: v for k, v in locals().items() if k not in ("self", "kwargs")}
        self._init_kwargs.update(kwargs)
        for name, value in kwargs.items():
            if name not in _IGNORED:
                raise TypeError(f"Llama() got an unexpected keyword argument {name!r}")
            if value != _IGNORED[name]:
                warnings.warn(
                    f"Llama({name}=...) is not supported by llama-webgpu and is ignored",
                    LlamaCompatWarning,
                    stacklevel=2,
                )
        _check_int("n_ctx", n_ctx, 0)
        _check_int("n_batch", n_batch, 1)
        _check_int("n_ubatch", n_ubatch, 1)
        _check_int("n_gpu_layers", n_gpu_layers, -(2**31))
        _check_int("seed", seed, -(2**63))
        _check_int("last_n_tokens_size", last_n_tokens_size, -1)
        if chat_format not in _CHAT_FORMATS:
            raise ValueError(
                f"chat_format {chat_format!r} is not supported: use None (the GGUF's template) "
                'or "chatml"'
            )
        if chat_handler is not None and not callable(chat_handler):
            raise TypeError("chat_handler must be callable")
        pooling = pooling_type if pooling_type is None or isinstance(pooling_type, str) else None
        if isinstance(pooling_type, int) and not isinstance(pooling_type, bool):
            if pooling_type not in _POOLING:
                raise ValueError(f"unknown pooling_type {pooling_type}")
            pooling = _POOLING[pooling_type]
        kv = {}
        for name, value in (("type_k", type_k), ("type_v", type_v)):
            if isinstance(value, int) and not isinstance(value, bool):
                if value not in _KV_TYPES:
                    raise ValueError(f"{name}={value}: only f32 (0), f16 (1) and q8_0 (8)")
                value = _KV_TYPES[value]
            if value is not None:
                kv[name] = value
        if device is None:
            device = "cpu" if n_gpu_layers == 0 else "auto"
        elif n_gpu_layers == 0:
            n_gpu_layers = -1
        if not Path(model_path).is_file():
            raise ValueError(f"Model path does not exist: {model_path}")

        self.verbose = verbose
        _set_verbose(verbose)
        self.model_path = str(model_path)
        self.chat_handler = chat_handler
        self.last_n_tokens_size = last_n_tokens_size
        self.lora_path = None if lora_path is None else str(lora_path)
        self.lora_scale = lora_scale
        self._logits_all = bool(logits_all)
        self._seed = seed
        self._pooling = pooling
        self._model = Model(
            model_path,
            device=device,
            n_gpu_layers=max(n_gpu_layers, -1),
            use_mmap=use_mmap,
            use_mlock=use_mlock,
            vocab_only=vocab_only,
        )
        try:
            n_ctx_eff = n_ctx or self._model.n_ctx_train
            self.n_batch = min(n_ctx_eff, n_batch)
            self._context_kw: dict[str, Any] = dict(
                n_ctx=n_ctx,
                n_batch=self.n_batch,
                n_ubatch=min(self.n_batch, n_ubatch),
                n_threads=n_threads,
                n_threads_batch=n_threads_batch,
                flash_attn=bool(flash_attn),
                offload_kqv=offload_kqv,
                **kv,
            )
            if not vocab_only:
                self._ctx = Context(self._model, **self._context_kw)
                if lora_path is not None:
                    adapter = self._model.load_lora(lora_path)
                    self._ctx.set_loras({adapter: lora_scale})
                if embedding:
                    self._embedding_context()
        except BaseException:
            self.close()
            raise
        self._n_ctx = self._ctx.n_ctx if self._ctx is not None else 0
        self._n_vocab = self._model.n_vocab
        self.input_ids: np.ndarray = np.zeros(max(self._n_ctx, 1), np.intc)
        self._rows = np.empty((0, self._n_vocab), np.float32)  # logits_all: every row
        self._last: np.ndarray | None = None  # the last row of logits
        self.metadata: dict[str, str] = self._model.metadata
        self._formatter: ChatFormatter | None = None
        if chat_format is None and chat_handler is None:
            has_template = self._model.chat_template is not None
            chat_format = "chat_template.default" if has_template else "chatml"
        self.chat_format = chat_format

    # -- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        """Free the model and its contexts. Safe to call twice."""
        for ctx in (self._embed_ctx, self._ctx):
            if ctx is not None:
                ctx.close()
        if self._model is not None:
            self._model.close()

    def __enter__(self) -> Llama:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __getstate__(self) -> dict[str, Any]:
        return dict(self._init_kwargs)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"<Llama {Path(self.model_path).name} n_ctx={self._n_ctx}>"

    @classmethod
    def from_pretrained(
        cls,
        repo_id: str,
        filename: str,
        additional_files: list[str] | None = None,
        local_dir: str | os.PathLike[str] | None = None,
        local_dir_use_symlinks: bool | str = "auto",
        cache_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> Llama:
        """Download a GGUF (file name or glob; split GGUFs whole) from the Hugging Face Hub
        into its cache and load it. additional_files and local_dir are ignored."""
        from .hub import download_gguf

        if additional_files or local_dir is not None:
            warnings.warn(
                "from_pretrained(additional_files=, local_dir=) are ignored: split GGUFs are "
                "fetched whole into the Hugging Face cache",
                LlamaCompatWarning,
                stacklevel=2,
            )
        return cls(download_gguf(repo_id, filename, cache_dir=cache_dir), **kwargs)

    # -- facts ----------------------------------------------------------------------------------

    @property
    def _tok(self) -> Tokenizer:
        assert self._model is not None
        return self._model.tokenizer

    def _context(self) -> Context:
        if self._ctx is None:
            raise LlamaError("this Llama was made with vocab_only=True: it cannot evaluate")
        return self._ctx

    def n_ctx(self) -> int:
        return self._n_ctx

    def n_vocab(self) -> int:
        return self._n_vocab

    def n_embd(self) -> int:
        assert self._model is not None
        return self._model.n_embd

    def token_bos(self) -> int:
        return int(lib.llama_vocab_bos(self._tok.model.vocab))

    def token_eos(self) -> int:
        return int(lib.llama_vocab_eos(self._tok.model.vocab))

    def token_nl(self) -> int:
        return int(lib.llama_vocab_nl(self._tok.model.vocab))

    def pooling_type(self) -> int:
        ctx = self._embed_ctx or self._context()
        return int(lib.llama_pooling_type(ctx.ptr))

    def set_seed(self, seed: int) -> None:
        self._seed = _check_int("seed", seed, -(2**63))

    # -- tokens ---------------------------------------------------------------------------------

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        """Tokens of UTF-8 text; add_bos adds BOS (and EOS) where the vocabulary wants them."""
        return self._tok.encode(text, add_special=add_bos, parse_special=special)

    def detokenize(
        self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None, special: bool = False
    ) -> bytes:
        """The bytes of tokens; after prev_tokens, only what tokens add to their text."""
        tokens = _ids(tokens)
        if not prev_tokens:
            return self._tok.decode_bytes(tokens, special=special)
        prev_tokens = _ids(prev_tokens)
        prev = self._tok.decode_bytes(prev_tokens, special=special)
        both = self._tok.decode_bytes(prev_tokens + tokens, special=special)
        return both[len(prev) :] if both.startswith(prev) else both

    @staticmethod
    def logits_to_logprobs(logits: np.ndarray | list[float], axis: int = -1) -> np.ndarray:
        x = np.asarray(logits, np.float32)
        top = np.max(x, axis=axis, keepdims=True)
        top = np.where(np.isfinite(top), top, 0)
        shifted = x - top
        with np.errstate(divide="ignore"):
            return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))

    @staticmethod
    def longest_token_prefix(a: Sequence[int], b: Sequence[int]) -> int:
        n = 0
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            n += 1
        return n

    # -- the evaluated sequence -----------------------------------------------------------------

    @property
    def n_tokens(self) -> int:
        return self._ctx.n_past if self._ctx is not None else 0

    @n_tokens.setter
    def n_tokens(self, n: int) -> None:
        ctx = self._context()
        _check_int("n_tokens", n, 0)
        if n > ctx.n_past:
            raise ValueError(f"n_tokens can only go down (from {ctx.n_past}), not to {n}")
        if n == ctx.n_past:
            return
        try:
            if n == 0:
                ctx.reset()
            else:
                ctx.truncate(n)
        except DecodeError:
            pass  # this model's memory cannot drop tokens: the context was reset instead
        self._last = self._rows[ctx.n_past - 1].copy() if self._logits_all and ctx.n_past else None

    @property
    def _input_ids(self) -> np.ndarray:
        return self.input_ids[: self.n_tokens]

    @property
    def scores(self) -> np.ndarray:
        """Logits of the evaluated positions, (n_tokens, n_vocab). Without logits_all only the
        last row is meaningful: the array is then a read-only view whose rows all show it."""
        n = self.n_tokens
        if self._logits_all:
            return self._rows[:n]
        if n == 0 or self._last is None:
            return np.empty((0, self._n_vocab), np.float32)
        return np.broadcast_to(self._last, (n, self._n_vocab))

    _scores = scores

    @property
    def eval_tokens(self) -> deque[int]:
        return deque(self._input_ids.tolist(), maxlen=self._n_ctx)

    @property
    def eval_logits(self) -> deque[list[float]]:
        rows = self.scores if self._logits_all else self.scores[-1:]
        return deque(rows.tolist(), maxlen=self._n_ctx if self._logits_all else 1)

    def reset(self) -> None:
        """Forget the evaluated tokens."""
        if self._ctx is not None:
            self.n_tokens = 0

    def eval(self, tokens: Sequence[int]) -> None:
        """Evaluate tokens after those already evaluated."""
        self._eval(self._tok.check_tokens(_ids(tokens)))

    def _eval(self, tokens: list[int], all_logits: bool = False) -> np.ndarray | None:
        ctx = self._context()
        n0 = ctx.n_past
        out = ctx.eval(tokens, all_logits=all_logits or self._logits_all)
        n1 = ctx.n_past
        self.input_ids[n0:n1] = tokens
        if out is None:
            self._last = ctx.logits()
            return None
        self._last = out[-1].copy()
        if self._logits_all:
            if len(self._rows) < n1:
                size = min(self._n_ctx, max(n1, 2 * len(self._rows), 16))
                grown = np.empty((size, self._n_vocab), np.float32)
                grown[:n0] = self._rows[:n0]
                self._rows = grown
            self._rows[n0:n1] = out
        return out

    # -- sampling -------------------------------------------------------------------------------

    def _sampler(
        self,
        *,
        temp: float,
        top_k: int,
        top_p: float,
        min_p: float,
        typical_p: float,
        repeat_penalty: float,
        frequency_penalty: float,
        presence_penalty: float,
        mirostat_mode: int,
        mirostat_tau: float,
        mirostat_eta: float,
        grammar: LlamaGrammar | str | None = None,
        logit_bias: dict[Any, float] | None = None,
        seed: int | None = None,
        **extra: Any,
    ) -> Sampler:
        if isinstance(temp, int | float) and not isinstance(temp, bool) and temp < 0:
            temp, top_k, top_p, min_p, typical_p = 1.0, 0, 1.0, 0.0, 1.0  # the raw distribution
        if isinstance(top_k, int) and top_k < 0:
            top_k = 0
        if isinstance(grammar, LlamaGrammar):
            grammar = grammar.grammar
        elif grammar is not None and not isinstance(grammar, str):
            raise TypeError(f"grammar must be a LlamaGrammar, not {type(grammar).__name__}")
        if grammar is not None:
            extra["grammar"] = grammar
        if logit_bias is not None:
            extra["logit_bias"] = {int(k): float(v) for k, v in logit_bias.items()}
        assert self._model is not None
        return make_sampler(
            self._model,
            temperature=temp,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            typical_p=typical_p,
            repeat_penalty=repeat_penalty,
            frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty,
            penalty_last_n=self.last_n_tokens_size,
            mirostat=mirostat_mode,
            mirostat_tau=mirostat_tau,
            mirostat_eta=mirostat_eta,
            seed=_sampler_seed(self._seed if seed is None else seed),
            **extra,
        )

    def _pick(self, sampler: Sampler, logits: np.ndarray, processors: list[Processor]) -> int:
        if processors:
            ids = self._input_ids.copy()
            logits = logits.copy()
            for fn in processors:
                logits = np.asarray(fn(ids, logits), np.float32)
        return sampler.sample_logits(logits)

    def sample(
        self,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        temp: float = 0.80,
        repeat_penalty: float = 1.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_eta: float = 0.1,
        mirostat_tau: float = 5.0,
        penalize_nl: bool = True,
        logits_processor: Any = None,
        grammar: LlamaGrammar | None = None,
        idx: int | None = None,
    ) -> int:
        """A token sampled from the logits at position idx (default: the last evaluated)."""
        n = self.n_tokens
        if n == 0 or self._last is None:
            raise LlamaError("no logits: eval() some tokens first")
        if idx is None or idx in (n - 1, -1):
            logits = self._last
        elif self._logits_all:
            logits = self._rows[:n][idx]
        else:
            raise ValueError("sampling an earlier position needs logits_all=True")
        with self._sampler(
            temp=temp,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            typical_p=typical_p,
            repeat_penalty=repeat_penalty,
            frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty,
            mirostat_mode=mirostat_mode,
            mirostat_tau=mirostat_tau,
            mirostat_eta=mirostat_eta,
            grammar=grammar,
        ) as sampler:
            sampler.feed_prompt(self._input_ids.tolist())
            return self._pick(sampler, logits, _processors(logits_processor))

    def generate(
        self,
        tokens: Sequence[int],
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        temp: float = 0.80,
        repeat_penalty: float = 1.0,
        reset: bool = True,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        penalize_nl: bool = True,
        logits_processor: Any = None,
        stopping_criteria: Any = None,
        grammar: LlamaGrammar | None = None,
    ) -> Generator[int, Sequence[int] | None, None]:
        """Evaluate tokens (reusing the longest common prefix unless reset=False, which appends
        them), then yield sampled tokens without end. `send(tokens)` evaluates extra tokens
        after the one just yielded. Ends when the context is full or a stopping criterion says
        so."""
        sampler = self._sampler(
            temp=temp,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            typical_p=typical_p,
            repeat_penalty=repeat_penalty,
            frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty,
            mirostat_mode=mirostat_mode,
            mirostat_tau=mirostat_tau,
            mirostat_eta=mirostat_eta,
            grammar=grammar,
        )
        return self._tokens(
            self._tok.check_tokens(_ids(tokens)),
            sampler,
            reset=reset,
            processors=_processors(logits_processor),
            stop=_criterion(stopping_criteria),
            run=Run(),
        )

    def _tokens(
        self,
        tokens: list[int],
        sampler: Sampler,
        *,
        reset: bool,
        processors: list[Processor],
        stop: Criterion | None,
        run: Run,
    ) -> Generator[int, Sequence[int] | None, None]:
        try:
            ctx = self._context()
            if reset:
                keep = self.longest_token_prefix(self._input_ids.tolist(), tokens[:-1])
                self.n_tokens = keep
                tokens = tokens[self.n_tokens :]
            if tokens:
                self._eval(tokens)
            if self._last is None:
                raise ValueError("nothing to generate from: no tokens were evaluated")
            sampler.reset()
            sampler.feed_prompt(self._input_ids.tolist())
            while True:
                run.logits = self._last
                token = self._pick(sampler, self._last, processors)
                if stop is not None and stop(self._input_ids.copy(), self._last):
                    run.stopped = True
                    return
                sent = yield token
                more = [token, *self._tok.check_tokens(_ids(sent or ()))]
                if ctx.n_past + len(more) > self._n_ctx:
                    return
                self._eval(more)
                if sent:
                    sampler.feed_prompt(more[1:])
        finally:
            sampler.close()

    # -- completion -----------------------------------------------------------------------------

    def __call__(self, prompt: str | list[int], *args: Any, **kwargs: Any) -> Any:
        """create_completion(prompt, ...)."""
        return self.create_completion(prompt, *args, **kwargs)

    def create_completion(
        self,
        prompt: str | list[int],
        suffix: str | None = None,
        max_tokens: int | None = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        logprobs: int | None = None,
        echo: bool = False,
        stop: str | list[str] | None = None,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        top_k: int = 40,
        stream: bool = False,
        seed: int | None = None,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: str | None = None,
        stopping_criteria: Any = None,
        logits_processor: Any = None,
        grammar: LlamaGrammar | None = None,
        logit_bias: dict[Any, float] | None = None,
    ) -> Completion | Iterator[Completion]:
        """Complete prompt (text, or token ids used as they are): an OpenAI "text_completion"
        dict, or with stream=True an iterator of chunks of the same shape (without usage)."""
        if suffix is not None:
            raise NotImplementedError("suffix (fill-in-the-middle) is not supported")
        if isinstance(prompt, str):
            text = prompt
            tokens = self.tokenize(prompt.encode("utf-8"), special=True)
            if not tokens and self.token_bos() >= 0:
                tokens = [self.token_bos()]
        elif isinstance(prompt, Sequence | np.ndarray) and not isinstance(prompt, bytes):
            tokens = self._tok.check_tokens(_ids(prompt))
            text = self._tok.decode(tokens, special=True)
        else:
            raise TypeError(f"prompt must be a str or a list of token ids, not {prompt!r}")
        chunks, run = self._completion(
            tokens,
            text,
            max_tokens=max_tokens,
            logprobs=logprobs,
            echo=echo,
            stop=stop_list(stop),
            seed=seed,
            model=model,
            stopping_criteria=stopping_criteria,
            logits_processor=logits_processor,
            sampling=dict(
                temp=temperature,
                top_k=top_k,
                top_p=top_p,
                min_p=min_p,
                typical_p=typical_p,
                repeat_penalty=repeat_penalty,
                frequency_penalty=frequency_penalty,
                presence_penalty=presence_penalty,
                mirostat_mode=mirostat_mode,
                mirostat_tau=mirostat_tau,
                mirostat_eta=mirostat_eta,
                grammar=grammar,
                logit_bias=logit_bias,
            ),
        )
        return chunks if stream else collect(chunks, run, logprobs is not None)

    def _completion(
        self,
        tokens: list[int],
        text: str,
        *,
        max_tokens: int | None,
        logprobs: int | None,
        echo: bool,
        stop: list[str],
        seed: int | None,
        model: str | None,
        stopping_criteria: Any,
        logits_processor: Any,
        sampling: dict[str, Any],
    ) -> tuple[Iterator[Completion], Run]:
        """Checks everything now; the generation runs as the returned chunks are consumed."""
        self._context()
        n_prompt = len(tokens)
        if not tokens:
            raise ValueError("the prompt is empty")
        if n_prompt >= self._n_ctx:
            raise ValueError(
                f"Requested tokens ({n_prompt}) exceed context window of {self._n_ctx}"
            )
        if max_tokens is not None:
            _check_int("max_tokens", max_tokens, -(2**63))
        if max_tokens is None or max_tokens <= 0:
            max_tokens = self._n_ctx - n_prompt
        max_tokens = min(max_tokens, self._n_ctx - n_prompt)
        if logprobs is not None:
            _check_int("logprobs", logprobs, 0)
        if seed is not None:
            _check_int("seed", seed, -(2**63))
        if tokens[:2] == [self.token_bos()] * 2:
            warnings.warn(
                "the prompt starts with two BOS tokens; this likely reduces response quality",
                RuntimeWarning,
                stacklevel=3,
            )
        new_seed = seed if seed is not None else random.Random(self._seed).randint(0, 2**32)
        sampler = self._sampler(seed=new_seed, **sampling)
        self._seed = new_seed
        run = Run(n_prompt=n_prompt)
        head = {
            "id": f"cmpl-{uuid.uuid4()}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model if model is not None else self.model_path,
        }
        gen = self._tokens(
            tokens,
            sampler,
            reset=True,
            processors=_processors(logits_processor),
            stop=_criterion(stopping_criteria),
            run=run,
        )
        chunks = completion_chunks(
            self._tok,
            gen,
            run,
            head,
            tokens=tokens,
            prompt=text,
            max_tokens=max_tokens,
            stops=stop,
            logprobs=logprobs,
            echo=echo,
            prompt_logprobs=lambda: self._prompt_logprobs(tokens, logprobs or 0),
        )
        return chunks, run

    def _prompt_logprobs(self, tokens: list[int], n: int) -> Logprobs:
        """Logprobs of the prompt's tokens (the first is None, a BOS the tokenizer adds is left
        out), from an evaluation of the whole prompt."""
        self.reset()
        rows = self._eval(list(tokens), all_logits=True)
        assert rows is not None
        start = 1 if self._tok.add_bos and tokens[0] == self.token_bos() else 0
        out = empty_logprobs()
        offset = 0
        for i in range(start, len(tokens)):
            entry = logprob_entry(self._tok, tokens[i], rows[i - 1], n, offset, special=True)
            if i == start:
                entry["token_logprobs"], entry["top_logprobs"] = [None], [None]
            for key, value in entry.items():
                out[key] += value
            offset += len(entry["tokens"][0])
        return out

    # -- chat -----------------------------------------------------------------------------------

    def _chat_formatter(self) -> ChatFormatter:
        if self._formatter is None:
            assert self._model is not None
            template = CHATML_TEMPLATE if self.chat_format == "chatml" else None
            self._formatter = ChatFormatter(self._model, template=template)
        return self._formatter

    def create_chat_completion(
        self,
        messages: list[dict[str, Any]],
        functions: list[dict[str, Any]] | None = None,
        function_call: str | dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        temperature: float = 0.2,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        stream: bool = False,
        stop: str | list[str] | None = None,
        seed: int | None = None,
        response_format: dict[str, Any] | None = None,
        max_tokens: int | None = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: str | None = None,
        logits_processor: Any = None,
        grammar: LlamaGrammar | None = None,
        logit_bias: dict[Any, float] | None = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
    ) -> ChatCompletion | Iterator[ChatCompletion]:
        """Reply to OpenAI-style messages with the model's chat template: a "chat.completion"
        dict, or with stream=True an iterator of "chat.completion.chunk" dicts."""
        options = {k: v for k, v in locals().items() if k not in _CHAT_ARGS}
        if self.chat_handler is not None:
            return self.chat_handler(
                llama=self,
                messages=messages,
                functions=functions,
                function_call=function_call,
                tools=tools,
                tool_choice=tool_choice,
                **options,
            )
        return self._chat(messages, functions, function_call, tools, tool_choice, **options)

    def _chat(
        self,
        messages: list[dict[str, Any]],
        functions: list[dict[str, Any]] | None,
        function_call: str | dict[str, Any] | None,
        tools: list[dict[str, Any]] | None,
        tool_choice: str | dict[str, Any] | None,
        *,
        stream: bool,
        stop: str | list[str] | None,
        seed: int | None,
        response_format: dict[str, Any] | None,
        max_tokens: int | None,
        model: str | None,
        logits_processor: Any,
        grammar: LlamaGrammar | None,
        logprobs: bool | None,
        top_logprobs: int | None,
        temperature: float,
        tfs_z: float,
        **sampling: Any,
    ) -> ChatCompletion | Iterator[ChatCompletion]:
        legacy = functions is not None
        if legacy:
            tools = [{"type": "function", "function": f} for f in functions or ()]
        if function_call is not None:
            if isinstance(function_call, dict):
                tool_choice = {"type": "function", "function": {"name": function_call["name"]}}
            else:
                tool_choice = function_call
        tools = list(tools or ())
        forced, tool_grammar = tool_plan(tools, tool_choice)
        shown = tools if tools and tool_choice != "none" else None
        constraint = response_format_kwargs(response_format)
        given = [bool(constraint), grammar is not None, tool_grammar is not None]
        if sum(given) > 1:
            raise ValueError(
                "give only one of grammar, a JSON response_format and a forced tool_choice"
            )
        if tool_grammar is not None:
            constraint = {"grammar": tool_grammar}
        formatter = self._chat_formatter()
        prompt = formatter.render(messages, tools=shown)
        tokens = self.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        stops = stop_list(stop) + ([formatter.eos_token] if formatter.eos_token else [])
        want = (top_logprobs or 0) if logprobs else None
        chunks, run = self._completion(
            tokens,
            prompt,
            max_tokens=max_tokens,
            logprobs=want,
            echo=False,
            stop=stops,
            seed=seed,
            model=model,
            stopping_criteria=None,
            logits_processor=logits_processor,
            sampling={
                **sampling,
                "temp": temperature,
                **({"grammar": grammar} if grammar is not None else {}),
                **constraint,
            },
        )
        parse = shown is not None and forced is None
        chat = ChatReply(forced, tools if parse else None, legacy)
        if stream:
            return chat.stream(chunks)
        return chat.complete(collect(chunks, run, want is not None))

    def create_chat_completion_openai_v1(self, *args: Any, **kwargs: Any) -> Any:
        """create_chat_completion, as the openai package's ChatCompletion (chunk) objects."""
        from openai.types.chat import ChatCompletion, ChatCompletionChunk

        if kwargs.get("stream", False):
            return (ChatCompletionChunk(**c) for c in self.create_chat_completion(*args, **kwargs))
        return ChatCompletion(**self.create_chat_completion(*args, **kwargs))

    # -- embeddings -----------------------------------------------------------------------------

    def _embedding_context(self) -> Context:
        if self._embed_ctx is None or self._embed_ctx.closed:
            assert self._model is not None
            kw = dict(self._context_kw, n_ubatch=self.n_batch)
            self._embed_ctx = Context(self._model, embeddings=True, pooling=self._pooling, **kw)
        return self._embed_ctx

    def embed(
        self,
        input: str | list[str],
        normalize: bool = False,
        truncate: bool = True,
        return_count: bool = False,
    ) -> Any:
        """Embedding of a text (list[float], or a list per token when pooling is "none"), or a
        list of those for a list of texts. truncate cuts texts to n_batch tokens; normalize
        scales each vector to unit length. return_count adds the number of tokens embedded."""
        texts = [input] if isinstance(input, str) else list(input)
        ctx = self._embedding_context()
        out: list[Any] = []
        total = 0
        for text in texts:
            tokens = self.tokenize(text.encode("utf-8"))
            if truncate:
                tokens = tokens[: self.n_batch]
            if not tokens:
                raise ValueError("cannot embed an empty text (it has no tokens)")
            if len(tokens) > self.n_batch:
                raise ValueError(
                    f"Requested tokens ({len(tokens)}) exceed batch size of {self.n_batch}"
                )
            total += len(tokens)
            out.append(ctx.embed_tokens(tokens, normalize=normalize).tolist())
        result = out[0] if isinstance(input, str) else out
        return (result, total) if return_count else result

    def create_embedding(self, input: str | list[str], model: str | None = None) -> dict[str, Any]:
        """An OpenAI "list" of embeddings, one per input text."""
        texts = input if isinstance(input, list) else [input]
        vectors, total = self.embed(texts, return_count=True)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)
            ],
            "model": model if model is not None else self.model_path,
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }

    # -- state ----------------------------------------------------------------------------------

    def save_state(self) -> LlamaState:
        data = self._context().save_state()
        n = self.n_tokens
        scores = self.scores.copy() if self._logits_all else self.scores[-1:].copy()
        return LlamaState(
            input_ids=self.input_ids.copy(),
            scores=scores,
            n_tokens=n,
            llama_state=data,
            llama_state_size=len(data),
            seed=self._seed,
        )

    def load_state(self, state: LlamaState) -> None:
        ctx = self._context()
        ctx.load_state(state.llama_state)
        if ctx.n_past != state.n_tokens:
            ctx.reset()
            raise LlamaError("the state's n_tokens does not match its saved context")
        n = state.n_tokens
        self.input_ids[:n] = state.input_ids[:n]
        scores = np.asarray(state.scores, np.float32)
        self._last = scores[-1].copy() if n and len(scores) else None
        if self._logits_all and n:
            if len(self._rows) < n:
                self._rows = np.empty((n, self._n_vocab), np.float32)
            rows = min(n, len(scores))
            self._rows[n - rows : n] = scores[-rows:]
        self._seed = state.seed


__all__ = [
    "LLAMA_DEFAULT_SEED",
    "LLAMA_POOLING_TYPE_CLS",
    "LLAMA_POOLING_TYPE_LAST",
    "LLAMA_POOLING_TYPE_MEAN",
    "LLAMA_POOLING_TYPE_NONE",
    "LLAMA_POOLING_TYPE_RANK",
    "LLAMA_POOLING_TYPE_UNSPECIFIED",
    "Llama",
    "LlamaCompatWarning",
    "LlamaGrammar",
    "LlamaState",
    "LogitsProcessorList",
    "StoppingCriteriaList",
]
