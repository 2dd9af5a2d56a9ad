"""Regressions for what the fuzzers (fuzz/) found in llama-webgpu's own code: each fixed-* file
used to abort the process or give wrong results; now it raises a documented exception or works.
The header-only ones are written at test time by tools/gguf_craft.py (FIXED below, the fields that
mattered in the fuzzer's input). Those the fuzzer made by changing a few bytes of one of its seeds
are written at test time too, as that seed (fuzz/seeds.py) with the same bytes changed (MUTATED
below, checked against the fuzzer's file's sha256). native-ugm-bad-charsmap.gguf and
native-wpm-byte-token.gguf in tests/data/fuzz, hundreds of bytes away from any seed, are the
fuzzer's own outputs. The native-* ones are llama.cpp aborts reported for a vendor fix.
docs/reliability.md, "Fuzzing", lists them."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from llama_webgpu.errors import ModelLoadError, TokenizeError
from llama_webgpu.model import Model
from llama_webgpu.modelinfo import read_gguf, report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the fuzz package
from gguf_craft import KV, STRING, UINT32, Gguf, TensorInfo

from fuzz.seeds import write_seeds

DATA = Path(__file__).parent / "data" / "fuzz"
F32, F16, Q4_0 = 0, 1, 2  # ggml types

_LLAMA_NO_VOCAB = [
    KV("general.architecture", STRING, b"llama"),
    KV("tokenizer.ggml.model", STRING, b"no_vocab"),
]
# name -> (key-value pairs, tensor infos (name, dims, type, offset), bytes of tensor data)
FIXED: dict[str, tuple[list[KV], list[TensorInfo], int]] = {
    # a vocabulary-less model: the tokenizer took token 0's text and aborted
    "fixed-no-vocab": ([*_LLAMA_NO_VOCAB, KV("llama.vocab_size", UINT32, 16)], [], 0),
    # a 3-D f16 tensor beside a q4_0 matrix and a 1-D vector
    "fixed-device-support-3d-tensor": (
        _LLAMA_NO_VOCAB,
        [
            TensorInfo(b"a.weight", [4, 3, 2], F16, 0),
            TensorInfo(b"b.weight", [64, 2], Q4_0, 64),
            TensorInfo(b"c", [1], F32, 160),
        ],
        192,
    ),
    # more elements than ggml's int64 byte counts hold
    "fixed-device-support-huge-tensor": (
        _LLAMA_NO_VOCAB,
        [TensorInfo(b"a.weight", [648518346341351424, 3, 2], F16, 0)],
        101,
    ),
    # (4, 3, 0) and (0, N): empty tensors
    "fixed-device-support-empty-tensor": (
        _LLAMA_NO_VOCAB,
        [TensorInfo(b"a.weight", [4, 3, 0], F32, 0)],
        137,
    ),
    "fixed-device-support-empty-matrix": ([], [TensorInfo(b"", [0, 717259538432], F32, 0)], 0),
}


# name -> (seed, length kept, [(offset, bytes written there)], sha256 of the fuzzer's file)
MUTATED: dict[str, tuple[str, int, list[tuple[int, bytes]], str]] = {
    # the "H" token's text changed: no unknown token to fall back to
    "fixed-rwkv-no-unknown-token": (
        "vocab-rwkv",
        5280,
        [(1094, b"w")],
        "7dd417c3173f0550550749c35ff14fa65bb147674eeef62f967e93d0adfe3d1d",
    ),
    # a trie path on which no token ends
    "native-rwkv-tokenize-endless-loop": (
        "vocab-rwkv",
        5280,
        [(1635, b"?")],
        "81be5037059a5e1df24816523709204fd7b519a9fc0ba8cdc04526e3f33558d8",
    ),
    # two tokens with the same text
    "native-duplicate-token-text": (
        "vocab-plamo2",
        7200,
        [(604, b"2")],
        "5b605e495b9cb1400e9cc53bca9c69e2295941d6808ea2c79a2d64f81255cdaa",
    ),
    # a byte token's text changed: byte fallback finds no token
    "native-spm-missing-byte-token": (
        "vocab-spm",
        8992,
        [(1463, b"h")],
        "596d1294110a34b41d28fd26a73bb5c2a243174f03473d361aa979aacf64c26e",
    ),
    # cut short, and llama.vocab_size's high byte set
    "native-no-vocab-huge-vocab-size": (
        "vocab-none",
        210,
        [(200, b" ")],
        "b96bc4f1c18499266acdd6a5f6f1d4b6721db8381dcd0de5c612859e1d09d5f5",
    ),
    # one tensor left, with a zero and two huge dimensions
    "native-empty-tensor-element-overflow": (
        "tensors-mixed",
        474,
        [
            (8, b"\x01"),
            (186, b"S"),
            (415, b"\x03"),
            (417, b"\x00"),
            (428, b"\x08"),
            (445, b"\xf8\xff\xff\xf7"),
            (453, bytes(9)),
            (465, b"\x00"),
            (473, b"\x00"),
        ],
        "2eadba0736865e9406cba3c05007c8307ee97497eacae1d35f72ea60f668a4b4",
    ),
}


@pytest.fixture(scope="module")
def fixed(tmp_path_factory) -> Path:
    """A directory holding the FIXED and MUTATED files."""
    out = tmp_path_factory.mktemp("fuzz-fixed")
    for name, (kvs, tensors, data_size) in FIXED.items():
        Gguf(out / name, 3, kvs, tensors, 0, data_size).write(out / f"{name}.gguf")
    needed = sorted({seed for seed, *_ in MUTATED.values()})
    written = write_seeds(out / "seeds", needed)
    seeds = {p.stem.removeprefix("seed-"): p.read_bytes() for p in written}
    for name, (seed, length, edits, sha256) in MUTATED.items():
        data = bytearray(seeds[seed][:length])
        for offset, new in edits:
            data[offset : offset + len(new)] = new
        # a change in the seed writer (or the gguf package) must not silently test another file
        assert hashlib.sha256(data).hexdigest() == sha256, f"{name}: not the fuzzer's file"
        (out / f"{name}.gguf").write_bytes(data)
    return out


def test_model_without_vocabulary_refuses_to_tokenize_instead_of_aborting(fixed):
    with Model(fixed / "fixed-no-vocab.gguf", vocab_only=True, device="cpu") as model:
        tok = model.tokenizer
        assert not tok.has_vocab
        assert tok.n_vocab == 16  # placeholder ids from llama.vocab_size
        with pytest.raises(TokenizeError, match="no vocabulary"):
            tok.encode("hello")
        with pytest.raises(TokenizeError, match="no vocabulary"):
            tok.token_to_piece(0)
        with pytest.raises(TokenizeError, match="no vocabulary"):
            tok.is_control(0)
        assert tok.decode([0, 1]) == ""


def test_rwkv_vocabulary_without_unknown_token_raises_instead_of_returning_minus_one(fixed):
    with Model(fixed / "fixed-rwkv-no-unknown-token.gguf", vocab_only=True, device="cpu") as m:
        tok = m.tokenizer
        assert tok.encode("ab") == [98, 99]  # "\\x61" and "\\x62" are still there
        with pytest.raises(TokenizeError, match="outside the vocabulary"):
            tok.encode("Hello")  # the file's token for "H" was mutated away


def test_info_report_handles_3d_tensors(fixed):
    info = read_gguf(fixed / "fixed-device-support-3d-tensor.gguf")
    assert (4, 3, 2) in {t.shape for t in info.tensors}
    text = report(info, None)
    assert "f16       yes      yes" in text  # the 3-D f16 tensor: MUL_MAT and GET_ROWS


def test_info_report_marks_tensors_too_large_for_ggml_as_unsupported(fixed):
    info = read_gguf(fixed / "fixed-device-support-huge-tensor.gguf")
    [huge] = info.tensors
    assert huge.shape[0] * huge.shape[1] * huge.shape[2] * 512 >= 2**63
    text = report(info, None)
    assert "f16       no" in text
    assert "a.weight" in text  # listed among the matrices the device cannot multiply


@pytest.mark.parametrize(
    "name", ["fixed-device-support-empty-tensor.gguf", "fixed-device-support-empty-matrix.gguf"]
)
def test_info_report_skips_empty_tensors(fixed, name: str):
    # (4, 3, 0) made ggml_mul_mat divide by zero; (0, N) looked transposed to ggml_mul_mat
    info = read_gguf(fixed / name)
    assert any(0 in t.shape for t in info.tensors)
    assert "on CPU:" in report(info, None)


# every printable character up to U+024F: reaches byte fallback and charsmap normalization
ALL_CHARS = "".join(chr(i) for i in range(1, 0x250))


def _found(fixed: Path, name: str) -> Path:
    """A fuzzer's finding: written by the fixture, or kept in tests/data/fuzz."""
    return fixed / f"{name}.gguf" if name in MUTATED else DATA / f"{name}.gguf"


