"""Answer composition: one final answer from the experts' answers, checked, attributed, and never worse than them.

Whatever strategy gathered the answers, the composer
1. cleans each answer (loops and repeated sentences out) and leaves out the answers that are off-topic next to the
   best one, so an expert consulted for nothing cannot pollute the result;
2. with two or more on-topic answers, asks the LLM to merge them, then checks the merge: no loop, grounded (every
   kept sentence must say what some expert sentence said, cosine >= ``GROUNDED`` on MiniLM's scale; sentences that
   are not are dropped, so nothing invented survives), keeping every expert sentence that cites a source (each kept
   sentence cites what the expert sentence closest to it cites), and as on-topic as the best expert answer (within
   ``MERGE_MARGIN``);
3. falls back to an extractive composition it can always stand behind when the merge fails a check (or there is one
   answer only): the best answer's clean sentences, then the other answers' on-topic sentences that add something.
   The best answer is the most on-topic one, except that an answer citing the expert's notes comes first when it is
   within ``MERGE_MARGIN`` of it: an expert asked outside its domain answers as fluently as the right one and without
   sources, so on cosine alone its guess can lead a sourced answer by a hair (measured: "within 180 days" led
   "72 hours, Article 33 [1]").
Every sentence of the result names the experts (and steps) it came from.

A merge costs a generation, most of a panel's composition time, and a model that cannot merge fails its checks every
time (the embedded 135M model's merges lose a cited fact): after :data:`MERGE_HISTORY` merges in a row failed, only
every :data:`MERGE_HISTORY`-th run that has answers to merge tries again, so a model that merges well keeps merging
and one that does not stops paying for it.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from common.engine.types import GenerationRequest
from common.protocol import Attribution, Citation, CompositionChecks, Step
from common.text import CITATION, citations, cited, is_degenerate, join_sentences, sentences, uncited

GROUNDED = 0.6  # a sentence is grounded when its best cosine to an expert sentence reaches this
MIN_GROUNDED_SHARE = 0.8  # a merge keeping less than this share of its sentences is not a merge of these answers
MERGE_MARGIN = 0.05  # a merge may be this much less on-topic than the best expert answer, no more
OFF_TOPIC_MARGIN = 0.15  # answers this far below the best answer's relevance are left out
OFF_TOPIC_FLOOR = 0.1  # ... and so are answers below this relevance, whatever the best
EXTRA_MARGIN = 0.1  # an extractive composition adds another expert's sentence only if about as on-topic as the best
DUPLICATE = 0.85  # a sentence this close to one already kept says nothing new
ANSWER_MAX_CHARS = 1200  # a small model's context fills fast; the opening of each answer carries most of it
EXTRACT_MAX_CHARS = 1500
MERGE_HISTORY = 8  # merges remembered; when all of them failed, one run in this many tries again

# The merge prompt labels each answer "Expert answer N:"; a small model copies the label into its answer.
ANSWER_LABEL = "Expert answer"
LABEL = re.compile(rf"\b{ANSWER_LABEL} \d+:\s*", re.IGNORECASE)
MERGE_INSTRUCTIONS = (
    "Answer the question below by combining the experts' answers into one clear answer. Use only facts the experts "
    "gave. Do not mention the experts."
)


@dataclass
class Composition:
    response: str
    merge: str  # "generated" | "extractive" | "none"
    attribution: list[Attribution]
    checks: CompositionChecks
    synthesis_ms: int = 0


@dataclass
class _Answer:
    step: int
    expert: str
    sentences: list[str]
    vectors: torch.Tensor  # one row per sentence
    relevance: float  # cosine of the whole (clean) answer to the task
    raw_relevance: float  # cosine of the answer as the expert gave it
    cites: bool  # it cites a passage of the expert's notes

    @property
    def shown(self) -> str:
        """What the merge prompt shows of this answer: its opening, cut at a word."""
        return _clip(join_sentences(self.sentences), ANSWER_MAX_CHARS)


@dataclass
class _Scored:
    text: str
    experts: list[str] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)


class Composer:
    """``embed`` (a ``SentenceEmbedder``) maps texts to L2-normalised rows, and its ``score`` their cosines onto
    MiniLM's scale, where the thresholds above were calibrated; ``engine`` writes the merge."""

    def __init__(self, engine, embed, merge_max_new_tokens: int = 256):
        self.engine, self.embed, self.merge_max_new_tokens = engine, embed, merge_max_new_tokens
        self._merges: deque[bool] = deque(maxlen=MERGE_HISTORY)  # whether each recent merge passed its checks
        self._skipped = 0  # runs since the last merge tried while the recent ones all failed
        self._lock = threading.Lock()  # runs compose concurrently

    def compose(self, task: str, steps: list[Step], timeout_s: float = 600.0) -> Composition:
        started = time.perf_counter()
        query, answers = self._answers(task, steps)
        if not answers:
            reasons = "; ".join(s.observation for s in steps if not s.ok) or "no expert was consulted"
            return Composition(f"The panel could not produce an answer: {reasons}", "none", [],
                               CompositionChecks(passed=False, why="no expert answered"))
        best = max(a.raw_relevance for a in answers)  # what the user would have had from the best expert alone
        top = max(a.relevance for a in answers)
        kept = [a for a in answers if a.relevance >= max(top - OFF_TOPIC_MARGIN, OFF_TOPIC_FLOOR)] or \
            [max(answers, key=lambda a: a.relevance)]
        kept.sort(key=lambda a: a.relevance, reverse=True)
        sourced = next((a for a in kept if a.cites and a.relevance >= top - MERGE_MARGIN), None)
        if sourced is not None:
            kept.remove(sourced)
            kept.insert(0, sourced)
        left_out = [a.expert for a in answers if a not in kept]
        composition, why = None, "one on-topic answer: nothing to merge"
        if len(kept) > 1:
            if self._worth_merging():
                composition = self._generated(task, query, kept, best, left_out, timeout_s)
                with self._lock:
                    self._merges.append(composition.checks.passed)
                why = composition.checks.why
            else:
                why = (f"not merged: the last {MERGE_HISTORY} merges all failed their checks (one run in "
                       f"{MERGE_HISTORY} tries again)")
        if composition is None or not composition.checks.passed:
            composition = self._extractive(query, kept, best, left_out, why)
        composition.checks.expert_relevance = {a.expert: round(a.relevance, 4) for a in answers}
        composition.synthesis_ms = int((time.perf_counter() - started) * 1000)
        return composition

    # ---- the answers ----------------------------------------------------------------------------------------------
    def _answers(self, task: str, steps: list[Step]) -> tuple[torch.Tensor | None, list[_Answer]]:
        """The task's vector (embedded once, with everything else) and the answers worth composing from."""
        raw = [(i, s) for i, s in enumerate(steps) if s.ok and s.expert and s.observation.strip()]
        cleaned = [(i, s, _clean(s.observation[:ANSWER_MAX_CHARS * 2])) for i, s in raw]
        cleaned = [(i, s, parts) for i, s, parts in cleaned if parts]
        if not cleaned:
            return None, []
        # The answer as the expert gave it is embedded apart only where cleaning took something out of it: long texts
        # are most of the embedding's time, and otherwise it says what the clean answer says.
        changed = [k for k, (_, s, parts) in enumerate(cleaned) if parts != sentences(s.observation)]
        texts = [task, *(join_sentences(parts) for _, _, parts in cleaned)]
        texts += [cleaned[k][1].observation for k in changed]
        texts += [p for _, _, parts in cleaned for p in parts]
        vectors = self.embed(texts)
        query, n = vectors[0], len(cleaned)
        raw_rows = {k: 1 + n + j for j, k in enumerate(changed)}
        out, row = [], 1 + n + len(changed)
        for k, (i, s, parts) in enumerate(cleaned):
            relevance = self._similarity(vectors[1 + k], query)
            out.append(_Answer(i, s.expert, parts, vectors[row: row + len(parts)], relevance=relevance,
                               raw_relevance=self._similarity(vectors[raw_rows[k]], query) if k in raw_rows
                               else relevance, cites=any(source.cited for source in s.sources)))
            row += len(parts)
        return query, out

    # ---- the generated merge -----------------------------------------------------------------------------------------
    def _worth_merging(self) -> bool:
        """False while the last :data:`MERGE_HISTORY` merges all failed, but for every that-many-th run."""
        with self._lock:
            if len(self._merges) < MERGE_HISTORY or any(self._merges):
                return True
            self._skipped = (self._skipped + 1) % MERGE_HISTORY
            return self._skipped == 0

    def _generated(self, task: str, query: torch.Tensor, kept: list[_Answer], best: float, left_out: list[str],
                   timeout_s: float) -> Composition:
        listed = "\n\n".join(f"{ANSWER_LABEL} {n}:\n{a.shown}" for n, a in enumerate(kept, 1))
        prompt = f"{MERGE_INSTRUCTIONS}\n\nQuestion: {task}\n\n{listed}\n\nQuestion: {task}\nCombined answer:"
        request = GenerationRequest(messages=[{"role": "user", "content": prompt}],
                                    max_new_tokens=self.merge_max_new_tokens, repetition_penalty=1.15,
                                    timeout_s=timeout_s, loop_guard=True, end_at_sentence=True)
        text = LABEL.sub("", self.engine.submit(request).result().text)
        checks = CompositionChecks(best_expert_relevance=round(best, 4), left_out=left_out)
        if is_degenerate(text):
            return self._failed(checks, "the merge loops")
        parts = sentences(text)
        vectors = self.embed(parts)
        scored = self._attribute(parts, vectors, kept, self.embed.score)
        checks.grounded_share = round(len(scored) / len(parts), 4)
        if checks.grounded_share < MIN_GROUNDED_SHARE:
            return self._failed(checks, f"only {len(scored)} of {len(parts)} merged sentences say what an expert "
                                        "said")
        dropped = self._dropped_sources(vectors, kept)
        if dropped:
            return self._failed(checks, f"the merge leaves out {dropped} of the experts' sourced sentences")
        final, relevance = self._scored_text(scored, query)
        checks.relevance = round(relevance, 4)
        if checks.relevance < best - MERGE_MARGIN:
            return self._failed(checks, f"the merge is less on-topic ({checks.relevance:.2f}) than the best expert "
                                        f"answer ({best:.2f})")
        checks.passed = True
        return Composition(final, "generated", _attribution(scored), checks)

    @staticmethod
    def _failed(checks: CompositionChecks, why: str) -> Composition:
        checks.passed, checks.why = False, why
        return Composition("", "generated", [], checks)

    @staticmethod
    def _attribute(parts: list[str], vectors: torch.Tensor, kept: list[_Answer], score) -> list[_Scored]:
        """Each merged sentence with the experts whose sentences it matches, closest first; ungrounded sentences are
        dropped. A sentence cites what the expert sentence closest to it cites, whatever marks the model copied: a
        merge that keeps the experts' facts keeps their sources, and a mark never points at the wrong answer's."""
        scored = []
        for text, vector in zip(parts, vectors, strict=True):
            matches = []  # (cosine, answer, its closest sentence)
            for a in kept:
                similarity = a.vectors @ vector
                k = int(similarity.argmax())
                if float(score(similarity[k])) >= GROUNDED:
                    matches.append((float(similarity[k]), a, k))
            if matches:
                matches.sort(key=lambda m: m[0], reverse=True)
                _, closest, k = matches[0]
                text = cited(uncited(text), citations(closest.sentences[k]))
                scored.append(_Scored(text, [a.expert for _, a, _ in matches], [a.step for _, a, _ in matches]))
        return scored

    def _dropped_sources(self, vectors: torch.Tensor, kept: list[_Answer]) -> int:
        """How many of the experts' sentences that cite a source (in the part of each answer the merge prompt shows)
        no merged sentence restates. What an expert answered from its sources is the substance of the answer: a
        merge that paraphrases it away ("The EU AI Act prohibits practices that are prohibited by the EU AI Act.")
        keeps the experts' topic but loses their facts, and the extractive composition keeps them."""
        return sum(float(self.embed.score((vectors @ a.vectors[k]).max())) < GROUNDED
                   for a in kept for k, sentence in enumerate(a.sentences)
                   if citations(sentence) and sentence in a.shown)

    # ---- the extractive composition ------------------------------------------------------------------------------
    def _extractive(self, query: torch.Tensor, kept: list[_Answer], best: float, left_out: list[str],
                    why: str) -> Composition:
        first = kept[0]
        chosen = [_Scored(t, [first.expert], [first.step]) for t in first.sentences]
        chosen_vectors = [first.vectors]
        for answer in kept[1:]:
            relevance = self._similarity(answer.vectors, query)
            for text, vector, score in zip(answer.sentences, answer.vectors, relevance, strict=True):
                seen = torch.cat(chosen_vectors)
                if float(score) < first.relevance - EXTRA_MARGIN or self._similarity(seen, vector).max() >= DUPLICATE:
                    continue
                chosen.append(_Scored(text, [answer.expert], [answer.step]))
                chosen_vectors.append(vector[None])
        chosen = _fit(chosen, EXTRACT_MAX_CHARS)
        final, relevance = self._scored_text(chosen, query, first)
        if relevance < best - MERGE_MARGIN and len(chosen) > len(first.sentences):
            # what the others added diluted the answer: the best answer alone, cleaned, is never worse than itself
            chosen = chosen[: len(first.sentences)]
            final, relevance = self._scored_text(chosen, query, first)
        checks = CompositionChecks(best_expert_relevance=round(best, 4), left_out=left_out, passed=True,
                                   relevance=round(relevance, 4), grounded_share=1.0, why=why)
        return Composition(final, "extractive", _attribution(chosen), checks)

    def _scored_text(self, chosen: list[_Scored], query: torch.Tensor,
                     known: _Answer | None = None) -> tuple[str, float]:
        """The text of ``chosen`` and its relevance: ``known``'s when it is that answer whole (embedded already)."""
        final = join_sentences([s.text for s in chosen])
        if known is not None and [s.text for s in chosen] == known.sentences:
            return final, known.relevance
        return final, self._similarity(self.embed([final])[0], query)

    def _similarity(self, a, b):
        """``a @ b`` on MiniLM's scale: a float for two vectors, an array for rows and a vector."""
        scores = self.embed.score(a @ b)
        return float(scores) if torch.is_tensor(scores) and scores.ndim == 0 else scores


