"""Real HTTP experts (fake engines) on free localhost ports, for the orchestrator's unit tests."""

from __future__ import annotations

import threading

import pytest
from werkzeug.serving import make_server

from common.settings import AgentSettings
from tests.fakes import FakeEngine, expert_app


class LiveExpert:
    def __init__(self, persona: str, data_dir, engine: FakeEngine, api_key: str | None = None):
        self.engine = engine
        # The orchestrator's tests script what experts say: a relevance floor of 1 keeps their notes out of it.
        app = expert_app(AgentSettings(persona=persona, data_dir=data_dir, api_key=api_key, knowledge_min_score=1.0),
                         engine)
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def live_expert(tmp_path):
    started = []

    def start(persona: str, answer: str = "An expert answer.", **kw) -> LiveExpert:
        engine_kw = {k: kw.pop(k) for k in ("delay_s", "error") if k in kw}
        expert = LiveExpert(persona, tmp_path / f"{persona}-{len(started)}", FakeEngine(answer, **engine_kw), **kw)
        started.append(expert)
        return expert

    yield start
    for expert in started:
        expert.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A real Postgres with pgvector (the pgserver wheel bundles both), for the stores' server path."""
    pgserver = pytest.importorskip("pgserver", reason="pgserver is not installed (requirements-dev.txt)")
    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()
