"""An expert agent's HTTP face: thin routes over :class:`ExpertService`."""

from __future__ import annotations

from pathlib import Path

from flask import Flask, request, send_from_directory

from agents.documents import MAX_DOCUMENT_BYTES, UnreadableDocument
from agents.knowledge import Knowledge, open_store
from agents.personas import get_persona
from agents.service import VERSION, ExpertService
from agents.sessions import SessionStore
from common import a2a
from common.embedding import choose_embedder
from common.engine import start_engine
from common.openapi import Route, build_openapi
from common.protocol import (
    AgentCard,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatRequest,
    ChatResponse,
    IngestResult,
    KnowledgeDocument,
    KnowledgeList,
    KnowledgeUpload,
    ModelList,
    SessionHistory,
)
from common.settings import AgentSettings
from common.web import ApiError, check_id, install, metrics_response, parse_body, sse, static_file

STATIC = Path(__file__).with_name("static")
ROUTES = [
    Route("post", "/chat", "Ask the expert (seed-compatible); stream=true answers with server-sent events",
          ChatRequest, ChatResponse, stream=True),
    Route("get", "/sessions/{session_id}", "A session's history", response=SessionHistory),
    Route("delete", "/sessions/{session_id}", "Clear a session's history"),
    Route("get", "/v1/models", "OpenAI-compatible model list", response=ModelList),
    Route("post", "/v1/chat/completions", "OpenAI-compatible chat completions, with vLLM's structured_outputs",
          ChatCompletionRequest, ChatCompletionResponse, stream=True),
    Route("post", "/knowledge", "Add a document to the expert's knowledge base: JSON {name, content} or a multipart "
          "'file'; replaces an earlier version of the same name", KnowledgeUpload, IngestResult),
    Route("get", "/knowledge", "The documents in the knowledge base", response=KnowledgeList),
    Route("delete", "/knowledge/{document_id}", "Remove a document and its chunks"),
    Route("get", "/.well-known/agent-card.json", "A2A agent card", response=AgentCard),
    Route("get", "/.well-known/agent.json", "A2A agent card (older path)", response=AgentCard),
    Route("get", "/health", "Liveness"),
    Route("get", "/ready", "Readiness: 503 until the model has loaded"),
    Route("get", "/metrics", "Prometheus metrics", content_type="text/plain"),
    Route("get", "/openapi.json", "This document"),
    Route("get", "/", "The expert's web page", content_type="text/html"),
]


def create_app(settings: AgentSettings | None = None, engine=None, embedder=None) -> Flask:
    """Build an expert. ``engine`` defaults to the one the settings name, started (loading) in the background;
    ``embedder`` (a factory of a texts -> vectors function) defaults to MiniLM, loaded when first needed."""
    settings = settings or AgentSettings()
    persona = get_persona(settings.persona, settings.personas_file)
    if engine is None:
        engine = start_engine(settings)
    app = Flask(__name__, static_folder=None)
    metrics = install(app, settings, persona.id)
    sessions = SessionStore(settings.data_dir / f"sessions-{persona.id}.sqlite3", settings.retain_days)
    knowledge = Knowledge(open_store(settings.knowledge_store, settings.data_dir, persona.id),
                          embedder or (lambda: choose_embedder(settings.knowledge_embedder)), settings.knowledge_top_k,
                          settings.knowledge_min_score)
    knowledge.start(persona.knowledge_files(), persona.catalog_dir)
    service = ExpertService(settings, persona, engine, sessions, metrics, knowledge)
    app.extensions["expert"] = service
    app.extensions["engine"] = engine
    # on SIGTERM (common/serve.py): the engine fails what it is decoding and what waits, so a /chat stream in flight
    # ends with an error event at once instead of being cut when gunicorn's grace period runs out
    app.extensions["shutdown"] = [engine.stop]

    def require_ready() -> None:
        if not engine.ready:
            raise ApiError(503, engine.status, "service_unavailable", "not_ready", retry_after=5)
        if not knowledge.ready.is_set():
            raise ApiError(503, "the knowledge base is loading", "service_unavailable", "not_ready", retry_after=2)
        if knowledge.error:
            raise ApiError(503, f"the knowledge base failed to load: {knowledge.error}", "service_unavailable",
                           "not_ready")

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

    @app.post("/knowledge")
    def add_knowledge():
        require_ready()
        request.max_content_length = MAX_DOCUMENT_BYTES + 64 * 1024  # a document, not a chat message
        if request.mimetype == "multipart/form-data":
            upload = request.files.get("file")
            if upload is None or not upload.filename:
                raise ApiError(400, "send the document as a multipart field named 'file'")
            name, data = upload.filename, upload.read()
        else:
            body = parse_body(KnowledgeUpload)
            name, data = body.name, body.content.encode("utf-8")
        try:
            result = knowledge.ingest(name, data)
        except UnreadableDocument as exc:
            status = 415 if "unsupported file type" in str(exc) else 413 if "byte limit" in str(exc) else 400
            raise ApiError(status, str(exc)) from None
        return IngestResult(**vars(result)).model_dump(), 200 if result.unchanged else 201

    @app.get("/knowledge")
    def list_knowledge():
        docs = [KnowledgeDocument(**vars(d)) for d in knowledge.store.documents()]
        return KnowledgeList(documents=docs, chunks=knowledge.store.count()).model_dump()

    @app.delete("/knowledge/<document_id>")
    def delete_knowledge(document_id: str):
        if not knowledge.store.delete(check_id(document_id, "document id")):
            raise ApiError(404, f"no document {document_id!r} in the knowledge base", "not_found")
        return {"id": document_id, "deleted": True}

    a2a.serve_card(app, service.card_proto)

    @app.get("/metrics")
    def metrics_text():
        metrics.waiting.labels(persona.id).set(engine.waiting)
        metrics.running.labels(persona.id).set(engine.running_rows)
        return metrics_response(metrics)

    a2a.mount(app, service.a2a_turn, service.card_proto(settings.public_url or f"http://{settings.host}"),
              settings.data_dir / f"a2a-{persona.id}.sqlite3", settings.api_key)

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
