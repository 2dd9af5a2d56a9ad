"""What a GGUF file holds, read without loading the model, and whether a device can run it.

- `read_gguf(path)` reads the metadata and the tensor infos (gguf.h, no tensor data) into a
  `GGUFInfo`: architecture, parameter count, tensor bytes, the tensors per ggml type.
- `device_support(info, device)` asks ggml, for each ggml type among the model's tensors,
  whether the device runs MUL_MAT and GET_ROWS on those tensors: tiny tensor descriptors
  with the model's real shapes are built in a no-alloc ggml context and handed to
  `ggml_backend_dev_supports_op`. What a device does not support runs on the CPU.
- `memory_estimate(info, n_ctx)` adds the f16 KV cache for n_ctx tokens to the weights.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import _native
from ._native import c_str, ffi, lib
from .devices import Device
from .errors import ModelLoadError

_NUMPY_TYPES = {
    lib.GGUF_TYPE_UINT8: np.uint8,
    lib.GGUF_TYPE_INT8: np.int8,
    lib.GGUF_TYPE_UINT16: np.uint16,
    lib.GGUF_TYPE_INT16: np.int16,
    lib.GGUF_TYPE_UINT32: np.uint32,
    lib.GGUF_TYPE_INT32: np.int32,
    lib.GGUF_TYPE_UINT64: np.uint64,
    lib.GGUF_TYPE_INT64: np.int64,
    lib.GGUF_TYPE_FLOAT32: np.float32,
    lib.GGUF_TYPE_FLOAT64: np.float64,
    lib.GGUF_TYPE_BOOL: np.bool_,
}
_SCALAR_GETTERS = {
    lib.GGUF_TYPE_UINT8: lib.gguf_get_val_u8,
    lib.GGUF_TYPE_INT8: lib.gguf_get_val_i8,
    lib.GGUF_TYPE_UINT16: lib.gguf_get_val_u16,
    lib.GGUF_TYPE_INT16: lib.gguf_get_val_i16,
    lib.GGUF_TYPE_UINT32: lib.gguf_get_val_u32,
    lib.GGUF_TYPE_INT32: lib.gguf_get_val_i32,
    lib.GGUF_TYPE_UINT64: lib.gguf_get_val_u64,
    lib.GGUF_TYPE_INT64: lib.gguf_get_val_i64,
    lib.GGUF_TYPE_FLOAT32: lib.gguf_get_val_f32,
    lib.GGUF_TYPE_FLOAT64: lib.gguf_get_val_f64,
    lib.GGUF_TYPE_BOOL: lib.gguf_get_val_bool,
}
# general.file_type -> "Q4_1" etc., from llama.h's LLAMA_FTYPE_* names
FILE_TYPES = {
    getattr(lib, name): name.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_")
    for name in dir(lib)
    if name.startswith("LLAMA_FTYPE_") and name != "LLAMA_FTYPE_GUESSED"
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: str
    """ggml's type name, e.g. "q4_1", "f32"."""
    shape: tuple[int, ...]
    """ne, fastest-varying first (as ggml has it), trailing 1s dropped."""
    n_bytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class GGUFInfo:
    """The metadata and tensor infos of a GGUF file."""

    path: Path
    file_size: int
    version: int
    metadata: dict[str, Any]
    """Every key: numbers, strings, bools, and lists for arrays."""
    tensors: list[TensorInfo] = field(repr=False)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_key(self, suffix: str, default: Any = None) -> Any:
        """The value of "<architecture>.<suffix>", e.g. arch_key("block_count")."""
        return self.metadata.get(f"{self.architecture}.{suffix}", default)

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def n_bytes(self) -> int:
        """Bytes of tensor data (what llama.cpp calls the model size)."""
        return sum(t.n_bytes for t in self.tensors)

    @property
    def file_type(self) -> str | None:
        value = self.metadata.get("general.file_type")
        return None if value is None else FILE_TYPES.get(value, f"type {value}")

    @property
    def type_counts(self) -> dict[str, int]:
        """Tensors per ggml type, most common first: the quantization mix."""
        return dict(Counter(t.type for t in self.tensors).most_common())

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) and value else None


