"""Serve an image-to-image model over HTTP (``pixmark serve``).

Endpoints (OpenAPI at ``/openapi.json``, docs at ``/docs``):

* ``POST /v1/process``: one PNG or JPEG image, as the raw body (``Content-Type:
  image/png`` or ``image/jpeg``) or as the file field ``image`` of a
  ``multipart/form-data`` form. Answers the model's output as a lossless **8-bit** PNG of
  the same size. Outputs are quantised to 256 levels: a watermark that does not survive
  8-bit rounding cannot be verified through the API. Grey images sent to a colour model
  are replicated to RGB, colour images sent to a grey model are converted to luminance,
  alpha is dropped; the answer has the model's channel count.
* ``GET /v1/health``: ``{"status": "ok"}``.
* ``GET /v1/info``: architecture, channels, parameter count, pixmark version and limits.
  It never reveals a key, and names the host model of a protected ``output`` model
  rather than the embedder.

Every error is JSON ``{"error": "<one sentence>"}`` with a 4xx status: 400 (empty,
corrupt or truncated image), 413 (body over ``max_upload_bytes``, image over
``max_pixels``), 415 (wrong content type, non-image, format other than PNG/JPEG), 422
(multipart form without an ``image`` file), 429 (more than ``max_queue`` requests
waiting; ``Retry-After`` says when to try again). At most ``max_concurrency`` requests
are decoded and run at once. Requests of the same size that arrive within
``batch_window_ms`` of each other run as one batch (up to ``max_batch``) on the model's
device; one worker thread owns the model. On SIGINT/SIGTERM the server stops accepting
connections and finishes the requests it has (``graceful_timeout`` seconds at most).
"""

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from pixmark.checkpoint import model_channels
from pixmark.errors import PixmarkError
from pixmark.remote import ImageDecodeError, decode_image, encode_png
from pixmark.schemes.base import model_device

log = logging.getLogger("pixmark.serve")

MB = 1024 * 1024
#: Content types ``POST /v1/process`` accepts as a raw body.
RAW_TYPES = ("image/png", "image/jpeg", "image/jpg")


def _require_fastapi() -> Any:
    try:
        import fastapi
        import uvicorn  # noqa: F401
    except ImportError:
        raise PixmarkError(
            "serving needs FastAPI and uvicorn; install them with "
            "`pip install fastapi uvicorn python-multipart`"
        ) from None
    return fastapi


@dataclass(frozen=True)
class Limits:
    """What one server accepts and how hard it works (see :func:`create_app`)."""

    max_upload_bytes: int = 20 * MB
    max_pixels: int = 4_000_000
    max_concurrency: int = 4
    max_queue: int = 64
    batch_window_ms: float = 5.0
    max_batch: int = 8

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_concurrency", "max_batch"):
            if getattr(self, name) < 1:
                raise PixmarkError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue < 0 or self.batch_window_ms < 0:
            raise PixmarkError("max_queue and batch_window_ms must be >= 0")


class HTTPFailure(Exception):
    """An expected request failure: answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


# --------------------------------------------------------------------------- model side


def model_architecture(model: nn.Module) -> str:
    """A public name for ``model``: its zoo name, or the host's for a protected model."""
    from pixmark import nets

    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module) and hasattr(model, "embedder"):
        model = inner  # do not advertise the embedder of a protected model
    for name, cls in nets.ARCHITECTURES.items():
        if type(model) is cls:
            return name
    if isinstance(model, torch.jit.ScriptModule):
        return "torchscript"
    return type(model).__name__


@dataclass
class _Job:
    image: Tensor
    future: asyncio.Future[Tensor]


@dataclass
class Batcher:
    """Groups same-size images that arrive within ``window_ms`` and runs them together.

    One worker thread owns the model, so batches run one at a time on its device.
    ``batch_sizes`` records the size of every batch run (for tests and metrics).
    """

    model: nn.Module
    window_ms: float = 5.0
    max_batch: int = 8
    batch_sizes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.device = model_device(self.model)
        self.queue: asyncio.Queue[_Job] | None = None
        self.task: asyncio.Task[None] | None = None
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pixmark-model")
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        while self.queue is not None and not self.queue.empty():
            job = self.queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(HTTPFailure(503, "the server is shutting down"))
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    async def submit(self, image: Tensor) -> Tensor:
        if self.queue is None:
            raise HTTPFailure(503, "the server is not running")
        future: asyncio.Future[Tensor] = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(image, future))
        return await future

    async def _loop(self) -> None:
        assert self.queue is not None and self.pool is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            deadline = loop.time() + self.window_ms / 1000
            while len(jobs) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    jobs.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
            groups: dict[tuple[int, ...], list[_Job]] = {}
            for job in jobs:
                groups.setdefault(tuple(job.image.shape), []).append(job)
            for group in groups.values():
                live = [j for j in group if not j.future.done()]
                if not live:
                    continue
                try:
                    outs = await loop.run_in_executor(self.pool, self._run, live)
                except Exception as exc:  # noqa: BLE001 - reported to each waiting request
                    log.exception("model failed on a batch of %d", len(live))
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    for j in live:
                        if not j.future.done():
                            j.future.set_exception(
                                HTTPFailure(500, f"the model failed on this image ({first})")
                            )
                    continue
                self.batch_sizes.append(len(live))
                for j, out in zip(live, outs, strict=True):
                    if not j.future.done():
                        j.future.set_result(out)

    @torch.no_grad()
    def _run(self, jobs: list[_Job]) -> list[Tensor]:
        x = torch.stack([j.image for j in jobs]).to(self.device)
        y = self.model(x)
        if not isinstance(y, Tensor) or y.shape != x.shape:
            raise RuntimeError(f"the model returned {getattr(y, 'shape', type(y))} for {x.shape}")
        y = torch.nan_to_num(y.float(), nan=0.0).clamp(0, 1).cpu()
        return list(y)


