"""The engine's verbs as JSON over HTTP (``durabook serve --port P``), on tornado.

Routes live under ``/api`` (:data:`.openapi.ROUTES`; ``GET /api/openapi.json``
describes them): instances (create, list, status, output notebook, events, lifecycle,
a server-sent event stream of a run), schedules, and ``GET /api/health`` (no auth).

:func:`make_handlers` returns tornado URL specs over a ``get_service`` callable, so a
Jupyter server extension mounts the very same handlers with ``auth=None`` and its own
auth. :func:`start_http` serves them on a thread of its own behind :class:`Auth`: a
token (``Authorization: token T``, ``Bearer T`` or ``?token=T``), or none on loopback.

Errors are ``{"error": {"code", "message", ...fields}}`` with the status of
:data:`.openapi.ERROR_CODES`: input errors are 400 (invalid notebooks and parameters
included), never 5xx. Limits: bodies of at most ``$DURABOOK_MAX_BODY_BYTES`` (16 MiB,
413 beyond); blocking verbs run in a small pool of threads of our own (503 when too
many wait); streams poll the hub, at most :data:`MAX_STREAMS` at once; idle, slow and
stalled connections time out. So no client holds the engine or the other clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPServerRequest
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets
from tornado.web import Application, HTTPError, RequestHandler, stream_request_body

from ..errors import BadInput, DurabookError
from .openapi import ERROR_CODES, ROUTES, Route, encode, invoke, settled_status

if TYPE_CHECKING:
    from ..models import Status
    from ..progress import Subscription
    from .service import Service

__all__ = [
    "Auth",
    "HttpServer",
    "make_handlers",
    "max_body_bytes",
    "start_http",
    "start_http_unix",
]

log = logging.getLogger("durabook.http")

MAX_BODY_ENV = "DURABOOK_MAX_BODY_BYTES"
MAX_BODY_BYTES = 16 * 1024 * 1024
DRAIN_FACTOR = 4  # a body up to 4x the limit is read and dropped: its sender gets the 413
WORKERS = 8  # threads for blocking verbs (they queue on DuckDB's one writer anyway)
MAX_PENDING = 512  # verbs waiting for a thread before new ones get 503
MAX_STREAMS = 256
KEEPALIVE = 15.0  # seconds between a quiet stream's keep-alive comments
POLL = 0.1  # seconds: a stream polls its subscription (Subscription.get blocks a thread)
RECHECK = 1.0  # seconds: a stream re-reads the status at least this often
WRITE_TIMEOUT = 60.0  # a stream whose client reads nothing this long is dropped
IDLE_TIMEOUT = 60.0  # keep-alive connections, and slow headers
BODY_TIMEOUT = 120.0
_TOKEN = re.compile(r"[\x21-\x7e]{1,1024}")


def max_body_bytes() -> int:
    """The largest request body: ``$DURABOOK_MAX_BODY_BYTES``, or 16 MiB."""
    raw = os.environ.get(MAX_BODY_ENV, "").strip()
    if not raw:
        return MAX_BODY_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise BadInput(f"{MAX_BODY_ENV} must be a positive number of bytes, got {raw!r}")
    return value


class _Refused(Exception):
    """An answer before any verb ran (401, 403, 404, 405, 413, 503)."""

    def __init__(self, status: int, code: str, message: str, **headers: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _too_large(limit: int) -> _Refused:
    return _Refused(413, "too_large", f"the body is over {limit} bytes ({MAX_BODY_ENV})")


_HTTP_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    503: "engine_busy",
}


def _error(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(HTTP status, the error object) of anything a handler raised."""
    if isinstance(exc, _Refused):
        return exc.status, {"code": exc.code, "message": exc.message}
    if isinstance(exc, DurabookError):
        return ERROR_CODES.get(exc.code.value, 500), exc.to_dict()
    if isinstance(exc, HTTPError):  # tornado's own (a path that is not UTF-8, ...)
        status = exc.status_code
        code = _HTTP_CODES.get(status, "bad_input" if status < 500 else "internal")
        return status, {"code": code, "message": exc.log_message or exc.reason or str(status)}
    return 500, {"code": "internal", "message": "internal error (the engine logged it)"}


