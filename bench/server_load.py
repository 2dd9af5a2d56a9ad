#!/usr/bin/env python3
"""The server under load: many concurrent streaming clients for a bounded time, on loopback.

    nice -n 10 python bench/server_load.py [--clients 50] [--duration 300] [--threads 1]
                                           [--max-queue N] [--json report.json]

Starts `python -m llama_webgpu.server` (the default model, SmolLM2-135M, on the CPU) on a free
127.0.0.1 port, runs the clients until the duration is over, lets the requests in flight finish,
checks the rules below, stops the server and exits nonzero when a rule fails. Each client loops:
a streamed `/v1/chat/completions` or `/v1/completions` request with a short `max_tokens`; about
one request in ten hangs up after its first chunks and one in twenty gives up while still
queued (both ask for 200 tokens, so a generation that does not stop shows).

Rules:
- every answer is 200, or 503 `queue_full` when there are more clients than the queue holds
  (clients > max_queue + 1); no other status, no transport error, no timeout;
- every stream that is read to its end is well-formed SSE (single-line `data:` events of JSON
  chunks of the right object, one id, one finish_reason, a usage chunk within max_tokens) ending
  with `data: [DONE]`, or with an error event that is not a server error, and nothing after it;
- disconnects free their places: the server goes back to 0 queued / 0 processing, and the tokens
  it generated beyond what finished streams used stay within a few per disconnect;
- the server's resident memory (VmRSS from /proc/<pid>/status) grows by at most --rss-limit MiB
  from the end of the warm-up to the end of the run;
- the server stops within 20 s of SIGTERM and logs no traceback.

Prints requests/s, generated tokens/s, time to first token and total latency percentiles of
the finished streams, the status counts, memory and the machine's load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

MODEL = "smollm2-135m-instruct"
N_CTX = 2048
LONG_TOKENS = 200  # asked by clients that hang up: generation must stop long before
TOKEN_SLACK = 12  # tokens a hung-up request may still generate (in flight + detection)
TOPICS = ["the sea", "a red bicycle", "winter", "a small robot", "coffee", "the moon", "a library"]


@dataclass
class Outcome:
    kind: str  # "complete", "hangup" (after some chunks) or "give_up" (while queued)
    endpoint: str
    status: int | None = None
    problem: str | None = None  # a broken rule, or None
    error_code: str | None = None  # the code of a clean error event or refusal
    ttft: float | None = None  # seconds to the first chunk carrying text
    total: float | None = None  # seconds to the end of the stream
    tokens: int = 0  # usage.completion_tokens (finished streams)
    chunks: int = 0


@dataclass
class Samples:
    rss_kib: list[tuple[float, int]] = field(default_factory=list)
    queued_max: int = 0
    health_errors: int = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None}
    if len(values) == 1:
        return {"p50": values[0], "p90": values[0], "p99": values[0]}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": cuts[49], "p90": cuts[89], "p99": cuts[98]}


# -- one request ----------------------------------------------------------------------------------


def make_body(endpoint: str, rng: random.Random, max_tokens: int, long: bool) -> dict:
    topic = rng.choice(TOPICS)
    body: dict = {
        "model": MODEL,
        "stream": True,
        "temperature": 0.8,
        "seed": rng.randrange(1 << 30),
    }
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": f"Write one sentence about {topic}."}]
    else:
        body["prompt"] = f"A short story about {topic}. Once upon a time,"
    if long:
        body.update(max_tokens=LONG_TOKENS, ignore_eos=True)
    else:
        body.update(max_tokens=max_tokens, stream_options={"include_usage": True})
    return body


class StreamChecker:
    """Checks server-sent events as they arrive; `problem` names the first rule broken."""

    def __init__(self, endpoint: str, max_tokens: int):
        self.object = "chat.completion.chunk" if endpoint == "chat" else "text_completion"
        self.max_tokens = max_tokens
        self.buffer = ""
        self.ids: set[str] = set()
        self.finishes = 0
        self.usage: dict | None = None
        self.ended: str | None = None  # "done" or "error"
        self.error_code: str | None = None
        self.problem: str | None = None
        self.chunks = 0
        self.text_seen = False

    def feed(self, text: str) -> None:
        self.buffer += text
        while "\n\n" in self.buffer and self.problem is None:
            event, self.buffer = self.buffer.split("\n\n", 1)
            self._event(event)

    def _fail(self, why: str) -> None:
        if self.problem is None:
            self.problem = why

    def _event(self, event: str) -> None:
        if self.ended is not None:
            return self._fail(f"an event after the end: {event[:80]!r}")
        if not event.startswith("data: ") or "\n" in event:
            return self._fail(f"not a single-line data event: {event[:80]!r}")
        data = event[len("data: ") :]
        if data == "[DONE]":
            self.ended = "done"
            if self.usage is None:
                self._fail("[DONE] without the usage chunk")
            elif self.finishes != 1:
                self._fail(f"{self.finishes} chunks with a finish_reason, not 1")
            return None
        try:
            chunk = json.loads(data)
        except ValueError:
            return self._fail(f"an event that is not JSON: {data[:80]!r}")
        if "error" in chunk:
            self.ended = "error"
            error = chunk["error"]
            self.error_code = error.get("code")
            if error.get("type") == "server_error":
                self._fail(f"a server error event: {error}")
            return None
        self.chunks += 1
        if chunk.get("object") != self.object:
            return self._fail(f"object {chunk.get('object')!r}, not {self.object!r}")
        self.ids.add(chunk.get("id"))
        if len(self.ids) != 1:
            return self._fail(f"chunk ids differ: {sorted(map(str, self.ids))}")
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return self._fail("a chunk without a choices list")
        if not choices:  # the usage chunk comes last, after the finish
            usage = chunk.get("usage") or {}
            n = usage.get("completion_tokens")
            if not isinstance(n, int) or not 1 <= n <= self.max_tokens:
                return self._fail(f"usage {usage} not within 1..{self.max_tokens} tokens")
            if self.finishes != 1:
                return self._fail("the usage chunk came before the finish")
            self.usage = usage
            return None
        if self.usage is not None:
            return self._fail("a choice after the usage chunk")
        choice = choices[0]
        piece = choice.get("text") if self.object == "text_completion" else None
        if piece is None:
            piece = (choice.get("delta") or {}).get("content")
        if piece:
            self.text_seen = True
        if choice.get("finish_reason") is not None:
            self.finishes += 1
            if choice["finish_reason"] not in ("stop", "length"):
                self._fail(f"finish_reason {choice['finish_reason']!r}")
        return None


async def one_request(
    http: httpx.AsyncClient, rng: random.Random, kind: str, endpoint: str, timeout: float
) -> Outcome:
    out = Outcome(kind, endpoint)
    max_tokens = rng.randint(4, 24)
    body = make_body(endpoint, rng, max_tokens, long=kind != "complete")
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    checker = StreamChecker(endpoint, max_tokens)
    hang_up_after = rng.randint(1, 3)
    give_up_after = rng.uniform(0.5, 3.0)
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            request = http.build_request("POST", path, json=body)
            if kind == "give_up":  # hang up if the answer has not started in time
                try:
                    async with asyncio.timeout(give_up_after):
                        response = await http.send(request, stream=True)
                except TimeoutError:
                    return out
            else:
                response = await http.send(request, stream=True)
            try:
                out.status = response.status_code
                if response.status_code != 200:
                    raw = await response.aread()
                    try:
                        out.error_code = json.loads(raw)["error"]["code"]
                    except (ValueError, KeyError, TypeError):
                        out.error_code = None
                    if response.status_code != 503 or out.error_code != "queue_full":
                        out.problem = f"status {response.status_code}: {raw[:200]!r}"
                    return out
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    out.problem = f"content-type {response.headers.get('content-type')!r}"
                    return out
                async for text in response.aiter_text():
                    checker.feed(text)
                    if checker.text_seen and out.ttft is None:
                        out.ttft = time.perf_counter() - start
                    if checker.problem or (kind != "complete" and checker.chunks >= hang_up_after):
                        break
            finally:
                await response.aclose()  # before the end: closes the connection (a hang-up)
    except TimeoutError:
        out.problem = f"no answer within {timeout:.0f} s"
        return out
    except httpx.HTTPError as e:
        out.problem = f"{type(e).__name__}: {e}"
        return out
    out.chunks = checker.chunks
    out.problem = checker.problem
    out.error_code = checker.error_code
    if kind == "complete" and out.problem is None:
        if checker.ended is None:
            out.problem = f"the stream ended without [DONE] ({checker.buffer[-80:]!r} left)"
        elif checker.ended == "done":
            out.total = time.perf_counter() - start
            out.tokens = checker.usage["completion_tokens"] if checker.usage else 0
    return out


async def client(
    http: httpx.AsyncClient, index: int, deadline: float, seed: int, timeout: float
) -> list[Outcome]:
    rng = random.Random(seed * 1000 + index)
    outcomes = []
    await asyncio.sleep(rng.uniform(0, 1))  # do not all arrive in the same millisecond
    while time.monotonic() < deadline:
        draw = rng.random()
        kind = "hangup" if draw < 0.10 else "give_up" if draw < 0.15 else "complete"
        if not outcomes and index < 2:  # every run has both kinds of hang-up
            kind = ("hangup", "give_up")[index]
        endpoint = rng.choice(["chat", "completion"])
        outcome = await one_request(http, rng, kind, endpoint, timeout)
        outcomes.append(outcome)
        if outcome.status == 503:
            await asyncio.sleep(rng.uniform(0.5, 1.5))  # refused: back off, as clients should
    return outcomes


async def sample(
    http: httpx.AsyncClient, pid: int, samples: Samples, stop: asyncio.Event, t0: float
) -> None:
    while not stop.is_set():
        kib = rss_kib(pid)
        if kib is not None:
            samples.rss_kib.append((time.monotonic() - t0, kib))
        try:
            health = (await http.get("/health", timeout=10)).json()
            samples.queued_max = max(samples.queued_max, health["queued"])
        except (httpx.HTTPError, ValueError, KeyError):
            samples.health_errors += 1
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiter}, timeout=2.0)
        waiter.cancel()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"llama_webgpu_{name} "):
            return float(line.split()[-1])
    raise KeyError(name)


async def drive(args: argparse.Namespace, base: str, pid: int) -> dict:
    limits = httpx.Limits(max_connections=args.clients + 8, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=None) as http:
        health = (await http.get("/health")).json()
        max_queue = health["queue_capacity"]
        samples = Samples()
        stop = asyncio.Event()
        t0 = time.monotonic()
        sampler = asyncio.create_task(sample(http, pid, samples, stop, t0))
        deadline = t0 + args.duration
        cpu0 = cpu_seconds(pid)
        tasks = [
            client(http, i, deadline, args.seed, args.request_timeout) for i in range(args.clients)
        ]
        results = await asyncio.gather(*tasks)
        elapsed = time.monotonic() - t0
        server_cpu = cpu_seconds(pid) - cpu0
        # every place must come back: nothing queued, nothing running
        idle_after = None
        wait_from = time.monotonic()
        while time.monotonic() - wait_from < 15:
            h = (await http.get("/health")).json()
            if h["queued"] == 0 and h["processing"] == 0:
                idle_after = time.monotonic() - wait_from
                break
            await asyncio.sleep(0.1)
        stop.set()
        await sampler
        metrics = (await http.get("/metrics")).text
        final = (await http.get("/health")).json()
    outcomes = [o for per_client in results for o in per_client]
    return {
        "outcomes": outcomes,
        "samples": samples,
        "elapsed": elapsed,
        "server_cpu_s": server_cpu,
        "idle_after_s": idle_after,
        "max_queue": max_queue,
        "final_health": final,
        "metrics": metrics,
    }


# -- the report -----------------------------------------------------------------------------------


def rss_growth(samples: list[tuple[float, int]], warmup: float) -> dict:
    after = [kib for t, kib in samples if t >= warmup]
    if len(after) < 4:
        after = [kib for _, kib in samples[len(samples) // 2 :]]
    if not after:
        return {"start_mib": None, "end_mib": None, "growth_mib": None, "peak_mib": None}
    k = max(1, min(5, len(after) // 4))
    start, end = statistics.median(after[:k]), statistics.median(after[-k:])
    return {
        "start_mib": round(start / 1024, 1),
        "end_mib": round(end / 1024, 1),
        "growth_mib": round((end - start) / 1024, 1),
        "peak_mib": round(max(kib for _, kib in samples) / 1024, 1),
    }


def report(args: argparse.Namespace, run: dict, log_text: str, exit_code: int | None) -> dict:
    outcomes: list[Outcome] = run["outcomes"]
    done = [o for o in outcomes if o.kind == "complete" and o.total is not None]
    statuses: dict[str, int] = {}
    for o in outcomes:
        key = str(o.status) if o.status is not None else "none (gave up queued)"
        if o.problem and o.status is None and o.kind != "give_up":
            key = "none (failed)"
        statuses[key] = statuses.get(key, 0) + 1
    by_kind = {k: sum(o.kind == k for o in outcomes) for k in ("complete", "hangup", "give_up")}
    metrics = run["metrics"]
    generated = metric(metrics, "generated_tokens_total")
    cancelled = metric(metrics, "requests_cancelled_total")
    used = sum(o.tokens for o in done)
    hung_up = sum(o.kind != "complete" and o.status in (200, None) for o in outcomes)
    memory = rss_growth(run["samples"].rss_kib, args.warmup)
    elapsed = run["elapsed"]
    failures: list[str] = []
    problems = [o for o in outcomes if o.problem]
    for o in problems[:10]:
        failures.append(f"{o.kind} {o.endpoint} request: {o.problem}")
    if len(problems) > 10:
        failures.append(f"... {len(problems) - 10} more broken requests")
    refused = sum(o.status == 503 and o.error_code == "queue_full" for o in outcomes)
    if refused and args.clients <= run["max_queue"] + 1:
        failures.append(
            f"{refused} requests refused as queue_full with {args.clients} clients and "
            f"a queue of {run['max_queue']}"
        )
    if run["idle_after_s"] is None:
        failures.append(f"the server did not come back to idle: {run['final_health']}")
    leaked = generated - used
    if leaked > hung_up * TOKEN_SLACK:
        failures.append(
            f"{leaked:.0f} tokens generated beyond the finished streams' {used} for {hung_up} "
            f"hang-ups (at most {TOKEN_SLACK} each): disconnects did not stop generation"
        )
    if not done:
        failures.append("no stream finished")
    if memory["growth_mib"] is not None and memory["growth_mib"] > args.rss_limit:
        failures.append(f"RSS grew {memory['growth_mib']} MiB after warm-up (> {args.rss_limit})")
    if exit_code not in (0, -signal.SIGTERM):  # uvicorn re-raises the signal it handled
        failures.append(f"the server did not stop within 20 s of SIGTERM ({exit_code})")
    if "Traceback" in log_text:
        at = log_text.index("Traceback")
        failures.append(f"the server logged a traceback:\n{log_text[at : at + 2000]}")
    ttft = percentiles([o.ttft for o in done if o.ttft is not None])
    total = percentiles([o.total for o in done])
    return {
        "clients": args.clients,
        "duration_s": args.duration,
        "elapsed_s": round(elapsed, 1),
        "threads": args.threads,
        "max_queue": run["max_queue"],
        "requests": len(outcomes),
        "by_kind": by_kind,
        "statuses": statuses,
        "refused_queue_full": refused,
        "finished_streams": len(done),
        "requests_per_s": round(len(done) / elapsed, 3),
        "generated_tokens_per_s": round(generated / elapsed, 2),
        "ttft_s": {k: v if v is None else round(v, 3) for k, v in ttft.items()},
        "latency_s": {k: v if v is None else round(v, 3) for k, v in total.items()},
        "server_tokens": {
            "generated": generated,
            "finished_streams": used,
            "beyond": generated - used,
        },
        "cancelled_metric": cancelled,
        "hang_ups": hung_up,
        "queued_max": run["samples"].queued_max,
        "idle_after_s": run["idle_after_s"] and round(run["idle_after_s"], 2),
        "rss": memory,
        "rss_samples": len(run["samples"].rss_kib),
        "server_cpu_s": round(run["server_cpu_s"], 1),
        "bench_cpu_s": round(resource.getrusage(resource.RUSAGE_SELF).ru_utime, 1),
        "loadavg": run.get("loadavg"),
        "failures": failures,
    }


def print_report(r: dict) -> None:
    print(
        f"{r['clients']} streaming clients for {r['elapsed_s']} s, server on 1 worker, "
        f"{r['threads']} thread(s), queue {r['max_queue']}"
    )
    print(f"requests {r['requests']} {r['by_kind']}, statuses {r['statuses']}")
    print(
        f"finished streams {r['finished_streams']}: {r['requests_per_s']} requests/s, "
        f"{r['generated_tokens_per_s']} generated tokens/s"
    )
    for name in ("ttft_s", "latency_s"):
        p = r[name]
        print(f"{name[:-2]:>8}: p50 {p['p50']} s, p90 {p['p90']} s, p99 {p['p99']} s")
    print(
        f"hang-ups {r['hang_ups']}, server cancelled {r['cancelled_metric']:.0f}, tokens beyond "
        f"finished streams {r['server_tokens']['beyond']:.0f}, queued max {r['queued_max']}, "
        f"idle {r['idle_after_s']} s after the last client"
    )
    m = r["rss"]
    print(
        f"server RSS {m['start_mib']} -> {m['end_mib']} MiB after warm-up "
        f"(growth {m['growth_mib']} MiB, peak {m['peak_mib']} MiB)"
    )
    print(
        f"CPU: server {r['server_cpu_s']} s, bench {r['bench_cpu_s']} s; load average "
        f"{r['loadavg']}"
    )
    print("PASS" if not r["failures"] else "FAIL:\n- " + "\n- ".join(r["failures"]))


# -- the server -----------------------------------------------------------------------------------


def start_server(args: argparse.Namespace, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "llama_webgpu.server", "--model", MODEL, "--device", "cpu"]
    cmd += ["-t", str(args.threads), "-c", str(N_CTX), "--port", str(port)]
    cmd += ["--log-level", "warning"]
    if args.max_queue is not None:
        cmd += ["--max-queue", str(args.max_queue)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_server(proc)
    sys.exit(f"the server did not start:\n{log_path.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    p.add_argument("--duration", type=float, default=300, help="seconds of load (default 300)")
    p.add_argument("--threads", type=int, default=1, help="server CPU threads (default 1)")
    p.add_argument("--max-queue", type=int, help="the server's --max-queue (default: its own)")
    p.add_argument("--warmup", type=float, help="seconds before RSS counts (default duration/5)")
    p.add_argument("--rss-limit", type=float, default=16, help="RSS growth allowed, MiB (16)")
    p.add_argument("--request-timeout", type=float, default=600, help="seconds per request")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the report here")
    args = p.parse_args(argv)
    if args.warmup is None:
        args.warmup = min(60.0, args.duration / 5)
    from llama_webgpu.models import model_path

    model_path(MODEL)  # fetched before the server needs it
    with tempfile.TemporaryDirectory(prefix="server-load-") as tmp:
        log_path = Path(tmp) / "server.log"
        proc, base = start_server(args, log_path)
        load0 = os.getloadavg()
        try:
            run = asyncio.run(drive(args, base, proc.pid))
        finally:
            exit_code = stop_server(proc)
        run["loadavg"] = {
            "start": [round(x, 2) for x in load0],
            "end": [round(x, 2) for x in os.getloadavg()],
        }
        result = report(args, run, log_path.read_text(errors="replace"), exit_code)
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
