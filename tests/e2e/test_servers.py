"""A real peer server: llama.cpp's llama-server, built from the llama-cpp-python sdist (make e2e-servers).

Experts and the orchestrator run with REMOTE_URL pointing at it, serving the embedded GGUF. Constraints hold or are
refused clearly, tool calls are valid, and the orchestrator consults the same experts as on the local engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jsonschema
import openai
import pytest
import requests
import yaml

from bench.peers import RUN_FLAGS
from common.engine.checking import satisfies
from common.engine.loading import embedded_gguf_path
from common.engine.types import Constraint
from common.text import ends_a_sentence, is_degenerate
from harness.services import ROOT, Service, expert, orchestrator_service

pytestmark = pytest.mark.servers

BUILD = ROOT / "harness" / "llama_server.sh"
ROUTING_TASKS = yaml.safe_load((ROOT / "bench" / "routing_tasks.yaml").read_text())


def llama_server_binary() -> str:
    """Build (once, cached outside the repository) or find llama-server; a missing toolchain or sdist is a skip."""
    done = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable})
    if done.returncode == 3:
        pytest.skip(f"llama-server cannot be built here: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


class LlamaServer(Service):
    """llama-server as a Service: ``/health`` answers 200 once the model is loaded."""

    def __init__(self, binary: str, data_dir):
        super().__init__("llama-server", [], data_dir)
        self.binary = binary

    def start(self, wait: str = "health", timeout: float = 120) -> LlamaServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.binary, "-m", str(embedded_gguf_path()), "-np", "8", "-t", "2", *RUN_FLAGS, "--host", "127.0.0.1",
             "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait(wait, timeout)
        return self


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    server = LlamaServer(llama_server_binary(), tmp_path_factory.mktemp("llama")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def remote_experts(tmp_path_factory, llama):
    env = {"REMOTE_URL": f"{llama.url}/v1"}
    started = [expert(p, tmp_path_factory.mktemp(p), env=env).start() for p in ("law_expert", "ai_expert")]
    yield started
    for service in started:
        service.stop()


def chat(service: Service, **body) -> requests.Response:
    body = {"messages": [{"role": "user", "content": "Is a contract binding without a signature?"}],
            "max_tokens": 60, **body}
    return requests.post(f"{service.url}/v1/chat/completions", json=body, timeout=120)


def test_the_expert_finds_the_server_and_its_dialect(remote_experts, llama):
    ready = requests.get(f"{remote_experts[0].url}/ready", timeout=10).json()
    assert ready["remote"] == f"{llama.url}/v1" and ready["dialect"] == "llamacpp"


@pytest.mark.parametrize("constraint", [
    Constraint("choice", ["yes", "no"]),
    Constraint("regex", r"(Yes|No), because [a-z ,]{10,60}\."),
    Constraint("grammar", 'root ::= "Verdict: " ("binding" | "not binding") "."'),
    Constraint("json", {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]},
                                                         "confidence": {"type": "integer", "minimum": 0,
                                                                        "maximum": 100}},
                        "required": ["answer", "confidence"]}),
], ids=lambda c: c.kind)
def test_constraints_hold_on_llama_server(remote_experts, constraint):
    resp = chat(remote_experts[0], structured_outputs={constraint.kind: constraint.value})
    assert resp.status_code in (200, 502), resp.text
    if resp.status_code == 200:  # a 502 names the server: the caller is told, never handed a broken answer
        assert satisfies(constraint, resp.json()["choices"][0]["message"]["content"]), resp.json()
    else:
        assert "llama.cpp server" in resp.json()["error"]["message"]
    assert resp.status_code == 200, "llama.cpp honours this constraint when it is sent as GBNF or a JSON schema"


def test_json_schema_response_format_and_usage(remote_experts):
    schema = {"type": "object", "properties": {"binding": {"type": "boolean"}}, "required": ["binding"]}
    resp = chat(remote_experts[0], response_format={"type": "json_schema", "json_schema": {"name": "v",
                                                                                            "schema": schema}})
    body = resp.json()
    jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), schema)
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0
    streamed = requests.post(f"{remote_experts[0].url}/chat", json={"intent": "What is a contract?", "stream": True,
                                                                     "max_new_tokens": 30}, timeout=120, stream=True)
    done = [json.loads(line[6:]) for line in streamed.iter_lines(decode_unicode=True)
            if line.startswith("data: ") and '"response"' in line]
    assert done and done[-1]["usage"]["prompt_tokens"] > 0 and done[-1]["response"]


def test_chat_answers_on_llama_server_never_loop_and_end_at_a_sentence(remote_experts):
    """The README's /chat promises, on a remote server as on the local engine (common/engine/output.py)."""
    url = f"{remote_experts[0].url}/chat"
    counting = requests.post(url, json={"intent": "Count from 1 to 400, separated by commas.", "max_new_tokens": 400,
                                        "repetition_penalty": 1.0}, timeout=300).json()
    assert not is_degenerate(counting["response"]), counting
    assert counting["finish_reason"] == "stop" and len(counting["response"]) < 400, counting  # the guard ended it
    # the model's own words (no retrieved passage quoted before them), cut by the budget
    ask = {"intent": "Explain in detail how a contract is formed.", "max_new_tokens": 60, "knowledge": False}
    cut = requests.post(url, json=ask, timeout=300).json()
    assert cut["finish_reason"] == "length" and ends_a_sentence(cut["response"]), cut
    streamed = requests.post(url, json={**ask, "stream": True}, timeout=300, stream=True)
    deltas = [json.loads(line[6:]) for line in streamed.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    text = "".join(d.get("delta", "") for d in deltas)
    assert text.strip() == deltas[-1]["response"] and ends_a_sentence(text)  # nothing streamed was cut afterwards


def test_a_malformed_grammar_is_a_400(remote_experts):
    resp = chat(remote_experts[0], structured_outputs={"grammar": "root ::= ("})
    assert resp.status_code == 400 and resp.json()["error"]["message"]


def test_tool_calls_through_llama_server_are_valid(remote_experts):
    client = openai.OpenAI(base_url=f"{remote_experts[0].url}/v1", api_key="unused")
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city"], "additionalProperties": False}}}
    statute = {"type": "function", "function": {"name": "find_statute", "parameters": {
        "type": "object", "properties": {"jurisdiction": {"type": "string", "enum": ["EU", "US"]}},
        "required": ["jurisdiction"], "additionalProperties": False}}}
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (weather, statute)}
    for choice in ("required", {"type": "function", "function": {"name": "find_statute"}}):
        reply = client.chat.completions.create(model="x", messages=[{"role": "user", "content": "Weather in Oslo?"}],
                                               tools=[weather, statute], tool_choice=choice, max_tokens=120)
        calls = reply.choices[0].message.tool_calls
        assert reply.choices[0].finish_reason == "tool_calls" and calls
        for call in calls:
            jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
        if isinstance(choice, dict):
            assert [c.function.name for c in calls] == ["find_statute"]


