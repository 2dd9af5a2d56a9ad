"""SamplingParams validation, the sampler chain on known logits, grammars, JSON schema -> GBNF."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llama_webgpu.errors import ClosedError, GrammarError
from llama_webgpu.json_schema import gbnf_literal, json_schema_to_gbnf
from llama_webgpu.model import Model
from llama_webgpu.models import model_path
from llama_webgpu.sampling import SamplingParams, make_sampler, token_logprobs

# -- parameters (no model) ----------------------------------------------------------------------


def test_default_params_are_valid_and_sample():
    params = SamplingParams()
    params.validate()
    assert params.temperature > 0
    assert not params.greedy
    assert SamplingParams(temperature=0).greedy


@pytest.mark.parametrize(
    ("field", "value", "exc"),
    [
        ("temperature", math.nan, ValueError),
        ("temperature", math.inf, ValueError),
        ("temperature", -0.1, ValueError),
        ("temperature", "hot", TypeError),
        ("top_p", 1.5, ValueError),
        ("min_p", -0.01, ValueError),
        ("typical_p", 2.0, ValueError),
        ("top_k", -1, ValueError),
        ("top_k", 1.5, TypeError),
        ("repeat_penalty", 0.0, ValueError),
        ("frequency_penalty", math.nan, ValueError),
        ("penalty_last_n", -2, ValueError),
        ("xtc_probability", 1.1, ValueError),
        ("mirostat", 3, ValueError),
        ("seed", -1, ValueError),
        ("seed", 2**32 - 1, ValueError),
        ("min_keep", -1, ValueError),
        ("dry_base", 0.5, ValueError),
    ],
)
def test_invalid_params_raise_naming_the_field(field, value, exc):
    with pytest.raises(exc, match=field):
        SamplingParams(**{field: value}).validate()


@pytest.mark.parametrize(
    ("bias", "exc"),
    [({1: math.nan}, ValueError), ({1: math.inf}, ValueError), ({-3: 1.0}, ValueError)],
)
def test_invalid_logit_bias_is_rejected(bias, exc):
    with pytest.raises(exc, match="logit_bias"):
        SamplingParams(logit_bias=bias).validate()


def test_grammar_and_json_schema_are_exclusive():
    with pytest.raises(ValueError, match="not both"):
        SamplingParams(grammar='root ::= "a"', json_schema={"type": "string"}).validate()


def test_token_logprobs_are_a_log_softmax():
    logits = np.array([2.0, 1.0, 0.0, -1.0], np.float32)
    lp, top = token_logprobs(logits, 1, top_n=3)
    expected = logits - np.log(np.exp(logits.astype(np.float64)).sum())
    assert lp == pytest.approx(expected[1])
    assert list(top) == [0, 1, 2]
    assert list(top.values()) == pytest.approx(expected[:3])
    assert token_logprobs(logits, 3)[1] == {}


# -- JSON schema -> GBNF (no model) ---------------------------------------------------------------


def test_gbnf_literal_escapes_quotes_backslashes_and_controls():
    assert gbnf_literal('a"b\\c\nd\x01') == '"a\\"b\\\\c\\nd\\x01"'


def test_schema_object_lists_required_properties_first():
    grammar = json_schema_to_gbnf(
        {
            "type": "object",
            "properties": {"b": {"type": "integer"}, "a": {"type": "string"}},
            "required": ["a"],
        }
    )
    root = grammar.splitlines()[0]
    assert root.startswith("root ::= ")
    assert root.index("root-a-kv") < root.index("root-b-kv")
    assert '( "," space root-b-kv )?' in root


def test_schema_recursive_ref_becomes_a_recursive_rule():
    grammar = json_schema_to_gbnf(
        {
            "$defs": {
                "node": {
                    "type": "object",
                    "properties": {
                        "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}
                    },
                }
            },
            "$ref": "#/$defs/node",
        }
    )
    assert "ref-node ::= " in grammar
    assert grammar.count("ref-node") >= 3  # defined, used by root, used by itself


@pytest.mark.parametrize(
    ("schema", "match"),
    [
        ({"type": "string", "pattern": "^a+$"}, "pattern"),
        ({"type": "integer", "minimum": 0}, "minimum"),
        ({"allOf": [{"type": "string"}]}, "allOf"),
        ({"type": "date"}, "unknown type"),
        ({"$ref": "https://example.com/s.json"}, "local"),
        ({"$ref": "#/$defs/missing"}, "does not resolve"),
        ("{not json", "not valid JSON"),
        (False, "allows no value"),
    ],
)
def test_unsupported_or_bad_schemas_raise_grammar_error(schema, match):
    with pytest.raises(GrammarError, match=match):
        json_schema_to_gbnf(schema)


# -- the sampler chain on known logits ------------------------------------------------------------


@pytest.fixture(scope="module")
def vocab_model():
    # a sampler needs only the vocabulary; sample_logits takes logits we make up
    with Model(model_path(), vocab_only=True) as model:
        yield model


def peaked(n_vocab: int, token: int, second: int | None = None) -> np.ndarray:
    logits = np.zeros(n_vocab, np.float32)
    logits[token] = 10.0
    if second is not None:
        logits[second] = 9.0
    return logits


@pytest.mark.model
def test_greedy_picks_the_largest_logit(vocab_model):
    with make_sampler(vocab_model, temperature=0) as s:
        assert s.sample_logits(peaked(vocab_model.n_vocab, 1234)) == 1234


@pytest.mark.model
def test_top_k_1_picks_the_largest_logit_even_when_sampling(vocab_model):
    logits = np.random.default_rng(0).normal(size=vocab_model.n_vocab).astype(np.float32)
    with make_sampler(vocab_model, temperature=1.5, top_k=1, top_p=1, min_p=0, seed=3) as s:
        assert [s.sample_logits(logits) for _ in range(5)] == [int(np.argmax(logits))] * 5


@pytest.mark.model
def test_logit_bias_minus_inf_bans_a_token(vocab_model):
    logits = peaked(vocab_model.n_vocab, 1234, second=77)
    with make_sampler(vocab_model, temperature=0, logit_bias={1234: -math.inf}) as s:
        assert s.sample_logits(logits) == 77


@pytest.mark.model
def test_logit_bias_token_outside_the_vocabulary_is_rejected(vocab_model):
    with pytest.raises(ValueError, match=r"logit_bias.*outside the vocabulary"):
        make_sampler(vocab_model, logit_bias={vocab_model.n_vocab: -1.0})


@pytest.mark.model
def test_unknown_sampling_option_is_a_type_error(vocab_model):
    with pytest.raises(TypeError):
        make_sampler(vocab_model, temprature=0.5)


def draws(sampler, n_vocab: int, n: int = 16) -> list[int]:
    flat = np.zeros(n_vocab, np.float32)
    return [sampler.sample_logits(flat) for _ in range(n)]


@pytest.mark.model
def test_same_seed_same_draws_and_another_seed_differs(vocab_model):
    opts = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
    n = vocab_model.n_vocab
    with (
        make_sampler(vocab_model, seed=42, **opts) as a,
        make_sampler(vocab_model, seed=42, **opts) as b,
        make_sampler(vocab_model, seed=43, **opts) as c,
    ):
        first = draws(a, n)
        assert first == draws(b, n)
        assert first != draws(c, n)
        assert len(set(first)) > 8  # uniform over 49k tokens: draws are spread out
        a.reset()
        assert draws(a, n) == first  # reset re-seeds


@pytest.mark.model
def test_unseeded_samplers_pick_a_seed_and_report_it(vocab_model):
    with make_sampler(vocab_model) as a, make_sampler(vocab_model) as b:
        assert a.seed != b.seed
        assert 0 <= a.seed < 2**32 - 1


@pytest.mark.model
def test_repeat_penalty_discourages_recent_tokens(vocab_model):
    logits = peaked(vocab_model.n_vocab, 1234, second=77)
    with make_sampler(vocab_model, temperature=0, repeat_penalty=2.0) as s:
        assert s.sample_logits(logits) == 1234
        s.feed_prompt([1234])
        # 10 / 2 = 5 < 9: the second choice wins once 1234 has been seen (twice now)
        assert s.sample_logits(logits) == 77
        s.reset()
        assert s.sample_logits(logits) == 1234


@pytest.mark.model
def test_grammar_allows_only_its_tokens(vocab_model):
    tok = vocab_model.tokenizer
    # the most likely token would be "hello", which the grammar forbids
    logits = peaked(vocab_model.n_vocab, tok.encode("hello", add_special=False)[0])
    with make_sampler(vocab_model, temperature=0, grammar='root ::= "yes" | "no"') as s:
        text = ""
        for _ in range(5):
            token = s.sample_logits(logits)
            if tok.is_eog(token):
                break
            text += tok.decode([token])
        assert text in ("yes", "no")
        assert tok.is_eog(token)  # once complete, only end-of-generation remains


@pytest.mark.model
def test_accepting_a_token_the_grammar_forbids_raises(vocab_model):
    tok = vocab_model.tokenizer
    with make_sampler(vocab_model, grammar='root ::= "yes"') as s:
        with pytest.raises(GrammarError, match="does not allow"):
            s.accept(tok.encode(" maybe", add_special=False)[0])
        with pytest.raises(GrammarError):
            s.accept(tok.eos)  # not before the grammar is complete
        s.accept(tok.encode("yes", add_special=False)[0])  # allowed


@pytest.mark.model
def test_invalid_grammar_raises_grammar_error(vocab_model):
    with pytest.raises(GrammarError):
        make_sampler(vocab_model, grammar="root ::= undefined-rule")
    with pytest.raises(GrammarError):
        make_sampler(vocab_model, grammar='root ::= ("unclosed"')


@pytest.mark.model
def test_json_schema_builds_a_grammar(vocab_model):
    with make_sampler(vocab_model, json_schema='{"type": "boolean"}') as s:
        assert s.grammar is not None
        assert 'boolean ::= ("true" | "false") space' in s.grammar


@pytest.mark.model
def test_sample_logits_checks_the_shape(vocab_model):
    with make_sampler(vocab_model) as s, pytest.raises(ValueError, match="shape"):
        s.sample_logits(np.zeros(10, np.float32))


@pytest.mark.model
def test_closed_sampler_raises_and_closes_twice(vocab_model):
    s = make_sampler(vocab_model, grammar='root ::= "a"')
    s.close()
    s.close()
    assert s.closed
    with pytest.raises(ClosedError):
        s.sample_logits(np.zeros(vocab_model.n_vocab, np.float32))
    with pytest.raises(ClosedError):
        s.reset()


@pytest.mark.model
def test_other_samplers_build_and_choose_a_valid_token(vocab_model):
    logits = np.random.default_rng(1).normal(size=vocab_model.n_vocab).astype(np.float32)
    variants = [
        {"mirostat": 1},
        {"mirostat": 2},
        {"typical_p": 0.9},
        {"top_n_sigma": 1.0},
        {"xtc_probability": 0.5, "xtc_threshold": 0.05},
        {"dry_multiplier": 0.8, "dry_sequence_breakers": ["\n"]},
        {"frequency_penalty": 0.5, "presence_penalty": 0.5, "penalty_last_n": -1},
    ]
    for opts in variants:
        with make_sampler(vocab_model, seed=5, **opts) as s:
            s.feed_prompt([1, 2, 3])
            token = s.sample_logits(logits)
            assert 0 <= token < vocab_model.n_vocab, opts


@pytest.fixture(scope="module")
def cpu_ctx():
    with Model(model_path(), device="cpu") as m, m.context(n_ctx=64, n_threads=1) as c:
        c.eval(m.tokenizer.encode("The capital of France is"))
        yield c


@pytest.mark.parametrize("bias", ["none", "ban the top two, lift one"])
def test_greedy_fast_path_chooses_what_the_sampler_chain_chooses(cpu_ctx, bias):
    logits = cpu_ctx.logits()
    order = np.argsort(-logits)
    biases = {}
    if bias != "none":
        biases = {int(order[0]): -math.inf, int(order[1]): -1000.0, int(order[50]): 3.5}
    sampler = make_sampler(cpu_ctx.model, temperature=0, logit_bias=biases)
    assert sampler._fast_greedy is not None  # greedy + bias only: the numpy path
    fast = sampler.sample(cpu_ctx)
    chain = sampler.sample_logits(logits)  # llama.cpp's logit-bias + greedy chain
    assert fast == chain
    expected = logits.copy()
    for token, b in biases.items():
        expected[token] += b
    assert fast == int(np.argmax(expected))
    assert fast != int(order[0]) or bias == "none"


def test_biased_argmax_without_copy_equals_argmax_of_the_biased_copy():
    from llama_webgpu.sampling import _biased_argmax

    rng = np.random.default_rng(7)
    for case in range(2000):
        n = int(rng.integers(2, 40))
        # few distinct values, so ties (first maximum wins) are common
        logits = rng.integers(-3, 4, n).astype(np.float32)
        ids = rng.choice(n, size=int(rng.integers(1, n + 1)), replace=False)
        ids = np.sort(ids).astype(np.int32)  # as the sampler keeps them
        biases = rng.integers(-3, 4, len(ids)).astype(np.float32)
        if case % 5 == 0:
            biases[:] = -1000.0  # bans, as the benchmark's end-of-generation ban
        biased = logits.copy()
        biased[ids] += biases
        want = int(np.argmax(biased))
        assert _biased_argmax(logits, int(np.argmax(logits)), ids, biases) == want, case


def _first_max(values: np.ndarray) -> int:
    from llama_webgpu._native import ffi, lib

    values = np.ascontiguousarray(values, np.float32)
    return int(lib.lw_first_max(ffi.from_buffer("float[]", values), len(values)))


@pytest.mark.parametrize("n", [1, 5, 63, 64, 65, 128, 1000, 49152, 49153])
def test_c_first_max_is_numpys_argmax_first_maximum(n):
    rng = np.random.default_rng(n)
    for where in ("random", "start", "end", "tie"):
        x = rng.standard_normal(n).astype(np.float32)
        top = {"random": int(rng.integers(n)), "start": 0, "end": n - 1, "tie": n // 2}[where]
        x[top] = 100.0
        if where == "tie" and n > 2:
            x[n - 1] = 100.0  # a later equal maximum never wins
        assert _first_max(x) == int(np.argmax(x)) == top, where


def test_c_first_max_treats_nan_and_infinities_as_llama_greedy_does():
    x = np.full(200, -np.inf, np.float32)
    assert _first_max(x) == 0  # nothing above the first: index 0
    x[150] = np.inf
    assert _first_max(x) == 150
    x[70] = np.nan  # never greater than anything
    assert _first_max(x) == 150
    x[0] = np.nan  # a NaN first: nothing compares greater, so 0 (llama.cpp's greedy too)
    assert _first_max(x) == 0
