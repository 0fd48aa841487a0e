"""Replicas of one expert: URLs whose cards name the same persona are one expert; consultations are spread over
them, and a replica that answered nothing is passed over without the run failing. The real thing (two expert
processes behind the orchestrator, one SIGKILLed under load) is in tests/e2e/test_scale.py (make e2e-scale)."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from common.client import ExpertClient, ExpertError
from harness.services import free_port
from orchestrator.experts import Replicas
from tests.unit.test_orchestrator import LAW_TASK, _counting_server, _http, make_client, step

ANSWER = json.dumps({"response": "from the live one", "persona": "law_expert", "model": "m", "session_id": "s",
                     "elapsed_ms": 1, "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                     "finish_reason": "stop"}).encode()


def test_urls_of_one_persona_are_one_expert_and_consultations_alternate(tmp_path, live_expert):
    one = live_expert("law_expert", "Article 28 requires a processing contract.")
    two = live_expert("law_expert", "Article 28 requires a processing contract.")
    ai = live_expert("ai_expert", "Use encryption.")
    client, _ = make_client(tmp_path, [one.url, two.url, ai.url],
                            [step("Ask the lawyer.", "law_expert", LAW_TASK)] * 4)
    experts = client.get("/experts").get_json()["experts"]
    assert [(e["name"], e["url"]) for e in experts] == [("law_expert", one.url), ("law_expert", two.url),
                                                         ("ai_expert", ai.url)]
    for _ in range(4):
        body = client.post("/integrate", json={"task": LAW_TASK, "strategy": "react"}).get_json()
        assert body["experts"] == ["law_expert"] and body["steps"][0]["ok"]
    assert len(one.engine.requests) == 2 and len(two.engine.requests) == 2


def test_a_stopped_replica_is_passed_over_and_the_run_is_answered(tmp_path, live_expert):
    one = live_expert("law_expert", "Article 28 requires a processing contract.")
    two = live_expert("law_expert", "Article 28 requires a processing contract.")
    client, _ = make_client(tmp_path, [one.url, two.url], [step("Ask the lawyer.", "law_expert", LAW_TASK)] * 3)
    assert len(client.get("/experts").get_json()["experts"]) == 2  # both cards read
    one.stop()
    for _ in range(3):
        body = client.post("/integrate", json={"task": LAW_TASK, "strategy": "react"}).get_json()
        assert body["response"] == "Article 28 requires a processing contract." and body["steps"][0]["ok"]
    assert len(two.engine.requests) == 3


def _replicas(*urls: str) -> Replicas:
    clients = [ExpertClient(u, retries=0, read_timeout_s=2) for u in urls]
    replicas = Replicas(clients[0], "law_expert", a2a=False)
    for c in clients[1:]:
        replicas.add(c)
    return replicas


def test_a_replica_that_dropped_the_request_unanswered_is_asked_elsewhere_once():
    dropped, dropped_seen = _counting_server([None])  # read the request, then died without a response
    live, live_seen = _counting_server([_http("200 OK", ANSWER)])
    assert _replicas(dropped, live).chat("q").response == "from the live one"
    assert len(dropped_seen) == 1 and len(live_seen) == 1
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens
    live, live_seen = _counting_server([_http("200 OK", ANSWER)])
    assert _replicas(down, live).chat("q").response == "from the live one"


def test_a_load_balancers_502_is_unanswered_but_an_answer_or_a_timeout_is_never_asked_again():
    lb, _ = _counting_server([_http("502 Bad Gateway", b"{}")])
    live, live_seen = _counting_server([_http("200 OK", ANSWER)])
    assert _replicas(lb, live).chat("q").response == "from the live one"

    refusing, _ = _counting_server([_http("400 Bad Request", b'{"error": {"message": "no"}}')])
    other, other_seen = _counting_server([_http("200 OK", ANSWER)])
    with pytest.raises(ExpertError, match="no"):
        _replicas(refusing, other).chat("q")
    assert other_seen == []

    listener = socket.socket()  # reads the request and thinks for longer than the client waits
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held = []
    threading.Thread(target=lambda: held.append(listener.accept()), daemon=True).start()
    other, other_seen = _counting_server([_http("200 OK", ANSWER)])
    with pytest.raises(ExpertError, match="within"):
        _replicas(f"http://127.0.0.1:{listener.getsockname()[1]}", other).chat("q")
    assert other_seen == []  # it may still be answering: asking another could answer twice
    listener.close()