# -- auth --------------------------------------------------------------------------------


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _is_loopback(host: str) -> bool:
    name = host.strip("[]").lower().rstrip(".")
    if name in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(name.partition("%")[0]).is_loopback
    except ValueError:
        return False


def _binds_loopback(host: str) -> bool:
    """Whether every address ``host`` names is loopback (``""`` is every interface)."""
    if not host:
        return False
    if _is_loopback(host):
        return True
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(_is_loopback(str(info[4][0])) for info in infos)


@dataclass(frozen=True)
class Auth:
    """``durabook serve``'s access rule: the token, or (``token`` None) loopback only.

    Either way a request with a foreign ``Origin`` is refused (we answer no CORS: a web
    page must not drive the engine), and without a token a ``Host`` that is not
    loopback is refused (DNS rebinding)."""

    token: str | None = None

    def check(self, request: HTTPServerRequest) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc.lower() != request.host.lower():
            raise _Refused(403, "forbidden", "cross-origin requests are refused")
        if self.token is None:
            if not _is_loopback(_hostname(request.host)):
                raise _Refused(403, "forbidden", "without a token only loopback is served")
            return
        given = _given_token(request)
        if given is None or not hmac.compare_digest(given, self.token.encode()):
            why = "a wrong token" if given is not None else "no token"
            raise _Refused(
                401,
                "unauthorized",
                f"{why}: send `Authorization: token T` (or `Bearer T`, or ?token=T) with "
                "the token `durabook serve` printed",
                WWW_Authenticate='Bearer realm="durabook"',
            )


def _given_token(request: HTTPServerRequest) -> bytes | None:
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip().encode("utf-8", "surrogateescape")
    values = request.query_arguments.get("token")
    return values[-1] if values else None


# -- handlers ----------------------------------------------------------------------------


class _Api:
    """What the handlers of one mount share. The counters are only touched on the
    IOLoop's thread."""

    def __init__(self, get_service: Callable[[], Service], base: str, auth: Auth | None) -> None:
        self.get_service = get_service
        self.base = base.rstrip("/")
        self.auth = auth
        self.max_body = max_body_bytes()
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="durabook-http")
        self.pending = 0
        self.streams = 0
        self.closing = False

    def invoke(self, route: Route, path: dict[str, str], raw: bytes, args: Any) -> Any:
        return invoke(route, self.get_service, self.base, path, raw, args)

    async def run(self, fn: Callable[[], Any]) -> Any:
        """``fn`` in the pool: never on the IOLoop, which serves every other client."""
        if self.closing or self.pending >= MAX_PENDING:
            raise _Refused(503, "engine_busy", "too many requests under way; try again shortly")
        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn)
        finally:
            self.pending -= 1

    def close(self) -> None:
        self.closing = True
        self.pool.shutdown(wait=False, cancel_futures=True)


