"""The llama-webgpu command line, run for real (`python -m llama_webgpu ...`) on the CPU with
SmolLM2-135M: run, chat through a pipe, devices, info, bench, and how mistakes are reported."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from llama_webgpu.model import Model
from llama_webgpu.models import model_path

pytestmark = pytest.mark.model

# one thread: llama.cpp's spinning workers crawl on a loaded two-core machine (see test_generate)
CPU = ["--device", "cpu", "-t", "1"]
GREEDY = [*CPU, "--temp", "0"]


def cli(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llama_webgpu", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("llama-webgpu: error:")]


def test_run_greedy_prints_the_same_text_twice_from_argument_and_stdin():
    first = cli("run", *GREEDY, "-n", "8", "The capital of France is")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip()
    second = cli("run", *GREEDY, "-n", "8", "-", stdin="The capital of France is\n")
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert first.stderr == ""  # quiet in a pipe: no progress bar, no native log


def test_run_seed_reproduces_a_sampled_run_and_stats_go_to_stderr():
    args = ("run", *CPU, "--temp", "1", "--seed", "1234", "-n", "12", "Once upon a time")
    first = cli(*args, "--stats")
    second = cli(*args)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout and first.stdout.strip()
    assert "tokens/s" in first.stderr and "time to first token" in first.stderr


def test_run_json_schema_output_parses_as_json():
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    proc = cli(
        "run", *GREEDY, "-n", "48", "--chat", "--json-schema", json.dumps(schema),
        "Describe a person as JSON.",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    value = json.loads(proc.stdout)
    assert isinstance(value["name"], str) and isinstance(value["age"], int)


def test_chat_through_a_pipe_answers_each_line_and_saves_the_conversation(tmp_path):
    saved = tmp_path / "chat.json"
    lines = f"Hello, my name is Ann.\n/save {saved}\nWhat is my name?\n"
    proc = cli("chat", *GREEDY, "-n", "12", "--system", "Be brief.", stdin=lines)
    assert proc.returncode == 0, proc.stderr
    answers = proc.stdout.splitlines()
    assert len(answers) >= 2 and all(a.strip() for a in (answers[0], answers[-1]))
    messages = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[1]["content"] == "Hello, my name is Ann."


def test_devices_json_lists_the_cpu():
    proc = cli("devices", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert any(d["backend"] == "CPU" and d["type"] == "cpu" for d in data["devices"])
    gpu = [d for d in data["devices"] if d["backend"] == "WebGPU"]
    assert bool(gpu) == (data["webgpu_unavailable"] is None)


def test_info_shows_architecture_parameter_count_and_quantization_mix():
    path = model_path()
    proc = cli("info", str(path), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    with Model(path, device="cpu") as model:
        n_params = model.n_params  # what llama.cpp counts when it loads the model
    assert "llama" in proc.stdout
    assert str(n_params) in proc.stdout
    mix = proc.stdout.split("quantization mix:", 1)[1]
    assert "q4_1" in mix and "MUL_MAT" in proc.stdout and "KV cache" in proc.stdout


def test_info_of_a_missing_file_is_a_one_line_error(tmp_path):
    proc = cli("info", str(tmp_path / "missing.gguf"))
    assert proc.returncode == 1
    assert len(error_lines(proc)) == 1 and "missing.gguf" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize(
    ("option", "value"), [("--top-p", "2"), ("--temp", "hot"), ("-c", "-1"), ("-n", "0")]
)
def test_run_with_an_invalid_option_value_names_it(option, value):
    proc = cli("run", *CPU, option, value, "Hello")
    assert proc.returncode == 1
    (line,) = error_lines(proc)
    assert option in line and "Traceback" not in proc.stderr


def test_bench_json_gives_positive_speeds():
    proc = cli("bench", "-p", "32", "-n", "8", "-r", "2", "--json", *CPU)
    assert proc.returncode == 0, proc.stderr
    results = {r["test"]: r for r in json.loads(proc.stdout)}
    assert set(results) == {"pp32", "tg8"}
    for r in results.values():
        assert r["avg_ts"] > 0 and len(r["samples_ts"]) == 2 and r["backend"] == "CPU"


def test_ctrl_c_while_generating_exits_130_quietly():
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_webgpu", "run", *GREEDY, "-n", "2000", "1, 2, 3, 4,"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # a test runner started in the background may pass SIGINT on as ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout.read(1)  # generating
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert b"Traceback" not in err
