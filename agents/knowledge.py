"""An expert's knowledge base: documents split into chunks, embedded (multilingual e5 by default, see
common/embedding.py), stored and searched, and the answers that cite them.

Two stores with one interface and the same SQL shape: SQLite with sqlite-vec by default (one file per expert beside
its sessions, no server, safe across processes: the CLI ingests while the expert serves), and Postgres with pgvector
(``DATABASE_URL`` or ``KNOWLEDGE_STORE=postgresql://...``) for users who outgrow one machine or share one knowledge
base between replicas. A KNN search over 10,000 chunks takes a few milliseconds in SQLite. Every write is one
transaction, so a document is stored whole or not at all.

A store records the embedder its vectors come from. Vectors of two embedders cannot be compared, so when the
embedder changes (a setting, or a store from before the record) every stored chunk is embedded again, in one
transaction, before the store is searched or written.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlite_vec

from agents.documents import Chunk, UnreadableDocument, chunks, read
from common import language
from common.database import Database
from common.embedding import DIMENSIONS, SentenceEmbedder
from common.text import cited, join_sentences, sentences, uncited

try:  # the standard module, where the Python build can load extensions; else a wheel with its own SQLite
    import sqlite3

    sqlite3.connect(":memory:").enable_load_extension  # noqa: B018
except AttributeError:  # pyenv's and some distributions' Pythons are built without it
    import pysqlite3.dbapi2 as sqlite3  # type: ignore[no-redef]

log = logging.getLogger(__name__)

TOP_K = 3
# On MiniLM's scale (the embedder's ``score``); the relevance floor is the embedder's own (``relevant``).
SUPPORTED = 0.6  # an answer sentence this close to a source sentence says what the source says
ALREADY_SAID = 0.8  # the answer already has the passage's best sentence when one of its sentences is this close
LEXICAL = 0.05  # weight of the question's words in choosing the lead sentence (cosines of one topic lie within 0.03)
TIE = 0.01  # lead candidates this close are equally good answers to the question
REEMBED_BATCH = 64
FIGURE = re.compile(r"\d+(?:[.,]\d+)*")
NAME = re.compile(r"(?<![\w'])[A-Z][\w-]*[a-z0-9][\w-]*|(?<![\w'])[A-Z]{2,}\b")  # Schrems, LoRA, GDPR; not "A" or "I"
WORD = re.compile(r"[a-z]{4,}")
QUOTED = re.compile(r"[\"“]([^\"”]{2,40})[\"”]")

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY, source TEXT UNIQUE NOT NULL, title TEXT NOT NULL, sha256 TEXT NOT NULL,
    chunks INTEGER NOT NULL, bytes INTEGER NOT NULL, added_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, document_id TEXT NOT NULL REFERENCES documents(id), ord INTEGER NOT NULL,
    lead TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks(document_id);
CREATE VIRTUAL TABLE IF NOT EXISTS chunk_vectors USING vec0(embedding float[{DIMENSIONS}] distance_metric=cosine);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class StoredDocument:
    id: str
    source: str
    title: str
    sha256: str
    chunks: int
    bytes: int
    added_at: float


@dataclass(frozen=True)
class Passage:
    document: str
    title: str
    chunk: int
    lead: str
    body: str
    score: float

    @property
    def text(self) -> str:
        return f"{self.lead}: {self.body}"


def document_id(source: str) -> str:
    return "doc_" + hashlib.sha256(source.encode()).hexdigest()[:16]


class KnowledgeStore:
    """The chunks and vectors of one expert's documents, in ``path``."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        with self._db() as db:
            db.executescript(SCHEMA)

    def _db(self):
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30)
            db.enable_load_extension(True)
            sqlite_vec.load(db)
            db.enable_load_extension(False)
            db.execute("PRAGMA journal_mode=WAL")
            self._local.db = db
        return db

    def put(self, source: str, title: str, sha256: str, size: int, parts: list[Chunk], vectors: np.ndarray) -> str:
        """Store a document's chunks, replacing any earlier version of the same source, in one transaction."""
        doc = document_id(source)
        with self._db() as db:
            self._remove(db, doc)
            db.execute("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (doc, source, title, sha256, len(parts), size, time.time()))
            for ord_, (part, vector) in enumerate(zip(parts, vectors, strict=True)):
                rowid = db.execute("INSERT INTO chunks (document_id, ord, lead, body) VALUES (?, ?, ?, ?)",
                                   (doc, ord_, part.lead, part.body)).lastrowid
                db.execute("INSERT INTO chunk_vectors (rowid, embedding) VALUES (?, ?)",
                           (rowid, np.asarray(vector, dtype=np.float32).tobytes()))
        return doc

    def delete(self, doc: str) -> bool:
        with self._db() as db:
            return self._remove(db, doc)

    @staticmethod
    def _remove(db, doc: str) -> bool:
        ids = [r[0] for r in db.execute("SELECT id FROM chunks WHERE document_id = ?", (doc,))]
        db.executemany("DELETE FROM chunk_vectors WHERE rowid = ?", [(i,) for i in ids])
        db.execute("DELETE FROM chunks WHERE document_id = ?", (doc,))
        return db.execute("DELETE FROM documents WHERE id = ?", (doc,)).rowcount > 0

    def documents(self) -> list[StoredDocument]:
        rows = self._db().execute("SELECT * FROM documents ORDER BY source").fetchall()
        return [StoredDocument(*row) for row in rows]

    def get(self, doc: str) -> StoredDocument | None:
        row = self._db().execute("SELECT * FROM documents WHERE id = ?", (doc,)).fetchone()
        return StoredDocument(*row) if row else None

    def sha256_of(self, source: str) -> str | None:
        row = self._db().execute("SELECT sha256 FROM documents WHERE source = ?", (source,)).fetchone()
        return row[0] if row else None

    def count(self) -> int:
        return self._db().execute("SELECT COUNT(*) FROM chunks").fetchone()[0]

    def embedder(self) -> str | None:
        """The name of the embedder the stored vectors come from (None: not recorded, or nothing stored yet)."""
        row = self._db().execute("SELECT value FROM meta WHERE key = 'embedder'").fetchone()
        return row[0] if row else None

    def reembed(self, name: str, embed: Callable[[list[str]], np.ndarray]) -> int:
        """Replace every chunk's vector with ``embed``'s, and record ``name``, in one transaction."""
        with self._db() as db:
            rows = db.execute("SELECT id, lead, body FROM chunks ORDER BY id").fetchall()
            for start in range(0, len(rows), REEMBED_BATCH):
                batch = rows[start:start + REEMBED_BATCH]
                vectors = embed([f"{lead}: {body}" for _, lead, body in batch])
                db.executemany("DELETE FROM chunk_vectors WHERE rowid = ?", [(i,) for i, _, _ in batch])
                db.executemany("INSERT INTO chunk_vectors (rowid, embedding) VALUES (?, ?)",
                               [(i, np.asarray(v, dtype=np.float32).tobytes())
                                for (i, _, _), v in zip(batch, vectors, strict=True)])
            db.execute("INSERT OR REPLACE INTO meta VALUES ('embedder', ?)", (name,))
        return len(rows)

    def search(self, vector: np.ndarray, k: int) -> list[Passage]:
        rows = self._db().execute(
            """SELECT c.document_id, d.title, c.ord, c.lead, c.body, v.distance
               FROM (SELECT rowid, distance FROM chunk_vectors WHERE embedding MATCH ? AND k = ?) v
               JOIN chunks c ON c.id = v.rowid JOIN documents d ON d.id = c.document_id
               ORDER BY v.distance""",
            (np.asarray(vector, dtype=np.float32).tobytes(), k)).fetchall()
        return [Passage(doc, title, ord_, lead, body, round(1.0 - distance, 4))
                for doc, title, ord_, lead, body, distance in rows]


class PgKnowledgeStore:
    """The same store in Postgres with pgvector: the knowledge tables every persona shares, keyed by persona (the
    migrations make them: common/migrations)."""

    DOCUMENT = "id, source, title, sha256, chunks, bytes, added_at"  # StoredDocument's fields, in order

    def __init__(self, url: str, persona: str):
        self.url, self.persona = url, persona
        self._local = threading.local()

    def _db(self):
        db = getattr(self._local, "db", None)
        if db is None or db.closed:
            import psycopg
            from pgvector.psycopg import register_vector

            db = psycopg.connect(self.url)
            register_vector(db)
            self._local.db = db
        return db

    def put(self, source: str, title: str, sha256: str, size: int, parts: list[Chunk], vectors: np.ndarray) -> str:
        doc = document_id(source)
        with self._db() as db:
            db.execute("DELETE FROM knowledge_documents WHERE persona = %s AND id = %s", (self.persona, doc))
            db.execute(f"INSERT INTO knowledge_documents (persona, {self.DOCUMENT}) VALUES (%s, %s, %s, %s, %s, %s, "
                       "%s, %s)", (self.persona, doc, source, title, sha256, len(parts), size, time.time()))
            with db.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO knowledge_chunks (persona, document_id, ord, lead, body, embedding) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    [(self.persona, doc, i, part.lead, part.body, np.asarray(vector, dtype=np.float32))
                     for i, (part, vector) in enumerate(zip(parts, vectors, strict=True))])
        return doc

    def delete(self, doc: str) -> bool:
        with self._db() as db:
            return db.execute("DELETE FROM knowledge_documents WHERE persona = %s AND id = %s",
                              (self.persona, doc)).rowcount > 0

    def documents(self) -> list[StoredDocument]:
        with self._db() as db:
            return [StoredDocument(*row) for row in db.execute(
                f"SELECT {self.DOCUMENT} FROM knowledge_documents WHERE persona = %s ORDER BY source",
                (self.persona,))]

    def get(self, doc: str) -> StoredDocument | None:
        with self._db() as db:
            row = db.execute(f"SELECT {self.DOCUMENT} FROM knowledge_documents WHERE persona = %s AND id = %s",
                             (self.persona, doc)).fetchone()
        return StoredDocument(*row) if row else None

    def sha256_of(self, source: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT sha256 FROM knowledge_documents WHERE persona = %s AND source = %s",
                             (self.persona, source)).fetchone()
        return row[0] if row else None

    def count(self) -> int:
        with self._db() as db:
            return db.execute("SELECT COUNT(*) FROM knowledge_chunks WHERE persona = %s",
                              (self.persona,)).fetchone()[0]

    def embedder(self) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT value FROM knowledge_meta WHERE persona = %s AND key = 'embedder'",
                             (self.persona,)).fetchone()
        return row[0] if row else None

    def reembed(self, name: str, embed: Callable[[list[str]], np.ndarray]) -> int:
        with self._db() as db:
            rows = db.execute("SELECT id, lead, body FROM knowledge_chunks WHERE persona = %s ORDER BY id",
                              (self.persona,)).fetchall()
            with db.cursor() as cursor:
                for start in range(0, len(rows), REEMBED_BATCH):
                    batch = rows[start:start + REEMBED_BATCH]
                    vectors = embed([f"{lead}: {body}" for _, lead, body in batch])
                    cursor.executemany("UPDATE knowledge_chunks SET embedding = %s WHERE id = %s",
                                       [(np.asarray(v, dtype=np.float32), i)
                                        for (i, _, _), v in zip(batch, vectors, strict=True)])
            db.execute("INSERT INTO knowledge_meta VALUES (%s, 'embedder', %s) "
                       "ON CONFLICT (persona, key) DO UPDATE SET value = EXCLUDED.value", (self.persona, name))
        return len(rows)

    def search(self, vector: np.ndarray, k: int) -> list[Passage]:
        with self._db() as db:
            rows = db.execute(
                """SELECT c.document_id, d.title, c.ord, c.lead, c.body, c.embedding <=> %s AS distance
                   FROM knowledge_chunks c JOIN knowledge_documents d ON d.persona = c.persona AND d.id = c.document_id
                   WHERE c.persona = %s ORDER BY distance LIMIT %s""",
                (np.asarray(vector, dtype=np.float32), self.persona, k)).fetchall()
        return [Passage(doc, title, ord_, lead, body, round(1.0 - distance, 4))
                for doc, title, ord_, lead, body, distance in rows]


