"""WebGPU faults on the real Dawn (lavapipe without a GPU): a lost device and a wait that times out
raise DeviceLostError (or ContextError) naming what happened (patches/0009); no adapter and an
unloadable Dawn library raise BackendError saying why. Each time the process lives on, and a model
on the CPU then generates what it generates in a process that saw no fault. Each case runs in a
fresh process, since a lost device stays lost for the life of the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import llama_webgpu as lw

PROMPT = "The capital of France is"
N_TOKENS = 6

# Runs in a child: a WebGPU context evaluates a few tokens, then the fault; what follows is
# printed as JSON on the last line of stdout.
CHILD = """
import json, sys
import llama_webgpu as lw
from llama_webgpu._native import ffi, lib

fault, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
path = lw.model_path()
out = {}
gpu = ctx = None
try:
    gpu = lw.Model(path, device="webgpu")
    tokens = gpu.tokenizer.encode(prompt)
    # a wait on the GPU first happens while the context is set up, or at the first eval
    ctx = gpu.context(n_ctx=128, n_batch=32, n_threads=1)
    reg = lib.ggml_backend_reg_by_name(b"WebGPU")
    fn = lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_webgpu_destroy_device")
    destroy = lambda: ffi.cast("void (*)(ggml_backend_reg_t)", fn)(reg)
    if fault == "lost":
        ctx.eval(tokens[:2])  # the device works before it is lost
        out["before"] = "ok"
        destroy()
    if fault == "lost while generating":  # greedy: each step decodes and picks in one C call
        out["generated"] = []
        for r in lw.stream_generate(ctx, tokens, max_tokens=n, temperature=0):
            out["generated"].append(r.token)
            if len(out["generated"]) == 2:
                destroy()
    if fault == "lost":
        try:  # the KV cache cannot be read back: no garbage state
            ctx.save_state()
            out["save_state"] = None
        except lw.LlamaError as e:
            out["save_state"] = type(e).__name__
    if fault != "lost while generating":
        ctx.eval(tokens[2:] if fault == "lost" else tokens)
    out["error"] = None
except lw.LlamaError as e:
    out["error"] = [type(e).__name__, str(e), isinstance(e, lw.DecodeError),
                    isinstance(e, lw.BackendError)]
if gpu is not None:
    try:  # a failed device refuses new models too
        lw.Model(path, device="webgpu").close()
        out["reload"] = None
    except lw.LlamaError as e:
        out["reload"] = [type(e).__name__, str(e)]
    if ctx is not None:
        ctx.close()
    gpu.close()
cpu = lw.Model(path, device="auto")  # never a failed or missing WebGPU device
out["auto"] = cpu.device.backend if cpu.device else "CPU"
cpu_ctx = cpu.context(n_ctx=128, n_threads=1)
out["cpu_text"] = lw.generate(cpu_ctx, prompt, max_tokens=n, temperature=0).text
cpu_ctx.close()
cpu.close()
print(json.dumps(out))
"""


def run_child(fault: str, **env: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, fault, PROMPT, str(N_TOKENS)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"the process died ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cpu_text() -> str:
    """What the CPU generates in a process that never saw a fault."""
    with (
        lw.Model(lw.model_path(), device="cpu") as model,
        model.context(n_ctx=128, n_threads=1) as ctx,
    ):
        return lw.generate(ctx, PROMPT, max_tokens=N_TOKENS, temperature=0).text


@pytest.mark.webgpu
@pytest.mark.model
def test_a_lost_device_raises_and_the_cpu_still_generates(webgpu_device, cpu_text):
    out = run_child("lost")
    print(json.dumps(out, indent=1))
    assert out["before"] == "ok"
    assert out["save_state"] == "DeviceLostError"
    name, message, is_decode, is_backend = out["error"]
    assert name == "DeviceLostError" and is_decode and is_backend
    assert "WebGPU device cannot be used" in message and "destroyed" in message, message
    assert out["reload"] is not None and "the device cannot be used" in out["reload"][1]
    assert out["auto"] == "CPU"
    assert out["cpu_text"] == cpu_text and cpu_text


@pytest.mark.webgpu
@pytest.mark.model
def test_a_device_lost_during_a_greedy_generation_raises(webgpu_device, cpu_text):
    out = run_child("lost while generating")
    print(json.dumps(out, indent=1))
    assert len(out["generated"]) == 2  # the step after the loss raised
    name, message, is_decode, _ = out["error"]
    assert name == "DeviceLostError" and is_decode
    assert "WebGPU device cannot be used" in message and "destroyed" in message, message
    assert out["cpu_text"] == cpu_text and cpu_text


@pytest.mark.webgpu
@pytest.mark.model
def test_a_timed_out_wait_raises_and_the_cpu_still_generates(webgpu_device, cpu_text):
    out = run_child("timeout", GGML_WEBGPU_WAIT_TIMEOUT_MS="1")
    print(json.dumps(out, indent=1))
    name, message, _, _ = out["error"]
    assert name in {"DeviceLostError", "ContextError"}, out["error"]
    assert "timed out after 1 ms (GGML_WEBGPU_WAIT_TIMEOUT_MS)" in message, message
    assert out["reload"] is not None
    assert out["cpu_text"] == cpu_text and cpu_text


@pytest.mark.model
@pytest.mark.parametrize("cause", ["no adapter", "unloadable Dawn"])
def test_no_webgpu_raises_backend_error_and_the_cpu_still_generates(cause, cpu_text, tmp_path):
    if cause == "no adapter":  # no Vulkan driver to be found
        found = [d for d in lw.devices() if d.is_webgpu]
        if found and found[0].adapter["backend_type"] != "vulkan":
            pytest.skip("only meaningful where Dawn uses Vulkan")
        none = str(tmp_path / "none.json")
        env = {"VK_DRIVER_FILES": none, "VK_ICD_FILENAMES": none}
        why = "no WebGPU adapter"
    else:
        bogus = tmp_path / "libwebgpu_dawn.so"
        bogus.write_bytes(b"not an ELF file")
        env = {"LLAMA_WEBGPU_DAWN_LIB": str(bogus)}
        why = str(bogus)
    out = run_child("none", **env)
    print(json.dumps(out, indent=1))
    name, message, _, is_backend = out["error"]
    assert name == "BackendError" and is_backend
    assert message.startswith("no WebGPU device: ") and why in message, message
    assert out["auto"] == "CPU"
    assert out["cpu_text"] == cpu_text and cpu_text
