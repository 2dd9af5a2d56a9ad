"""llama-cpp-python compatibility (`Llama`) on the CPU with SmolLM2-135M: constructor options,
tokens, completion and chat dicts (greedy, stop, stream, echo, logprobs, JSON mode, tools),
sampling hooks, embeddings, state and argument errors."""

from __future__ import annotations

import json
import logging
import math
import pickle
import warnings

import numpy as np
import pytest

from llama_webgpu import Llama, LlamaGrammar, LlamaState
from llama_webgpu.compat import (
    LLAMA_POOLING_TYPE_MEAN,
    LlamaCompatWarning,
    LogitsProcessorList,
    StoppingCriteriaList,
)
from llama_webgpu.errors import LlamaError
from llama_webgpu.models import model_path

pytestmark = pytest.mark.model

# one thread: ggml's spinning thread pool slows to a crawl on a busy two-core machine
THREADS = {"n_threads": 1, "n_threads_batch": 1}
PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
QUESTION = [  # SmolLM2's default system prompt makes it ramble: give it a plainer one
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 24}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def llm():
    with Llama(
        model_path(),
        n_gpu_layers=0,
        n_ctx=512,
        n_batch=256,
        seed=1234,
        logits_all=False,
        use_mmap=True,
        last_n_tokens_size=64,
        verbose=False,
        **THREADS,
    ) as model:
        yield model


@pytest.fixture(scope="module")
def greedy(llm):
    return llm(PROMPT, max_tokens=48, temperature=0)


def test_constructor_takes_llama_cpp_python_options_and_runs_on_the_cpu(llm):
    assert llm._model.device is None  # n_gpu_layers=0 and no device: the CPU
    assert llm.n_ctx() == 512
    assert llm.n_batch == 256
    assert llm.n_vocab() == 49152
    assert llm.n_embd() == 576
    assert llm.metadata["general.architecture"] == "llama"
    assert llm.chat_format == "chat_template.default"
    assert (llm.token_bos(), llm.token_eos()) == (1, 2)
    assert llm.detokenize([llm.token_nl()]) == b"\n"


def test_tokenize_matches_the_vocabulary_which_adds_no_bos(llm):
    assert llm.tokenize(b"Hello world") == [19556, 905]
    assert llm.tokenize(b"Hello world", add_bos=False) == [19556, 905]
    assert llm.tokenize(b"<|im_start|>", special=True) == [1]
    assert len(llm.tokenize(b"<|im_start|>", special=False)) > 1


def test_detokenize_round_trips_to_bytes(llm):
    tokens = llm.tokenize("Héllo wörld, 你好".encode())
    out = llm.detokenize(tokens)
    assert isinstance(out, bytes)
    assert out.decode() == "Héllo wörld, 你好"
    assert llm.detokenize([905], prev_tokens=[19556]) == b" world"
    assert llm.detokenize([1], special=True) == b"<|im_start|>"
    assert llm.detokenize([1]) == b""


def test_greedy_completion_is_repeatable_and_shaped_like_openai(llm, greedy):
    assert set(greedy) == {"id", "object", "created", "model", "choices", "usage"}
    assert greedy["id"].startswith("cmpl-")
    assert greedy["object"] == "text_completion"
    assert isinstance(greedy["created"], int)
    assert greedy["model"] == llm.model_path
    (choice,) = greedy["choices"]
    assert set(choice) == {"text", "index", "logprobs", "finish_reason"}
    assert choice["index"] == 0
    assert choice["logprobs"] is None
    assert choice["finish_reason"] == "stop"
    assert "Paris" in choice["text"]
    again = llm(PROMPT, max_tokens=48, temperature=0)
    assert again["choices"][0]["text"] == choice["text"]
    assert again["id"] != greedy["id"]


def test_usage_counts_the_real_tokens(llm):
    out = llm(PROMPT, max_tokens=48, temperature=0)
    usage = out["usage"]
    assert usage["prompt_tokens"] == len(llm.tokenize(PROMPT.encode(), special=True))
    # the end-of-generation token is sampled but neither counted nor evaluated
    assert llm.n_tokens == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    generated = llm._input_ids[usage["prompt_tokens"] :].tolist()
    assert llm.detokenize(generated).decode() == out["choices"][0]["text"]


def test_max_tokens_ends_with_length(llm, greedy):
    out = llm(PROMPT, max_tokens=3, temperature=0)
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] == 3
    assert greedy["choices"][0]["text"].startswith(out["choices"][0]["text"])


