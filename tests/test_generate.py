"""Generation on the CPU with SmolLM2-135M: determinism, seeds, constraints, stops, streaming,
cancellation and prompt-cache reuse; one short run on WebGPU."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from llama_webgpu.errors import ContextFullError
from llama_webgpu.generate import generate, generate_step, stream_generate
from llama_webgpu.model import Model
from llama_webgpu.models import model_path
from llama_webgpu.sampling import SamplingParams, make_sampler

pytestmark = pytest.mark.model


def encode(model, text: str) -> list[int]:
    """What stream_generate makes of a text prompt."""
    return model.tokenizer.encode(text, parse_special=True)


def chat(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


CAPITAL = chat("What is the capital of France?")
HAIKU = chat("Write a haiku about the sea.")
# one thread: with two, llama.cpp's spinning worker threads slow to a crawl whenever anything
# else runs on a two-core machine (CI); one thread is steady
THREADS = 1
SAMPLED = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}


@pytest.fixture(scope="module")
def model():
    with Model(model_path(), device="cpu") as m:
        yield m


@pytest.fixture(scope="module")
def ctx(model):
    with model.context(n_ctx=512, n_threads=THREADS) as c:
        yield c


@pytest.fixture(scope="module")
def greedy_capital(ctx):
    ctx.reset()
    return generate(ctx, CAPITAL, max_tokens=48, temperature=0)


def test_greedy_is_deterministic(ctx, greedy_capital):
    assert greedy_capital.finish_reason == "stop"
    assert "Paris" in greedy_capital.text
    ctx.reset()
    again = generate(ctx, CAPITAL, max_tokens=48, temperature=0)
    assert again.tokens == greedy_capital.tokens
    assert again.text == greedy_capital.text
    # and once more, reusing the prompt already in the cache
    assert generate(ctx, CAPITAL, max_tokens=48, temperature=0).tokens == again.tokens


def test_final_token_is_end_of_generation_and_not_in_the_text(model, greedy_capital):
    tok = model.tokenizer
    assert tok.is_eog(greedy_capital.tokens[-1])
    assert greedy_capital.text == tok.decode(greedy_capital.tokens[:-1])
    assert greedy_capital.generation_tokens == len(greedy_capital.tokens)


def test_same_seed_reproduces_a_sampled_run_and_another_seed_differs(ctx):
    a = generate(ctx, HAIKU, max_tokens=24, seed=11, **SAMPLED)
    b = generate(ctx, HAIKU, max_tokens=24, seed=11, **SAMPLED)
    c = generate(ctx, HAIKU, max_tokens=24, seed=12, **SAMPLED)
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens


def test_top_k_1_equals_greedy(ctx, greedy_capital):
    out = generate(ctx, CAPITAL, max_tokens=48, temperature=0.9, top_k=1, seed=1)
    assert out.tokens == greedy_capital.tokens


def test_logit_bias_minus_inf_on_the_greedy_token_changes_the_first_token(ctx, greedy_capital):
    first = greedy_capital.tokens[0]
    out = generate(ctx, CAPITAL, max_tokens=4, temperature=0, logit_bias={first: -math.inf})
    assert out.tokens[0] != first
    assert first not in out.tokens


def test_sampler_params_dict_and_sampler_object_are_accepted(model, ctx, greedy_capital):
    by_params = generate(ctx, CAPITAL, max_tokens=48, sampler=SamplingParams(temperature=0))
    by_dict = generate(ctx, CAPITAL, max_tokens=48, sampler={"temperature": 0})
    with make_sampler(model, temperature=0) as s:
        by_sampler = generate(ctx, CAPITAL, max_tokens=48, sampler=s)
        assert not s.closed  # a Sampler we are given is not ours to close
        with pytest.raises(TypeError, match="cannot be combined"):
            generate(ctx, CAPITAL, sampler=s, temperature=0.5)
    assert by_params.tokens == by_dict.tokens == by_sampler.tokens == greedy_capital.tokens


def test_a_sampler_reused_across_generations_starts_afresh(model, ctx):
    with make_sampler(model, seed=9, **SAMPLED) as s:
        a = generate(ctx, HAIKU, max_tokens=12, sampler=s)
        b = generate(ctx, HAIKU, max_tokens=12, sampler=s)
    assert a.tokens == b.tokens
    question = chat("Is water wet? Answer yes or no.")
    with make_sampler(model, temperature=0, grammar='root ::= "yes" | "no"') as s:
        first = generate(ctx, question, max_tokens=8, sampler=s)
        second = generate(ctx, question, max_tokens=8, sampler=s)  # the grammar restarted
    assert first.text == second.text
    assert first.text in ("yes", "no")


def test_grammar_restricts_the_answer_to_yes_or_no(ctx):
    out = generate(
        ctx,
        chat("Is the sky green? Answer yes or no."),
        max_tokens=16,
        grammar='root ::= "yes" | "no"',
        seed=3,
    )
    assert out.text in ("yes", "no")
    assert out.finish_reason == "stop"


def test_json_schema_output_parses_and_validates(ctx):
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 24},
            "country": {"type": "string", "maxLength": 24},
            "capital": {"type": "boolean"},
            "rank": {"enum": ["small", "medium", "large"]},
        },
        "required": ["city", "country", "capital", "rank"],
        "additionalProperties": False,
    }
    out = generate(
        ctx,
        chat("Describe Paris as JSON with city, country, capital and rank."),
        max_tokens=96,
        temperature=0,
        json_schema=schema,
    )
    assert out.finish_reason == "stop", out.text
    data = json.loads(out.text)
    assert set(data) == {"city", "country", "capital", "rank"}
    assert isinstance(data["capital"], bool)
    assert data["rank"] in ("small", "medium", "large")
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(data, schema)


def test_streamed_segments_join_to_the_generated_text(ctx):
    responses = list(stream_generate(ctx, HAIKU, max_tokens=32, temperature=0))
    whole = generate(ctx, HAIKU, max_tokens=32, temperature=0)
    assert "".join(r.text for r in responses) == whole.text
    assert [r.token for r in responses] == whole.tokens
    assert [r.finish_reason for r in responses[:-1]] == [None] * (len(responses) - 1)
    assert responses[-1].finish_reason == whole.finish_reason
    last = responses[-1]
    assert last.prompt_tokens == len(encode(ctx.model, HAIKU))
    assert last.generation_tokens == len(responses)
    assert last.time_to_first_token > 0
    assert last.prompt_tps > 0
    assert last.peak_memory > 10 * 2**20


@pytest.mark.parametrize("stop", [" France is", "Paris", "capital of"])
def test_stop_string_cuts_the_text_exactly(ctx, greedy_capital, stop):
    full = greedy_capital.text
    assert stop in full
    responses = list(stream_generate(ctx, CAPITAL, max_tokens=48, temperature=0, stop=[stop]))
    text = "".join(r.text for r in responses)
    assert text == full[: full.index(stop)]
    assert responses[-1].finish_reason == "stop"
    # nothing of the stop string was ever given out, not even its start
    assert not any(stop[:2] in r.text for r in responses)


def test_partial_stop_match_is_released_when_it_does_not_complete(ctx, greedy_capital):
    # "Paris" begins like the stop string "Parisian" but never completes it
    out = generate(ctx, CAPITAL, max_tokens=48, temperature=0, stop="Parisian")
    assert out.text == greedy_capital.text
    assert out.finish_reason == "stop"


def test_stop_token_ends_generation(ctx, greedy_capital):
    stop_at = greedy_capital.tokens[2]
    out = generate(ctx, CAPITAL, max_tokens=48, temperature=0, stop_tokens=[stop_at])
    assert out.tokens == greedy_capital.tokens[:3]
    assert out.finish_reason == "stop"
    assert out.text == ctx.model.tokenizer.decode(greedy_capital.tokens[:2])


def test_max_tokens_is_respected_with_finish_reason_length(ctx):
    responses = list(stream_generate(ctx, HAIKU, max_tokens=5, temperature=0))
    assert len(responses) == 5
    assert responses[-1].finish_reason == "length"
    assert responses[-1].generation_tokens == 5


def test_generation_stops_at_the_end_of_the_context(model):
    with model.context(n_ctx=64, n_threads=THREADS) as small:  # llama.cpp rounds this up (to 256)
        n_ctx = small.n_ctx
        prompt = encode(model, HAIKU)
        prompt += encode(model, " sea")[-1:] * (n_ctx - 3 - len(prompt))
        no_end = {t: -math.inf for t in model.tokenizer.eog_tokens}
        out = generate(small, prompt, max_tokens=None, temperature=0, logit_bias=no_end)
        assert out.finish_reason == "length"
        assert len(out.tokens) == 4  # 3 evaluated, the last one sampled but not evaluated
        assert len(small.tokens) == n_ctx


def test_prompt_longer_than_the_context_raises_before_any_work(model):
    with model.context(n_ctx=64, n_threads=THREADS) as small:
        too_long = [encode(model, " sea")[-1]] * (small.n_ctx + 1)
        with pytest.raises(ContextFullError, match=f"{small.n_ctx + 1} tokens"):
            stream_generate(small, too_long)
        assert small.tokens == []


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"temperature": math.nan}, ValueError, "temperature"),
        ({"top_p": 1.5}, ValueError, "top_p"),
        ({"logit_bias": {10**7: -1.0}}, ValueError, "logit_bias"),
        ({"max_tokens": -1}, ValueError, "max_tokens"),
        ({"max_tokens": 0}, ValueError, "max_tokens"),
        ({"logprobs": -2}, ValueError, "logprobs"),
        ({"stop": [""]}, ValueError, "stop"),
        ({"sampler": 0.5}, TypeError, "sampler"),
    ],
)
def test_invalid_arguments_raise(ctx, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        generate(ctx, CAPITAL, **kwargs)


def test_breaking_out_of_a_stream_then_generating_equals_a_fresh_run(ctx):
    ctx.reset()
    fresh = generate(ctx, HAIKU, max_tokens=20, seed=5, **SAMPLED)
    for i, _ in enumerate(stream_generate(ctx, HAIKU, max_tokens=20, seed=5, **SAMPLED)):
        if i == 6:
            break
    assert generate(ctx, HAIKU, max_tokens=20, seed=5, **SAMPLED).tokens == fresh.tokens


def test_an_exception_in_the_consumer_leaves_the_context_usable(ctx, greedy_capital):
    with pytest.raises(KeyboardInterrupt):
        for i, _ in enumerate(stream_generate(ctx, CAPITAL, max_tokens=48, temperature=0)):
            if i == 2:
                raise KeyboardInterrupt
    assert generate(ctx, CAPITAL, max_tokens=48, temperature=0).tokens == greedy_capital.tokens


def test_prompt_cache_reuse_evaluates_only_the_new_part(model, monkeypatch):
    with model.context(n_ctx=512, n_threads=THREADS) as c:
        evaluated: list[int] = []
        real_eval = c.eval

        def counting_eval(tokens, **kw):
            evaluated.append(len(tokens))
            return real_eval(tokens, **kw)

        real_step = c._step  # a generation evaluates its tokens here, after the prompt

        def counting_step(token, sampler):
            evaluated.append(1)
            return real_step(token, sampler)

        monkeypatch.setattr(c, "eval", counting_eval)
        monkeypatch.setattr(c, "_step", counting_step)
        first = CAPITAL
        generate(c, first, max_tokens=3, temperature=0)
        assert evaluated[0] == len(encode(model, first))
        evaluated.clear()
        follow_up = first + "The capital of France is Paris.<|im_end|>\n" + chat("And Spain?")
        n_new = len(encode(model, follow_up)) - len(encode(model, first))
        generate(c, follow_up, max_tokens=3, temperature=0)
        # the shared prefix is reused: only the new tokens (and the generated ones) are evaluated
        assert evaluated[0] <= n_new + 1
        assert sum(evaluated) == evaluated[0] + 2  # then one eval per generated token


def test_generate_step_yields_tokens_and_logprobs(model, ctx, greedy_capital):
    prompt = encode(model, CAPITAL)
    with make_sampler(model, temperature=0) as s:
        steps = list(generate_step(ctx, prompt, s, max_tokens=3, logprobs=2))
    assert [t for t, _, _ in steps] == greedy_capital.tokens[:3]
    for token, lp, top in steps:
        assert lp < 0
        assert len(top) == 2
        assert next(iter(top)) == token  # greedy: the chosen token is the most likely
        assert top[token] == lp


def test_logprobs_are_collected_by_generate(ctx):
    out = generate(ctx, HAIKU, max_tokens=6, temperature=0, logprobs=3)
    assert len(out.logprobs) == len(out.top_logprobs) == len(out.tokens)
    assert all(len(top) == 3 for top in out.top_logprobs)
    assert generate(ctx, HAIKU, max_tokens=2, temperature=0).logprobs is None


def test_logits_processors_see_the_tokens_and_change_the_choice(ctx, greedy_capital):
    seen: list[list[int]] = []
    first = greedy_capital.tokens[0]

    def ban_first(tokens, logits):
        seen.append(list(tokens))
        logits[first] = -math.inf
        return logits

    out = generate(ctx, CAPITAL, max_tokens=3, temperature=0, logits_processors=[ban_first])
    assert out.tokens[0] != first
    assert seen[0] == encode(ctx.model, CAPITAL)
    assert seen[1] == [*seen[0], out.tokens[0]]


def test_a_model_gets_a_cached_default_context(model, greedy_capital):
    out = generate(model, CAPITAL, max_tokens=3, temperature=0)
    assert out.tokens == greedy_capital.tokens[:3]
    first_ctx = model._default_context
    generate(model, CAPITAL, max_tokens=2, temperature=0)
    assert model._default_context is first_ctx
    prompt = encode(model, CAPITAL)
    assert first_ctx.tokens[: len(prompt)] == prompt


@pytest.mark.webgpu
def test_webgpu_greedy_generation_is_repeatable(webgpu_device, greedy_capital):
    with Model(model_path(), device="webgpu") as gpu, gpu.context(n_ctx=128) as c:
        assert gpu.device is not None
        a = generate(c, CAPITAL, max_tokens=4, temperature=0)
        c.reset()
        b = generate(c, CAPITAL, max_tokens=4, temperature=0)
    assert len(a.tokens) == 4
    assert a.tokens == b.tokens
    # a confident answer: the GPU agrees with the CPU ("The capital of France")
    assert a.tokens == greedy_capital.tokens[:4]


def _os_threads() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def test_cpu_worker_threads_give_the_same_tokens_and_end_with_the_context(model, greedy_capital):
    # n_threads > 1 attaches a CPU threadpool kept between decode calls (as llama-bench does)
    before = _os_threads()
    with model.context(n_ctx=128, n_threads=2, n_threads_batch=3) as c:
        assert _os_threads() >= before + 1 + 2  # a worker for 2 threads, two for 3
        out = generate(c, CAPITAL, max_tokens=len(greedy_capital.tokens), temperature=0)
    assert out.tokens == greedy_capital.tokens
    assert _os_threads() == before


@pytest.mark.parametrize("bias", ["none", "ban the greedy tokens"])
def test_plain_greedy_generation_picks_the_argmax_of_each_steps_logits(model, bias):
    """A greedy generation with at most a logit bias decodes and picks in one C call per token
    (lw_decode_greedy); the same tokens come from evaluating one token at a time and taking
    numpy's argmax of the logits, and the context ends in the same state."""
    prompt = encode(model, CAPITAL)
    with model.context(n_ctx=128, n_threads=THREADS) as c:
        ban = {}
        if bias != "none":  # the first tokens it would pick unbiased, so bias changes them
            ban = {t: -math.inf for t in generate(c, prompt, max_tokens=4, temperature=0).tokens}
        out = generate(c, prompt, max_tokens=12, temperature=0, logit_bias=ban)
        fused_state = (list(c.tokens), c.logits())
        assert not set(out.tokens) & set(ban)
        n = len(out.tokens)  # 12, or fewer up to an end-of-generation token
        assert n >= 4
        c.reset()
        c.eval(prompt)
        expected = []
        for _ in range(n):
            logits = c.logits()
            for t, b in ban.items():
                logits[t] += b
            expected.append(int(np.argmax(logits)))
            if len(expected) < n:
                c.eval([expected[-1]])
        assert out.tokens == expected
        assert c.tokens == fused_state[0] == prompt + expected[:-1]
        np.testing.assert_array_equal(c.logits(), fused_state[1])


def test_sampled_generation_picks_what_the_sampler_picks_step_by_step(model):
    """A generation sampling with temperature, top-k/top-p and a repetition penalty decodes and
    samples in one C call per token (lw_decode_sample); evaluating token by token and calling
    Sampler.sample with the same seed gives the same tokens and leaves the same context."""
    prompt = encode(model, CAPITAL)
    opts = dict(temperature=0.9, top_k=40, top_p=0.95, repeat_penalty=1.1, seed=7)
    with model.context(n_ctx=128, n_threads=THREADS) as c:
        out = generate(c, prompt, max_tokens=16, **opts)
        fused_tokens, fused_logits = list(c.tokens), c.logits()
        n = len(out.tokens)
        assert n >= 4
        c.reset()
        c.eval(prompt)
        with make_sampler(model, **opts) as s:
            s.feed_prompt(prompt)
            expected = []
            for _ in range(n):
                expected.append(s.sample(c))
                if len(expected) < n:
                    c.eval([expected[-1]])
        assert out.tokens == expected
        assert len(set(expected)) > 2  # it sampled, not a constant
        assert c.tokens == fused_tokens == prompt + expected[:-1]
        np.testing.assert_array_equal(c.logits(), fused_logits)
