"""Knowledge bases on the embedded model and MiniLM with a real sqlite-vec store, across real processes: the CLI
ingests while nothing runs, the expert answers from it with sources, the API adds and deletes, a restart keeps it."""

from __future__ import annotations

import os
import subprocess
import sys

import requests

from harness.services import ROOT, expert

POLICY = """# Acme retention policy (internal policy AC-7)

Acme deletes customer support tickets 400 days after they are closed.

Backups of the ticket database are kept for 35 days and then overwritten.
"""


def test_cli_ingest_then_answers_cite_it_and_it_survives_a_restart(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "retention.md").write_text(POLICY)
    (docs / "empty.txt").write_text("")
    (docs / "slides.pptx").write_bytes(b"PK")  # not a supported type: a folder walk skips it silently
    data = tmp_path / "data"
    env = {**os.environ, "DATA_DIR": str(data), "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING"}
    cli = subprocess.run([sys.executable, "-m", "agents", "ingest", "--persona", "law_expert", str(docs)],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert cli.returncode == 1, cli.stderr  # one file failed: said so, the others stored
    assert "empty.txt: no text in it" in cli.stdout and "added" in cli.stdout and "1 of 2 files" in cli.stdout
    service = expert("law_expert", data).start()
    try:
        listed = requests.get(f"{service.url}/knowledge", timeout=10).json()
        sources = {d["source"].rsplit("/", 1)[-1] for d in listed["documents"]}
        assert "retention.md" in sources and any(s.endswith(".md") and s != "retention.md" for s in sources)
        body = requests.post(f"{service.url}/chat", json={
            "intent": "After how many days does Acme delete closed support tickets?", "max_new_tokens": 120},
            timeout=300).json()
        assert "400 days" in body["response"], body
        cited = [s for s in body["sources"] if s["cited"]]
        assert cited and cited[0]["title"].startswith("Acme retention policy") and f"[{cited[0]['number']}]" in body[
            "response"]
        outside = requests.post(f"{service.url}/chat", json={"intent": "How do I bake sourdough bread?",
                                                             "max_new_tokens": 40}, timeout=300).json()
        assert outside["sources"] == []  # nothing unrelated is cited
        added = requests.post(f"{service.url}/knowledge", json={
            "name": "travel.md", "content": "# Travel policy\n\nAcme staff fly economy on flights under 6 hours."},
            timeout=60)
        assert added.status_code == 201
        doc = added.json()["id"]
        bad = requests.post(f"{service.url}/knowledge", files={"file": ("notes.docx", b"PK\x03\x04")}, timeout=60)
        assert bad.status_code == 415 and "notes.docx" in bad.json()["error"]["message"]
    finally:
        service.stop()
        service.proc.wait(30)
    again = expert("law_expert", data).start()  # a restart: everything is still there, nothing re-embedded
    try:
        sources = {d["id"] for d in requests.get(f"{again.url}/knowledge", timeout=10).json()["documents"]}
        assert doc in sources
        assert requests.delete(f"{again.url}/knowledge/{doc}", timeout=10).json()["deleted"]
        assert doc not in {d["id"] for d in requests.get(f"{again.url}/knowledge", timeout=10).json()["documents"]}
    finally:
        again.stop()


def test_the_shipped_notes_answer_a_field_question_with_a_citation(law_expert):
    body = requests.post(f"{law_expert.url}/chat", json={
        "intent": "How many hours does a controller have to notify a personal data breach?", "max_new_tokens": 120},
        timeout=300).json()
    assert "72 hours" in body["response"]
    assert any(s["cited"] and "Article 33" in s["title"] for s in body["sources"])


def test_the_panel_keeps_the_experts_citations(orchestrator):
    body = requests.post(f"{orchestrator.url}/integrate", json={
        "task": "What is the maximum fine under the EU AI Act for prohibited practices?"}, timeout=600).json()
    assert body["sources"], body
    for source in body["sources"]:
        assert f"[{source['number']}]" in body["response"] and source["expert"] in body["experts"]
    assert "35 million" in body["response"]


def test_a_chinese_question_is_answered_from_the_english_notes_and_says_in_which_language(law_expert):
    body = requests.post(f"{law_expert.url}/chat", json={
        "intent": "控制者必须在多长时间内向监管机构报告个人数据泄露？", "max_new_tokens": 120}, timeout=300).json()
    assert any(s["cited"] and "Article 33" in s["title"] for s in body["sources"]), body["sources"]
    assert "72 hours" in body["response"]
    assert body["language"]["question"] == "zh" and body["language"]["answer"] == "en" and body["language"]["note"]


def test_the_seed_task_is_answered_from_the_shipped_notes(orchestrator):
    body = requests.post(f"{orchestrator.url}/integrate", json={
        "task": "制定人工智能合规标准，避免人工智能伤害人类"}, timeout=600).json()
    assert body["sources"] and any(s["cited"] for s in body["sources"]), body
    assert body["language"]["question"] == "zh"
