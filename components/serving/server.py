"""Starting the server: what to serve (a registry alias to follow, a registry version, an
ONNX export or a native checkpoint), its options, and uvicorn on 127.0.0.1.

`tipsv2 serve` and `python -m components.serving` (what `tipsv2 stack up --serve` and the
container start) share `add_arguments` / `run`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from components.serving.app import Batching, InferenceServer, ServeSettings, create_app
from components.serving.follow import AliasFollower
from components.serving.metrics import ServeMetrics
from components.serving.options import add_arguments
from components.serving.slot import ModelSlot
from tipsv2_core.serving.servable import Servable, load_servable, warm_up
from tipsv2_core.serving.tasks import Limits

log = logging.getLogger("tipsv2.serve")


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    limits = Limits(
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_pixels=args.max_pixels,
        max_items=args.max_items,
        max_classes=args.max_classes,
        timeout_s=args.timeout,
    )
    batching = Batching(args.max_batch, args.max_wait_ms, args.max_queue)
    return ServeSettings(args.model, image_size=args.image_size, limits=limits, batching=batching)


def _loader(args: argparse.Namespace, name: str) -> Callable[[str], Servable]:
    """version -> the registered export, downloaded, loaded and warmed up."""
    from components.registry import resolve_model_uri

    def load(version: str) -> Servable:
        uri = f"models:/{name}/{version}"
        path = resolve_model_uri(uri, tracking_uri=args.tracking_uri)
        servable = load_servable(
            path, version=version, source=uri, int8_tolerance=args.int8_tolerance,
            tokenizer=args.tokenizer, threads=args.threads,
        )  # fmt: skip
        warm_up(servable, args.image_size)
        return servable

    return load


def build(args: argparse.Namespace):
    """(app, follower or None): the app loads its model in the background once started."""
    from components.registry import is_model_uri, parse_model_uri

    settings = settings_from_args(args)
    slot, metrics = ModelSlot(), ServeMetrics()
    server = InferenceServer(settings, slot, metrics)
    follower: AliasFollower | None = None

    def on_swap(version: str, ok: bool, message: str) -> None:
        metrics.swaps.labels("ok" if ok else "refused").inc()
        if ok and slot.current is not None:
            metrics.served(settings.name, version, slot.current.precision)

    if is_model_uri(args.model):
        from components.settings import configure

        configure()  # the local stack's S3 endpoint and credentials, where one runs
        ref = parse_model_uri(args.model)
        if ref.name is None:
            raise ValueError(f"{args.model}: serve models:/NAME@ALIAS or models:/NAME/VERSION")
        settings.name = ref.name
        load = _loader(args, ref.name)
        if ref.alias is not None:
            follower = AliasFollower(
                slot, ref.name, ref.alias, load,
                tracking_uri=args.tracking_uri, poll_s=args.poll, on_swap=on_swap,
            )  # fmt: skip

            def initial() -> None:
                try:
                    if follower.check_once() is None:
                        log.error('{"event": "no_version", "model": "%s"}', args.model)
                except Exception as e:  # the loop below keeps trying
                    log.error('{"event": "registry_unreachable", "reason": %r}', str(e)[:300])
                follower.start()
        else:

            def initial() -> None:
                _load_once(slot, lambda: load(str(ref.version)), on_swap, str(ref.version))
    else:
        path = Path(args.model)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such export or checkpoint directory")

        def load_path() -> Servable:
            s = load_servable(
                path, int8_tolerance=args.int8_tolerance, tokenizer=args.tokenizer,
                threads=args.threads,
            )  # fmt: skip
            warm_up(s, args.image_size)
            return s

        def initial() -> None:
            _load_once(slot, load_path, on_swap, "local")

    def on_startup() -> None:
        threading.Thread(target=initial, name="initial-load", daemon=True).start()

    def on_shutdown() -> None:
        if follower is not None:
            follower.stop()

    from components.serving.web import SearchIndex, WebRoutes

    search = SearchIndex.open(args.index) if args.index else None
    if search is not None:
        server.index_info = search.describe()
    web = WebRoutes(server, search)
    return create_app(server, on_startup, on_shutdown, web.routes()), follower


def _load_once(slot: ModelSlot, load: Callable[[], Servable], on_swap, version: str) -> None:
    try:
        servable = load()
    except Exception as e:
        slot.refuse(version, f"cannot serve {version}: {e}")
        log.error('{"event": "load_failed", "reason": %r}', str(e)[:500])
        on_swap(version, False, str(e))
        return
    slot.swap(servable)
    on_swap(servable.version, True, "loaded")


def run(args: argparse.Namespace) -> int:
    """Serves until SIGINT / SIGTERM (uvicorn drains the requests in flight)."""
    import uvicorn

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a poll, not a job
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    app, _ = build(args)
    print(f"serving {args.model} on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,  # one structured line per request comes from the app instead
        timeout_keep_alive=5,
        limit_concurrency=1024,  # connections; beyond this uvicorn answers 503 itself
        timeout_graceful_shutdown=30,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m components.serving", description="Serve a TIPSv2 model (KServe v2)."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as e:  # EmbeddingsError of --index too
        print(f"serve: error: {e}", file=sys.stderr)
        return 2
