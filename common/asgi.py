"""ASGI apps (the a2a-sdk's and the mcp SDK's servers) mounted under a path of a Flask (WSGI) app.

a2wsgi runs the ASGI app on an event loop of its own thread. It does not run ASGI lifespan, which the MCP session
manager needs (its task group lives for the app's lifetime), so this module starts the lifespan on that loop and
keeps it open for the life of the process.
"""

from __future__ import annotations

import asyncio
import threading

from a2wsgi import ASGIMiddleware
from werkzeug.exceptions import SecurityError
from werkzeug.wsgi import get_host


def _start_lifespan(app, loop: asyncio.AbstractEventLoop, timeout: float = 30) -> None:
    started = threading.Event()
    failure: list[str] = []

    async def run() -> None:
        inbox: asyncio.Queue = asyncio.Queue()
        await inbox.put({"type": "lifespan.startup"})

        async def receive():
            return await inbox.get()  # after startup: waits for ever, keeping the lifespan (and its tasks) open

        async def send(message):
            if message["type"] == "lifespan.startup.failed":
                failure.append(message.get("message", "startup failed"))
            if message["type"].startswith("lifespan.startup"):
                started.set()

        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)

    asyncio.run_coroutine_threadsafe(run(), loop)
    if not started.wait(timeout) or failure:
        raise RuntimeError(f"ASGI app did not start: {failure or 'timed out'}")


def mount(flask_app, path: str, asgi_app, lifespan: bool = False) -> None:
    """Serve ``asgi_app`` at ``path`` (and below it) beside the Flask routes; the app sees paths relative to it."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name=f"asgi{path.replace('/', '-')}", daemon=True).start()
    if lifespan:
        _start_lifespan(asgi_app, loop)
    wsgi = ASGIMiddleware(asgi_app, loop=loop)
    inner = flask_app.wsgi_app

    def dispatch(environ, start_response):
        here = environ.get("PATH_INFO", "")
        if here == path or here.startswith(path + "/"):
            try:  # the Flask app's own Host check, which the mounted app would not see
                get_host(environ, flask_app.config.get("TRUSTED_HOSTS"))
            except SecurityError as exc:
                return exc(environ, start_response)
            environ = {**environ, "SCRIPT_NAME": environ.get("SCRIPT_NAME", "") + path,
                       "PATH_INFO": here[len(path):] or "/"}
            return wsgi(environ, start_response)
        return inner(environ, start_response)

    flask_app.wsgi_app = dispatch
