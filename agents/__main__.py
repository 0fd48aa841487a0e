"""``python -m agents --persona law_expert --port 5001``: start one expert under gunicorn.

``python -m agents ingest --persona law_expert PATH...``: add documents (files or folders) to an expert's knowledge
base, whether or not the expert is running; a changed file replaces its earlier version.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agents.personas import Persona, UnknownPersona, get_persona
from common.serve import configure_logging, serve
from common.settings import AgentSettings


def configured(overrides: dict) -> tuple[AgentSettings, Persona]:
    """Settings (the environment, then the command line's overrides) and the persona they name; a bad persona
    ends the program with the reason."""
    settings = AgentSettings(**{k: v for k, v in overrides.items() if v is not None})
    configure_logging(settings.log_level)
    try:
        return settings, get_persona(settings.persona, settings.personas_file)
    except (UnknownPersona, ValueError, OSError) as exc:
        sys.exit(f"error: {exc}")


def ingest(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m agents ingest",
                                     description="Add documents to an expert's knowledge base.")
    parser.add_argument("--persona", help="persona id from the catalog (env AGENT_PERSONA)")
    parser.add_argument("--personas-file", help="a catalog of your own (env PERSONAS_FILE)")
    parser.add_argument("--force", action="store_true", help="re-embed files even when they did not change")
    parser.add_argument("paths", nargs="+", type=Path, help="files, or folders to take every supported file from")
    args = parser.parse_args(argv)
    settings, persona = configured({"persona": args.persona, "personas_file": args.personas_file})
    missing = [p for p in args.paths if not p.exists()]
    if missing:
        sys.exit(f"error: no such file or folder: {', '.join(map(str, missing))}")

    from tqdm import tqdm

    from agents.documents import SUFFIXES, UnreadableDocument
    from agents.knowledge import Knowledge, open_store
    from common.embedding import choose_embedder

    files = sorted({f for p in args.paths for f in ([p] if p.is_file() else p.rglob("*"))
                    if f.is_file() and (p.is_file() or f.suffix.lower() in SUFFIXES)})
    knowledge = Knowledge(open_store(settings.knowledge_url, settings.data_dir, persona.id),
                          lambda: choose_embedder(settings.knowledge_embedder))
    failed = []
    with tqdm(files, unit="file", desc=f"ingesting into {persona.id}") as bar:
        for path in bar:
            try:
                result = knowledge.ingest(str(path.resolve()), path.read_bytes(), force=args.force)
            except (UnreadableDocument, OSError) as exc:  # reported, skipped
                failed.append(path)
                bar.write(f"skipped {exc}")
                continue
            what = "unchanged" if result.unchanged else "replaced" if result.replaced else "added"
            bar.write(f"{what} {path} ({result.chunks} chunks, {result.id})")
    print(f"{len(files) - len(failed)} of {len(files)} files in {persona.id}'s knowledge base "
          f"({knowledge.store.count()} chunks in all)")
    if failed:
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ingest"]:
        ingest(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m agents", description="Run one Conclave expert.")
    parser.add_argument("--persona", help="persona id from the catalog (env AGENT_PERSONA)")
    parser.add_argument("--port", type=int, help="port (env AGENT_PORT; default: the persona's port)")
    parser.add_argument("--host", help="bind address (env HOST)")
    parser.add_argument("--personas-file", help="a catalog of your own (env PERSONAS_FILE)")
    args = parser.parse_args(argv)
    settings, persona = configured({"persona": args.persona, "agent_port": args.port, "host": args.host,
                                    "personas_file": args.personas_file})

    def create_app():  # in gunicorn's worker: its master never imports torch (common/serve.py)
        from agents.app import create_app

        return create_app(settings)

    serve(create_app, settings, settings.agent_port or persona.port)


if __name__ == "__main__":
    main()
