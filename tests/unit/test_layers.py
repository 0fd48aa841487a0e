"""The layers of shared/ARCHITECTURE.md, checked on the imports: the engine and the services' serving layers know
nothing of the web framework, the two services never import each other, and nothing product-side imports the
tests or the harness."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def under(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", [*under("common/engine"), ROOT / "agents/service.py", ROOT / "orchestrator/service.py",
                                  ROOT / "common/errors.py", ROOT / "common/metrics.py", ROOT / "common/protocol.py"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_web_framework_below_the_routes(path):
    web = {m for m in imports(path) if m.split(".")[0] in {"flask", "werkzeug"} or m == "common.web"}
    assert not web, f"{path.relative_to(ROOT)} imports {web}"


@pytest.mark.parametrize("path", under("common", "agents", "orchestrator", "bench"),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_arrows_point_down(path):
    top = {m.split(".")[0] for m in imports(path)}
    package = path.relative_to(ROOT).parts[0]
    assert "tests" not in top
    if package != "bench":
        assert "harness" not in top and "bench" not in top
    if package == "common":
        assert not top & {"agents", "orchestrator"}
    if package in {"agents", "orchestrator"}:
        assert ({"agents", "orchestrator"} - {package}).isdisjoint(top)
