"""An expert agent's HTTP face: thin routes over :class:`ExpertService`."""

from __future__ import annotations

from pathlib import Path

from flask import Flask, request, send_from_directory

from agents.personas import get_persona
from agents.service import VERSION, ExpertService
from agents.sessions import SessionStore
from common.engine import make_engine
from common.openapi import Route, build_openapi
from common.protocol import (
    AgentCard,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatRequest,
    ChatResponse,
    ModelList,
    SessionHistory,
)
from common.settings import AgentSettings
from common.web import ApiError, check_id, install, parse_body, sse, static_file

STATIC = Path(__file__).with_name("static")
ROUTES = [
    Route("post", "/chat", "Ask the expert (seed-compatible); stream=true answers with server-sent events",
          ChatRequest, ChatResponse, stream=True),
    Route("get", "/sessions/{session_id}", "A session's history", response=SessionHistory),
    Route("delete", "/sessions/{session_id}", "Clear a session's history"),
    Route("get", "/v1/models", "OpenAI-compatible model list", response=ModelList),
    Route("post", "/v1/chat/completions", "OpenAI-compatible chat completions, with vLLM's structured_outputs",
          ChatCompletionRequest, ChatCompletionResponse, stream=True),
    Route("get", "/.well-known/agent-card.json", "A2A agent card", response=AgentCard),
    Route("get", "/.well-known/agent.json", "A2A agent card (older path)", response=AgentCard),
    Route("get", "/health", "Liveness"),
    Route("get", "/ready", "Readiness: 503 until the model has loaded"),
    Route("get", "/metrics", "Prometheus metrics", content_type="text/plain"),
]


def create_app(settings: AgentSettings | None = None, engine=None) -> Flask:
    """Build an expert. ``engine`` defaults to the one the settings name, started (loading) in the background."""
    settings = settings or AgentSettings()
    persona = get_persona(settings.persona, settings.personas_file)
    if engine is None:
        engine = make_engine(settings).start()
    app = Flask(__name__, static_folder=None)
    metrics = install(app, settings, persona.id)
    sessions = SessionStore(settings.data_dir / f"sessions-{persona.id}.sqlite3")
    service = ExpertService(settings, persona, engine, sessions, metrics)
    app.extensions["expert"] = service

    def require_ready() -> None:
        if not engine.ready:
            raise ApiError(503, engine.status, "service_unavailable", "not_ready", retry_after=5)

    @app.get("/health")
    def health():
        return {"status": "ok", "persona": persona.id}

    @app.get("/ready")
    def ready():
        require_ready()
        return {"status": "ready", "persona": persona.id, "model": service.model_name, **engine.runtime}

    def generate(model, stream_events, answer):
        """Validate, then answer whole or as server-sent events; a client that leaves cancels its generation."""
        req = parse_body(model)
        require_ready()
        if req.stream:
            events, gen = stream_events(req)
            return sse(events, on_close=gen.cancel)
        return answer(req).model_dump()

    @app.post("/chat")
    def chat():
        return generate(ChatRequest, service.chat_events, service.chat)

    @app.get("/sessions/<session_id>")
    def get_session(session_id: str):
        return service.history(check_id(session_id, "session id")).model_dump()

    @app.delete("/sessions/<session_id>")
    def delete_session(session_id: str):
        return {"session_id": session_id, "deleted_turns": service.clear(check_id(session_id, "session id"))}

    @app.get("/v1/models")
    def models():
        require_ready()
        return service.models().model_dump()

    @app.post("/v1/chat/completions")
    def chat_completions():
        return generate(ChatCompletionRequest, service.completion_chunks, service.completion)

    @app.get("/.well-known/agent-card.json")
    @app.get("/.well-known/agent.json")
    def agent_card():
        return service.card(request.host_url).model_dump()

    @app.get("/metrics")
    def metrics_text():
        metrics.waiting.labels(persona.id).set(engine.waiting)
        metrics.running.labels(persona.id).set(engine.running_rows)
        return metrics.render()

    openapi = build_openapi(f"Conclave expert: {persona.name}", VERSION, ROUTES, bool(settings.api_key))

    @app.get("/openapi.json")
    def openapi_json():
        return openapi

    @app.get("/")
    def index():
        return send_from_directory(STATIC, "chat.html")

    @app.get("/static/<path:name>")
    def static(name: str):
        return static_file(name, STATIC)

    return app
