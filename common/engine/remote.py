"""The engine interface over any OpenAI-compatible server (vLLM, TGI, Ollama, or one of our experts' /v1).

Each request is one streaming ``/chat/completions`` call on its own thread; the server does the batching, so this
engine simply forwards concurrency. Constraints travel as vLLM's ``structured_outputs``.
"""

from __future__ import annotations

import json
import logging
import threading

import requests

from .types import (
    EngineError,
    EngineNotReady,
    EngineOverloaded,
    Generation,
    GenerationCancelled,
    GenerationRequest,
    GenerationTimeout,
    InvalidConstraint,
)

log = logging.getLogger(__name__)


class RemoteEngine:
    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 connect_timeout_s: float = 5.0, session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self.model_name = model or ""
        self.model_spec = self.base_url
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._connect_timeout = connect_timeout_s
        self._http = session or requests.Session()
        self.load_error: str | None = None
        self.running_rows = 0
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings) -> RemoteEngine:
        return cls(settings.remote_url, settings.remote_model, settings.remote_api_key)

    def start(self) -> RemoteEngine:
        return self

    def stop(self) -> None:
        self._http.close()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self.ready

    @property
    def runtime(self) -> dict[str, object]:
        return {"remote": self.base_url}

    @property
    def ready(self) -> bool:
        """Ready when the server lists its models; the first listed model is used unless one was configured."""
        try:
            resp = self._http.get(f"{self.base_url}/models", headers=self._headers, timeout=self._connect_timeout)
            resp.raise_for_status()
            models = [m["id"] for m in resp.json().get("data", [])]
        except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
            self.load_error = f"remote server {self.base_url} is not answering: {exc}"
            return False
        self.load_error = None
        if not self.model_name and models:
            self.model_name = models[0]
        return True

    @property
    def status(self) -> str:
        return self.load_error or "ready"

    @property
    def waiting(self) -> int:
        return 0

    def payload(self, request: GenerationRequest) -> dict:
        body: dict = {
            "model": self.model_name,
            "messages": request.messages,
            "max_tokens": request.max_new_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.repetition_penalty != 1.0:
            body["repetition_penalty"] = request.repetition_penalty  # vLLM's and TGI's extra parameter
        if request.min_new_tokens:
            body["min_tokens"] = request.min_new_tokens  # vLLM's name
        if request.stop:
            body["stop"] = request.stop
        if request.constraint is not None:
            body["structured_outputs"] = {request.constraint.kind: request.constraint.value}
        return body

    def submit(self, request: GenerationRequest) -> Generation:
        if not self.model_name and not self.ready:
            raise EngineNotReady(self.status, retry_after=5)
        gen = Generation(request)
        threading.Thread(target=self._run, args=(gen,), name="remote-generation", daemon=True).start()
        return gen

    def _run(self, gen: Generation) -> None:
        with self._lock:
            self.running_rows += 1
        try:
            self._stream(gen)
        except requests.Timeout:
            gen.fail(GenerationTimeout(f"remote server {self.base_url} did not answer in time"))
        except requests.RequestException as exc:
            gen.fail(EngineNotReady(f"remote server {self.base_url} failed: {exc}", retry_after=5))
        except EngineError as exc:
            gen.fail(exc)
        except Exception as exc:  # a malformed stream must end this request, never the thread silently
            log.exception("remote generation failed")
            gen.fail(EngineError(f"remote server {self.base_url} sent an unreadable answer: {exc}"))
        finally:
            with self._lock:
                self.running_rows -= 1

    def _stream(self, gen: Generation) -> None:
        request = gen.request
        with self._http.post(f"{self.base_url}/chat/completions", json=self.payload(request), headers=self._headers,
                             stream=True, timeout=(self._connect_timeout, request.timeout_s)) as resp:
            if resp.status_code >= 400:
                raise _remote_error(resp)
            prompt_tokens = completion_tokens = 0
            finish_reason = "stop"
            started = False
            for line in resp.iter_lines(decode_unicode=True):
                if gen.cancelled:
                    gen.fail(GenerationCancelled("client went away"))
                    return
                if not line or not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or ""
                    if not started:  # the answer is trimmed, as the local engine trims it
                        text = text.lstrip()
                        started = bool(text)
                    gen.push(text)
                    completion_tokens += 1 if text else 0
                    finish_reason = choice.get("finish_reason") or finish_reason
                usage = chunk.get("usage")
                if usage:
                    prompt_tokens = usage.get("prompt_tokens", prompt_tokens)
                    completion_tokens = usage.get("completion_tokens", completion_tokens)
            gen.finish(prompt_tokens, completion_tokens, finish_reason)


def _remote_error(resp: requests.Response) -> EngineError:
    try:
        message = resp.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = resp.text[:500]
    retry = float(resp.headers.get("Retry-After", 2))
    if resp.status_code == 429:
        return EngineOverloaded(f"remote server is busy: {message}", retry_after=retry)
    if resp.status_code == 503:
        return EngineNotReady(f"remote server is not ready: {message}", retry_after=retry)
    if resp.status_code == 504:
        return GenerationTimeout(f"remote server timed out: {message}")
    if resp.status_code == 400:
        return InvalidConstraint(f"remote server refused the request: {message}")
    return EngineError(f"remote server answered {resp.status_code}: {message}")
