"""The OpenAI-compatible server (`python -m llama_webgpu.server`) in a subprocess on a free
loopback port, with SmolLM2-135M on the CPU, driven by the official `openai` client and httpx:
models, completions, chat (plain, streamed, JSON mode, tools, logprobs), embeddings, tokenize,
OpenAI-style errors, the API key, the queue, and a client that disconnects mid-stream."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import threading
import time

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from server_process import MODEL, N_CTX, metric, start_server, stop_server, wait_idle  # noqa: E402

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
LONG = {  # a generation that would go on for a long time
    "model": MODEL,
    "messages": [{"role": "user", "content": "Tell me a very long story."}],
    "max_tokens": 2000,
    "ignore_eos": True,
    "stream": True,
}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from llama_webgpu.models import model_path

    model_path()  # fetched once, before the server needs it
    log = tmp_path_factory.mktemp("server") / "server.log"
    proc, url = start_server(log, "--api-key", KEY, "--max-queue", "1")
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def client(base):
    with openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def http(base):
    with httpx.Client(base_url=base, headers=AUTH, timeout=120) as c:
        yield c


# -- what works -------------------------------------------------------------------------------


@pytest.mark.model
def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    card = client.models.retrieve(MODEL)
    assert card.id == MODEL and card.owned_by == "llama-webgpu"


@pytest.mark.model
def test_completion_at_temperature_zero_repeats(client):
    def complete():
        return client.completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0
        )

    first, second = complete(), complete()
    assert first.choices[0].text == second.choices[0].text
    assert "Paris" in first.choices[0].text
    assert first.choices[0].finish_reason in ("stop", "length")
    assert first.usage.prompt_tokens > 0 and 0 < first.usage.completion_tokens <= 8


@pytest.mark.model
def test_chat_and_streamed_chat_agree(client):
    kw = dict(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0)
    reply = client.chat.completions.create(**kw)
    message = reply.choices[0].message
    assert message.role == "assistant" and "Paris" in message.content
    assert reply.object == "chat.completion" and reply.usage.completion_tokens <= 24

    stream = client.chat.completions.create(
        **kw, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == message.content
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0


@pytest.mark.model
def test_chat_logprobs_json_mode_and_forced_tool_call(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=3, temperature=0, logprobs=True, top_logprobs=2
    )
    content = reply.choices[0].logprobs.content
    assert len(content) >= 1 and all(e.logprob <= 0 and len(e.top_logprobs) >= 2 for e in content)

    reply = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are a helpful assistant. You answer in JSON."},
            {
                "role": "user",
                "content": "Give me a JSON object with the name and age of Alice, 30.",
            },
        ],
        response_format={"type": "json_object"},
        max_tokens=60,
        temperature=0,
    )
    assert isinstance(json.loads(reply.choices[0].message.content), dict)

    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 16}},
                "required": ["city"],
            },
        },
    }
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=40,
        temperature=0,
    )
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    assert reply.choices[0].finish_reason == "tool_calls"


@pytest.mark.model
def test_embeddings_are_unit_vectors(client):
    out = client.embeddings.create(model=MODEL, input=["hello world", "good night"])
    assert [d.index for d in out.data] == [0, 1]
    for d in out.data:
        assert len(d.embedding) == 576
        assert math.isclose(math.fsum(x * x for x in d.embedding), 1.0, rel_tol=1e-3)
    floats = client.embeddings.create(model=MODEL, input="hello world", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(out.data[0].embedding, abs=1e-6)
    assert out.usage.prompt_tokens > 0


@pytest.mark.model
def test_tokenize_and_detokenize_round_trip(http):
    tokens = http.post("/tokenize", json={"content": "Hello world<|im_end|>"}).json()["tokens"]
    assert len(tokens) == 3 and all(isinstance(t, int) for t in tokens)
    assert http.post("/detokenize", json={"tokens": tokens}).json() == {
        "content": "Hello world<|im_end|>"
    }
    bad = http.post("/detokenize", json={"tokens": [10**9]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.model
def test_unknown_model_and_bad_parameters_are_4xx(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-17", prompt="hi", max_tokens=1)
    assert e.value.status_code == 404 and e.value.code == "model_not_found"
    for bad in ({"top_p": 2}, {"temperature": -1}, {"max_tokens": 0}, {"n": 2}):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=MODEL, prompt="hi", **{"max_tokens": 1, **bad})
        assert e.value.status_code == 400 and e.value.param == next(iter(bad))
        assert e.value.body["type"] == "invalid_request_error"


@pytest.mark.model
def test_prompt_longer_than_the_context_is_400(client):
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(
                model=MODEL, prompt="hello " * (N_CTX + 10), max_tokens=4, stream=stream
            )
        assert e.value.code == "context_length_exceeded" and e.value.param == "prompt"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello " * N_CTX}], max_tokens=4
        )
    assert e.value.code == "context_length_exceeded" and e.value.param == "messages"


@pytest.mark.model
def test_invalid_json_nan_and_oversized_bodies(http):
    def error(response, status):
        assert response.status_code == status, response.text
        body = response.json()["error"]
        assert set(body) == {"message", "type", "param", "code"}
        return body

    error(http.post("/v1/chat/completions", content=b'{"messages": ['), 400)
    error(http.post("/v1/completions", content=b"[1, 2]"), 400)
    nan = error(http.post("/v1/completions", content=b'{"prompt": "x", "temperature": NaN}'), 400)
    assert nan["param"] == "temperature"
    big = json.dumps({"prompt": "x" * (1 << 20)}).encode()
    assert error(http.post("/v1/completions", content=big), 413)["code"] == "request_too_large"
    assert error(http.get("/v1/nothing"), 404)["code"] == "not_found"


@pytest.mark.model
def test_api_key_is_required_except_for_health_and_page(base):
    wrong = openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)
    with wrong, pytest.raises(openai.AuthenticationError) as e:
        wrong.models.list()
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    assert httpx.post(base + "/v1/completions", json={"prompt": "x"}).status_code == 401
    assert httpx.get(base + "/metrics").status_code == 401
    assert httpx.get(base + "/health").json()["status"] == "ok"
    assert "<textarea" in httpx.get(base + "/").text


# -- the queue and disconnects -----------------------------------------------------------------


@pytest.mark.model
def test_disconnect_stops_generation_and_frees_the_queue(base, http):
    wait_idle(http)
    cancelled = metric(http, "requests_cancelled_total")
    generated = metric(http, "generated_tokens_total")
    short = {"model": MODEL, "prompt": "One, two,", "max_tokens": 4, "temperature": 0}
    with httpx.Client(base_url=base, headers=AUTH, timeout=60) as streamer:
        with streamer.stream("POST", "/v1/chat/completions", json=LONG) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.iter_lines()
            events: list[dict] = []
            for line in lines:
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                if len(events) == 2:
                    break
            assert events[0]["object"] == "chat.completion.chunk"

            # a queued request whose client gives up leaves the queue
            timeout = httpx.Timeout(60, read=1.0)
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(base + "/v1/completions", json=short, headers=AUTH, timeout=timeout)
            deadline = time.monotonic() + 5
            while http.get("/health").json()["queued"]:
                assert time.monotonic() < deadline, "the abandoned request stayed queued"
                time.sleep(0.05)

            # one request waits (--max-queue 1); the next is refused
            served: dict = {}
            waiting = threading.Thread(
                target=lambda: served.update(r=http.post("/v1/completions", json=short))
            )
            waiting.start()
            deadline = time.monotonic() + 10
            while http.get("/health").json()["queued"] == 0:
                assert time.monotonic() < deadline, "the second request never queued"
                time.sleep(0.02)
            refused = http.post("/v1/completions", json=short)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "queue_full"
        # the stream is closed here: its generation stops and the waiting request runs
        waiting.join(timeout=60)
    assert served["r"].status_code == 200 and served["r"].json()["choices"][0]["text"]
    wait_idle(http, 10)
    assert metric(http, "requests_cancelled_total") >= cancelled + 2
    assert metric(http, "generated_tokens_total") - generated < LONG["max_tokens"]
    assert http.post("/v1/completions", json=short).status_code == 200


# -- without a model ------------------------------------------------------------------------------


def test_an_error_during_a_stream_becomes_an_error_event():
    from llama_webgpu._server_worker import Engine, Job, Metrics

    def chunks(watch):
        yield {"id": "x", "choices": [{"text": "a", "finish_reason": None}]}
        raise ValueError("broken")

    async def run():
        engine = Engine(None, max_queue=2, metrics=Metrics())  # type: ignore[arg-type]
        engine.start()
        job = Job(lambda watch: chunks(watch), stream=True)
        engine.submit(job)
        got = [await asyncio.wait_for(job.events.get(), 10) for _ in range(3)]
        assert engine.close()
        return got

    (start, _), (kind, chunk), (error, value) = asyncio.run(run())
    assert (start, kind, chunk["choices"][0]["text"], error) == ("start", "chunk", "a", "error")
    assert value.status == 400 and value.body()["error"]["message"] == "broken"


def test_request_checks_name_the_parameter():
    from llama_webgpu._server_requests import APIError, ModelFacts, chat_request

    facts = ModelFacts(n_vocab=100, eog_tokens=frozenset({2}))
    ok = chat_request({"messages": [{"role": "user", "content": "hi"}]}, facts, "m")
    assert ok.kwargs["temperature"] == 0.8 and not ok.stream
    eos = chat_request({"messages": [{"role": "user"}], "ignore_eos": True}, facts, "m")
    assert eos.kwargs["logit_bias"] == {2: -math.inf}
    for body, param in (
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0]"),
        ({"messages": [{"role": "user"}], "top_logprobs": 2}, "top_logprobs"),
        ({"messages": [{"role": "user"}], "logit_bias": {"500": 1}}, "logit_bias"),
        ({"messages": [{"role": "user"}], "stream_options": {}}, "stream_options"),
        ({"messages": [{"role": "user"}], "tools": [{"type": "code"}]}, "tools"),
        ({"messages": [{"role": "user"}], "seed": "1"}, "seed"),
    ):
        with pytest.raises(APIError) as e:
            chat_request(body, facts, "m")
        assert (e.value.status, e.value.param) == (400, param)


def test_cli_rejects_an_unknown_model(tmp_path):
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-m", "llama_webgpu.server", "--model", str(tmp_path / "none.gguf")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode != 0 and "neither a GGUF file nor a known model" in proc.stderr
