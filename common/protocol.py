"""Every wire schema of Conclave in one place: /chat, sessions, OpenAI chat completions, agent cards, /integrate,
errors.

Requests validate with ``Model.model_validate(body)``; a request turns itself into engine parameters with
``to_generation_request``. OpenAI-shaped models allow unknown fields, as OpenAI does; our own ignore them.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.engine.tools import tool_constraint
from common.engine.types import Constraint, GenerationRequest
from common.errors import ConclaveError

MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 64
MAX_PATTERN_CHARS = 16_384  # a grammar or a regex
MAX_SCHEMA_CHARS = 32_768  # a JSON schema, serialised
MAX_CHOICES = 256
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"  # session and run ids, in bodies and in paths


class Lenient(BaseModel):
    """Our own request models: unknown fields are ignored, as the seed's clients send extras; types are strict
    (``"stream": 0`` or ``"temperature": false`` is a 400, not a guess)."""

    model_config = ConfigDict(extra="ignore", strict=True)


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


# ---- errors --------------------------------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, not_found, server_error, ...")
    code: str | int | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_detail(exc: Exception) -> ErrorDetail:
    """An error as the ``error`` object of every error body and error event (any other exception: server_error)."""
    if isinstance(exc, ConclaveError):
        return ErrorDetail(message=str(exc), type=exc.type, code=exc.code)
    return ErrorDetail(message=str(exc), type="server_error", code=getattr(exc, "code", None))


def error_event(exc: Exception) -> dict:
    """The data of a stream's ``error`` event: ``{"error": {...}}``, the shape of every error body."""
    return {"error": error_detail(exc).model_dump()}


# ---- generation parameters shared by /chat and /v1/chat/completions ------------------------------------------------
class SamplingFields(BaseModel):
    model_config = ConfigDict(strict=True)

    max_new_tokens: int | None = Field(None, ge=1, description="Clamped to the server's MAX_NEW_TOKENS_LIMIT.")
    min_new_tokens: int = Field(0, ge=0, le=4096, description="Force at least this many tokens (benchmarks).")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 decodes greedily.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, ge=1.0, le=2.0, description="Above 1 discourages loops.")
    stop: list[str] | str | None = Field(None, description="Up to 8 strings that end the answer; not included.")

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: list[str] | str | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP_STRINGS or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"stop takes at most {MAX_STOP_STRINGS} non-empty strings of up to {MAX_STOP_CHARS} "
                             "characters")
        return stops


# ---- /chat ---------------------------------------------------------------------------------------------------------
class ChatRequest(Lenient, SamplingFields):
    """The seed's request: ``{"intent": "..."}``, plus optional generation controls and a session."""

    intent: str = Field(min_length=1, max_length=32_000, description="The question or instruction for the expert.")
    session_id: str | None = Field(None, min_length=1, max_length=128, pattern=ID_PATTERN)
    timeout_s: float | None = Field(None, gt=0, le=86_400, description="Give up generating after this many seconds "
                                    "(504), within the expert's own REQUEST_TIMEOUT_S: a caller with a deadline "
                                    "passes what is left of it, so no answer is generated that nobody waits for.")
    max_history_length: int | None = Field(None, ge=2, le=20, description="Past exchanges sent as context.")
    stream: bool = False
    loop_guard: bool = Field(True, description="Stop the answer when it starts repeating itself (one copy of what "
                             "repeats is kept). An answer cut by max_new_tokens always ends at a complete sentence.")
    knowledge: bool = Field(True, description="Retrieve passages from the expert's knowledge base, answer from them "
                            "and cite them as [n]; false answers from the model alone.")

    @field_validator("intent")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("intent must not be blank")
        return value


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Timings(BaseModel):
    """Where an expert's answer spent its time, in ms from the request's arrival (retrieval) or its submission to the
    engine (the rest): what a slow consultation was waiting for."""

    retrieval_ms: int = Field(0, description="Embedding the question and searching the knowledge base.")
    queue_ms: int = Field(0, description="Waiting for the engine: a free batch row (local) or the server (remote).")
    first_token_ms: int | None = Field(None, description="Until the first text: the wait plus the prompt's prefill.")
    decode_ms: int = Field(0, description="From the first text to the end of the answer.")
    grounding_ms: int = Field(0, description="Checking the answer against its sources and citing them.")


