"""What both services' web layers share: one error shape, auth, body limit, JSON parsing, SSE, metrics, request ids,
routes declared with their OpenAPI entry (:class:`Api`), and the operations blueprint (health, readiness, metrics,
OpenAPI, the web page). ``install(app, settings, name)`` wires the cross-cutting behaviour into a Flask app; each
service's own routes are its domain blueprint.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request, send_from_directory
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import ClosingIterator

from common import __version__, tracing
from common.errors import BadRequest, ConclaveError, UnsupportedMediaType
from common.metrics import Metrics
from common.openapi import Route, build_openapi
from common.protocol import ID_PATTERN, ErrorDetail, ErrorResponse
from common.settings import WebSettings

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

# On every response. The pages load only their own files (no inline script or style, no other origin), cannot be
# framed by another site, and no response is sniffed into another type than it says.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

# Paths anyone may read without a key: liveness, and the UI's static page (it holds no data and asks for the key).
OPEN_PATHS = {"/health", "/"}


def error_response(status: int, message: str, type_: str, code: str | int | None = None,
                   retry_after: float | None = None, extra: dict | None = None) -> Response:
    body = ErrorResponse(error=ErrorDetail(message=message, type=type_, code=code)).model_dump()
    resp = Response(json.dumps({**body, **(extra or {})}, ensure_ascii=False), status=status,
                    mimetype="application/json")
    if retry_after is not None:
        resp.headers["Retry-After"] = str(max(1, int(round(retry_after))))
    return resp


ID = re.compile(ID_PATTERN)
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def check_id(value: str, what: str) -> str:
    """Path ids follow the same rule as the bodies that create them; anything else is a 400, not a silent miss."""
    if not ID.fullmatch(value):  # not match: '$' also matches before a trailing newline
        raise BadRequest(f"{what} must be 1-128 characters of letters, digits, '_', '.', ':' or '-'")
    return value


# What a cross-site HTML form can send without a CORS preflight, and never a JSON client: refused, so a page on
# another site cannot make a browser run /chat or /integrate. (curl -d sends form-urlencoded, as the seed's README
# does; that body is parsed as JSON like any other.)
FORM_TYPES = ("text/plain", "multipart/form-data")


def parse_body(model: type[M]) -> M:
    """Validate the JSON body against ``model``; any problem is a 400 that says what is wrong."""
    if request.mimetype in FORM_TYPES:
        raise UnsupportedMediaType(f"send the body as JSON (Content-Type: application/json), not {request.mimetype}")
    raw = request.get_data(cache=True)  # raises 413 past MAX_CONTENT_LENGTH
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("request body is not valid UTF-8") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    if SURROGATE.search(raw.decode("utf-8")) and _has_lone_surrogate(data):
        raise BadRequest("request body holds an unpaired UTF-16 surrogate (\\ud800-\\udfff), which is no text")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest("; ".join(_describe(e) for e in exc.errors()), "validation_error") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None


SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(value: object) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _describe(error: dict) -> str:
    where = ".".join(str(p) for p in error.get("loc", ())) or "body"
    return f"{where}: {error.get('msg', 'invalid')}"


def sse(events: Iterable[tuple[str | None, object]], on_close: Callable[[], None] | None = None) -> Response:
    """Stream ``(event, data)`` pairs as server-sent events; ``on_close`` runs when the client goes away or it ends."""

    def body() -> Iterator[str]:
        try:
            for event, data in events:
                payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
                yield (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"
        finally:
            if on_close:
                on_close()

    resp = Response(body(), mimetype="text/event-stream")
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp


def cacheable(body: dict, modified: datetime, vary: str, max_age: int = 300) -> Response:
    """A JSON document clients may cache (an agent card: A2A's discovery section asks for Cache-Control, ETag and
    Last-Modified): a 304 to a client whose copy is current. ``vary`` names the request header the body depends on."""
    resp = jsonify(body)
    resp.cache_control.public = True
    resp.cache_control.max_age = max_age
    resp.last_modified = modified
    resp.vary.add(vary)
    resp.add_etag()
    return resp.make_conditional(request)


def install(app: Flask, settings: WebSettings, service: str, title: str) -> Metrics:
    """Register error handlers, auth, the body limit, request ids and metrics on ``app`` (``title`` heads its
    OpenAPI document)."""
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["TITLE"], app.config["API_KEY_REQUIRED"] = title, bool(settings.api_key)
    app.config["TRUSTED_HOSTS"] = settings.trusted_hosts()  # Flask answers 400 to any other Host header
    metrics = Metrics(service)
    app.extensions["metrics"] = metrics
    tracing.configure(service)  # exports spans when OTEL_EXPORTER_OTLP_ENDPOINT is set; nothing otherwise
    expected = f"Bearer {settings.api_key}".encode() if settings.api_key else None

    @app.before_request
    def _start() -> Response | None:
        g.started = time.perf_counter()
        given_id = request.headers.get("X-Request-ID", "")
        # echoed in a header and written to logs: only a plain token is taken, anything else gets an id of ours
        g.request_id = given_id if REQUEST_ID.fullmatch(given_id) else uuid.uuid4().hex[:16]
        g.trace = tracing.continue_trace(request.headers)  # the caller's traceparent: our spans are its children
        if expected is None or request.path in OPEN_PATHS or request.path.startswith("/static/"):
            return None
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return error_response(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                                  "authentication_error", "invalid_api_key")
        return None

    @app.after_request
    def _finish(resp: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.requests.labels(service, route, str(resp.status_code)).inc()
        metrics.latency.labels(service, route).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        resp.headers["X-Request-ID"] = g.get("request_id", "")
        resp.headers.update(SECURITY_HEADERS)
        return resp

    @app.teardown_request
    def _end_trace(_exc: BaseException | None) -> None:
        tracing.leave_trace(g.pop("trace", None))

    @app.errorhandler(ConclaveError)
    def _domain_error(exc: ConclaveError) -> Response:  # a service's or an engine's: it carries its status and type
        return error_response(exc.status, exc.message, exc.type, exc.code, exc.retry_after, exc.extra)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        type_ = {401: "authentication_error", 404: "not_found", 405: "method_not_allowed",
                 413: "request_too_large"}.get(exc.code or 500, "invalid_request_error")
        message = exc.description or exc.name
        if exc.code == 413:
            message = f"request body larger than {request.max_content_length} bytes"
        resp = error_response(exc.code or 500, message, type_, exc.code)
        for name, value in exc.get_headers():  # e.g. the Allow header a 405 owes (RFC 9110)
            if name.lower() != "content-type":
                resp.headers[name] = value
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s [%s]", request.method, request.path, g.get("request_id"))
        return error_response(500, f"internal error (request id {g.get('request_id')})", "server_error")

    return metrics


COMMON_STATIC = Path(__file__).with_name("static")


def static_file(name: str, own: Path) -> Response:
    """A UI asset from the service's own static folder, else from the shared one (conclave.js, conclave.css)."""
    folder = own if (own / name).is_file() else COMMON_STATIC
    return send_from_directory(folder, name)


