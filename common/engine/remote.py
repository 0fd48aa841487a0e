"""The engine interface over any OpenAI-compatible server: vLLM, llama.cpp's llama-server, TGI, Ollama, OpenAI, or
one of our own experts' /v1. Built on the ``openai`` SDK.

Each request runs on its own thread; the server does the batching, so this engine simply forwards concurrency.
Constraints go out in the server's own dialect (``dialects``), detected once the server answers or set by
``REMOTE_DIALECT``. A constrained answer is never streamed as it comes: it is checked whole (``checking``), asked
again once if it breaks the constraint, and then either passed on or refused with a 502 naming the server.
"""

from __future__ import annotations

import logging
import threading
import time

import httpx
import openai
from opentelemetry import propagate

from . import tools as tool_calls
from .checking import satisfies
from .dialects import DIALECTS, Dialect, Wire, detect
from .output import OutputProcessor
from .types import (
    ConstraintViolated,
    EngineError,
    EngineNotReady,
    EngineOverloaded,
    Generation,
    GenerationCancelled,
    GenerationRequest,
    GenerationTimeout,
    RequestRejected,
    UpstreamError,
)

log = logging.getLogger(__name__)

READY_TTL_S = 10.0  # /ready and every submit read the cached state; the server is asked again after this long


class RemoteEngine:
    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 dialect: str = "auto", connect_timeout_s: float = 5.0, client: openai.OpenAI | None = None):
        self.base_url = base_url.rstrip("/")
        self.model_name = model or ""
        self.model_spec = self.base_url
        # the SDK's own Timeout: its HTTP library (httpx2 today) refuses another library's
        self._timeout = openai.Timeout(600.0, connect=connect_timeout_s)
        self._client = client or openai.OpenAI(base_url=self.base_url, api_key=api_key or "none", max_retries=0,
                                               timeout=self._timeout)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._connect_timeout = connect_timeout_s
        self.dialect: Dialect | None = None if dialect == "auto" else DIALECTS[dialect]
        self.load_error: str | None = None
        self.running_rows = 0
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._ready = False

    @classmethod
    def from_settings(cls, settings) -> RemoteEngine:
        return cls(settings.remote_url, settings.remote_model, settings.remote_api_key, settings.remote_dialect)

    def start(self) -> RemoteEngine:
        return self

    def stop(self) -> None:
        self._client.close()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self.ready

    @property
    def runtime(self) -> dict[str, object]:
        return {"remote": self.base_url, "dialect": self.dialect.name if self.dialect else None}

    @property
    def ready(self) -> bool:
        """Ready when the server lists its models (the first is used unless one was configured). Cached for
        READY_TTL_S: a probe must not cost every request a round trip."""
        if time.monotonic() - self._checked_at < READY_TTL_S:
            return self._ready
        try:
            models = [m.model_dump() for m in self._client.with_options(timeout=self._connect_timeout).models.list()]
        except openai.OpenAIError as exc:
            self.load_error = f"remote server {self.base_url} is not answering: {exc}"
            self._ready = False
        else:
            self.load_error = None
            if not self.model_name and models:
                self.model_name = models[0]["id"]
            if self.dialect is None:
                self.dialect = detect(self.base_url, models, self._get_json)
                log.info("remote server %s speaks the %s dialect", self.base_url, self.dialect.name)
            self._ready = True
        self._checked_at = time.monotonic()
        return self._ready

    def _get_json(self, url: str) -> object:
        try:
            resp = httpx.get(url, headers=self._headers, timeout=self._connect_timeout)
            return resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    @property
    def status(self) -> str:
        return self.load_error or "ready"

    failed = False  # a server that is down may come back: /ready says so meanwhile

    @property
    def waiting(self) -> int:
        return 0

    def accepts(self, kind: str) -> bool:
        """Whether the server takes this kind of constraint (a caller may then choose another form)."""
        return self.dialect is not None and self.dialect.accepts(kind)

    def body(self, request: GenerationRequest) -> tuple[dict, Wire | None]:
        """The request body (as keyword arguments of the SDK's ``create``) and, under a constraint, its wire form.

        Raises UnsupportedConstraint before anything is sent when the server cannot take the constraint."""
        assert self.dialect is not None
        messages = tool_calls.with_tools_prompt(request.messages, request.tools) if request.tools else request.messages
        kwargs: dict = {"model": self.model_name, "messages": messages, "max_tokens": request.max_new_tokens,
                        "temperature": request.temperature, "top_p": request.top_p}
        if request.stop:
            kwargs["stop"] = request.stop
        extra = self.dialect.sampling(request)
        wire = None
        if request.constraint is not None:
            wire = self.dialect.wire(request.constraint, self.base_url)
            extra |= wire.fields
        if extra:
            kwargs["extra_body"] = extra
        return kwargs, wire

    def submit(self, request: GenerationRequest) -> Generation:
        if not self.ready:
            raise EngineNotReady(self.status, retry_after=5)
        kwargs, wire = self.body(request)
        # W3C trace context of the caller's span (a traced generation's), read here: the call runs in a thread
        propagate.inject(headers := {})
        if headers:
            kwargs["extra_headers"] = headers
        gen = Generation(request)
        threading.Thread(target=self._run, args=(gen, kwargs, wire), name="remote-generation", daemon=True).start()
        return gen

    def _run(self, gen: Generation, kwargs: dict, wire: Wire | None) -> None:
        gen.begin()
        with self._lock:
            self.running_rows += 1
        try:
            if wire is None:
                self._stream(gen, kwargs)
            else:
                self._checked(gen, kwargs, wire)
        except EngineError as exc:
            gen.fail(exc)
        except openai.OpenAIError as exc:
            gen.fail(self._error(exc))
        except Exception as exc:  # a malformed answer must end this request, never the thread silently
            log.exception("remote generation failed")
            gen.fail(UpstreamError(f"remote server {self.base_url} sent an unreadable answer: {exc}"))
        finally:
            with self._lock:
                self.running_rows -= 1

    def _stream(self, gen: Generation, kwargs: dict) -> None:
        """Stream the server's answer through the same output processing as the local engine's (stops, loop guard,
        hold-back, sentence cut); when the processor ends the answer first, the stream is closed, which stops the
        server generating."""
        out = OutputProcessor(gen.request)
        stream = self._client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True},
                                                      timeout=gen.request.timeout_s)
        prompt_tokens = completion_tokens = 0
        usage_seen = server_ended = False
        with stream:
            for chunk in stream:
                if gen.cancelled:
                    gen.fail(GenerationCancelled("client went away"))
                    return
                for choice in chunk.choices or []:
                    text = (choice.delta.content if choice.delta else None) or ""
                    completion_tokens += 1 if text else 0
                    server_ended = server_ended or choice.finish_reason is not None
                    gen.push(out.feed(text, completion_tokens, choice.finish_reason))
                if chunk.usage is not None:
                    usage_seen = True
                    prompt_tokens, completion_tokens = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
                if out.finish_reason is not None and not server_ended:
                    break  # a stop string or the loop guard ended it here; the server's remaining tokens are unwanted
        if out.finish_reason is None:  # the stream ended without a finish reason: the text so far is the answer
            gen.push(out.feed("", completion_tokens, "stop"))
        if not usage_seen:
            log.debug("remote server %s sent no usage; completion tokens counted from its chunks", self.base_url)
        gen.finish(prompt_tokens, completion_tokens, out.finish_reason, out.looped)

    def _checked(self, gen: Generation, kwargs: dict, wire: Wire) -> None:
        """Ask, check the whole answer against the constraint, ask once more if it broke it, then answer or refuse."""
        constraint = gen.request.constraint
        assert constraint is not None and self.dialect is not None
        for _attempt in range(2):
            completion = self._client.chat.completions.create(**kwargs, timeout=gen.request.timeout_s)
            choice = completion.choices[0]
            text = wire.unwrap(choice.message.content or "")
            if satisfies(constraint, text) or satisfies(constraint, text := text.strip()):
                usage = completion.usage
                gen.push(text)
                gen.finish(usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0,
                           choice.finish_reason or "stop")
                return
            log.warning("%s at %s broke a %s constraint: %.200r", self.dialect.label, self.base_url,
                        constraint.kind, text)
        raise ConstraintViolated(f"the {self.dialect.label} at {self.base_url} answered twice outside the "
                                 f"{constraint.kind} constraint; nothing was passed on")

    def _error(self, exc: openai.OpenAIError) -> EngineError:
        """The SDK's errors as the engine's: the web layer maps these to 429, 503, 504, 400 and 502."""
        where = f"remote server {self.base_url}"
        if isinstance(exc, openai.APITimeoutError):
            return GenerationTimeout(f"{where} did not answer in time")
        if isinstance(exc, openai.APIConnectionError):
            return EngineNotReady(f"{where} could not be reached: {exc}", retry_after=5)
        if isinstance(exc, openai.APIStatusError):
            retry = _retry_after(exc.response)
            message = f"{where} answered {exc.status_code}: {exc.message}"
            if exc.status_code == 429:
                return EngineOverloaded(message, retry_after=retry or 2)
            if exc.status_code == 503:
                return EngineNotReady(message, retry_after=retry or 5)
            if exc.status_code == 504:
                return GenerationTimeout(message)
            if exc.status_code in (400, 422):
                return RequestRejected(message)
        return UpstreamError(f"{where} failed: {exc}")


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
