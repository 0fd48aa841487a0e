"""The engine's vocabulary: plain dataclasses, no HTTP, no pydantic.

Every engine (local batched, remote OpenAI-compatible) takes a :class:`GenerationRequest` and hands back a
:class:`Generation` handle from which the caller reads text deltas as they are decoded, or the whole result.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args, runtime_checkable

from common.errors import ConclaveError

log = logging.getLogger(__name__)

ConstraintKind = Literal["grammar", "regex", "choice", "json", "structural_tag"]
CONSTRAINT_KINDS: frozenset[str] = frozenset(get_args(ConstraintKind))


class EngineError(ConclaveError):
    """A generation failed; like every ConclaveError it carries its HTTP status and wire type."""

    code = "engine_error"


class EngineNotReady(EngineError):
    status, type, code = 503, "service_unavailable", "not_ready"


class EngineOverloaded(EngineError):
    status, type, code = 429, "rate_limit_exceeded", "overloaded"


class GenerationTimeout(EngineError):
    status, type, code = 504, "timeout", "timeout"


class InvalidConstraint(EngineError):
    status, type, code = 400, "invalid_request_error", "invalid_constraint"


class UnsupportedConstraint(InvalidConstraint):
    """The server behind a remote engine cannot take this kind of constraint: refused before anything is sent."""

    code = "unsupported_constraint"


class ConstraintViolated(EngineError):
    """A remote server's answer broke the request's constraint, twice: never passed on as an answer."""

    status, type, code = 502, "upstream_error", "constraint_violated"


class UpstreamError(EngineError):
    """A remote server failed or answered something unreadable."""

    status, type, code = 502, "upstream_error", "upstream_error"


class RequestRejected(EngineError):
    """A remote server refused the request as malformed (its 400)."""

    status, type, code = 400, "invalid_request_error", "rejected_by_server"


class GenerationCancelled(EngineError):
    status, type, code = 499, "cancelled", "cancelled"


@dataclass(frozen=True)
class Constraint:
    """Output constraint in vLLM's ``structured_outputs`` terms. ``value`` is EBNF, a regex, a list, a schema, or an
    xgrammar structural tag (tool calls)."""

    kind: ConstraintKind
    value: object

    def json_schema(self) -> dict | None:
        """A ``json`` constraint's schema as a dict (it may come as JSON text), or None when any JSON will do."""
        if self.value in (None, True, {}, "object"):
            return None
        return json.loads(self.value) if isinstance(self.value, str) else self.value  # type: ignore[return-value]


@dataclass
class GenerationRequest:
    messages: list[dict[str, Any]]  # OpenAI-shaped turns; an assistant turn may carry tool_calls
    max_new_tokens: int = 512
    min_new_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    constraint: Constraint | None = None
    timeout_s: float = 600.0
    # Stop a free-text answer that starts to repeat itself, keeping one copy of what repeats (common/text.py).
    loop_guard: bool = False
    # An answer cut by max_new_tokens (or by the loop guard) ends at its last complete sentence, not mid-word.
    end_at_sentence: bool = False
    # Function tools (OpenAI's shape) the model is told about; the constraint, when there is one, keeps calls valid.
    tools: list[dict[str, Any]] | None = None
    # Keep the system message's keys and values for later requests (the local engine's prefix cache). Only a
    # service's own prompts are worth it: a caller's system text is false, or every caller could fill the cache.
    cache_prefix: bool = True


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"
    elapsed_s: float
    looped: bool = False  # the loop guard ended it
    queue_s: float = 0.0  # from submission until the engine began on it (its wait for a batch row or a server slot)
    first_token_s: float | None = None  # from submission until the caller got its first text


_DONE = object()