def open_store(url: str | None, data_dir: Path, persona: str,
               opened: Database | None = None) -> KnowledgeStore | PgKnowledgeStore:
    """The store the settings name: Postgres for a ``postgresql://`` URL, else SQLite in the data directory.
    ``opened``: a database the caller opened already (its migrations ran); another URL is opened, and upgraded, here."""
    if url and url.startswith(("postgresql://", "postgres://")):
        if opened is None or opened.url != url:
            Database(url)  # the knowledge tables come of the migrations
        return PgKnowledgeStore(url, persona)
    return KnowledgeStore(data_dir / f"knowledge-{persona}.sqlite3")


@dataclass(frozen=True)
class Ingested:
    id: str
    source: str
    title: str
    chunks: int
    replaced: bool
    unchanged: bool = False


@dataclass
class Grounded:
    """An answer with its passages: the sentences marked [n] by the passage that supports them."""

    text: str
    passages: list[Passage]
    cited: list[int]  # 1-based numbers of the passages the text cites


CATALOG = "catalog:"  # sources that come from the persona catalog's knowledge globs
KNOWN_VECTORS = 4096  # texts whose vectors Knowledge.vectors keeps (6 MB at 384 dimensions)


class Knowledge:
    """Ingestion, retrieval and citation for one expert. The embedder (a ``SentenceEmbedder``) is made by
    ``embedder`` on first use, so an expert without knowledge never loads it; then the store is brought onto it.
    ``min_score`` overrides the embedder's relevance floor."""

    def __init__(self, store: KnowledgeStore | PgKnowledgeStore, embedder: Callable[[], SentenceEmbedder],
                 top_k: int = TOP_K, min_score: float | None = None):
        self.store, self._embedder, self.top_k, self._min_score = store, embedder, top_k, min_score
        self._embed: SentenceEmbedder | None = None
        self._lock = threading.Lock()
        self._known: OrderedDict[str, np.ndarray] = OrderedDict()  # text -> vector, least recently used first
        self._known_lock = threading.Lock()
        self.ready = threading.Event()
        self.error: str | None = None

    def _embedding(self) -> SentenceEmbedder:
        with self._lock:
            if self._embed is None:
                embed = self._embedder()
                if self.store.embedder() != embed.name:
                    recorded = self.store.embedder() or "an unrecorded embedder"
                    n = self.store.reembed(embed.name, lambda texts: _array(embed.passages(texts)))
                    if n:
                        log.warning("knowledge: %d chunks were embedded with %s; embedded again with %s",
                                    n, recorded, embed.name)
                self._embed = embed
            return self._embed

    @property
    def min_score(self) -> float:
        return self._min_score if self._min_score is not None else self._embedding().relevant

    def start(self, files: list[Path], base: Path) -> Knowledge:
        """Bring the catalog's documents up to date in the background; ``ready`` is set when done."""

        def run() -> None:
            try:
                for path, result in self.sync(files, base):
                    if isinstance(result, Exception):
                        log.warning("knowledge: %s skipped: %s", path, result)
            except Exception as exc:  # reported by /ready, never swallowed
                log.exception("knowledge sync failed")
                self.error = f"{type(exc).__name__}: {exc}"
            self.ready.set()

        threading.Thread(target=run, name="knowledge-sync", daemon=True).start()
        return self

    def sync(self, files: list[Path], base: Path) -> list[tuple[Path, Ingested | Exception]]:
        """Ingest the catalog's files that changed, and forget catalog documents whose files are gone."""
        results: list[tuple[Path, Ingested | Exception]] = []
        wanted = set()
        for path in files:
            name = CATALOG + (path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path))
            wanted.add(name)
            try:
                results.append((path, self.ingest(name, path.read_bytes())))
            except (UnreadableDocument, OSError) as exc:
                results.append((path, exc))
        for doc in self.store.documents():
            if doc.source.startswith(CATALOG) and doc.source not in wanted:
                self.store.delete(doc.id)
        return results

    def vectors(self, texts: list[str]) -> np.ndarray:
        """Texts compared with each other and with passages: questions, answer and source sentences. The last
        :data:`KNOWN_VECTORS` texts' vectors are kept: grounding embeds every sentence of each retrieved passage (twice)
        for each answer, and the passages of one knowledge base come back question after question."""
        with self._known_lock:
            found = {t: self._known[t] for t in texts if t in self._known}
            for t in found:
                self._known.move_to_end(t)
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            # rows copied: a view would keep its whole batch's array alive as long as any row of it is kept
            found.update(zip(missing, (row.copy() for row in _array(self._embedding()(missing))), strict=True))
            with self._known_lock:
                self._known.update((t, found[t]) for t in missing)
                while len(self._known) > KNOWN_VECTORS:
                    self._known.popitem(last=False)
        return np.stack([found[t] for t in texts]) if texts else np.zeros((0, DIMENSIONS), dtype=np.float32)

    def passage_vectors(self, texts: list[str]) -> np.ndarray:
        return _array(self._embedding().passages(texts))

    # ---- ingestion ------------------------------------------------------------------------------------------------
    def ingest(self, name: str, data: bytes, force: bool = False) -> Ingested:
        """Read, chunk, embed and store one document (UnreadableDocument if it cannot be read: nothing is stored).
        A source whose bytes did not change is left as it is unless ``force``."""
        sha = hashlib.sha256(data).hexdigest()
        known = self.store.sha256_of(name)
        if known == sha and not force:
            stored = self.store.get(document_id(name))
            return Ingested(stored.id, name, stored.title, stored.chunks, replaced=False, unchanged=True)
        document = read(name, data)
        parts = chunks(document)
        doc = self.store.put(name, document.title, sha, len(data), parts, self.passage_vectors([p.text for p in parts]))
        return Ingested(doc, name, document.title, len(parts), replaced=known is not None)

    # ---- retrieval and citation -----------------------------------------------------------------------------------
    def retrieve(self, question: str) -> list[Passage]:
        """The best passages for the question, none below the relevance floor (lower for a passage in another
        language than the question: the embedder's cosines run lower across languages)."""
        if not self.store.count():
            return []
        passages = self.store.search(self.vectors([question])[0], self.top_k)
        asked, floor = language.detect(question), self.min_score
        return [p for p in passages
                if p.score >= (floor if language.detect(p.body) == asked else floor - self._embedding().cross_lingual)]

    @staticmethod
    def prompt(passages: list[Passage]) -> str:
        """The passages for the system message, numbered as the answer cites them."""
        listing = "\n".join(f"[{i}] {p.text}" for i, p in enumerate(passages, 1))
        return ("Sources you may use (cite the number of the source you use, like [1]):\n" + listing +
                "\nAnswer from these sources when they cover the question.")

    def ground(self, question: str, answer: str, passages: list[Passage]) -> Grounded:
        """Mark each sentence with the passage that supports it, and lead with the passage's best sentence for the
        question when the answer does not already say it: a small model often paraphrases a fact away. A sentence
        that states a figure (a date, an amount, an article) or a name which neither the question nor any passage
        states is dropped: with sources at hand, a fact from nowhere is a guess; and a sentence that says what a source
        sentence says must state no figure or name that sentence (with its passage's title) and the question lack."""
        if not passages:
            return Grounded(answer, [], [])
        said = [uncited(s) for s in sentences(answer)]
        said = [s for s in said if s]
        source_sentences = [(i, s) for i, p in enumerate(passages) for s in sentences(p.body)]
        if not source_sentences:
            return Grounded(answer, passages, [])
        n_said, n_src = len(said), len(source_sentences)
        # Each source sentence twice: alone (what an answer sentence would repeat) and led by its passage's title
        # (what it is about: "It entered into force on 1 August 2024" says nothing of the AI Act by itself).
        vectors = self.vectors([question, *said, *(s for _, s in source_sentences),
                                *(f"{passages[i].lead}: {s}" for i, s in source_sentences)])
        q, said_v = vectors[0], vectors[1:1 + n_said]
        source_v, led_v = vectors[1 + n_said:1 + n_said + n_src], vectors[1 + n_said + n_src:]
        # The lead: the best sentence for the question that states something its passage's title does not ("Article
        # 99 of the AI Act sets maximum fines." under "EU AI Act Article 99: penalties" answers nothing). Cosines of
        # sentences on one topic lie close together, so the share of the question's words a sentence shares breaks
        # near-ties (a question in another language shares none, and the cosine alone decides).
        relevance = led_v @ q + LEXICAL * np.array([_overlap(question, s) for _, s in source_sentences])
        ranked = [int(i) for i in np.argsort(-relevance)]
        informative = [i for i in ranked if _new_facts(source_sentences[i][1], passages[source_sentences[i][0]].lead)]
        best = informative[0] if informative else ranked[0]
        # the runner-up too when it ties (GDPR fines: the 10 million and the 20 million tier lie 0.009 apart)
        tied = [i for i in informative[1:2] if relevance[best] - relevance[i] <= TIE]
        lead_passage, lead = source_sentences[best]
        lead_source = f"{question} {passages[lead_passage].lead}: {lead}"
        # answer sentence x source sentence, on MiniLM's scale where SUPPORTED and ALREADY_SAID were calibrated
        support = self._embedding().score(said_v @ source_v.T) if said else np.zeros((0, n_src))
        kept: list[tuple[str, int | None]] = []  # each sentence with the passage it cites
        already = False  # whether a kept sentence says what the lead says
        everything = " ".join([question, *(p.text for p in passages)])
        for row, sentence in zip(support, said, strict=True):
            j = int(np.argmax(row))
            restates_lead = row[best] >= ALREADY_SAID
            if restates_lead and _new_facts(sentence, lead_source):
                continue  # the lead's claim with other figures or names: a wrong fact, dropped
            if row[j] < SUPPORTED:
                if not _new_facts(sentence, everything):  # a figure or name from nowhere is a guess: dropped
                    kept.append((sentence, None))
                    already |= bool(restates_lead)
                continue
            passage, matched = source_sentences[j]
            if not _new_facts(sentence, f"{question} {passages[passage].lead}: {matched}"):
                kept.append((sentence, passage + 1))
                already |= bool(restates_lead)
            # else: it says what that source sentence says with figures or names it does not have, a wrong fact:
            # dropped
        if not already:
            kept[:0] = [(lead, lead_passage + 1)] + [(source_sentences[i][1], source_sentences[i][0] + 1) for i in tied]
        marked = [cited(sentence, [n] if n else []) for sentence, n in kept]
        return Grounded(join_sentences(marked), passages, sorted({n for _, n in kept if n}))


def _array(vectors) -> np.ndarray:
    return vectors.numpy() if hasattr(vectors, "numpy") else np.asarray(vectors)


def _overlap(question: str, sentence: str) -> float:
    """The share of the question's words (of four letters or more, compared by their first five) the sentence has."""
    asked = {w[:5] for w in WORD.findall(question.lower())}
    return len(asked & {w[:5] for w in WORD.findall(sentence.lower())}) / len(asked) if asked else 0.0


def _new_facts(sentence: str, source: str) -> set[str]:
    """What the sentence states that a reader could check and the source does not: figures (dates, amounts, article
    numbers) the source lacks, and names (words capitalised inside the sentence, quoted terms) it never mentions."""
    names = set(NAME.findall(sentence[1:])) | {q.strip() for q in QUOTED.findall(sentence)}
    lowered = source.lower()
    return (set(FIGURE.findall(sentence)) - set(FIGURE.findall(source))) | \
        {n for n in names if n.lower() not in lowered}

