"""The expert's HTTP layer against a fake engine: routing, validation, errors, auth, sessions, streaming."""

from __future__ import annotations

import json
import re

import pytest

from common.engine.types import EngineOverloaded, GenerationTimeout
from common.settings import AgentSettings
from tests.fakes import FakeEngine, expert_app


@pytest.fixture
def settings(tmp_path):
    return AgentSettings(persona="law_expert", data_dir=tmp_path, max_new_tokens_limit=100)


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def client(settings, engine):
    return expert_app(settings, engine).test_client()


def test_a_question_in_a_language_the_model_does_not_write_is_answered_in_english_and_says_so(client, engine):
    body = client.post("/chat", json={"intent": "制定人工智能合规标准，避免人工智能伤害人类"}).get_json()
    assert body["language"]["question"] == "zh" and body["language"]["answer"] == "en"
    assert "MODEL_LANGUAGES" in body["language"]["note"]
    assert engine.requests[-1].messages[-1]["content"].endswith("Answer in English.")
    english = client.post("/chat", json={"intent": "What does the GDPR say about erasure?"}).get_json()
    assert english["language"] == {"question": "en", "answer": "en", "note": None}
    assert engine.requests[-1].messages[-1]["content"].endswith("Question: What does the GDPR say about erasure?")


def test_a_model_that_writes_the_language_is_asked_to_answer_in_it(tmp_path, engine):
    client = expert_app(AgentSettings(persona="law_expert", data_dir=tmp_path, model_languages="en, zh"),
                        engine).test_client()
    body = client.post("/chat", json={"intent": "制定人工智能合规标准，避免人工智能伤害人类"}).get_json()
    assert body["language"] == {"question": "zh", "answer": "zh", "note": None}
    assert engine.requests[-1].messages[-1]["content"].endswith("Answer in Chinese.")


def error_of(resp):
    body = resp.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code"}
    return body["error"]


def test_seed_chat_call_answers_with_response_and_metadata(client):
    resp = client.post("/chat", json={"intent": "What does GDPR say about erasure?"})
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["response"] == "Hello from the fake engine."
    assert body["persona"] == "law_expert" and body["model"] == "fake-model"
    assert body["usage"]["completion_tokens"] == 5 and body["session_id"] is None
    assert "elapsed_ms" in body


def test_persona_is_the_system_message_and_unknown_fields_are_ignored(client, engine):
    client.post("/chat", json={"intent": "hi", "something_else": 1})
    messages = engine.requests[0].messages
    assert messages[0]["role"] == "system" and "lawyer" in messages[0]["content"]
    assert messages[-1] == {"role": "user", "content": "hi"}


def test_max_new_tokens_is_clamped_to_the_configured_limit(client, engine):
    client.post("/chat", json={"intent": "hi", "max_new_tokens": 100000})
    assert engine.requests[0].max_new_tokens == 100


@pytest.mark.parametrize("body, fragment", [
    ({}, "intent"),
    ({"intent": ""}, "intent"),
    ({"intent": "   "}, "blank"),
    ({"intent": 5}, "intent"),
    ({"intent": "x", "temperature": 9}, "temperature"),
    ({"intent": "x", "top_p": 0}, "top_p"),
    ({"intent": "x", "max_new_tokens": 0}, "max_new_tokens"),
    ({"intent": "x", "stop": [""]}, "stop"),
    ({"intent": "x", "session_id": "../etc"}, "session_id"),
    ([1, 2], "object"),
])
def test_bad_input_is_a_400_in_the_error_shape(client, body, fragment):
    resp = client.post("/chat", json=body)
    assert resp.status_code == 400
    assert fragment in error_of(resp)["message"]


@pytest.mark.parametrize("raw", [b"{bad", b"\xff\xfe\xfa", b"[" * 100000 + b"]" * 100000])
def test_malformed_bodies_are_400_not_500(client, raw):
    resp = client.post("/chat", data=raw[:60000], content_type="application/json")
    assert resp.status_code == 400
    error_of(resp)


def test_oversize_body_is_413(client):
    resp = client.post("/chat", json={"intent": "x" * 70_000})
    assert resp.status_code == 413
    assert error_of(resp)["type"] == "request_too_large"


def test_not_ready_is_503_but_health_is_200(settings):
    client = expert_app(settings, FakeEngine(ready=False)).test_client()
    assert client.get("/health").status_code == 200
    for resp in (client.get("/ready"), client.post("/chat", json={"intent": "hi"})):
        assert resp.status_code == 503
        assert "loading" in error_of(resp)["message"]
        assert resp.headers["Retry-After"]


