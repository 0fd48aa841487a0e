"""The whole system on the embedded model: two real experts and a real orchestrator, over real HTTP."""

from __future__ import annotations

import json
import re

import pytest
import requests

from common.text import is_degenerate
from harness.services import expert, free_port, orchestrator_service

pytestmark = pytest.mark.integration
SEED_TASK = "制定人工智能合规标准，避免人工智能伤害人类"


def integrate(service, **body):
    return requests.post(f"{service.url}/integrate", json=body, timeout=900)


def uncited(text: str) -> str:
    return re.sub(r"\s*\[\d+\]", "", text)


def assert_a_composed_answer(body: dict) -> None:
    """What every final answer must be: no loop, made of what the experts said, and saying who said what."""
    response = body["response"]
    assert response.strip() and "iteration limit" not in response and not is_degenerate(response), response
    assert body["merge"] in ("generated", "extractive") and body["attribution"], body
    consulted = set(body["experts"])
    for part in body["attribution"]:
        assert part["text"] in response and part["experts"] and set(part["experts"]) <= consulted
        assert all(body["steps"][i]["expert"] in part["experts"] for i in part["steps"])
    answers = [s["observation"] for s in body["steps"] if s["ok"]]
    if body["merge"] == "extractive":  # the experts' own sentences, word for word (citations renumbered)
        answers = [uncited(a) for a in answers]
        assert all(any(uncited(part["text"]) in a for a in answers) for part in body["attribution"])
    else:
        assert body["checks"]["passed"] and body["checks"]["grounded_share"] >= 0.8


def test_seed_call_returns_an_answer_drawn_from_an_expert(orchestrator):
    resp = integrate(orchestrator, task=SEED_TASK)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert_a_composed_answer(body)
    assert body["experts"] and all(s["ok"] for s in body["steps"])
    # the experts the ranking chose were asked at once: the run's ranking rides on whichever answered first
    assert body["steps"][0]["ranking"] and all(s["ranking"] is None for s in body["steps"][1:])
    assert {s["chosen_by"] for s in body["steps"]} == {"ranking"} and all(s["observation"].strip()
                                                                          for s in body["steps"])
    assert any(s["reason"].startswith("ranked first") for s in body["steps"])


def test_react_asks_only_the_computer_scientist_a_plain_tech_question(orchestrator):
    body = integrate(orchestrator, task="How does a neural network learn from training data?").json()
    assert body["experts"] == ["ai_expert"]
    assert_a_composed_answer(body)
    assert any(w in body["response"].lower() for w in ("neural", "network", "learn", "data", "train"))


def test_panel_consults_every_expert_and_composes_one_answer(orchestrator):
    body = integrate(orchestrator, task="Who is liable when an AI system leaks personal data?",
                     strategy="panel").json()
    assert sorted(body["experts"]) == ["ai_expert", "law_expert"]
    assert {s["chosen_by"] for s in body["steps"]} == {"panel"}
    assert_a_composed_answer(body)


def test_streaming_integrate_sends_steps_then_the_final_answer(orchestrator):
    with requests.post(f"{orchestrator.url}/integrate", stream=True, timeout=900,
                       json={"task": "What does GDPR say about consent?", "stream": True, "strategy": "panel"}) as resp:
        lines = [line for line in resp.iter_lines(decode_unicode=True) if line]
    events = [line[7:] for line in lines if line.startswith("event: ")]
    assert events[0] == "start" and events[-1] == "final"
    assert events.count("action") == 2 and events.count("observation") == 2
    assert_a_composed_answer(json.loads(lines[-1].removeprefix("data: ")))


def test_runs_survive_an_orchestrator_restart(tmp_path, law_expert, ai_expert):
    service = orchestrator_service(tmp_path, [law_expert.url]).start()
    try:
        run_id = integrate(service, task="What is a contract?", strategy="panel").json()["run_id"]
        service.stop()
        service.start()
        record = requests.get(f"{service.url}/runs/{run_id}", timeout=10).json()
        assert record["status"] == "done" and record["task"] == "What is a contract?" and record["response"]
    finally:
        service.stop()


