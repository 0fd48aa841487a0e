"""The local engine: one scheduler thread owns the model and decodes every waiting request together.

Continuous batching over a left-padded KV cache (the forward pass itself is a :class:`~.decoding.Decoder`). At each
step the scheduler
  1. admits waiting requests: prefills them as one left-padded group and merges their cache rows into the running
     batch (shorter side padded on the left, so every row's newest token sits in the last column);
  2. otherwise decodes one token for every running row;
  3. samples per row (its own temperature/top_p, grammar mask, min_new_tokens), streams each row's new text, and
     drops finished, cancelled and timed-out rows from the cache at once.
Callers never touch torch: they submit a :class:`GenerationRequest` and read a :class:`Generation`.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .decoders import make_decoder
from .decoding import Decoder
from .grammar import GrammarCompiler, close_soon, mask_logits
from .loading import load_model, pick_device, pick_dtype
from .output import OutputProcessor
from .tools import for_template, template_knows_tools, with_tools_prompt
from .types import (
    CONSTRAINT_KINDS,
    EngineError,
    EngineNotReady,
    EngineOverloaded,
    Generation,
    GenerationCancelled,
    GenerationRequest,
    GenerationTimeout,
    InvalidConstraint,
)

log = logging.getLogger(__name__)


# A constrained row with this share of its token budget left (at most CLOSING_ZONE tokens) is steered to close
# whatever it has open: a JSON object or tool call cut by max_new_tokens is no object and no call.
CLOSING_ZONE = 32


def closing_zone(max_new_tokens: int) -> int:
    return min(CLOSING_ZONE, max_new_tokens // 4)


# Below this a temperature only sharpens the distribution into greedy decoding, and dividing by it overflows.
MIN_TEMPERATURE = 1e-4


class PromptTooLong(InvalidConstraint):
    code = "prompt_too_long"


@dataclass
class _Row:
    """One request's state inside the running batch."""

    gen: Generation
    prompt_ids: list[int]
    span: int = 0  # prompt + max_new_tokens: the most KV-cache columns this row can need
    prefix_len: int = 0  # leading prompt tokens that render the system message (see _system_prefix_len)
    matcher: object | None = None
    token_ids: list[int] = field(default_factory=list)
    window: tuple[int, int] = (0, 0)  # (start, end) of the tokens whose text was last detokenized
    error: EngineError | None = None  # this row failed alone; the rest of the batch goes on

    def __post_init__(self) -> None:
        self.out = OutputProcessor(self.gen.request)  # stops, loop guard, hold-back, sentence cut

    @property
    def finish_reason(self) -> str | None:
        return self.out.finish_reason


