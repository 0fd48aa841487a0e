"""The engine's default weights against dense ones (``WEIGHTS=auto`` / ``dense``), in-process, on the embedded model.

What ``auto`` means depends on the CPU, and so does what this section compares. With AVX512-BF16: bfloat16 on dense
weights (the default before 4-bit weights), bfloat16 on the checkpoint's own 4-bit weights in batches of four, and
the same with the compiled decode step (``COMPILE=auto``; it takes up to eight rows there). Without it (AVX2:
float32): float32 dense weights against the float16 copies few-token steps run on (``WEIGHTS=fp16``), eager and with
the compiled step, which takes one row there, so it is teacher-forced rows alone. A compiled step that cannot be
built here (no C++ compiler) is left out, and the report says so.

Quality: greedy top-1 agreement with a float32 dense reference, teacher-forced over the same text (the shipped notes
of both experts, whole paragraphs, and Chinese tasks from the quality dev set).
Speed: bare greedy decodes of each at 1, 4 and 16 rows with every core, interleaved round by round, best of three.
``python -m bench.weights`` runs this section alone.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import yaml

from bench.load import CORES, NEW_TOKENS, PROMPTS
from bench.machine import cpu_line, kernel_line
from common.engine import fp16, int4
from common.engine.decoders import make_decoder
from common.engine.decoding import teacher_forced
from common.engine.llama import INT4_MAX_TOKENS
from common.engine.loading import load_model
from harness.services import MODEL_CACHE

REFERENCE, DENSE, FOUR_BIT, COMPILED = "float32", "bfloat16 dense", "bfloat16 4-bit", "4-bit compiled"
HALF, HALF_COMPILED = "float16 copies", "float16 compiled"

ROOT = Path(__file__).resolve().parents[1]
TOKENS_PER_TEXT = 96
TEXTS = 32  # about 2,500 tokens
MIN_TOKENS = 2000
# Rows teacher-forced together: at most INT4_MAX_TOKENS (fp16.MAX_TOKENS), so the 4-bit side runs its int4 kernel
# (the float16 side its float16 copies), not the dense weights wide steps run on.
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


def _variants() -> dict:
    """This CPU's comparison: ``decoders`` by name (the float32 dense reference first), the one the speed ratios
    divide by (``base``), and those teacher-forced one row at a time (``alone``); or why there is none."""
    reference, tokenizer, _ = load_model("embedded", dtype="float32", cache_dir=MODEL_CACHE)
    decoders = {REFERENCE: make_decoder(reference, weights="dense")}
    if not int4.unsupported_reason(torch.bfloat16):
        model, _, source = load_model("embedded", dtype="bfloat16", cache_dir=MODEL_CACHE)
        decoders |= {DENSE: make_decoder(model, weights="dense"),
                     FOUR_BIT: make_decoder(model, weights="auto", source=source),
                     COMPILED: make_decoder(model, weights="auto", source=source, compile_dir=MODEL_CACHE)}
        return _compiled_alone({"decoders": decoders, "tokenizer": tokenizer, "base": DENSE}, COMPILED)
    skipped = fp16.unsupported_reason(torch.float32)
    if skipped:
        return {"skipped": f"WEIGHTS=auto runs float32 dense weights on this machine: {skipped}"}
    decoders |= {HALF: make_decoder(reference, weights="fp16"),
                 HALF_COMPILED: make_decoder(reference, weights="fp16", compile_dir=MODEL_CACHE)}
    return _compiled_alone({"decoders": decoders, "tokenizer": tokenizer, "base": REFERENCE}, HALF_COMPILED)


def _compiled_alone(plan: dict, name: str) -> dict:
    """``plan`` with the compiled variant ``name`` teacher-forced rows alone where its step takes fewer rows than
    FORCED_ROWS, or without it, and a note why, where its step did not compile."""
    plan |= {"skipped": None, "alone": set(), "notes": []}
    step = plan["decoders"][name].step
    if step is None:
        del plan["decoders"][name]
        plan["notes"].append(f"{name}: left out, its decode step did not compile here (see the log)")
    elif step.max_rows < FORCED_ROWS:
        plan["alone"].add(name)
    return plan


def weights() -> dict:
    torch.set_num_threads(CORES)
    plan = _variants()
    if plan["skipped"]:
        return {"skipped": plan["skipped"]}
    decoders, base, tokenizer = plan["decoders"], plan["base"], plan["tokenizer"]
    prompts, answers = [], []
    for question, answer in _texts():
        turn = [{"role": "user", "content": question}]
        prompts.append(tokenizer.apply_chat_template(turn, add_generation_prompt=True, return_dict=True)["input_ids"])
        answers.append(tokenizer(answer, add_special_tokens=False)["input_ids"][:TOKENS_PER_TEXT])
    assert sum(map(len, answers)) >= MIN_TOKENS, "the texts are too short for the measurement"
    assert FORCED_ROWS <= min(INT4_MAX_TOKENS, fp16.MAX_TOKENS)
    top1: dict[str, list[list[int]]] = {name: [] for name in decoders}
    for start in range(0, len(prompts), FORCED_ROWS):
        chunk = slice(start, start + FORCED_ROWS)
        for name, decoder in decoders.items():
            top1[name] += teacher_forced(decoder, prompts[chunk], answers[chunk], tokenizer.pad_token_id,
                                         together=name not in plan["alone"])[0]
    out: dict = {"skipped": None, "texts": len(answers), "tokens": sum(map(len, answers)), "agreement": {},
                 "notes": plan["notes"]}
    for name in decoders:
        if name != REFERENCE:
            same, total = _agreement(top1[name], top1[REFERENCE])
            out["agreement"][name] = {"same": same, "of": total, "share": round(same / total, 4)}
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[3]}], add_generation_prompt=True,
                                           return_dict=True)["input_ids"]
    timed = [name for name in decoders if name == base or name != REFERENCE]
    speeds: dict[str, dict[int, float]] = {name: {} for name in timed}
    for rows in ROWS:
        for _ in range(3):
            for name in timed:
                speeds[name][rows] = round(max(speeds[name].get(rows, 0.0), _bare(decoders[name], prompt, rows)), 1)
    out["base"] = base
    out["tokens_per_s"] = {name: {str(r): v for r, v in s.items()} for name, s in speeds.items()}
    out["ratio"] = {name: {str(r): round(speeds[name][r] / speeds[base][r], 2) for r in ROWS}
                    for name in timed if name != base}
    out["threads"] = CORES
    return out


def report(w: dict) -> None:
    print("\n== Weights: what WEIGHTS=auto runs on this CPU against dense weights (in-process, greedy, "
          "teacher-forced) ==")
    print(cpu_line())
    print(kernel_line())
    if w["skipped"]:
        print(f"(skipped: {w['skipped']})")
        return
    for note in w["notes"]:
        print(f"({note})")
    print(f"top-1 agreement with float32 dense over {w['tokens']} tokens of {w['texts']} texts:")
    for name, a in w["agreement"].items():
        print(f"  {name:>15}: {a['same']}/{a['of']} ({100 * a['share']:.1f}%)")
    print(f"bare decode tok/s, {w['threads']} threads, interleaved, best of 3:")
    others = list(w["ratio"])
    print(f"{'rows':>5} | {w['base']:>14} | " + " | ".join(f"{name:>14} | ratio" for name in others))
    for rows in ROWS:
        r, speeds = str(rows), w["tokens_per_s"]
        print(f"{rows:>5} | {speeds[w['base']][r]:>14} | "
              + " | ".join(f"{speeds[name][r]:>14} | {w['ratio'][name][r]:.2f}x" for name in others))


def main() -> None:
    report(weights())


if __name__ == "__main__":
    main()
