"""What a run reports as it goes, typed: the strategies and the service emit these, the A2A and MCP adapters read
their fields, and ``wire()`` gives each its server-sent-event name and data for ``/integrate``'s stream (the shapes
the README documents), so no adapter parses string-tagged dicts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import ClassVar

from common.protocol import IntegrateResponse, Step, error_event


class Event:
    event: ClassVar[str]  # its server-sent event's name

    def wire(self) -> tuple[str, dict]:
        """The server-sent event: its name and data (the dataclass's fields, unless the event says otherwise)."""
        return self.event, asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class Started(Event):
    """The run is stored and its experts ranked."""

    run_id: str
    strategy: str
    ranking: list[dict]
    event: ClassVar[str] = "start"


@dataclass(frozen=True)
class Asking(Event):
    """An expert is being consulted."""

    thought: str
    expert: str
    input: str
    reason: str
    event: ClassVar[str] = "action"


@dataclass(frozen=True)
class Answered(Event):
    """A consultation ended: the expert's answer, or its failure as a readable observation."""

    step: Step
    event: ClassVar[str] = "observation"

    def wire(self) -> tuple[str, dict]:
        return self.event, self.step.model_dump()


@dataclass(frozen=True)
class Finished(Event):
    """The composed answer: the run's last event, unless it could not be stored (then a Failed follows)."""

    response: IntegrateResponse
    event: ClassVar[str] = "final"

    def wire(self) -> tuple[str, dict]:
        return self.event, self.response.model_dump()


@dataclass(frozen=True)
class Failed(Event):
    """The run failed, was stopped, or its answer could not be kept: the error as every error body shapes it."""

    error: Exception
    event: ClassVar[str] = "error"

    def wire(self) -> tuple[str, dict]:
        return self.event, error_event(self.error)


RunEvent = Started | Asking | Answered | Finished | Failed
Emit = Callable[[RunEvent], None]
