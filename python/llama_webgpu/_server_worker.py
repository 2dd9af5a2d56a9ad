"""The inference side of server.py: one worker thread running requests one at a time in
arrival order from a bounded queue, the per-request token counter and stop switch (`Watch`),
the metrics, and the mapping of exceptions to OpenAI-style errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ._server_requests import APIError, bad
from .compat import Llama
from .errors import ContextFullError, DecodeError, LlamaError

log = logging.getLogger("llama_webgpu.server")

_CLIENT_ERRORS = (ValueError, TypeError, KeyError, LlamaError)


class Cancelled(Exception):
    """Raised inside the generation when its client has gone."""


def api_error(e: BaseException) -> APIError:
    """The HTTP error for an exception raised while serving a request."""
    if isinstance(e, APIError):
        return e
    message = str(e) or type(e).__name__
    if isinstance(e, ContextFullError) or message.startswith("Requested tokens ("):
        # compat.Llama: "Requested tokens (n) exceed context window of m" (or batch size)
        return bad(message, code="context_length_exceeded")
    if isinstance(e, _CLIENT_ERRORS) and not (isinstance(e, DecodeError) or type(e) is LlamaError):
        return bad(message)
    log.error("request failed", exc_info=e)
    return APIError(500, f"internal error: {message}")


class Watch:
    """A logits processor that sees every sampled token: it counts and times them, and stops
    the generation (raising Cancelled) once its request is cancelled."""

    def __init__(self, cancelled: threading.Event):
        self.cancelled = cancelled
        self.start = time.perf_counter()
        self.first = self.last = 0.0
        self.n_prompt = 0
        self.n_sampled = 0

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.cancelled.is_set():
            raise Cancelled
        now = time.perf_counter()
        if not self.n_sampled:
            self.first = now
            self.n_prompt = len(input_ids)
        self.last = now
        self.n_sampled += 1
        return scores

    def timings(self) -> dict[str, Any]:
        if not self.n_sampled:
            return {"prompt_n": 0, "prompt_ms": 0.0, "predicted_n": 0, "predicted_ms": 0.0}
        prompt_s = max(self.first - self.start, 1e-9)
        gen_s = self.last - self.first
        n_gen = max(self.n_sampled - 1, 0)
        return {
            "prompt_n": self.n_prompt,
            "prompt_ms": prompt_s * 1e3,
            "prompt_per_second": self.n_prompt / prompt_s,
            "predicted_n": self.n_sampled,
            "predicted_ms": gen_s * 1e3,
            "predicted_per_second": n_gen / gen_s if gen_s > 0 else 0.0,
        }

    def usage(self) -> dict[str, int]:
        n = self.n_prompt + self.n_sampled
        return {
            "prompt_tokens": self.n_prompt,
            "completion_tokens": self.n_sampled,
            "total_tokens": n,
        }


class Job:
    """One request for the worker: `call(watch)` returns a dict, or chunks when streaming.
    Its events ("start", "chunk", "result", "error", "end") go to the event loop."""

    def __init__(self, call: Callable[[Watch], Any], stream: bool, include_usage: bool = False):
        self.call = call
        self.stream = stream
        self.include_usage = include_usage
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.watch = Watch(self.cancelled)

    def post(self, kind: str, value: Any = None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


class Metrics:
    """Counters for GET /metrics (Prometheus text format)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.cancelled = 0
        self.recent: deque[tuple[int, float, int, float]] = deque(maxlen=10)

    def count(self, endpoint: str, status: int) -> None:
        with self.lock:
            key = (endpoint, status)
            self.requests[key] = self.requests.get(key, 0) + 1

    def record(self, watch: Watch, cancelled: bool) -> None:
        with self.lock:
            self.prompt_tokens += watch.n_prompt
            self.generated_tokens += watch.n_sampled
            self.cancelled += cancelled
            if watch.n_sampled:
                prompt_s = watch.first - watch.start
                self.recent.append(
                    (watch.n_prompt, prompt_s, watch.n_sampled - 1, watch.last - watch.first)
                )

    def render(self, queued: int, processing: int, capacity: int) -> str:
        with self.lock:
            recent = list(self.recent)
            requests = sorted(self.requests.items())
            totals = (self.prompt_tokens, self.generated_tokens, self.cancelled)

        def rate(n: float, s: float) -> float:
            return n / s if s > 0 else 0.0

        p = "llama_webgpu_"
        lines = [
            f"# HELP {p}requests_total HTTP requests answered, by endpoint and status.",
            f"# TYPE {p}requests_total counter",
        ]
        lines += [f'{p}requests_total{{endpoint="{e}",status="{s}"}} {n}' for (e, s), n in requests]
        recent_rates = (
            rate(sum(r[0] for r in recent), sum(r[1] for r in recent)),
            rate(sum(r[2] for r in recent), sum(r[3] for r in recent)),
        )
        for name, kind, text, value in (
            ("prompt_tokens_total", "counter", "Prompt tokens processed.", totals[0]),
            ("generated_tokens_total", "counter", "Tokens sampled.", totals[1]),
            ("requests_cancelled_total", "counter", "Requests whose client left.", totals[2]),
            (
                "prompt_tokens_per_second",
                "gauge",
                "Prompt tokens/s over the last 10 generations.",
                recent_rates[0],
            ),
            (
                "generation_tokens_per_second",
                "gauge",
                "Generated tokens/s over the last 10 generations.",
                recent_rates[1],
            ),
            ("requests_queued", "gauge", "Requests waiting for the worker.", queued),
            ("requests_processing", "gauge", "Requests the worker is running.", processing),
            ("queue_capacity", "gauge", "Most requests that may wait.", capacity),
        ):
            lines += [f"# HELP {p}{name} {text}", f"# TYPE {p}{name} {kind}", f"{p}{name} {value}"]
        return "\n".join(lines) + "\n"


