"""Errors a service raises in its own terms, with no HTTP in them (no Flask, no status codes).

The web layer gives each its HTTP status (``common.web.HTTP_STATUS``, the one mapping) and the protocol its wire
type (``common.protocol.error_detail``); engine errors (``common.engine.types``) go through the same two tables.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service cannot serve. ``code`` is a machine-readable detail; ``retry_after`` seconds, when
    trying again later can help."""

    def __init__(self, message: str, code: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message, self.code, self.retry_after = message, code, retry_after


class BadRequest(ServiceError):
    """The request cannot be served as asked (it names nothing the service knows, a value is out of range)."""


class NotFound(ServiceError):
    """What the request names does not exist."""


class Unavailable(ServiceError):
    """The service cannot serve now: still loading, or nothing to serve with (no expert reachable)."""


class Busy(ServiceError):
    """The service is at capacity; ``retry_after`` says when to try again."""


class StorageFull(ServiceError):
    """A store could not be written: the disk (or the database's quota) is full. What was already stored is kept."""
