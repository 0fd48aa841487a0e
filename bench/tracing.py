"""What tracing costs: the same /chat on two experts of the same persona, one exporting its spans over OTLP/HTTP to
a real receiver process (harness/otlp_receiver.py), one with tracing off, asked in turns (off, on, off, on, ...) so
both see the same machine; and the spans the receiver got.

With tracing off the expert's engine is not wrapped at all, so "off" is the speed of a build without tracing; the
figure to watch is on/off. ``python -m bench.tracing`` runs it alone.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.load import ALONE, NEW_TOKENS, PROMPTS
from harness.services import ROOT, expert, free_port

ROUNDS = 6


def _timed_chat(url: str, prompt: str) -> float:
    started = time.perf_counter()
    requests.post(f"{url}/chat", timeout=600, json={
        "intent": prompt, "max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS,
        "knowledge": False}).raise_for_status()
    return time.perf_counter() - started


def tracing(work: Path) -> dict:
    out, port = work / "spans.jsonl", free_port()
    receiver = subprocess.Popen([sys.executable, "-m", "harness.otlp_receiver", "--port", str(port), "--out",
                                 str(out)], cwd=ROOT)
    on_env = {**ALONE, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_BSP_SCHEDULE_DELAY": "500"}
    servers = {"off": expert("ai_expert", work / "trace-off", env=ALONE),
               "on": expert("ai_expert", work / "trace-on", env=on_env)}
    times: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for s in servers.values():
            s.start()
        for s in servers.values():
            _timed_chat(s.url, PROMPTS[0])  # warm-up
        for i in range(ROUNDS):
            prompt = PROMPTS[i % len(PROMPTS)]
            for name in ("off", "on") if i % 2 == 0 else ("on", "off"):
                times[name].append(round(_timed_chat(servers[name].url, prompt), 3))
        time.sleep(2)  # the batch processor's delay: the last spans reach the receiver
    finally:
        for s in servers.values():
            s.stop()
        receiver.terminate()
        receiver.wait(10)
    spans = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    chats = [s for s in spans if s["name"].startswith("chat ")]
    return {"rounds": ROUNDS, "off_s": times["off"], "on_s": times["on"],
            "on_over_off_median": round(statistics.median(a / b for a, b in zip(times["on"], times["off"],
                                                                                  strict=True)), 3),
            "chat_spans": len(chats), "requests_on": ROUNDS + 1,
            "output_tokens_in_spans": sum(s["attributes"].get("gen_ai.usage.output_tokens", 0) for s in chats)}


def report(t: dict) -> None:
    print(f"\n== Tracing: /chat of {NEW_TOKENS} tokens with spans exported over OTLP vs tracing off (interleaved, "
          f"{t['rounds']} rounds) ==")
    print(f"off: median {statistics.median(t['off_s']):.3f} s | on: median {statistics.median(t['on_s']):.3f} s | "
          f"on/off, median of pairs {t['on_over_off_median']:.3f} | the receiver got {t['chat_spans']} chat spans "
          f"for {t['requests_on']} requests ({t['output_tokens_in_spans']} output tokens)")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        report(tracing(Path(tmp)))


if __name__ == "__main__":
    main()
