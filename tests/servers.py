"""Misbehaving servers on loopback, for the fetch tests."""

from __future__ import annotations

import socket
import threading
import time


class RawServer:
    """A loopback TCP server that answers each connection with `script`: (bytes, pause) pairs."""

    def __init__(self, script: list[tuple[bytes, float]]):
        self.script = script
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn) -> None:
        try:
            conn.recv(65536)
            for data, pause in self.script:
                if self.stop.is_set():
                    break
                conn.sendall(data)
                time.sleep(pause)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