@pytest.mark.parametrize("error, status", [(EngineOverloaded("full", retry_after=2), 429),
                                           (GenerationTimeout("too slow"), 504)])
def test_engine_failures_map_to_their_status(settings, error, status):
    client = expert_app(settings, FakeEngine(error=error)).test_client()
    resp = client.post("/chat", json={"intent": "hi"})
    assert resp.status_code == status
    error_of(resp)
    if status == 429:
        assert resp.headers["Retry-After"] == "2"


def test_unknown_route_and_method_use_the_error_shape(client):
    assert client.get("/nope").status_code == 404 and error_of(client.get("/nope"))
    assert client.get("/chat").status_code == 405 and error_of(client.get("/chat"))


def test_sessions_keep_history_and_send_it_as_context(client, engine):
    client.post("/chat", json={"intent": "first", "session_id": "s1"})
    client.post("/chat", json={"intent": "second", "session_id": "s1"})
    history = client.get("/sessions/s1").get_json()
    assert [t["content"] for t in history["turns"]] == ["first", engine.answer, "second", engine.answer]
    assert [m["content"] for m in engine.requests[1].messages[1:]] == ["first", engine.answer, "second"]
    assert client.delete("/sessions/s1").get_json()["deleted_turns"] == 4
    assert client.get("/sessions/s1").get_json()["turns"] == []


def test_history_sent_is_capped_at_max_history_length(tmp_path):
    engine = FakeEngine()
    settings = AgentSettings(persona="ai_expert", data_dir=tmp_path, max_history_length=2)
    client = expert_app(settings, engine).test_client()
    for i in range(5):
        client.post("/chat", json={"intent": f"q{i}", "session_id": "s"})
    sent = engine.requests[-1].messages
    assert len(sent) == 1 + 2 * 2 + 1  # system, two exchanges, the new question


def sse_events(resp):
    events = []
    for block in resp.get_data(as_text=True).strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines.get("event"), lines["data"]))
    return events


def test_streamed_chat_sends_deltas_then_done(client):
    resp = client.post("/chat", json={"intent": "hi", "stream": True, "session_id": "st"})
    assert resp.mimetype == "text/event-stream"
    events = sse_events(resp)
    deltas = [json.loads(d)["delta"] for e, d in events if e == "delta"]
    assert "".join(deltas) == "Hello from the fake engine."
    assert events[-1][0] == "done" and json.loads(events[-1][1])["usage"]["completion_tokens"] == 5
    assert len(client.get("/sessions/st").get_json()["turns"]) == 2


def test_openai_completion_and_stream(client):
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
    resp = client.post("/v1/chat/completions", json=body)
    assert resp.get_json()["choices"][0]["message"]["content"] == "Hello from the fake engine."
    events = sse_events(client.post("/v1/chat/completions", json={**body, "stream": True}))
    assert events[-1][1] == "[DONE]"
    text = "".join(json.loads(d)["choices"][0]["delta"].get("content", "") for _, d in events[:-1])
    assert text == "Hello from the fake engine."


@pytest.mark.parametrize("extra, kind", [
    ({"structured_outputs": {"grammar": 'root ::= "a"'}}, "grammar"),
    ({"structured_outputs": {"regex": "[0-9]+"}}, "regex"),
    ({"structured_outputs": {"choice": ["yes", "no"]}}, "choice"),
    ({"structured_outputs": {"json": {"type": "object"}}}, "json"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}},
     "json"),
])
def test_structured_outputs_reach_the_engine(client, engine, extra, kind):
    client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], **extra})
    assert engine.requests[-1].constraint.kind == kind


def test_two_constraints_at_once_are_refused(client):
    resp = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}],
        "structured_outputs": {"regex": "a", "choice": ["a"]},
    })
    assert resp.status_code == 400


def test_agent_card_has_the_a2a_shape_on_both_paths(client):
    for path in ("/.well-known/agent-card.json", "/.well-known/agent.json"):
        card = client.get(path).get_json()
        assert card["name"] == "Legal Expert" and card["capabilities"]["streaming"] is True
        assert card["supportedInterfaces"][0]["url"].endswith("/a2a") and card["version"]
        assert card["supportedInterfaces"][0]["protocolVersion"] == "1.0"
        assert card["url"] == card["supportedInterfaces"][0]["url"]  # 0.3 clients find the same endpoint
        assert all({"id", "name", "description", "examples"} <= set(s) for s in card["skills"])


