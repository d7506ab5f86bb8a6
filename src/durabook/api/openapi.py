"""The HTTP API's routes, free of any web framework, and their OpenAPI 3.1 document.

:data:`ROUTES` says, per method and path, how the body and query are checked, which
verb of :class:`~.service.Service` answers and with which type: :mod:`.http` serves
exactly these, and :func:`document` describes exactly these, from the same pydantic
models (their ``$defs`` collected into ``components.schemas``).

Input over HTTP: the create body is :class:`~.models.CreateRequest` without ``env``,
``cwd``, ``output`` and ``from_text`` (a remote caller must not pick paths the engine
writes, nor pass environment to kernels): they are refused with 400, as are unknown
fields and unknown query arguments. Every input error is a :class:`BadInput` (400).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model

from ..errors import BadInput, EngineBusy, InvalidNotebook
from ..models import Status
from .models import (
    CreateRequest,
    CronPreview,
    CronPreviewRequest,
    EventReply,
    EventRequest,
    Health,
    IdRequest,
    InstancePage,
    InstanceRef,
    InstanceStatus,
    LifecycleReply,
    ListRequest,
    NameRequest,
    RestartRequest,
    ResumeRequest,
    ScheduleInfo,
    ScheduleRunsRequest,
    ScheduleSpec,
    TopReply,
    validation_summary,
)

if TYPE_CHECKING:
    from ..progress import Subscription
    from .service import Service

__all__ = ["ANY_JSON", "ERROR_CODES", "ROUTES", "SETTLED", "Route", "document", "invoke"]

ANY_JSON = object()  # a route whose body is any JSON value (an event's data)
REF = "#/components/schemas/{model}"
SETTLED = frozenset(
    {Status.COMPLETED, Status.FAILED, Status.TERMINATED, Status.SLEEPING, Status.WAITING}
    | {Status.PAUSED}
)
# the HTTP status of each error ``code``; the last five are HTTP's own
ERROR_CODES: dict[str, int] = {
    "bad_input": 400,
    "invalid_notebook": 400,
    "invalid_parameter": 400,
    "unsafe_path": 400,
    "unknown_instance": 404,
    "unknown_schedule": 404,
    "invalid_state": 409,
    "engine_busy": 503,
    "engine_lost": 503,
    "storage_full": 507,
    "internal": 500,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "too_large": 413,
}
_NOT_OVER_HTTP = ("env", "cwd", "output", "from_text", "source_path")
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_RESUME_LOCK = threading.Lock()


@dataclass(frozen=True)
class Route:
    """One method on one path (relative to the API's base, ``{name}`` a path part)."""

    method: str
    path: str
    op: str  # operationId
    summary: str
    reply: Any = None  # the 2xx body's type (a model, list[...], dict[str, Any])
    body: Any = None  # a model, ANY_JSON, or None (no body)
    query: type[BaseModel] | None = None
    status: tuple[int, ...] = (200,)
    auth: bool = True
    kind: str = "call"  # call: in a worker thread; inline: cheap; stream: server-sent events
    call: Callable[[Ctx], Any] | None = None


# -- bodies and queries: the request models, less what a remote caller must not set ----


def _subset(name: str, model: type[BaseModel], fields: tuple[str, ...]) -> type[BaseModel]:
    """``model`` with only ``fields``; the full model validates after (its validators)."""
    spec: Any = {f: (model.model_fields[f].annotation, model.model_fields[f]) for f in fields}
    return create_model(name, __config__=ConfigDict(extra="forbid"), __doc__=model.__doc__, **spec)


_CREATE = ("notebook", "notebook_json", "parameters", "id", "priority", "tenant", "workflow")
CreateBody = _subset(
    "CreateBody",
    CreateRequest,
    (*_CREATE, "webhook", "if_exists", "scan_all", "limits", "sandbox", "network"),
)
ResumeBody = _subset("ResumeBody", ResumeRequest, ("notebook", "now"))
RestartBody = _subset("RestartBody", RestartRequest, ("from_cell",))
RunsQuery = _subset("RunsQuery", ScheduleRunsRequest, ("limit",))


@functools.lru_cache(maxsize=64)
def _adapter(t: Any) -> TypeAdapter[Any]:
    return TypeAdapter(t)


@functools.lru_cache(maxsize=8)
def cached_document(base: str) -> dict[str, Any]:
    from .. import __version__

    return document(ROUTES, base, __version__)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(raw: bytes) -> Any:
    """JSON, strictly: no NaN or Infinity, no lone surrogates (no string stores them)."""
    try:
        value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
        if _SURROGATE.search(raw):
            json.dumps(value, ensure_ascii=False).encode()
    except RecursionError:
        raise BadInput("the body nests too deeply") from None
    except UnicodeEncodeError:
        raise BadInput("the body has a lone UTF-16 surrogate in a string") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise BadInput(f"the body is not JSON: {str(exc)[:200]}") from None
    return value


def _parse_body(route: Route, raw: bytes) -> Any:
    empty = not raw.strip()
    if route.body is None:
        if not empty and loads(raw) not in ({}, None):
            raise BadInput(f"{route.method} {route.path} takes no body")
        return None
    value = None if empty else loads(raw)
    if route.body is ANY_JSON:
        return value
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise BadInput(f"the body must be a JSON object, not {type(value).__name__}")
    refused = sorted(set(value) & set(_NOT_OVER_HTTP)) if route.body is CreateBody else []
    if refused:
        raise BadInput(
            f"{', '.join(refused)}: not over HTTP (a remote caller chooses no paths the "
            "engine writes and no kernel environment)",
            fields=refused,
        )
    return route.body.model_validate(value)


def _parse_query(route: Route, args: dict[str, list[bytes]]) -> Any:
    known = route.query.model_fields if route.query is not None else {}
    unknown = sorted(set(args) - set(known) - {"token"})
    if unknown:
        names = ", ".join(repr(n[:80]) for n in unknown[:5])
        raise BadInput(f"unknown query argument {names}; known: {', '.join(known) or 'none'}")
    values: dict[str, str] = {}
    for name in known:
        if not args.get(name):
            continue
        try:
            text = args[name][-1].decode("utf-8")
        except UnicodeDecodeError:
            raise BadInput(f"query argument {name!r} is not UTF-8") from None
        if text:  # ?tenant= is no filter
            values[name] = text
    return route.query.model_validate(values) if route.query is not None else None


def _summary(exc: ValidationError) -> str:
    return validation_summary(exc, "body")


def _notebook_path(path: str | None) -> None:
    """A remote caller's path must be a file: a FIFO would hold a worker thread forever,
    a device would be read up to the notebook limit."""
    if path is None:
        return
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return  # load_notebook says what is wrong with it
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise InvalidNotebook(f"{path} is not a regular file", path=path)


# -- the verbs behind the routes -------------------------------------------------------


@dataclass
class Ctx:
    """One request, checked: its path parts, body and query."""

    get_service: Callable[[], Service]
    base: str
    path: dict[str, str]
    body: Any
    query: Any

    @property
    def service(self) -> Service:
        return self.get_service()

    @property
    def id(self) -> IdRequest:
        return IdRequest(id=self.path["id"])

    def fields(self) -> dict[str, Any]:
        return dict(self.body.model_dump(exclude_unset=True))


def invoke(
    route: Route,
    get_service: Callable[[], Service],
    base: str,
    path: dict[str, str],
    raw: bytes,
    args: dict[str, list[bytes]],
) -> Any:
    """Check the request and run its verb; any input error is a BadInput."""
    try:
        assert route.call is not None
        body, query = _parse_body(route, raw), _parse_query(route, args)
        return route.call(Ctx(get_service, base, path, body, query))
    except ValidationError as exc:
        raise BadInput(f"bad request: {_summary(exc)}") from None
    except RecursionError:
        raise BadInput("the request nests too deeply") from None
    except ModuleNotFoundError as exc:
        if exc.name != "durabook.scheduler":
            raise
        raise EngineBusy("schedules are not available in this engine") from None


def encode(route: Route, result: Any) -> tuple[int, bytes]:
    """(HTTP status, JSON) of a verb's result: (result, status) picks the status."""
    status = route.status[0]
    if isinstance(result, tuple):
        result, status = result
    return status, _adapter(route.reply).dump_json(result)


def _create(c: Ctx) -> tuple[InstanceRef, int]:
    _notebook_path(c.body.notebook)
    ref = c.service.create(CreateRequest.model_validate(c.fields()))
    return ref, 201 if ref.created else 200


def _resume(c: Ctx) -> LifecycleReply:
    """Queue it again and answer at once (Service.resume follows the run to its end)."""
    req = ResumeRequest(id=c.path["id"], **c.fields())
    _notebook_path(req.notebook)
    svc = c.service
    eng = svc.engine
    with _RESUME_LOCK:  # two resumes of one failed instance queue it once
        eng.prepare_resume(req.id, req.notebook, req.now)
        status = Status(eng._instance(req.id)["status"])
        if status == Status.FAILED:  # failed only: one prepare woke may be running already
            eng.requeue(req.id)
            status = Status.QUEUED
    return LifecycleReply(id=req.id, status=status, resumed_by_engine=svc.serving)


def _verb(op: str, request: Callable[[Ctx], Any]) -> Callable[[Ctx], Any]:
    return lambda c: getattr(c.service, op)(request(c))


def _by_id(c: Ctx) -> IdRequest:
    return c.id


def _by_name(c: Ctx) -> NameRequest:
    return NameRequest(name=c.path["name"])


def _schedule_add(c: Ctx) -> tuple[ScheduleInfo, int]:
    _notebook_path(c.body.notebook)
    return c.service.schedule_add(c.body), 201


def stream_open(c: Ctx) -> tuple[Subscription, Status, bool]:
    """Subscribed before the status is read: no event falls between the two."""
    iid = c.id.id
    svc = c.service
    sub = svc.engine.hub.subscribe(iid)
    try:
        status, settled = settled_status(svc, iid)
    except BaseException:
        sub.close()
        raise
    return sub, status, settled


def settled_status(svc: Service, iid: str) -> tuple[Status, bool]:
    """The status, and whether it is settled: not queued or running, its run thread gone."""
    eng = svc.engine
    inst = eng._instance(iid)
    if inst["status"] == Status.RUNNING.value and not eng.owner_alive(inst):
        eng.recover_orphans()  # its runner died: failed now, say so
        inst = eng._instance(iid)
    status = Status(inst["status"])
    busy = svc.dispatcher is not None and svc.dispatcher.is_running(iid)
    return status, status in SETTLED and not busy


_I, _S = "/instances/{id}", "/schedules/{name}"
_LIFECYCLE = {
    "pause": "Pause (a running instance after its current cell)",
    "unpause": "Back to queued, sleeping or waiting, as it was",
    "terminate": "End it for good (a running kernel is killed)",
    "cancel": "End an instance that has not started",
}
ROUTES: list[Route] = [
    Route("GET", "/health", "health", "Liveness and load (no auth)", Health, auth=False,
          kind="inline", call=lambda c: c.service.health()),
    Route("GET", "/top", "top", "Running kernels: cell, CPU, memory; the warm pool",
          TopReply, call=lambda c: c.service.top()),
    Route("GET", "/openapi.json", "openapi", "This document", dict[str, Any], kind="inline",
          call=lambda c: cached_document(c.base)),
    Route("POST", "/instances", "create", "Create an instance (200: the id existed)",
          InstanceRef, CreateBody, status=(201, 200), call=_create),
    Route("GET", "/instances", "list", "Instances, newest first; next_cursor pages on",
          InstancePage, query=ListRequest, call=lambda c: c.service.list(c.query)),
    Route("GET", _I, "status", "An instance and its cells", InstanceStatus,
          call=_verb("status", _by_id)),
    Route("GET", _I + "/notebook", "notebook", "The output notebook as it stands",
          dict[str, Any], call=_verb("notebook", _by_id)),
    Route("GET", _I + "/stream", "stream", "Server-sent events of a run until it settles",
          kind="stream", call=stream_open),
    Route("POST", _I + "/events/{name}", "send_event", "Send an event (the body: its data)",
          EventReply, ANY_JSON, call=_verb("send_event", lambda c: EventRequest(
              id=c.path["id"], name=c.path["name"], data=c.body))),
    *(Route("POST", f"{_I}/{op}", op, doc, LifecycleReply, call=_verb(op, _by_id))
      for op, doc in _LIFECYCLE.items()),
    Route("POST", _I + "/restart", "restart", "Drop checkpoints from a cell on, queue again",
          LifecycleReply, RestartBody,
          call=_verb("restart", lambda c: RestartRequest(id=c.path["id"], **c.fields()))),
    Route("POST", _I + "/resume", "resume", "Queue a failed or due instance again, at once",
          LifecycleReply, ResumeBody, call=_resume),
    Route("GET", "/schedules", "schedule_list", "Schedules", list[ScheduleInfo],
          call=lambda c: c.service.schedule_list()),
    Route("POST", "/schedules", "schedule_add", "Add a schedule", ScheduleInfo, ScheduleSpec,
          status=(201,), call=_schedule_add),
    Route("GET", "/cron", "schedule_preview", "The next fire times of a cron expression",
          CronPreview, query=CronPreviewRequest,
          call=lambda c: c.service.schedule_preview(c.query)),
    Route("GET", _S, "schedule_get", "A schedule", ScheduleInfo,
          call=_verb("schedule_get", _by_name)),
    Route("DELETE", _S, "schedule_remove", "Remove a schedule", ScheduleInfo,
          call=_verb("schedule_remove", _by_name)),
    Route("POST", _S + "/pause", "schedule_pause", "Fire no more until unpaused", ScheduleInfo,
          call=_verb("schedule_pause", _by_name)),
    Route("POST", _S + "/unpause", "schedule_unpause", "Fire again", ScheduleInfo,
          call=_verb("schedule_unpause", _by_name)),
    Route("GET", _S + "/runs", "schedule_runs", "Instances the schedule fired", InstancePage,
          query=RunsQuery, call=_verb("schedule_runs", lambda c: ScheduleRunsRequest(
              name=c.path["name"], limit=c.query.limit))),
]  # fmt: skip


# -- the document ----------------------------------------------------------------------

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "enum": sorted(ERROR_CODES)},
                "message": {"type": "string"},
            },
            "additionalProperties": True,  # structured fields: instance, status, ...
        }
    },
}
_ERRORS = {
    "400": "Bad input: not JSON, a wrong type, an unknown field or parameter, an invalid "
    "notebook (codes bad_input, invalid_notebook, invalid_parameter, unsafe_path)",
    "401": "No token, or a wrong one",
    "403": "A cross-origin request, or a non-loopback Host without a token",
    "404": "Unknown instance, schedule or route",
    "409": "The instance or schedule cannot do this now (invalid_state)",
    "413": "The body is over $DURABOOK_MAX_BODY_BYTES (default 16 MiB)",
    "503": "Too many requests or streams under way, or schedules unavailable",
}
_STREAM_DOC = (
    "Server-sent events: first `status` (the current status), then the run's events "
    "(`start`, `executed` with the cell's outputs, `committed`, `status`, `done`), then "
    "`end` with the settled status (completed, failed, terminated, sleeping, waiting or "
    "paused). Each event's data is one JSON object with `event` and `id`. A comment "
    "line keeps the connection alive every 15 s."
)


