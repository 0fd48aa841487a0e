"""The orchestrator's MCP endpoint on fakes, as the specification words it (regressions from the MCP conformance
suite, make e2e-conformance)."""

from __future__ import annotations

import json

import pytest

from common.settings import OrchestratorSettings
from orchestrator.app import create_app
from orchestrator.routing import Router
from tests.fakes import KeywordEmbedder, ScriptedEngine

ACCEPT = {"Accept": "application/json, text/event-stream"}


@pytest.fixture
def mcp(tmp_path):
    """A JSON-RPC caller of /mcp in an initialized session (the orchestrator's one expert is unreachable)."""
    client = create_app(OrchestratorSettings(expert_urls="http://127.0.0.1:9", data_dir=tmp_path, retries=0),
                        llm=ScriptedEngine([]), router_factory=lambda: Router(KeywordEmbedder()),
                        judge_factory=KeywordEmbedder).test_client()
    init = client.post("/mcp", headers=ACCEPT, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    headers = {**ACCEPT, "mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    client.post("/mcp", headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})

    def call(method: str, params: dict) -> dict:
        resp = client.post("/mcp", headers=headers, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                                          "params": params})
        text = resp.get_data(as_text=True)
        if resp.mimetype == "text/event-stream":  # the answer is the stream's one JSON-RPC message
            text = next(line[len("data:"):] for line in text.splitlines() if line.startswith("data:") and
                        line[len("data:"):].strip())
        return json.loads(text)

    return call


def test_an_unknown_tool_is_a_protocol_error_not_a_tool_result(mcp):
    """Spec 2025-11-25, server/tools, Error Handling: unknown tools are protocol errors (-32602); ``isError`` results
    are for a tool that ran. The SDK's server answered an unknown name with an ``isError`` result."""
    answer = mcp("tools/call", {"name": "test_simple_text", "arguments": {}})
    assert "result" not in answer
    assert answer["error"]["code"] == -32602 and answer["error"]["message"] == "Unknown tool: test_simple_text"


def test_a_known_tool_that_fails_is_a_tool_result_with_is_error(mcp):
    answer = mcp("tools/call", {"name": "consult_panel", "arguments": {"task": "x", "strategy": "vote"}})
    assert answer["result"]["isError"] is True and "strategy" in answer["result"]["content"][0]["text"]
