"""Chat templates are untrusted code from GGUF files: server-side template injection payloads must
fail (ChatTemplateError) or render inertly, and canaries prove nothing ran."""

from __future__ import annotations

import os
from pathlib import Path

import jinja2
import pytest

from llama_webgpu.chat import ChatFormatter
from llama_webgpu.errors import ChatTemplateError

SECRET = "lw-canary-7f3e9a"
MESSAGES = [{"role": "user", "content": "hello"}]


def payloads(canary: Path) -> dict[str, str]:
    touch = f"touch {canary}"
    return {
        "str-class-subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "cycler-globals-popen": f"{{{{ cycler.__init__.__globals__.os.popen('{touch}').read() }}}}",
        "lipsum-globals-environ": "{{ lipsum.__globals__['os'].environ.LW_SSTI_CANARY }}",
        "self-globals": "{{ self.__init__.__globals__ }}",
        "self-context": "{{ self._TemplateReference__context }}",
        "subclasses-loop": (
            "{% for x in ().__class__.__base__.__subclasses__() %}"
            "{% if x.__name__ == 'catch_warnings' %}"
            f"{{{{ x()._module.__builtins__['__import__']('os').popen('{touch}').read() }}}}"
            "{% endif %}{% endfor %}"
        ),
        "attr-filter": "{{ (''|attr('__class__'))|attr('__mro__') }}",
        "format-string": "{{ '{0.__class__.__mro__}'.format('') }}",
        "namespace-globals": "{{ namespace.__init__.__globals__ }}",
        "helper-globals": "{{ raise_exception.__globals__['os'].environ }}",
        "flask-config": "{{ config.items() }}",
        "request-globals": "{{ request.application.__globals__.__builtins__ }}",
        "include-file": f"{{% include '{canary.parent / 'secret.txt'}' %}}",
        "import-module": "{% import 'os' as os %}{{ os.environ }}",
        "from-import": f"{{% from '{canary.parent / 'secret.txt'}' import x %}}{{{{ x }}}}",
        "extends-file": f"{{% extends '{canary.parent / 'secret.txt'}' %}}",
        "mutate-messages": "{{ messages.append({'role': 'system', 'content': 'x'}) }}",
        "dict-update": "{% set d = {} %}{{ d.update(a=1) }}",
        "huge-string": "{{ 'a' * 1000000000 }}",
        "huge-power": "{{ 2 ** 100000000 }}",
    }


@pytest.fixture
def canary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LW_SSTI_CANARY", SECRET)
    (tmp_path / "secret.txt").write_text(SECRET)
    return tmp_path / "pwned"


def test_the_canaries_are_live_without_the_sandbox(canary):
    """The payloads do run under a plain Environment: the sandbox tests below can fail."""
    plain = jinja2.Environment(loader=jinja2.FileSystemLoader("/"))
    p = payloads(canary)
    plain.from_string(p["cycler-globals-popen"]).render()
    assert canary.exists()
    canary.unlink()
    plain.from_string(p["subclasses-loop"]).render()
    assert canary.exists()
    assert plain.from_string(p["lipsum-globals-environ"]).render() == SECRET
    assert SECRET in plain.from_string(p["include-file"]).render()


@pytest.mark.parametrize("name", sorted(payloads(Path("/x/pwned"))))
def test_injection_payload_is_stopped(name, canary):
    template = payloads(canary)[name]
    messages = [dict(m) for m in MESSAGES]
    with pytest.raises(ChatTemplateError):
        ChatFormatter(template).render(messages)
    assert not canary.exists()
    assert messages == MESSAGES


def test_unsafe_attribute_error_names_the_attribute():
    with pytest.raises(ChatTemplateError, match="'__class__' of a str is not allowed"):
        ChatFormatter("{{ ''.__class__ }}").render(MESSAGES)


def test_safe_template_features_still_work():
    template = (
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
        "{{ m.content|upper }}{% if loop.last %}{% break %}{% endif %}{% endfor %}"
        "|{{ ns.n }}|{{ range(3)|list|join(',') }}|{{ messages|length }}|{{ 'ab' * 2 }}"
        "|{{ '%s-%s'|format(1, 2) }}|{{ {'k': 1}.items()|list }}|{{ 'a,b'.split(',') }}"
    )
    text = ChatFormatter(template).render(MESSAGES)
    assert text == "HELLO|1|0,1,2|1|abab|1-2|[('k', 1)]|['a', 'b']"


def test_environment_variables_are_not_exposed(canary):
    assert os.environ["LW_SSTI_CANARY"] == SECRET
    for expr in ("environ", "os", "__builtins__", "config", "request", "self.__dict__"):
        try:
            text = ChatFormatter(f"[{{{{ {expr} }}}}]").render(MESSAGES)
        except ChatTemplateError:
            continue
        assert text == "[]"
