"""The server's web page and the two routes only it needs:

    GET  /                     the page (static HTML, CSS and JS inline: nothing is fetched
                               from outside, it works on an air-gapped cluster)
    POST /api/search           {"text": str, "k"?: int} -> nearest indexed images
    GET  /api/images/{key}     a small PNG of an indexed image

Search needs `--index DIR` (an embeddings directory of `tipsv2 embed dataset`); the
query is embedded by the served model through the text-embedding batcher, like any other
request, and looked up in the faiss index off the event loop. Images are read only for
keys the index holds, from the shards its manifest names (never from a path a client
sends). Segmentation on the page goes through the existing `/api/segment` route; its
overlay uses the reports' palette (`tipsv2_core.eval.predictions.palette`), embedded in
the page, with the same blend as `eval.visualize.overlay`.
"""

from __future__ import annotations

import asyncio
import json
from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from tipsv2_core.eval.predictions import palette
from tipsv2_core.serving.protocol import BYTES, InferRequest, ProtocolError, Tensor

if TYPE_CHECKING:
    from components.serving.app import InferenceServer
    from tipsv2_core.search.images import ShardImages
    from tipsv2_core.search.index import VectorIndex

MAX_K = 50
PAGE = "page.html"


class SearchIndex:
    """The `--index` the server answers searches from: the vectors and the images."""

    def __init__(self, index: VectorIndex, images: ShardImages) -> None:
        self.index = index
        self.images = images

    @classmethod
    def open(cls, path: str) -> SearchIndex:
        """`path`: an embeddings directory or an s3:// prefix (read from its mirror)."""
        from components.embed_dataset import fetch_embeddings
        from tipsv2_core.search.images import ShardImages
        from tipsv2_core.search.index import VectorIndex

        index = VectorIndex(fetch_embeddings(path), "cls1")
        return cls(index, ShardImages(index.manifest.settings.dataset))

    def describe(self) -> dict[str, Any]:
        s = self.index.manifest.settings
        return {"images": len(self.index), "model": s.model, "cls": self.index.cls,
                "kind": self.index.kind, "dim": self.index.dim}  # fmt: skip


def render_page(max_classes: int) -> str:
    """The page, with the palette of up to `max_classes` classes filled in."""
    colours = palette(max(1, max_classes)).tolist()
    html = resources.files("components.serving").joinpath(PAGE).read_text()
    return html.replace("__PALETTE__", json.dumps(colours)).replace(
        "__MAX_CLASSES__", str(max_classes)
    )


def _image_url(key: str) -> str:
    return f"/api/images/{key}"  # keys are [A-Za-z0-9_-] (the shard format): no escaping


class WebRoutes:
    def __init__(self, server: InferenceServer, search: SearchIndex | None) -> None:
        self.server = server
        self.search_index = search
        self.page = render_page(server.settings.limits.max_classes)

    async def home(self, request: Request) -> Response:
        return HTMLResponse(self.page, headers={"Cache-Control": "no-store"})

    def _need_index(self) -> SearchIndex:
        if self.search_index is None:
            raise ProtocolError(
                "no image index: start the server with --index DIR "
                "(an embeddings directory of `tipsv2 embed dataset`)",
                404,
            )
        return self.search_index

    async def search(self, request: Request) -> Response:
        from components.serving.app import parse_json, read_body

        server = self.server

        async def handler() -> tuple[dict[str, Any], str | None]:
            index = self._need_index()
            limits = server.settings.limits
            doc = parse_json(await read_body(request, limits))
            if not isinstance(doc, dict) or set(doc) - {"text", "k"}:
                raise ProtocolError('send {"text": "…", "k": 12} (k optional)')
            text, k = doc.get("text"), doc.get("k", 12)
            if not isinstance(text, str) or not text.strip():
                raise ProtocolError("'text' must be a non-empty string")
            if len(text) > limits.max_text_chars:
                raise ProtocolError(
                    f"'text': {len(text)} characters, over the limit of {limits.max_text_chars}",
                    413,
                )
            if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
                raise ProtocolError(f"'k' must be an integer from 1 to {MAX_K}, got {k!r}"[:200])
            _, servable = server._servable("text-embedding", None)
            embedded_by = index.index.manifest.settings
            if servable.fingerprint != embedded_by.fingerprint:
                # After a live swap the new champion embeds queries in a space of its
                # own: matched against the old model's image vectors they would return
                # answers that look right and are not.
                raise ProtocolError(
                    f"the served model (version {servable.version}) is not the model that "
                    f"embedded the index ({embedded_by.model}): its weights differ from the "
                    "index's fingerprint; embed the dataset again with `tipsv2 embed "
                    "dataset --model …` and restart the server with the new --index",
                    409,
                )
            req = InferRequest(None, {"text": Tensor("text", BYTES, (1,), [text], {})}, None, {})
            served, result = await server._infer("text-embedding", req, servable)
            hits = await asyncio.to_thread(index.index.search, result["embedding"], k)
            results = [
                {"key": h.key, "score": h.score, "caption": h.caption, "image": _image_url(h.key)}
                for h in hits[0]
            ]
            return {"model_version": served, "index": index.describe(), "results": results}, served

        return await server._handle(request, "search", "json", handler)

    async def image(self, request: Request) -> Response:
        from components.serving.app import error

        key = request.path_params["key"]
        try:
            index = self._need_index()
        except ProtocolError as e:
            return error(str(e), e.status)
        row = index.index.rows.get(key)
        if row is None:
            return error(f"no indexed image {key[:100]!r}", 404)
        try:
            png = await asyncio.to_thread(index.images.thumbnail, index.index.shards[row], key)
        except (KeyError, OSError) as e:
            return error(f"image {key!r} cannot be read from its shard ({e})"[:300], 404)
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    def routes(self) -> list[Route]:
        return [
            Route("/", self.home, methods=["GET"]),
            Route("/api/search", self.search, methods=["POST"]),
            Route("/api/images/{key}", self.image, methods=["GET"]),
        ]
