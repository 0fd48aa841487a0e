"""The serving layer of an expert: protocol <-> engine, sessions and the persona. No Flask in here."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain

from agents.knowledge import Knowledge, Passage
from agents.personas import Persona
from agents.sessions import SessionStore
from common import __version__, language
from common.a2a import Progress, agent_card
from common.engine import tools
from common.engine.types import Engine, EngineError, Generation, GenerationResult
from common.errors import NotFound, StorageFull, Unavailable
from common.metrics import Metrics
from common.protocol import (
    AnswerLanguage,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    ChoiceMessage,
    ChunkChoice,
    CompletionChoice,
    DeltaMessage,
    FunctionCall,
    IngestResult,
    KnowledgeDocument,
    KnowledgeList,
    ModelCard,
    ModelList,
    SessionHistory,
    Source,
    Timings,
    ToolCallDelta,
    ToolCallOut,
    Usage,
    error_event,
)
from common.settings import AgentSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Turn:
    """A /chat question under way: its generation, the passages it was given, the language asked for, and how long
    retrieving them took."""

    gen: Generation
    passages: list[Passage]
    answer_language: AnswerLanguage
    retrieval_ms: int


@dataclass
class ExpertService:
    settings: AgentSettings
    persona: Persona
    engine: Engine
    sessions: SessionStore
    metrics: Metrics
    knowledge: Knowledge | None = None

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    # ---- readiness --------------------------------------------------------------------------------------------
    def require_ready(self) -> None:
        """Raise Unavailable (503) until the model and the knowledge base have loaded."""
        if not self.engine.ready:
            raise Unavailable(self.engine.status, "not_ready", retry_after=5)
        if self.knowledge is not None and not self.knowledge.ready.is_set():
            raise Unavailable("the knowledge base is loading", "not_ready", retry_after=2)
        if self.knowledge is not None and self.knowledge.error:
            raise Unavailable(f"the knowledge base failed to load: {self.knowledge.error}", "not_ready")

    def readiness(self) -> dict:
        self.require_ready()
        return {"status": "ready", "persona": self.persona.id, "model": self.model_name, **self.engine.runtime}

    # ---- /chat ------------------------------------------------------------------------------------------------
    def _start_chat(self, req: ChatRequest) -> _Turn:
        """The question, with the passages retrieved for it in the same turn: the system message stays the persona's
        alone, so its cached prefix serves every request. A question not in English asks for the answer in its
        language where the model writes it, else in English."""
        started = time.perf_counter()
        passages = self.knowledge.retrieve(req.intent) if req.knowledge and self.knowledge else []
        retrieval_ms = int((time.perf_counter() - started) * 1000)
        question = f"{Knowledge.prompt(passages)}\n\nQuestion: {req.intent}" if passages else req.intent
        answer_language = self._answer_language(req.intent)
        if answer_language.question != "en":
            question += f"\n\nAnswer in {language.name(answer_language.answer)}."
        messages = [ChatMessage(role="user", content=question)]
        if req.session_id:
            keep = req.max_history_length or self.settings.max_history_length
            history = self.sessions.history(self.persona.id, req.session_id, keep)
            messages = [ChatMessage(role=t.role, content=t.content) for t in history] + messages
        completion = ChatCompletionRequest(
            messages=messages,
            max_new_tokens=req.max_new_tokens or self.settings.default_max_new_tokens,
            min_new_tokens=req.min_new_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            repetition_penalty=req.repetition_penalty or self.settings.default_repetition_penalty,
            stop=req.stop,
            loop_guard=req.loop_guard,
            end_at_sentence=True,
        )
        return _Turn(self._submit(completion, req.timeout_s), passages, answer_language, retrieval_ms)

    def _answer_language(self, question: str) -> AnswerLanguage:
        asked, writes = language.detect(question), self.settings.model_language_list
        if asked in writes:
            return AnswerLanguage(question=asked, answer=asked)
        return AnswerLanguage(question=asked, answer="en", note=(
            f"the model writes {', '.join(language.name(c) for c in writes)}, not {language.name(asked)} "
            "(MODEL_LANGUAGES): answered in English"))

    def _submit(self, completion: ChatCompletionRequest, timeout_s: float | None = None) -> Generation:
        generation_request = completion.to_generation_request(
            self.persona.system_prompt,
            self.settings.default_max_new_tokens,
            self.settings.max_new_tokens_limit,
            min(self.settings.request_timeout_s, timeout_s or self.settings.request_timeout_s),
        )
        return self.engine.submit(generation_request)

    def _chat_response(self, req: ChatRequest, turn: _Turn) -> ChatResponse:
        result, passages = turn.gen.result(), turn.passages
        text, sources = result.text, []
        started = time.perf_counter()
        if passages and self.knowledge:
            grounded = self.knowledge.ground(req.intent, result.text, passages)
            text = grounded.text
            sources = _sources(passages, grounded.cited)
        first_token_s = result.first_token_s
        timings = Timings(retrieval_ms=turn.retrieval_ms, queue_ms=int(result.queue_s * 1000),
                          first_token_ms=None if first_token_s is None else int(first_token_s * 1000),
                          decode_ms=0 if first_token_s is None else int((result.elapsed_s - first_token_s) * 1000),
                          grounding_ms=int((time.perf_counter() - started) * 1000))
        stored, warning = True, None
        if req.session_id:
            try:
                self.sessions.append_exchange(self.persona.id, req.session_id, req.intent, text)
            except StorageFull as exc:  # the answer is made: give it, and say it was not kept
                log.error("session %s: %s", req.session_id, exc)
                stored, warning = False, str(exc)
        self.metrics.tokens.labels(self.metrics.service).inc(result.completion_tokens)
        return ChatResponse(
            response=text,
            persona=self.persona.id,
            model=self.model_name,
            session_id=req.session_id,
            usage=_usage(result),
            finish_reason=result.finish_reason,
            elapsed_ms=int(result.elapsed_s * 1000),
            sources=sources,
            stored=stored,
            warning=warning,
            language=turn.answer_language,
            timings=timings,
        )

    def chat(self, req: ChatRequest) -> ChatResponse:
        return self._chat_response(req, self._start_chat(req))

    def chat_events(self, req: ChatRequest) -> tuple[Iterator[tuple[str, object]], Generation]:
        """SSE events for a streamed /chat: ``sources`` (the passages retrieved, before any text), ``delta`` per text
        piece, then ``done`` (the full response, with its citation marks) or ``error``."""
        turn = self._start_chat(req)

        def events() -> Iterator[tuple[str, object]]:
            try:
                if turn.passages:
                    yield "sources", {"sources": [s.model_dump() for s in _sources(turn.passages, [])]}
                for delta in turn.gen:
                    yield "delta", {"delta": delta}
                response = self._chat_response(req, turn)
                yield "done", response.model_dump()
                if not response.stored:  # the stream ends with the reason the session did not keep it
                    yield "error", error_event(StorageFull(response.warning or "", "storage_full"))
            except EngineError as exc:
                yield "error", error_event(exc)

        return events(), turn.gen

    # ---- sessions ---------------------------------------------------------------------------------------------
    def history(self, session_id: str) -> SessionHistory:
        turns = self.sessions.history(self.persona.id, session_id)
        return SessionHistory(session_id=session_id, persona=self.persona.id, turns=turns)

    def clear(self, session_id: str) -> int:
        return self.sessions.clear(self.persona.id, session_id)

    # ---- knowledge ------------------------------------------------------------------------------------------------
    def ingest(self, name: str, data: bytes) -> IngestResult:
        """Add a document (UnreadableDocument, a 400/413/415, when it cannot be read: nothing is stored)."""
        return IngestResult(**vars(self._knowledge().ingest(name, data)))

    def documents(self) -> KnowledgeList:
        store = self._knowledge().store
        return KnowledgeList(documents=[KnowledgeDocument(**vars(d)) for d in store.documents()], chunks=store.count())

    def forget(self, document_id: str) -> None:
        if not self._knowledge().store.delete(document_id):
            raise NotFound(f"no document {document_id!r} in the knowledge base")

    def _knowledge(self) -> Knowledge:
        if self.knowledge is None:
            raise Unavailable("this expert has no knowledge base", "no_knowledge")
        return self.knowledge

    # ---- OpenAI-compatible ------------------------------------------------------------------------------------
    def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=self.model_name), ModelCard(id=self.persona.id)])

    def completion(self, req: ChatCompletionRequest) -> ChatCompletionResponse:
        result = self._submit(req).result()
        self.metrics.tokens.labels(self.metrics.service).inc(result.completion_tokens)
        content, calls = tools.split(result.text) if req.calls_tools else (result.text, [])
        message = ChoiceMessage(content=(content or None) if calls else content,
                                tool_calls=[_call_out(c) for c in calls] or None)
        return ChatCompletionResponse(
            model=self.model_name,
            choices=[CompletionChoice(message=message, finish_reason="tool_calls" if calls else result.finish_reason)],
            usage=_usage(result),
        )

    def completion_chunks(self, req: ChatCompletionRequest) -> tuple[Iterator[tuple[None, object]], Generation]:
        """OpenAI streaming: a role chunk, content chunks, a finish chunk (with usage), then ``[DONE]``."""
        gen = self._submit(req)
        chunk_id = f"chatcmpl-{uuid.uuid4().hex}"

        def chunk(delta: DeltaMessage, finish: str | None = None, usage: Usage | None = None) -> str:
            body = ChatCompletionChunk(id=chunk_id, model=self.model_name, usage=usage,
                                       choices=[ChunkChoice(delta=delta, finish_reason=finish)])
            return body.model_dump_json()

        def deltas() -> Iterator[DeltaMessage]:
            """Text as it comes; with tools, each call as one delta once it is complete (OpenAI clients add up the
            pieces of a call by its index, and a whole call is one piece)."""
            if not req.calls_tools:
                yield from (DeltaMessage(content=delta) for delta in gen)
                return
            reader = tools.CallReader()
            for part in chain((p for delta in gen for p in reader.feed(delta)), reader.close()):
                if isinstance(part, str):
                    yield DeltaMessage(content=part)
                else:
                    calls.append(part)
                    yield DeltaMessage(tool_calls=[ToolCallDelta(index=len(calls) - 1, **_call_out(part).model_dump())])

        calls: list[tools.ToolCall] = []

        def events() -> Iterator[tuple[None, object]]:
            try:
                yield None, chunk(DeltaMessage(role="assistant", content=""))
                for delta in deltas():
                    yield None, chunk(delta)
                result = gen.result()
                self.metrics.tokens.labels(self.metrics.service).inc(result.completion_tokens)
                yield None, chunk(DeltaMessage(), "tool_calls" if calls else result.finish_reason, _usage(result))
            except EngineError as exc:
                yield None, error_event(exc)
            yield None, "[DONE]"

        return events(), gen

    # ---- discovery --------------------------------------------------------------------------------------------
    def card_proto(self, base_url: str):
        """The A2A agent card: the JSON-RPC interface at /a2a, and our own endpoints in the Conclave extension."""
        return agent_card(
            self.persona.name, self.persona.description, self.settings.public_url or base_url, __version__,
            self.persona.skills, bool(self.settings.api_key),
            {"persona": self.persona.id, "chat": "/chat", "openai": "/v1", "model": self.model_name})

    # ---- A2A ------------------------------------------------------------------------------------------------------
    def a2a_turn(self, text: str, context_id: str, cancelled: threading.Event) -> Iterator[Progress]:
        """One A2A message as a /chat turn: the context is the session, so a conversation keeps its history. Without
        sources the answer streams as it is decoded; with them it arrives whole, once its citations are marked."""
        req = ChatRequest(intent=text, session_id=context_id[:128], stream=True)
        events, gen = self.chat_events(req)
        threading.Thread(target=_cancel_when, args=(cancelled, gen), daemon=True).start()
        grounded = streamed = False
        for event, data in events:
            if event == "sources":
                grounded = True
                yield Progress("status", f"answering from {len(data['sources'])} passages of the knowledge base")
            elif event == "delta" and not grounded:
                streamed = True
                yield Progress("delta", data["delta"])
            elif event == "done":  # the answer ends the task, whether or not the session could keep it
                if grounded or not streamed:
                    yield Progress("delta", data["response"])
                return
            elif event == "error":
                raise RuntimeError(data["error"]["message"])


def _cancel_when(cancelled: threading.Event, gen: Generation) -> None:
    """Cancel the generation when its A2A task is cancelled; give up watching once it is done."""
    while not cancelled.wait(0.5):
        if gen.done:
            return
    gen.cancel()


def _sources(passages: list[Passage], cited: list[int]) -> list[Source]:
    return [Source(number=i, document=p.document, title=p.title, chunk=p.chunk, score=p.score, cited=i in cited,
                   text=p.text) for i, p in enumerate(passages, 1)]


def _call_out(call: tools.ToolCall) -> ToolCallOut:
    return ToolCallOut(id=call.id, function=FunctionCall(name=call.name, arguments=call.arguments))


def _usage(result: GenerationResult) -> Usage:
    return Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                 total_tokens=result.prompt_tokens + result.completion_tokens)

