"""Start real Conclave services as separate processes on free localhost ports (tests and benchmarks share this)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
MODEL_CACHE = ROOT / "data" / "models"  # converted checkpoints, shared by every run so only the first one converts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """One service process. ``start()`` waits until ``/ready`` answers 200 (or ``/health`` with wait='health')."""

    def __init__(self, module: str, args: list[str], data_dir: Path, env: dict[str, str] | None = None,
                 port: int | None = None, log_name: str | None = None, root: Path = ROOT):
        """``root``: the checkout whose code runs (another revision's worktree, for before/after benchmarks)."""
        self.module, self.args, self.root = module, args, Path(root)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = Path(data_dir)
        self.env = {name: value for name, value in {
            **os.environ,
            "DATA_DIR": str(self.data_dir),
            "CACHE_DIR": str(MODEL_CACHE),
            "PYTHONPATH": str(self.root),
            "LOG_LEVEL": "WARNING",
            **(env or {}),
        }.items() if value is not None}  # None in ``env``: left unset, so the service's own default holds
        self.log_path = self.data_dir / f"{log_name or module}-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, wait: str = "ready", timeout: float = 300) -> Service:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args], env=self.env, cwd=self.root,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.wait(wait, timeout)
        return self

    def wait(self, what: str = "ready", timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Bearer {self.env['API_KEY']}"} if self.env.get("API_KEY") else {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if requests.get(f"{self.url}/{what}", headers=headers, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{self.module} not {what} after {timeout}s: {self.log_tail()}")

    def rss_mb(self) -> float:
        """Resident memory of the service's whole process tree: gunicorn's master and the worker holding the model."""
        proc = psutil.Process(self.proc.pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def expert(persona: str, data_dir: Path, port: int | None = None, **kw) -> Service:
    port = port or free_port()
    return Service("agents", ["--persona", persona, "--port", str(port)], data_dir, port=port, log_name=persona, **kw)


def orchestrator_service(data_dir: Path, expert_urls: list[str], port: int | None = None, **kw) -> Service:
    port = port or free_port()
    env = {"EXPERT_URLS": ",".join(expert_urls), "EXPERT_MAX_NEW_TOKENS": "64", **kw.pop("env", {})}
    return Service("orchestrator", ["--port", str(port)], data_dir, port=port, env=env, **kw)
