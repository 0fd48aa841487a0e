"""The orchestrator's HTTP face: its domain blueprint (thin routes over :class:`Orchestrator`), the shared operations
blueprint, A2A and MCP, put together by ``create_app``."""

from __future__ import annotations

import functools
import socket
import threading
from pathlib import Path

from flask import Flask, current_app, request

from common import __version__, a2a, asgi
from common.client import ExpertClient
from common.database import Database
from common.embedding import choose_embedder
from common.engine import start_engine
from common.errors import BadRequest, NotFound
from common.protocol import ExpertList, IntegrateRequest, IntegrateResponse, RunList, RunRecord
from common.settings import OrchestratorSettings
from common.web import Api, check_id, install, operations, parse_body, sse
from orchestrator import mcp
from orchestrator.experts import ExpertRegistry
from orchestrator.routing import Router
from orchestrator.runs import RunStore
from orchestrator.service import PANEL_NAME, PANEL_SKILL, Orchestrator

STATIC = Path(__file__).with_name("static")
api = Api("panel", __name__)


def orchestrator() -> Orchestrator:
    return current_app.extensions["orchestrator"]


@api.op("post", "/integrate", "Run a task through the panel; stream=true answers with server-sent events",
        IntegrateRequest, IntegrateResponse, stream=True)
def integrate():
    req = parse_body(IntegrateRequest)
    if req.stream:
        # a client that goes away cancels the run: no further expert is asked and nothing is composed
        cancelled = threading.Event()
        return sse(orchestrator().integrate_events(req, cancelled), on_close=cancelled.set)
    return orchestrator().integrate(req).model_dump()


@api.op("get", "/experts", "The experts, from their agent cards, with their health", response_model=ExpertList)
def experts_list():
    return ExpertList(experts=orchestrator().registry.statuses()).model_dump()


@api.op("get", "/runs", "Stored runs, newest first", response_model=RunList)
def runs_list():
    limit = request.args.get("limit", "50")
    if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= 500:  # "²" is a digit to isdigit
        raise BadRequest("limit must be a whole number from 1 to 500")
    return RunList(runs=orchestrator().runs.list(int(limit))).model_dump()


@api.op("get", "/runs/{run_id}/events", "Follow a run, from any replica: server-sent events as /integrate's stream "
        "(start, each observation as it is stored, then final or error)", stream=True)
def run_events(run_id: str):
    return sse(event.wire() for event in orchestrator().follow(check_id(run_id, "run id")))


@api.op("get", "/runs/{run_id}", "One stored run", response_model=RunRecord)
def run_get(run_id: str):
    record = orchestrator().runs.get(check_id(run_id, "run id"))
    if record is None:
        raise NotFound(f"no run {run_id}")
    return record.model_dump()


def create_app(settings: OrchestratorSettings | None = None, llm=None, experts: ExpertRegistry | None = None,
               router_factory=None, judge_factory=None) -> Flask:
    """Build the orchestrator. ``llm`` is an engine (local or remote), ``experts`` a registry, ``router_factory`` the
    router and ``judge_factory`` the composer's embedder: all injectable."""
    settings = settings or OrchestratorSettings()
    engine = llm if llm is not None else start_engine(settings)
    if experts is None:
        experts = ExpertRegistry(settings.expert_url_list, lambda url: ExpertClient(
            url, settings.api_key, settings.connect_timeout_s, settings.read_timeout_s, settings.retries),
            settings.expert_transport, settings.expert_poll_s)
    app = Flask(__name__, static_folder=None)
    metrics = install(app, settings, "orchestrator", "Conclave orchestrator")
    embedder = functools.cache(choose_embedder)  # one model when the router and the judge name the same one
    router_factory = router_factory or (lambda: Router(embedder(settings.router_embedder)))
    judge_factory = judge_factory or (lambda: embedder(settings.judge_embedder))
    db = Database(settings.database("runs.sqlite3"))
    # a replica's name is stable across its restarts (host and port), so at start it fails what its last life left
    runs = RunStore(db, f"{socket.gethostname()}:{settings.orchestrator_port}", settings.retain_days)
    runs.start_heartbeat()
    service = Orchestrator(settings, engine, experts, router_factory, runs, judge_factory, metrics)
    app.extensions["orchestrator"] = service
    app.extensions["engine"] = engine
    app.extensions["shutdown"] = [service.shutdown, engine.stop, runs.stop]  # on SIGTERM (common/serve.py)

    def card(base_url: str):
        return a2a.agent_card(PANEL_NAME, "A panel of expert agents that answers as one.",
                              settings.public_url or base_url, __version__, [PANEL_SKILL], bool(settings.api_key))

    ops = operations(STATIC, "index.html", service.readiness,
                     ready_summary="Readiness: the LLM is loaded and at least one expert answers",
                     page_summary="The panel's web page",
                     gauges=lambda: metrics.waiting.labels("orchestrator").set(getattr(engine, "waiting", 0)))
    a2a.serve_card(ops, card)
    app.register_blueprint(ops)
    app.register_blueprint(api)
    a2a.mount(app, service.a2a_turn, card(settings.public_url or f"http://{settings.host}"),
              db, "orchestrator", settings.api_key, settings.retain_days)
    asgi.mount(app, mcp.MCP_PATH, mcp.build(service, experts, settings, __version__), lifespan=True)
    return app