def _clean(text: str) -> list[str]:
    """An answer's sentences without loops, repeats or fragments: what a composition may quote."""
    out, seen = [], set()
    for s in sentences(text):
        key = " ".join(s.lower().split())
        if key in seen or is_degenerate(s) or len(s) < 3:
            continue
        seen.add(key)
        out.append(s)
    return out


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0]


def _fit(chosen: list[_Scored], limit: int) -> list[_Scored]:
    """Whole sentences, in order, up to ``limit`` characters (at least one)."""
    out, total = [], 0
    for s in chosen:
        if out and total + len(s.text) > limit:
            break
        out.append(s)
        total += len(s.text) + 1
    return out


def _attribution(scored: list[_Scored]) -> list[Attribution]:
    return [Attribution(text=s.text, experts=s.experts, steps=s.steps) for s in scored]


def cite(composition: Composition, steps: list[Step]) -> list[Citation]:
    """Renumber the experts' citations across the final answer, in order of first use; a marker whose source is
    unknown is dropped. Rewrites the composition's text and attribution in place and returns the cited sources."""
    numbered: dict[tuple[int, int], Citation] = {}

    def renumber(step: int, match: re.Match) -> str:
        k = int(match.group(1))
        sources = steps[step].sources if 0 <= step < len(steps) else []
        if not 1 <= k <= len(sources):
            return ""
        if (step, k) not in numbered:
            source = sources[k - 1]
            numbered[(step, k)] = Citation(**{**source.model_dump(), "number": len(numbered) + 1, "cited": True},
                                          expert=steps[step].expert or "", step=step)
        return f" [{numbered[(step, k)].number}]"

    if not any(s.sources for s in steps):
        return []
    for part in composition.attribution:
        part.text = CITATION.sub(lambda m, step=part.steps[0]: renumber(step, m), part.text)
    if composition.attribution:
        composition.response = join_sentences([part.text for part in composition.attribution])
    return list(numbered.values())