def test_an_expert_killed_mid_run_is_named_and_the_run_finishes(tmp_path, law_expert):
    doomed = expert("ai_expert", tmp_path / "doomed").start()
    service = orchestrator_service(tmp_path / "orch", [law_expert.url, doomed.url]).start()
    try:
        with requests.post(f"{service.url}/integrate", stream=True, timeout=900,
                           json={"task": "How do neural networks handle personal data?", "strategy": "panel",
                                 "stream": True}) as resp:
            final = None
            for line in resp.iter_lines(decode_unicode=True):
                if line.startswith("event: start"):
                    doomed.kill()
                if line.startswith("data: ") and '"run_id"' in line and '"steps"' in line:
                    final = json.loads(line[6:])
        failed = [s for s in final["steps"] if not s["ok"]]
        assert failed and failed[0]["expert"] == "ai_expert" and "ai_expert" in failed[0]["observation"]
        assert final["response"].strip()
    finally:
        doomed.stop()
        service.stop()


def test_orchestrator_before_experts_reports_them_missing_then_recovers(tmp_path):
    port = free_port()
    late_url = f"http://127.0.0.1:{port}"
    service = orchestrator_service(tmp_path / "orch", [late_url]).start(wait="health")
    late = None
    try:
        resp = requests.get(f"{service.url}/ready", timeout=10)
        assert resp.status_code == 503 and late_url in resp.json()["experts_missing"]
        assert integrate(service, task="x").status_code == 503
        late = expert("law_expert", tmp_path / "late", port=port).start()
        service.wait("ready", timeout=120)
        assert integrate(service, task="What is a tort?", strategy="panel").status_code == 200
    finally:
        if late:
            late.stop()
        service.stop()


@pytest.mark.parametrize("body, status", [({}, 400), ({"task": " "}, 400), ({"task": "x", "strategy": "x"}, 400),
                                          ({"task": "x" * 80_000}, 413)])
def test_bad_input_over_real_http(orchestrator, body, status):
    resp = requests.post(f"{orchestrator.url}/integrate", json=body, timeout=30)
    assert resp.status_code == status and "message" in resp.json()["error"]


def test_a_connection_reset_mid_answer_is_not_sent_again_and_the_run_ends(tmp_path, law_expert):
    """A proxy resets the orchestrator's /chat connection after the answer's first bytes: the expert received the
    request exactly once (a POST that reached it is never retried), the failed step names the expert, and the run
    ends well within RUN_TIMEOUT with an honest answer."""
    import time

    from harness.faults import ResettingProxy

    def chats() -> float:
        text = requests.get(f"{law_expert.url}/metrics", timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("conclave_requests_total") and 'route="/chat"' in line)

    proxy = ResettingProxy(law_expert.port, lambda request: request.startswith(b"POST /chat"))
    service = orchestrator_service(tmp_path, [proxy.url], env={"RUN_TIMEOUT": "120"}).start()
    try:
        before = chats()
        started = time.monotonic()
        body = integrate(service, task="What is a contract?").json()
        elapsed = time.monotonic() - started
        assert proxy.resets == 1 and chats() - before == 1
        failed = [s for s in body["steps"] if not s["ok"]]
        assert failed and failed[0]["expert"] == "law_expert" and "law_expert" in failed[0]["observation"]
        assert "lost the connection" in failed[0]["observation"]
        assert body["merge"] == "none" and elapsed < 120
    finally:
        service.stop()
        proxy.close()


def test_sigterm_during_a_stream_ends_it_with_an_error_event_and_no_run_stays_running(tmp_path, law_expert):
    """Stopping the orchestrator (SIGTERM, as docker and honcho do) while a run streams: the stream ends at once
    with an error event saying why, and after a restart the run is failed, not 'running' for ever."""
    import os
    import signal
    import time

    service = orchestrator_service(tmp_path, [law_expert.url]).start()
    try:
        events, run_id = [], None
        with requests.post(f"{service.url}/integrate", stream=True, timeout=120,
                           json={"task": "What is a contract?", "stream": True}) as resp:
            for line in resp.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    events.append(line[7:])
                    if line == "event: action":
                        os.killpg(service.proc.pid, signal.SIGTERM)
                        stopped_at = time.monotonic()
                elif line.startswith("data: ") and run_id is None:
                    run_id = json.loads(line[6:])["run_id"]
                elif line.startswith("data: ") and events[-1] == "error":
                    error = json.loads(line[6:])["error"]
        assert events[-1] == "error" and "shutting down" in error["message"], events
        assert time.monotonic() - stopped_at < 5
        service.proc.wait(30)
        service.start()
        record = requests.get(f"{service.url}/runs/{run_id}", timeout=10).json()
        assert record["status"] == "failed", record["status"]
    finally:
        service.stop()
