"""An OpenAI-compatible HTTP server for one model, with a chat page at `/`.

    python -m llama_webgpu.server --model smollm2-135m-instruct --port 8080
    llama-webgpu serve --model path/to/model.gguf --device webgpu --api-key SECRET

Endpoints: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (streamed as
server-sent events ending with `data: [DONE]`), `POST /v1/embeddings`, llama.cpp server's
`POST /tokenize` and `POST /detokenize`, `GET /health`, Prometheus `GET /metrics`, and `GET /`.

The completion, chat and embedding dicts are those of `compat.Llama`. Inference runs on one
worker thread, one request at a time, taken in arrival order from a bounded queue (503 when it
is full); the event loop never runs the model. A client that goes away (a closed connection,
the page's Stop button) has its request dropped from the queue, or its generation stopped after
the current token. Errors are OpenAI-shaped JSON with a 4xx status for client mistakes; during
a stream, an error is sent as an event `data: {"error": {...}}` and the stream ends.

Usage and timings count every sampled token, the final end-of-generation token included (as
llama.cpp's server does); responses also carry llama.cpp's `timings` object.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hmac
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

try:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
        f"the server needs starlette and uvicorn ({e}): pip install 'llama-webgpu[server]'"
    ) from e

from ._server_requests import (
    APIError,
    ModelFacts,
    bad,
    chat_request,
    completion_request,
    content_field,
    embedding_inputs,
    tokens_field,
)
from ._server_worker import Engine, Job, Metrics, Watch, api_error
from .compat import Llama
from .errors import LlamaError

log = logging.getLogger("llama_webgpu.server")

MAX_BODY = 1 << 20
MAX_QUEUE = 64  # requests that may wait: 50 concurrent clients wait rather than get 503
OPEN_PATHS = frozenset({"/", "/health"})
ENDPOINTS = (
    "/",
    "/health",
    "/metrics",
    "/v1/models",
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/tokenize",
    "/detokenize",
)


class _ClientGone(Exception):
    """The client disconnected before its response started."""


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _dumps(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError:  # a -inf logprob: JSON has no such number
        return json.dumps(_json_safe(value), ensure_ascii=False)


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return _dumps(content).encode("utf-8")


def _error_response(e: APIError, headers: dict[str, str] | None = None) -> Response:
    return _JSON(e.body(), status_code=e.status, headers=headers)


class _JobStream(StreamingResponse):
    """A job's server-sent events. However the response ends (done, or cancelled by Starlette
    when the client goes, even before the body was started) the job is cancelled with it."""

    def __init__(self, engine: Engine, job: Job, events: AsyncIterator[str]):
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self.engine = engine
        self.job = job

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.engine.cancel(self.job)


# -- the app --------------------------------------------------------------------------------------


class Server:
    """The state behind the routes: the model, its worker and the metrics."""

    def __init__(
        self,
        llama: Llama,
        *,
        model_id: str,
        api_key: str | None = None,
        max_queue: int = MAX_QUEUE,
        max_body: int = MAX_BODY,
    ):
        self.llama = llama
        self.model_id = model_id
        path = Path(llama.model_path)
        self.aliases = {model_id, path.name, path.stem, str(path)}
        self.api_key = api_key or None
        self.max_body = max_body
        self.metrics = Metrics()
        self.engine = Engine(llama, max_queue, self.metrics)
        tok = llama._tok
        self.facts = ModelFacts(n_vocab=tok.n_vocab, eog_tokens=tok.eog_tokens)
        self.created = int(time.time())
        model = tok.model
        self.meta = {
            "n_ctx": llama.n_ctx(),
            "n_ctx_train": model.n_ctx_train,
            "n_vocab": model.n_vocab,
            "n_embd": model.n_embd,
            "n_params": model.n_params,
            "size": model.size,
            "description": model.description,
            "device": model.device.description if model.device else "CPU",
        }

    # -- helpers ------------------------------------------------------------------------------

    def check_model(self, body: dict[str, Any]) -> None:
        name = body.get("model")
        if name in (None, "") or name in self.aliases:
            return
        raise APIError(
            404, f"The model `{name}` does not exist", param="model", code="model_not_found"
        )

    async def read_json(self, request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > 8 * self.max_body:
            raise self._too_large()
        parts: list[bytes] = []
        size = 0
        async for part in request.stream():  # a body over the limit is read to its end, unkept
            size += len(part)
            if size <= self.max_body:
                parts.append(part)
            elif size > 8 * self.max_body:
                break
        if size > self.max_body:
            raise self._too_large()
        try:
            body = json.loads(b"".join(parts))
        except (ValueError, RecursionError) as e:
            raise bad(f"the request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise bad("the request body must be a JSON object")
        return body

    def _too_large(self) -> APIError:
        return APIError(
            413, f"the request body is over {self.max_body} bytes", code="request_too_large"
        )

    async def run(self, request: Request, job: Job) -> tuple[str, Any]:
        """Queue job and wait for its first event, dropping it if the client leaves."""
        self.engine.submit(job)
        get = asyncio.ensure_future(job.events.get())
        try:
            while True:
                done, _ = await asyncio.wait({get}, timeout=0.25)
                if done:
                    return get.result()
                if await request.is_disconnected():
                    raise _ClientGone
        except BaseException:
            self.engine.cancel(job)
            raise
        finally:
            get.cancel()

    async def respond(self, request: Request, job: Job, param: str) -> Response:
        try:
            kind, value = await self.run(request, job)
        except _ClientGone:
            return Response(status_code=499)
        if kind == "error":
            if value.code == "context_length_exceeded":
                value.param = param
            return _error_response(value)
        if kind == "result" and "choices" not in value:  # embeddings
            return _JSON(value)
        if kind == "result":
            return _JSON({**value, "usage": job.watch.usage(), "timings": job.watch.timings()})
        assert kind == "start"
        return _JobStream(self.engine, job, self._events(job))

    async def _events(self, job: Job) -> AsyncIterator[str]:
        while True:
            kind, value = await job.events.get()
            if kind == "chunk":
                yield f"data: {_dumps(value)}\n\n"
            elif kind == "error":
                yield f"data: {_dumps(value.body())}\n\n"
                return
            else:
                yield "data: [DONE]\n\n"
                return

    # -- routes -------------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        page = resources.files("llama_webgpu").joinpath("static/index.html").read_text("utf-8")
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    async def health(self, request: Request) -> Response:
        return _JSON(
            {
                "status": "ok",
                "model": self.model_id,
                "queued": self.engine.queued,
                "processing": self.engine.processing,
                "queue_capacity": self.engine.max_queue,
            }
        )

    async def metrics_text(self, request: Request) -> Response:
        text = self.metrics.render(
            self.engine.queued, self.engine.processing, self.engine.max_queue
        )
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    def _model_card(self) -> dict[str, Any]:
        return {
            "id": self.model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "llama-webgpu",
            "meta": self.meta,
        }

    async def models(self, request: Request) -> Response:
        return _JSON({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        self.check_model({"model": request.path_params["model"]})
        return _JSON(self._model_card())

    async def chat(self, request: Request) -> Response:
        body = await self.read_json(request)
        self.check_model(body)
        req = chat_request(body, self.facts, self.model_id)

        def call(watch: Watch) -> Any:
            kw = dict(req.kwargs, logits_processor=watch)
            return self.llama.create_chat_completion(stream=req.stream, **kw)

        return await self.respond(request, Job(call, req.stream, req.include_usage), "messages")

    async def completions(self, request: Request) -> Response:
        body = await self.read_json(request)
        self.check_model(body)
        req = completion_request(body, self.facts, self.model_id)

        def call(watch: Watch) -> Any:
            kw = dict(req.kwargs, logits_processor=watch)
            return self.llama.create_completion(stream=req.stream, **kw)

        return await self.respond(request, Job(call, req.stream, req.include_usage), "prompt")

    async def embeddings(self, request: Request) -> Response:
        body = await self.read_json(request)
        self.check_model(body)
        inputs, fmt = embedding_inputs(body)
        dims = body.get("dimensions")
        if dims is not None and dims != self.meta["n_embd"]:
            raise bad(f"dimensions must be {self.meta['n_embd']} for this model", "dimensions")

        def call(watch: Watch) -> Any:
            texts = [
                t if isinstance(t, str) else self.llama.detokenize(t).decode("utf-8", "replace")
                for t in inputs
            ]
            vectors, total = self.llama.embed(
                texts, normalize=True, truncate=False, return_count=True
            )
            watch.n_prompt = total
            data = []
            for i, v in enumerate(vectors):
                vec: Any = v
                if fmt == "base64":
                    vec = base64.b64encode(np.asarray(v, "<f4").tobytes()).decode("ascii")
                data.append({"object": "embedding", "embedding": vec, "index": i})
            usage = {"prompt_tokens": total, "total_tokens": total}
            return {"object": "list", "data": data, "model": self.model_id, "usage": usage}

        return await self.respond(request, Job(call, stream=False), "input")

    async def tokenize(self, request: Request) -> Response:
        body = await self.read_json(request)
        content = content_field(body)
        add_special = body.get("add_special", False) is True
        parse_special = body.get("parse_special", True) is not False
        with_pieces = body.get("with_pieces", False) is True
        tok = self.llama._tok

        def run() -> list[Any]:
            tokens = tok.encode(content, add_special=add_special, parse_special=parse_special)
            if not with_pieces:
                return tokens
            out = []
            for t in tokens:
                raw = tok.token_to_piece(t)
                try:
                    piece: Any = raw.decode("utf-8")
                except UnicodeDecodeError:
                    piece = list(raw)  # part of a character: its bytes, as llama.cpp does
                out.append({"id": t, "piece": piece})
            return out

        return _JSON({"tokens": await asyncio.to_thread(run)})

    async def detokenize(self, request: Request) -> Response:
        body = await self.read_json(request)
        tokens = tokens_field(body)
        try:
            text = await asyncio.to_thread(self.llama._tok.decode, tokens, special=True)
        except LlamaError as e:
            raise bad(str(e), "tokens") from None
        return _JSON({"content": text})


class _Gate:
    """ASGI middleware: the API key, and the request counts by endpoint and status."""

    def __init__(self, app: Any, server: Server):
        self.app = app
        self.server = server

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        if endpoint == "other" and path.startswith("/v1/models/"):
            endpoint = "/v1/models/{model}"
        status = 500

        async def counted(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            key = self.server.api_key
            if key is not None and path not in OPEN_PATHS and not _authorized(scope, key):
                err = APIError(
                    401,
                    "Invalid or missing API key: send 'Authorization: Bearer <key>'",
                    code="invalid_api_key",
                )
                response = _error_response(err, {"WWW-Authenticate": "Bearer"})
                await response(scope, receive, counted)
                return
            await self.app(scope, receive, counted)
        finally:
            self.server.metrics.count(endpoint, status)


def _authorized(scope: Any, key: str) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return scheme.lower() == "bearer" and hmac.compare_digest(
                token.strip().encode(), key.encode()
            )
    return False


async def _api_error_handler(request: Request, exc: Exception) -> Response:
    return _error_response(api_error(exc))


async def _http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = "Not found" if exc.status_code == 404 else str(exc.detail)
    code = "not_found" if exc.status_code == 404 else None
    return _error_response(APIError(exc.status_code, f"{message}: {request.url.path}", code=code))


def create_app(server: Server) -> Any:
    """The ASGI application for a Server (its worker runs while the app is served)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        server.engine.start()
        yield
        if not await asyncio.to_thread(server.engine.close):
            log.warning("the worker did not stop within 10 s")

    s = server
    routes = [
        Route("/", s.index),
        Route("/health", s.health),
        Route("/metrics", s.metrics_text),
        Route("/v1/models", s.models),
        Route("/v1/models/{model:path}", s.model),
        Route("/v1/completions", s.completions, methods=["POST"]),
        Route("/v1/chat/completions", s.chat, methods=["POST"]),
        Route("/v1/embeddings", s.embeddings, methods=["POST"]),
        Route("/tokenize", s.tokenize, methods=["POST"]),
        Route("/detokenize", s.detokenize, methods=["POST"]),
    ]
    handlers = {
        APIError: _api_error_handler,
        HTTPException: _http_error_handler,
        Exception: _api_error_handler,
    }
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    return _Gate(app, server)