# --------------------------------------------------------------------------- app


def _openapi_body() -> dict[str, Any]:
    binary = {"type": "string", "format": "binary"}
    return {
        "requestBody": {
            "required": True,
            "description": "One PNG or JPEG image (raw body or multipart field 'image').",
            "content": {
                "image/png": {"schema": binary},
                "image/jpeg": {"schema": binary},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"image": binary},
                        "required": ["image"],
                    }
                },
            },
        }
    }


_ERROR_SCHEMA = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"error": {"type": "string"}},
                "required": ["error"],
            }
        }
    }
}


def create_app(
    model: nn.Module,
    *,
    max_upload_bytes: int = 20 * MB,
    max_pixels: int = 4_000_000,
    max_concurrency: int = 4,
    max_queue: int = 64,
    batch_window_ms: float = 5.0,
    max_batch: int = 8,
    channels: int | None = None,
    architecture: str | None = None,
) -> Any:
    """A FastAPI app serving ``model`` (an image-to-image ``nn.Module`` or TorchScript).

    See the module docstring for the endpoints, limits and error codes. ``channels`` and
    ``architecture`` override what is read from the model. ``app.state.batcher.batch_sizes``
    lists the batches run; ``app.state.stats`` counts waiting, active and served requests.
    """
    _require_fastapi()
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from pixmark import __version__

    limits = Limits(
        max_upload_bytes=max_upload_bytes,
        max_pixels=max_pixels,
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        batch_window_ms=batch_window_ms,
        max_batch=max_batch,
    )
    model = model.eval()
    channels = channels or model_channels(model)
    if channels not in (1, 3):
        raise PixmarkError(f"channels must be 1 or 3, got {channels}")
    info = {
        "architecture": architecture or model_architecture(model),
        "channels": channels,
        "parameters": sum(p.numel() for p in model.parameters()),
        "pixmark_version": __version__,
        "output": "8-bit PNG, same size as the input",
        "limits": {
            "max_upload_bytes": limits.max_upload_bytes,
            "max_pixels": limits.max_pixels,
            "max_concurrency": limits.max_concurrency,
            "max_batch": limits.max_batch,
        },
    }
    batcher = Batcher(model, window_ms=limits.batch_window_ms, max_batch=limits.max_batch)
    slots: dict[str, Any] = {"sem": None}
    stats = {"waiting": 0, "active": 0, "served": 0}

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        slots["sem"] = asyncio.Semaphore(limits.max_concurrency)
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(
        title="pixmark model server",
        version=__version__,
        description="An image-to-image model behind HTTP. Outputs are 8-bit PNG.",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.limits = limits
    app.state.stats = stats  # requests waiting for a slot, being processed, answered (200)

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> Any:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(HTTPFailure)
    async def _failure(request: Request, exc: HTTPFailure) -> Any:
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Any:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no endpoint {request.url.path}; see /docs"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return error(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Any:
        return error(422, f"invalid request ({exc.errors()[0].get('msg', 'bad input')})")

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Any:
        log.exception("unexpected error on %s", request.url.path)
        return error(500, "internal server error")

    @app.get("/v1/health", summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/info", summary="What is served (never the key)")
    async def get_info() -> dict[str, Any]:
        return info

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > limits.max_upload_bytes:
                    raise HTTPFailure(413, _too_large(int(declared), limits.max_upload_bytes))
            except ValueError:
                raise HTTPFailure(400, "the Content-Length header is not a number") from None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_upload_bytes:
                raise HTTPFailure(413, _too_large(size, limits.max_upload_bytes))
            chunks.append(chunk)
        return b"".join(chunks)

    async def image_bytes(request: Request) -> bytes:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype in RAW_TYPES:
            return await read_body(request)
        if ctype == "multipart/form-data":
            body = await read_body(request)
            return await _multipart_file(request, body, "image")
        shown = ctype or "no content type"
        raise HTTPFailure(
            415,
            f"{shown} is not accepted; send a PNG or JPEG body with Content-Type image/png or "
            "image/jpeg, or a multipart/form-data form with the file field 'image'",
        )

    def process_sync_decode(data: bytes) -> Tensor:
        try:
            return decode_image(data, channels=channels, max_pixels=limits.max_pixels)
        except ImageDecodeError as exc:
            raise HTTPFailure(exc.status, str(exc)) from None

    @app.post(
        "/v1/process",
        summary="Run the model on one image",
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}}, "description": "The output, 8-bit PNG"},
            **{code: {"description": text, **_ERROR_SCHEMA} for code, text in _ERRORS.items()},
        },
        openapi_extra=_openapi_body(),
    )
    async def process(request: Request) -> Any:
        sem = slots["sem"]
        if sem is None:
            raise HTTPFailure(503, "the server is not running")
        if stats["waiting"] + stats["active"] >= limits.max_concurrency + limits.max_queue:
            raise HTTPFailure(
                429, "too many requests are waiting; retry shortly", {"Retry-After": "1"}
            )
        # The upload is read before taking a slot, so slow clients do not hold the model.
        stats["waiting"] += 1
        try:
            data = await image_bytes(request)
            await sem.acquire()
        finally:
            stats["waiting"] -= 1
        stats["active"] += 1
        try:
            image = await run_in_threadpool(process_sync_decode, data)
            out = await batcher.submit(image)
            png = await run_in_threadpool(encode_png, out)
        finally:
            stats["active"] -= 1
            sem.release()
        stats["served"] += 1
        return Response(png, media_type="image/png")

    return app


