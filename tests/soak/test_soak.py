"""Load, faults and fuzzing against real services on the embedded model. Loopback only, bounded in count and time."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from harness.services import expert, orchestrator_service

pytestmark = pytest.mark.soak
LIMIT_S = 900  # no request may take longer than this


def timed_post(url: str, body: dict) -> tuple[int, float, dict, str]:
    started = time.perf_counter()
    try:
        resp = requests.post(url, json=body, timeout=LIMIT_S)
    except requests.RequestException as exc:
        return 0, time.perf_counter() - started, {}, f"{type(exc).__name__}: {exc}"
    return resp.status_code, time.perf_counter() - started, dict(resp.headers), resp.text


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    ai = expert("ai_expert", tmp_path_factory.mktemp("ai")).start()
    law = expert("law_expert", tmp_path_factory.mktemp("law")).start()
    orch = orchestrator_service(tmp_path_factory.mktemp("orch"), [ai.url, law.url],
                                env={"EXPERT_MAX_NEW_TOKENS": "48", "MAX_STEPS": "3"}).start()
    yield {"ai": ai, "law": law, "orchestrator": orch}
    for s in (orch, ai, law):
        s.stop()


def check_outcome(status: int, headers: dict, text: str) -> str | None:
    """The contract under load: 200, or 429/503 with Retry-After; anything else is an error found."""
    if status == 200:
        return None
    if status in (429, 503) and "Retry-After" in headers:
        return None
    return f"HTTP {status}: {text[:200]}"


def wave(name: str, url: str, bodies: list[dict], record) -> list[str]:
    """All ``bodies`` at once; every outcome recorded; returns the errors found."""
    with ThreadPoolExecutor(len(bodies)) as pool:
        results = list(pool.map(lambda b: timed_post(url, b), bodies))
    errors = []
    for status, latency, headers, text in results:
        error = check_outcome(status, headers, text)
        record(name, status, latency, error)
        errors += [error] if error else []
    return errors


def test_64_concurrent_chats_against_one_expert(stack, soak_record, soak_note):
    ai = stack["ai"]
    timed_post(f"{ai.url}/chat", {"intent": "warm up", "max_new_tokens": 8})  # idle means loaded and warmed up
    idle = ai.rss_mb()
    bodies = [{"intent": f"Question {i}: what is machine learning?", "max_new_tokens": 32} for i in range(64)]
    errors = wave("64 x /chat (one expert)", f"{ai.url}/chat", bodies, soak_record)
    time.sleep(2)
    after = ai.rss_mb()
    soak_note("64 x /chat (one expert)", f"RSS idle {idle:.0f} MB, after {after:.0f} MB")
    assert requests.get(f"{ai.url}/health", timeout=10).status_code == 200
    assert not errors, errors
    assert after < idle * 1.25 + 100  # memory goes back near idle once the burst is over


def test_three_times_the_threads_of_slow_streaming_chats_while_probes_answer(stack, soak_record, soak_note,
                                                                             soak_rows):
    """3 x the HTTP threads (MAX_IN_FLIGHT 48 + 16 spare) of streamed /chat at once, each read slowly, while /health
    and /ready are polled every 250 ms: every request ends 200 or 429 with Retry-After, the probes stay under 1 s at
    p99, and memory goes back near idle."""
    import threading

    ai = stack["ai"]
    timed_post(f"{ai.url}/chat", {"intent": "warm up", "max_new_tokens": 8})
    idle = ai.rss_mb()
    probes: list[float] = []
    probe_errors: list[str] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            for path in ("/health", "/ready"):
                started = time.perf_counter()
                try:
                    status = requests.get(f"{ai.url}{path}", timeout=10).status_code
                    if status != 200:
                        probe_errors.append(f"{path} {status}")
                except requests.RequestException as exc:
                    probe_errors.append(f"{path} {type(exc).__name__}")
                probes.append(time.perf_counter() - started)
            time.sleep(0.25)

    def slow_stream(i: int) -> None:
        started = time.perf_counter()
        try:
            with requests.post(f"{ai.url}/chat", stream=True, timeout=LIMIT_S, json={
                    "intent": f"Question {i}: what is a compiler?", "max_new_tokens": 24, "stream": True}) as resp:
                if resp.status_code == 200:
                    for _ in resp.iter_content(chunk_size=64):
                        time.sleep(0.05)  # a slow reader holds its thread
                error = check_outcome(resp.status_code, dict(resp.headers), resp.text if resp.status_code != 200
                                      else "")
                soak_record("192 slow streams (one expert)", resp.status_code, time.perf_counter() - started, error)
        except requests.RequestException as exc:
            soak_record("192 slow streams (one expert)", 0, None, f"{type(exc).__name__}: {exc}")

    poller = threading.Thread(target=poll)
    poller.start()
    with ThreadPoolExecutor(192) as pool:
        list(pool.map(slow_stream, range(192)))
    done.set()
    poller.join()
    time.sleep(2)
    after = ai.rss_mb()
    probes.sort()
    p99 = probes[int(0.99 * (len(probes) - 1))]
    soak_note("192 slow streams (one expert)", f"probes: {len(probes)}, p99 {p99:.3f} s, max {probes[-1]:.3f} s; "
              f"RSS idle {idle:.0f} MB, after {after:.0f} MB")
    outcomes = soak_rows["192 slow streams (one expert)"]
    assert not outcomes["errors"], outcomes["errors"][:5]
    assert set(outcomes["statuses"]) <= {200, 429} and outcomes["statuses"][200] > 0, outcomes["statuses"]
    assert not probe_errors and p99 < 1.0, (p99, probe_errors[:5])
    assert after < idle * 1.25 + 100


def test_distinct_regexes_and_tasks_keep_memory_bounded(stack, soak_record, soak_note, soak_rows):
    """500 distinct regexes through an expert's /v1 (each compiles, the compiled cache is capped) and 200 distinct
    tasks through the orchestrator: memory grows by a bounded amount, not with the count."""
    ai, orch = stack["ai"], stack["orchestrator"]
    before = ai.rss_mb()
    for i in range(500):
        status, latency, headers, text = timed_post(f"{ai.url}/v1/chat/completions", {
            "messages": [{"role": "user", "content": "Write a word."}], "max_tokens": 3,
            "structured_outputs": {"regex": f"(x{i}|[a-z]{{1,{i % 40 + 1}}})[0-9]{{0,{i % 7 + 1}}}"}})
        soak_record("500 distinct regexes", status, latency, check_outcome(status, headers, text))
    regex_growth = ai.rss_mb() - before
    bodies = [{"task": f"In one sentence, task {i}: what does the word '{i}-{i * 7919 % 1000}' mean in law?",
               "max_steps": 1} for i in range(240)]
    rss = []
    with ThreadPoolExecutor(8) as pool:  # MAX_RUNS at once; the first 40 warm up (models, arenas, caches)
        for start in range(0, 240, 40):
            for status, latency, headers, text in pool.map(lambda b: timed_post(f"{orch.url}/integrate", b),
                                                           bodies[start: start + 40]):
                soak_record("200 distinct tasks", status, latency, check_outcome(status, headers, text))
            rss.append(round(orch.rss_mb()))
    task_growth = rss[-1] - rss[0]
    soak_note("500 distinct regexes", f"expert RSS grew {regex_growth:.0f} MB")
    soak_note("200 distinct tasks", f"orchestrator RSS after each 40 tasks (the first 40 warm up): {rss} MB")
    assert not soak_rows["500 distinct regexes"]["errors"] and not soak_rows["200 distinct tasks"]["errors"]
    assert regex_growth < 200 and task_growth < 150, (regex_growth, rss)


def test_12_concurrent_integrations(stack, soak_record, soak_note):
    orch = stack["orchestrator"]
    idle = orch.rss_mb()
    tasks = [{"task": f"Task {i}: how should AI systems protect personal data?",
              "strategy": "panel" if i % 2 else "react"} for i in range(12)]
    errors = wave("12 x /integrate", f"{orch.url}/integrate", tasks, soak_record)
    soak_note("12 x /integrate", f"orchestrator RSS idle {idle:.0f} MB, after {orch.rss_mb():.0f} MB")
    assert not errors, errors


def test_kill_during_session_writes_leaves_sqlite_consistent(tmp_path, soak_record, soak_note):
    service = expert("law_expert", tmp_path, env={"MAX_NEW_TOKENS_LIMIT": "2"}).start()
    db = tmp_path / "sessions-law_expert.sqlite3"

    def chat(i: int) -> None:
        try:
            requests.post(f"{service.url}/chat", timeout=60,
                          json={"intent": f"q{i}", "session_id": f"s{i % 4}", "max_new_tokens": 2})
        except requests.RequestException:
            pass  # the process is being killed under it

    def stored() -> int:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT COUNT(*) FROM turns").fetchone()[0]

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(chat, i) for i in range(200)]
        deadline = time.monotonic() + 300
        while stored() < 20 and time.monotonic() < deadline:  # kill while writes are flowing, not before
            time.sleep(0.05)
        service.kill()
        for f in futures:
            f.result()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        counts = conn.execute("SELECT session_id, role, COUNT(*) FROM turns GROUP BY session_id, role").fetchall()
    per = {}
    for session, role, n in counts:
        per.setdefault(session, {})[role] = n
    assert all(v.get("user") == v.get("assistant") for v in per.values()), per  # exchanges are whole
    service.start()
    turns = requests.get(f"{service.url}/sessions/s0", timeout=10).json()["turns"]
    service.stop()
    soak_record("kill -9 during 200 session writes", "integrity ok")
    soak_note("kill -9 during 200 session writes", f"stored exchanges per session: "
              f"{ {k: v.get('user', 0) for k, v in per.items()} }; s0 readable after restart ({len(turns)} turns)")


@pytest.mark.parametrize("which", ["law", "orchestrator"])
def test_schemathesis_fuzz(tmp_path, which, soak_record, soak_note):
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if cli is None:
        pytest.skip("schemathesis is not installed")
    law = expert("law_expert", tmp_path / "law", env={"MAX_NEW_TOKENS_LIMIT": "4"}).start()
    services = [law]
    target = law
    if which == "orchestrator":
        target = orchestrator_service(tmp_path / "orch", [law.url],
                                      env={"EXPERT_MAX_NEW_TOKENS": "4", "MAX_STEPS": "1"}).start()
        services.append(target)
    try:
        report = tmp_path / "report.json"
        proc = subprocess.run(
            [cli, "run", f"{target.url}/openapi.json", "--checks", "all", "--exclude-checks",
             "positive_data_acceptance", "--max-examples", "25", "--request-timeout", "300",
             "--max-response-time", "600", "--seed", "1",
             "--report", "ndjson", "--report-ndjson-path", str(report)],
            capture_output=True, text=True, timeout=LIMIT_S * 2)
        summary = [line for line in proc.stdout.splitlines() if "passed" in line or "failed" in line][-3:]
        soak_record(f"schemathesis /{which}", "clean" if proc.returncode == 0 else "failures",
                    error=None if proc.returncode == 0 else proc.stdout[-1500:])
        soak_note(f"schemathesis /{which}", " | ".join(s.strip() for s in summary))
        assert requests.get(f"{target.url}/health", timeout=10).status_code == 200
        assert proc.returncode == 0, proc.stdout[-4000:]
    finally:
        for s in reversed(services):
            s.stop()