def _value(g: Any, key_id: int) -> Any:
    kind = lib.gguf_get_kv_type(g, key_id)
    if kind == lib.GGUF_TYPE_STRING:
        return c_str(lib.gguf_get_val_str(g, key_id))
    if kind != lib.GGUF_TYPE_ARRAY:
        value = _SCALAR_GETTERS[kind](g, key_id)
        return bool(value) if kind == lib.GGUF_TYPE_BOOL else value
    item = lib.gguf_get_arr_type(g, key_id)
    n = lib.gguf_get_arr_n(g, key_id)
    if item == lib.GGUF_TYPE_STRING:
        return [c_str(lib.gguf_get_arr_str(g, key_id, i)) for i in range(n)]
    dtype = _NUMPY_TYPES.get(item)
    if dtype is None or n == 0:
        return []  # nested arrays: gguf.h gives no access to them
    data = lib.gguf_get_arr_data(g, key_id)
    return np.frombuffer(ffi.buffer(data, n * np.dtype(dtype).itemsize), dtype).tolist()


def read_gguf(path: str | os.PathLike[str]) -> GGUFInfo:
    """Read a GGUF file's metadata and tensor infos (not the tensor data)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    _native.init()
    params = ffi.new("struct gguf_init_params *")
    params.no_alloc = True
    params.ctx = ffi.NULL
    _native.take_native_errors()
    g = lib.gguf_init_from_file(os.fsencode(path), params[0])
    if g == ffi.NULL:
        raise _native.fail(ModelLoadError, f"{path} is not a readable GGUF file")
    try:
        metadata = {
            c_str(lib.gguf_get_key(g, i)): _value(g, i) for i in range(lib.gguf_get_n_kv(g))
        }
        tensors = []
        for i in range(lib.gguf_get_n_tensors(g)):
            ne = lib.gguf_get_tensor_ne(g, i)
            shape = [int(ne[d]) for d in range(4)]
            while len(shape) > 1 and shape[-1] == 1:
                shape.pop()
            tensors.append(
                TensorInfo(
                    name=c_str(lib.gguf_get_tensor_name(g, i)),
                    type=c_str(lib.ggml_type_name(lib.gguf_get_tensor_type(g, i))),
                    shape=tuple(shape),
                    n_bytes=int(lib.gguf_get_tensor_size(g, i)),
                )
            )
        version = int(lib.gguf_get_version(g))
    finally:
        lib.gguf_free(g)
    return GGUFInfo(path, path.stat().st_size, version, metadata, tensors)


# -- device support -------------------------------------------------------------------------

_TYPES_BY_NAME = {c_str(lib.ggml_type_name(t)): t for t in range(lib.GGML_TYPE_COUNT)}
PROMPT_BATCH = 512
"""The src1 width checked for prompt processing (llama.cpp's default n_ubatch)."""


@dataclass(frozen=True)
class TypeSupport:
    """Whether a device runs the operations on one ggml type's tensors of a model."""

    type: str
    tensors: int
    n_bytes: int
    matrices: int
    """Tensors of two or more dimensions, used as MUL_MAT weights."""
    mul_mat: bool | None
    """True if MUL_MAT runs on the device for every matrix of this type (at batch 1 and at
    PROMPT_BATCH); None if the type has no matrices."""
    get_rows: bool
    """GET_ROWS (row lookup, as for token embeddings) of this type."""
    fallback: tuple[str, ...] = ()
    """The matrices whose MUL_MAT the device cannot run (they run on the CPU)."""


def _ggml_dev(device: Device | None) -> Any:
    from .model import _ggml_device

    if device is not None:
        return _ggml_device(device)
    dev = lib.ggml_backend_dev_by_type(lib.GGML_BACKEND_DEVICE_TYPE_CPU)
    if dev == ffi.NULL:
        raise ModelLoadError("no CPU backend is loaded")
    return dev


def device_support(info: GGUFInfo, device: Device | None) -> list[TypeSupport]:
    """For each ggml type in the model (most common first): does device (None: the CPU) run
    MUL_MAT on those tensors, and GET_ROWS on that type? Asked of ggml with the real shapes,
    so tensors beyond the device's buffer limits show up as unsupported."""
    _native.init()
    dev = _ggml_dev(device)
    params = ffi.new("struct ggml_init_params *")
    params.mem_size = lib.ggml_tensor_overhead() * 8
    params.mem_buffer = ffi.NULL
    params.no_alloc = True

    def supported(build: Any) -> bool:
        ctx = lib.ggml_init(params[0])
        if ctx == ffi.NULL:
            raise MemoryError("ggml_init failed")
        try:
            return bool(lib.ggml_backend_dev_supports_op(dev, build(ctx)))
        finally:
            lib.ggml_free(ctx)

    def weight(ctx: Any, t: TensorInfo) -> Any:
        ne = list(t.shape) + [1] * (4 - len(t.shape))
        return lib.ggml_new_tensor_4d(ctx, _TYPES_BY_NAME[t.type], *ne)

    def mul_mat(t: TensorInfo, batch: int) -> bool:
        ne = list(t.shape) + [1] * (4 - len(t.shape))
        # the input and the result hold batch rows; more than 2**63 elements make ggml abort
        # (a crafted file's tensor can be that large): no device multiplies those
        if max(ne[0], ne[1]) * batch * ne[2] * ne[3] >= 2**63:
            return False

        def build(ctx: Any) -> Any:
            w = weight(ctx, t)
            x = lib.ggml_new_tensor_4d(ctx, lib.GGML_TYPE_F32, ne[0], batch, ne[2], ne[3])
            return lib.ggml_mul_mat(ctx, w, x)

        return supported(build)

    def get_rows(t: TensorInfo) -> bool:
        def build(ctx: Any) -> Any:
            # one row index per matrix of a 3-D/4-D tensor (ggml_get_rows aborts otherwise)
            ne = list(t.shape) + [1] * (4 - len(t.shape))
            rows = lib.ggml_new_tensor_3d(ctx, lib.GGML_TYPE_I32, 1, ne[2], ne[3])
            return lib.ggml_get_rows(ctx, weight(ctx, t), rows)

        return supported(build)

    by_type: dict[str, list[TensorInfo]] = {}
    for t in info.tensors:
        if t.type in _TYPES_BY_NAME:
            by_type.setdefault(t.type, []).append(t)
    out = []
    for name in sorted(by_type, key=lambda k: -len(by_type[k])):
        group = by_type[name]
        # empty tensors (a zero dimension) compute nothing, and ggml aborts on some of their
        # shapes (division by zero, "transposed" strides): only the others are checked
        filled = [t for t in group if 0 not in t.shape]
        matrices = [t for t in filled if len(t.shape) >= 2]
        fallback = tuple(
            t.name for t in matrices if not (mul_mat(t, 1) and mul_mat(t, PROMPT_BATCH))
        )
        out.append(
            TypeSupport(
                type=name,
                tensors=len(group),
                n_bytes=sum(t.n_bytes for t in group),
                matrices=len(matrices),
                mul_mat=(not fallback) if matrices else None,
                get_rows=get_rows(min(filled, key=lambda t: t.n_bytes)) if filled else True,
                fallback=fallback,
            )
        )
    return out


# -- memory ---------------------------------------------------------------------------------


def _per_layer(value: Any, n_layer: int, default: int) -> list[int]:
    if isinstance(value, list):
        return [int(v) for v in value[:n_layer]] + [default] * max(0, n_layer - len(value))
    return [int(value if value is not None else default)] * n_layer


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    n_ctx: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache


def memory_estimate(info: GGUFInfo, n_ctx: int) -> MemoryEstimate:
    """Weights plus an f16 KV cache for n_ctx tokens (n_ctx 0: the training context length),
    2 bytes * n_ctx * sum over layers of n_head_kv * (key length + value length). Compute
    buffers come on top; sliding-window layers need less than this."""
    n_ctx_train = int(info.arch_key("context_length", 0) or 0)
    if n_ctx <= 0 or (n_ctx_train and n_ctx > n_ctx_train):
        n_ctx = n_ctx_train or n_ctx
    n_layer = int(info.arch_key("block_count", 0) or 0)
    n_embd = int(info.arch_key("embedding_length", 0) or 0)
    heads = _per_layer(info.arch_key("attention.head_count"), n_layer, 0)
    kv_value = info.arch_key("attention.head_count_kv")
    # no head_count_kv: as many KV heads as heads; 0 for a layer: no KV cache there
    kv_heads = heads if kv_value is None else _per_layer(kv_value, n_layer, 0)
    kv = 0
    for n_head, n_head_kv in zip(heads, kv_heads, strict=True):
        head_dim = n_embd // n_head if n_head else 0
        k_len = int(info.arch_key("attention.key_length", head_dim) or 0)
        v_len = int(info.arch_key("attention.value_length", head_dim) or 0)
        kv += n_head_kv * (k_len + v_len)
    return MemoryEstimate(weights=info.n_bytes, kv_cache=2 * n_ctx * kv, n_ctx=n_ctx)


# -- reports --------------------------------------------------------------------------------


def format_size(n: float) -> str:
    """Bytes as "512 B", "1.50 KiB" ... "2.00 GiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


def format_count(n: int) -> str:
    """A parameter count as "134.52 M" or "1.24 B"."""
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def format_value(value: Any, items: int = 8) -> str:
    """A metadata value on one line: strings quoted, arrays as their length and first items."""
    if isinstance(value, list):
        kind = type(value[0]).__name__ if value else "?"
        head = json.dumps(value[:items], ensure_ascii=False)
        return f"[{len(value)} x {kind}] {head[:-1]}{', ...]' if len(value) > items else ']'}"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def summary(info: GGUFInfo, device: Device | None, n_ctx: int = 4096) -> dict[str, Any]:
    """The facts report() prints, as a JSON-ready dict (metadata not included)."""
    memory = memory_estimate(info, n_ctx)
    return {
        "path": str(info.path),
        "architecture": info.architecture,
        "name": info.metadata.get("general.name"),
        "n_params": info.n_params,
        "size": info.n_bytes,
        "file_size": info.file_size,
        "file_type": info.file_type,
        "context_length": info.arch_key("context_length"),
        "quantization": info.type_counts,
        "chat_template": info.chat_template,
        "device": asdict(device) if device else {"backend": "CPU", "name": "CPU"},
        "support": [asdict(s) for s in device_support(info, device)],
        "memory": {**asdict(memory), "total": memory.total},
    }


def report(info: GGUFInfo, device: Device | None, n_ctx: int = 4096) -> str:
    """A readable summary of the model and a pre-flight check for device (None: the CPU):
    which tensor types it runs MUL_MAT / GET_ROWS on, what falls back to the CPU, and the
    memory needed for n_ctx tokens of context."""
    support = device_support(info, device)
    memory = memory_estimate(info, n_ctx)
    template = info.chat_template
    heads = info.arch_key("attention.head_count", "?")
    kv_heads = info.arch_key("attention.head_count_kv", heads)
    shape = (
        f"{info.arch_key('block_count', '?')}, embedding {info.arch_key('embedding_length', '?')}"
        f", heads {heads} (KV {kv_heads})"
    )
    facts = [
        ("file", f"{info.path} (GGUF v{info.version}, {format_size(info.file_size)})"),
        ("name", str(info.metadata.get("general.name", "?"))),
        ("architecture", info.architecture),
        ("parameters", f"{format_count(info.n_params)} ({info.n_params})"),
        ("size", f"{format_size(info.n_bytes)} of tensor data"),
        ("file type", info.file_type or "?"),
        ("context length", f"{info.arch_key('context_length', '?')} (training)"),
        ("layers", shape),
        ("chat template", f"yes: {template.splitlines()[0][:72]}" if template else "none"),
    ]
    lines = [f"{label + ':':<16}{text}" for label, text in facts]
    lines.append("quantization mix:")
    for s in support:
        tensors = "tensor" if s.tensors == 1 else "tensors"
        lines.append(f"  {s.type:<8}{s.tensors:>5} {tensors:<7} {format_size(s.n_bytes):>12}")

    where = f"{device.backend} ({device.description})" if device else "CPU"
    lines += ["", f"on {where}:", "  type      MUL_MAT  GET_ROWS"]
    for s in support:
        if s.mul_mat is None:
            mm = "-"
        elif not s.fallback:
            mm = "yes"
        elif len(s.fallback) == s.matrices:
            mm = "no"
        else:
            mm = f"{s.matrices - len(s.fallback)} of {s.matrices}"
        lines.append(f"  {s.type:<10}{mm:<9}{'yes' if s.get_rows else 'no'}")
    limits = (device.adapter or {}).get("limits", {}) if device else {}
    binding = limits.get("max_storage_buffer_binding_size")
    sizes = {t.name: t.n_bytes for t in info.tensors}
    fallback = [(name, s.type) for s in support for name in s.fallback]
    if fallback:
        what = "matrix" if len(fallback) == 1 else "matrices"
        lines.append(f"  {len(fallback)} {what} would be multiplied on the CPU:")
        for name, kind in fallback:
            why = ""
            if binding and sizes[name] > binding:
                why = f", over the max storage binding size of {format_size(binding)}"
            lines.append(f"    {name} ({kind}, {format_size(sizes[name])}{why})")
    elif device is not None:
        lines.append("  every matrix multiplication of the model runs on this device")
    lines += [
        "",
        f"memory for {memory.n_ctx} tokens of context: {format_size(memory.total)}",
        f"  {format_size(memory.weights)} weights + {format_size(memory.kv_cache)} KV cache (f16),"
        " plus compute buffers",
    ]
    if device is not None and memory.total > device.memory_total:
        lines.append(f"  more than the device's {format_size(device.memory_total)}")
    return "\n".join(lines)


__all__ = [
    "GGUFInfo",
    "MemoryEstimate",
    "TensorInfo",
    "TypeSupport",
    "device_support",
    "format_count",
    "format_size",
    "format_value",
    "memory_estimate",
    "read_gguf",
    "report",
    "summary",
]
