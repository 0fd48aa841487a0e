"""Dense against quantized weights (``WEIGHTS=dense`` / ``auto``), and the compiled one-row step (``COMPILE=auto``),
in-process, on the embedded model.

Quality: greedy top-1 agreement with a float32 reference, teacher-forced over the same text (the shipped notes of
both experts, whole paragraphs, and Chinese tasks from the quality dev set), for bfloat16 on dense weights (the
default before 4-bit weights), for bfloat16 on the checkpoint's own 4-bit weights in batches of four, and for the
same with the compiled step, rows alone (as one user at a time is served: the defaults on AVX512 now).
Speed: bare greedy decodes of each at 1, 4 and 16 rows with every core, interleaved round by round, best of three.
``python -m bench.weights`` runs this section alone.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import yaml

from bench.load import CORES, NEW_TOKENS, PROMPTS
from bench.machine import cpu_line
from common.engine import int4
from common.engine.decoders import make_decoder
from common.engine.decoding import teacher_forced
from common.engine.llama import INT4_MAX_TOKENS
from common.engine.loading import load_model
from harness.services import MODEL_CACHE

DENSE, FOUR_BIT, COMPILED = "bfloat16 dense", "bfloat16 4-bit", "4-bit compiled"

ROOT = Path(__file__).resolve().parents[1]
TOKENS_PER_TEXT = 96
TEXTS = 32  # about 2,500 tokens
MIN_TOKENS = 2000
# Rows teacher-forced together: at most INT4_MAX_TOKENS, so the 4-bit side runs its int4 kernel, not the dense copy.
FORCED_ROWS = 4
ROWS = (1, 4, 16)


def _texts() -> list[tuple[str, str]]:
    """(question, answer) pairs of varied text the model did not write: note paragraphs, and Chinese tasks."""
    pairs = []
    for note in sorted((ROOT / "agents" / "notes").glob("*/*.md")):
        title, _, body = note.read_text().partition("\n")
        paragraph = body.strip().split("\n\n")[0].replace("\n", " ")
        pairs.append((f"Tell me about {title.lstrip('# ')}.", paragraph))
    tasks = yaml.safe_load((ROOT / "bench" / "quality_tasks.yaml").read_text())
    chinese = [("请复述这个问题。", t["task"]) for t in tasks if any("\u4e00" <= c <= "\u9fff" for c in t["task"])]
    # every fourth text Chinese, the rest notes spread over both experts' folders
    notes = pairs[:: max(1, len(pairs) // (TEXTS - TEXTS // 4))]
    mixed = [p for group in zip(notes[0::3], notes[1::3], notes[2::3], chinese, strict=False) for p in group]
    return mixed[:TEXTS]


def _agreement(a: list[list[int]], b: list[list[int]]) -> tuple[int, int]:
    pairs = [(x, y) for row_a, row_b in zip(a, b, strict=True) for x, y in zip(row_a, row_b, strict=True)]
    return sum(x == y for x, y in pairs), len(pairs)


def _bare(decoder, prompt: list[int], rows: int) -> float:
    """tokens/s of a greedy decode of NEW_TOKENS tokens for ``rows`` copies of the prompt."""
    with torch.inference_mode():
        logits, batch = decoder.prefill([prompt] * rows, pad_id=0)
        started = time.perf_counter()
        for _ in range(NEW_TOKENS - 1):
            logits = decoder.decode(batch, logits.argmax(-1, keepdim=True))
        return rows * (NEW_TOKENS - 1) / (time.perf_counter() - started)


def weights() -> dict:
    skipped = int4.unsupported_reason(torch.bfloat16)
    if skipped:
        return {"skipped": f"WEIGHTS=auto runs dense weights on this machine: {skipped}"}
    torch.set_num_threads(CORES)
    reference, tokenizer, _ = load_model("embedded", dtype="float32", cache_dir=MODEL_CACHE)
    model, _, source = load_model("embedded", dtype="bfloat16", cache_dir=MODEL_CACHE)
    decoders = {"float32": make_decoder(reference, weights="dense"),
                DENSE: make_decoder(model, weights="dense"),
                FOUR_BIT: make_decoder(model, weights="auto", source=source),
                COMPILED: make_decoder(model, weights="auto", source=source, compile_dir=MODEL_CACHE)}
    if decoders[COMPILED].step is None:
        return {"skipped": "the one-row step did not compile here (see the log)"}
    prompts, answers = [], []
    for question, answer in _texts():
        turn = [{"role": "user", "content": question}]
        prompts.append(tokenizer.apply_chat_template(turn, add_generation_prompt=True, return_dict=True)["input_ids"])
        answers.append(tokenizer(answer, add_special_tokens=False)["input_ids"][:TOKENS_PER_TEXT])
    assert sum(map(len, answers)) >= MIN_TOKENS, "the texts are too short for the measurement"
    assert FORCED_ROWS <= INT4_MAX_TOKENS
    top1: dict[str, list[list[int]]] = {name: [] for name in decoders}
    for start in range(0, len(prompts), FORCED_ROWS):
        chunk = slice(start, start + FORCED_ROWS)
        for name, decoder in decoders.items():
            top1[name] += teacher_forced(decoder, prompts[chunk], answers[chunk], tokenizer.pad_token_id,
                                         together=name != COMPILED)[0]
    out: dict = {"skipped": None, "texts": len(answers), "tokens": sum(map(len, answers)), "agreement": {}}
    for name in (DENSE, FOUR_BIT, COMPILED):
        same, total = _agreement(top1[name], top1["float32"])
        out["agreement"][name] = {"same": same, "of": total, "share": round(same / total, 4)}
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[3]}], add_generation_prompt=True,
                                           return_dict=True)["input_ids"]
    speeds: dict[str, dict[int, float]] = {DENSE: {}, FOUR_BIT: {}, COMPILED: {}}
    for rows in ROWS:
        for _ in range(3):
            for name in speeds:
                speeds[name][rows] = round(max(speeds[name].get(rows, 0.0), _bare(decoders[name], prompt, rows)), 1)
    out["tokens_per_s"] = {name: {str(r): v for r, v in s.items()} for name, s in speeds.items()}
    out["ratio"] = {name: {str(r): round(speeds[name][r] / speeds[DENSE][r], 2) for r in ROWS}
                    for name in (FOUR_BIT, COMPILED)}
    out["threads"] = CORES
    return out


def report(w: dict) -> None:
    print("\n== Weights: bfloat16 dense vs the checkpoint's 4-bit weights, eager and compiled (in-process, greedy, "
          "teacher-forced) ==")
    print(cpu_line())
    if w["skipped"]:
        print(f"(skipped: {w['skipped']})")
        return
    print(f"top-1 agreement with float32 over {w['tokens']} tokens of {w['texts']} texts:")
    for name, a in w["agreement"].items():
        print(f"  {name:>15}: {a['same']}/{a['of']} ({100 * a['share']:.1f}%)")
    print(f"bare decode tok/s, {w['threads']} threads, interleaved, best of 3:")
    print(f"{'rows':>5} | {'dense':>7} | {'4-bit':>7} | ratio | {'compiled':>8} | ratio")
    for rows in ROWS:
        r, speeds = str(rows), w["tokens_per_s"]
        print(f"{rows:>5} | {speeds[DENSE][r]:>7} | {speeds[FOUR_BIT][r]:>7} | {w['ratio'][FOUR_BIT][r]:.2f}x | "
              f"{speeds[COMPILED][r]:>8} | {w['ratio'][COMPILED][r]:.2f}x")


def main() -> None:
    report(weights())


if __name__ == "__main__":
    main()
