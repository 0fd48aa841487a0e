"""What a caller may see of an answer as the model writes it: one processor per answer, fed the text of each new
token, used alike by the local engine (one per batch row) and the remote engine (one per streamed request).

It ends the answer at a stop string, stops it when it starts to repeat itself (``loop_guard``, keeping one copy of
what repeats), and holds back whatever may still turn out to be a stop string's start, a loop's start, or (near the
token budget, with ``end_at_sentence``) an unfinished last sentence, so that nothing it later cuts was ever sent.
"""

from __future__ import annotations

from common.text import MAX_PERIOD, loop_start, sentence_cut

from .types import GenerationRequest

# With the loop guard on, this much of the newest text waits before it is streamed: the longest repetition the guard
# cuts back (common.text.MAX_PERIOD) plus a token's worth, so what it cuts was never sent.
LOOP_HOLDBACK = MAX_PERIOD + 16
# With end_at_sentence, text after the last sentence end waits once this few tokens of the budget are left.
SENTENCE_ZONE = 64


class OutputProcessor:
    """One answer's text, turned into safe deltas. After each :meth:`feed`, ``finish_reason`` says whether the answer
    has ended (the model ended it, or a stop string or the loop guard did) and ``looped`` whether the guard did."""

    def __init__(self, request: GenerationRequest):
        self.request = request
        self.text = ""  # the answer so far, after any cut
        self.emitted = 0  # characters of text already handed out
        self.finish_reason: str | None = None
        self.looped = False
        # a constrained output is kept whole: cutting it would break it
        self._free_text = request.constraint is None

    def feed(self, piece: str, tokens: int, finish_reason: str | None = None) -> str:
        """Add the text of the newest token(s); ``tokens`` is how many the answer has now, ``finish_reason`` the
        model's own ("stop", "length") when it ended. Returns the text that is now safe to send."""
        if self.finish_reason is not None:
            return ""
        req = self.request
        text = self.text + piece
        self.finish_reason = finish_reason
        for s in req.stop:
            at = text.find(s)
            if at != -1:
                text = text[:at]
                self.finish_reason = "stop"
        guarding = self._free_text and req.loop_guard
        if guarding and self.finish_reason is None and tokens >= req.min_new_tokens:
            at = loop_start(text)
            if at is not None:
                text, self.finish_reason, self.looped = text[: max(at, self.emitted)], "stop", True
        if self.finish_reason is None:
            held = max((_overlap(text, s) for s in req.stop), default=0)
            if guarding:
                held = max(held, LOOP_HOLDBACK)
            safe = text[: max(len(text) - held, 0)]
            if self._free_text and req.end_at_sentence and req.max_new_tokens - tokens <= SENTENCE_ZONE:
                safe = safe[: sentence_cut(safe, self.emitted, words=False)]
            safe = safe.rstrip()  # trailing space may be the last thing before the end
        else:
            if self._free_text and req.end_at_sentence and (self.finish_reason == "length" or self.looped):
                text = text[: sentence_cut(text, self.emitted)]
            safe = text.rstrip()
        self.text = text
        start = len(safe) - len(safe.lstrip()) if self.emitted == 0 else 0  # the answer starts at its first word
        if len(safe) <= self.emitted:
            return ""
        delta = safe[max(self.emitted, start):]
        self.emitted = len(safe)
        return delta


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``stop``."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
