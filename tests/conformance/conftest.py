"""The conformance tier (make e2e-conformance): the npm tools it runs, installed once into a cache, and one real stack
(a legal expert and an orchestrator consulting it) on free loopback ports, on the embedded model."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.services import expert, orchestrator_service

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("CONFORMANCE_CACHE", Path.home() / ".cache" / "conclave" / "conformance"))


@pytest.fixture(scope="session")
def node_env() -> dict[str, str]:
    """The environment to run the npm tools in: package-lock.json's packages installed (again only when the lock
    changes) into the cache, their bin first on PATH. Node 22 comes from npm too (the conformance suite needs it;
    Debian's is older)."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed (Debian: apt-get install nodejs npm; make e2e-conformance does it)")
    CACHE.mkdir(parents=True, exist_ok=True)
    lock = (HERE / "package-lock.json").read_bytes()
    stamp = CACHE / ".installed"
    if not stamp.exists() or stamp.read_text() != hashlib.sha256(lock).hexdigest():
        for name in ("package.json", "package-lock.json"):
            shutil.copy(HERE / name, CACHE / name)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=CACHE, check=True)
        stamp.write_text(hashlib.sha256(lock).hexdigest())
    for script in HERE.glob("*.mjs"):  # our Node scripts run beside node_modules, where ESM imports resolve
        shutil.copy(script, CACHE / script.name)
    env = {**os.environ, "PATH": f"{CACHE / 'node_modules' / '.bin'}{os.pathsep}{os.environ['PATH']}"}
    version = subprocess.run(["node", "--version"], env=env, capture_output=True, text=True).stdout
    assert version.startswith("v22."), f"npm's node did not install (got {version!r}): npm ci in {CACHE}"
    return env


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """Answers kept short (the A2A TCK waits 30 s for a blocking SendMessage, and 2 CPU cores decode slowly)."""
    law = expert("law_expert", tmp_path_factory.mktemp("law"), env={"DEFAULT_MAX_NEW_TOKENS": "64"}).start()
    orch = orchestrator_service(tmp_path_factory.mktemp("orch"), [law.url]).start()
    yield {"law_expert": law, "orchestrator": orch}
    orch.stop()
    law.stop()