class Source(BaseModel):
    """A passage of the expert's knowledge base that was put before the model; [number] in the answer cites it."""

    number: int
    document: str = Field(description="The document's id (GET /knowledge lists them).")
    title: str
    chunk: int = Field(description="Which chunk of the document, from 0.")
    score: float = Field(description="Cosine similarity of the passage to the question.")
    cited: bool = Field(description="Whether the answer cites it.")
    text: str


class AnswerLanguage(BaseModel):
    question: str = Field(description="The question's language (ISO 639-1).")
    answer: str = Field(description="The language the answer was asked for.")
    note: str | None = Field(None, description="Why they differ: the model does not write the question's language.")


class ChatResponse(BaseModel):
    response: str
    persona: str
    model: str
    session_id: str | None
    usage: Usage
    finish_reason: str
    elapsed_ms: int
    sources: list[Source] = Field([], description="The passages retrieved for the question, numbered as cited.")
    stored: bool = Field(True, description="False when the exchange could not be added to the session (a full "
                         "disk): the answer is still given, and `warning` says why.")
    warning: str | None = None
    language: AnswerLanguage | None = None
    timings: Timings | None = None


class KnowledgeUpload(Lenient):
    """A document given as text: its file name says its type (.md, .txt, .html)."""

    name: str = Field(min_length=1, max_length=255)
    content: str = Field(min_length=1)


class KnowledgeDocument(BaseModel):
    id: str
    source: str
    title: str
    chunks: int
    bytes: int
    added_at: float


class KnowledgeList(BaseModel):
    documents: list[KnowledgeDocument]
    chunks: int


class IngestResult(BaseModel):
    id: str
    source: str
    title: str
    chunks: int
    replaced: bool = Field(description="An earlier version of the same source was replaced.")
    unchanged: bool = Field(False, description="The same bytes were already stored: nothing was done.")


class Turn(BaseModel):
    role: Literal["user", "assistant"]
    content: str
    created_at: float


class SessionHistory(BaseModel):
    session_id: str
    persona: str
    turns: list[Turn]


