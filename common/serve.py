"""Run a Flask app factory under gunicorn (never Flask's dev server), from a service's ``__main__``.

One worker process owns the model; many threads serve HTTP so requests can wait on the engine together. At most
MAX_IN_FLIGHT of them are admitted at once (common.web.Admission); the spare threads keep probes answered under load.

Nothing heavy is imported here or by a service's ``__main__`` before gunicorn forks: the app (torch, the model, the
web layer) is built in the worker, so the master stays a few tens of MB instead of holding its own copy of torch
(measured: the master was 372 MB RSS, 160 MB of it its own, when it imported the app).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from common.database import UnusableDatabase
from common.settings import WebSettings

log = logging.getLogger(__name__)
APP_LOAD_ERROR = Arbiter.APP_LOAD_ERROR

# Threads kept beyond MAX_IN_FLIGHT: for probes, and for answering 429 to whatever comes past the limit.
SPARE_THREADS = 16


class _Server(BaseApplication):
    def __init__(self, factory: Callable, options: dict, max_in_flight: int):
        self._factory = factory
        self._options = options
        self._max_in_flight = max_in_flight
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self):
        from common.web import Admission

        try:
            app = self._factory()  # in the worker, after fork: the model's threads live there
        except UnusableDatabase as exc:  # a setting or a file to fix: say which and stop, without a traceback
            log.critical("%s", exc)
            logging.shutdown()
            os._exit(APP_LOAD_ERROR)
        threading.Thread(target=_exit_if_failed, args=(app.extensions["engine"],), name="engine-watch",
                         daemon=True).start()
        _shutdown_on_sigterm(app.extensions.get("shutdown", []))
        return Admission(app, self._max_in_flight)


def _shutdown_on_sigterm(hooks: list[Callable[[], None]]) -> None:
    """Run the app's shutdown hooks when the worker is told to stop, before gunicorn's own graceful exit: streams
    in flight then end with an error event saying why, instead of being cut when the grace period runs out.
    (Gunicorn's worker installs its handlers before it loads the app, so ours wraps its SIGTERM handler.)"""
    previous = signal.getsignal(signal.SIGTERM)

    def handle(signum, frame) -> None:
        for hook in hooks:
            try:
                hook()
            except Exception:  # one failing hook must not keep the process from stopping
                log.exception("shutdown hook failed")
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, handle)


def _exit_if_failed(engine) -> None:
    """A model that cannot load never will: end the process non-zero (gunicorn's "app load error" stops its arbiter)
    so a supervisor restarts or reports it, instead of a service answering 503 for ever."""
    while not engine.ready:
        engine.wait_ready(5)
        if engine.failed:
            log.critical("the engine failed for good, exiting: %s", engine.status)
            logging.shutdown()
            os._exit(APP_LOAD_ERROR)


def serve(factory: Callable, settings: WebSettings, port: int) -> None:
    if problem := settings.exposure_problem():
        sys.exit(problem)
    _Server(factory, {
        "bind": f"{settings.host}:{port}",
        "workers": 1,
        "worker_class": "gthread",
        "threads": settings.max_in_flight + SPARE_THREADS,
        # gthread's timeout only watches the worker's heartbeat; long generations and streams are not cut by it.
        "timeout": 120,
        "graceful_timeout": 10,
        "keepalive": 5,
        "loglevel": settings.log_level.lower(),
        "accesslog": "-",
        "access_log_format": '%(h)s "%(r)s" %(s)s %(b)s %(M)sms',
    }, settings.max_in_flight).run()


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
