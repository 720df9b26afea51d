"""HTTP Basic authentication for the local stack's MLflow server (on by default).

The S3 gateway of the stack refuses any request without its generated credentials; the
MLflow server, started plain, answers anyone who can reach 127.0.0.1, and its artifact
proxy writes into the gateway with the server's own credentials. So by default
(`tipsv2 stack up`; `--no-auth` opts out, for a single-user machine) the server gets the
same story as the gateway: a user name and a password generated on the first `up`, kept
in `stack/stack.env` (mode 600) as `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`
(the variables MLflow's client sends as Basic credentials, and which
`components.settings.configure()` loads with the rest of the file), and every request
without them is answered 401, uploads through the artifact proxy included. Only `/health`
stays open, for the stack's own health checks.

Why not MLflow's `--app-name basic-auth`: it needs Flask-WTF (not in this project's lock)
and a user database with per-experiment permissions, where one generated credential pair
is all a single-user stack needs. This is an ASGI wrapper around MLflow's own FastAPI app,
registered as the MLflow app `tipsv2-auth` (pyproject's `mlflow.app` entry point) so
that `mlflow server --app-name tipsv2-auth` runs it under MLflow's usual uvicorn. The
server reads its credentials from `TIPSV2_MLFLOW_USERNAME` / `TIPSV2_MLFLOW_PASSWORD` in
its environment (never from its command line, where `ps` would show them).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["APP_NAME", "OPEN_PATHS", "BasicAuth", "create_app"]

APP_NAME = "tipsv2-auth"  # the `mlflow.app` entry point's name
USER_ENV = "TIPSV2_MLFLOW_USERNAME"
PASSWORD_ENV = "TIPSV2_MLFLOW_PASSWORD"
OPEN_PATHS = frozenset({"/health"})  # the stack's health check; answers "OK" and nothing else

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BasicAuth:
    """An ASGI app that lets through only HTTP requests carrying `username:password` as
    Basic credentials (compared in constant time), and every request to OPEN_PATHS."""

    def __init__(self, app: ASGIApp, username: str, password: str) -> None:
        if not username or not password:
            raise ValueError("BasicAuth needs a user name and a password")
        self.app = app
        self._expected = f"{username}:{password}".encode()

    def allowed(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """True when the request's Authorization header holds the expected credentials."""
        for name, value in headers:
            if name.lower() != b"authorization":
                continue
            scheme, _, token = value.partition(b" ")
            if scheme.lower() != b"basic":
                return False
            try:
                given = base64.b64decode(token.strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(given, self._expected)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)  # lifespan events, the health check
            return
        if self.allowed(list(scope.get("headers") or [])):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = b"authentication required: MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD\n"
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"www-authenticate", b'Basic realm="tipsv2 mlflow"'),
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def create_app() -> BasicAuth:
    """MLflow's tracking server app behind BasicAuth (a uvicorn factory: `mlflow server
    --app-name tipsv2-auth`). Refuses to start without credentials rather than open."""
    username, password = os.environ.get(USER_ENV, ""), os.environ.get(PASSWORD_ENV, "")
    if not username or not password:
        raise RuntimeError(f"{USER_ENV} and {PASSWORD_ENV} must be set for {APP_NAME}")
    from mlflow.server.fastapi_app import app

    return BasicAuth(app, username, password)
