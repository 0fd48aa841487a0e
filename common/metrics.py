"""Prometheus metrics of one service, on a registry of its own (no process globals, so tests can build many apps).
No web framework here: the services count, the web layer renders (``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, service: str):
        self.registry = CollectorRegistry()
        self.requests = Counter("conclave_requests_total", "HTTP requests by route and status",
                                ["service", "route", "status"], registry=self.registry)
        self.latency = Histogram("conclave_request_seconds", "HTTP request latency", ["service", "route"],
                                 registry=self.registry,
                                 buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
        self.tokens = Counter("conclave_tokens_generated_total", "Tokens generated", ["service"],
                              registry=self.registry)
        self.waiting = Gauge("conclave_requests_waiting", "Requests queued for the engine", ["service"],
                             registry=self.registry)
        self.running = Gauge("conclave_requests_running", "Requests being decoded", ["service"],
                             registry=self.registry)
        # the orchestrator's view of its panel: what each consultation took, and the tokens of every model
        self.consultations = Histogram("conclave_consultation_seconds", "Time to consult an expert, by outcome",
                                       ["expert", "ok"], registry=self.registry,
                                       buckets=(0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300))
        self.model_tokens = Counter("conclave_model_tokens_total", "Tokens of a run's model calls: each expert's "
                                    "(as it counted them) and the orchestrator's own", ["model_of", "kind"],
                                    registry=self.registry)
        self.service = service

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