class Generation:
    """A handle on one request in flight. The engine pushes deltas; the caller iterates or waits.

    Thread-safe: the producer (a scheduler thread or an HTTP reader) calls ``push``/``finish``/``fail``; the consumer
    calls ``__iter__``/``result``/``cancel``.
    """

    def __init__(self, request: GenerationRequest):
        self.request = request
        self.created = time.monotonic()
        self.deadline = self.created + request.timeout_s
        self._deltas: queue.Queue = queue.Queue()
        self._done = threading.Event()
        self._cancelled = threading.Event()
        self._result: GenerationResult | None = None
        self._error: EngineError | None = None
        self._text: list[str] = []
        self._on_done: list = []
        self._ending = threading.Lock()  # a callback added as the generation ends runs exactly once
        self._ended = False
        self._began: float | None = None
        self._first_text: float | None = None

    # producer side
    def begin(self) -> None:
        """The engine starts on this request (it joins a batch, or goes out to a server): its wait ends here."""
        if self._began is None:
            self._began = time.monotonic()

    def push(self, delta: str) -> None:
        if delta:
            if self._first_text is None:
                self._first_text = time.monotonic()
            self._text.append(delta)
            self._deltas.put(delta)

    def finish(self, prompt_tokens: int, completion_tokens: int, finish_reason: str, looped: bool = False) -> None:
        self._result = GenerationResult(
            text="".join(self._text).strip(),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=finish_reason,
            elapsed_s=time.monotonic() - self.created,
            looped=looped,
            queue_s=(self._began or self.created) - self.created,
            first_token_s=None if self._first_text is None else self._first_text - self.created,
        )
        self._end()

    def fail(self, error: EngineError) -> None:
        self._error = error
        self._end()

    def _end(self) -> None:
        # the callbacks run before anyone waiting sees the end: what they count is counted when result() returns
        with self._ending:
            callbacks, self._on_done, self._ended = self._on_done, [], True
        for callback in callbacks:
            try:
                callback(self._result, self._error)
            except Exception:  # an observer's failure must not leave the caller waiting
                log.exception("a generation's done callback failed")
        self._done.set()
        self._deltas.put(_DONE)

    def on_done(self, callback: Callable[[GenerationResult | None, EngineError | None], None]) -> None:
        """Call ``callback(result, error)`` once the generation ends (in the producer's thread, before the consumer
        sees the end; at once if it has ended): what observes generations (usage, traces) does so without the engine
        knowing."""
        with self._ending:
            if not self._ended:
                self._on_done.append(callback)
                return
        callback(self._result, self._error)

    def timeout_error(self) -> GenerationTimeout:
        return GenerationTimeout(f"generation exceeded its time limit of {self.request.timeout_s:g}s")

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    # consumer side
    def cancel(self) -> None:
        """The client went away: the engine drops the request at its next step."""
        self._cancelled.set()

    def __iter__(self) -> Iterator[str]:
        """Yield text deltas as they are decoded; raise the engine's error if the generation failed."""
        while True:
            remaining = self.deadline - time.monotonic() + 5.0
            try:
                item = self._deltas.get(timeout=max(remaining, 0.1))
            except queue.Empty:
                self.cancel()
                raise self.timeout_error() from None
            if item is _DONE:
                if self._error is not None:
                    raise self._error
                return
            yield item

    def result(self) -> GenerationResult:
        """Wait for the whole answer (whether or not the deltas were read); raise the engine's error if it failed."""
        if not self._done.wait(timeout=max(self.deadline - time.monotonic() + 5.0, 0.1)):
            self.cancel()
            raise self.timeout_error()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


@runtime_checkable
class Engine(Protocol):
    """What every engine offers (local batched, remote server, the tests' fakes); services hold one of these."""

    model_name: str
    model_spec: str
    running_rows: int

    def start(self) -> Engine: ...

    def stop(self) -> None: ...

    def wait_ready(self, timeout: float | None = None) -> bool: ...

    @property
    def ready(self) -> bool: ...

    @property
    def status(self) -> str: ...

    @property
    def failed(self) -> bool:
        """True when the engine can never become ready (a local model that failed to load); a remote server that
        is down is not failed, it may come back."""

    @property
    def waiting(self) -> int: ...

    @property
    def runtime(self) -> dict[str, object]: ...

    def accepts(self, kind: str) -> bool:
        """Whether a constraint of this kind can be honoured (a remote server may take only JSON schemas)."""
        ...

    def submit(self, request: GenerationRequest) -> Generation: ...
