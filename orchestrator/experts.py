"""Discovery: each expert's agent card becomes a named expert with a client; missing ones are retried later.
URLs whose cards name the same persona of ours are replicas of one expert, and consultations are spread over them."""

from __future__ import annotations

import itertools
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


class Replicas:
    """One expert served at several URLs (or one: then it is just that client). Consultations go round-robin over
    the replicas that are up; one that answered nothing (unreachable, killed mid-answer, not ready, queue full) is
    passed over until it is seen ready again, and the question goes to the next, so a lost replica costs the user
    a slower step, not a failed one. An answer that came back, or a wait that timed out (the replica may still be
    answering), is never asked again elsewhere."""

    def __init__(self, client: ExpertClient, name: str, a2a: bool):
        self.name, self.a2a = name, a2a  # every replica's client names the expert and speaks alike
        self.clients: list[ExpertClient] = []
        self._down: set[str] = set()
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self.add(client)

    def add(self, client: ExpertClient) -> None:
        with self._lock:
            client.name, client.a2a = self.name, self.a2a
            self.clients.append(client)

    def mark(self, url: str, up: bool) -> None:
        with self._lock:
            (self._down.discard if up else self._down.add)(url)

    def _order(self) -> list[ExpertClient]:
        """Every replica, starting at the next one's turn, those that are up first."""
        with self._lock:
            start = next(self._turn) % len(self.clients)
            turn = self.clients[start:] + self.clients[:start]
            return sorted(turn, key=lambda c: c.base_url in self._down)

    def chat(self, intent: str, timeout_s: float | None = None, **fields):
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        failure = None
        for client in self._order():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            try:
                answer = client.chat(intent, timeout_s=left, **fields)
            except ExpertError as exc:
                if not exc.unanswered:
                    raise
                self.mark(client.base_url, up=False)
                failure = failure or exc
                continue
            self.mark(client.base_url, up=True)
            return answer
        raise failure or ExpertError(self.name, "the run's time ran out before a replica could be asked")


@dataclass
class Expert:
    name: str
    url: str
    card: AgentCard
    client: Replicas

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
            if url in self._experts:
                return self._experts[url]
            name = tool_name(card)
            same = next((e for e in self._experts.values() if e.name == name and e.card.conclave), None)
            if same is not None and card.conclave:  # another replica of one of our personas
                same.client.add(client)
                self._experts[url] = same
                return same
            name = self._unique_name(name, url)
            # another team's agent is asked over A2A; ours over /chat, which carries sources, unless told otherwise
            a2a = self.transport == "a2a" or not card.conclave
            expert = Expert(name, url, card, Replicas(client, name, a2a))
            self._experts[url] = expert
            return expert

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
                found = [self._experts[u] for u in self.urls if u in self._experts]
        else:
            found = [e for e in (self._discover(u) for u in self.urls) if e is not None]
        return list({id(e): e for e in found}.values())  # replicas are one expert

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
            client = next(c for c in expert.client.clients if c.base_url == url) if expert else self._make_client(url)
            ready, why = client.ready()
            if expert:
                expert.client.mark(url, ready)
            out.append(ExpertStatus(
                name=expert.name if expert else url, url=url, description=expert.description if expert else "",
                healthy=expert is not None or ready, ready=ready, detail=why))
        self._statuses = out
        return out