@stream_request_body  # sizes are checked before the body is read, and it is never kept whole
class _Handler(RequestHandler):
    routes: dict[str, Route] | None = None  # by method; None: no route here (404)

    def initialize(self, api: _Api) -> None:
        self.api = api
        self._chunks: list[bytes] = []
        self._size = 0
        self._refusal: _Refused | None = None
        self._prepared = False

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def compute_etag(self) -> str | None:
        return None  # no hashing of every (possibly large) notebook we answer

    def prepare(self) -> None:
        """Refusals are decided now but answered once the body was read and dropped (an
        answer sent while the client still sends may be lost to the connection's reset),
        unless the body is too big to drain or the client waits for 100-continue.

        Once per request (a Jupyter mixin's own ``prepare`` chain reaches it too)."""
        if self._prepared:
            return
        self._prepared = True
        routes, method, auth = self.routes, self.request.method or "", self.api.auth
        try:
            if auth is not None and (not routes or any(r.auth for r in routes.values())):
                auth.check(self.request)
            if routes is None:
                raise _Refused(404, "not_found", f"no route {self.request.path[:200]}")
            if method not in routes:
                allowed = ", ".join(routes)
                why = f"{method} is not one of {allowed}"
                raise _Refused(405, "method_not_allowed", why, Allow=allowed)
            if (self._length() or 0) > self.api.max_body:
                raise _too_large(self.api.max_body)
        except _Refused as refusal:
            self._refusal = refusal
            if not self._can_drain():
                raise
        else:
            self._can_drain()  # chunked: counted in data_received, 413 past the limit

    def _length(self) -> int | None:
        try:
            return int(self.request.headers.get("Content-Length", ""))
        except ValueError:
            return None  # chunked, or malformed (tornado refuses it)

    def _can_drain(self) -> bool:
        if self.request.headers.get("Expect", "").lower() == "100-continue":
            return False  # it sends nothing before our answer
        length, cap = self._length(), self.api.max_body * DRAIN_FACTOR
        if length is not None and length > cap:
            return False  # answered at once, the connection closed
        if length is None or length > self.api.max_body:  # tornado refuses over max_body
            with contextlib.suppress(AttributeError):
                self.request.connection.set_max_body_size(cap)  # type: ignore[union-attr]
        return True

    def data_received(self, chunk: bytes) -> None:
        if self._refusal is not None:
            return  # read and dropped
        self._size += len(chunk)
        if self._size > self.api.max_body:
            self._refusal, self._chunks = _too_large(self.api.max_body), []
            return
        self._chunks.append(chunk)

    async def get(self, **path: str) -> None:
        if self._refusal is not None:
            raise self._refusal
        assert self.routes is not None
        await self._serve(self.routes[self.request.method or ""], path)

    post = delete = put = patch = options = head = get

    async def _serve(self, route: Route, path: dict[str, str]) -> None:
        raw, args, api = b"".join(self._chunks), self.request.query_arguments, self.api
        if route.kind == "inline":
            status, data = encode(route, api.invoke(route, path, raw, args))
        else:
            status, data = await api.run(lambda: encode(route, api.invoke(route, path, raw, args)))
        self.set_status(status)
        self.finish(data)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        status, error = _error(exc) if exc is not None else (status_code, {"code": "internal"})
        error.setdefault("message", self._reason)
        self.set_status(status)
        for name, value in getattr(exc, "headers", {}).items():
            self.set_header(name.replace("_", "-"), value)
        self.finish(json.dumps({"error": error}, default=str))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, (_Refused, HTTPError, DurabookError)):
            return  # answered with its status; the access log has it
        log.error("%s %s failed", self.request.method, self.request.path, exc_info=(typ, value, tb))


