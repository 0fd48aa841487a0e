"""A lean decoder for Llama-architecture models on the CPU.

Profiling the transformers forward of SmolLM2-135M on a 2-core CPU showed where a decode step goes: at 16 rows a third
of it re-concatenates the whole ``DynamicCache`` for one new column, and MKL's sgemm is slow for 4-16 rows. This
forward computes the same function with
- q/k/v and gate/up fused into one projection each, in oneDNN's pre-packed weight layout (the layout inductor's
  freezing uses), which keeps small-batch matmuls fast;
- a KV cache preallocated with headroom and written in place;
- fewer, larger tensor ops (``rms_norm``, SDPA with grouped-query attention);
- a prefix cache: a system prompt's keys and values are computed once and copied into every request that starts
  with it, so an expert prefills only what follows its persona; and the same for what a prompt shares with a recent
  one (a repeated question, a conversation's earlier turns).
Its logits equal the transformers forward's to float rounding: ``tests/unit/test_decoders.py`` checks that on a tiny
Llama, ``tests/integration/test_engine.py`` checks greedy answers on the embedded model.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F

from . import fp16
from .decoding import Batch, Decoder, kv_bytes_per_token, left_padded, positions_of
from .int4 import HEAD, Int4Groups, Int4Linear, Planes, fits

# System prompts whose keys and values are kept: an expert has one persona, an orchestrator a handful of prompts.
PREFIX_CACHE_SIZE = 8
# Tokens of recent whole prompts whose keys and values (and last logits) are kept apart from those (about 46 MB for
# the embedded model's float32 cache), so a conversation's next turn prefills only what is new, as llama.cpp's server
# does with its prompt cache, and a repeated question nothing. Apart, so distinct prompts cannot push a persona out.
RECENT_PROMPT_TOKENS = 1024
# A projection of at most this many tokens runs on the 4-bit weights, a larger one (a prefill, a wide batch) on the
# dense copy: the int4 kernel reads a quarter of the bytes, which wins while a step is bound by reading weights, and
# loses to oneDNN's dense matmul once enough rows share each weight read (bench/speed.py measures both sides).
INT4_MAX_TOKENS = 4


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
    """``x @ W.T`` for weights fused along the output, in oneDNN's pre-packed layout where the CPU allows it, and on
    4-bit weights too when given them, or else on a float16 copy when asked (``half``): those serve the few-token
    steps (see :data:`INT4_MAX_TOKENS` and :data:`common.engine.fp16.MAX_TOKENS`)."""

    def __init__(self, weights: list[torch.Tensor], batch_hint: int, quantized: list[Planes | None] | None = None,
                 half: bool = False):
        weight = torch.cat([w.detach() for w in weights]).contiguous()
        self.int4 = self.half = None
        if quantized and None not in quantized and len({len(planes) for planes in quantized}) == 1:
            planes = [Int4Groups.stacked(list(plane)) for plane in zip(*quantized, strict=True)]
            self.int4 = Int4Linear(planes) if fits(planes) else None
        if half and self.int4 is None:
            self.half = fp16.Fp16Linear(weight)
        try:  # the packed layout is tuned for batches near batch_hint rows, and works for any
            self.packed, self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, batch_hint), None
        except (RuntimeError, AttributeError):  # no oneDNN, or a dtype this CPU cannot pack (bf16 without AVX512)
            self.packed, self.weight = None, weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.int4 is not None and x.numel() <= INT4_MAX_TOKENS * x.shape[-1]:
            return self.int4(x)
        if self.half is not None and x.numel() <= fp16.MAX_TOKENS * x.shape[-1]:
            return self.half(x)
        if self.packed is None:
            return F.linear(x, self.weight)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")


class _Layer:
    def __init__(self, layer, index: int, batch_hint: int, quantized: dict[str, Planes], half: bool):
        def projection(*paths: str) -> _Projection:
            return _Projection([layer.get_submodule(path).weight for path in paths], batch_hint,
                               [quantized.get(f"model.layers.{index}.{path}.weight") for path in paths], half)

        self.qkv = projection("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
        self.o = projection("self_attn.o_proj")
        self.gate_up = projection("mlp.gate_proj", "mlp.up_proj")
        self.down = projection("mlp.down_proj")
        self.attn_norm = layer.input_layernorm.weight.detach().float()
        self.mlp_norm = layer.post_attention_layernorm.weight.detach().float()


class KVCache:
    """Keys and values of every layer, [layers, rows, kv_heads, capacity, head_dim] each; columns before ``length``
    are in use.

    Capacity runs ahead of length, so a decode step writes one column in place; only growth past the capacity, and
    rows joining or leaving, copy. One tensor for all layers lets a compiled step read the cache as one input and a
    step's new columns be written for every layer at once.
    """

    def __init__(self, layers: int, rows: int, heads: int, head_dim: int, capacity: int, like: torch.Tensor):
        shape = (layers, rows, heads, capacity, head_dim)
        self.keys, self.values = like.new_zeros(shape), like.new_zeros(shape)
        self.length = 0

    @staticmethod
    def headroom(length: int, rows: int) -> int:
        """The capacity to allocate for ``length`` columns of ``rows`` rows."""
        if rows == 1:  # the compiled step attends over the whole capacity (masked): keep it tight (+3% tokens/s
            return length + max(16, length // 8)  # at one row measured against length // 2); a row's copy is small
        # wide caches grow seldom: every copy briefly holds old and new, which shows in the process's memory (and at
        # 2-8 rows, which the compiled step takes too, a tight capacity made no difference, measured: +-2% tokens/s)
        return length + max(64, length // 2)

    @property
    def rows(self) -> int:
        return self.keys.shape[1]

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    def reserve(self, length: int) -> None:
        if length <= self.capacity:
            return
        grown = []
        for old in (self.keys, self.values):
            layers, rows, heads, _, dim = old.shape
            new = old.new_zeros((layers, rows, heads, self.headroom(length, rows), dim))
            new[:, :, :, : self.length] = old[:, :, :, : self.length]
            grown.append(new)
        self.keys, self.values = grown

    def put(self, row: int, prefix: tuple[torch.Tensor, torch.Tensor], end: int) -> None:
        """Copy one sequence's keys and values ([layers, 1, heads, n, dim] each) into ``row``, ending at ``end``."""
        keys, values = prefix
        n = keys.shape[3]
        self.keys[:, row, :, end - n: end] = keys[:, 0]
        self.values[:, row, :, end - n: end] = values[:, 0]

    def write(self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor):
        """Store new columns from ``start`` on; returns the layer's keys and values up to them."""
        end = start + keys.shape[2]
        self.keys[layer, :, :, start:end] = keys
        self.values[layer, :, :, start:end] = values
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    @classmethod
    def stacked(cls, parts: list[tuple[KVCache, torch.Tensor | None, int]], width: int) -> KVCache:
        """A cache of ``width`` columns from parts (cache, rows to take or None for all, first column to take),
        stacked by rows and right-aligned: a narrower part is padded on the left."""
        first_cache = parts[0][0]
        counts = [cache.rows if index is None else len(index) for cache, index, _ in parts]
        layers, _, heads, _, dim = first_cache.keys.shape
        out = cls(layers, sum(counts), heads, dim, cls.headroom(width, sum(counts)), first_cache.keys)
        row = 0
        for (cache, index, first), count in zip(parts, counts, strict=True):
            for src, dst in ((cache.keys, out.keys), (cache.values, out.values)):
                src = src[:, :, :, first: cache.length]
                if index is not None:
                    src = src.index_select(1, index)
                dst[:, row: row + count, :, width - src.shape[3]: width] = src
            row += count
        out.length = width
        return out


