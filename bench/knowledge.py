"""The experts' knowledge bases, measured: fact recall with and without retrieval, citations, latency, and the store at
10,000 chunks.

- Fact recall on bench/knowledge_questions.yaml: each question, in English and in Chinese, asked of its expert
  through ``POST /chat`` with ``knowledge`` on and off, interleaved, greedy; right when the answer contains an
  expected string. Reported per language.
- Passage recall, per embedder and language, without the model: the share of questions whose top passages hold an
  expected string (what picked the embedder; common/embedding.py).
- Citations: the share of in-domain answers that cite a source; questions outside every knowledge base must cite none.
- Latency: /chat p50 with and without retrieval (the difference includes the longer prompt), and retrieval alone
  (embedding the question and the KNN search) at 10,000 chunks.
- Ingestion throughput: chunks per second while building that 10,000-chunk store (reading, chunking, embedding,
  storing).

``python -m bench.knowledge`` runs it alone.
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

from agents.knowledge import Knowledge, KnowledgeStore
from agents.personas import get_persona
from common.embedding import Embedder, MultilingualEmbedder, choose_embedder
from common.text import sentences
from harness.services import expert

HERE = Path(__file__).parent
LANGUAGES = {"en": "q", "zh": "zh"}  # language: the question's field in knowledge_questions.yaml
MAX_NEW_TOKENS = 160
TARGET_CHUNKS = 10_000


def ask(url: str, question: str, knowledge: bool) -> dict:
    started = time.perf_counter()
    body = requests.post(f"{url}/chat", json={"intent": question, "knowledge": knowledge,
                                              "max_new_tokens": MAX_NEW_TOKENS}, timeout=600).json()
    return {"response": body["response"], "latency_s": time.perf_counter() - started,
            "sources": len(body["sources"]), "cited": any(s["cited"] for s in body["sources"])}


def recall(work: Path) -> list[dict]:
    questions = yaml.safe_load((HERE / "knowledge_questions.yaml").read_text())
    services = {p: expert(p, work / f"knowledge-{p}").start() for p in {q["persona"] for q in questions}}
    rows = []
    try:
        for item in questions:
            url = services[item["persona"]].url
            for lang, key in LANGUAGES.items():
                row = {"persona": item["persona"], "lang": lang, "question": item[key], "none": bool(item.get("none"))}
                for mode in (True, False):  # interleaved: with and without retrieval, question by question
                    answer = ask(url, item[key], mode)
                    expected = [e.lower() for e in item.get("expect", [])]
                    answer["right"] = any(e in answer["response"].lower() for e in expected)
                    row["with" if mode else "without"] = answer
                rows.append(row)
    finally:
        for service in services.values():
            service.stop()
    return rows


def at_scale(work: Path) -> dict:
    """A store of 10,000 chunks made of the shipped notes' sentences, shuffled into new documents: ingestion
    throughput while building it, then retrieval latency over it."""
    notes = [p for persona in ("law_expert", "ai_expert") for p in get_persona(persona).knowledge_files()]
    pool = [s for p in notes for s in sentences(p.read_text().split("\n", 1)[1])]
    rng = random.Random(0)
    knowledge = Knowledge(KnowledgeStore(work / "scale.sqlite3"), lambda: choose_embedder("auto"))
    knowledge.vectors(["warm up"])
    started, n, doc = time.perf_counter(), 0, 0
    while n < TARGET_CHUNKS:
        paragraphs = [f"# Document {doc}\n"] + [" ".join(rng.sample(pool, 4)) for _ in range(50)]
        n += knowledge.ingest(f"synthetic-{doc}.md", "\n\n".join(paragraphs).encode()).chunks
        doc += 1
    ingest_s = time.perf_counter() - started
    questions = [q["q"] for q in yaml.safe_load((HERE / "knowledge_questions.yaml").read_text())]
    timings = []
    for question in questions:
        t = time.perf_counter()
        knowledge.retrieve(question)
        timings.append((time.perf_counter() - t) * 1000)
    timings.sort()
    return {"chunks": knowledge.store.count(), "documents": doc, "ingest_chunks_per_s": round(n / ingest_s, 1),
            "retrieval_ms_p50": round(statistics.median(timings), 1),
            "retrieval_ms_p95": round(timings[int(0.95 * (len(timings) - 1))], 1)}


def passage_recall(work: Path) -> tuple[dict, dict]:
    """Per embedder and language: in-domain questions whose top passages (above the embedder's floor) hold an
    expected string, and off-topic questions that retrieve nothing; and per embedder :func:`_other_sourced`."""
    questions = yaml.safe_load((HERE / "knowledge_questions.yaml").read_text())
    out, other = {}, {}
    for embedder in (Embedder(), MultilingualEmbedder()):
        bases = {}
        for persona in {q["persona"] for q in questions}:
            bases[persona] = Knowledge(KnowledgeStore(work / f"recall-{embedder.name}-{persona}.sqlite3"),
                                       lambda e=embedder: e)
            bases[persona].sync(get_persona(persona).knowledge_files(), get_persona(persona).catalog_dir)
        for lang, key in LANGUAGES.items():
            found = clean = inside = outside = 0
            for item in questions:
                passages = bases[item["persona"]].retrieve(item[key])
                if item.get("none"):
                    outside += 1
                    clean += not passages
                    continue
                inside += 1
                found += any(e.lower() in p.text.lower() for p in passages for e in item["expect"])
            out[f"{embedder.name}/{lang}"] = {"found": round(found / inside, 3), "outside_clean": f"{clean}/{outside}"}
        other[embedder.name] = _other_sourced(bases)
    return out, other


def _other_sourced(bases: dict[str, Knowledge]) -> str:
    """Of the quality dev set's single-domain tasks, those whose other expert retrieves passages from its notes (an
    expert asked outside its domain, as the panel asks every expert, should answer without sources: with them its
    answer leads with a cited fact about something else)."""
    tasks = [t for t in yaml.safe_load((HERE / "quality_tasks.yaml").read_text()) if len(t["experts"]) == 1]
    sourced = sum(bool(bases[persona].retrieve(t["task"])) for t in tasks for persona in bases
                  if persona not in t["experts"])
    return f"{sourced}/{len(tasks) * (len(bases) - 1)}"


def _recall_summary(rows: list[dict]) -> dict:
    inside = [r for r in rows if not r["none"]]
    outside = [r for r in rows if r["none"]]
    with_right = sum(r["with"]["right"] for r in inside)
    without_right = sum(r["without"]["right"] for r in inside)
    return {
        "questions": len(inside),
        "recall_with": round(with_right / len(inside), 3),
        "recall_without": round(without_right / len(inside), 3),
        "recall_ratio": round(with_right / max(without_right, 1), 2),
        "cited_share": round(sum(r["with"]["cited"] for r in inside) / len(inside), 3),
        "outside_questions": len(outside),
        "outside_cited": sum(r["with"]["cited"] or r["with"]["sources"] > 0 for r in outside),
        "p50_with_s": round(statistics.median(r["with"]["latency_s"] for r in rows), 2),
        "p50_without_s": round(statistics.median(r["without"]["latency_s"] for r in rows), 2),
    }


def knowledge(work: Path) -> dict:
    rows = recall(work)
    summary = {lang: _recall_summary([r for r in rows if r["lang"] == lang]) for lang in LANGUAGES}
    passages, other_sourced = passage_recall(work)
    return {"summary": summary, "passages": passages, "other_sourced": other_sourced, "scale": at_scale(work),
            "rows": rows}


def report(k: dict) -> None:
    scale = k["scale"]
    print(f"\n== Knowledge: fact recall on {k['summary']['en']['questions']} questions, each in English and in "
          "Chinese (bench/knowledge_questions.yaml), embedded model, with and without retrieval, interleaved ==")
    print("targets: English recall >= 78% with >= 96% citing | Chinese recall >= 60% with >= 80% citing | "
          "retrieval < 150 ms at 10k chunks | outside questions cite nothing")
    for lang, s in k["summary"].items():
        print(f"{lang}: recall with retrieval {s['recall_with']:.0%} | without {s['recall_without']:.0%} | ratio "
              f"{s['recall_ratio']}x | cited {s['cited_share']:.0%} | outside questions citing: {s['outside_cited']}/"
              f"{s['outside_questions']} | /chat p50 {s['p50_with_s']} s with, {s['p50_without_s']} s without")
    print("passages holding the answer (top 3 above the floor) | off-topic questions retrieving nothing: " +
          " | ".join(f"{name} {p['found']:.0%}, {p['outside_clean']}" for name, p in k["passages"].items()))
    print("single-domain dev tasks whose other expert retrieves passages: " +
          " | ".join(f"{name} {share}" for name, share in k["other_sourced"].items()))
    print(f"store at {scale['chunks']} chunks ({scale['documents']} documents): ingestion "
          f"{scale['ingest_chunks_per_s']} chunks/s | retrieval (embed + search) p50 {scale['retrieval_ms_p50']} ms, "
          f"p95 {scale['retrieval_ms_p95']} ms")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        k = knowledge(Path(tmp))
    if "-v" in sys.argv:
        for r in k["rows"]:
            print(f"--- {r['question']}\n  with ({r['with']['right']}): {r['with']['response'][:300]}\n"
                  f"  without ({r['without']['right']}): {r['without']['response'][:200]}")
    report(k)


if __name__ == "__main__":
    main()
