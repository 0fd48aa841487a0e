"""Decode speed against llama.cpp's server on the same GGUF: our expert's /v1 and ``llama-server -np 16 -t 2``.

Both get every core, the same messages (the expert's persona prompt and a question) and 64 forced tokens per request
(``min_new_tokens`` on our side, ``ignore_eos`` on theirs), at 1, 4 and 16 requests at once. Waves alternate between
the two servers (this VM drifts minute to minute), keeping each one's best; time to first token is the median of
streamed single requests, alternated too, for the waves' question (both servers keep a recent prompt computed: ours
prefills none of it, llama.cpp its last token) and for a new question each round (its whole question prefilled);
our expert's peak RSS is sampled throughout.
``python -m bench.speed`` runs this section alone.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from agents.personas import get_persona
from bench.load import ALONE, NEW_TOKENS, PROMPTS, PeakRss
from bench.machine import cpu_line, kernel_line
from bench.peers import llama_server
from harness.services import expert

REPEATS = {1: 3, 4: 2, 16: 1}
TTFT_ROUNDS = 5


def _body(messages: list[dict], ours: bool, stream: bool = False) -> dict:
    force = {"min_new_tokens": NEW_TOKENS} if ours else {"ignore_eos": True}
    return {"model": "embedded", "messages": messages, "max_tokens": NEW_TOKENS, "temperature": 0, "stream": stream,
            **force}


def _messages(system: str | None, i: int, new: int | None = None) -> list[dict]:
    """The i-th prompt; with ``new``, led by that round's number, so neither server has its tokens computed."""
    text = PROMPTS[i % len(PROMPTS)] if new is None else f"Question {new + 1} of the bench: {PROMPTS[i % len(PROMPTS)]}"
    question = [{"role": "user", "content": text}]
    # our expert puts its persona first itself; llama-server is sent the same prompt
    return question if system is None else [{"role": "system", "content": system}, *question]


def wave(url: str, concurrency: int, system: str | None) -> dict:
    def one(i: int) -> int:
        resp = requests.post(f"{url}/v1/chat/completions", json=_body(_messages(system, i), system is None),
                             timeout=1800)
        resp.raise_for_status()
        return resp.json()["usage"]["completion_tokens"]

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(one, range(concurrency)))
    wall = time.perf_counter() - started
    return {"concurrency": concurrency, "tokens": tokens, "tokens_per_s": round(tokens / wall, 1)}


def first_token_s(url: str, system: str | None, new: int | None = None) -> float:
    """Seconds to the first streamed content: for the bench's first question (asked in the waves before, so both
    servers reuse its computed prompt), or with ``new``, a question not asked before."""
    body = _body(_messages(system, 0, new), system is None, stream=True)
    started = time.perf_counter()
    with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=600) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            choices = json.loads(line[6:])["choices"]
            if choices and choices[0]["delta"].get("content"):
                return time.perf_counter() - started
    raise RuntimeError(f"{url} streamed no content")


def speed(work: Path) -> dict:
    peer = llama_server(work, 16)
    if isinstance(peer, str):
        return {"skipped": peer}
    ours = expert("ai_expert", work / "speed", env=ALONE).start()
    system = get_persona("ai_expert").system_prompt
    sides = {"ours": (ours.url, None), "llama-server": (peer.url, system)}
    out: dict = {"skipped": None, "waves": {name: [] for name in sides}, "ttft_s": {name: [] for name in sides},
                 "ttft_new_s": {name: [] for name in sides}}
    try:
        for url, sys_prompt in sides.values():  # warm-up: first calls pay one-time costs
            wave(url, 1, sys_prompt)
        with PeakRss(ours) as peak:
            for c, repeats in REPEATS.items():
                best: dict[str, dict] = {}
                for _ in range(repeats):
                    for name, (url, sys_prompt) in sides.items():
                        w = wave(url, c, sys_prompt)
                        best[name] = max(best.get(name, w), w, key=lambda x: x["tokens_per_s"])
                for name in sides:
                    out["waves"][name].append(best[name])
            for round_ in range(TTFT_ROUNDS):
                for name, (url, sys_prompt) in sides.items():
                    out["ttft_s"][name].append(round(first_token_s(url, sys_prompt), 4))
                    out["ttft_new_s"][name].append(round(first_token_s(url, sys_prompt, new=round_), 4))
        out["rss_peak_mb"] = round(peak.peak)
    finally:
        ours.stop()
        peer.stop()
    out["ratios"] = {str(o["concurrency"]): round(o["tokens_per_s"] / p["tokens_per_s"], 2)
                     for o, p in zip(out["waves"]["ours"], out["waves"]["llama-server"], strict=True)}
    out["ttft_median_s"] = {name: statistics.median(v) for name, v in out["ttft_s"].items()}
    out["ttft_new_median_s"] = {name: statistics.median(v) for name, v in out["ttft_new_s"].items()}
    return out


def report(s: dict) -> None:
    print(f"\n== Decode speed vs llama.cpp's server (same GGUF, {NEW_TOKENS} forced tokens per request, /v1, "
          "interleaved, best of " + ", ".join(f"{n} at c{c}" for c, n in REPEATS.items()) + " waves) ==")
    print(cpu_line())
    print(kernel_line())
    if s["skipped"]:
        print(f"(skipped: {s['skipped']})")
        return
    print(f"{'conc':>4} | {'ours tok/s':>10} | {'llama-server tok/s':>18} | ratio")
    for o, p in zip(s["waves"]["ours"], s["waves"]["llama-server"], strict=True):
        print(f"{o['concurrency']:>4} | {o['tokens_per_s']:>10} | {p['tokens_per_s']:>18} | "
              f"{s['ratios'][str(o['concurrency'])]:.2f}x")
    for label, t in (("the waves' question", s["ttft_median_s"]), ("a new question", s["ttft_new_median_s"])):
        print(f"time to first token at 1 request, {label} (median of {TTFT_ROUNDS}): ours {1000 * t['ours']:.0f} ms"
              f" | llama-server {1000 * t['llama-server']:.0f} ms | ratio {t['ours'] / t['llama-server']:.2f}x")
    print(f"our expert's peak RSS {s['rss_peak_mb']} MB")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        s = speed(Path(tmp))
    report(s)


if __name__ == "__main__":
    main()
