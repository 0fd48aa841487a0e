"""Discovery: each expert's agent card becomes a named expert with a client; missing ones are retried later."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from common.client import ExpertClient, ExpertError
from common.protocol import AgentCard, ExpertStatus

log = logging.getLogger(__name__)

# How long a request waits for the first polling round (cards read, readiness known) after start-up.
FIRST_ROUND_WAIT_S = 30


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
    """The experts named by EXPERT_URLS. A card is read once.

    With ``poll_s`` a background thread reads missing cards and asks every expert whether it is ready every
    ``poll_s`` seconds, and requests read that state: a dead expert costs its probes' timeouts there, not on every
    ``/integrate``, ``/ready`` or ``/experts``. Without it (tests, tools) everything is looked up on use.
    """

    def __init__(self, urls: Iterable[str], make_client, transport: str = "auto", poll_s: float | None = None):
        self.urls = list(urls)
        self._make_client = make_client
        self.transport = transport
        self._experts: dict[str, Expert] = {}  # by url
        self._lock = threading.Lock()
        self._polling = bool(poll_s)
        self._statuses: list[ExpertStatus] = []
        self._first_round = threading.Event()
        if poll_s:
            threading.Thread(target=self._poll_forever, args=(poll_s,), name="expert-poll", daemon=True).start()

    def _poll_forever(self, interval_s: float) -> None:
        while True:
            try:
                self.poll()
            except Exception:  # a probe that failed in a way of its own: the next round tries again
                log.exception("polling the experts failed")
            self._first_round.set()
            time.sleep(interval_s)

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
        """Experts whose card was read (when not polling, discovering any not yet seen)."""
        if self._polling:
            self._first_round.wait(FIRST_ROUND_WAIT_S)
            with self._lock:
                return [self._experts[u] for u in self.urls if u in self._experts]
        return [e for e in (self._discover(u) for u in self.urls) if e is not None]

    def select(self, names: list[str] | None, experts: list[Expert] | None = None) -> list[Expert]:
        experts = self.known() if experts is None else experts
        if names:
            experts = [e for e in experts if e.name in names or e.card.name in names]
        return experts

    def statuses(self) -> list[ExpertStatus]:
        """Each expert's state: the last polling round's, or asked now when not polling."""
        if self._polling and self._first_round.wait(FIRST_ROUND_WAIT_S):
            return list(self._statuses)
        return self.poll()

    def poll(self) -> list[ExpertStatus]:
        """One round: read the cards not read yet and ask every expert whether it is ready."""
        out = []
        for url in self.urls:
            expert = self._discover(url)
            client = expert.client if expert else self._make_client(url)
            ready, why = client.ready()
            out.append(ExpertStatus(
                name=expert.name if expert else url, url=url, description=expert.description if expert else "",
                healthy=expert is not None or ready, ready=ready, detail=why))
        self._statuses = out
        return out