# ---- OpenAI chat completions (the subset vLLM serves, plus its structured_outputs) ---------------------------------
class ChatMessage(OpenAIModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = Field(None, description="An assistant turn's calls, as we returned them.")
    tool_call_id: str | None = Field(None, description="A tool turn: which call this is the result of.")

    def turn(self) -> dict[str, Any]:
        """The message as the engine takes it: one system role, text content, calls and results kept."""
        turn: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.tool_calls:
            turn["tool_calls"] = self.tool_calls
        if self.tool_call_id:
            turn["tool_call_id"] = self.tool_call_id
        return turn

    @field_validator("content")
    @classmethod
    def _text_parts(cls, value):
        """Content parts are OpenAI's: a text part's text is a string (an image part is let through and ignored)."""
        for part in value if isinstance(value, list) else []:
            if part.get("type", "text") == "text" and not isinstance(part.get("text"), str):
                raise ValueError("a text content part needs 'text' as a string")
        return value

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return "".join(p["text"] for p in self.content if p.get("type", "text") == "text")
        return self.content or ""


class StructuredOutputs(OpenAIModel):
    """vLLM's ``structured_outputs``: exactly one of the four."""

    grammar: str | None = None
    regex: str | None = None
    choice: list[str] | None = None
    json_schema: dict[str, Any] | str | bool | None = Field(None, alias="json")

    @model_validator(mode="after")
    def _bounded(self) -> StructuredOutputs:
        """Constraints compile on the request thread: their size is capped so one request cannot stall the server."""
        for name, text in (("grammar", self.grammar), ("regex", self.regex)):
            if text is not None and len(text) > MAX_PATTERN_CHARS:
                raise ValueError(f"structured_outputs.{name} is over {MAX_PATTERN_CHARS} characters")
        if self.choice is not None and (len(self.choice) > MAX_CHOICES or any(len(c) > 1024 for c in self.choice)):
            raise ValueError(f"structured_outputs.choice takes up to {MAX_CHOICES} choices of up to 1024 characters")
        if self.json_schema is not None and len(json.dumps(self.json_schema)) > MAX_SCHEMA_CHARS:
            raise ValueError(f"structured_outputs.json is over {MAX_SCHEMA_CHARS} characters")
        return self

    def to_constraint(self) -> Constraint | None:
        given = [(k, v) for k, v in (("grammar", self.grammar), ("regex", self.regex), ("choice", self.choice),
                                      ("json", self.json_schema)) if v is not None]
        if len(given) > 1:
            raise ValueError("structured_outputs takes only one of grammar, regex, choice, json")
        return Constraint(given[0][0], given[0][1]) if given else None  # type: ignore[arg-type]


class ResponseFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _bounded(self) -> ResponseFormat:
        if self.json_schema is not None and len(json.dumps(self.json_schema)) > MAX_SCHEMA_CHARS:
            raise ValueError(f"response_format.json_schema is over {MAX_SCHEMA_CHARS} characters")
        return self

    def to_constraint(self) -> Constraint | None:
        if self.type == "json_object":
            return Constraint("json", True)
        if self.type == "json_schema":
            if not self.json_schema or "schema" not in self.json_schema:
                raise ValueError("response_format json_schema needs json_schema.schema")
            return Constraint("json", self.json_schema["schema"])
        return None


class FunctionDef(OpenAIModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="The arguments' JSON schema.")
    strict: bool | None = None


class ToolDef(OpenAIModel):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(OpenAIModel):
    name: str


class NamedToolChoice(OpenAIModel):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(OpenAIModel, SamplingFields):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="Only one choice is generated.")
    structured_outputs: StructuredOutputs | None = None
    response_format: ResponseFormat | None = None
    tools: list[ToolDef] | None = Field(None, max_length=128, description="Functions the model may call; calls "
                                        "are decoded under a grammar from their schemas, so they are always valid.")
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description="auto (the default with tools): text or calls; required: at least one call; a named "
        "function: exactly that call; none: text only.")
    parallel_tool_calls: bool = Field(True, description="false: at most one call per answer.")
    loop_guard: bool = Field(False, description="Conclave's extension: stop the answer when it starts repeating "
                             "itself. Ignored under a constraint, whose output is kept whole.")
    end_at_sentence: bool = Field(False, description="Conclave's extension: an answer cut by the token budget ends "
                                  "at its last complete sentence (finish_reason stays 'length').")

    @model_validator(mode="after")
    def _one_constraint(self) -> ChatCompletionRequest:
        output = self.output_constraint()  # raises ValueError -> 400 when both are given or one is malformed
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) < len(names):
            raise ValueError("tools: each function needs a name of its own")
        if self.tool_choice not in (None, "none", "auto") and not names:
            raise ValueError("tool_choice asks for a call, but no tools are given")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise ValueError(f"tool_choice names {self.tool_choice.function.name!r}, which is not among the tools")
        if output and self.calls_tools:
            raise ValueError("tools cannot be combined with structured_outputs or response_format")
        if self.tools and len(json.dumps([t.model_dump() for t in self.tools])) > 2 * MAX_SCHEMA_CHARS:
            raise ValueError(f"tools are over {2 * MAX_SCHEMA_CHARS} characters of JSON in all")
        return self

    @property
    def calls_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

    def output_constraint(self) -> Constraint | None:
        a = self.structured_outputs.to_constraint() if self.structured_outputs else None
        b = self.response_format.to_constraint() if self.response_format else None
        if a and b:
            raise ValueError("give structured_outputs or response_format, not both")
        return a or b

    def constraint(self) -> Constraint | None:
        """What the answer must match: the caller's structured output, or valid calls to the caller's tools."""
        if self.calls_tools:
            choice = self.tool_choice or "auto"
            named = choice.model_dump() if isinstance(choice, NamedToolChoice) else choice
            return tool_constraint(self.tool_dicts(), named, self.parallel_tool_calls)
        return self.output_constraint()

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        return [t.model_dump(exclude_none=True) for t in self.tools] if self.calls_tools else None

    def to_generation_request(self, system_prompt: str | None, default_max: int, limit: int, timeout_s: float,
                              default_repetition_penalty: float = 1.0) -> GenerationRequest:
        messages = [m.turn() for m in self.messages]
        if system_prompt:
            # The persona speaks first; a caller's own system message follows it as extra instructions.
            messages.insert(0, {"role": "system", "content": system_prompt})
            messages = _merge_system(messages)
        wanted = self.max_completion_tokens or self.max_tokens or self.max_new_tokens or default_max
        return GenerationRequest(
            messages=messages,
            max_new_tokens=min(wanted, limit),
            min_new_tokens=min(self.min_new_tokens, limit),
            temperature=self.temperature,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty or default_repetition_penalty,
            stop=list(self.stop or []),
            constraint=self.constraint(),
            timeout_s=timeout_s,
            loop_guard=self.loop_guard,
            end_at_sentence=self.end_at_sentence,
            tools=self.tool_dicts(),
            cache_prefix=not any(m.role in ("system", "developer") for m in self.messages),
        )


