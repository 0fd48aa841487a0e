"""The panel as an MCP server, through the official mcp client: the handshake, the tools, progress while experts
answer, a direct question to one expert, and Origin and key checks."""

from __future__ import annotations

import asyncio
from itertools import pairwise

import requests
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from harness.services import orchestrator_service


async def session_call(url: str, tool: str, arguments: dict, headers=None):
    progress: list[tuple[float, str]] = []

    async def on_progress(value, total, message):
        progress.append((value, message))

    import httpx

    async with httpx.AsyncClient(headers=headers or {}, timeout=600) as http, \
            streamable_http_client(url, http_client=http) as (read, write, *_), ClientSession(read, write) as session:
        init = await session.initialize()
        for _ in range(20):  # per-expert tools appear as the experts' cards are read
            tools = [t.name for t in (await session.list_tools()).tools]
            if any(t.startswith("ask_") for t in tools):
                break
            await asyncio.sleep(1)
        result = await session.call_tool(tool, arguments, progress_callback=on_progress)
        return init, tools, result, progress


def test_consult_the_panel_over_mcp_with_progress(orchestrator):
    init, tools, result, progress = asyncio.run(session_call(
        f"{orchestrator.url}/mcp", "consult_panel", {"task": "What is the maximum fine under the GDPR?"}))
    assert init.protocol_version == "2025-11-25" and init.server_info.name == "conclave"
    assert {"consult_panel", "ask_law_expert", "ask_ai_expert"} <= set(tools)
    text = result.content[0].text
    assert not result.is_error and "20 million" in text and "Sources:" in text and "law_expert" in text
    values, messages = zip(*progress, strict=True)
    assert messages[0].startswith("asking ") and any(m.endswith("answered") for m in messages)
    # the spec (utilities/progress): the value MUST increase with each notification; an expert's answer reported
    # the same value as its question (found by TypeScript's SDK, make e2e-conformance)
    assert all(a < b for a, b in pairwise(values)), values


def test_ask_one_expert_directly_and_bad_arguments_are_tool_errors(orchestrator):
    _, _, result, _ = asyncio.run(session_call(f"{orchestrator.url}/mcp", "ask_ai_expert",
                                               {"question": "What is dropout in neural networks?"}))
    assert not result.is_error and "dropout" in result.content[0].text.lower()
    _, _, bad, _ = asyncio.run(session_call(f"{orchestrator.url}/mcp", "consult_panel",
                                            {"task": "x", "strategy": "vote"}))
    assert bad.is_error


def test_origin_and_key_are_checked(tmp_path, law_expert):
    url = None
    orch = orchestrator_service(tmp_path, [law_expert.url], env={"API_KEY": "k3y"}).start()
    try:
        url = f"{orch.url}/mcp"
        body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        accept = {"Accept": "application/json, text/event-stream"}
        assert requests.post(url, json=body, headers=accept, timeout=10).status_code == 401
        evil = requests.post(url, json=body, timeout=10, headers={
            **accept, "Authorization": "Bearer k3y", "Origin": "http://evil.example"})
        assert evil.status_code == 403
        ok = requests.post(url, json=body, timeout=10, headers={**accept, "Authorization": "Bearer k3y"})
        assert ok.status_code == 200
    finally:
        orch.stop()