def test_stop_string_cuts_the_text(llm, greedy):
    full = greedy["choices"][0]["text"]
    out = llm(PROMPT, max_tokens=48, temperature=0, stop=["Paris", "never"])
    assert out["choices"][0]["text"] == full[: full.index("Paris")]
    assert out["choices"][0]["finish_reason"] == "stop"


def test_streamed_chunks_join_to_the_same_text(llm, greedy):
    chunks = list(llm(PROMPT, max_tokens=48, temperature=0, stream=True))
    assert len(chunks) > 2
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert len({c["id"] for c in chunks}) == 1
    assert all("usage" not in c for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "".join(c["choices"][0]["text"] for c in chunks) == greedy["choices"][0]["text"]
    # a stop string that tokens complete piece by piece is held back, never sent in part
    stopped = llm(PROMPT, max_tokens=48, temperature=0, stop=["Paris"], stream=True)
    texts = [c["choices"][0]["text"] for c in stopped]
    full = greedy["choices"][0]["text"]
    assert "".join(texts) == full[: full.index("Paris")]


def test_echo_prepends_the_prompt(llm):
    prompt = "The capital of France is"
    plain = llm(prompt, max_tokens=4, temperature=0)
    echoed = llm(prompt, max_tokens=4, temperature=0, echo=True)
    assert echoed["choices"][0]["text"] == prompt + plain["choices"][0]["text"]
    streamed = llm(prompt, max_tokens=4, temperature=0, echo=True, stream=True)
    assert "".join(c["choices"][0]["text"] for c in streamed) == echoed["choices"][0]["text"]


def test_logprobs_give_each_token_and_its_top_alternatives(llm):
    out = llm(PROMPT, max_tokens=6, temperature=0, logprobs=2)
    text = out["choices"][0]["text"]
    lp = out["choices"][0]["logprobs"]
    assert set(lp) == {"tokens", "text_offset", "token_logprobs", "top_logprobs"}
    assert len(lp["tokens"]) == out["usage"]["completion_tokens"] == 6
    assert "".join(lp["tokens"]) == text
    assert lp["text_offset"][0] == len(PROMPT)
    assert lp["text_offset"] == sorted(lp["text_offset"])
    for token, value, top in zip(
        lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True
    ):
        assert len(top) == 2
        assert value <= 0
        assert top[token] == value == max(top.values())  # greedy: the chosen token is the top one
    streamed = list(llm(PROMPT, max_tokens=6, temperature=0, logprobs=2, stream=True))
    pieces = [c["choices"][0]["logprobs"] for c in streamed]
    assert [t for p in pieces if p for t in p["tokens"]] == lp["tokens"]


def test_echo_with_logprobs_scores_the_prompt_tokens(llm):
    prompt = "The capital of France is"
    out = llm(prompt, max_tokens=2, temperature=0, logprobs=1, echo=True)
    lp = out["choices"][0]["logprobs"]
    n_prompt = out["usage"]["prompt_tokens"]
    assert len(lp["tokens"]) == n_prompt + 2
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(v <= 0 for v in lp["token_logprobs"][1:])
    assert "".join(lp["tokens"]) == out["choices"][0]["text"]
    # each prompt token is scored given the tokens before it
    tokens = llm.tokenize(prompt.encode())
    llm.reset()
    llm.eval(tokens[:2])
    expected = Llama.logits_to_logprobs(llm.scores[-1])[tokens[2]]
    assert lp["tokens"][2] == " of"
    assert math.isclose(lp["token_logprobs"][2], float(expected), abs_tol=1e-4)


def test_token_list_prompt_equals_the_text_prompt(llm, greedy):
    tokens = llm.tokenize(PROMPT.encode(), special=True)
    out = llm(tokens, max_tokens=48, temperature=0)
    assert out["choices"][0]["text"] == greedy["choices"][0]["text"]


def test_same_seed_same_sample_and_seeds_differ(llm):
    kw = {"max_tokens": 24, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
    prompt = "<|im_start|>user\nWrite a poem.<|im_end|>\n<|im_start|>assistant\n"
    a = llm(prompt, seed=7, **kw)["choices"][0]["text"]
    b = llm(prompt, seed=7, **kw)["choices"][0]["text"]
    c = llm(prompt, seed=8, **kw)["choices"][0]["text"]
    assert a == b
    assert a != c


def test_grammar_and_json_schema_grammar_constrain_the_text(llm):
    yes_no = LlamaGrammar.from_string('root ::= "yes" | "no"')
    out = llm(PROMPT, max_tokens=8, grammar=yes_no, seed=1)
    assert out["choices"][0]["text"] in ("yes", "no")
    schema = {"type": "object", "properties": {"capital": {"type": "string", "maxLength": 20}}}
    schema["required"] = ["capital"]
    grammar = LlamaGrammar.from_json_schema(json.dumps(schema))
    out = llm(PROMPT, max_tokens=48, temperature=0, grammar=grammar)
    assert set(json.loads(out["choices"][0]["text"])) == {"capital"}


def test_logits_processor_logit_bias_and_stopping_criteria_are_applied(llm, greedy):
    first = llm.tokenize(greedy["choices"][0]["text"].encode())[0]

    def ban_first(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        assert input_ids.dtype == np.intc
        scores[first] = -np.inf
        return scores

    bans = LogitsProcessorList([ban_first])
    for kw in ({"logits_processor": bans}, {"logit_bias": {str(first): -100.0}}):
        out = llm(PROMPT, max_tokens=2, temperature=0, **kw)
        assert llm.tokenize(out["choices"][0]["text"].encode())[0] != first
    n_prompt = len(llm.tokenize(PROMPT.encode(), special=True))

    def after_three(input_ids: np.ndarray, logits: np.ndarray) -> bool:
        assert logits.shape == (llm.n_vocab(),)
        return len(input_ids) >= n_prompt + 3

    criteria = StoppingCriteriaList([after_three])
    out = llm(PROMPT, max_tokens=48, temperature=0, stopping_criteria=criteria)
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] == 3


def test_generate_eval_sample_and_scores(llm, greedy):
    tokens = llm.tokenize(PROMPT.encode(), special=True)
    expected = llm.tokenize(greedy["choices"][0]["text"].encode())[:4]
    got = []
    for token in llm.generate(tokens, temp=0):
        got.append(token)
        if len(got) == 4:
            break
    assert got == expected
    llm.reset()
    assert llm.n_tokens == 0
    llm.eval(tokens)
    assert llm.n_tokens == len(tokens)
    assert llm._input_ids.tolist() == tokens
    assert llm.scores.shape == (len(tokens), llm.n_vocab())
    assert int(np.argmax(llm.scores[llm.n_tokens - 1])) == expected[0]
    assert llm.sample(temp=0) == expected[0]
    llm.n_tokens = 3  # dropping tokens from the cache, as llama-cpp-python code does
    assert llm._input_ids.tolist() == tokens[:3]


def test_logits_all_keeps_a_row_per_position(llm):
    tokens = llm.tokenize(b"The capital of France is Paris")
    with Llama(model_path(), logits_all=True, n_ctx=64, verbose=False, **THREADS) as full:
        full.eval(tokens)
        assert full.scores.shape == (len(tokens), full.n_vocab())
        assert len(full.eval_logits) == len(tokens)
        for i in (0, 2, len(tokens) - 1):
            llm.reset()
            llm.eval(tokens[: i + 1])
            assert np.allclose(full.scores[i], llm.scores[-1], atol=1e-2)
            assert full.sample(temp=0, idx=i) == int(np.argmax(llm.scores[-1]))
    with pytest.raises(ValueError, match="logits_all"):
        llm.sample(temp=0, idx=0)


def test_chat_completion_returns_an_assistant_message_and_streams_the_same(llm):
    out = llm.create_chat_completion(QUESTION, max_tokens=48, temperature=0)
    assert out["id"].startswith("chatcmpl-")
    assert out["object"] == "chat.completion"
    (choice,) = out["choices"]
    assert choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    assert isinstance(content, str) and content.strip()
    assert "Paris" in content
    assert choice["finish_reason"] == "stop"
    assert out["usage"]["total_tokens"] > out["usage"]["completion_tokens"] > 0
    chunks = list(llm.create_chat_completion(QUESTION, max_tokens=48, temperature=0, stream=True))
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    joined = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert joined == content


def test_chat_logprobs_use_the_chat_shape(llm):
    out = llm.create_chat_completion(
        QUESTION, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3
    )
    content = out["choices"][0]["logprobs"]["content"]
    assert len(content) == 4
    assert "".join(c["token"] for c in content) == out["choices"][0]["message"]["content"]
    assert all(len(c["top_logprobs"]) == 3 for c in content)


def test_json_object_response_format_gives_json(llm):
    ask = "Return a JSON object with the name and age of a person called Bob who is 30."
    messages = [{"role": "user", "content": ask}]
    out = llm.create_chat_completion(
        messages, response_format={"type": "json_object"}, temperature=0, max_tokens=128
    )
    assert out["choices"][0]["finish_reason"] == "stop"
    assert json.loads(out["choices"][0]["message"]["content"]) == {"name": "Bob", "age": 30}


def test_forced_tool_choice_yields_a_tool_call_with_json_arguments(llm):
    messages = [{"role": "user", "content": "What is the weather like in Paris?"}]
    choice = {"type": "function", "function": {"name": "get_weather"}}
    out = llm.create_chat_completion(
        messages, tools=[WEATHER_TOOL], tool_choice=choice, temperature=0, max_tokens=48
    )
    (result,) = out["choices"]
    assert result["finish_reason"] == "tool_calls"
    message = result["message"]
    assert message["content"] is None
    (call,) = message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    args = json.loads(call["function"]["arguments"])
    assert isinstance(args["city"], str)
    chunks = list(
        llm.create_chat_completion(
            messages,
            tools=[WEATHER_TOOL],
            tool_choice=choice,
            temperature=0,
            max_tokens=48,
            stream=True,
        )
    )
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[1:-1]]
    assert calls[0]["function"]["name"] == "get_weather"
    assert "".join(c["function"]["arguments"] for c in calls) == call["function"]["arguments"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_required_tool_choice_calls_one_of_several_tools(llm):
    clock = {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Get the current time in a time zone",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"type": "string", "maxLength": 24}},
                "required": ["zone"],
            },
        },
    }
    messages = [{"role": "user", "content": "What is the weather like in Paris?"}]
    out = llm.create_chat_completion(
        messages, tools=[WEATHER_TOOL, clock], tool_choice="required", temperature=0, max_tokens=64
    )
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    (call,) = out["choices"][0]["message"]["tool_calls"]
    name = call["function"]["name"]
    assert name in ("get_weather", "get_time")
    args = json.loads(call["function"]["arguments"])
    assert set(args) == ({"city"} if name == "get_weather" else {"zone"})