# -- the command line ---------------------------------------------------------------------------


def build_parser(prog: str = "llama-webgpu serve") -> argparse.ArgumentParser:
    from .model import DEVICE_CHOICES
    from .models import DEFAULT_MODEL, KNOWN_MODELS

    p = argparse.ArgumentParser(
        prog=prog, description="Serve one GGUF model over an OpenAI-compatible HTTP API."
    )
    p.add_argument(
        "-m",
        "--model",
        default=DEFAULT_MODEL,
        help=f"a GGUF path or a known model ({', '.join(KNOWN_MODELS)}); default {DEFAULT_MODEL}",
    )
    p.add_argument("--alias", help="the model id clients use (default: the name or file name)")
    p.add_argument(
        "--device", choices=DEVICE_CHOICES, default="auto", help="where to run (default: auto)"
    )
    p.add_argument("-c", "--ctx-size", type=int, default=4096, help="context size in tokens")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("LLAMA_WEBGPU_API_KEY"),
        help="require 'Authorization: Bearer KEY' (default: $LLAMA_WEBGPU_API_KEY, else none)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=MAX_QUEUE,
        help=f"requests that may wait (503 past; default {MAX_QUEUE})",
    )
    p.add_argument("--max-body", type=int, default=MAX_BODY, help="largest request body, bytes")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("-v", "--verbose", action="store_true", help="log llama.cpp's messages")
    return p