class LlamaDecoder(Decoder):
    """The forward pass of a Llama-architecture causal LM over a :class:`KVCache`, from the model's own weights.

    It keeps what it needs (packed copies of the projections, norms, embeddings), so the caller can drop the model.
    ``quantized`` maps parameter names to quantized copies of those weights (:mod:`common.engine.int4`); the
    projections that have them run few-token steps on them. With ``half``, the projections that have none run those
    steps on float16 copies (:mod:`common.engine.fp16`).
    """

    def __init__(self, model, batch_hint: int = 16, quantized: dict[str, Planes] | None = None, half: bool = False):
        config = model.config
        self.device = next(model.parameters()).device
        self.dtype = model.dtype
        # Attention and its KV cache run in float32 whatever the weights' dtype: the CPU's bfloat16 attention kernels
        # are 4-7x slower than its float32 ones at one query (measured at 80 and 400 keys), and float32 scores are
        # closer to the reference. It costs the cache twice the memory of a bfloat16 one.
        self._attention_anchor = torch.zeros((), dtype=torch.float32, device=self.device)
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.kv_bytes_per_token = kv_bytes_per_token(config, 4)  # the float32 cache
        self.hidden = config.hidden_size
        self.intermediate = config.intermediate_size
        self.eps = config.rms_norm_eps
        quantized = quantized or {}
        self.layers = [_Layer(layer, i, batch_hint, quantized, half) for i, layer in enumerate(model.model.layers)]
        # Copies, not views: a view of a checkpoint's tensor would keep its whole memory map resident.
        self.embed = model.model.embed_tokens.weight.detach().clone()
        self.final_norm = model.model.norm.weight.detach().float()
        self.head = _Projection([model.lm_head.weight], batch_hint, [quantized.get(HEAD)], half)
        projections = [p for layer in self.layers for p in (layer.qkv, layer.o, layer.gate_up, layer.down)]
        self.int4 = any(p.int4 is not None for p in [*projections, self.head])
        self.half = any(p.half is not None for p in [*projections, self.head])
        rotary = model.model.rotary_emb
        self.inv_freq = rotary.inv_freq.detach().float()
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
        # The decode step of up to step.max_rows rows compiled (common/engine/compiled.py), set by make_decoder
        # where it compiles.
        self.step = None
        self._prefixes: OrderedDict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._recent: OrderedDict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()

    def prefill(self, prompts, pad_id, prefix_lens=None, remember: bool = True):
        """Prefill what each row's cached start does not cover (see :meth:`_start`), then keep the prompts computed
        (unless not to ``remember``: a persona's own prefill is kept as a prefix instead).

        The cache holds ``held`` columns of cached starts, right-aligned, then the rest, left-padded: a row may carry
        padding in the middle, which its mask hides and its positions skip. A prompt seen whole before has nothing
        left to compute: its row is all padding in the rest, and its logits are the ones kept with it."""
        starts = [self._start(p, n) for p, n in zip(prompts, prefix_lens or [0] * len(prompts), strict=True)]
        lens = [0 if start is None else start[0].shape[3] for start in starts]
        ids, suffix_mask = left_padded([p[n:] for p, n in zip(prompts, lens, strict=True)], pad_id, self.device)
        rows, width = ids.shape
        held = max(lens)
        cache = KVCache(len(self.layers), rows, self.kv_heads, self.head_dim, KVCache.headroom(held + width, rows),
                        self._attention_anchor)
        prefix_mask = suffix_mask.new_zeros((rows, held))
        for row, (start, n) in enumerate(zip(starts, lens, strict=True)):
            if n:
                cache.put(row, start[:2], held)
                prefix_mask[row, held - n:] = 1
        cache.length = held
        mask = torch.cat([prefix_mask, suffix_mask], dim=1)
        if width:
            causal = torch.ones((width, held + width), dtype=torch.bool, device=self.device).tril(held)
            allowed = mask.bool()[:, None, None, :] & causal  # a padding query sees nothing: SDPA gives it zeros
            logits = self._forward(ids, positions_of(mask)[:, held:], allowed, cache).float()
        else:
            logits = torch.empty((rows, self.embed.shape[0]), device=self.device)
        for row, (prompt, start, n) in enumerate(zip(prompts, starts, lens, strict=True)):
            if start is not None and start[2] is not None:
                logits[row] = start[2]
            elif remember:
                self._remember(prompt, cache, row, logits[row],
                               (held - n, held), (held + width - (len(prompt) - n), held + width))
        return logits, Batch(cache, mask)

    def _start(self, prompt: list[int], prefix_len: int) -> tuple[torch.Tensor, ...] | None:
        """Keys and values of the longest start of ``prompt`` known ([layers, 1, heads, n, dim] each) and, when that
        start is the whole prompt, its last position's logits (else None); None when no start is known.

        Known are the marked prefix ``prompt[:prefix_len]`` (a persona: computed now if unseen, and kept) and
        what recent prompts share with this one (a repeated question, the earlier turns of a conversation)."""
        best_len, best_key = prefix_len, None
        for tokens in self._recent:
            # a recent prompt that runs past this one holds no logits for this one's end: one token is left to compute
            shared = min(_common_start(tokens, prompt), len(prompt) - (len(tokens) != len(prompt)))
            if shared > best_len:
                best_len, best_key = shared, tokens
        if best_key is None:
            return (*self._prefix(prompt[:prefix_len]), None) if prefix_len else None
        self._recent.move_to_end(best_key)
        keys, values, logits = self._recent[best_key]
        return keys[:, :, :, :best_len], values[:, :, :, :best_len], logits if best_len == len(prompt) else None

    def _remember(self, prompt: list[int], cache: KVCache, row: int, logits: torch.Tensor,
                  *spans: tuple[int, int]) -> None:
        """Keep ``prompt``'s keys and values (the row's columns in ``spans``, in order) and its last logits among the
        recent prompts, within :data:`RECENT_PROMPT_TOKENS`, the least recently used going first."""
        key = tuple(prompt)
        if key in self._recent or len(prompt) > RECENT_PROMPT_TOKENS:
            return
        keys, values = (torch.cat([t[:, row: row + 1, :, a:b] for a, b in spans], dim=3)
                        for t in (cache.keys, cache.values))
        self._recent[key] = (keys, values, logits.clone())
        while sum(map(len, self._recent)) > RECENT_PROMPT_TOKENS:
            self._recent.popitem(last=False)

    def _prefix(self, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``tokens`` as a sequence's start: from the prefix cache, or computed and kept."""
        key = tuple(tokens)
        if key in self._prefixes:
            self._prefixes.move_to_end(key)
            return self._prefixes[key]
        n = len(tokens)
        cache = self.prefill([tokens], pad_id=0, remember=False)[1].cache  # one row, so no padding
        entry = (cache.keys[:, :, :, :n].clone(), cache.values[:, :, :, :n].clone())
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
        if self.step is not None and width == 1 and rows <= self.step.max_rows:  # a decode step of a few rows
            return self._compiled_step(ids, positions, allowed, cache)
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        start = cache.length
        cache.reserve(start + width)
        cos, sin = self._rope(positions)
        split = [(heads + kv_heads) * dim, kv_heads * dim]
        x = F.embedding(ids, self.embed).float()  # the residual stream, in float32 as the norms read it
        for i, layer in enumerate(self.layers):
            h = F.rms_norm(x, (self.hidden,), layer.attn_norm, self.eps).to(self.dtype)
            qk, v = layer.qkv(h).float().split(split, dim=-1)
            # q and k rotate together (a one-row step is mostly per-operator overhead, so fewer operators count)
            qk = _rotate(qk.view(rows, width, heads + kv_heads, dim), cos, sin).transpose(1, 2)
            q, k = qk[:, :heads], qk[:, heads:]
            keys, values = cache.write(i, start, k, v.view(rows, width, kv_heads, dim).transpose(1, 2))
            attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed,
                                                  enable_gqa=heads != kv_heads)
            x = x + layer.o(attn.transpose(1, 2).reshape(rows, width, heads * dim).to(self.dtype))
            h = F.rms_norm(x, (self.hidden,), layer.mlp_norm, self.eps).to(self.dtype)
            gate, up = layer.gate_up(h).split([self.intermediate, self.intermediate], dim=-1)
            x = x + layer.down(F.silu(gate) * up)
        cache.length = start + width
        last = F.rms_norm(x[:, -1:], (self.hidden,), self.final_norm, self.eps).to(self.dtype)
        return self.head(last)[:, -1]

    def _compiled_step(self, ids, positions, allowed, cache):
        """One token of each row through :attr:`step`: it attends over the cache's columns before the new one (bias
        -inf where not ``allowed`` and on the columns not yet written) and over the new token, whose keys and values
        are stored here."""
        start = cache.length
        cache.reserve(start + 1)
        bias = torch.full((ids.shape[0], 1, 1, cache.capacity), float("-inf"), device=self.device)
        bias[:, 0, 0, :start].masked_fill_(allowed[:, 0, 0, :start], 0.0)
        cos, sin = self._rope(positions)
        logits, keys, values = self.step(ids, cos, sin, cache.keys, cache.values, bias)
        cache.keys[:, :, :, start: start + 1] = keys
        cache.values[:, :, :, start: start + 1] = values
        cache.length = start + 1
        return logits

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin, [rows, width, 1, head_dim], for :func:`_rotate`."""
        freqs = positions[..., None].float() * self.inv_freq
        cos = (torch.cat([freqs, freqs], dim=-1).cos() * self.rope_scale)[:, :, None]
        sin = (torch.cat([-freqs, freqs], dim=-1).sin() * self.rope_scale)[:, :, None]
        return cos, sin


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding: ``x * cos + rotate_half(x) * sin``, where rotate_half(x) = (-x2, x1) is the halves of x
    swapped (a roll) with the first one's sign flipped, a flip carried by ``signed_sin``."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


def _common_start(a: tuple[int, ...], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    if a[:n] == tuple(b[:n]):
        return n
    return next(i for i in range(n) if a[i] != b[i])