def _merge_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fold every system message into one at the front: chat templates accept a single leading system turn."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system" and m["content"])
    rest = [m for m in messages if m["role"] != "system"]
    return [{"role": "system", "content": system}, *rest]


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="JSON text that matches the function's parameters schema.")


def _absent(value: object) -> bool:
    return value is None


# The answer shapes below follow OpenAI's published OpenAPI document (checked by make e2e-conformance): fields it
# requires are sent even when null (refusal, logprobs, a chunk's finish_reason); fields it types without null
# (tool_calls, a delta's role and content, a call delta's id) are left out rather than sent as null.
class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None  # never set: the experts do not refuse by policy
    tool_calls: list[ToolCallOut] | None = Field(None, exclude_if=_absent)


class CompletionChoice(BaseModel):
    index: int = 0
    message: ChoiceMessage
    finish_reason: str
    logprobs: dict[str, Any] | None = None  # never set: log probabilities are not offered


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = Field(None, exclude_if=_absent)
    type: Literal["function"] | None = Field(None, exclude_if=_absent)
    function: FunctionCall


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = Field(None, exclude_if=_absent)
    content: str | None = Field(None, exclude_if=_absent)
    tool_calls: list[ToolCallDelta] | None = Field(None, exclude_if=_absent)


class ChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = Field(None, exclude_if=_absent)  # on the last chunk only


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "conclave"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- A2A agent card ------------------------------------------------------------------------------------------------
class AgentSkill(BaseModel):
    id: str
    name: str
    description: str
    tags: list[str] = []
    examples: list[str] = []


class AgentExtension(BaseModel):
    uri: str
    description: str = ""
    required: bool = False
    params: dict[str, Any] = {}


class AgentCapabilities(BaseModel):
    model_config = ConfigDict(extra="allow")

    streaming: bool = False
    pushNotifications: bool = False
    extensions: list[AgentExtension] = []


class AgentInterface(BaseModel):
    url: str
    protocolBinding: str
    protocolVersion: str = ""


CONCLAVE_EXTENSION = "https://github.com/conclave/extensions/persona/v1"
A2A_VERSION_HEADER = "A2A-Version"  # the protocol version a client reads (header or query parameter)


class AgentCard(BaseModel):
    """The A2A 1.0 agent card (``/.well-known/agent-card.json``), as the orchestrator reads it: what an agent is for
    and where it answers. Cards carry more (security schemes, 0.3 compatibility fields); they are kept as extras."""

    model_config = ConfigDict(extra="allow")

    name: str
    description: str
    version: str = ""
    supportedInterfaces: list[AgentInterface] = []
    capabilities: AgentCapabilities = AgentCapabilities()
    defaultInputModes: list[str] = ["text/plain"]
    defaultOutputModes: list[str] = ["text/plain"]
    skills: list[AgentSkill] = []

    def routing_text(self) -> str:
        """What the router embeds: the description and every skill with its examples."""
        parts = [self.description]
        for s in self.skills:
            parts += [s.name, s.description, *s.tags, *s.examples]
        return "\n".join(parts)

    @property
    def conclave(self) -> dict[str, Any]:
        """Our experts' own endpoints (persona id, /chat), from the card's Conclave extension; empty for others."""
        return next((e.params for e in self.capabilities.extensions if e.uri == CONCLAVE_EXTENSION), {})

    def jsonrpc_url(self) -> str | None:
        return next((i.url for i in self.supportedInterfaces if i.protocolBinding == "JSONRPC"), None)


# ---- orchestrator --------------------------------------------------------------------------------------------------
class IntegrateRequest(Lenient):
    task: str = Field(min_length=1, max_length=16_000, description="What the panel should work on.")
    strategy: Literal["react", "panel"] = "react"
    max_steps: int | None = Field(None, ge=1, le=20)
    experts: list[str] | None = Field(None, description="Restrict to these expert names.")
    stream: bool = False

    @field_validator("task")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("task must not be blank")
        return value


