"""A2A 1.0 (JSON-RPC binding, and the 0.3 method names for older clients) for a Conclave service, built from the
a2a-sdk's server pieces and mounted under the Flask app at ``/a2a``.

A service hands in a ``Turn``: a blocking function that answers one message, reporting progress and text as it goes,
and honouring cancellation. The SDK does the protocol: tasks and their states, SSE streams, GetTask, CancelTask,
ListTasks with cursors, error codes. Tasks live in SQLite (the SDK's database task store), so GetTask works after a
restart.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import flask
import sqlalchemy as sa
from a2a.helpers.proto_helpers import get_message_text, new_task_from_user_message, new_text_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.cluster import DatabaseTaskEventStream, VersionedDatabaseTaskStore
from a2a.server.events import EventQueue
from a2a.server.models import TaskEventModel, TaskModel, TaskVersionModel
from a2a.server.owner_resolver import resolve_user_scope
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes import create_jsonrpc_routes
from a2a.server.tasks import TaskUpdater
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentExtension,
    AgentInterface,
    AgentSkill,
    HTTPAuthSecurityScheme,
    Role,
    SecurityRequirement,
    SecurityScheme,
    StringList,
    TaskState,
)
from google.protobuf.json_format import MessageToDict
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import JSONResponse

from common import tracing
from common.asgi import mount as asgi_mount
from common.database import Database
from common.protocol import A2A_VERSION_HEADER, CONCLAVE_EXTENSION
from common.protocol import AgentCard as CardSchema
from common.web import Api, cacheable

PROTOCOL_VERSION = "1.0"
RPC_PATH = "/a2a"

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """What a turn reports: ``status`` a step in words (working), ``delta`` a piece of the answer."""

    kind: str
    text: str


Turn = Callable[[str, str, threading.Event], Iterator[Progress]]
"""``turn(text, context_id, cancelled)``: answer the message, yielding progress; the last ``delta``s make up the
answer. Runs in a worker thread; ``cancelled`` is set when the task is cancelled."""


class TurnExecutor(AgentExecutor):
    """Runs a service's turn for each A2A message and publishes what it yields as task events."""

    def __init__(self, turn: Turn):
        self.turn = turn
        self._cancels: dict[str, threading.Event] = {}

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        if task is None:
            task = new_task_from_user_message(context.message)
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.start_work()
        cancelled = self._cancels.setdefault(task.id, threading.Event())
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        # the caller's traceparent: the turn's spans (in the thread below) continue its trace
        headers = context.call_context.state.get("headers", {}) if context.call_context else {}

        def run() -> None:
            trace_token = tracing.continue_trace(headers)
            try:
                for item in self.turn(get_message_text(context.message), task.context_id, cancelled):
                    loop.call_soon_threadsafe(events.put_nowait, item)
                loop.call_soon_threadsafe(events.put_nowait, None)
            except Exception as exc:  # the task fails with the reason; the server goes on
                loop.call_soon_threadsafe(events.put_nowait, exc)
            finally:
                tracing.leave_trace(trace_token)

        threading.Thread(target=run, name="a2a-turn", daemon=True).start()
        pieces = 0
        try:
            while (item := await events.get()) is not None:
                if cancelled.is_set():  # cancel() has already published the cancelled state
                    return
                if isinstance(item, Exception):
                    await updater.failed(new_text_message(str(item), context_id=task.context_id, task_id=task.id,
                                                          role=Role.ROLE_AGENT))
                    return
                if item.kind == "status":
                    await updater.update_status(TaskState.TASK_STATE_WORKING, new_text_message(
                        item.text, context_id=task.context_id, task_id=task.id, role=Role.ROLE_AGENT))
                elif item.text:
                    pieces += 1
                    await updater.add_artifact([new_text_part(item.text)], artifact_id=f"{task.id}-answer",
                                               name="answer", append=pieces > 1, last_chunk=False)
            await updater.add_artifact([new_text_part("")], artifact_id=f"{task.id}-answer", name="answer",
                                       append=True, last_chunk=True)
            await updater.complete()
        finally:
            self._cancels.pop(task.id, None)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        if task is not None:
            self._cancels.setdefault(task.id, threading.Event()).set()
            await TaskUpdater(event_queue, task.id, task.context_id).cancel()


def agent_card(name: str, description: str, url: str, version: str, skills: list, api_key: bool,
               extension: dict | None = None) -> AgentCard:
    """The A2A 1.0 card: the JSON-RPC interface it really serves, streaming, bearer auth when a key is set."""
    card = AgentCard(
        name=name, description=description, version=version,
        # one endpoint, both versions: 1.0, and 0.3's method names for older clients (they find it as ``url``)
        supported_interfaces=[AgentInterface(url=url.rstrip("/") + RPC_PATH, protocol_binding="JSONRPC",
                                             protocol_version=version) for version in (PROTOCOL_VERSION, "0.3")],
        capabilities=AgentCapabilities(streaming=True, push_notifications=False, extensions=[
            AgentExtension(uri=CONCLAVE_EXTENSION, description="Conclave's own endpoints", params=extension or {})]),
        default_input_modes=["text/plain"], default_output_modes=["text/plain"],
        skills=[AgentSkill(id=s.id, name=s.name, description=s.description, tags=s.tags, examples=s.examples)
                for s in skills])
    if api_key:
        card.security_schemes["bearer"].CopyFrom(SecurityScheme(
            http_auth_security_scheme=HTTPAuthSecurityScheme(scheme="bearer", description="API_KEY")))
        card.security_requirements.append(SecurityRequirement(schemes={"bearer": StringList(list=[])}))
    return card


