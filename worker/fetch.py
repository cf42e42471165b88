"""Fetching `image_url`s without becoming an open proxy into the platform's network.

An event names a URL; a worker that fetched whatever it was told could be pointed at cloud
metadata endpoints, internal admin ports or a file on its own disk. So, by default, nothing is
fetched. Operators allow schemes and exact host names; `file://` is served only from under a
configured root; host names are resolved once, every address is checked (no private, loopback,
link-local, multicast or reserved address unless explicitly allowed), and the connection goes to
the checked address (no second lookup for a rebinding DNS to exploit). Redirects are followed by
hand, each hop checked the same way. Size and time limits apply while streaming, not after.

Every wait is bounded by one deadline, `fetch.timeout_s`, for the whole fetch: connecting,
headers and body, across redirects. A socket timeout alone would not do it (a server that sends
one header byte a second never trips it), so a watchdog shuts the connection down when the
deadline passes, whatever the client is waiting for. `file://` reads only regular files, opened
without blocking and read up to the byte limit: a FIFO or a device under the root cannot hang or
flood the worker.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import ssl
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from .config import FetchSettings
from .events import InvalidEvent, Reason

_REDIRECTS = {301, 302, 303, 307, 308}
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Fetcher:
    settings: FetchSettings
    max_bytes: int

    def fetch(self, url: str) -> bytes:
        """The bytes at `url`, or `InvalidEvent` (reason fetch or too_large)."""
        try:
            return self._fetch(url)
        except InvalidEvent:
            raise
        except (ValueError, UnicodeError, RuntimeError, OSError) as exc:  # a malformed URL or path
            raise InvalidEvent(Reason.FETCH, f"bad URL: {type(exc).__name__}: {exc}"[:300]) from None

    def _fetch(self, url: str) -> bytes:
        deadline = time.monotonic() + self.settings.timeout_s
        for _ in range(self.settings.max_redirects + 1):
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
            scheme = parts.scheme.lower()
            if scheme not in self.settings.allowed_schemes:
                raise InvalidEvent(Reason.FETCH, f"URL scheme {scheme or '(none)'!r} is not allowed")
            if scheme == "file":
                return self._read_file(parts.path)
            if scheme not in ("http", "https"):
                raise InvalidEvent(Reason.FETCH, f"URL scheme {scheme!r} is not supported")
            location = self._http_get(scheme, parts, deadline)
            if isinstance(location, bytes):
                return location
            url = urljoin(url, location)
        raise InvalidEvent(Reason.FETCH, f"more than {self.settings.max_redirects} redirects")

    def _read_file(self, path: str) -> bytes:
        if not self.settings.file_root:
            raise InvalidEvent(Reason.FETCH, "file:// URLs need fetch.file_root")
        root = Path(self.settings.file_root).resolve()
        target = Path(unquote(path)).resolve()  # raises RuntimeError on a symlink loop
        if not target.is_relative_to(root):
            raise InvalidEvent(Reason.FETCH, "file:// path is outside fetch.file_root")
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise InvalidEvent(Reason.FETCH, f"file:// open failed: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise InvalidEvent(Reason.FETCH, "file:// path is not a regular file")
            if info.st_size > self.max_bytes:
                raise InvalidEvent(Reason.TOO_LARGE, f"file is larger than {self.max_bytes} bytes")
            data = f.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:  # it grew while we read it
            raise InvalidEvent(Reason.TOO_LARGE, f"file is larger than {self.max_bytes} bytes")
        return data

    def _check_host(self, host: str, port: int) -> str:
        if host.lower() not in {h.lower() for h in self.settings.allowed_hosts}:
            raise InvalidEvent(Reason.FETCH, f"host {host!r} is not in fetch.allowed_hosts")
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise InvalidEvent(Reason.FETCH, f"cannot resolve {host!r}: {exc}") from None
        addresses = [info[4][0] for info in infos]
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if not self.settings.allow_private_addresses and not ip.is_global:
                raise InvalidEvent(Reason.FETCH, f"host {host!r} resolves to non-public address {ip}")
        return addresses[0]

    def _http_get(self, scheme: str, parts, deadline: float) -> bytes | str:
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        address = self._check_host(host, port)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise InvalidEvent(Reason.FETCH, f"fetch took longer than {self.settings.timeout_s} s")
        conn_cls = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
        conn = conn_cls(host, port, address, remaining)
        watchdog = threading.Timer(remaining, conn.abort)
        watchdog.daemon = True
        watchdog.start()
        try:
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            conn.request("GET", path, headers={"User-Agent": "aedr-worker", "Accept": "image/*"})
            response = conn.getresponse()
            if response.status in _REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise InvalidEvent(Reason.FETCH, f"HTTP {response.status} without Location")
                return location
            if response.status != 200:
                raise InvalidEvent(Reason.FETCH, f"HTTP {response.status}")
            declared = response.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > self.max_bytes:
                raise InvalidEvent(Reason.TOO_LARGE, f"Content-Length {declared} exceeds {self.max_bytes}")
            body = bytearray()
            while True:
                if time.monotonic() > deadline:
                    raise InvalidEvent(Reason.FETCH, f"fetch took longer than {self.settings.timeout_s} s")
                chunk = response.read1(_CHUNK) if hasattr(response, "read1") else response.read(_CHUNK)
                if not chunk:
                    if conn.aborted:  # the watchdog cut a body that had not ended
                        raise InvalidEvent(Reason.FETCH, f"fetch took longer than {self.settings.timeout_s} s")
                    return bytes(body)
                body += chunk
                if len(body) > self.max_bytes:
                    raise InvalidEvent(Reason.TOO_LARGE, f"body exceeds {self.max_bytes} bytes")
        except InvalidEvent:
            raise
        except (OSError, http.client.HTTPException, ssl.SSLError, ValueError) as exc:
            if time.monotonic() >= deadline:
                raise InvalidEvent(Reason.FETCH, f"fetch took longer than {self.settings.timeout_s} s") from None
            raise InvalidEvent(Reason.FETCH, f"{type(exc).__name__}: {exc}"[:300]) from None
        finally:
            watchdog.cancel()
            conn.close()


class _Abortable:
    """A connection the deadline watchdog can cut from another thread: shutting the socket down
    wakes up whatever read or connect is waiting on it."""

    _raw: socket.socket | None = None
    _aborted = False

    def _open(self, address: str, port: int, timeout: float) -> socket.socket:
        if self._aborted:
            raise TimeoutError("deadline passed")
        self._raw = socket.create_connection((address, port), timeout)
        return self._raw

    @property
    def aborted(self) -> bool:
        return self._aborted

    def abort(self) -> None:
        self._aborted = True
        raw = self._raw
        if raw is not None:
            try:
                raw.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _PinnedHTTP(_Abortable, http.client.HTTPConnection):
    """HTTP to an already-checked address, with the URL's host in the Host header."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = self._open(self._address, self.port, self.timeout)


class _PinnedHTTPS(_Abortable, http.client.HTTPSConnection):
    """HTTPS to an already-checked address; the certificate is checked against the host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = self._open(self._address, self.port, self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
