"""A real expert process on the embedded model, over real HTTP."""

from __future__ import annotations

import json
import os
import re

import pytest
import requests

from common.engine.loading import cpu_has_native_bf16
from harness.services import expert

pytestmark = pytest.mark.integration
SPECIAL = re.compile(r"<\|[a-z_]+\|>")


def chat(service, **body):
    return requests.post(f"{service.url}/chat", json=body, timeout=300)


def test_seed_curl_gets_a_coherent_persona_answer(law_expert):
    resp = chat(law_expert, intent="What does GDPR say about erasure?", max_new_tokens=80)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    text = body["response"]
    assert len(text.split()) > 10 and not SPECIAL.search(text)
    assert "What does GDPR say" not in text  # no prompt echo
    assert text == text.strip()
    assert body["persona"] == "law_expert" and body["model"] == "SmolLM2-135M-Instruct"
    assert body["usage"]["completion_tokens"] <= 80 and body["usage"]["prompt_tokens"] > 20
    assert any(w in text.lower() for w in ("data", "gdpr", "right", "law", "personal"))
    # where the time went: retrieval, the wait for a batch row, prefill until the first text, decoding, grounding
    t = body["timings"]
    assert t["retrieval_ms"] > 0 and 0 <= t["queue_ms"] <= t["first_token_ms"] <= body["elapsed_ms"]
    assert t["first_token_ms"] + t["decode_ms"] <= body["elapsed_ms"] + 1 and t["decode_ms"] > 0


def test_ready_names_the_dtype_and_threads_this_cpu_gets(law_expert):
    body = requests.get(f"{law_expert.url}/ready", timeout=10).json()
    expected = "bfloat16" if cpu_has_native_bf16() else "float32"
    assert (body["dtype"], body["device"], body["decoder"]) == (expected, "cpu", "LlamaDecoder")
    cores = len(os.sched_getaffinity(0))  # float32's long matmuls share the cores well; bfloat16's short kernels not
    assert body["threads"] == (cores if expected == "float32" else max(1, cores // 2))


def test_streaming_chat_deltas_add_up_to_the_final_answer(law_expert):
    """From the model alone the deltas are the answer; with sources the final answer also carries its citation
    marks, which are known only once the model has finished (tests/integration/test_knowledge.py)."""
    with requests.post(f"{law_expert.url}/chat", json={"intent": "Define liability.", "stream": True,
                                                        "max_new_tokens": 160, "knowledge": False},
                       stream=True, timeout=300) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines(decode_unicode=True) if line]
    pairs = list(zip(events[::2], events[1::2], strict=True))
    deltas = [json.loads(d[6:])["delta"] for e, d in pairs if e == "event: delta"]
    assert len(deltas) > 3
    assert pairs[-1][0] == "event: done"
    assert "".join(deltas) == json.loads(pairs[-1][1][6:])["response"]


def test_min_new_tokens_forces_the_length(law_expert):
    body = chat(law_expert, intent="Say hi.", max_new_tokens=40, min_new_tokens=40).json()
    assert body["usage"]["completion_tokens"] == 40


def test_grammar_constrained_completion_satisfies_the_grammar(law_expert):
    grammar = 'root ::= "Answer: " ("yes" | "no") "."'
    resp = requests.post(f"{law_expert.url}/v1/chat/completions", timeout=300, json={
        "messages": [{"role": "user", "content": "Is the GDPR an EU regulation?"}],
        "structured_outputs": {"grammar": grammar}, "max_tokens": 20})
    assert resp.status_code == 200, resp.text
    assert re.fullmatch(r"Answer: (yes|no)\.", resp.json()["choices"][0]["message"]["content"])


def test_json_schema_response_format_gives_valid_json(law_expert):
    schema = {"type": "object", "properties": {"law": {"type": "string"}, "year": {"type": "integer"}},
              "required": ["law", "year"]}
    resp = requests.post(f"{law_expert.url}/v1/chat/completions", timeout=300, json={
        "messages": [{"role": "user", "content": "Name a data protection law and its year as JSON."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "law", "schema": schema}},
        "max_tokens": 60})
    data = json.loads(resp.json()["choices"][0]["message"]["content"])
    assert isinstance(data["law"], str) and isinstance(data["year"], int)


def test_invalid_grammar_is_a_400(law_expert):
    resp = requests.post(f"{law_expert.url}/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": "x"}], "structured_outputs": {"grammar": "root ::= ("}})
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error"


