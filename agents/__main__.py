"""``python -m agents --persona law_expert --port 5001``: start one expert under gunicorn."""

from __future__ import annotations

import argparse
import sys

from agents.personas import UnknownPersona, get_persona
from common.serve import serve
from common.settings import AgentSettings
from common.web import configure_logging


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agents", description="Run one Conclave expert.")
    parser.add_argument("--persona", help="persona id from the catalog (env AGENT_PERSONA)")
    parser.add_argument("--port", type=int, help="port (env AGENT_PORT; default: the persona's port)")
    parser.add_argument("--host", help="bind address (env HOST)")
    parser.add_argument("--personas-file", help="a catalog of your own (env PERSONAS_FILE)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in {"persona": args.persona, "agent_port": args.port, "host": args.host,
                                   "personas_file": args.personas_file}.items() if v is not None}
    settings = AgentSettings(**overrides)
    configure_logging(settings.log_level)
    try:
        persona = get_persona(settings.persona, settings.personas_file)
    except (UnknownPersona, ValueError, OSError) as exc:
        sys.exit(f"error: {exc}")

    from agents.app import create_app  # after the persona check: a typo fails fast, before torch is imported

    port = settings.agent_port or persona.port
    serve(lambda: create_app(settings), settings.host, port, log_level=settings.log_level)


if __name__ == "__main__":
    main()
