"""The soak tier (make soak): long load and fuzz runs against real services, with a summary table at the end."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict

import pytest

ROWS: dict[str, dict] = defaultdict(lambda: {"sent": 0, "statuses": Counter(), "latencies": [], "errors": []})


def record(name: str, status: int | str, latency_s: float | None = None, error: str | None = None) -> None:
    row = ROWS[name]
    row["sent"] += 1
    row["statuses"][status] += 1
    if latency_s is not None:
        row["latencies"].append(latency_s)
    if error:
        row["errors"].append(error)


def note(name: str, text: str) -> None:
    ROWS[name].setdefault("notes", []).append(text)


@pytest.fixture
def soak_record():
    return record


@pytest.fixture
def soak_note():
    return note


@pytest.fixture
def soak_rows():
    """What was recorded so far, by run name: a test checks its own outcomes there."""
    return ROWS


def pytest_terminal_summary(terminalreporter):
    if not ROWS:
        return
    tr = terminalreporter
    tr.section("soak summary")
    tr.write_line(f"{'run':<34} {'sent':>5}  {'outcomes':<32} {'p50 s':>7} {'p95 s':>7}  errors")
    for name, row in ROWS.items():
        lat = sorted(row["latencies"])
        p50 = f"{statistics.median(lat):.2f}" if lat else "-"
        p95 = f"{lat[min(len(lat) - 1, int(0.95 * len(lat)))]:.2f}" if lat else "-"
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(row["statuses"].items(), key=str))
        tr.write_line(f"{name:<34} {row['sent']:>5}  {outcomes:<32} {p50:>7} {p95:>7}  {len(row['errors'])}")
        for text in row.get("notes", []):
            tr.write_line(f"    {text}")
        for error in row["errors"][:5]:
            tr.write_line(f"    ! {error[:200]}")
