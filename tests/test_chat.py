"""Chat formatting against llama.cpp's own renderer, tool-call parsing, and JSON mode."""

from __future__ import annotations

import json
import math

import pytest

from llama_webgpu._native import ffi, lib
from llama_webgpu.chat import (
    CHATML_TEMPLATE,
    JSON_OBJECT_GBNF,
    ChatFormatter,
    assistant_message,
    content_text,
    parse_tool_calls,
    response_format_kwargs,
)
from llama_webgpu.errors import ChatTemplateError
from llama_webgpu.model import Model
from llama_webgpu.models import model_path

# google/gemma-3-*-it's chat template (tokenizer_config.json). The Gemma 3 270M GGUF we test
# with is the base model and carries no template of its own.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate '
    'user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

CONVERSATION = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Name a colour — in français, s'il te plaît."},
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def smollm2() -> Model:
    with Model(model_path(), device="cpu", vocab_only=True) as m:
        yield m


@pytest.fixture(scope="module")
def gemma() -> Model:
    with Model(model_path("gemma-3-270m"), device="cpu", vocab_only=True) as m:
        yield m


def llama_cpp_render(template: str, messages: list[dict], add_ass: bool) -> str:
    """llama.cpp's built-in (non-Jinja) rendering, which recognises the template from its text."""
    strings = [(ffi.new("char[]", m["role"].encode()), ffi.new("char[]", m["content"].encode()))
               for m in messages]  # fmt: skip
    chat = ffi.new("llama_chat_message[]", len(messages))
    for i, (role, content) in enumerate(strings):
        chat[i].role, chat[i].content = role, content
    tmpl = template.encode()
    n = lib.llama_chat_apply_template(tmpl, chat, len(messages), add_ass, ffi.NULL, 0)
    assert n > 0, "llama.cpp did not recognise the template"
    buf = ffi.new("char[]", n + 1)
    assert lib.llama_chat_apply_template(tmpl, chat, len(messages), add_ass, buf, n + 1) == n
    return ffi.unpack(buf, n).decode()


# -- rendering ----------------------------------------------------------------------------------


@pytest.mark.model
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_template_renders_as_llama_cpp_chatml(smollm2, add_generation_prompt):
    template = smollm2.chat_template
    assert template and "<|im_start|>" in template
    ours = ChatFormatter(smollm2).render(CONVERSATION, add_generation_prompt=add_generation_prompt)
    assert ours == llama_cpp_render(template, CONVERSATION, add_generation_prompt)


@pytest.mark.model
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_gemma3_template_renders_as_llama_cpp_gemma(gemma, add_generation_prompt):
    formatter = ChatFormatter(gemma, template=GEMMA3_TEMPLATE)
    ours = formatter.render(CONVERSATION, add_generation_prompt=add_generation_prompt)
    assert ours == llama_cpp_render(GEMMA3_TEMPLATE, CONVERSATION, add_generation_prompt)
    assert ours.startswith("<start_of_turn>user\nYou are a terse assistant.\n\nHi there")


@pytest.mark.model
def test_gemma3_prompt_tokenizes_with_exactly_one_bos(gemma):
    prompt = ChatFormatter(gemma, template=GEMMA3_TEMPLATE).render(CONVERSATION)
    tokens = gemma.tokenizer.encode(prompt, add_special=True, parse_special=True)
    assert tokens[0] == gemma.tokenizer.bos
    assert tokens.count(gemma.tokenizer.bos) == 1


def test_bos_is_kept_when_the_tokenizer_does_not_add_one():
    text = ChatFormatter(GEMMA3_TEMPLATE, bos_token="<bos>").render(CONVERSATION[1:2])
    assert text == "<bos><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n"
    stripped = ChatFormatter(GEMMA3_TEMPLATE, bos_token="<bos>", strip_bos=True)
    assert stripped.render(CONVERSATION[1:2]).startswith("<start_of_turn>user")


