"""Do the runtime requirements stand alone? ``python -m harness.runtime_check``

Imports every module of ``common/``, ``agents/`` and ``orchestrator/``, builds each service's app with the embedded
model's settings (the engine is made, not started: no model loads), waits for each expert's knowledge base to ingest
its notes, and asks every route that takes no body, plus the mounted A2A and MCP endpoints: any import error or
server error fails it. CI runs it in the environment ``make install`` makes (no dev requirements), before it starts
the stack.

``--only requirements.txt requirements-nodeps.txt`` runs the same check in any environment (the dev one in
``make test``) on a view of site-packages that holds only the distributions those files resolve to: the files'
requirements with their extras and markers, what they require in turn, and nothing for a ``--no-deps`` file. So a
dependency that only a dev requirement brings in (greenlet once came only with playwright) fails the test suite too.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import subprocess
import sys
import tempfile
import traceback
from importlib import metadata
from pathlib import Path
from typing import NoReturn

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "agents", "orchestrator")


def resolve(requirement_files: list[Path]) -> set[str]:
    """The installed distributions (canonical names) that these requirement files bring in: each requirement, and
    what it requires with its extras, recursively; a file whose name says ``nodeps`` brings in its lines alone."""
    wanted: set[str] = set()
    todo: list[tuple[Requirement, bool]] = []
    for path in requirement_files:
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                todo.append((Requirement(line), "nodeps" not in path.name))
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        req, follow = todo.pop()
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{req.name} is required but not installed: run make install") from None
        wanted.add(name)
        if not follow:
            continue
        for spec in dist.requires or []:
            dep = Requirement(spec)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in (req.extras or {""})):
                todo.append((dep, True))
    return wanted


def site_view(keep: set[str], into: Path) -> None:
    """Symlink into ``into`` the files of the installed distributions named in ``keep``, and nothing else: a
    site-packages as ``pip install`` of just those would have made it (top-level folders that one distribution
    owns are linked whole, shared ones file by file)."""
    dists = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}
    owners: dict[str, set[str]] = {}
    for name, dist in dists.items():
        for file in dist.files or []:
            if file.parts and file.parts[0] != "..":
                owners.setdefault(file.parts[0], set()).add(name)
    for dist in (d for name, d in dists.items() if name in keep):
        for file in dist.files or []:
            if not file.parts or file.parts[0] == "..":
                continue
            top = file.parts[0]
            whole = len(owners[top]) == 1 and len(file.parts) > 1
            relative = Path(top) if whole else Path(*file.parts)
            target, link = Path(dist.locate_file(relative)), into / relative
            if link.exists() or link.is_symlink() or not target.exists():
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target)


def run_isolated(requirement_files: list[Path]) -> int:
    """Run this check in a fresh interpreter that sees the standard library, this repository and the view only."""
    keep = resolve(requirement_files)
    with tempfile.TemporaryDirectory(prefix="runtime-site-") as tmp:
        view = Path(tmp) / "site-packages"
        view.mkdir()
        site_view(keep, view)
        boot = (f"import site, sys; site.addsitedir({str(view)!r}); sys.path.insert(0, {str(ROOT)!r}); "
                "from harness.runtime_check import check; check()")
        # -I: no user site, no PYTHONPATH; -S: not the environment's own site-packages
        return subprocess.run([sys.executable, "-I", "-S", "-c", boot], cwd=tmp).returncode


def import_all() -> list[str]:
    failures = []
    for package in PACKAGES:
        names = [package] + [m.name for m in pkgutil.walk_packages([str(ROOT / package)], f"{package}.")]
        for name in names:
            try:
                importlib.import_module(name)
            except (Exception, SystemExit):  # a module that exits when imported is a script, not a module
                failures.append(f"import {name}:\n{traceback.format_exc()}")
    return failures


A2A_GET_TASK = {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "no-such-task"}}
MCP_INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "runtime-check", "version": "1"}}}


def probe(client, label: str, mounted: dict[str, dict]) -> list[str]:
    """Every GET route of the app that takes no parameter, and one JSON-RPC call to each mounted endpoint: no
    server error (a 503 is an answer here, as no model is loaded) and no JSON-RPC error but the expected one."""
    failures = []
    rules = client.application.url_map.iter_rules()
    paths = sorted({r.rule for r in rules if "GET" in r.methods and "<" not in r.rule})
    headers = {"A2A-Version": "1.0", "Accept": "application/json, text/event-stream"}
    for method, path, body in [("GET", p, None) for p in paths] + [("POST", p, b) for p, b in mounted.items()]:
        resp = client.open(path, method=method, json=body, headers=headers)
        text = resp.get_data(as_text=True)
        if resp.status_code >= 500 and resp.status_code != 503:
            failures.append(f"{label} {method} {path}: {resp.status_code} {text[:500]}")
        elif body is not None and '"error"' in text and '"code":-32001' not in text.replace(" ", ""):
            failures.append(f"{label} POST {path}: {text[:500]}")  # -32001: A2A's TaskNotFoundError, as asked for
    return failures


def build_and_probe(data_dir: Path) -> list[str]:
    from agents.app import create_app as expert_app
    from agents.personas import load_catalog
    from common.engine import make_engine
    from common.settings import AgentSettings, OrchestratorSettings
    from orchestrator.app import create_app as orchestrator_app

    failures = []
    for persona in load_catalog():
        settings = AgentSettings(persona=persona, data_dir=data_dir / persona)
        app = expert_app(settings, engine=make_engine(settings))
        knowledge = app.extensions["expert"].knowledge
        knowledge.ready.wait(300)
        if knowledge.error:
            failures.append(f"{persona}: the knowledge base failed to load: {knowledge.error}")
        failures += probe(app.test_client(), persona, {"/a2a": A2A_GET_TASK})
    settings = OrchestratorSettings(data_dir=data_dir / "orchestrator")
    failures += probe(orchestrator_app(settings, llm=make_engine(settings)).test_client(), "orchestrator",
                      {"/a2a": A2A_GET_TASK, "/mcp": MCP_INITIALIZE})
    return failures


def check() -> NoReturn:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.disable(logging.WARNING)  # the SDKs' chatter, and the orchestrator finding no expert: errors show
    failures = import_all()
    if not failures:
        with tempfile.TemporaryDirectory(prefix="runtime-check-") as tmp:
            try:
                failures = build_and_probe(Path(tmp))
            except Exception:
                failures = [f"building the apps:\n{traceback.format_exc()}"]
    for failure in failures:
        print(failure, file=sys.stderr)
    print(f"runtime check: {'FAILED' if failures else 'OK'} ({len(failures)} problems) with {sys.executable}")
    sys.stdout.flush()
    os._exit(1 if failures else 0)  # the apps' background threads (engines made, not started) need no wait


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.runtime_check", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", type=Path, metavar="REQUIREMENTS",
                        help="check on a view of site-packages holding only what these requirement files resolve to")
    args = parser.parse_args()
    if args.only:
        sys.exit(run_isolated(args.only))
    check()


if __name__ == "__main__":
    main()
