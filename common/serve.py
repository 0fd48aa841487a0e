"""Run a Flask app factory under gunicorn (never Flask's dev server), from a service's ``__main__``.

One worker process owns the model; many threads serve HTTP so requests can wait on the engine together.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from gunicorn.app.base import BaseApplication

from common.settings import WebSettings


class _Server(BaseApplication):
    def __init__(self, factory: Callable, options: dict):
        self._factory = factory
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self):
        return self._factory()  # in the worker, after fork: the model's threads live there


def serve(factory: Callable, settings: WebSettings, port: int, threads: int = 64) -> None:
    if problem := settings.exposure_problem():
        sys.exit(problem)
    _Server(factory, {
        "bind": f"{settings.host}:{port}",
        "workers": 1,
        "worker_class": "gthread",
        "threads": threads,
        # gthread's timeout only watches the worker's heartbeat; long generations and streams are not cut by it.
        "timeout": 120,
        "graceful_timeout": 10,
        "keepalive": 5,
        "loglevel": settings.log_level.lower(),
        "accesslog": "-",
        "access_log_format": '%(h)s "%(r)s" %(s)s %(b)s %(M)sms',
    }).run()
