"""Typed HTTP client for one expert: real timeouts, retries with backoff on connection errors, one domain error."""

from __future__ import annotations

import time

import requests

from common.protocol import AgentCard, ChatResponse


class ExpertError(Exception):
    """An expert could not answer. The message names the expert and the reason, fit to show an agent or a user."""

    def __init__(self, expert: str, reason: str, status: int | None = None):
        super().__init__(f"expert {expert} failed: {reason}")
        self.expert, self.reason, self.status = expert, reason, status


class ExpertClient:
    def __init__(self, base_url: str, api_key: str | None = None, connect_timeout_s: float = 5.0,
                 read_timeout_s: float = 300.0, retries: int = 2, backoff_s: float = 0.5,
                 session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self.name = self.base_url  # replaced by the expert's tool name once its card is read
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.retries = retries
        self.backoff_s = backoff_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = session or requests.Session()

    def _request(self, method: str, path: str, timeout=None, **kwargs) -> requests.Response:
        """Retry only what is safe to retry: the connection failing before the expert saw the request."""
        url = f"{self.base_url}{path}"
        for attempt in range(self.retries + 1):
            try:
                return self._http.request(method, url, headers=self._headers, timeout=timeout or self.timeout,
                                          **kwargs)
            except requests.ConnectionError as exc:
                if attempt == self.retries:
                    raise ExpertError(self.name, f"cannot connect to {url} ({_short(exc)})") from None
                time.sleep(self.backoff_s * 2**attempt)
            except requests.Timeout:
                raise ExpertError(self.name, f"no answer from {url} within {self.timeout[1]:g}s") from None
            except requests.RequestException as exc:
                raise ExpertError(self.name, _short(exc)) from None
        raise AssertionError("unreachable")

    def card(self) -> AgentCard:
        resp = self._request("GET", "/.well-known/agent-card.json", timeout=(self.timeout[0], 10))
        _raise_for(resp, self.name)
        return AgentCard.model_validate(resp.json())

    def ready(self) -> tuple[bool, str]:
        """(ready, why not). Never raises."""
        try:
            resp = self._request("GET", "/ready", timeout=(self.timeout[0], 10))
        except ExpertError as exc:
            return False, exc.reason
        if resp.status_code == 200:
            return True, ""
        return False, _message(resp)

    def chat(self, intent: str, **fields) -> ChatResponse:
        resp = self._request("POST", "/chat", json={"intent": intent, **fields})
        _raise_for(resp, self.name)
        return ChatResponse.model_validate(resp.json())


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
