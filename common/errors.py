"""The one error vocabulary: every error a service or an engine raises on purpose is a :class:`ConclaveError`, and
carries its own HTTP status, wire type and code. No table elsewhere maps classes to statuses or types; the web layer
reads them off the error (``common.web``), and the protocol writes them as ``{"error": {message, type, code}}``
(``common.protocol.error_detail``). No HTTP framework in here: a status is a number.
"""

from __future__ import annotations


class ConclaveError(Exception):
    """An error with a place on the wire. ``code`` is a machine-readable detail (the class's, unless given);
    ``retry_after`` seconds, when trying again later can help; ``extra``, fields the error body carries beside
    ``error`` (which parts a service that is not ready lacks)."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, code: str | None = None, retry_after: float | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.message, self.retry_after, self.extra = message, retry_after, extra
        if code is not None:
            self.code = code


class ServiceError(ConclaveError):
    """A request a service cannot serve, in the service's own terms."""


class BadRequest(ServiceError):
    """The request cannot be served as asked (it names nothing the service knows, a value is out of range)."""

    status, type = 400, "invalid_request_error"


class UnsupportedMediaType(BadRequest):
    """The body comes in a form the route does not take."""

    status, code = 415, "unsupported_media_type"


class TooLarge(BadRequest):
    """What was sent is over a size limit."""

    status, type = 413, "request_too_large"


class NotFound(ServiceError):
    """What the request names does not exist."""

    status, type = 404, "not_found"


class Unavailable(ServiceError):
    """The service cannot serve now: still loading, or nothing to serve with (no expert reachable)."""

    status, type = 503, "service_unavailable"


class Busy(ServiceError):
    """The service is at capacity; ``retry_after`` says when to try again."""

    status, type = 429, "rate_limit_exceeded"


class StorageFull(ServiceError):
    """A store could not be written: the disk (or the database's quota) is full. What was already stored is kept."""

    status, type, code = 507, "storage_full", "storage_full"