class Api(Blueprint):
    """A blueprint whose every route is declared once, with its OpenAPI entry: ``@api.op("post", "/chat", ...)``."""

    def __init__(self, name: str, import_name: str):
        super().__init__(name, import_name)
        self.documented: list[Route] = []

    def op(self, method: str, path: str, summary: str, request_model: type[BaseModel] | None = None,
           response_model: type[BaseModel] | None = None, stream: bool = False,
           content_type: str = "application/json") -> Callable:
        """Route ``path`` (OpenAPI's ``{name}`` parameters) to the view, and document it."""

        def declare(view: Callable) -> Callable:
            self.documented.append(Route(method, path, summary, request_model, response_model, stream,
                                         content_type))
            self.add_url_rule(path.replace("{", "<").replace("}", ">"), view_func=view, methods=[method.upper()])
            return view

        return declare


def openapi_document(app: Flask) -> dict:
    """The OpenAPI document of every route the app's :class:`Api` blueprints declare, built once per app."""
    if "openapi" not in app.extensions:
        routes = [r for bp in app.blueprints.values() if isinstance(bp, Api) for r in bp.documented]
        app.extensions["openapi"] = build_openapi(app.config["TITLE"], __version__, routes,
                                                  app.config["API_KEY_REQUIRED"])
    return app.extensions["openapi"]


def operations(static: Path, page: str, readiness: Callable[[], dict], *, ready_summary: str, page_summary: str,
               health: Callable[[], dict] = lambda: {"status": "ok"},
               gauges: Callable[[], None] = lambda: None) -> Api:
    """The routes every service has, around its own: liveness, readiness (``readiness`` answers the body, or raises
    a ConclaveError saying what is missing), Prometheus metrics (``gauges`` sets the live ones first), this OpenAPI
    document, and the web page ``page`` with its assets from ``static``."""
    ops = Api("operations", __name__)

    @ops.op("get", "/health", "Liveness")
    def live() -> dict:
        return health()

    @ops.op("get", "/ready", ready_summary)
    def ready() -> dict:
        return readiness()

    @ops.op("get", "/metrics", "Prometheus metrics", content_type="text/plain")
    def metrics() -> Response:
        gauges()
        body, content_type = current_app.extensions["metrics"].exposition()
        return Response(body, content_type=content_type)

    @ops.op("get", "/openapi.json", "This document")
    def openapi() -> dict:
        return openapi_document(current_app)

    @ops.op("get", "/", page_summary, content_type="text/html")
    def index() -> Response:
        return send_from_directory(static, page)

    @ops.get("/static/<path:name>")
    def static_asset(name: str) -> Response:
        return static_file(name, static)

    return ops


PROBE_PATHS = {"/health", "/ready", "/metrics"}


class Admission:
    """WSGI middleware that admits at most ``limit`` requests at once and answers the rest 429 with Retry-After at
    once, so the server's threads never all wait on the engine: probes (``PROBE_PATHS``) are never counted or
    refused, and always find a free thread. A streamed response counts until its body is closed."""

    def __init__(self, app: Callable, limit: int, retry_after_s: int = 2):
        self.app, self.limit, self.retry_after_s = app, limit, retry_after_s
        self.in_flight = 0
        self._lock = threading.Lock()

    def __call__(self, environ: dict, start_response: Callable):
        if environ.get("PATH_INFO", "") in PROBE_PATHS:
            return self.app(environ, start_response)
        with self._lock:
            admitted = self.in_flight < self.limit
            self.in_flight += admitted
        if not admitted:
            body = ErrorResponse(error=ErrorDetail(
                message=f"busy: {self.limit} requests in progress, try again shortly", type="rate_limit_error",
                code="too_many_requests")).model_dump_json().encode()
            start_response("429 Too Many Requests", [("Content-Type", "application/json"),
                                                     ("Content-Length", str(len(body))),
                                                     ("Retry-After", str(self.retry_after_s))])
            return [body]
        try:
            return ClosingIterator(self.app(environ, start_response), self._leave)
        except BaseException:
            self._leave()
            raise

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1
