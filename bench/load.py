"""What the speed sections of the bench share: the prompts, the forced token count, RSS sampling, the core count."""

from __future__ import annotations

import os
import threading
import time

from harness.services import Service

NEW_TOKENS = 64
PROMPTS = [
    "What is a neural network?", "How does encryption protect data?", "What is overfitting?",
    "Explain gradient descent.", "What is a database index?", "How do compilers work?",
    "What is differential privacy?", "Why do models hallucinate?",
]


class PeakRss:
    """Samples a service's RSS every 50 ms in the background; ``peak`` is the highest seen, in MB."""

    def __init__(self, service: Service):
        self.service, self.peak, self._stop = service, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.service.rss_mb())
            time.sleep(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# An expert measured against a single-process baseline has the host to itself, as the baseline has: every core.
CORES = len(os.sched_getaffinity(0))
ALONE = {"THREADS": str(CORES)}


def p95(latencies: list[float]) -> float:
    """The 95th percentile of sorted latencies (the nearest rank at or above it)."""
    return latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