def document(routes: Sequence[Route], base: str = "/api", version: str = "0") -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` served under ``base``."""
    inputs: list[tuple[Any, Any, TypeAdapter[Any]]] = []
    for r in routes:
        if isinstance(r.body, type):
            inputs.append(((r.op, "body"), "validation", _adapter(r.body)))
        if r.query is not None:
            inputs.append(((r.op, "query"), "validation", _adapter(r.query)))
        if r.reply is not None:
            inputs.append(((r.op, "reply"), "serialization", _adapter(r.reply)))
    by_key, defs = TypeAdapter.json_schemas(inputs, ref_template=REF)
    schemas = {key: schema for (key, _mode), schema in by_key.items()}
    components: dict[str, Any] = {**defs.get("$defs", {}), "Error": _ERROR_SCHEMA}
    error = {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        params = [
            {"name": p[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
            for p in r.path.split("/")
            if p.startswith("{")
        ]
        if r.query is not None:
            q = schemas[(r.op, "query")]
            q = components.get(q.get("$ref", "").rpartition("/")[2], q)
            for name, prop in q.get("properties", {}).items():
                required = name in q.get("required", [])
                params.append({"name": name, "in": "query", "required": required, "schema": prop})
        op: dict[str, Any] = {"operationId": r.op, "summary": r.summary, "parameters": params}
        if r.body is ANY_JSON:
            op["requestBody"] = {
                "required": False,
                "description": "any JSON value (an empty body is null)",
                "content": {"application/json": {"schema": {}}},
            }
        elif r.body is not None:
            body = {"application/json": {"schema": schemas[(r.op, "body")]}}
            op["requestBody"] = {"required": True, "content": body}
        responses: dict[str, Any] = {}
        for code in r.status:
            if r.kind == "stream":
                content = {"text/event-stream": {"schema": {"type": "string"}}}
                responses[str(code)] = {"description": _STREAM_DOC, "content": content}
            else:
                content = {"application/json": {"schema": schemas[(r.op, "reply")]}}
                text = "created" if code == 201 else "ok"
                responses[str(code)] = {"description": text, "content": content}
        for err, text in _ERRORS.items():
            if r.auth or err not in ("401", "403"):
                responses[err] = {"description": text, "content": error}
        op["responses"] = responses
        if not r.auth:
            op["security"] = []
        paths.setdefault(base.rstrip("/") + r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "durabook",
            "version": version,
            "description": "Durable notebooks over HTTP: every code cell a checkpointed step. "
            'Errors are `{"error": {"code", "message", ...fields}}` (see the Error schema '
            "for the codes). Bad input is 400, invalid notebooks and parameters included.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "token": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`token T` (or `Bearer T`): the token `durabook serve` printed",
                },
                "bearer": {"type": "http", "scheme": "bearer"},
                "query": {"type": "apiKey", "in": "query", "name": "token"},
            },
        },
        "security": [{"token": []}, {"bearer": []}, {"query": []}],
    }
