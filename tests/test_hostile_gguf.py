"""Hostile GGUF files: one crafted file per known loader vulnerability class, each loaded in a
child process. The rule: the child survives and reports a llama_webgpu exception (a LlamaError
subclass) whose message names the problem; never a crash (signal, abort) or a hang (> 10 s).

The files are made at test time from the cached real models by tools/gguf_craft.py (their
headers edited, their data sections sparse) and loaded by tools/gguf_mutants.py's probe()."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import llama_webgpu as lw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from gguf_craft import Crafted, Gguf, crafted  # noqa: E402
from gguf_mutants import Outcome, probe  # noqa: E402

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, tuple[Crafted, Outcome]]:
    """Every crafted file, loaded once (many files per child process)."""
    smol = Gguf.parse(lw.model_path())
    gemma = Gguf.parse(lw.model_path("gemma-3-270m"))
    cases = crafted(smol, gemma, tmp_path_factory.mktemp("crafted"))
    results = {o.path: o for o in probe([(c.path, c.mode) for c in cases], timeout=10.0)}
    return {c.name: (c, results[c.path]) for c in cases}


def check(outcomes: dict[str, tuple[Crafted, Outcome]], name: str, may_load: bool = False) -> None:
    case, o = outcomes[name]
    assert o.outcome != "crash", f"{name}: the load crashed the process ({o.message})"
    assert o.outcome != "hang", f"{name}: the load did not finish within 10 s"
    assert o.outcome != "untyped", f"{name}: {o.type} is not a llama_webgpu exception: {o.message}"
    if may_load and o.outcome == "loaded":
        return
    assert o.outcome == "error", f"{name}: loaded without complaint"
    assert o.type == "ModelLoadError", f"{name}: {o.type}: {o.message}"
    assert case.expect.lower() in o.message.lower(), f"{name}: {case.expect!r} not in {o.message!r}"


@pytest.mark.parametrize(
    "name",
    [
        "layer_count_beyond_max",
        "layer_count_zero",
        "expert_count_beyond_max",
        "experts_used_beyond_count",
    ],
)
def test_layer_and_expert_counts_beyond_limits_are_load_errors(outcomes, name):
    check(outcomes, name)


@pytest.mark.parametrize("name", ["plamo2_byte_token_negative_hex", "plamo2_byte_token_not_hex"])
def test_plamo2_byte_token_with_bad_hex_digits_is_a_load_error(outcomes, name):
    check(outcomes, name)


def test_spm_byte_token_with_bad_hex_digits_loads_or_fails_cleanly(outcomes):
    check(outcomes, "spm_byte_token_not_hex", may_load=True)


@pytest.mark.parametrize(
    "name",
    [
        "scores_as_int16",
        "scores_as_uint8",
        "token_type_as_uint8",
        "token_type_as_int16",
        "token_type_as_bool",
    ],
)
def test_tokenizer_arrays_of_a_narrower_type_are_load_errors(outcomes, name):
    check(outcomes, name)


@pytest.mark.parametrize(
    "name",
    ["alignment_as_uint64", "alignment_as_string", "alignment_zero", "alignment_not_power_of_two"],
)
def test_bad_general_alignment_is_a_load_error(outcomes, name):
    check(outcomes, name)


@pytest.mark.parametrize(
    "name",
    [
        "tensor_elements_overflow",
        "tensor_bytes_overflow",
        "tensor_negative_dimension",
        "tensor_too_many_dimensions",
    ],
)
def test_tensor_shapes_whose_size_overflows_are_load_errors(outcomes, name):
    check(outcomes, name)


@pytest.mark.parametrize(
    "name",
    [
        "key_length_absurd",
        "string_value_length_absurd",
        "token_array_length_absurd",
        "int_array_length_beyond_file",
        "tensor_name_length_absurd",
        "kv_count_absurd",
        "tensor_count_absurd",
    ],
)
def test_absurd_declared_lengths_are_load_errors(outcomes, name):
    check(outcomes, name)


@pytest.mark.parametrize(
    "name", ["tensor_offset_past_end", "file_shorter_than_tensor_data", "tensor_data_missing"]
)
def test_tensor_data_past_the_end_of_the_file_is_a_load_error(outcomes, name):
    check(outcomes, name)


@pytest.mark.parametrize(
    "name",
    [
        "scores_shorter_than_tokens",
        "token_types_shorter_than_tokens",
        "tokens_shorter_than_embedding",
        "duplicate_tokens",
    ],
)
def test_inconsistent_vocabulary_arrays_are_load_errors(outcomes, name):
    check(outcomes, name)


def test_special_token_id_out_of_range_loads_or_fails_cleanly(outcomes):
    check(outcomes, "special_token_id_out_of_range", may_load=True)


def test_assert_during_load_is_a_load_error_and_the_process_goes_on(outcomes, tmp_path):
    """An unknown rope.scaling.type reaches a GGML_ASSERT in load_hparams that no check precedes.
    patches/0007 turns it into a ModelLoadError carrying the assert text; the same process then
    loads the good model and tokenizes with it."""
    case, _ = outcomes["rope_scaling_type_unknown"]
    good = lw.model_path()
    first, second = probe([(case.path, "cpu"), (good, "cpu")], timeout=10.0)
    assert first.outcome == "error", f"{first.outcome}: {first.message}"
    assert first.type == "ModelLoadError"
    assert "GGML_ASSERT(hparams.rope_scaling_type_train" in first.message, first.message
    assert second.outcome == "loaded", f"{second.outcome}: {second.message}"
    assert second.child == first.child, "the good model was loaded by a new process"
