"""Text generation behind one interface: ``submit(GenerationRequest) -> Generation``, for a local model or a server."""

from __future__ import annotations

import atexit

from .types import Constraint, Generation, GenerationRequest, GenerationResult  # noqa: F401


def make_engine(settings):
    """The engine the settings ask for: a remote OpenAI-compatible server when REMOTE_URL is set, else local."""
    if settings.remote_url:
        from .remote import RemoteEngine

        return RemoteEngine.from_settings(settings)
    from .local import LocalEngine

    return LocalEngine.from_settings(settings)


def start_engine(settings):
    """The settings' engine, started (a local model loads in the background) and stopped when the process exits, so
    requests in flight then end with an error instead of hanging."""
    engine = make_engine(settings).start()
    atexit.register(engine.stop)
    return engine
