"""One forward step over a left-padded batch: what the scheduler in ``local.py`` drives, model by model.

A :class:`Batch` is the decoder's KV cache plus the batch's attention mask. Rows are left-padded so that every row's
newest token sits in the last column; a row's positions count only its real tokens. Two decoders implement it:

- :class:`TransformersDecoder` runs any transformers causal LM through its own ``forward`` and ``DynamicCache``;
- :class:`~common.engine.llama.LlamaDecoder` is a lean forward for Llama-architecture models on the CPU (the embedded
  SmolLM2 among them): fused, pre-packed projections and a KV cache written in place instead of re-concatenated.

:func:`common.engine.decoders.make_decoder` picks one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Batch:
    """The running rows' KV cache (decoder-specific) and attention mask, [rows, columns] of 0/1."""

    cache: Any
    mask: torch.Tensor


class Decoder:
    """Prefill, decode, merge and select over :class:`Batch`; subclasses supply the forward pass and cache edits."""

    device: torch.device
    kv_bytes_per_token: int  # one row's KV cache for one position: what admission by memory counts

    def prefill(self, prompts: list[list[int]], pad_id: int, prefix_lens: list[int] | None = None
                ) -> tuple[torch.Tensor, Batch]:
        """Run the prompts as one left-padded group: (last-position logits [rows, vocab] in float32, batch).

        ``prefix_lens`` marks how many leading tokens of each prompt are a prefix worth keeping computed (a system
        prompt); a decoder may reuse their keys and values across requests or ignore the hint."""
        raise NotImplementedError

    def decode(self, batch: Batch, next_tokens: torch.Tensor) -> torch.Tensor:
        """Feed each row its newest token ([rows, 1]); returns next-token logits [rows, vocab] in float32."""
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((batch.mask.shape[0], 1))], dim=1)
        positions = batch.mask.sum(dim=1, keepdim=True) - 1
        logits, batch.cache = self._decode(next_tokens, batch.mask, positions, batch.cache)
        return logits.float()

    def merge(self, a: Batch, b: Batch) -> Batch:
        """Stack two batches, padding the narrower on the left so the newest tokens stay aligned."""
        width = max(a.mask.shape[1], b.mask.shape[1])
        mask = torch.cat([_pad_left(a.mask, width, 1), _pad_left(b.mask, width, 1)])
        return Batch(self._merge_caches(a.cache, b.cache, width), mask)

    def select(self, batch: Batch, keep: list[int]) -> Batch:
        """Keep only the rows in ``keep`` and drop leading columns that are padding in every remaining row."""
        index = torch.tensor(keep, device=batch.mask.device)
        mask = batch.mask.index_select(0, index)
        lead = int((mask.sum(dim=0) == 0).long().cumprod(dim=0).sum().item())
        return Batch(self._select_cache(batch.cache, index, lead), mask[:, lead:])

    # ---- the model-specific part -------------------------------------------------------------------------------
    def _decode(self, ids, mask, positions, cache) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def _merge_caches(self, a, b, width: int):
        raise NotImplementedError

    def _select_cache(self, cache, index: torch.Tensor, lead: int):
        raise NotImplementedError


class TransformersDecoder(Decoder):
    """Any transformers causal LM, through its own forward and a ``DynamicCache``."""

    def __init__(self, model):
        self.model = model
        self.device = next(model.parameters()).device
        self.kv_bytes_per_token = kv_bytes_per_token(model.config, model.dtype.itemsize)

    def prefill(self, prompts, pad_id, prefix_lens=None):
        from transformers import DynamicCache

        ids, mask = left_padded(prompts, pad_id, self.device)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions_of(mask),
                         past_key_values=DynamicCache(config=self.model.config), use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :].float(), Batch(out.past_key_values, mask)

    def _decode(self, ids, mask, positions, cache):
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True)
        return out.logits[:, -1, :], out.past_key_values

    def _merge_caches(self, a, b, width):
        for la, lb in zip(a.layers, b.layers, strict=True):
            la.keys = torch.cat([_pad_left(la.keys, width, 2), _pad_left(lb.keys, width, 2)])
            la.values = torch.cat([_pad_left(la.values, width, 2), _pad_left(lb.values, width, 2)])
        return a

    def _select_cache(self, cache, index, lead):
        for layer in cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, lead:]
            layer.values = layer.values.index_select(0, index)[:, :, lead:]
        return cache


def teacher_forced(decoder: Decoder, prompts: list[list[int]], continuations: list[list[int]], pad_id: int,
                   together: bool = True) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Feed each prompt's given continuation token by token, whatever the model would have chosen.

    Returns, per row, the model's top-1 prediction at each position of its continuation and the log-probability it
    gave the continuation's own token there: what a dtype or a batch shape changes is measured on identical inputs,
    where free greedy answers would drift apart after their first difference. ``together`` decodes every row in one
    batch (as the engine does under load); otherwise each row alone.
    """
    if not together:
        rows = [teacher_forced(decoder, [p], [c], pad_id) for p, c in zip(prompts, continuations, strict=True)]
        return [r[0][0] for r in rows], [r[1][0] for r in rows]
    top1: list[list[int]] = [[] for _ in prompts]
    logprobs: list[list[float]] = [[] for _ in prompts]
    steps = max(len(c) for c in continuations)
    with torch.inference_mode():
        logits, batch = decoder.prefill(prompts, pad_id)
        for step in range(steps):
            scores = torch.log_softmax(logits, dim=-1)
            for row, continuation in enumerate(continuations):
                if step < len(continuation):
                    top1[row].append(int(scores[row].argmax()))
                    logprobs[row].append(float(scores[row, continuation[step]]))
            if step + 1 < steps:
                feed = [[c[step] if step < len(c) else pad_id] for c in continuations]
                logits = decoder.decode(batch, torch.tensor(feed, device=decoder.device))
    return top1, [torch.tensor(lp) for lp in logprobs]


def kv_bytes_per_token(config, itemsize: int) -> int:
    """Keys and values of every layer for one position of one row, at ``itemsize`` bytes a value."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * itemsize


def left_padded(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask [rows, longest], each sequence right-aligned after padding."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, seq in enumerate(seqs):
        if seq:
            ids[i, width - len(seq):] = torch.tensor(seq)
            mask[i, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


def positions_of(mask: torch.Tensor) -> torch.Tensor:
    """Each token's position within its own row: padding does not count."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