_ERRORS = {
    400: "Empty, corrupt or truncated image",
    413: "Upload or image too large",
    415: "Unsupported content type or image format",
    422: "Malformed request (e.g. multipart without an 'image' file)",
    429: "Too many requests waiting",
}


def _too_large(size: int, limit: int) -> str:
    return f"the upload is {size} bytes; the limit is {limit} bytes ({limit / MB:g} MB)"


async def _multipart_file(request: Any, body: bytes, field_name: str) -> bytes:
    """The bytes of file field ``field_name`` of a multipart body already read."""
    from starlette.requests import Request

    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.request", "body": b"", "more_body": False}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    replayed = Request(request.scope, receive=replay)
    try:
        form = await replayed.form(max_files=4, max_fields=16)
    except Exception as exc:  # noqa: BLE001 - python-multipart raises several types
        raise HTTPFailure(400, f"the multipart form is malformed ({exc})") from None
    try:
        part = form.get(field_name)
        if part is None or isinstance(part, str):
            raise HTTPFailure(
                422, f"the multipart form has no file field {field_name!r}; send the image there"
            )
        return await part.read()
    finally:
        await form.close()


# --------------------------------------------------------------------------- running


def _load(model: nn.Module | str | os.PathLike[str], weights: Any = None) -> nn.Module:
    if isinstance(model, nn.Module):
        return model.eval()
    from pixmark.checkpoint import load_model

    return load_model(model, weights=weights)


def serve(
    model: nn.Module | str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    weights: str | os.PathLike[str] | None = None,
    log_level: str = "info",
    graceful_timeout: float = 30.0,
    **limits: Any,
) -> None:
    """Serve ``model`` (a module, a checkpoint, a TorchScript file or ``pkg.mod:factory``
    with ``weights``) on ``host:port`` until interrupted; ``limits`` go to
    :func:`create_app`. Binds to 127.0.0.1 by default: put a reverse proxy with TLS in
    front to expose it.
    """
    _require_fastapi()
    import uvicorn

    app = create_app(_load(model, weights), **limits)
    sock = _bind(host, port)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=graceful_timeout)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (port 0: a free one)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family = infos[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise PixmarkError(f"cannot serve on {host}:{port} ({exc})") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PixmarkError(
            f"cannot serve on {host}:{port} ({exc.strerror or exc}); choose another --port"
        ) from None
    return sock


@contextlib.contextmanager
def running(
    model_or_app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    startup_timeout: float = 60.0,
    **limits: Any,
) -> Iterator[str]:
    """Run a server in a background thread; yield its base URL (``http://host:port``).

    ``port=0`` picks a free port. ``model_or_app`` is a model (or model file) or an app
    from :func:`create_app`. The server shuts down gracefully when the block exits.
    """
    _require_fastapi()
    import uvicorn

    app = (
        create_app(_load(model_or_app), **limits)
        if isinstance(model_or_app, nn.Module | str | os.PathLike)
        else model_or_app
    )
    sock = _bind(host, port)
    actual = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise PixmarkError(f"the server on {host}:{actual} did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{actual}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
