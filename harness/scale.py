"""A scaled-out deployment on one machine, from real parts: a Postgres (the pgserver wheel), replicas of an expert and
of the orchestrator sharing it through DATABASE_URL, and Debian's haproxy in front of each group, all on loopback
ports. Used by the scale tier (tests/e2e/test_scale.py, make e2e-scale) and the capacity bench (bench/scale.py)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from harness.services import Service, expert, free_port, orchestrator_service

HAPROXY_CONFIG = """
global
    maxconn 1024
defaults
    mode http
    timeout connect 5s
    timeout client 900s
    timeout server 900s
    # a replica that refuses the connection is retried on another; a request it received is never sent twice
    retries 2
    option redispatch
{groups}
"""
HAPROXY_GROUP = """
frontend {name}
    bind 127.0.0.1:{port}
    default_backend {name}
backend {name}
    balance leastconn
    option httpchk GET /ready
{servers}
"""


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if Path(p).exists()), None)


@dataclass
class Stack:
    """``experts`` replicas of ``persona`` and ``orchestrators`` replicas, one database, one balancer per group."""

    root: Path
    persona: str = "law_expert"
    experts: int = 2
    orchestrators: int = 2
    env: dict[str, str] = field(default_factory=dict)  # every process's
    expert_env: dict[str, str] = field(default_factory=dict)  # the experts' own, over ``env``
    expert_services: list[Service] = field(default_factory=list)
    orchestrator_services: list[Service] = field(default_factory=list)
    database_url: str = ""
    expert_lb: str = ""
    orchestrator_lb: str = ""

    def start(self) -> Stack:
        import pgserver

        self.root.mkdir(parents=True, exist_ok=True)
        self._pg = pgserver.get_server(Path(tempfile.mkdtemp(dir=self.root, prefix="pg")), cleanup_mode="stop")
        self.database_url = self._pg.get_uri()
        # every process its own thread: four models decode on two cores
        env = {"DATABASE_URL": self.database_url, "THREADS": "1", **self.env}
        self.expert_services = [expert(self.persona, self.root / f"expert{i}", env={**env, **self.expert_env})
                                for i in range(self.experts)]
        for service in self.expert_services:
            service.start()
        urls = [s.url for s in self.expert_services]
        self.orchestrator_services = [orchestrator_service(self.root / f"orchestrator{i}", urls,
                                                           env={**env, "MAX_RUNS": "32"})
                                      for i in range(self.orchestrators)]
        for service in self.orchestrator_services:
            service.start()
        self.expert_lb, self.orchestrator_lb = self._balance()
        return self

    def _balance(self) -> tuple[str, str]:
        binary = haproxy_binary()
        if binary is None:
            raise RuntimeError("haproxy is not installed (apt-get install haproxy)")
        ports = free_port(), free_port()
        groups = "".join(HAPROXY_GROUP.format(
            name=name, port=port, servers="".join(f"    server {name}{i} 127.0.0.1:{s.port} check inter 1s\n"
                                                  for i, s in enumerate(services)))
            for name, port, services in (("experts", ports[0], self.expert_services),
                                         ("orchestrators", ports[1], self.orchestrator_services)))
        config = self.root / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(groups=groups))
        log = open(self.root / "haproxy.log", "ab")
        self._haproxy = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
        urls = tuple(f"http://127.0.0.1:{p}" for p in ports)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if all(requests.get(f"{u}/ready", timeout=2).status_code == 200 for u in urls):
                    return urls
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"haproxy did not serve: {(self.root / 'haproxy.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if getattr(self, "_haproxy", None):
            self._haproxy.terminate()
            self._haproxy.wait(10)
        for service in self.orchestrator_services + self.expert_services:
            service.stop()
        if getattr(self, "_pg", None):
            self._pg.cleanup()
