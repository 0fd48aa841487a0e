"""An expert's knowledge base: reading and chunking, the sqlite-vec store, grounding and citing, and its HTTP API."""

from __future__ import annotations

import io
import json
import uuid

import pytest

from agents.documents import CHUNK_CHARS, UnreadableDocument, chunks, read
from agents.knowledge import Knowledge, KnowledgeStore, open_store
from agents.personas import get_persona
from common.protocol import Attribution, CompositionChecks, Source, Step
from common.settings import AgentSettings
from orchestrator.composer import Composition, cite
from tests.fakes import FakeEngine, WordsEmbedder, expert_app

BREACH = b"""# GDPR Article 33: breach notification

The controller must notify the supervisory authority within 72 hours of becoming aware of a personal data breach.

## Processors

A processor must notify the controller without undue delay.
"""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.servers)])
def knowledge(request, tmp_path):
    """A knowledge base on each store: the same tests hold for SQLite and Postgres."""
    if request.param == "postgres":
        store = open_store(request.getfixturevalue("postgres"), tmp_path, f"t{uuid.uuid4().hex[:8]}")
    else:
        store = KnowledgeStore(tmp_path / "k.sqlite3")
    return lambda **kw: Knowledge(store, WordsEmbedder, **kw)


# ---- reading and chunking ---------------------------------------------------------------------------------------
def test_markdown_sections_become_chunks_led_by_title_and_heading():
    doc = read("breach.md", BREACH)
    assert doc.title == "GDPR Article 33: breach notification"
    parts = chunks(doc)
    assert [p.lead for p in parts] == ["GDPR Article 33: breach notification",
                                       "GDPR Article 33: breach notification - Processors"]
    assert parts[0].body.startswith("The controller must notify") and "72 hours" in parts[0].text


def test_html_text_and_pdf_are_read():
    html = b"<html><head><title>T</title><script>var x=1;</script></head><body><h1>Fines</h1>" \
           b"<p>Up to 20 million euros &amp; 4%.</p></body></html>"
    doc = read("fines.html", html)
    assert doc.title == "T" and any("20 million euros & 4%." in p for s in doc.sections for p in s.paragraphs)
    assert all("var x" not in p for s in doc.sections for p in s.paragraphs)
    assert read("notes.txt", b"First paragraph.\n\nSecond one.").sections[0].paragraphs == ["First paragraph.",
                                                                                            "Second one."]
    from pypdf import PdfWriter

    buffer = io.BytesIO()
    writer = PdfWriter()
    writer.add_blank_page(100, 100)
    writer.write(buffer)
    with pytest.raises(UnreadableDocument, match="no text"):  # a PDF with no text layer says so by name
        read("scan.pdf", buffer.getvalue())


def test_long_paragraphs_split_at_sentences_within_the_size():
    paragraph = " ".join(f"Sentence number {i} says something about data protection." for i in range(60))
    parts = chunks(read("long.txt", paragraph.encode()))
    assert len(parts) > 1 and all(len(p.body) <= CHUNK_CHARS for p in parts)
    assert all(p.body.endswith(".") for p in parts)


@pytest.mark.parametrize(("name", "data", "match"), [
    ("notes.docx", b"x", "unsupported file type"), ("empty.md", b"  \n\n", "no text"),
    ("latin.txt", "caf\u00e9".encode("latin-1"), "not UTF-8"), ("broken.pdf", b"%PDF-1.4 garbage", "readable PDF"),
])
def test_unreadable_files_are_named_and_refused(name, data, match):
    with pytest.raises(UnreadableDocument, match=match) as err:
        read(name, data)
    assert name in str(err.value)


