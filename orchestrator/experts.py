"""Discovery: each expert's agent card becomes a named expert with a client; missing ones are retried later."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from common.client import ExpertClient, ExpertError
from common.protocol import AgentCard, ExpertStatus


def tool_name(card: AgentCard) -> str:
    """The expert's one name: our experts' persona id (``law_expert``, as in their URLs, logs and ``/integrate``'s
    ``experts``); for another agent its card name made writable ('Legal Expert' -> 'legal_expert'). Either is a name
    a ReAct step can write and a grammar can list."""
    persona = card.conclave.get("persona")
    return re.sub(r"[^a-z0-9]+", "_", (persona or card.name).lower()).strip("_") or "expert"


@dataclass
class Expert:
    name: str
    url: str
    card: AgentCard
    client: ExpertClient

    @property
    def description(self) -> str:
        return self.card.description


class ExpertRegistry:
    """The experts named by EXPERT_URLS. A card is read once; an expert that was down is looked up again on use."""

    def __init__(self, urls: Iterable[str], make_client, transport: str = "auto"):
        self.urls = list(urls)
        self._make_client = make_client
        self.transport = transport
        self._experts: dict[str, Expert] = {}  # by url
        self._lock = threading.Lock()

    def _discover(self, url: str) -> Expert | None:
        with self._lock:
            if url in self._experts:
                return self._experts[url]
        client = self._make_client(url)
        try:
            card = client.card()
        except ExpertError:
            return None
        with self._lock:
            expert = Expert(self._unique_name(tool_name(card), url), url, card, client)
            client.name = expert.name
            # another team's agent is asked over A2A; ours over /chat, which carries sources, unless told otherwise
            client.a2a = self.transport == "a2a" or not card.conclave
            return self._experts.setdefault(url, expert)

    def _unique_name(self, name: str, url: str) -> str:
        taken = {e.name for u, e in self._experts.items() if u != url}
        candidate, n = name, 2
        while candidate in taken:
            candidate, n = f"{name}_{n}", n + 1
        return candidate

    def known(self) -> list[Expert]:
        """Experts whose card was read (discovering any not yet seen)."""
        return [e for e in (self._discover(u) for u in self.urls) if e is not None]

    def select(self, names: list[str] | None, experts: list[Expert] | None = None) -> list[Expert]:
        experts = self.known() if experts is None else experts
        if names:
            experts = [e for e in experts if e.name in names or e.card.name in names]
        return experts

    def statuses(self) -> list[ExpertStatus]:
        out = []
        for url in self.urls:
            expert = self._discover(url)
            client = expert.client if expert else self._make_client(url)
            ready, why = client.ready()
            out.append(ExpertStatus(
                name=expert.name if expert else url, url=url, description=expert.description if expert else "",
                healthy=expert is not None or ready, ready=ready, detail=why))
        return out
