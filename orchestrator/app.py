"""The orchestrator's HTTP face: thin routes over :class:`Orchestrator`."""

from __future__ import annotations

import functools
import json
import threading
from pathlib import Path

from flask import Flask, request, send_from_directory

from common import a2a, asgi
from common.client import ExpertClient
from common.embedding import choose_embedder
from common.engine import start_engine
from common.openapi import Route, build_openapi
from common.protocol import IntegrateRequest, IntegrateResponse, RunRecord
from common.settings import OrchestratorSettings
from common.web import ApiError, check_id, error_response, install, metrics_response, parse_body, sse, static_file
from orchestrator import mcp
from orchestrator.experts import ExpertRegistry
from orchestrator.routing import Router
from orchestrator.runs import RunStore
from orchestrator.service import PANEL_SKILL, Orchestrator

STATIC = Path(__file__).with_name("static")
VERSION = "1.0.0"
ROUTES = [
    Route("post", "/integrate", "Run a task through the panel; stream=true answers with server-sent events",
          IntegrateRequest, IntegrateResponse, stream=True),
    Route("get", "/experts", "The experts, from their agent cards, with their health"),
    Route("get", "/runs", "Stored runs, newest first"),
    Route("get", "/runs/{run_id}", "One stored run", response=RunRecord),
    Route("get", "/.well-known/agent-card.json", "A2A agent card (the panel as one agent)"),
    Route("get", "/.well-known/agent.json", "A2A agent card (older path)"),
    Route("get", "/health", "Liveness"),
    Route("get", "/ready", "Readiness: the LLM is loaded and at least one expert answers"),
    Route("get", "/metrics", "Prometheus metrics", content_type="text/plain"),
    Route("get", "/openapi.json", "This document"),
    Route("get", "/", "The panel's web page", content_type="text/html"),
]


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
    metrics = install(app, settings, "orchestrator")
    embedder = functools.cache(choose_embedder)  # one model when the router and the judge name the same one
    router_factory = router_factory or (lambda: Router(embedder(settings.router_embedder)))
    judge_factory = judge_factory or (lambda: embedder(settings.judge_embedder))
    runs = RunStore(settings.data_dir / "runs.sqlite3", settings.retain_days)
    service = Orchestrator(settings, engine, experts, router_factory, runs, judge_factory)
    app.extensions["orchestrator"] = service
    app.extensions["engine"] = engine
    app.extensions["shutdown"] = [service.shutdown, engine.stop]  # on SIGTERM (common/serve.py)

    def card(base_url: str):
        return a2a.agent_card("Conclave panel", "A panel of expert agents that answers as one.",
                              settings.public_url or base_url, VERSION, [PANEL_SKILL], bool(settings.api_key))

    a2a.mount(app, service.a2a_turn, card(settings.public_url or f"http://{settings.host}"),
              settings.data_dir / "a2a-orchestrator.sqlite3", settings.api_key)

    asgi.mount(app, mcp.MCP_PATH, mcp.build(service, experts, settings, VERSION), lifespan=True)

    a2a.serve_card(app, card)

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/ready")
    def ready():
        ok, detail = service.readiness()
        if ok:
            return {"status": "ready", **detail, **engine.runtime}
        resp = error_response(503, f"not ready: llm {detail['llm']}; experts missing: "
                              f"{', '.join(detail['experts_missing']) or 'none'}", "service_unavailable", "not_ready",
                              retry_after=5)
        resp.set_data(json.dumps({**resp.get_json(), **detail}))  # the error shape, plus which parts are missing
        return resp

    @app.post("/integrate")
    def integrate():
        req = parse_body(IntegrateRequest)
        if req.stream:
            # a client that goes away cancels the run: no further expert is asked and nothing is composed
            cancelled = threading.Event()
            return sse(service.integrate_events(req, cancelled), on_close=cancelled.set)
        return service.integrate(req).model_dump()

    @app.get("/experts")
    def experts_list():
        return {"experts": [s.model_dump() for s in experts.statuses()]}

    @app.get("/runs")
    def runs_list():
        limit = request.args.get("limit", "50")
        if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= 500:  # "²" is a digit to isdigit
            raise ApiError(400, "limit must be a whole number from 1 to 500")
        return {"runs": [r.model_dump() for r in service.runs.list(int(limit))]}

    @app.get("/runs/<run_id>")
    def run_get(run_id: str):
        record = service.runs.get(check_id(run_id, "run id"))
        if record is None:
            raise ApiError(404, f"no run {run_id}", "not_found")
        return record.model_dump()

    @app.get("/metrics")
    def metrics_text():
        metrics.waiting.labels("orchestrator").set(getattr(engine, "waiting", 0))
        return metrics_response(metrics)

    openapi = build_openapi("Conclave orchestrator", VERSION, ROUTES, bool(settings.api_key))

    @app.get("/openapi.json")
    def openapi_json():
        return openapi

    @app.get("/")
    def index():
        return send_from_directory(STATIC, "index.html")

    @app.get("/static/<path:name>")
    def static(name: str):
        return static_file(name, STATIC)

    return app