# ---- the store --------------------------------------------------------------------------------------------------
def test_add_search_replace_and_delete(knowledge, tmp_path):
    k = knowledge(min_score=0.1)
    first = k.ingest("breach.md", BREACH)
    assert first.chunks == 2 and not first.replaced
    assert k.ingest("breach.md", BREACH).unchanged  # same bytes: nothing to do
    hits = k.retrieve("notify the supervisory authority within 72 hours")
    assert hits[0].document == first.id and hits[0].chunk == 0 and hits[0].score > hits[-1].score
    changed = k.ingest("breach.md", BREACH.replace(b"72 hours", b"three days"))
    assert changed.replaced and changed.id == first.id and k.store.count() == 2  # replaced, not added beside
    assert "three days" in k.retrieve("notify the supervisory authority")[0].body
    assert k.store.delete(first.id) and k.store.count() == 0 and k.retrieve("anything") == []
    assert not k.store.delete(first.id)


def test_a_bad_file_stores_nothing(knowledge, tmp_path):
    k = knowledge()
    k.ingest("breach.md", BREACH)
    with pytest.raises(UnreadableDocument):
        k.ingest("breach.md", b"")  # a broken new version leaves the stored one whole
    assert k.store.count() == 2 and [d.source for d in k.store.documents()] == ["breach.md"]


def test_unrelated_questions_retrieve_nothing(knowledge, tmp_path):
    k = knowledge()
    k.ingest("breach.md", BREACH)
    assert k.retrieve("banana bread recipe with walnuts") == []


class ShiftedWordsEmbedder(WordsEmbedder):
    """Another embedder: the same words land in other dimensions, so its vectors cannot be compared with the first's."""

    name = "shifted-words"

    def __call__(self, texts):
        return super().__call__(texts).roll(7, dims=1)


def test_a_store_records_its_embedder_and_is_embedded_again_when_it_changes(knowledge, tmp_path):
    k = knowledge(min_score=0.1)
    k.ingest("breach.md", BREACH)
    assert k.store.embedder() == "words"
    question = "notify the supervisory authority within 72 hours"
    before = k.retrieve(question)
    shifted = Knowledge(k.store, ShiftedWordsEmbedder, min_score=0.1)
    after = shifted.retrieve(question)  # the first use brings every stored vector onto the new embedder
    assert k.store.embedder() == "shifted-words" and k.store.count() == 2
    assert [(p.chunk, p.score) for p in after] == [(p.chunk, p.score) for p in before]
    # the first embedder's vectors are gone: its question no longer matches the store
    assert all(p.score < 0.5 for p in k.store.search(k.vectors([question])[0], 2))


def test_a_store_from_before_the_record_is_embedded_again(tmp_path):
    store = KnowledgeStore(tmp_path / "k.sqlite3")
    Knowledge(store, WordsEmbedder).ingest("breach.md", BREACH)
    with store._db() as db:
        db.execute("DELETE FROM meta")  # what a store written before the embedder was recorded looks like
    k = Knowledge(store, ShiftedWordsEmbedder, min_score=0.1)
    assert k.retrieve("notify the supervisory authority within 72 hours")[0].chunk == 0
    assert store.embedder() == "shifted-words"