def default_threads(dtype: str, device: str) -> int:
    """The engine's threads when THREADS is 0: every core where it decodes float32 on the CPU, half of them otherwise.

    A float32 step is a few long matmuls, so processes that share the cores (a panel's experts answering at once)
    lose little to each other, and an expert answering alone gets the whole CPU (2 cores, AVX2: a lone 128-token
    answer 1.45x faster than on one thread; two at once as fast as on one thread each). A bfloat16 or 4-bit step is
    many short kernels between which OpenMP's threads spin, and two processes spinning on every core slowed each
    other fiftyfold (2.0 s against 107 s for two 128-token answers), so there each takes half."""
    cores = len(os.sched_getaffinity(0))
    device = pick_device(device)
    return cores if device == "cpu" and pick_dtype(dtype, device) == torch.float32 else max(1, cores // 2)


class LocalEngine:
    """Batched generation on a local transformers model. ``start()`` loads the model in a background thread."""

    def __init__(
        self,
        model: str = "embedded",
        dtype: str = "auto",
        device: str = "auto",
        cache_dir: Path | None = None,
        max_batch_size: int = 16,
        max_queue: int = 64,
        decoder: str = "auto",
        loader: Callable = load_model,
        threads: int = 0,
        weights: str = "auto",
        kv_cache_mb: float = 1024,
        compile: str = "auto",
    ):
        self.model_spec = model
        self.model_name = model
        self.max_batch_size = max_batch_size
        self._load_args = (model, dtype, device, cache_dir)
        self._loader = loader
        self._decoder_kind, self._weights = decoder, weights
        # compiled steps are kept beside the converted checkpoints; with no cache dir, no compile (it costs ~50 s)
        self._compile_dir = Path(cache_dir) if compile == "auto" and cache_dir else None
        self.kv_cache_bytes = kv_cache_mb * 2**20
        self._held: _Row | None = None  # taken from the queue, waiting for KV-cache room (see _fits)
        self.threads = threads or default_threads(dtype, device)
        self._queue: queue.Queue[_Row] = queue.Queue(maxsize=max_queue)
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self.load_error: str | None = None
        self.decoder: Decoder | None = None
        self.tokenizer = self.grammars = None
        self.running_rows = 0
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings) -> LocalEngine:
        return cls(
            settings.model,
            settings.dtype,
            settings.device,
            settings.cache_dir,
            settings.max_batch_size,
            settings.max_queue,
            settings.decoder,
            threads=settings.threads,
            weights=settings.weights,
            kv_cache_mb=settings.kv_cache_mb,
            compile=settings.compile,
        )

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> LocalEngine:
        self._thread = threading.Thread(target=self._run, name="engine-scheduler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the scheduler and wait for it, so no decode step is cut off mid-way by interpreter exit."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def wait_ready(self, timeout: float | None = None) -> bool:
        self._ready.wait(timeout)
        return self.ready

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.load_error is None and self._scheduling()

    @property
    def failed(self) -> bool:
        return self.load_error is not None

    def _scheduling(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping.is_set()

    @property
    def status(self) -> str:
        if self.load_error:
            return f"model failed to load: {self.load_error}"
        if self._ready.is_set() and not self._scheduling():
            return "the engine has stopped"
        return "ready" if self.ready else f"model {self.model_spec} is loading"

    @property
    def waiting(self) -> int:
        return self._queue.qsize() + (self._held is not None)

    def accepts(self, kind: str) -> bool:
        """Every kind of constraint: xgrammar masks the logits here."""
        return kind in CONSTRAINT_KINDS

    @property
    def runtime(self) -> dict[str, object]:
        """Where and how the model runs, for /ready: in bfloat16 a greedy answer may change with the batch around it
        (README, "Dtypes and reproducible answers"), so operators need to see which one they got."""
        if not self.ready:
            return {}
        return {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
                "decoder": type(self.decoder).__name__, "threads": self.threads,
                "weights": ("int4" if getattr(self.decoder, "int4", False)
                            else "fp16" if getattr(self.decoder, "half", False) else "dense"),
                "decode_step": "compiled" if getattr(self.decoder, "step", None) is not None else "eager"}

    def _load(self) -> None:
        model, tokenizer, source = self._loader(*self._load_args)
        self.tokenizer, self.model_name = tokenizer, source.name
        self.dtype = model.dtype
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.grammars = GrammarCompiler(tokenizer, self.vocab_size)
        eos = {tokenizer.eos_token_id, *(_as_list(model.generation_config.eos_token_id))}
        eos |= {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>")
                if t in tokenizer.get_vocab()}
        self.eos_ids = sorted(i for i in eos if i is not None)
        self.closing_ids = torch.cat([self.grammars.closers, torch.tensor(self.eos_ids, dtype=torch.long)])
        self.max_positions = getattr(model.config, "max_position_embeddings", 8192)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        # The decoder keeps what it needs; a lean one holds its own packed weights, so the model itself is let go
        # (collected now, and its pages handed back, so they do not count against the expert's memory).
        self.decoder = make_decoder(model, self._decoder_kind, self.max_batch_size, self._weights, source,
                                    self._compile_dir)
        self.device = self.decoder.device
        del model
        gc.collect()
        _release_memory()

    # ---- submission (caller threads) ---------------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> Generation:
        """Queue a request. Tokenizing and grammar compilation happen here, in the caller's thread."""
        if not self.ready:
            raise EngineNotReady(self.status, retry_after=5)
        prompt_ids = self._tokens(request.messages, generation_prompt=True, tools=request.tools)
        span = len(prompt_ids) + request.max_new_tokens
        if span > self.max_positions:
            raise PromptTooLong(
                f"prompt of {len(prompt_ids)} tokens plus max_new_tokens {request.max_new_tokens} exceeds the "
                f"model's context of {self.max_positions} tokens"
            )
        if (needed := self._cache_bytes(1, span)) > self.kv_cache_bytes:
            raise PromptTooLong(
                f"prompt of {len(prompt_ids)} tokens plus max_new_tokens {request.max_new_tokens} needs "
                f"{needed / 2**20:.0f} MB of KV cache, more than KV_CACHE_MB "
                f"({self.kv_cache_bytes / 2**20:.0f} MB): ask for fewer tokens")
        matcher = None
        if request.constraint is not None:
            matcher = self.grammars.matcher(self.grammars.compile(request.constraint))
        gen = Generation(request)
        try:
            self._queue.put_nowait(_Row(gen, prompt_ids, span, self._system_prefix_len(request, prompt_ids), matcher))
        except queue.Full:
            raise EngineOverloaded(f"{self._queue.maxsize} requests are already waiting", retry_after=2) from None
        return gen

    def _system_prefix_len(self, request: GenerationRequest, prompt_ids: list[int]) -> int:
        """How many leading prompt tokens render the system message alone, or 0.

        Every request to an expert starts with its persona, so the decoder can keep those tokens computed. The count
        is used only where the system message renders as a true token prefix of the whole prompt."""
        messages = request.messages
        if not request.cache_prefix or not messages or messages[0]["role"] != "system" or request.tools:
            return 0  # a system message with a caller's text or tools in it is no persona's: not worth a cache slot
        head = self._tokens(messages[:1], generation_prompt=False)
        fits = len(head) < len(prompt_ids) and prompt_ids[: len(head)] == head
        return len(head) if fits else 0

    def _tokens(self, messages: list[dict], generation_prompt: bool, tools: list[dict] | None = None) -> list[int]:
        extra = {}
        if tools or any(m["role"] == "tool" or m.get("tool_calls") for m in messages):
            if template_knows_tools(self.tokenizer.chat_template):
                extra, messages = {"tools": tools}, for_template(messages)
            else:
                messages = with_tools_prompt(messages, tools)
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True,
                                                 return_dict=False, **extra)
        return list(ids["input_ids"] if hasattr(ids, "input_ids") else ids)

    # ---- scheduler thread ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_num_threads(self.threads)  # in this thread: OpenMP keeps the count per thread
        try:
            self._load()
        except Exception as exc:  # reported by /ready, never swallowed
            log.exception("model load failed")
            self.load_error = f"{type(exc).__name__}: {exc}"
            self._ready.set()
            return
        self._ready.set()
        log.info("engine ready: %s on %s (%s, %s, %d threads)", self.model_name, self.device, self.dtype,
                 type(self.decoder).__name__, self.threads)
        rows: list[_Row] = []
        try:
            self._schedule(rows)
        finally:  # stopped, or died: nothing in flight or waiting is left to hang until its timeout
            stopped = EngineNotReady("the engine stopped before this request finished", retry_after=5)
            for r in rows + [self._held] * (self._held is not None) + self._drain():
                if not r.gen.done:
                    r.gen.fail(stopped)

    def _drain(self) -> list[_Row]:
        drained = []
        with contextlib.suppress(queue.Empty):
            while True:
                drained.append(self._queue.get_nowait())
        return drained

    def _schedule(self, rows: list[_Row]) -> None:
        """Decode until stopped; ``rows`` (changed in place) are the requests in flight."""
        batch = None
        while not self._stopping.is_set():
            new = self._admit(rows)
            try:
                with torch.inference_mode():
                    if new:
                        logits, new_batch = self.decoder.prefill([r.prompt_ids for r in new], self.pad_id,
                                                                 [r.prefix_len for r in new])
                        self._sample_and_advance(new, logits)
                        batch = self.decoder.merge(batch, new_batch) if rows else new_batch
                        rows.extend(new)
                    elif rows:
                        self._sample_and_advance(rows, self.decoder.decode(batch, self._last_tokens(rows)))
                    else:
                        continue
                    keep = [i for i, r in enumerate(rows) if not self._retire(r)]
                    if len(keep) < len(rows):
                        rows[:] = [rows[i] for i in keep]
                        if rows:
                            batch = self.decoder.select(batch, keep)
                        else:
                            batch = None
                            _release_memory()
                    self.running_rows = len(rows)
            except Exception as exc:  # one bad step must not kill the scheduler; fail what was in flight
                log.exception("decode step failed")
                for r in rows + new:
                    if not r.gen.done:
                        r.gen.fail(EngineError(f"generation failed: {type(exc).__name__}: {exc}"))
                rows.clear()
                batch = None
                self.running_rows = 0

    def _admit(self, rows: list[_Row]) -> list[_Row]:
        """Waiting requests that join the batch now: in arrival order, while there are free rows and the batch's KV
        cache stays within KV_CACHE_MB. The first one that does not fit is held (not refused) until rows leave."""
        admitted: list[_Row] = []
        while len(rows) + len(admitted) < self.max_batch_size:
            r, self._held = self._held, None
            if r is None:
                try:
                    r = self._queue.get(timeout=0.2) if not rows and not admitted else self._queue.get_nowait()
                except queue.Empty:
                    break
            if r.gen.cancelled:  # requests that died while they waited never reach the model
                r.gen.fail(GenerationCancelled("client went away"))
            elif time.monotonic() > r.gen.deadline:
                r.gen.fail(GenerationTimeout("request timed out while waiting in the queue"))
            elif self._fits([*rows, *admitted, r]):
                r.gen.begin()
                admitted.append(r)
            else:
                self._held = r
                break
        return admitted

    def _fits(self, rows: list[_Row]) -> bool:
        """Whether these rows' KV cache stays within budget at its largest: every row padded to the longest span."""
        return len(rows) <= 1 or self._cache_bytes(len(rows), max(r.span for r in rows)) <= self.kv_cache_bytes

    def _cache_bytes(self, rows: int, span: int) -> float:
        # the decoder's cache grows in steps, up to half again what is in use (KVCache.headroom)
        return rows * span * 1.5 * self.decoder.kv_bytes_per_token

    def _last_tokens(self, rows: list[_Row]) -> torch.Tensor:
        # A row that ended on its first step has no token; it is retired before the next decode, so pad stands in.
        return torch.tensor([[r.token_ids[-1] if r.token_ids else self.pad_id] for r in rows], device=self.device)

    def _sample_and_advance(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Pick each row's next token under its own constraints, then update its text and finish state."""
        matchers = [r.matcher if r.finish_reason is None else None for r in rows]
        mask_logits(logits, matchers, self.vocab_size)
        for i, r in enumerate(rows):
            req = r.gen.request
            if r.matcher is None and len(r.token_ids) < req.min_new_tokens:
                logits[i, self.eos_ids] = float("-inf")
            if req.repetition_penalty != 1.0 and r.token_ids:
                _penalize(logits[i], r.token_ids, req.repetition_penalty)
            if r.matcher is not None and req.max_new_tokens - len(r.token_ids) <= closing_zone(req.max_new_tokens):
                close_soon(logits[i], self.closing_ids)
        greedy = logits.argmax(dim=-1).tolist()
        for i, r in enumerate(rows):
            if r.finish_reason is not None or r.error is not None:
                continue
            req = r.gen.request
            try:
                token = greedy[i] if req.temperature < MIN_TEMPERATURE else _sample(logits[i], req.temperature,
                                                                                      req.top_p)
            except RuntimeError as exc:  # e.g. a distribution torch refuses: fail this row, not the batch
                r.error = EngineError(f"sampling failed: {exc}")
                continue
            r.token_ids.append(token)
            if r.matcher is not None:
                r.matcher.accept_token(token)
            finish = None
            if token in self.eos_ids:
                r.token_ids.pop()  # the end-of-turn token is never part of the answer
                finish = "stop"
            elif r.matcher is not None and r.matcher.is_terminated():
                finish = "stop"
            elif len(r.token_ids) >= req.max_new_tokens:
                finish = "length"
            piece, r.window = detokenize_step(self.tokenizer, r.token_ids, r.window, final=finish is not None)
            r.gen.push(r.out.feed(piece, len(r.token_ids), finish))

    def _retire(self, r: _Row) -> bool:
        """True when the row leaves the batch: finished, failed, cancelled or past its deadline."""
        if r.error is not None:
            r.gen.fail(r.error)
            return True
        if r.finish_reason is not None:
            r.gen.finish(len(r.prompt_ids), len(r.token_ids), r.finish_reason, r.out.looped)
            return True
        if r.gen.cancelled:
            r.gen.fail(GenerationCancelled("client went away"))
            return True
        if time.monotonic() > r.gen.deadline:
            r.gen.fail(r.gen.timeout_error())
            return True
        return False


def _load_malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_MALLOC_TRIM = _load_malloc_trim()


def _release_memory() -> None:
    """Hand freed KV-cache memory back to the OS when the batch drains.

    glibc keeps freed heap pages for reuse, so without this an expert stays at its peak size after a burst.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def detokenize_step(tokenizer, ids: list[int], window: tuple[int, int], final: bool) -> tuple[str, tuple[int, int]]:
    """The text that ``ids[window[1]:]`` add to an answer, and the window to pass next time.

    Re-decoding a whole answer at every step costs time quadratic in its length, per row and step, so only a window
    is decoded: the tokens last added plus the new ones, whose text is the difference. Context matters to some
    tokenizers (leading spaces), and a window ending inside a multi-byte character waits for the next token unless
    the answer is ``final``.
    """
    start, end = window
    before = tokenizer.decode(ids[start:end], skip_special_tokens=True)
    after = tokenizer.decode(ids[start:], skip_special_tokens=True)
    if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
        return "", window
    return after[len(before):], (end, len(ids))


def _penalize(logits: torch.Tensor, token_ids: list[int], penalty: float) -> None:
    """CTRL-style repetition penalty over the tokens this row has generated (small models loop without it)."""
    seen = torch.tensor(sorted(set(token_ids)), device=logits.device)
    scores = logits[seen]
    logits[seen] = torch.where(scores > 0, scores / penalty, scores * penalty)


def _sample(logits: torch.Tensor, temperature: float, top_p: float) -> int:
    scaled = logits / temperature
    probs = torch.softmax(scaled - scaled.max(), dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        cut = sorted_probs.cumsum(-1) - sorted_probs > top_p
        sorted_probs[cut] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1).item())