class _StreamHandler(_Handler):
    """``GET /instances/{id}/stream``: server-sent events until the instance settles."""

    _gone = False

    def on_connection_close(self) -> None:
        self._gone = True

    async def _serve(self, route: Route, path: dict[str, str]) -> None:
        api = self.api
        if api.streams >= MAX_STREAMS:
            raise _Refused(503, "engine_busy", f"{MAX_STREAMS} streams are open; try later")
        raw, args = b"".join(self._chunks), self.request.query_arguments
        api.streams += 1
        try:
            sub, status, settled = await api.run(lambda: api.invoke(route, path, raw, args))
            try:
                await self._follow(path["id"], sub, status, settled)
            finally:
                sub.close()
        finally:
            api.streams -= 1

    async def _follow(self, iid: str, sub: Subscription, status: Status, settled: bool) -> None:
        api = self.api
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("X-Accel-Buffering", "no")  # proxies: pass each event on at once
        if not await self._event({"event": "status", "id": iid, "status": status.value}):
            return
        wrote = time.monotonic()
        check = wrote + RECHECK
        while not settled:
            if api.closing or self._gone:
                return
            got = False
            while (event := sub.get(0)) is not None:  # timeout 0: never blocks the loop
                got = True
                if not await self._event(event):
                    return
                wrote = time.monotonic()
                if event.get("event") in ("status", "done"):
                    check = 0.0
            now = time.monotonic()
            if now >= check:
                status, settled = await api.run(lambda: settled_status(api.get_service(), iid))
                check = time.monotonic() + RECHECK
                continue
            if now - wrote >= KEEPALIVE:
                if not await self._send(": keep-alive\n\n"):
                    return
                wrote = now
            if not got:
                await asyncio.sleep(POLL)
        while (event := sub.get(0)) is not None:  # what came before it settled
            if not await self._event(event):
                return
        await self._event({"event": "end", "id": iid, "status": status.value})

    async def _event(self, event: dict[str, Any]) -> bool:
        kind = str(event.get("event", "message")).replace("\n", " ")
        return await self._send(f"event: {kind}\ndata: {json.dumps(event, default=str)}\n\n")

    async def _send(self, text: str) -> bool:
        if self._gone:
            return False
        self.write(text)
        try:
            await asyncio.wait_for(self.flush(), WRITE_TIMEOUT)
        except (StreamClosedError, asyncio.TimeoutError):
            self._gone = True  # stalled or gone: dropped, the run goes on
            with contextlib.suppress(Exception):
                self.request.connection.close()  # type: ignore[union-attr]
            return False
        return True


def _specs(api: _Api, mixin: type | None = None) -> list[tuple[str, type, dict[str, Any]]]:
    def bases(cls: type) -> tuple[type, ...]:
        return (mixin, cls) if mixin is not None else (cls,)

    by_path: dict[str, dict[str, Route]] = {}
    for r in ROUTES:
        by_path.setdefault(r.path, {})[r.method] = r
    specs: list[tuple[str, type, dict[str, Any]]] = []
    for path, routes in by_path.items():
        base_cls = _StreamHandler if any(r.kind == "stream" for r in routes.values()) else _Handler
        name = "Durabook" + "".join(p.title() for p in re.findall(r"\w+", path)) + "Handler"
        pattern = re.escape(api.base) + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path)
        specs.append((pattern, type(name, bases(base_cls), {"routes": routes}), {"api": api}))
    fallback = type("DurabookNotFoundHandler", bases(_Handler), {}) if mixin else _Handler
    specs.append((re.escape(api.base) + r"(?:/.*)?", fallback, {"api": api}))  # JSON 404s
    return specs


def make_handlers(
    get_service: Callable[[], Service],
    base: str = "/api",
    auth: Auth | None = None,
    mixin: type | None = None,
) -> list[tuple[str, type, dict[str, Any]]]:
    """Tornado URL specs of every route under ``base``. A Jupyter server extension
    mounts them under its base URL with ``auth=None`` and ``mixin``, a handler class
    put first in each handler's bases (its ``prepare`` does Jupyter's auth, its
    ``_serve`` may forward the request elsewhere)."""
    return _specs(_Api(get_service, base, auth), mixin)


# -- the server of `durabook serve` --------------------------------------------------------


def _log_request(handler: RequestHandler) -> None:
    status, req = handler.get_status(), handler.request  # the path only: no ?token= logged
    level = logging.DEBUG if status < 400 else logging.INFO if status < 500 else logging.WARNING
    log.log(level, "%d %s %s %.1f ms", status, req.method, req.path, 1000 * req.request_time())


