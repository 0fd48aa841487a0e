"""The panel as an MCP server (streamable HTTP at ``/mcp``, the official ``mcp`` SDK).

Tools: ``consult_panel`` runs a task through the panel and reports a progress notification as each expert is asked
and answers; ``ask_<expert>`` asks one expert directly (registered as the experts are discovered). The SDK serves the
2025-11-25 revision (initialize handshake, sessions) and the stateless 2026-07-28 one on the same path. The Host and
Origin headers are checked against the configured hosts (DNS rebinding); ``API_KEY`` requires a bearer token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Literal
from urllib.parse import urlparse

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS
from pydantic import ValidationError
from starlette.middleware import Middleware

from common.a2a import Bearer
from common.client import ExpertError
from common.protocol import IntegrateRequest, IntegrateResponse
from orchestrator.events import Answered, Asking, Failed, Finished

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def answer_text(result: IntegrateResponse) -> str:
    """A run's answer as an MCP client shows it: the answer, its sources, and who was asked."""
    lines = [result.response]
    if result.sources:
        lines.append("\nSources:")
        lines += [f"[{s.number}] {s.title} (via {s.expert})" for s in result.sources]
    lines.append(f"\nExperts consulted: {', '.join(result.experts) or 'none'} (run {result.run_id})")
    return "\n".join(lines)


class PanelServer(MCPServer):
    """The SDK's server, with the specification's error for a tool it does not have: a JSON-RPC error (-32602,
    'Unknown tool: <name>'), not a tool result with ``isError`` (which the spec keeps for a tool that ran and failed,
    so a client's model may retry with other arguments; an unknown name is the caller's mistake, not the tool's)."""

    async def call_tool(self, name, arguments, context=None):
        if name not in {tool.name for tool in await self.list_tools()}:
            raise MCPError(INVALID_PARAMS, f"Unknown tool: {name}")
        return await super().call_tool(name, arguments, context)


def build(service, registry, settings, version: str):
    """The MCP server's ASGI app. Per-expert tools are added in the background as experts answer their cards."""
    server = PanelServer(name="conclave", version=version, instructions=(
        "Conclave is a panel of expert agents. Use consult_panel for a question that may need several fields "
        "(its answer cites the experts' sources), or ask_<expert> to ask one expert."))

    async def consult_panel(task: str, ctx: Context, strategy: Literal["react", "panel"] = "react",
                            experts: list[str] | None = None) -> str:
        """Consult the expert panel on a task and get one composed answer, with who said what and sources.

        strategy: 'react' (the relevant experts, chosen by the panel) or 'panel' (every selected expert at once);
        experts: restrict to these expert names."""
        try:
            req = IntegrateRequest(task=task, strategy=strategy, experts=experts)
        except ValidationError as exc:
            raise ToolError(f"invalid arguments: {exc.errors()[0]['msg']}") from None
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def run() -> None:
            try:
                for event in service.events(req):
                    loop.call_soon_threadsafe(events.put_nowait, event)
            except Exception as exc:  # a bad expert name, no experts: the tool's error
                loop.call_soon_threadsafe(events.put_nowait, Failed(exc))

        threading.Thread(target=run, name="mcp-consult", daemon=True).start()
        reported = 0  # the spec: the progress value MUST increase with each notification
        while True:
            event = await events.get()
            if isinstance(event, Asking):
                reported += 1
                await ctx.report_progress(reported, None, f"asking {event.expert}")
            elif isinstance(event, Answered):
                reported += 1
                await ctx.report_progress(reported, None, f"{event.step.expert} answered" if event.step.ok
                                          else event.step.observation)
            elif isinstance(event, Finished):
                return answer_text(event.response)
            elif isinstance(event, Failed):
                raise ToolError(str(event.error))

    server.add_tool(consult_panel, name="consult_panel")

    def ask_tool(expert):
        async def ask(question: str) -> str:
            try:
                answer = await asyncio.to_thread(expert.client.chat, question,
                                                 max_new_tokens=settings.expert_max_new_tokens)
            except ExpertError as exc:
                raise ToolError(str(exc)) from None
            sources = "".join(f"\n[{s.number}] {s.title}" for s in answer.sources if s.cited)
            return answer.response + (f"\n\nSources:{sources}" if sources else "")

        return ask

    def register_experts() -> None:
        added: set[str] = set()
        while len(added) < len(registry.urls):
            for expert in registry.known():
                if expert.name not in added:
                    server.add_tool(ask_tool(expert), name=f"ask_{expert.name}",
                                    description=f"Ask {expert.card.name} directly. {expert.description}")
                    added.add(expert.name)
            time.sleep(5)

    threading.Thread(target=register_experts, name="mcp-experts", daemon=True).start()

    hosts = [*LOCAL_HOSTS, *([urlparse(settings.public_url).hostname] if settings.public_url else [])]
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"{h}:*" for h in hosts] + list(hosts),
        allowed_origins=[f"{scheme}://{h}:*" for h in hosts for scheme in ("http", "https")]
        + [f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")])
    app = server.streamable_http_app(streamable_http_path="/", transport_security=security)
    if settings.api_key:
        app.user_middleware.insert(0, Middleware(Bearer, expected=f"Bearer {settings.api_key}".encode()))
    return app
