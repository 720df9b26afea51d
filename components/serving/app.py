"""The HTTP server: the Open Inference Protocol (KServe v2) REST routes, a JSON route per
task, `/metrics`, and a status route — a Starlette app, run by uvicorn (`server.py`).

    GET  /v2                                         server metadata
    GET  /v2/health/live | /v2/health/ready          200 when true, 400 when false
    GET  /v2/models/{m}[/versions/{v}]               model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready
    POST /v2/models/{m}[/versions/{v}]/infer         typed tensors in and out
    POST /api/embed/image | /api/embed/text | /api/segment   plain JSON
    GET  /api/status                                 served version, last swap, settings
    GET  /metrics                                    Prometheus
    GET  / , POST /api/search, GET /api/images/{key} the web page and its search (web.py)

Models `m`: image-embedding, text-embedding, segmentation (tipsv2_core.serving.tasks).
Errors are the protocol's `{"error": "..."}` with a 4xx naming the problem (5xx only for
the server's own state: 503 not ready / queue full with Retry-After, 504 timeout).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib.metadata import version as package_version
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from components.serving.metrics import CONTENT_TYPE, ServeMetrics
from components.serving.slot import ModelSlot
from tipsv2_core.errors import CheckpointError
from tipsv2_core.serving.batching import Batcher, QueueFull
from tipsv2_core.serving.protocol import InferRequest, ProtocolError, decode_request
from tipsv2_core.serving.servable import Servable
from tipsv2_core.serving.tasks import TASKS, Limits

log = logging.getLogger("tipsv2.serve")
SERVER_NAME = "tipsv2"
PLATFORM = {"fp32": "onnxruntime_onnx", "int8": "onnxruntime_onnx", "torch": "pytorch"}


@dataclass(frozen=True)
class Batching:
    """Dynamic batching per model: rows per call, how long the first request waits for
    company, and how many rows may queue before requests are refused (503)."""

    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 256


@dataclass
class ServeSettings:
    """What the server was started with (shown by /api/status, secrets never included)."""

    model: str
    name: str = SERVER_NAME
    image_size: int = 448
    limits: Limits = field(default_factory=Limits)
    batching: Batching = field(default_factory=Batching)


def error(message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def read_body(request: Request, limits: Limits) -> bytes:
    """The request body, refused with 413 beyond `max_body_bytes` (announced or sent)
    and with 408 when it takes longer than `read_timeout_s` to arrive."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limits.max_body_bytes):
        raise ProtocolError(
            f"body of {declared} bytes is over the limit of {limits.max_body_bytes}", 413
        )
    chunks: list[bytes] = []
    size = 0

    async def collect() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise ProtocolError(f"body is over the limit of {limits.max_body_bytes} bytes", 413)
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), limits.read_timeout_s)
    except TimeoutError:
        raise ProtocolError(f"body not received within {limits.read_timeout_s} s", 408) from None
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    if not body:
        raise ProtocolError("empty body; send a JSON object")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"body is not JSON ({e})"[:200]) from None
    except RecursionError:
        raise ProtocolError("body is nested too deeply") from None


