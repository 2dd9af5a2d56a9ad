"""Bad arguments to every public entry point raise a documented exception naming the problem:
never a crash, never silent acceptance. One table; each row is an entry point, a bad argument,
the exception type and a pattern its message must match.

Classes of bad argument: negative, zero or oversized sizes; NaN, infinite or out-of-range
sampling parameters (top_p outside [0, 1]...); token ids outside the vocabulary (detokenize,
eval, logit bias, stop tokens, prompts); invalid UTF-8 bytes and str with lone surrogates;
prompts longer than the context; unknown devices and options; wrong types.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import llama_webgpu as lw
from llama_webgpu import (
    ClosedError,
    Context,
    ContextError,
    ContextFullError,
    GrammarError,
    Llama,
    LlamaError,
    Model,
    ModelLoadError,
    SamplingParams,
    TokenizeError,
    generate,
    generate_step,
    make_sampler,
    stream_generate,
)
from llama_webgpu.models import model_path

pytestmark = pytest.mark.model

N_VOCAB = 49152  # SmolLM2's vocabulary
NAN, INF = math.nan, math.inf
# U+110000 as (invalid) UTF-8: llama.cpp's BPE tokenizer aborts the process on it
ABOVE_UNICODE = b"\xf4\x90\x80\x80"


@dataclass
class Env:
    vocab: Model  # vocab-only
    model: Model  # full, CPU
    ctx: Context  # n_ctx 64 (llama.cpp may round it up), one thread
    llama: Llama


@pytest.fixture(scope="module")
def env():
    with (
        Model(model_path(), vocab_only=True) as vocab,
        Model(model_path(), device="cpu") as model,
        model.context(n_ctx=64, n_threads=1) as ctx,
    ):
        llama = Llama(str(model_path()), n_ctx=64, n_threads=1, n_threads_batch=1, verbose=False)
        yield Env(vocab, model, ctx, llama)
        llama.close()


def path() -> str:
    return str(model_path())


def gen(e: Env, prompt: Any = "Hi", **kw: Any) -> Any:
    """A short greedy generation on the shared context (arguments fail before any work)."""
    e.ctx.reset()
    return generate(e.ctx, prompt, **{"max_tokens": 2, "temperature": 0, **kw})


def too_long(e: Env) -> list[int]:
    return [e.model.tokenizer.encode(" sea", add_special=False)[0]] * (e.ctx.n_ctx + 1)


def flat(n: int = N_VOCAB) -> np.ndarray:
    return np.zeros(n, np.float32)


CASES: list[tuple[str, Any, type[BaseException], str]] = [
    # -- Model / ModelParams (checked before anything is loaded) --------------------------------
    ("model-unknown-device", lambda e: Model(path(), device="cuda"), ValueError, "device"),
    ("model-device-none", lambda e: Model(path(), device=None), ValueError, "device"),
    ("model-layers-negative", lambda e: Model(path(), n_gpu_layers=-5), ValueError, "n_gpu"),
    ("model-layers-bool", lambda e: Model(path(), n_gpu_layers=True), ValueError, "n_gpu"),
    ("model-layers-huge", lambda e: Model(path(), n_gpu_layers=2**40), ValueError, "n_gpu"),
    ("model-mmap-str", lambda e: Model(path(), use_mmap="yes"), TypeError, "use_mmap"),
    ("model-progress-int", lambda e: Model(path(), progress=5), TypeError, "progress"),
    ("model-unknown-option", lambda e: Model(path(), no_such=1), TypeError, "no_such"),
    ("model-missing-file", lambda e: Model("/nonexistent.gguf"), ModelLoadError, "not found"),
    ("model-directory", lambda e: Model("/tmp"), ModelLoadError, "not found"),
    ("model-nul-in-path", lambda e: Model("/tmp/a\0b.gguf"), ModelLoadError, "not found"),
    ("model-embed-int", lambda e: e.model.embed(5), TypeError, "str or a list of str"),
    ("model-meta-int", lambda e: e.vocab.meta(5), TypeError, "key must be a str"),
    ("model-meta-surrogate", lambda e: e.vocab.meta("\ud800"), ValueError, "Unicode"),
    # -- ContextParams / Context -----------------------------------------------------------------
    ("ctx-n_ctx-negative", lambda e: e.model.context(n_ctx=-1), ValueError, "n_ctx"),
    ("ctx-n_ctx-float", lambda e: e.model.context(n_ctx=64.0), ValueError, "n_ctx"),
    ("ctx-n_ctx-huge", lambda e: e.model.context(n_ctx=2**40), ValueError, "n_ctx.*at most"),
    ("ctx-n_batch-zero", lambda e: e.model.context(n_batch=0), ValueError, "n_batch"),
    ("ctx-n_batch-huge", lambda e: e.model.context(n_batch=2**40), ValueError, "n_batch"),
    ("ctx-n_ubatch-negative", lambda e: e.model.context(n_ubatch=-1), ValueError, "n_ubatch"),
    ("ctx-threads-zero", lambda e: e.model.context(n_threads=0), ValueError, "n_threads"),
    ("ctx-threads-bool", lambda e: e.model.context(n_threads=True), ValueError, "n_threads"),
    ("ctx-threads-huge", lambda e: e.model.context(n_threads=2**40), ValueError, "n_threads"),
    ("ctx-batch-threads", lambda e: e.model.context(n_threads_batch=-1), ValueError, "batch"),
    (
        "ctx-seq-max-over-limit",
        lambda e: e.model.context(n_ctx=64, n_seq_max=10**6),
        ContextError,
        "n_seq_max",
    ),
    ("ctx-pooling", lambda e: e.model.context(pooling="max"), ValueError, "pooling"),
    ("ctx-flash-attn", lambda e: e.model.context(flash_attn="yes"), ValueError, "flash_attn"),
    ("ctx-type-k", lambda e: e.model.context(type_k="q4"), ValueError, "type_k"),
    ("ctx-offload-str", lambda e: e.model.context(offload_kqv="no"), TypeError, "offload_kqv"),
    ("ctx-unknown-option", lambda e: e.model.context(n_gpu_layers=1), TypeError, "n_gpu_layers"),
    ("ctx-vocab-only", lambda e: e.vocab.context(), ContextError, "vocab-only"),
    ("eval-negative-id", lambda e: e.ctx.eval([-1]), TokenizeError, "outside the vocabulary"),
    ("eval-id-n_vocab", lambda e: e.ctx.eval([N_VOCAB]), TokenizeError, "outside"),
    ("eval-float-id", lambda e: e.ctx.eval([1.0]), TypeError, "ints, not float"),
    ("eval-bool-id", lambda e: e.ctx.eval([True]), TypeError, "ints, not bool"),
    ("eval-str", lambda e: e.ctx.eval("abc"), TypeError, "sequence of ints"),
    ("eval-empty", lambda e: e.ctx.eval([]), ValueError, "at least one token"),
    ("eval-over-context", lambda e: e.ctx.eval(too_long(e)), ContextFullError, "exceed"),
    ("prefill-empty", lambda e: e.ctx.prefill([]), ValueError, "at least one token"),
    ("truncate-negative", lambda e: e.ctx.truncate(-1), ValueError, "truncate"),
    ("truncate-float", lambda e: e.ctx.truncate(1.5), TypeError, "n must be an int"),
    ("load-state-garbage", lambda e: e.ctx.load_state(b"garbage"), LlamaError, "not a llama"),
    ("load-state-str", lambda e: e.ctx.load_state("state"), TypeError, "bytes"),
    ("set-loras-int", lambda e: e.ctx.set_loras(5), TypeError, "dict"),
    ("embed-no-embeddings", lambda e: e.ctx.embed_tokens([1]), ContextError, "embeddings"),
    # -- Tokenizer ---------------------------------------------------------------------------------
    ("encode-surrogate", lambda e: e.vocab.tokenizer.encode("a\ud800b"), TokenizeError, r"U\+D800"),
    (
        "encode-above-unicode",
        lambda e: e.vocab.tokenizer.encode(ABOVE_UNICODE),
        TokenizeError,
        "UTF-8",
    ),
    ("encode-bad-byte", lambda e: e.vocab.tokenizer.encode(b"ok \xff"), TokenizeError, "byte 3"),
    ("encode-int", lambda e: e.vocab.tokenizer.encode(5), TypeError, "str or bytes"),
    ("decode-negative", lambda e: e.vocab.tokenizer.decode([-1]), TokenizeError, "outside"),
    ("decode-n_vocab", lambda e: e.vocab.tokenizer.decode([N_VOCAB]), TokenizeError, "outside"),
    ("decode-huge", lambda e: e.vocab.tokenizer.decode([2**70]), TokenizeError, "outside"),
    ("decode-none-id", lambda e: e.vocab.tokenizer.decode([None]), TypeError, "NoneType"),
    ("decode-none", lambda e: e.vocab.tokenizer.decode(None), TypeError, "sequence of ints"),
    ("decode-str", lambda e: e.vocab.tokenizer.decode("abc"), TypeError, "sequence of ints"),
    ("piece-negative", lambda e: e.vocab.tokenizer.token_to_piece(-5), TokenizeError, "outside"),
    ("piece-bool", lambda e: e.vocab.tokenizer.token_to_piece(True), TypeError, "bool"),
    ("is-eog-huge", lambda e: e.vocab.tokenizer.is_eog(10**9), TokenizeError, "outside"),
    (
        "detokenizer-outside",
        lambda e: e.vocab.tokenizer.detokenizer().add_token(N_VOCAB),
        TokenizeError,
        "outside",
    ),
    # -- SamplingParams / make_sampler ------------------------------------------------------------
    *[
        (
            f"sampling-{field}-{value!r}",
            (lambda f, v: lambda e: make_sampler(e.vocab, **{f: v}))(field, value),
            exc,
            field,
        )
        for field, value, exc in [
            ("temperature", NAN, ValueError),
            ("temperature", INF, ValueError),
            ("temperature", -INF, ValueError),
            ("temperature", -1.0, ValueError),
            ("temperature", 1e39, ValueError),  # finite, but inf as a C float
            ("temperature", "hot", TypeError),
            ("top_p", -0.1, ValueError),
            ("top_p", 1.5, ValueError),
            ("top_p", NAN, ValueError),
            ("min_p", 2.0, ValueError),
            ("typical_p", -1.0, ValueError),
            ("xtc_threshold", 1.5, ValueError),
            ("top_k", -1, ValueError),
            ("top_k", 2**40, ValueError),
            ("top_k", 1.5, TypeError),
            ("repeat_penalty", 0.0, ValueError),
            ("repeat_penalty", INF, ValueError),
            ("frequency_penalty", NAN, ValueError),
            ("presence_penalty", -INF, ValueError),
            ("penalty_last_n", -2, ValueError),
            ("penalty_last_n", 2**40, ValueError),
            ("dry_base", 0.5, ValueError),
            ("dry_allowed_length", 2**40, ValueError),
            ("mirostat", 3, ValueError),
            ("mirostat_tau", NAN, ValueError),
            ("mirostat_eta", -1.0, ValueError),
            ("top_n_sigma", NAN, ValueError),
            ("min_keep", -1, ValueError),
            ("seed", -1, ValueError),
            ("seed", 2**32, ValueError),
            ("seed", 1.5, TypeError),
            ("seed", True, TypeError),
        ]
    ],
    (
        "bias-negative-id",
        lambda e: make_sampler(e.vocab, logit_bias={-1: 1.0}),
        ValueError,
        "logit_bias",
    ),
    (
        "bias-id-outside",
        lambda e: make_sampler(e.vocab, logit_bias={N_VOCAB: 1.0}),
        ValueError,
        "logit_bias.*outside the vocabulary",
    ),
    ("bias-nan", lambda e: make_sampler(e.vocab, logit_bias={1: NAN}), ValueError, "logit_bias"),
    (
        "bias-plus-inf",
        lambda e: make_sampler(e.vocab, logit_bias={1: INF}),
        ValueError,
        "logit_bias",
    ),
    (
        "bias-str-value",
        lambda e: make_sampler(e.vocab, logit_bias={1: "x"}),
        TypeError,
        "logit_bias",
    ),
    (
        "bias-str-key",
        lambda e: make_sampler(e.vocab, logit_bias={"1": 1.0}),
        ValueError,
        "logit_bias",
    ),
    ("bias-list", lambda e: make_sampler(e.vocab, logit_bias=[1, 2]), TypeError, "logit_bias"),
    ("grammar-empty", lambda e: make_sampler(e.vocab, grammar=""), TypeError, "grammar"),
    (
        "grammar-invalid",
        lambda e: make_sampler(e.vocab, grammar="root ::= ("),
        GrammarError,
        "parse",
    ),
    (
        "grammar-surrogate",
        lambda e: make_sampler(e.vocab, grammar='root ::= "\ud800"'),
        ValueError,
        "grammar.*Unicode",
    ),
    (
        "grammar-and-schema",
        lambda e: make_sampler(e.vocab, grammar='root ::= "a"', json_schema={}),
        ValueError,
        "either",
    ),
    (
        "schema-unknown-type",
        lambda e: make_sampler(e.vocab, json_schema={"type": "nonsense"}),
        GrammarError,
        "nonsense",
    ),
    (
        "dry-breaker-surrogate",
        lambda e: make_sampler(e.vocab, dry_multiplier=0.8, dry_sequence_breakers=["\ud800"]),
        ValueError,
        "dry_sequence_breakers",
    ),
    (
        "dry-breaker-empty",
        lambda e: make_sampler(e.vocab, dry_sequence_breakers=[""]),
        TypeError,
        "dry_sequence",
    ),
    (
        "sampling-unknown-option",
        lambda e: make_sampler(e.vocab, temprature=0.5),
        TypeError,
        "unknown sampling option 'temprature'",
    ),
    (
        "sampling-params-dict",
        lambda e: make_sampler(e.vocab, {"temperature": 0}),
        TypeError,
        "SamplingParams",
    ),
    (
        "sample-logits-nan",
        lambda e: make_sampler(e.vocab).sample_logits(flat() * NAN),
        ValueError,
        "NaN",
    ),
    (
        "sample-logits-plus-inf",
        lambda e: make_sampler(e.vocab).sample_logits(flat() + INF),
        ValueError,
        r"\+inf",
    ),
    (
        "sample-logits-shape",
        lambda e: make_sampler(e.vocab).sample_logits(flat(5)),
        ValueError,
        "shape",
    ),
    (
        "sample-logits-str",
        lambda e: make_sampler(e.vocab).sample_logits("abc"),
        ValueError,
        "numbers",
    ),
    (
        "sampler-accept-outside",
        lambda e: make_sampler(e.vocab).accept(N_VOCAB),
        TokenizeError,
        "outside",
    ),
    # -- generate / stream_generate / generate_step ------------------------------------------------
    ("gen-max-tokens-zero", lambda e: gen(e, max_tokens=0), ValueError, "max_tokens"),
    ("gen-max-tokens-negative", lambda e: gen(e, max_tokens=-1), ValueError, "max_tokens"),
    ("gen-max-tokens-float", lambda e: gen(e, max_tokens=1.5), TypeError, "max_tokens"),
    ("gen-max-tokens-bool", lambda e: gen(e, max_tokens=True), TypeError, "max_tokens"),
    ("gen-logprobs-negative", lambda e: gen(e, logprobs=-1), ValueError, "logprobs"),
    ("gen-temperature-nan", lambda e: gen(e, temperature=NAN), ValueError, "temperature"),
    ("gen-top-p", lambda e: gen(e, top_p=1.01), ValueError, "top_p"),
    ("gen-seed-negative", lambda e: gen(e, seed=-1), ValueError, "seed"),
    ("gen-bias-outside", lambda e: gen(e, logit_bias={10**7: -1.0}), ValueError, "logit_bias"),
    (
        "gen-n-threads",
        lambda e: gen(e, n_threads=1),
        TypeError,
        "unknown sampling option 'n_threads'",
    ),
    ("gen-n-ctx", lambda e: gen(e, n_ctx=8), TypeError, "unknown sampling option 'n_ctx'"),
    ("gen-stop-empty", lambda e: gen(e, stop=[""]), ValueError, "stop"),
    ("gen-stop-int", lambda e: gen(e, stop=[5]), ValueError, "stop"),
    ("gen-stop-bytes", lambda e: gen(e, stop=b"x"), TypeError, "stop"),
    ("gen-stop-surrogate", lambda e: gen(e, stop=["\ud800"]), ValueError, "stop.*Unicode"),
    ("gen-stop-token-outside", lambda e: gen(e, stop_tokens=[-1]), TokenizeError, "outside"),
    ("gen-prompt-id-outside", lambda e: gen(e, [10**9]), TokenizeError, "outside"),
    ("gen-prompt-empty", lambda e: gen(e, "", add_special=False), ValueError, "empty"),
    ("gen-prompt-surrogate", lambda e: gen(e, "\ud800"), TokenizeError, "surrogate"),
    ("gen-prompt-bad-utf8", lambda e: gen(e, b"\xff hi"), TokenizeError, "UTF-8"),
    ("gen-prompt-above-unicode", lambda e: gen(e, ABOVE_UNICODE), TokenizeError, "UTF-8"),
    (
        "gen-prompt-over-context",
        lambda e: gen(e, too_long(e)),
        ContextFullError,
        "tokens but the context holds",
    ),
    ("gen-processor-not-callable", lambda e: gen(e, logits_processors=[5]), TypeError, "callables"),
    (
        "gen-processor-nan",
        lambda e: gen(e, logits_processors=[lambda toks, logits: logits * NAN]),
        ValueError,
        "NaN",
    ),
    (
        "gen-processor-shape",
        lambda e: gen(e, logits_processors=[lambda toks, logits: logits[:5]]),
        ValueError,
        "shape",
    ),
    ("gen-sampler-float", lambda e: gen(e, sampler=0.5), TypeError, "sampler"),
    (
        "gen-sampler-and-options",
        lambda e: gen(e, sampler=make_sampler(e.model), top_k=3),
        TypeError,
        "cannot be combined",
    ),
    ("gen-target-str", lambda e: generate("model", "Hi"), TypeError, "Model or a Context"),
    (
        "stream-max-tokens",
        lambda e: stream_generate(e.ctx, "Hi", max_tokens=0),
        ValueError,
        "max_tokens",
    ),
    (
        "step-sampler-params",
        lambda e: generate_step(e.ctx, [1], SamplingParams()),
        TypeError,
        "Sampler",
    ),
    (
        "step-prompt-empty",
        lambda e: generate_step(e.ctx, [], make_sampler(e.model)),
        ValueError,
        "empty",
    ),
    # -- llama-cpp-python compatible Llama -------------------------------------------------------
    (
        "llama-missing-path",
        lambda e: Llama("/nonexistent.gguf", verbose=False),
        ValueError,
        "does not exist",
    ),
    ("llama-n_ctx", lambda e: Llama(path(), n_ctx=-1, verbose=False), ValueError, "n_ctx"),
    (
        "llama-n_threads",
        lambda e: Llama(path(), n_threads=0, verbose=False),
        ValueError,
        "n_threads",
    ),
    ("llama-n_batch", lambda e: Llama(path(), n_batch=0, verbose=False), ValueError, "n_batch"),
    ("llama-unknown-option", lambda e: Llama(path(), n_cxt=8, verbose=False), TypeError, "n_cxt"),
    ("llama-tokenize-bad-utf8", lambda e: e.llama.tokenize(ABOVE_UNICODE), TokenizeError, "UTF-8"),
    ("llama-detokenize-outside", lambda e: e.llama.detokenize([N_VOCAB]), TokenizeError, "outside"),
    ("llama-eval-outside", lambda e: e.llama.eval([-1]), TokenizeError, "outside"),
    *[
        (
            f"completion-{name}",
            (lambda opts: lambda e: e.llama.create_completion("Hi", max_tokens=2, **opts))(kw),
            exc,
            match,
        )
        for name, kw, exc, match in [
            ("temperature-nan", {"temperature": NAN}, ValueError, "temperature"),
            ("top-p", {"top_p": 2.0}, ValueError, "top_p"),
            ("repeat-penalty-inf", {"repeat_penalty": INF}, ValueError, "repeat_penalty"),
            ("bias-outside", {"logit_bias": {"99999999": 1}}, ValueError, "logit_bias"),
            ("stop-int", {"stop": [5]}, TypeError, "stop"),
            ("logprobs-negative", {"logprobs": -1}, ValueError, "logprobs"),
            ("mirostat-mode", {"mirostat_mode": 7}, ValueError, "mirostat"),
        ]
    ],
    (
        "completion-prompt-over-context",
        lambda e: e.llama.create_completion("sea " * 600, max_tokens=2),
        ValueError,
        "exceed context window",
    ),
]


@pytest.mark.parametrize(
    ("call", "exc", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_argument_raises_a_documented_exception(env, call, exc, match):
    with pytest.raises(exc, match=match):
        call(env)


def test_the_context_is_still_usable_after_every_rejected_argument(env):
    env.ctx.reset()
    tokens = env.model.tokenizer.encode("The capital of France is")
    env.ctx.eval(tokens)
    assert env.ctx.tokens == tokens
    assert np.isfinite(env.ctx.logits()).all()


def test_valid_utf8_bytes_are_tokenized_like_the_text(env):
    tok = env.vocab.tokenizer
    text = "Ünïcödé ✓ 日本語 🦊"
    assert tok.encode(text.encode()) == tok.encode(text)


def test_numpy_token_ids_are_accepted(env):
    tok = env.vocab.tokenizer
    ids = tok.encode("Hello world")
    assert tok.decode(np.array(ids, np.int64)) == tok.decode(ids)
    with pytest.raises(TokenizeError, match="outside"):
        tok.decode(np.array([N_VOCAB], np.int32))


def test_webgpu_without_an_adapter_is_a_backend_error(monkeypatch):
    from llama_webgpu import model as model_module

    none = lw.DeviceList()
    none.webgpu_unavailable = "no adapter here"
    monkeypatch.setattr(model_module, "devices", lambda: none)
    with pytest.raises(lw.BackendError, match="no WebGPU device"):
        Model(path(), device="webgpu")


def test_use_after_close_is_a_closed_error_not_a_crash():
    m = Model(path(), vocab_only=True)
    tok = m.tokenizer
    m.close()
    with pytest.raises(ClosedError):
        tok.encode("hi")
