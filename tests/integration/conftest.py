"""Real services on free localhost ports, on the embedded model. Session-scoped: each model loads once per run."""

from __future__ import annotations

import pytest

from harness.services import expert, orchestrator_service


@pytest.fixture(scope="session")
def law_expert(tmp_path_factory):
    service = expert("law_expert", tmp_path_factory.mktemp("law")).start()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def ai_expert(tmp_path_factory):
    service = expert("ai_expert", tmp_path_factory.mktemp("ai")).start()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def orchestrator(tmp_path_factory, law_expert, ai_expert):
    service = orchestrator_service(tmp_path_factory.mktemp("orch"), [law_expert.url, ai_expert.url]).start()
    yield service
    service.stop()
