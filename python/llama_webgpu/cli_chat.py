"""`llama-webgpu chat`: a conversation on a terminal, or one user turn per line of a pipe.

Each turn renders the whole conversation with the model's chat template; the context's
prefix reuse (Context.prefill) evaluates only what is new since the last turn.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .chat import ChatFormatter
from .cli import CHAT_HELP, CliError, print_error, print_stats, read_file
from .errors import ContextFullError, LlamaError
from .generate import GenerationResponse, stream_generate

if TYPE_CHECKING:
    from .context import Context
    from .sampling import SamplingParams


class ChatSession:
    """A conversation (a list of role/content messages) answered over one context."""

    def __init__(
        self, ctx: Context, sampling: SamplingParams, n_predict: int | None, system: str = ""
    ):
        self.ctx = ctx
        self.formatter = ChatFormatter(ctx.model)
        self.sampling = sampling
        self.n_predict = n_predict
        self.system = system
        self.messages: list[dict[str, str]] = []
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def save(self, path: str) -> None:
        try:
            with open(path, "w", encoding="utf-8") as f:
                json.dump({"messages": self.messages}, f, ensure_ascii=False, indent=2)
                f.write("\n")
        except OSError as e:
            raise CliError(f"cannot save the conversation to {path}: {e.strerror or e}") from e

    def load(self, path: str) -> None:
        """Replace the conversation with a saved one ({"messages": [...]} or a bare list)."""
        try:
            data = json.loads(read_file(path, "/load"))
        except json.JSONDecodeError as e:
            raise CliError(f"{path} is not JSON: {e}") from None
        messages = data.get("messages") if isinstance(data, dict) else data
        if not isinstance(messages, list) or not all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise CliError(f"{path} holds no conversation (a list of role/content messages)")
        self.messages = [{"role": m["role"], "content": m["content"]} for m in messages]

    def ask(self, text: str, *, interruptible: bool = False) -> GenerationResponse | None:
        """Add a user turn, stream the answer to stdout and add it to the conversation. With
        interruptible, Ctrl-C ends the answer early (what was said so far is kept)."""
        self.messages.append({"role": "user", "content": text})
        prompt = self.formatter.render(self.messages)
        parts: list[str] = []
        last = None
        try:
            for last in stream_generate(
                self.ctx, prompt, max_tokens=self.n_predict, sampler=self.sampling
            ):
                if last.text:
                    parts.append(last.text)
                    sys.stdout.write(last.text)
                    sys.stdout.flush()
        except KeyboardInterrupt:
            if not interruptible:
                raise
        except ContextFullError:
            self.messages.pop()
            raise CliError(
                f"the conversation no longer fits in the context of {self.ctx.n_ctx} tokens: "
                "/reset it, or start with a larger -c"
            ) from None
        except BaseException:
            self.messages.pop()
            raise
        sys.stdout.write("\n")
        sys.stdout.flush()
        self.messages.append({"role": "assistant", "content": "".join(parts)})
        return last


def _input_lines(interactive: bool) -> Iterator[str]:
    if not interactive:
        for line in sys.stdin:
            yield line.rstrip("\r\n")
        return
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401 - line editing and history for input()
    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    prompt = "\001\033[32m\002> \001\033[0m\002" if color else "> "
    while True:
        try:
            lines = [input(prompt)]
            while lines[-1].endswith("\\"):  # a trailing backslash continues the message
                lines[-1] = lines[-1][:-1]
                lines.append(input("... "))
        except EOFError:
            print()
            return
        yield "\n".join(lines)


def _command(session: ChatSession, line: str) -> bool:
    """Run a /command; False for /exit."""
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    if name in ("/exit", "/quit"):
        return False
    if name == "/reset":
        session.reset()
        print("history cleared", file=sys.stderr)
    elif name in ("/save", "/load"):
        if not arg:
            raise CliError(f"{name} needs a file name")
        if name == "/save":
            session.save(arg)
            print(f"saved {len(session.messages)} messages to {arg}", file=sys.stderr)
        else:
            session.load(arg)
            print(f"loaded {len(session.messages)} messages from {arg}", file=sys.stderr)
    elif name == "/help":
        print(CHAT_HELP, file=sys.stderr)
    else:
        raise CliError(f"unknown command {name} ({CHAT_HELP}; start with // to send a /)")
    return True


def chat(
    ctx: Context,
    sampling: SamplingParams,
    n_predict: int | None,
    *,
    system: str = "",
    stats: bool = False,
) -> int:
    """The chat loop. On a terminal, errors are reported and the chat goes on; from a pipe,
    the first error ends it (exit code 1, through the caller)."""
    interactive = sys.stdin.isatty()
    session = ChatSession(ctx, sampling, n_predict, system)
    if interactive:
        device = ctx.model.device
        where = device.description if device else "the CPU"
        print(f"{ctx.model.description} on {where}; {CHAT_HELP}", file=sys.stderr)
    for line in _input_lines(interactive):
        if not line.strip():
            continue
        try:
            if line.startswith("/") and not line.startswith("//"):
                if not _command(session, line):
                    break
                continue
            text = line[1:] if line.startswith("//") else line
            last = session.ask(text, interruptible=interactive)
            if stats:
                print_stats(last)
        except (CliError, LlamaError) as e:
            if not interactive:
                raise
            print_error(e)
    return 0
