"""Helpers for the server tests: `python -m llama_webgpu.server` in a subprocess on a free
loopback port (SmolLM2-135M on the CPU, one thread), stopped at the end; its health and metrics."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

MODEL = "smollm2-135m-instruct"
N_CTX = 2048


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(log_path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`python -m llama_webgpu.server` on a free port; returns it once /health answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "llama_webgpu.server", "--device", "cpu", "-t", "1"]
    cmd += ["-c", str(N_CTX), "--port", str(port), "--log-level", "warning", *args]
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the server exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_server(proc)
            pytest.fail(f"the server did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)


def wait_idle(http, seconds: float = 10.0) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        health = http.get("/health").json()
        if health["processing"] == 0 and health["queued"] == 0:
            return health
        assert time.monotonic() < deadline, f"the server is still busy: {health}"
        time.sleep(0.05)


def metric(http, name: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(f"llama_webgpu_{name} "):
            return float(line.split()[-1])
    raise AssertionError(f"no metric {name}")
