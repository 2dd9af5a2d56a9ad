"""A short run of bench/server_load.py: concurrent streaming clients against the real server
(SmolLM2-135M on the CPU, one thread), some hanging up mid-stream or while queued. The script
checks every stream, the status codes, that the server's places come back and its memory; its
full 50-client, 5-minute run is documented in docs/reliability.md."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from server_process import MODEL, metric, start_server, stop_server, wait_idle  # noqa: E402

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "server_load.py"


@pytest.mark.model
def test_concurrent_streams_are_well_formed_and_hang_ups_free_their_places(tmp_path):
    from llama_webgpu.models import model_path

    model_path()  # fetched before the timed run
    report = tmp_path / "report.json"
    args = ["--clients", "10", "--duration", "15", "--warmup", "5", "--rss-limit", "24"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert report.exists(), proc.stdout + proc.stderr
    r = json.loads(report.read_text())
    assert r["failures"] == [], proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(r["statuses"]) <= {"200", "none (gave up queued)"}, r["statuses"]
    assert r["finished_streams"] >= 5
    assert r["idle_after_s"] is not None
    assert r["ttft_s"]["p50"] <= r["latency_s"]["p50"]


@pytest.mark.model
def test_a_request_abandoned_as_it_starts_is_not_generated(tmp_path):
    """A client that hangs up while queued, just before the worker takes its request: the
    request is cancelled, not generated to its end for nobody. B hangs up one token before A
    ends, so the worker takes B before the server's 0.25 s check for departed clients notices."""

    def body(max_tokens: int) -> bytes:
        messages = [{"role": "user", "content": "Tell me a very long story."}]
        request = {"model": MODEL, "messages": messages, "max_tokens": max_tokens}
        return json.dumps({**request, "ignore_eos": True, "stream": True}).encode()

    proc, base = start_server(tmp_path / "server.log")
    port = int(base.rsplit(":", 1)[1])
    headers = {"Content-Type": "application/json"}
    n_a, n_b = 24, 400
    try:
        with httpx.Client(base_url=base, timeout=60) as http:
            for attempt in range(3):
                cancelled = metric(http, "requests_cancelled_total")
                generated = metric(http, "generated_tokens_total")
                with http.stream(
                    "POST", "/v1/chat/completions", content=body(n_a), headers=headers
                ) as a:
                    events = (line for line in a.iter_lines() if line.startswith("data: {"))
                    next(events)  # A holds the worker
                    data = body(n_b)
                    b = socket.create_connection(("127.0.0.1", port))
                    b.sendall(
                        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Type: application/json\r\n"
                        + f"Content-Length: {len(data)}\r\n\r\n".encode()
                        + data
                    )
                    deadline = time.monotonic() + 10
                    while http.get("/health").json()["queued"] == 0:
                        assert time.monotonic() < deadline, "B was never queued"
                        time.sleep(0.01)
                    seen = 1
                    for _ in events:  # chunks: a role chunk, then one per token
                        seen += 1
                        if seen == n_a - 1:
                            b.close()  # B gives up as A's last token comes
                    # A has finished normally
                wait_idle(http, 30)
                delta = metric(http, "generated_tokens_total") - generated
                assert metric(http, "requests_cancelled_total") - cancelled == 1, attempt
                # had B run to its end, it would add n_b tokens
                assert delta < n_a + 20, attempt
    finally:
        stop_server(proc)