def load(args: argparse.Namespace) -> Server:
    """The Server for parsed command-line arguments (loads the model)."""
    from .models import KNOWN_MODELS, model_path

    if args.model in KNOWN_MODELS:
        path, name = model_path(args.model), args.model
    else:
        path = Path(args.model)
        if not path.is_file():
            raise SystemExit(
                f"error: {args.model!r} is neither a GGUF file nor a known model "
                f"({', '.join(KNOWN_MODELS)})"
            )
        name = path.name
    for flag, value, least in (
        ("--ctx-size", args.ctx_size, 0),
        ("--threads", args.threads or 1, 1),
        ("--max-queue", args.max_queue, 0),
        ("--max-body", args.max_body, 1),
    ):
        if value < least:
            raise SystemExit(f"error: {flag} must be at least {least}")
    llama = Llama(
        str(path),
        device=args.device,
        n_ctx=args.ctx_size,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        pooling_type="mean",
        verbose=args.verbose,
    )
    return Server(
        llama,
        model_id=args.alias or name,
        api_key=args.api_key,
        max_queue=args.max_queue,
        max_body=args.max_body,
    )


def main(argv: list[str] | None = None) -> int:
    """`llama-webgpu serve`: load the model, then serve until interrupted."""
    try:
        import uvicorn
    except ImportError:
        raise SystemExit(
            "error: the server needs uvicorn: pip install 'llama-webgpu[server]'"
        ) from None

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(message)s")
    server = load(args)
    meta = server.meta
    log.info(
        "serving %s (%s, n_ctx %d) on %s at http://%s:%d/",
        server.model_id,
        meta["description"],
        meta["n_ctx"],
        meta["device"],
        args.host,
        args.port,
    )

    class Uvicorn(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            server.engine.stop()  # end streams now: uvicorn waits for open connections
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        create_app(server),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=5,
    )
    try:
        Uvicorn(config).run()
    except KeyboardInterrupt:  # uvicorn passes on the Ctrl-C it handled
        pass
    finally:
        if server.engine.close(timeout=10):
            server.llama.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