class Engine:
    """One worker thread running jobs one at a time, first come first served."""

    def __init__(self, llama: Llama, max_queue: int, metrics: Metrics):
        self.llama = llama
        self.max_queue = max_queue
        self.metrics = metrics
        self._waiting: deque[Job] = deque()
        self._current: Job | None = None
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="llama-webgpu-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def processing(self) -> int:
        return int(self._current is not None)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closing:
                raise APIError(503, "the server is shutting down", code="shutting_down")
            if len(self._waiting) >= self.max_queue and (self._current or self._waiting):
                raise APIError(
                    503,
                    f"the server is busy ({len(self._waiting)} requests queued): retry later",
                    code="queue_full",
                )
            self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Stop a job: dropped from the queue, or stopped after the current token."""
        job.cancelled.set()
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                self.metrics.record(job.watch, cancelled=True)

    def stop(self) -> None:
        """Refuse new jobs, fail the waiting ones and cancel the running one (without waiting)."""
        with self._cond:
            self._closing = True
            for job in self._waiting:
                job.cancelled.set()
                job.post("error", APIError(503, "the server is shutting down"))
            self._waiting.clear()
            if self._current is not None:
                self._current.cancelled.set()
            self._cond.notify_all()

    def close(self, timeout: float = 10.0) -> bool:
        """stop(), then wait for the worker; True if it stopped within timeout."""
        self.stop()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                job = self._current = self._waiting.popleft()
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._current = None

    def _run(self, job: Job) -> None:
        watch = job.watch
        watch.start = time.perf_counter()
        chunks: Iterator[dict[str, Any]] | None = None
        cancelled = False
        try:
            result = job.call(watch)
            if not job.stream:
                job.post("result", result)
                return
            chunks = result
            job.post("start")
            last: dict[str, Any] | None = None
            for chunk in chunks:
                if job.cancelled.is_set():
                    raise Cancelled
                choices = chunk.get("choices") or [{}]
                if choices[0].get("finish_reason") is not None:
                    chunk = {**chunk, "timings": watch.timings()}
                job.post("chunk", chunk)
                last = chunk
            if job.include_usage and last is not None:
                head = {k: last[k] for k in ("id", "object", "created", "model")}
                job.post("chunk", {**head, "choices": [], "usage": watch.usage()})
            job.post("end")
        except Cancelled:
            cancelled = True
            if self._closing:  # tell a client still listening why its stream ends
                job.post("error", APIError(503, "the server is shutting down"))
            else:
                job.post("end")
        except Exception as e:
            job.post("error", api_error(e))
        finally:
            if chunks is not None and hasattr(chunks, "close"):
                with contextlib.suppress(Exception):
                    chunks.close()
            self.metrics.record(watch, cancelled=cancelled)


__all__ = ["Cancelled", "Engine", "Job", "Metrics", "Watch", "api_error"]
