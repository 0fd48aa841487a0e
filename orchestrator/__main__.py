"""``python -m orchestrator [--port 5002]``: start the orchestrator under gunicorn."""

from __future__ import annotations

import argparse

from common.serve import configure_logging, serve
from common.settings import OrchestratorSettings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m orchestrator", description="Run the Conclave orchestrator.")
    parser.add_argument("--port", type=int, help="port (env ORCHESTRATOR_PORT, default 5002)")
    parser.add_argument("--host", help="bind address (env HOST)")
    parser.add_argument("--experts", help="comma-separated expert URLs (env EXPERT_URLS)")
    args = parser.parse_args(argv)
    given = {"orchestrator_port": args.port, "host": args.host, "expert_urls": args.experts}
    overrides = {k: v for k, v in given.items() if v is not None}
    settings = OrchestratorSettings(**overrides)
    configure_logging(settings.log_level)

    def create_app():  # in gunicorn's worker: its master never imports torch (common/serve.py)
        from orchestrator.app import create_app

        return create_app(settings)

    serve(create_app, settings, settings.orchestrator_port)


if __name__ == "__main__":
    main()
