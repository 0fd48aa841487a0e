"""An expert agent's HTTP face: its domain blueprint (thin routes over :class:`ExpertService`) and the shared
operations blueprint, put together by ``create_app``."""

from __future__ import annotations

from pathlib import Path

from flask import Flask, current_app, request

from agents.documents import MAX_DOCUMENT_BYTES
from agents.knowledge import Knowledge, open_store
from agents.personas import get_persona
from agents.service import ExpertService
from agents.sessions import SessionStore
from common import a2a, tracing
from common.database import Database
from common.embedding import choose_embedder
from common.engine import start_engine
from common.errors import BadRequest
from common.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatRequest,
    ChatResponse,
    IngestResult,
    KnowledgeList,
    KnowledgeUpload,
    ModelList,
    SessionHistory,
)
from common.settings import AgentSettings
from common.web import Api, check_id, install, operations, parse_body, sse

STATIC = Path(__file__).with_name("static")
api = Api("expert", __name__)


def expert() -> ExpertService:
    return current_app.extensions["expert"]


def generate(model, stream_events, answer):
    """Validate, then answer whole or as server-sent events; a client that leaves cancels its generation."""
    req = parse_body(model)
    expert().require_ready()
    if req.stream:
        events, gen = stream_events(req)
        return sse(events, on_close=gen.cancel)
    return answer(req).model_dump()


@api.op("post", "/chat", "Ask the expert (seed-compatible); stream=true answers with server-sent events",
        ChatRequest, ChatResponse, stream=True)
def chat():
    return generate(ChatRequest, expert().chat_events, expert().chat)


@api.op("get", "/sessions/{session_id}", "A session's history", response_model=SessionHistory)
def get_session(session_id: str):
    return expert().history(check_id(session_id, "session id")).model_dump()


@api.op("delete", "/sessions/{session_id}", "Clear a session's history")
def delete_session(session_id: str):
    return {"session_id": session_id, "deleted_turns": expert().clear(check_id(session_id, "session id"))}


@api.op("get", "/v1/models", "OpenAI-compatible model list", response_model=ModelList)
def models():
    expert().require_ready()
    return expert().models().model_dump()


@api.op("post", "/v1/chat/completions", "OpenAI-compatible chat completions, with vLLM's structured_outputs",
        ChatCompletionRequest, ChatCompletionResponse, stream=True)
def chat_completions():
    return generate(ChatCompletionRequest, expert().completion_chunks, expert().completion)


@api.op("post", "/knowledge", "Add a document to the expert's knowledge base: JSON {name, content} or a multipart "
        "'file'; replaces an earlier version of the same name", KnowledgeUpload, IngestResult)
def add_knowledge():
    expert().require_ready()
    request.max_content_length = MAX_DOCUMENT_BYTES + 64 * 1024  # a document, not a chat message
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None or not upload.filename:
            raise BadRequest("send the document as a multipart field named 'file'")
        name, data = upload.filename, upload.read()
    else:
        body = parse_body(KnowledgeUpload)
        name, data = body.name, body.content.encode("utf-8")
    result = expert().ingest(name, data)
    return result.model_dump(), 200 if result.unchanged else 201


@api.op("get", "/knowledge", "The documents in the knowledge base", response_model=KnowledgeList)
def list_knowledge():
    return expert().documents().model_dump()


@api.op("delete", "/knowledge/{document_id}", "Remove a document and its chunks")
def delete_knowledge(document_id: str):
    expert().forget(check_id(document_id, "document id"))
    return {"id": document_id, "deleted": True}


def create_app(settings: AgentSettings | None = None, engine=None, embedder=None) -> Flask:
    """Build an expert. ``engine`` defaults to the one the settings name, started (loading) in the background;
    ``embedder`` (a factory of a texts -> vectors function) defaults to MiniLM, loaded when first needed."""
    settings = settings or AgentSettings()
    persona = get_persona(settings.persona, settings.personas_file)
    if engine is None:  # a persona with its own adapter asks the shared server for it by name
        engine = start_engine(settings.model_copy(update={"remote_model": persona.remote_model})
                              if persona.remote_model and settings.remote_url else settings)
    app = Flask(__name__, static_folder=None)
    metrics = install(app, settings, persona.id, f"Conclave expert: {persona.name}")
    db = Database(settings.database(f"sessions-{persona.id}.sqlite3"))
    sessions = SessionStore(db, settings.retain_days)
    knowledge = Knowledge(open_store(settings.knowledge_url, settings.data_dir, persona.id, opened=db),
                          embedder or (lambda: choose_embedder(settings.knowledge_embedder)), settings.knowledge_top_k,
                          settings.knowledge_min_score)
    knowledge.start(persona.knowledge_files(), persona.catalog_dir)
    # each generation a chat span, child of the caller's consultation, when tracing is on (install configured it)
    service = ExpertService(settings, persona, tracing.Observed(engine) if tracing.enabled() else engine, sessions,
                            metrics, knowledge)
    app.extensions["expert"] = service
    app.extensions["engine"] = engine
    # on SIGTERM (common/serve.py): the engine fails what it is decoding and what waits, so a /chat stream in flight
    # ends with an error event at once instead of being cut when gunicorn's grace period runs out
    app.extensions["shutdown"] = [engine.stop]

    def gauges() -> None:
        metrics.waiting.labels(persona.id).set(engine.waiting)
        metrics.running.labels(persona.id).set(engine.running_rows)

    ops = operations(STATIC, "chat.html", service.readiness, ready_summary="Readiness: 503 until the model has loaded",
                     page_summary="The expert's web page", health=lambda: {"status": "ok", "persona": persona.id},
                     gauges=gauges)
    a2a.serve_card(ops, service.card_proto)
    app.register_blueprint(ops)
    app.register_blueprint(api)
    a2a.mount(app, service.a2a_turn, service.card_proto(settings.public_url or f"http://{settings.host}"),
              db, persona.id, settings.api_key, settings.retain_days)
    return app