def consultations(orchestrator: Service) -> list[dict]:
    """Each routing task through the orchestrator, in two steps at most: the first must name an expert, the second may
    finish or ask another (a small model choosing freely would otherwise ask until MAX_STEPS)."""
    rows = []
    for item in ROUTING_TASKS:
        body = requests.post(f"{orchestrator.url}/integrate", json={"task": item["task"], "max_steps": 2},
                             timeout=600).json()
        rows.append({"task": item["task"], "experts": body["experts"],
                     "steps_whole": all("asked directly" not in s["reason"] for s in body["steps"]),
                     "answer": body["response"]})
    return rows


def test_the_orchestrators_react_steps_on_llama_server_come_out_whole(tmp_path_factory, llama, remote_experts):
    """With ROUTING=llm the model on llama-server writes every ReAct step (with ranking routing the ranking decides
    them and the model is not called): each step under the GBNF grammar names an expert, and every task is answered."""
    urls = [e.url for e in remote_experts]
    on_llama = orchestrator_service(tmp_path_factory.mktemp("orch-llama"), urls,
                                    env={"REMOTE_URL": f"{llama.url}/v1", "ROUTING": "llm"}).start()
    try:
        rows = consultations(on_llama)
    finally:
        on_llama.stop()
    consulted = sum(bool(r["experts"]) for r in rows)
    print(f"\nllama-server brain: {consulted}/{len(rows)} tasks consulted an expert, "
          f"{sum(r['steps_whole'] for r in rows)} with every step decoded whole")
    assert consulted == len(rows)
    assert all(r["steps_whole"] for r in rows)  # the GBNF step holds: no degradation was needed
    assert all(r["answer"] for r in rows)
