"""Craft broken GGUF files from real ones, for the loader's hostile-input tests.

`Gguf.parse(path)` reads a file's header (key-value pairs, tensor infos) into plain Python objects
that can be changed and written back with `Gguf.write(dst)`. Written files hold the edited header
and a data section of the original length that is sparse (all zeros, no disk used): the loader
checks are about the header, and a full CPU load reads zeros as happily as weights.

`crafted(models)` builds one file per known vulnerability class (tests/test_hostile_gguf.py);
`mutants(src, seed)` yields mutated copies (truncations, wrong magic or version, bit flips and
smashed fields in the header, metadata and tensor-info regions) for tools/gguf_mutants.py.

No third-party GGUF code is used: the writer must be able to produce files that no well-behaved
writer would (absurd lengths, wrong types, unaligned offsets).
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF value types (gguf.h)
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = (
    range(13)
)
SCALAR_FORMATS = {
    UINT8: "<B",
    INT8: "<b",
    UINT16: "<H",
    INT16: "<h",
    UINT32: "<I",
    INT32: "<i",
    FLOAT32: "<f",
    BOOL: "<B",
    UINT64: "<Q",
    INT64: "<q",
    FLOAT64: "<d",
}
NUMPY_TYPES = {t: np.dtype(f) for t, f in SCALAR_FORMATS.items()}
TOKEN_TYPE_BYTE = 6  # llama_token_type: LLAMA_TOKEN_TYPE_BYTE


@dataclass
class KV:
    key: str
    type: int
    value: Any
    """A scalar, bytes for a string, list[bytes] for a string array, an ndarray for the rest."""
    item_type: int = -1
    """The element type of an ARRAY."""


@dataclass
class TensorInfo:
    name: bytes
    dims: list[int]
    ggml_type: int
    offset: int


@dataclass
class Span:
    """Where one field lies in a serialized header: [start, end) and its label."""

    label: str
    start: int
    end: int


@dataclass
class Gguf:
    source: Path
    version: int
    kvs: list[KV]
    tensors: list[TensorInfo]
    data_offset: int
    """Where the data section starts in the source file."""
    data_size: int
    """Bytes from data_offset to the end of the source file."""
    spans: list[Span] = field(default_factory=list)
    """Fields of the source header (filled by parse)."""

    # -- reading ------------------------------------------------------------------------------

    @classmethod
    def parse(cls, path: str | os.PathLike[str]) -> Gguf:
        path = Path(path)
        buf = path.read_bytes() if path.stat().st_size < (64 << 20) else _read_prefix(path)
        reader = _Reader(buf)
        if reader.raw(4, "magic") != MAGIC:
            raise ValueError(f"{path} is not a GGUF file")
        version = reader.scalar(UINT32, "version")
        n_tensors = reader.scalar(UINT64, "n_tensors")
        n_kv = reader.scalar(UINT64, "n_kv")
        kvs = [reader.kv(i) for i in range(n_kv)]
        tensors = [reader.tensor_info(i) for i in range(n_tensors)]
        align = _alignment(kvs)
        data_offset = -(-reader.pos // align) * align
        size = path.stat().st_size
        return cls(path, version, kvs, tensors, data_offset, size - data_offset, reader.spans)

    def kv(self, key: str) -> KV:
        for kv in self.kvs:
            if kv.key == key:
                return kv
        raise KeyError(key)

    def set(self, key: str, type_: int, value: Any, item_type: int = -1) -> Gguf:
        """Set (replace or append) one key-value pair; returns self."""
        new = KV(key, type_, value, item_type)
        for i, kv in enumerate(self.kvs):
            if kv.key == key:
                self.kvs[i] = new
                return self
        self.kvs.append(new)
        return self

    def drop(self, key: str) -> Gguf:
        self.kvs = [kv for kv in self.kvs if kv.key != key]
        return self

    def copy(self) -> Gguf:
        return replace(
            self,
            kvs=[replace(kv) for kv in self.kvs],
            tensors=[replace(t, dims=list(t.dims)) for t in self.tensors],
            spans=list(self.spans),
        )

    # -- writing ------------------------------------------------------------------------------

    def header(self) -> tuple[bytes, list[Span]]:
        """The serialized header (magic to the end of the tensor infos) and its fields."""
        w = _Writer()
        w.raw(MAGIC, "magic")
        w.scalar(UINT32, self.version, "version")
        w.scalar(UINT64, len(self.tensors), "n_tensors")
        w.scalar(UINT64, len(self.kvs), "n_kv")
        for i, kv in enumerate(self.kvs):
            w.kv(i, kv)
        for i, t in enumerate(self.tensors):
            w.tensor_info(i, t)
        return bytes(w.buf), w.spans

    def write(self, dst: str | os.PathLike[str], align: int | None = None) -> Path:
        """Write the header, padding to `align` (the file's alignment by default), and a sparse
        data section as long as the source's."""
        head, _ = self.header()
        return write_sparse(dst, head, align or _alignment(self.kvs), self.data_size)


def write_sparse(dst: str | os.PathLike[str], head: bytes, align: int, data_size: int) -> Path:
    dst = Path(dst)
    padded = -(-len(head) // align) * align
    with open(dst, "wb") as f:
        f.write(head)
        f.write(b"\0" * (padded - len(head)))
        f.truncate(padded + data_size)
    return dst


def _read_prefix(path: Path) -> bytes:
    """Enough of a big file to hold its header (grown until it parses)."""
    size = 16 << 20
    while True:
        with open(path, "rb") as f:
            buf = f.read(size)
        try:
            reader = _Reader(buf)
            reader.raw(4, "magic")
            reader.scalar(UINT32, "version")
            n_tensors = reader.scalar(UINT64, "n_tensors")
            n_kv = reader.scalar(UINT64, "n_kv")
            for i in range(n_kv):
                reader.kv(i)
            for i in range(n_tensors):
                reader.tensor_info(i)
            return buf
        except struct.error:
            if len(buf) < size:
                raise
            size *= 4


def _alignment(kvs: list[KV]) -> int:
    for kv in kvs:
        if kv.key == "general.alignment" and kv.type == UINT32 and kv.value > 0:
            return kv.value
    return DEFAULT_ALIGNMENT


class _Reader:
    def __init__(self, buf: bytes):
        self.buf = memoryview(buf)
        self.pos = 0
        self.spans: list[Span] = []

    def _span(self, label: str, start: int) -> None:
        self.spans.append(Span(label, start, self.pos))

    def raw(self, n: int, label: str) -> bytes:
        start = self.pos
        if start + n > len(self.buf):
            raise struct.error("truncated")
        self.pos += n
        self._span(label, start)
        return bytes(self.buf[start : self.pos])

    def scalar(self, type_: int, label: str) -> Any:
        fmt = SCALAR_FORMATS[type_]
        start = self.pos
        (value,) = struct.unpack_from(fmt, self.buf, start)
        self.pos += struct.calcsize(fmt)
        self._span(label, start)
        return value

    def string(self, label: str) -> bytes:
        n = self.scalar(UINT64, f"{label}.len")
        return self.raw(n, label)

    def kv(self, i: int) -> KV:
        key = self.string(f"kv[{i}].key").decode()
        type_ = self.scalar(UINT32, f"kv[{i}].type")
        if type_ == STRING:
            return KV(key, type_, self.string(f"kv[{i}].value"))
        if type_ != ARRAY:
            return KV(key, type_, self.scalar(type_, f"kv[{i}].value"))
        item = self.scalar(UINT32, f"kv[{i}].item_type")
        n = self.scalar(UINT64, f"kv[{i}].n")
        if item == STRING:
            start = self.pos
            items = []
            buf, pos = self.buf, self.pos
            for _ in range(n):
                (length,) = struct.unpack_from("<Q", buf, pos)
                items.append(bytes(buf[pos + 8 : pos + 8 + length]))
                pos += 8 + length
            if pos > len(buf):
                raise struct.error("truncated")
            self.pos = pos
            self._span(f"kv[{i}].value", start)
            return KV(key, type_, items, item)
        dtype = NUMPY_TYPES[item]
        data = self.raw(n * dtype.itemsize, f"kv[{i}].value")
        return KV(key, type_, np.frombuffer(data, dtype).copy(), item)

    def tensor_info(self, i: int) -> TensorInfo:
        name = self.string(f"tensor[{i}].name")
        n_dims = self.scalar(UINT32, f"tensor[{i}].n_dims")
        dims = [self.scalar(INT64, f"tensor[{i}].ne[{d}]") for d in range(n_dims)]
        ggml_type = self.scalar(INT32, f"tensor[{i}].type")
        offset = self.scalar(UINT64, f"tensor[{i}].offset")
        return TensorInfo(name, dims, ggml_type, offset)


class _Writer:
    def __init__(self) -> None:
        self.buf = bytearray()
        self.spans: list[Span] = []

    def raw(self, data: bytes, label: str) -> None:
        start = len(self.buf)
        self.buf += data
        self.spans.append(Span(label, start, len(self.buf)))

    def scalar(self, type_: int, value: Any, label: str) -> None:
        self.raw(struct.pack(SCALAR_FORMATS[type_], value), label)

    def string(self, value: bytes, label: str) -> None:
        self.scalar(UINT64, len(value), f"{label}.len")
        self.raw(value, label)

    def kv(self, i: int, kv: KV) -> None:
        self.string(kv.key.encode(), f"kv[{i}].key")
        self.scalar(UINT32, kv.type, f"kv[{i}].type")
        if kv.type == STRING:
            self.string(kv.value, f"kv[{i}].value")
        elif kv.type != ARRAY:
            self.scalar(kv.type, kv.value, f"kv[{i}].value")
        else:
            self.scalar(UINT32, kv.item_type, f"kv[{i}].item_type")
            self.scalar(UINT64, len(kv.value), f"kv[{i}].n")
            if kv.item_type == STRING:
                self.raw(
                    b"".join(struct.pack("<Q", len(s)) + s for s in kv.value), f"kv[{i}].value"
                )
            else:
                arr = np.asarray(kv.value, NUMPY_TYPES[kv.item_type])
                self.raw(arr.tobytes(), f"kv[{i}].value")

    def tensor_info(self, i: int, t: TensorInfo) -> None:
        self.string(t.name, f"tensor[{i}].name")
        self.scalar(UINT32, len(t.dims), f"tensor[{i}].n_dims")
        for d, ne in enumerate(t.dims):
            self.scalar(INT64, ne, f"tensor[{i}].ne[{d}]")
        self.scalar(INT32, t.ggml_type, f"tensor[{i}].type")
        self.scalar(UINT64, t.offset, f"tensor[{i}].offset")


# -- the crafted corpus: one file per known vulnerability class ---------------------------------


@dataclass(frozen=True)
class Crafted:
    """A broken file and what loading it must do."""

    name: str
    path: Path
    mode: str
    """How it is loaded: "cpu" (all weights), "vocab" (vocab_only) or "gguf" (header only)."""
    expect: str
    """A substring the error message must contain (case-insensitive)."""


def _patch_field(head: bytes, spans: list[Span], label: str, fmt: str, value: int) -> bytes:
    span = next(s for s in spans if s.label == label)
    out = bytearray(head)
    struct.pack_into(fmt, out, span.start, value)
    return bytes(out)


def crafted(smol: Gguf, gemma: Gguf, out: Path) -> list[Crafted]:
    """The crafted corpus, written into `out`. smol: SmolLM2 (BPE vocabulary, no scores);
    gemma: Gemma 3 (SPM vocabulary with scores), both as parsed by Gguf.parse."""
    cases: list[Crafted] = []

    def add(name: str, g: Gguf, mode: str, expect: str, align: int | None = None) -> None:
        cases.append(Crafted(name, g.write(out / f"{name}.gguf", align), mode, expect))

    def add_raw(name: str, g: Gguf, head: bytes, mode: str, expect: str) -> None:
        path = write_sparse(out / f"{name}.gguf", head, _alignment(g.kvs), g.data_size)
        cases.append(Crafted(name, path, mode, expect))

    arch = smol.kv("general.architecture").value.decode()
    n_tokens = len(smol.kv("tokenizer.ggml.tokens").value)

    # 1. layer counts beyond LLAMA_MAX_LAYERS (512), and zero
    add(
        "layer_count_beyond_max",
        smol.copy().set(f"{arch}.block_count", UINT32, 4096),
        "cpu",
        "block_count",
    )
    add("layer_count_zero", smol.copy().set(f"{arch}.block_count", UINT32, 0), "cpu", "block_count")
    add(
        "expert_count_beyond_max",
        smol.copy().set(f"{arch}.expert_count", UINT32, 100000),
        "cpu",
        "expert_count",
    )
    g = (
        smol.copy()
        .set(f"{arch}.expert_count", UINT32, 4)
        .set(f"{arch}.expert_used_count", UINT32, 8)
    )
    add("experts_used_beyond_count", g, "cpu", "expert")

    g = smol.copy().set(f"{arch}.nextn_predict_layers", UINT32, 31)
    add("nextn_layers_beyond_block_count", g, "cpu", "nextn_predict_layers")
    # a GGML_ASSERT that no check of ours precedes: the test of the systematic answer (an assert
    # while loading throws, patches/0007)
    g = smol.copy().set(f"{arch}.rope.scaling.type", STRING, b"bogus")
    add("rope_scaling_type_unknown", g, "cpu", "GGML_ASSERT")

    # 2. PLaMo-2 style vocabulary whose byte tokens have negative or non-hex digits
    for name, bad in (
        ("plamo2_byte_token_negative_hex", b"<0x-1>"),
        ("plamo2_byte_token_not_hex", b"<0xZZ>"),
    ):
        g = smol.copy()
        tokens = list(g.kv("tokenizer.ggml.tokens").value)
        types = np.array(g.kv("tokenizer.ggml.token_type").value, np.int32)
        first = 1000
        for b in range(256):
            tokens[first + b] = b"<0x%02X>" % b
            types[first + b] = TOKEN_TYPE_BYTE
        tokens[first + 0x41] = bad
        g.set("tokenizer.ggml.tokens", ARRAY, tokens, STRING)
        g.set("tokenizer.ggml.token_type", ARRAY, types, INT32)
        g.set("tokenizer.ggml.model", STRING, b"plamo2").drop("tokenizer.ggml.merges")
        add(name, g, "vocab", "byte token")
    # the same damage in an SPM vocabulary (Gemma's), where byte tokens are decoded on use
    g = gemma.copy()
    tokens = list(g.kv("tokenizer.ggml.tokens").value)
    i = tokens.index(b"<0x0A>")
    tokens[i] = b"<0x-A>"
    add(
        "spm_byte_token_not_hex", g.set("tokenizer.ggml.tokens", ARRAY, tokens, STRING), "vocab", ""
    )

    # 3. tokenizer arrays with a narrower element type than the loader reads
    scores = gemma.kv("tokenizer.ggml.scores").value
    for name, item in (("scores_as_int16", INT16), ("scores_as_uint8", UINT8)):
        g = gemma.copy().set(
            "tokenizer.ggml.scores",
            ARRAY,
            np.clip(scores, -100, 100).astype(NUMPY_TYPES[item]),
            item,
        )
        add(name, g, "vocab", "tokenizer.ggml.scores")
    for name, item in (("token_type_as_uint8", UINT8), ("token_type_as_int16", INT16)):
        types = smol.kv("tokenizer.ggml.token_type").value.astype(NUMPY_TYPES[item])
        g = smol.copy().set("tokenizer.ggml.token_type", ARRAY, types, item)
        add(name, g, "vocab", "tokenizer.ggml.token_type")
    g = smol.copy().set("tokenizer.ggml.token_type", ARRAY, np.zeros(n_tokens, np.uint8), BOOL)
    add("token_type_as_bool", g, "vocab", "tokenizer.ggml.token_type")

    # 4. general.alignment of the wrong type, zero, or not a power of two
    add(
        "alignment_as_uint64",
        smol.copy().set("general.alignment", UINT64, 32),
        "gguf",
        "general.alignment",
    )
    add(
        "alignment_as_string",
        smol.copy().set("general.alignment", STRING, b"32"),
        "gguf",
        "general.alignment",
    )
    add(
        "alignment_zero",
        smol.copy().set("general.alignment", UINT32, 0),
        "gguf",
        "alignment",
        align=32,
    )
    add(
        "alignment_not_power_of_two",
        smol.copy().set("general.alignment", UINT32, 48),
        "gguf",
        "power of 2",
        align=48,
    )

    # 5. tensor dimensions whose element count or byte size overflows
    g = smol.copy()
    g.tensors[0].dims = [1 << 40, 1 << 40]
    add("tensor_elements_overflow", g, "gguf", "overflow")
    g = smol.copy()
    t = next(t for t in g.tensors if t.ggml_type == 0)  # an F32 tensor: 4 bytes an element
    t.dims = [1 << 62]
    add("tensor_bytes_overflow", g, "gguf", "size")
    g = smol.copy()
    g.tensors[0].dims = [-32, 576]
    add("tensor_negative_dimension", g, "gguf", "invalid number of elements")
    g = smol.copy()
    g.tensors[0].dims = [32, 1, 1, 1, 1]
    add("tensor_too_many_dimensions", g, "gguf", "number of dimensions")

    # 6. strings and arrays whose declared length is absurd
    head, spans = smol.header()
    add_raw(
        "key_length_absurd",
        smol,
        _patch_field(head, spans, "kv[2].key.len", "<Q", 1 << 62),
        "gguf",
        "string length",
    )
    add_raw(
        "string_value_length_absurd",
        smol,
        _patch_field(head, spans, "kv[2].value.len", "<Q", (1 << 64) - 1),
        "gguf",
        "string length",
    )
    tok = next(i for i, kv in enumerate(smol.kvs) if kv.key == "tokenizer.ggml.tokens")
    add_raw(
        "token_array_length_absurd",
        smol,
        _patch_field(head, spans, f"kv[{tok}].n", "<Q", 1 << 40),
        "gguf",
        "key-value",
    )
    typ = next(i for i, kv in enumerate(smol.kvs) if kv.key == "tokenizer.ggml.token_type")
    add_raw(
        "int_array_length_beyond_file",
        smol,
        _patch_field(head, spans, f"kv[{typ}].n", "<Q", 1 << 29),
        "gguf",
        "key-value",
    )
    add_raw(
        "tensor_name_length_absurd",
        smol,
        _patch_field(head, spans, "tensor[3].name.len", "<Q", 1 << 63),
        "gguf",
        "tensor info",
    )
    add_raw(
        "kv_count_absurd",
        smol,
        _patch_field(head, spans, "n_kv", "<Q", 1 << 61),
        "gguf",
        "key value pairs",
    )
    add_raw(
        "tensor_count_absurd",
        smol,
        _patch_field(head, spans, "n_tensors", "<Q", 1 << 62),
        "gguf",
        "tensors",
    )

    # 7. tensor data past the end of the file
    g = smol.copy()
    g.tensors[-1].offset += 1 << 40
    add("tensor_offset_past_end", g, "gguf", "offset")
    g = smol.copy()
    g.data_size -= 4096
    add("file_shorter_than_tensor_data", g, "cpu", "file bounds")
    g = smol.copy()
    g.data_size = 0
    add("tensor_data_missing", g, "cpu", "file bounds")

    # 8. vocabulary arrays of inconsistent lengths
    g = gemma.copy()
    g.set("tokenizer.ggml.scores", ARRAY, scores[: len(scores) // 2], FLOAT32)
    add("scores_shorter_than_tokens", g, "vocab", "scores")
    g = smol.copy()
    types = smol.kv("tokenizer.ggml.token_type").value
    g.set("tokenizer.ggml.token_type", ARRAY, types[:100], INT32)
    add("token_types_shorter_than_tokens", g, "vocab", "toktypes")
    g = smol.copy()
    tokens = list(g.kv("tokenizer.ggml.tokens").value)
    g.set("tokenizer.ggml.tokens", ARRAY, tokens[:1000], STRING)
    add("tokens_shorter_than_embedding", g, "cpu", "token_embd")
    g = smol.copy()
    tokens = list(g.kv("tokenizer.ggml.tokens").value)
    tokens[500] = tokens[400]
    add(
        "duplicate_tokens",
        g.set("tokenizer.ggml.tokens", ARRAY, tokens, STRING),
        "vocab",
        "duplicate",
    )
    g = smol.copy().set("tokenizer.ggml.bos_token_id", UINT32, n_tokens + 10)
    add("special_token_id_out_of_range", g, "vocab", "")
    return cases


# -- mutants ---------------------------------------------------------------------------------

MAGICS = [b"GGUG", b"gguf", b"GGML", b"\0\0\0\0", b"FUGG", b"GGJT"]
VERSIONS = [0, 1, 4, 0xFFFF, 0x03000000, 0xFFFFFFFF]
SPECIAL_VALUES = [
    0,
    1,
    0xFF,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    1 << 32,
    1 << 62,
    1 << 63,
    (1 << 64) - 1,
]


@dataclass(frozen=True)
class Mutant:
    name: str
    build: Callable[[Path], Path]


def mutants(src: Gguf, seed: int = 0) -> Iterator[Mutant]:
    """An endless, deterministic stream of mutated copies of `src` (cycling through the kinds:
    truncation, magic, version, bit flips in each region, smashed length/count/type fields)."""
    head = _source_header(src)
    spans = src.spans
    kv_start = next(s.start for s in spans if s.label.startswith("kv["))
    ti_start = next(s.start for s in spans if s.label.startswith("tensor["))
    regions = {
        "header": (0, kv_start),
        "metadata": (kv_start, ti_start),
        "tensorinfo": (ti_start, len(head)),
    }
    numeric = [
        s
        for s in spans
        if s.label.endswith(
            (".len", ".n", ".type", ".item_type", ".n_dims", ".offset", "n_kv", "n_tensors")
        )
        or ".ne[" in s.label
    ]
    size = src.data_offset + src.data_size
    rng = random.Random(seed)
    n = 0

    def emit(name: str, data: bytes, total: int) -> Mutant:
        full = f"{src.source.stem[:12]}-{n:04d}-{name}"

        def build(dst: Path) -> Path:
            path = dst / f"{full}.gguf"
            with open(path, "wb") as f:
                f.write(data)
                f.truncate(total)
            return path

        return Mutant(full, build)

    padded = head + b"\0" * (src.data_offset - len(head))
    while True:
        kind = n % 6
        if kind == 0:  # truncation: within the header, the metadata, the tensor infos, the data
            where = rng.choice(["header", "metadata", "tensorinfo", "data", "data"])
            if where == "data":
                cut = rng.randrange(src.data_offset, size)
            else:
                lo, hi = regions[where]
                cut = rng.randrange(lo, hi)
            yield emit(f"truncate-{where}-{cut}", padded[:cut], cut)
        elif kind == 1:  # wrong magic or version
            out = bytearray(padded)
            if rng.random() < 0.5:
                magic = rng.choice(MAGICS)
                out[0:4] = magic
                label = f"magic-{magic.hex()}"
            else:
                version = rng.choice(VERSIONS)
                struct.pack_into("<I", out, 4, version)
                label = f"version-{version:#x}"
            yield emit(label, bytes(out), size)
        elif kind in (2, 3, 4):  # bit flips in one region
            where = ("header", "metadata", "tensorinfo")[kind - 2]
            lo, hi = regions[where]
            out = bytearray(padded)
            flips = rng.randint(1, 8)
            for _ in range(flips):
                pos = rng.randrange(lo, hi)
                out[pos] ^= 1 << rng.randrange(8)
            yield emit(f"flip-{where}-{flips}", bytes(out), size)
        else:  # a length, count, type, dimension or offset field set to an extreme value
            span = rng.choice(numeric)
            width = span.end - span.start
            value = rng.choice(SPECIAL_VALUES) & ((1 << (8 * width)) - 1)
            out = bytearray(padded)
            out[span.start : span.end] = value.to_bytes(width, "little")
            yield emit(f"field-{span.label}-{value:#x}", bytes(out), size)
        n += 1


def _source_header(src: Gguf) -> bytes:
    with open(src.source, "rb") as f:
        return f.read(src.spans[-1].end)