@pytest.mark.parametrize(
    ("name", "native_message"),
    [
        ("native-spm-missing-byte-token", "unordered_map::at"),
        ("native-ugm-bad-charsmap", "Index out of array bounds"),
    ],
)
def test_tokenizer_exception_in_llama_cpp_is_a_tokenize_error_not_a_dead_process(
    fixed, name, native_message
):
    # these threw C++ exceptions through llama_tokenize (std::terminate); patches/0008
    with Model(_found(fixed, name), vocab_only=True, device="cpu") as model:
        with pytest.raises(TokenizeError, match=native_message):
            model.tokenizer.encode(ALL_CHARS)
        # the process and the model go on
        assert isinstance(model.tokenizer.decode([model.n_vocab - 1]), str)


@pytest.mark.parametrize(
    "name",
    [
        "native-duplicate-token-text",
        "native-empty-tensor-element-overflow",
        "native-wpm-byte-token",
    ],
)
def test_native_aborts_found_by_fuzzing_are_load_errors_now(fixed, name):
    # each killed the process with GGML_ASSERT / GGML_ABORT while loading (patches/0006-0007)
    with pytest.raises(ModelLoadError):
        Model(_found(fixed, name), vocab_only=True, device="cpu")


def test_rwkv_tokenizer_with_a_broken_vocabulary_answers_instead_of_looping_forever(fixed):
    # "u" starts a trie path on which no token ends: the tokenizer went back to position 0
    # forever (patches/0010). In a child process, so that a hang fails the test.
    code = (
        "import sys; from llama_webgpu.model import Model; "
        "from llama_webgpu.errors import TokenizeError\n"
        f"m = Model({str(fixed / 'native-rwkv-tokenize-endless-loop.gguf')!r}, vocab_only=True, "
        "device='cpu')\n"
        "try:\n    m.tokenizer.encode('u')\n"
        "except TokenizeError as e:\n    print('TokenizeError', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "TokenizeError" in out.stdout and "outside the vocabulary" in out.stdout
