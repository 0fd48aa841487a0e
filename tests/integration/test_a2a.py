"""A2A 1.0 on a real expert, through the official a2a-sdk client: send (blocking and streamed), get, list, cancel,
multi-turn contexts, a task that outlives a restart, the 0.3 method names, and bearer auth."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest
import requests
from a2a.client import ClientConfig, create_client
from a2a.helpers.proto_helpers import get_artifact_text, new_text_message
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Role,
    SendMessageRequest,
    TaskState,
)

from harness.services import expert


def run(coroutine):
    return asyncio.run(coroutine)


async def send(url: str, text: str, streaming: bool, context_id: str | None = None, headers=None) -> list:
    async with httpx.AsyncClient(timeout=300, headers=headers or {}) as http:
        client = await create_client(url, client_config=ClientConfig(httpx_client=http, streaming=streaming))
        message = new_text_message(text, role=Role.ROLE_USER, context_id=context_id)
        return [event async for event in client.send_message(SendMessageRequest(message=message))]


def answer_of(task) -> str:
    return "".join(get_artifact_text(a) for a in task.artifacts)


def test_the_card_is_a_truthful_a2a_1_0_card(law_expert):
    card = requests.get(f"{law_expert.url}/.well-known/agent-card.json", timeout=10).json()
    interface = card["supportedInterfaces"][0]
    assert interface == {"url": f"{law_expert.url}/a2a", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
    assert card["capabilities"]["streaming"] is True and not card["capabilities"].get("pushNotifications")
    assert card["skills"] and "securitySchemes" not in card  # no key set: no auth declared


def test_send_blocking_and_streamed_and_the_task_can_be_read_back(law_expert):
    events = run(send(law_expert.url, "What does the GDPR say about breach notification deadlines?", False))
    task = events[-1].task
    assert task.status.state == TaskState.TASK_STATE_COMPLETED and "72 hours" in answer_of(task)
    streamed = run(send(law_expert.url, "What is a contract?", True))
    kinds = [e.WhichOneof("payload") for e in streamed]
    assert kinds[0] == "task" and "artifact_update" in kinds and kinds[-1] == "status_update"
    assert streamed[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    text = "".join(get_artifact_text(e.artifact_update.artifact) for e in streamed if e.HasField("artifact_update"))
    assert len(text) > 20

    async def read_back():
        async with httpx.AsyncClient(timeout=60) as http:
            client = await create_client(law_expert.url, client_config=ClientConfig(httpx_client=http))
            got = await client.get_task(GetTaskRequest(id=task.id))
            listed = await client.list_tasks(ListTasksRequest(page_size=1))
            more = await client.list_tasks(ListTasksRequest(page_size=1, page_token=listed.next_page_token))
            return got, listed, more

    got, listed, more = run(read_back())
    assert got.id == task.id and answer_of(got) == answer_of(task)
    assert len(listed.tasks) == 1 and listed.next_page_token and more.tasks[0].id != listed.tasks[0].id


def test_a_context_is_a_session(law_expert):
    context = f"ctx-{uuid.uuid4().hex[:8]}"
    run(send(law_expert.url, "My company is called Zorblat Ltd.", False, context_id=context))
    history = requests.get(f"{law_expert.url}/sessions/{context}", timeout=10).json()["turns"]
    assert history[0]["content"] == "My company is called Zorblat Ltd." and len(history) == 2
    run(send(law_expert.url, "What is my company called?", False, context_id=context))
    assert len(requests.get(f"{law_expert.url}/sessions/{context}", timeout=10).json()["turns"]) == 4


def test_the_0_3_method_names_still_answer(law_expert):
    body = {"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {"message": {
        "kind": "message", "role": "user", "messageId": uuid.uuid4().hex,
        "parts": [{"kind": "text", "text": "What is negligence?"}]}}}
    reply = requests.post(f"{law_expert.url}/a2a", json=body, timeout=300).json()
    assert reply["result"]["status"]["state"] == "completed", reply
    unknown = requests.post(f"{law_expert.url}/a2a", json={**body, "method": "tasks/nope"}, timeout=30).json()
    assert unknown["error"]["code"] == -32601  # method not found, with the spec's code


def test_cancel_stops_the_generation_and_a_task_outlives_a_restart(tmp_path):
    service = expert("ai_expert", tmp_path, env={"API_KEY": "k3y"}).start()
    headers = {"Authorization": "Bearer k3y"}
    try:
        card = requests.get(f"{service.url}/.well-known/agent-card.json", headers=headers, timeout=10).json()
        assert card["securitySchemes"]["bearer"]["httpAuthSecurityScheme"]["scheme"] == "bearer"
        assert requests.post(f"{service.url}/a2a", json={}, timeout=10).status_code == 401

        async def start_and_cancel():
            async with httpx.AsyncClient(timeout=300, headers=headers) as http:
                client = await create_client(service.url, client_config=ClientConfig(httpx_client=http,
                                                                                       streaming=True))
                message = new_text_message("Write a very long essay on neural networks.", role=Role.ROLE_USER)
                stream = client.send_message(SendMessageRequest(message=message))
                first = await anext(stream)
                task_id = first.task.id
                cancelled = await client.cancel_task(CancelTaskRequest(id=task_id))
                await stream.aclose()
                return task_id, cancelled

        task_id, cancelled = run(start_and_cancel())
        assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
        assert generation_stops(service, headers)  # a 512-token essay would decode for many seconds more
        done = run(send(service.url, "What is overfitting?", False, headers=headers))[-1].task
    finally:
        service.stop()
        service.proc.wait(30)
    again = expert("ai_expert", tmp_path, env={"API_KEY": "k3y"}).start()
    try:
        reply = requests.post(f"{again.url}/a2a", headers={**headers, "A2A-Version": "1.0"}, json={
            "jsonrpc": "2.0", "id": 2, "method": "GetTask", "params": {"id": done.id}}, timeout=30).json()
        assert reply["result"]["status"]["state"] == "TASK_STATE_COMPLETED", json.dumps(reply)[:500]
        assert reply["result"]["artifacts"][0]["parts"][0]["text"]
    finally:
        again.stop()


def generation_stops(service, headers, within_s: float = 5.0) -> bool:
    import re
    import time

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        metrics = requests.get(f"{service.url}/metrics", headers=headers, timeout=10).text
        running = re.search(r'conclave_requests_running\{service="ai_expert"\} ([0-9.]+)', metrics)
        if running and float(running.group(1)) == 0:
            return True
        time.sleep(0.25)
    return False


@pytest.mark.parametrize("method", ["GetTask", "CancelTask"])
def test_an_unknown_task_is_the_specs_error(law_expert, method):
    reply = requests.post(f"{law_expert.url}/a2a", headers={"A2A-Version": "1.0"}, json={
        "jsonrpc": "2.0", "id": 3, "method": method, "params": {"id": "no-such-task"}}, timeout=30).json()
    assert reply["error"]["code"] == -32001  # TaskNotFoundError


def test_the_panel_is_an_a2a_agent_and_streams_each_consultation(orchestrator):
    card = requests.get(f"{orchestrator.url}/.well-known/agent-card.json", timeout=10).json()
    assert card["supportedInterfaces"][0]["url"] == f"{orchestrator.url}/a2a" and card["skills"][0]["id"]
    events = run(send(orchestrator.url, "What does the GDPR require after a personal data breach?", True))
    statuses = [e.status_update.status.message for e in events if e.HasField("status_update")
                and e.status_update.status.HasField("message")]
    texts = [m.parts[0].text for m in statuses]
    # the consultations as the stream told them: which expert was asked, and each one's answer or failure
    assert any(t.startswith("asking law_expert") for t in texts) and "law_expert answered" in texts, texts
    assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    answer = "".join(get_artifact_text(e.artifact_update.artifact) for e in events if e.HasField("artifact_update"))
    assert "72 hours" in answer, texts


def test_the_orchestrator_consults_experts_over_a2a(tmp_path, law_expert):
    from harness.services import orchestrator_service

    orch = orchestrator_service(tmp_path, [law_expert.url], env={"EXPERT_TRANSPORT": "a2a"}).start()
    try:
        body = requests.post(f"{orch.url}/integrate", json={"task": "How fast must a data breach be notified?"},
                             timeout=600).json()
    finally:
        orch.stop()
    assert body["experts"] == ["law_expert"] and body["steps"][0]["ok"], body["steps"]
    assert "72 hours" in body["steps"][0]["observation"] and body["response"]


@pytest.mark.parametrize(("payload", "code"), [
    ("{not json", -32700),  # parse error
    ({"jsonrpc": "2.0", "id": 1, "method": "NoSuchMethod", "params": {}}, -32601),
    ({"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": "not a message"}}, -32602),
    ({"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": 5, "historyLength": "x"}}, -32602),
    ({"id": 1, "method": "GetTask"}, -32600),  # not JSON-RPC 2.0
])
def test_bad_json_rpc_gets_the_specs_codes_never_a_5xx(law_expert, payload, code):
    data = payload if isinstance(payload, str) else json.dumps(payload)
    resp = requests.post(f"{law_expert.url}/a2a", data=data, timeout=30,
                         headers={"Content-Type": "application/json", "A2A-Version": "1.0"})
    assert resp.status_code < 500 and resp.json()["error"]["code"] == code, resp.text


def test_cancelling_a_finished_task_is_not_cancelable(law_expert):
    task = run(send(law_expert.url, "What is a tort?", False))[-1].task
    reply = requests.post(f"{law_expert.url}/a2a", headers={"A2A-Version": "1.0"}, json={
        "jsonrpc": "2.0", "id": 4, "method": "CancelTask", "params": {"id": task.id}}, timeout=30).json()
    assert reply["error"]["code"] == -32002  # TaskNotCancelableError