class InferenceServer:
    """The app's state: the model slot, one batcher per task, metrics, settings."""

    def __init__(self, settings: ServeSettings, slot: ModelSlot, metrics: ServeMetrics) -> None:
        self.settings = settings
        self.slot = slot
        self.metrics = metrics
        self.tasks = {t.name: t for t in TASKS}
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
        self.batchers: dict[str, Batcher] = {}
        self.started = time.time()
        self.index_info: dict[str, Any] | None = None  # the --index searched, if any

    # -- lifecycle -------------------------------------------------------------------
    def start_batchers(self) -> None:
        b = self.settings.batching
        for name, task in self.tasks.items():
            batcher = Batcher(
                name,
                self._batch_fn(task),
                executor=self.executor,
                # Segmentation requests each bring their own classes: one per call.
                max_batch=1 if name == "segmentation" else b.max_batch,
                max_wait_s=b.max_wait_ms / 1000.0,
                max_queue=b.max_queue,
                on_batch=self.metrics.batch(name),
            )
            batcher.start()
            self.metrics.queue_depth(name, lambda bt=batcher: bt.depth)
            self.batchers[name] = batcher

    async def stop_batchers(self) -> None:
        for batcher in self.batchers.values():
            await batcher.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _batch_fn(self, task: Any) -> Callable[[list[Any]], list[tuple[str, Any]]]:
        def run(batch: list[Any]) -> list[tuple[str, Any]]:
            with self.slot.lease() as servable:
                results = task.run(servable, batch)
            return [(servable.version, r) for r in results]

        return run

    # -- helpers ---------------------------------------------------------------------
    def _servable(self, model: str, version: str | None) -> tuple[Any, Servable]:
        task = self.tasks.get(model)
        if task is None:
            raise ProtocolError(f"unknown model {model!r}; served: {sorted(self.tasks)}", 404)
        servable = self.slot.current
        if servable is None:
            raise ProtocolError(
                "no model is loaded yet; see /api/status", 503, {"Retry-After": "5"}
            )
        if version is not None and version != servable.version:
            raise ProtocolError(
                f"model {model!r} version {version!r} is not served (serving {servable.version!r})",
                404,
            )
        if model != "image-embedding" and not servable.has_text:
            raise ProtocolError(
                f"model {model!r} is not available: {servable.source} has no text encoder "
                "or tokenizer",
                503,
            )
        return task, servable

    def model_ready(self, model: str) -> bool:
        s = self.slot.current
        return s is not None and (model == "image-embedding" or s.has_text)

    async def _infer(self, model: str, req: InferRequest, servable: Servable) -> tuple[str, Any]:
        task = self.tasks[model]
        s = self.settings
        prepared = await asyncio.to_thread(task.prepare, req, servable, s.limits, s.image_size)
        try:
            return await self.batchers[model].submit(
                prepared, prepared.rows, prepared.key, s.limits.timeout_s
            )
        except QueueFull as e:
            raise ProtocolError(str(e), 503, {"Retry-After": str(round(e.retry_after))}) from None
        except TimeoutError:
            raise ProtocolError(
                f"model {model!r}: no answer within {s.limits.timeout_s} s (server busy)", 504
            ) from None
        except CheckpointError as e:
            raise ProtocolError(str(e), 503) from None

    async def _handle(
        self,
        request: Request,
        model: str,
        route: str,
        handler: Callable[[], Awaitable[tuple[dict[str, Any], str | None]]],
    ) -> Response:
        """Runs `handler`, turning errors into protocol errors; metrics and one log line."""
        t0 = time.perf_counter()
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        served_version = None
        headers = {"x-request-id": rid}
        try:
            body, served_version = await handler()
            response: Response = JSONResponse(body, headers=headers)
        except ProtocolError as e:
            response = error(str(e), e.status, headers | e.headers)
        except Exception as e:  # a bug or a model failure: answer 500, keep serving
            log.exception("unexpected error")
            response = error(f"internal error: {type(e).__name__}: {e}"[:300], 500, headers)
        dt = time.perf_counter() - t0
        self.metrics.observe(model, route, response.status_code, dt)
        log.info(
            json.dumps(
                {
                    "event": "request",
                    "request_id": rid,
                    "method": request.method,
                    "route": route,
                    "model": model,
                    "version": served_version,
                    "status": response.status_code,
                    "ms": round(dt * 1000, 2),
                    "error": json.loads(response.body)["error"][:200]
                    if response.status_code >= 400
                    else None,
                }
            )
        )
        return response

    # -- routes ----------------------------------------------------------------------
    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse(
            {"name": SERVER_NAME, "version": package_version("tipsv2-platform"), "extensions": []}
        )

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        ok = self.slot.current is not None
        return JSONResponse({"ready": ok}, status_code=200 if ok else 400)

    async def model_metadata(self, request: Request) -> Response:
        model, version = request.path_params["model"], request.path_params.get("version")

        async def handler() -> tuple[dict[str, Any], str | None]:
            task, s = self._servable(model, version)
            return {
                "name": model,
                "versions": [s.version],
                "platform": PLATFORM.get(s.precision, s.precision),
                "inputs": [t.as_json() for t in task.inputs(s)],
                "outputs": [t.as_json() for t in task.outputs(s)],
                "parameters": {"source": s.source, "precision": s.precision},
            }, s.version

        return await self._handle(request, model, "metadata", handler)

    async def model_ready_route(self, request: Request) -> Response:
        model, version = request.path_params["model"], request.path_params.get("version")
        if model not in self.tasks:
            return error(f"unknown model {model!r}; served: {sorted(self.tasks)}", 404)
        current = self.slot.current
        ok = self.model_ready(model) and (version is None or current.version == version)
        return JSONResponse({"name": model, "ready": ok}, status_code=200 if ok else 400)

    async def infer(self, request: Request) -> Response:
        model, version = request.path_params["model"], request.path_params.get("version")

        async def handler() -> tuple[dict[str, Any], str | None]:
            _, servable = self._servable(model, version)
            req = decode_request(parse_json(await read_body(request, self.settings.limits)))
            served, result = await self._infer(model, req, servable)
            body = {
                "model_name": model,
                "model_version": served,
                "outputs": self.tasks[model].respond(result),
            }
            if req.id is not None:
                body["id"] = req.id
            return body, served

        return await self._handle(request, model, "infer", handler)

    def json_route(self, model: str) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            async def handler() -> tuple[dict[str, Any], str | None]:
                _, servable = self._servable(model, None)
                doc = parse_json(await read_body(request, self.settings.limits))
                req = self.tasks[model].from_json(doc)
                served, result = await self._infer(model, req, servable)
                out = {k: v.tolist() for k, v in result.items()}
                return {"model_version": served, **out}, served

            return await self._handle(request, model, "json", handler)

        return route

    async def status(self, request: Request) -> Response:
        s = self.slot.current
        swap = self.slot.last_swap
        return JSONResponse(
            {
                "model": self.settings.model,
                "ready": s is not None,
                "version": s.version if s else None,
                "precision": s.precision if s else None,
                "source": s.source if s else None,
                "last_swap": asdict(swap) if swap else None,
                "queue_depth": {k: b.depth for k, b in self.batchers.items()},
                "image_size": self.settings.image_size,
                "limits": asdict(self.settings.limits),
                "batching": asdict(self.settings.batching),
                "uptime_s": round(time.time() - self.started, 1),
                "index": self.index_info,
            }
        )

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.export(), media_type=CONTENT_TYPE)

    def routes(self) -> list[Route]:
        m = "/v2/models/{model}"
        mv = "/v2/models/{model}/versions/{version}"
        return [
            Route("/v2", self.server_metadata, methods=["GET"]),
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            Route(m, self.model_metadata, methods=["GET"]),
            Route(mv, self.model_metadata, methods=["GET"]),
            Route(f"{m}/ready", self.model_ready_route, methods=["GET"]),
            Route(f"{mv}/ready", self.model_ready_route, methods=["GET"]),
            Route(f"{m}/infer", self.infer, methods=["POST"]),
            Route(f"{mv}/infer", self.infer, methods=["POST"]),
            Route("/api/embed/image", self.json_route("image-embedding"), methods=["POST"]),
            Route("/api/embed/text", self.json_route("text-embedding"), methods=["POST"]),
            Route("/api/segment", self.json_route("segmentation"), methods=["POST"]),
            Route("/api/status", self.status, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
        ]


def create_app(
    server: InferenceServer,
    on_startup: Callable[[], None] | None = None,
    on_shutdown: Callable[[], None] | None = None,
    extra_routes: list[Route] | None = None,
) -> Starlette:
    """The Starlette app; batchers start with the event loop, then `on_startup` runs.
    `extra_routes`: the web page's (web.py)."""
    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        server.start_batchers()
        if on_startup is not None:
            on_startup()
        try:
            yield
        finally:
            if on_shutdown is not None:
                on_shutdown()
            await server.stop_batchers()

    async def not_found(request: Request, exc: Exception) -> Response:
        code = getattr(exc, "status_code", 404)
        if code == 405:
            return error(f"{request.method} is not allowed on {request.url.path}", 405)
        return error(f"no route {request.url.path}", 404)

    return Starlette(
        routes=server.routes() + list(extra_routes or []),
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: not_found},
    )
