"""What a run did and what it cost: OpenTelemetry traces across the services in the GenAI semantic conventions, and
the tokens each run's own model calls add up to.

Tracing is off by default and then costs nothing: the SDK is set up (from the standard ``OTEL_*`` variables, read by
the SDK itself: endpoint, headers, service name, sampler, batch delays) only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set and ``OTEL_SDK_DISABLED`` is not true; otherwise the API's no-op tracer
answers. Spans (https://opentelemetry.io/docs/specs/semconv/gen-ai/):
- ``invoke_agent Conclave panel``: one run of the panel, with its token totals;
- ``execute_tool <expert>``: one consultation; the call carries W3C ``traceparent``, so the expert's spans are its
  children;
- ``chat <model>``: one generation, in either service and on either engine: request parameters, response model,
  input and output tokens, finish reasons. Prompt and answer text are recorded only with
  ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``.
Nothing here is imported by the engine or the composer: an engine is wrapped (:class:`Observed`), calls are wrapped
at the service's edge.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from common.engine.types import EngineError, Generation, GenerationRequest, GenerationResult

TRACER = trace.get_tracer("conclave")  # the no-op tracer until configure() installs a provider
CAPTURE_CONTENT = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
_state = {"on": False, "content": False}


def configure(service_name: str) -> Callable[[], None] | None:
    """Export this process's spans over OTLP/HTTP when the environment asks for it; returns the hook that flushes
    them at shutdown, or None when tracing is off. Call it in the process that serves (after any fork)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true" or not (
            os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # the service's own name unless OTEL_SERVICE_NAME gives another (OTEL_RESOURCE_ATTRIBUTES are read either way)
    own = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create(own))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    enable(content=os.environ.get(CAPTURE_CONTENT, "").lower() == "true")
    return provider.shutdown


def enable(on: bool = True, content: bool = False) -> None:
    """Record spans from now on, prompt and answer text too with ``content`` (``configure`` calls it; tests call it
    with a provider of their own)."""
    _state["on"], _state["content"] = on, content


def enabled() -> bool:
    return _state["on"]


