"""An inference context over a model: the KV cache, evaluating tokens, logits, state."""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _native
from ._native import ffi, lib
from .errors import (
    ClosedError,
    ContextError,
    ContextFullError,
    DecodeError,
    DeviceLostError,
    LlamaError,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .model import LoraAdapter, Model
    from .sampling import Sampler

_POOLING = {
    None: lib.LLAMA_POOLING_TYPE_UNSPECIFIED,
    "none": lib.LLAMA_POOLING_TYPE_NONE,
    "mean": lib.LLAMA_POOLING_TYPE_MEAN,
    "cls": lib.LLAMA_POOLING_TYPE_CLS,
    "last": lib.LLAMA_POOLING_TYPE_LAST,
    "rank": lib.LLAMA_POOLING_TYPE_RANK,
}
_POOLING_NAMES = {v: k for k, v in _POOLING.items() if k}
_FLASH_ATTN = {
    "auto": lib.LLAMA_FLASH_ATTN_TYPE_AUTO,
    True: lib.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    False: lib.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
_KV_TYPES = {"f32": lib.GGML_TYPE_F32, "f16": lib.GGML_TYPE_F16, "q8_0": lib.GGML_TYPE_Q8_0}
_STATE_MAGIC = b"LWGS\x01"
_MAX_INT = 2**31 - 1


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ContextParams:
    """How to set up a context. The defaults here are the package's defaults."""

    n_ctx: int = 4096
    """Context length in tokens; 0 means the model's training length. Capped at that length."""
    n_batch: int = 512
    """Most tokens handed to one llama_decode call."""
    n_ubatch: int = 512
    n_threads: int | None = None
    """CPU threads for generation (default: the CPUs this process may use)."""
    n_threads_batch: int | None = None
    n_seq_max: int = 1
    embeddings: bool = False
    """Compute embeddings instead of (or with) logits."""
    pooling: str | None = None
    """Embedding pooling: None (the model's), "none", "mean", "cls", "last" or "rank"."""
    flash_attn: bool | str = "auto"
    type_k: str = "f16"
    type_v: str = "f16"
    offload_kqv: bool = True
    gpu_sampling: bool = False
    """On WebGPU, let greedy generation (temperature 0, at most a logit bias, no grammar, logits
    processors or logprobs) pick each token on the GPU: only its id is read back, not the
    n_vocab logits. Off by default: on an H100 it decoded 1-4% slower than picking on the host
    (its logit bias and argmax are four more dispatches a token, the argmax a single workgroup;
    docs/performance.md). Equal top logits may resolve to another token than on the host (the
    GPU keeps the last of them, the host the first)."""

    def validate(self) -> None:
        """Raise ValueError (bad value) or TypeError (bad type), naming the field."""
        for name in ("n_ctx", "n_batch", "n_ubatch", "n_seq_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, not {value!r}")
            if value > _MAX_INT:
                raise ValueError(f"{name} must be at most {_MAX_INT}, not {value}")
        for name in ("n_batch", "n_ubatch", "n_seq_max"):
            if getattr(self, name) == 0:
                raise ValueError(f"{name} must be at least 1")
        for name in ("n_threads", "n_threads_batch"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096
            ):
                raise ValueError(f"{name} must be an int from 1 to 4096 or None, not {value!r}")
        for name in ("embeddings", "offload_kqv", "gpu_sampling"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, not {getattr(self, name)!r}")
        if self.pooling not in _POOLING:
            raise ValueError(f"pooling must be one of {list(_POOLING)}, not {self.pooling!r}")
        if self.flash_attn not in _FLASH_ATTN:
            raise ValueError(f"flash_attn must be True, False or 'auto', not {self.flash_attn!r}")
        for name in ("type_k", "type_v"):
            if getattr(self, name) not in _KV_TYPES:
                raise ValueError(f"{name} must be one of {list(_KV_TYPES)}")


class Context:
    """A KV cache and the state of one or more sequences over a model.

    Raises ContextError when llama.cpp cannot make the context (e.g. not enough memory, or
    n_seq_max over its limit), ValueError/TypeError for bad parameters, ClosedError once it
    or its model is closed.

    Threads: every method holds the context's lock while it touches native state, so calls
    from several threads are serialized and never corrupt it. A context holds one sequence,
    so one generation at a time: a generation (generate_step, stream_generate, generate)
    claims the context from its first step until it ends, is closed or is garbage-collected,
    and starting a second one meanwhile, from any thread, raises ContextError. Changing the
    context (eval, reset, load_state...) while a generation is suspended makes that
    generation raise ContextError when it resumes. For parallel generations use one context
    per thread: several contexts over one model run concurrently. close() may come from any
    thread: a decode under way is aborted (raising ClosedError there) and waited for.
    """

    def __init__(self, model: Model, params: ContextParams | None = None, **kw: Any):
        params = replace(params or ContextParams(), **kw)
        params.validate()
        if model.params.vocab_only:
            raise ContextError("a vocab-only model has no weights to run: load it without it")
        self.model = model  # a context keeps its model alive
        self._on_webgpu = model.device is not None and model.device.is_webgpu
        # a recurrent memory cannot drop its last token, which reading back the logits of a
        # token sampled on the GPU needs (see _read_back_logits)
        self._recurrent = bool(
            lib.llama_model_is_recurrent(model.ptr) or lib.llama_model_is_hybrid(model.ptr)
        )
        self.params = params
        self.tokens: list[int] = []  # what sequence 0 holds, in order
        self._restored_logits: np.ndarray | None = None  # set by load_state until the next eval
        # greedy sampling on the GPU (see ContextParams.gpu_sampling): the attached sampler
        # chain, the Sampler it was made for, and whether the last decode's output was sampled
        # there (its logits were then never read back: logits() evaluates the token again)
        self._gpu_chain: Any = ffi.NULL
        self._gpu_sampler: object | None = None
        self._sampled_on_gpu = False
        self.loras: dict[LoraAdapter, float] = {}
        self._lock = threading.RLock()
        self._closing = False
        self._version = 0  # bumped by every change of the sequence (see generate._steps)
        self._owner: object | None = None  # the generation that claimed the context
        self._ptr: Any = ffi.NULL

        cp = lib.llama_context_default_params()
        n_train = model.n_ctx_train
        n_ctx = params.n_ctx or n_train
        cp.n_ctx = min(n_ctx, n_train) if n_train > 0 else n_ctx
        cp.n_batch = params.n_batch
        cp.n_ubatch = min(params.n_ubatch, params.n_batch)
        cp.n_seq_max = params.n_seq_max
        cp.n_threads = params.n_threads or _default_threads()
        cp.n_threads_batch = params.n_threads_batch or cp.n_threads
        cp.embeddings = params.embeddings
        cp.pooling_type = _POOLING[params.pooling]
        cp.flash_attn_type = _FLASH_ATTN[params.flash_attn]
        cp.type_k = _KV_TYPES[params.type_k]
        cp.type_v = _KV_TYPES[params.type_v]
        cp.offload_kqv = params.offload_kqv
        # ggml polls this flag (in C) while decoding; request_abort() sets it from any thread
        self._abort_flag = ffi.new("int *")
        cp.abort_callback = ffi.addressof(lib, "lw_abort_flag")
        cp.abort_callback_data = self._abort_flag
        with model._lock:
            if model._closing:
                raise ClosedError("the model is closed")
            _native.take_native_errors()
            ptr = lib.llama_init_from_model(model.ptr, cp)
            if ptr == ffi.NULL:
                raise _native.fail(ContextError, "failed to create a context")
            # CPU contexts keep their worker threads between decode calls (llama-bench does
            # too); a WebGPU context runs its graph on the GPU and needs no spinning workers.
            pools = []
            if not self._on_webgpu and cp.n_threads > 1:
                pools.append(_native.CpuThreadpool(cp.n_threads))
                if cp.n_threads_batch != cp.n_threads:
                    pools.append(_native.CpuThreadpool(cp.n_threads_batch))
                lib.llama_attach_threadpool(ptr, pools[0].ptr, pools[-1].ptr)

            # The destructor holds the model's pointer object: even when a reference cycle
            # (model -> its default context -> model) is collected, the context is freed first;
            # and it holds the threadpools, freed only after the context.
            def free_context(p: Any, _model: Any = model._ptr, _pools: list = pools) -> None:
                lib.llama_free(p)
                for pool in _pools:
                    pool.free()

            self._ptr = ffi.gc(ptr, free_context)
            model._contexts.add(self)
        self.n_ctx = int(lib.llama_n_ctx(ptr))
        self.n_batch = int(lib.llama_n_batch(ptr))
        self.n_vocab = model.n_vocab
        self._batch = ffi.gc(ffi.new("struct llama_batch *"), _free_batch)
        self._batch[0] = b = lib.llama_batch_init(self.n_batch, 0, 1)
        # every token goes to sequence 0; tokens, positions and output flags are written through
        # numpy views of the batch's arrays (a 512-token chunk took 0.8 ms item by item)
        n = self.n_batch
        for i in range(n):
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
        self._batch_tokens = np.frombuffer(ffi.buffer(b.token, 4 * n), np.int32)
        self._batch_pos = np.frombuffer(ffi.buffer(b.pos, 4 * n), np.int32)
        self._batch_outputs = np.frombuffer(ffi.buffer(b.logits, n), np.int8)
        self._step_out = ffi.new("llama_token *")  # the token _step's C call chose

    # -- lifetime -------------------------------------------------------------------------------

    @property
    def ptr(self) -> Any:
        if self._ptr == ffi.NULL or self.model.closed:
            raise ClosedError("the context is closed")
        return self._ptr

    @property
    def closed(self) -> bool:
        return self._ptr == ffi.NULL

    def close(self) -> None:
        """Free the context; the model stays loaded. Safe to call twice and from any thread:
        a decode under way in another thread is aborted (it raises ClosedError there) and
        waited for. A suspended generation over it raises ClosedError when resumed."""
        if self._ptr == ffi.NULL:
            return
        self._closing = True
        self._abort_flag[0] = 1
        with self._lock:
            if self._ptr != ffi.NULL:
                ptr, self._ptr = self._ptr, ffi.NULL
                ffi.release(ptr)
                ffi.release(self._batch)
                self.model._contexts.discard(self)
                self._version += 1

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- evaluating tokens ----------------------------------------------------------------------

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    @property
    def memory(self) -> Any:
        """The llama_memory_t pointer (use it under `self._lock`)."""
        return lib.llama_get_memory(self.ptr)

    def _claim(self, owner: object) -> None:
        """Make owner (a generation) the only generation on this context, or ContextError."""
        with self._lock:
            self.ptr  # noqa: B018 - raises if closed
            if self._owner is not None and self._owner is not owner:
                raise ContextError(
                    "the context is in use by another generation (in another thread, or a "
                    "stream that was neither finished nor closed): finish or close that one "
                    "first, or give each thread its own context (model.context())"
                )
            self._owner = owner

    def _release(self, owner: object) -> None:
        if self._owner is owner:
            self._owner = None

    def reset(self) -> None:
        """Forget every token (clear the KV cache)."""
        with self._lock:
            lib.llama_memory_clear(self.memory, True)
            self.tokens = []
            self._restored_logits = None
            self._sampled_on_gpu = False
            self._version += 1

    def truncate(self, n: int) -> None:
        """Keep the first n tokens of sequence 0, drop the rest from the KV cache.
        ValueError unless 0 <= n <= n_past."""
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, not {type(n).__name__}")
        with self._lock:
            if not 0 <= n <= len(self.tokens):
                raise ValueError(f"cannot truncate {len(self.tokens)} tokens to {n}")
            self._version += 1
            if n < len(self.tokens) and not lib.llama_memory_seq_rm(self.memory, 0, n, -1):
                self.reset()
                raise DecodeError("this model's memory cannot drop tokens; the context was reset")
            del self.tokens[n:]

    def eval(self, tokens: Sequence[int], *, all_logits: bool = False) -> np.ndarray | None:
        """Append tokens to sequence 0 and run the model over them.

        Afterwards `logits()` gives the next-token logits. With all_logits, returns the logits
        at every position of `tokens` as an (n, n_vocab) float32 array.

        Raises TokenizeError (an id outside the vocabulary), ValueError (no tokens),
        ContextFullError (they do not fit; nothing is evaluated), DecodeError (llama.cpp
        failed, or request_abort()), ClosedError (closed, also while decoding).
        """
        tokens = self.model.tokenizer.check_tokens(tokens)
        if not tokens:
            raise ValueError("eval needs at least one token")
        with self._lock:
            if len(self.tokens) + len(tokens) > self.n_ctx:
                raise ContextFullError(
                    f"{len(self.tokens)} tokens in the context plus {len(tokens)} new ones "
                    f"exceed its size of {self.n_ctx}"
                )
            out = np.empty((len(tokens), self.n_vocab), np.float32) if all_logits else None
            for start in range(0, len(tokens), self.n_batch):
                chunk = tokens[start : start + self.n_batch]
                last_chunk = start + len(chunk) == len(tokens)
                self._decode(chunk, len(self.tokens), all_logits, last_chunk)
                if out is not None:
                    for i in range(len(chunk)):
                        out[start + i] = self._logits_ptr(i)
            return out

    def _decode(self, chunk: list[int], pos0: int, all_outputs: bool, last: bool) -> None:
        """llama_decode of one chunk; the caller holds self._lock."""
        ctx_ptr = self.ptr
        if all_outputs:  # the GPU sampler takes one output a sequence, and no logits are kept
            self._detach_gpu_sampler()
        n = len(chunk)
        self._batch[0].n_tokens = n
        self._batch_tokens[:n] = chunk
        self._batch_pos[:n] = np.arange(pos0, pos0 + n, dtype=np.int32)
        self._batch_outputs[:n] = 1 if all_outputs else 0
        if last:
            self._batch_outputs[n - 1] = 1
        self._before_decode()
        # A Ctrl-C arriving meanwhile is raised by Python once this call returns (prompts are
        # evaluated n_batch tokens per call, so that is soon); the state stays consistent.
        rc = lib.llama_decode(ctx_ptr, self._batch[0])
        # a device lost while the results were read back leaves rc 0: ask ggml-webgpu too
        fault = _native.webgpu_device_fault() if self._on_webgpu else None
        if rc == 0 and fault is None:
            self.tokens.extend(chunk)
            self._sampled_on_gpu = self._gpu_chain != ffi.NULL
            return
        self._decode_failed(rc)

    def _step(self, token: int, sampler: Sampler) -> int:
        """eval([token]), then sampler.sample(self), in one C call: lw_decode_greedy for a
        greedy sampler with at most a logit bias (its _fast_greedy), lw_decode_sample (the
        sampler chain) otherwise. For generate._steps: the sampler has no grammar, no GPU
        sampler is attached, the caller holds self._lock and has checked that the token fits."""
        self._before_decode()
        fault, reg = _native.webgpu_fault_check() if self._on_webgpu else (ffi.NULL, ffi.NULL)
        out = self._step_out
        pos = len(self.tokens)
        with sampler._lock:
            sampler._check_open()
            greedy = sampler._fast_greedy
            if greedy is not None:
                ids, _, ids_c, biases_c = greedy
                rc = lib.lw_decode_greedy(
                    self.ptr, self._batch, token, pos, self.n_vocab,
                    ids_c, biases_c, len(ids), sampler._chain, fault, reg, out,
                )  # fmt: skip
            else:
                rc = lib.lw_decode_sample(self.ptr, self._batch, token, pos, sampler._chain,
                                          fault, reg, out)  # fmt: skip
        if rc in (lib.LW_STEP_NO_LOGITS, lib.LW_STEP_NO_TOKEN):
            self.tokens.append(token)  # evaluated: only the choice failed
            what = "nothing: no logits" if rc == lib.LW_STEP_NO_LOGITS else "no token"
            raise _native.fail(LlamaError, f"the sampler chain chose {what}")
        if rc != 0:
            self._decode_failed(rc if rc != lib.LW_STEP_DEVICE_FAULT else 0)
        self.tokens.append(token)
        return int(out[0])

    def _before_decode(self) -> None:
        """What each llama_decode starts with (the caller holds self._lock): the abort flag
        lowered (unless close() raised it to stop this decode), the last logits no longer
        restored or sampled on the GPU, the state's version advanced, earlier native errors
        dropped (a failure's message then carries only its own)."""
        if not self._closing:
            self._abort_flag[0] = 0
        self._restored_logits = None
        self._sampled_on_gpu = False
        self._version += 1
        _native.drop_native_errors()

    def _decode_failed(self, rc: int) -> None:
        """Raise for a llama_decode that returned rc (0: the device failed afterwards), after
        dropping from the memory whatever part of the batch it holds."""
        ctx_ptr = self.ptr
        lib.llama_memory_seq_rm(lib.llama_get_memory(ctx_ptr), 0, len(self.tokens), -1)
        self._check_device()
        if rc == 1:
            raise _native.fail(ContextFullError, "no room in the KV cache for the batch")
        if rc == 2 and self._closing:
            raise ClosedError("the context was closed while decoding")
        if rc == 2:
            raise _native.fail(DecodeError, "decoding was aborted")
        raise _native.fail(DecodeError, f"llama_decode failed with code {rc}")

    def _check_device(self) -> None:
        """Raise DeviceLostError if this context's WebGPU device failed (patches/0009): reading
        results back from it cannot report an error in C, so it is asked after the fact."""
        fault = _native.webgpu_device_fault() if self._on_webgpu else None
        if fault is not None:
            _native.take_native_errors()
            raise DeviceLostError(
                f"the WebGPU device cannot be used: {fault}. It stays unusable in this process; "
                "load the model with device='cpu' to go on"
            )

    # -- greedy sampling on the GPU ------------------------------------------------------------

    def _attach_gpu_sampler(self, sampler: Sampler) -> bool:
        """Have the GPU choose sampler's token after each decode from here on (see
        ContextParams.gpu_sampling). False where it cannot: the caller samples on the CPU as
        usual. The caller holds self._lock and detaches it when its generation ends."""
        self._detach_gpu_sampler()
        if (
            not self._on_webgpu
            or not self.params.gpu_sampling
            or self.params.embeddings
            or self._recurrent
        ):
            return False
        chain = sampler._new_gpu_chain()
        if chain is None:
            return False
        _native.take_native_errors()
        if not lib.llama_set_sampler(self.ptr, 0, chain):
            _native.take_native_errors()  # "cannot be offloaded": sample on the CPU instead
            ffi.release(chain)
            return False
        self._gpu_chain, self._gpu_sampler = chain, sampler
        return True

    def _detach_gpu_sampler(self, sampler: Sampler | None = None) -> None:
        """Stop sampling on the GPU (only if sampler's, when given); the caller holds the lock.
        The logits of a token already sampled there are read back when asked for."""
        if self._gpu_chain == ffi.NULL:
            return
        if sampler is not None and self._gpu_sampler is not sampler:
            return
        chain, self._gpu_chain, self._gpu_sampler = self._gpu_chain, ffi.NULL, None
        if not self.closed and not self.model.closed:
            lib.llama_set_sampler(self._ptr, 0, ffi.NULL)
        ffi.release(chain)

    def _gpu_token(self, sampler: Sampler) -> int | None:
        """The token the GPU chose for sampler after the last decode, if it did."""
        if not self._sampled_on_gpu or self._gpu_sampler is not sampler:
            return None
        token = int(lib.llama_get_sampled_token_ith(self.ptr, -1))
        return token if token >= 0 else None

    def _read_back_logits(self) -> None:
        """Make the last token's logits readable: when it was sampled on the GPU they never
        left it, so evaluate that token again without the GPU sampler."""
        if not self._sampled_on_gpu:
            return
        self._detach_gpu_sampler()
        last = self.tokens[-1]
        self.truncate(len(self.tokens) - 1)
        self._decode([last], len(self.tokens), False, True)

    def request_abort(self) -> None:
        """Make a decode running in another thread stop soon (it raises DecodeError there).
        The CPU backend honours it between graph nodes; GPU backends when the graph is done."""
        self._abort_flag[0] = 1

    def _logits_ptr(self, i: int) -> np.ndarray:
        """A view of the logits of output i (valid until the next decode; hold self._lock)."""
        self._read_back_logits()
        ptr = lib.llama_get_logits_ith(self.ptr, i)
        if ptr == ffi.NULL:
            raise _native.fail(LlamaError, f"no logits at output {i}")
        return np.frombuffer(ffi.buffer(ptr, 4 * self.n_vocab), np.float32)

    def logits(self) -> np.ndarray:
        """Next-token logits after the last eval (a copy, float32, n_vocab long)."""
        with self._lock:
            self.ptr  # noqa: B018 - raises if closed
            if not self.tokens:
                raise LlamaError("no tokens evaluated yet")
            if self._restored_logits is not None:
                return self._restored_logits.copy()
            return self._logits_ptr(-1).copy()

    def prefill(self, tokens: Sequence[int]) -> int:
        """Make sequence 0 hold exactly `tokens`, reusing the longest common prefix already in
        the cache (no re-evaluation of it). Returns how many tokens were reused."""
        tokens = self.model.tokenizer.check_tokens(tokens)
        if not tokens:
            raise ValueError("prefill needs at least one token")
        with self._lock:
            common = 0
            limit = min(len(tokens), len(self.tokens))
            while common < limit and tokens[common] == self.tokens[common]:
                common += 1
            # the last token is always evaluated again so that its logits are fresh
            keep = min(common, len(tokens) - 1)
            try:
                self.truncate(keep)
            except DecodeError:
                keep = 0
            self.eval(tokens[keep:])
            return keep

    def logits_for(self, tokens: Sequence[int]) -> np.ndarray:
        """Teacher-forced logits: row i is the prediction after tokens[: i + 1]. (n, n_vocab)."""
        with self._lock:
            self.reset()
            out = self.eval(tokens, all_logits=True)
        assert out is not None
        return out

    # -- LoRA -------------------------------------------------------------------------------------

    def set_loras(self, adapters: dict[LoraAdapter, float]) -> None:
        """Apply these LoRA adapters with these scales (replacing the current set; {} clears)."""
        from .model import _check_lora_owner

        if not isinstance(adapters, Mapping):
            raise TypeError("adapters must be a dict of LoraAdapter -> scale")
        items = list(adapters.items())
        for adapter, scale in items:
            _check_lora_owner(self.model, adapter)
            if not isinstance(scale, int | float) or not np.isfinite(scale):
                raise ValueError(f"LoRA scale must be a finite number, not {scale!r}")
        with self._lock:
            ptrs = ffi.new("struct llama_adapter_lora *[]", [a.ptr for a, _ in items] or 1)
            scales = ffi.new("float[]", [float(s) for _, s in items] or 1)
            if lib.llama_set_adapters_lora(self.ptr, ptrs, len(items), scales) != 0:
                raise _native.fail(LlamaError, "failed to set the LoRA adapters")
            self.loras = dict(items)
            # cached KV entries were computed without (or with other) adapters
            self.reset()

    # -- embeddings -----------------------------------------------------------------------------

    @property
    def pooling(self) -> str:
        with self._lock:
            return _POOLING_NAMES.get(lib.llama_pooling_type(self.ptr), "none")

    def embed_tokens(self, tokens: Sequence[int], *, normalize: bool = True) -> np.ndarray:
        """Embedding of a token sequence: (n_embd,) when pooled, (n_tokens, n_embd) if not."""
        if not self.params.embeddings:
            raise ContextError("embeddings need a context made with embeddings=True")
        tokens = self.model.tokenizer.check_tokens(tokens)
        if len(tokens) > self.n_batch:
            raise ContextFullError(
                f"{len(tokens)} tokens exceed n_batch={self.n_batch}, the most one embedding takes"
            )
        n_embd = int(self.model._native(lib.llama_model_n_embd_out)) or self.model.n_embd
        n_cls = self.model.n_cls_out or 1
        with self._lock:
            self.reset()
            pooled = self.pooling != "none"
            self._decode(tokens, 0, all_outputs=True, last=True)
            if pooled:
                width = n_cls if self.pooling == "rank" else n_embd
                rows = [self._floats(lib.llama_get_embeddings_seq(self.ptr, 0), width)]
            else:
                rows = [
                    self._floats(lib.llama_get_embeddings_ith(self.ptr, i), n_embd)
                    for i in range(len(tokens))
                ]
        out = np.stack(rows)
        if normalize and self.pooling != "rank":
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out = out / np.where(norms == 0, 1, norms)
        self.reset()
        return out[0] if pooled else out

    def _floats(self, ptr: Any, n: int) -> np.ndarray:
        if ptr == ffi.NULL:
            raise _native.fail(LlamaError, "the model produced no embeddings")
        return np.frombuffer(ffi.buffer(ptr, 4 * n), np.float32).copy()

    # -- state ----------------------------------------------------------------------------------

    def save_state(self) -> bytes:
        """The whole context state (KV cache and the tokens it holds) as bytes."""
        with self._lock:
            size = lib.llama_state_get_size(self.ptr)
            buf = ffi.new("uint8_t[]", size)
            written = lib.llama_state_get_data(self.ptr, buf, size)
            self._check_device()  # else the KV cache read back would be garbage
            n = len(self.tokens)
            # llama.cpp's state holds the KV cache but not the logits: keep the last ones too
            logits = self.logits().tobytes() if n else b""
            header = _STATE_MAGIC + struct.pack(f"<I{n}iI", n, *self.tokens, len(logits))
            return header + logits + ffi.buffer(buf, written)[:]

    def load_state(self, data: bytes) -> None:
        """Restore what save_state() returned (for the same model and context size).
        LlamaError if data is not such a state or does not fit this context."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"state data must be bytes, not {type(data).__name__}")
        data = bytes(data)
        if not data.startswith(_STATE_MAGIC) or len(data) < len(_STATE_MAGIC) + 4:
            raise LlamaError("not a llama-webgpu context state")
        (n,) = struct.unpack_from("<I", data, len(_STATE_MAGIC))
        start = len(_STATE_MAGIC) + 4
        if n > self.n_ctx or len(data) < start + 4 * n:
            raise LlamaError("the saved state does not fit this context")
        tokens = list(struct.unpack_from(f"<{n}i", data, start))
        start += 4 * n
        (n_logits,) = struct.unpack_from("<I", data, start)
        start += 4
        if n_logits not in (0, 4 * self.n_vocab) or len(data) < start + n_logits:
            raise LlamaError("the saved state is from another model")
        logits = np.frombuffer(data, np.float32, n_logits // 4, start).copy()
        body = data[start + n_logits :]
        with self._lock:
            self.reset()
            _native.take_native_errors()
            if lib.llama_state_set_data(self.ptr, body, len(body)) != len(body):
                self.reset()
                raise _native.fail(LlamaError, "the saved state could not be loaded")
            self.tokens = tokens
            self._restored_logits = logits if n_logits else None
            self._sampled_on_gpu = False

    def save_state_file(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_bytes(self.save_state())

    def load_state_file(self, path: str | os.PathLike[str]) -> None:
        self.load_state(Path(path).read_bytes())


def _free_batch(holder: Any) -> None:
    lib.llama_batch_free(holder[0])