class Step(BaseModel):
    """One consultation (or routing decision) in a run."""

    thought: str = ""
    expert: str | None = None
    input: str = ""
    observation: str = ""
    ok: bool = True
    elapsed_ms: int = 0
    started_ms: int = Field(0, description="When the consultation began, in ms from the run's start: steps that "
                            "overlap ran in parallel.")
    ranking: list[dict[str, Any]] | None = Field(None, description="Experts by similarity to the task, best first.")
    chosen_by: str | None = Field(None, description="'ranking' when the ranking forced the choice, 'llm' when the "
                                  "model chose, 'panel' when every selected expert is asked.")
    reason: str = Field("", description="Why this expert was asked, in words.")
    sources: list[Source] = Field([], description="The passages the expert answered from, numbered as it cited "
                                  "them.")
    language: AnswerLanguage | None = Field(None, description="The language the expert was asked to answer in, and "
                                            "why when it is not the question's.")
    model: str | None = Field(None, description="The model that answered, as the expert names it.")
    usage: Usage | None = Field(None, description="The expert's tokens for this answer, as it counted them.")
    timings: Timings | None = Field(None, description="Where the expert's answer spent its time, as it measured it.")


class UsageFigures(BaseModel):
    """Tokens, calls and time of one part of a run; ``cost`` where PRICES names the model."""

    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0
    elapsed_ms: int = 0
    cost: float | None = Field(None, description="input and output tokens at PRICES' rates for the model, when set.")


class RunUsage(BaseModel):
    """What a run consumed: per expert, the orchestrator's own model (ReAct steps, the merge), and in total."""

    experts: dict[str, UsageFigures] = {}
    orchestrator: UsageFigures = UsageFigures()
    total: UsageFigures = UsageFigures()


class Attribution(BaseModel):
    """One sentence of the final answer and where it came from."""

    text: str
    experts: list[str] = Field(description="The experts whose answers say this.")
    steps: list[int] = Field(description="Indexes into ``steps`` of those answers.")


class CompositionChecks(BaseModel):
    """What the composer measured before it chose the final answer (MiniLM cosines)."""

    passed: bool = False
    why: str = Field("", description="Why the generated merge was not used, when it was not.")
    relevance: float | None = Field(None, description="Cosine of the final answer to the task.")
    best_expert_relevance: float | None = Field(None, description="Cosine of the best expert answer to the task.")
    grounded_share: float | None = Field(None, description="Share of merged sentences that say what an expert said.")
    left_out: list[str] = Field([], description="Experts whose answers were off-topic and left out.")
    expert_relevance: dict[str, float] = Field({}, description="Cosine of each expert's (cleaned) answer to the task.")


class Citation(Source):
    """A source cited in the final answer, renumbered across experts: [number] in the response."""

    expert: str
    step: int = Field(description="Index into ``steps`` of the answer that cited it.")


class IntegrateResponse(BaseModel):
    response: str
    run_id: str
    strategy: str
    experts: list[str]
    steps: list[Step]
    elapsed_ms: int
    fallback: bool = Field(False, description="True when the ReAct loop hit its step or time limit.")
    synthesis_ms: int = Field(0, description="Time spent composing the experts' answers into one.")
    merge: Literal["generated", "extractive", "none"] = Field(
        "none", description="generated: the LLM merged the answers and the merge passed its checks; extractive: the "
        "answer is the experts' own sentences; none: no expert answered.")
    attribution: list[Attribution] = Field([], description="The final answer sentence by sentence, with its experts.")
    checks: CompositionChecks = Field(CompositionChecks(), description="What the composer measured.")
    sources: list[Citation] = Field([], description="The experts' sources the answer cites, numbered as cited.")
    language: AnswerLanguage | None = Field(None, description="The task's language and the answer's: an expert's "
                                            "note when its model could not answer in the task's language.")
    stored: bool = Field(True, description="False when the run could not be saved (a full disk): the answer is still "
                         "given, `GET /runs/<run_id>` will not find it, and `warning` says why.")
    warning: str | None = None
    usage: RunUsage = Field(RunUsage(), description="Tokens, time and cost per expert, of the orchestrator's model, "
                            "and in total.")


class RunRecord(IntegrateResponse):
    task: str
    created_at: float
    status: Literal["running", "done", "failed"]
    error: str | None = None


class ExpertStatus(BaseModel):
    name: str
    url: str
    description: str
    healthy: bool
    ready: bool
    detail: str = ""


class ExpertList(BaseModel):
    experts: list[ExpertStatus]


class RunList(BaseModel):
    runs: list[RunRecord]