@pytest.mark.model
def test_vocabulary_supplies_bos_and_eos_tokens(smollm2):
    formatter = ChatFormatter(smollm2)
    assert (formatter.bos_token, formatter.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert not formatter.is_fallback


def test_add_generation_prompt_toggles_the_assistant_prefix():
    formatter = ChatFormatter(GEMMA3_TEMPLATE)
    with_prompt = formatter.render(CONVERSATION[1:2], add_generation_prompt=True)
    without = formatter.render(CONVERSATION[1:2], add_generation_prompt=False)
    assert with_prompt == without + "<start_of_turn>model\n"
    assert without.endswith("<end_of_turn>\n")


def test_no_template_falls_back_to_chatml():
    formatter = ChatFormatter(None)
    assert formatter.is_fallback and formatter.source == CHATML_TEMPLATE
    assert formatter.render([{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.model
def test_model_without_template_falls_back_to_chatml(gemma):
    assert gemma.chat_template is None
    formatter = ChatFormatter(gemma)
    assert formatter.is_fallback
    assert formatter.render(CONVERSATION[1:2], add_generation_prompt=False) == (
        "<|im_start|>user\nHi there<|im_end|>\n"
    )


def test_text_content_parts_are_joined_with_newlines():
    parts = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]
    assert content_text(parts) == "first\nsecond"
    text = ChatFormatter(None).render([{"role": "user", "content": parts}])
    assert "<|im_start|>user\nfirst\nsecond<|im_end|>" in text


def test_non_text_content_parts_are_refused():
    image = [{"type": "image_url", "image_url": {"url": "data:,"}}]
    with pytest.raises(ValueError, match="image_url"):
        ChatFormatter(None).render([{"role": "user", "content": image}])


def test_message_without_role_is_refused():
    with pytest.raises(ValueError, match="role"):
        ChatFormatter(None).render([{"content": "no role"}])


def test_template_raise_exception_becomes_chat_template_error():
    alternating_wrongly = [{"role": "assistant", "content": "I speak first"}]
    with pytest.raises(ChatTemplateError, match="must alternate"):
        ChatFormatter(GEMMA3_TEMPLATE).render(alternating_wrongly)


def test_template_syntax_error_is_chat_template_error():
    with pytest.raises(ChatTemplateError, match="does not parse"):
        ChatFormatter("{% for m in messages %}{{ m.content }")


def test_tojson_keeps_non_ascii_and_supports_indent():
    formatter = ChatFormatter("{{ messages[0] | tojson(indent=2) }}|{{ 'é' | tojson }}")
    text = formatter.render([{"role": "user", "content": "héllo <b>"}])
    assert text == '{\n  "role": "user",\n  "content": "héllo <b>"\n}|"é"'


def test_strftime_now_and_extra_kwargs_reach_the_template():
    formatter = ChatFormatter("{{ strftime_now('%Y') }} {{ enable_thinking }} {{ custom }}")
    year, thinking, custom = formatter.render([], enable_thinking=False, custom="x").split()
    assert year.isdigit() and len(year) == 4
    assert (thinking, custom) == ("False", "x")


def test_generation_block_renders_its_body():
    formatter = ChatFormatter("{% generation %}[{{ messages[0].content }}]{% endgeneration %}")
    assert formatter.render([{"role": "user", "content": "x"}]) == "[x]"


# -- tools in the prompt ------------------------------------------------------------------------

TOOL_AWARE = (  # trim_blocks eats a newline right after a tag, so newlines are expressions
    "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}{{ nl }}{% endif %}"
    "{% for m in messages %}{{ m.role }}:{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<call {{ c.function.name }} "
    "{{ c.function.arguments.city }}>{% endfor %}{{ nl }}{% endfor %}"
    "{% if messages[-1].role == 'tool' %}(tool){% endif %}"
)


def test_tools_render_through_a_template_that_knows_them():
    formatter = ChatFormatter(TOOL_AWARE)
    assert formatter.supports_tools
    messages = [{"role": "user", "content": "Weather?"}]
    text = formatter.render(messages, tools=[WEATHER_TOOL], nl="\n")
    assert text == "TOOLS:get_weather;\nuser:Weather?\n"


def test_tool_call_arguments_reach_the_template_as_an_object():
    call = {"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}  # fmt: skip
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    text = ChatFormatter(TOOL_AWARE).render(messages, add_generation_prompt=False, nl="\n")
    assert text == "user:Weather?\nassistant:<call get_weather Oslo>\ntool:sunny\n(tool)"


@pytest.mark.model
def test_tools_go_into_the_system_prompt_when_the_template_ignores_them(smollm2):
    formatter = ChatFormatter(smollm2)
    assert not formatter.supports_tools
    text = formatter.render(CONVERSATION, tools=[WEATHER_TOOL])
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nYou are a terse assistant.\n\n# Tools")
    assert json.dumps(WEATHER_TOOL, ensure_ascii=False) in system
    assert "<tool_call>" in system


def test_tool_calls_and_results_become_hermes_text_for_plain_templates():
    call = {"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}  # fmt: skip
    messages = [
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rainy"},
    ]
    text = ChatFormatter(None).render(messages, add_generation_prompt=False)
    assert text == (
        "<|im_start|>user\nWeather in Oslo and Rome?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": '
        '"Oslo"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n"
        "<tool_response>\nrainy\n</tool_response><|im_end|>\n"
    )


# -- tool-call parsing (pure Python) ------------------------------------------------------------


def ids():
    counter = iter(range(100))
    return lambda: f"call_{next(counter)}"


def fn_call(name: str, arguments: str, call_id: str = "call_0") -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_parses_hermes_tool_call_blocks():
    text = (
        "Let me check.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>'
    )
    assert parse_tool_calls(text, make_id=ids()) == (
        "Let me check.",
        [
            fn_call("get_weather", '{"city": "Oslo"}', "call_0"),
            fn_call("get_weather", '{"city": "Rome"}', "call_1"),
        ],
    )


def test_parses_hermes_call_whose_closing_tag_was_cut_off():
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}'
    assert parse_tool_calls(text, make_id=ids()) == (
        "",
        [fn_call("get_weather", '{"city": "Zürich"}')],
    )


def test_parses_bare_json_object_with_name_and_arguments():
    text = '  {"name": "get_weather", "arguments": {"city": "Oslo"}}\n'
    assert parse_tool_calls(text, tools=[WEATHER_TOOL], make_id=ids()) == (
        "",
        [fn_call("get_weather", '{"city": "Oslo"}')],
    )


def test_parses_llama3_parameters_after_python_tag():
    text = '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}'
    assert parse_tool_calls(text, make_id=ids()) == (
        "",
        [fn_call("get_weather", '{"city": "Oslo"}')],
    )


def test_parses_json_in_a_code_fence():
    text = '```json\n{"name": "get_weather", "arguments": {}}\n```'
    assert parse_tool_calls(text, make_id=ids()) == ("", [fn_call("get_weather", "{}")])


def test_parses_mistral_tool_calls_array_keeping_its_ids():
    text = (
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}, "id": "a1B2c3D4e"},'
        ' {"name": "get_weather", "arguments": {"city": "Rome"}}]'
    )
    assert parse_tool_calls(text, make_id=ids()) == (
        "",
        [
            fn_call("get_weather", '{"city": "Oslo"}', "a1B2c3D4e"),
            fn_call("get_weather", '{"city": "Rome"}', "call_0"),
        ],
    )


def test_parses_mistral_named_calls():
    text = 'Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}[TOOL_CALLS]now[ARGS]{}'
    assert parse_tool_calls(text, make_id=ids()) == (
        "Sure.",
        [fn_call("get_weather", '{"city": "Oslo"}', "call_0"), fn_call("now", "{}", "call_1")],
    )


def test_plain_text_and_ordinary_json_are_not_tool_calls():
    assert parse_tool_calls("The weather is fine.") == ("The weather is fine.", [])
    answer = '{"name": "Ada", "arguments": {"count": 2}}'  # JSON the user asked for
    assert parse_tool_calls(answer, tools=[WEATHER_TOOL]) == (answer, [])
    assert parse_tool_calls('{"city": "Oslo"}') == ('{"city": "Oslo"}', [])


def test_malformed_tool_call_block_yields_no_calls():
    text = "<tool_call>{name: get_weather}</tool_call>"
    assert parse_tool_calls(text) == (text, [])


def test_generated_ids_are_unique_openai_style():
    text = '<tool_call>{"name": "a", "arguments": {}}</tool_call>' * 2
    _, calls = parse_tool_calls(text)
    first, second = (c["id"] for c in calls)
    assert first != second and first.startswith("call_") and len(first) == 29


def test_assistant_message_is_openai_shaped():
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    assert assistant_message(text, tools=[WEATHER_TOOL], make_id=ids()) == {
        "role": "assistant",
        "content": None,
        "tool_calls": [fn_call("get_weather", '{"city": "Oslo"}')],
    }
    assert assistant_message(text) == {"role": "assistant", "content": text}


# -- JSON mode ----------------------------------------------------------------------------------


def test_response_format_maps_to_sampler_kwargs():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert response_format_kwargs(None) == {}
    assert response_format_kwargs({"type": "text"}) == {}
    assert response_format_kwargs({"type": "json_object"}) == {"grammar": JSON_OBJECT_GBNF}
    spec = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert response_format_kwargs(spec) == {"json_schema": schema}
    assert response_format_kwargs({"type": "json_object", "schema": schema}) == {
        "json_schema": schema
    }


@pytest.mark.parametrize(
    "bad",
    [{"type": "yaml"}, {"type": "json_schema"}, {"type": "json_schema", "json_schema": {}}],
)
def test_bad_response_format_is_refused(bad):
    with pytest.raises(ValueError):
        response_format_kwargs(bad)


def grammar_accepts(model: Model, grammar: str, text: str) -> bool:
    """Feed text's tokens through llama.cpp's grammar sampler; True if each token is allowed
    and the grammar may end afterwards (EOS allowed)."""
    sampler = lib.llama_sampler_init_grammar(model.vocab, grammar.encode(), b"root")
    assert sampler != ffi.NULL
    try:
        tokens = model.tokenizer.encode(text, add_special=False)
        for token in [*tokens, model.tokenizer.eos]:
            data = ffi.new("llama_token_data[1]")
            data[0].id, data[0].logit, data[0].p = token, 0.0, 0.0
            cur = ffi.new("llama_token_data_array *", {"data": data, "size": 1, "selected": -1})
            lib.llama_sampler_apply(sampler, cur)
            if math.isinf(cur.data[0].logit):
                return False  # never accept a rejected token: llama.cpp would throw
            if token != model.tokenizer.eos:
                lib.llama_sampler_accept(sampler, token)
        return True
    finally:
        lib.llama_sampler_free(sampler)


@pytest.mark.model
def test_json_object_grammar_accepts_a_json_object(smollm2):
    assert grammar_accepts(smollm2, JSON_OBJECT_GBNF, '{"a": [1, 2.5, "x", true, null]}')
    assert grammar_accepts(smollm2, JSON_OBJECT_GBNF, '{"nested": {"k": -0.5e3, "s": "\\u00e9"}}')


@pytest.mark.model
@pytest.mark.parametrize("text", ['{"a": [1,, 2]}', "[1, 2]", '{"a": 1', "{'a': 1}", '"x"'])
def test_json_object_grammar_rejects_what_is_not_a_json_object(smollm2, text):
    assert not grammar_accepts(smollm2, JSON_OBJECT_GBNF, text)


@pytest.mark.model
def test_malformed_grammar_does_not_compile(smollm2):
    sampler = lib.llama_sampler_init_grammar(smollm2.vocab, b'root ::= "{" value', b"root")
    assert sampler == ffi.NULL


@pytest.mark.model
@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
    ],
)
def test_response_format_kwargs_build_a_sampler(smollm2, response_format):
    from llama_webgpu.sampling import SamplingParams, make_sampler

    params = SamplingParams(**response_format_kwargs(response_format))
    with make_sampler(smollm2, params) as sampler:
        assert sampler.grammar
