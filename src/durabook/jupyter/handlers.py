"""``/durabook/api/...`` in JupyterLab's server: the handlers of ``durabook serve``
(:func:`durabook.api.http.make_handlers`) behind Jupyter's own authentication.

Each handler class is built as ``(JupyterAuth, <the engine's handler>)``:
:class:`JupyterAuth` resolves the user the way every Jupyter API handler does
(token, cookie, XSRF, Host and Origin checks), asks Jupyter's authorizer for the
``durabook`` resource (``read`` for GET, ``execute`` otherwise), then hands over to
the engine's handler. When a ``durabook serve`` owns the home, the checked request
is forwarded to that engine's private HTTP socket instead, server-sent events
included: one implementation of the API either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from pathlib import Path
from typing import Any

from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.utils import ensure_async, url_path_join
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.netutil import Resolver
from tornado.simple_httpclient import SimpleAsyncHTTPClient
from tornado.web import HTTPError

from ..api.http import _Handler, make_handlers
from .host import EngineHost

__all__ = ["JupyterAuth", "handlers"]

AUTH_RESOURCE = "durabook"
MAX_FORWARDED_BYTES = 1 << 40  # output notebooks may be large; they are streamed
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}
_PASS = ("Content-Type", "Accept", "Last-Event-ID")


class _UnixResolver(Resolver):
    """Every host name resolves to one unix socket (tornado's client speaks TCP only)."""

    def initialize(self, path: str) -> None:
        self.path = path

    async def resolve(self, host: str, port: int, family: Any = 0) -> list[tuple[int, Any]]:
        return [(socket.AF_UNIX, self.path)]

    def close(self) -> None:
        pass


async def _authorize(handler: JupyterHandler) -> None:
    """Jupyter's authorizer (it may be async) on the ``durabook`` resource."""
    if handler.current_user is None:
        raise HTTPError(403, "not authenticated")
    action = "read" if handler.request.method in ("GET", "HEAD") else "execute"
    allowed = handler.authorizer.is_authorized(handler, handler.current_user, action, AUTH_RESOURCE)
    if not await ensure_async(allowed):
        raise HTTPError(403, f"not authorized to {action} {AUTH_RESOURCE}")


def _gone() -> HTTPError:
    return HTTPError(503, "the engine that owns this home does not answer; try again shortly")


class JupyterAuth(APIHandler):
    """Jupyter's auth in front of an engine handler; forwarding when a serve owns the home."""

    host: EngineHost  # set on the subclass made by :func:`handlers`
    prefix: str  # the API's base path here, e.g. /user/x/durabook/api

    async def prepare(self) -> None:  # type: ignore[override]
        await APIHandler.prepare(self)  # user, XSRF, Host and Origin, as Jupyter does
        if self._finished:
            return
        await _authorize(self)
        _Handler.prepare(self)  # type: ignore[arg-type]  # (a no-op if Jupyter's chain ran it)

    def set_default_headers(self) -> None:
        JupyterHandler.set_default_headers(self)
        _Handler.set_default_headers(self)  # type: ignore[arg-type]

    write_error = _Handler.write_error  # the engine's JSON errors, with their codes

    async def _serve(self, route: Any, path: dict[str, str]) -> None:
        loop, stream = asyncio.get_running_loop(), route.kind == "stream"
        target = await loop.run_in_executor(self.host.executor, self.host.forward_to)
        if target is not None and not await self._forward(target, stream):
            # that serve is gone (killed, say): ask again who owns the home
            self.host.forward_failed()
            target = await loop.run_in_executor(self.host.executor, self.host.forward_to)
            if target is not None and not await self._forward(target, stream):
                raise _gone()
        if target is None:
            await super()._serve(route, path)  # type: ignore[misc]

    async def _forward(self, target: Path, stream: bool) -> bool:
        """The request, answered by the serve at ``target``; False when it could not be
        reached (then nothing was sent back)."""
        req = self.request
        rest = req.path[len(self.prefix) :] if req.path.startswith(self.prefix) else req.path
        url = "http://durabook/api" + rest + (f"?{req.query}" if req.query else "")
        body = b"".join(getattr(self, "_chunks", []))
        headers = {h: req.headers[h] for h in _PASS if h in req.headers}
        client = SimpleAsyncHTTPClient(
            force_instance=True,
            resolver=_UnixResolver(path=str(target)),
            max_body_size=MAX_FORWARDED_BYTES,  # streamed through, never held whole
        )
        started = False

        def on_header(line: str) -> None:
            nonlocal started
            line = line.rstrip("\r\n")
            if line.startswith("HTTP/"):
                parts = line.split(" ", 2)
                with contextlib.suppress(ValueError, IndexError):
                    self.set_status(int(parts[1]))
            elif ":" in line:
                name, _, value = line.partition(":")
                if name.strip().lower() not in _HOP and name.strip().lower() != "server":
                    self.set_header(name.strip(), value.strip())

        def on_chunk(chunk: bytes) -> Any:
            nonlocal started
            started = True
            self.write(chunk)
            # tornado awaits it: a slow browser slows the engine's stream, a gone one
            # ends it (the flush raises, the fetch stops)
            return self.flush()

        request = HTTPRequest(
            url,
            method=req.method or "GET",
            headers=headers,
            body=body if req.method not in ("GET", "HEAD", "DELETE") else None,
            allow_nonstandard_methods=True,
            follow_redirects=False,
            connect_timeout=5.0,
            request_timeout=24 * 3600.0 if stream else 300.0,
            header_callback=on_header,
            streaming_callback=on_chunk,
        )
        try:
            response = await client.fetch(request, raise_error=False)
        except (OSError, HTTPClientError, StreamClosedError):
            response = None
        finally:
            client.close()
        if not started and (response is None or response.code == 599):
            self.clear()
            return False  # unreachable: nothing was sent
        if not self._finished:
            with contextlib.suppress(StreamClosedError):
                self.finish()
        return True


class InfoHandler(APIHandler):
    """``GET /durabook/jupyter``: who runs the engine, and the one command that makes
    runs outlive JupyterLab."""

    host: EngineHost

    async def prepare(self) -> None:  # type: ignore[override]
        await super().prepare()
        if not self._finished:
            await _authorize(self)

    async def get(self) -> None:
        loop = asyncio.get_running_loop()
        info = await loop.run_in_executor(self.host.executor, self.host.info)
        info["root_dir"] = str(Path(self.settings.get("server_root_dir", ".")).expanduser())
        self.finish(json.dumps(info))


def handlers(host: EngineHost, base_url: str) -> list[tuple[str, type, dict[str, Any]]]:
    """The URL specs to add to Jupyter's web app."""
    prefix = url_path_join(base_url, "durabook", "api")
    mixin = type("DurabookJupyterAuth", (JupyterAuth,), {"host": host, "prefix": prefix})
    specs = make_handlers(host.service, prefix, auth=None, mixin=mixin)
    info = type("DurabookInfoHandler", (InfoHandler,), {"host": host})
    return [(url_path_join(base_url, "durabook", "jupyter"), info, {}), *specs]