def test_auto_tools_reply_without_a_call_is_plain_content_streamed_or_not(llm):
    messages = [{"role": "user", "content": "Tell me about Paris."}]
    kw = {"tools": [WEATHER_TOOL], "temperature": 0, "max_tokens": 12}
    out = llm.create_chat_completion(messages, **kw)
    message = out["choices"][0]["message"]
    assert "tool_calls" not in message and message["content"]
    chunks = list(llm.create_chat_completion(messages, stream=True, **kw))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant"} and deltas[-1] == {}
    assert "".join(d.get("content") or "" for d in deltas) == message["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == out["choices"][0]["finish_reason"]


def test_legacy_function_call_sets_function_call_too(llm):
    messages = [{"role": "user", "content": "What is the weather like in Paris?"}]
    out = llm.create_chat_completion(
        messages,
        functions=[WEATHER_TOOL["function"]],
        function_call={"name": "get_weather"},
        temperature=0,
        max_tokens=48,
    )
    message = out["choices"][0]["message"]
    assert message["function_call"]["name"] == "get_weather"
    assert json.loads(message["function_call"]["arguments"]) == json.loads(
        message["tool_calls"][0]["function"]["arguments"]
    )


def test_save_and_load_state_reproduce_the_next_greedy_token(llm):
    tokens = llm.tokenize(PROMPT.encode(), special=True)
    llm.reset()
    llm.eval(tokens)
    state = llm.save_state()
    assert isinstance(state, LlamaState)
    assert state.n_tokens == len(tokens)
    state = pickle.loads(pickle.dumps(state))
    expected = llm.sample(temp=0)
    llm.reset()
    llm.eval(llm.tokenize(b"Something else entirely"))
    llm.load_state(state)
    assert llm.n_tokens == len(tokens)
    assert llm._input_ids.tolist() == tokens
    assert llm.sample(temp=0) == expected
    llm.eval([expected])  # the restored cache continues the sequence
    assert llm.n_tokens == len(tokens) + 1


def test_embed_gives_unit_vectors_of_n_embd_with_mean_pooling():
    with Llama(
        model_path(),
        embedding=True,
        pooling_type=LLAMA_POOLING_TYPE_MEAN,
        n_ctx=256,
        verbose=False,
        **THREADS,
    ) as emb:
        one = emb.embed("Paris is the capital of France.", normalize=True)
        assert isinstance(one, list) and len(one) == emb.n_embd()
        assert math.isclose(float(np.linalg.norm(one)), 1.0, rel_tol=1e-4)
        two = emb.embed(["a cat", "a dog"], normalize=True)
        assert len(two) == 2 and all(len(v) == emb.n_embd() for v in two)
        assert all(math.isclose(float(np.linalg.norm(v)), 1.0, rel_tol=1e-4) for v in two)
        raw = emb.embed("Paris is the capital of France.")  # normalize=False by default there
        assert np.allclose(np.asarray(raw) / np.linalg.norm(raw), one, atol=1e-5)
        resp = emb.create_embedding(["a cat", "a dog"])
        assert resp["object"] == "list"
        assert [d["index"] for d in resp["data"]] == [0, 1]
        assert resp["usage"]["prompt_tokens"] == len(emb.tokenize(b"a cat")) * 2


def test_chat_handler_is_called_as_llama_cpp_python_calls_it(llm):
    seen = {}

    def handler(*, llama, messages, **kwargs):
        seen.update(kwargs, llama=llama, messages=messages)
        return {"handled": True}

    with Llama(model_path(), vocab_only=True, chat_handler=handler, verbose=False) as custom:
        assert custom.chat_format is None
        assert custom.create_chat_completion(QUESTION, temperature=0.5) == {"handled": True}
    assert seen["llama"] is custom and seen["messages"] == QUESTION
    assert seen["temperature"] == 0.5 and seen["tools"] is None and seen["stream"] is False


def test_verbose_routes_native_logs_to_stderr_and_pickling_reloads():
    log = logging.getLogger("llama_webgpu.native")
    with Llama(model_path(), vocab_only=True, verbose=True) as loud:
        assert any(type(h).__name__ == "_StderrHandler" for h in log.handlers)
        assert log.getEffectiveLevel() == logging.INFO
        again = pickle.loads(pickle.dumps(loud))
    with again:
        assert again.tokenize(b"Hello world") == [19556, 905]
    Llama(model_path(), vocab_only=True, verbose=False).close()
    assert not any(type(h).__name__ == "_StderrHandler" for h in log.handlers)


def test_vocab_only_tokenizes_but_cannot_complete_and_ignored_options_warn():
    with pytest.warns(LlamaCompatWarning, match="main_gpu"):
        vocab = Llama(model_path(), vocab_only=True, main_gpu=1, verbose=False)
    with vocab:
        assert vocab.tokenize(b"Hello world") == [19556, 905]
        with pytest.raises(LlamaError, match="vocab_only"):
            vocab("Hello", max_tokens=2)
    vocab.close()  # twice is fine
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # llama-cpp-python's defaults given explicitly: silent
        Llama(model_path(), vocab_only=True, main_gpu=0, rope_freq_base=0.0, verbose=False).close()


def test_bad_arguments_raise(llm):
    with pytest.raises(ValueError, match="n_ctx"):
        Llama(model_path(), n_ctx=-1, verbose=False)
    with pytest.raises(TypeError, match="no_such_option"):
        Llama(model_path(), no_such_option=True, verbose=False)
    with pytest.raises(ValueError, match="does not exist"):
        Llama("/nonexistent/model.gguf", verbose=False)
    with pytest.raises(ValueError, match="chat_format"):
        Llama(model_path(), chat_format="llama-2", vocab_only=True, verbose=False)
    with pytest.raises(ValueError, match="temperature"):
        llm(PROMPT, temperature=float("nan"))
    with pytest.raises(ValueError, match="temperature"):
        llm(PROMPT, temperature=float("nan"), stream=True)  # checked before the first chunk
    with pytest.raises(TypeError):
        llm(PROMPT, no_such_option=1)
    with pytest.raises(ValueError, match="context window"):
        llm("word " * 600)
    with pytest.raises(ValueError, match="empty"):
        llm([])
    with pytest.raises(NotImplementedError, match="suffix"):
        llm("def f(", suffix="return 1")
    with pytest.raises(ValueError, match="not found in tools"):
        llm.create_chat_completion(
            QUESTION, tools=[WEATHER_TOOL], tool_choice={"function": {"name": "nope"}}
        )