def test_catalog_sync_ingests_changed_files_only_and_forgets_removed_ones(knowledge, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.md").write_bytes(BREACH)
    (notes / "b.md").write_text("# Fines\n\nUp to 20 million euros.")
    k = knowledge()
    results = k.sync(sorted(notes.iterdir()), tmp_path)
    assert [r.source for _, r in results] == ["catalog:notes/a.md", "catalog:notes/b.md"]
    assert all(r.unchanged for _, r in k.sync(sorted(notes.iterdir()), tmp_path))
    (notes / "b.md").unlink()
    k.sync(sorted(notes.iterdir()), tmp_path)
    assert [d.source for d in k.store.documents()] == ["catalog:notes/a.md"]


def test_the_default_personas_ship_sixty_notes_or_more_each_naming_its_reference():
    files = {p: get_persona(p).knowledge_files() for p in ("law_expert", "ai_expert")}
    assert sum(len(f) for f in files.values()) >= 60 and all(len(f) >= 30 for f in files.values())
    for path in (f for fs in files.values() for f in fs):
        heading = path.read_text().splitlines()[0]
        assert heading.startswith("# ") and len(heading) > 10


# ---- grounding and citing ---------------------------------------------------------------------------------------
def test_an_answer_leads_with_the_passages_best_sentence_and_cites_what_supports_it(knowledge, tmp_path):
    k = knowledge(min_score=0.1)
    k.ingest("breach.md", BREACH)
    question = "Within how many hours must the controller notify the supervisory authority of a breach?"
    passages = k.retrieve(question)
    grounded = k.ground(question, "Breaches are serious. A processor must notify the controller without undue delay.",
                        passages)
    assert grounded.text.startswith("The controller must notify the supervisory authority within 72 hours")
    assert "[1]." in grounded.text and grounded.cited
    assert "Breaches are serious." in grounded.text  # unsupported but not contradicted: kept, uncited


def test_grounding_embeds_a_passages_sentences_once_and_answers_the_same(tmp_path):
    embedded: list[str] = []

    class Counting(WordsEmbedder):
        def __call__(self, texts):
            embedded.extend(texts)
            return super().__call__(texts)

    k = Knowledge(KnowledgeStore(tmp_path / "k.sqlite3"), Counting, min_score=0.1)
    k.ingest("breach.md", BREACH)
    question = "Within how many hours must the controller notify the supervisory authority of a breach?"
    passages = k.retrieve(question)
    answer = "Breaches are serious. A processor must notify the controller without undue delay."
    embedded.clear()
    first = k.ground(question, answer, passages)
    once = len(embedded)
    again = k.ground(question, answer, passages)
    assert again == first and len(embedded) == once  # every vector the second time came from what was kept
    other = k.ground(question, "The controller notifies the authority.", passages)
    assert embedded[once:] == ["The controller notifies the authority."]  # only the new answer's sentence
    assert other.cited


def test_a_sentence_with_figures_its_source_lacks_is_dropped(knowledge, tmp_path):
    k = knowledge(min_score=0.1)
    k.ingest("breach.md", BREACH)
    question = "When must the controller notify the supervisory authority of a breach?"
    grounded = k.ground(question, "The controller must notify the supervisory authority within 24 hours of a breach.",
                        k.retrieve(question))
    assert "24 hours" not in grounded.text and "72 hours" in grounded.text
    guessed = k.ground(question, "Fines reach 5,000 euros a day. Breaches happen.", k.retrieve(question))
    assert "5,000" not in guessed.text and "Breaches happen." in guessed.text


def test_a_sentence_naming_what_no_source_names_is_dropped(knowledge, tmp_path):
    k = knowledge(min_score=0.1)
    k.ingest("breach.md", BREACH)
    question = "When must the controller notify the supervisory authority of a breach?"
    answer = ('The Helsinki Protocol says the controller must notify the supervisory authority. '
              'This duty is called "Synthetics". A processor must notify the controller without undue delay.')
    grounded = k.ground(question, answer, k.retrieve(question))
    assert "Helsinki" not in grounded.text and "Synthetics" not in grounded.text
    assert "A processor must notify the controller without undue delay" in grounded.text


def test_the_orchestrator_renumbers_citations_across_experts():
    def source(n, title):
        return Source(number=n, document=f"doc_{title}", title=title, chunk=0, score=0.7, cited=True, text=title)

    steps = [Step(expert="law_expert", observation="x", sources=[source(1, "gdpr"), source(2, "ai-act")]),
             Step(expert="ai_expert", observation="y", sources=[source(1, "dp")])]
    composition = Composition("", "extractive", [
        Attribution(text="Breaches are notified in 72 hours [2].", experts=["law_expert"], steps=[0]),
        Attribution(text="Noise protects people [1].", experts=["ai_expert"], steps=[1]),
        Attribution(text="A made-up claim [7].", experts=["ai_expert"], steps=[1])], CompositionChecks())
    cited = cite(composition, steps)
    assert composition.response == "Breaches are notified in 72 hours [1]. Noise protects people [2]. A made-up claim."
    assert [(c.number, c.title, c.expert, c.step) for c in cited] == [(1, "ai-act", "law_expert", 0),
                                                                      (2, "dp", "ai_expert", 1)]


# ---- the HTTP API -----------------------------------------------------------------------------------------------
@pytest.fixture
def client(tmp_path):
    settings = AgentSettings(persona="law_expert", data_dir=tmp_path, knowledge_min_score=0.1)
    return expert_app(settings, FakeEngine("A processor must notify the controller.")).test_client()


def test_chat_answers_with_sources_and_the_api_adds_lists_and_deletes(client):
    listed = client.get("/knowledge").get_json()
    assert len(listed["documents"]) >= 30 and all(d["source"].startswith("catalog:") for d in listed["documents"])
    added = client.post("/knowledge", json={"name": "breach.md", "content": BREACH.decode()})
    assert added.status_code == 201 and added.get_json()["chunks"] == 2
    assert client.post("/knowledge", json={"name": "breach.md", "content": BREACH.decode()}).status_code == 200
    upload = client.post("/knowledge", data={"file": (io.BytesIO(b"# Fines\n\nUp to 20 million euros."),
                                                      "fines.md")}, content_type="multipart/form-data")
    assert upload.status_code == 201
    body = client.post("/chat", json={"intent": "How fast must a personal data breach be notified?"}).get_json()
    assert body["sources"] and any(s["cited"] for s in body["sources"]) and "[" in body["response"]
    plain = client.post("/chat", json={"intent": "How fast must a breach be notified?", "knowledge": False})
    assert plain.get_json()["sources"] == []
    doc = added.get_json()["id"]
    assert client.delete(f"/knowledge/{doc}").get_json() == {"id": doc, "deleted": True}
    assert client.delete(f"/knowledge/{doc}").status_code == 404


def test_streamed_chat_sends_the_sources_before_the_text(client):
    resp = client.post("/chat", json={"intent": "When must a personal data breach be notified to the authority?",
                                      "stream": True})
    events = [line.split(": ", 1)[1] for line in resp.get_data(as_text=True).splitlines()
              if line.startswith("event: ")]
    assert events[0] == "sources" and events[-1] == "done" and "delta" in events


@pytest.mark.parametrize(("body", "status", "match"), [
    ({"name": "notes.docx", "content": "x"}, 415, "unsupported file type"),
    ({"name": "empty.md", "content": " \n "}, 400, "no text"),
    ({"name": "", "content": "x"}, 400, "name"),
    ({"content": "x"}, 400, "name"),
])
def test_bad_documents_are_clear_errors_and_store_nothing(client, body, status, match):
    before = client.get("/knowledge").get_json()["chunks"]
    resp = client.post("/knowledge", json=body)
    assert resp.status_code == status and match in resp.get_json()["error"]["message"]
    assert client.get("/knowledge").get_json()["chunks"] == before


def test_an_oversize_document_is_a_413(client):
    resp = client.post("/knowledge", data=json.dumps({"name": "big.md", "content": "x " * 3_000_000}),
                       content_type="application/json")
    assert resp.status_code == 413


@pytest.mark.servers
def test_an_expert_on_postgres_ingests_its_notes_and_cites_them(tmp_path, postgres):
    settings = AgentSettings(persona="law_expert", data_dir=tmp_path, knowledge_store=postgres,
                             knowledge_min_score=0.1)
    client = expert_app(settings, FakeEngine("A processor must notify the controller.")).test_client()
    assert len(client.get("/knowledge").get_json()["documents"]) >= 30
    body = client.post("/chat", json={"intent": "How fast must a personal data breach be notified?"}).get_json()
    assert any(s["cited"] and "Article 33" in s["title"] for s in body["sources"]) and "[1]" in body["response"]