def test_a_1_0_client_gets_the_1_0_card_exactly_and_may_cache_it(client):
    """Regressions from the A2A TCK (make e2e-conformance): a client sending A2A-Version 1.0 gets no 0.3 fields (the
    1.0 card schema admits none; the spec reads a request without the header as a 0.3 client's), and the card is
    cacheable as the discovery section asks (Cache-Control, ETag, Last-Modified; 304 when the copy is current)."""
    card = client.get("/.well-known/agent-card.json", headers={"A2A-Version": "1.0"})
    assert not {"url", "preferredTransport", "protocolVersion"} & set(card.get_json())
    assert card.get_json()["supportedInterfaces"][0]["protocolVersion"] == "1.0"
    assert client.get("/.well-known/agent-card.json?A2A-Version=1.0").get_json() == card.get_json()
    assert "url" in client.get("/.well-known/agent-card.json", headers={"A2A-Version": "0.3"}).get_json()
    assert card.cache_control.max_age and card.headers["ETag"] and card.headers["Last-Modified"]
    assert "A2A-Version" in card.headers["Vary"]
    current = {"A2A-Version": "1.0", "If-None-Match": card.headers["ETag"]}
    assert client.get("/.well-known/agent-card.json", headers=current).status_code == 304


def test_a2a_answers_a_body_that_is_not_json_with_content_type_not_supported(client):
    resp = client.post("/a2a", data="{'jsonrpc': '2.0'}", content_type="text/plain")
    assert resp.status_code == 415 and resp.get_json()["error"]["code"] == -32005


def test_v1_answers_carry_the_fields_openais_schema_requires_and_no_nulls_it_forbids(client):
    """Regressions from OpenAI's OpenAPI document (make e2e-conformance): a choice has logprobs and its message
    refusal (null), tool_calls is left out rather than null; a chunk has finish_reason (null until the last) and
    logprobs, and its delta no null fields."""
    ask = {"model": "law_expert", "messages": [{"role": "user", "content": "hi"}]}
    choice = client.post("/v1/chat/completions", json=ask).get_json()["choices"][0]
    assert choice["logprobs"] is None and choice["message"]["refusal"] is None and "tool_calls" not in choice["message"]
    stream = client.post("/v1/chat/completions", json={**ask, "stream": True}).get_data(as_text=True)
    chunks = [json.loads(line[6:]) for line in stream.splitlines() if line.startswith("data: {")]
    assert all({"finish_reason", "logprobs"} <= set(c["choices"][0]) for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert all(None not in c["choices"][0]["delta"].values() for c in chunks)
    assert "usage" not in chunks[0] and chunks[-1]["usage"]["total_tokens"] > 0


def test_api_key_guards_everything_but_health(tmp_path, engine):
    settings = AgentSettings(persona="ai_expert", data_dir=tmp_path, api_key="s3cret")
    client = expert_app(settings, engine).test_client()
    assert client.get("/health").status_code == 200
    for path in ("/ready", "/metrics", "/sessions/a", "/.well-known/agent-card.json", "/v1/models"):
        resp = client.get(path, headers={"Authorization": "Bearer wrong"})
        assert resp.status_code == 401 and "s3cret" not in resp.get_data(as_text=True)
    assert client.post("/chat", json={"intent": "hi"}).status_code == 401
    ok = client.post("/chat", json={"intent": "hi"}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200


def test_metrics_count_requests_and_tokens(client):
    client.post("/chat", json={"intent": "hi"})
    text = client.get("/metrics").get_data(as_text=True)
    assert 'conclave_requests_total{route="/chat",service="law_expert",status="200"} 1.0' in text
    assert 'conclave_tokens_generated_total{service="law_expert"} 5.0' in text
    assert "conclave_requests_waiting" in text and "conclave_request_seconds_bucket" in text


@pytest.mark.parametrize("body", [{"intent": "x", "temperature": False}, {"intent": "x", "stream": 0},
                                  {"intent": "x", "max_new_tokens": "5"}])
def test_types_are_strict(client, body):
    assert client.post("/chat", json=body).status_code == 400


def test_path_ids_are_validated(client):
    assert client.get("/sessions/" + "x" * 200).status_code == 400
    assert client.delete("/sessions/a%20b").status_code == 400


def test_405_names_the_allowed_methods(client):
    resp = client.put("/chat")
    assert resp.status_code == 405 and "POST" in resp.headers["Allow"]


def test_a_cross_site_form_body_is_a_415_and_the_seeds_curl_still_works(client):
    form = client.post("/chat", data='{"intent": "hi"}', content_type="text/plain")
    assert form.status_code == 415 and "application/json" in form.get_json()["error"]["message"]
    multipart = client.post("/chat", data={"intent": "hi"}, content_type="multipart/form-data")
    assert multipart.status_code == 415
    seed = client.post("/chat", data='{"intent": "hi"}', content_type="application/x-www-form-urlencoded")
    assert seed.status_code == 200  # curl -d without a Content-Type, as the seed's README does


def test_request_ids_are_echoed_only_when_plain(client):
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    for hostile in ("a" * 65, "x y", "<script>", "id;rm"):
        echoed = client.get("/health", headers={"X-Request-ID": hostile}).headers["X-Request-ID"]
        assert echoed != hostile and re.fullmatch(r"[0-9a-f]{16}", echoed)


@pytest.mark.parametrize("content", [[{"type": "text", "text": 5}], "\ud800 broken", [{"text": "\udfff"}]])
def test_malformed_text_in_v1_is_a_400_not_a_500(client, content):
    body = json.dumps({"messages": [{"role": "user", "content": content}]})  # json.dumps escapes the surrogate
    resp = client.post("/v1/chat/completions", data=body, content_type="application/json")
    assert resp.status_code == 400, resp.get_json()


@pytest.mark.parametrize("extra", [
    {"stop": ["x" * 65]},
    {"structured_outputs": {"grammar": "root ::= " + " | ".join(f'"{i}"' for i in range(3000))}},
    {"structured_outputs": {"regex": "a" * 20_000}},
    {"structured_outputs": {"choice": [str(i) for i in range(300)]}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(2000)}}}}},
])
def test_oversize_constraints_and_stops_are_400s_before_compiling(client, extra):
    resp = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], **extra})
    message = resp.get_json()["error"]["message"]
    assert resp.status_code == 400 and ("characters" in message or "choices" in message), message


