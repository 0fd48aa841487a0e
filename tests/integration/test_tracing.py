"""One trace across processes: a real panel (two experts and the orchestrator on the embedded model) exporting over
OTLP/HTTP to a real receiver process on loopback (harness/otlp_receiver.py, decoding with opentelemetry-proto)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import requests

from harness.services import ROOT, expert, free_port, orchestrator_service

pytestmark = pytest.mark.integration

TASK = "Is a company liable under the GDPR when its AI model leaks personal data?"


@pytest.fixture(scope="module")
def traced_panel(tmp_path_factory):
    out = tmp_path_factory.mktemp("otlp") / "spans.jsonl"
    port = free_port()
    receiver = subprocess.Popen([sys.executable, "-m", "harness.otlp_receiver", "--port", str(port), "--out",
                                 str(out)], cwd=ROOT)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_BSP_SCHEDULE_DELAY": "200"}
    experts = [expert(p, tmp_path_factory.mktemp(p), env=env) for p in ("law_expert", "ai_expert")]
    for service in experts:
        service.start(wait="health")
    for service in experts:
        service.wait()
    orch = orchestrator_service(tmp_path_factory.mktemp("orch"), [e.url for e in experts], env=env).start()
    yield orch, out
    for service in [orch, *experts]:
        service.stop()
    receiver.terminate()
    receiver.wait(10)


def spans_of_trace(out, trace_id: str, services: set[str], timeout: float = 30) -> list[dict]:
    """The receiver's spans of one trace, once every service has sent its own."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        mine = [r for r in rows if r["trace_id"] == trace_id]
        if {r["service"] for r in mine} >= services or time.monotonic() > deadline:
            return mine
        time.sleep(0.5)


def test_a_panel_run_is_one_connected_trace_across_the_three_services(traced_panel):
    orch, out = traced_panel
    body = requests.post(f"{orch.url}/integrate", json={"task": TASK, "strategy": "panel"}, timeout=600).json()
    deadline = time.monotonic() + 30
    run = None
    while run is None and time.monotonic() < deadline:  # the run's span carries its id
        rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        run = next((r for r in rows if r["attributes"].get("conclave.run.id") == body["run_id"]), None)
        time.sleep(0.5)
    assert run is not None and run["name"] == "invoke_agent Conclave panel" and run["service"] == "orchestrator"
    spans = spans_of_trace(out, run["trace_id"], {"orchestrator", "law_expert", "ai_expert"})
    by_id = {s["span_id"]: s for s in spans}
    assert {s["service"] for s in spans} == {"orchestrator", "law_expert", "ai_expert"}
    # connected: every span but the run's has its parent in the trace
    assert all(s["parent_span_id"] in by_id for s in spans if s["span_id"] != run["span_id"])
    tools = [s for s in spans if s["name"].startswith("execute_tool ")]
    assert sorted(t["attributes"]["gen_ai.tool.name"] for t in tools) == sorted(body["experts"])
    assert all(t["parent_span_id"] == run["span_id"] for t in tools)
    for tool in tools:
        expert_name = tool["attributes"]["gen_ai.tool.name"]
        (chat,) = [s for s in spans if s["parent_span_id"] == tool["span_id"]]
        assert chat["service"] == expert_name and chat["name"].startswith("chat ")
        figures = body["usage"]["experts"][expert_name]
        assert chat["attributes"]["gen_ai.usage.input_tokens"] == figures["input_tokens"] > 0
        assert chat["attributes"]["gen_ai.usage.output_tokens"] == figures["output_tokens"] > 0
        assert chat["attributes"]["gen_ai.operation.name"] == "chat" and "gen_ai.input.messages" not in chat[
            "attributes"]
    own = [s for s in spans if s["name"].startswith("chat ") and s["parent_span_id"] == run["span_id"]]
    assert len(own) == body["usage"]["orchestrator"]["calls"]  # the orchestrator's merge, when it generated one
    assert run["attributes"]["gen_ai.usage.output_tokens"] == body["usage"]["total"]["output_tokens"]
