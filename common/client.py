"""Typed HTTP client for one expert: real timeouts, retries of what is safe to retry, one domain error.

Our own experts are asked over ``/chat`` (which carries their sources); any other agent, or every expert when
``EXPERT_TRANSPORT=a2a``, is asked over A2A with the a2a-sdk client.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from common import tracing
from common.protocol import A2A_VERSION_HEADER, AgentCard, ChatResponse

# 429/503: the expert's queue was full or it was not ready; 502: a load balancer's backend died before answering
UNANSWERED_STATUS = (429, 502, 503)


class ExpertError(Exception):
    """An expert could not answer. The message names the expert and the reason, fit to show an agent or a user."""

    def __init__(self, expert: str, reason: str, status: int | None = None, unanswered: bool = False):
        super().__init__(f"expert {expert} failed: {reason}")
        self.expert, self.reason, self.status = expert, reason, status
        # the expert gave no answer and will give none: it could not be reached, it dropped the connection without
        # a response (it died), or it (or the load balancer before it) said it cannot take the request. Another
        # replica may be asked: the user gets one answer, never two.
        self.unanswered = unanswered or status in UNANSWERED_STATUS


class ExpertClient:
    def __init__(self, base_url: str, api_key: str | None = None, connect_timeout_s: float = 5.0,
                 read_timeout_s: float = 300.0, retries: int = 2, backoff_s: float = 0.5,
                 session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self.name = self.base_url  # replaced by the expert's tool name once its card is read
        self.timeout = (connect_timeout_s, read_timeout_s)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = session or requests.Session()
        # urllib3 retries a connection that failed before the request went out, and a 429 or 503 (the expert's
        # queue was full, or it was not ready: it did nothing), after the Retry-After the expert sent. A request
        # that reached the expert and then lost its connection is not sent again: /chat could run twice.
        self._http.mount(self.base_url, HTTPAdapter(max_retries=Retry(
            total=retries, connect=retries, read=False, other=False, status=retries, status_forcelist=(429, 503),
            allowed_methods=None, backoff_factor=backoff_s, respect_retry_after_header=True, raise_on_status=False)))
        self.a2a = False  # set once the card is read: ask this agent over A2A

    def _request(self, method: str, path: str, timeout=None, **kwargs) -> requests.Response:
        url = f"{self.base_url}{path}"
        try:
            return self._http.request(method, url, headers=tracing.inject(self._headers),
                                      timeout=timeout or self.timeout, **kwargs)
        except requests.ConnectionError as exc:
            # urllib3 says 'Connection aborted' when the request went out and the connection broke before the
            # answer was read: the expert may have acted on it (so it is not sent again, see Retry above)
            what = "lost the connection to" if "aborted" in str(exc) else "cannot connect to"
            raise ExpertError(self.name, f"{what} {url} ({_short(exc)})", unanswered=True) from None
        except requests.Timeout:
            raise ExpertError(self.name, f"no answer from {url} within {self.timeout[1]:g}s") from None
        except requests.RequestException as exc:
            raise ExpertError(self.name, _short(exc)) from None

    def card(self) -> AgentCard:
        # the A2A version we read, as 1.0 clients must say: an agent serving 0.3 too then sends the 1.0 card only
        resp = self._request("GET", "/.well-known/agent-card.json", timeout=(self.timeout[0], 10),
                             params={A2A_VERSION_HEADER: "1.0"})
        _raise_for(resp, self.name)
        return AgentCard.model_validate(resp.json())

    def ready(self) -> tuple[bool, str]:
        """(ready, why not). Never raises. An A2A agent is ready when its card answers."""
        if self.a2a:
            try:
                self.card()
            except ExpertError as exc:
                return False, exc.reason
            return True, ""
        try:
            resp = self._request("GET", "/ready", timeout=(self.timeout[0], 10))
        except ExpertError as exc:
            return False, exc.reason
        if resp.status_code == 200:
            return True, ""
        return False, _message(resp)

    def chat(self, intent: str, timeout_s: float | None = None, **fields) -> ChatResponse:
        """Ask over /chat (or A2A); with ``timeout_s`` the expert stops generating then, and so does the wait."""
        if self.a2a:
            return self._a2a_chat(intent)
        body = {"intent": intent, **fields}
        timeout = self.timeout
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
            timeout = (self.timeout[0], min(self.timeout[1], timeout_s + 5))  # the expert's 504 arrives first
        resp = self._request("POST", "/chat", timeout=timeout, json=body)
        _raise_for(resp, self.name)
        return ChatResponse.model_validate(resp.json())

    def _a2a_chat(self, intent: str) -> ChatResponse:
        """One blocking A2A SendMessage; the answer is the task's artifacts (or the agent's message) as text."""
        from a2a.client import A2AClientError, ClientConfig, create_client
        from a2a.helpers.proto_helpers import get_artifact_text, get_message_text, new_text_message
        from a2a.types.a2a_pb2 import Role, SendMessageRequest, TaskState

        headers = tracing.inject(self._headers)  # this thread's span, before the event loop runs

        async def ask() -> str:
            timeout = httpx.Timeout(self.timeout[1], connect=self.timeout[0])
            async with httpx.AsyncClient(timeout=timeout, headers=headers) as http:
                client = await create_client(self.base_url, client_config=ClientConfig(httpx_client=http,
                                                                                        streaming=False))
                message = new_text_message(intent, role=Role.ROLE_USER)
                async for event in client.send_message(SendMessageRequest(message=message)):
                    if event.HasField("message"):
                        return get_message_text(event.message)
                    task = event.task
                    if task.status.state == TaskState.TASK_STATE_COMPLETED:
                        return "".join(get_artifact_text(a) for a in task.artifacts)
                    if task.status.state in (TaskState.TASK_STATE_FAILED, TaskState.TASK_STATE_REJECTED,
                                             TaskState.TASK_STATE_CANCELED):
                        reason = get_message_text(task.status.message) if task.status.HasField("message") else ""
                        raise ExpertError(self.name, f"A2A task {TaskState.Name(task.status.state)}: {reason}")
            raise ExpertError(self.name, "the A2A agent ended without an answer")

        started = time.perf_counter()
        try:
            text = asyncio.run(ask())
        except (A2AClientError, httpx.HTTPError) as exc:
            raise ExpertError(self.name, f"A2A call to {self.base_url} failed: {_short(exc)}") from None
        return ChatResponse(response=text.strip(), persona=self.name, model="a2a", session_id=None,
                            usage={"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                            finish_reason="stop", elapsed_ms=int((time.perf_counter() - started) * 1000))


def _message(resp: requests.Response) -> str:
    try:
        return f"HTTP {resp.status_code}: {resp.json()['error']['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {resp.status_code}"


def _raise_for(resp: requests.Response, name: str) -> None:
    if resp.status_code >= 400:
        raise ExpertError(name, _message(resp), resp.status_code)


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + "..."