def test_only_the_persona_own_prompt_is_offered_to_the_prefix_cache(client, engine):
    client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert engine.requests[-1].cache_prefix  # the persona alone: computed once, kept
    client.post("/chat", json={"intent": "hi"})
    assert engine.requests[-1].cache_prefix
    for role in ("system", "developer"):  # a caller's own instructions join the persona's: not kept
        client.post("/v1/chat/completions", json={"messages": [{"role": role, "content": f"Be brief {role}."},
                                                               {"role": "user", "content": "hi"}]})
        assert not engine.requests[-1].cache_prefix and engine.requests[-1].messages[0]["role"] == "system"


def test_an_answer_the_session_cannot_keep_is_still_given_and_says_so(client):
    """A full disk under the session store: /chat answers with stored false and the reason; a stream sends its done
    event, then the error; the history already stored is still there."""
    from common.errors import StorageFull

    assert client.post("/chat", json={"intent": "first", "session_id": "s"}).status_code == 200
    sessions = client.application.extensions["expert"].sessions

    def full(*args):
        raise StorageFull("could not write sessions.sqlite3 (database or disk is full)", "storage_full")

    sessions.append_exchange = full
    body = client.post("/chat", json={"intent": "second", "session_id": "s"}).get_json()
    assert body["response"] and body["stored"] is False and "disk is full" in body["warning"]
    events = sse_events(client.post("/chat", json={"intent": "third", "session_id": "s", "stream": True}))
    assert [e for e, _ in events][-2:] == ["done", "error"]
    assert json.loads(events[-1][1])["error"]["type"] == "storage_full"
    assert [t["content"] for t in client.get("/sessions/s").get_json()["turns"]][0] == "first"


def test_an_answer_says_where_its_time_went(client):
    body = client.post("/chat", json={"intent": "When must a data breach be notified?"}).get_json()
    t = body["timings"]
    assert set(t) == {"retrieval_ms", "queue_ms", "first_token_ms", "decode_ms", "grounding_ms"}
    assert t["first_token_ms"] is not None and 0 <= t["queue_ms"] <= t["first_token_ms"] <= body["elapsed_ms"]
    assert t["first_token_ms"] + t["decode_ms"] <= body["elapsed_ms"] + 1


def test_a_generation_knows_its_wait_and_its_first_text():
    import time

    from common.engine.types import Generation, GenerationRequest

    gen = Generation(GenerationRequest(messages=[]))
    time.sleep(0.02)
    gen.begin()  # the engine takes it
    time.sleep(0.02)
    gen.push("")  # no text yet
    gen.push("Hello")
    gen.begin()  # a second begin changes nothing
    time.sleep(0.02)
    gen.push(" world")
    gen.finish(3, 2, "stop")
    result = gen.result()
    assert 0.02 <= result.queue_s < result.first_token_s < result.elapsed_s
    assert result.first_token_s >= 0.04