def test_official_openai_client_works_unchanged(law_expert):
    from openai import OpenAI

    client = OpenAI(base_url=f"{law_expert.url}/v1", api_key="unused")
    assert client.models.list().data[0].id == "SmolLM2-135M-Instruct"
    done = client.chat.completions.create(model="law_expert", max_tokens=20,
                                          messages=[{"role": "user", "content": "What is a contract?"}])
    assert done.choices[0].message.content and done.usage.completion_tokens <= 20
    stream = client.chat.completions.create(model="law_expert", max_tokens=15, stream=True,
                                            messages=[{"role": "user", "content": "What is a tort?"}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert len(text) > 5


def test_langchain_chat_openai_works_unchanged(law_expert):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{law_expert.url}/v1", api_key="unused", model="law_expert", max_tokens=20,
                     temperature=0)
    assert len(llm.invoke("What is negligence?").content) > 5
    assert len("".join(c.content for c in llm.stream("What is a patent?"))) > 5


def test_bad_inputs_over_real_http(law_expert):
    url = f"{law_expert.url}/chat"
    assert requests.post(url, data=b"{nope", timeout=10).status_code == 400
    assert requests.post(url, json={"intent": ""}, timeout=10).status_code == 400
    assert requests.post(url, json={"intent": "x", "temperature": "hot"}, timeout=10).status_code == 400
    assert requests.post(url, data=b"\xc3\x28", timeout=10).status_code == 400
    big = requests.post(url, json={"intent": "x" * 100_000}, timeout=10)
    assert big.status_code == 413 and "error" in big.json()


def test_timeout_is_a_504(tmp_path):
    service = expert("law_expert", tmp_path, env={"REQUEST_TIMEOUT_S": "0.5"}).start()
    try:
        resp = chat(service, intent="Write a long essay on contract law.", max_new_tokens=400, min_new_tokens=400)
        assert resp.status_code == 504 and resp.json()["error"]["type"] == "timeout"
        assert chat(service, intent="hi", max_new_tokens=2).status_code in (200, 504)  # still serving
    finally:
        service.stop()


def test_past_its_in_flight_limit_an_expert_answers_429_at_once_and_probes_still_answer(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    service = expert("law_expert", tmp_path, env={"MAX_IN_FLIGHT": "2"}).start()
    try:
        with ThreadPoolExecutor(8) as pool:
            busy = [pool.submit(chat, service, intent=f"Essay {i} on contracts.", max_new_tokens=64,
                                min_new_tokens=64) for i in range(8)]
            probes = [requests.get(f"{service.url}/health", timeout=5).status_code for _ in range(3)]
            answers = [f.result() for f in busy]
        assert probes == [200, 200, 200]
        refused = [r for r in answers if r.status_code == 429]
        assert refused and all(r.headers["Retry-After"] for r in refused)
        assert {r.status_code for r in answers} <= {200, 429} and any(r.status_code == 200 for r in answers)
    finally:
        service.stop()


def test_a_model_that_cannot_load_ends_the_process_non_zero(tmp_path):
    service = expert("law_expert", tmp_path, env={"MODEL": str(tmp_path / "missing.gguf")})
    with pytest.raises(RuntimeError, match="exited with"):  # not a 503 with Retry-After for ever
        service.start(timeout=120)
    assert service.proc.returncode != 0 and "failed for good" in service.log_tail(20000)


def test_sessions_survive_a_restart_and_auth_guards_them(tmp_path):
    service = expert("ai_expert", tmp_path, env={"API_KEY": "k3y"}).start()
    auth = {"Authorization": "Bearer k3y"}
    try:
        assert requests.post(f"{service.url}/chat", json={"intent": "hi"}, timeout=10).status_code == 401
        resp = requests.post(f"{service.url}/chat", headers=auth, timeout=300,
                             json={"intent": "What is a neural network?", "session_id": "abc", "max_new_tokens": 20})
        assert resp.status_code == 200
        service.stop()
        service.start()
        turns = requests.get(f"{service.url}/sessions/abc", headers=auth, timeout=10).json()["turns"]
        assert [t["role"] for t in turns] == ["user", "assistant"]
        assert turns[0]["content"] == "What is a neural network?"
        assert requests.get(f"{service.url}/sessions/abc", timeout=10).status_code == 401
        assert requests.get(f"{service.url}/health", timeout=10).status_code == 200
    finally:
        service.stop()


def test_sigterm_during_a_streamed_chat_ends_it_with_an_error_event(tmp_path):
    """Stopping an expert while it streams: the engine fails what it decodes, so the stream ends with an error event
    at once (not cut off when gunicorn's grace period runs out)."""
    import os
    import signal
    import time

    service = expert("ai_expert", tmp_path).start()
    try:
        events = []
        with requests.post(f"{service.url}/chat", stream=True, timeout=120, json={
                "intent": "Explain neural networks in detail.", "stream": True, "max_new_tokens": 1500,
                "min_new_tokens": 1500, "loop_guard": False}) as resp:
            for line in resp.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    events.append(line[7:])
                    if line == "event: delta" and events.count("delta") == 1:
                        os.killpg(service.proc.pid, signal.SIGTERM)
                        stopped_at = time.monotonic()
        assert events[-1] == "error" and "done" not in events, events[-3:]
        assert time.monotonic() - stopped_at < 5
    finally:
        service.stop()