# ---- context across processes -------------------------------------------------------------------------------------
def inject(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` plus the current span's ``traceparent`` (and ``tracestate``), as a new dict, when tracing is on;
    ``headers`` themselves otherwise."""
    if not _state["on"]:
        return headers
    headers = dict(headers)
    propagate.inject(headers)
    return headers


def continue_trace(headers) -> object | None:
    """Make the caller's trace (its ``traceparent``) the current context while a request is served; returns the
    token :func:`leave_trace` takes when the request ends (None when tracing is off)."""
    return otel_context.attach(propagate.extract(headers)) if _state["on"] else None


def leave_trace(token: object | None) -> None:
    if token is not None:
        otel_context.detach(token)


def current() -> otel_context.Context:
    """The current context, to parent spans started in other threads (a panel's consultations)."""
    return otel_context.get_current()


# ---- agent and tool spans -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def agent_span(agent: str, run_id: str, strategy: str) -> Iterator[Span]:
    if not _state["on"]:
        yield trace.INVALID_SPAN  # records nothing
        return
    with TRACER.start_as_current_span(f"invoke_agent {agent}", kind=SpanKind.INTERNAL, attributes={
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent, "gen_ai.conversation.id": run_id,
            "conclave.run.id": run_id, "conclave.strategy": strategy}) as span:
        yield span


@contextlib.contextmanager
def tool_span(expert: str, question: str, parent: otel_context.Context | None) -> Iterator[Span]:
    if not _state["on"]:
        yield trace.INVALID_SPAN
        return
    attributes = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": expert, "gen_ai.tool.type": "extension"}
    if _state["content"]:
        attributes["gen_ai.tool.call.arguments"] = json.dumps({"question": question}, ensure_ascii=False)
    with TRACER.start_as_current_span(f"execute_tool {expert}", context=parent, kind=SpanKind.INTERNAL,
                                      attributes=attributes) as span:
        yield span


def record_usage(span: Span, input_tokens: int, output_tokens: int) -> None:
    span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", output_tokens)


def record_timings(span: Span, timings: dict[str, int | None]) -> None:
    """Where the expert's answer spent its time, as it measured it (``conclave.expert.queue_ms``, ...)."""
    for name, value in timings.items():
        if value is not None:
            span.set_attribute(f"conclave.expert.{name}", value)


def failed(span: Span, message: str, error_type: str) -> None:
    span.set_status(Status(StatusCode.ERROR, message))
    span.set_attribute("error.type", error_type)


# ---- what a run's own model calls add up to -------------------------------------------------------------------------
@dataclass
class Ledger:
    """Tokens and calls of the generations submitted while this ledger is the current one (:func:`counting`)."""

    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0
    elapsed_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, result: GenerationResult) -> None:
        with self._lock:
            self.input_tokens += result.prompt_tokens
            self.output_tokens += result.completion_tokens
            self.calls += 1
            self.elapsed_s += result.elapsed_s


_ledger: contextvars.ContextVar[Ledger | None] = contextvars.ContextVar("ledger", default=None)


@contextlib.contextmanager
def counting() -> Iterator[Ledger]:
    """Count the generations submitted in this thread (and its context) until the block ends."""
    ledger = Ledger()
    token = _ledger.set(ledger)
    try:
        yield ledger
    finally:
        _ledger.reset(token)


# ---- model spans ----------------------------------------------------------------------------------------------------
class Observed:
    """An engine whose every generation is a ``chat`` span (when tracing is on) and counts in the current
    :class:`Ledger` (when there is one). Everything else is the wrapped engine's."""

    def __init__(self, engine):
        self._engine = engine

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def submit(self, request: GenerationRequest) -> Generation:
        ledger = _ledger.get()
        span = self._start(request) if _state["on"] else None
        try:
            with trace.use_span(span, end_on_exit=False) if span else contextlib.nullcontext():
                gen = self._engine.submit(request)  # a remote engine's call carries this span as its parent
        except EngineError as exc:
            if span:
                _end(span, "", None, exc)
            raise

        def done(result: GenerationResult | None, error: EngineError | None) -> None:
            if ledger is not None and result is not None:
                ledger.add(result)
            if span:
                _end(span, self._engine.model_name, result, error)

        gen.on_done(done)
        return gen

    def _start(self, request: GenerationRequest) -> Span:
        model = self._engine.model_name or self._engine.model_spec
        # a model server's dialect (vllm, llamacpp, tgi, ...) names the provider; the local engine is ours
        provider = self._engine.runtime.get("dialect") or "conclave"
        attributes = {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": provider, "gen_ai.system": provider,
            "gen_ai.request.model": model, "gen_ai.request.max_tokens": request.max_new_tokens,
            "gen_ai.request.temperature": request.temperature, "gen_ai.request.top_p": request.top_p}
        if request.stop:
            attributes["gen_ai.request.stop_sequences"] = request.stop
        if _state["content"]:
            attributes["gen_ai.input.messages"] = json.dumps(request.messages, ensure_ascii=False, default=str)
        kind = SpanKind.CLIENT if provider != "conclave" else SpanKind.INTERNAL
        return TRACER.start_span(f"chat {model}", kind=kind, attributes=attributes)


def _end(span: Span, model: str, result: GenerationResult | None, error: EngineError | None) -> None:
    if result is not None:
        span.set_attribute("gen_ai.response.model", model)
        span.set_attribute("gen_ai.response.finish_reasons", [result.finish_reason])
        record_usage(span, result.prompt_tokens, result.completion_tokens)
        if _state["content"]:
            span.set_attribute("gen_ai.output.messages", json.dumps(
                [{"role": "assistant", "content": result.text, "finish_reason": result.finish_reason}],
                ensure_ascii=False))
    if error is not None:
        failed(span, str(error), type(error).__name__)
    span.end()
