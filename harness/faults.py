"""Faults to put between real services: a TCP proxy that resets a connection once its answer starts to flow."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable

from harness.services import free_port


class ResettingProxy:
    """Forwards 127.0.0.1:``port`` to ``target_port``. On a connection whose request bytes satisfy ``matches``, the
    first ``passed`` bytes of the answer go through and then both sides are reset (RST, not FIN): the request has
    reached the server, and the client sees its answer break off. Everything else is forwarded whole."""

    def __init__(self, target_port: int, matches: Callable[[bytes], bool], passed: int = 12):
        self.target_port, self.matches, self.passed = target_port, matches, passed
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.resets = 0
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def close(self) -> None:
        self._closing.set()
        self._server.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            state = {"request": b""}
            threading.Thread(target=self._pump_request, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._pump_answer, args=(upstream, client, state), daemon=True).start()

    def _pump_request(self, client: socket.socket, upstream: socket.socket, state: dict) -> None:
        try:
            while data := client.recv(65536):
                state["request"] += data
                upstream.sendall(data)
        except OSError:
            pass

    def _pump_answer(self, upstream: socket.socket, client: socket.socket, state: dict) -> None:
        try:
            while data := upstream.recv(65536):
                if self.matches(state["request"]):
                    client.sendall(data[: self.passed])
                    self.resets += 1
                    _reset(client)
                    _reset(upstream)
                    return
                client.sendall(data)
                state["request"] = b""  # an answer ended a request; the next one on this connection is judged anew
        except OSError:
            pass
        for s in (client, upstream):
            s.close()


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() then sends RST
    # The other pump thread is blocked reading this socket, and a close() does not end that read (the kernel
    # keeps the socket while a call uses it). Shutting the reading side wakes it, and sends nothing.
    sock.shutdown(socket.SHUT_RD)
    sock.close()
