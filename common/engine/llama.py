"""A lean decoder for Llama-architecture models on the CPU.

Profiling the transformers forward of SmolLM2-135M on a 2-core CPU showed where a decode step goes: at 16 rows a third
of it re-concatenates the whole ``DynamicCache`` for one new column, and MKL's sgemm is slow for 4-16 rows. This
forward computes the same function with
- q/k/v and gate/up fused into one projection each, in oneDNN's pre-packed weight layout (the layout inductor's
  freezing uses), which keeps small-batch matmuls fast;
- a KV cache preallocated with headroom and written in place;
- fewer, larger tensor ops (``rms_norm``, SDPA with grouped-query attention);
- a prefix cache: a system prompt's keys and values are computed once and copied into every request that starts
  with it, so an expert prefills only what follows its persona.
Its logits equal the transformers forward's to float rounding: ``tests/unit/test_decoders.py`` checks that on a tiny
Llama, ``tests/integration/test_engine.py`` checks greedy answers on the embedded model.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F

from .decoding import Batch, Decoder, left_padded, positions_of

# System prompts whose keys and values are kept: an expert has one persona, an orchestrator a handful of prompts.
PREFIX_CACHE_SIZE = 8


def unsupported_reason(model) -> str | None:
    """Why this decoder cannot run ``model``, or None when it can."""
    config = model.config
    if config.model_type != "llama":
        return f"model type {config.model_type!r} is not llama"
    if next(model.parameters()).device.type != "cpu":
        return "the lean decoder is for the CPU"
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "projections with bias"
    if config.hidden_act != "silu" or getattr(config, "pretraining_tp", 1) != 1:
        return f"activation {config.hidden_act!r} or tensor-parallel pretraining"
    if not hasattr(getattr(model.model, "rotary_emb", None), "inv_freq"):
        return "no rotary embedding with inv_freq"
    return None


class _Projection:
    """``x @ W.T`` for weights fused along the output, in oneDNN's pre-packed layout where the CPU allows it."""

    def __init__(self, weights: list[torch.Tensor], batch_hint: int):
        weight = torch.cat([w.detach() for w in weights]).contiguous()
        try:  # the packed layout is tuned for batches near batch_hint rows, and works for any
            self.packed, self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, batch_hint), None
        except (RuntimeError, AttributeError):  # no oneDNN, or a dtype this CPU cannot pack (bf16 without AVX512)
            self.packed, self.weight = None, weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return F.linear(x, self.weight)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")


class _Layer:
    def __init__(self, layer, batch_hint: int):
        attn, mlp = layer.self_attn, layer.mlp
        self.qkv = _Projection([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight], batch_hint)
        self.o = _Projection([attn.o_proj.weight], batch_hint)
        self.gate_up = _Projection([mlp.gate_proj.weight, mlp.up_proj.weight], batch_hint)
        self.down = _Projection([mlp.down_proj.weight], batch_hint)
        self.attn_norm = layer.input_layernorm.weight.detach().clone()
        self.mlp_norm = layer.post_attention_layernorm.weight.detach().clone()