class HttpServer:
    """The HTTP API served on a daemon thread of its own (an asyncio loop made there)."""

    def __init__(
        self, api: _Api, host: str, sockets: list[socket.socket], token: str | None
    ) -> None:
        self._api, self._sockets, self.token = api, sockets, token
        if sockets[0].family == socket.AF_UNIX:
            self.port = 0
            self.url = f"http+unix://{sockets[0].getsockname()}{api.base}"
        else:
            self.port = sockets[0].getsockname()[1]
            shown = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
            self.url = f"http://{f'[{shown}]' if ':' in shown else shown}:{self.port}{api.base}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: HTTPServer | None = None
        self._error: BaseException | None = None
        self._closed = False
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._main, args=(started,), name="durabook-http", daemon=True
        )
        self._thread.start()
        started.wait()
        if self._error is not None:
            api.close()
            raise self._error

    @property
    def token_url(self) -> str:
        """What to print at start: the API's document, with the token when there is one."""
        return f"{self.url}/openapi.json" + (f"?token={self.token}" if self.token else "")

    def _main(self, started: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            app = Application(
                _specs(self._api),
                log_function=_log_request,
                default_handler_class=_Handler,
                default_handler_args={"api": self._api},
            )
            self._server = HTTPServer(
                app,
                max_body_size=self._api.max_body,
                idle_connection_timeout=IDLE_TIMEOUT,
                body_timeout=BODY_TIMEOUT,
            )
            self._server.add_sockets(self._sockets)
            self._loop = loop
        except BaseException as exc:
            self._error = exc
            for s in self._sockets:
                s.close()
            loop.close()
            return
        finally:
            started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.stop()  # no new connections
        deadline = time.monotonic() + 5.0  # the verbs under way finish, streams end
        while (self._api.pending or self._api.streams) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.close_all_connections(), 2.0)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self, timeout: float = 10.0) -> None:
        """Stop serving and join the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._api.closing = True
        loop = self._loop
        if loop is not None and self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout)
        self._api.close()


def start_http(
    service: Service,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    no_auth: bool = False,
) -> HttpServer:
    """Serve ``service`` over HTTP on ``host:port`` (0: a free port) until ``close()``.

    A token is required: ``token``, else one generated (``.token``; the caller prints
    ``.token_url``). ``no_auth`` serves without one, on loopback addresses only."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise BadInput(f"--port must be 0 to 65535, got {port!r}")
    if no_auth:
        if token:
            raise BadInput("--token and --no-auth exclude each other")
        if not _binds_loopback(host):
            raise BadInput(
                f"--no-auth serves loopback addresses only (127.0.0.1, ::1, localhost), not "
                f"{host!r}: serve it with a token",
                host=host,
            )
    elif token is not None and not _TOKEN.fullmatch(token):
        raise BadInput("a token is 1 to 1024 printable ASCII characters, no spaces")
    else:
        token = token or secrets.token_urlsafe(32)
    api = _Api(lambda: service, "/api", Auth(None if no_auth else token))
    try:
        sockets = bind_sockets(port, host or None)
    except (OSError, UnicodeError) as exc:
        api.close()
        why = getattr(exc, "strerror", None) or exc
        raise BadInput(f"cannot listen on {host}:{port}: {why}", host=host, port=port) from None
    return HttpServer(api, host, sockets, None if no_auth else token)


def start_http_unix(service: Service, path: os.PathLike[str] | str) -> HttpServer:
    """Serve ``service`` over HTTP on a unix socket (mode 0600, in the private runtime
    folder of the control socket), without a token: only this user reaches it. A
    JupyterLab whose home this engine serves forwards its ``/durabook/api`` here."""
    from tornado.netutil import bind_unix_socket

    api = _Api(lambda: service, "/api", None)
    try:
        sock = bind_unix_socket(os.fspath(path), mode=0o600)
    except OSError as exc:
        api.close()
        raise BadInput(f"cannot listen on {path}: {exc.strerror or exc}", path=str(path)) from None
    return HttpServer(api, "unix", [sock], None)
