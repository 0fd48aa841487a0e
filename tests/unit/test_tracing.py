"""Traces and usage of a run, on the SDK's in-memory exporter: the orchestrator and two real HTTP experts (fake engines)
in one process, so the W3C traceparent really travels over HTTP between them."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from common import tracing
from tests.unit.test_orchestrator import LAW_TASK, make_client, step

EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans():
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the process's provider is set once
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    if not getattr(provider, "_conclave_test", False):
        provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
        provider._conclave_test = True
    EXPORTER.clear()
    tracing.enable()
    yield EXPORTER
    tracing.enable(False)
    EXPORTER.clear()


def by_name(finished) -> dict[str, list]:
    found: dict[str, list] = {}
    for s in finished:
        found.setdefault(s.name, []).append(s)
    return found


def test_a_panel_run_is_one_trace_of_agent_tool_and_model_spans_with_the_runs_token_counts(spans, tmp_path,
                                                                                          live_expert):
    law = live_expert("law_expert", "Article 28 requires a processing contract.")
    ai = live_expert("ai_expert", "Encrypt the data at rest.")
    client, _ = make_client(tmp_path, [law.url, ai.url], ["Article 28 requires a processing contract."])
    body = client.post("/integrate", json={"task": LAW_TASK, "strategy": "panel"}).get_json()
    found = by_name(spans.get_finished_spans())
    (run,) = found["invoke_agent Conclave panel"]
    assert run.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert run.attributes["conclave.run.id"] == body["run_id"]
    assert {s.context.trace_id for s in spans.get_finished_spans()} == {run.context.trace_id}  # one trace
    tools = {s.attributes["gen_ai.tool.name"]: s for s in found["execute_tool law_expert"]
             + found["execute_tool ai_expert"]}
    assert all(t.parent.span_id == run.context.span_id for t in tools.values())
    expert_chats = [s for name, group in found.items() if name.startswith("chat ") for s in group
                    if s.parent.span_id != run.context.span_id]
    assert len(expert_chats) == 2  # each expert's generation, under the consultation that asked for it
    usage = body["usage"]
    for chat in expert_chats:
        (tool,) = [t for t in tools.values() if t.context.span_id == chat.parent.span_id]
        expert = tool.attributes["gen_ai.tool.name"]
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        assert chat.attributes["gen_ai.usage.input_tokens"] == usage["experts"][expert]["input_tokens"] \
            == tool.attributes["gen_ai.usage.input_tokens"]
        assert chat.attributes["gen_ai.usage.output_tokens"] == usage["experts"][expert]["output_tokens"] > 0
        assert chat.attributes["gen_ai.response.finish_reasons"] == ("stop",)
        assert "gen_ai.input.messages" not in chat.attributes  # no text unless the operator opts in
        step = next(s for s in body["steps"] if s["expert"] == expert)  # the expert's timings, on its consultation
        assert tool.attributes["conclave.expert.first_token_ms"] == step["timings"]["first_token_ms"]
    assert run.attributes["gen_ai.usage.output_tokens"] == usage["total"]["output_tokens"]
    assert usage["total"]["input_tokens"] == sum(e["input_tokens"] for e in usage["experts"].values()) \
        + usage["orchestrator"]["input_tokens"]


def test_the_orchestrators_own_model_calls_are_its_usage_and_prices_make_a_cost(tmp_path, live_expert):
    law = live_expert("law_expert", "Article 28 requires a processing contract.")
    client, brain = make_client(tmp_path, [law.url], [step("The lawyer knows this.", "law_expert", LAW_TASK),
                                                      " It answered.\nFinal Answer: the contract"],
                                prices={"fake-model": (1.0, 2.0)}, routing="llm")  # per million tokens, in and out
    body = client.post("/integrate", json={"task": LAW_TASK}).get_json()
    own, law_usage, total = (body["usage"][k] for k in ("orchestrator", "experts", "total"))
    law_usage = law_usage["law_expert"]
    assert own["calls"] == len(brain.requests) == 2 and own["output_tokens"] > 0  # the model's two ReAct steps
    assert own["cost"] == pytest.approx((own["input_tokens"] + 2 * own["output_tokens"]) / 1e6)
    assert law_usage["calls"] == 1 and law_usage["input_tokens"] == body["steps"][0]["usage"]["prompt_tokens"]
    assert law_usage["cost"] == pytest.approx((law_usage["input_tokens"] + 2 * law_usage["output_tokens"]) / 1e6)
    assert total["cost"] == pytest.approx(own["cost"] + law_usage["cost"])
    stored = client.get(f"/runs/{body['run_id']}").get_json()
    assert stored["usage"] == body["usage"]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'conclave_model_tokens_total{kind="output",model_of="law_expert"}' in metrics
    assert 'conclave_consultation_seconds_count{expert="law_expert",ok="true"} 1.0' in metrics


def test_with_tracing_off_nothing_is_recorded_and_no_traceparent_is_sent(spans, tmp_path, live_expert):
    tracing.enable(False)
    law = live_expert("law_expert", "Article 28 requires a processing contract.")
    client, _ = make_client(tmp_path, [law.url], [step("The lawyer knows this.", "law_expert", LAW_TASK)])
    assert client.post("/integrate", json={"task": LAW_TASK}).status_code == 200
    assert spans.get_finished_spans() == ()
    assert tracing.inject({}) == {}


def test_over_a2a_too_the_experts_generation_is_a_child_of_the_consultation(spans, tmp_path, live_expert):
    law = live_expert("law_expert", "Article 28 requires a processing contract.")
    client, _ = make_client(tmp_path, [law.url], [step("The lawyer knows this.", "law_expert", LAW_TASK)],
                            expert_transport="a2a")
    assert client.post("/integrate", json={"task": LAW_TASK}).status_code == 200
    found = by_name(spans.get_finished_spans())
    (tool,) = found["execute_tool law_expert"]
    chats = [s for name, group in found.items() if name.startswith("chat ") for s in group]
    assert any(c.parent is not None and c.parent.span_id == tool.context.span_id for c in chats), chats