class KVCache:
    """Keys and values per layer, [rows, kv_heads, capacity, head_dim]; columns before ``length`` are in use.

    Capacity runs ahead of length, so a decode step writes one column in place; only growth past the capacity, and
    rows joining or leaving, copy.
    """

    def __init__(self, layers: int, rows: int, heads: int, head_dim: int, capacity: int, like: torch.Tensor):
        shape = (rows, heads, capacity, head_dim)
        self.keys = [like.new_zeros(shape) for _ in range(layers)]
        self.values = [like.new_zeros(shape) for _ in range(layers)]
        self.length = 0

    @staticmethod
    def headroom(length: int) -> int:
        return length + max(64, length // 2)

    @property
    def rows(self) -> int:
        return self.keys[0].shape[0]

    def reserve(self, length: int) -> None:
        if length <= self.keys[0].shape[2]:
            return
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                rows, heads, _, dim = old.shape
                store[i] = old.new_zeros((rows, heads, self.headroom(length), dim))
                store[i][:, :, : self.length] = old[:, :, : self.length]

    def put(self, row: int, prefix: list[tuple[torch.Tensor, torch.Tensor]], end: int) -> None:
        """Copy one sequence's keys and values (per layer, [1, heads, n, dim]) into ``row``, ending at ``end``."""
        for layer, (keys, values) in enumerate(prefix):
            n = keys.shape[2]
            self.keys[layer][row, :, end - n: end] = keys[0]
            self.values[layer][row, :, end - n: end] = values[0]

    def write(self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor):
        """Store new columns from ``start`` on; returns the layer's keys and values up to them."""
        end = start + keys.shape[2]
        self.keys[layer][:, :, start:end] = keys
        self.values[layer][:, :, start:end] = values
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    @classmethod
    def stacked(cls, parts: list[tuple[KVCache, torch.Tensor | None, int]], width: int) -> KVCache:
        """A cache of ``width`` columns from parts (cache, rows to take or None for all, first column to take),
        stacked by rows and right-aligned: a narrower part is padded on the left."""
        first_cache = parts[0][0]
        counts = [cache.rows if index is None else len(index) for cache, index, _ in parts]
        _, heads, _, dim = first_cache.keys[0].shape
        out = cls(len(first_cache.keys), sum(counts), heads, dim, cls.headroom(width), first_cache.keys[0])
        for layer in range(len(out.keys)):
            row = 0
            for (cache, index, first), count in zip(parts, counts, strict=True):
                for src, dst in ((cache.keys[layer], out.keys[layer]), (cache.values[layer], out.values[layer])):
                    src = src[:, :, first: cache.length]
                    if index is not None:
                        src = src.index_select(0, index)
                    dst[row: row + count, :, width - src.shape[2]: width] = src
                row += count
        out.length = width
        return out


class LlamaDecoder(Decoder):
    """The forward pass of a Llama-architecture causal LM over a :class:`KVCache`, from the model's own weights.

    It keeps what it needs (packed copies of the projections, norms, embeddings), so the caller can drop the model.
    """

    def __init__(self, model, batch_hint: int = 16):
        config = model.config
        self.device = next(model.parameters()).device
        self.dtype = model.dtype
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.hidden = config.hidden_size
        self.intermediate = config.intermediate_size
        self.eps = config.rms_norm_eps
        self.layers = [_Layer(layer, batch_hint) for layer in model.model.layers]
        # Copies, not views: a view of a checkpoint's tensor would keep its whole memory map resident.
        self.embed = model.model.embed_tokens.weight.detach().clone()
        self.final_norm = model.model.norm.weight.detach().clone()
        self.head = _Projection([model.lm_head.weight], batch_hint)
        rotary = model.model.rotary_emb
        self.inv_freq = rotary.inv_freq.detach().float()
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
        self._prefixes: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()

    def prefill(self, prompts, pad_id, prefix_lens=None):
        """Prefill with each row's marked prefix taken from the prefix cache (computed once, on first sight).

        The cache holds ``held`` columns of prefixes, right-aligned, then the suffixes, left-padded: a row may carry
        padding in the middle, which its mask hides and its positions skip."""
        prefix_lens = prefix_lens or [0] * len(prompts)
        prefixes = [self._prefix(p[:n]) for p, n in zip(prompts, prefix_lens, strict=True)]
        ids, suffix_mask = left_padded([p[n:] for p, n in zip(prompts, prefix_lens, strict=True)], pad_id,
                                       self.device)
        rows, width = ids.shape
        held = max(prefix_lens)
        cache = KVCache(len(self.layers), rows, self.kv_heads, self.head_dim, KVCache.headroom(held + width),
                        self.embed)
        prefix_mask = suffix_mask.new_zeros((rows, held))
        for row, (prefix, n) in enumerate(zip(prefixes, prefix_lens, strict=True)):
            if n:
                cache.put(row, prefix, held)
                prefix_mask[row, held - n:] = 1
        cache.length = held
        mask = torch.cat([prefix_mask, suffix_mask], dim=1)
        causal = torch.ones((width, held + width), dtype=torch.bool, device=self.device).tril(held)
        allowed = mask.bool()[:, None, None, :] & causal  # a padding query sees nothing: SDPA gives it zeros
        logits = self._forward(ids, positions_of(mask)[:, held:], allowed, cache)
        return logits.float(), Batch(cache, mask)

    def _prefix(self, tokens: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Keys and values of ``tokens`` as a sequence's start, per layer: from the cache, or computed and kept."""
        if not tokens:
            return None
        key = tuple(tokens)
        if key in self._prefixes:
            self._prefixes.move_to_end(key)
            return self._prefixes[key]
        n = len(tokens)
        cache = self.prefill([tokens], pad_id=0)[1].cache  # one row, so no padding
        entry = [(k[:, :, :n].clone(), v[:, :, :n].clone()) for k, v in zip(cache.keys, cache.values, strict=True)]
        self._prefixes[key] = entry
        if len(self._prefixes) > PREFIX_CACHE_SIZE:
            self._prefixes.popitem(last=False)
        return entry

    def _decode(self, ids, mask, positions, cache):
        return self._forward(ids, positions, mask.bool()[:, None, None, :], cache), cache

    def _merge_caches(self, a: KVCache, b: KVCache, width: int) -> KVCache:
        return KVCache.stacked([(a, None, 0), (b, None, 0)], width)

    def _select_cache(self, cache: KVCache, index: torch.Tensor, lead: int) -> KVCache:
        return KVCache.stacked([(cache, index, lead)], cache.length - lead)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor, cache: KVCache):
        rows, width = ids.shape
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        start = cache.length
        cache.reserve(start + width)
        cos, sin = self._rope(positions)
        split = [heads * dim, kv_heads * dim, kv_heads * dim]
        x = F.embedding(ids, self.embed)
        for i, layer in enumerate(self.layers):
            h = F.rms_norm(x, (self.hidden,), layer.attn_norm, self.eps)
            q, k, v = layer.qkv(h).split(split, dim=-1)
            q = _rotate(q.view(rows, width, heads, dim).transpose(1, 2), cos, sin)
            k = _rotate(k.view(rows, width, kv_heads, dim).transpose(1, 2), cos, sin)
            keys, values = cache.write(i, start, k, v.view(rows, width, kv_heads, dim).transpose(1, 2))
            attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed,
                                                  enable_gqa=heads != kv_heads)
            x = x + layer.o(attn.transpose(1, 2).reshape(rows, width, heads * dim))
            h = F.rms_norm(x, (self.hidden,), layer.mlp_norm, self.eps)
            gate, up = layer.gate_up(h).split([self.intermediate, self.intermediate], dim=-1)
            x = x + layer.down(F.silu(gate) * up)
        cache.length = start + width
        last = F.rms_norm(x[:, -1:], (self.hidden,), self.final_norm, self.eps)
        return self.head(last)[:, -1]

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq
        angles = torch.cat([freqs, freqs], dim=-1)
        cos = (angles.cos() * self.rope_scale).to(self.dtype)[:, None]
        sin = (angles.sin() * self.rope_scale).to(self.dtype)[:, None]
        return cos, sin


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin
