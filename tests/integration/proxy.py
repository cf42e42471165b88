"""A TCP proxy on loopback that a test can cut: every open connection is dropped and new ones
are refused until `restore()`. Used to take the database away from a running worker.

With `delay_s`, every chunk is forwarded `delay_s` after it arrived, in order, in each direction:
a round trip through the proxy takes 2 × delay_s longer, as to a database in another region
(bench/slow_db.py)."""

from __future__ import annotations

import queue
import socket
import threading
import time


def listen(port: int = 0) -> socket.socket:
    """A listening socket on 127.0.0.1:`port` (0: a free one), for the test servers here and in
    tests/kafka_shim.py."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    return listener


class CuttableProxy:
    def __init__(self, target: tuple[str, int], port: int = 0, delay_s: float = 0.0):
        self.target = target
        self.port = port
        self.delay_s = delay_s
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> "CuttableProxy":
        listener = listen(self.port)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener closed by cut()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        late: queue.Queue | None = None
        if self.delay_s > 0:
            late = queue.Queue()
            threading.Thread(target=self._send_late, args=(late, src, dst), daemon=True).start()
        try:
            while data := src.recv(65536):
                if late is None:
                    dst.sendall(data)
                else:
                    late.put((time.monotonic() + self.delay_s, data))
        except OSError:
            pass
        finally:
            if late is None:
                self._close(src, dst)
            else:
                late.put(None)  # the sender closes both once the delayed chunks are out

    def _send_late(self, late: queue.Queue, src: socket.socket, dst: socket.socket) -> None:
        try:
            while (item := late.get()) is not None:
                due, data = item
                time.sleep(max(0.0, due - time.monotonic()))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(src, dst)

    def _close(self, src: socket.socket, dst: socket.socket) -> None:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        with self._lock:
            self._conns -= {src, dst}

    def cut(self) -> None:
        """Drop every connection and refuse new ones (the port is closed)."""
        if self._listener is not None:
            try:  # close() alone does not wake a thread blocked in accept(); shutdown() does
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self) -> None:
        self.start()

    def stop(self) -> None:
        self.cut()