CARD_PATHS = ("/.well-known/agent-card.json", "/.well-known/agent.json")  # agent.json: where older clients look


def card_json(card: AgentCard, requested_version: str | None) -> dict:
    """The card as served to a client asking in ``requested_version`` (its ``A2A-Version`` header or parameter): the
    A2A 1.0 card exactly, or, for a request without a version, also 0.3's fields (``url``, ``preferredTransport``...),
    since the specification reads a missing version as a 0.3 client's and a 1.0 card admits no other fields."""
    if (requested_version or "0.3").strip().startswith("0."):
        return agent_card_to_dict(card)
    return MessageToDict(card)


class Bearer(BaseHTTPMiddleware):
    """API_KEY on an ASGI app: a 401 with a JSON-RPC error body unless 'Authorization: Bearer <key>' is sent."""

    def __init__(self, app, expected: bytes):
        super().__init__(app)
        self.expected = expected

    async def dispatch(self, request, call_next):
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, self.expected):
            return JSONResponse({"jsonrpc": "2.0", "id": None, "error": {
                "code": -32001, "message": "missing or invalid API key (send 'Authorization: Bearer <key>')"}},
                status_code=401)
        return await call_next(request)


class JsonOnly(BaseHTTPMiddleware):
    """A request body that is not ``application/json`` gets A2A's ContentTypeNotSupportedError (-32005) with HTTP 415,
    the status A2A maps that error to; the SDK would read the body anyway and answer a parse error."""

    async def dispatch(self, request, call_next):
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if request.method == "POST" and media_type != "application/json":
            return JSONResponse({"jsonrpc": "2.0", "id": None, "error": {
                "code": -32005, "message": f"Content-Type {media_type or '(none)'} is not supported: send "
                                           "application/json"}}, status_code=415)
        return await call_next(request)


def serve_card(api: Api, card_for: Callable[[str], AgentCard]) -> None:
    """The service's card at both well-known paths, built by ``card_for(base url)`` for the version the client asks
    for (``A2A-Version`` header or parameter), cacheable; Last-Modified is the start, as the card comes of settings."""
    started = datetime.now(UTC).replace(microsecond=0)

    def agent_card():
        version = flask.request.headers.get(A2A_VERSION_HEADER) or flask.request.args.get(A2A_VERSION_HEADER)
        return cacheable(card_json(card_for(flask.request.host_url), version), started, A2A_VERSION_HEADER)

    for path, summary in zip(CARD_PATHS, ("A2A agent card", "A2A agent card (older path)"), strict=True):
        api.op("get", path, summary, response_model=CardSchema)(agent_card)


PRUNE_EVERY_S = 3600


def prune(db: Database, service: str, retain_days: float) -> int:
    """Delete this service's A2A tasks not updated for ``retain_days`` (0: keep them for ever), with the SDK's
    version and event rows of them: its cluster store's event log only grows."""
    if not retain_days:
        return 0
    cutoff = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=retain_days)  # the SDK stores naive UTC
    tasks, versions, events = (model.__table__ for model in (TaskModel, TaskVersionModel, TaskEventModel))
    with db.write() as c:
        ids = list(c.execute(sa.select(tasks.c.id).where(tasks.c.owner.like(f"{service}:%"),
                                                          tasks.c.last_updated < cutoff)).scalars())
        for table, key in ((events, events.c.task_id), (versions, versions.c.task_id), (tasks, tasks.c.id)):
            c.execute(table.delete().where(key.in_(ids)))
    return len(ids)


def mount(flask_app, turn: Turn, card: AgentCard, db: Database, service: str, api_key: str | None,
          retain_days: float = 0) -> None:
    """Serve A2A JSON-RPC at ``/a2a`` beside the Flask routes (a2wsgi runs the SDK's ASGI app in the WSGI server).

    Tasks live in the service's database (its migrations made the tables) in the SDK's cluster store: any replica
    answers ``tasks/get`` for a task another replica runs, and a ``tasks/cancel`` there is written to the shared
    state, which the running replica sees at its next update and stops. Each service sees only its own tasks (the
    owner is the service and the caller), even when several share one database."""
    engine = db.async_engine()
    store = VersionedDatabaseTaskStore(engine, create_table=False,
                                       owner_resolver=lambda context: f"{service}:{resolve_user_scope(context)}")
    handler = DefaultRequestHandler(agent_executor=TurnExecutor(turn), task_store=store, agent_card=card,
                                    event_stream=DatabaseTaskEventStream(engine, create_table=False))
    middleware = [Middleware(Bearer, expected=f"Bearer {api_key}".encode())] if api_key else []
    middleware.append(Middleware(JsonOnly))
    if retain_days:
        def prune_forever() -> None:
            while True:
                try:
                    prune(db, service, retain_days)
                except Exception:  # a database briefly away: the next round tries again
                    log.exception("pruning old A2A tasks failed")
                time.sleep(PRUNE_EVERY_S)

        threading.Thread(target=prune_forever, name="a2a-prune", daemon=True).start()
    asgi = Starlette(routes=create_jsonrpc_routes(handler, rpc_url="/", enable_v0_3_compat=True),
                     middleware=middleware)
    asgi_mount(flask_app, RPC_PATH, asgi)
